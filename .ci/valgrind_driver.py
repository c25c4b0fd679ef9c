"""A small workload for .ci/valgrind.sh: every kernel (both tiers valgrind can run, one and
two threads, sizes around the drivers' chunk edges), the error paths, and checks that the
results are right, so memcheck sees every C path once. Runs in seconds natively."""
import sys

import ml_dtypes
import numpy as np

import dojo_kernels as dk
from dojo_kernels import _config, _reduce

if "--control" in sys.argv:
    # Positive control for valgrind.sh: a definite leak and an out-of-bounds read, both from
    # C, which memcheck must report through the suppressions.
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    p = libc.malloc(4096)
    ctypes.string_at(p, 4096 + 64)
    del p
    sys.exit(0)

rng = np.random.default_rng(1)
x32 = (rng.standard_normal(2049) * 50).astype(np.float32)
x32[:4] = [np.nan, np.inf, -np.inf, 1e-42]
x64 = x32.astype(np.float64)
xbf = x32.astype(ml_dtypes.bfloat16)
mesh = dk.mesh.Mesh2D(2, 3, link_bandwidth=1e10, link_latency=1e-7, wraparound=True)
bufs = rng.integers(-20, 20, (6, 2051)).astype(np.float32)
bufs16 = bufs.astype(ml_dtypes.bfloat16).view(np.uint16)

TIERS = _config.supported_isas()[: _config.isa() + 1]   # up to the forced one (valgrind: avx2)
for isa in TIERS:
    with _config.use_isa(isa):
        for threads in (1, 2):
            dk.set_num_threads(threads)
            for fmt in (dk.BF16, dk.cfloat8_143(7), dk.cfloat8_152(20, "flush"), dk.shp(15),
                        dk.UHP, dk.FP32):
                for rounding, seed in (("nearest", None), ("stochastic", 5),
                                       ("toward_zero", None)):
                    for x in (x32, x64, xbf, x32[::-3]):
                        q, fl = dk.quantize(x, fmt, rounding=rounding, seed=seed,
                                            return_flags=True)
                        q2 = dk.quantize(x, fmt, rounding=rounding, seed=seed)
                        assert np.array_equal(q.view(np.uint8), q2.view(np.uint8))
                        if x.dtype != ml_dtypes.bfloat16 or fmt.nbits == 8 or fmt == dk.BF16:
                            fq = dk.fake_quantize(x, fmt, rounding=rounding, seed=seed)
                            d = dk.dequantize(q, fmt, dtype=np.float64)
                            assert np.array_equal(fq.astype(np.float64), d, equal_nan=True)
                    c = q if fmt != dk.FP32 else q
                    for op in (dk.add, dk.sub, dk.mul):
                        op(c, c[::-1], fmt, rounding=rounding, seed=seed, return_flags=True)
                    dk.fma(c, c, c[:1], fmt, rounding=rounding, seed=seed)
                    dk.dequantize(c, fmt, dtype=np.float32)
            for alg in ("ring", "bidirectional_ring", "2d", "halving_doubling", "tree",
                        "chain", "spanning_trees"):
                r, _ = dk.allreduce(bufs, mesh, algorithm=alg)
                assert np.array_equal(r, np.broadcast_to(bufs.sum(0), r.shape)), alg
                dk.allreduce(bufs16, mesh, algorithm=alg, fmt=dk.BF16, accumulate="bf16")
                dk.allreduce(bufs16, mesh, algorithm=alg, fmt=dk.BF16)
            dk.estimate_allreduce(1e6, mesh)
            dk.choose_bias(x32[4:], "cfloat8_143", margin=1)

errors = 0
for bad in (lambda: dk.quantize(x32, "bf16"), lambda: dk.quantize(bufs.astype(np.int32), dk.BF16),
            lambda: dk.quantize(x32, dk.BF16, rounding="stochastic"),
            lambda: dk.dequantize(x32, dk.BF16), lambda: dk.add(bufs16, bufs16[:, :3], dk.BF16),
            lambda: dk.allreduce(bufs[:5], mesh), lambda: dk.choose_bias(x32, "shp"),
            lambda: dk.choose_bias(x32[4:], "shp", margin=5000),
            lambda: _reduce.run_f32(0, 1, np.array([0, 10], np.int64), np.array([0, 1], np.int64),
                                    np.array([0], np.int32), np.array([-1], np.int32),
                                    np.array([-99], np.int32), np.array([0], np.int32), 1,
                                    np.ones((2, 10), np.float32), np.empty((1, 10), np.float32))):
    try:
        bad()
    except (ValueError, TypeError):
        errors += 1
try:  # the C driver's out-of-memory path (it must free what it allocated)
    _reduce.run_f32(0, 1, np.array([0, 10], np.int64), np.array([0, 1], np.int64),
                    np.array([0], np.int32), np.array([-1], np.int32), np.array([-2], np.int32),
                    np.array([0], np.int32), 1 << 40, np.ones((2, 10), np.float32),
                    np.empty((1, 10), np.float32))
except MemoryError:
    errors += 1
assert errors == 10, errors
print("valgrind driver: ok on tiers", TIERS)
