"""Arithmetic on codes, stochastic rounding and fake_quantize, beside their peers in one run.

    python -m pytest bench/bench_arith.py --benchmark-only -q

8M elements, 1 and 2 kernel threads (torch gets the same count):
- BF16 add / mul / fma (nearest and stochastic) beside torch's bf16 ``a + b``, ``a * b`` and
  ``torch.addcmul`` into preallocated outputs (torch rounds each op to nearest);
- CFloat8 1_4_3 and SHP add / mul / fma, nearest and stochastic (no torch peer: torch has
  no arithmetic in these formats; the peer is the same op rounded to nearest);
- quantize float32 -> CFloat8 / BF16 with nearest and stochastic rounding;
- fake_quantize float32 -> CFloat8 / BF16 -> float32 beside a NumPy copy of the same bytes
  (np.copyto, single-threaded: the bandwidth peer);
- choose_bias beside ``np.abs(x).max()`` at 4K and 16M elements.
The table at the end gives the ratios (targets of issue 11 in brackets).
"""
import numpy as np
import pytest

import dojo_kernels as dk

from _benchlib import RESULTS, TABLES, bench_size, record

N = bench_size(1 << 23)
THREADS = [1, 2]
ROUNDS = dict(rounds=7, iterations=1, warmup_rounds=1)
CF8 = dk.cfloat8_143(7)
SHP = dk.shp(15)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, N), dtype=np.float32)
    bf = [dk.quantize(v, dk.BF16) for v in x]
    c8 = [dk.quantize(v * 4, CF8) for v in x]
    shp = [dk.quantize(v * 4, SHP) for v in x]
    return dict(x=x, bf=bf, c8=c8, shp=shp, out16=np.empty(N, np.uint16), out8=np.empty(N, np.uint8),
                f32=np.empty(N, np.float32), f32c=np.empty(N, np.float32))


def _torch(t):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(t)
    return torch


@pytest.mark.parametrize("t", THREADS)
@pytest.mark.parametrize("op", ["add", "mul", "fma"])
def test_torch_bf16(benchmark, data, op, t):
    torch = _torch(t)
    a, b, c = (torch.from_numpy(v.view(np.int16)).view(torch.bfloat16) for v in data["bf"])
    out = torch.empty_like(a)
    fn = {"add": lambda: torch.add(a, b, out=out), "mul": lambda: torch.mul(a, b, out=out),
          "fma": lambda: torch.addcmul(c, a, b, out=out)}[op]
    benchmark.pedantic(fn, **ROUNDS)
    record(benchmark, ("torch", op, t), N, "elem/s")


@pytest.mark.parametrize("t", THREADS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("op", ["add", "mul", "fma"])
def test_bf16_arith(benchmark, data, threads, op, rounding, t):
    threads(t)
    a, b, c = data["bf"]
    out = data["out16"]
    ops = (a, b, c) if op == "fma" else (a, b)
    fn = getattr(dk, op)
    benchmark.pedantic(lambda: fn(*ops, dk.BF16, rounding=rounding, seed=1, out=out), **ROUNDS)
    record(benchmark, ("bf16", op, rounding, t), N, "elem/s")


@pytest.mark.parametrize("t", THREADS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("op", ["add", "mul", "fma"])
@pytest.mark.parametrize("name", ["cf8", "shp"])
def test_narrow_arith(benchmark, data, threads, name, op, rounding, t):
    threads(t)
    fmt, codes, out = (CF8, data["c8"], data["out8"]) if name == "cf8" else \
        (SHP, data["shp"], data["out16"])
    ops = codes if op == "fma" else codes[:2]
    fn = getattr(dk, op)
    benchmark.pedantic(lambda: fn(*ops, fmt, rounding=rounding, seed=1, out=out), **ROUNDS)
    record(benchmark, (name, op, rounding, t), N, "elem/s")


@pytest.mark.parametrize("t", THREADS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", ["cf8", "bf16"])
def test_quantize(benchmark, data, threads, name, rounding, t):
    threads(t)
    fmt, out = (CF8, data["out8"]) if name == "cf8" else (dk.BF16, data["out16"])
    x = data["x"][0]
    benchmark.pedantic(lambda: dk.quantize(x, fmt, rounding=rounding, seed=1, out=out), **ROUNDS)
    record(benchmark, ("q", name, rounding, t), N, "elem/s")


def test_numpy_copy(benchmark, data):
    x, dst = data["x"][0], data["f32c"]
    benchmark.pedantic(np.copyto, args=(dst, x), **ROUNDS)
    record(benchmark, "copy", N, "elem/s")


@pytest.mark.parametrize("t", THREADS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", ["cf8", "bf16"])
def test_fake_quantize(benchmark, data, threads, name, rounding, t):
    threads(t)
    fmt = CF8 if name == "cf8" else dk.BF16
    x, out = data["x"][0], data["f32"]  # preallocated, as the NumPy copy's destination
    benchmark.pedantic(lambda: dk.fake_quantize(x, fmt, rounding=rounding, seed=1, out=out),
                       **ROUNDS)
    record(benchmark, ("fq", name, rounding, t), N, "elem/s")


@pytest.mark.parametrize("n", [4096, 1 << 24])
@pytest.mark.parametrize("who", ["choose_bias", "np_abs_max"])
def test_choose_bias(benchmark, who, n):
    x = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
    fn = (lambda: dk.choose_bias(x, "cfloat8_143")) if who == "choose_bias" else \
        (lambda: np.abs(x).max())
    benchmark.pedantic(fn, rounds=50 if n == 4096 else 5, iterations=20 if n == 4096 else 1,
                       warmup_rounds=1)
    record(benchmark, ("cb", who, n), n, "elem/s")


SMALL_N = 1024


@pytest.mark.parametrize("who", ["dk_add", "dk_quantize", "torch_add", "numpy_f32_add"])
def test_small_call(benchmark, threads, who):
    """The per-call cost: 1,024 elements (BF16 codes; float32 into BF16 for quantize), one
    thread, into preallocated outputs, beside torch's bf16 ``+`` and NumPy's float32 ``+``."""
    threads(1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, SMALL_N), dtype=np.float32)
    a, b = (dk.quantize(v, dk.BF16) for v in x)
    out16, out32 = np.empty(SMALL_N, np.uint16), np.empty(SMALL_N, np.float32)
    if who == "torch_add":
        torch = _torch(1)
        ta, tb = (torch.from_numpy(v.view(np.int16)).view(torch.bfloat16) for v in (a, b))
        to = torch.empty_like(ta)
        fn = lambda: torch.add(ta, tb, out=to)  # noqa: E731
    else:
        fn = {"dk_add": lambda: dk.add(a, b, dk.BF16, out=out16),
              "dk_quantize": lambda: dk.quantize(x[0], dk.BF16, out=out16),
              "numpy_f32_add": lambda: np.add(x[0], x[1], out=out32)}[who]
    benchmark.pedantic(fn, rounds=50, iterations=200, warmup_rounds=1)
    record(benchmark, ("small", who), 1, "call/s")


def _table(res):
    g = lambda k: res.get(k, {}).get("rate")  # noqa: E731
    gel = lambda v: f"{v / 1e9:6.2f}" if v else "   n/a"  # noqa: E731
    rat = lambda a, b: f"{a / b:5.2f}x" if a and b else "  n/a"  # noqa: E731
    if not any(isinstance(k, tuple) and k[0] in ("bf16", "cf8", "shp", "fq", "small") for k in res):
        return []
    lines = [f"Arithmetic on codes, {N:,} elements, Gelem/s (ratios in the same run)",
             "op   thr | bf16 near  stoch  torch | near/torch [>=1]  stoch/near [>=0.5] "
             "| cf8 near  stoch  ratio | shp near  stoch  ratio"]
    for op in ("add", "mul", "fma"):
        for t in THREADS:
            n, s, tt = g(("bf16", op, "nearest", t)), g(("bf16", op, "stochastic", t)), g(("torch", op, t))
            c8n, c8s = g(("cf8", op, "nearest", t)), g(("cf8", op, "stochastic", t))
            shn, shs = g(("shp", op, "nearest", t)), g(("shp", op, "stochastic", t))
            lines.append(f"{op:4s} {t:3d} | {gel(n)}  {gel(s)} {gel(tt)} | {rat(n, tt):>16s}  "
                         f"{rat(s, n):>18s} | {gel(c8n)}  {gel(c8s)} {rat(c8s, c8n)} | "
                         f"{gel(shn)}  {gel(shs)} {rat(shs, shn)}")
    for t in THREADS:
        fma, add = g(("bf16", "fma", "nearest", t)), g(("bf16", "add", "nearest", t))
        lines.append(f"fma / add, {t} thread(s): {rat(fma, add)} [>=0.5]")
    for name in ("cf8", "bf16"):
        for t in THREADS:
            qn, qs = g(("q", name, "nearest", t)), g(("q", name, "stochastic", t))
            lines.append(f"quantize f32 -> {name}, {t} thread(s): nearest {gel(qn).strip()}, "
                         f"stochastic {gel(qs).strip()}: {rat(qs, qn)} [>=0.7]")
    copy = g("copy")
    for name in ("cf8", "bf16"):
        for t in THREADS:
            for rounding in ("nearest", "stochastic"):
                fq = g(("fq", name, rounding, t))
                # fake_quantize moves 8 bytes per element (4 read, 4 written), as the copy does
                lines.append(f"fake_quantize f32 -> {name} -> f32 ({rounding}), {t} thread(s): "
                             f"{gel(fq).strip()} Gelem/s = {rat(fq, copy)} of a NumPy f32 copy "
                             f"({gel(copy).strip()}, 1 thread) [>=0.8]")
    us = {w: 1e6 / g(("small", w)) for w in ("dk_add", "dk_quantize", "torch_add", "numpy_f32_add")
          if g(("small", w))}
    if us:
        lines.append(f"per call at {SMALL_N:,} elements, 1 thread (us): " + ", ".join(
            f"{w} {v:.2f}" for w, v in us.items()))
    for n in (4096, 1 << 24):
        cb, ref = g(("cb", "choose_bias", n)), g(("cb", "np_abs_max", n))
        lines.append(f"choose_bias on {n:,} float32: {rat(cb, ref)} the speed of np.abs(x).max() "
                     "[>=0.33 at 4K]")
    return lines


TABLES.append(_table)
