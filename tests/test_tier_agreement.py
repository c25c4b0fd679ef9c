"""Every SIMD tier agrees bit for bit with the scalar semantics, at any thread count.

The scalar C path (dk_format.h) runs whenever flags are requested; without flags each tier
runs its own SIMD kernel. The independent, SPEC-derived reference lives in the other test
files; this file checks that the fast paths never drift from the scalar one.
"""
import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import _config

TIERS = _config.supported_isas()


def _patterns(n=1 << 18, seed=7):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    # Half the sample with a uniform exponent field: reaches every binade equally often.
    exps = rng.integers(0, 256, n, dtype=np.uint32)
    stratified = (raw & np.uint32(0x807FFFFF)) | (exps << np.uint32(23))
    specials = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001,
                         0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0x3F800000], dtype=np.uint32)
    return np.concatenate([raw, stratified, specials]).view(np.float32)


X = _patterns()
FORMATS = [dk.BF16, dk.UHP] + [
    make(bias, sub)
    for make in (dk.cfloat8_143, dk.cfloat8_152, dk.shp)
    for bias in (0, 7, 15, 40, 63)
    for sub in ("tesla", "ieee", "flush")
]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("rounding", ["nearest", "toward_zero", "stochastic"])
@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_quantize_tier_matches_scalar(fmt, rounding, tier):
    scalar, _ = dk.quantize(X, fmt, rounding=rounding, seed=99, return_flags=True)
    with _config.use_isa(tier):
        simd = dk.quantize(X, fmt, rounding=rounding, seed=99)
    bad = np.nonzero(simd != scalar)[0]
    assert bad.size == 0, (f"{tier}: x={X[bad[0]]!r} (bits {X.view(np.uint32)[bad[0]]:#010x}) "
                           f"gives {simd[bad[0]]:#x}, scalar semantics {scalar[bad[0]]:#x}")


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_dequantize_every_code_same_on_every_tier(fmt):
    codes = np.arange(1 << fmt.nbits, dtype=np.uint32).astype(fmt.storage_dtype)
    results = {}
    for tier in TIERS:
        with _config.use_isa(tier):
            results[tier] = dk.dequantize(codes, fmt).view(np.uint32)
    base = results[TIERS[0]]
    for tier, got in results.items():
        np.testing.assert_array_equal(got, base, err_msg=f"{tier} differs from {TIERS[0]}")


@pytest.mark.parametrize("tier", TIERS)
def test_bf16_input_matches_float32_input(tier):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 1 << 16, 100_001, dtype=np.uint32).astype(np.uint16)
    as_f32 = (codes.astype(np.uint32) << 16).view(np.float32)
    fmt = dk.cfloat8_152(20)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with _config.use_isa(tier):
        a = dk.quantize(codes.view(ml_dtypes.bfloat16), fmt, rounding="stochastic", seed=5)
        b = dk.quantize(as_f32, fmt, rounding="stochastic", seed=5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_results_do_not_depend_on_thread_count(rounding):
    x = np.random.default_rng(11).standard_normal(1_000_003).astype(np.float32) * 1e3
    fmt = dk.cfloat8_143(5)
    saved = dk.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 3):
            dk.set_num_threads(n)
            runs.append((dk.quantize(x, fmt, rounding=rounding, seed=1),
                         dk.fake_quantize(x, dk.shp(3), rounding=rounding, seed=1),
                         dk.quantize(x, fmt, rounding=rounding, seed=1, return_flags=True)[1]))
    finally:
        dk.set_num_threads(saved)
    for codes, fake, flags in runs[1:]:
        np.testing.assert_array_equal(codes, runs[0][0])
        np.testing.assert_array_equal(fake, runs[0][1])
        assert flags == runs[0][2]
