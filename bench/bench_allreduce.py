"""All-reduce benchmarks (pytest-benchmark; `python bench/bench_allreduce.py` prints a table).

    pytest bench/bench_allreduce.py --benchmark-only --benchmark-group-by=group

- data path: 64 MiB per node on the 5x5 training tile, bytes reduced per second beside
  NumPy's ``buffers.sum(axis=0)`` on the same arrays (a float32 sum of the same P rows);
- model path: ``estimate_allreduce`` of 1 GiB per node on an ExaPOD-sized chip mesh
  (50 x 60 = 3000 D1), every algorithm (target: under a second each);
- each algorithm's efficiency (lower bound / time) on 5x5 and 8x8 chip meshes.

Schedules, reports and compiled programs are cached between calls; every timed call here
clears the caches first, so the numbers include building and compiling the schedule.
"""
import os
import sys
import time

import numpy as np
import pytest

from dojo_kernels import allreduce, estimate_allreduce
from dojo_kernels.collectives import ALGORITHMS, _schedule, compile_program
from dojo_kernels.collectives._allreduce import _choose
from dojo_kernels.mesh import chip_mesh, training_tile

sys.path.insert(0, os.path.dirname(__file__))
from _benchlib import TABLES, bench_size, record  # noqa: E402

MiB = 1 << 20


def cold(f):
    """Run f with empty schedule/program caches (time the whole call, not a cache hit),
    including the per-mesh ones (ring orders, the spanning-tree skeleton)."""
    def run():
        _choose.cache_clear()
        compile_program.cache_clear()
        _schedule._RING_CACHE.clear()
        _schedule._spanning_skeleton.cache_clear()
        _schedule.lp_trees.cache_clear()          # the spanning-tree LP is solved again
        return f()
    return run

DATA_ALGS = ("ring", "2d", "spanning_trees", "auto")
N_TILE = bench_size(64 * MiB // 4)   # float32 elements per node (64 MiB at scale 1)


@pytest.fixture(scope="module")
def tile_buffers():
    return np.random.default_rng(0).standard_normal((25, N_TILE), dtype=np.float32)


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
        return [(d.get("internal_api"), d.get("num_threads")) for d in threadpool_info()]
    except ImportError:  # pragma: no cover
        return []


@pytest.mark.benchmark(group="allreduce 5x5 x 64 MiB (data path)")
def test_numpy_sum(benchmark, tile_buffers):
    benchmark.extra_info["threadpools"] = str(_blas_info())
    benchmark.extra_info["bytes_reduced"] = tile_buffers.nbytes
    benchmark.pedantic(lambda: tile_buffers.sum(axis=0), rounds=3, iterations=1)
    record(benchmark, ("data", "numpy"), tile_buffers.nbytes, "B/s")


@pytest.mark.benchmark(group="allreduce 5x5 x 64 MiB (data path)")
@pytest.mark.parametrize("alg", DATA_ALGS)
def test_allreduce_tile(benchmark, tile_buffers, alg):
    tile = training_tile()
    benchmark.extra_info["bytes_reduced"] = tile_buffers.nbytes
    benchmark.pedantic(cold(lambda: allreduce(tile_buffers, tile, algorithm=alg)), rounds=3,
                       iterations=1)
    record(benchmark, ("data", alg), tile_buffers.nbytes, "B/s")


@pytest.mark.benchmark(group="estimate 1 GiB on 50x60 chips (model path)")
@pytest.mark.parametrize("alg", ALGORITHMS + ("auto",))
def test_estimate_exapod(benchmark, alg):
    m = chip_mesh(50, 60)
    rep = benchmark.pedantic(cold(lambda: estimate_allreduce(1 << 30, m, algorithm=alg)),
                             rounds=2, iterations=1)
    record(benchmark, ("model", alg), 1, "calls/s", efficiency=rep.efficiency,
           model_time=rep.time)


def _table(res):
    lines = []
    base = res.get(("data", "numpy"), {}).get("rate")
    if base:
        lines.append(f"All-reduce data path: 25 x {N_TILE * 4 / MiB:.0f} MiB float32 on the 5x5 "
                     f"tile, bytes reduced per second (same run)")
        lines.append(f"  numpy sum(axis=0)       {base / 1e9:7.2f} GB/s")
        for alg in DATA_ALGS:
            r = res.get(("data", alg), {}).get("rate")
            if r:
                lines.append(f"  allreduce {alg:14s}{r / 1e9:7.2f} GB/s  x{r / base:.2f} numpy")
    if any(k[0] == "model" for k in res if isinstance(k, tuple)):
        lines.append("estimate_allreduce(1 GiB) on chip_mesh(50, 60) = 3000 D1: wall time, "
                     "model time, efficiency")
        for alg in ALGORITHMS + ("auto",):
            r = res.get(("model", alg))
            if r:
                lines.append(f"  {alg:18s} {r['seconds']:7.3f} s   {r['model_time'] * 1e3:8.3f} ms"
                             f"   {r['efficiency']:.3f}")
        lines.append("efficiency on chip meshes, 1 GiB per node:   5x5    8x8")
        for alg, (e5, e8) in _efficiencies().items():
            lines.append(f"  {alg:18s}                          {e5:.3f}  {e8:.3f}")
    return lines


def _efficiencies():
    table = efficiency_table()
    return {alg: tuple(reps[alg].efficiency for _, reps in table) for alg in ALGORITHMS}


TABLES.append(_table)


def efficiency_table(nbytes=1 << 30):
    rows = []
    for k in (5, 8):
        m = chip_mesh(k, k)
        rows.append((k, {a: estimate_allreduce(nbytes, m, algorithm=a) for a in ALGORITHMS}))
    return rows


def main():
    tile = training_tile()
    x = np.random.default_rng(0).standard_normal((25, 64 * MiB // 4), dtype=np.float32)
    print(f"data path: 25 x 64 MiB float32 on the 5x5 tile ({x.nbytes / 2**30:.2f} GiB reduced)")

    def best(f, k=3):
        ts = []
        for _ in range(k):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return min(ts)

    t_np = best(lambda: x.sum(axis=0))
    print(f"  numpy sum(axis=0)         {t_np * 1e3:8.1f} ms  {x.nbytes / t_np / 1e9:6.2f} GB/s")
    for alg in DATA_ALGS:
        t = best(cold(lambda: allreduce(x, tile, algorithm=alg)))
        print(f"  allreduce {alg:16s}{t * 1e3:8.1f} ms  {x.nbytes / t / 1e9:6.2f} GB/s  "
              f"x{t_np / t:.2f} numpy")
    print("model path: estimate_allreduce(1 GiB) on chip_mesh(50, 60) = 3000 D1")
    m = chip_mesh(50, 60)
    for alg in ALGORITHMS + ("auto",):
        t0 = time.perf_counter()
        r = cold(lambda: estimate_allreduce(1 << 30, m, algorithm=alg))()
        dt = time.perf_counter() - t0
        print(f"  {alg:18s} wall {dt:6.3f} s  model {r.time * 1e3:9.3f} ms  "
              f"efficiency {r.efficiency:.3f}  steps {r.steps}")
    print("efficiency (lower bound / time), 1 GiB per node, chip_mesh figures:")
    table = efficiency_table()
    print("  algorithm           " + "  ".join(f"{k}x{k}  " for k, _ in table))
    for alg in ALGORITHMS:
        print(f"  {alg:18s}  " + "  ".join(f"{reps[alg].efficiency:.3f}" for _, reps in table))


if __name__ == "__main__":
    main()
