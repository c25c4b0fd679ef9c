"""SI units of the Python API, and the check that catches a value off by a unit prefix.

The Python API takes SI base units only: bytes, seconds, bytes/s, Hz, FLOP/s (docs/machine.md).
The CLI takes human units (GB/s, GHz, KiB, ns) and converts them here, in one place
(:data:`CLI_UNITS`). A machine figure far outside any plausible range for its unit is almost
always a prefix mistake (``link_bandwidth=2000`` meant 2000 GB/s), so it is a ValueError that
names the probable intent, never a silently absurd model.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import numpy as np

#: CLI unit -> (SI unit, factor): value_in_SI = value_in_cli_unit * factor.
CLI_UNITS: Dict[str, Tuple[str, float]] = {
    "GB/s": ("B/s", 1e9),
    "GHz": ("Hz", 1e9),
    "KiB": ("B", 1024.0),
    "ns": ("s", 1e-9),
}

# smallest plausible value of a figure in each SI unit, and the prefix a mistake usually had
_FLOOR = {"B/s": (1e6, "1 MB/s", "GB/s", 1e9),
          "Hz": (1e6, "1 MHz", "GHz", 1e9),
          "B": (1024.0, "1 KiB", "KiB", 1024.0)}
# largest plausible latency: a second on a link is a unit mistake
_LATENCY_CEIL = 1.0


def from_cli(value: float, unit: str) -> float:
    """A CLI figure in ``unit`` (a key of :data:`CLI_UNITS`) in SI base units."""
    return float(value) * CLI_UNITS[unit][1]


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name}: expected a finite number, got {f}")
    return f


def check(name: str, v: Any, unit: str) -> float:
    """``v`` as a float after checking it is a positive figure in ``unit``
    (``"B/s"``, ``"Hz"``, ``"B"``), at least the unit's plausible floor (1 MB/s, 1 MHz,
    1 KiB). Below the floor: a ValueError suggesting the probable prefix."""
    f = _number(name, v)
    if not f > 0:
        raise ValueError(f"{name}: expected a positive number of {unit}, got {f:g}")
    floor, floor_txt, guess, factor = _FLOOR[unit]
    if f < floor:
        raise ValueError(
            f"{name}={f:g} {unit} is below {floor_txt}: the Python API takes SI base units "
            f"({unit}); did you mean {f:g} {guess} = {f * factor:g}?")
    return f


def check_latency(name: str, v: Any) -> float:
    """``v`` as a float after checking it is a latency in seconds, >= 0 and below 1 s
    (above: a ValueError suggesting nanoseconds)."""
    f = _number(name, v)
    if f < 0:
        raise ValueError(f"{name}: expected a latency >= 0 in seconds, got {f:g}")
    if f >= _LATENCY_CEIL:
        raise ValueError(
            f"{name}={f:g} s is a second or more: the Python API takes seconds; did you mean "
            f"{f:g} ns = {f * 1e-9:g}?")
    return f
