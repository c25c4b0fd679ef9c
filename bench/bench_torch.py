"""D1Linear forward+backward beside torch's nn.Linear (BF16 and FP32), in one run.

    python -m pytest bench/bench_torch.py --benchmark-only -q

One transformer-block shape: the MLP up-projection of d_model 1024 (1024 -> 4096) on 512
tokens (DOJO_BENCH_SCALE scales the tokens). One iteration = forward + backward (dX and dW):
three GEMMs, 3 x 2 M K N FLOP. Peers: nn.Linear in float32 (MKL/oneDNN sgemm) and in
bfloat16 (oneDNN, AMX or AVX512_BF16 where the CPU has them), same threads (all cores).
D1Linear runs the CFloat8 recipe (1-4-3 forward, 1-5-2 gradients, bias per tensor) and the
BF16 recipe: on top of the D1 GEMMs it pays an amax pass and a quantization per operand.
"""
import os

import pytest

torch = pytest.importorskip("torch", reason="pip install '.[torch]'")

from dojo_kernels import torch as dkt  # noqa: E402

from _benchlib import RESULTS, TABLES, record  # noqa: E402

SCALE = float(os.environ.get("DOJO_BENCH_SCALE", "1"))
M = max(64, int(512 * SCALE))
K, N = 1024, 4096
FLOP = 3 * 2.0 * M * K * N
ROUNDS = dict(rounds=3, iterations=1, warmup_rounds=1)


def _step(layer, x, g):
    def run():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(g)
    return run


def _layer(kind):
    torch.manual_seed(0)
    if kind == "torch_fp32":
        return torch.nn.Linear(K, N), torch.float32
    if kind == "torch_bf16":
        return torch.nn.Linear(K, N).to(torch.bfloat16), torch.bfloat16
    recipe = dkt.RECIPES["cfloat8" if kind == "d1_cfloat8" else "bf16"]
    return dkt.D1Linear(K, N, recipe=recipe), torch.float32


KINDS = ["torch_bf16", "torch_fp32", "d1_bf16", "d1_cfloat8"]


@pytest.mark.parametrize("kind", KINDS)
def test_linear_fwd_bwd(benchmark, kind):
    layer, dtype = _layer(kind)
    x = torch.randn(M, K, dtype=dtype, requires_grad=True)
    g = torch.randn(M, N, dtype=dtype) * 1e-2
    benchmark.pedantic(_step(layer, x, g), **ROUNDS)
    record(benchmark, ("linear", kind), FLOP, "FLOP/s")


def _table(results):
    rows = [(k, results[("linear", k)]) for k in KINDS if ("linear", k) in results]
    if not rows:
        return []
    ref = {k: results[("linear", k)]["seconds"] for k in ("torch_bf16", "torch_fp32")
           if ("linear", k) in results}
    lines = [f"Linear {K} -> {N} on {M} tokens, forward + backward ({FLOP / 1e9:.1f} GFLOP), "
             f"torch threads {torch.get_num_threads()}",
             f"{'layer':<12} {'ms':>8} {'GFLOP/s':>9} {'speed vs torch bf16':>20} "
             f"{'vs torch fp32':>14}"]
    for k, r in rows:
        vs = [f"{ref[p] / r['seconds']:.2f}x" if p in ref else "-"
              for p in ("torch_bf16", "torch_fp32")]
        lines.append(f"{k:<12} {r['seconds'] * 1e3:8.1f} {r['rate'] / 1e9:9.1f} {vs[0]:>20} "
                     f"{vs[1]:>14}")
    return lines


TABLES.append(_table)
