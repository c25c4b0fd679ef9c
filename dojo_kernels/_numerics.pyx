# Thin glue over csrc/convert_driver.c: raw contiguous byte buffers in, C driver with the
# GIL released. Argument validation lives in dojo_kernels/numerics/; the glue checks what
# memory safety needs where it takes raw buffers (sizes, alignment, writability, overlap).
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from dojo_kernels.dk_convert cimport (dk_format, dk_flags, dk_quantize, dk_dequantize,
                                        dk_fake_quantize, dk_arith, dk_maxabs,
                                        dk_arith_test_under_mxcsr, dk_code_width, dk_lut2)


cdef dk_format _fmt(tuple t):
    cdef dk_format f
    f.ebits, f.mbits, f.bias, f.is_signed, f.sub, f.has_inf_nan, f.nan_code = t
    return f


cdef int _take(object o, Py_buffer *v, int flags, str name, int64_t n, int width) except -1:
    """Take o's buffer (C-contiguous: PyBUF_SIMPLE asks for one) into v, holding exactly n
    elements of width bytes, aligned to them; on any failure nothing is held."""
    if n < 0 or n > PY_SSIZE_T_MAX // width:
        raise ValueError(f"n: expected 0 <= n <= {PY_SSIZE_T_MAX // width}, got {n}")
    cdef Py_ssize_t nbytes = n * width
    PyObject_GetBuffer(o, v, flags)
    if v.len != nbytes:
        PyBuffer_Release(v)
        raise ValueError(f"{name}: expected {nbytes} bytes ({nbytes // width} elements of "
                         f"{width} bytes), got {v.len}")
    if (<size_t>v.buf) % width:
        PyBuffer_Release(v)
        raise ValueError(f"{name}: the buffer is not aligned to its {width}-byte elements")
    return 0


cdef bint _intersect(const Py_buffer *o, const Py_buffer *v) noexcept:
    """Do the two buffers share any byte?"""
    cdef const char *p = <const char *>o.buf
    cdef const char *q = <const char *>v.buf
    return p < q + v.len and q < p + o.len


cdef bint _overlap(const Py_buffer *o, const Py_buffer *v) noexcept:
    """Does out (o) share memory with the input v other than exactly, element for element
    (same start, same length: in place)? The kernels run blocks in parallel and in vectors,
    so any other overlap could read an element after it was written."""
    if o.buf == v.buf and o.len == v.len:
        return False
    return _intersect(o, v)


cdef int _kind_width(int kind, str name) except -1:
    if kind == 0:       # DK_F32
        return 4
    if kind == 1:       # DK_F64
        return 8
    if kind == 2:       # DK_BF16IN
        return 2
    raise ValueError(f"{name}: expected 0 (float32), 1 (float64) or 2 (bfloat16), got {kind}")


# The glue below takes its arrays through the buffer protocol directly (no typed memoryview
# or byte view to set up per call: these run on every call of the numerics API). Each array
# must be C-contiguous with exactly n elements of its kind, aligned to them; out must be
# writable. When out overlaps an input other than element for element, nothing runs and the
# call returns None (the caller then gives a new out).

cdef void _release(Py_buffer *v, int held) noexcept:
    """Release the first held buffers of v (those _take filled), the last taken first."""
    while held > 0:
        held -= 1
        PyBuffer_Release(&v[held])


cdef bint _take_in_out(Py_buffer *v, int *held, x, str xname, int xw, out, int ow,
                       int64_t n) except -1:
    """The conversions' two buffers: the input into v[0], out (writable) into v[1], counting
    them in *held for _release. True when out overlaps the input other than in place."""
    _take(x, &v[0], PyBUF_SIMPLE, xname, n, xw)
    held[0] = 1
    _take(out, &v[1], PyBUF_WRITABLE, "out", n, ow)
    held[0] = 2
    return _overlap(&v[1], &v[0])


def quantize(x, int xkind, out, int64_t n, tuple fmt, int mode, uint64_t seed,
             bint want_flags, int isa, int nthreads):
    """Returns the flag counts (zeros unless want_flags), or None on an overlap."""
    cdef dk_format f = _fmt(fmt)
    cdef dk_flags fl
    cdef int xw = _kind_width(xkind, "xkind")
    cdef int w = dk_code_width(&f)
    cdef Py_buffer v[2]
    cdef int held = 0
    fl.invalid = fl.denormal = fl.overflow = fl.underflow = 0
    try:
        if _take_in_out(v, &held, x, "x", xw, out, w, n):
            return None
        with nogil:
            dk_quantize(v[0].buf, xkind, v[1].buf, n, &f, mode, seed,
                        &fl if want_flags else NULL, isa, nthreads)
    finally:
        _release(v, held)
    return (fl.invalid, fl.denormal, fl.overflow, fl.underflow)


def dequantize(codes, out, int okind, int64_t n, tuple fmt, int isa, int nthreads):
    """out: float32 (okind 0) or float64 (okind 1). Returns True, or None on an overlap."""
    cdef dk_format f = _fmt(fmt)
    cdef int w = dk_code_width(&f)
    cdef int ow = _kind_width(okind, "okind")
    cdef Py_buffer v[2]
    cdef int held = 0
    if okind == 2:
        raise ValueError("okind: expected 0 (float32) or 1 (float64), got 2")
    try:
        if _take_in_out(v, &held, codes, "codes", w, out, ow, n):
            return None
        with nogil:
            dk_dequantize(v[0].buf, v[1].buf, okind, n, &f, isa, nthreads)
    finally:
        _release(v, held)
    return True


def fake_quantize(x, int xkind, out, int64_t n, tuple fmt, int mode, uint64_t seed, int isa,
                  int nthreads):
    """out: of x's kind. Returns True, or None on an overlap."""
    cdef dk_format f = _fmt(fmt)
    cdef int xw = _kind_width(xkind, "xkind")
    cdef Py_buffer v[2]
    cdef int held = 0
    try:
        if _take_in_out(v, &held, x, "x", xw, out, xw, n):
            return None
        with nogil:
            dk_fake_quantize(v[0].buf, xkind, v[1].buf, n, &f, mode, seed, isa, nthreads)
    finally:
        _release(v, held)
    return True


def arith(int op, a, b, c, out, int64_t n, tuple fmt, int mode, uint64_t seed, bint want_flags,
          int isa, int nthreads):
    """a, b, c, out: n codes each. Returns the flag counts (zeros unless want_flags: the
    kernels then count none), or None on an overlap."""
    cdef dk_format f = _fmt(fmt)
    cdef dk_flags fl
    cdef int width = dk_code_width(&f)
    cdef Py_buffer v[4]  # a, b, c, out
    cdef int held = 0
    fl.invalid = fl.denormal = fl.overflow = fl.underflow = 0
    try:
        _take(a, &v[0], PyBUF_SIMPLE, "a", n, width)
        held = 1
        _take(b, &v[1], PyBUF_SIMPLE, "b", n, width)
        held = 2
        _take(c, &v[2], PyBUF_SIMPLE, "c", n, width)
        held = 3
        _take(out, &v[3], PyBUF_WRITABLE, "out", n, width)
        held = 4
        if _overlap(&v[3], &v[0]) or _overlap(&v[3], &v[1]) or _overlap(&v[3], &v[2]):
            return None
        with nogil:
            dk_arith(op, v[0].buf, v[1].buf, v[2].buf, v[3].buf, n, &f, mode, seed,
                     &fl if want_flags else NULL, isa, nthreads)
    finally:
        _release(v, held)
    return (fl.invalid, fl.denormal, fl.overflow, fl.underflow)


def lut2(table, a, b, out, int64_t n, int nthreads):
    """out[i] = table[a[i] << 8 | b[i]] for n 8-bit codes (table: 65,536 codes). Returns True,
    or None on an overlap."""
    cdef Py_buffer v[4]  # table, a, b, out
    cdef int held = 0
    try:
        _take(table, &v[0], PyBUF_SIMPLE, "table", 65536, 1)
        held = 1
        _take(a, &v[1], PyBUF_SIMPLE, "a", n, 1)
        held = 2
        _take(b, &v[2], PyBUF_SIMPLE, "b", n, 1)
        held = 3
        _take(out, &v[3], PyBUF_WRITABLE, "out", n, 1)
        held = 4
        # (any overlap with the table, exact or not: it is read in any order)
        if _overlap(&v[3], &v[1]) or _overlap(&v[3], &v[2]) or _intersect(&v[3], &v[0]):
            return None
        with nogil:
            dk_lut2(v[0].buf, v[1].buf, v[2].buf, v[3].buf, n, nthreads)
    finally:
        _release(v, held)
    return True


def maxabs(x, int xkind, int64_t n, int nthreads):
    """max |x| of a C-contiguous float32/float64/bf16-bits array of n elements (NaN if any
    element is NaN), in one pass. x is any object exporting a contiguous buffer."""
    cdef int xw = _kind_width(xkind, "xkind")
    cdef Py_buffer v[1]
    cdef double r
    _take(x, &v[0], PyBUF_SIMPLE, "x", n, xw)
    try:
        with nogil:
            r = dk_maxabs(v[0].buf, xkind, n, nthreads)
    finally:
        _release(v, 1)
    return r



def _arith_under_mxcsr(unsigned csr, int op, const uint8_t[::1] a, const uint8_t[::1] b,
                       const uint8_t[::1] c, uint8_t[::1] out, int64_t n, tuple fmt, int mode,
                       uint64_t seed, int isa, bint want_flags=True):
    """Test only: arith on one thread with this thread's MXCSR set to csr for the call.
    Returns (flags, MXCSR seen right after the call), or None where there is no MXCSR;
    without want_flags no flag is counted (zeros)."""
    cdef dk_format f = _fmt(fmt)
    cdef dk_flags fl
    cdef unsigned after = 0
    cdef int rc
    cdef Py_ssize_t nbytes = n * dk_code_width(&f)
    if n < 0 or a.shape[0] != nbytes or b.shape[0] != nbytes or c.shape[0] != nbytes \
            or out.shape[0] != nbytes:
        raise ValueError(f"a, b, c, out: expected {nbytes} bytes each for n={n}")
    fl.invalid = fl.denormal = fl.overflow = fl.underflow = 0
    with nogil:
        rc = dk_arith_test_under_mxcsr(csr, op, &a[0], &b[0], &c[0], &out[0], n, &f, mode, seed,
                                       &fl if want_flags else NULL, isa, &after)
    if rc < 0:
        return None
    return (fl.invalid, fl.denormal, fl.overflow, fl.underflow), after


# One pool per process: forward parallel calls to the pool of dojo_kernels._cpu.
from cpython.pycapsule cimport PyCapsule_GetPointer
from dojo_kernels import _cpu as _cpu_mod

cdef extern from "dk_pool.h":
    void dk_pool_forward_to(const void *entry)

dk_pool_forward_to(PyCapsule_GetPointer(_cpu_mod._pool_capsule(), b"dojo_kernels.pool"))
