"""GEMM benchmarks: dojo_kernels.gemm in both accumulation orders beside NumPy float32
matmul, ml_dtypes bfloat16 matmul (small sizes), torch bfloat16 ``mm`` and torch's FP8
``_scaled_mm`` (when torch is installed: ``pip install "torch==2.13.*"`` gives the CPU
wheel), with the percentage of this CPU's peaks measured in the same run
(bench/peak_probe.py: FP32 FMA, VDPBF16PS and, on an AMX CPU, TDPBF16PS).

    pytest bench/bench_gemm.py --benchmark-only -q      # pytest-benchmark (not python -m)
    python bench/bench_gemm.py [--quick]                          # the GFLOP/s table
    python bench/bench_gemm.py --versus [--rounds N] [--shapes MxNxK,...]  # interleaved ratios

A CPU without AMX, stood in for on an AMX machine (our tiles off, oneDNN's too):

    DOJO_KERNELS_ISA=avx512bf16 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 \
        python bench/bench_gemm.py --versus

Shapes are (m, n, k): squares 256..4096, the skinny (4096, 256, 4096), (64, 4096, 4096)
and the GEMV-like (8, 4096, 4096), (1, 4096, 4096); on the GEMV-like ones also B = W.T
(torch's linear layout: ``dk.gemm(a, w.T)`` beside ``torch.nn.functional.linear(a, w)``).
Thread counts 1 and 2 (dk.set_num_threads and threadpoolctl for NumPy's BLAS).
"""
from __future__ import annotations

import importlib
import os
import statistics
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peak_probe  # noqa: E402
from dojo_kernels import _bench  # noqa: E402

import dojo_kernels as dk  # noqa: E402
from dojo_kernels import _config  # noqa: E402
from dojo_kernels.gemm import _empty_result  # noqa: E402

G = importlib.import_module("dojo_kernels.gemm")

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None
    threadpool_info = lambda: []  # noqa: E731
try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None
try:
    import torch
except ImportError:
    torch = None

SQUARE = [(s, s, s) for s in (256, 512, 1024, 2048, 4096)]
SKINNY = [(4096, 256, 4096), (64, 4096, 4096), (16, 4096, 4096), (8, 4096, 4096),
          (1, 4096, 4096)]  # GEMV last
SHAPES = SQUARE + SKINNY
THREADS = [1, 2]
F8A, F8B = dk.cfloat8_143(7), dk.cfloat8_152(15)


def blas_kernel() -> str:
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            return f"{info.get('internal_api')} {info.get('version')} {info.get('architecture')}"
    return "unknown"


_inputs: dict = {}


def inputs(m, n, k):
    key = (m, n, k)
    if key not in _inputs:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        _inputs.clear()
        _inputs[key] = dict(
            a32=a, b32=b,
            a16=dk.quantize(a, dk.BF16), b16=dk.quantize(b, dk.BF16),
            a8=dk.quantize(a, F8A), b8=dk.quantize(b, F8B))
        # torch's linear layout: the weight W = B.T row-major (n x k), the product a @ W.T
        w = np.ascontiguousarray(b.T)
        _inputs[key].update(w32=w, w16=dk.quantize(w, dk.BF16))
    return _inputs[key]


def _out(m, n):
    """A result buffer for ``out=``, allocated as gemm allocates its own results: a large one
    64-byte aligned, as torch's are too (NumPy aligns large arrays to 16 or 32 bytes only,
    and a large result can then not be streamed past the caches: docs/gemm.md, "Passing
    out=")."""
    return _empty_result(1, m, n)[0]


def runner(impl, m, n, k, threads):
    """A no-argument callable doing one product, or None if unavailable."""
    x = inputs(m, n, k)
    if impl == "dk_bf16":               # the default order ("amx")
        o = _out(m, n)
        return lambda: dk.gemm(x["a16"], x["b16"], out=o)
    if impl == "dk_bf16_vdpbf16ps":     # the VDPBF16PS-chain order
        o = _out(m, n)
        return lambda: dk.gemm(x["a16"], x["b16"], out=o, order="vdpbf16ps")
    if impl == "dk_cf8":
        o = _out(m, n)
        return lambda: dk.gemm(x["a8"], x["b8"], a_format=F8A, b_format=F8B, out=o)
    if impl == "dk_cf8_vdpbf16ps":
        o = _out(m, n)
        return lambda: dk.gemm(x["a8"], x["b8"], a_format=F8A, b_format=F8B, out=o,
                               order="vdpbf16ps")
    if impl in ("dk_bf16_avx512", "dk_bf16_avx2"):  # the amx order without tiles
        tier = impl[len("dk_bf16_"):]
        tier = "avx512bf16" if tier == "avx512" else tier
        if tier not in _config.supported_isas() or _config.get_isa() == tier:
            return None
        o = _out(m, n)

        def f():
            with _config.use_isa(tier):
                return dk.gemm(x["a16"], x["b16"], out=o)
        return f
    if impl == "dk_bf16_wt":            # B = W.T (torch's linear layout), default order
        o = _out(m, n)
        return lambda: dk.gemm(x["a16"], x["w16"].T, out=o)
    if impl == "dk_bf16_wt_vdpbf16ps":
        o = _out(m, n)
        return lambda: dk.gemm(x["a16"], x["w16"].T, out=o, order="vdpbf16ps")
    if impl == "numpy_f32":
        return lambda: np.matmul(x["a32"], x["b32"])
    if impl == "numpy_f32_wt":
        return lambda: np.matmul(x["a32"], x["w32"].T)
    if impl == "ml_dtypes_bf16":
        if ml_dtypes is None or max(m, n, k) > 512:
            return None
        ab, bb = x["a32"].astype(ml_dtypes.bfloat16), x["b32"].astype(ml_dtypes.bfloat16)
        return lambda: np.matmul(ab, bb)
    if impl == "torch_bf16":
        if torch is None:
            return None
        ta, tb = torch.from_numpy(x["a32"]).bfloat16(), torch.from_numpy(x["b32"]).bfloat16()
        return lambda: torch.mm(ta, tb)
    if impl == "torch_linear":          # torch.nn.functional.linear(a, W), bfloat16
        if torch is None:
            return None
        ta, tw = torch.from_numpy(x["a32"]).bfloat16(), torch.from_numpy(x["w32"]).bfloat16()
        return lambda: torch.nn.functional.linear(ta, tw)
    if impl == "torch_fp8":             # e4m3 x e5m2 with per-tensor scales, FP32 out
        if torch is None or not hasattr(torch, "_scaled_mm"):
            return None
        ta = torch.from_numpy(x["a32"]).to(torch.float8_e4m3fn)
        tb = torch.from_numpy(x["b32"]).to(torch.float8_e5m2).t().contiguous().t()
        one = torch.tensor(1.0)
        try:
            torch._scaled_mm(ta[:16, :16], tb[:16, :16], scale_a=one, scale_b=one,
                             out_dtype=torch.float32)
        except (RuntimeError, NotImplementedError):  # not in this torch build
            return None
        return lambda: torch._scaled_mm(ta, tb, scale_a=one, scale_b=one, out_dtype=torch.float32)
    raise ValueError(impl)


class threads_set:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.saved = dk.get_num_threads()
        dk.set_num_threads(self.n)
        self.tl = threadpool_limits(self.n) if threadpool_limits else None
        if torch is not None:
            self.tt = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *e):
        dk.set_num_threads(self.saved)
        if self.tl is not None:
            self.tl.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(self.tt)


_peaks: dict = {}


def peaks(threads):
    if threads not in _peaks:
        _peaks[threads] = {p: peak_probe.measure(p, threads) for p in peak_probe.available()}
    return _peaks[threads]


IMPLS = ["dk_bf16", "dk_bf16_vdpbf16ps", "dk_cf8", "dk_cf8_vdpbf16ps", "dk_bf16_avx512",
         "dk_bf16_avx2", "numpy_f32", "ml_dtypes_bf16", "torch_bf16", "torch_fp8",
         "dk_bf16_wt", "dk_bf16_wt_vdpbf16ps", "numpy_f32_wt", "torch_linear"]
#: implementations timed only on the squares 1024 and 2048 (lower tiers, for reference)
LOWER_TIER = ("dk_bf16_avx512", "dk_bf16_avx2")
#: B = W.T, torch's linear layout: timed on the few-rows shapes (m <= 64: the W.T kernels
#: take up to 64 rows in the amx order, 48 in the vdpbf16ps order) only
LINEAR = ("dk_bf16_wt", "dk_bf16_wt_vdpbf16ps", "numpy_f32_wt", "torch_linear")
LINEAR_MAX_M = 64


def _params():
    out = []
    for shape in SHAPES:
        for th in THREADS:
            for impl in IMPLS:
                if impl in LOWER_TIER and (shape[0] != shape[2] or shape[0] not in (1024, 2048)):
                    continue
                if impl in LINEAR and shape[0] > LINEAR_MAX_M:
                    continue
                out.append(pytest.param(impl, shape, th, id=f"{impl}-{'x'.join(map(str, shape))}-t{th}"))
    return out


@pytest.mark.parametrize("impl,shape,threads", _params())
def test_gemm_speed(benchmark, impl, shape, threads):
    m, n, k = shape
    f = runner(impl, m, n, k, threads)
    if f is None:
        pytest.skip(f"{impl} unavailable here (or too slow at this size)")
    with threads_set(threads):
        pk = peaks(threads)
        rounds = 2 if m * n * k >= 2048 ** 3 else 4
        benchmark.pedantic(f, rounds=rounds, iterations=1, warmup_rounds=1)
    gflops = 2.0 * m * n * k / benchmark.stats.stats.min / 1e9
    benchmark.extra_info.update(
        gflops=round(gflops, 1), tier=_config.get_isa(), kernels=G.kernel_names(),
        threads=threads, blas=blas_kernel(),
        **{f"pct_{p}_peak": round(100 * gflops * 1e9 / v, 1) for p, v in pk.items()})


# ---- small calls (issue 11 part 2): the per-call cost, beside NumPy's f32 matmul ---------

SMALL = [16, 32, 64]
SMALL_IMPLS = ["dk_f32_in", "dk_codes", "dk_codes_bias", "dk_cf8", "dk_cf8_bias", "numpy_f32",
               "numpy_f32_bias", "torch_bf16"]


@pytest.mark.parametrize("impl", SMALL_IMPLS)
@pytest.mark.parametrize("s", SMALL)
def test_gemm_small(benchmark, impl, s):
    """s x s x s at the default thread count (small products run on the calling thread):
    dk.gemm on float32 inputs (rounded into BF16 per call), on BF16 codes and on CFloat8 codes,
    with and without a bias (an addend of s values), NumPy's float32 matmul (and + bias) and
    torch's bfloat16 mm (target: dk.gemm 16x16 within 10x NumPy's)."""
    rng = np.random.default_rng(s)
    a32 = rng.standard_normal((s, s)).astype(np.float32)
    bias = rng.standard_normal(s).astype(np.float32)
    f8 = dk.cfloat8_143(7)
    if impl == "dk_f32_in":
        f = lambda: dk.gemm(a32, a32)  # noqa: E731
    elif impl.startswith("dk_codes"):
        a16 = dk.quantize(a32, dk.BF16)
        c = bias if impl.endswith("_bias") else None
        f = lambda: dk.gemm(a16, a16, c=c)  # noqa: E731
    elif impl.startswith("dk_cf8"):
        a8 = dk.quantize(a32, f8)
        c = bias if impl.endswith("_bias") else None
        f = lambda: dk.gemm(a8, a8, a_format=f8, c=c)  # noqa: E731
    elif impl == "numpy_f32":
        f = lambda: np.matmul(a32, a32)  # noqa: E731
    elif impl == "numpy_f32_bias":
        f = lambda: np.matmul(a32, a32) + bias  # noqa: E731
    else:
        if torch is None:
            pytest.skip("torch not installed")
        t = torch.from_numpy(a32).bfloat16()
        f = lambda: torch.mm(t, t)  # noqa: E731
    benchmark.group = f"gemm small {s}x{s}x{s}"
    f()
    benchmark(f)
    benchmark.extra_info.update(us=round(benchmark.stats.stats.min * 1e6, 2))


# ---- batches of small products (issue 10 item 4) -------------------------------------------

BATCHED = [(512, 16, 16, 16), (256, 32, 32, 32), (64, 64, 64, 64), (16, 128, 128, 128),
           (8, 256, 256, 256)]


@pytest.mark.parametrize("impl", ["dk_bf16", "torch_bf16"])
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("shape", BATCHED, ids=lambda s: "x".join(map(str, s)))
def test_gemm_batched(benchmark, impl, threads, shape):
    """A batch of small BF16 products (batch x m x n x k): dk.gemm on BF16 codes into a
    preallocated result, beside torch's bfloat16 bmm, at 1 and 2 threads."""
    nb, m, n, k = shape
    rng = np.random.default_rng(nb)
    a = dk.quantize(rng.standard_normal((nb, m, k)).astype(np.float32), dk.BF16)
    b = dk.quantize(rng.standard_normal((nb, k, n)).astype(np.float32), dk.BF16)
    if impl == "dk_bf16":
        out = np.empty((nb, m, n), np.float32)
        f = lambda: dk.gemm(a, b, out=out)  # noqa: E731
    else:
        if torch is None:
            pytest.skip("torch not installed")
        ta = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        tb = torch.from_numpy(b.view(np.int16)).view(torch.bfloat16)
        f = lambda: torch.bmm(ta, tb)  # noqa: E731
    benchmark.group = f"gemm batched {'x'.join(map(str, shape))} t{threads}"
    with threads_set(threads):
        f()
        benchmark(f)
    benchmark.extra_info.update(us=round(benchmark.stats.stats.min * 1e6, 2),
                                gflops=round(2.0 * nb * m * n * k / benchmark.stats.stats.min / 1e9, 1))


# ---- the addend (a Linear's bias, a full C): added inside the GEMM --------------------------

ADDEND_SHAPE = (512, 4096, 1024)   # a Linear 1024 -> 4096 on 512 tokens, x W^T


@pytest.mark.parametrize("impl", ["dk_none", "dk_bias", "dk_full", "dk_full_then_numpy_add",
                                  "torch_bias", "torch_full"])
@pytest.mark.parametrize("threads", THREADS)
def test_gemm_addend(benchmark, impl, threads):
    """dk.gemm(x, W.T, c=...) with no addend, a bias (n,) and a full (m, n) c, beside the
    same product with the full c added by NumPy afterwards (what gemm did before the driver
    added it) and torch's bfloat16 addmm: the addend's cost is the difference to dk_none."""
    m, n, k = ADDEND_SHAPE
    rng = np.random.default_rng(3)
    x = dk.quantize(rng.standard_normal((m, k)).astype(np.float32), dk.BF16)
    w = dk.quantize(rng.standard_normal((n, k)).astype(np.float32), dk.BF16)
    bias = rng.standard_normal(n).astype(np.float32)
    full = rng.standard_normal((m, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    if impl.startswith("dk_"):
        c = {"dk_none": None, "dk_bias": bias, "dk_full": full}.get(impl)
        if impl == "dk_full_then_numpy_add":
            def f():
                dk.gemm(x, w.T, out=out)
                np.add(out, full, out=out)
        else:
            f = lambda: dk.gemm(x, w.T, c=c, out=out)  # noqa: E731
    else:
        if torch is None:
            pytest.skip("torch not installed")
        tx = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
        tw = torch.from_numpy(w.view(np.int16)).view(torch.bfloat16)
        tc = torch.from_numpy(bias if impl == "torch_bias" else full).bfloat16()
        f = lambda: torch.addmm(tc, tx, tw.T)  # noqa: E731
    benchmark.group = f"gemm addend {'x'.join(map(str, ADDEND_SHAPE))} t{threads}"
    with threads_set(threads):
        f()
        benchmark.pedantic(f, rounds=15, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(ms=round(benchmark.stats.stats.min * 1e3, 3))


# ---- where the result goes: gemm's own, an aligned out=, a NumPy-like out= -------------

OUT_SHAPE = (2048, 2048, 2048)   # a 16 MiB result: streamed past the caches on the amx tier


@pytest.mark.parametrize("dest", ["fresh", "out_aligned", "out_16_past_a_line"])
@pytest.mark.parametrize("threads", THREADS)
def test_gemm_out_alignment(benchmark, dest, threads):
    """dk.gemm into its own (64-byte aligned) result, into an aligned out= and into one whose
    rows start 16 bytes past a cache line, as NumPy's large arrays do (docs/gemm.md,
    "Passing out="): the last two should take the same time."""
    m, n, k = OUT_SHAPE
    x = inputs(m, n, k)
    if dest == "fresh":
        f = lambda: dk.gemm(x["a16"], x["b16"])  # noqa: E731
    else:
        buf = np.empty(m * n + 32, np.float32)
        off = ((-buf.ctypes.data) % 64 + (16 if dest == "out_16_past_a_line" else 0)) // 4
        o = buf[off:off + m * n].reshape(m, n)
        f = lambda: dk.gemm(x["a16"], x["b16"], out=o)  # noqa: E731
    benchmark.group = f"gemm out= {'x'.join(map(str, OUT_SHAPE))} t{threads}"
    with threads_set(threads):
        f()
        benchmark.pedantic(f, rounds=7, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(gflops=round(2.0 * m * n * k / benchmark.stats.stats.min / 1e9, 1))


@pytest.mark.parametrize("operands", ["bf16_codes", "float32"])
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", [1024, 2048])
def test_gemm_float_operands(benchmark, operands, threads, n):
    """dk.gemm on BF16 codes beside the same product from float32 arrays, rounded into codes
    every call (into reused scratch buffers: docs/gemm.md, "Float operands"): the difference
    is the rounding of the two operands."""
    x = inputs(n, n, n)
    a, b = (x["a16"], x["b16"]) if operands == "bf16_codes" else (x["a32"], x["b32"])
    o = _out(n, n)
    f = lambda: dk.gemm(a, b, out=o)  # noqa: E731
    benchmark.group = f"gemm operands {n}^3 t{threads}"
    with threads_set(threads):
        f()
        benchmark.pedantic(f, rounds=9, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(gflops=round(2.0 * n ** 3 / benchmark.stats.stats.min / 1e9, 1))


# ---- the table (python bench/bench_gemm.py) ---------------------------------------------

def best_time(f, rounds):
    """Fastest of ``rounds`` calls after a warm-up (the built-in benchmark's timer)."""
    return _bench._best(f, rounds)


def main(quick: bool = False) -> None:
    shapes = ([(1024,) * 3, (2048,) * 3, (4096, 256, 4096), (64, 4096, 4096), (1, 4096, 4096)]
              if quick else SHAPES)
    print(f"dojo_kernels tier {_config.get_isa()}; kernels {G.kernel_names()}; "
          f"NumPy BLAS: {blas_kernel()}; torch: {torch.__version__ if torch else 'not installed'}")
    for th in THREADS:
        with threads_set(th):
            pk = peaks(th)
            print(f"\nthreads={th}  peaks GFLOP/s: " + ", ".join(f"{p} {v / 1e9:.1f}" for p, v in pk.items()))
            print(f"{'m x n x k':<18}" + "".join(f"{i:>19}" for i in IMPLS) + "   (GFLOP/s)")
            for (m, n, k) in shapes:
                row = f"{m}x{n}x{k}".ljust(18)
                for impl in IMPLS:
                    f = None if impl in LINEAR and m > 8 else runner(impl, m, n, k, th)
                    if f is None:
                        row += f"{'-':>19}"
                        continue
                    t = best_time(f, 2 if m * n * k >= 2048 ** 3 else 3)
                    row += f"{2 * m * n * k / t / 1e9:>19.1f}"
                print(row, flush=True)


# ---- head to head (python bench/bench_gemm.py --versus) --------------------------------

#: (ours, peer) pairs compared round by round: the issue's targets at n = 2048
VERSUS = [("dk_bf16", "torch_bf16"), ("dk_bf16_vdpbf16ps", "torch_bf16"), ("dk_cf8", "dk_bf16"),
          ("dk_cf8", "torch_fp8"), ("dk_bf16", "numpy_f32")]
#: added for the few-rows shapes (m <= LINEAR_MAX_M): B = W.T, torch's linear layout
VERSUS_LINEAR = [("dk_bf16_wt", "torch_linear"), ("dk_bf16_wt_vdpbf16ps", "torch_linear"),
                 ("dk_bf16_wt", "numpy_f32_wt")]


def versus(shape=(2048, 2048, 2048), rounds: int = 9) -> None:
    """Ratios measured call against call. On a shared host the speed of a core drifts by 2x
    within seconds, so a table of separate best-of timings can pair a fast moment of one
    implementation with a slow moment of the other. Here every round times each
    implementation once, back to back, in an order that alternates between rounds, and the
    ratio is taken within the round; min / median / max over the rounds are printed, with
    the TDPBF16PS / FMA peak probe measured between the rounds as a gauge of the core's speed.
    Every timed call starts SETTLE seconds after the previous one, when the peers' threads
    (which spin after a call) have gone to sleep."""
    m, n, k = shape
    pairs = VERSUS + (VERSUS_LINEAR if m <= LINEAR_MAX_M else [])
    impls = sorted({i for pair in pairs for i in pair})
    print(f"dojo_kernels tier {_config.get_isa()}; {m}x{n}x{k}; {rounds} interleaved rounds; "
          f"torch: {torch.__version__ if torch else 'not installed'}")
    # the probe of the active tier: TDPBF16PS on the amx tier, else the FP32 FMA of the
    # tier's width (the target for the amx order without tiles is a share of it); a
    # forced tier
    # (DOJO_KERNELS_ISA=avx512bf16) with ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 for torch stands
    # in for a CPU without AMX
    probe = {"amx": "tdpbf16ps", "avx512bf16": "fma_zmm", "avx2": "fma_ymm"}.get(_config.get_isa())
    if probe not in peak_probe.available():
        probe = None                                # the generic tier: no probe, no shares
    for th in THREADS:
        with threads_set(th):
            fns = {i: runner(i, m, n, k, th) for i in impls}
            fns = {i: f for i, f in fns.items() if f is not None}
            for f in fns.values():
                f()                                         # warm-up
            times: dict = {i: [] for i in fns}
            probes = []
            order = list(fns)
            for r in range(rounds):
                for i in (order if r % 2 == 0 else order[::-1]):
                    # let the peers' threads go to sleep first: OpenBLAS's and OpenMP's
                    # threads spin for a while after a call, and a spinning thread is a
                    # busy core (our contention guard then keeps a call on one thread)
                    time.sleep(SETTLE)
                    times[i].append(_once(fns[i]))
                if probe:
                    probes.append(peak_probe.measure(probe, th) / 1e9)
            print(f"\nthreads={th}  " + (f"{probe} probe GFLOP/s min/median/max: {min(probes):.0f} / "
                                         f"{statistics.median(probes):.0f} / {max(probes):.0f}"
                                         if probes else "no peak probe for this tier"))
            for i in fns:
                g = sorted(2 * m * n * k / t / 1e9 for t in times[i])
                share = (f"  (median {statistics.median(g) / statistics.median(probes):.0%} of the "
                         f"probe's)" if probes else "")
                print(f"  {i:<18} GFLOP/s min/median/max {g[0]:8.1f} {statistics.median(g):8.1f} "
                      f"{g[-1]:8.1f}{share}")
            for a, b in pairs:
                if a in fns and b in fns:
                    q = sorted(tb / ta for ta, tb in zip(times[a], times[b]))
                    print(f"  {a} / {b:<14} per-round ratio min/median/max "
                          f"{q[0]:5.2f} {statistics.median(q):5.2f} {q[-1]:5.2f}")


#: seconds between two timed calls of --versus (longer than the peers' spin-wait)
SETTLE = 0.3


def _once(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


if __name__ == "__main__":
    if "--versus" in sys.argv:
        n_rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 9
        shapes = [(2048, 2048, 2048)]
        if "--shapes" in sys.argv:
            spec = sys.argv[sys.argv.index("--shapes") + 1]
            shapes = [tuple(int(x) for x in one.split("x")) for one in spec.split(",")]
            if any(len(sh) != 3 or min(sh) < 1 for sh in shapes):
                sys.exit(f"--shapes: expected MxNxK[,MxNxK...] of positive sizes, got {spec!r}")
        for sh in shapes:
            versus(sh, rounds=n_rounds)
    else:
        main(quick="--quick" in sys.argv)
