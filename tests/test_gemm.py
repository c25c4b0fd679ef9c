"""Tests of dojo_kernels.gemm: numerics (SPEC section 5), layouts, formats, tiers, threads.

References are independent of the package: CFloat8 and BF16 are decoded here from the
SPEC section 1 formulas, products are checked against float64 NumPy under the SPEC
bound, and the documented accumulation order is emulated with exact Fractions. This file
checks the vdpbf16ps order (``order="vdpbf16ps"``, pinned in run()); tests/test_gemm_order.py
checks the amx order (the default) and what both orders share.
"""
from __future__ import annotations

import importlib
import math
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dojo_kernels as dk
from dojo_kernels import BF16, _config, cfloat8_143, cfloat8_152

G = importlib.import_module("dojo_kernels.gemm")

U = 2.0 ** -24
# .ci/run repeats the suite per forced lower tier with DOJO_TEST_QUICK=1: then test that tier
# only (the unforced run covers every tier and both avx512bf16 kernels).
TIERS = ([dk.get_isa()] if os.environ.get("DOJO_TEST_QUICK") == "1"
         else list(_config.supported_isas()))


def variants():
    """(tier, avx512 kernel) pairs this machine runs."""
    out = []
    for t in TIERS:
        if t == "avx512bf16":
            out += [(t, "fma"), (t, "vdpbf16ps")]
        else:
            out.append((t, None))
    return out


VARIANTS = variants()


def run(variant, *args, **kw):
    """gemm on one (tier, avx512 kernel). This file checks the vdpbf16ps order, pinned here
    (the default is the amx order: tests/test_gemm_order.py checks it, and both orders'
    shared properties)."""
    kw.setdefault("order", "vdpbf16ps")
    tier, kern = variant
    with _config.use_isa(tier):
        if kern is None:
            return dk.gemm(*args, **kw)
        with G.use_kernel(kern):
            return dk.gemm(*args, **kw)


# ---- independent decoding (SPEC section 1) -------------------------------------------

def decode_cf8(codes, exp_bits, man_bits, bias, subnormals="tesla"):
    codes = np.asarray(codes, dtype=np.int64)
    s = (codes >> 7) & 1
    e = (codes >> man_bits) & ((1 << exp_bits) - 1)
    mnt = codes & ((1 << man_bits) - 1)
    sub_exp = -bias if subnormals == "tesla" else 1 - bias
    sub = np.ldexp(mnt / 2.0 ** man_bits, sub_exp) if subnormals != "flush" else 0.0 * mnt
    val = np.where(e == 0, sub, np.ldexp(1 + mnt / 2.0 ** man_bits, e - bias))
    return np.where(s == 1, -val, val)


def decode(codes, fmt):
    if fmt.name == "bf16":
        return (np.asarray(codes).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    eb, mb = (4, 3) if fmt.name == "cfloat8_143" else (5, 2)
    return decode_cf8(codes, eb, mb, fmt.bias, fmt.subnormals)


def gamma(k):
    return k * U / (1 - k * U)


def bf16_codes(rng, shape, lo=-8, hi=8):
    """Random finite BF16 codes with value exponents floor(log2|x|) in [lo, hi]; exponents
    below -126 give subnormals (SPEC section 1: 0.m * 2**-126), down to -133."""
    assert -133 <= lo <= hi <= 127
    sign = rng.integers(0, 2, shape, dtype=np.uint32) << 15
    e = rng.integers(lo, hi + 1, shape)
    man = rng.integers(0, 128, shape, dtype=np.uint32)
    normal = sign | ((np.maximum(e, -126) + 127).astype(np.uint32) << 7) | man
    top = np.left_shift(1, np.clip(e + 133, 0, 6)).astype(np.uint32)   # subnormal: leading bit
    sub = sign | top | (man & (top - 1))
    return np.where(e >= -126, normal, sub).astype(np.uint16)


def cf8_codes(rng, shape):
    return rng.integers(0, 256, shape, dtype=np.uint8)


def codes_for(rng, fmt, shape, window=(-8, 8)):
    return bf16_codes(rng, shape, *window) if fmt.name == "bf16" else cf8_codes(rng, shape)


def floor_log2(x):
    return math.frexp(x)[1] - 1


def operand_range(vals, fmt):
    """(lowest, highest, quantum) exponents of what gemm may scale, from SPEC section 5:
    a CFloat8 operand is scaled as a whole format (its smallest step and largest value,
    decoded here from all 256 codes); a BF16 operand by its data (8 significant bits, so
    every value is a multiple of 2**(floor(log2(smallest)) - 7), and at least of 2**-133)."""
    if fmt.name == "bf16":
        v = np.abs(vals[np.isfinite(vals) & (vals != 0)])
        if v.size == 0:
            return None
        lo, hi = floor_log2(float(v.min())), floor_log2(float(v.max()))
        return lo, hi, max(lo, -126) - 7
    allv = np.abs(decode(np.arange(256), fmt))
    allv = allv[np.isfinite(allv) & (allv != 0)]
    lo, hi = floor_log2(float(allv.min())), floor_log2(float(allv.max()))
    step = min(float(np.min(np.abs(np.diff(np.unique(allv))))), float(allv.min()))
    return lo, hi, floor_log2(step)


def no_flush_expected(A, fa, B, fb, k):
    """SPEC section 5: exact power-of-two scalings exist keeping every operand value a
    normal BF16, every product a multiple of 2**-126 and K times the largest product below
    2**127 -> nothing is flushed (the bound holds with no flush term)."""
    ra, rb = operand_range(A, fa), operand_range(B, fb)
    if ra is None or rb is None:
        return True
    (la, ha), (lb, hb) = (-126 - ra[0], 127 - ra[1]), (-126 - rb[0], 127 - rb[1])
    s_lo = max(-126 - (ra[2] + rb[2]), la + lb, -127)
    s_hi = min(127 - (ra[1] + rb[1] + 2) - max(k, 1).bit_length(), ha + hb, 149)
    return la <= ha and lb <= hb and s_lo <= s_hi


def lost_product_level(ra, fa, rb, fb, k):
    """docs/gemm.md, products spanning more than FP32 holds: the shift S of the product
    (scale down only as far as the products need when FP32 could hold them, not at all when
    it could not; 2**-S a float32) is split as sa + sb over the operands, a scaled operand
    value below 2**-126 is read as zero, and the split minimises the largest product so
    lost. Found here by trying every split (a CFloat8 operand's whole table must stay normal
    BF16, no operand's largest value may overflow); returns that level (0: nothing lost)."""
    (loA, hA, _), (loB, hB, _) = ra, rb
    s_hi = 127 - (hA + hB + 2) - max(k, 1).bit_length()
    S = max(min(max(s_hi, 0), (127 - hA) + (127 - hB), 149), -127)
    best = math.inf
    for sa in range(-600, 601):
        sb = S - sa
        if hA + sa > 127 or hB + sb > 127:
            continue
        if (fa.name != "bf16" and loA + sa < -126) or (fb.name != "bf16" and loB + sb < -126):
            continue
        lost_a = 2.0 ** (hB + 1 - 126 - sa) if loA + sa < -126 else 0.0
        lost_b = 2.0 ** (hA + 1 - 126 - sb) if loB + sb < -126 else 0.0
        best = min(best, max(lost_a, lost_b))
    assert best < math.inf
    return best


def check_bound(c, a_codes, b_codes, fa, fb):
    """|C - exact| <= gamma(K) |A||B| (+ the flush terms where the SPEC allows them)."""
    A, B = decode(a_codes, fa), decode(b_codes, fb)
    exact = A @ B
    k = A.shape[-1]
    absab = np.abs(A) @ np.abs(B)
    bound = (gamma(k) + 4 * k * 2.0 ** -53) * absab
    if not no_flush_expected(A, fa, B, fb, k):
        # docs/gemm.md: the products span more than FP32 holds; nothing overflows that an
        # FP32 product would not, and a step may lose less than 2**(hiA + hiB + 2 +
        # bitlen(K) - 253) in the result; operand values read as zero lose only products
        # below the smallest level any split of the shift can reach
        ra, rb = operand_range(A, fa), operand_range(B, fb)
        thr = 2.0 ** (ra[1] + rb[1] + 2 + max(k, 1).bit_length() - 253)
        bound = bound + 2 * ((k + 1) // 2) * thr
        level = lost_product_level(ra, fa, rb, fb, k)
        if level > 0:
            aA, aB = np.abs(A), np.abs(B)
            for i in range(aA.shape[0]):
                prod = aA[i][:, None] * aB
                bound[i] += np.where(prod < level, prod, 0.0).sum(axis=0)
    # a final result below FP32's normal range is rounded once more by the last multiply
    bound = bound + 2.0 ** -150
    err = np.abs(c.astype(np.float64) - exact)
    ok = err <= bound
    # a result near or beyond FP32's range may overflow: the SPEC promises nothing there
    ok |= absab >= 2.0 ** 126
    assert np.all(ok), (err - bound)[~ok].max()


# ---- exact emulation of the documented order (Fractions) ------------------------------

F32_MAX = Fraction((2 ** 24 - 1) * 2 ** 104)
TINY = Fraction(1, 2 ** 126)


def round24(x: Fraction) -> Fraction:
    """RNE to 24 significant bits, unbounded exponent."""
    if x == 0:
        return x
    ax = abs(x)
    e = math.floor(math.log2(ax.numerator) - math.log2(ax.denominator))
    while Fraction(2) ** e > ax:
        e -= 1
    while Fraction(2) ** (e + 1) <= ax:
        e += 1
    q = Fraction(2) ** (e - 23)
    n = ax / q
    fl = math.floor(n)
    rem = n - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        fl += 1
    r = fl * q
    return r if x > 0 else -r


def emulate(a_vals, b_vals, scale, flush=True):
    """C by the documented order: pairs, odd k first, fused steps, FTZ, DAZ; float32 out.
    flush=False: what the SPEC section 5 scaling promises -- no DAZ, no FTZ (unbounded
    exponent), one final rounding to float32 (scale must then be 1)."""
    m, k = a_vals.shape
    n = b_vals.shape[1]
    kk = k + (k % 2)
    A = np.zeros((m, kk))
    B = np.zeros((kk, n))
    A[:, :k], B[:k, :] = a_vals, b_vals
    # DAZ: subnormal inputs read as signed zeros
    if flush:
        A = np.where(np.abs(A) < 2.0 ** -126, np.copysign(0.0, A), A)
        B = np.where(np.abs(B) < 2.0 ** -126, np.copysign(0.0, B), B)
    out = np.empty((m, n), np.float32)
    for i in range(m):
        for j in range(n):
            acc = 0.0  # python float holding an exact float32 value
            for p in range(kk // 2):
                for kidx in (2 * p + 1, 2 * p):
                    a, b = A[i, kidx], B[kidx, j]
                    prod = Fraction(a) * Fraction(b)
                    x = Fraction(acc) + prod
                    if x == 0:
                        pz_neg = math.copysign(1, a) * math.copysign(1, b) < 0
                        neg = math.copysign(1, acc) < 0 and pz_neg and prod == 0 and acc == 0
                        acc = -0.0 if neg else 0.0
                        continue
                    r = round24(x)
                    if abs(r) > F32_MAX:
                        acc = math.copysign(math.inf, x)
                    elif flush and abs(r) < TINY:
                        acc = math.copysign(0.0, x)
                    else:
                        acc = float(r)
            out[i, j] = np.float32(acc) * np.float32(scale) if flush else np.float32(acc)
    return out


def tiny_mix_bf16(rng, shape):
    """BF16 codes: ordinary values, values whose products underflow FP32, subnormals, zeros."""
    c = bf16_codes(rng, shape, -6, 6)
    pick = rng.random(shape)
    c = np.where(pick < 0.25, bf16_codes(rng, shape, -75, -55), c)
    sub = (rng.integers(0, 2, shape) << 15 | rng.integers(1, 128, shape)).astype(np.uint16)
    c = np.where((pick >= 0.25) & (pick < 0.32), sub, c)
    c = np.where((pick >= 0.32) & (pick < 0.36), np.uint16(0x8000), c)
    return c.astype(np.uint16)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(x for x in v if x))
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 9), (7, 17, 8), (2, 3, 0)])
def test_bit_exact_against_fraction_emulation(variant, shape):
    """BF16 x BF16 with subnormal inputs and products below 2**-126: the SPEC section 5
    scaling keeps them all, so the result is the order above with no DAZ and no FTZ."""
    rng = np.random.default_rng(sum(shape) + 11)
    m, n, k = shape
    a = tiny_mix_bf16(rng, (m, k))
    b = bf16_codes(rng, (k, n), -30, 30)
    a[0, :] = bf16_codes(rng, (k,), -75, -62)   # a row whose products all underflow
    b[:, -1] = bf16_codes(rng, (k,), -60, -50)
    A, B = decode(a, BF16), decode(b, BF16)
    assert no_flush_expected(A, BF16, B, BF16, k)
    got = run(variant, a, b)
    want = emulate(A, B, 1.0, flush=False)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_subnormal_bf16_inputs_are_not_read_as_zero():
    """Reviewer item 3: 2**-130 (a BF16 subnormal) x 2**100 is 2**-30, not 0."""
    for v in VARIANTS:
        got = run(v, np.array([[2.0 ** -130]], np.float32), np.array([[2.0 ** 100]], np.float32))
        assert got[0, 0] == np.float32(2.0 ** -30), v
        got = run(v, np.array([[2.0 ** 100, 1.0]], np.float32),
                  np.array([[-(2.0 ** -133)], [2.0 ** -126]], np.float32))
        assert got[0, 0] == np.float32(-(2.0 ** -33) + 2.0 ** -126), v


def test_operands_spanning_too_many_binades_do_not_overflow():
    """Outside the no-flush range (docs/gemm.md) overflow is avoided first and the loss
    stays within the documented flush term."""
    a = np.array([[2.0 ** 120, 2.0 ** -133, 1.0]], np.float32)
    b = np.array([[2.0 ** 5], [2.0 ** -130], [2.0 ** -100]], np.float32)
    ac, bc = dk.quantize(a, BF16), dk.quantize(b, BF16)
    A, B = decode(ac, BF16), decode(bc, BF16)
    assert not no_flush_expected(A, BF16, B, BF16, 3)
    for v in VARIANTS:
        c = run(v, ac, bc)
        assert np.isfinite(c).all() and c[0, 0] == np.float32(2.0 ** 125)
        check_bound(c, ac, bc, BF16, BF16)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(x for x in v if x))
def test_bit_exact_emulation_cfloat8_scaled(variant):
    rng = np.random.default_rng(5)
    fa, fb = cfloat8_143(60), cfloat8_152(3)
    a, b = cf8_codes(rng, (4, 11)), cf8_codes(rng, (11, 6))
    got = run(variant, a, b, a_format=fa, b_format=fb)
    want = emulate(decode(a, fa), decode(b, fb), 1.0, flush=False)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(x for x in v if x))
@pytest.mark.parametrize("fb", [cfloat8_143(63), cfloat8_143(0), cfloat8_152(0), cfloat8_152(50)],
                         ids=str)
@pytest.mark.parametrize("where", ["high", "low", "mid"])
def test_bit_exact_emulation_mixed_bf16_cfloat8(variant, fb, where):
    """BF16 x CFloat8 (both orders) with BF16 values near either end of FP32's range, so
    products are near 2**127 or 2**-126: nothing may overflow or be lost."""
    rng = np.random.default_rng(len(where) + 200 + fb.bias)
    allv = np.abs(decode(np.arange(256), fb))
    flo, fhi = floor_log2(float(allv[allv > 0].min())), floor_log2(float(allv.max()))
    window = {"high": (117 - fhi, 125 - fhi), "low": (-125 - flo, -117 - flo),
              "mid": (-20, 20)}[where]
    lo = min(max(window[0], -126), 119)
    window = (lo, min(lo + 8, 127))
    a = bf16_codes(rng, (4, 9), *window)
    b = cf8_codes(rng, (9, 5))
    A, B = decode(a, BF16), decode(b, fb)
    # keep only B values whose products with every A value are in FP32's normal range
    # (the SPEC promises nothing for products outside it)
    amin, amax = np.abs(A).min(), np.abs(A).max()
    ok = (amax * np.abs(B) < 2.0 ** 120) & (amin * np.abs(B) >= 2.0 ** -126)
    b = np.where(ok, b, np.uint8(0)).astype(np.uint8)
    B = decode(b, fb)
    assert np.count_nonzero(B) >= 5
    got = run(variant, a, b, a_format=BF16, b_format=fb)
    want = emulate(A, B, 1.0, flush=False)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    got = run(variant, b.T.copy(), a.T.copy(), a_format=fb, b_format=BF16)
    want = emulate(B.T, A.T, 1.0, flush=False)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_mixed_reviewer_cases():
    """Reviewer repros: the exact result is a finite normal FP32 number."""
    fb = cfloat8_143(63)
    b = np.array([[fb.max_code]], np.uint8)
    exact = 2.0 ** 126 * decode(b, fb)[0, 0]
    for v in VARIANTS:
        got = run(v, np.array([[2.0 ** 126]], np.float32), b, a_format=BF16, b_format=fb)
        assert got[0, 0] == np.float32(exact), (v, got)
        got = run(v, np.array([[1]], np.uint8), np.array([[2.0 ** -120]], np.float32),
                  a_format=cfloat8_143(0), b_format=BF16)
        assert got[0, 0] == np.float32(2.0 ** -3 * 2.0 ** -120), (v, got)


def test_generic_step_boundary_cases():
    """The software FTZ step at the 2**-126 boundary (tininess after rounding)."""
    step = importlib.import_module("dojo_kernels._gemm").step_generic
    t = 2.0 ** -126
    cases = [
        (t, 1.5 * 2.0 ** -75, -(2.0 ** -76)),      # 2^-126 - 0.75*2^-150: flushed (unbounded rounding)
        (t, 2.0 ** -76, -(2.0 ** -76)),            # 2^-126 - 2^-152: rounds up to 2^-126
        (0.0, 2.0 ** -70, 2.0 ** -60),             # tiny product alone: flushed to +0
        (0.0, -(2.0 ** -70), 2.0 ** -60),          # ... to -0
        (2.0 ** -120, 2.0 ** -70, 2.0 ** -60),     # tiny product absorbed by a normal acc
        (3 * t, -t, 2.0),                          # exact cancellation to a subnormal: flushed
        (-3.4e38, 2.0 ** 64, 2.0 ** 64),           # product overflows FP32, fused sum does not
        (1.0, 0.0, -5.0),
    ]
    for acc, a, b in cases:
        acc32, a32, b32 = np.float32(acc), np.float32(a), np.float32(b)
        x = Fraction(float(acc32)) + Fraction(float(a32)) * Fraction(float(b32))
        if x == 0:
            want = 0.0
        else:
            r = round24(x)
            want = (math.copysign(math.inf, x) if abs(r) > F32_MAX else
                    math.copysign(0.0, x) if abs(r) < TINY else float(r))
        got = step(float(acc32), float(a32), float(b32))
        assert np.float32(got).view(np.uint32) == np.float32(want).view(np.uint32), (acc, a, b, got, want)


# ---- agreement across tiers, kernels and threads ---------------------------------------

def test_identical_bits_across_tiers_kernels_threads():
    rng = np.random.default_rng(1)
    m, n, k = 45, 83, 533      # m, n off the register blocks; k odd, above KC (256 / 512)
    a = tiny_mix_bf16(rng, (m, k))
    b = tiny_mix_bf16(rng, (k, n))
    ref = run(("generic", None), a, b)
    saved = dk.get_num_threads()
    try:
        for th in (1, 2, 3):
            dk.set_num_threads(th)
            for v in VARIANTS:
                got = run(v, a, b)
                assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), (v, th)
    finally:
        dk.set_num_threads(saved)


@pytest.mark.parametrize("fa,fb", [(cfloat8_143(7), cfloat8_152(15)),
                                   (cfloat8_152(63, "ieee"), cfloat8_143(0)),
                                   (BF16, cfloat8_143(30)), (cfloat8_152(2), BF16), (BF16, BF16)])
def test_identical_bits_across_tiers_cfloat8_and_packing_paths(fa, fb):
    """Every code of each format, odd k above two KC blocks, full and edge column slivers,
    B with a row stride (the SIMD packers' path) and B column-major (the portable one)."""
    rng = np.random.default_rng(9)
    m, n, k = 20, 130, 1031
    a = codes_for(rng, fa, (m, k))
    b_big = codes_for(rng, fb, (2 * k, n))
    b = b_big[::2]                              # row stride 2n: rows still contiguous
    if fa.nbits == 8:
        a[0, :256] = np.arange(256, dtype=np.uint8)
    if fb.nbits == 8:
        b_big[0:512:2, 0] = np.arange(256, dtype=np.uint8)
    ref = run(("generic", None), a, np.asfortranarray(b), a_format=fa, b_format=fb)
    check_bound(ref, a, b, fa, fb)
    for v in VARIANTS:
        got = run(v, a, b, a_format=fa, b_format=fb)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), v


def test_threads_large_fast_tier():
    """Blocks split over threads in every way the driver does (m above 2 MC, n above NC)."""
    rng = np.random.default_rng(2)
    best = (TIERS[-1], "fma" if TIERS[-1] == "avx512bf16" else None)
    # sizes above 2 MC (m), NC (n) and KC (k) of the tier, and an m below one MC
    sizes = {"generic": [(200, 600, 300), (20, 1100, 100)],
             "avx2": [(300, 2100, 600), (40, 2100, 300)]}.get(
                 TIERS[-1], [(700, 1100, 600), (40, 2100, 300)])
    for m, n, k in sizes:
        a, b = bf16_codes(rng, (m, k)), bf16_codes(rng, (k, n))
        saved = dk.get_num_threads()
        outs = []
        try:
            for th in (1, 2, 4):
                dk.set_num_threads(th)
                outs.append(run(best, a, b))
        finally:
            dk.set_num_threads(saved)
        for o in outs[1:]:
            assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32))
        if TIERS[-1] == "avx512bf16":
            assert np.array_equal(run(("avx512bf16", "vdpbf16ps"), a, b).view(np.uint32),
                                  outs[0].view(np.uint32))


# ---- SPEC bound over shapes, layouts and formats --------------------------------------

DIMS = st.sampled_from([0, 1, 2, 3, 5, 6, 7, 13, 16, 17, 31, 64, 65, 97])
KDIMS = st.sampled_from([0, 1, 2, 3, 7, 31, 255, 256, 257, 511, 513])
FORMATS = st.sampled_from([BF16, cfloat8_143(7), cfloat8_143(0), cfloat8_143(63),
                           cfloat8_152(15), cfloat8_152(0), cfloat8_152(63),
                           cfloat8_143(20, "ieee"), cfloat8_152(40, "ieee")])
LAYOUTS = st.sampled_from(["C", "F", "T", "strided", "reversed"])


def lay(x, how):
    if how == "C":
        return np.ascontiguousarray(x)
    if how == "F":
        return np.asfortranarray(x)
    if how == "T":
        return np.ascontiguousarray(x.T).T
    if how == "strided":
        big = np.zeros((x.shape[0] * 2 + 1, x.shape[1] * 3 + 1), x.dtype)
        big[1::2, ::3][: x.shape[0], : x.shape[1]] = x
        return big[1::2, ::3][: x.shape[0], : x.shape[1]]
    y = np.ascontiguousarray(x[::-1, ::-1])
    return y[::-1, ::-1]


@st.composite
def windows(draw):
    """A BF16 exponent window anywhere in [-133, 127] (subnormals included), narrow or wide."""
    width = draw(st.sampled_from([0, 3, 8, 30, 100, 200, 260]))
    top = 127 - width
    lo = draw(st.one_of(st.integers(-133, top),          # anywhere, or at either end
                        st.sampled_from([-133, -130, -126, -120, top - 6, top - 1, top])))
    lo = max(-133, min(lo, top))
    return lo, lo + width


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=DIMS, n=DIMS, k=KDIMS, fa=FORMATS, fb=FORMATS, la=LAYOUTS, lb=LAYOUTS,
       wa=windows(), wb=windows(), seed=st.integers(0, 2 ** 32 - 1),
       tier=st.sampled_from(TIERS))
def test_bound_shapes_layouts_formats(m, n, k, fa, fb, la, lb, wa, wb, seed, tier):
    """The SPEC bound over shapes, layouts, formats (mixed included) and BF16 values from
    anywhere in the format's range, subnormals included."""
    if tier == "generic" and m * n * k > 200_000:
        tier = TIERS[-1]
    rng = np.random.default_rng(seed)
    a = codes_for(rng, fa, (m, k), wa)
    b = codes_for(rng, fb, (k, n), wb)
    with _config.use_isa(tier):
        c = dk.gemm(lay(a, la), lay(b, lb), a_format=fa, b_format=fb, order="vdpbf16ps")
    assert c.dtype == np.float32 and c.shape == (m, n)
    check_bound(c, a, b, fa, fb)
    # layouts never change bits
    with _config.use_isa(tier):
        c2 = dk.gemm(a, b, a_format=fa, b_format=fb, order="vdpbf16ps")
    assert np.array_equal(c.view(np.uint32), c2.view(np.uint32))


def test_scaling_split_minimises_the_lost_products():
    """Operands that no split keeps normal together (A spans binades -125..73, B -133..50,
    S = 0): the split must lose only products below the best level any split reaches
    (A's values below 2**-119 here), not A's 2**-118 (a product of 2**-68 in a sum of
    about 2**-60, far above gamma(3) of it)."""
    a = np.array([[2.0 ** 73, 2.0 ** -125, 2.0 ** -118]], np.float32)
    b = np.array([[2.0 ** -133], [1.0], [2.0 ** 50]], np.float32)
    ac = (a.view(np.uint32) >> 16).astype(np.uint16)
    bc = (b.view(np.uint32) >> 16).astype(np.uint16)
    assert not no_flush_expected(decode(ac, BF16), BF16, decode(bc, BF16), BF16, 3)
    for tier in TIERS:
        for order in ("amx", "vdpbf16ps"):
            with _config.use_isa(tier):
                c = dk.gemm(ac, bc, order=order)
            check_bound(c, ac, bc, BF16, BF16)


CF8_FORMATS = st.sampled_from([cfloat8_143(7), cfloat8_143(0), cfloat8_143(63),
                               cfloat8_152(15), cfloat8_152(0), cfloat8_152(63),
                               cfloat8_143(20, "ieee"), cfloat8_152(40, "flush")])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.sampled_from([1, 3, 7]), n=st.sampled_from([1, 5, 17]),
       k=st.sampled_from([1, 2, 9, 64]), fc=CF8_FORMATS, w=windows(),
       bf16_first=st.booleans(), seed=st.integers(0, 2 ** 32 - 1), tier=st.sampled_from(TIERS))
def test_bound_mixed_bf16_cfloat8(m, n, k, fc, w, bf16_first, seed, tier):
    """BF16 x CFloat8 with BF16 values anywhere in the format's range (reviewer item 2:
    the exact result is normal FP32 but the old scaling overflowed or flushed)."""
    rng = np.random.default_rng(seed)
    fa, fb = (BF16, fc) if bf16_first else (fc, BF16)
    a = codes_for(rng, fa, (m, k), w)
    b = codes_for(rng, fb, (k, n), w)
    with _config.use_isa(tier):
        c = dk.gemm(a, b, a_format=fa, b_format=fb, order="vdpbf16ps")
    check_bound(c, a, b, fa, fb)


def test_cfloat8_extreme_bias_nothing_flushed():
    """Bias 63 subnormals: every product is below 2^-126 (a flushing kernel would return 0),
    yet the result is within the bound with no flush term."""
    rng = np.random.default_rng(3)
    fa, fb = cfloat8_143(63), cfloat8_152(63)
    a = (rng.integers(0, 2, (20, 300)) << 7 | rng.integers(0, 8, (20, 300))).astype(np.uint8)
    b = (rng.integers(0, 2, (300, 30)) << 7 | rng.integers(0, 4, (300, 30))).astype(np.uint8)
    A, B = decode(a, fa), decode(b, fb)
    assert (np.abs(A).max() * np.abs(B).max()) < 2.0 ** -126
    exact = A @ B
    for v in VARIANTS:
        c = run(v, a, b, a_format=fa, b_format=fb)
        err = np.abs(c.astype(np.float64) - exact)
        assert np.all(err <= gamma(300) * (np.abs(A) @ np.abs(B))), v
        assert np.all((c != 0) == (exact != 0))


def test_cfloat8_large_bias_products_kept():
    """Products below 2^-126 but a result in range: the scaling keeps them all (no flush term)."""
    rng = np.random.default_rng(4)
    fa, fb = cfloat8_143(50), cfloat8_152(40)
    a, b = cf8_codes(rng, (9, 40)), cf8_codes(rng, (40, 12))
    A, B = decode(a, fa), decode(b, fb)
    for v in VARIANTS:
        c = run(v, a, b, a_format=fa, b_format=fb)
        err = np.abs(c.astype(np.float64) - A @ B)
        assert np.all(err <= gamma(40) * (np.abs(A) @ np.abs(B)))


def test_float_inputs_are_rounded_into_the_formats():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((13, 29))
    y = rng.standard_normal((29, 7)).astype(np.float32)
    for fa, fb in [(BF16, BF16), (cfloat8_143(7), cfloat8_152(15)), (BF16, cfloat8_143(4))]:
        got = dk.gemm(x, y, a_format=fa, b_format=fb)
        want = dk.gemm(dk.quantize(x, fa), dk.quantize(y, fb), a_format=fa, b_format=fb)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    ml = pytest.importorskip("ml_dtypes")
    xb = x.astype(np.float32).astype(ml.bfloat16)
    assert np.array_equal(dk.gemm(xb, y), dk.gemm(xb.view(np.uint16), y))
    assert np.array_equal(dk.gemm(x.astype(np.float16), y), dk.gemm(x.astype(np.float16).astype(np.float32), y))


def test_batched_and_broadcast():
    rng = np.random.default_rng(7)
    a = bf16_codes(rng, (4, 10, 33))
    b = bf16_codes(rng, (4, 33, 70))
    c = dk.gemm(a, b)
    assert c.shape == (4, 10, 70)
    for z in range(4):
        assert np.array_equal(c[z], dk.gemm(a[z], b[z]))
    # a 2-D operand is shared by every batch item
    c2 = dk.gemm(a, b[1])
    for z in range(4):
        assert np.array_equal(c2[z], dk.gemm(a[z], b[1]))
    # transposed batch views
    at = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert np.array_equal(dk.gemm(at, b), c)
    assert dk.gemm(a[:0], b[:0]).shape == (0, 10, 70)


def test_beta_c_and_out():
    rng = np.random.default_rng(8)
    a, b = bf16_codes(rng, (12, 20)), bf16_codes(rng, (20, 9))
    p = dk.gemm(a, b)
    nan_c = np.full((12, 9), np.nan, np.float32)
    assert np.array_equal(dk.gemm(a, b, c=nan_c, beta=0.0), p)
    c = rng.standard_normal((12, 9))
    got = dk.gemm(a, b, c=c, beta=0.5)
    assert np.array_equal(got, p + np.float32(0.5) * c.astype(np.float32))
    # out: filled with NaN first, written, returned
    out = np.full((12, 9), np.nan, np.float32)
    r = dk.gemm(a, b, out=out)
    assert r is out and np.array_equal(out, p)
    # out non-contiguous
    big = np.full((12, 20), np.nan, np.float32)
    r = dk.gemm(a, b, out=big[:, ::2][:, :9])
    assert np.array_equal(big[:, ::2][:, :9], p)
    # out aliasing c (in-place C = A B + beta C)
    cc = c.astype(np.float32)
    want = p + np.float32(2.0) * cc
    r = dk.gemm(a, b, c=cc, beta=2.0, out=cc)
    assert r is cc and np.array_equal(cc, want)
    # c broadcast from a row; batched c
    row = rng.standard_normal(9).astype(np.float32)
    assert np.array_equal(dk.gemm(a, b, c=row, beta=-1.5), p + np.float32(-1.5) * row)
    a3, b3 = bf16_codes(rng, (3, 12, 20)), bf16_codes(rng, (3, 20, 9))
    c3 = rng.standard_normal((3, 12, 9)).astype(np.float32)
    assert np.array_equal(dk.gemm(a3, b3, c=c3, beta=0.25), dk.gemm(a3, b3) + np.float32(0.25) * c3)
    # return_plan, on the chip (default) and on a training tile
    r, plan = dk.gemm(a, b, return_plan=True)
    assert np.array_equal(r, p) and plan.flops == 2 * 12 * 9 * 20
    assert plan == dk.plan_gemm(12, 9, 20, a_format=BF16, b_format=BF16)
    _, tplan = dk.gemm(a, b, return_plan=True, machine=dk.TrainingTile())
    assert isinstance(tplan.machine, dk.TrainingTile)
    with pytest.raises(TypeError, match="machine"):
        dk.gemm(a, b, machine="d1")


@pytest.mark.parametrize("batched", [False, True])
def test_addend_shapes_follow_numpy_broadcasting(batched):
    """c is accepted exactly when NumPy broadcasts it to the result, and then gives
    P + float32(beta) * c elementwise (computed here with NumPy's own broadcasting)."""
    rng = np.random.default_rng(11)
    a = bf16_codes(rng, (2, 5, 6) if batched else (5, 6))
    b = bf16_codes(rng, (6, 4))
    p = dk.gemm(a, b)
    for cs in [(), (1,), (4,), (1, 4), (5, 1), (5, 4), (1, 1, 4), (2, 1, 1), (2, 5, 4),
               (3,), (5,), (4, 5), (3, 5, 4), (1, 2, 5, 4), (2, 4)]:
        c = rng.standard_normal(cs).astype(np.float32)
        try:
            want_shape = np.broadcast_shapes(cs, p.shape)
        except ValueError:
            want_shape = None
        if want_shape != p.shape:   # refused before the product (not by NumPy's add after it)
            with pytest.raises(ValueError, match="c: shape .* does not broadcast to the result"):
                dk.gemm(a, b, c=c, beta=0.5)
            continue
        got = dk.gemm(a, b, c=c, beta=0.5)
        assert np.array_equal(got.view(np.uint32),
                              (p + np.float32(0.5) * c).astype(np.float32).view(np.uint32)), cs


def test_nonfinite_inputs_canonical_nan_same_everywhere():
    a = np.array([[np.inf, 1.0], [np.nan, 2.0], [np.inf, -np.inf]], np.float32)
    b = np.array([[0.0, 1.0], [1.0, 1.0]], np.float32)
    outs = [run(v, a, b) for v in VARIANTS]
    for o in outs:
        assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32))
    assert outs[0].view(np.uint32)[0, 0] == 0x7FC00000  # inf * 0
    assert outs[0][0, 1] == np.inf


def test_k_zero_and_empty():
    a = np.zeros((3, 0), np.uint16)
    b = np.zeros((0, 4), np.uint16)
    c = dk.gemm(a, b)
    assert c.shape == (3, 4) and np.all(c == 0)
    assert dk.gemm(np.zeros((0, 5), np.uint16), np.zeros((5, 4), np.uint16)).shape == (0, 4)
    cc = np.ones((3, 4))
    assert np.all(dk.gemm(a, b, c=cc, beta=3.0) == 3.0)


def test_bad_inputs():
    a, b = np.zeros((3, 4), np.uint16), np.zeros((4, 5), np.uint16)
    with pytest.raises(ValueError, match="inner dimensions"):
        dk.gemm(a, np.zeros((5, 5), np.uint16))
    with pytest.raises(TypeError, match="uint8"):
        dk.gemm(a, b, a_format=cfloat8_143(7))
    with pytest.raises(TypeError, match="uint16"):
        dk.gemm(a.astype(np.uint8), b)
    with pytest.raises(TypeError, match="codes"):
        dk.gemm(a.astype(np.int16), b)
    with pytest.raises(ValueError, match="BF16 or CFloat8"):
        dk.gemm(a, b, a_format=dk.shp(15))
    with pytest.raises(TypeError, match="a_format"):
        dk.gemm(a, b, a_format="bf16")
    with pytest.raises(ValueError, match="2-D"):
        dk.gemm(a[0], b)
    with pytest.raises(ValueError, match="batch sizes"):
        dk.gemm(np.zeros((2, 3, 4), np.uint16), np.zeros((3, 4, 5), np.uint16))
    with pytest.raises(ValueError, match="needs an addend"):
        dk.gemm(a, b, beta=1.0)
    with pytest.raises(ValueError, match="broadcast"):
        dk.gemm(a, b, c=np.zeros((2, 2)), beta=1.0)
    with pytest.raises(TypeError, match="float32"):
        dk.gemm(a, b, out=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="shape"):
        dk.gemm(a, b, out=np.zeros((5, 3), np.float32))
    with pytest.raises(TypeError, match="expected a float array"):
        dk.gemm(np.zeros((3, 4), complex), b)


def test_codes_with_odd_byte_strides_are_read_correctly():
    """uint16 codes with strides that are not multiples of 2 (a structured-array field):
    the result must equal that of a contiguous copy, on every tier (reviewer item 1)."""
    rng = np.random.default_rng(11)
    s = np.zeros(64, dtype=[("a", "u1"), ("b", "<u2")])
    s["b"] = bf16_codes(rng, 64)
    for A in (s["b"].reshape(8, 8), s["b"].reshape(8, 8)[::-1, ::-1], s["b"].reshape(8, 8).T,
              s["b"].reshape(2, 4, 8)):
        assert any(st % 2 for st in A.strides)
        Bc = bf16_codes(rng, (8, 5))
        want = decode(np.ascontiguousarray(A), BF16) @ decode(Bc, BF16)
        for v in VARIANTS:
            got = run(v, A, Bc)
            ref = run(v, np.ascontiguousarray(A), Bc)
            assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
            assert np.allclose(got, want, rtol=1e-5, atol=0)
        # and as the B operand
        At = bf16_codes(rng, (5, A.shape[-2]))
        got = dk.gemm(At, A[..., :, :5])
        ref = dk.gemm(At, np.ascontiguousarray(A[..., :, :5]))
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_glue_refuses_strides_not_multiple_of_itemsize():
    from dojo_kernels import _gemm
    s = np.zeros(64, dtype=[("a", "u1"), ("b", "<u2")])
    A = s["b"].reshape(1, 8, 8)
    t = np.zeros(256, np.uint16)
    with pytest.raises(ValueError, match="item size"):
        _gemm.gemm(A, A, t, t, 1.0, np.zeros((1, 8, 8), np.float32), 0, 0, 1, 0)


def test_c_without_beta_is_added():
    """Reviewer item 6: gemm(a, b, c=c) used to ignore c (beta defaulted to 0)."""
    rng = np.random.default_rng(21)
    a, b = bf16_codes(rng, (5, 7)), bf16_codes(rng, (7, 3))
    c = rng.standard_normal((5, 3)).astype(np.float32)
    p = dk.gemm(a, b)
    assert np.array_equal(dk.gemm(a, b, c=c), p + c)
    nan_c = np.full((5, 3), np.nan, np.float32)
    assert np.array_equal(dk.gemm(a, b, c=nan_c, beta=0), p)   # BLAS: beta == 0 never reads c


def test_return_plan_of_an_empty_product():
    for sa, sb in (((0, 4), (4, 3)), ((2, 4), (4, 0)), ((2, 0), (0, 3)), ((0, 2, 4), (4, 3))):
        r, plan = dk.gemm(np.zeros(sa, np.uint16), np.zeros(sb, np.uint16), return_plan=True)
        assert r.shape == sa[:-1] + sb[-1:] and np.all(r == 0)
        assert plan.bound == "empty" and plan.seconds == 0 and plan.flops == 0
        assert plan.offchip_bytes == 0 and plan.steps == 0
        assert (plan.m, plan.k, plan.n) == (sa[-2], sa[-1], sb[-1])
    _, plan = dk.gemm(np.zeros((0, 4), np.uint16), np.zeros((4, 3), np.uint16),
                      return_plan=True, machine=dk.TrainingTile())
    assert isinstance(plan.machine, dk.TrainingTile)
    empty = dk.GemmPlan.empty(0, 3, 4, machine=dk.TrainingTile())
    assert empty == plan and empty.b_format == dk.BF16
    with pytest.raises(TypeError, match="machine"):
        dk.GemmPlan.empty(0, 3, 4, machine="tile")


# ---- operands in another memory order (a backward pass's W.T) ---------------------------

@pytest.mark.parametrize("fmts", [(dk.BF16, dk.BF16), (dk.cfloat8_143(9), dk.cfloat8_152(17))])
def test_transposed_float_operands_give_the_bits_of_contiguous_ones(fmts):
    """float32 / float64 operands that are transposes (2-D), Fortran-ordered, or batches with
    their last two axes swapped are rounded in their memory order; the result has the bits
    of the same values passed C-contiguous."""
    fa, fb = fmts
    rng = np.random.default_rng(21)
    a = rng.standard_normal((70, 45)).astype(np.float32)      # used as a.T: 45 x 70
    b = rng.standard_normal((70, 33))
    want = dk.gemm(np.ascontiguousarray(a.T), b, a_format=fa, b_format=fb)
    for aa in (a.T, np.asfortranarray(a.T)):
        got = dk.gemm(aa, b, a_format=fa, b_format=fb)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    bt = rng.standard_normal((33, 70)).astype(np.float32)     # B given as bt.T: 70 x 33
    want = dk.gemm(a.T, np.ascontiguousarray(bt.T), a_format=fa, b_format=fb)
    got = dk.gemm(a.T, bt.T, a_format=fa, b_format=fb)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    a3 = rng.standard_normal((3, 70, 45)).astype(np.float32).transpose(0, 2, 1)  # 3 x 45 x 70
    b3 = rng.standard_normal((3, 70, 33)).astype(np.float32)
    want = dk.gemm(np.ascontiguousarray(a3), b3, a_format=fa, b_format=fb)
    got = dk.gemm(a3, b3, a_format=fa, b_format=fb)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    strided = a.T[:, ::2]                                     # not dense: the general path
    want = dk.gemm(np.ascontiguousarray(strided), b[::2], a_format=fa, b_format=fb)
    got = dk.gemm(strided, b[::2], a_format=fa, b_format=fb)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_choose_bias_reads_a_transposed_array_in_memory_order():
    x = np.random.default_rng(3).standard_normal((300, 200)).astype(np.float32) * 1e-3
    x[17, 5] = -7.5e-2                                         # the largest magnitude
    for fam in ("cfloat8_143", "cfloat8_152"):
        want = dk.choose_bias(np.ascontiguousarray(x.T), fam)
        assert dk.choose_bias(x.T, fam) == want
        assert dk.choose_bias(np.asfortranarray(x), fam) == want
