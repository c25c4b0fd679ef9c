"""Peak probe: this CPU's FMA, VDPBF16PS and (on AMX CPUs) TDPBF16PS throughput, measured
with the C probes shipped in dojo_kernels._gemm (independent register chains, or tile
registers, of one instruction; no memory traffic).

    python bench/peak_probe.py            # table for 1 and 2 threads

Each probe runs in `threads` Python threads at once (the C call releases the GIL), so the
2-thread figure is the two-core peak when both cores are free. Report GEMM speed as a
fraction of a peak measured in the same run: the machine may be shared. The measurement
itself is dojo_kernels._bench.measure_peak (also used by `dojo-kernels bench`).
"""
from __future__ import annotations

from dojo_kernels import _bench, _cpu


def available() -> list:
    """The probes this CPU can run."""
    best = _cpu.best_isa()
    return [p for p, tier in _bench._PROBES.items() if best >= tier]


def measure(probe: str, threads: int = 1, iters: int = 3_000_000, repeats: int = 3) -> float:
    """Best FLOP/s of `repeats` runs of `threads` concurrent probes."""
    return _bench.measure_peak(probe, threads, iters, repeats)


def main() -> None:
    print(f"{'probe':<16}{'threads':>8}{'GFLOP/s':>10}")
    for p in available():
        for th in (1, 2):
            print(f"{p:<16}{th:>8}{measure(p, th) / 1e9:>10.1f}")


if __name__ == "__main__":
    main()
