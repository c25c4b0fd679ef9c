"""quantize / dequantize / fake_quantize / choose_bias against the independent reference
(spec_ref.py, written from SPEC sections 1-3), on every ISA tier this CPU supports."""
from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dojo_kernels as dk
import spec_ref as R
from dk_helpers import bits, flags_dict
from dojo_kernels import _config

# NumPy warns when the tests cast NaN/Inf/out-of-range values on purpose (references, inputs)
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]

R_ISAS = tuple(_config.supported_isas())

CTORS = {"cfloat8_143": dk.cfloat8_143, "cfloat8_152": dk.cfloat8_152, "shp": dk.shp}
MODES = ("tesla", "ieee", "flush")
ROUNDINGS = ("nearest", "toward_zero", "stochastic")
BIASES = (0, 1, 7, 15, 31, 62, 63, 4, 23, 48)


def fmt_of(rf: R.RefFormat):
    if rf.family == "bf16":
        return dk.BF16
    if rf.family == "uhp":
        return dk.UHP
    if rf.family == "fp32":
        return dk.FP32
    return CTORS[rf.family](rf.bias, subnormals=rf.subnormals)


def _describe(x, idx, got, want):
    xs = np.asarray(x).reshape(-1)
    g = np.asarray(got).reshape(-1)
    w = np.asarray(want).reshape(-1)
    lines = []
    for i in idx[:6]:
        v = xs[i]
        lines.append(f"  [{i}] x={float(v)!r} ({float(v).hex()}, {xs.dtype}) got={int(bits(g[i:i+1])[0]):#x} "
                     f"want={int(bits(w[i:i+1])[0]):#x}")
    return "\n".join(lines)


def check(x, rf, rounding="nearest", seed=None, want=None):
    """quantize(x) with flags against the reference; readable report of mismatches."""
    fmt = fmt_of(rf)
    kw = {"seed": seed} if rounding == "stochastic" else {}
    codes, flags = dk.quantize(x, fmt, rounding=rounding, return_flags=True, **kw)
    w_codes, w_flags = want if want is not None else R.quantize_ref(x, rf, rounding, seed)
    assert codes.shape == np.shape(x)
    assert codes.dtype == w_codes.dtype, (codes.dtype, w_codes.dtype)
    gb, wb = bits(codes).reshape(-1), bits(w_codes).reshape(-1)
    bad = np.nonzero(gb != wb)[0]
    assert bad.size == 0, (f"{bad.size} mismatches for {fmt!r} {rounding}:\n"
                           + _describe(x, bad, codes, w_codes))
    assert flags_dict(flags) == w_flags, (fmt, rounding)
    # the same without flags
    plain = dk.quantize(x, fmt, rounding=rounding, **kw)
    assert np.array_equal(bits(plain), bits(codes))
    return codes


# ---------------------------------------------------------------------------------------
# Input samples
# ---------------------------------------------------------------------------------------
def grid_of(rf):
    return R.decode_table(R.RefFormat(rf.family, rf.bias, rf.round_sub))[: rf.max_code + 1]


def edge_values(rf) -> np.ndarray:
    """float64 values at every SPEC edge of rf: specials, ties, the tesla gap, saturation."""
    g = grid_of(rf)
    m = rf.m
    beyond = 2.0 * 2.0 ** (rf.emax_field - rf.bias)
    vals = [0.0, math.inf, math.nan, 1e300, 3.4e38, 2.0 ** -149, 2.0 ** -1074, 1e-300]
    pick = list(range(0, 6)) + list(range((1 << m) - 4, (1 << m) + 4)) + \
        list(range(rf.max_code - 5, rf.max_code + 1))
    pick += list(range((2 << m) - 2, (2 << m) + 2)) + [rf.max_code // 2, rf.max_code // 3]
    ext = np.concatenate([g, [beyond, 2 * beyond]])
    for k in sorted(set(c for c in pick if 0 <= c <= rf.max_code)):
        lo, hi = ext[k], ext[k + 1]
        mid = (lo + hi) / 2
        vals += [lo, mid, lo + (hi - lo) / 4, lo + 3 * (hi - lo) / 4, hi - (hi - lo) / 8]
        for v in (mid, lo, hi):
            vals += [np.nextafter(v, 0.0), np.nextafter(v, np.inf),
                     float(np.nextafter(np.float32(v), np.float32(0))),
                     float(np.nextafter(np.float32(v), np.float32(np.inf)))]
    # the tesla gap, explicitly (also meaningful as plain values for the other modes)
    top_sub = (2 ** m - 1) * 2.0 ** (-rf.bias - m)
    mn = 2.0 ** (1 - rf.bias)
    for t in (0.0, 0.01, 0.25, 0.5, 0.75, 0.99):
        vals.append(top_sub + t * (mn - top_sub))
    gm = (top_sub + mn) / 2
    vals += [gm, np.nextafter(gm, 0), np.nextafter(gm, 1e9), mn * 0.75, mn / 2]
    # below the smallest subnormal
    ms = 2.0 ** rf.sub_quantum_exp
    vals += [ms / 2, np.nextafter(ms / 2, 0), np.nextafter(ms / 2, 1), ms / 4, ms * 0.75, ms * 1.5]
    # above max
    mx = float(rf.max)
    tie = (mx + beyond) / 2
    vals += [mx, tie, np.nextafter(tie, 0), np.nextafter(tie, np.inf), beyond,
             np.nextafter(beyond, 0), beyond * 1.5, beyond * 4]
    v = np.array(vals, dtype=np.float64)
    return np.concatenate([v, -v])


def stratified_f32(rf, rng, n) -> np.ndarray:
    """float32 bit patterns: exponent uniform over the format's range +-3 binades, random
    mantissas (some with zeroed low bits: ties and exact values), plus 10% any bits."""
    e_lo = max(0, 127 + rf.sub_quantum_exp - 3)
    e_hi = min(255, 127 + rf.emax_field - rf.bias + 3)
    sign = rng.integers(0, 2, n, dtype=np.uint64) << np.uint64(31)
    expo = rng.integers(e_lo, e_hi + 1, n, dtype=np.uint64) << np.uint64(23)
    mant = rng.integers(0, 1 << 23, n, dtype=np.uint64)
    zero_low = rng.integers(0, 24, n, dtype=np.uint64)
    keep = rng.random(n) < 0.4
    mant = np.where(keep, (mant >> zero_low) << zero_low, mant)
    b = (sign | expo | mant).astype(np.uint32)
    anyb = rng.random(n) < 0.1
    b = np.where(anyb, rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32), b)
    return b.view(np.float32)


def stratified_f64(rf, rng, n) -> np.ndarray:
    """float64 values near the grid with 53-bit mantissas (double rounding would show)."""
    g = grid_of(rf)
    ext = np.concatenate([g, [2 * g[-1]]])
    k = rng.integers(0, rf.max_code + 1, n)
    lo, hi = ext[k], ext[k + 1]
    # ties perturbed by a few float64 ulps (invisible in float32), and random fractions
    mid = (lo + hi) / 2
    eps = rng.integers(-3, 4, n).astype(np.float64) * np.spacing(mid)
    frac = lo + rng.random(n) * (hi - lo)
    v = np.where(rng.random(n) < 0.5, mid + eps, frac)
    v = v * np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return v


_REF_CACHE: dict = {}


def ref_cached(key, x, rf, rounding, seed):
    if key not in _REF_CACHE:
        _REF_CACHE[key] = R.quantize_ref(x, rf, rounding, seed)
    return _REF_CACHE[key]


# ---------------------------------------------------------------------------------------
# FP32 / float64 / bfloat16 -> each format
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(CTORS))
@pytest.mark.parametrize("sub", MODES)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_edges(isa, family, sub, rounding):
    for bias in BIASES:
        rf = R.RefFormat(family, bias, sub)
        x64 = edge_values(rf)
        check(x64, rf, rounding, seed=bias + 1)
        with np.errstate(over="ignore"):
            x32 = x64.astype(np.float32)
        check(x32, rf, rounding, seed=bias + 2)


@pytest.mark.parametrize("rf", [R.BF16_R, R.UHP_R], ids=str)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_edges_bf16_uhp(isa, rf, rounding):
    x64 = edge_values(rf)
    check(x64, rf, rounding, seed=3)
    with np.errstate(over="ignore"):
        check(x64.astype(np.float32), rf, rounding, seed=4)


@pytest.mark.parametrize("family", sorted(CTORS))
@pytest.mark.parametrize("sub", MODES)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_stratified_fp32(isa, family, sub, rounding):
    n = 60_000 if family == "shp" else 30_000
    for bias in BIASES:
        rf = R.RefFormat(family, bias, sub)
        rng = np.random.default_rng(bias * 7 + len(family))
        x = stratified_f32(rf, rng, n)
        key = ("f32", rf, rounding)
        check(x, rf, rounding, seed=bias, want=ref_cached(key, x, rf, rounding, bias))


@pytest.mark.parametrize("rf", [R.BF16_R, R.UHP_R], ids=str)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_stratified_fp32_bf16_uhp(isa, rf, rounding):
    rng = np.random.default_rng(11)
    x = stratified_f32(rf, rng, 300_000)
    check(x, rf, rounding, seed=99, want=ref_cached(("f32", rf, rounding), x, rf, rounding, 99))


@pytest.mark.parametrize("family", sorted(CTORS) + ["bf16", "uhp"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_stratified_float64(isa, family, rounding):
    biases = (0, 7, 15, 40, 63) if family in CTORS else (None,)
    for bias in biases:
        for sub in (MODES if family in CTORS else (None,)):
            rf = (R.RefFormat(family, bias, sub) if family in CTORS
                  else {"bf16": R.BF16_R, "uhp": R.UHP_R}[family])
            rng = np.random.default_rng(5 + (bias or 0))
            x = stratified_f64(rf, rng, 20_000)
            key = ("f64", rf, rounding)
            check(x, rf, rounding, seed=12345, want=ref_cached(key, x, rf, rounding, 12345))


def test_float64_rounded_from_its_own_value(isa):
    # 1.0625 + 2^-40: through float32 it becomes 1.0625, a tie that goes to 1.0; from the
    # float64 value itself it is above the tie and rounds up to 1.125 (code 0x39 at bias 7).
    x = np.array([1.0625 + 2.0 ** -40, -(1.0625 + 2.0 ** -40), 1.0625, 1.0625 - 2.0 ** -40])
    codes = dk.quantize(x, dk.cfloat8_143(7))
    assert codes.tolist() == [0x39, 0xB9, 0x38, 0x38]
    # BF16 from float64: 1 + 2^-8 + 2^-40 rounds up to 1 + 2^-7 (0x3F81); via float32, to 1.0
    y = np.array([1 + 2.0 ** -8 + 2.0 ** -40, 1 + 2.0 ** -8])
    assert dk.quantize(y, dk.BF16).tolist() == [0x3F81, 0x3F80]
    # FP32 target from float64: correctly rounded, like NumPy's cast
    z = np.array([1 + 2.0 ** -24 + 2.0 ** -60, 1 + 2.0 ** -24, 1e39, -1e39, 2.0 ** -150 * 1.5])
    with np.errstate(over="ignore"):
        want = z.astype(np.float32)
    got = dk.quantize(z, dk.FP32)
    assert got.dtype == np.float32 and np.array_equal(bits(got), bits(want))


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_bfloat16_inputs_every_pattern(isa, rounding):
    x = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16)
    for rf in (R.RefFormat("cfloat8_143", 7, "tesla"), R.RefFormat("cfloat8_152", 30, "ieee"),
               R.RefFormat("shp", 3, "tesla"), R.RefFormat("cfloat8_143", 63, "flush"),
               R.UHP_R, R.BF16_R):
        check(x, rf, rounding, seed=8)
    # bf16 -> BF16 is the identity on non-NaN codes, NaN -> sign|0x7FC0
    c = dk.quantize(x, dk.BF16, rounding=rounding, **({"seed": 1} if rounding == "stochastic" else {}))
    raw = np.arange(65536, dtype=np.uint16)
    nan = ((raw & 0x7F80) == 0x7F80) & ((raw & 0x7F) != 0)
    assert np.array_equal(c[~nan], raw[~nan])
    assert np.array_equal(c[nan], (raw[nan] & 0x8000) | 0x7FC0)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_bfloat16_to_fp32_exact(isa, rounding):
    raw = np.arange(65536, dtype=np.uint16)
    x = raw.view(ml_dtypes.bfloat16)
    got = dk.quantize(x, dk.FP32, rounding=rounding,
                      **({"seed": 1} if rounding == "stochastic" else {}))
    assert got.dtype == np.float32
    nan = ((raw & 0x7F80) == 0x7F80) & ((raw & 0x7F) != 0)
    want = raw.astype(np.uint32) << 16
    want = np.where(nan, (want & 0x80000000) | 0x7FC00000, want)
    assert np.array_equal(bits(got), want.astype(np.uint32))


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_fp32_target(isa, rounding):
    rng = np.random.default_rng(21)
    x = rng.standard_normal(3000) * np.exp2(rng.integers(-160, 140, 3000))
    x = np.concatenate([x, edge_values(R.BF16_R)[:200]])
    check(x, R.FP32_R, rounding, seed=77)
    x32 = x.astype(np.float32)
    got = dk.quantize(x32, dk.FP32, rounding=rounding,
                      **({"seed": 1} if rounding == "stochastic" else {}))
    fin = ~np.isnan(x32)
    assert np.array_equal(bits(got)[fin], bits(x32)[fin])


# ---------------------------------------------------------------------------------------
# External references: ml_dtypes
# ---------------------------------------------------------------------------------------
def test_bf16_matches_ml_dtypes_1e7_patterns(isa):
    # 10^7 FP32 bit patterns spread evenly over all 2^32 (stride 429, odd offset), plus the
    # neighbourhood of every BF16 rounding boundary in a band
    idx = np.arange(10_000_000, dtype=np.uint64)
    x = ((idx * np.uint64(429) + np.uint64(0x1234)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    near = (np.arange(1 << 16, dtype=np.uint32) << 16)[:, None] + \
        np.array([0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x0000, 0x0001], np.uint32)
    x = np.concatenate([x, near.reshape(-1)]).view(np.float32)
    got = dk.quantize(x, dk.BF16)
    with np.errstate(invalid="ignore", over="ignore"):
        want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"{bad.size} mismatches, e.g. x bits {x.view(np.uint32)[bad[:5]]}"
    # and the documented view equality
    assert np.array_equal(dk.quantize(x[:1000], dk.BF16).view(ml_dtypes.bfloat16).view(np.uint16),
                          want[:1000])


def test_cfloat8_ieee_matches_ml_dtypes_fp8(isa):
    # Deviation, by design: float8_e4m3fn turns values past its max (448 + half an ulp) into
    # NaN and e5m2 into Inf, while CFloat8 saturates to +-max (SPEC section 2). So the
    # comparison stays inside the common finite range: |x| <= 448 (resp. 57344).
    bits_all = np.arange(0, 1 << 32, 211, dtype=np.uint64).astype(np.uint32)
    x = bits_all.view(np.float32)
    for fmt, ml, lim in ((dk.cfloat8_143(7, subnormals="ieee"), ml_dtypes.float8_e4m3fn, 448.0),
                         (dk.cfloat8_152(15, subnormals="ieee"), ml_dtypes.float8_e5m2, 57344.0)):
        xs = x[np.isfinite(x) & (np.abs(x) <= lim)]
        got = dk.quantize(xs, fmt)
        want = xs.astype(ml).view(np.uint8)
        bad = np.nonzero(got != want)[0]
        assert bad.size == 0, (fmt, xs[bad[:5]], got[bad[:5]], want[bad[:5]])
        # decode agrees too (all codes ml_dtypes calls finite)
        codes = np.arange(256, dtype=np.uint8)
        ref = codes.view(ml).astype(np.float32)
        fin = np.isfinite(ref)
        assert np.array_equal(bits(dk.dequantize(codes, fmt)[fin]), bits(ref[fin]))


# ---------------------------------------------------------------------------------------
# Stochastic rounding
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rf", [R.RefFormat("cfloat8_143", 7, "tesla"),
                                R.RefFormat("cfloat8_152", 20, "ieee"),
                                R.RefFormat("shp", 15, "tesla"), R.BF16_R, R.UHP_R], ids=str)
def test_stochastic_layouts(isa, rf):
    rng = np.random.default_rng(4)
    base = stratified_f32(rf, rng, 120_000)
    seed = 0xDEADBEEF
    cases = {
        "1d": base,
        "2d": base.reshape(300, 400),
        "transposed": base.reshape(300, 400).T,
        "strided": base[::3],
        "reversed2d": base.reshape(400, 300)[::-2, 1::5],
        "3d-sliced": base.reshape(20, 60, 100)[:, 7:50, ::-1],
        "float64-2d-T": base.astype(np.float64).reshape(240, 500).T,
    }
    for name, x in cases.items():
        codes = check(x, rf, "stochastic", seed=seed)
        # the index is the logical C-order one: same as quantizing a contiguous copy
        again = dk.quantize(np.ascontiguousarray(x), fmt_of(rf), rounding="stochastic", seed=seed)
        assert np.array_equal(codes, again), name


def test_stochastic_decision_boundary_exact(isa):
    # f + r >= 2^32 -> hi exactly: build float64 x with f = 2^32 - r(i) (-> hi) and
    # f = 2^32 - r(i) - 1 (-> lo) for each element's own r(i).
    seed = 987654321
    n = 4096
    r = R.splitmix_r_array(seed, n).astype(np.int64)
    fmt = dk.cfloat8_143(7)
    lo, q = 1.25, 0.125  # grid 1.25, 1.375 (codes 0x3A, 0x3B)
    for delta, up in ((0, True), (1, False)):
        f = (1 << 32) - r - delta
        ok = (f >= 0) & (f < (1 << 32))
        x = np.where(ok, lo + f.astype(np.float64) * q * 2.0 ** -32, lo)
        want = np.where(ok & (f > 0) & up, 0x3B, 0x3A)
        got = dk.quantize(x, fmt, rounding="stochastic", seed=seed)
        bad = np.nonzero(got != want)[0]
        assert bad.size == 0, (delta, bad[:5], x[bad[:5]], got[bad[:5]])


def _float_ceil_floor(q: Fraction):
    """(smallest float64 >= q, largest float64 < q) for a positive rational q."""
    f = float(q)
    up = f if Fraction(f) >= q else float(np.nextafter(f, np.inf))
    dn = float(np.nextafter(up, 0.0))
    assert Fraction(dn) < q <= Fraction(up)
    return up, dn


@pytest.mark.parametrize("rf,lo_code", [
    (R.RefFormat("cfloat8_152", 15, "tesla"), 0x3D),  # normal binade
    (R.RefFormat("cfloat8_143", 7, "tesla"), 0x02),  # subnormal step
    (R.RefFormat("cfloat8_143", 7, "tesla"), 0x07),  # the tesla gap: hi - lo = 9/8 * 2^-7
    (R.RefFormat("shp", 15, "tesla"), 0x03FF),  # tesla gap of SHP
    (R.RefFormat("shp", 40, "ieee"), 0x5123),
    (R.BF16_R, 0x3F85),
    (R.BF16_R, 0x7F7F),  # max -> hi = 2^128 = Inf
    (R.UHP_R, 0x7C01),
    (R.RefFormat("cfloat8_143", 3, "ieee"), 0x7F),  # max -> saturates either way
], ids=str)
def test_stochastic_threshold_every_r(isa, rf, lo_code):
    # SPEC: hi iff floor((|x| - lo) / (hi - lo) * 2^32) + r >= 2^32. For each element i, x is
    # the float64 just at / just below lo + (2^32 - r(i)) * (hi - lo) / 2^32, so every bit of
    # r(i) matters; negative x too (the sign does not enter the decision).
    seed = 0x0123456789ABCDEF
    n = 2048
    r = [int(v) for v in R.splitmix_r_array(seed, n)]
    s_lo, lo = R.decode_scalar(lo_code, rf)
    _, hi = R.neighbours(lo + Fraction(1, 2 ** 200), rf)
    assert hi > lo
    xs, want = [], []
    hi_code = lo_code + 1
    if hi > rf.max:
        hi_code = rf.inf_code if rf.has_inf_nan else lo_code
    for i in range(n):
        if r[i] == 0:
            xs.append(float(lo)); want.append(lo_code); continue
        thr = lo + (2 ** 32 - r[i]) * (hi - lo) / 2 ** 32
        up, dn = _float_ceil_floor(thr)
        use_up = i % 2 == 0
        xs.append(up if use_up else dn)
        want.append(hi_code if use_up else lo_code)
    x = np.array(xs)
    sign = np.where(np.arange(n) % 4 < 2, 1.0, -1.0)
    if not rf.signed:
        sign[:] = 1.0
    x = x * sign
    want = np.array(want, np.int64) | np.where(sign < 0, rf.sign_bit, 0)
    got = dk.quantize(x, fmt_of(rf), rounding="stochastic", seed=seed)
    bad = np.nonzero(got.astype(np.int64) != want)[0]
    assert bad.size == 0, [(int(i), float(x[i]).hex(), r[i], hex(int(got[i])), hex(int(want[i])))
                           for i in bad[:4]]
    # the reference agrees (it is what the other stochastic tests compare with)
    assert np.array_equal(R.quantize_ref(x, rf, "stochastic", seed)[0].astype(np.int64), want)


@pytest.mark.parametrize("v,rf", [
    (1.3, R.RefFormat("cfloat8_143", 7, "tesla")),
    (-0.30078125 * 1.01, R.RefFormat("cfloat8_152", 15, "tesla")),
    (1.5 * 2.0 ** -7, R.RefFormat("cfloat8_143", 7, "tesla")),  # in the tesla gap
    (0.3 * 2.0 ** -9, R.RefFormat("cfloat8_143", 7, "ieee")),  # subnormal range
    (1.0009, R.RefFormat("shp", 15, "tesla")),
    (1.00123, R.BF16_R),
    (3.0001e-9, R.UHP_R),  # near the flush boundary: unbiased only above 2^-30
    (470.0, R.RefFormat("cfloat8_143", 7, "tesla")),
], ids=lambda p: str(p))
def test_stochastic_unbiased(isa, v, rf):
    fmt = fmt_of(rf)
    n = 1 << 16
    x = np.full(n, v, dtype=np.float64)
    means = []
    for seed in (1, 2, 3, 4):
        codes = dk.quantize(x, fmt, rounding="stochastic", seed=seed)
        vals = dk.dequantize(codes, fmt, dtype=np.float64)
        means.append(vals.mean())
        lo, hi = vals.min(), vals.max()
        assert lo <= abs(v) * np.sign(v) <= hi or lo == hi
        # only the two neighbours occur
        assert np.unique(vals).size <= 2
    mean = float(np.mean(means))
    p = (v - lo) / (hi - lo) if hi != lo else 0.0
    se = abs(hi - lo) * math.sqrt(max(p * (1 - p), 1e-12) / (4 * n))
    assert abs(mean - v) <= 5 * se + 1e-300, (mean, v, se)


@pytest.mark.parametrize("rf", [
    R.RefFormat("cfloat8_143", 7, "tesla"),   # saturates to max
    R.RefFormat("cfloat8_152", 15, "ieee"),
    R.RefFormat("shp", 15, "tesla"),
    R.BF16_R,                                  # Inf is the upper neighbour of max
    R.UHP_R,
], ids=str)
def test_stochastic_float32_around_max(isa, rf):
    # Every float32 pattern within 4,096 steps of max and the last 4,096 below Inf, and random
    # ones up to 2^24 steps above max, both signs, through the tier's vector loop (float32
    # input): below max nothing may round past it, above it the format's rule applies.
    mb = int(np.float32(float(rf.max)).view(np.uint32))
    rng = np.random.default_rng(7)
    pats = np.concatenate([np.arange(mb - 4096, mb + 4096), mb + rng.integers(0, 1 << 24, 8192),
                           np.arange(0x7F800000 - 4096, 0x7F800001)]).astype(np.uint32)
    pats = pats[pats <= 0x7F800000]
    x = pats.view(np.float32)
    if rf.signed:
        x = np.concatenate([x, -x])
    for seed in (1, 0xDEADBEEF):
        check(x, rf, "stochastic", seed=seed)


def test_stochastic_seed_semantics(isa):
    fmt = dk.cfloat8_143(7)
    x = np.linspace(-3, 3, 10_001, dtype=np.float32)
    a = dk.quantize(x, fmt, rounding="stochastic", seed=5)
    assert np.array_equal(a, dk.quantize(x, fmt, rounding="stochastic", seed=5))
    assert not np.array_equal(a, dk.quantize(x, fmt, rounding="stochastic", seed=6))
    assert np.array_equal(a, dk.quantize(x, fmt, rounding="stochastic", seed=np.int64(5)))
    # seeds are taken mod 2^64 in SPEC's recipe: a large one works bit-exactly
    check(x, R.RefFormat("cfloat8_143", 7, "tesla"), "stochastic", seed=(1 << 64) - 3)
    for bad in (None, 1.5, "7"):
        with pytest.raises((TypeError, ValueError), match="seed"):
            dk.quantize(x, fmt, rounding="stochastic", seed=bad)
    with pytest.raises((TypeError, ValueError), match="seed"):
        dk.fake_quantize(x, fmt, rounding="stochastic")


def test_stochastic_exact_values_stay(isa):
    fmt = dk.cfloat8_152(15)
    codes = np.arange(256, dtype=np.uint8)
    vals = dk.dequantize(codes, fmt)
    for seed in range(5):
        back = dk.quantize(vals, fmt, rounding="stochastic", seed=seed)
        same = (back == codes) | ((codes == 0x80) & (back == 0x80))
        assert same.all()


# ---------------------------------------------------------------------------------------
# Flags, specials, signs
# ---------------------------------------------------------------------------------------
def test_flags_counted(isa):
    f32 = np.float32
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, 1e-40, -1e-41, 500.0, 1000.0, 2.0 ** -12,
                  1.0, -0.0, 0.0], dtype=f32)
    c, fl = dk.quantize(x, dk.cfloat8_143(7), return_flags=True)
    # invalid: 2 NaN; denormal: 2 float32 subnormals; overflow: +-Inf, 1000 and 500 (with an
    # unbounded exponent 500 rounds to 512: the grid above 480 is 512, the tie is 496);
    # underflow: 1e-40, -1e-41 (-> +-0) and 2^-12 (tesla bias 7: min subnormal 2^-10 -> 0)
    assert flags_dict(fl) == {"invalid": 2, "denormal": 2, "overflow": 4, "underflow": 3}
    assert c.tolist() == [0x7F, 0x7F, 0x7F, 0xFF, 0x00, 0x80, 0x7F, 0x7F, 0x00, 0x38, 0x80, 0x00]
    c, fl = dk.quantize(x, dk.UHP, return_flags=True)
    assert c.tolist()[:4] == [0xFE00, 0xFE00, 0xFC00, 0xFE00]
    assert c[-2] == 0 and c[-1] == 0 and c[5] == 0xFE00  # -0 -> +0; negative -> NaN
    # invalid: 2 NaN, -Inf, -1e-41; underflow: 1e-40 (flushed), 2^-12 is a UHP normal
    assert flags_dict(fl) == {"invalid": 4, "denormal": 2, "overflow": 0, "underflow": 1}
    c, fl = dk.quantize(x, dk.BF16, return_flags=True)
    assert c[0] == 0x7FC0 and c[1] == 0xFFC0 and c[2] == 0x7F80 and c[3] == 0xFF80
    # 1e-40 and -1e-41 are inexact BF16 subnormals: underflow
    assert flags_dict(fl) == {"invalid": 2, "denormal": 2, "overflow": 0, "underflow": 2}
    # float64 source: denormal means float64-subnormal only
    y = np.array([1e-40, 5e-324, 1e-310, 1e300], dtype=np.float64)
    _, fl = dk.quantize(y, dk.BF16, return_flags=True)
    assert flags_dict(fl) == {"invalid": 0, "denormal": 2, "overflow": 1, "underflow": 3}


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_bf16_uhp_overflow_modes(isa, rounding):
    kw = {"seed": 3} if rounding == "stochastic" else {}
    big = np.array([3.0e38, 3.4028235e38, -3.4e38, 1e39], dtype=np.float64)
    c, fl = dk.quantize(big, dk.BF16, rounding=rounding, return_flags=True, **kw)
    if rounding == "toward_zero":
        assert c.tolist() == [0x7F61, 0x7F7F, 0xFF7F, 0x7F7F]
    else:  # >= 2^128 always becomes Inf
        assert c[3] == 0x7F80
    c = dk.quantize(np.array([2.0 ** 33, 2.0 ** 32 * 1.9999]), dk.UHP, rounding=rounding, **kw)
    assert c[0] == (0xFC00 if rounding != "toward_zero" else 0xFBFF)


def test_negative_zero(isa):
    x = np.array([-0.0, 0.0], np.float32)
    for fmt in (dk.cfloat8_143(7), dk.cfloat8_152(3), dk.shp(15)):
        c = dk.quantize(x, fmt)
        top = 1 << (fmt.nbits - 1)
        assert c.tolist() == [top, 0]
        back = dk.dequantize(c, fmt)
        assert bits(back).tolist() == [0x80000000, 0]
    assert dk.quantize(x, dk.UHP).tolist() == [0, 0]
    assert dk.quantize(x, dk.BF16).tolist() == [0x8000, 0]


# ---------------------------------------------------------------------------------------
# fake_quantize, out=, choose_bias
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_fake_quantize(isa, rounding):
    rng = np.random.default_rng(8)
    kw = {"seed": 42} if rounding == "stochastic" else {}
    for rf in (R.RefFormat("cfloat8_143", 9, "tesla"), R.RefFormat("cfloat8_152", 15, "ieee"),
               R.RefFormat("shp", 20, "tesla"), R.BF16_R, R.UHP_R):
        fmt = fmt_of(rf)
        x32 = stratified_f32(rf, rng, 20_000).reshape(100, 200)[:, ::2]
        for x in (x32, x32.astype(np.float64)):
            got = dk.fake_quantize(x, fmt, rounding=rounding, **kw)
            assert got.dtype == x.dtype and got.shape == x.shape
            want = dk.dequantize(dk.quantize(x, fmt, rounding=rounding, **kw), fmt, dtype=x.dtype)
            ref = R.dequantize_ref(R.quantize_ref(x, rf, rounding, kw.get("seed"))[0], rf)
            nan = np.isnan(ref)
            assert np.array_equal(np.isnan(got), nan)
            assert np.array_equal(bits(got)[~nan], bits(want)[~nan])
            assert np.array_equal(bits(got)[~nan], bits(ref.astype(x.dtype))[~nan])
        # bfloat16 input -> bfloat16 output (CFloat8 values are exact in BF16)
        if rf.nbits == 8:
            xb = x32.astype(ml_dtypes.bfloat16)
            got = dk.fake_quantize(xb, fmt, rounding=rounding, **kw)
            assert got.dtype == xb.dtype
            ref = R.dequantize_ref(R.quantize_ref(xb, rf, rounding, kw.get("seed"))[0], rf)
            assert np.array_equal(got.astype(np.float64), ref)
    x = np.linspace(-1e6, 1e6, 1001)
    assert np.array_equal(dk.fake_quantize(x, dk.FP32), x.astype(np.float32).astype(np.float64))


def test_out_argument(isa):
    fmt = dk.cfloat8_143(7)
    x = np.linspace(-500, 500, 1200, dtype=np.float32).reshape(30, 40)
    out = np.empty((30, 40), np.uint8)
    res = dk.quantize(x, fmt, out=out)
    assert res is out
    assert np.array_equal(out, R.quantize_ref(x, R.ref_of(fmt))[0])
    out16 = np.empty((30, 40), np.uint16)
    res = dk.quantize(x, dk.BF16, out=out16)
    assert res is out16 and np.array_equal(out16, x.astype(ml_dtypes.bfloat16).view(np.uint16))
    codes = dk.quantize(x, fmt)
    o = np.empty((30, 40), np.float64)
    assert dk.dequantize(codes, fmt, dtype=np.float64, out=o) is o
    assert np.array_equal(o, R.dequantize_ref(codes, R.ref_of(fmt)))


@pytest.mark.parametrize("family", sorted(CTORS))
def test_choose_bias(family):
    rng = np.random.default_rng(len(family))
    for trial in range(300):
        scale = 2.0 ** rng.integers(-80, 40)
        x = (rng.standard_normal(int(rng.integers(1, 50))) * scale).astype(np.float32)
        margin = int(rng.integers(-2, 4)) if trial % 2 else 0
        target = Fraction(float(np.max(np.abs(x)))) * 2 ** margin
        fits = [b for b in range(64) if R.max_value(family, b) >= target]
        if not fits:
            continue
        b = dk.choose_bias(x, family, margin=margin) if margin else dk.choose_bias(x, family)
        assert isinstance(b, (int, np.integer)) and b == max(fits), (x, margin, b, max(fits))
        # with margin >= 0 nothing overflows at that bias
        if margin >= 0:
            _, fl = dk.quantize(x, CTORS[family](int(b)), return_flags=True)
            assert fl.overflow == 0
    assert dk.choose_bias(np.zeros(5, np.float32), family) == 63
    # exactly max: 480 fits bias 7 for 1_4_3 and not bias 8 (max 240)
    if family == "cfloat8_143":
        assert dk.choose_bias(np.array([480.0, -3.0]), family) == 7
        assert dk.choose_bias(np.array([480.5]), family) == 6
        assert dk.choose_bias(np.array([240.0]), family, margin=1) == 7
    with pytest.raises(ValueError, match="family"):
        dk.choose_bias(np.ones(3), "cfloat8_1_4_3x")
    # bfloat16 input; nothing fits / non-finite: a ValueError naming x (no bias is right)
    xb = np.array([3.0, -100.0], dtype=ml_dtypes.bfloat16)
    assert dk.choose_bias(xb, family) == max(
        b for b in range(64) if R.max_value(family, b) >= 100)
    for bad in (np.array([1e30]), np.array([1.0, np.inf]), np.array([np.nan])):
        with pytest.raises(ValueError, match="x"):
            dk.choose_bias(bad, family)


# ---------------------------------------------------------------------------------------
# Hypothesis: any float32/float64 value, any format, any rounding
# ---------------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    vals=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=40),
    family=st.sampled_from(sorted(CTORS)),
    bias=st.integers(0, 63),
    sub=st.sampled_from(MODES),
    rounding=st.sampled_from(ROUNDINGS),
    seed=st.integers(0, (1 << 64) - 1),
    f32=st.booleans(),
    data=st.data(),
)
def test_hypothesis_any_value(vals, family, bias, sub, rounding, seed, f32, data):
    rf = R.RefFormat(family, bias, sub)
    # besides arbitrary floats, values near the format's own grid: lo + t * (hi - lo)
    g = grid_of(rf)
    ext = np.concatenate([g, [2 * g[-1]]])
    k = data.draw(st.lists(st.integers(0, rf.max_code), max_size=20))
    t = data.draw(st.lists(st.sampled_from([0.5, 0.25, 0.0]) | st.floats(0, 1), min_size=len(k),
                           max_size=len(k)))
    near = [float(ext[i] + ti * (ext[i + 1] - ext[i])) for i, ti in zip(k, t)]
    with np.errstate(over="ignore"):
        x = np.array(vals + near, dtype=np.float32 if f32 else np.float64)
    want = R.quantize_loop(x, rf, rounding, seed)  # the Fraction path here
    for name in R_ISAS:
        with _config.use_isa(name):
            check(x, rf, rounding, seed=seed, want=want)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
def test_bad_inputs_quantize():
    fmt = dk.cfloat8_143(7)
    x = np.ones(10, np.float32)
    for bad in (np.ones(10, np.int32), np.ones(10, np.float16), np.ones(10, np.complex64),
                np.array(["a"] * 3), np.ones(10, np.uint8)):
        with pytest.raises((TypeError, ValueError), match="x"):
            dk.quantize(bad, fmt)
    with pytest.raises((TypeError, ValueError), match="rounding"):
        dk.quantize(x, fmt, rounding="up")
    with pytest.raises((TypeError, ValueError), match="seed"):
        dk.quantize(x, fmt, rounding="stochastic")
    with pytest.raises((TypeError, ValueError), match="fmt"):
        dk.quantize(x, "cfloat8_143")
    with pytest.raises((TypeError, ValueError), match="out"):
        dk.quantize(x, fmt, out=np.empty(11, np.uint8))
    with pytest.raises((TypeError, ValueError), match="out"):
        dk.quantize(x, fmt, out=np.empty(10, np.uint16))
    with pytest.raises((TypeError, ValueError), match="out"):
        dk.quantize(x, dk.BF16, out=np.empty(10, np.uint8))
    with pytest.raises((TypeError, ValueError), match="out"):
        dk.quantize(x, fmt, out=np.empty((2, 5), np.uint8))
    with pytest.raises((TypeError, ValueError), match="rounding"):
        dk.fake_quantize(x, fmt, rounding="nearest_even")


def test_bad_inputs_dequantize():
    with pytest.raises((TypeError, ValueError), match="codes"):
        dk.dequantize(np.zeros(4, np.uint16), dk.cfloat8_143(7))
    with pytest.raises((TypeError, ValueError), match="codes"):
        dk.dequantize(np.zeros(4, np.uint8), dk.shp(7))
    with pytest.raises((TypeError, ValueError), match="codes"):
        dk.dequantize(np.zeros(4, np.float32), dk.BF16)
    with pytest.raises((TypeError, ValueError), match="codes"):
        dk.dequantize(np.zeros(4, np.int64), dk.UHP)
    with pytest.raises((TypeError, ValueError), match="dtype"):
        dk.dequantize(np.zeros(4, np.uint8), dk.cfloat8_143(7), dtype=np.float16)
    with pytest.raises((TypeError, ValueError), match="out"):
        dk.dequantize(np.zeros(4, np.uint8), dk.cfloat8_143(7), out=np.empty(4, np.float64))
    with pytest.raises((TypeError, ValueError), match="out"):
        dk.dequantize(np.zeros(4, np.uint8), dk.cfloat8_143(7), out=np.empty(5, np.float32))
    with pytest.raises((TypeError, ValueError), match="fmt"):
        dk.dequantize(np.zeros(4, np.uint8), 7)


def test_zero_dim_keeps_shape(isa):
    # "codes of x's shape": a 0-d array stays 0-d (and so do dequantize / fake_quantize)
    fmt = dk.cfloat8_143(7)
    x = np.array(1.0, np.float32)
    c = dk.quantize(x, fmt)
    assert c.shape == () and int(c) == 0x38
    assert dk.quantize(np.array(1.0), dk.BF16).shape == ()
    assert dk.dequantize(np.array(0x38, np.uint8), fmt).shape == ()
    assert dk.fake_quantize(x, fmt).shape == ()


def test_unusual_arrays_correct_or_clean_error(isa):
    # Nothing crashes: read-only, unaligned, empty, many-dimensional, big-endian inputs give
    # the reference's codes or a TypeError/ValueError that names x.
    rf = R.RefFormat("cfloat8_143", 7, "tesla")
    fmt = fmt_of(rf)
    x = np.linspace(-500, 500, 96).astype(np.float32)
    cases = {
        "readonly": np.frombuffer(x.tobytes(), np.float32),
        "unaligned": np.frombuffer(b"\0" + x.tobytes(), np.float32, offset=1),
        "empty": np.empty((0, 5), np.float32),
        "ndim8": x.reshape(2, 2, 2, 2, 2, 3, 1, 1),
        "bigendian32": x.astype(">f4"),
        "bigendian64": x.astype(">f8"),
        "negstride3d": x.reshape(4, 6, 4)[::-1, ::2, ::-3],
    }
    for name, v in cases.items():
        try:
            got = dk.quantize(v, fmt, rounding="stochastic", seed=3)
        except (TypeError, ValueError) as e:
            assert "x" in str(e), (name, e)
            continue
        want = R.quantize_ref(np.asarray(v, dtype=v.dtype.newbyteorder("=")), rf, "stochastic", 3)[0]
        assert got.shape == v.shape and np.array_equal(got, want), name
    codes = np.arange(256, dtype=np.uint8)
    for name, v in {"readonly": np.frombuffer(codes.tobytes(), np.uint8),
                    "negstride": codes[::-5]}.items():
        assert np.array_equal(dk.dequantize(v, fmt), R.dequantize_ref(v, rf).astype(np.float32)), name
    u = np.arange(0, 65536, 7, dtype=np.uint16)
    for name, v in {"bigendian": u.astype(">u2"),
                    "unaligned": np.frombuffer(b"\0" + u.tobytes(), np.uint16, offset=1)}.items():
        try:
            got = dk.dequantize(v, dk.BF16, dtype=np.float64)
        except (TypeError, ValueError) as e:
            assert "codes" in str(e), (name, e)
            continue
        want = R.dequantize_ref(u, R.BF16_R)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)]), name


def test_garbage_arguments_never_crash():
    # whatever the arguments: a result or a TypeError/ValueError, never another exception
    fmt = dk.cfloat8_143(7)
    x = np.ones(8, np.float32)
    calls = [
        lambda: dk.quantize(x, fmt, out=[0] * 8),
        lambda: dk.quantize(x, fmt, out=np.empty(8, np.float32)),
        lambda: dk.quantize(x, fmt, out=np.empty(8, np.uint8)[::-1]),
        lambda: dk.quantize(x, fmt, rounding=None),
        lambda: dk.quantize(x, fmt, rounding=3),
        lambda: dk.quantize(x, None),
        lambda: dk.quantize(None, fmt),
        lambda: dk.quantize(np.array([object()]), fmt),
        lambda: dk.quantize(x, fmt, rounding="stochastic", seed=-1),
        lambda: dk.quantize(x, fmt, rounding="stochastic", seed=1 << 64),
        lambda: dk.quantize(x, fmt, rounding="stochastic", seed=True),
        lambda: dk.dequantize([1, 2, 3], fmt),
        lambda: dk.dequantize(np.zeros(3, np.uint8), fmt, dtype="float32"),
        lambda: dk.dequantize(np.zeros(3, np.uint8), fmt, dtype=int),
        lambda: dk.dequantize(np.zeros(3, np.uint8), fmt, out=np.empty(3, np.float32)[::-1]),
        lambda: dk.fake_quantize(np.ones(3, np.int64), fmt),
        lambda: dk.add(np.zeros(3, np.uint8), [1, 2, 3], fmt),
        lambda: dk.fma(np.zeros(3, np.uint8), np.zeros(3, np.uint8), None, fmt),
        lambda: dk.choose_bias(np.ones(3), "shp", margin=1.5),
        lambda: dk.choose_bias("abc", "shp"),
    ]
    for i, call in enumerate(calls):
        try:
            call()
        except (TypeError, ValueError):
            pass


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_every_small_size_and_offset(isa, rounding):
    # SIMD bodies and their tails: every length 0..70 and odd offsets (misaligned starts)
    rng = np.random.default_rng(17)
    for rf in (R.RefFormat("cfloat8_143", 7, "tesla"), R.RefFormat("cfloat8_152", 15, "ieee"),
               R.RefFormat("shp", 20, "tesla"), R.BF16_R, R.UHP_R):
        base = stratified_f32(rf, rng, 1200)
        fmt = fmt_of(rf)
        kw = {"seed": 9} if rounding == "stochastic" else {}
        for n in list(range(0, 71)) + [127, 128, 129, 255, 256, 257, 1023]:
            for off in (0, 1, 3):
                x = base[off:off + n]
                for v in (x, x.astype(np.float64)):
                    got = dk.quantize(v, fmt, rounding=rounding, **kw)
                    want = R.quantize_vec(v, rf, rounding, kw.get("seed"))[0]
                    assert np.array_equal(got, want), (rf, n, off, v.dtype)
                codes = want
                back = dk.dequantize(codes, fmt)
                ref = R.dequantize_ref(codes, rf).astype(np.float32)
                nan = np.isnan(ref)
                assert np.array_equal(np.isnan(back), nan)
                assert np.array_equal(bits(back)[~nan], bits(ref)[~nan])


def test_large_new_results_start_on_a_line():
    """New results of _numerics.LINE_ALIGN_MIN bytes or more start on a 64-byte line
    (NumPy guarantees 16; codes used as W in x @ W.T are loaded as AMX tiles where they
    lie): quantize on the fast path (contiguous float32) and on the general one (a
    transposed float64 input), dequantize, fake_quantize and the arithmetic; the values are
    those written into a plain out= array. Smaller results are plain NumPy arrays."""
    from dojo_kernels import _numerics
    lim = _numerics.LINE_ALIGN_MIN
    rng = np.random.default_rng(5)
    x = rng.standard_normal((lim // 4 // 64 + 1, 64)).astype(np.float32)  # codes >= lim / 2
    x2 = rng.standard_normal((2 * x.shape[0], 64)).astype(np.float32)     # BF16 codes >= lim
    cases = [
        ("quantize BF16", lambda o: dk.quantize(x2, dk.BF16, out=o), x2.shape, np.uint16),
        ("quantize, transposed float64", lambda o: dk.quantize(
            x2.astype(np.float64).T, dk.BF16, out=o), x2.T.shape, np.uint16),
        ("dequantize", lambda o: dk.dequantize(dk.quantize(x, dk.BF16), dk.BF16, out=o),
         x.shape, np.float32),
        ("fake_quantize", lambda o: dk.fake_quantize(x, dk.BF16, out=o), x.shape, np.float32),
        ("add", lambda o: dk.add(dk.quantize(x2, dk.BF16), dk.quantize(x2, dk.BF16), dk.BF16,
                                 out=o), x2.shape, np.uint16),
    ]
    for what, f, shape, dt in cases:
        got = f(None)
        assert got.nbytes >= lim and got.ctypes.data % 64 == 0, what
        assert got.flags.c_contiguous and got.shape == shape and got.dtype == dt, what
        want = np.empty(shape, dt)
        f(want)
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), what
    small = dk.quantize(x[:4], dk.BF16)
    assert small.base is None                           # below the limit: NumPy's own
