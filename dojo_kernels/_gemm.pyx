# Thin glue for the GEMM driver (csrc/gemm_driver.c). Validation lives in gemm.py.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_STRIDES,
                             PyBUF_WRITABLE)

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
    int dk_gemm_ranges(int64_t batch, int64_t m, int64_t n, int64_t k,
                       const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                       float *out, int64_t ldo, int64_t bso, int isa, int kernel, int threads,
                       int order, uint16_t *arange, uint16_t *brange) nogil
    ctypedef struct dk_gemm_addend:
        const float *ptr
        int64_t bs, rs, cs
    int dk_gemm_addend_ranges(int64_t batch, int64_t m, int64_t n, int64_t k,
                              const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                              const dk_gemm_addend *term, float *out, int64_t ldo, int64_t bso,
                              int isa, int kernel, int threads, int order, uint16_t *arange,
                              uint16_t *brange) nogil
    int dk_gemm_test_under_mxcsr(unsigned csr, int64_t batch, int64_t m, int64_t n, int64_t k,
                                 const dk_gemm_operand *a, const dk_gemm_operand *b, float scale,
                                 const dk_gemm_addend *term, float *out, int64_t ldo,
                                 int64_t bso, int isa, int kernel, int order,
                                 unsigned *csr_after) nogil
    int DK_GEMM_SMALLM_MAX
    int64_t DK_GEMM_STREAM_MIN_BYTES
    int DK_GEMM_SMALLM_AMX_MAX
    int DK_GEMM_SMALLM_VDP_MAX
    int DK_GEMM_SMALLM_BT_MAX
    int DK_GEMM_SMALLM_BT_VDP_MAX
    int DK_GEMM_SMALLM_BT_TILE_MAX
    int DK_GEMM_SMALLM_BT_TILE_MIN
    int dk_gemm_range_paths(int isa, int kernel, int order, int64_t m, int64_t b_rs,
                            int64_t b_cs, int64_t k) nogil
    void dk_amx_tdpbf16ps(const uint16_t *a, int64_t lda, const uint32_t *b, int64_t ldb,
                          float *c, int64_t ldc, int m, int n, int kpairs) nogil
    double dk_probe_tdpbf16ps(int64_t iters) nogil
    void dk_gemm_release_cache() nogil
    int64_t dk_gemm_set_par_min(int64_t macs) nogil
    void dk_gemm_path_counts(int64_t counts[4]) nogil
    double dk_probe_vdpbf16ps_zmm(int64_t iters) nogil
    double dk_probe_fma_zmm(int64_t iters) nogil
    double dk_probe_fma_ymm(int64_t iters) nogil
    float dk_gemm_step_generic(float acc, float a, float b) nogil
    void dk_gemm_bf16_range(const uint16_t *p, int64_t d0, int64_t d1, int64_t d2, int64_t s0,
                            int64_t s1, int64_t s2, uint16_t *minnz, uint16_t *maxfin,
                            int threads) nogil
    float dk_gemm_add_generic(float x, float y) nogil

from dojo_kernels.dk_convert cimport dk_format, dk_flags, dk_quantize

#: Accumulation orders (the `order` argument of gemm; dk_gemm.h).
ORDER_VDPBF16PS = DK_GEMM_ORDER_VDPBF16PS
ORDER_AMX = DK_GEMM_ORDER_AMX
#: Most rows of the few-rows path with row-major B (where gemm_ranges measures B's range but
#: not A's; B = W.T: SMALLM_BT_MAX).
SMALLM_MAX = DK_GEMM_SMALLM_MAX
#: The same on the amx tier (beyond it the tile kernel is the faster).
SMALLM_AMX_MAX = DK_GEMM_SMALLM_AMX_MAX
#: The same in the vdpbf16ps order with row-major B (B = W.T: SMALLM_BT_VDP_MAX).
SMALLM_VDP_MAX = DK_GEMM_SMALLM_VDP_MAX
#: The most rows of the few-rows path with B = W.T (unit row stride), amx order (on the amx
#: tier: SMALLM_BT_TILE_MAX); the most rows of any few-rows path.
SMALLM_BT_MAX = DK_GEMM_SMALLM_BT_MAX
#: The same in the vdpbf16ps order.
SMALLM_BT_VDP_MAX = DK_GEMM_SMALLM_BT_VDP_MAX
#: With B = W.T on the amx tier, amx order: the tile kernel that reads W's rows as tiles
#: where they lie (dk_gemm_smallm_bt_amxtile) takes SMALLM_AMX_MAX + 1 to this many rows.
SMALLM_BT_TILE_MAX = DK_GEMM_SMALLM_BT_TILE_MAX
#: ... and from this many rows when W's rows start on 64-byte lines (BF16).
SMALLM_BT_TILE_MIN = DK_GEMM_SMALLM_BT_TILE_MIN
#: Result bytes above which the kernels may write the result with non-temporal stores.
STREAM_MIN_BYTES = DK_GEMM_STREAM_MIN_BYTES

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
         int order=DK_GEMM_ORDER_AMX, object term=None):
    """out[z] = a[z] @ b[z] (3-D uint16 BF16 codes or uint8 codes through the 256-entry
    tables; an operand with batch extent 1 is shared by every item of out) in the
    accumulation order `order` (ORDER_AMX or ORDER_VDPBF16PS), then + term[z] (None, or a
    float32 array of out's shape, any strides, 0 included: np.broadcast_to; one FP32 add
    per element, fused into the driver: dk_gemm_addend_ranges). Returns status (2: a bad
    isa or order)."""
    return _run(a, b, table_a, table_b, scale, out, isa, kernel, threads, order, NULL, NULL,
                term)


def _gemm_under_mxcsr(unsigned csr, object a, object b, const uint16_t[::1] table_a,
                      const uint16_t[::1] table_b, float scale, float[:, :, ::1] out, int isa,
                      int order, object term=None):
    """Test only: gemm on one thread with this thread's MXCSR set to csr for the call.
    Returns (status, the MXCSR right after the call); status -1: no MXCSR (not x86)."""
    cdef unsigned after = 0
    rc = _run(a, b, table_a, table_b, scale, out, isa, 0, 1, order, NULL, NULL, term, csr,
              &after)
    return rc, after


def range_paths(int isa, int kernel, int order, int64_t m, int64_t b_cs, int64_t b_rs=0,
                int64_t k=1):
    """(A measured, B measured) by gemm_ranges for BF16 operands of a nonempty product with
    m rows, depth k and B's column and row strides b_cs, b_rs (elements):
    dk_gemm_range_paths."""
    cdef int r = dk_gemm_range_paths(isa, kernel, order, m, b_rs, b_cs, k)
    return bool(r & 1), bool(r & 2)


def gemm_ranges(object a, object b, const uint16_t[::1] table_a, const uint16_t[::1] table_b,
                float scale, float[:, :, ::1] out, int isa, int kernel, int threads, int order,
                object term=None):
    """gemm, returning (status, range of A, range of B): each range is None where it was not
    measured (dk_gemm_ranges), else bf16_range's (smallest nonzero, largest finite
    magnitude bits) of that operand's codes."""
    cdef uint16_t ra[3]
    cdef uint16_t rb[3]
    rc = _run(a, b, table_a, table_b, scale, out, isa, kernel, threads, order, ra, rb, term)
    return rc, ((ra[0], ra[1]) if ra[2] else None), ((rb[0], rb[1]) if rb[2] else None)


cdef int _run(object a, object b, const uint16_t[::1] table_a, const uint16_t[::1] table_b,
              float scale, float[:, :, ::1] out, int isa, int kernel, int threads, int order,
              uint16_t *arange, uint16_t *brange, object term, long csr=-1,
              unsigned *csr_after=NULL) except -2:
    cdef dk_gemm_operand oa, ob
    cdef dk_gemm_addend ot
    cdef const dk_gemm_addend *pt = NULL
    cdef const float[:, :, :] vt
    cdef int d
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
    if term is not None:
        vt = term
        if vt.shape[0] != batch or vt.shape[1] != m or vt.shape[2] != n:
            raise ValueError(f"term: expected shape {(batch, m, n)}, got {term.shape}")
        for d in range(3):
            if vt.strides[d] % <Py_ssize_t>sizeof(float):
                raise ValueError(f"term: stride {vt.strides[d]} is not a multiple of 4")
        if batch and m and n:
            ot.ptr = &vt[0, 0, 0]
            ot.bs = vt.strides[0] // <Py_ssize_t>sizeof(float)
            ot.rs = vt.strides[1] // <Py_ssize_t>sizeof(float)
            ot.cs = vt.strides[2] // <Py_ssize_t>sizeof(float)
            pt = &ot
    if csr >= 0:
        with nogil:
            rc = dk_gemm_test_under_mxcsr(<unsigned>csr, batch, m, n, k, &oa, &ob, scale, pt, po,
                                          ldo, bso, isa, kernel, order, csr_after)
        return rc
    with nogil:
        rc = dk_gemm_addend_ranges(batch, m, n, k, &oa, &ob, scale, pt, po, ldo, bso, isa, kernel,
                                   threads, order, arange, brange)
    return rc


# ---------------------------------------------------------------------------------------
# The small 2-D BF16 fast path (gemm.py calls it first for plain 2-D calls): one C-level
# pass over the buffers, no memoryview or intermediate array; None means "not handled
# here" and gemm.py takes its general path (which also raises every error).

#: operand kinds of gemm_small (the caller tests the dtype: native uint16 / float32 /
#: uint8; KIND_U8 is CFloat8 codes decoded through the caller's table, with its scale)
KIND_U16 = 0
KIND_F32 = 1
KIND_U8 = 2
#: largest m * k and k * n the fast path takes (its stack buffers for rounded float32)
SMALL_MAX = 4096

cdef dk_format _bf16_fmt
cdef bint _bf16_fmt_set = False


def set_bf16_format(tuple fmt):
    """The dk_format of BF16 as numerics._ctuple(BF16) gives it (gemm.py, once at import):
    the fast path rounds float32 operands into BF16 exactly as quantize(x, BF16) does."""
    global _bf16_fmt_set
    (_bf16_fmt.ebits, _bf16_fmt.mbits, _bf16_fmt.bias, _bf16_fmt.is_signed, _bf16_fmt.sub,
     _bf16_fmt.has_inf_nan, _bf16_fmt.nan_code) = fmt
    _bf16_fmt_set = True


cdef inline int _bf16_exp(int bits) noexcept nogil:
    """floor(log2) of the normal BF16 magnitude with bits `bits` (the caller checks >= 0x80)."""
    return (bits >> 7) - 127


cdef inline int _bitlen(int64_t v) noexcept nogil:
    cdef int r = 0
    while v:
        r += 1
        v >>= 1
    return r


cdef bint scale_is_unit(int small_a, int big_a, int small_b, int big_b, int64_t k) noexcept nogil:
    """True when gemm.py's _scale_exps gives (0, 0) for two BF16 operands with these magnitude
    ranges (a sufficient condition; False sends the call to the general path): both have a
    nonzero finite value, every nonzero one is normal, the products' quantum stays a multiple
    of 2**-126 (s_lo <= 0) and k times the largest product stays below 2**127 (s_hi >= 0).
    Then L <= 0 <= H, S = 0, and the split of 0 is (0, 0)."""
    if big_a == 0 or big_b == 0 or small_a < 0x80 or small_b < 0x80:
        return False
    if _bf16_exp(small_a) + _bf16_exp(small_b) < -112:      # s_lo = -112 - (lo_a + lo_b) > 0
        return False
    # s_hi = 127 - (hi_a + hi_b + 2) - bitlen(max(k, 1)) must be >= 0
    return 127 - (_bf16_exp(big_a) + _bf16_exp(big_b) + 2) - _bitlen(k if k > 1 else 1) >= 0


def scale_is_unit_py(int small_a, int big_a, int small_b, int big_b, int64_t k):
    """scale_is_unit (tests: checked against gemm.py's _scale_exps)."""
    return scale_is_unit(small_a, big_a, small_b, big_b, k)


cdef int _operand2d(dk_gemm_operand *o, Py_buffer *v, int kind, uint16_t *buf, int isa,
                    const uint16_t *table) noexcept nogil:
    """Fill o from a 2-D buffer of BF16 codes (kind 0, any strides that are multiples of 2),
    of C-contiguous aligned float32 (kind 1: rounded to nearest-even into buf) or of 8-bit
    codes (kind 2, any strides, decoded through table). 0 when the fast path cannot take
    it."""
    cdef Py_ssize_t r = v.shape[0], c = v.shape[1]
    if kind == 2:
        if v.itemsize != 1:
            return 0
        o.ptr = v.buf
        o.rs = v.strides[0]
        o.cs = v.strides[1]
        o.bs = 0
        o.kind = DK_GEMM_U8
        o.table = table
        return 1
    if kind == 0:
        if v.itemsize != 2 or (<uintptr_t>v.buf) % 2:
            return 0
        if (r > 1 and v.strides[0] % 2) or (c > 1 and v.strides[1] % 2):
            return 0
        o.ptr = v.buf
        o.rs = v.strides[0] // 2
        o.cs = v.strides[1] // 2
    else:
        if v.itemsize != 4 or (<uintptr_t>v.buf) % 4:
            return 0
        if (r > 1 and v.strides[0] != 4 * c) or (c > 1 and v.strides[1] != 4):
            return 0
        if dk_quantize(v.buf, 0, buf, r * c, &_bf16_fmt, 0, 0, NULL, isa, 1) != 0:
            return 0
        o.ptr = buf
        o.rs = c
        o.cs = 1
    o.bs = 0
    o.kind = DK_GEMM_U16
    o.table = table
    return 1


_empty = None


def gemm_small(object a, int kind_a, object b, int kind_b, object out, int isa, int kernel,
               int threads, int order, object term=None, const uint16_t[::1] table_a=None,
               const uint16_t[::1] table_b=None, float scale=1.0):
    """a (m x k) @ b (k x n) of 2-D BF16 codes (KIND_U16) or float32 (KIND_F32, rounded to
    nearest-even into BF16 as quantize does) with unit scaling, or of two 8-bit code arrays
    (KIND_U8 both, through table_a / table_b, the result times `scale`: the caller's
    scaling), plus term (None, or a float32 array of at most 2 dimensions that broadcasts
    to (m, n), overlapping no out: one FP32 add per element, dk_gemm_addend_ranges), into
    out (a C-contiguous float32 (m, n) array overlapping neither operand) or a new array;
    None when the call is not this simple case (shapes that do not match, empty or large
    operands, scaling needed, other strides), and the caller takes the general path."""
    global _empty
    cdef Py_buffer va, vb, vo, vt
    cdef uint16_t bufa[4096]
    cdef uint16_t bufb[4096]
    cdef uint16_t table[1]
    cdef dk_gemm_operand oa, ob
    cdef dk_gemm_addend ot
    cdef const dk_gemm_addend *pt = NULL
    cdef bint have_t = False
    cdef bint cf8
    cdef const uint16_t *tpa
    cdef const uint16_t *tpb
    cdef int64_t m, n, k
    cdef uint16_t lo_a = 0x7FFF, hi_a = 0, lo_b = 0x7FFF, hi_b = 0
    cdef int rc = -1
    cdef bint have_o = False
    cdef object res = None
    cdef char *plo
    cdef char *phi
    if not _bf16_fmt_set:
        return None
    PyObject_GetBuffer(a, &va, PyBUF_STRIDES)
    try:
        PyObject_GetBuffer(b, &vb, PyBUF_STRIDES)
        try:
            if va.ndim != 2 or vb.ndim != 2:
                return None
            m, k, n = va.shape[0], va.shape[1], vb.shape[1]
            if vb.shape[0] != k or m == 0 or n == 0 or k == 0 or m * k > 4096 or k * n > 4096:
                return None
            table[0] = 0
            cf8 = kind_a == KIND_U8
            if cf8 != (kind_b == KIND_U8):
                return None
            tpa = tpb = table                 # BF16 kinds read no table
            if cf8:
                if table_a is None or table_b is None or table_a.shape[0] != 256 or table_b.shape[0] != 256:
                    return None
                tpa, tpb = &table_a[0], &table_b[0]
            if not _operand2d(&oa, &va, kind_a, bufa, isa, tpa):
                return None
            if not _operand2d(&ob, &vb, kind_b, bufb, isa, tpb):
                return None
            if not cf8:   # BF16: unit scaling only (CFloat8: the caller's tables and scale)
                dk_gemm_bf16_range(<const uint16_t *>oa.ptr, 1, m, k, 0, oa.rs, oa.cs, &lo_a, &hi_a, 1)
                dk_gemm_bf16_range(<const uint16_t *>ob.ptr, 1, k, n, 0, ob.rs, ob.cs, &lo_b, &hi_b, 1)
                if not scale_is_unit(lo_a, hi_a, lo_b, hi_b, k) or scale != 1.0:
                    return None
            if out is None:
                if _empty is None:
                    import numpy
                    _empty = (numpy.empty, numpy.float32)
                res = _empty[0]((m, n), _empty[1])
            else:
                res = out
            try:
                PyObject_GetBuffer(res, &vo, PyBUF_STRIDES | PyBUF_WRITABLE)
            except (BufferError, ValueError, TypeError):
                if out is None:
                    raise
                return None   # e.g. a read-only out: the general path raises its error
            have_o = True
            if (vo.ndim != 2 or vo.itemsize != 4 or vo.shape[0] != m or vo.shape[1] != n
                    or (<uintptr_t>vo.buf) % 4 or (m > 1 and vo.strides[0] != 4 * n)
                    or (n > 1 and vo.strides[1] != 4)):
                return None
            plo = <char *>vo.buf
            phi = plo + 4 * m * n
            if out is not None:
                # out must overlap no operand the kernel reads (float32 ones were copied)
                if kind_a != KIND_F32 and _overlaps(plo, phi, &va):
                    return None
                if kind_b != KIND_F32 and _overlaps(plo, phi, &vb):
                    return None
            if term is not None:
                PyObject_GetBuffer(term, &vt, PyBUF_STRIDES)
                have_t = True
                if not _term2d(&ot, &vt, m, n) or (out is not None and _overlaps(plo, phi, &vt)):
                    return None
                pt = &ot
            with nogil:
                rc = dk_gemm_addend_ranges(1, m, n, k, &oa, &ob, scale, pt, <float *>vo.buf, n,
                                           m * n, isa, kernel, threads, order, NULL, NULL)
            if rc != 0:
                return None   # the general path reports it
            return res
        finally:
            if have_t:
                PyBuffer_Release(&vt)
            if have_o:
                PyBuffer_Release(&vo)
            PyBuffer_Release(&vb)
    finally:
        PyBuffer_Release(&va)


cdef bint _term2d(dk_gemm_addend *t, Py_buffer *v, int64_t m, int64_t n) noexcept:
    """Fill t from a float32 buffer (the caller tests the dtype) of at most 2 dimensions
    that broadcasts to (m, n) (NumPy's rule: trailing axes equal or 1); 0 otherwise."""
    cdef int64_t want[2]
    cdef int64_t st[2]
    cdef int d, j
    want[0] = m
    want[1] = n
    st[0] = 0
    st[1] = 0
    if v.itemsize != 4 or v.ndim > 2 or (<uintptr_t>v.buf) % 4:
        return 0
    for d in range(v.ndim):
        j = 2 - v.ndim + d
        if v.shape[d] != 1 and v.shape[d] != want[j]:
            return 0
        if v.shape[d] != 1:
            if v.strides[d] % 4:
                return 0
            st[j] = v.strides[d] // 4
    t.ptr = <const float *>v.buf
    t.bs = 0
    t.rs = st[0]
    t.cs = st[1]
    return 1


cdef bint _overlaps(char *lo, char *hi, Py_buffer *v) noexcept:
    """[lo, hi) and the bytes spanned by the buffer v (at most 2-D) intersect (conservative)."""
    cdef char *b0 = <char *>v.buf
    cdef char *b1 = <char *>v.buf
    cdef int d
    for d in range(v.ndim):
        if v.shape[d] > 1:
            if v.strides[d] < 0:
                b0 += v.strides[d] * (v.shape[d] - 1)
            else:
                b1 += v.strides[d] * (v.shape[d] - 1)
    b1 += v.itemsize
    return b0 < hi and lo < b1


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
    void dk_pool_forward_to(const void *entry)

dk_pool_forward_to(PyCapsule_GetPointer(_cpu_mod._pool_capsule(), b"dojo_kernels.pool"))


def _path_counts():
    """Tests: (jc steps that took k inside the columns, jc steps whose result could be
    streamed, jc steps that took k inside the columns in more than one range of k, few-rows
    W.T products on the tiles) since the process started (dk_gemm_path_counts)."""
    cdef int64_t c[4]
    dk_gemm_path_counts(c)
    return int(c[0]), int(c[1]), int(c[2]), int(c[3])


def _set_par_min(int64_t macs):
    """Tests: products of at least `macs` multiply-adds per step go to the pool on every tier
    (0: the tiers' own thresholds, docs/threads.md). Returns the previous setting."""
    return dk_gemm_set_par_min(macs)


def release_cache():
    """Free the work buffers the driver keeps between calls (registered at exit)."""
    dk_gemm_release_cache()


import atexit as _atexit
_atexit.register(release_cache)
