"""Concurrency (issue 7): kernels called from many Python threads at once.

* 8 threads, each running a different kernel with a different thread count, many times,
  all at once: every result equals the serial result computed beforehand.
* set_num_threads changed from another thread while kernels run: safe, results unchanged.
* The GIL is released inside the kernels: while one thread runs a long kernel call, a
  pure-Python counter thread keeps counting (no timing assert: the counter must advance
  *during* the call, which it cannot if the call holds the GIL).
"""
from __future__ import annotations

import sys
import threading
import time

import ml_dtypes
import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels import _config

rng = np.random.default_rng(41)
X32 = rng.standard_normal(100_003).astype(np.float32) * 1e3
X64 = rng.standard_normal(40_001) * 1e-3
C8 = rng.integers(0, 256, 70_001, dtype=np.uint8)
C16 = rng.integers(0, 1 << 16, 66_000, dtype=np.uint16)
F8 = dk.cfloat8_152(11)
MESH = dk.mesh.Mesh2D(3, 4, link_bandwidth=1e10, link_latency=1e-7, wraparound=True)
BUFS = rng.standard_normal((12, 70_000)).astype(np.float32)
BUFS16 = BUFS.astype(ml_dtypes.bfloat16).view(np.uint16)
GA = rng.integers(0, 1 << 16, (300, 257), dtype=np.uint16) & 0xBFFF   # finite BF16
GB = rng.integers(0, 1 << 16, (257, 190), dtype=np.uint16) & 0xBFFF
GA8 = rng.integers(0, 256, (4, 100, 130), dtype=np.uint8)
GB8 = rng.integers(0, 256, (130, 150), dtype=np.uint8)


def _bits(r):
    """Comparable bytes of a result (arrays, tuples with Flags, reports' times)."""
    if isinstance(r, tuple):
        return tuple(_bits(v) for v in r)
    if isinstance(r, np.ndarray):
        return (r.dtype.str, r.shape, np.ascontiguousarray(r).tobytes())
    if isinstance(r, dk.AllreduceReport):
        return (r.algorithm, r.time)
    return r


CALLS = [
    ("quantize stochastic+flags", lambda: dk.quantize(X32, F8, rounding="stochastic", seed=5,
                                                      return_flags=True)),
    ("quantize bf16", lambda: dk.quantize(X32, dk.BF16)),
    ("quantize f64", lambda: dk.quantize(X64, dk.shp(20), rounding="toward_zero")),
    ("dequantize", lambda: dk.dequantize(C8, F8, dtype=np.float64)),
    ("fake_quantize", lambda: dk.fake_quantize(X32, dk.cfloat8_143(3))),
    ("add", lambda: dk.add(C16, C16[::-1], dk.BF16, return_flags=True)),
    ("fma stochastic", lambda: dk.fma(C8, C8[::-1], C8, F8, rounding="stochastic", seed=2)),
    ("gemm bf16", lambda: dk.gemm(GA, GB)),
    ("gemm cfloat8 batched", lambda: dk.gemm(GA8, GB8, a_format=dk.cfloat8_143(9),
                                             b_format=dk.cfloat8_152(15))),
    ("allreduce ring", lambda: dk.allreduce(BUFS, MESH, algorithm="ring")),
    ("allreduce bf16 2d", lambda: dk.allreduce(BUFS16, MESH, algorithm="2d", fmt=dk.BF16,
                                               accumulate="bf16")),
]


@pytest.fixture
def restore_threads():
    saved = dk.get_num_threads()
    yield
    dk.set_num_threads(saved)


def _run_threads(workers):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    ts = [threading.Thread(target=wrap(w)) for w in workers]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=600)
        assert not t.is_alive(), "a kernel thread hangs"
    if errors:
        raise errors[0]


def test_eight_threads_match_serial(restore_threads):
    dk.set_num_threads(1)
    serial = {name: _bits(fn()) for name, fn in CALLS}
    barrier = threading.Barrier(8)
    mismatches = []

    def worker(k):
        def run():
            barrier.wait()
            for rep in range(4):
                name, fn = CALLS[(k + rep) % len(CALLS)]
                # a different thread count per worker and repetition; set_num_threads is
                # process-wide, so the workers also race on it (results must not care)
                dk.set_num_threads(1 + (k + rep) % 4)
                got = _bits(fn())
                if got != serial[name]:
                    mismatches.append((k, rep, name))
        return run

    _run_threads([worker(k) for k in range(8)])
    assert not mismatches, f"results differ from the serial ones: {mismatches}"


def test_float_operands_of_concurrent_calls_stay_apart(restore_threads):
    """Concurrent gemm calls on float operands of over 1 MiB of codes, each thread its own
    operands: the codes go into scratch buffers that the calls take from one pool and give
    back (gemm.py, _scratch_take); a buffer shared by two live calls, or given back before
    its call is done, would mix their codes."""
    dk.set_num_threads(1)
    xs = [rng.standard_normal((700, 800)).astype(np.float32) * (i + 1) for i in range(4)]
    w = rng.standard_normal((800, 750))
    want = [_bits(dk.gemm(x, w)) for x in xs]
    barrier = threading.Barrier(4)
    mismatches = []

    def worker(i):
        def run():
            barrier.wait()
            for rep in range(12):
                dk.set_num_threads(1 + (i + rep) % 2)
                if _bits(dk.gemm(xs[i], w)) != want[i]:
                    mismatches.append((i, rep))
        return run

    _run_threads([worker(i) for i in range(4)])
    assert not mismatches, f"results differ from the serial ones: {mismatches}"


def test_set_num_threads_mid_run(restore_threads):
    """One thread flips the thread count continuously while 4 threads run kernels."""
    dk.set_num_threads(2)
    serial = {name: _bits(fn()) for name, fn in CALLS}
    stop = threading.Event()
    flips = [0]
    mismatches = []

    def flipper():
        n = 0
        while not stop.is_set():
            dk.set_num_threads(1 + n % 8)
            n += 1
        flips[0] = n

    def worker(k):
        def run():
            for rep in range(3):
                name, fn = CALLS[(2 * k + rep) % len(CALLS)]
                if _bits(fn()) != serial[name]:
                    mismatches.append((k, rep, name))
        return run

    f = threading.Thread(target=flipper)
    f.start()
    try:
        _run_threads([worker(k) for k in range(4)])
    finally:
        stop.set()
        f.join()
    assert flips[0] > 10, "the flipper thread did not run alongside the kernels"
    assert not mismatches, mismatches
    assert 1 <= dk.get_num_threads() <= 8


def _increments_during(call, tries=5):
    """How many times a Python counter thread ran while the main thread was inside call().

    The switch interval is set to 100 s, so the main thread, once it runs Python code, is
    never preempted; the counter thread gives the GIL back after every increment
    (time.sleep(0) releases it). So the counter can only advance between reading it before
    and after call() if call() itself releases the GIL: a GIL-holding call gives exactly 0.
    """
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0)

    saved = sys.getswitchinterval()
    t = threading.Thread(target=count)
    t.start()
    best = 0
    try:
        while counter[0] < 100:   # the counter thread is up
            time.sleep(0.001)
        sys.setswitchinterval(100.0)
        for _ in range(tries):
            time.sleep(0.001)      # let the counter thread run, then take the GIL back
            c0 = counter[0]
            call()
            best = max(best, counter[0] - c0)
            if best > 10:
                break
    finally:
        sys.setswitchinterval(saved)
        stop.set()
        t.join()
    return best


def test_gil_probe_sees_a_gil_holding_call():
    """Control: a long call that holds the GIL (sorting a big list) lets nothing run."""
    data = list(range(3_000_000, 0, -1))
    assert _increments_during(lambda: sorted(data), tries=2) == 0


@pytest.mark.parametrize("which", ["quantize", "dequantize", "fake_quantize", "arith",
                                   "accumulate", "allreduce program", "gemm"])
def test_kernels_release_the_gil(which):
    """The Cython glue calls its C driver with the GIL released (the Python wrappers add
    NumPy work, which may release the GIL itself, so probe the glue directly)."""
    from dojo_kernels import _gemm, _numerics, _reduce
    from dojo_kernels.gemm import _DUMMY_TABLE, _kernel_index
    from dojo_kernels.collectives import compile_program, schedule_for
    from dojo_kernels.numerics import _ctuple

    n = 4_000_000
    x = np.random.default_rng(3).standard_normal(n).astype(np.float32)
    xb = x.view(np.uint8)
    codes = np.zeros(n, np.uint8)
    o8 = np.empty(n * 8, np.uint8)
    f = _ctuple(F8)
    isa = _config.isa()
    bufs = np.random.default_rng(4).standard_normal((4, n // 4)).astype(np.float32)
    mesh = dk.mesh.Mesh2D(2, 2, link_bandwidth=1e10, link_latency=1e-7)
    prog = compile_program(schedule_for(float(bufs.nbytes // 4), mesh, algorithm="ring"),
                           n // 4)
    out = np.empty((1 if prog.bit_identical else 4, n // 4), np.float32)
    acc = x.copy()
    ga = np.full((1, 1200, 1200), 0x3F80, np.uint16)
    gout = np.empty((1, 1200, 1200), np.float32)
    kern = _kernel_index() if isa >= 2 else 0
    call = {
        "quantize": lambda: _numerics.quantize(xb, 0, codes, n, f, 1, 7, True, isa, 1),
        "dequantize": lambda: _numerics.dequantize(codes, o8, 1, n, f, isa, 1),
        "fake_quantize": lambda: _numerics.fake_quantize(xb, 0, o8[:n * 4], n, f, 0, 0, isa, 1),
        "arith": lambda: _numerics.arith(3, codes, codes, codes, o8[:n], n, f, 0, 0, True, isa, 1),
        "accumulate": lambda: _reduce.accumulate(isa, 1, acc, x, True),
        "allreduce program": lambda: _reduce.run_f32(
            isa, 1, prog.seg_lo, prog.add_off, prog.add_out, prog.add_a, prog.add_b,
            prog.out_op, prog.nslots, bufs, out),
        "gemm": lambda: _gemm.gemm(ga, ga, _DUMMY_TABLE, _DUMMY_TABLE, 1.0, gout, isa, kern, 1, 0),
    }[which]
    assert _increments_during(call) > 0, f"{which}: the kernel call holds the GIL"
