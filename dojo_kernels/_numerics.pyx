# Thin glue over csrc/convert_driver.c: raw contiguous byte buffers in, C driver with the
# GIL released. Argument validation lives in dojo_kernels/numerics/; the glue checks what
# memory safety needs where it takes raw buffers (sizes, alignment, writability, overlap).
from cpython.buffer cimport (PyBUF_FORMAT, PyBUF_ND, PyBUF_SIMPLE, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)
cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from dojo_kernels.dk_convert cimport (dk_format, dk_flags, dk_quantize, dk_dequantize,
                                        dk_fake_quantize, dk_arith, dk_maxabs,
                                        dk_arith_test_under_mxcsr, dk_code_width, dk_lut2)

import numpy as _np
_ndarray = _np.ndarray


#: New results of this many bytes or more start on a 64-byte line (NumPy guarantees 16):
#: codes used as W in `x @ W.T` on the amx tier are loaded as tiles where they lie, and a
#: tile row that straddles two lines costs (docs/gemm.md, "B = W.T on the tiles").
LINE_ALIGN_MIN = 1 << 18


def empty_lined(tuple shape, dtype):
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``; from LINE_ALIGN_MIN
    bytes on, a view whose first element is on a 64-byte line."""
    cdef Py_ssize_t nbytes = _np.dtype(dtype).itemsize
    cdef Py_ssize_t off
    cdef uint8_t[::1] mv
    for d in shape:
        nbytes *= d
    if nbytes < LINE_ALIGN_MIN:
        return _np.empty(shape, dtype)
    buf = _np.empty(nbytes + 64, _np.uint8)
    mv = buf
    off = (-<Py_ssize_t>(<size_t>&mv[0])) & 63
    return buf[off:off + nbytes].view(dtype).reshape(shape)


cdef object _new_result(Py_buffer *like, Py_ssize_t nbytes, dtype):
    """A new result of like's shape and dtype, nbytes long: NumPy's own below
    LINE_ALIGN_MIN (the small calls pay nothing more), else empty_lined's."""
    shape = tuple([like.shape[i] for i in range(like.ndim)])
    return _np.empty(shape, dtype) if nbytes < LINE_ALIGN_MIN else empty_lined(shape, dtype)


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


_F32_DTYPE, _F64_DTYPE = _np.dtype(_np.float32), _np.dtype(_np.float64)


def convert_plain(int entry, x, out, tuple fmt, dtype, int okind, int mode, uint64_t seed,
                  bint want_flags, int isa, int nthreads):
    """The common call of a conversion in one step, with no checks in Python. entry 0:
    quantize x (float32 or float64) into codes of fmt (dtype: their storage type); 1:
    dequantize codes of fmt (x) into okind's float type (0 float32, 1 float64: dtype); 2:
    fake_quantize x (float32 or float64) into its own type (dtype unused). x a NumPy array
    of that type, C-contiguous and aligned; out None (a new array) or such an array of x's
    shape and the result's type, writable, meeting x in place (same width) or not at all.
    Returns (the array written, the flag counts (entry 0; zeros unless want_flags) or
    True), or None, having computed nothing, for any other call: the caller's general path
    then checks and runs it."""
    cdef dk_format f = _fmt(fmt)
    cdef int w = dk_code_width(&f)
    cdef dk_flags fl
    cdef Py_buffer v[2]  # x, out
    cdef int held = 0, xkind = okind, xw, ow
    cdef char xc, oc
    cdef int64_t n
    cdef object dst = out
    fl.invalid = fl.denormal = fl.overflow = fl.underflow = 0
    if entry == 1:
        if okind != 0 and okind != 1:
            return None
        xc, xw, oc, ow = _code_char(w), w, b"f" if okind == 0 else b"d", 4 << okind
    elif entry == 0 or entry == 2:
        if type(x) is not _ndarray:
            return None
        xkind = 0 if x.dtype is _F32_DTYPE else 1 if x.dtype is _F64_DTYPE else -1
        if xkind < 0:
            return None
        xc, xw = b"f" if xkind == 0 else b"d", 4 << xkind
        oc, ow = (_code_char(w), w) if entry == 0 else (xc, xw)
        if entry == 2:
            dtype = x.dtype
    else:
        return None
    try:
        if not _take_plain(x, &v[0], PyBUF_SIMPLE, xc, xw):
            return None
        held = 1
        n = v[0].len // xw
        if dst is None:
            dst = _new_result(&v[0], n * ow, dtype)
        if not _take_plain(dst, &v[1], PyBUF_WRITABLE, oc, ow):
            return None
        held = 2
        if not _same_shape(&v[0], &v[1]) or _overlap(&v[1], &v[0]):
            return None
        if n:
            with nogil:
                if entry == 0:
                    dk_quantize(v[0].buf, xkind, v[1].buf, n, &f, mode, seed,
                                &fl if want_flags else NULL, isa, nthreads)
                elif entry == 1:
                    dk_dequantize(v[0].buf, v[1].buf, okind, n, &f, isa, nthreads)
                else:
                    dk_fake_quantize(v[0].buf, xkind, v[1].buf, n, &f, mode, seed, isa,
                                     nthreads)
    finally:
        _release(v, held)
    if entry == 0:
        return dst, (fl.invalid, fl.denormal, fl.overflow, fl.underflow)
    return dst, True


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


cdef char _code_char(int width) noexcept:
    """The buffer format character of the storage type of codes of that width: uint8,
    uint16, or FP32's float32."""
    return b"B" if width == 1 else b"H" if width == 2 else b"f"


cdef bint _take_plain(object o, Py_buffer *v, int flags, char code, int width) noexcept:
    """Take the buffer of o into v when o is a NumPy array (not a subclass), C-contiguous
    and aligned, of the native type whose buffer format is the one character `code` ("B":
    uint8, "H": uint16, "f": float32, "d": float64) and whose elements are `width` bytes,
    and, for out (flags PyBUF_WRITABLE), writable. Otherwise hold nothing, clear
    any error and return False. The shape comes with the buffer (PyBUF_ND)."""
    if type(o) is not _ndarray:
        return False
    try:
        PyObject_GetBuffer(o, v, flags | PyBUF_FORMAT | PyBUF_ND)
    except Exception:  # (not contiguous, read-only, no buffer format: the general path)
        return False
    # (NumPy exports an unaligned array with the format "=H"; the kernels need alignment
    # whatever the format says)
    if (v.format == NULL or v.format[0] != code or v.format[1] != 0
            or (<size_t>v.buf) % width):
        PyBuffer_Release(v)
        return False
    return True


cdef bint _same_shape(const Py_buffer *v, const Py_buffer *w) noexcept:
    if v.ndim != w.ndim:
        return False
    for i in range(v.ndim):
        if v.shape[i] != w.shape[i]:
            return False
    return True


def arith_plain(int op, tuple operands, out, tuple fmt, dtype, int mode, uint64_t seed,
                bint want_flags, int isa, int nthreads, int64_t max_n):
    """The common call of add/sub/mul/fma in one step, with no checks in Python: every
    operand (two, or three for fma) a NumPy array of fmt's native storage type (dtype:
    uint8, uint16, or float32 for FP32), C-contiguous and aligned, all of one shape, at most
    max_n elements; out None (a new array of dtype) or such an array of that shape,
    writable, meeting each operand in place or not at all. Returns (the array written, the
    flag counts), or None, having computed nothing, for any other call: the caller's
    general path then checks and runs it."""
    cdef dk_format f = _fmt(fmt)
    cdef dk_flags fl
    cdef int width = dk_code_width(&f)
    cdef char code = _code_char(width)
    cdef Py_buffer v[4]  # a, b, then c (fma) and out
    cdef int held = 0, k = len(operands)
    cdef int64_t n
    cdef object dst = out
    if k != 2 and k != 3:
        return None
    fl.invalid = fl.denormal = fl.overflow = fl.underflow = 0
    try:
        for i in range(k):
            if not _take_plain(operands[i], &v[held], PyBUF_SIMPLE, code, width):
                return None
            held += 1
            if i and not _same_shape(&v[0], &v[i]):
                return None
        n = v[0].len // width
        if n > max_n:
            return None
        if dst is None:
            dst = _new_result(&v[0], n * width, dtype)
        if not _take_plain(dst, &v[held], PyBUF_WRITABLE, code, width):
            return None
        held += 1
        if not _same_shape(&v[0], &v[k]):
            return None
        for i in range(k):
            if _overlap(&v[k], &v[i]):
                return None
        if n:
            with nogil:
                dk_arith(op, v[0].buf, v[1].buf, v[2].buf if k == 3 else v[0].buf, v[k].buf,
                         n, &f, mode, seed, &fl if want_flags else NULL, isa, nthreads)
    finally:
        _release(v, held)
    return dst, (fl.invalid, fl.denormal, fl.overflow, fl.underflow)


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
