"""The C additions behind the all-reduce (dojo_kernels._reduce), every tier: IEEE float32
adds, BF16 round-to-nearest-even (SPEC section 2: NaN -> sign | 0x7FC0) against ml_dtypes and
a bit-level reference written here."""
import ml_dtypes
import numpy as np
import pytest

from dojo_kernels import _config, _reduce

TIERS = _config.supported_isas()


def ref_rne_bits(u):
    """FP32 bits -> BF16 code, written from SPEC section 2."""
    u = u.astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return np.where(nan, ((u >> 16) & 0x8000) | 0x7FC0, r).astype(np.uint16)


def special_f32(n, seed):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001,
                         0x7F800001, 0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0x7F7F8000,
                         0x3F808000, 0x3F818000, 0x3F80FFFF, 0x00008000, 0x00018000],
                        np.uint32)
    u[: specials.size] = specials
    return u


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 100, 70001])
def test_narrow_matches_spec_and_ml_dtypes(tier, n):
    u = special_f32(max(n, 16), n)[:n]
    out = np.empty(n, np.uint16)
    idx = _config.ISA_NAMES.index(tier)
    _reduce.f32_to_bf16(idx, 2, out, u.view(np.float32))
    np.testing.assert_array_equal(out, ref_rne_bits(u))
    ok = (u & 0x7FFFFFFF) <= 0x7F800000
    with np.errstate(invalid="ignore", over="ignore"):
        ml = u.view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(out[ok], ml[ok])


@pytest.mark.parametrize("tier", TIERS)
def test_widen_every_code(tier):
    codes = np.arange(65536, dtype=np.uint16)
    out = np.empty(65536, np.float32)
    _reduce.bf16_to_f32(_config.ISA_NAMES.index(tier), 2, out, codes)
    np.testing.assert_array_equal(out.view(np.uint32), codes.astype(np.uint32) << 16)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("n", [1, 16, 33, 100003])
def test_accumulate(tier, n):
    rng = np.random.default_rng(n)
    a = (rng.standard_normal(n) * np.exp2(rng.integers(-140, 120, n))).astype(np.float32)
    b = (rng.standard_normal(n) * np.exp2(rng.integers(-140, 120, n))).astype(np.float32)
    idx = _config.ISA_NAMES.index(tier)
    d = a.copy()
    with np.errstate(over="ignore"):
        _reduce.accumulate(idx, 2, d, b, False)
        want = a + b
    np.testing.assert_array_equal(d.view(np.uint32), want.view(np.uint32))
    d = a.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        _reduce.accumulate(idx, 2, d, b, True)
        s = (a + b).view(np.uint32)
    want = ref_rne_bits(s).astype(np.uint32) << 16
    np.testing.assert_array_equal(d.view(np.uint32), want)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        _reduce.accumulate(0, 1, np.zeros(3, np.float32), np.zeros(4, np.float32), False)


def _prog(**over):
    p = dict(seg_lo=np.array([0, 4], np.int64), add_off=np.array([0, 1], np.int64),
             add_out=np.array([0], np.int32), add_a=np.array([-1], np.int32),
             add_b=np.array([-2], np.int32), out_op=np.array([0, 0], np.int32), nslots=1)
    p.update(over)
    return p


def _run(p, inp, out):
    _reduce.run_f32(0, 1, p["seg_lo"], p["add_off"], p["add_out"], p["add_a"], p["add_b"],
                    p["out_op"], p["nslots"], inp, out)


def test_program_runs_and_bad_programs_are_rejected():
    inp = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = np.zeros((2, 4), np.float32)
    _run(_prog(), inp, out)
    np.testing.assert_array_equal(out, np.broadcast_to(inp[0] + inp[1], (2, 4)))
    bad = [dict(add_a=np.array([-3], np.int32)),            # input row 2 of 2
           dict(add_b=np.array([1], np.int32)),             # slot 1 of 1
           dict(add_out=np.array([-1], np.int32)),
           dict(out_op=np.array([5, 0], np.int32)),
           dict(seg_lo=np.array([0, 5], np.int64)),         # past the end of the rows
           dict(seg_lo=np.array([3, 1], np.int64)),         # decreasing
           dict(add_off=np.array([0, 2], np.int64)),        # more adds than given
           dict(out_op=np.array([0], np.int32))]            # wrong table size
    for b in bad:
        with pytest.raises(ValueError):
            _run(_prog(**b), inp, out.copy())
    with pytest.raises(ValueError):
        _run(_prog(), inp, np.zeros((3, 4), np.float32))    # more output rows than nodes


# --- independence from the caller's floating-point environment -------------------------------
MXCSR_DEFAULT, FTZ, DAZ = 0x1F80, 0x8000, 0x0040
RC_ZERO, RC_DOWN = 0x6000, 0x2000


def _mxcsr_cases(n=37):
    """Inputs whose exact sums (float64: every sum here is exact) show FTZ, DAZ and a changed
    rounding mode: subnormal + subnormal, normal + subnormal -> subnormal, and 1 + 3/4 ulp."""
    rng = np.random.default_rng(7)
    k = rng.integers(1, 1 << 20, (3, n))
    sub_a = (k[0] * 2.0 ** -149) * rng.choice([-1, 1], n)         # subnormals
    sub_b = (k[1] * 2.0 ** -149) * rng.choice([-1, 1], n)
    tiny = 2.0 ** -126 - k[2] * 2.0 ** -149                        # normal + (-subnormal)
    third = n // 3
    a = np.concatenate([sub_a[:third], np.full(third, 2.0 ** -126),
                        1.0 + k[0][:n - 2 * third] * 2.0 ** -23])
    b = np.concatenate([sub_b[:third], tiny[:third] - 2.0 ** -126,
                        np.full(n - 2 * third, 3 * 2.0 ** -25)])
    assert np.all(np.float32(a) == a) and np.all(np.float32(b) == b)
    return a, b


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("which", [0, 1], ids=["accumulate", "program"])
@pytest.mark.parametrize("csr", [MXCSR_DEFAULT | FTZ | DAZ, MXCSR_DEFAULT | RC_ZERO,
                                 MXCSR_DEFAULT | FTZ | DAZ | RC_DOWN],
                         ids=["ftz_daz", "toward_zero", "ftz_daz_down"])
def test_adds_ignore_the_callers_mxcsr(tier, which, csr):
    """A caller running with FTZ/DAZ or another rounding mode (a -ffast-math library can set
    them process-wide) gets the same, IEEE round-to-nearest sums; its MXCSR is restored."""
    a, b = _mxcsr_cases()
    inp = np.stack([a, b]).astype(np.float32)
    want = (a + b).astype(np.float32)       # exact in float64, then nearest float32
    assert np.count_nonzero(np.abs(want) < 2.0 ** -126) > 10   # subnormal results present
    out = np.full(a.size, np.nan, np.float32)
    after = _reduce._test_under_mxcsr(_config.ISA_NAMES.index(tier), csr, which, inp, out)
    if after is None:
        pytest.skip("no MXCSR on this CPU (not x86): nothing to test")
    assert after == csr                     # the caller's environment is given back
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
