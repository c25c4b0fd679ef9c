"""Small helpers shared by the numerics tests (no reference logic here)."""
from __future__ import annotations

import os

import numpy as np

#: AddressSanitizer's runtime is loaded in this process (.ci/sanitize.sh): it replaces malloc
#: and keeps freed memory in quarantine, so heap and resident-size figures mean nothing.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "") or any(
    "libasan" in line for line in open("/proc/self/maps"))


def flags_dict(flags) -> dict:
    """The four integer fields of a flags result, as a dict."""
    out = {}
    for k in ("invalid", "denormal", "overflow", "underflow"):
        v = getattr(flags, k)
        assert isinstance(v, (int, np.integer)) and not isinstance(v, bool), (k, type(v))
        out[k] = int(v)
    return out


def bits(a) -> np.ndarray:
    """Raw bits of a float array (to compare -0, NaN payloads and codes exactly)."""
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64, 1: np.uint8}[a.dtype.itemsize])
