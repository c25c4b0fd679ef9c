"""GEMM with its D1 plan: one layer's forward product in three formats, and what a D1 chip
and a training tile would spend on it.

    python examples/gemm_with_plan.py [m n k]
"""
from __future__ import annotations

import sys

import numpy as np

import dojo_kernels as dk


def main(m: int = 1024, n: int = 1024, k: int = 1024) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = (rng.standard_normal((k, n), dtype=np.float32) / np.sqrt(k)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    fa = dk.cfloat8_143(dk.choose_bias(a, "cfloat8_143"))
    fb = dk.cfloat8_143(dk.choose_bias(b, "cfloat8_143"))
    print(f"C = A @ B, {m} x {n} x {k} ({2 * m * n * k / 1e9:.2f} GFLOP)")
    print(f"{'formats':<46}{'rel. RMS error':>15}")
    err32 = np.linalg.norm(a @ b - ref) / np.linalg.norm(ref)
    print(f"{'float32 (NumPy)':<46}{err32:>15.2e}")
    for label, af, bf in (("BF16 x BF16", dk.BF16, dk.BF16),
                          (f"{fa!r} x {fb!r}", fa, fb)):
        c = dk.gemm(a, b, a_format=af, b_format=bf)    # order="amx", the default
        assert isinstance(c, np.ndarray)
        print(f"{label:<46}{np.linalg.norm(c - ref) / np.linalg.norm(ref):>15.2e}")
    # the other accumulation order: one VDPBF16PS chain along k (docs/gemm.md)
    c = dk.gemm(a, b, order="vdpbf16ps")
    label = "BF16 x BF16, order=\"vdpbf16ps\""
    print(f"{label:<46}{np.linalg.norm(c - ref) / np.linalg.norm(ref):>15.2e}")

    print(f"\n{'machine':<14}{'format':<8}{'time':>11}{'util':>8}  {'bound':<8} node grid, tile")
    for mname, machine in (("D1 chip", dk.D1Chip()), ("training tile", dk.TrainingTile())):
        for fname, f in (("BF16", dk.BF16), ("CFloat8", fa)):
            p = dk.plan_gemm(m, n, k, a_format=f, b_format=f, machine=machine)
            print(f"{mname:<14}{fname:<8}{p.seconds * 1e6:>9.2f}us{p.utilization:>8.1%}  "
                  f"{p.bound:<8} {p.node_grid}, {p.tile}")
    # the figures are parameters: a chip with 4x the NoC link bandwidth (AI Day's 512 GB/s)
    fast = dk.D1Chip(node=dk.D1Node(noc_link_bw=512e9))
    p = dk.plan_gemm(m, n, k, a_format=dk.BF16, b_format=dk.BF16, machine=fast)
    print(f"\nD1 chip with 512 GB/s NoC links, BF16: {p.seconds * 1e6:.2f} us, {p.bound}-bound")


if __name__ == "__main__":
    main(*(int(v) for v in sys.argv[1:4]))
