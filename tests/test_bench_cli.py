"""`dojo-kernels bench` (issue 11, item 4): the suite is collected, every figure comes with
its spread over repeats, --json, and the machine-state warnings."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from dojo_kernels import _bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


@pytest.mark.skipif(not os.path.isdir(BENCH), reason="needs the source checkout's bench/")
def test_suite_collects_every_bench_file():
    pytest.importorskip("pytest_benchmark", reason="the bench suite needs pytest-benchmark "
                        "(the [test] or [bench] extra; the sanitizer build's venv lacks it)")
    p = subprocess.run([sys.executable, "-m", "dojo_kernels", "bench", "--suite",
                        "--collect-only"], cwd=BENCH, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    m = re.search(r"(\d+) tests? collected", p.stdout)
    assert m and int(m.group(1)) > 0, p.stdout[-2000:]
    files = {f for f in os.listdir(BENCH) if f.startswith("bench_") and f.endswith(".py")}
    if importlib.util.find_spec("torch") is None:  # bench_torch.py skips whole without torch
        assert "bench_torch.py" in p.stdout or "skipped" in p.stdout
        files.discard("bench_torch.py")
    for f in files:  # every file contributes (pytest -q lists node ids "path::name")
        assert f + "::" in p.stdout, f


def test_quick_bench_json_has_spreads(tmp_path):
    out = tmp_path / "b.json"
    p = subprocess.run([sys.executable, "-m", "dojo_kernels", "bench", "--quick", "--threads",
                        "1", "-q", "--json", str(out)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "median [min-max]" in p.stdout and "machine:" in p.stdout
    d = json.loads(out.read_text())
    assert d["machine"]["cpus"] >= 1 and "loadavg" in d["machine"]
    rows = d["rows"]
    assert rows and all(r["threads"] == 1 for r in rows)
    for r in rows:
        lo, hi = r["spread"]
        assert lo <= r["rate"] <= hi, r
        if r["peer_rate"] is not None:
            plo, phi = r["peer_spread"]
            assert plo <= r["peer_rate"] <= phi, r
    names = {(r["group"], r["name"]) for r in rows}
    assert ("arithmetic", "BF16 add, nearest") in names
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    peers = {r["peer"] for r in rows}
    assert {"torch bf16 a + b", "torch bf16 a * b", "torch bf16 torch.mm",
            "torch x.to(torch.bfloat16)"} <= peers


def test_machine_state_warns(monkeypatch):
    monkeypatch.setattr(_bench.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    monkeypatch.setattr(_bench, "_cpu_busy", lambda window=0.25, cpus=None: 1.5)
    peaks = iter([10e9, 20e9, 10e9, 10e9, 10e9] + [12e9] * 3)
    monkeypatch.setattr(_bench, "measure_peak", lambda probe, threads, iters, repeats: next(peaks))
    monkeypatch.setattr(_bench.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(_bench._cpu, "best_isa", lambda: 2)
    st = _bench.machine_state(quick=True)
    text = " ".join(st.warnings)
    assert "load average 64.00" in text
    assert "other processes used 1.50" in text
    assert "varied from 10 to 20 GFLOP/s" in text
    assert "2 threads reach 1.20x" in text


def test_machine_state_quiet(monkeypatch):
    monkeypatch.setattr(_bench.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(_bench, "_cpu_busy", lambda window=0.25, cpus=None: 0.0)
    monkeypatch.setattr(_bench, "measure_peak",
                        lambda probe, threads, iters, repeats: 10e9 * threads)
    monkeypatch.setattr(_bench.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(_bench._cpu, "best_isa", lambda: 2)
    assert _bench.machine_state(quick=True).warnings == []
