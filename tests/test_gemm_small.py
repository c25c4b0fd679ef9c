"""gemm's small-call fast path (issue 11 part 2): plain 2-D BF16 calls with float32 or
uint16 operands go through one glue call (_gemm.gemm_small). Its results are checked
against the exact reference of the accumulation orders (tests/amx_order_ref.py, Fractions)
and ml_dtypes' rounding for float32 inputs; its shortcut for the scaling exponents is checked
against the general rule; and every case it does not take still behaves as before."""
from __future__ import annotations

import importlib
import itertools
import os
import sys

import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import BF16, _config, _gemm

sys.path.insert(0, os.path.dirname(__file__))
import amx_order_ref as ref  # noqa: E402

G = importlib.import_module("dojo_kernels.gemm")
ml_dtypes = pytest.importorskip("ml_dtypes")

TIERS = ([dk.get_isa()] if os.environ.get("DOJO_TEST_QUICK") == "1"
         else list(_config.supported_isas()))


def bf16_codes(rng, shape, lo=-8, hi=8):
    """Random normal BF16 codes with value exponents in [lo, hi] (from the bit layout)."""
    sign = rng.integers(0, 2, shape, dtype=np.uint32) << 15
    e = rng.integers(lo, hi + 1, shape).astype(np.uint32) + 127
    man = rng.integers(0, 128, shape, dtype=np.uint32)
    return (sign | (e << 7) | man).astype(np.uint16)


def f32_to_bf16_codes(x):
    """Round to nearest even into BF16 by ml_dtypes (independent of dojo_kernels)."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


def bits(x):
    return np.ascontiguousarray(x).view(np.uint32)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("order", ["amx", "vdpbf16ps"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (16, 16, 16), (3, 7, 33), (5, 2, 64)])
def test_fast_path_bits_against_the_exact_orders(tier, order, shape):
    m, n, k = shape
    rng = np.random.default_rng(m * 100 + n * 10 + k)
    a = bf16_codes(rng, (m, k))
    bf = rng.standard_normal((k, n)).astype(np.float32) * 4
    b = f32_to_bf16_codes(bf)
    want = ref.ORDERS[order](a, b)
    with _config.use_isa(tier):
        # the fast path takes every combination of codes and float32 operands
        assert _gemm.gemm_small(a, _gemm.KIND_U16, bf, _gemm.KIND_F32, None, _config.isa(),
                                0, 1, G._ORDER_CODE[order]) is not None
        for x, y in itertools.product((a, a.T.copy().T), (b, bf)):
            got = dk.gemm(x, y, order=order)
            assert got.shape == (m, n) and got.dtype == np.float32
            assert np.array_equal(bits(got), want)
        af = np.array(ref._values(a, False), np.float32)   # exact: BF16 values are float32
        assert np.array_equal(bits(dk.gemm(af, bf, order=order)), want)


def test_fast_path_strided_and_transposed_codes():
    rng = np.random.default_rng(5)
    big = bf16_codes(rng, (20, 24))
    b = bf16_codes(rng, (12, 6))
    for a in (big[::2, ::2], big[::-2, 1:13], big.T[:10, :12], np.asfortranarray(big[:10, :12])):
        want = ref.amx_order(np.ascontiguousarray(a), b)
        assert np.array_equal(bits(dk.gemm(a, b)), want)
    bt = bf16_codes(rng, (6, 12)).T                       # a transposed B
    assert np.array_equal(bits(dk.gemm(big[:3, :12], bt)),
                          ref.amx_order(big[:3, :12], np.ascontiguousarray(bt)))


def test_fast_path_out_and_return_plan():
    rng = np.random.default_rng(6)
    a, b = bf16_codes(rng, (16, 16)), bf16_codes(rng, (16, 16))
    want = ref.amx_order(a, b)
    o = np.full((16, 16), np.nan, np.float32)
    assert dk.gemm(a, b, out=o) is o and np.array_equal(bits(o), want)
    res, plan = dk.gemm(a, b, return_plan=True)
    assert np.array_equal(bits(res), want)
    assert plan == dk.plan_gemm(16, 16, 16, a_format=BF16, b_format=BF16)
    tile = dk.TrainingTile()
    res, plan = dk.gemm(a.astype(np.float32), b, return_plan=True, machine=tile)
    assert plan.machine == tile and (plan.m, plan.n, plan.k) == (16, 16, 16)
    # out overlapping a code operand: the general path (a copy), same bits
    buf = np.zeros(16 * 16 * 2 + 16, np.uint16)
    a2 = buf[:256].reshape(16, 16)
    a2[...] = a
    o2 = buf[:512].view(np.float32).reshape(16, 16)
    assert _gemm.gemm_small(a2, 0, b, 0, o2, _config.isa(), 0, 1, _gemm.ORDER_AMX) is None
    dk.gemm(a2, b, out=o2)
    assert np.array_equal(bits(o2), want)
    # a non-contiguous out: the general path writes into it
    o3 = np.zeros((16, 32), np.float32)[:, ::2]
    assert dk.gemm(a, b, out=o3) is o3 and np.array_equal(bits(o3), want)
    # a read-only out: the same error as before
    ro = np.zeros((16, 16), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        dk.gemm(a, b, out=ro)


def test_fast_path_declines_what_it_does_not_handle():
    """None (the general path runs) for anything but the simple case."""
    rng = np.random.default_rng(7)
    isa = _config.isa()

    def small(x, kx, y, ky, out=None):
        return _gemm.gemm_small(x, kx, y, ky, out, isa, 0, 1, _gemm.ORDER_AMX)

    a, b = bf16_codes(rng, (8, 8)), bf16_codes(rng, (8, 8))
    assert small(a, 0, b, 0) is not None
    assert small(a, 0, bf16_codes(rng, (9, 8)), 0) is None               # k differs
    assert small(a[:0], 0, b, 0) is None                                  # empty
    assert small(bf16_codes(rng, (65, 64)), 0, bf16_codes(rng, (64, 2)), 0) is None  # large
    z = np.zeros((8, 8), np.uint16)
    assert small(z, 0, b, 0) is None                                      # all zero
    assert small(bf16_codes(rng, (8, 8), -126, -100), 0, b, 0) is None   # needs scaling
    assert small(bf16_codes(rng, (8, 8), 100, 120), 0, bf16_codes(rng, (8, 8), 0, 10), 0) is None
    f = rng.standard_normal((16, 16)).astype(np.float32)
    assert small(f[:, ::2], 1, b, 0) is None                              # strided float32
    assert small(f[:8, :8], 1, b, 0) is None                              # not contiguous
    assert small(np.ascontiguousarray(f[:8, :8]), 1, b, 0) is not None
    assert small(a, 0, b, 0, np.zeros((8, 8), np.float32)) is not None
    assert small(a, 0, b, 0, np.zeros((8, 9), np.float32)) is None       # out shape
    # and dk.gemm still gives the right answers (general path) for the declined ones
    want = ref.amx_order(z, b)
    assert np.array_equal(bits(dk.gemm(z, b)), want)
    f8 = np.ascontiguousarray(f[:8, :8])
    got = dk.gemm(f[:8, :8], b)
    assert np.array_equal(bits(got), ref.amx_order(f32_to_bf16_codes(f8), b))


@pytest.mark.parametrize("k", [1, 2, 7, 64, 4096, 2 ** 20])
def test_unit_scale_shortcut_agrees_with_the_scaling_rule(k):
    """Wherever the glue's shortcut says "unit scaling", gemm.py's _scale_exps (the general
    rule, SPEC section 5) gives (0, 0); and it says so for ordinary operands."""
    mags = sorted({0, 1, 0x7F, 0x80, 0x81, 0x7F7F} | set(range(0x80, 0x7F80, 0x7E3)))
    hits = 0
    for lo_a, hi_a, lo_b, hi_b in itertools.product(mags, repeat=4):
        if (hi_a and lo_a > hi_a) or (hi_b and lo_b > hi_b):
            continue
        if _gemm.scale_is_unit_py(lo_a, hi_a, lo_b, hi_b, k):
            hits += 1
            ra, rb = G._range_of(lo_a, hi_a), G._range_of(lo_b, hi_b)
            assert G._scale_exps(ra, rb, True, True, k) == (0, 0), (lo_a, hi_a, lo_b, hi_b)
    assert hits > 100
    one = 0x3F80   # 1.0
    assert _gemm.scale_is_unit_py(one, one, one, one, k)


def test_fast_path_plans_follow_their_arguments():
    """The fast path's plan cache never returns a plan of another shape or machine."""
    rng = np.random.default_rng(8)
    G.clear_plan_cache()
    chip, tile = dk.D1Chip(), dk.TrainingTile()
    for (m, n, k) in [(16, 16, 16), (16, 8, 16), (8, 16, 16), (16, 16, 8)] * 2:
        a, b = bf16_codes(rng, (m, k)), bf16_codes(rng, (k, n))
        for mach in (None, chip, tile, dk.D1Chip(node=dk.D1Node(clock_hz=1e9))):
            _, p = dk.gemm(a, b, return_plan=True, machine=mach)
            want = dk.plan_gemm(m, n, k, a_format=BF16, b_format=BF16, machine=mach)
            assert p == want and (p.m, p.n, p.k) == (m, n, k)
            assert p.machine == (dk.D1Chip() if mach is None else mach)


def _spy(monkeypatch, taken):
    """Record in `taken` whether each gemm_small call took the product (True) or declined."""
    real = G._gemm.gemm_small

    def spy(*a, **k):
        r = real(*a, **k)
        taken.append(r is not None)
        return r
    monkeypatch.setattr(G._gemm, "gemm_small", spy)


def _general_path(monkeypatch):
    """dk.gemm with the fast path switched off (its general path, checked elsewhere against
    the exact references)."""
    monkeypatch.setattr(G._gemm, "gemm_small", lambda *a, **k: None)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("order", ["amx", "vdpbf16ps"])
def test_fast_path_cfloat8_and_addend_agree_with_the_general_path(tier, order, monkeypatch):
    """Two CFloat8 code operands (the formats' scaling, tables) and a float32 addend with
    beta 1 take the fast path; their bits are the general path's, for every broadcast form
    of the addend, strided and transposed codes, and formats whose scaling is not 1."""
    rng = np.random.default_rng(13)
    f143, f152, f143b = dk.cfloat8_143(7), dk.cfloat8_152(15), dk.cfloat8_143(40)
    cases = []
    for (m, n, k), (fa, fb) in itertools.product(
            [(1, 1, 1), (16, 16, 16), (3, 7, 33), (5, 40, 64), (33, 20, 9)],
            [(f143, f143), (f143, f152), (f152, f143b), (f143b, f143b)]):
        a = dk.quantize(rng.standard_normal((m, k)).astype(np.float32) * 8, fa)
        b = dk.quantize(rng.standard_normal((k, n)).astype(np.float32), fb)
        cases.append((a, b, fa, fb))
    addends = lambda m, n: [None, rng.standard_normal(n).astype(np.float32),  # noqa: E731
                            rng.standard_normal((1, n)).astype(np.float32),
                            rng.standard_normal((m, 1)).astype(np.float32),
                            rng.standard_normal((m, n)).astype(np.float32),
                            np.array(np.float32(rng.standard_normal())),   # 0-d
                            rng.standard_normal((m, 2 * n)).astype(np.float32)[:, ::2]]
    taken: list = []
    with _config.use_isa(tier):
        isa = _config.isa()
        for a, b, fa, fb in cases:
            m, k, n = a.shape[0], a.shape[1], b.shape[1]
            ta, tb, sc = G._cf8_small_scaling(fa, fb, k)
            for c in addends(m, n):
                assert _gemm.gemm_small(a, _gemm.KIND_U8, b, _gemm.KIND_U8, None, isa, 0, 1,
                                        G._ORDER_CODE[order], c, ta, tb, sc) is not None
                with monkeypatch.context() as mp:
                    _spy(mp, taken)
                    fast = [dk.gemm(x, b, a_format=fa, b_format=fb, c=c, order=order)
                            for x in (a, np.asfortranarray(a))]
                assert taken[-2:] == [True, True]
                with monkeypatch.context() as mp:
                    _general_path(mp)
                    slow = dk.gemm(a, b, a_format=fa, b_format=fb, c=c, order=order)
                for f in fast:
                    assert np.array_equal(bits(f), bits(slow)), (fa, fb, a.shape, b.shape)
        # BF16 codes and float32 operands with an addend
        a, bf = bf16_codes(rng, (9, 20)), rng.standard_normal((20, 12)).astype(np.float32)
        for c in addends(9, 12):
            assert _gemm.gemm_small(a, _gemm.KIND_U16, bf, _gemm.KIND_F32, None, isa, 0, 1,
                                    G._ORDER_CODE[order], c) is not None
            got = dk.gemm(a, bf, c=c, order=order)
            with monkeypatch.context() as mp:
                _general_path(mp)
                assert np.array_equal(bits(got), bits(dk.gemm(a, bf, c=c, order=order)))


def test_fast_path_addend_declines_and_beta():
    """An addend the fast path does not take (another dtype, 3-D, a shape that does not
    broadcast, overlapping out, beta other than 1) goes to the general path, same answer."""
    rng = np.random.default_rng(17)
    isa = _config.isa()
    a, b = bf16_codes(rng, (8, 8)), bf16_codes(rng, (8, 8))
    p = dk.gemm(a, b)

    def small(c, out=None):
        return _gemm.gemm_small(a, 0, b, 0, out, isa, 0, 1, _gemm.ORDER_AMX, c)

    assert small(np.ones((1, 8, 8), np.float32)) is None                # 3-D
    assert small(np.ones(7, np.float32)) is None                        # does not broadcast
    assert small(np.ones((8, 2), np.float32)) is None
    out = rng.standard_normal((8, 8)).astype(np.float32)
    assert small(out, out) is None                                      # c overlaps out
    assert small(out[0], out) is None
    f8 = dk.cfloat8_143(7)
    ta, tb, sc = G._cf8_small_scaling(f8, f8, 8)
    a8 = dk.quantize(rng.standard_normal((8, 8)).astype(np.float32), f8)
    assert _gemm.gemm_small(a8, _gemm.KIND_U8, b, _gemm.KIND_U16, None, isa, 0, 1,
                            _gemm.ORDER_AMX, None, ta, tb, sc) is None     # mixed kinds
    assert _gemm.gemm_small(a8, _gemm.KIND_U8, a8, _gemm.KIND_U8, None, isa, 0, 1,
                            _gemm.ORDER_AMX) is None                     # no tables
    # dk.gemm: the same answers as the float32 add of NumPy
    want = out.copy()
    want = p + want
    assert np.array_equal(bits(dk.gemm(a, b, c=out, out=out)), bits(want))
    c64 = rng.standard_normal(8)
    assert np.array_equal(bits(dk.gemm(a, b, c=c64)), bits(p + c64.astype(np.float32)))
    c = rng.standard_normal(8).astype(np.float32)
    assert np.array_equal(bits(dk.gemm(a, b, c=c, beta=1)), bits(p + c))
    assert np.array_equal(bits(dk.gemm(a, b, c=c, beta=0.5)), bits(p + np.float32(0.5) * c))
    assert np.array_equal(bits(dk.gemm(a, b, c=c, beta=0)), bits(p))
    with pytest.raises(ValueError, match="c: beta"):
        dk.gemm(a, b, beta=1.0)


def test_fast_path_cfloat8_plans_are_the_formats_plans():
    """return_plan on the fast path plans the call's own formats (CFloat8 moves fewer bytes
    than BF16: another plan), as the general path does."""
    rng = np.random.default_rng(19)
    f8, g8 = dk.cfloat8_143(7), dk.cfloat8_152(15)
    a = dk.quantize(rng.standard_normal((16, 16)).astype(np.float32), f8)
    b = dk.quantize(rng.standard_normal((16, 8)).astype(np.float32), g8)
    for bf, bb in ((f8, a), (g8, b)):
        _, plan = dk.gemm(a, bb, a_format=f8, b_format=bf, return_plan=True)
        assert plan == dk.plan_gemm(16, bb.shape[1], 16, a_format=f8, b_format=bf)
        _, plan = dk.gemm(a, bb, a_format=f8, b_format=bf, return_plan=True,
                          machine=dk.TrainingTile())
        assert plan == dk.plan_gemm(16, bb.shape[1], 16, a_format=f8, b_format=bf,
                                    machine=dk.TrainingTile())
    assert dk.gemm(a, a, a_format=f8, return_plan=True)[1].a_format == f8
