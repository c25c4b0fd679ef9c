"""Built-in benchmark behind ``dojo-kernels bench``: key ratios against the peers installed.

Works from an installed package (the full pytest-benchmark suite lives in the source
checkout's ``bench/``; ``dojo-kernels bench --suite`` runs that). Every figure is the median
of a few repeats with their min and max, measured in this one run at 1 and 2 threads (or the
count asked for); on a shared machine only the ratios mean anything. Before measuring, the
run checks the machine (:func:`machine_state`: load average, other processes' CPU use, the
FMA peak at 1 and 2 threads) and warns when the figures would be noise.
Peers are used when importable: NumPy (always), ml_dtypes, torch.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _config, _cpu, _gemm
from ._config import set_num_threads
from .collectives import allreduce
from .machine import mesh
from .numerics.formats import BF16, cfloat8_143
from .gemm import gemm
from .numerics import add, dequantize, mul, quantize

__all__ = ["BenchRow", "run_bench", "render_bench", "measure_peak", "machine_state",
           "bench_json"]

_PROBES = {"fma_zmm": 2, "vdpbf16ps_zmm": 2, "fma_ymm": 1, "tdpbf16ps": 3}


@dataclass
class BenchRow:
    """One measurement: ``rate`` in ``unit`` (e.g. Gelem/s), and the peer's rate if any."""

    group: str
    name: str
    rate: float
    unit: str
    peer: str = ""
    peer_rate: Optional[float] = None
    #: kernel threads of the measurement (0: not a threaded measurement)
    threads: int = 0
    #: (min, max) of the rate over the repeats; ``rate`` is their median
    spread: Tuple[float, float] = (0.0, 0.0)
    peer_spread: Tuple[float, float] = (0.0, 0.0)

    @property
    def ratio(self) -> Optional[float]:
        """dojo_kernels rate / peer rate (None without a peer)."""
        if self.peer_rate is None or self.peer_rate <= 0:
            return None
        return self.rate / self.peer_rate


def _best(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (first-call probes, page faults)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _times(fn: Callable[[], Any], repeats: int) -> List[float]:
    """Seconds of ``repeats`` calls after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _rates(work: float, times: Sequence[float], scale: float) -> Tuple[float, Tuple[float, float]]:
    """(median rate, (min rate, max rate)) of ``work`` done in each of ``times``, / scale."""
    r = [work / t / scale for t in times]
    return statistics.median(r), (min(r), max(r))


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def measure_peak(probe: str, threads: int = 1, iters: int = 2_000_000, repeats: int = 3) -> float:
    """Best FLOP/s of ``threads`` concurrent register-only probes (the bench/peak_probe.py
    method): ``"fma_zmm"``, ``"fma_ymm"``, ``"vdpbf16ps_zmm"`` or ``"tdpbf16ps"`` (AMX tiles);
    needs the probe's tier."""
    if probe not in _PROBES:
        raise ValueError(f"probe: expected one of {', '.join(_PROBES)}, got {probe!r}")
    if _cpu.best_isa() < _PROBES[probe]:
        raise ValueError(f"probe: {probe} needs a tier this CPU lacks")
    best = 0.0
    for _ in range(repeats):
        flops = [0.0] * threads

        def work(i: int) -> None:
            flops[i] = _gemm.probe(probe, iters)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, sum(flops) / (time.perf_counter() - t0))
    return best


@dataclass
class MachineState:
    """What the machine was doing when the benchmark started (see :func:`machine_state`)."""

    cpus: int
    loadavg: float
    other_cpu_use: float  # CPUs' worth of time used by other processes over a short window
    peak_1: Optional[float] = None  # FMA peak of 1 thread, FLOP/s (median of repeats)
    peak_2: Optional[float] = None  # FMA peak of 2 threads together
    peak_spread: Tuple[float, float] = (0.0, 0.0)  # min, max of the 1-thread peak
    warnings: List[str] = field(default_factory=list)


def _cpu_busy(window: float = 0.25, cpus: Optional[Iterable[int]] = None) -> float:
    """CPUs' worth of busy time over ``window`` seconds (/proc/stat), minus this process's
    own use: the other processes' load, on the whole machine or, given ``cpus``, on those
    CPUs only (e.g. the process's affinity mask)."""
    names = None if cpus is None else {f"cpu{c}" for c in cpus}

    def snap() -> Tuple[float, float]:
        busy = 0.0
        with open("/proc/stat") as f:
            for line in f:
                name, *rest = line.split()
                if (name == "cpu") if names is None else (name in names):
                    v = [float(x) for x in rest]
                    busy += sum(v[:8]) - v[3] - (v[4] if len(v) > 4 else 0.0)
                if names is None or not name.startswith("cpu"):
                    break
        return busy, time.monotonic()

    try:
        b0, t0 = snap()
        p0 = time.process_time()
        time.sleep(window)
        b1, t1 = snap()
        mine = time.process_time() - p0
    except (OSError, ValueError, IndexError):  # pragma: no cover - no /proc
        return 0.0
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return max(0.0, ((b1 - b0) / hz - mine) / (t1 - t0))


def machine_state(*, quick: bool = False) -> MachineState:
    """Load average, the other processes' CPU use, and the FMA peak at 1 and 2 threads
    (median of repeats). Warnings are added when the figures that follow would be noise:
    load above 0.5 per CPU, other processes using more than a quarter of a CPU, the
    1-thread peak's repeats spread by more than 15 %, or 2 threads reaching less than
    1.6x one thread's peak (another process holds a core)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    st = MachineState(cpus, load, _cpu_busy())
    if st.loadavg > 0.5 * cpus:
        st.warnings.append(f"load average {st.loadavg:.2f} on {cpus} CPU(s): other work is "
                           f"running, figures are noisy")
    if st.other_cpu_use > 0.25:
        st.warnings.append(f"other processes used {st.other_cpu_use:.2f} CPU(s) just before "
                           f"the run: figures are noisy")
    probe = next((p for p in ("fma_zmm", "fma_ymm") if _cpu.best_isa() >= _PROBES[p]), None)
    if probe is not None:
        iters = 300_000 if quick else 1_000_000
        ones = [measure_peak(probe, 1, iters=iters, repeats=1) for _ in range(5)]
        st.peak_1 = statistics.median(ones)
        st.peak_spread = (min(ones), max(ones))
        if st.peak_spread[1] > 1.15 * st.peak_spread[0]:
            st.warnings.append(f"the 1-thread {probe} peak varied from {min(ones) / 1e9:.0f} to "
                               f"{max(ones) / 1e9:.0f} GFLOP/s across repeats: the CPU is shared "
                               f"or changing clock")
        if cpus >= 2:
            st.peak_2 = statistics.median(
                [measure_peak(probe, 2, iters=iters, repeats=1) for _ in range(3)])
            if st.peak_2 < 1.6 * st.peak_1:
                st.warnings.append(f"2 threads reach {st.peak_2 / st.peak_1:.2f}x one thread's "
                                   f"{probe} peak (expected ~2x): another process holds a core; "
                                   f"2-thread figures are not representative")
    return st


def run_bench(*, quick: bool = False, threads: Optional[int] = None,
              progress: Optional[Callable[[str], None]] = None,
              thread_counts: Optional[Sequence[int]] = None) -> List[BenchRow]:
    """Measure the key rates and their peers; return the rows of the table.

    ``quick`` uses smaller problems and fewer repeats (a few seconds). ``threads`` measures at
    that one kernel thread count; otherwise ``thread_counts`` (default ``(1, 2)``) are each
    measured in turn. When threadpoolctl is installed NumPy's BLAS is limited to the same
    count, and torch (when installed) too, so that the ratios are fair.
    """
    counts = [threads] if threads is not None else list(thread_counts or (1, 2))
    saved = _config.get_num_threads()
    torch = _optional("torch")
    saved_torch = torch.get_num_threads() if torch is not None else None
    limits = _optional("threadpoolctl")
    rows: List[BenchRow] = []
    tick = progress if progress is not None else (lambda label: None)
    try:
        rows += _peak_rows(quick)
        tick("peaks")
        for th in counts:
            set_num_threads(th)
            if torch is not None:
                torch.set_num_threads(th)
            ctx = (limits.threadpool_limits(th, user_api="blas") if limits is not None
                   else contextlib.nullcontext())
            with ctx:
                rows += _run(quick, th, tick)
    finally:
        set_num_threads(saved)
        if torch is not None and saved_torch is not None:
            torch.set_num_threads(saved_torch)
    return rows


def _peak_rows(quick: bool) -> List[BenchRow]:
    rows = []
    for p, tier in _PROBES.items():
        if _cpu.best_isa() >= tier:
            r = [measure_peak(p, 1, iters=500_000 if quick else 2_000_000, repeats=1) / 1e9
                 for _ in range(3)]
            rows.append(BenchRow("peak (1 thread)", p, statistics.median(r), "GFLOP/s",
                                 threads=1, spread=(min(r), max(r))))
    return rows


def _run(quick: bool, th: int, tick: Callable[[str], None]) -> List[BenchRow]:
    rep = 3 if quick else 5
    rows: List[BenchRow] = []
    ml = _optional("ml_dtypes")
    torch = _optional("torch")

    def row(group: str, name: str, work: float, fn: Callable[[], Any], unit: str,
            peer: str = "", peer_fn: Optional[Callable[[], Any]] = None) -> None:
        scale = 1e9
        rate, spread = _rates(work, _times(fn, rep), scale)
        pr: Optional[float] = None
        ps = (0.0, 0.0)
        if peer_fn is not None:
            pr, ps = _rates(work, _times(peer_fn, rep), scale)
        rows.append(BenchRow(group, name, rate, unit, peer, pr, th, spread, ps))

    n = (1 << 22) if quick else (1 << 24)
    x = (np.random.default_rng(0).standard_normal(n, dtype=np.float32) * 4).astype(np.float32)
    f8 = cfloat8_143(8)
    out16 = np.empty(n, np.uint16)
    out8 = np.empty(n, np.uint8)
    tx = torch.from_numpy(x) if torch is not None else None
    q16: Callable[[], Any] = lambda: quantize(x, BF16, out=out16)  # noqa: E731
    q8: Callable[[], Any] = lambda: quantize(x, f8, out=out8)  # noqa: E731
    if ml is not None:
        dst = np.empty(n, ml.bfloat16)
        row("conversion", "float32 -> BF16, nearest", n, q16, "Gelem/s", "ml_dtypes np.copyto",
            lambda: np.copyto(dst, x, casting="unsafe"))
    if tx is not None:
        row("conversion", "float32 -> BF16, nearest", n, q16, "Gelem/s",
            "torch x.to(torch.bfloat16)", lambda: tx.to(torch.bfloat16))
    if ml is None and tx is None:
        row("conversion", "float32 -> BF16, nearest", n, q16, "Gelem/s")
    if ml is not None:
        dst8 = np.empty(n, ml.float8_e4m3fn)
        row("conversion", "float32 -> CFloat8 1_4_3, nearest", n, q8, "Gelem/s",
            "ml_dtypes float8_e4m3fn", lambda: np.copyto(dst8, x, casting="unsafe"))
    if tx is not None and hasattr(torch, "float8_e4m3fn"):
        row("conversion", "float32 -> CFloat8 1_4_3, nearest", n, q8, "Gelem/s",
            "torch x.to(torch.float8_e4m3fn)", lambda: tx.to(torch.float8_e4m3fn))
    codes = quantize(x, f8)
    y = np.empty(n, np.float32)
    dq: Callable[[], Any] = lambda: dequantize(codes, f8, out=y)  # noqa: E731
    if ml is not None:
        src8 = x.astype(ml.float8_e4m3fn)
        row("conversion", "CFloat8 1_4_3 -> float32", n, dq, "Gelem/s",
            "ml_dtypes float8_e4m3fn", lambda: np.copyto(y, src8, casting="unsafe"))
    if tx is not None and hasattr(torch, "float8_e4m3fn"):
        t8 = tx.to(torch.float8_e4m3fn)
        row("conversion", "CFloat8 1_4_3 -> float32", n, dq, "Gelem/s",
            "torch f8.to(torch.float32)", lambda: t8.to(torch.float32))
    if ml is None and tx is None:
        row("conversion", "CFloat8 1_4_3 -> float32", n, dq, "Gelem/s")
    tick("conversion")

    na = (1 << 20) if quick else (1 << 22)
    ca, cb = quantize(x[:na], BF16), quantize(x[na:2 * na] if 2 * na <= n else x[:na], BF16)
    for op, fn in (("add", add), ("mul", mul)):
        f: Callable[[], Any] = (lambda fn=fn: fn(ca, cb, BF16))  # type: ignore[misc]
        if torch is not None:
            ta = torch.from_numpy(ca.view(np.int16)).view(torch.bfloat16)
            tb = torch.from_numpy(cb.view(np.int16)).view(torch.bfloat16)
            peer = (lambda ta=ta, tb=tb: ta + tb) if op == "add" else (lambda ta=ta, tb=tb: ta * tb)
            row("arithmetic", f"BF16 {op}, nearest", na, f, "Gelem/s", f"torch bf16 a {'+' if op == 'add' else '*'} b", peer)
        else:
            row("arithmetic", f"BF16 {op}, nearest", na, f, "Gelem/s")
    tick("arithmetic")

    s = 512 if quick else 1024
    rng = np.random.default_rng(1)
    a = rng.standard_normal((s, s), dtype=np.float32)
    b = rng.standard_normal((s, s), dtype=np.float32)
    ab, bb = quantize(a, BF16), quantize(b, BF16)
    fl = 2.0 * s ** 3
    gb: Callable[[], Any] = lambda: gemm(ab, bb, a_format=BF16)  # noqa: E731
    row("GEMM", f"BF16 {s}^3 (codes in)", fl, gb, "GFLOP/s", "NumPy float32 matmul",
        lambda: a @ b)
    a8, b8 = quantize(a, f8), quantize(b, f8)
    row("GEMM", f"CFloat8 1_4_3 {s}^3 (codes in)", fl, lambda: gemm(a8, b8, a_format=f8),
        "GFLOP/s", "NumPy float32 matmul", lambda: a @ b)
    if ml is not None:
        am, bm = a.astype(ml.bfloat16), b.astype(ml.bfloat16)
        row("GEMM", f"BF16 {s}^3 (bfloat16 in)", fl, lambda: gemm(am, bm, a_format=BF16),
            "GFLOP/s", "ml_dtypes bfloat16 matmul", lambda: am @ bm)
    if torch is not None:
        ta = torch.from_numpy(a).to(torch.bfloat16)
        tb = torch.from_numpy(b).to(torch.bfloat16)
        row("GEMM", f"BF16 {s}^3 (codes in)", fl, gb, "GFLOP/s", "torch bf16 torch.mm",
            lambda: torch.mm(ta, tb))
    # a GEMV in torch's linear layout (x @ W.T, W row-major): one pass over W
    g = 2048 if quick else 4096
    xv = rng.standard_normal((1, g), dtype=np.float32)
    wv = rng.standard_normal((g, g), dtype=np.float32)
    xq, wq = quantize(xv, BF16), quantize(wv, BF16)
    gv: Callable[[], Any] = lambda: gemm(xq, wq.T, a_format=BF16)  # noqa: E731
    name = f"BF16 GEMV 1x{g}x{g}, B = W.T (codes in)"
    row("GEMM", name, 2.0 * g * g, gv, "GFLOP/s", "NumPy float32 x @ W.T", lambda: xv @ wv.T)
    if torch is not None:
        txv = torch.from_numpy(xv).to(torch.bfloat16)
        twv = torch.from_numpy(wv).to(torch.bfloat16)
        row("GEMM", name, 2.0 * g * g, gv, "GFLOP/s", "torch bf16 linear",
            lambda: torch.nn.functional.linear(txv, twv))
    tick("gemm")

    topo = mesh.training_tile()
    ne = (1 << 14) if quick else (1 << 16)
    bufs = rng.standard_normal((topo.nodes, ne), dtype=np.float32)
    el = float(topo.nodes * ne)
    row("all-reduce (25 chips, ring, values)", f"FP32, {ne} elements/chip", el,
        lambda: allreduce(bufs, topo, algorithm="ring"), "Gelem/s", "NumPy sum(axis=0)",
        lambda: bufs.sum(axis=0))
    tick("allreduce")
    return rows


def _fmt_rate(rate: float, spread: Tuple[float, float], unit: str) -> str:
    if spread == (0.0, 0.0):
        return f"{rate:.3g} {unit}"
    return f"{rate:.3g} [{spread[0]:.3g}-{spread[1]:.3g}] {unit}"


def render_bench(rows: Sequence[BenchRow], *, threads: Optional[int] = None,
                 state: Optional[MachineState] = None) -> str:
    """The rows as an aligned table: median [min-max] over repeats of every rate, the
    thread count of each row, the ISA tier, and the machine-state warnings if any."""
    head = ["group", "measurement", "thr", "dojo_kernels median [min-max]", "peer",
            "peer median [min-max]", "ratio"]
    body = []
    for r in rows:
        body.append([r.group, r.name, str(r.threads or "-"), _fmt_rate(r.rate, r.spread, r.unit),
                     r.peer or "-",
                     "-" if r.peer_rate is None else _fmt_rate(r.peer_rate, r.peer_spread, r.unit),
                     "-" if r.ratio is None else f"{r.ratio:.2f}x"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(head)]
    align = "llrrlrr"

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if al == "l" else c.rjust(w)
                         for c, w, al in zip(cells, widths, align)).rstrip()

    counts = sorted({r.threads for r in rows if r.threads})
    nth = threads if threads is not None else (counts[-1] if counts else _config.threads())
    thr = ", ".join(map(str, counts)) if counts else str(nth)
    out = [f"dojo_kernels bench: ISA tier {_config.get_isa()}, {thr} kernel thread(s); median "
           f"[min-max] of the repeats, one run (ratios > 1: dojo_kernels faster)"]
    if state is not None:
        p1 = f", FMA peak {state.peak_1 / 1e9:.0f} GFLOP/s at 1 thread" if state.peak_1 else ""
        p2 = f", {state.peak_2 / 1e9:.0f} at 2" if state.peak_2 else ""
        out.append(f"machine: {state.cpus} CPU(s), load average {state.loadavg:.2f}, other "
                   f"processes {state.other_cpu_use:.2f} CPU(s){p1}{p2}")
        out += [f"WARNING: {w}" for w in state.warnings]
    out += [line(head), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    peaks = {r.name: r.rate for r in rows if r.group.startswith("peak")}
    g = [r for r in rows if r.group == "GEMM" and r.peer.startswith("NumPy")]
    if "fma_zmm" in peaks and g:
        for r in g[:1] + [x for x in g if x.threads != g[0].threads][:1]:
            t = r.threads or nth
            how = ("the amx tier runs it on TDPBF16PS tiles, far above this peak"
                   if _config.get_isa() == "amx" else
                   "this tier computes the default (amx) order with FP32 FMAs")
            out.append(f"BF16 GEMM at {t} thread(s): {r.rate / (peaks['fma_zmm'] * t):.0%} of "
                       f"{t} x the 1-thread FMA zmm peak ({peaks['fma_zmm']:.0f} GFLOP/s per "
                       f"core); {how} (docs/gemm.md)")
    return "\n".join(out)


def bench_json(rows: Sequence[BenchRow], state: Optional[MachineState] = None) -> Dict[str, Any]:
    """Every figure of a run as JSON-ready data."""
    return {"isa": _config.get_isa(),
            "machine": asdict(state) if state is not None else None,
            "rows": [dict(asdict(r), ratio=r.ratio) for r in rows]}
