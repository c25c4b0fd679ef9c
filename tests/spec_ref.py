"""An independent reference for SPEC sections 1-4, written from the SPEC text alone.

Nothing here is shared with (or copied from) the kernels in ``dojo_kernels``. Two paths:

* a scalar path on exact rationals (``fractions.Fraction``): the obvious reading of SPEC,
  slow but easy to audit. It is the truth for edge cases and for the arithmetic tests;
* a vectorized NumPy path for large samples: every non-negative finite code of an 8/16-bit
  format decodes exactly to a float64, codes are monotone in their value, so the two
  neighbours of ``|x|`` come from ``np.searchsorted`` on that table and every comparison below
  is exact in float64 (see the comments). It is checked against the scalar path in
  ``test_spec_ref.py``.

Formats are described by :class:`RefFormat` (family, bias, subnormal mode); the layout of each
family is taken from the SPEC section 1 table, never from ``dojo_kernels.Format``'s properties.

Interpretations where SPEC is silent (fixed by the lead, see the test modules):
NaN -> BF16 ``sign|0x7FC0``, FP32 ``sign|0x7FC00000``, CFloat8/SHP ``+max``, UHP ``0xFE00``;
overflow iff the value rounded with an unbounded exponent exceeds max (plus +-Inf into
CFloat8/SHP); IEEE-style formats overflow to Inf under nearest/stochastic, to max under
toward_zero; underflow iff a non-zero input ends zero or subnormal and inexact; -0 keeps its sign
except into UHP (+0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

try:  # ml_dtypes is a test extra; only bfloat16 input handling needs it
    import ml_dtypes
    BF16_DTYPE = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    ml_dtypes = None
    BF16_DTYPE = None

MASK64 = (1 << 64) - 1

# family -> (exponent bits, mantissa bits, signed, has Inf/NaN, fixed bias or None)
LAYOUTS = {
    "fp32": (8, 23, True, True, 127),
    "bf16": (8, 7, True, True, 127),
    "cfloat8_143": (4, 3, True, False, None),
    "cfloat8_152": (5, 2, True, False, None),
    "shp": (5, 10, True, False, None),
    "uhp": (6, 10, False, True, 31),
}


@dataclass(frozen=True)
class RefFormat:
    family: str
    bias: int
    subnormals: str  # "tesla" | "ieee" | "flush"

    @property
    def ebits(self):
        return LAYOUTS[self.family][0]

    @property
    def m(self):
        return LAYOUTS[self.family][1]

    @property
    def signed(self):
        return LAYOUTS[self.family][2]

    @property
    def has_inf_nan(self):
        return LAYOUTS[self.family][3]

    @property
    def nbits(self):
        return int(self.signed) + self.ebits + self.m

    @property
    def emax_field(self):
        """Largest exponent field of a finite value."""
        top = (1 << self.ebits) - 1
        return top - 1 if self.has_inf_nan else top

    @property
    def max_code(self):
        return (self.emax_field << self.m) | ((1 << self.m) - 1)

    @property
    def inf_code(self):
        return (self.emax_field + 1) << self.m if self.has_inf_nan else None

    @property
    def sign_bit(self):
        return 1 << (self.nbits - 1) if self.signed else 0

    @property
    def max(self) -> Fraction:
        return Fraction(2) ** (self.emax_field - self.bias) * (2 - Fraction(1, 2 ** self.m))

    @property
    def min_normal(self) -> Fraction:
        return Fraction(2) ** (1 - self.bias)

    @property
    def round_sub(self):
        """Subnormal rule used for rounding: "flush" rounds as IEEE, then flushes."""
        return "tesla" if self.subnormals == "tesla" else "ieee"

    @property
    def sub_quantum_exp(self):
        """Exponent q of the subnormal step 2^q (SPEC section 1)."""
        return (-self.bias if self.round_sub == "tesla" else 1 - self.bias) - self.m

    @property
    def min_subnormal(self) -> Fraction:
        if self.subnormals == "flush":
            return Fraction(0)
        return Fraction(2) ** self.sub_quantum_exp

    @property
    def storage_dtype(self):
        if self.family == "fp32":
            return np.dtype(np.float32)
        return np.dtype(np.uint8 if self.nbits == 8 else np.uint16)

    @property
    def nan_code(self):
        """What a NaN input becomes (sign not included)."""
        if self.family == "fp32":
            return 0x7FC00000
        if self.family == "bf16":
            return 0x7FC0
        if self.family == "uhp":
            return 0xFE00
        return self.max_code  # CFloat8 / SHP: +max


def ref_of(fmt) -> RefFormat:
    """RefFormat of a dojo_kernels.Format (reads only its name, bias and subnormal mode)."""
    fam = fmt.name
    fixed = LAYOUTS[fam][4]
    bias = fixed if fixed is not None else fmt.bias
    sub = {"fp32": "ieee", "bf16": "ieee", "uhp": "flush"}.get(fam, fmt.subnormals)
    return RefFormat(fam, bias, sub)


FP32_R = RefFormat("fp32", 127, "ieee")
BF16_R = RefFormat("bf16", 127, "ieee")
UHP_R = RefFormat("uhp", 31, "flush")


# ---------------------------------------------------------------------------------------
# SplitMix64 (SPEC section 2)
# ---------------------------------------------------------------------------------------
def splitmix_r(seed: int, i: int) -> int:
    """The 32-bit random number of flat index i, exactly as SPEC writes it (Python ints)."""
    z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z = z ^ (z >> 31)
    return z >> 32


def splitmix_r_array(seed: int, n: int) -> np.ndarray:
    """Vectorized splitmix_r(seed, i) for i in range(n) (uint64 wrap-around arithmetic)."""
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed & MASK64) + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(32)


# ---------------------------------------------------------------------------------------
# Scalar path: exact rationals
# ---------------------------------------------------------------------------------------
NAN = "nan"


def floor_log2(a: Fraction) -> int:
    """Largest e with 2^e <= a, for a > 0."""
    n, d = a.numerator, a.denominator
    e = n.bit_length() - d.bit_length()
    if e >= 0:
        ok = n >= (d << e)
    else:
        ok = (n << -e) >= d
    return e if ok else e - 1


def decode_scalar(code: int, rf: RefFormat):
    """Exact value of a code: a Fraction, or ``(sign, "inf")``/``"nan"``. -0 is (1, Fraction(0))
    -- returned as a (sign, magnitude) pair for finite values."""
    m, b = rf.m, rf.bias
    if rf.family == "fp32":
        code &= 0xFFFFFFFF
    sign = (code >> (rf.nbits - 1)) & 1 if rf.signed else 0
    E = (code >> m) & ((1 << rf.ebits) - 1)
    M = code & ((1 << m) - 1)
    if rf.has_inf_nan and E == (1 << rf.ebits) - 1:
        return (sign, "inf") if M == 0 else NAN
    if E == 0:
        if M == 0 or rf.subnormals == "flush":
            return (sign, Fraction(0))
        return (sign, Fraction(M) * Fraction(2) ** rf.sub_quantum_exp)
    return (sign, Fraction(2) ** (E - b) * (1 + Fraction(M, 2 ** m)))


def encode_mag(R: Fraction, rf: RefFormat) -> int:
    """Code (sign clear) of a representable magnitude R (flush not applied here)."""
    if R == 0:
        return 0
    if R < rf.min_normal:
        M = R / Fraction(2) ** rf.sub_quantum_exp
        assert M.denominator == 1 and 0 < M < 2 ** rf.m, (R, rf)
        return int(M)
    e = floor_log2(R)
    E = e + rf.bias
    M = R / Fraction(2) ** (e - rf.m) - 2 ** rf.m
    assert M.denominator == 1 and 0 <= M < 2 ** rf.m and 1 <= E <= rf.emax_field + 1, (R, rf)
    return (E << rf.m) | int(M)


def neighbours(a: Fraction, rf: RefFormat):
    """(lo, hi) with lo <= a < hi on the format's grid with an unbounded exponent (lo == hi
    when a is on the grid). Tesla: the gap between the largest subnormal and 2^(1-b)."""
    m, b = rf.m, rf.bias
    two = Fraction(2)
    if a < rf.min_normal:
        q = two ** rf.sub_quantum_exp
        if rf.round_sub == "tesla":
            top_sub = (2 ** m - 1) * q
            if a >= top_sub:  # the tesla gap (or exactly the largest subnormal)
                return (top_sub, top_sub) if a == top_sub else (top_sub, rf.min_normal)
    else:
        q = two ** (floor_log2(a) - m)
    k = math.floor(a / q)
    lo = k * q
    return (lo, lo) if lo == a else (lo, lo + q)


def round_scalar(sign: int, a, rf: RefFormat, rounding: str, r: int | None = None):
    """Round the exact value (-1)^sign * a (a: Fraction >= 0, or "inf", or NAN) into rf.

    Returns ``(code, flags)`` with flags a dict of 0/1 for invalid/overflow/underflow
    (denormal depends on the source and is added by the callers). ``code`` for FP32 is the
    uint32 bit pattern.
    """
    flags = {"invalid": 0, "overflow": 0, "underflow": 0}
    sbit = rf.sign_bit if sign else 0
    if a is NAN:
        flags["invalid"] = 1
        if rf.family in ("fp32", "bf16"):
            return sbit | rf.nan_code, flags
        return rf.nan_code, flags
    if not rf.signed and sign and (a == "inf" or a != 0):
        flags["invalid"] = 1
        return rf.nan_code, flags
    if not rf.signed:
        sbit = 0  # -0 -> +0
    if a == "inf":
        if rf.has_inf_nan:
            return sbit | rf.inf_code, flags
        flags["overflow"] = 1
        return sbit | rf.max_code, flags
    lo, hi = neighbours(a, rf)
    if lo == hi:
        R = lo
    elif rounding == "toward_zero":
        R = lo
    elif rounding == "nearest":
        d_lo, d_hi = a - lo, hi - a
        if d_lo < d_hi:
            R = lo
        elif d_hi < d_lo:
            R = hi
        else:  # tie: the neighbour whose code has an even mantissa
            if rf.round_sub == "tesla" and hi == rf.min_normal and lo < hi / 2:
                R = hi  # the tesla gap: lo is the largest subnormal (M odd)
            else:  # regular grid: lo = k * (hi - lo), M of lo has k's parity
                R = lo if (lo / (hi - lo)) % 2 == 0 else hi
    elif rounding == "stochastic":
        f = math.floor((a - lo) / (hi - lo) * 2 ** 32)
        R = hi if f + r >= 2 ** 32 else lo
    else:
        raise ValueError(rounding)
    if R > rf.max:
        flags["overflow"] = 1
        if rf.has_inf_nan and rounding != "toward_zero":
            return sbit | rf.inf_code, flags
        return sbit | rf.max_code, flags
    if rf.subnormals == "flush" and 0 < R < rf.min_normal:
        R = Fraction(0)
    if a != 0 and R < rf.min_normal and R != a:
        flags["underflow"] = 1
    return sbit | encode_mag(R, rf), flags


def value_of_float(x):
    """(sign, Fraction | "inf" | NAN) of a Python/NumPy float, exactly."""
    x = float(x)
    sign = 1 if math.copysign(1.0, x) < 0 else 0
    if math.isnan(x):
        return sign, NAN
    if math.isinf(x):
        return sign, "inf"
    return sign, Fraction(abs(x))


def is_subnormal_source(x, dtype) -> bool:
    """Is x subnormal in its source dtype (float32, float64 or bfloat16)?"""
    x = abs(float(x))
    tiny = 2.0 ** -1022 if np.dtype(dtype) == np.float64 else 2.0 ** -126
    return 0.0 < x < tiny


def quantize_scalar(x, rf: RefFormat, rounding="nearest", r=None, src_dtype=np.float32):
    """One element: (code, flags dict with invalid/denormal/overflow/underflow)."""
    sign, a = value_of_float(x)
    code, flags = round_scalar(sign, a, rf, rounding, r)
    flags["denormal"] = int(is_subnormal_source(x, src_dtype))
    return code, flags


def quantize_loop(x, rf: RefFormat, rounding="nearest", seed=None):
    """Scalar reference over an array (flat C order for the stochastic index)."""
    x = np.asarray(x)
    flat = x.reshape(-1)  # C-order logical elements, whatever the strides
    out = np.empty(flat.shape, dtype=np.uint32 if rf.family == "fp32" else rf.storage_dtype)
    tot = {"invalid": 0, "denormal": 0, "overflow": 0, "underflow": 0}
    for i, v in enumerate(flat):
        r = splitmix_r(seed, i) if rounding == "stochastic" else None
        c, f = quantize_scalar(v, rf, rounding, r, x.dtype)
        out[i] = c
        for k in tot:
            tot[k] += f[k]
    out = out.reshape(x.shape)
    if rf.family == "fp32":
        out = out.view(np.float32)
    return out, tot


# ---------------------------------------------------------------------------------------
# Vectorized path (8- and 16-bit formats)
# ---------------------------------------------------------------------------------------
_TABLES: dict = {}


def decode_table(rf: RefFormat) -> np.ndarray:
    """float64 value of every code 0 .. 2^nbits - 1 (exact: at most 11 significant bits and
    exponents within float64's normal range). NaN codes -> nan, Inf -> inf."""
    key = ("dec", rf)
    if key in _TABLES:
        return _TABLES[key]
    codes = np.arange(1 << rf.nbits, dtype=np.int64)
    m = rf.m
    E = (codes >> m) & ((1 << rf.ebits) - 1)
    M = codes & ((1 << m) - 1)
    normal = E > 0
    sig = np.where(normal, M + (1 << m), M).astype(np.float64)
    exp = np.where(normal, E - rf.bias - m, rf.sub_quantum_exp)
    val = np.ldexp(sig, exp.astype(np.int32))
    if rf.subnormals == "flush":
        val = np.where(normal, val, 0.0)
    if rf.has_inf_nan:
        top = E == (1 << rf.ebits) - 1
        val = np.where(top & (M == 0), np.inf, val)
        val = np.where(top & (M != 0), np.nan, val)
    if rf.signed:
        neg = (codes >> (rf.nbits - 1)) & 1 == 1
        val = np.where(neg, -val, val)
    _TABLES[key] = val
    return val


def _round_grid(rf: RefFormat) -> np.ndarray:
    """Magnitudes of codes 0..max_code on the rounding grid (flush rounds as IEEE)."""
    key = ("grid", rf)
    if key not in _TABLES:
        g = decode_table(RefFormat(rf.family, rf.bias, rf.round_sub))[: rf.max_code + 1].copy()
        assert np.all(np.diff(g) > 0)
        _TABLES[key] = g
    return _TABLES[key]


def as_float64_exact(x: np.ndarray) -> np.ndarray:
    """float32, float64 and bfloat16 all convert exactly to float64."""
    with np.errstate(invalid="ignore"):
        return np.asarray(x).astype(np.float64)


def quantize_vec(x, rf: RefFormat, rounding="nearest", seed=None):
    """Vectorized reference for 8/16-bit formats: (codes, flags dict of counts)."""
    codes, fl = quantize_vec_elem(x, rf, rounding, seed)
    return codes, {k: int(v.sum()) for k, v in fl.items()}


def quantize_vec_elem(x, rf: RefFormat, rounding="nearest", seed=None):
    """Vectorized reference: (codes, dict of per-element boolean flag arrays, flat)."""
    assert rf.family != "fp32"
    x = np.asarray(x)
    src = x.dtype
    v = as_float64_exact(x).reshape(-1)
    n = v.size
    g = _round_grid(rf)
    maxc = rf.max_code
    m, emax_e = rf.m, rf.emax_field - rf.bias
    beyond = math.ldexp(1.0, emax_e + 1)  # next grid point after max (unbounded exponent)

    nan = np.isnan(v)
    inf = np.isinf(v)
    neg = np.signbit(v)
    a = np.abs(np.where(nan | inf, 0.0, v))

    lo_c = np.searchsorted(g, a, side="right") - 1  # g[lo_c] <= a
    lo = g[lo_c]
    hi = np.where(lo_c < maxc, g[np.minimum(lo_c + 1, maxc)], beyond)
    exact = lo == a
    # a >= 2^(emax+1): the unbounded rounding is > max whatever the mode except
    # toward_zero, where it is still >= 2^(emax+1) > max. Mark it as rounding "up".
    far = a >= beyond
    if rounding == "toward_zero":
        up = far.copy()
    elif rounding == "nearest":
        # 2a and lo+hi are exact in float64 (a < 2^1023 here; lo, hi are adjacent grid
        # points with <= 12 significant bits). Tie -> the even code.
        s = lo + hi
        with np.errstate(over="ignore"):
            twice = 2.0 * a
        up = (twice > s) | ((twice == s) & (lo_c % 2 == 1))
        up |= far
    elif rounding == "stochastic":
        if not isinstance(seed, (int, np.integer)):
            raise ValueError("seed")
        r = splitmix_r_array(int(seed), n).astype(np.float64)  # < 2^32, exact
        tesla_gap = np.zeros(n, bool)
        if rf.round_sub == "tesla":
            tesla_gap = (lo_c == (1 << m) - 1) & ~exact
        # Regular grid: hi - lo is a power of two and a - lo is exact (Sterbenz, or lo = 0),
        # so (a - lo) * 2^32 / (hi - lo) is exact and floor() gives SPEC's f.
        with np.errstate(over="ignore", invalid="ignore"):
            f = np.floor(np.ldexp(a - lo, 32) / (hi - lo))
        up = (f + r >= 2.0 ** 32) & ~exact
        up |= far
        for i in np.nonzero(tesla_gap & ~far)[0]:  # the gap: exact rationals
            fa = Fraction(float(a[i]))
            fl, fh = Fraction(float(lo[i])), Fraction(float(hi[i]))
            fi = math.floor((fa - fl) / (fh - fl) * 2 ** 32)
            up[i] = fi + int(r[i]) >= 2 ** 32
    else:
        raise ValueError(rounding)
    up &= ~exact
    rc = lo_c + up.astype(np.int64)
    overflow = (rc > maxc) & ~nan & ~inf
    if rf.has_inf_nan and rounding != "toward_zero":
        rc = np.where(overflow, rf.inf_code, rc)
    else:
        rc = np.where(overflow, maxc, rc)
    # flush
    sub_code = (rc > 0) & (rc < (1 << m))
    if rf.subnormals == "flush":
        rc = np.where(sub_code, 0, rc)
    final_small = rc < (1 << m)  # zero or subnormal code
    underflow = (a != 0) & final_small & ~((rc == lo_c) & exact) & ~nan & ~inf
    # Inf inputs
    if rf.has_inf_nan:
        rc = np.where(inf, rf.inf_code, rc)
    else:
        rc = np.where(inf, maxc, rc)
        overflow |= inf
    invalid = nan.copy()
    sbit = rf.sign_bit
    code = np.where(neg, rc | sbit, rc) if rf.signed else rc
    if not rf.signed:
        bad = neg & ~nan & (a != 0) | (neg & inf)
        invalid |= bad
        overflow &= ~bad
        underflow &= ~bad
        code = np.where(bad, rf.nan_code, code)
    if rf.family == "bf16":
        code = np.where(nan, np.where(neg, sbit | rf.nan_code, rf.nan_code), code)
    else:
        code = np.where(nan, rf.nan_code, code)
    tiny = 2.0 ** -1022 if src == np.float64 else 2.0 ** -126
    denormal = (a > 0) & (a < tiny)
    flags = {"invalid": invalid, "denormal": denormal, "overflow": overflow,
             "underflow": underflow}
    return code.astype(rf.storage_dtype).reshape(x.shape), flags


def quantize_ref(x, rf: RefFormat, rounding="nearest", seed=None):
    """Reference quantize of an array: vectorized for 8/16-bit formats, scalar for FP32."""
    if rf.family == "fp32":
        return quantize_loop(x, rf, rounding, seed)
    return quantize_vec(x, rf, rounding, seed)


def dequantize_ref(codes, rf: RefFormat) -> np.ndarray:
    """float64 values of codes (FP32 "codes" are float32 values)."""
    codes = np.asarray(codes)
    if rf.family == "fp32":
        return codes.astype(np.float64)
    return decode_table(rf)[codes.astype(np.int64)]


# ---------------------------------------------------------------------------------------
# Arithmetic (SPEC section 4): exact result, then round_scalar
# ---------------------------------------------------------------------------------------
def _is_sub_code(code: int, rf: RefFormat) -> bool:
    if rf.family == "fp32":
        code &= 0xFFFFFFFF
    E = (code >> rf.m) & ((1 << rf.ebits) - 1)
    M = code & ((1 << rf.m) - 1)
    return E == 0 and M != 0


def exact_op(op: str, vals):
    """Exact IEEE-style result of op on decoded operands.

    vals: list of (sign, Fraction | "inf") or NAN. Returns (sign, Fraction | "inf") or NAN, and
    whether the operation itself was invalid (Inf-Inf, 0*Inf)."""
    if any(v is NAN for v in vals):
        return NAN, False

    def mul(x, y):
        (sx, ax), (sy, ay) = x, y
        s = sx ^ sy
        if ax == "inf" or ay == "inf":
            if (ax == "inf" and ay == 0) or (ay == "inf" and ax == 0):
                return NAN
            return (s, "inf")
        return (s, ax * ay)

    def add(x, y):
        (sx, ax), (sy, ay) = x, y
        if ax == "inf" or ay == "inf":
            if ax == "inf" and ay == "inf" and sx != sy:
                return NAN
            return (sx, "inf") if ax == "inf" else (sy, "inf")
        t = (-ax if sx else ax) + (-ay if sy else ay)
        if t == 0:
            if ax == 0 and ay == 0 and sx == 1 and sy == 1:
                return (1, Fraction(0))  # (-0) + (-0) = -0
            return (0, Fraction(0))  # exact cancellation -> +0 (nearest, toward_zero)
        return (1 if t < 0 else 0, abs(t))

    if op == "add":
        res = add(vals[0], vals[1])
    elif op == "sub":
        s, a = vals[1]
        res = add(vals[0], (1 - s, a))
    elif op == "mul":
        res = mul(vals[0], vals[1])
    elif op == "fma":
        p = mul(vals[0], vals[1])
        res = NAN if p is NAN else add(p, vals[2])
    else:
        raise ValueError(op)
    if res is NAN:
        return NAN, True
    return res, False


def arith_scalar(op: str, codes, rf: RefFormat, rounding="nearest", r=None):
    """One element of add/sub/mul/fma on codes: (code, flags dict)."""
    vals = [decode_scalar(int(c), rf) for c in codes]
    res, invalid_op = exact_op(op, vals)
    if res is NAN:
        sign, a = 0, NAN
    else:
        sign, a = res
    code, flags = round_scalar(sign, a, rf, rounding, r)
    if invalid_op or any(v is NAN for v in vals):
        flags["invalid"] = 1
    flags["denormal"] = int(any(_is_sub_code(int(c), rf) for c in codes))
    return code, flags


def arith_ref(op: str, operands, rf: RefFormat, rounding="nearest", seed=None):
    """Reference over broadcast arrays of codes: (codes, flags dict)."""
    ops = [np.asarray(o) for o in operands]
    if rf.family == "fp32":
        ops = [o.astype(np.float32).view(np.uint32) for o in ops]
    bs = np.broadcast_arrays(*ops)
    shape = bs[0].shape
    flat = [b.reshape(-1) for b in bs]
    n = flat[0].size
    out = np.empty(n, dtype=np.uint32 if rf.family == "fp32" else rf.storage_dtype)
    tot = {"invalid": 0, "denormal": 0, "overflow": 0, "underflow": 0}
    for i in range(n):
        r = splitmix_r(seed, i) if rounding == "stochastic" else None
        c, f = arith_scalar(op, [fl[i] for fl in flat], rf, rounding, r)
        out[i] = c
        for k in tot:
            tot[k] += f[k]
    out = out.reshape(shape)
    if rf.family == "fp32":
        out = out.view(np.float32)
    return out, tot


def arith_vec(op: str, operands, rf: RefFormat, rounding="nearest", seed=None):
    """Vectorized arithmetic reference for 8/16-bit formats: (codes, flags dict of counts).

    Operands decode exactly to float64. The float64 result is used only where it is provably
    exact: products of <= 11-bit significands always are (no float64 under/overflow in these
    formats); sums are checked with the error-free TwoSum (error term 0 <=> exact) and the
    inexact ones rounded to odd (see below). Inf/NaN operands go through the Fraction path,
    arith_scalar.
    The exact float64 results are then rounded by quantize_vec_elem, whose flat index i is the
    C-order index in the broadcast output, as SPEC's stochastic recipe needs.
    """
    assert rf.family != "fp32"
    ops = [np.asarray(o) for o in operands]
    bs = np.broadcast_arrays(*ops)
    shape = bs[0].shape
    flat = [b.reshape(-1).astype(np.int64) for b in bs]
    tab = decode_table(rf)
    vals = [tab[c] for c in flat]
    special = np.zeros(flat[0].size, bool)
    for v in vals:
        special |= ~np.isfinite(v)
    with np.errstate(all="ignore"):
        if op == "mul":
            res = vals[0] * vals[1]
            exact = np.ones_like(special)
        else:
            if op == "add":
                p, c = vals[0], vals[1]
            elif op == "sub":
                p, c = vals[0], -vals[1]
            elif op == "fma":
                p, c = vals[0] * vals[1], vals[2]  # the product is exact
            else:
                raise ValueError(op)
            res = p + c
            bb = res - p
            err = (p - (res - bb)) + (c - bb)
            exact = err == 0
    # Inexact sums: round to odd at float64's 53 bits (keep the RNE result if its last bit is
    # odd, else step one ulp toward the exact value, whose side the TwoSum error gives). A
    # round-to-odd value with >= p + 2 bits rounds to nearest / toward zero exactly as the
    # exact value does for any p-bit target (Boldo & Melquiond), and it keeps every bit down
    # to 2^-32 of the format's ulp (m + 33 <= 53) plus a sticky bit, so SPEC's stochastic
    # f = floor((|x| - lo) / ulp * 2^32) is the same too -- except in the tesla gap, where
    # hi - lo is not a power of two: those go through the Fraction path.
    inexact = ~exact & ~special
    if inexact.any():
        with np.errstate(all="ignore"):
            s_bits = res.view(np.int64)
            even = (s_bits & 1) == 0
            step = inexact & even
            toward = np.where(err > 0, np.inf, -np.inf)
            res = np.where(step, np.nextafter(res, toward), res)
    slow = special.copy()
    if rounding == "stochastic" and rf.round_sub == "tesla":
        slow |= inexact & (np.abs(res) < 2.0 * float(rf.min_normal))
    res = np.where(slow, 0.0, res)
    codes, fl = quantize_vec_elem(res, rf, rounding, seed)
    codes = codes.copy()
    fl = {k: v.copy() for k, v in fl.items()}
    den = np.zeros_like(special)
    for c in flat:
        den |= ((c >> rf.m) & ((1 << rf.ebits) - 1) == 0) & (c & ((1 << rf.m) - 1) != 0)
    fl["denormal"] = den
    for i in np.nonzero(slow)[0]:
        r = splitmix_r(int(seed), int(i)) if rounding == "stochastic" else None
        c, f = arith_scalar(op, [int(fc[i]) for fc in flat], rf, rounding, r)
        codes[i] = c
        for k in ("invalid", "overflow", "underflow"):
            fl[k][i] = bool(f[k])
    return codes.reshape(shape), {k: int(v.sum()) for k, v in fl.items()}


def max_value(family: str, bias: int) -> Fraction:
    return RefFormat(family, bias, "tesla").max
