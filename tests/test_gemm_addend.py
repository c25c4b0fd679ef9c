"""The addend ``c`` of :func:`dojo_kernels.gemm`, added by the driver to each block of the
result after its last k block (``dk_gemm_addend_ranges``; on the amx tier inside the
micro-kernel, before its stores): the bits must be those of the product followed by one
float32 add, ``np.add(product, float32(beta) * c)`` computed here by NumPy, on every tier,
order, thread count and code path (few rows, edge tiles, several k blocks, batches, k = 0),
for every shape NumPy broadcasts (bias rows, columns, full matrices, scalars, strided and
transposed views) and for special values (NaN, Inf, signed zeros, subnormal sums).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import _config, _gemm
from test_gemm import bf16_codes

G_ORDER = {"amx": _gemm.ORDER_AMX, "vdpbf16ps": _gemm.ORDER_VDPBF16PS}
TIERS = ([dk.get_isa()] if os.environ.get("DOJO_TEST_QUICK") == "1"
         else list(_config.supported_isas()))

# (batch or None, m, n, k): the few-rows path (m <= 4 on amx, <= 8 elsewhere), edge tiles
# in m and n, whole 32 x 32 tiles, k across the amx tier's k blocks of 512, a batch
SHAPES = [(None, 1, 70, 40), (None, 4, 33, 65), (None, 37, 70, 100), (None, 64, 96, 64),
          (None, 96, 160, 1100), (3, 33, 45, 20), (2, 3, 40, 17),
          (None, 300, 120, 64),    # several A blocks (a shared packed B) on 2 threads
          (None, 40, 2100, 16)]    # two column steps on the amx tier (2048 columns each)


def _addends(rng, nb, m, n):
    """c values of every broadcast form, as (label, c)."""
    lead = () if nb is None else (nb,)
    full = rng.standard_normal(lead + (m, n)).astype(np.float32)
    wide = rng.standard_normal(lead + (m, 2 * n)).astype(np.float32)
    yield "bias", rng.standard_normal(n).astype(np.float32)
    yield "column", rng.standard_normal((m, 1)).astype(np.float32)
    yield "full", full
    yield "scalar", np.float32(rng.standard_normal())
    yield "float64", rng.standard_normal(lead + (m, n))
    yield "strided", wide[..., ::2]                      # column stride 2: no fused add
    yield "transposed", np.ascontiguousarray(np.swapaxes(full, -1, -2)).swapaxes(-1, -2)
    if nb is not None:
        yield "per-item bias", rng.standard_normal((nb, 1, n)).astype(np.float32)


def _want(p, c, beta):
    with np.errstate(all="ignore"):
        return np.add(p, np.float32(beta) * np.asarray(c).astype(np.float32))


def _same_bits(got, want):
    """Bit for bit, except that a NaN's payload is only asked to be a NaN's (NumPy's add and
    the kernel's both return one of the operands' NaNs, quieted)."""
    g, w = got.view(np.uint32), want.view(np.uint32)
    nan = np.isnan(want)
    return np.array_equal(np.isnan(got), nan) and np.array_equal(g[~nan], w[~nan])


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("order", ["amx", "vdpbf16ps"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, [x for x in s if x])))
def test_addend_is_the_product_then_one_float32_add(tier, order, shape, threads_restored):
    nb, m, n, k = shape
    rng = np.random.default_rng(m * 1000 + n + k)
    lead = () if nb is None else (nb,)
    a, b = bf16_codes(rng, lead + (m, k)), bf16_codes(rng, lead + (k, n))
    with _config.use_isa(tier):
        dk.set_num_threads(1)
        p = dk.gemm(a, b, order=order)
        for label, c in _addends(rng, nb, m, n):
            for beta in (1.0, 0.5):
                want = _want(p, c, beta)
                for thr in (1, 2):
                    dk.set_num_threads(thr)
                    got = dk.gemm(a, b, c=c, beta=beta, order=order)
                    assert _same_bits(got, want), (label, beta, thr)
                dk.set_num_threads(1)
                # into `out`, and in place (out is c: C = A B + beta C)
                out = np.full(p.shape, np.nan, np.float32)
                assert dk.gemm(a, b, c=c, beta=beta, order=order, out=out) is out
                assert _same_bits(out, want), (label, beta, "out")
                if isinstance(c, np.ndarray) and c.shape == p.shape and c.dtype == np.float32:
                    cc = c.copy()
                    assert dk.gemm(a, b, c=cc, beta=beta, order=order, out=cc) is cc
                    assert _same_bits(cc, want), (label, beta, "in place")


@pytest.mark.parametrize("tier", TIERS)
def test_addend_special_values(tier):
    """Products that are Inf, NaN, +0 and -0 (and ordinary ones) meet addends that are NaN,
    Inf of both signs, signed zeros and subnormals: Inf - Inf is NaN, -0 + -0 stays -0,
    +0 + -0 is +0, a subnormal sum is kept (the add runs under the default MXCSR)."""
    rng = np.random.default_rng(5)
    m, n, k = 40, 48, 2
    av = np.zeros((m, k), np.float32)
    bv = np.zeros((k, n), np.float32)
    av[:, 0] = rng.choice([np.inf, -np.inf, 0.0, 1.0, -1.0, 2.0 ** -120], m)
    av[:, 1] = rng.choice([0.0, 1.0], m)
    bv[0] = rng.choice([1.0, -1.0, 0.0, 2.0 ** -10], n)
    bv[1] = rng.choice([0.0, np.nan, 1.0], n, p=[0.45, 0.1, 0.45])
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0 ** -140, -(2.0 ** -149),
                         2.0 ** -127, 1.0, -1.0], np.float32)
    c = rng.choice(specials, (m, n))
    c.view(np.uint32)[0, :4] = [0x7F800001, 0xFFC12345, 0x7FA00000, 0xFF800000]
    with _config.use_isa(tier):
        for order in ("amx", "vdpbf16ps"):
            p = dk.gemm(av, bv, order=order)
            assert np.isnan(p).any() and np.isinf(p).any() and (p == 0).any()
            for c_ in (c, c[0], c[:, :1]):
                want = _want(p, c_, 1.0)
                got = dk.gemm(av, bv, c=c_, order=order)
                assert _same_bits(got, want), order
            # a subnormal sum is not flushed (the product of 2^-120 and 2^-10 plus -2^-127)
            tiny = (p == np.float32(2.0 ** -130)) & (c == np.float32(2.0 ** -127))
            got = dk.gemm(av, bv, c=c, order=order)
            assert tiny.any() and np.all(got[tiny] == np.float32(2.0 ** -130 + 2.0 ** -127))


def test_addend_with_k_zero_and_empty():
    """No k: the result is 0 + beta * c (an exact +0 plus the term: -0 becomes +0)."""
    c = np.array([[-0.0, 1.5, np.inf], [2.0 ** -140, -2.0, np.nan]], np.float32)
    a, b = np.zeros((2, 0), np.uint16), np.zeros((0, 3), np.uint16)
    got = dk.gemm(a, b, c=c)
    assert _same_bits(got, np.float32(0.0) + c)
    assert got.view(np.uint32)[0, 0] == 0          # +0, not -0
    assert dk.gemm(np.zeros((0, 4), np.uint16), np.zeros((4, 3), np.uint16),
                   c=np.ones(3, np.float32)).shape == (0, 3)


def test_addend_bad_strides_are_refused_by_the_glue():
    """The glue takes the term as (batch, m, n) float32 with strides of whole elements."""
    a = np.zeros((1, 2, 4), np.uint16)
    b = np.zeros((1, 4, 3), np.uint16)
    out = np.zeros((1, 2, 3), np.float32)
    t = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="term: expected shape"):
        _gemm.gemm(a, b, np.zeros(256, np.uint16), np.zeros(256, np.uint16), 1.0, out,
                   0, 0, 1, _gemm.ORDER_AMX, np.broadcast_to(t, (1, 3, 3)))
    raw = np.zeros(4 * 2 * 3 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(1, 2, 3 * 4)
    with pytest.raises(ValueError, match="term: stride"):
        _gemm.gemm(a, b, np.zeros(256, np.uint16), np.zeros(256, np.uint16), 1.0, out,
                   0, 0, 1, _gemm.ORDER_AMX, np.lib.stride_tricks.as_strided(
                       raw, (1, 2, 3), (96, 6, 2)))


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("order", ["amx", "vdpbf16ps"])
@pytest.mark.parametrize("nb", [1, 2])
def test_addend_ignores_the_callers_mxcsr(tier, order, nb):
    """A caller that set FTZ and DAZ (a -ffast-math library does it process-wide) gets the
    same adds as under the default MXCSR: a subnormal term is not read as 0, a subnormal sum
    is not flushed; its MXCSR is back right after the call. nb = 2: the batch path."""
    ftz_daz = 0x1F80 | 0x8000 | 0x0040
    m, n, k = 37, 40, 3                      # edge tiles and (amx tier) full fused ones
    a = np.zeros((nb, m, k), np.uint16)
    b = np.zeros((1, k, n), np.uint16)
    a[:, ::2, 0] = 0x2000                    # 2^-63: products 2^-126 (normal) or 0
    b[0, 0, :] = 0x2000
    rng = np.random.default_rng(9)
    for term in (rng.choice(np.array([2.0 ** -140, -(2.0 ** -127), 1.0], np.float32), (nb, m, n)),
                 np.broadcast_to(np.float32(-(2.0 ** -127)), (nb, m, n)),
                 np.broadcast_to(rng.choice(np.array([2.0 ** -149, -(2.0 ** -127)], np.float32),
                                            n), (nb, m, n))):
        p = np.zeros((nb, m, n), np.float32)
        rc = _gemm.gemm(a, b, np.zeros(256, np.uint16), np.zeros(256, np.uint16), 1.0, p,
                        _config.ISA_NAMES.index(tier), 0, 1, G_ORDER[order])
        assert rc == 0 and (p == np.float32(2.0 ** -126)).any()
        want = p + term
        assert (want[want != 0] < np.float32(2.0 ** -126)).any()   # subnormal sums exist
        got = np.full((nb, m, n), np.nan, np.float32)
        rc, after = _gemm._gemm_under_mxcsr(ftz_daz, a, b, np.zeros(256, np.uint16),
                                            np.zeros(256, np.uint16), 1.0, got,
                                            _config.ISA_NAMES.index(tier),
                                            G_ORDER[order], term)
        if rc == -1:
            pytest.skip("no MXCSR on this CPU (not x86): nothing to test")
        assert rc == 0 and after == ftz_daz
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
        # no k: 0 + term
        z = np.full((nb, m, n), np.nan, np.float32)
        rc, after = _gemm._gemm_under_mxcsr(ftz_daz, a[:, :, :0], b[:, :0], np.zeros(256, np.uint16),
                                            np.zeros(256, np.uint16), 1.0, z,
                                            _config.ISA_NAMES.index(tier), G_ORDER[order], term)
        assert rc == 0 and after == ftz_daz
        assert np.array_equal(z.view(np.uint32), (np.float32(0) + term).view(np.uint32))


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("order", ["amx", "vdpbf16ps"])
@pytest.mark.parametrize("m", [3, 37])
@pytest.mark.parametrize("csr", [0x1F80 | 0x6000, 0x1F80 | 0x4000, 0x1F80 | 0x2000 | 0x8040])
def test_product_and_addend_ignore_the_callers_rounding_mode(tier, order, m, csr):
    """Under a caller's rounding mode toward zero, up, or down with FTZ and DAZ, the product
    and the product plus an addend have the bits they have under the default MXCSR, on the
    few-rows path (m = 3) and the packed one (m = 37): every work item runs under the
    default environment (before, only the add did, and only on the packed path)."""
    rng = np.random.default_rng(m + csr)
    n, k = 40, 300
    a = bf16_codes(rng, (1, m, k))
    b = bf16_codes(rng, (1, k, n))
    nt = np.zeros(256, np.uint16)
    isa = _config.ISA_NAMES.index(tier)
    p = np.zeros((1, m, n), np.float32)
    assert _gemm.gemm(a, b, nt, nt, 1.0, p, isa, 0, 1, G_ORDER[order]) == 0
    term = rng.standard_normal((1, m, n)).astype(np.float32)
    for t, want in ((None, p), (term, p + term)):
        got = np.full((1, m, n), np.nan, np.float32)
        rc, after = _gemm._gemm_under_mxcsr(csr, a, b, nt, nt, 1.0, got, isa, G_ORDER[order], t)
        if rc == -1:
            pytest.skip("no MXCSR on this CPU (not x86): nothing to test")
        assert rc == 0 and after == csr
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), t is None


def test_addend_with_streamed_results():
    """A result over _gemm.STREAM_MIN_BYTES (2 MiB) is written with non-temporal stores on
    the amx tier; the fused add
    comes before them, and the edge tiles (1030 x 2070) are added after their copy."""
    rng = np.random.default_rng(21)
    m, n, k = 1030, 2070, 32
    a, b = bf16_codes(rng, (m, k)), bf16_codes(rng, (k, n))
    p = dk.gemm(a, b)
    for c in (rng.standard_normal(n).astype(np.float32),
              rng.standard_normal((m, n)).astype(np.float32)):
        assert _same_bits(dk.gemm(a, b, c=c), _want(p, c, 1.0))
