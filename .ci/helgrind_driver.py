"""Small workload for valgrind's helgrind (.ci/valgrind.sh): every kind of parallel call of
the thread pool (csrc/pool.c) with 3 threads: conversions with flags, arithmetic, GEMM (the
packed-B unit flags; one A block; a batch of small products), the all-reduce data path.
helgrind must report no race or lock-order error."""
import os, numpy as np, dojo_kernels as dk
dk.set_num_threads(3)
rng = np.random.default_rng(0)
x = rng.standard_normal(300_000).astype(np.float32)
for _ in range(3):
    c = dk.quantize(x, dk.cfloat8_143(8), return_flags=True)
    d = dk.dequantize(c[0], dk.cfloat8_143(8))
    s = dk.add(dk.quantize(x, dk.BF16), dk.quantize(x, dk.BF16), dk.BF16)
a = dk.quantize(rng.standard_normal((160, 300)).astype(np.float32), dk.BF16)
b = dk.quantize(rng.standard_normal((300, 200)).astype(np.float32), dk.BF16)
for _ in range(2):
    dk.gemm(a, b, a_format=dk.BF16)
# one A block (B packed into each thread's own buffer), and a batch of small products
# shared out by whole products (gemm_batch_item)
a1 = dk.quantize(rng.standard_normal((3, 700)).astype(np.float32), dk.BF16)
b1 = dk.quantize(rng.standard_normal((700, 3000)).astype(np.float32), dk.BF16)
ab = dk.quantize(rng.standard_normal((120, 20, 50)).astype(np.float32), dk.BF16)
bb = dk.quantize(rng.standard_normal((120, 50, 40)).astype(np.float32), dk.BF16)
for _ in range(2):
    dk.gemm(a1, b1)
    dk.gemm(ab, bb)
from dojo_kernels import _reduce, _config
acc = np.zeros(1 << 20, np.float32)
_reduce.accumulate(_config.isa(), 3, acc, np.ones(1 << 20, np.float32), False)
print("ok")
