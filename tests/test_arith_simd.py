"""The SIMD arithmetic kernels (include/dk_arith_body.h) against the independent reference
(spec_ref, written from SPEC) on every tier: fma over every 8-bit pair, BF16/SHP/UHP edge
values by hypothesis, flag counts, thread-count independence, the caller's MXCSR; and
choose_bias's closed form against the loop over the 64 biases it replaced."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dojo_kernels as dk
import spec_ref as R
from dk_helpers import bits, flags_dict
from dojo_kernels import _config, _numerics
from dojo_kernels.numerics import _ctuple

pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]

CTORS = {"cfloat8_143": dk.cfloat8_143, "cfloat8_152": dk.cfloat8_152, "shp": dk.shp}
OPS = {"add": dk.add, "sub": dk.sub, "mul": dk.mul, "fma": dk.fma}
ROUNDINGS = ("nearest", "toward_zero", "stochastic")


def fmt_of(rf):
    return {"bf16": dk.BF16, "uhp": dk.UHP}.get(rf.family) or \
        CTORS[rf.family](rf.bias, subnormals=rf.subnormals)


def check(op, ops, rf, rounding, seed, want=None):
    """Codes and flag counts against the reference, and the codes of the call that wants no
    flags (the kernels then count none; nearest BF16 skips its operand tests) equal too."""
    fmt = fmt_of(rf)
    kw = {"seed": seed} if rounding == "stochastic" else {}
    got, fl = OPS[op](*ops, fmt, rounding=rounding, return_flags=True, **kw)
    plain = OPS[op](*ops, fmt, rounding=rounding, **kw)
    assert np.array_equal(bits(plain), bits(got)), (op, fmt, rounding, "without flags")
    wc, wf = want if want is not None else R.arith_vec(op, ops, rf, rounding, seed)
    gb, wb = bits(got).reshape(-1).astype(np.uint32), bits(wc).reshape(-1).astype(np.uint32)
    if rf.family == "bf16":  # a NaN result's sign is unspecified: compare the magnitude
        nan = (wb & 0x7FFF) == 0x7FC0
        gb = np.where(nan & ((gb & 0x7FFF) == 0x7FC0), wb, gb)
    bad = np.nonzero(gb != wb)[0]
    assert bad.size == 0, (f"{bad.size} mismatches {op} {fmt!r} {rounding}: " + ", ".join(
        f"{[hex(int(np.broadcast_to(o, wc.shape).reshape(-1)[i])) for o in ops]} got "
        f"{int(gb[i]):#x} want {int(wb[i]):#x}" for i in bad[:5]))
    assert flags_dict(fl) == wf, (op, fmt, rounding, flags_dict(fl), wf)


@pytest.mark.parametrize("family", ["cfloat8_143", "cfloat8_152"])
@pytest.mark.parametrize("sub", ["tesla", "ieee", "flush"])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_cfloat8_fma_every_pair(isa, family, sub, rounding):
    """fma(a, b, c) over all 65,536 (a, b) pairs, for addends c near zero, near one, the
    largest and a subnormal: every rounding, a few biases."""
    a = np.arange(256, dtype=np.uint8)[:, None]
    b = np.arange(256, dtype=np.uint8)[None, :]
    for bias in (0, 7, 40):
        rf = R.RefFormat(family, bias, sub)
        one = bias << rf.m  # the code of 1.0 (exponent field == bias) or the nearest below
        for c in {0x00, 0x80 | 0x01, min(one, 0x7F), 0x7F, 0x80 | min(one + 3, 0x7F)}:
            check("fma", [a, b, np.uint8(c)], rf, rounding, 99 + bias)


def _edge_codes(rf):
    """Codes near the special places of a 16-bit format: zeros, subnormals, the smallest
    normals, around one, the top binade, Inf/NaN, with both signs."""
    m, top = rf.m, (1 << rf.ebits) - 1
    one = (127 if rf.family == "bf16" else rf.bias) << m
    base = [0, 1, 2, (1 << m) - 1, 1 << m, (1 << m) + 1, (2 << m) - 1, one - 1, one, one + 1,
            (top - 1) << m, ((top - 1) << m) + 1, (top << m) - 1, top << m, (top << m) | 1,
            (top << m) | (1 << (m - 1)), (1 << (rf.ebits + m)) - 1]
    base = [c for c in base if 0 <= c < (1 << (rf.ebits + m))]
    if rf.signed:
        base += [c | (1 << (rf.ebits + m)) for c in base]
    return sorted(set(base))


def _formats16():
    return [R.BF16_R, R.UHP_R, R.RefFormat("shp", 15, "tesla"), R.RefFormat("shp", 63, "ieee"),
            R.RefFormat("shp", 0, "flush")]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), rfi=st.integers(0, 4), op=st.sampled_from(sorted(OPS)),
       rounding=st.sampled_from(ROUNDINGS), seed=st.integers(0, (1 << 64) - 1))
def test_hypothesis_16bit_edges_every_tier(data, rfi, op, rounding, seed):
    """Operands drawn from the edge codes, ties (a code and its neighbour, halves) and random
    codes, in vectors long enough for every tier's vector loop; every tier against the
    Fraction reference."""
    rf = _formats16()[rfi]
    edges = _edge_codes(rf)
    code = st.one_of(st.sampled_from(edges), st.integers(0, (1 << rf.nbits) - 1))
    n = data.draw(st.integers(17, 48))
    ops = [np.array(data.draw(st.lists(code, min_size=n, max_size=n)), rf.storage_dtype)
           for _ in range(3 if op == "fma" else 2)]
    want = R.arith_ref(op, ops, rf, rounding, seed)
    for name in _config.supported_isas():
        with _config.use_isa(name):
            check(op, ops, rf, rounding, seed, want)


@pytest.mark.parametrize("rf", _formats16(), ids=str)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_16bit_edge_pairs(isa, rf, rounding):
    """Every pair of edge codes (add, sub, mul) and fma with every edge addend."""
    e = np.array(_edge_codes(rf), rf.storage_dtype)
    a, b = e[:, None], e[None, :]
    for op in ("add", "sub", "mul"):
        check(op, [a, b], rf, rounding, 5)
    check("fma", [a[:, :, None], b[:, :, None], e[None, None, :]], rf, rounding, 5)


def test_bf16_products_near_fp32_underflow(isa):
    """BF16 products whose FP32 value is subnormal or rounds up to 2^-126, alone and with an
    addend: the lanes FP32 cannot hold exactly."""
    rng = np.random.default_rng(4)
    n = 4000
    # exponents summing near -126 - 8 .. -126 + 1
    ea = rng.integers(-70, -50, n)
    eb = -126 - ea + rng.integers(-10, 3, n)
    ma = rng.integers(128, 256, n)
    mb = rng.integers(128, 256, n)
    sa = rng.integers(0, 2, n) << 15
    sb = rng.integers(0, 2, n) << 15
    a = (sa | ((ea + 127) << 7) | (ma & 127)).astype(np.uint16)
    b = (sb | ((eb + 127) << 7) | (mb & 127)).astype(np.uint16)
    c = rng.choice(np.array([0x0080, 0x8080, 0x0001, 0x0100, 0x00FF, 0], np.uint16), n)
    for rounding in ROUNDINGS:
        check("mul", [a, b], R.BF16_R, rounding, 3)
        check("fma", [a, b, c], R.BF16_R, rounding, 3)


@pytest.mark.parametrize("rf", [R.BF16_R, R.RefFormat("cfloat8_143", 7, "tesla"),
                                R.RefFormat("shp", 20, "ieee")], ids=str)
@pytest.mark.parametrize("op", sorted(OPS))
def test_thread_count_independence(isa, threads_restored, rf, op):
    """Bits and flag counts equal for 1, 2 and 3 threads over several blocks."""
    rng = np.random.default_rng(11)
    n = 3 * 32768 + 123
    ops = [rng.integers(0, 1 << rf.nbits, n).astype(rf.storage_dtype) for _ in range(3 if op == "fma" else 2)]
    fmt = fmt_of(rf)
    res = []
    for t in (1, 2, 3):
        dk.set_num_threads(t)
        for rounding in ("nearest", "stochastic"):
            got, fl = OPS[op](*ops, fmt, rounding=rounding, seed=8, return_flags=True)
            plain = OPS[op](*ops, fmt, rounding=rounding, seed=8)  # no flags counted
            res.append((rounding, bits(got).tobytes(), bits(plain).tobytes(), flags_dict(fl)))
    assert res[0:2] == res[2:4] == res[4:6]


# --- 8-bit add/sub/mul by table (numerics._lut: large calls without flags) ---------------------
@pytest.mark.parametrize("rf", [R.RefFormat("cfloat8_143", 7, "tesla"),
                                R.RefFormat("cfloat8_152", 15, "ieee"),
                                R.RefFormat("cfloat8_143", 63, "flush")], ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_cfloat8_table_path(isa, threads_restored, rf, op):
    """Calls of at least numerics._LUT_MIN 8-bit codes without flags, rounded to nearest or
    toward zero, look every result up in a table of all pairs: random codes in random order
    (so a swapped or shifted index shows), at 1 and 2 threads, equal the reference (check:
    the counted call against the reference, the uncounted one, here the table, against
    it); in place and into an out overlapping an operand too."""
    from dojo_kernels import numerics
    rng = np.random.default_rng(hash((rf.family, rf.bias, op)) % 2**32)
    n = 2 * numerics._LUT_MIN + 4321  # (past the drivers' threshold for threads, 4 blocks)
    ops = [rng.integers(0, 256, n).astype(np.uint8) for _ in range(2)]
    fmt = fmt_of(rf)
    dk.set_thread_guard(False)  # (every call on the threads asked for)
    try:
        for rounding in ("nearest", "toward_zero"):
            for t in (1, 2):
                dk.set_num_threads(t)
                before = numerics._lut.cache_info()
                check(op, ops, rf, rounding, 0)
                after = numerics._lut.cache_info()
                assert after.hits + after.misses > before.hits + before.misses  # table used
    finally:
        dk.set_thread_guard(True)
    for rounding in ("nearest", "toward_zero"):
        want = OPS[op](*ops, fmt, rounding=rounding, return_flags=True)[0]
        a = ops[0].copy()
        assert OPS[op](a, ops[1], fmt, rounding=rounding, out=a) is a  # in place
        assert np.array_equal(a, want)
        buf = np.zeros(n + 8, np.uint8)
        buf[4:4 + n] = ops[1]
        out = buf[5:5 + n]  # one code past b, inside its memory
        assert OPS[op](ops[0], buf[4:4 + n], fmt, rounding=rounding, out=out) is out
        assert np.array_equal(out, want)
    table = numerics._lut(fmt, 0, 0, _config.isa())
    with pytest.raises(ValueError):
        table.setflags(write=True)  # cached: nobody may change it
    a8 = np.zeros(1 << 16, np.uint8)
    with pytest.raises(ValueError, match="read-only"):
        _numerics.lut2(table, a8, a8, table, 1 << 16, 1)
    mine = np.array(table)  # a writable table: the glue still never writes into it
    assert _numerics.lut2(mine, a8, a8, mine, 1 << 16, 1) is None
    assert _numerics.lut2(mine, a8[:1 << 15], a8[:1 << 15], mine[1 << 15:], 1 << 15, 1) is None
    assert np.array_equal(mine, table)


# --- the caller's floating-point environment -------------------------------------------------
MXCSR_DEFAULT, FTZ, DAZ = 0x1F80, 0x8000, 0x0040
RC_ZERO, RC_DOWN, RC_UP = 0x6000, 0x2000, 0x4000


@pytest.mark.parametrize("csr", [MXCSR_DEFAULT | FTZ | DAZ, MXCSR_DEFAULT | RC_ZERO,
                                 MXCSR_DEFAULT | RC_UP, MXCSR_DEFAULT | FTZ | DAZ | RC_DOWN],
                         ids=["ftz_daz", "toward_zero", "up", "ftz_daz_down"])
def test_arith_ignores_the_callers_mxcsr(csr):
    """A caller running with FTZ/DAZ or another rounding mode gets the same bits and flags as
    the reference (subnormal BF16 operands and results, sums that FP32 rounds); its MXCSR is
    given back."""
    rng = np.random.default_rng(21)
    n = 200
    sub = rng.integers(1, 128, n).astype(np.uint16) | (rng.integers(0, 2, n) << 15).astype(np.uint16)
    norm = rng.integers(0x0080, 0x7F00, n).astype(np.uint16) | (rng.integers(0, 2, n) << 15).astype(np.uint16)
    small = rng.integers(0x0080, 0x0200, n).astype(np.uint16)
    cases = {
        R.BF16_R: [np.concatenate([sub, norm, small]), np.concatenate([sub[::-1], norm[::-1], small ^ 0x8000]),
                   np.concatenate([norm, sub, norm])],
        R.RefFormat("shp", 63, "tesla"): [rng.integers(0, 1 << 16, 600).astype(np.uint16) for _ in range(3)],
        R.RefFormat("cfloat8_143", 7, "ieee"): [rng.integers(0, 256, 600).astype(np.uint8) for _ in range(3)],
    }
    for rf, (a, b, c) in cases.items():
        fmt = fmt_of(rf)
        for opname, op in (("add", 0), ("sub", 1), ("mul", 2), ("fma", 3)):
            for rounding, mode in (("nearest", 0), ("stochastic", 1), ("toward_zero", 2)):
                ops = [a, b, c] if opname == "fma" else [a, b]
                wc, wf = R.arith_vec(opname, ops, rf, rounding, 17)
                for isa in _config.supported_isas():
                    for counted in (True, False):  # (uncounted: nearest BF16's lighter tests)
                        out = np.zeros_like(a)
                        v = [x.view(np.uint8) for x in (a, b, c)]
                        r = _numerics._arith_under_mxcsr(
                            csr, op, v[0], v[1], v[2], out.view(np.uint8), a.size,
                            _ctuple(fmt), mode, 17, _config.ISA_NAMES.index(isa), counted)
                        if r is None:
                            pytest.skip("no MXCSR on this CPU (not x86): nothing to test")
                        fl, after = r
                        assert after == csr
                        gb, wb = out.astype(np.uint32), wc.astype(np.uint32)
                        if rf.family == "bf16":
                            nan = (wb & 0x7FFF) == 0x7FC0
                            gb = np.where(nan & ((gb & 0x7FFF) == 0x7FC0), wb, gb)
                        assert np.array_equal(gb, wb), (isa, opname, rounding, fmt, counted)
                        if counted:
                            assert dict(zip(("invalid", "denormal", "overflow", "underflow"),
                                            fl)) == wf


# --- choose_bias ------------------------------------------------------------------------------
def _choose_bias_loop(top, family, margin):
    """The algorithm choose_bias had before its closed form: the largest bias whose max holds
    top * 2**margin, by trying the 64 biases from the top (None: no bias does)."""
    try:
        need = math.ldexp(top, margin)
    except OverflowError:
        need = math.inf
    maxes = _MAXES[family]
    for bias in range(63, -1, -1):
        if maxes[bias] >= need:
            return bias
    return None


_MAXES = {name: [make(b).max for b in range(64)] for name, make in
          (("cfloat8_143", dk.cfloat8_143), ("cfloat8_152", dk.cfloat8_152), ("shp", dk.shp))}


def _magnitudes():
    """Every family max at every bias and its float32 neighbours, and powers of two with a
    spread of significands over float32's whole range."""
    out = set()
    for make in (dk.cfloat8_143, dk.cfloat8_152, dk.shp):
        for b in range(64):
            mx = np.float32(make(b).max)
            out.update(float(v) for v in (mx, np.nextafter(mx, np.float32(0)),
                                          np.nextafter(mx, np.float32(np.inf))))
    for e in range(-149, 128):
        for frac in (1.0, 1.0 + 2 ** -23, 1.5, 1.875, 1.9375, 1.96875, 1.999, 2 - 2 ** -23):
            v = np.float32(math.ldexp(frac, e))
            if np.isfinite(v) and v > 0:
                out.add(float(v))
    return sorted(out)


@pytest.mark.parametrize("family", ["cfloat8_143", "cfloat8_152", "shp"])
def test_choose_bias_closed_form_equals_the_loop(family):
    mags = _magnitudes()
    for margin in (0, 1, -1, 3, -7, 30, -30, 200, -200, 2000):
        for top in mags:
            x = np.array([top, -top / 2], np.float32)
            want = _choose_bias_loop(top, family, margin)
            if want is None:
                with pytest.raises(ValueError, match="exceeds"):
                    dk.choose_bias(x, family, margin=margin)
            else:
                assert dk.choose_bias(x, family, margin=margin) == want, (top, margin)


def test_choose_bias_scan_kinds_and_sizes(threads_restored):
    """The one-pass scan: float32, float64, bfloat16, the max anywhere in a long array, any
    thread count; NaN/Inf anywhere refused."""
    import ml_dtypes
    rng = np.random.default_rng(5)
    for n in (1, 7, 100, 70_000, 300_001):
        x = rng.standard_normal(n)
        k = int(rng.integers(n))
        x[k] = 3000.0 * (-1) ** k
        for dt in (np.float64, np.float32, ml_dtypes.bfloat16):
            xv = x.astype(dt)
            top = float(np.max(np.abs(xv.astype(np.float64))))
            for t in (1, 2):
                dk.set_num_threads(t)
                assert dk.choose_bias(xv, "cfloat8_143") == _choose_bias_loop(top, "cfloat8_143", 0)
            for bad in (np.nan, np.inf, -np.inf):
                y = xv.copy()
                y[n // 2] = bad
                with pytest.raises(ValueError, match="NaN or Inf"):
                    dk.choose_bias(y, "shp")
    assert dk.choose_bias(np.zeros(5, np.float32), "shp") == 63
    assert dk.choose_bias(np.array([-0.0, 0.0]), "cfloat8_152") == 63
    # a float64 max that float32 would round: 480 * (1 + 2^-40) exceeds cfloat8_143(7).max
    assert dk.choose_bias(np.array([480.0 * (1 + 2 ** -40)]), "cfloat8_143") == 6


@pytest.mark.parametrize("rf", [R.BF16_R, R.UHP_R, R.RefFormat("cfloat8_152", 3, "tesla")], ids=str)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_in_place_with_scalar_lanes(isa, rf, rounding):
    """out aliasing an operand (as NumPy ufuncs allow), with lanes that take the scalar path
    (Inf/NaN, overflow) in every vector: the result equals the out-of-place one."""
    e = np.array(_edge_codes(rf), rf.storage_dtype)
    rng = np.random.default_rng(2)
    a = np.resize(e, 300)
    b = rng.permutation(a)
    c = rng.permutation(a)
    fmt = fmt_of(rf)
    kw = {"seed": 3} if rounding == "stochastic" else {}
    for name, ops, alias in (("add", [a, b], 0), ("mul", [a, b], 1), ("fma", [a, b, c], 2),
                             ("sub", [a, b], 0)):
        want = OPS[name](*ops, fmt, rounding=rounding, **kw)
        ops = [o.copy() for o in ops]
        got = OPS[name](*ops, fmt, rounding=rounding, out=ops[alias], **kw)
        assert got is ops[alias]
        assert np.array_equal(got, want), (name, fmt, rounding)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_fake_quantize_out(isa, rounding):
    """fake_quantize into a preallocated array, in place, and into a bfloat16 out: the same
    bits as the reference's dequantize(quantize(x)); Tesla-gap values (scalar lanes of the
    stochastic vector loop) included."""
    import ml_dtypes
    rng = np.random.default_rng(9)
    rf = R.RefFormat("cfloat8_143", 7, "tesla")
    fmt = fmt_of(rf)
    kw = {"seed": 12} if rounding == "stochastic" else {}
    gap = rng.uniform(7 / 8 * 2.0 ** -7, 2.0 ** -6, 500)  # between maxsub and minnorm
    x = np.concatenate([rng.standard_normal(1500) * 8, gap, -gap]).astype(np.float32)
    want = R.dequantize_ref(R.quantize_ref(x, rf, rounding, kw.get("seed"))[0], rf).astype(np.float32)
    out = np.empty_like(x)
    assert dk.fake_quantize(x, fmt, rounding=rounding, out=out, **kw) is out
    assert np.array_equal(bits(out), bits(want))
    y = x.copy()
    assert dk.fake_quantize(y, fmt, rounding=rounding, out=y, **kw) is y
    assert np.array_equal(bits(y), bits(want))
    xb = x.astype(ml_dtypes.bfloat16)
    ob = np.empty_like(xb)
    assert dk.fake_quantize(xb, fmt, rounding=rounding, out=ob, **kw) is ob
    assert np.array_equal(bits(ob), bits(dk.fake_quantize(xb, fmt, rounding=rounding, **kw)))
    with pytest.raises(TypeError, match="out"):
        dk.fake_quantize(x, fmt, rounding=rounding, out=np.empty(x.shape, np.float64), **kw)
    with pytest.raises(ValueError, match="out"):
        dk.fake_quantize(x, fmt, rounding=rounding, out=np.empty(3, np.float32), **kw)


# --- the BF16 fast path (2 * DK_VL codes per step, dk_bf16_fast in dk_arith_body.h) -----------
def _bf16_plain_with_edges(rng, n, density):
    """BF16 codes of normal values of similar magnitudes (the steps the fast path finishes),
    with a few edge codes scattered in (subnormals, zeros, Inf, NaN, the top binade, tiny
    values whose products or sums underflow), so that some steps fall back and most do not."""
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-3, 4, n))).astype(np.float32)
    codes = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncated: exact BF16 values
    edges = np.array([0x0000, 0x8000, 0x0001, 0x807F, 0x0080, 0x8080, 0x7F7F, 0xFF7F, 0x7F00,
                      0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x0100, 0x2000, 0x1F80, 0x6000], np.uint16)
    pick = rng.random(n) < density
    codes[pick] = rng.choice(edges, int(pick.sum()))
    return codes


@pytest.mark.parametrize("density", [0.0, 0.002, 0.05])
@pytest.mark.parametrize("op", sorted(OPS))
def test_bf16_fast_path_against_reference(isa, op, density):
    """Long BF16 vectors of plain values with sparse edge codes (odd lengths, so the tail
    runs too): codes and flag counts equal the reference for nearest and stochastic rounding
    (the fast path) and toward zero (the general path), on every tier."""
    rng = np.random.default_rng(21 + int(density * 1000))
    n = 4099
    ops = [_bf16_plain_with_edges(rng, n, density) for _ in range(3 if op == "fma" else 2)]
    for rounding in ROUNDINGS:
        check(op, ops, R.BF16_R, rounding, 12345)


@pytest.mark.parametrize("op", sorted(OPS))
def test_bf16_fast_path_offsets_and_in_place(isa, op):
    """The stochastic random numbers follow the global index whatever the start and the
    split into steps (slices starting at every offset of a step, so even/odd lanes swap),
    and writing over an operand (in place) gives the same codes."""
    rng = np.random.default_rng(5)
    n = 300
    ops = [_bf16_plain_with_edges(rng, n, 0.0) for _ in range(3 if op == "fma" else 2)]
    for rounding in ("nearest", "stochastic"):
        full = OPS[op](*ops, dk.BF16, rounding=rounding, seed=77)
        want, _ = R.arith_vec(op, ops, R.BF16_R, rounding, 77)
        assert np.array_equal(full, want)
        for k in range(0, 35):
            sub_ops = [o[k:] for o in ops]
            got = OPS[op](*sub_ops, dk.BF16, rounding=rounding, seed=77)
            want_k, _ = R.arith_vec(op, sub_ops, R.BF16_R, rounding, 77)
            assert np.array_equal(got, want_k), (rounding, k)
        a = ops[0].copy()
        OPS[op](a, *ops[1:], dk.BF16, rounding=rounding, seed=77, out=a)
        assert np.array_equal(a, full)


@settings(max_examples=30, deadline=None)
@given(gen=st.integers(0, (1 << 32) - 1), lo=st.integers(17, 30), span=st.integers(0, 20),
       op=st.sampled_from(["add", "sub", "fma"]), pow2=st.sampled_from([0.0, 0.3, 1.0]),
       seed=st.integers(0, (1 << 64) - 1),
       erange=st.sampled_from([(-60, 60), (-108, -92), (100, 128)]))
def test_bf16_stochastic_inexact_sums_every_tier(gen, lo, span, op, pow2, seed, erange):
    """Stochastic BF16 sums whose FP32 sum is rounded (TwoSum's error t != 0: the fast path
    rounds s + t itself, dk_bf16_stoch_sum): the second operand (fma: the product) 2^17 to
    2^50 times smaller than the first, of either sign, so that the exact sum lies above or
    below the FP32 sum and, where the first operand's BF16 mantissa is 0 (a fraction `pow2`
    of them: a power of two) or its low bits are 0, below its BF16 truncation (the borrow).
    The first operand's binade in the middle of the range or at either end (near 2^-100 the
    error term is an FP32 subnormal; near 2^127 the sum may round up to Inf).
    Every tier against the reference (codes and flags), vectors long enough for the fast
    path's steps."""
    rng = np.random.default_rng(gen)
    n = 200
    ea = rng.integers(*erange, n)
    ma = rng.integers(0, 128, n)
    ma[rng.random(n) < pow2] = 0
    a = np.ldexp(1 + ma / 128, ea) * rng.choice([-1.0, 1.0], n)
    small = np.ldexp(1 + rng.integers(0, 128, n) / 128,
                     np.maximum(ea - rng.integers(lo, lo + span + 1, n), -126))  # a normal BF16
    small *= rng.choice([-1.0, 1.0], n)
    to_code = lambda v: (np.asarray(v, np.float32).view(np.uint32) >> 16).astype(np.uint16)  # noqa: E731
    if op == "fma":  # c + x * y with x * y = small exactly (x a power of two)
        ex = rng.integers(-20, 20, n)
        ops = [to_code(np.ldexp(1.0, ex)), to_code(np.ldexp(small, -ex)), to_code(a)]
    else:
        ops = [to_code(a), to_code(small)]
    ops = [o.copy() for o in ops]
    swap = rng.random(n) < 0.5  # the small operand first too (add, sub)
    if op != "fma":
        ops[0][swap], ops[1][swap] = ops[1][swap], ops[0][swap].copy()
    want = R.arith_vec(op, ops, R.BF16_R, "stochastic", seed)
    for name in _config.supported_isas():
        with _config.use_isa(name):
            check(op, ops, R.BF16_R, "stochastic", seed, want)


_M64 = (1 << 64) - 1
_G = 0x9E3779B97F4A7C15


def _seed_for(r, i):
    """A seed whose SplitMix64 random number (SPEC section 2) at index i is r: the stream's
    steps inverted (xorshifts by their repeated shifts, the multiplies by their inverses)."""
    def unxs(z, k):
        x = z
        for _ in range(64 // k):
            x = z ^ (x >> k)
        return x
    z = unxs(r << 32, 31)
    z = unxs(z * pow(0x94D049BB133111EB, -1, 1 << 64) & _M64, 27)
    z = unxs(z * pow(0xBF58476D1CE4E5B9, -1, 1 << 64) & _M64, 30)
    seed = (z - (i + 1) * _G) & _M64
    assert R.splitmix_r(seed, i) == r
    return seed


def _bf16_f(v):
    """f of SPEC section 2 for the exact Fraction v (a normal BF16 magnitude range):
    floor((|v| - lo) / (hi - lo) * 2^32) with lo <= |v| < hi neighbouring BF16 values."""
    from fractions import Fraction
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    ulp = Fraction(2) ** (e - 7)
    lo = (a // ulp) * ulp
    return int(((a - lo) / ulp) * (1 << 32))


@pytest.mark.parametrize("op", ["add", "sub", "fma"])
def test_bf16_stochastic_sum_at_the_carry_boundary(isa, op):
    """The fast path's f of an inexact sum (dk_bf16_stoch_sum: S's low bits, the floor of the
    error term, the borrow below S's truncation, a power-of-two S whose ulp below is half)
    must be exact to the unit (add, sub: the small operand first or second): one element per
    call gets, by a seed built for its index, the random number r = 2^32 - f (rounds up) or
    2^32 - f - 1 (rounds down), f computed here with Fractions; the call's codes against the
    reference."""
    from fractions import Fraction
    n, at = 64, 37  # at: inside the second step of 2 * 16 codes (every tier's fast path)
    cases = [(0x3F80, -30), (0x3F80, -20), (0x3F80, 25), (0x4040, -26), (0x4040, 26),
             (0xC100, -33), (0xC2C0, 40), (0x3FFF, -18), (0x3FFF, 19), (0x4A00, -24),
             (0x3F81, -45),
             # near the ends of the range: 2^-101 (the error term an FP32 subnormal, 2^-131),
             # 1.5 * 2^-102, 2^126 and 1.5 * 2^126
             (0x0D00, 23), (0x0D00, -23), (0x0CC0, -20), (0x7E80, -30), (0x7EC0, 33),
             # the error term 2^168 to 2^250 times smaller than the sum: its fraction of an
             # ulp scales to an FP32 subnormal or below (a negative one's floor is -1)
             (0x7000, -200), (0x7040, -170), (0x7041, -168), (0x7F7F, -250)]
    # (first operand's code, +-log2 of its ratio to the second)
    base = np.full(n, 0x3FC0, np.uint16), np.full(n, 0x3E80, np.uint16)  # exact sums elsewhere
    for code, k in cases:
        a = Fraction(float(np.array([code << 16], np.uint32).view(np.float32)[0]))
        sgn = -1 if k < 0 else 1
        ea = math.frexp(float(a))[1] - 1
        small = sgn * Fraction(2) ** (ea - abs(k)) * Fraction(129, 128)  # 8-bit significand
        b16 = int(np.array([float(small)], np.float32).view(np.uint32)[0] >> 16)
        assert Fraction(float(np.array([b16 << 16], np.uint32).view(np.float32)[0])) == small
        f = _bf16_f(a + small)  # the exact result, sub's operand negated below
        assert f != 0
        ops = [base[0].copy(), base[1].copy()]
        if op == "fma":  # c + x * y: x = 2, y = small / 2, c = a
            ops = [np.full(n, 0x4000, np.uint16), ops[1], ops[0]]
            half = int(np.array([float(small / 2)], np.float32).view(np.uint32)[0] >> 16)
            ops[1][at], ops[2][at] = half, code
        else:
            ops[0][at], ops[1][at] = code, b16 if op == "add" else b16 ^ 0x8000
        variants = [ops]
        if op != "fma":  # the small operand first: small + a, (-small) - a = -(a + small)
            sw = [o.copy() for o in ops]
            sw[0][at], sw[1][at] = (b16, code) if op == "add" else (b16 ^ 0x8000, code)
            variants.append(sw)
        for r in ((1 << 32) - f, (1 << 32) - f - 1):
            seed = _seed_for(r, at)
            for v in variants:
                check(op, v, R.BF16_R, "stochastic", seed)


@pytest.mark.parametrize("rf", [R.RefFormat("shp", 15, "ieee"), R.RefFormat("shp", 20, "tesla"),
                                R.RefFormat("cfloat8_152", 15, "tesla"), R.UHP_R], ids=str)
@pytest.mark.parametrize("op", ["add", "sub"])
def test_narrow_stochastic_inexact_sum_at_the_carry_boundary(isa, rf, op):
    """Stochastic sums of the narrow formats (SHP, CFloat8 1_5_2, UHP) whose FP32 sum is
    rounded (the second operand 2^(24 - p) to 2^30 times smaller): the exact sum decides,
    not the FP32 one. One element per call gets, by a seed built for its index, the random
    number r = 2^32 - f (rounds up) or 2^32 - f - 1 (down), f of SPEC section 2 computed
    here with Fractions from the exact sum; the call's codes and flags against the
    reference, every other element an exact sum, the element inside the third vector of
    every tier. (Rounding from the FP32 sum rounds such a pair the other way.)"""
    from fractions import Fraction
    n, at = 64, 37
    two = Fraction(2)
    ea = rf.emax_field - 3 - rf.bias  # the large operand's binade: results below the top one
    large = two ** ea * (1 + Fraction(2 ** rf.m // 2 + 1, 2 ** rf.m))
    base = [np.full(n, R.encode_mag(two ** ea, rf), rf.storage_dtype),
            np.full(n, R.encode_mag(two ** (ea - 1), rf), rf.storage_dtype)]
    tried = 0
    for k in range(24 - (rf.m + 1) + 1, 31):
        for sign in ((0, 1) if rf.signed else (0,)):
            small = two ** (ea - k) * (1 + Fraction(1, 2 ** rf.m))
            if small < rf.min_normal:  # a subnormal at or below it
                q = two ** rf.sub_quantum_exp
                small = min(small // q, 2 ** rf.m - 1) * q
                if small == 0 or rf.subnormals == "flush":
                    continue
            exact = large + (-small if (op == "sub") != bool(sign) else small)
            fp32 = np.float32(float(large)) + np.float32(float(small) * (-1 if sign else 1)) \
                * np.float32(-1 if op == "sub" else 1)
            if Fraction(float(fp32)) == exact:
                continue
            lo, hi = R.neighbours(exact, rf)
            f = int((exact - lo) / (hi - lo) * 2 ** 32)
            if f == 0:
                continue
            tried += 1
            ops = [base[0].copy(), base[1].copy()]
            ops[0][at] = R.encode_mag(large, rf)
            ops[1][at] = R.encode_mag(small, rf) | (rf.sign_bit if sign else 0)
            for r in ((1 << 32) - f, (1 << 32) - f - 1):
                check(op, ops, rf, "stochastic", _seed_for(r, at))
    assert tried >= 3, tried


def _sr_exact(op, vals):
    """The exact result of op on Fractions."""
    if op == "fma":
        return vals[0] * vals[1] + vals[2]
    return vals[0] - vals[1] if op == "sub" else vals[0] + vals[1]


def _sr_fp32(op, vals):
    """FP32's sum of the unscaled values (the kernels' sum, scaled, as long as products stay
    at or above 2^-126: products of two format values are then exact in FP32), as a
    Fraction."""
    from fractions import Fraction
    f = [np.float32(float(v)) for v in vals]
    if op == "fma":
        return Fraction(float(f[0] * f[1] + f[2]))
    return Fraction(float(f[0] - f[1] if op == "sub" else f[0] + f[1]))


def _sr_value(rf, e, M, neg):
    """The normal value 2^e (1 + M / 2^m), negated if neg, as a Fraction."""
    from fractions import Fraction
    return (-1 if neg else 1) * Fraction(2) ** int(e) * (1 + Fraction(int(M), 2 ** rf.m))


def _sr_code(rf, v):
    """The code of the representable Fraction v."""
    return R.encode_mag(abs(v), rf) | (rf.sign_bit if v < 0 else 0)


def _sr_boundaries(op, rf, ops, specials, at, inexact=True):
    """For each operand list t of specials (Fractions whose exact result FP32 does not hold,
    or with inexact=False does), element `at` of a copy of ops gets t, and the call runs
    with a seed built for that index so that its r = 2^32 - f (rounds up) and 2^32 - f - 1
    (down), f of SPEC section 2 from Fractions; every element checked against the
    reference. Returns how many ran."""
    for t in specials:
        x = _sr_exact(op, t)
        assert (_sr_fp32(op, t) != x) == inexact, t
        lo, hi = R.neighbours(abs(x), rf)
        f = int((abs(x) - lo) / (hi - lo) * 2 ** 32)
        cur = [o.copy() for o in ops]
        for j, v in enumerate(t):
            cur[j][at] = _sr_code(rf, v)
        # (f == 0: less than 2^-32 of a step above lo: down even for the largest r)
        for r in ((1 << 32) - f, (1 << 32) - f - 1) if f else ((1 << 32) - 1,):
            check(op, cur, rf, "stochastic", _seed_for(r, at))
    return len(specials)


# (sums of two CFloat8 1_4_3 values are exact in FP32: 4-bit significands 18 binades apart
# at most; its fma can be inexact)
_SR_CASES = [(rf, op) for rf in (R.RefFormat("shp", 15, "ieee"), R.RefFormat("shp", 20, "tesla"),
                                 R.RefFormat("cfloat8_152", 15, "tesla"), R.UHP_R)
             for op in ("add", "sub", "fma")] + [(R.RefFormat("cfloat8_143", 7, "tesla"), "fma")]


@pytest.mark.parametrize("rf,op", _SR_CASES, ids=str)
def test_narrow_stochastic_exact_sums(isa, rf, op):
    """Stochastic add, sub and fma of the narrow formats round the exact sum, also where its
    FP32 sum is rounded (the fast loop rounds s + t: dk_stoch_sum): random operands in
    the normal range (about half of SHP's fma sums inexact in FP32) against the reference,
    and, one element per call by a seed built for its index, r = 2^32 - f (rounds up) and
    2^32 - f - 1 (down) with f of SPEC section 2 from Fractions, for inexact sums: random
    ones, sums just below a power of two (FP32 rounds them up to it: the step below is
    half) and just above the top of a binade (rounding up carries into the next)."""
    from fractions import Fraction
    rng = np.random.default_rng([rf.bias, rf.nbits, rf.m, ["add", "sub", "fma"].index(op)])
    two = Fraction(2)
    n, at = 64, 37
    emin, emax = R.floor_log2(rf.min_normal), R.floor_log2(rf.max)

    def value(e, M, neg):
        return _sr_value(rf, e, M, neg)

    def draw(k, w1, w2):
        """k operand lists: fma's factors (add's first operand) in binades w1, the addend
        (the second operand) in w2, normal values."""
        neg = rng.integers(0, 2, (k, 3)).astype(bool) & rf.signed
        e1 = rng.integers(w1[0], w1[1] + 1, (k, 2))
        e2 = rng.integers(w2[0], w2[1] + 1, k)
        M = rng.integers(0, 2 ** rf.m, (k, 3))
        if op == "fma":
            return [[value(e1[i, 0], M[i, 0], neg[i, 0]), value(e1[i, 1], M[i, 1], neg[i, 1]),
                     value(e2[i], M[i, 2], neg[i, 2])] for i in range(k)]
        return [[value(e1[i, 0], M[i, 0], neg[i, 0]), value(e2[i], M[i, 2], neg[i, 2])]
                for i in range(k)]

    wide = (emin, emax // 2 if op == "fma" else emax - 1), (emin, emax - 1)
    base = draw(n, *wide)
    ops = [np.array([_sr_code(rf, t[j]) for t in base], rf.storage_dtype)
           for j in range(len(base[0]))]
    # the boundary elements: random inexact sums (also from far apart binades, where
    # CFloat8 1_4_3's fma can be inexact at all), then the constructed ones
    far = (emin, emin + 2) if op == "fma" else (emax - 3, emax - 1), (emax - 3, emax - 1) \
        if op == "fma" else (emin, emin + 3)
    specials = [t for t in draw(300, *wide) if _sr_fp32(op, t) != _sr_exact(op, t)][:3] + \
        [t for t in draw(300, *far) if _sr_fp32(op, t) != _sr_exact(op, t)][:3]
    e = emax - 2
    for top in (two ** e, two ** e * (2 - Fraction(1, 2 ** rf.m))):
        for k in (25, 26, 27, 29):  # |small| below half an FP32 ulp of the large value
            small = two ** (e - k) * (1 + Fraction(1, 2 ** rf.m))
            if small < rf.min_normal:
                continue
            d = -small if top == two ** e else small  # below 2^e; above the binade's top
            if op == "fma":
                specials.append([Fraction(1), d, top])
            else:
                specials.append([top, -d if op == "sub" else d])
    specials = [t for t in specials
                if rf.signed or all(v >= 0 for v in t) and _sr_exact(op, t) >= 0]
    specials = [t for t in specials if rf.min_normal <= abs(_sr_exact(op, t)) < rf.max]
    assert _sr_boundaries(op, rf, ops, specials, at) >= 3


# Signed formats whose fma can leave a tiny exact result that FP32's sum rounds: SHP at any
# bias, CFloat8 at large biases (their smallest products lie far below the subnormal grid)
_TINY_SR = [R.RefFormat("shp", 15, "ieee"), R.RefFormat("shp", 20, "tesla"),
            R.RefFormat("shp", 63, "tesla"), R.RefFormat("shp", 40, "ieee"),
            R.RefFormat("cfloat8_152", 63, "tesla"), R.RefFormat("cfloat8_143", 63, "ieee"),
            R.RefFormat("shp", 20, "flush"), R.RefFormat("cfloat8_152", 63, "flush")]


@pytest.mark.parametrize("rf", _TINY_SR, ids=str)
def test_narrow_stochastic_tiny_sums(isa, rf):
    """Stochastic fma whose exact result a * b + c lies below the smallest normal while
    FP32's sum of the product and the addend is inexact (the general loop rounds s + t onto
    the subnormal grid: dk_stoch_tiny; the Tesla gap keeps the other paths). Addends
    on the subnormal grid (the smallest, the largest, random ones) and products from just
    below the addend to 2^-40 of it, of either sign; 64 such elements against the reference,
    then, at one element per call, r = 2^32 - f and 2^32 - f - 1 (_sr_boundaries) for
    random ones, for exact sums off the grid (dk_stoch_tiny rounds those too), and (large
    biases) results just below and above grid points of either sign: the smallest
    subnormals and the largest (for Tesla subnormals |s| is then the largest subnormal: the
    lane selection's edge, and the gap beyond it), and just below the smallest normal
    (|s| the smallest normal: the other paths). Formats that flush subnormals (no
    subnormal addends): small normal addends and products that cancel most of them."""
    from fractions import Fraction
    rng = np.random.default_rng([rf.bias, rf.nbits, rf.m, 7])
    n, at = 64, 37
    q = rf.min_subnormal
    emin, emax = R.floor_log2(rf.min_normal), R.floor_log2(rf.max)
    last = 2 ** rf.m - 1  # the largest subnormal, in quanta

    def factors(target, neg):
        """Two normal values whose product's binade is `target` (None if out of range)."""
        lo_, hi_ = max(emin, target - emax), min(emax, target - emin)
        if lo_ > hi_:
            return None
        ea = int(rng.integers(lo_, hi_ + 1))
        M = rng.integers(0, 2 ** rf.m, 2)
        return [_sr_value(rf, ea, M[0], neg), _sr_value(rf, target - ea, M[1], False)]

    def draw(k, inexact=True, tries=20000):
        out = []
        while len(out) < k and tries:
            tries -= 1
            neg = bool(rng.integers(0, 2))
            if rf.subnormals == "flush":  # a small normal addend, the product of the other sign
                c = rf.min_normal * (1 + Fraction(int(rng.integers(0, 4)), 2 ** rf.m))
                c, ab = (-c if neg else c), factors(emin - int(rng.integers(0, 25)), not neg)
            else:
                kq = int(rng.choice([1, last, int(rng.integers(1, last + 1))]))
                c = kq * q * (-1 if neg else 1)
                ab = factors(R.floor_log2(abs(c)) - int(rng.integers(0, 41)),
                             bool(rng.integers(0, 2)))
            if ab is None:
                continue
            t = ab + [c]
            x = _sr_exact("fma", t)
            if 0 < abs(x) < rf.min_normal and (_sr_fp32("fma", t) != x) == inexact \
                    and R.neighbours(abs(x), rf)[0] != abs(x):
                out.append(t)
        return out

    base = draw(n)
    ops = [np.array([_sr_code(rf, t[j]) for t in base], rf.storage_dtype) for j in range(3)]
    check("fma", ops, rf, "stochastic", int(rng.integers(0, 2 ** 63)))
    # results just below and above a grid point (a product far below the addend: FP32's
    # sum is the addend), around the largest subnormal (Tesla: its gap beyond) and the
    # smallest normal
    def far_below(c, neg):
        """Factors whose product lies 2^-26 to 2^-60 of c's binade (FP32's sum is c)."""
        for d in range(26, 61):
            ab = factors(R.floor_log2(abs(c)) - d, neg)
            if ab is not None:
                return ab + [c]
        return None  # (small biases: no product of normal values is that small)

    grid = [] if rf.subnormals == "flush" else [kq * q for kq in (1, 2, last // 2, last)]
    built = [far_below(sign * v, neg) for v in grid for sign in (1, -1) for neg in (False, True)]
    built.append(far_below(rf.min_normal, True))  # just below the smallest normal
    built = [t for t in built if t is not None]
    assert len(built) == (4 * len(grid) + 1 if rf.bias >= 40 else 0), len(built)
    assert _sr_boundaries("fma", rf, ops, draw(4) + built, at) >= 4
    # (CFloat8 1_4_3 bias 63: its products lie 2^29 times or more below its smallest
    # subnormal, so an fma with a tiny result off the grid is never exact in FP32)
    exact = draw(3, inexact=False, tries=2000 if rf.family == "cfloat8_143" else 20000)
    assert len(exact) == (0 if rf.family == "cfloat8_143" else 3), len(exact)
    _sr_boundaries("fma", rf, ops, exact, at, inexact=False)


# --- quantize / fake_quantize fast path (values rounded on FP32's bits, dk_convert_body.h) ----
_FQ_FORMATS = [R.RefFormat("cfloat8_143", 7, "tesla"), R.RefFormat("cfloat8_143", 0, "ieee"),
               R.RefFormat("cfloat8_152", 40, "flush"), R.RefFormat("cfloat8_152", 15, "tesla"),
               R.RefFormat("shp", 31, "ieee"), R.RefFormat("shp", 3, "tesla"), R.UHP_R]


def _fq_inputs(rf, fmt, density, seed):
    """Plain values (the format's normal range, ties and values next to max included) with
    edge values scattered in (zeros of both signs, tiny, Tesla-gap and FP32-subnormal values,
    max and beyond, Inf, NaN, negatives into UHP)."""
    vmax = float(fmt.max)
    vmin = float(2.0 ** (1 - (rf.bias if rf.family != "uhp" else 31)))  # smallest normal
    rng = np.random.default_rng(seed)
    n = 3001
    lg = rng.uniform(np.log2(vmin), np.log2(vmax), n)
    x = np.exp2(lg) * (rng.integers(0, 2, n) * 2 - 1 if fmt.signed else 1)
    # exact ties of grid points: a grid value plus half a quantum
    q = np.exp2(np.floor(lg) - rf.m)
    ties = (np.floor(np.abs(x) / q) + 0.5) * q
    x = np.where(rng.random(n) < 0.2, np.copysign(ties, x), x).astype(np.float32)
    x[rng.random(n) < 0.05] = np.float32(vmax)
    gap_lo = (2 ** rf.m - 1) * 2.0 ** (-rf.bias - rf.m)
    edges = np.array([0.0, -0.0, vmin / 3, -vmin / 2, vmin * 0.99, 1e-40, -1e-41, vmax * 1.001,
                      -vmax * 1.2, vmax * 2, np.inf, -np.inf, np.nan, -np.nan, -1.0, -vmin,
                      gap_lo, np.nextafter(np.float32(gap_lo), np.float32(1)),
                      (gap_lo + vmin) / 2, -(gap_lo * 0.7 + vmin * 0.3),
                      np.nextafter(np.float32(vmin), np.float32(0))], np.float32)
    # the subnormal grid's ties and neighbours (quantum 2^qmin)
    qs = 2.0 ** ((-rf.bias if rf.subnormals == "tesla" else 1 - rf.bias) - rf.m)
    if rf.family == "uhp":
        qs = 2.0 ** (1 - 31 - rf.m)
    ks = np.array([0.5, 1.5, 2.5, 3.5, 2 ** rf.m - 1.5, 2 ** rf.m - 0.5, 2 ** rf.m + 0.5, 0.25, 1])
    sub = (ks * qs).astype(np.float32)
    edges = np.concatenate([edges, sub, -sub, np.nextafter(sub, np.float32(1))])
    pick = rng.random(n) < density
    x[pick] = rng.choice(edges, int(pick.sum()))
    return x


def _same_bits(got, want, x):
    nan = np.isnan(want) if want.dtype.kind == "f" else np.zeros(want.shape, bool)
    if want.dtype.kind == "f":
        assert np.array_equal(np.isnan(got), nan)
    bad = np.nonzero(bits(got)[~nan] != bits(want)[~nan])[0]
    assert bad.size == 0, [(float(x[~nan][i]), got[~nan][i], want[~nan][i]) for i in bad[:5]]


@pytest.mark.parametrize("rf", _FQ_FORMATS, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_quantize_fast_path(isa, rf, density, rounding):
    """quantize's codes and fake_quantize's values against the reference's
    quantize / dequantize(quantize(x)) on every tier, at several vector offsets (the
    stochastic random numbers follow the index)."""
    fmt = fmt_of(rf)
    x = _fq_inputs(rf, fmt, density, int(density * 100) + rf.bias)
    kw = {"seed": 4242} if rounding == "stochastic" else {}
    for k in (0, 1, 5, 13):
        xs = x[k:]
        codes = R.quantize_ref(xs, rf, rounding, kw.get("seed"))[0]
        _same_bits(dk.quantize(xs, fmt, rounding=rounding, **kw), codes, xs)
        want = R.dequantize_ref(codes, rf).astype(np.float32)
        _same_bits(dk.fake_quantize(xs, fmt, rounding=rounding, **kw), want, xs)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_quantize_fast_path_both_signs_into_unsigned(isa, rounding):
    """Data of both signs into an unsigned format (UHP): every vector has negative lanes
    (invalid: NaN; -0 gives +0), which the first vector pass now finishes itself
    (dk_quant_plain), with and without positive lanes that need the second pass (tiny
    values, NaN, beyond max) in the same vectors. Codes, and fake_quantize's values bit for
    bit (their NaN too), against the reference, at several vector offsets."""
    rf, fmt = R.UHP_R, fmt_of(R.UHP_R)
    rng = np.random.default_rng(17)
    x = (rng.standard_normal(4099) * 16).astype(np.float32)
    x[rng.random(x.size) < 0.1] = -0.0
    y = x.copy()
    pick = rng.random(y.size) < 0.02
    y[pick] = rng.choice(np.array([1e-12, np.nan, -np.nan, 1e9, -np.inf], np.float32), int(pick.sum()))
    kw = {"seed": 99} if rounding == "stochastic" else {}
    for data in (x, y):
        for k in (0, 3, 16):
            xs = data[k:]
            codes = R.quantize_ref(xs, rf, rounding, kw.get("seed"))[0]
            got = dk.quantize(xs, fmt, rounding=rounding, **kw)
            assert np.array_equal(got, codes)
            want = R.dequantize_ref(codes, rf).astype(np.float32)
            fq = dk.fake_quantize(xs, fmt, rounding=rounding, **kw)
            assert np.array_equal(fq.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("rf", [R.RefFormat("cfloat8_143", 7, "tesla"),
                                R.RefFormat("cfloat8_152", 50, "tesla"),
                                R.RefFormat("shp", 20, "tesla")], ids=str)
def test_stochastic_tesla_gap_vector(isa, rf):
    """Stochastic rounding inside the Tesla gap (dk_gap_stoch: an integer form of the
    scalar rule): values spread over the gap, its ends and their neighbours, many seeds,
    against the reference (codes and flags)."""
    fmt = fmt_of(rf)
    lo = (2 ** rf.m - 1) * 2.0 ** (-rf.bias - rf.m)
    hi = 2.0 ** (1 - rf.bias)
    rng = np.random.default_rng(rf.bias)
    g = rng.uniform(lo, hi, 600).astype(np.float32)
    ends = np.array([lo, hi, np.nextafter(np.float32(lo), np.float32(1)),
                     np.nextafter(np.float32(hi), np.float32(0)), (lo + hi) / 2], np.float32)
    x = np.concatenate([g, -g, ends, -ends, rng.standard_normal(200).astype(np.float32)])
    rng.shuffle(x)
    for seed in (0, 1, 2 ** 63 + 5, 2 ** 64 - 1):
        codes, wf = R.quantize_ref(x, rf, "stochastic", seed)
        got, fl = dk.quantize(x, fmt, rounding="stochastic", seed=seed, return_flags=True)
        _same_bits(got, codes, x)  # with flags: the scalar path
        assert flags_dict(fl) == wf
        _same_bits(dk.quantize(x, fmt, rounding="stochastic", seed=seed), codes, x)  # vector
        _same_bits(dk.fake_quantize(x, fmt, rounding="stochastic", seed=seed),
                   R.dequantize_ref(codes, rf).astype(np.float32), x)


@pytest.mark.parametrize("rf", [R.RefFormat("cfloat8_143", 7, "tesla"),
                                R.RefFormat("cfloat8_152", 50, "tesla"),
                                R.RefFormat("shp", 20, "tesla")], ids=str)
def test_stochastic_tesla_gap_at_the_carry_boundary(isa, rf):
    """The vector Tesla-gap rule (dk_gap_stoch) must decide "f + r >= 2^32",
    f = floor((|x| - lo) / (hi - lo) * 2^32), exactly at the unit: float32 values in the gap
    (both binades, both ends, D = (|x| - lo) / ulp with every remainder mod 2^m + 1; remainder
    0 makes the rule's two sides equal), each in an even and an odd lane at index `at`, get by
    a seed built for that index the random number r = 2^32 - f (rounds up to minnorm) or
    2^32 - f - 1 (stays at maxsub); f from Fractions, codes against the reference. The vector
    also holds another gap value (the tiny lanes' path) or, in a second call, a NaN (the
    full path)."""
    from fractions import Fraction
    fmt = fmt_of(rf)
    K = 2 ** rf.m + 1
    u = Fraction(1, 2 ** (rf.bias + 24))  # the float32 ulp in lo's binade
    L = (2 ** rf.m - 1) * 2 ** (24 - rf.m)  # lo = L u, hi = 2^25 u
    rng = np.random.default_rng(rf.m)
    As = [L + 1, 2 ** 25 - 2, 2 ** 24 - 1, 2 ** 24, 2 ** 24 + 2]
    for t in rng.integers(1, (2 ** 24 - L) // K - 1, 6):
        As += [L + K * int(t) + d0 for d0 in (0, 1, K // 2, K - 1)]  # D mod K = d0
    As += [int(a) * 2 for a in rng.integers(2 ** 23, 2 ** 24 - 1, 6)]  # the upper binade
    lo, hi = L * u, 2 ** 25 * u
    n = 64
    for A, at in ((A, at) for A in As for at in (36, 37)):  # even and odd lanes (dk_gap_stoch's
        g = A * u                                              # two 64-bit halves)
        assert lo < g < hi
        g32 = np.float32(float(g))
        assert Fraction(float(g32)) == g
        f = int((g - lo) / (hi - lo) * 2 ** 32)
        assert 0 < f < 2 ** 32
        for r, up in ((2 ** 32 - f, True), (2 ** 32 - f - 1, False)):
            seed = _seed_for(r, at)
            for other in (np.float32(float((lo + hi) / 2)), np.float32(np.nan)):
                for sign in (1, -1):
                    x = np.ones(n, np.float32)
                    x[at], x[at + 1] = sign * g32, other
                    codes = R.quantize_ref(x, rf, "stochastic", seed)[0]
                    mag = 2 ** rf.m if up else 2 ** rf.m - 1
                    assert int(codes[at]) == mag | (rf.sign_bit if sign < 0 else 0)
                    _same_bits(dk.quantize(x, fmt, rounding="stochastic", seed=seed), codes, x)
                    _same_bits(dk.fake_quantize(x, fmt, rounding="stochastic", seed=seed),
                               R.dequantize_ref(codes, rf).astype(np.float32), x)


@pytest.mark.parametrize("sign", [1, -1])
def test_bf16_fma_nearest_fp32_ties(isa, sign):
    """fma to nearest where x * y is a BF16 tie (a midpoint: x = 1.5, y with an odd last bit)
    and c is too small for the FP32 sum (|c| below half its ulp, or just above it): the FP32
    sum rounded to nearest sits on the tie, so the step toward the exact value (round to
    odd; on AVX-512 the inexact bit of the sum rounded toward zero) decides the result.
    Long vectors of plain values: the fast path; against the exact reference (Fractions)."""
    rng = np.random.default_rng(8 if sign > 0 else 9)
    n = 4099
    x = np.full(n, 0x3FC0, np.uint16)  # 1.5
    y = (0x3F81 + 2 * rng.integers(0, 64, n)).astype(np.uint16)  # 1 + odd / 128
    if sign < 0:
        y |= 0x8000
    k = rng.integers(24, 50, n)  # c = +-2^-k (1 + j / 128): BF16 exponent field 127 - k
    c = (((127 - k) << 7) | rng.integers(0, 128, n)).astype(np.uint16)
    c |= (rng.random(n) < 0.5).astype(np.uint16) << 15
    check("fma", [x, y, c], R.BF16_R, "nearest", 0)
