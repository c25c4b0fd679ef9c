"""plan_gemm benchmarks (pytest-benchmark): a new shape and a repeated one.

    flock /tmp/dk-timing.lock python -m pytest bench/bench_plan.py --benchmark-only \
        --benchmark-group-by=group

- new shape: every round plans a shape it has never seen (the plan caches are cleared), on a
  D1 chip, a training tile and a 2 x 3-tile system, for a square GEMM, a skinny one and the
  issue's CFloat8 GEMV (target: under 1 ms each on an idle machine);
- repeated shape: the same call again (the cache: target a dict lookup), beside ``gemm`` of
  16 x 16 (``gemm(..., return_plan=True)`` should cost what ``gemm`` costs) and NumPy's
  16 x 16 matmul, in the same run.
"""
import os
import sys

import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import BF16, D1Chip, DojoSystem, TrainingTile, cfloat8_143

sys.path.insert(0, os.path.dirname(__file__))
from _benchlib import RESULTS, TABLES, record  # noqa: E402

G = sys.modules["dojo_kernels.gemm"]
MACHINES = {"chip": D1Chip(), "tile": TrainingTile(), "system2x3": DojoSystem(tiles=6)}
SHAPES = {"square 4096": ((4096, 4096, 4096), BF16),
          "skinny 64x8192x8192": ((64, 8192, 8192), BF16),
          "gemv cf8 1x8192x8192": ((1, 8192, 8192), cfloat8_143(7))}


@pytest.mark.benchmark(group="plan_gemm, new shape")
@pytest.mark.parametrize("machine", list(MACHINES))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_plan_new_shape(benchmark, machine, shape):
    (m, n, k), f = SHAPES[shape]
    mach = MACHINES[machine]
    counter = iter(range(10 ** 9))

    def setup():
        G.clear_plan_cache()
        return (m, n, k + next(counter) % 7), {}   # a slightly different k: a new shape

    benchmark.pedantic(lambda m_, n_, k_: dk.plan_gemm(m_, n_, k_, a_format=f, b_format=f,
                                                       machine=mach),
                       setup=setup, rounds=30, iterations=1)
    record(benchmark, f"new {machine} {shape}", 1, "plans")


@pytest.mark.benchmark(group="plan_gemm, repeated shape (and its peers)")
@pytest.mark.parametrize("machine", list(MACHINES))
def test_plan_repeated(benchmark, machine):
    mach = MACHINES[machine]
    dk.plan_gemm(4096, 4096, 4096, a_format=BF16, b_format=BF16, machine=mach)
    benchmark(dk.plan_gemm, 4096, 4096, 4096, a_format=BF16, b_format=BF16, machine=mach)
    record(benchmark, f"repeated {machine}", 1, "plans")


@pytest.mark.benchmark(group="plan_gemm, repeated shape (and its peers)")
@pytest.mark.parametrize("inputs", ["f32", "u16"])
@pytest.mark.parametrize("return_plan", [False, True])
def test_gemm_16(benchmark, return_plan, inputs):
    """dk.gemm of 16 x 16 BF16 (float32 inputs rounded per call, or BF16 codes); target:
    within 10x NumPy's float32 16 x 16 matmul, return_plan=True about the same."""
    a = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    if inputs == "u16":
        a = dk.quantize(a, BF16)
    dk.gemm(a, a, return_plan=return_plan)
    benchmark(dk.gemm, a, a, return_plan=return_plan)
    record(benchmark, f"gemm16 {inputs} plan={return_plan}", 1, "calls")


@pytest.mark.benchmark(group="plan_gemm, repeated shape (and its peers)")
def test_numpy_matmul_16(benchmark):
    a = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    benchmark(np.matmul, a, a)
    record(benchmark, "numpy matmul16", 1, "calls")


def _table(results):
    lines = ["plan_gemm (seconds per call, fastest round; same run)"]
    for key in sorted(k for k in results
                      if isinstance(k, str) and k.startswith(("new ", "repeated "))):
        lines.append(f"  {key:<40} {results[key]['seconds'] * 1e6:10.1f} us")
    npm = results.get("numpy matmul16")
    for inputs in ("f32", "u16"):
        g0, g1 = results.get(f"gemm16 {inputs} plan=False"), results.get(f"gemm16 {inputs} plan=True")
        if g0 and g1:
            lines.append(f"  gemm 16x16 ({inputs}) with return_plan / without: "
                         f"{g1['seconds'] / g0['seconds']:.2f}x")
        if g0 and npm:
            lines.append(f"  gemm 16x16 ({inputs}) / numpy 16x16 matmul: "
                         f"{g0['seconds'] / npm['seconds']:.2f}x [<= 10]")
    rep = results.get("repeated chip")
    if npm and rep:
        lines.append(f"  repeated plan_gemm / numpy 16x16 matmul: {rep['seconds'] / npm['seconds']:.2f}x")
    return lines if len(lines) > 1 else []


TABLES.append(_table)
