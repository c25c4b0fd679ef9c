"""Format study: how much of a tensor each D1 format keeps, and what the bias does.

Rounds one Gaussian tensor (and a scaled copy with a long tail) into BF16, CFloat8 1-4-3 and
1-5-2, with the bias from ``choose_bias`` and a few others, and prints the relative RMS error,
how many elements flushed to zero and how many saturated, and the exception flags.

    python examples/format_study.py
"""
from __future__ import annotations

import numpy as np

import dojo_kernels as dk


def study(name: str, x: np.ndarray) -> None:
    print(f"\n{name}: {x.size} elements, max|x| = {np.abs(x).max():.3g}")
    print(f"{'format':<30}{'rel. RMS error':>15}{'zeros':>9}{'at max':>9}  flags")
    rows = [("BF16", dk.BF16)]
    for family, make in (("cfloat8_143", dk.cfloat8_143), ("cfloat8_152", dk.cfloat8_152)):
        best = dk.choose_bias(x, family)
        for bias in (best - 4, best, best + 2):
            if 0 <= bias <= 63:
                tag = " (choose_bias)" if bias == best else ""
                rows.append((f"{family}({bias}){tag}", make(bias)))
    for label, fmt in rows:
        codes, flags = dk.quantize(x, fmt, return_flags=True)
        y = dk.dequantize(codes, fmt, dtype=np.float64)
        err = np.sqrt(np.mean((y - x) ** 2) / np.mean(x.astype(np.float64) ** 2))
        zeros = int(np.count_nonzero((y == 0) & (x != 0)))
        at_max = int(np.count_nonzero(np.abs(y) == fmt.max))
        print(f"{label:<30}{err:>15.3e}{zeros:>9}{at_max:>9}  overflow={flags.overflow} "
              f"underflow={flags.underflow}")


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000).astype(np.float32)
    study("Gaussian N(0, 1)", x)
    study("Gradients: Gaussian x 1e-4 with a Student-t tail",
          (rng.standard_t(3, 200_000) * 1e-4).astype(np.float32))
    # stochastic rounding is unbiased: the mean of many roundings approaches the value
    v = np.full(100_000, 1.0 + 2.0 ** -6, np.float32)  # between two 1-4-3 points
    f = dk.cfloat8_143(7)
    sr = dk.dequantize(dk.quantize(v, f, rounding="stochastic", seed=1), f)
    rn = dk.dequantize(dk.quantize(v, f), f)
    print(f"\n1 + 2^-6 in cfloat8_143(7): nearest gives {rn[0]}, mean of stochastic "
          f"roundings {sr.mean():.5f} (exact {1 + 2 ** -6:.5f})")


if __name__ == "__main__":
    main()
