"""Self-tests of the reference in spec_ref.py: SPEC's stated figures, ml_dtypes, a published
SplitMix64 vector, and the scalar (Fraction) path against the vectorized one.

These do not touch dojo_kernels' numerics: they make sure the oracle itself is right.
"""
from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import spec_ref as R

# NumPy warns when the tests cast NaN/Inf/out-of-range values on purpose (references, inputs)
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]

F = Fraction


def test_spec_stated_figures():
    assert R.max_value("cfloat8_143", 7) == 480
    assert R.max_value("cfloat8_152", 15) == 114688
    assert R.max_value("cfloat8_143", 0) == 61440
    # tesla subnormals: 2^-b * M/2^m ; the largest is 0.875 * 2^-b for 1_4_3
    rf = R.RefFormat("cfloat8_143", 7, "tesla")
    assert R.decode_scalar(0x07, rf) == (0, F(7, 8) * F(1, 2 ** 7))
    assert R.decode_scalar(0x01, rf) == (0, F(1, 2 ** 10))
    assert rf.min_subnormal == F(1, 2 ** 10)
    assert rf.min_normal == F(1, 2 ** 6)
    rfi = R.RefFormat("cfloat8_143", 7, "ieee")
    assert R.decode_scalar(0x01, rfi) == (0, F(1, 2 ** 9))  # = float8_e4m3fn's
    assert R.decode_scalar(0x80, rf) == (1, F(0))  # -0
    # UHP: E == 63, M == 0 -> +Inf; else NaN; subnormal encodings -> 0
    assert R.decode_scalar(0xFC00, R.UHP_R) == (0, "inf")
    assert R.decode_scalar(0xFE00, R.UHP_R) is R.NAN
    assert R.decode_scalar(0x0001, R.UHP_R) == (0, F(0))
    assert R.UHP_R.max == F(2) ** 31 * (2 - F(1, 1024))
    # everything decodes exactly into FP32: the smallest SHP tesla subnormal at bias 63
    assert R.RefFormat("shp", 63, "tesla").min_subnormal == F(1, 2 ** 73)


def test_splitmix_published_vector():
    # SplitMix64 seeded with 0: first outputs 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4,
    # 0x06C45D188009454F (Vigna's reference splitmix64.c); r is the top 32 bits.
    assert [R.splitmix_r(0, i) for i in range(3)] == [0xE220A839, 0x6E789E6A, 0x06C45D18]
    v = R.splitmix_r_array(12345678901234567, 1000)
    assert [int(t) for t in v[:50]] == [R.splitmix_r(12345678901234567, i) for i in range(50)]
    assert int(v[999]) == R.splitmix_r(12345678901234567, 999)
    big = (1 << 64) - 5
    assert int(R.splitmix_r_array(big, 3)[2]) == R.splitmix_r(big, 2)


@pytest.mark.parametrize("family", ["cfloat8_143", "cfloat8_152", "shp"])
@pytest.mark.parametrize("sub", ["tesla", "ieee", "flush"])
def test_decode_table_matches_scalar(family, sub):
    for bias in (0, 7, 63):
        rf = R.RefFormat(family, bias, sub)
        tab = R.decode_table(rf)
        codes = range(256) if rf.nbits == 8 else range(0, 65536, 37)
        for c in codes:
            s, a = R.decode_scalar(c, rf)
            v = float(a) * (-1 if s else 1)
            assert tab[c] == v and math.copysign(1, tab[c]) == math.copysign(1, v), (rf, c)


def test_bf16_table_matches_ml_dtypes():
    tab = R.decode_table(R.BF16_R)
    ml = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
    same = (tab == ml) | (np.isnan(tab) & np.isnan(ml))
    assert same.all()


def test_ieee_cfloat8_decode_matches_ml_dtypes():
    e4 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    t4 = R.decode_table(R.RefFormat("cfloat8_143", 7, "ieee"))
    fin = np.isfinite(e4)  # e4m3fn: 0x7F / 0xFF are NaN; ours are +-480
    assert (t4[fin] == e4[fin]).all() and fin.sum() == 254
    assert t4[0x7F] == 480.0
    e5 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e5m2).astype(np.float64)
    t5 = R.decode_table(R.RefFormat("cfloat8_152", 15, "ieee"))
    fin = np.isfinite(e5)  # e5m2 has Inf/NaN at E=31; ours are finite there
    assert (t5[fin] == e5[fin]).all()


def _random_f32(rng, n):
    bits = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    return bits.view(np.float32)


def test_vec_bf16_matches_ml_dtypes():
    rng = np.random.default_rng(1)
    x = _random_f32(rng, 400_000)
    got, _ = R.quantize_vec(x, R.BF16_R)
    want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(got, want)


def test_vec_cfloat8_ieee_matches_ml_dtypes_in_range():
    rng = np.random.default_rng(2)
    x = _random_f32(rng, 400_000)
    x = x[np.isfinite(x) & (np.abs(x) <= 448)]  # e4m3fn: above 464 -> NaN, ours saturate
    got, _ = R.quantize_vec(x, R.RefFormat("cfloat8_143", 7, "ieee"))
    assert np.array_equal(got, x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8))
    x = _random_f32(rng, 400_000)
    x = x[np.isfinite(x) & (np.abs(x) <= 57344)]  # e5m2 overflows to Inf above
    got, _ = R.quantize_vec(x, R.RefFormat("cfloat8_152", 15, "ieee"))
    assert np.array_equal(got, x.astype(ml_dtypes.float8_e5m2).view(np.uint8))


def _mixed_sample(rf, rng, n):
    """Values clustered around the format's grid: near max, gap, subnormals, specials."""
    g = R.decode_table(R.RefFormat(rf.family, rf.bias, rf.round_sub))[: rf.max_code + 1]
    base = rng.choice(g, n)
    nxt = np.concatenate([g[1:], [2 * g[-1]]])
    idx = rng.integers(0, rf.max_code + 1, n)
    # points between grid neighbours: lo + t*(hi-lo), t dyadic with some exact halves
    t = rng.choice([0.0, 0.25, 0.5, 0.75, 0.5 + 2.0 ** -30, 0.5 - 2.0 ** -30], n)
    t = np.where(rng.random(n) < 0.5, rng.random(n), t)
    between = g[idx] + t * (nxt[idx] - g[idx])
    v = np.where(rng.random(n) < 0.5, base, between).astype(np.float32)
    v = np.concatenate([v, [np.inf, np.nan, 0.0, 1e30, float(g[-1]) * 1.9, float(g[-1]) * 2.0]])
    v = v * np.where(rng.random(v.size) < 0.5, -1, 1).astype(np.float32)
    return v.astype(np.float32)


@pytest.mark.parametrize("rf", [
    R.RefFormat("cfloat8_143", 7, "tesla"), R.RefFormat("cfloat8_143", 0, "ieee"),
    R.RefFormat("cfloat8_152", 33, "tesla"), R.RefFormat("shp", 15, "tesla"),
    R.RefFormat("cfloat8_143", 20, "flush"), R.UHP_R, R.BF16_R,
], ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "toward_zero", "stochastic"])
def test_vec_matches_scalar(rf, rounding):
    rng = np.random.default_rng(hash((rf.family, rf.bias, rounding)) % 2 ** 32)
    x = _mixed_sample(rf, rng, 2500)
    x = np.concatenate([x, _random_f32(rng, 500)])
    v_codes, v_flags = R.quantize_vec(x, rf, rounding, seed=77)
    s_codes, s_flags = R.quantize_loop(x, rf, rounding, seed=77)
    assert np.array_equal(v_codes, s_codes)
    assert v_flags == s_flags


def test_scalar_fp32_target_matches_numpy_cast():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(3000) * np.exp2(rng.integers(-160, 140, 3000))
    x = np.concatenate([x, [1e300, -1e300, 2.0 ** -149 * 0.5, 2.0 ** -149 * 0.75, np.nan, -0.0]])
    codes, _ = R.quantize_loop(x, R.FP32_R)
    with np.errstate(over="ignore"):
        want = x.astype(np.float32)
    assert np.array_equal(codes.view(np.uint32)[:-2], want.view(np.uint32)[:-2])
    assert np.isnan(codes[-2]) and codes.view(np.uint32)[-1] == 0x80000000


def test_float64_no_double_rounding():
    rf = R.RefFormat("cfloat8_143", 7, "tesla")
    x = np.array([1.0625 + 2.0 ** -40])
    assert np.float32(x[0]) == 1.0625  # through float32 it is a tie and goes down to 1.0
    codes, _ = R.quantize_vec(x, rf)
    assert codes[0] == (7 << 3) | 1  # 1.125
    codes, _ = R.quantize_loop(x, rf)
    assert codes[0] == (7 << 3) | 1


@pytest.mark.parametrize("rf", [
    R.RefFormat("cfloat8_143", 7, "tesla"), R.RefFormat("cfloat8_152", 3, "ieee"),
    R.RefFormat("shp", 40, "tesla"), R.UHP_R, R.BF16_R, R.RefFormat("cfloat8_143", 63, "tesla"),
    R.RefFormat("shp", 63, "tesla"), R.RefFormat("cfloat8_152", 0, "tesla"),
], ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "fma"])
@pytest.mark.parametrize("rounding", ["nearest", "toward_zero", "stochastic"])
def test_arith_vec_matches_scalar(rf, op, rounding):
    rng = np.random.default_rng(abs(hash((str(rf), op, rounding))) % 2 ** 32)
    n = 600
    hi = 1 << rf.nbits
    ops = [rng.integers(0, hi, n).astype(rf.storage_dtype) for _ in range(3 if op == "fma" else 2)]
    if rf.nbits == 16:  # keep exponents close so that sums interact
        ops[1] = (ops[0].astype(np.int64) ^ rng.integers(0, 1 << 12, n)).astype(rf.storage_dtype)
    v = R.arith_vec(op, ops, rf, rounding, seed=5)
    s = R.arith_ref(op, ops, rf, rounding, seed=5)
    assert np.array_equal(v[0], s[0])
    assert v[1] == s[1]


def test_arith_scalar_zero_signs():
    rf = R.RefFormat("cfloat8_143", 7, "tesla")
    one, mone, pz, nz = 0x38, 0xB8, 0x00, 0x80
    assert R.arith_scalar("add", [one, mone], rf)[0] == pz  # x + (-x) = +0
    assert R.arith_scalar("add", [nz, nz], rf)[0] == nz  # (-0) + (-0) = -0
    assert R.arith_scalar("add", [pz, nz], rf)[0] == pz
    assert R.arith_scalar("mul", [nz, one], rf)[0] == nz
    assert R.arith_scalar("sub", [nz, pz], rf)[0] == nz  # -0 - (+0) = -0
    assert R.arith_scalar("fma", [nz, one, nz], rf)[0] == nz
    assert R.arith_scalar("fma", [nz, one, pz], rf)[0] == pz
    # tiny negative product rounds to -0 and keeps its sign; underflow flagged
    c, f = R.arith_scalar("mul", [0x81, 0x01], rf)
    assert c == nz and f["underflow"] == 1 and f["denormal"] == 1


@pytest.mark.parametrize("rounding", ["nearest", "toward_zero", "stochastic"])
@pytest.mark.parametrize("rf", [R.BF16_R, R.RefFormat("cfloat8_143", 63, "tesla"),
                                R.RefFormat("shp", 5, "tesla")], ids=str)
def test_arith_vec_round_to_odd_path(rf, rounding):
    # fully random operands: most sums are inexact in float64 (exponents far apart), so the
    # round-to-odd path of arith_vec is what is checked against the Fraction path here
    rng = np.random.default_rng(99)
    n = 3000
    ops = [rng.integers(0, 1 << rf.nbits, n).astype(rf.storage_dtype) for _ in range(3)]
    tab = R.decode_table(rf)
    p, c = tab[ops[0].astype(np.int64)] * tab[ops[1].astype(np.int64)], tab[ops[2].astype(np.int64)]
    with np.errstate(all="ignore"):
        s = p + c
        bb = s - p
        err = (p - (s - bb)) + (c - bb)
    assert np.sum(np.isfinite(err) & (err != 0)) > n // 100
    for op, k in (("fma", 3), ("add", 2)):
        v = R.arith_vec(op, ops[:k] if op == "add" else ops, rf, rounding, seed=3)
        s_ = R.arith_ref(op, ops[:k] if op == "add" else ops, rf, rounding, seed=3)
        assert np.array_equal(v[0], s_[0]) and v[1] == s_[1]
