"""Run-time configuration shared by every kernel: the ISA tier and the thread count.

The tier is chosen once, at import, from cpuid/xgetbv (never from compile-time flags);
``DOJO_KERNELS_ISA`` may force a lower tier. The thread count defaults to the number of
CPUs this process may run on, shared out among the MPI ranks of the node when a launcher
says how many there are (:data:`LOCAL_RANK_VARS`); ``DOJO_KERNELS_NUM_THREADS``,
:func:`set_num_threads` or threadpoolctl change it. Kernels read both per call, so a change
made from another thread only affects calls that start after it. Results never depend on
either. The threads are our own pool (csrc/pool.c): they sleep while they wait.
"""
from __future__ import annotations

import operator
import os
import threading
from typing import Any, Tuple

from . import _cpu

ISA_NAMES = ("generic", "avx2", "avx512bf16", "amx")
#: Largest thread count accepted (the pool would start that many threads).
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


#: Launcher variables that give the number of MPI ranks on this node, first match wins:
#: MPICH/Hydra and Intel MPI, Open MPI, MVAPICH2, Cray PALS, Slurm (srun steps, then jobs).
LOCAL_RANK_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                   "PALS_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")


def _local_ranks() -> Tuple[int, str]:
    """(ranks of this job on this node, the variable that said so); (1, "") outside MPI."""
    for var in LOCAL_RANK_VARS:
        raw = os.environ.get(var, "").strip()
        if not raw:
            continue
        # Slurm writes per-node lists such as "4(x2),3": take the largest count
        counts = []
        for part in raw.split(","):
            head = part.split("(")[0].strip()
            if head.isdigit():
                counts.append(int(head))
        if counts and max(counts) >= 1:
            return max(counts), var
    return 1, ""


def _affinity_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _default_threads() -> Tuple[int, str]:
    """The default thread count and where it comes from (shown by show_config).

    ``DOJO_KERNELS_NUM_THREADS`` if set; else the CPUs of this process's affinity mask,
    divided among the MPI ranks that share them: with ``r`` ranks on a node of ``N`` CPUs
    and a mask of ``a`` CPUs, about ``ceil(r * a / N)`` ranks share the mask (``r`` when the
    launcher does not bind, 1 when it binds every rank to its own cores).
    """
    env = os.environ.get("DOJO_KERNELS_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_THREADS:
            raise ImportError(
                f"DOJO_KERNELS_NUM_THREADS={env!r}: expected an integer in 1..{MAX_THREADS}")
        return n, "DOJO_KERNELS_NUM_THREADS"
    cpus = _affinity_cpus()
    ranks, var = _local_ranks()
    if ranks <= 1:
        return min(cpus, MAX_THREADS), "CPUs of the affinity mask"
    node = max(cpus, os.cpu_count() or cpus)
    sharing = max(1, min(ranks, -(-ranks * cpus // node)))
    return (max(1, min(cpus // sharing, MAX_THREADS)),
            f"CPUs of the affinity mask / {sharing} MPI ranks sharing them ({var}={ranks})")


_isa: int = _detect_isa()
_threads, _threads_source = _default_threads()

_SWITCH_VALUES = {"1": True, "on": True, "true": True, "yes": True,
                  "0": False, "off": False, "false": False, "no": False}


def _switch_from_env(var: str) -> bool:
    """An on/off environment variable (unset or empty: on)."""
    env = os.environ.get(var, "").strip().lower()
    if not env:
        return True
    if env not in _SWITCH_VALUES:
        raise ValueError(f"{var}={env!r}: expected one of "
                         f"{', '.join(sorted(_SWITCH_VALUES))}")
    return _SWITCH_VALUES[env]


_cpu._pool_guard(1 if _switch_from_env("DOJO_KERNELS_THREAD_GUARD") else 0)
# spreading the threads of a call over the CPUs (docs/threads.md, "Spreading")
_cpu._pool_spread(1 if _switch_from_env("DOJO_KERNELS_THREAD_SPREAD") else 0)


def get_thread_guard() -> bool:
    """Whether the contention guard is on (docs/threads.md, "The contention guard")."""
    return _cpu._pool_guard(-1)


def set_thread_guard(on: bool) -> None:
    """Turn the contention guard on or off (either way its state starts afresh).

    On (the default), a parallel call whose threads gained too little over its wall time (a
    busy process beside us, or a call too small to repay waking a worker) makes the next
    calls of its kind run on the calling thread for a few milliseconds, then tries again.
    Off, every call at or above the size thresholds uses all the threads (e.g. to measure
    raw parallel speed). Results are bit-identical either way.
    """
    if not isinstance(on, bool):
        raise TypeError(f"on: expected a bool, got {type(on).__name__}")
    _cpu._pool_guard(1 if on else 0)


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


# --- threadpoolctl ------------------------------------------------------------------------
def _register_threadpoolctl() -> None:
    """Make threadpoolctl (>= 3.0) see and limit the kernels' pool: ``threadpool_info()``
    lists it with user_api and internal_api ``"dojo_kernels"``, and ``threadpool_limits``
    maps onto :func:`set_num_threads`. Nothing happens without threadpoolctl."""
    import importlib

    try:
        threadpoolctl: Any = importlib.import_module("threadpoolctl")
    except ImportError:
        return
    base = getattr(threadpoolctl, "LibController", None)
    register = getattr(threadpoolctl, "register", None)
    if base is None or register is None:  # pragma: no cover - threadpoolctl < 3
        return
    if any(getattr(c, "internal_api", None) == "dojo_kernels"
           for c in getattr(threadpoolctl, "_ALL_CONTROLLERS", ())):
        return

    class DojoKernelsController(base):  # type: ignore[misc, valid-type]
        """threadpoolctl controller of dojo_kernels' thread pool (found through the
        compiled module dojo_kernels._cpu, which holds the pool)."""

        user_api = "dojo_kernels"
        internal_api = "dojo_kernels"
        filename_prefixes = ("_cpu.",)
        check_symbols = ("dk_pool_entry",)

        def get_num_threads(self) -> int:
            return get_num_threads()

        def set_num_threads(self, num_threads: int) -> None:
            set_num_threads(max(1, min(int(num_threads), MAX_THREADS)))

        def get_version(self) -> str:
            from . import __version__
            return __version__

    register(DojoKernelsController)


_register_threadpoolctl()
