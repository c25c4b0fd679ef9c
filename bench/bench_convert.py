"""Conversion throughput: dojo_kernels vs ml_dtypes and a NumPy copy, in one run.

    python -m pytest bench/bench_convert.py --benchmark-only -q

16M float32 elements (N(0,1) * 4, all in range), 1 and 2 kernel threads. ml_dtypes casts
are single-threaded. "copy" is np.copyto of float32 (8 bytes moved per element); the
bandwidth column divides the bytes a conversion moves by its time.
"""
import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import _bench

from _benchlib import RESULTS, TABLES, bench_size, record

N = bench_size(1 << 24)
THREADS = [1, 2]
ROUNDS = dict(rounds=5, iterations=1, warmup_rounds=1)

FORMATS = {
    "bf16": dk.BF16,
    "cf8_143": dk.cfloat8_143(7),
    "cf8_152": dk.cfloat8_152(15),
    "shp": dk.shp(15),
    "uhp": dk.UHP,
}


@pytest.fixture(scope="module")
def data():
    x = np.random.default_rng(0).standard_normal(N, dtype=np.float32) * 4
    return dict(x=x, f32=np.empty(N, np.float32))


def test_numpy_copy(benchmark, data):
    x, dst = data["x"], data["f32"]
    benchmark.pedantic(np.copyto, args=(dst, x), **ROUNDS)
    record(benchmark, "copy", N, "elem/s", bytes_per_elem=8)


@pytest.mark.parametrize("t", THREADS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_quantize(benchmark, data, threads, name, rounding, t):
    threads(t)
    fmt, x = FORMATS[name], data["x"]
    out = np.empty(N, fmt.storage_dtype)
    benchmark.pedantic(lambda: dk.quantize(x, fmt, rounding=rounding, seed=1, out=out), **ROUNDS)
    record(benchmark, ("q", name, rounding, t), N, "elem/s", bytes_per_elem=4 + out.itemsize)


@pytest.mark.parametrize("t", THREADS)
@pytest.mark.parametrize("name", list(FORMATS))
def test_dequantize(benchmark, data, threads, name, t):
    threads(t)
    fmt = FORMATS[name]
    codes, out = dk.quantize(data["x"], fmt), data["f32"]
    benchmark.pedantic(lambda: dk.dequantize(codes, fmt, out=out), **ROUNDS)
    record(benchmark, ("d", name, t), N, "elem/s", bytes_per_elem=4 + codes.itemsize)


ML = {"bf16": "bfloat16", "cf8_143": "float8_e4m3fn", "cf8_152": "float8_e5m2"}


@pytest.mark.parametrize("how", ["copyto", "astype"])
@pytest.mark.parametrize("name", list(ML))
def test_ml_dtypes(benchmark, data, name, how):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = getattr(ml_dtypes, ML[name])
    x, f32 = data["x"], data["f32"]
    dst, y = np.empty(N, t), x.astype(t)
    if how == "copyto":
        to = benchmark.pedantic(lambda: np.copyto(dst, x, casting="unsafe"), **ROUNDS)
    else:
        to = benchmark.pedantic(lambda: x.astype(t), **ROUNDS)
    record(benchmark, ("ml", name, how, "to"), N, "elem/s")
    # the reverse direction, timed in the same process (one extra table column)
    fn = (lambda: np.copyto(f32, y, casting="unsafe")) if how == "copyto" else (lambda: y.astype(np.float32))
    best = _bench._best(fn, 5)
    RESULTS[("ml", name, how, "from")] = dict(rate=N / best, unit="elem/s")
    del to


def _table(res):
    g = lambda k: res.get(k, {}).get("rate")  # noqa: E731
    fmt = lambda v: f"{v / 1e9:6.2f}" if v else "   n/a"  # noqa: E731
    ratio = lambda a, b: f"{a / b:6.1f}x" if a and b else "    n/a"  # noqa: E731
    copy = g("copy")
    lines = [f"Conversions, {N:,} float32 elements, Gelem/s (ratios in the same run)",
             "format    thr   quant  stoch  stoch/q  dequant | vs ml_dtypes copyto: quant  dequant"
             " | quant bandwidth vs copy"]
    for name in FORMATS:
        for t in THREADS:
            q, s, d = g(("q", name, "nearest", t)), g(("q", name, "stochastic", t)), g(("d", name, t))
            mlq, mld = g(("ml", name, "copyto", "to")), g(("ml", name, "copyto", "from"))
            bw = (q * res[("q", name, "nearest", t)]["bytes_per_elem"] / (copy * 8)) if q and copy else None
            lines.append(f"{name:8s} {t:3d}  {fmt(q)} {fmt(s)}  {ratio(s, q)}  {fmt(d)}  | "
                         f"{ratio(q, mlq):>22s} {ratio(d, mld):>8s} | "
                         f"{(f'{100 * bw:5.0f}%') if bw else '  n/a'}")
    lines.append(f"numpy copy (float32): {fmt(copy)} Gelem/s; ml_dtypes astype to/from: " + ", ".join(
        f"{n} {fmt(g(('ml', n, 'astype', 'to'))).strip()}/{fmt(g(('ml', n, 'astype', 'from'))).strip()}"
        for n in ML))
    lines.append("(cf8 peers: ml_dtypes float8_e4m3fn for 1_4_3, float8_e5m2 for 1_5_2)")
    return lines


TABLES.append(_table)
