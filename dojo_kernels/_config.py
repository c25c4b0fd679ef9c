"""Run-time configuration shared by every kernel: the ISA tier and the thread count.

The tier is chosen once, at import, from cpuid/xgetbv (never from compile-time flags);
``DOJO_KERNELS_ISA`` may force a lower tier. The thread count defaults to the number of
CPUs this process may run on; ``DOJO_KERNELS_NUM_THREADS`` or :func:`set_num_threads`
change it. Kernels read both per call, so a change made from another thread only affects
calls that start after it. Results never depend on either.
"""
from __future__ import annotations

import operator
import os
import threading
from typing import Tuple

from . import _cpu

ISA_NAMES = ("generic", "avx2", "avx512bf16", "amx")
#: Largest thread count accepted (OpenMP would start that many threads).
MAX_THREADS = 4096

_lock = threading.Lock()


def _detect_isa() -> int:
    best = _cpu.best_isa()
    forced = os.environ.get("DOJO_KERNELS_ISA", "").strip().lower()
    if not forced:
        return best
    if forced not in ISA_NAMES:
        raise ImportError(
            f"DOJO_KERNELS_ISA={forced!r} is not a tier: expected one of {', '.join(ISA_NAMES)}")
    want = ISA_NAMES.index(forced)
    if want > best:
        feats = _cpu.features()
        why = ""
        if forced == "amx" and {"amx_tile", "amx_bf16", "os_amx"} <= set(feats):
            why = ("; the CPU has AMX but Linux did not grant this process the tile-data "
                   "state (arch_prctl ARCH_REQ_XCOMP_PERM refused, or DOJO_KERNELS_NO_AMX_REQUEST "
                   "is set)")
        raise ImportError(
            f"DOJO_KERNELS_ISA={forced!r} asks for a tier this CPU lacks: the best it runs is "
            f"{ISA_NAMES[best]!r} (features: {', '.join(feats) or 'none'}){why}")
    return want


def _default_threads() -> int:
    env = os.environ.get("DOJO_KERNELS_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_THREADS:
            raise ImportError(
                f"DOJO_KERNELS_NUM_THREADS={env!r}: expected an integer in 1..{MAX_THREADS}")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


_isa: int = _detect_isa()
_threads: int = _default_threads()


def isa() -> int:
    """The tier index the kernels use (0 generic, 1 avx2, 2 avx512bf16, 3 amx)."""
    return _isa


def threads() -> int:
    """The number of threads the kernels use."""
    return _threads


def get_isa() -> str:
    """Name of the ISA tier the kernels run: ``"generic"``, ``"avx2"``, ``"avx512bf16"`` or
    ``"amx"`` (avx512bf16 plus Intel AMX-BF16 tiles, used by the GEMM)."""
    return ISA_NAMES[_isa]


def get_num_threads() -> int:
    """Number of threads the kernels run on."""
    return _threads


def set_num_threads(n: int) -> None:
    """Set the number of threads the kernels run on (a positive integer).

    Results are bit-identical whatever the count; only speed changes.
    """
    global _threads
    if isinstance(n, bool):
        raise TypeError("n: expected a positive int, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n: expected a positive int, got {type(n).__name__}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n: expected an int in 1..{MAX_THREADS}, got {n}")
    with _lock:
        _threads = n


class use_isa:
    """Context manager that runs the kernels on another tier (tests and benchmarks).

    ``with use_isa("avx2"): ...`` -- the tier must be one this CPU supports. It changes a
    process-wide setting, so do not use it while other threads run kernels.
    """

    def __init__(self, name: str) -> None:
        if name not in ISA_NAMES:
            raise ValueError(f"name: expected one of {', '.join(ISA_NAMES)}, got {name!r}")
        idx = ISA_NAMES.index(name)
        if idx > _cpu.best_isa():
            raise ValueError(f"name: this CPU cannot run the {name!r} tier")
        self._idx = idx

    def __enter__(self) -> "use_isa":
        global _isa
        self._saved = _isa
        _isa = self._idx
        return self

    def __exit__(self, *exc: object) -> None:
        global _isa
        _isa = self._saved


def supported_isas() -> Tuple[str, ...]:
    """The tiers this CPU can run, lowest first."""
    return ISA_NAMES[: _cpu.best_isa() + 1]
