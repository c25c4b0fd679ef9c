# Thin glue over csrc/convert_driver.c: raw contiguous byte buffers in, C driver with the
# GIL released. Argument validation lives in dojo_kernels/numerics/; the glue checks only
# what memory safety needs where it takes raw buffers (arith: sizes, alignment, overlap).
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from dojo_kernels.dk_convert cimport (dk_format, dk_flags, dk_quantize, dk_dequantize,
                                        dk_fake_quantize, dk_arith, dk_maxabs,
                                        dk_arith_test_under_mxcsr, dk_code_width)


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


cdef int _check_codes(const Py_buffer *v, str name, Py_ssize_t nbytes, int width) except -1:
    if v.len != nbytes:
        raise ValueError(f"{name}: expected {nbytes} bytes ({nbytes // width} codes), got {v.len}")
    if (<size_t>v.buf) % width:
        raise ValueError(f"{name}: the buffer is not aligned to its {width}-byte codes")
    return 0


cdef bint _partial_overlap(const Py_buffer *o, const Py_buffer *v) noexcept:
    """Do the two equal-length buffers overlap other than exactly (in place)?"""
    cdef const char *p = <const char *>o.buf
    cdef const char *q = <const char *>v.buf
    return p != q and p < q + v.len and q < p + o.len


def arith(int op, a, b, c, out, int64_t n, tuple fmt, int mode, uint64_t seed, int isa,
          int nthreads):
    """a, b, c, out: C-contiguous buffers of n codes each (read as bytes: the buffer protocol
    directly, with no typed memoryview or byte view to set up per call, as this runs on every
    call of add/sub/mul/fma). Returns the flag counts, or None without computing anything when
    out overlaps an input other than element for element (the caller then gives a new out)."""
    cdef dk_format f = _fmt(fmt)
    cdef dk_flags fl
    cdef int width = dk_code_width(&f)
    cdef Py_ssize_t nbytes = n * width
    cdef Py_buffer va, vb, vc, vo
    cdef int held = 0
    try:
        PyObject_GetBuffer(a, &va, PyBUF_SIMPLE)
        held = 1
        PyObject_GetBuffer(b, &vb, PyBUF_SIMPLE)
        held = 2
        PyObject_GetBuffer(c, &vc, PyBUF_SIMPLE)
        held = 3
        PyObject_GetBuffer(out, &vo, PyBUF_WRITABLE)
        held = 4
        _check_codes(&va, "a", nbytes, width)
        _check_codes(&vb, "b", nbytes, width)
        _check_codes(&vc, "c", nbytes, width)
        _check_codes(&vo, "out", nbytes, width)
        if _partial_overlap(&vo, &va) or _partial_overlap(&vo, &vb) or _partial_overlap(&vo, &vc):
            return None
        with nogil:
            dk_arith(op, va.buf, vb.buf, vc.buf, vo.buf, n, &f, mode, seed, &fl, isa, nthreads)
    finally:
        if held >= 4:
            PyBuffer_Release(&vo)
        if held >= 3:
            PyBuffer_Release(&vc)
        if held >= 2:
            PyBuffer_Release(&vb)
        if held >= 1:
            PyBuffer_Release(&va)
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
