# Thin glue for the GEMM driver (csrc/gemm_driver.c). Validation lives in gemm.py.
from libc.stdint cimport int64_t, uint8_t, uint16_t

cdef extern from "dk_gemm.h":
    ctypedef struct dk_gemm_operand:
        const void *ptr
        int64_t bs, rs, cs
        int kind
        const uint16_t *table
    int DK_GEMM_U16, DK_GEMM_U8
    int dk_gemm(int64_t batch, int64_t m, int64_t n, int64_t k,
                const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                float *out, int64_t ldo, int64_t bso, int isa, int kernel, int threads) nogil
    double dk_probe_vdpbf16ps_zmm(int64_t iters) nogil
    double dk_probe_fma_zmm(int64_t iters) nogil
    double dk_probe_fma_ymm(int64_t iters) nogil
    float dk_gemm_step_generic(float acc, float a, float b) nogil

ctypedef fused code_a:
    uint8_t
    uint16_t

ctypedef fused code_b:
    uint8_t
    uint16_t


def gemm(const code_a[:, :, :] a, const code_b[:, :, :] b, const uint16_t[::1] table_a,
         const uint16_t[::1] table_b, float scale, float[:, :, ::1] out, int isa, int kernel, int threads):
    """out[z] = a[z] @ b[z] (codes; 8-bit codes through the 256-entry tables). Returns status."""
    cdef dk_gemm_operand oa, ob
    cdef int64_t batch = a.shape[0], m = a.shape[1], k = a.shape[2], n = b.shape[2]
    cdef int rc
    # The driver addresses elements as pointer + (stride // itemsize) * index: gemm.py
    # copies any operand whose strides or pointer are not multiples of the item size.
    # (A stride of an extent-1 axis is never used.)
    cdef int d
    for d in range(3):
        if a.shape[d] > 1 and a.strides[d] % <Py_ssize_t>sizeof(code_a):
            raise ValueError(f"a: stride {a.strides[d]} is not a multiple of the item size")
        if b.shape[d] > 1 and b.strides[d] % <Py_ssize_t>sizeof(code_b):
            raise ValueError(f"b: stride {b.strides[d]} is not a multiple of the item size")
    # Empty shapes (and k == 0: zeros) are the driver's business; only take pointers that exist.
    oa.ptr = &a[0, 0, 0] if a.shape[0] and a.shape[1] and a.shape[2] else NULL
    oa.bs = a.strides[0] // sizeof(code_a)
    oa.rs = a.strides[1] // sizeof(code_a)
    oa.cs = a.strides[2] // sizeof(code_a)
    oa.kind = DK_GEMM_U8 if code_a is uint8_t else DK_GEMM_U16
    oa.table = &table_a[0]
    ob.ptr = &b[0, 0, 0] if b.shape[0] and b.shape[1] and b.shape[2] else NULL
    ob.bs = b.strides[0] // sizeof(code_b)
    ob.rs = b.strides[1] // sizeof(code_b)
    ob.cs = b.strides[2] // sizeof(code_b)
    ob.kind = DK_GEMM_U8 if code_b is uint8_t else DK_GEMM_U16
    ob.table = &table_b[0]
    cdef float *po = &out[0, 0, 0] if out.shape[0] and out.shape[1] and out.shape[2] else NULL
    cdef int64_t ldo = out.strides[1] // sizeof(float), bso = out.strides[0] // sizeof(float)
    with nogil:
        rc = dk_gemm(batch, m, n, k, &oa, &ob, scale, po, ldo, bso, isa, kernel, threads)
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
    elif which == "fma_ymm":
        with nogil:
            r = dk_probe_fma_ymm(iters)
    else:
        raise ValueError(f"which: unknown probe {which!r}")
    return r


def step_generic(float acc, float a, float b):
    """One accumulation step of the generic tier (tests)."""
    return dk_gemm_step_generic(acc, a, b)


# One pool per process: forward parallel calls to the pool of dojo_kernels._cpu.
from cpython.pycapsule cimport PyCapsule_GetPointer
from dojo_kernels import _cpu as _cpu_mod

cdef extern from "dk_pool.h":
    ctypedef int (*dk_pool_run_fn)(int, int64_t, void *, void *)
    void dk_pool_forward_to(dk_pool_run_fn f)

dk_pool_forward_to(<dk_pool_run_fn>PyCapsule_GetPointer(_cpu_mod._pool_capsule(), b"dojo_kernels.pool"))
