"""Huge inputs (issue 7): arrays of more than 2^31 elements are indexed with 64 bits, and
allocations that cannot succeed become MemoryError.

The > 2^31-element tests need 4-6 GiB and tens of seconds: they are marked slow (run them
with ``-m slow`` or DOJO_KERNELS_SLOW_TESTS=1). The elements on both sides of index 2^31
(and at the ends) are checked against the pure-Python SPEC reference (tests/spec_ref.py),
with stochastic rounding, whose random number depends on the 64-bit flat index.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import dojo_kernels as dk
import spec_ref as ref
from dojo_kernels import _config, _reduce

N = 2**31 + 33
SEED = 0x1234_5678_9ABC_DEF0
WINDOWS = [(0, 64), (2**31 - 32, 2**31 + 33)]   # the last window ends at N


def _window_indices():
    return np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in WINDOWS])


@pytest.mark.slow
def test_arith_beyond_2_31_elements():
    """add on 2^31 + 33 uint8 codes: results and int64 flag counts past index 2^31."""
    fmt = dk.cfloat8_143(7, "ieee")
    rf = ref.ref_of(fmt)
    a = np.empty(N, np.uint8)
    a[:] = 0x01                      # the smallest subnormal: 2x is exact, flags 'denormal'
    idx = _window_indices()
    rng = np.random.default_rng(43)
    a[idx] = rng.integers(0, 256, idx.size, dtype=np.uint8)
    out, flags = dk.add(a, a, fmt, rounding="stochastic", seed=SEED, return_flags=True)
    assert out.shape == (N,)
    want_flags = {"invalid": 0, "denormal": N - idx.size, "overflow": 0, "underflow": 0}
    for i in idx.tolist():
        code, fl = ref.arith_scalar("add", (a[i], a[i]), rf, "stochastic",
                                    ref.splitmix_r(SEED, i))
        assert out[i] == code, f"element {i}: {out[i]:#x}, reference {code:#x}"
        for k in want_flags:
            want_flags[k] += fl.get(k, 0)
    bulk, bfl = ref.arith_scalar("add", (1, 1), rf, "nearest")
    assert bfl.get("denormal") == 1 and not bfl.get("underflow")
    probe = np.array([64, 2**20, 2**30, 2**31 - 33])   # bulk elements between the windows
    assert np.all(out[probe] == bulk)
    assert flags == dk.Flags(**want_flags)   # counts above 2^31 need 64-bit counters


@pytest.mark.slow
def test_quantize_bf16_beyond_2_31_elements():
    """quantize of 2^31 + 33 bfloat16 values (the SIMD tier's path, stochastic rounding):
    the random numbers follow the 64-bit flat index past 2^31."""
    fmt = dk.cfloat8_152(15)
    rf = ref.ref_of(fmt)
    x = np.empty(N, ml_dtypes.bfloat16)
    x[:] = 1.5
    idx = _window_indices()
    vals = (np.random.default_rng(47).standard_normal(idx.size) * 100).astype(ml_dtypes.bfloat16)
    x[idx] = vals
    codes = dk.quantize(x, fmt, rounding="stochastic", seed=SEED)
    assert codes.shape == (N,) and codes.dtype == np.uint8
    for i in idx.tolist():
        want, _ = ref.quantize_scalar(float(x[i]), rf, "stochastic", ref.splitmix_r(SEED, i),
                                      src_dtype=ml_dtypes.bfloat16)
        assert codes[i] == want, f"element {i}: {codes[i]:#x}, reference {want:#x}"
    one_half, _ = ref.quantize_scalar(1.5, rf, "nearest")
    assert codes[2**31 - 40] == one_half and codes[1000] == one_half


# --- allocation failures: MemoryError, never a crash --------------------------------------

HUGE = 2**42   # elements: terabytes, which no allocation here can get


def test_huge_broadcast_input_is_memory_error():
    x = np.broadcast_to(np.float32(1.0), (HUGE,))   # zero strides: no memory
    with pytest.raises(MemoryError):
        dk.quantize(x, dk.BF16)
    with pytest.raises(MemoryError):
        dk.fake_quantize(x, dk.cfloat8_143())
    codes = np.broadcast_to(np.uint8(3), (HUGE,))
    with pytest.raises(MemoryError):
        dk.dequantize(codes, dk.cfloat8_143())
    with pytest.raises(MemoryError):
        dk.add(codes, codes[:1], dk.cfloat8_143())
    with pytest.raises(MemoryError):
        dk.choose_bias(x, "shp")


def test_huge_allreduce_is_memory_error():
    mesh = dk.mesh.Mesh2D(2, 2, link_bandwidth=1e10, link_latency=1e-7)
    bufs = np.broadcast_to(np.float32(1.0), (4, HUGE))
    with pytest.raises(MemoryError):
        dk.allreduce(bufs, mesh, algorithm="ring")


def test_c_driver_out_of_memory_is_memory_error():
    """The all-reduce runner's scratch (slots x tile) cannot be allocated: the C driver
    returns DK_ENOMEM, the glue raises MemoryError (and frees what it had: test_leaks)."""
    args = (np.array([0, 10], np.int64), np.array([0, 1], np.int64), np.array([0], np.int32),
            np.array([-1], np.int32), np.array([-2], np.int32), np.array([0], np.int32))
    with pytest.raises(MemoryError):
        _reduce.run_f32(_config.isa(), 1, *args, 1 << 40, np.ones((2, 10), np.float32),
                        np.empty((1, 10), np.float32))


def test_shapes_beyond_2_63_are_refused():
    with pytest.raises((ValueError, MemoryError)):
        dk.quantize(np.broadcast_to(np.float32(1), (2**40, 2**30)), dk.BF16)
    # a zero-size array with huge other dimensions is fine
    out = dk.quantize(np.zeros((2**40, 0, 2**20), np.float32), dk.BF16)
    assert out.shape == (2**40, 0, 2**20)
