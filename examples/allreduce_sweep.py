"""All-reduce sweep: every algorithm on a training tile over message sizes, from the
latency-bound to the bandwidth-bound regime, and one real reduction checked against float64.

    python examples/allreduce_sweep.py
"""
from __future__ import annotations

import numpy as np

import dojo_kernels as dk
from dojo_kernels import mesh

ALGORITHMS = ("ring", "bidirectional_ring", "2d", "halving_doubling", "tree", "chain",
              "spanning_trees")


def main() -> None:
    tile = mesh.training_tile()
    sizes = [1 << 10, 1 << 16, 1 << 20, 1 << 24, 1 << 28]
    print("time (us) of an all-reduce on a 5x5 training tile; * = fastest")
    print(f"{'bytes/chip':>11}" + "".join(f"{a:>20}" for a in ALGORITHMS))
    for n in sizes:
        times = [dk.estimate_allreduce(n, tile, algorithm=a).time for a in ALGORITHMS]
        best = int(np.argmin(times))
        cells = [f"{t * 1e6:.2f}{'*' if i == best else ' '}" for i, t in enumerate(times)]
        print(f"{n:>11}" + "".join(f"{c:>20}" for c in cells))

    x = np.random.default_rng(0).standard_normal((tile.nodes, 10_000), dtype=np.float32)
    exact = x.astype(np.float64).sum(axis=0)
    print("\nreal FP32 all-reduce of 10,000 elements per chip: max error vs float64, same bits")
    for a in ALGORITHMS:
        res, rep = dk.allreduce(x, tile, algorithm=a)
        err = np.abs(np.asarray(res, np.float64) - exact).max()
        same = bool(np.all(res == res[0]))
        print(f"  {a:<20} {err:.2e}  {'yes' if same else 'no'} "
              f"(report.bit_identical={rep.bit_identical})")


if __name__ == "__main__":
    main()
