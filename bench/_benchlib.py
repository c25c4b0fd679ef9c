"""Shared by the benchmark modules: results, ratio tables, problem sizes."""
import os

RESULTS = {}  # key -> dict(rate=..., unit=..., group=..., extra...)
TABLES = []   # callables(results) -> list of lines, registered by benchmark modules


def record(benchmark, key, work, unit, **extra):
    """Store work / (fastest round) for the table; work is elements, FLOPs or bytes."""
    best = benchmark.stats.stats.min
    RESULTS[key] = dict(rate=work / best, unit=unit, seconds=best, **extra)
    benchmark.extra_info.update(rate=work / best, unit=unit, **extra)
    return work / best


def bench_size(default):
    """Problem size, overridable with DOJO_BENCH_SCALE (e.g. 0.1 for a quick run)."""
    scale = float(os.environ.get("DOJO_BENCH_SCALE", "1"))
    return max(1024, int(default * scale))
