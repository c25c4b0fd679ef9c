"""Threads under load (issue 11, item 1): every kernel kind at 1 thread and at the default
thread count, on an idle machine and with one busy process that the benchmark starts (and
stops) itself, reported as ratios measured in the same run.

    flock /tmp/dk-timing.lock python -m pytest bench/bench_threads.py --benchmark-only -q

Targets: with the busy process, default threads / 1 thread time <= 1.3 for every kernel;
idle, 1 thread / 2 threads time >= 1.7 on the large problems (gemm 2048^3, millions of
elements). The kernels: gemm 256^3 and 2048^3 (BF16 codes), quantize 4M float32 -> BF16,
dequantize 8M, add 8M BF16 codes, fake_quantize 8M float32 through CFloat8, choose_bias 16M
float32 and the all-reduce's FP32 accumulate ("reduce") of 8M. The busy process is a
`while True: pass` pinned to the last CPU this process may use (beside our threads: on a
2-core machine, one of the two cores); on a shared machine "idle" is only as idle as the
other users let it be (compare the ratios, not the rates).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import _config, _reduce

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchlib import TABLES, bench_size, record  # noqa: E402

DEFAULT = max(2, _config._default_threads()[0])
CF8 = dk.cfloat8_143(7)
THREADS = [1, DEFAULT]
LOADS = ["idle", "busy"]
N = bench_size(1 << 23)
KINDS = ["quantize", "dequantize", "add", "fake_quantize", "choose_bias", "gemm256", "gemm2048",
         "allreduce"]
#: the kernels held to the idle >= 1.7x target (the large problems)
LARGE = ["quantize", "dequantize", "add", "fake_quantize", "choose_bias", "gemm2048",
         "allreduce"]

_data: dict = {}


def data():
    if not _data:
        rng = np.random.default_rng(0)
        x = rng.standard_normal(N).astype(np.float32)
        _data["x"] = x
        _data["x4"] = x[: N // 2]
        _data["x16"] = rng.standard_normal(2 * N).astype(np.float32)
        _data["codes"] = dk.quantize(x, dk.BF16)
        _data["y"] = np.empty(N, np.float32)
        _data["o16"] = np.empty(N // 2, np.uint16)
        _data["a256"] = dk.quantize(rng.standard_normal((256, 256)).astype(np.float32), dk.BF16)
        s = 2048 if N >= (1 << 22) else 512
        _data["a2048"] = dk.quantize(rng.standard_normal((s, s)).astype(np.float32), dk.BF16)
        _data["o256"] = np.empty((256, 256), np.float32)
        _data["o2048"] = np.empty((s, s), np.float32)
        _data["acc"] = np.zeros(N, np.float32)
    return _data


def kernel(kind):
    d = data()
    if kind == "quantize":
        return (lambda: dk.quantize(d["x4"], dk.BF16, out=d["o16"])), N // 2, "elem/s"
    if kind == "fake_quantize":
        return (lambda: dk.fake_quantize(d["x"], CF8, out=d["y"])), N, "elem/s"
    if kind == "choose_bias":
        return (lambda: dk.choose_bias(d["x16"], "cfloat8_143")), 2 * N, "elem/s"
    if kind == "dequantize":
        return (lambda: dk.dequantize(d["codes"], dk.BF16, out=d["y"])), N, "elem/s"
    if kind == "add":
        return (lambda: dk.add(d["codes"], d["codes"], dk.BF16)), N, "elem/s"
    if kind == "allreduce":  # the all-reduce data path: FP32 accumulate of two buffers
        return (lambda: _reduce.accumulate(_config.isa(), _config.threads(), d["acc"], d["x"],
                                           False)), N, "elem/s"
    a, o = (d["a256"], d["o256"]) if kind == "gemm256" else (d["a2048"], d["o2048"])
    return (lambda: dk.gemm(a, a, a_format=dk.BF16, out=o)), 2.0 * a.shape[0] ** 3, "FLOP/s"


@pytest.fixture(params=LOADS)
def load(request):
    """'busy': one `while True: pass` process pinned to the last CPU we may use, for the
    duration of the test."""
    if request.param == "idle":
        yield "idle"
        return
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = (f"import os; os.sched_setaffinity(0, {{{cpus[-1]}}}); " if cpus else "")
    p = subprocess.Popen([sys.executable, "-c", pin + "while True: pass"])
    time.sleep(0.3)
    try:
        yield "busy"
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("th", THREADS)
@pytest.mark.parametrize("kind", KINDS)
def test_threads(benchmark, threads, load, kind, th):
    fn, work, unit = kernel(kind)
    threads(th)
    benchmark.group = f"threads {kind} {load}"
    benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=1)
    record(benchmark, ("thr", kind, load, th), work, unit)


def _table(res):
    def rate(kind, load, th):
        return res.get(("thr", kind, load, th), {}).get("rate")

    lines = [f"Threads under load: time at {DEFAULT} threads / time at 1 thread "
             f"(targets: busy <= 1.3; idle, on {', '.join(LARGE)}: <= 1/1.7 = 0.59)",
             "kernel        idle 1thr rate    idle ratio   busy 1thr rate    busy ratio"]
    for kind in KINDS:
        cells = []
        for load in LOADS:
            r1, rd = rate(kind, load, 1), rate(kind, load, DEFAULT)
            unit = res.get(("thr", kind, load, 1), {}).get("unit", "")
            cells.append(f"{r1 / 1e9:8.2f} G{unit:7s}" if r1 else f"{'n/a':>17s}")
            cells.append(f"{r1 / rd:8.2f}" if r1 and rd else f"{'n/a':>8s}")
        lines.append(f"{kind:12s}  " + "    ".join(cells))
    return lines


TABLES.append(_table)
