# Thin glue over csrc/convert_driver.c: raw contiguous byte buffers in, C driver with the
# GIL released. All validation lives in dojo_kernels/numerics.py.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

cdef extern from "dk_convert.h":
    ctypedef struct dk_format:
        int ebits, mbits, bias, is_signed, sub, has_inf_nan
        uint32_t nan_code
    ctypedef struct dk_flags:
        int64_t invalid, denormal, overflow, underflow
    int dk_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f, int mode,
                    uint64_t seed, dk_flags *flags, int isa, int nthreads) nogil
    int dk_dequantize(const void *codes, void *out, int okind, int64_t n, const dk_format *f,
                      int isa, int nthreads) nogil
    int dk_fake_quantize(const void *x, int xkind, void *out, int64_t n, const dk_format *f,
                         int mode, uint64_t seed, int isa, int nthreads) nogil
    int dk_arith(int op, const void *a, const void *b, const void *c, void *out, int64_t n,
                 const dk_format *f, int mode, uint64_t seed, dk_flags *flags, int nthreads) nogil


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
          uint8_t[::1] out, int64_t n, tuple fmt, int mode, uint64_t seed, int nthreads):
    cdef dk_format f = _fmt(fmt)
    cdef dk_flags fl
    with nogil:
        dk_arith(op, &a[0], &b[0], &c[0], &out[0], n, &f, mode, seed, &fl, nthreads)
    return (fl.invalid, fl.denormal, fl.overflow, fl.underflow)


# One pool per process: forward parallel calls to the pool of dojo_kernels._cpu.
from cpython.pycapsule cimport PyCapsule_GetPointer
from dojo_kernels import _cpu as _cpu_mod

cdef extern from "dk_pool.h":
    ctypedef int (*dk_pool_run_fn)(int, int64_t, void *, void *)
    void dk_pool_forward_to(dk_pool_run_fn f)

dk_pool_forward_to(<dk_pool_run_fn>PyCapsule_GetPointer(_cpu_mod._pool_capsule(), b"dojo_kernels.pool"))
