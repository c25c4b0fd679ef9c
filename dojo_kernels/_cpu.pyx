# Thin glue: run-time CPU detection (csrc/cpu.c).
import numpy as np
cdef extern from "dk_cpu.h":
    unsigned dk_cpu_features() nogil
    int dk_cpu_best_isa() nogil

_FEATURE_NAMES = ("sse2", "avx", "fma", "f16c", "avx2", "avx512f", "avx512dq", "avx512bw",
                  "avx512vl", "avx512_vnni", "avx512_bf16", "os_ymm", "os_zmm",
                  "amx_tile", "amx_bf16", "os_amx", "amx_granted")


def features():
    """Names of the CPU features (as seen by cpuid, and enabled by the OS) that matter here."""
    cdef unsigned f = dk_cpu_features()
    return tuple(name for i, name in enumerate(_FEATURE_NAMES) if f & (1u << i))


def best_isa():
    """Index of the best tier this CPU runs: 0 generic, 1 avx2, 2 avx512bf16, 3 amx."""
    return dk_cpu_best_isa()


cdef extern from *:
    """
    #if defined(__clang__)
    #define DK_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define DK_COMPILER "gcc " __VERSION__
    #else
    #define DK_COMPILER "unknown"
    #endif
    """
    const char *DK_COMPILER


def compiler():
    """The C compiler that built the kernels."""
    return DK_COMPILER.decode()


# The kernels' thread pool (csrc/pool.c). Every extension links its own copy of the C base
# library; the others forward their parallel calls to this module's pool (_pool_capsule),
# so the process has one pool.
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport int64_t

cdef extern from "dk_pool.h":
    const void *dk_pool_entry()
    void dk_pool_shutdown() nogil
    int64_t dk_pool_parallel_calls()
    int dk_pool_workers()
    int64_t dk_pool_guarded_calls()
    int dk_pool_guard(int on)
    int64_t dk_pool_spread_moves()
    int dk_pool_spread(int on)
    int dk_pool_test_spread(int *before, int *after) nogil
    int dk_pool_test_where(int nthreads, int64_t nitems, int64_t us, int *cpu, int *slot,
                           int *caller_cpu) nogil
    int dk_pool_test_settle(int *before, int *after) nogil
    int dk_pool_test_items(int nthreads, int64_t nitems, const int64_t *caller_us,
                           const int64_t *worker_us, const int64_t *sleep_us) nogil


def _pool_capsule():
    """The pool's entry point, for the other extensions (dk_pool_forward_to)."""
    return PyCapsule_New(<void *>dk_pool_entry(), b"dojo_kernels.pool", NULL)


def _pool_shutdown():
    """Stop and join the pool's worker threads (a later parallel call starts new ones)."""
    with nogil:
        dk_pool_shutdown()


def _pool_guard(int on=-1):
    """The contention guard (docs/threads.md): on=1 turns it on, 0 off (both clear its
    state), -1 only asks. Returns the previous setting (True/False)."""
    return bool(dk_pool_guard(on))


def _pool_test_items(int nthreads, caller_us, worker_us, sleep_us):
    """Tests of the guard: a parallel call whose item i works caller_us[i] microseconds of
    CPU time when the caller runs it; on a worker it sleeps sleep_us[i] microseconds when
    that is nonzero (a worker descheduled inside its item: no work while the caller waits),
    else works worker_us[i]. Returns the number of threads that took part."""
    cdef int64_t[::1] c = np.ascontiguousarray(caller_us, dtype=np.int64)
    cdef int64_t[::1] w = np.ascontiguousarray(worker_us, dtype=np.int64)
    cdef int64_t[::1] z = np.ascontiguousarray(sleep_us, dtype=np.int64)
    cdef int64_t n = c.shape[0]
    cdef int used
    if w.shape[0] != n or z.shape[0] != n:
        raise ValueError(f"worker_us, sleep_us: expected {n} values each (one per item)")
    if n == 0:
        return 0
    if np.any(np.asarray(c) < 0) or np.any(np.asarray(w) < 0) or np.any(np.asarray(z) < 0):
        raise ValueError("caller_us, worker_us, sleep_us: expected non-negative microseconds")
    with nogil:
        used = dk_pool_test_items(nthreads, n, &c[0], &w[0], &z[0])
    return used


def _pool_spread(int on=-1):
    """Spreading (docs/threads.md): a worker that joins a call on a CPU the call already
    uses moves to another allowed CPU. on=1 on, 0 off, -1 only asks; returns the previous
    setting (True/False)."""
    return bool(dk_pool_spread(on))


def _pool_test_spread():
    """Tests: move the calling thread off its CPU as spreading moves a worker that meets
    another thread of its call there. Returns (cpu before, cpu after), or None where
    spreading is not available (not Linux)."""
    cdef int before = -1, after = -1, ok
    with nogil:
        ok = dk_pool_test_spread(&before, &after)
    return (before, after) if ok else None


def _pool_test_where(int nthreads, int64_t nitems, int64_t us):
    """Tests: a parallel call whose items each note the CPU they start on, work `us`
    microseconds of CPU time and note the slot of their thread (0: the caller). Returns
    (the CPU steering kept the workers off, -1 if none; cpus, slots, threads used)."""
    if nitems < 1 or us < 0:
        raise ValueError("nitems, us: expected nitems >= 1 and us >= 0")
    cdef int[::1] cpu = np.full(nitems, -1, dtype=np.intc)
    cdef int[::1] slot = np.full(nitems, -1, dtype=np.intc)
    cdef int caller = -1, used
    with nogil:
        used = dk_pool_test_where(nthreads, nitems, us, &cpu[0], &slot[0], &caller)
    return caller, np.asarray(cpu), np.asarray(slot), used


def _pool_test_settle():
    """Tests: the calling thread settles as a worker would before an item when the caller
    of its call is on the same CPU. Returns (cpu before, cpu after), or None where
    spreading is not available (not Linux)."""
    cdef int before = -1, after = -1, ok
    with nogil:
        ok = dk_pool_test_settle(&before, &after)
    return (before, after) if ok else None


def _pool_spread_moves():
    """Workers moved so far by spreading."""
    return dk_pool_spread_moves()


def _pool_guarded():
    """Calls the contention guard ran on the calling thread so far."""
    return dk_pool_guarded_calls()


def _pool_stats():
    """(parallel calls so far, worker threads alive): calls that used more than one thread."""
    return dk_pool_parallel_calls(), dk_pool_workers()
