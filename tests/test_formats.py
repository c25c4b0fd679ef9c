"""Format objects (SPEC section 1) and exhaustive decode (dequantize) of every code."""
from __future__ import annotations

import dataclasses
import math

import ml_dtypes
import numpy as np
import pytest

import dojo_kernels as dk
import spec_ref as R
from dk_helpers import bits

# NumPy warns when the tests cast NaN/Inf/out-of-range values on purpose (references, inputs)
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]

CTORS = {"cfloat8_143": dk.cfloat8_143, "cfloat8_152": dk.cfloat8_152, "shp": dk.shp}
MODES = ("tesla", "ieee", "flush")


# ---------------------------------------------------------------------------------------
# Format objects
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(CTORS))
@pytest.mark.parametrize("sub", MODES)
def test_format_properties_every_bias(family, sub):
    for bias in range(64):
        f = CTORS[family](bias, subnormals=sub)
        rf = R.RefFormat(family, bias, sub)
        assert f.name == family and f.bias == bias and f.subnormals == sub
        assert (f.exponent_bits, f.mantissa_bits) == (rf.ebits, rf.m)
        assert f.signed is True and f.has_inf_nan is False
        assert f.nbits == rf.nbits
        assert np.dtype(f.storage_dtype) == rf.storage_dtype
        assert f.max == float(rf.max)
        assert f.min_normal == float(rf.min_normal)
        assert f.min_subnormal == float(rf.min_subnormal)


def test_constants():
    assert (dk.FP32.name, dk.FP32.exponent_bits, dk.FP32.mantissa_bits, dk.FP32.bias) == \
        ("fp32", 8, 23, 127)
    assert np.dtype(dk.FP32.storage_dtype) == np.float32 and dk.FP32.nbits == 32
    assert dk.FP32.max == float(np.finfo(np.float32).max)
    assert dk.FP32.min_normal == float(np.finfo(np.float32).tiny)
    assert dk.FP32.min_subnormal == 2.0 ** -149
    assert (dk.BF16.exponent_bits, dk.BF16.mantissa_bits, dk.BF16.bias, dk.BF16.nbits) == \
        (8, 7, 127, 16)
    assert np.dtype(dk.BF16.storage_dtype) == np.uint16
    assert dk.BF16.max == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    assert dk.BF16.has_inf_nan and dk.FP32.has_inf_nan and dk.UHP.has_inf_nan
    assert dk.BF16.subnormals == "ieee" and dk.FP32.subnormals == "ieee"
    u = dk.UHP
    assert (u.signed, u.exponent_bits, u.mantissa_bits, u.bias, u.subnormals, u.nbits) == \
        (False, 6, 10, 31, "flush", 16)
    assert u.max == float(R.UHP_R.max) == 2.0 ** 31 * (2 - 2.0 ** -10)
    assert u.min_normal == 2.0 ** -30


def test_spec_figures_through_the_api():
    assert dk.cfloat8_143(7).max == 480.0
    assert dk.cfloat8_152(15).max == 114688.0
    assert dk.cfloat8_143(0).max == 61440.0
    assert dk.cfloat8_143(7).min_subnormal == 2.0 ** -10  # tesla: 2^-7 * 1/8
    assert dk.cfloat8_143(7, subnormals="ieee").min_subnormal == 2.0 ** -9


def test_format_frozen_hashable_repr():
    f = dk.cfloat8_143(7)
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError)):
        f.bias = 3
    assert f == dk.cfloat8_143(7) and hash(f) == hash(dk.cfloat8_143(7))
    assert f != dk.cfloat8_143(8) and f != dk.cfloat8_143(7, subnormals="ieee")
    assert f != dk.cfloat8_152(7)
    assert len({f, dk.cfloat8_143(7), dk.shp(7), dk.BF16, dk.UHP, dk.FP32}) == 5
    r = repr(dk.shp(21, subnormals="ieee"))
    assert "shp" in r.lower() and "21" in r and "ieee" in r
    assert "143" in repr(f) and "7" in repr(f)
    for c in (dk.FP32, dk.BF16, dk.UHP):
        assert c.name in repr(c).lower()


@pytest.mark.parametrize("ctor", list(CTORS.values()))
@pytest.mark.parametrize("bias", [-1, 64, 1000, 1.5, 7.0, "7", None])
def test_bad_bias(ctor, bias):
    with pytest.raises(ValueError, match="bias"):
        ctor(bias)


def test_numpy_int_bias_ok_and_bad_subnormals():
    assert dk.cfloat8_143(np.int64(9)).bias == 9
    for ctor in CTORS.values():
        with pytest.raises(ValueError, match="subnormals"):
            ctor(7, subnormals="denormal")


# ---------------------------------------------------------------------------------------
# Exhaustive decode
# ---------------------------------------------------------------------------------------
def _assert_same_values(got, want_f64, dtype):
    """got (float32/64 array) equals want (float64, exact) bit for bit, NaN as NaN."""
    assert got.dtype == dtype
    want = want_f64.astype(dtype)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    fin = ~np.isnan(want)
    # exact values in dtype: the cast of the float64 reference must itself be exact
    assert np.array_equal(want[fin].astype(np.float64), want_f64[fin])
    bad = np.nonzero(bits(got)[fin] != bits(want)[fin])[0]
    assert bad.size == 0, f"first mismatches at {np.nonzero(fin)[0][bad[:5]]}: " \
        f"got {got[fin][bad[:5]]}, want {want[fin][bad[:5]]}"


@pytest.mark.parametrize("family", sorted(CTORS))
@pytest.mark.parametrize("sub", MODES)
def test_decode_every_code_every_bias(isa, family, sub):
    for bias in range(64):
        fmt = CTORS[family](bias, subnormals=sub)
        rf = R.RefFormat(family, bias, sub)
        codes = np.arange(1 << rf.nbits, dtype=rf.storage_dtype)
        want = R.decode_table(rf)
        for dt in (np.float32, np.float64):
            got = dk.dequantize(codes, fmt, dtype=dt)
            _assert_same_values(got, want, dt)
        assert np.array_equal(bits(dk.dequantize(codes, fmt)), bits(want.astype(np.float32)))


def test_decode_bf16_uhp_every_code(isa):
    for fmt, rf in ((dk.BF16, R.BF16_R), (dk.UHP, R.UHP_R)):
        codes = np.arange(65536, dtype=np.uint16)
        want = R.decode_table(rf)
        for dt in (np.float32, np.float64):
            _assert_same_values(dk.dequantize(codes, fmt, dtype=dt), want, dt)
    # BF16 codes given as an ml_dtypes.bfloat16 array
    b = np.arange(65536, dtype=np.uint16).view(ml_dtypes.bfloat16)
    got = dk.dequantize(b, dk.BF16)
    _assert_same_values(got, R.decode_table(R.BF16_R), np.float32)
    # UHP: 0xFE00 and every E=63, M!=0 code is NaN; 0xFC00 is +Inf; subnormals are +0
    u = dk.dequantize(np.array([0xFC00, 0xFE00, 0xFC01, 0xFFFF, 0x0001, 0x03FF], np.uint16), dk.UHP)
    assert u[0] == np.inf and np.isnan(u[1:4]).all()
    assert bits(u[4:]).tolist() == [0, 0]


def test_decode_fp32_is_identity(isa):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2 ** 32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    got = dk.dequantize(x, dk.FP32)
    assert np.array_equal(bits(got)[~np.isnan(x)], bits(x)[~np.isnan(x)])
    assert np.isnan(got[np.isnan(x)]).all()
    got64 = dk.dequantize(x, dk.FP32, dtype=np.float64)
    fin = ~np.isnan(x)
    assert np.array_equal(got64[fin], x[fin].astype(np.float64))


def test_decode_shapes_strides_out(isa):
    fmt = dk.cfloat8_152(11)
    rf = R.ref_of(fmt)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (40, 60), dtype=np.uint64).astype(np.uint8)
    for codes in (base, base.T, base[::3, 1::7], base[:, ::-1], base[5], base.reshape(4, 10, 60),
                  np.array(0x45, np.uint8), base[:0]):
        got = dk.dequantize(codes, fmt)
        assert got.shape == np.shape(codes)
        _assert_same_values(np.asarray(got, np.float32).reshape(-1),
                            R.dequantize_ref(np.asarray(codes), rf).reshape(-1), np.float32)
    out = np.empty((40, 60), np.float64)
    res = dk.dequantize(base, fmt, dtype=np.float64, out=out)
    assert res is out
    _assert_same_values(out.reshape(-1), R.dequantize_ref(base, rf).reshape(-1), np.float64)


def test_min_subnormal_decodes_exactly_at_bias_63(isa):
    # smallest SHP tesla subnormal at bias 63 is 2^-73: below FP32's normal range, still exact
    x = dk.dequantize(np.array([1, 0x8001], np.uint16), dk.shp(63))
    assert x[0] == np.float32(2.0 ** -73) and x[1] == -np.float32(2.0 ** -73)
    assert math.ldexp(1.0, -73) == float(x[0])
