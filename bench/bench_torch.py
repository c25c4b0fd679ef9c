"""D1Linear forward+backward beside torch's nn.Linear (BF16 and FP32), in one run; and
a batch-1 forward (inference), with and without ``cached_weights``.

    python -m pytest bench/bench_torch.py --benchmark-only -q

One transformer-block shape: the MLP up-projection of d_model 1024 (1024 -> 4096) on 512
tokens (DOJO_BENCH_SCALE scales the tokens). One iteration = forward + backward (dX and dW):
three GEMMs, 3 x 2 M K N FLOP. Peers: nn.Linear in float32 (MKL/oneDNN sgemm) and in
bfloat16 (oneDNN, AMX or AVX512_BF16 where the CPU has them), same threads (all cores).
D1Linear runs the CFloat8 recipe (1-4-3 forward, 1-5-2 gradients, bias per tensor) and the
BF16 recipe: on top of the D1 GEMMs it pays an amax pass and a quantization per operand. The
"_vdp" rows run the same recipes in the GEMM's ``vdpbf16ps`` order (``Recipe(order=...)``),
the faster one on a CPU with AVX512_BF16 and no AMX (the default ``amx`` order runs there
on FP32 FMAs, at half VDPBF16PS's rate on a Zen 4: docs/gemm.md).

The inference rows: one token through a 4096 -> 4096 layer under ``torch.no_grad``, a GEMV
(2 N K FLOP). Without the cache a D1Linear call measures and rounds the whole weight
(64 MiB of float32) before a product that reads a quarter (CFloat8) or half (BF16) of
that; inside ``dkt.cached_weights()`` it rounds the weight once. The D1 rows run before
torch's so that torch's spinning OpenMP threads (docs/threads.md) do not sit on the
cores they use.
"""
import contextlib
import dataclasses
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


def _layer(kind, k=K, n=N):
    """A k -> n layer of one kind, and its dtype (a "_cached" D1 kind is the plain one; a
    "_vdp" one runs its GEMMs in the ``vdpbf16ps`` order)."""
    torch.manual_seed(0)
    if kind == "torch_fp32":
        return torch.nn.Linear(k, n), torch.float32
    if kind == "torch_bf16":
        return torch.nn.Linear(k, n).to(torch.bfloat16), torch.bfloat16
    recipe = dkt.RECIPES["cfloat8" if kind.startswith("d1_cfloat8") else "bf16"]
    if kind.endswith("_vdp"):
        recipe = dataclasses.replace(recipe, order="vdpbf16ps")
    return dkt.D1Linear(k, n, recipe=recipe), torch.float32


KINDS = ["torch_bf16", "torch_fp32", "d1_bf16", "d1_cfloat8", "d1_bf16_vdp", "d1_cfloat8_vdp"]


@pytest.mark.parametrize("kind", KINDS)
def test_linear_fwd_bwd(benchmark, kind):
    layer, dtype = _layer(kind)
    x = torch.randn(M, K, dtype=dtype, requires_grad=True)
    g = torch.randn(M, N, dtype=dtype) * 1e-2
    benchmark.pedantic(_step(layer, x, g), **ROUNDS)
    record(benchmark, ("linear", kind), FLOP, "FLOP/s")


INF_K = INF_N = 4096
INF_FLOP = 2.0 * INF_K * INF_N
INF_KINDS = ["d1_cfloat8", "d1_cfloat8_cached", "d1_bf16", "d1_bf16_cached", "torch_bf16",
             "torch_fp32"]


@pytest.mark.parametrize("kind", INF_KINDS)
def test_linear_batch1_forward(benchmark, kind):
    layer, dtype = _layer(kind, INF_K, INF_N)
    x = torch.randn(1, INF_K, dtype=dtype)
    cache = dkt.cached_weights() if kind.endswith("_cached") else contextlib.nullcontext()
    with torch.no_grad(), cache:
        layer(x)                       # the cached rows round the weight here, once
        benchmark.pedantic(layer, args=(x,), rounds=15, iterations=1, warmup_rounds=2)
    record(benchmark, ("linear1", kind), INF_FLOP, "FLOP/s")


def _ratios(results, group, kinds, title, digits):
    """Rows of one benchmark group: time, rate and speed against torch's two layers."""
    rows = [(k, results[(group, k)]) for k in kinds if (group, k) in results]
    if not rows:
        return []
    ref = {k: results[(group, k)]["seconds"] for k in ("torch_bf16", "torch_fp32")
           if (group, k) in results}
    lines = [f"{title}, torch threads {torch.get_num_threads()}",
             f"{'layer':<18} {'ms':>8} {'GFLOP/s':>9} {'speed vs torch bf16':>20} "
             f"{'vs torch fp32':>14}"]
    for k, r in rows:
        vs = [f"{ref[p] / r['seconds']:.2f}x" if p in ref else "-"
              for p in ("torch_bf16", "torch_fp32")]
        lines.append(f"{k:<18} {r['seconds'] * 1e3:8.{digits}f} {r['rate'] / 1e9:9.1f} "
                     f"{vs[0]:>20} {vs[1]:>14}")
    return lines


def _table(results):
    return _ratios(results, "linear", KINDS, f"Linear {K} -> {N} on {M} tokens, forward + "
                   f"backward ({FLOP / 1e9:.1f} GFLOP)", 1)


def _inference_table(results):
    return _ratios(results, "linear1", INF_KINDS, f"Linear {INF_K} -> {INF_N}, one token, "
                   f"forward under no_grad ({INF_FLOP / 1e6:.1f} MFLOP)", 2)


TABLES.append(_table)
TABLES.append(_inference_table)
