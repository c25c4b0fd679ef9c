"""The codes of float operands in reused scratch buffers (gemm.py, _scratch_take).

gemm rounds float operands into codes for every call; large ones go into buffers it takes
from a small pool for the call and gives back after it, instead of fresh arrays whose pages
the kernel maps and zeroes anew. These tests hold what that must not change: the bits (the
same as rounding with quantize first, whatever a reused buffer held before), no result or
`out` ever in a pool buffer, the pool bounded, a call that raises keeping its buffers out
of it. Concurrent calls sharing the pool are in test_concurrency.py.
"""
from __future__ import annotations

import importlib

import ml_dtypes
import numpy as np
import pytest

import dojo_kernels as dk

G = importlib.import_module("dojo_kernels.gemm")
rng = np.random.default_rng(71)


def _bits(x):
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


def _pool():
    with G._scratch_lock:
        return list(G._scratch_free)


@pytest.mark.parametrize("fmt", [dk.BF16, dk.cfloat8_143(8)], ids=["bf16", "cfloat8"])
def test_codes_in_scratch_are_quantize_codes(fmt):
    """Several calls in a row with different operands, of float32, float64 and bfloat16,
    C-ordered, transposed (W.T) and Fortran-ordered, each at least 1 MiB of codes: equal bit
    for bit to the product of the codes quantize gives (a reused buffer's old codes never
    show through)."""
    kw = {} if fmt is dk.BF16 else dict(a_format=fmt)
    m, n, k = 600, 520, 1100
    for trial in range(3):
        x = rng.standard_normal((m, k)) * (trial + 1)
        w = rng.standard_normal((n, k)).astype(np.float32)
        cases = [(x.astype(np.float32), w.T), (x, np.asfortranarray(w.T)),
                 (x.astype(ml_dtypes.bfloat16), w.T.astype(np.float32))]
        for a, b in cases:
            want = dk.gemm(dk.quantize(a, fmt), dk.quantize(b, fmt), **kw)
            assert np.array_equal(_bits(dk.gemm(a, b, **kw)), _bits(want)), (trial, a.dtype)
    assert len(_pool()) <= G._SCRATCH_KEEP


def test_results_never_in_a_pool_buffer():
    """The result, a fresh one or `out`, shares no memory with the buffers given back, and
    the next call (which takes them again) leaves an earlier result unchanged."""
    m, n, k = 700, 640, 800
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n))
    r1 = dk.gemm(a, b)
    keep = r1.copy()
    out = np.empty((m, n), np.float32)
    r2 = dk.gemm(a * 2, b, out=out)
    assert r2 is out
    bufs = _pool()
    assert bufs, "large float operands were expected to leave buffers in the pool"
    for buf in bufs:
        assert not np.shares_memory(buf, r1) and not np.shares_memory(buf, out)
    dk.gemm(-a, b)
    assert np.array_equal(_bits(r1), _bits(keep))


def test_pool_after_errors_and_bounded():
    """An error after the first operand was rounded (inner dimensions differ) drops its
    buffer: the traceback keeps the call's frame, whose `ca` is in it, and a later call
    must not overwrite that; a call that returns gives its buffers back; small operands take
    none; at most _SCRATCH_KEEP buffers are kept."""
    with G._scratch_lock:
        G._scratch_free.clear()
    a = rng.standard_normal((600, 1000)).astype(np.float32)    # 1.2 MB of BF16 codes
    try:
        dk.gemm(a, rng.standard_normal((999, 30)).astype(np.float32))
    except ValueError as exc:
        assert "inner dimensions" in str(exc)
        tb = exc.__traceback__
        while "ca" not in tb.tb_frame.f_locals:       # the frame that rounded a
            tb = tb.tb_next
        ca = tb.tb_frame.f_locals["ca"]
    else:
        raise AssertionError("mismatched inner dimensions were accepted")
    assert _pool() == []
    kept = ca.copy()
    dk.gemm(-a, rng.standard_normal((1000, 600)))              # takes new buffers
    assert np.array_equal(ca, kept)
    assert len(_pool()) == 2
    with G._scratch_lock:
        G._scratch_free.clear()
    dk.gemm(rng.standard_normal((40, 50)), rng.standard_normal((50, 60)))
    assert _pool() == []                                      # small: no scratch
    for size in (600, 700, 800):
        dk.gemm(rng.standard_normal((size, size)), rng.standard_normal((size, size)))
    assert 1 <= len(_pool()) <= G._SCRATCH_KEEP
