"""add / sub / mul / fma on codes of one format (SPEC section 4): the exact result correctly
rounded, checked against exact rationals rounded by the independent reference (spec_ref)."""
from __future__ import annotations

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

CTORS = {"cfloat8_143": dk.cfloat8_143, "cfloat8_152": dk.cfloat8_152, "shp": dk.shp}
MODES = ("tesla", "ieee", "flush")
ROUNDINGS = ("nearest", "toward_zero", "stochastic")
OPS = {"add": dk.add, "sub": dk.sub, "mul": dk.mul, "fma": dk.fma}


def fmt_of(rf):
    return {"bf16": dk.BF16, "uhp": dk.UHP, "fp32": dk.FP32}.get(rf.family) or \
        CTORS[rf.family](rf.bias, subnormals=rf.subnormals)


def run(op, operands, rf, rounding, seed, want=None):
    fmt = fmt_of(rf)
    kw = {"seed": seed} if rounding == "stochastic" else {}
    got, fl = OPS[op](*operands, fmt, rounding=rounding, return_flags=True, **kw)
    plain = OPS[op](*operands, fmt, rounding=rounding, **kw)  # no flags wanted: none counted
    assert np.array_equal(bits(plain), bits(got)), (op, fmt, rounding, "without flags")
    if want is None:
        want = (R.arith_ref if rf.family == "fp32" else R.arith_vec)(op, operands, rf, rounding, seed)
    wc, wf = want
    assert got.shape == wc.shape and got.dtype == wc.dtype, (got.shape, got.dtype, wc.dtype)
    gb, wb = bits(got).reshape(-1), bits(wc).reshape(-1)
    if rf.family in ("bf16", "fp32"):
        # A NaN result's sign is not specified by IEEE 754 (nor SPEC) for operations: accept
        # the canonical quiet NaN of either sign (the reference writes the + one).
        mag = 0x7FFF if rf.family == "bf16" else 0x7FFFFFFF
        qnan = rf.nan_code
        nan_w = wb == qnan
        gb = np.where(nan_w & ((gb & mag) == qnan), qnan, gb)
    bad = np.nonzero(gb != wb)[0]
    if bad.size:
        bs = [np.broadcast_to(o, wc.shape).reshape(-1) for o in operands]
        ex = "\n".join(
            f"  [{i}] operands {[hex(int(bits(np.asarray(b[i:i+1]))[0])) for b in bs]} "
            f"got {int(gb[i]):#x} want {int(wb[i]):#x}" for i in bad[:6])
        raise AssertionError(f"{bad.size} mismatches: {op} {fmt!r} {rounding}\n{ex}")
    assert flags_dict(fl) == wf, (op, fmt, rounding)
    plain = OPS[op](*operands, fmt, rounding=rounding, **kw)
    assert np.array_equal(bits(plain), bits(got))
    return got


_CACHE: dict = {}


def cached(key, fn):
    if key not in _CACHE:
        _CACHE[key] = fn()
    return _CACHE[key]


@pytest.mark.parametrize("family", ["cfloat8_143", "cfloat8_152"])
@pytest.mark.parametrize("sub", MODES)
@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_cfloat8_every_pair(isa, family, sub, op, rounding):
    # all 256 x 256 operand pairs, through broadcasting (256, 1) x (1, 256)
    a = np.arange(256, dtype=np.uint8)[:, None]
    b = np.arange(256, dtype=np.uint8)[None, :]
    for bias in (0, 7, 15, 63):
        rf = R.RefFormat(family, bias, sub)
        seed = 1000 + bias
        want = cached((rf, op, rounding), lambda: R.arith_vec(op, [a, b], rf, rounding, seed))
        run(op, [a, b], rf, rounding, seed, want)


def _close_codes(rf, rng, n):
    """Operand arrays whose exponents are near each other (sums interact), plus random ones."""
    hi = 1 << rf.nbits
    a = rng.integers(0, hi, n)
    near = a ^ rng.integers(0, 1 << (rf.m + 3), n)
    if rf.signed:
        near ^= rng.integers(0, 2, n) << (rf.nbits - 1)
    b = np.where(rng.random(n) < 0.8, near, rng.integers(0, hi, n))
    return a.astype(rf.storage_dtype), b.astype(rf.storage_dtype)


ARITH_FORMATS = [R.RefFormat("cfloat8_143", 7, "tesla"), R.RefFormat("cfloat8_152", 15, "ieee"),
                 R.RefFormat("cfloat8_143", 40, "flush"), R.RefFormat("shp", 15, "tesla"),
                 R.RefFormat("shp", 0, "ieee"), R.RefFormat("shp", 63, "tesla"),
                 R.BF16_R, R.UHP_R]


@pytest.mark.parametrize("rf", ARITH_FORMATS, ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "fma"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_random_codes(isa, rf, op, rounding):
    def make():
        rng = np.random.default_rng(abs(hash((str(rf), op, rounding))) % 2 ** 32)
        n = 30_000
        a, b = _close_codes(rf, rng, n)
        ops = [a, b]
        if op == "fma":
            # c near a*b's magnitude half of the time
            c = rng.integers(0, 1 << rf.nbits, n).astype(rf.storage_dtype)
            ab = R.arith_vec("mul", [a, b], rf, "nearest", 0)[0]
            c = np.where(rng.random(n) < 0.5, ab ^ rng.integers(0, 1 << (rf.m + 2), n)
                         .astype(rf.storage_dtype), c).astype(rf.storage_dtype)
            ops = [a, b, c]
        return ops, R.arith_vec(op, ops, rf, rounding, 31337)
    ops, want = cached(("rand", rf, op, rounding), make)
    run(op, ops, rf, rounding, 31337, want)


@pytest.mark.parametrize("family", ["cfloat8_143", "cfloat8_152"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_cfloat8_fma_broadcast(isa, family, rounding):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (64, 1, 1)).astype(np.uint8)
    b = rng.integers(0, 256, (1, 48, 1)).astype(np.uint8)
    c = rng.integers(0, 256, (1, 1, 40)).astype(np.uint8)
    for bias in (0, 9, 63):
        rf = R.RefFormat(family, bias, "tesla" if bias != 9 else "ieee")
        want = cached(("fma3", rf, rounding), lambda: R.arith_vec("fma", [a, b, c], rf, rounding, 4))
        run("fma", [a, b, c], rf, rounding, 4, want)


def test_fp32_format(isa):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(5000) * np.exp2(rng.integers(-140, 120, 5000))).astype(np.float32)
    y = (rng.standard_normal(5000) * np.exp2(rng.integers(-140, 120, 5000))).astype(np.float32)
    with np.errstate(all="ignore"):
        assert np.array_equal(bits(dk.add(x, y, dk.FP32)), bits(x + y))
        assert np.array_equal(bits(dk.mul(x, y, dk.FP32)), bits(x * y))
        assert np.array_equal(bits(dk.sub(x, y, dk.FP32)), bits(x - y))
    z = rng.standard_normal(400).astype(np.float32)
    for rounding in ROUNDINGS:
        run("fma", [x[:400], y[:400], z], R.FP32_R, rounding, 9)
        run("add", [x[:400], y[:400]], R.FP32_R, rounding, 9)


def test_stochastic_index_is_broadcast_output_index(isa):
    rf = R.RefFormat("cfloat8_143", 7, "tesla")
    fmt = fmt_of(rf)
    rng = np.random.default_rng(12)
    a = rng.integers(0, 256, (40, 30)).astype(np.uint8)
    b = rng.integers(0, 256, (30,)).astype(np.uint8)
    got = run("add", [a, b], rf, "stochastic", 77)
    # non-contiguous operands with the same logical values give the same result
    at = np.asfortranarray(a)
    b2 = np.repeat(b, 2)[::2]
    assert np.array_equal(dk.add(at, b2, fmt, rounding="stochastic", seed=77), got)
    # the same values materialized to the output shape: same indices, same bits
    bb = np.ascontiguousarray(np.broadcast_to(b, (40, 30)))
    assert np.array_equal(dk.add(a, bb, fmt, rounding="stochastic", seed=77), got)
    # transposed operands: index follows the output's logical order
    run("mul", [a.T, b[:, None]], rf, "stochastic", 78)


def test_flags_and_specials(isa):
    B = np.uint16
    inf, ninf, nan, one, two, sub = 0x7F80, 0xFF80, 0x7FC0, 0x3F80, 0x4000, 0x0001
    a = np.array([inf, inf, 0x0000, nan, one, sub, sub, 0x7F7F], B)
    b = np.array([ninf, inf, inf, one, two, sub, one, 0x7F7F], B)
    # add: Inf-Inf invalid; Inf+Inf=Inf; 0+Inf=Inf; NaN+1 invalid; 1+2=3; tiny+tiny (exact
    # subnormal, no underflow); sub+1 (inexact, normal); max+max overflows to Inf
    got, fl = dk.add(a, b, dk.BF16, return_flags=True)
    assert np.isnan(dk.dequantize(got[[0, 3]], dk.BF16)).all()
    assert (got[[0, 3]] & 0x7FFF).tolist() == [0x7FC0, 0x7FC0]  # quiet NaN, sign unspecified
    assert got[1:3].tolist() == [inf, inf] and got[4] == 0x4040 and got[5] == 0x0002
    assert got[6] == one and got[7] == inf
    assert flags_dict(fl) == {"invalid": 2, "denormal": 2, "overflow": 1, "underflow": 0}
    got, fl = dk.mul(np.array([0, sub, one], B), np.array([inf, sub, sub], B), dk.BF16,
                     return_flags=True)
    assert np.isnan(dk.dequantize(got[:1], dk.BF16)).all()  # 0 * Inf invalid
    assert got[1] == 0 and got[2] == sub
    assert flags_dict(fl) == {"invalid": 1, "denormal": 2, "overflow": 0, "underflow": 1}
    # UHP: negative results are invalid -> 0xFE00; x - x = +0
    u1, u2 = 0x7C00, 0x8000  # 1.0, 2.0 in UHP (bias 31)
    got, fl = dk.sub(np.array([u1, u2, u1], B), np.array([u2, u1, u1], B), dk.UHP, return_flags=True)
    assert got.tolist() == [0xFE00, u1, 0]
    assert flags_dict(fl) == {"invalid": 1, "denormal": 0, "overflow": 0, "underflow": 0}
    # CFloat8: saturation, no NaN possible
    f = dk.cfloat8_143(7)
    got, fl = dk.mul(np.array([0x7F, 0xFF, 0x38], np.uint8), np.array([0x7F, 0x7F, 0x38], np.uint8),
                     f, return_flags=True)
    assert got.tolist() == [0x7F, 0xFF, 0x38]
    assert flags_dict(fl) == {"invalid": 0, "denormal": 0, "overflow": 2, "underflow": 0}


def test_zero_signs(isa):
    f = dk.cfloat8_152(15)
    pz, nz, one, mone = 0x00, 0x80, 0x3C, 0xBC
    U = np.uint8
    for rounding in ROUNDINGS:
        kw = {"seed": 1} if rounding == "stochastic" else {}
        assert dk.add(U([one, nz, pz, nz]), U([mone, nz, nz, pz]), f, rounding=rounding,
                      **kw).tolist() == [pz, nz, pz, pz]
        assert dk.sub(U([nz, pz, one]), U([pz, nz, one]), f, rounding=rounding,
                      **kw).tolist() == [nz, pz, pz]
        assert dk.mul(U([nz, nz, one]), U([one, mone, nz]), f, rounding=rounding,
                      **kw).tolist() == [nz, pz, nz]
        assert dk.fma(U([nz, one, mone]), U([one, one, one]), U([nz, mone, one]), f,
                      rounding=rounding, **kw).tolist() == [nz, pz, pz]


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    family=st.sampled_from(["cfloat8_143", "cfloat8_152", "shp", "bf16", "uhp"]),
    bias=st.integers(0, 63),
    sub=st.sampled_from(MODES),
    op=st.sampled_from(sorted(OPS)),
    rounding=st.sampled_from(ROUNDINGS),
    seed=st.integers(0, (1 << 64) - 1),
)
def test_hypothesis_against_fractions(data, family, bias, sub, op, rounding, seed):
    rf = ({"bf16": R.BF16_R, "uhp": R.UHP_R}[family] if family in ("bf16", "uhp")
          else R.RefFormat(family, bias, sub))
    k = 3 if op == "fma" else 2
    n = data.draw(st.integers(1, 12))
    codes = st.integers(0, (1 << rf.nbits) - 1)
    ops = [np.array(data.draw(st.lists(codes, min_size=n, max_size=n)), rf.storage_dtype)
           for _ in range(k)]
    want = R.arith_ref(op, ops, rf, rounding, seed)  # the Fraction path, element by element
    for name in _config.supported_isas():
        with _config.use_isa(name):
            run(op, ops, rf, rounding, seed, want)


def test_bad_inputs_arith():
    f = dk.cfloat8_143(7)
    a = np.zeros(4, np.uint8)
    with pytest.raises((TypeError, ValueError), match=r"\bb\b"):
        dk.add(a, np.zeros(4, np.uint16), f)
    with pytest.raises((TypeError, ValueError), match=r"\ba\b"):
        dk.mul(np.zeros(4, np.float32), a, f)
    with pytest.raises((TypeError, ValueError), match=r"\bc\b"):
        dk.fma(a, a, np.zeros(4, np.int8), f)
    with pytest.raises(ValueError):
        dk.add(a, np.zeros(5, np.uint8), f)  # not broadcastable
    with pytest.raises((TypeError, ValueError), match="rounding"):
        dk.add(a, a, f, rounding="up")
    with pytest.raises((TypeError, ValueError), match="seed"):
        dk.sub(a, a, f, rounding="stochastic")
    with pytest.raises((TypeError, ValueError), match="seed"):
        dk.fma(a, a, a, f, rounding="stochastic", seed=2.5)
    with pytest.raises((TypeError, ValueError), match="fmt"):
        dk.add(a, a, "cfloat8_143")
    with pytest.raises((TypeError, ValueError)):
        dk.add(np.zeros(4, np.uint16), np.zeros(4, np.uint16), dk.FP32)


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_small_size_offset_and_scalars(isa, op):
    rng = np.random.default_rng(23)
    for rf in (R.RefFormat("cfloat8_143", 7, "tesla"), R.RefFormat("shp", 15, "ieee"), R.BF16_R):
        k = 3 if op == "fma" else 2
        base = [rng.integers(0, 1 << rf.nbits, 400).astype(rf.storage_dtype) for _ in range(k)]
        for rounding in ROUNDINGS:
            for n in list(range(0, 40)) + [63, 64, 65, 129]:
                for off in (0, 1):
                    ops = [b[off:off + n] for b in base]
                    run(op, ops, rf, rounding, 6)
            # a 0-d operand broadcasts
            ops = [base[0][:50]] + [np.array(b[7], rf.storage_dtype) for b in base[1:]]
            run(op, ops, rf, rounding, 6)


@pytest.mark.parametrize("op", sorted(OPS))
def test_operand_layouts_of_one_shape(op):
    """Operands of one shape skip broadcasting; each is still read through its own strides,
    byte order and dtype (strided and transposed views, big-endian codes, ml_dtypes
    bfloat16 for BF16), mixed with plain operands, checked against the reference."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(29)
    k = 3 if op == "fma" else 2
    for rf in (R.RefFormat("cfloat8_143", 7, "tesla"), R.BF16_R):
        base = [rng.integers(0, 1 << rf.nbits, (24, 34)).astype(rf.storage_dtype) for _ in range(k)]
        layouts = {"strided": lambda v: v[:, ::2], "transposed": lambda v: v.T[::2].T,
                   "big-endian": lambda v: v[:, :17].astype(v.dtype.newbyteorder(">"))}
        if rf.family == "bf16":
            layouts["bfloat16"] = lambda v: v[:, :17].view(ml_dtypes.bfloat16)
        for name, lay in layouts.items():
            for which in range(k):  # one operand in the layout, the others plain
                ops = [lay(b) if i == which else np.ascontiguousarray(b[:, :17])
                       for i, b in enumerate(base)]
                plain = [np.ascontiguousarray(b[:, :17]) for b in base]
                if name == "bfloat16":
                    assert ops[which].dtype == ml_dtypes.bfloat16
                else:  # the values of the layout (native byte order), contiguous
                    plain[which] = np.ascontiguousarray(ops[which]).astype(rf.storage_dtype)
                assert all(p.shape == (24, 17) for p in plain), name
                for rounding in ("nearest", "stochastic"):
                    want = R.arith_vec(op, plain, rf, rounding, 8)
                    run(op, ops, rf, rounding, 8, want=want)


@pytest.mark.parametrize("op", sorted(OPS))
def test_zero_dim_operands_give_zero_dim(isa, op):
    # NumPy broadcasting of 0-d operands gives a 0-d result
    rf = R.RefFormat("cfloat8_143", 7, "tesla")
    scal = [np.array(c, np.uint8) for c in (0x38, 0x41, 0xB3)][: 3 if op == "fma" else 2]
    got = run(op, scal, rf, "nearest", 6)
    assert got.shape == ()
