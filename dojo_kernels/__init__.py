"""dojo_kernels: Tesla Dojo D1 numerics, SRAM-tiled GEMM and mesh all-reduce, in C kernels.

See README.md for a tour. Public names are a contract: other simulators import them.

Layout, by capability (docs/layout.md):

- numerics: the subpackage :mod:`dojo_kernels.numerics` (conversion, arithmetic,
  quantization: the package itself is that module), with :mod:`dojo_kernels.numerics.formats`
  (the number formats; old path :mod:`dojo_kernels.formats`) and
  :mod:`dojo_kernels.numerics.torch` (PyTorch integration; old path :mod:`dojo_kernels.torch`).
- gemm: :mod:`dojo_kernels.gemm` (the SRAM-tiled GEMM and its D1 plan; one module).
- machine: the subpackage :mod:`dojo_kernels.machine`: ``machine.d1`` (``D1Node``,
  ``D1Chip``, ``TrainingTile``, ``D2Tile``, ``DojoSystem``; old path :mod:`dojo_kernels.d1`),
  ``machine.mesh`` (``Mesh2D`` and the presets; old path :mod:`dojo_kernels.mesh`), internal
  ``_units`` (SI units and the CLI's human units).
- collectives: the subpackage :mod:`dojo_kernels.collectives` (all-reduce, hierarchical,
  schedule, mpi; internal ``_schedule``, ``_timing``, ``_faults``, ``_common``).
- report: the subpackage :mod:`dojo_kernels.report` (the training-step report, ``train``);
  :mod:`dojo_kernels.cli` is the ``dojo-kernels`` command, ``_bench`` its ``bench``.
- the core every capability uses (internal, at the top): the compiled ``_cpu`` (ISA dispatch,
  thread pool), ``_numerics``, ``_reduce``, ``_gemm``, ``_plan``, and ``_config`` (ISA and
  thread settings), ``_cformat`` (a format as the compiled modules take it).

The old flat paths of the moved modules (``dojo_kernels.d1``, ``.mesh``, ``.formats``,
``.torch``, ``.hierarchical``, ``.schedule``, ``.mpi``, ``.train``, ``._units``,
``._schedule`` ...) still import the same module objects.
"""
from __future__ import annotations

__version__ = "0.1.0"



def _other_installations() -> "list[str]":
    """Directories of dojo_kernels packages other than this one: on sys.path, and where
    importlib.metadata says the distribution is installed (editable or not)."""
    import json
    import os
    import sys

    here = os.path.dirname(os.path.realpath(__file__))
    found: "list[str]" = []

    def add(d: str) -> None:
        d = os.path.realpath(d)
        if d != here and d not in found and os.path.isfile(os.path.join(d, "__init__.py")):
            found.append(d)

    for entry in sys.path:
        add(os.path.join(entry or os.getcwd(), "dojo_kernels"))
    try:
        from importlib import metadata

        dist = metadata.distribution("dojo_kernels")
        add(str(dist.locate_file("dojo_kernels")))
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if url.startswith("file://"):
            add(os.path.join(url[len("file://"):], "dojo_kernels"))
    except Exception:  # pragma: no cover - no metadata: the sys.path scan is all we have
        pass
    return found


def _missing_compiled(exc: ImportError) -> ImportError:
    import os

    here = os.path.dirname(os.path.realpath(__file__))
    others = _other_installations()
    if others:
        return ImportError(
            f"dojo_kernels: the source tree at {here} shadows the installed package at "
            f"{others[0]}. Python imported the source tree (it comes first on sys.path, "
            f"e.g. because you run Python from the repository root), and the source tree "
            f"has no compiled modules. Fix: run from another directory, or build the source "
            f"tree in place with `pip install -e .` (then it is the installed package). "
            f"({exc})")
    return ImportError(
        f"dojo_kernels: compiled module missing in {here}: this is an unbuilt source tree. "
        f"Install it first with `pip install .` and run from another directory, or use "
        f"`pip install -e .` for development. ({exc})")


try:
    from . import _cpu  # noqa: F401  (the compiled core; fails in an unbuilt source tree)
except ImportError as exc:
    raise _missing_compiled(exc) from exc

from ._config import get_isa, get_num_threads, get_thread_guard, set_num_threads, set_thread_guard

import atexit as _atexit

_atexit.register(_cpu._pool_shutdown)  # join the pool's workers at interpreter exit
from .numerics.formats import BF16, FP32, UHP, Format, cfloat8_143, cfloat8_152, shp

# --- numerics (issue: foundation) -------------------------------------------------------
from .numerics import (Flags, add, choose_bias, dequantize, fake_quantize, fma, mul, quantize,
                       sub)
# --- GEMM and the D1 machine model --------------------------------------------------------
from .machine import D1Chip, D1Node, D2Tile, DojoSystem, TrainingTile
from .gemm import GemmPlan, gemm, plan_gemm
# --- mesh all-reduce ---------------------------------------------------------------------
from .machine import mesh  # noqa: E402  (dojo_kernels.mesh: Mesh2D and the D1 presets)
from .collectives import AllreduceReport, allreduce, estimate_allreduce  # noqa: E402
from .collectives.schedule import Schedule  # noqa: E402  (the exportable all-reduce schedule)
from .collectives.hierarchical import (HierarchicalReport,  # noqa: E402
                                       allreduce_hierarchical, estimate_hierarchical)
# the moved modules stay attributes of the package under their old names, as before the
# layout change (``dk.schedule.MESSAGE_DTYPE``, ``dk.hierarchical.INNER_ALGORITHMS``; for
# ``dk.d1``, ``dk.formats`` see below): the shims put the moved module objects in
# sys.modules under the old paths (``dojo_kernels.torch`` stays lazy: it imports torch)
from . import hierarchical, schedule  # noqa: E402,F401

# The old paths of the machine and numerics modules have no file (so that git's rename
# detection carries edits made to the old files on other branches to the moved ones): the
# moved modules are registered here under their old names, and stubs (d1.pyi, mesh.pyi,
# formats.pyi, _units.pyi) tell type checkers. ``import dojo_kernels.mesh`` imports this
# package first, then finds the module in sys.modules; pickles that name
# ``dojo_kernels.d1.D1Chip`` load the same way.
import sys as _sys  # noqa: E402

from .machine import _units, d1  # noqa: E402,F401
from .numerics import formats  # noqa: E402,F401

_sys.modules[__name__ + ".d1"] = d1
_sys.modules[__name__ + ".mesh"] = mesh
_sys.modules[__name__ + "._units"] = _units
_sys.modules[__name__ + ".formats"] = formats


def show_config() -> None:
    """Print the version, the ISA tier in use, the detected CPU features, threads, compiler."""
    from . import _config

    print(f"dojo_kernels {__version__}")
    print(f"  isa tier      : {get_isa()} (best on this CPU: {_config.ISA_NAMES[_cpu.best_isa()]};"
          f" force with DOJO_KERNELS_ISA)")
    print(f"  cpu features  : {' '.join(_cpu.features()) or 'none'}")
    print(f"  threads       : {get_num_threads()} (default from {_config._threads_source}; "
          f"DOJO_KERNELS_NUM_THREADS, set_num_threads, threadpoolctl)")
    print(f"  thread guard  : {'on' if get_thread_guard() else 'off'} (set_thread_guard, "
          f"DOJO_KERNELS_THREAD_GUARD; docs/threads.md)")
    from .gemm import kernel_names

    for order, name in kernel_names().items():
        print(f"  gemm kernels  : order={order!r}: {name}")
    print(f"  compiler      : {_cpu.compiler()}")
    import numpy

    print(f"  numpy         : {numpy.__version__}")


__all__ = [
    "BF16", "FP32", "UHP", "Format", "cfloat8_143", "cfloat8_152", "shp",
    "get_isa", "get_num_threads", "set_num_threads", "show_config",
    "get_thread_guard", "set_thread_guard",
    "Flags", "quantize", "dequantize", "fake_quantize", "add", "sub", "mul", "fma", "choose_bias",
    # GEMM and the D1 machine model
    "D1Node", "D1Chip", "TrainingTile", "D2Tile", "DojoSystem", "GemmPlan", "gemm", "plan_gemm",
    # mesh all-reduce
    "mesh", "AllreduceReport", "allreduce", "estimate_allreduce", "Schedule",
    "HierarchicalReport", "allreduce_hierarchical", "estimate_hierarchical",
]
