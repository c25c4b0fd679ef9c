"""Build: one static library per ISA tier (each with its own flags), linked into
every Cython extension. Tier code is only ever called after the run-time CPU check.

    csrc/*.c              baseline drivers, dispatch, the thread pool -> libdk_base
    csrc/<tier>/*.c       kernels compiled with that tier's flags     -> libdk_<tier>
    dojo_kernels/_*.pyx   thin Cython glue, one extension each
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

BASE = ["-O3", "-std=c11", "-fno-math-errno",
        "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas"]
# Threads: our own pool (csrc/pool.c, POSIX threads), not OpenMP: libgomp's threads spin
# while they wait, which stalls every parallel region when another process is busy.
PTHREAD = ["-pthread"]
TIERS = {
    "generic": [],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512bf16": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl",
                   "-mavx512bf16", "-mavx512vnni", "-mfma", "-mf16c"],
    # AVX-512 as above plus the tile instructions: only csrc/amx/ is built with these.
    "amx": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16",
            "-mavx512vnni", "-mfma", "-mf16c", "-mamx-tile", "-mamx-bf16"],
}
# ASan + UBSan build (.ci/sanitize.sh): the C libraries AND the Cython glue are instrumented.
SANITIZE = (["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
             "-fno-omit-frame-pointer", "-g",
             # gemm_driver.c: fill edge tiles with NaNs where a kernel may not read C
             "-DDK_CHECK_UKR_CONTRACT"]
            if os.environ.get("DOJO_KERNELS_SANITIZE") else [])
BASE += SANITIZE

HEADERS = sorted(glob.glob("include/*.h"))
TIER_SOURCES = {t: sorted(glob.glob(f"csrc/{t}/*.c")) for t in TIERS}
BASE_SOURCES = sorted(glob.glob("csrc/*.c"))
ALL_C = BASE_SOURCES + [s for v in TIER_SOURCES.values() for s in v]
PXDS = sorted(glob.glob("dojo_kernels/*.pxd"))  # declarations shared by the glue modules


def clib(name, sources, cflags):
    return (name, {"sources": sources, "include_dirs": ["include"],
                   "cflags": BASE + cflags, "obj_deps": {"": HEADERS}})


# Order matters for static linking: the base library refers to the tiers.
libraries = [clib("dk_base", BASE_SOURCES, PTHREAD)]
libraries += [clib(f"dk_{t}", TIER_SOURCES[t], f) for t, f in TIERS.items()]

link = ["-pthread", "-lm"] + (["-fsanitize=address,undefined"] if SANITIZE else [])

extensions = [
    Extension(f"dojo_kernels.{os.path.splitext(os.path.basename(p))[0]}", [p],
              include_dirs=["include"], extra_compile_args=["-O2", *PTHREAD, *SANITIZE],
              extra_link_args=link, depends=ALL_C + HEADERS + PXDS)
    for p in sorted(glob.glob("dojo_kernels/_*.pyx"))
]

setup(
    libraries=libraries,
    ext_modules=cythonize(extensions, language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True,
        "initializedcheck": False, "embedsignature": True,
        "autotestdict": False}),
)
