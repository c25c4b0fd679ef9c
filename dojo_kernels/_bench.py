"""Built-in benchmark behind ``dojo-kernels bench``: key ratios against the peers installed.

Works from an installed package (the full pytest-benchmark suite lives in the source
checkout's ``bench/``; ``dojo-kernels bench --suite`` runs that). Every figure is the best of a
few repeats measured in this one run; on a shared machine only the ratios mean anything.
Peers are used when importable: NumPy (always), ml_dtypes, torch.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from . import _config, _cpu, _gemm, mesh
from ._config import set_num_threads
from .collectives import allreduce
from .formats import BF16, cfloat8_143
from .gemm import gemm
from .numerics import dequantize, quantize

__all__ = ["BenchRow", "run_bench", "render_bench", "measure_peak"]

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


def run_bench(*, quick: bool = False, threads: Optional[int] = None,
              progress: Optional[Callable[[str], None]] = None) -> List[BenchRow]:
    """Measure the key rates and their peers; return the rows of the table.

    ``quick`` uses smaller problems and fewer repeats (a few seconds). ``threads`` sets the
    kernel threads for the run (default: as configured) and, when threadpoolctl is
    installed, limits NumPy's BLAS to the same number so that the GEMM ratio is fair.
    """
    saved = _config.get_num_threads()
    if threads is not None:
        set_num_threads(threads)
    limits = _optional("threadpoolctl")
    ctx = (limits.threadpool_limits(_config.threads(), user_api="blas") if limits is not None
           else contextlib.nullcontext())
    try:
        with ctx:
            return _run(quick, progress)
    finally:
        if threads is not None:
            set_num_threads(saved)


def _run(quick: bool, progress: Optional[Callable[[str], None]]) -> List[BenchRow]:
    tick = progress if progress is not None else (lambda label: None)
    rep = 3 if quick else 5
    rows: List[BenchRow] = []
    ml = _optional("ml_dtypes")
    torch = _optional("torch")

    for p, tier in _PROBES.items():
        if _cpu.best_isa() >= tier:
            r = measure_peak(p, 1, iters=500_000 if quick else 2_000_000)
            rows.append(BenchRow("peak (1 thread)", p, r / 1e9, "GFLOP/s"))
    tick("peaks")

    n = (1 << 22) if quick else (1 << 24)
    x = (np.random.default_rng(0).standard_normal(n, dtype=np.float32) * 4).astype(np.float32)
    f8 = cfloat8_143(8)
    out16 = np.empty(n, np.uint16)
    out8 = np.empty(n, np.uint8)
    t = _best(lambda: quantize(x, BF16, out=out16), rep)
    peer, pr = "", None
    if ml is not None:
        dst = np.empty(n, ml.bfloat16)
        peer, pr = "ml_dtypes np.copyto", n / _best(lambda: np.copyto(dst, x, casting="unsafe"),
                                                      rep) / 1e9
    rows.append(BenchRow("conversion", "float32 -> BF16, nearest", n / t / 1e9, "Gelem/s",
                         peer, pr))
    t = _best(lambda: quantize(x, f8, out=out8), rep)
    peer, pr = "", None
    if ml is not None:
        dst8 = np.empty(n, ml.float8_e4m3fn)
        peer, pr = "ml_dtypes float8_e4m3fn", n / _best(
            lambda: np.copyto(dst8, x, casting="unsafe"), rep) / 1e9
    rows.append(BenchRow("conversion", "float32 -> CFloat8 1_4_3, nearest", n / t / 1e9,
                         "Gelem/s", peer, pr))
    codes = quantize(x, f8)
    y = np.empty(n, np.float32)
    t = _best(lambda: dequantize(codes, f8, out=y), rep)
    peer, pr = "", None
    if ml is not None:
        src8 = x.astype(ml.float8_e4m3fn)
        peer, pr = "ml_dtypes float8_e4m3fn", n / _best(
            lambda: np.copyto(y, src8, casting="unsafe"), rep) / 1e9
    rows.append(BenchRow("conversion", "CFloat8 1_4_3 -> float32", n / t / 1e9, "Gelem/s",
                         peer, pr))
    tick("conversion")

    s = 512 if quick else 1024
    rng = np.random.default_rng(1)
    a = rng.standard_normal((s, s), dtype=np.float32)
    b = rng.standard_normal((s, s), dtype=np.float32)
    ab, bb = quantize(a, BF16), quantize(b, BF16)
    fl = 2.0 * s ** 3
    t_np = _best(lambda: a @ b, rep)
    t_dk = _best(lambda: gemm(ab, bb, a_format=BF16), rep)
    rows.append(BenchRow("GEMM", f"BF16 {s}^3 (codes in)", fl / t_dk / 1e9, "GFLOP/s",
                         "NumPy float32 matmul", fl / t_np / 1e9))
    a8, b8 = quantize(a, f8), quantize(b, f8)
    t_8 = _best(lambda: gemm(a8, b8, a_format=f8), rep)
    rows.append(BenchRow("GEMM", f"CFloat8 1_4_3 {s}^3 (codes in)", fl / t_8 / 1e9, "GFLOP/s",
                         "NumPy float32 matmul", fl / t_np / 1e9))
    if ml is not None:
        sm = s
        am, bm = a.astype(ml.bfloat16), b.astype(ml.bfloat16)
        # ours first: the peer's BLAS threads keep spinning for a while after a call and
        # would take the two cores from the kernel measured next
        t_dks = _best(lambda: gemm(am, bm, a_format=BF16), rep)
        t_ml = _best(lambda: am @ bm, rep)
        rows.append(BenchRow("GEMM", f"BF16 {sm}^3 (bfloat16 in)", 2.0 * sm ** 3 / t_dks / 1e9, "GFLOP/s",
                             "ml_dtypes bfloat16 matmul", 2.0 * sm ** 3 / t_ml / 1e9))
    if torch is not None:
        ta = torch.from_numpy(a).to(torch.bfloat16)
        tb = torch.from_numpy(b).to(torch.bfloat16)
        t_t = _best(lambda: ta @ tb, rep)
        rows.append(BenchRow("GEMM", f"BF16 {s}^3 (codes in)", fl / t_dk / 1e9, "GFLOP/s",
                             "torch bfloat16 matmul", fl / t_t / 1e9))
    tick("gemm")

    topo = mesh.training_tile()
    ne = (1 << 14) if quick else (1 << 16)
    bufs = rng.standard_normal((topo.nodes, ne), dtype=np.float32)
    t_ar = _best(lambda: allreduce(bufs, topo, algorithm="ring"), rep)
    t_sum = _best(lambda: bufs.sum(axis=0), rep)
    el = float(topo.nodes * ne)
    rows.append(BenchRow("all-reduce (25 chips, ring, values)", f"FP32, {ne} elements/chip",
                         el / t_ar / 1e9, "Gelem/s", "NumPy sum(axis=0)", el / t_sum / 1e9))
    tick("allreduce")
    return rows


def render_bench(rows: Sequence[BenchRow], *, threads: Optional[int] = None) -> str:
    """The rows as an aligned table, with the ISA tier and the kernel thread count the rows
    were measured with (``threads``, default: the current setting)."""
    nth = _config.threads() if threads is None else threads
    head = ["group", "measurement", "dojo_kernels", "peer", "peer rate", "ratio"]
    body = []
    for r in rows:
        body.append([r.group, r.name, f"{r.rate:.3g} {r.unit}", r.peer or "-",
                     "-" if r.peer_rate is None else f"{r.peer_rate:.3g} {r.unit}",
                     "-" if r.ratio is None else f"{r.ratio:.2f}x"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    align = "llrlrr"

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if al == "l" else c.rjust(w)
                         for c, w, al in zip(cells, widths, align)).rstrip()

    out = [f"dojo_kernels bench: ISA tier {_config.get_isa()}, {nth} kernel "
           f"thread(s); best of a few repeats, one run (ratios > 1: dojo_kernels faster)",
           line(head), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    peaks = {r.name: r.rate for r in rows if r.group.startswith("peak")}
    g = [r for r in rows if r.group == "GEMM" and r.peer.startswith("NumPy")]
    if "fma_zmm" in peaks and g:
        out.append(f"BF16 GEMM at {g[0].rate / (peaks['fma_zmm'] * nth):.0%} of "
                   f"{nth} x the 1-thread FMA zmm peak ({peaks['fma_zmm']:.0f} "
                   f"GFLOP/s per core); the kernel emulates VDPBF16PS with FMA "
                   f"(docs/gemm.md)")
    return "\n".join(out)
