"""The contention guard at work: time at 2 threads / time at 1 thread, guard on and off,
for gemm (BF16, square sizes) and quantize (4M float32 -> BF16), in interleaved rounds.

    flock /tmp/dk-timing.lock python bench/thread_sweep.py [SIZES [ROUNDS]] [--no-spread]
    python bench/thread_sweep.py 128,256,384,512,2048 7

--no-spread turns off the pool's spreading (a worker that finds another thread of its call on
its CPU moves to a free one; docs/threads.md), to see what it is worth on this machine.

    python bench/thread_sweep.py --after-idle [SIZES [ROUNDS]]

times single calls that each start 0.3 s after the previous one (as a user's calls between
other work do; the workers are asleep and a VM may have parked their vCPU): per round one
call at 1 thread, one at 2 threads with spreading on, one with it off (guard on).

Each round times 1 thread, then 2 threads with the guard on, then off, back to back, and
takes the ratios within the round; the line gives min / median / max over the rounds.
Start a busy process beside it (``python -c "while True: pass" &``) for the contention
figures (docs/threads.md, "The contention guard"); on a shared machine "idle" is only as
idle as the other users let it be.
"""
from __future__ import annotations

import sys
import time

import numpy as np

import dojo_kernels as dk


def _timeit(f, reps: int) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    if "--no-spread" in sys.argv:
        from dojo_kernels import _cpu
        sys.argv.remove("--no-spread")
        _cpu._pool_spread(0)
        print("spreading off")
    sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "128,192,256,384,512,1024,2048").split(",")]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    rng = np.random.default_rng(0)
    cases = []
    for s in sizes:
        a = dk.quantize(rng.standard_normal((s, s)).astype(np.float32), dk.BF16)
        # at least ~20 ms a timing: turning the guard on starts it afresh, and its first
        # probe of a losing kind (a slow call, then a back-off of 4 ms, 8 ms, ...) should
        # weigh as it does in a long run, not dominate a short one
        cases.append((f"gemm {s}^3", (lambda a=a: dk.gemm(a, a)), max(3, int(1.5e10 / s ** 3))))
    x = rng.standard_normal(1 << 22).astype(np.float32)
    cases.append(("quantize 4M", lambda: dk.quantize(x, dk.BF16), 30))
    saved = dk.get_num_threads(), dk.get_thread_guard()
    try:
        for name, f, reps in cases:
            res: dict = {"on": [], "off": []}
            for _ in range(rounds):
                dk.set_num_threads(1)
                t1 = _timeit(f, reps)
                dk.set_num_threads(2)
                dk.set_thread_guard(True)
                res["on"].append(_timeit(f, reps) / t1)
                dk.set_thread_guard(False)
                res["off"].append(_timeit(f, reps) / t1)
            cols = []
            for k in ("on", "off"):
                r = sorted(res[k])
                cols.append(f"guard {k:3s} {r[0]:.2f} / {r[len(r) // 2]:.2f} / {r[-1]:.2f}")
            print(f"{name:14s} 2t/1t time (min / median / max): " + "   ".join(cols), flush=True)
    finally:
        dk.set_num_threads(saved[0])
        dk.set_thread_guard(saved[1])


def after_idle() -> None:
    from dojo_kernels import _cpu
    sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "512,1024,2048").split(",")]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    rng = np.random.default_rng(0)
    saved = dk.get_num_threads(), _cpu._pool_spread(-1)

    def once(f) -> float:
        time.sleep(0.3)
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0
    try:
        for s in sizes:
            a = dk.quantize(rng.standard_normal((s, s)).astype(np.float32), dk.BF16)
            out = np.empty((s, s), np.float32)
            f = lambda: dk.gemm(a, a, out=out)  # noqa: E731
            f()
            res: dict = {"on": [], "off": []}
            for _ in range(rounds):
                dk.set_num_threads(1)
                t1 = once(f)
                dk.set_num_threads(2)
                _cpu._pool_spread(1)
                res["on"].append(once(f) / t1)
                _cpu._pool_spread(0)
                res["off"].append(once(f) / t1)
            cols = []
            for k in ("on", "off"):
                r = sorted(res[k])
                cols.append(f"spread {k:3s} {r[0]:.2f} / {r[len(r) // 2]:.2f} / {r[-1]:.2f}")
            print(f"gemm {s}^3 after 0.3 s idle, 2t/1t time (min / median / max): "
                  + "   ".join(cols), flush=True)
    finally:
        dk.set_num_threads(saved[0])
        _cpu._pool_spread(int(saved[1]))


if __name__ == "__main__":
    if "--no-spread" in sys.argv and "--after-idle" in sys.argv:
        sys.exit("--after-idle compares spreading on and off by itself: drop --no-spread")
    if "--after-idle" in sys.argv:
        sys.argv.remove("--after-idle")
        after_idle()
    else:
        main()
