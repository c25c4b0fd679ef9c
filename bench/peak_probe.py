"""Peak probe: this CPU's VDPBF16PS and FMA throughput, measured with the C probes shipped
in dojo_kernels._gemm (independent register chains of one instruction, no memory traffic).

    python bench/peak_probe.py            # table for 1 and 2 threads

Each probe runs in `threads` Python threads at once (the C call releases the GIL), so the
2-thread figure is the two-core peak when both cores are free. Report GEMM speed as a
fraction of a peak measured in the same run: the machine may be shared.
"""
from __future__ import annotations

import threading
import time

from dojo_kernels import _cpu, _gemm

PROBES = {
    "vdpbf16ps_zmm": 2,  # tier needed (index): avx512bf16
    "fma_zmm": 2,
    "fma_ymm": 1,
}


def available() -> list:
    best = _cpu.best_isa()
    return [p for p, tier in PROBES.items() if best >= tier]


def measure(probe: str, threads: int = 1, iters: int = 3_000_000, repeats: int = 3) -> float:
    """Best FLOP/s of `repeats` runs of `threads` concurrent probes."""
    if probe not in available():
        raise ValueError(f"probe {probe!r} needs a tier this CPU lacks")
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
        dt = time.perf_counter() - t0
        best = max(best, sum(flops) / dt)
    return best


def main() -> None:
    print(f"{'probe':<16}{'threads':>8}{'GFLOP/s':>10}")
    for p in available():
        for th in (1, 2):
            print(f"{p:<16}{th:>8}{measure(p, th) / 1e9:>10.1f}")


if __name__ == "__main__":
    main()
