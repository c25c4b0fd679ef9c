# Thin glue for the GEMM driver (csrc/gemm_driver.c). Validation lives in gemm.py.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t

cdef extern from "dk_gemm.h":
    ctypedef struct dk_gemm_operand:
        const void *ptr
        int64_t bs, rs, cs
        int kind
        const uint16_t *table
    int DK_GEMM_U16, DK_GEMM_U8
    int DK_GEMM_ORDER_VDPBF16PS, DK_GEMM_ORDER_AMX
    int dk_gemm(int64_t batch, int64_t m, int64_t n, int64_t k,
                const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                float *out, int64_t ldo, int64_t bso, int isa, int kernel, int threads,
                int order) nogil
    void dk_amx_tdpbf16ps(const uint16_t *a, int64_t lda, const uint32_t *b, int64_t ldb,
                          float *c, int64_t ldc, int m, int n, int kpairs) nogil
    double dk_probe_tdpbf16ps(int64_t iters) nogil
    void dk_gemm_release_cache() nogil
    double dk_probe_vdpbf16ps_zmm(int64_t iters) nogil
    double dk_probe_fma_zmm(int64_t iters) nogil
    double dk_probe_fma_ymm(int64_t iters) nogil
    float dk_gemm_step_generic(float acc, float a, float b) nogil
    void dk_gemm_bf16_range(const uint16_t *p, int64_t d0, int64_t d1, int64_t d2, int64_t s0,
                            int64_t s1, int64_t s2, uint16_t *minnz, uint16_t *maxfin,
                            int threads) nogil
    float dk_gemm_add_generic(float x, float y) nogil

#: Accumulation orders (the `order` argument of gemm; dk_gemm.h).
ORDER_VDPBF16PS = DK_GEMM_ORDER_VDPBF16PS
ORDER_AMX = DK_GEMM_ORDER_AMX

cdef int _fill(dk_gemm_operand *o, object arr, const uint16_t[::1] table, str name) except -1:
    """One operand: a 3-D uint16 (BF16 codes) or uint8 (8-bit codes) array of any strides
    that are multiples of the item size (gemm.py copies others). A batch axis of extent 1
    is shared by every batch item (batch stride 0)."""
    cdef const uint16_t[:, :, :] v16
    cdef const uint8_t[:, :, :] v8
    cdef Py_ssize_t isz
    cdef Py_ssize_t shape[3]
    cdef Py_ssize_t strides[3]
    cdef int d
    if arr.dtype.itemsize == 2:
        v16 = arr
        isz = 2
        o.kind = DK_GEMM_U16
        o.ptr = &v16[0, 0, 0] if v16.shape[0] and v16.shape[1] and v16.shape[2] else NULL
        for d in range(3):
            shape[d] = v16.shape[d]
            strides[d] = v16.strides[d]
    else:
        v8 = arr
        isz = 1
        o.kind = DK_GEMM_U8
        o.ptr = &v8[0, 0, 0] if v8.shape[0] and v8.shape[1] and v8.shape[2] else NULL
        for d in range(3):
            shape[d] = v8.shape[d]
            strides[d] = v8.strides[d]
    # The driver addresses elements as pointer + (stride // itemsize) * index.
    for d in range(3):
        if shape[d] > 1 and strides[d] % isz:
            raise ValueError(f"{name}: stride {strides[d]} is not a multiple of the item size")
    o.bs = strides[0] // isz if shape[0] > 1 else 0
    o.rs = strides[1] // isz
    o.cs = strides[2] // isz
    o.table = &table[0]
    return 0


def gemm(object a, object b, const uint16_t[::1] table_a, const uint16_t[::1] table_b,
         float scale, float[:, :, ::1] out, int isa, int kernel, int threads,
         int order=DK_GEMM_ORDER_AMX):
    """out[z] = a[z] @ b[z] (3-D uint16 BF16 codes or uint8 codes through the 256-entry
    tables; an operand with batch extent 1 is shared by every item of out) in the
    accumulation order `order` (ORDER_AMX or ORDER_VDPBF16PS). Returns status (2: a bad
    isa or order)."""
    cdef dk_gemm_operand oa, ob
    cdef int64_t batch = out.shape[0], m = out.shape[1], n = out.shape[2]
    cdef int64_t k = a.shape[2]
    cdef int rc
    if (a.ndim != 3 or b.ndim != 3 or a.shape[1] != m or b.shape[2] != n or b.shape[1] != k
            or a.shape[0] not in (1, batch) or b.shape[0] not in (1, batch)):
        raise ValueError(f"gemm: shapes a {a.shape}, b {b.shape}, out "
                         f"{(out.shape[0], out.shape[1], out.shape[2])} do not match")
    _fill(&oa, a, table_a, "a")
    _fill(&ob, b, table_b, "b")
    cdef float *po = &out[0, 0, 0] if out.shape[0] and out.shape[1] and out.shape[2] else NULL
    cdef int64_t ldo = out.strides[1] // sizeof(float), bso = out.strides[0] // sizeof(float)
    with nogil:
        rc = dk_gemm(batch, m, n, k, &oa, &ob, scale, po, ldo, bso, isa, kernel, threads, order)
    return rc


def probe(str which, int64_t iters):
    """FLOP count of `iters` rounds of the named peak probe (bench only; check the tier first)."""
    cdef double r
    if which == "vdpbf16ps_zmm":
        with nogil:
            r = dk_probe_vdpbf16ps_zmm(iters)
    elif which == "fma_zmm":
        with nogil:
            r = dk_probe_fma_zmm(iters)
    elif which == "tdpbf16ps":
        with nogil:
            r = dk_probe_tdpbf16ps(iters)
    elif which == "fma_ymm":
        with nogil:
            r = dk_probe_fma_ymm(iters)
    else:
        raise ValueError(f"which: unknown probe {which!r}")
    return r


def step_generic(float acc, float a, float b):
    """One accumulation step of the generic tier (tests)."""
    return dk_gemm_step_generic(acc, a, b)


def add_generic(float x, float y):
    """One addition step (FTZ) of the generic tier's amx order (tests)."""
    return dk_gemm_add_generic(x, y)


def amx_tdpbf16ps(const uint16_t[:, :] a, const uint32_t[:, :] b, float[:, :] c):
    """c += one TDPBF16PS of a (m x 2K BF16 codes) and b (K x n pair lanes), in place.

    Tests only: the caller checks that the CPU has the amx tier (a tile instruction on a
    CPU without it raises SIGILL). 1 <= m, n, K <= 16.
    """
    cdef int m = a.shape[0], kk = a.shape[1], kp = b.shape[0], n = b.shape[1]
    if not (1 <= m <= 16 and 1 <= n <= 16 and 1 <= kp <= 16 and kk == 2 * kp):
        raise ValueError(f"amx_tdpbf16ps: shapes a {m}x{kk}, b {kp}x{n}: expected "
                         "m, n, K in 1..16 and a with 2K columns")
    if c.shape[0] != m or c.shape[1] != n:
        raise ValueError(f"amx_tdpbf16ps: c must be {m}x{n}, got {c.shape[0]}x{c.shape[1]}")
    if (a.strides[1] != 2 or b.strides[1] != 4 or c.strides[1] != 4 or a.strides[0] % 2
            or b.strides[0] % 4 or c.strides[0] % 4 or a.strides[0] < 0 or b.strides[0] < 0
            or c.strides[0] < 0):
        raise ValueError("amx_tdpbf16ps: rows must be contiguous, row strides positive")
    with nogil:
        dk_amx_tdpbf16ps(&a[0, 0], a.strides[0] // 2, &b[0, 0], b.strides[0] // 4,
                         &c[0, 0], c.strides[0] // 4, m, n, kp)


def bf16_range(const uint16_t[:, :, :] a, int threads=1):
    """(smallest nonzero, largest finite) magnitude bits of BF16 codes; (0x7FFF, 0) if none."""
    cdef uint16_t lo = 0x7FFF, hi = 0
    cdef const uint16_t *p = &a[0, 0, 0] if a.shape[0] and a.shape[1] and a.shape[2] else NULL
    if p == NULL:
        return 0x7FFF, 0
    with nogil:
        dk_gemm_bf16_range(p, a.shape[0], a.shape[1], a.shape[2], a.strides[0] // 2,
                           a.strides[1] // 2, a.strides[2] // 2, &lo, &hi, threads)
    return lo, hi


# One pool per process: forward parallel calls to the pool of dojo_kernels._cpu.
from cpython.pycapsule cimport PyCapsule_GetPointer
from dojo_kernels import _cpu as _cpu_mod

cdef extern from "dk_pool.h":
    ctypedef int (*dk_pool_run_fn)(int, int64_t, void *, void *)
    void dk_pool_forward_to(dk_pool_run_fn f)

dk_pool_forward_to(<dk_pool_run_fn>PyCapsule_GetPointer(_cpu_mod._pool_capsule(), b"dojo_kernels.pool"))


def release_cache():
    """Free the packing buffer the driver keeps between calls (registered at exit)."""
    dk_gemm_release_cache()


import atexit as _atexit
_atexit.register(release_cache)
