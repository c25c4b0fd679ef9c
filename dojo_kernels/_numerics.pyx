# Thin glue over csrc/convert_driver.c: raw contiguous byte buffers in, C driver with the
# GIL released. All validation lives in dojo_kernels/numerics.py.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from dojo_kernels.dk_convert cimport (dk_format, dk_flags, dk_quantize, dk_dequantize,
                                        dk_fake_quantize, dk_arith, dk_maxabs,
                                        dk_arith_test_under_mxcsr)


cdef dk_format _fmt(tuple t):
    cdef dk_format f
    f.ebits, f.mbits, f.bias, f.is_signed, f.sub, f.has_inf_nan, f.nan_code = t
    return f


def quantize(const uint8_t[::1] x, int xkind, uint8_t[::1] out, int64_t n, tuple fmt, int mode,
             uint64_t seed, bint want_flags, int isa, int nthreads):
    cdef dk_format f = _fmt(fmt)
    cdef dk_flags fl
    with nogil:
        dk_quantize(&x[0], xkind, &out[0], n, &f, mode, seed, &fl if want_flags else NULL,
                    isa, nthreads)
    if want_flags:
        return (fl.invalid, fl.denormal, fl.overflow, fl.underflow)
    return None


def dequantize(const uint8_t[::1] codes, uint8_t[::1] out, int okind, int64_t n, tuple fmt,
               int isa, int nthreads):
    cdef dk_format f = _fmt(fmt)
    with nogil:
        dk_dequantize(&codes[0], &out[0], okind, n, &f, isa, nthreads)


def fake_quantize(const uint8_t[::1] x, int xkind, uint8_t[::1] out, int64_t n, tuple fmt,
                  int mode, uint64_t seed, int isa, int nthreads):
    cdef dk_format f = _fmt(fmt)
    with nogil:
        dk_fake_quantize(&x[0], xkind, &out[0], n, &f, mode, seed, isa, nthreads)


def arith(int op, const uint8_t[::1] a, const uint8_t[::1] b, const uint8_t[::1] c,
          uint8_t[::1] out, int64_t n, tuple fmt, int mode, uint64_t seed, int isa,
          int nthreads):
    cdef dk_format f = _fmt(fmt)
    cdef dk_flags fl
    with nogil:
        dk_arith(op, &a[0], &b[0], &c[0], &out[0], n, &f, mode, seed, &fl, isa, nthreads)
    return (fl.invalid, fl.denormal, fl.overflow, fl.underflow)


def maxabs(x, int xkind, int64_t n, int nthreads):
    """max |x| of a C-contiguous float32/float64/bf16-bits array of n elements (NaN if any
    element is NaN), in one pass. x is any object exporting a contiguous buffer."""
    cdef const uint8_t[::1] v = x
    cdef double r
    with nogil:
        r = dk_maxabs(&v[0], xkind, n, nthreads)
    return r



def _arith_under_mxcsr(unsigned csr, int op, const uint8_t[::1] a, const uint8_t[::1] b,
                       const uint8_t[::1] c, uint8_t[::1] out, int64_t n, tuple fmt, int mode,
                       uint64_t seed, int isa):
    """Test only: arith on one thread with this thread's MXCSR set to csr for the call.
    Returns (flags, MXCSR seen right after the call), or None where there is no MXCSR."""
    cdef dk_format f = _fmt(fmt)
    cdef dk_flags fl
    cdef unsigned after = 0
    cdef int rc
    with nogil:
        rc = dk_arith_test_under_mxcsr(csr, op, &a[0], &b[0], &c[0], &out[0], n, &f, mode, seed,
                                       &fl, isa, &after)
    if rc < 0:
        return None
    return (fl.invalid, fl.denormal, fl.overflow, fl.underflow), after


# One pool per process: forward parallel calls to the pool of dojo_kernels._cpu.
from cpython.pycapsule cimport PyCapsule_GetPointer
from dojo_kernels import _cpu as _cpu_mod

cdef extern from "dk_pool.h":
    void dk_pool_forward_to(const void *entry)

dk_pool_forward_to(PyCapsule_GetPointer(_cpu_mod._pool_capsule(), b"dojo_kernels.pool"))
