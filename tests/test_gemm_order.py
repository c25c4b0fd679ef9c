"""The two GEMM accumulation orders (issue 10): ``order="amx"`` (the default) bit for bit
against an exact reference written from its description (tests/amx_order_ref.py, no code
shared with the kernels), on every tier, kernel, thread count and blocking; and what both
orders share: identical bits everywhere, the SPEC section 5 bound, no CFloat8 product
flushed.

The kernel's own arithmetic (DAZ, FTZ, overflow) is reached through the Cython glue with
scale 1 (``_gemm.gemm``): :func:`dojo_kernels.gemm` scales the operands by powers of two so
that, in range, nothing is flushed; that scaled contract is checked separately against the
reference without DAZ/FTZ (``flush=False``).
"""
from __future__ import annotations

import importlib
import itertools
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amx_order_ref as R
import dojo_kernels as dk
from dojo_kernels import BF16, _config, _gemm, cfloat8_143, cfloat8_152
from test_gemm import (FORMATS, LAYOUTS, bf16_codes, cf8_codes, check_bound, codes_for, decode,
                       gamma, lay, no_flush_expected, tiny_mix_bf16, windows)

G = importlib.import_module("dojo_kernels.gemm")
ORDERS = ("amx", "vdpbf16ps")
ORDER_CODE = {"amx": _gemm.ORDER_AMX, "vdpbf16ps": _gemm.ORDER_VDPBF16PS}
# .ci/run repeats the suite per forced lower tier with DOJO_TEST_QUICK=1: that tier only.
TIERS = ([dk.get_isa()] if os.environ.get("DOJO_TEST_QUICK") == "1"
         else list(_config.supported_isas()))
NO_TABLE = np.zeros(256, np.uint16)


def variants():
    """(tier, avx512 kernel index) pairs: both avx512bf16 kernel selections."""
    out = []
    for t in TIERS:
        idx = _config.ISA_NAMES.index(t)
        out += [(t, 0), (t, 1)] if idx >= 2 else [(t, 0)]
    return out


VARIANTS = variants()


def glue(a, b, order="amx", tier=None, kernel=0, threads=1, scale=1.0):
    """The kernel's own arithmetic: BF16 codes straight to the C driver, scale 1."""
    a3 = a if a.ndim == 3 else a[None]
    b3 = b if b.ndim == 3 else b[None]
    out = np.full((a3.shape[0], a3.shape[1], b3.shape[2]), np.nan, np.float32)
    isa = _config.ISA_NAMES.index(tier if tier is not None else dk.get_isa())
    rc = _gemm.gemm(a3, b3, NO_TABLE, NO_TABLE, scale, out, isa, kernel, threads,
                    ORDER_CODE[order])
    assert rc == 0
    return out if a.ndim == 3 else out[0]


def bits(x):
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def assert_bits(got, want, what=""):
    got = bits(got)
    if not np.array_equal(got, want):
        i = tuple(np.argwhere(got != want)[0])
        raise AssertionError(f"{what}: at {i} got {got[i]:#010x}, reference {want[i]:#010x} "
                             f"({np.count_nonzero(got != want)} of {got.size} differ)")


def code(sign, exp, man=0):
    """BF16 code of (-1)**sign * 1.man * 2**exp (exp unbiased, -126..127)."""
    return np.uint16((sign << 15) | ((exp + 127) << 7) | man)


def mixed_codes(rng, shape, p_tiny=0.2, p_huge=0.1, p_special=0.06, mid=(-8, 8),
                tiny=(-70, -56), huge=(56, 64)):
    """BF16 codes: moderate values, values whose products straddle 2**-126 (the FTZ region),
    values whose products reach 2**128 (overflow), and specials (+-0, +-Inf, NaN, subnormals)."""
    c = bf16_codes(rng, shape, *mid)
    pick = rng.random(shape)
    c = np.where(pick < p_tiny, bf16_codes(rng, shape, *tiny), c)
    c = np.where((pick >= p_tiny) & (pick < p_tiny + p_huge), bf16_codes(rng, shape, *huge), c)
    specials = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0001,
                         0x807F, 0x0040], np.uint16)
    sp = specials[rng.integers(0, len(specials), shape)]
    lo = p_tiny + p_huge
    c = np.where((pick >= lo) & (pick < lo + p_special), sp, c)
    return c.astype(np.uint16)


# ---- the order itself, on every tier: the glue with scale 1 ---------------------------

K_EDGES = sorted(set(range(1, 101)))


@pytest.fixture(scope="module")
def k_sweep_cases():
    """k = 1..100 (every block edge 31/32/33, 63/64/65, 95/96/97), mixed values; the
    reference computed once for all tiers."""
    rng = np.random.default_rng(1010)
    cases = []
    for k in K_EDGES:
        a = mixed_codes(rng, (2, k))
        b = mixed_codes(rng, (k, 3))
        cases.append((a, b, R.amx_order(a, b)))
    return cases


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-k{v[1]}")
def test_amx_order_k_sweep_every_tier(variant, k_sweep_cases):
    tier, kern = variant
    for a, b, want in k_sweep_cases:
        assert_bits(glue(a, b, "amx", tier, kern), want, f"{tier} k={a.shape[1]}")


def _cancellation(rng, k):
    """A = 1; B's odd elements are the negated even ones, perturbed: E and O cancel."""
    a = np.full((3, k), code(0, 0), np.uint16)
    a[1] = bf16_codes(rng, (k,), -2, 2)
    a[2, 1::2] = a[1, 0::2][: len(a[2, 1::2])]
    a[2, 0::2] = a[1, 0::2]
    b = bf16_codes(rng, (k, 4), -12, 12)
    kk = (k // 2) * 2
    b[1:kk:2] = b[0:kk:2] ^ np.uint16(0x8000)                 # exact negation
    b[1:kk:2, 1] ^= rng.integers(0, 2, kk // 2).astype(np.uint16)  # last-bit perturbation
    b[1:kk:2, 2] = bf16_codes(rng, (kk // 2,), -12, 12)
    return a, b


def _c_dominates(rng, k):
    """Block 0 holds products near 2**30 (C large), later blocks products near 2**-6, some
    cancelling C; C + T rounds away most of T."""
    a = bf16_codes(rng, (4, k), -3, 3)
    b = bf16_codes(rng, (k, 5), -5, 0)
    b[:32] = bf16_codes(rng, (min(32, k), 5), 27, 30)
    if k > 64:
        b[64:96] = b[:32] ^ np.uint16(0x8000)                # cancels block 0 exactly
    return a, b


def _ties(rng, k):
    """Values whose sums often land exactly halfway between two FP32 numbers."""
    vals = np.array([code(0, 0), code(1, 0), code(0, 1), code(0, -23), code(1, -23),
                     code(0, -24), code(1, -24), code(0, -25), code(0, -24, 64), code(1, -22),
                     code(0, 0, 1), code(1, -1, 1)], np.uint16)
    a = vals[rng.integers(0, len(vals), (4, k))]
    b = vals[rng.integers(0, len(vals), (k, 4))]
    a[0] = code(0, 0)
    return a, b


def _ftz(rng, k):
    """Products around 2**-126 (flushed or not, rounding up to 2**-126 included), signs
    mixed so partial sums cross the boundary; subnormal BF16 inputs (DAZ)."""
    a = bf16_codes(rng, (4, k), -66, -60)
    b = bf16_codes(rng, (k, 5), -66, -60)
    a[0] = np.where(rng.random(k) < 0.5, code(0, -63), code(1, -76, 64))
    b[:, 0] = np.where(rng.random(k) < 0.5, code(0, -63), code(0, -75))
    sub = (rng.integers(0, 2, (k, 5)) << 15 | rng.integers(1, 128, (k, 5))).astype(np.uint16)
    b = np.where(rng.random((k, 5)) < 0.1, sub, b)
    return a, b


def _overflow(rng, k):
    """Products near 2**127..2**129: E, O, T or C overflow to Inf, Inf - Inf gives NaN,
    and a product above FP32 with a cancelling accumulator stays finite (fused)."""
    a = bf16_codes(rng, (4, k), 60, 64)
    b = bf16_codes(rng, (k, 5), 60, 64)
    a[0] = code(0, 64)
    b[:, 0] = np.where(np.arange(k) % 4 == 0, code(1, 63), code(0, 64))
    return a, b


def _specials(rng, k):
    return mixed_codes(rng, (4, k), p_special=0.3), mixed_codes(rng, (k, 5), p_special=0.3)


ADVERSARIAL = {"cancellation": _cancellation, "c_dominates": _c_dominates, "ties": _ties,
               "ftz": _ftz, "overflow": _overflow, "specials": _specials}


@pytest.fixture(scope="module")
def adversarial_cases():
    rng = np.random.default_rng(77)
    cases = []
    for name, make in ADVERSARIAL.items():
        for k in (1, 7, 31, 32, 33, 64, 97, 130):
            a, b = make(rng, k)
            cases.append((name, a, b, R.amx_order(a, b), R.vdpbf16ps_order(a, b)))
    return cases


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-k{v[1]}")
def test_adversarial_both_orders_every_tier(variant, adversarial_cases):
    """Cancellation between E and O, C much larger than the products, ties, the FTZ
    region, overflow, NaN/Inf/signed zeros: both orders against the reference."""
    tier, kern = variant
    for name, a, b, want_amx, want_vdp in adversarial_cases:
        what = f"{name} {tier} k={a.shape[1]}"
        assert_bits(glue(a, b, "amx", tier, kern), want_amx, "amx " + what)
        assert_bits(glue(a, b, "vdpbf16ps", tier, kern), want_vdp, "vdpbf16ps " + what)


def test_adversarial_cases_reach_their_regions(adversarial_cases):
    """The generators do what they say: the references hold flushed zeros, infinities,
    NaNs, -0 and results that differ between the two orders."""
    allbits = np.concatenate([w.ravel() for _, _, _, w, _ in adversarial_cases])
    assert np.any(allbits == 0x7FC00000) and np.any(allbits == 0x7F800000)
    assert np.any(allbits == 0xFF800000) and np.any(allbits == 0x80000000)
    differ = sum(int(np.count_nonzero(wa != wv)) for _, _, _, wa, wv in adversarial_cases)
    assert differ > 50


def test_signed_zero_and_the_padded_block():
    """A C of -0 survives whole blocks of -0 (E = O = -0 from flushed products), while the
    padded steps of a partial last block turn it into +0: fma(+0, +0, -0) = +0."""
    neg_tiny = (code(1, -80), code(0, -80))            # product -2**-160: flushed to -0
    for k, want in ((96, 0x80000000), (95, 0x00000000), (94, 0x00000000), (65, 0x00000000),
                    (64, 0x80000000)):
        a = np.zeros((1, k), np.uint16)
        b = np.zeros((k, 1), np.uint16)
        a[0, 0], b[0, 0] = code(0, -63), code(0, -63)          # block 0: C = 2**-126
        a[0, 32], b[32, 0] = code(1, -63), code(0, -63)        # block 1: T = -(2**-126
        a[0, 34], b[34, 0] = code(1, -70), code(0, -70)        #   + 2**-140): C + T -> -0
        for t in range(k):
            if a[0, t] == 0 and (t >= 64 or t in (1, 33, 35)):
                a[0, t], b[t, 0] = neg_tiny
        ref = R.amx_order(a, b)
        assert ref[0, 0] == want, (k, hex(ref[0, 0]))      # the reference agrees with us
        for tier in TIERS:
            kerns = (0, 1) if _config.ISA_NAMES.index(tier) >= 2 else (0,)
            for kern in kerns:
                assert_bits(glue(a, b, "amx", tier, kern), ref, f"{tier} k={k}")


# ---- both orders: identical bits across tiers, kernels, threads and blockings ---------

def _blocking_shapes(tier):
    """Shapes crossing the tier's KC (256..2048), MC (48..256) and NC (512..4096) blocks, with
    edge tiles in m and n and a k that ends in a partial 32-block and an odd element."""
    if tier == "generic":
        return [(45, 83, 533), (130, 600, 97)]
    if tier == "avx2":
        return [(45, 83, 533), (100, 2100, 289)]
    if tier == "amx":  # the tile kernel's KC (512, or 2048 past 256 KiB of C an item: the
        # one-thread run of (256, 1100, 2101)), MC 256 and NC 4096 too
        return [(45, 83, 1063), (100, 2100, 545), (37, 41, 4177), (300, 35, 97), (33, 4200, 45),
                (256, 1100, 2101)]
    # avx512bf16: the amx order's MC is 252 rows (two A blocks at one thread from m = 253);
    # the vdpbf16ps order's KC is 2048 (C stored and reloaded between k blocks) and MC 72
    return [(45, 83, 1063), (100, 2100, 545), (260, 83, 1063), (45, 83, 2101)]


@pytest.mark.parametrize("order", ORDERS)
def test_identical_bits_across_tiers_kernels_threads(order):
    rng = np.random.default_rng(3)
    m, n, k = 37, 70, 1063
    a = mixed_codes(rng, (m, k))
    b = mixed_codes(rng, (k, n))
    ref = glue(a, b, order, "generic")
    saved = dk.get_num_threads()
    try:
        dk.set_num_threads(1)
        with _config.use_isa("generic"):
            ref_scaled = dk.gemm(a, b, order=order)    # gemm() scales; the glue does not
        for th in (1, 2, 3):
            dk.set_num_threads(th)
            for tier, kern in VARIANTS:
                what = f"{order} {tier} kernel {kern} threads {th}"
                assert_bits(glue(a, b, order, tier, kern, threads=th), bits(ref), what)
                with _config.use_isa(tier), G.use_kernel(G.KERNELS[kern]):
                    assert_bits(dk.gemm(a, b, order=order), bits(ref_scaled), "gemm() " + what)
    finally:
        dk.set_num_threads(saved)


def test_every_kernel_across_k_blocks():
    """Each kernel selection of each tier (forced, not the one the timing probe picks) on a k
    that crosses every tier's KC (2048 at most here): C stored and reloaded between k
    blocks, against the generic tier, both orders, 1 and 2 threads."""
    rng = np.random.default_rng(6)
    m, n, k = 45, 83, 2101
    a = tiny_mix_bf16(rng, (m, k))
    b = tiny_mix_bf16(rng, (k, n))
    for order in ORDERS:
        ref = glue(a, b, order, "generic")
        for tier, kern in VARIANTS:
            for th in (1, 2):
                assert_bits(glue(a, b, order, tier, kern, threads=th), bits(ref),
                            f"{order} {tier} kernel {kern} threads {th} k={k}")


@pytest.mark.parametrize("order", ORDERS)
def test_identical_bits_across_blockings_and_threads(order):
    """Each tier's blocks crossed in every direction; 1, 2 and 4 threads; against the
    generic tier (the amx order: also the reference on a sample of outputs)."""
    rng = np.random.default_rng(5)
    saved = dk.get_num_threads()
    try:
        for tier in TIERS:
            for m, n, k in _blocking_shapes(tier):
                a = tiny_mix_bf16(rng, (m, k))
                b = tiny_mix_bf16(rng, (k, n))
                outs = []
                for th in (1, 2, 4):
                    dk.set_num_threads(th)
                    with _config.use_isa(tier):
                        outs.append(dk.gemm(a, b, order=order))
                for o in outs[1:]:
                    assert_bits(o, bits(outs[0]), f"{order} {tier} {(m, n, k)} threads")
                if tier != "generic":
                    dk.set_num_threads(2)
                    with _config.use_isa("generic"):
                        g = dk.gemm(a, b, order=order)
                    assert_bits(outs[0], bits(g), f"{order} {tier} {(m, n, k)} vs generic")
                if order == "amx":
                    rows, cols = [0, m // 2, m - 1], [0, n - 1]
                    got = glue(a[rows], b[:, cols], "amx", tier)
                    assert_bits(got, R.amx_order(a[rows], b[:, cols]), f"{tier} {(m, n, k)}")
    finally:
        dk.set_num_threads(saved)


def test_batched_strided_and_transposed_operands_amx():
    rng = np.random.default_rng(8)
    a = mixed_codes(rng, (3, 5, 70), p_huge=0, p_special=0)
    b = mixed_codes(rng, (3, 70, 6), p_huge=0, p_special=0)
    for tier in TIERS:
        with _config.use_isa(tier):
            got = dk.gemm(np.asfortranarray(a.transpose(0, 2, 1)).transpose(0, 2, 1), b[:, ::1, :])
            for z in range(3):
                assert_bits(got[z], bits(dk.gemm(a[z], b[z])), tier)
                assert_bits(glue(a[z], b[z], "amx", tier), R.amx_order(a[z], b[z]), tier)


@pytest.mark.parametrize("fmt", ["bf16", "cf8"])
def test_transposed_operands_at_the_packers_edges(fmt):
    """The layouts a torch Linear passes, which the AVX-512 tiers pack with transposes: B
    with k contiguous (W^T) and A with rows contiguous (dY^T). Shapes around 16 and 32 rows
    and columns, odd k, partial blocks of 32, k across the amx tier's KC; every tier and
    both orders, 1 and 2 threads, bit for bit against the same codes in C order (and BF16 in
    the amx order against the reference on sampled outputs)."""
    rng = np.random.default_rng(21)
    fa, fb = (BF16, BF16) if fmt == "bf16" else (cfloat8_143(7), cfloat8_152(15))
    saved = dk.get_num_threads()
    try:
        for m, n, k in [(1, 16, 1), (15, 17, 31), (16, 32, 32), (17, 31, 33), (33, 48, 63),
                        (70, 65, 100), (34, 40, 2101)]:
            if fmt == "bf16":
                # few specials: with the default share nearly every output is NaN
                a = mixed_codes(rng, (m, k), p_huge=0.01, p_special=0.002)
                b = mixed_codes(rng, (k, n), p_huge=0.01, p_special=0.002)
            else:
                a, b = cf8_codes(rng, (m, k)), cf8_codes(rng, (k, n))
            at = np.asfortranarray(a)                  # rows contiguous
            bt = np.asfortranarray(b)                  # k contiguous
            for order in ORDERS:
                with _config.use_isa("generic"):
                    want = bits(dk.gemm(a, b, a_format=fa, b_format=fb, order=order))
                for tier in TIERS:
                    for th in (1, 2):
                        dk.set_num_threads(th)
                        with _config.use_isa(tier):
                            for what, x, y in (("A", at, b), ("B", a, bt), ("both", at, bt)):
                                got = dk.gemm(x, y, a_format=fa, b_format=fb, order=order)
                                assert_bits(got, want, f"{fmt} {order} {tier} t{th} "
                                            f"{(m, n, k)} transposed {what}")
                if fmt == "bf16" and order == "amx":
                    rows, cols = [0, m // 2, m - 1], [0, n // 2, n - 1]
                    for tier in TIERS:
                        got = glue(np.asfortranarray(a[rows]), np.asfortranarray(b[:, cols]),
                                   "amx", tier)
                        assert_bits(got, R.amx_order(a[rows], b[:, cols]), f"{tier} {(m, n, k)}")
    finally:
        dk.set_num_threads(saved)


# ---- the scaled contract of gemm(): SPEC section 5, both orders ------------------------

@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 31), (4, 3, 33), (2, 4, 70), (2, 3, 0)])
def test_gemm_scaled_no_daz_no_ftz(order, shape):
    """Subnormal BF16 inputs and products below 2**-126: the SPEC section 5 scaling keeps
    them all, so gemm() gives the order evaluated with no DAZ and no FTZ, then rounded to
    FP32 once (reference flush=False), on every tier."""
    m, n, k = shape
    rng = np.random.default_rng(sum(shape) + 40)
    a = tiny_mix_bf16(rng, (m, k))
    b = bf16_codes(rng, (k, n), -30, 30)
    if k:
        a[0, :] = bf16_codes(rng, (k,), -75, -62)   # a row whose products all underflow
    A, B = decode(a, BF16), decode(b, BF16)
    assert no_flush_expected(A, BF16, B, BF16, k)
    want = R.ORDERS[order](a, b, flush=False)
    for tier, kern in VARIANTS:
        with _config.use_isa(tier), G.use_kernel(G.KERNELS[kern]):
            assert_bits(dk.gemm(a, b, order=order), want, f"{order} {tier} kernel {kern}")


def _as_bf16_codes(vals):
    """Exact BF16 codes of float64 values that are BF16 values (decoded CFloat8)."""
    u = np.asarray(vals, np.float64).astype(np.float32).view(np.uint32)
    assert not np.any(u & 0xFFFF)
    return (u >> 16).astype(np.uint16)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("fa,fb", [(cfloat8_143(50), cfloat8_152(40)),
                                   (cfloat8_143(63), cfloat8_152(63)),
                                   (cfloat8_152(0), cfloat8_143(60)),
                                   (BF16, cfloat8_143(63))])
def test_cfloat8_large_bias_products_kept(order, fa, fb):
    """Large-bias CFloat8: products far below 2**-126, none flushed (SPEC section 5): the
    result is the order without DAZ/FTZ, bit for bit, within gamma(K) |A||B|."""
    rng = np.random.default_rng(fa.bias + 3 * fb.bias)
    k = 45
    a = codes_for(rng, fa, (6, k), (-70, -60))
    b = cf8_codes(rng, (k, 7))
    A, B = decode(a, fa), decode(b, fb)
    finite = np.isfinite(A).all(axis=1)
    a, A = a[finite], A[finite]
    b = b[:, np.isfinite(B).all(axis=0)]
    B = decode(b, fb)
    assert a.shape[0] and b.shape[1]
    want = R.ORDERS[order](_as_bf16_codes(A), _as_bf16_codes(B), flush=False)
    assert np.any(want != 0)
    for tier, kern in VARIANTS:
        with _config.use_isa(tier), G.use_kernel(G.KERNELS[kern]):
            c = dk.gemm(a, b, a_format=fa, b_format=fb, order=order)
        assert_bits(c, want, f"{order} {fa} {fb} {tier}")
        err = np.abs(c.astype(np.float64) - A @ B)
        assert np.all(err <= gamma(k) * (np.abs(A) @ np.abs(B)) + 2.0 ** -150)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 32, 33, 48, 49, 64, 65])
def test_few_rows_against_the_reference_every_tier(m):
    """m <= 8 (GEMV, skinny m): the avx512bf16 tier reads B unpacked (gemm_smallm.c,
    register blocks of 1 x 128, 2 x 64 and 4 x 32), the amx tier up to 4 rows (then its
    tiles, on a partial row tile): against the exact order on mixed data (FTZ
    region, overflow, NaN, signed zeros, subnormals), n across the register blocks' and the
    masks' edges, k ending in a partial block and an odd element; the kernel's sub-blocks
    of 4 pairs (k = 17: 4 + 4 + 1 pairs, the last one odd) and, at 5-8 rows, two panels of
    the buffer that holds E and O between them (512 columns; 1,100 columns for the
    vdpbf16ps order's, whose buffer holds only C). The same B with unit row
    stride (B = W.T, W row-major: torch's linear layout) takes the transposing kernel
    (groups of 16 columns, partial here at n = 1, 31, 47, 70, 130, 530), up to
    _gemm.SMALLM_BT_MAX (64) rows, 8 at a time over each block of B (9-64
    here: a last row block of 1, 5 and 1 rows, then 8; 48 and 64 the limits of the two
    orders, 49 and 65 past them). The vdpbf16ps
    order's kernels (the same reads of B, a chain of VDPBF16PS per output) in both layouts:
    only the order's pairs run, k = 1, 17 and 95 ending inside a block or sub-block, k odd."""
    rng = np.random.default_rng(100 + m)
    shapes = [(1, 95), (31, 33), (130, 64), (47, 1), (70, 17)]
    if m > 8:                               # the W.T kernel's rows (the reference is slow)
        shapes = [(31, 33), (47, 1), (70, 17)]
        if m <= 33:              # a whole group of 32 rows of W and a whole k block: the
            shapes.append((33, 40))  # amx tier's tiles load them where they lie
    elif m >= 5:
        shapes.append((530, 17))
        shapes.append((1100, 9))            # several panels of the vdpbf16ps order's buffer
    for n, k in shapes:
        a = mixed_codes(rng, (m, k))
        b = mixed_codes(rng, (k, n))
        bt = np.ascontiguousarray(b.T).T          # W.T: k contiguous in each column
        assert bt.strides[0] == 2 or 1 in (n, k)
        want = R.amx_order(a, b)
        want_v = R.ORDERS["vdpbf16ps"](a, b)
        for tier in TIERS:
            assert_bits(glue(a, b, "amx", tier), want, f"m={m} n={n} k={k} {tier}")
            assert_bits(glue(a, bt, "amx", tier), want, f"B = W.T m={m} n={n} k={k} {tier}")
            assert_bits(glue(a, b, "vdpbf16ps", tier), want_v,
                        f"vdpbf16ps m={m} n={n} k={k} {tier}")
            assert_bits(glue(a, bt, "vdpbf16ps", tier), want_v,
                        f"vdpbf16ps B = W.T m={m} n={n} k={k} {tier}")


def test_few_rows_w_t_beyond_8_rows_only_while_a_fits():
    """Beyond 8 rows the W.T kernels copy A (m x k words a thread): they are taken only while
    the copy fits DK_GEMM_SMALLM_BT_AWORDS (2^20 words), else the packed path runs (its
    buffers are bounded). 16 rows: k = 65,536 fits, 65,537 (one block more) does not; 8 rows
    always take the kernel, but on the amx tier in the amx order, where the tile kernel's
    copy (A^T in pairs, 16 x kpad words at any m from 5 to 32) has the same bound: 5 rows
    and k = 100,000 take the packed path there (1.6M words) and the kernel elsewhere. The path is what range_paths says (A measured only when packed),
    and the bits are the generic tier's either way."""
    rng = np.random.default_rng(9)
    n = 20
    for m, k, few in ((16, 65536, True), (16, 65537, False), (8, 65537 * 2, True),
                      (5, 100000, True)):
        a = bf16_codes(rng, (m, k), -2, 2)
        w = bf16_codes(rng, (n, k), -2, 2)
        for order in ORDERS:
            with _config.use_isa("generic"):
                want = dk.gemm(a, w.T, order=order)
            for tier in TIERS:
                isa = _config.ISA_NAMES.index(tier)
                if isa >= 2:
                    here = few
                    if isa == 3 and order == "amx" and m > 4:  # the tiles copy A^T in
                        kpad = -(-k // 32) * 32                 # pairs: 16 x kpad words
                        here = 16 * kpad <= 2**20
                    assert _gemm.range_paths(isa, 0, ORDER_CODE[order], m, k, 1, k) == (
                        not here, True), (m, k, order, tier)
                with _config.use_isa(tier):
                    assert_bits(dk.gemm(a, w.T, order=order), bits(want), f"{m} {k} {order} {tier}")


def _w_in_place(w, offset_codes, pad):
    """W's values in a buffer that starts offset_codes codes past a 64-byte line, row stride
    k + pad codes."""
    n, k = w.shape
    buf = np.zeros(n * (k + pad) + 64, w.dtype)
    base = (-buf.ctypes.data % 64) // w.itemsize + offset_codes
    view = buf[base:base + n * (k + pad)].reshape(n, k + pad)[:, :k]
    view[...] = w
    return view


@pytest.mark.parametrize("m", [1, 2, 4, 5, 16, 32])
def test_w_t_tiles_read_w_where_it_lies(m):
    """On the amx tier, amx order, x @ W.T with 5 to _gemm.SMALLM_BT_TILE_MAX rows loads W's
    rows as tiles where they lie (dk_gemm_smallm_bt_amxtile: C^T = W . x^T); the blocks a
    whole tile load cannot take are staged: the last rows of a column range (n = 1,100: 34
    groups of 32 and 12 rows; 5,300 below 5 rows), k's last partial block (k = 401: 12 whole
    blocks and 17 codes), every block of a CFloat8 W. W starting on a cache line, 2 and 34
    bytes past one, with row strides k, k + 8 and k + 15 (on a line and 2 bytes past);
    1 to 3 threads (m x n x k is above the driver's
    DK_GEMM_PAR_MIN = 2^21 multiply-adds, so 2 and 3 threads split the columns, in items of
    whole groups of 32); a scale of 2^-3 applied to the result. The bits are the generic
    tier's (the scalar semantics; the exact order is checked on smaller shapes above) and
    the range measured in W is NumPy's, with a unique smallest and largest magnitude planted
    in a whole block, in the partial block and in the last rows. The other tiers run the
    same cases through their W.T kernels. From _gemm.SMALLM_BT_TILE_MIN to 4 rows the tiles
    run only when every row of W starts on a 64-byte line (row stride 416 codes here,
    _gemm._path_counts()[3] counts the products on the tiles), else the FMA kernel."""
    rng = np.random.default_rng(300 + m)
    n, k = (1100 if m >= 5 else 5300), 401   # (34 or 165 groups of 32, then 12 or 20)
    assert m * n * k >= 2**21
    # specials (a few: with many, nearly every sum is NaN), and moderate values
    mixed = dict(p_tiny=0.2, p_huge=0.02, p_special=0.0005)
    for data, (a, w0) in (("mixed", (mixed_codes(rng, (m, k), **mixed),
                                     mixed_codes(rng, (n, k), **mixed))),
                          ("moderate", (bf16_codes(rng, (m, k), -4, 4),
                                        bf16_codes(rng, (n, k), -4, 4)))):
        ref = glue(a, np.ascontiguousarray(w0.T), "amx", "generic", scale=0.125)
        for off, pad in ((0, 0), (1, 0), (17, 8), (0, 15), (1, 15)):
            wt = _w_in_place(w0, off, pad).T
            lined = off == 0 and (k + pad) % 32 == 0
            for tier in TIERS:
                for th in (1, 2, 3):
                    before = _gemm._path_counts()[3]
                    assert_bits(glue(a, wt, "amx", tier, threads=th, scale=0.125), bits(ref),
                                f"{data} m={m} offset {2 * off} B, pad {pad}, {tier}, {th} "
                                "threads")
                    tiles = tier == "amx" and (m > _gemm.SMALLM_AMX_MAX or (
                        lined and m >= _gemm.SMALLM_BT_TILE_MIN))
                    assert _gemm._path_counts()[3] - before == tiles, (m, off, pad, tier)
    a3 = a[None]
    # the range of W, measured on the way
    isa = _config.ISA_NAMES.index(dk.get_isa())
    for r, c in ((3, 40), (40, 390), (n - 1, 5), (n - 10, 400)):
        w = bf16_codes(rng, (n, k), -4, 4)
        w[r, c] = code(1, -100)                        # the unique smallest magnitude
        w[n - 1 - r, k - 1 - c] = code(0, 90)          # the unique largest
        wt = _w_in_place(w, 0, 15).T                   # lined: the tiles from 2 rows
        out = np.empty((1, m, n), np.float32)
        rc, _, got_b = _gemm.gemm_ranges(a3, wt[None], NO_TABLE, NO_TABLE, 1.0, out, isa, 0, 2,
                                         ORDER_CODE["amx"])
        assert rc == 0
        if isa >= 2:                                   # the few-rows path measures B
            assert got_b == _np_range(w), (r, c, got_b)
    # a CFloat8 W: every block staged, decoded
    fb = cfloat8_152(14)
    w8 = _w_in_place(rng.integers(0, 256, (n, k), dtype=np.uint8), 3, 5)
    with _config.use_isa("generic"):
        ref8 = dk.gemm(a, np.ascontiguousarray(w8.T), b_format=fb)
    for tier in TIERS:
        with _config.use_isa(tier):
            assert_bits(dk.gemm(a, w8.T, b_format=fb), bits(ref8), f"CFloat8 W m={m} {tier}")


@pytest.mark.parametrize("order", ORDERS)
def test_few_rows_negative_zero_sums_both_layouts(order):
    """A sum that ends at -0: the last element's product (2^-70 x -2^-70) flushes to -0 and
    every other product is a zero. The vdpbf16ps order runs only its ceil(k/2) pairs (one
    padding pair more would add +0 and give +0); the amx order runs its block's padding
    pairs and T + 0 (+0 for a partial block). Both few-rows layouts, every tier, k across
    the blocks, sub-blocks and odd lengths, against the exact order."""
    tiny, ntiny = 0x1C80, 0x9C80                  # 2^-70, -2^-70
    for k in list(range(1, 40)) + [63, 64, 65, 95, 96, 97]:
        for m in (1, 3, 6, 8, 12):
            n = 37
            a = np.zeros((m, k), np.uint16)
            b = np.zeros((k, n), np.uint16)
            a[:, k - 1] = tiny
            b[k - 1, :] = ntiny
            if k >= 2:
                b[k - 2, ::2] = 0xBF80              # -1: products -0 with A's +0
            b[:, 5] = 0
            b[:, 6] = 0x3F80
            want = R.ORDERS[order](a, b)
            if order == "vdpbf16ps":
                assert want[0, 0] == 0x80000000, k        # want: the bits
            for tier in TIERS:
                for lay, bb in (("row-major", b), ("W.T", np.asfortranarray(b))):
                    assert_bits(glue(a, bb, order, tier), want, f"{order} {lay} m={m} k={k} {tier}")


@pytest.mark.parametrize("k", [2, 33, 66, 95])
def test_few_rows_padding_never_reads_the_table(k):
    """8-bit B through a table whose entry 0 is +Inf, then -0: the padding of the last k
    block is zeros in the order, never table[0]. Code 0 never occurs in B, so every tier,
    path and layout must give the generic tier's bits (a found bug: the B = W.T kernel
    decoded its masked-out lanes as table[0] and gave NaN)."""
    rng = np.random.default_rng(5 + k)
    m, n = 3, 37
    a = mixed_codes(rng, (1, m, k), p_huge=0.0, p_special=0.0)    # finite products
    b = rng.integers(1, 256, (1, k, n), dtype=np.uint8)
    bt = np.ascontiguousarray(b.transpose(0, 2, 1)).transpose(0, 2, 1)   # W.T per item
    for first in (0x7F80, 0x8000):
        table = (np.arange(256, dtype=np.uint16) & 0x7F) | 0x3C00
        table[0] = first
        for order in ORDERS:
            outs = {}
            for tier in TIERS:
                isa = _config.ISA_NAMES.index(tier)
                for what, bb in (("B", b), ("W.T", bt)):
                    out = np.full((1, m, n), np.nan, np.float32)
                    assert _gemm.gemm(a, bb, NO_TABLE, table, 1.0, out, isa, 0, 1,
                                      ORDER_CODE[order]) == 0
                    outs[(tier, what)] = bits(out)
            want = outs[("generic", "B")] if "generic" in TIERS else outs[(TIERS[0], "B")]
            assert np.isfinite(want.view(np.float32)).all()
            for key, got in outs.items():
                assert_bits(got.view(np.float32), want,
                            f"table[0] = {first:#06x} {order} {key} k={k}")


@pytest.mark.parametrize("m", [5, 40])
def test_few_rows_threads_batches_formats_and_strides(m):
    """The few-rows path against the generic tier's packed kernels: 1-3 threads, column
    ranges over several work items, a batch with a shared B, CFloat8 operands, transposed
    A, and a B with unit row stride (B = W.T: the transposing kernels), shared by a batch,
    one per batch item, in CFloat8, and under a transposed A; both orders. At 40 rows only
    the W.T kernels take few rows (8 at a time)."""
    rng = np.random.default_rng(77 + m)
    fa, fb = cfloat8_143(9), cfloat8_152(14)
    n, k = 1300, 201
    a = tiny_mix_bf16(rng, (3, m, k))
    b = tiny_mix_bf16(rng, (k, n))
    a8 = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b8 = rng.integers(0, 256, (k, n), dtype=np.uint8)
    at = np.ascontiguousarray(a[0].T).T              # column-major A
    bs = np.asfortranarray(b)                        # columns not contiguous
    b3 = tiny_mix_bf16(rng, (3, k, n))
    b3t = np.ascontiguousarray(b3.transpose(0, 2, 1)).transpose(0, 2, 1)
    refs = {}
    with _config.use_isa("generic"):
        for order in ORDERS:
            refs[order] = (dk.gemm(a, b, order=order), dk.gemm(a, b3, order=order),
                           dk.gemm(a8, b8, a_format=fa, b_format=fb, order=order),
                           dk.gemm(a[0], b8, b_format=fb, order=order))
    saved = dk.get_num_threads()
    try:
        for th, tier, order in itertools.product((1, 2, 3), TIERS, ORDERS):
            dk.set_num_threads(th)
            ref, ref3, ref8, ref_mixed = refs[order]
            kw = dict(order=order)
            with _config.use_isa(tier):
                what = f"{tier} {order} threads {th}"
                assert_bits(dk.gemm(a, b, **kw), bits(ref), what)
                assert_bits(dk.gemm(at, b, **kw), bits(ref[0]), "transposed A " + what)
                assert_bits(dk.gemm(a[0], bs, **kw), bits(ref[0]), "strided B " + what)
                assert_bits(dk.gemm(a, bs, **kw), bits(ref), "batch, shared W.T " + what)
                assert_bits(dk.gemm(at, bs, **kw), bits(ref[0]), "transposed A, W.T " + what)
                assert_bits(dk.gemm(a, b3t, **kw), bits(ref3), "batch of W.T " + what)
                assert_bits(dk.gemm(a8, np.asfortranarray(b8), a_format=fa, b_format=fb, **kw),
                            bits(ref8), "CFloat8 W.T " + what)
                assert_bits(dk.gemm(a8, b8, a_format=fa, b_format=fb, **kw), bits(ref8),
                            "CFloat8 " + what)
                assert_bits(dk.gemm(a[0], b8, b_format=fb, **kw), bits(ref_mixed),
                            "mixed " + what)
    finally:
        dk.set_num_threads(saved)


def test_batches_of_small_products_share_the_threads():
    """A batch of products that are each one A block and one column step is shared out by
    whole products (gemm_batch_item), B packed per thread: the exact reference on a sample
    of the products (edge rows and columns, k odd and below a block, the FTZ region,
    overflow and NaN); every product equal to the same product computed alone, on every tier
    and both orders, at 1-3 threads with the pool in use; a shared 2-D B, CFloat8 operands
    and a transposed A."""
    from dojo_kernels import _cpu
    rng = np.random.default_rng(321)
    nb, m, n, k = 160, 13, 45, 37          # 160 * 13 * 45 * 37 = 3.5M multiply-adds
    a = mixed_codes(rng, (nb, m, k))
    b = mixed_codes(rng, (nb, k, n))
    for z in (0, 77, nb - 1):
        assert_bits(glue(a[z], b[z], "amx", "generic"), R.amx_order(a[z], b[z]), f"product {z}")
    at = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)
    fa, fb = cfloat8_143(9), cfloat8_152(14)
    a8 = rng.integers(0, 256, (nb, m, k), dtype=np.uint8)
    b8 = rng.integers(0, 256, (nb, k, n), dtype=np.uint8)
    saved, was = dk.get_num_threads(), dk.get_thread_guard()
    try:
        dk.set_thread_guard(False)               # the pool is used whatever the machine's load
        for tier in TIERS:
            for order in ORDERS:
                with _config.use_isa(tier):
                    dk.set_num_threads(1)
                    alone = np.stack([dk.gemm(a[z], b[z], order=order) for z in range(nb)])
                    shared = np.stack([dk.gemm(a[z], b[5], order=order) for z in range(nb)])
                    alone8 = np.stack([dk.gemm(a8[z], b8[z], a_format=fa, b_format=fb,
                                               order=order) for z in range(nb)])
                    for th in (1, 2, 3):
                        dk.set_num_threads(th)
                        what = f"{tier} {order} threads {th}"
                        before = _cpu._pool_stats()[0]
                        assert_bits(dk.gemm(a, b, order=order), bits(alone), what)
                        assert th == 1 or _cpu._pool_stats()[0] > before, what
                        assert_bits(dk.gemm(at, b, order=order), bits(alone), "A^T " + what)
                        assert_bits(dk.gemm(a, b[5], order=order), bits(shared), "shared B " + what)
                        assert_bits(dk.gemm(a8, b8, a_format=fa, b_format=fb, order=order),
                                    bits(alone8), "CFloat8 " + what)
    finally:
        dk.set_num_threads(saved)
        dk.set_thread_guard(was)


def _np_range(codes):
    """(smallest nonzero, largest finite) magnitude bits of BF16 codes, written from the
    contract of dk_gemm_bf16_range: (0x7FFF, 0) when there is none."""
    mag = (np.asarray(codes) & 0x7FFF).astype(np.int64)
    nz, fin = mag[mag != 0], mag[mag < 0x7F80]
    return (int(nz.min()) if nz.size else 0x7FFF, int(fin.max()) if fin.size else 0)


@pytest.mark.parametrize("shape", [(512, 16, 16), (3, 1, 5), (1, 600, 700), (40, 64, 64),
                                   (2, 3, 100000)])
def test_range_prepass_every_layout(shape):
    """_gemm.bf16_range (the scaling pre-pass of the operands the kernels do not measure)
    equals NumPy's (smallest nonzero, largest finite) magnitude bits on contiguous batches
    small enough to scan as one run, contiguous matrices too large for that, and strided,
    reversed, transposed and sliced views of them, with specials, at 1 and 3 threads."""
    rng = np.random.default_rng(sum(shape))
    a = mixed_codes(rng, shape)
    if a.size > 4:
        a.reshape(-1)[rng.integers(0, a.size, 3)] = [0x0001, 0x7F80, 0xFFC1]  # subnormal, Inf, NaN
    views = {"contiguous": a, "reversed": a[:, ::-1, ::-1], "transposed": a.transpose(0, 2, 1),
             "sliced": a[:, :, 1:] if shape[2] > 1 else a[:, 1:], "every other batch": a[::2]}
    for what, v in views.items():
        if v.size == 0:
            continue
        for th in (1, 3):
            assert _gemm.bf16_range(v, th) == _np_range(v), (shape, what, th)
    zeros = np.zeros(shape, np.uint16)
    assert _gemm.bf16_range(zeros, 1) == (0x7FFF, 0)


@pytest.mark.parametrize("m,n,k", [(1, 1100, 67), (5, 300, 67), (8, 40, 33), (9, 70, 67),
                                   (20, 100, 2100), (48, 70, 67), (65, 70, 2100)])
def test_kernels_measure_the_operand_ranges(m, n, k):
    """The kernels measure the range of each BF16 operand as they read it
    (_gemm.gemm_ranges): the packed path each block it has packed (the AMX row tiles and
    pair layouts hold codes; the FP32 split layouts of the AVX-512 tiers are measured from
    the codes as they are read, those of the avx2 and generic tiers not at all), the
    few-rows path B in its registers. A measured range equals NumPy's
    (smallest nonzero, largest finite magnitude bits) over the operand's codes at 1 and 3
    threads, across k blocks (k = 2100), with specials, batches (a shared B), transposed,
    reversed and column-strided operands; an 8-bit operand is never measured, A not on the
    few-rows path; the product's bits are unchanged."""
    rng = np.random.default_rng(200 + m)
    a = mixed_codes(rng, (2, m, k))
    b = mixed_codes(rng, (2, k, n))
    b[1, 5, 7] = 0x0001                          # the smallest subnormal, once
    a[0, 0, 1] = 0x0002
    at = np.ascontiguousarray(a[:, :, ::-1].transpose(0, 2, 1)).transpose(0, 2, 1)[:, :, ::-1]
    cases = [("plain", a, b), ("shared B", a, b[1:]),
             ("zero B", a[:1], np.zeros((1, k, n), np.uint16)),
             ("NaN B", a[:1], np.full((1, k, n), 0x7FC0, np.uint16)),
             ("transposed A", at, b), ("reversed k", a[:, :, ::-1], b[:, ::-1]),
             ("strided B columns", a, np.asfortranarray(b[0])[None]),
             ("CFloat8 A", rng.integers(0, 256, (1, m, k), dtype=np.uint8), b[:1])]
    table8 = np.arange(256, dtype=np.uint16) | 0x3F00

    def measured(isa, few):
        """(A, B) measured (gemm_driver.c get_cfg, ranges_a): on the AVX-512 tiers every A
        packer takes the codes' range (row tiles, pairs, and the split FP32 layout of the
        amx-order and FMA kernels, from the codes as read) and B is in pairs; the avx2 and
        generic tiers pack both operands split, unmeasured."""
        if few:
            return False, True
        return isa >= 2, isa >= 2

    for tier in TIERS:
        isa = _config.ISA_NAMES.index(tier)
        for order in ORDERS:
            for kern in ((0, 1) if isa >= 2 and order == "vdpbf16ps" else (0,)):
                for what, aa, bb in cases:
                    u8 = aa.dtype == np.uint8
                    # the few-rows kernels: B's columns unit up to 8 rows, B's rows unit up
                    # to 64; on the amx tier in the amx order up to 4 and (W's rows as
                    # tiles) 32 (the vdpbf16ps order has no tiles); in the vdpbf16ps order
                    # up to 4 and 48
                    if order == "amx" and isa == 3:
                        rm, bt = _gemm.SMALLM_AMX_MAX, _gemm.SMALLM_BT_TILE_MAX
                    elif order == "amx":
                        rm, bt = _gemm.SMALLM_MAX, _gemm.SMALLM_BT_MAX
                    else:
                        rm, bt = _gemm.SMALLM_VDP_MAX, _gemm.SMALLM_BT_VDP_MAX
                    few = isa >= 2 and ((bb.strides[-1] == 2 and m <= rm)
                                        or (bb.strides[-2] == 2 and m <= bt))
                    want_a, want_b = measured(isa, few)
                    for th in (1, 3):
                        out = np.empty((max(aa.shape[0], bb.shape[0]), m, n), np.float32)
                        rc, got_a, got_b = _gemm.gemm_ranges(
                            aa, bb, table8 if u8 else NO_TABLE, NO_TABLE, 1.0, out, isa, kern,
                            th, ORDER_CODE[order])
                        assert rc == 0
                        tag = (what, tier, order, kern, th)
                        assert got_b == (_np_range(bb) if want_b else None), tag
                        assert _gemm.range_paths(isa, kern, ORDER_CODE[order], m,
                                                 bb.strides[-1] // 2, bb.strides[-2] // 2,
                                                 k) == (want_a, want_b)
                        assert got_a == (_np_range(aa) if want_a and not u8 else None), tag
                        out2 = np.empty_like(out)
                        assert _gemm.gemm(aa, bb, table8 if u8 else NO_TABLE, NO_TABLE, 1.0,
                                          out2, isa, kern, th, ORDER_CODE[order]) == 0
                        assert_bits(out, bits(out2), f"gemm_ranges {tag}")


# positions (row, col) in a 45 x 2101 A and a 2101 x 300 B where the packers take different
# paths: the first element; A's last, partial row-tile sliver (rows 32..44) and its partial
# last block of 32 k-values; B's unpaired last k row (k odd), its last partial sliver
# (columns 288..299), a later packing unit, and the second k block (k >= 2048)
RANGE_SPOTS_A = [(0, 0), (44, 3), (10, 2100), (40, 2060), (33, 2099)]
RANGE_SPOTS_B = [(0, 0), (2100, 5), (2099, 299), (1000, 150), (2050, 260), (2100, 299)]


@pytest.mark.parametrize("which", ["A", "B"])
@pytest.mark.parametrize("m", [45, 130])
def test_kernels_measure_every_packed_region(which, m):
    """One unique smallest magnitude, then one unique largest finite one, planted among
    moderate codes at each place where the packers take a different path (SIMD slivers,
    the remainder pair of an odd k, slivers past the matrix edge, later units, the second
    k block, partial row tiles and blocks): the measured range finds it every time, on every
    tier and order that measures that operand, at 1 and 2 threads. m = 45 is one A block
    (B packed per thread); m = 130 at 2 threads is cut into several (B in the shared panel)."""
    rng = np.random.default_rng(77)
    n, k = 300, 2101
    a0 = bf16_codes(rng, (1, m, k), -4, 4)
    b0 = bf16_codes(rng, (1, k, n), -4, 4)
    spots = RANGE_SPOTS_A if which == "A" else RANGE_SPOTS_B
    for tier in TIERS:
        isa = _config.ISA_NAMES.index(tier)
        for order in ORDERS:
            for kern in ((0, 1) if isa >= 2 and order == "vdpbf16ps" else (0,)):
                want_a, want_b = _gemm.range_paths(isa, kern, ORDER_CODE[order], m, 1)
                if not (want_a if which == "A" else want_b):
                    continue
                for (r, c) in spots:
                    for code in (0x0003, 0x7F7E):      # a subnormal; near the largest finite
                        a, b = a0.copy(), b0.copy()
                        (a if which == "A" else b)[0, r, c] = code | 0x8000
                        want = _np_range(a if which == "A" else b)
                        assert want[0 if code == 0x0003 else 1] == code   # unique extreme
                        for th in (1, 2):
                            out = np.empty((1, m, n), np.float32)
                            rc, got_a, got_b = _gemm.gemm_ranges(
                                a, b, NO_TABLE, NO_TABLE, 1.0, out, isa, kern, th,
                                ORDER_CODE[order])
                            assert rc == 0
                            got = got_a if which == "A" else got_b
                            assert got == want, (tier, order, kern, th, (r, c), hex(code))


@pytest.mark.parametrize("m", [3, 20])
@pytest.mark.parametrize("layout", ["row-major B", "B = W.T"])
@pytest.mark.parametrize("case", ["ordinary", "subnormal_b", "huge_b", "tiny_a_huge_b",
                                  "empty_b"])
def test_scaling_checked_after_the_product(case, m, layout, monkeypatch):
    """gemm() computes with the scaling operands of ordinary values get and checks it
    against the ranges the kernels measured, computing again when the data ask for another
    one (SPEC section 5): the bits equal those of the scan-first path (zero rows added to A
    leave its range as it is; the reference is computed with the measuring switched off),
    on every tier, and where nothing can be flushed and the unscaled order stays finite,
    the exact order without DAZ/FTZ. Ordinary operands are read once. Both layouts of B: a
    W.T (torch's linear layout) takes the W.T few-rows kernels (on the amx tier the tile
    kernel that loads W's rows where they lie, at 20 rows)."""
    rng = np.random.default_rng(sum(map(ord, case)) + m)
    k, n = 90, 260
    a = bf16_codes(rng, (m, k), -6, 6)
    b = bf16_codes(rng, (k, n), -6, 6)
    if case == "subnormal_b":
        b = tiny_mix_bf16(rng, (k, n))
    elif case == "huge_b":
        b = bf16_codes(rng, (k, n), 110, 122)
    elif case == "tiny_a_huge_b":
        a = bf16_codes(rng, (m, k), -120, -100)
        b = bf16_codes(rng, (k, n), 100, 120)
    elif case == "empty_b":
        b = np.zeros((k, n), np.uint16)
        b[3, 4] = 0x7F80                         # Inf only: no nonzero finite value
    A, B = decode(a, BF16), decode(b, BF16)
    exact = (R.amx_order(a, b, flush=False) if no_flush_expected(A, BF16, B, BF16, k)
             and case != "empty_b" else None)
    if exact is not None and not np.isfinite(exact.view(np.float32)).all():
        exact = None                     # the unscaled order overflows where scaling does not
    # (products through gemm_ranges, products again through gemm, scans of B beforehand)
    expect_few = {"ordinary": (1, 0, 0), "empty_b": (1, 0, 0), "subnormal_b": (1, 1, 0),
                  "huge_b": (1, 1, 0),
                  "tiny_a_huge_b": (0, 1, 1)}[case]   # A, scanned, makes B's guess rescale
    expect_packed = {"ordinary": (1, 0, 0), "empty_b": (1, 0, 0), "subnormal_b": (1, 1, 0),
                     "huge_b": (1, 1, 0), "tiny_a_huge_b": (1, 0, 0)}[case]
    calls = {"ranges": 0, "gemm": 0, "range_b": 0}
    real = {name: getattr(_gemm, name) for name in ("gemm_ranges", "gemm", "bf16_range")}

    def spy(name, key):
        def f(*args):
            if key != "range_b" or args[0].shape[-2:] == b.shape:
                calls[key] += 1
            return real[name](*args)
        return f

    def scan_first(*args):                       # gemm_ranges measuring nothing
        return real["gemm"](*args), None, None
    wt = layout == "B = W.T"
    bb = np.ascontiguousarray(b.T).T if wt else b   # (the same values)
    for tier in TIERS:
        with _config.use_isa(tier):
            monkeypatch.setattr(_gemm, "gemm_ranges", scan_first)
            want = dk.gemm(a, bb)
            for name, key in (("gemm_ranges", "ranges"), ("gemm", "gemm"),
                              ("bf16_range", "range_b")):
                monkeypatch.setattr(_gemm, name, spy(name, key))
            calls.update(ranges=0, gemm=0, range_b=0)
            got = dk.gemm(a, bb)
            monkeypatch.undo()
        assert_bits(got, bits(want), f"{case} {layout} {tier}")
        if exact is not None:
            assert_bits(got, exact, f"{case} {layout} {tier} exact")
        isa = _config.ISA_NAMES.index(tier)
        if wt:                  # the W.T kernels (amx tier: FMA up to 4 rows, tiles to 32)
            few = m <= (_gemm.SMALLM_BT_TILE_MAX if isa == 3 else _gemm.SMALLM_BT_MAX)
        else:
            few = m <= (_gemm.SMALLM_AMX_MAX if isa == 3 else _gemm.SMALLM_MAX)
        few = few and isa >= 2
        seen = (calls["ranges"], calls["gemm"], calls["range_b"])
        if isa >= 2 and not few:      # the AVX-512 tiers measure A and B when packed
            assert seen == expect_packed, (tier, seen)
        elif few:                     # B measured in registers, A scanned first
            assert seen == expect_few, (tier, seen)
        else:                 # split layouts measure nothing: B scanned first, one product
            assert seen == (0, 1, 1), (tier, seen)


def test_results_past_the_streaming_threshold_start_on_a_line():
    """gemm() allocates a result above the driver's streaming threshold (one constant,
    _gemm.STREAM_MIN_BYTES) 64-byte aligned, so that the tile kernel can stream it (NumPy
    starts arrays of this size 16 bytes past a line). Just past it, and far past it."""
    limit = _gemm.STREAM_MIN_BYTES
    rng = np.random.default_rng(2)
    for m, n in ((limit // (4 * 1040) + 1, 1040), (1100, 2048)):
        assert m * n * 4 > limit
        got = dk.gemm(tiny_mix_bf16(rng, (m, 40)), tiny_mix_bf16(rng, (40, n)))
        assert got.shape == (m, n) and got.flags.c_contiguous
        assert got.ctypes.data % 64 == 0, (m, n)
    # the boundary itself (NumPy may align a plain array by chance: check which kind it is)
    at = G._empty_result(1, limit // (4 * 16), 16)
    past = G._empty_result(1, limit // (4 * 16) + 1, 16)
    assert at.base is None and past.base is not None and past.ctypes.data % 64 == 0
    # and the driver's side of it: a result of exactly the threshold is not streamed, one
    # row more is (the bits are the same either way: the driver counts the steps)
    a, b = tiny_mix_bf16(rng, (at.shape[1], 40)), tiny_mix_bf16(rng, (40, 16))
    for rows, streamed in ((at.shape[1], False), (past.shape[1], True)):
        before = _gemm._path_counts()[1]
        dk.gemm(np.resize(a, (rows, 40)), b)
        assert (_gemm._path_counts()[1] > before) == streamed, rows


@pytest.mark.parametrize("n", [2048, 2050])
def test_large_results_streamed_or_not(n):
    """A result above _gemm.STREAM_MIN_BYTES whose rows are 64-byte aligned (gemm()
    allocates it so when n is a multiple of 16) is written with non-temporal stores: the
    same bits as the generic tier, streamed (n = 2048) or not (n = 2050, and out= views
    offset by one float)."""
    rng = np.random.default_rng(21)
    m, k = 1100, 40
    a = tiny_mix_bf16(rng, (m, k))
    b = tiny_mix_bf16(rng, (k, n))
    with _config.use_isa("generic"):
        ref = bits(dk.gemm(a, b))
    for tier in TIERS:
        with _config.use_isa(tier):
            got = dk.gemm(a, b)
            assert got.ctypes.data % 64 == 0
            assert_bits(got, ref, f"{tier} fresh")
            buf = np.full((m, n + 17), np.nan, np.float32)
            assert_bits(dk.gemm(a, b, out=buf[:, 1:n + 1]), ref, f"{tier} out= offset")
            assert np.isnan(buf[:, 0]).all() and np.isnan(buf[:, n + 1:]).all()


def _out_past_a_line(shape, shift):
    """A C-contiguous float32 `out=` whose first element lies `shift` bytes past a 64-byte
    line, inside a NaN-filled buffer (returned too, to check nothing else was written)."""
    size = int(np.prod(shape))
    buf = np.full(size + 32, np.nan, np.float32)
    off = ((-buf.ctypes.data) % 64 + shift) // 4
    return buf, off, buf[off:off + size].reshape(shape)


@pytest.mark.parametrize("shape", [(1040, 2048, 40), (64, 34816, 40), (2, 520, 2048, 40),
                                   (520, 1040, 40)],
                         ids=["one-step", "steps-and-groups", "batch", "just-past-the-threshold"])
def test_streamed_results_into_an_out_past_a_line(shape):
    """A large result into an `out=` whose rows all start the same number of bytes past a
    64-byte line (NumPy's large arrays: 16 bytes): the amx tier takes the columns up to the
    first line as an extra narrow sliver, so that its other tiles stream whole lines
    (stream_lead in gemm_driver.c). The same bits as the generic tier into a fresh result,
    on every tier, 1 and 2 threads, with and without an addend (the fused add and the edge
    tile's add), nothing written outside `out`; over several column steps and column groups
    (64 rows x 34816 columns) and per batch item."""
    *lead, m, n, k = shape
    rng = np.random.default_rng(23)
    a = tiny_mix_bf16(rng, tuple(lead) + (m, k))
    b = tiny_mix_bf16(rng, (k, n))
    bias = rng.standard_normal(n).astype(np.float32)
    with _config.use_isa("generic"):
        p = dk.gemm(a, b)
    with np.errstate(all="ignore"):
        want = {"none": bits(p), "bias": bits(np.add(p, bias))}
    saved = dk.get_num_threads()
    try:
        for tier in TIERS:
            for threads in (1, 2):
                dk.set_num_threads(threads)
                for shift in (4, 16, 32, 60):
                    for addend, c in (("none", None), ("bias", bias)):
                        buf, off, out = _out_past_a_line(p.shape, shift)
                        with _config.use_isa(tier):
                            got = dk.gemm(a, b, c=c, out=out)
                        what = f"{tier} {threads} threads, {shift} bytes past a line, {addend}"
                        assert got is out, what
                        assert_bits(got, want[addend], what)
                        assert np.isnan(buf[:off]).all(), what
                        assert np.isnan(buf[off + p.size:]).all(), what
    finally:
        dk.set_num_threads(saved)


# shapes of test_running_sums_kept_apart_from_the_result that the amx tier takes in ranges of
# k: on one thread only (on two, thinner A blocks fit), and on any thread count
K_RANGES_ONE_THREAD, K_RANGES = (520, 1040, 2901), (1040, 528, 3300)


@pytest.mark.parametrize("shape", [(45, 83, 1063), (300, 200, 1100), (2, 70, 100, 600),
                                   (1100, 2048, 600), (1800, 2080, 520), K_RANGES_ONE_THREAD,
                                   K_RANGES],
                         ids=["edges", "shared-panel", "batch", "streamed", "group-per-thread",
                              "k-ranges", "k-ranges-groups"])
def test_running_sums_kept_apart_from_the_result(shape):
    """Products whose A block for all of k fits in 1 MiB: the amx tier runs each unit of
    columns through every k block, its running sums in a per-thread buffer, and writes the
    result in the last block (kinner in gemm_driver.c). The same bits as the generic tier on
    every tier, 1 and 2 threads, fresh and into an `out=` 16 bytes past a line, with every
    kind of addend (none, a row broadcast and a full matrix, both fused into the tile
    kernel's stores; a column broadcast and a column-major matrix, added by the driver), and
    nothing written outside `out`. Edge tiles in m and n; infinities in B's columns and NaN
    in A's rows, so that the zero rows past m give NaN in the buffer's padding (never copied
    out); two A blocks sharing B's panel; a batch; a result past the streaming threshold;
    8 A blocks on 2 threads with 17 units of columns, split into one column group per thread
    (gemm_item's work items; before, one group for all). k in ranges (an A block whose k
    does not fit in 1 MiB, a C block past 256 KiB), the running sums written to the result
    between ranges, streamed (a result past 2 MiB, rows on whole lines) and read back: on one
    thread 6 slivers x 1451 pairs in a range of 5 blocks of 512 and a partial block, lead
    columns into the `out=` past a line; on 1 and 2 threads (two column groups, so units
    put off while the other thread packs them) ranges of 4 and 3 blocks (one thread) or 6
    and 1 (two). The other shapes fit and never take ranges."""
    tiers = [t for t in TIERS if t != "generic"]    # generic is the reference's own tier
    if not tiers:
        pytest.skip("only the generic tier on this CPU: it is the reference")
    *lead, m, n, k = shape
    rng = np.random.default_rng(29)
    a = tiny_mix_bf16(rng, tuple(lead) + (m, k))
    b = tiny_mix_bf16(rng, (k, n))
    b[rng.integers(0, k, 3), rng.integers(0, n, 3)] = 0x7F80          # +Inf
    a[..., rng.integers(0, m, 2), rng.integers(0, k, 2)] = 0x7FC1       # NaN
    addends = {"none": None, "row": rng.standard_normal(n).astype(np.float32),
               "full": rng.standard_normal((m, n)).astype(np.float32),
               "column": rng.standard_normal((m, 1)).astype(np.float32),
               "fortran": np.asfortranarray(rng.standard_normal((m, n)).astype(np.float32))}
    with _config.use_isa("generic"):
        p = dk.gemm(a, b)
    with np.errstate(all="ignore"):
        want = {name: bits(p if c is None else np.add(p, c)) for name, c in addends.items()}
    saved = dk.get_num_threads()
    try:
        for tier in tiers:
            for threads in (1, 2):
                dk.set_num_threads(threads)
                for name, c in addends.items():
                    what = f"{tier} {threads} threads, addend {name}"
                    with _config.use_isa(tier):
                        before = _gemm._path_counts()
                        assert_bits(dk.gemm(a, b, c=c), want[name], what + ", fresh")
                        # the same bits either way: check that the amx tier took the path
                        after = _gemm._path_counts()
                        assert (after[0] > before[0]) == (tier == "amx"), what
                        if shape == K_RANGES or (shape == K_RANGES_ONE_THREAD and threads == 1):
                            assert (after[2] > before[2]) == (tier == "amx"), what
                        elif shape != K_RANGES_ONE_THREAD:
                            assert after[2] == before[2], what
                        buf, off, out = _out_past_a_line(p.shape, 16)
                        assert dk.gemm(a, b, c=c, out=out) is out
                    assert_bits(out, want[name], what + ", out= past a line")
                    assert np.isnan(buf[:off]).all() and np.isnan(buf[off + p.size:]).all(), what
    finally:
        dk.set_num_threads(saved)


@pytest.mark.parametrize("layout", ["c", "reversed_rows", "row_window", "fortran"])
def test_cfloat8_a_layouts_across_k_blocks(layout):
    """CFloat8 A decoded while packing (the amx tier decodes whole 32-code blocks of a
    k-contiguous A with AVX-512): every tier equal to the exact order on sampled outputs, for
    A contiguous, rows reversed, a window of a wider array and column-major, with k across
    the tile kernel's KC (2048) and ending in a partial block, m with a partial sliver."""
    fa, fb = cfloat8_143(7), cfloat8_152(15)
    rng = np.random.default_rng(11)
    m, n, k = 45, 20, 4177
    base = rng.integers(0, 256, (m, k + 9), dtype=np.uint8)
    a = {"c": np.ascontiguousarray(base[:, :k]), "reversed_rows": base[::-1, :k],
         "row_window": base[:, 5:5 + k], "fortran": np.asfortranarray(base[:, :k])}[layout]
    b = rng.integers(0, 256, (k, n), dtype=np.uint8)
    A, B = decode(a, fa), decode(b, fb)
    rows, cols = [0, 31, 32, m - 1], [0, 7, n - 1]
    want = {o: R.ORDERS[o](_as_bf16_codes(A[rows]), _as_bf16_codes(B[:, cols]), flush=False)
            for o in ORDERS}
    for order in ORDERS:
        for tier in TIERS:
            with _config.use_isa(tier):
                c = dk.gemm(a, b, a_format=fa, b_format=fb, order=order)
            assert_bits(c[np.ix_(rows, cols)], want[order], f"{order} {tier} {layout}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.sampled_from([1, 2, 7, 16, 33]), n=st.sampled_from([1, 3, 17, 32, 65]),
       k=st.sampled_from([1, 2, 31, 32, 33, 96, 255, 257, 513]), fa=FORMATS, fb=FORMATS,
       la=LAYOUTS, lb=LAYOUTS, wa=windows(), wb=windows(), seed=st.integers(0, 2 ** 32 - 1),
       tier=st.sampled_from(TIERS), order=st.sampled_from(ORDERS))
def test_spec_bound_both_orders(m, n, k, fa, fb, la, lb, wa, wb, seed, tier, order):
    """SPEC section 5: |C - exact| <= gamma(K) |A||B| (plus the documented flush terms when
    the operands span more than FP32 holds), in both orders, any layout."""
    rng = np.random.default_rng(seed)
    a = codes_for(rng, fa, (m, k), wa)
    b = codes_for(rng, fb, (k, n), wb)
    with _config.use_isa(tier):
        c = dk.gemm(lay(a, la), lay(b, lb), a_format=fa, b_format=fb, order=order)
        c2 = dk.gemm(a, b, a_format=fa, b_format=fb, order=order)
    check_bound(c, a, b, fa, fb)
    assert np.array_equal(c.view(np.uint32), c2.view(np.uint32))


def test_amx_order_is_more_accurate_on_random_data():
    """The documented reason for the default: on random data (k = 256) the amx order's
    error against the exact sum is smaller than the single chain's."""
    rng = np.random.default_rng(12)
    a = bf16_codes(rng, (64, 256), -4, 4)
    b = bf16_codes(rng, (256, 64), -4, 4)
    A, B = decode(a, BF16), decode(b, BF16)
    exact = A @ B            # float64: products exact, the sum within 2**-45 relative
    mag = np.abs(A) @ np.abs(B)
    err = {o: np.abs(dk.gemm(a, b, order=o).astype(np.float64) - exact) / mag for o in ORDERS}
    assert err["amx"].mean() < 0.6 * err["vdpbf16ps"].mean()
    assert err["amx"].max() < err["vdpbf16ps"].max()


# ---- the API -----------------------------------------------------------------------------

def test_default_order_is_amx():
    rng = np.random.default_rng(2)
    a, b = bf16_codes(rng, (9, 100)), bf16_codes(rng, (100, 11))
    assert G.ORDERS[0] == "amx"
    assert np.array_equal(bits(dk.gemm(a, b)), bits(dk.gemm(a, b, order="amx")))
    assert not np.array_equal(bits(dk.gemm(a, b)), bits(dk.gemm(a, b, order="vdpbf16ps")))
    assert_bits(dk.gemm(a, b), R.amx_order(a, b), "default")
    # every path of gemm() passes the order through: out=, c=, return_plan, batches
    out = np.empty((9, 11), np.float32)
    dk.gemm(a, b, out=out, order="vdpbf16ps")
    assert_bits(out, R.vdpbf16ps_order(a, b), "out=")
    r, _ = dk.gemm(a[None], b, return_plan=True, order="vdpbf16ps")
    assert_bits(r[0], R.vdpbf16ps_order(a, b), "batched, return_plan")


def test_bad_order():
    a, b = np.zeros((2, 3), np.uint16), np.zeros((3, 2), np.uint16)
    with pytest.raises(ValueError, match="order.*'amx'.*'vdpbf16ps'.*'AMX'"):
        dk.gemm(a, b, order="AMX")
    with pytest.raises(ValueError, match="order"):
        dk.gemm(a, b, order="")
    for bad in (1, None, b"amx", ("amx",)):
        with pytest.raises(TypeError, match="order"):
            dk.gemm(a, b, order=bad)
    # the C driver refuses an unknown order too (status 2), never crashes
    out = np.zeros((1, 2, 2), np.float32)
    assert _gemm.gemm(a[None], b[None], NO_TABLE, NO_TABLE, 1.0, out, 0, 0, 1, 7) == 2
    assert _gemm.gemm(a[None], b[None], NO_TABLE, NO_TABLE, 1.0, out, 0, 0, 1, -1) == 2


def test_kernel_names():
    for tier in TIERS:
        with _config.use_isa(tier):
            names = G.kernel_names()
        assert set(names) == set(ORDERS)
        assert all(isinstance(v, str) and v.startswith(tier) for v in names.values())
        assert names["amx"] != names["vdpbf16ps"]


def test_generic_add_step_boundary_cases():
    """The software FTZ addition of the generic tier (T = E + O, C = C + T)."""
    add = _gemm.add_generic
    t = 2.0 ** -126
    cases = [(t, -t), (1.5 * t, -t), (-1.5 * t, t), (t, 2.0 ** -149 * 0), (-0.0, -0.0),
             (-0.0, 0.0), (3.0, -3.0), (1.0, 2.0 ** -24), (1.0 + 2.0 ** -23, 2.0 ** -24),
             (3.4e38, 3.4e38), (-math.inf, 1.0), (2.0 ** -127, 1.0), (-(2.0 ** -127), -0.0),
             (math.inf, -math.inf)]
    for x, y in cases:
        x32, y32 = float(np.float32(x)), float(np.float32(y))
        # DAZ on the inputs (the reference reads FP32 subnormals as zeros of their sign)
        xd = math.copysign(0.0, x32) if 0 < abs(x32) < t else x32
        yd = math.copysign(0.0, y32) if 0 < abs(y32) < t else y32
        want = R.add(xd, yd)
        got = add(x32, y32)
        assert (np.float32(got).view(np.uint32) == np.float32(want).view(np.uint32)
                or (math.isnan(got) and math.isnan(want))), (x, y, got, want)


def test_report_and_cli_pass_the_order_through(tmp_path):
    import json

    from dojo_kernels import cli
    from dojo_kernels.report import ReportConfig

    assert ReportConfig().gemm_order == "amx"
    with pytest.raises(ValueError, match="gemm_order"):
        ReportConfig(gemm_order="fma")
    out = tmp_path / "r.json"
    args = ["report", "--d-model", "16", "--seq", "32", "--formats", "bf16", "--algorithms",
            "chain", "--system", "1x2", "--check-elements", "0", "-q", "--json", str(out)]
    errs = {}
    for order in ORDERS:
        assert cli.main(args + ["--gemm-order", order]) == 0
        d = json.loads(out.read_text())
        assert d["config"]["gemm_order"] == order
        errs[order] = [g["formats"]["bf16"]["max_rel_error"] for g in d["gemms"]]
    assert errs["amx"] != errs["vdpbf16ps"]       # the GEMMs did run in each order
    with pytest.raises(SystemExit):
        cli.main(args + ["--gemm-order", "AMX"])
