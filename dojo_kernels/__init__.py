"""dojo_kernels: Tesla Dojo D1 numerics, SRAM-tiled GEMM and mesh all-reduce, in C kernels.

See README.md for a tour. Public names are a contract: other simulators import them.
"""
from __future__ import annotations

__version__ = "0.1.0"

try:
    from . import _cpu  # noqa: F401  (the compiled core; fails in an unbuilt source tree)
except ImportError as exc:  # pragma: no cover - exercised only from a source checkout
    raise ImportError(
        "dojo_kernels: compiled module missing. Do not import dojo_kernels from its source "
        "tree; install it first with `pip install .` (or `pip install -e .` for development)."
    ) from exc

from ._config import get_isa, get_num_threads, set_num_threads
from .formats import BF16, FP32, UHP, Format, cfloat8_143, cfloat8_152, shp

# --- numerics (issue: foundation) -------------------------------------------------------
from .numerics import (Flags, add, choose_bias, dequantize, fake_quantize, fma, mul, quantize,
                       sub)
# --- GEMM and the D1 machine model --------------------------------------------------------
from .d1 import D1Chip, D1Node, DojoSystem, TrainingTile
from .gemm import GemmPlan, gemm, plan_gemm
# --- mesh all-reduce ---------------------------------------------------------------------
from . import mesh  # noqa: E402  (dojo_kernels.mesh: Mesh2D and the D1 presets)
from .collectives import AllreduceReport, allreduce, estimate_allreduce  # noqa: E402
from .hierarchical import (HierarchicalReport, allreduce_hierarchical,  # noqa: E402
                           estimate_hierarchical)


def show_config() -> None:
    """Print the version, the ISA tier in use, the detected CPU features, threads, compiler."""
    from . import _config

    print(f"dojo_kernels {__version__}")
    print(f"  isa tier      : {get_isa()} (best on this CPU: {_config.ISA_NAMES[_cpu.best_isa()]};"
          f" force with DOJO_KERNELS_ISA)")
    print(f"  cpu features  : {' '.join(_cpu.features()) or 'none'}")
    print(f"  threads       : {get_num_threads()} (DOJO_KERNELS_NUM_THREADS, set_num_threads)")
    from .gemm import kernel_names

    for order, name in kernel_names().items():
        print(f"  gemm {order + ' order':<9}: {name}")
    print(f"  compiler      : {_cpu.compiler()}")
    import numpy

    print(f"  numpy         : {numpy.__version__}")


__all__ = [
    "BF16", "FP32", "UHP", "Format", "cfloat8_143", "cfloat8_152", "shp",
    "get_isa", "get_num_threads", "set_num_threads", "show_config",
    "Flags", "quantize", "dequantize", "fake_quantize", "add", "sub", "mul", "fma", "choose_bias",
    # GEMM and the D1 machine model
    "D1Node", "D1Chip", "TrainingTile", "DojoSystem", "GemmPlan", "gemm", "plan_gemm",
    # mesh all-reduce
    "mesh", "AllreduceReport", "allreduce", "estimate_allreduce",
    "HierarchicalReport", "allreduce_hierarchical", "estimate_hierarchical",
]
