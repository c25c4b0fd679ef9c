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


class GuardedPages:
    """Arrays placed against pages that may not be touched (PROT_NONE), so that a kernel
    reading or writing one byte past an operand's first or last byte faults (Linux)."""

    def __init__(self):
        self._keep = []  # the mappings (and their buffer exports) stay alive with this object

    def place(self, arr, at_end=True):
        """A C-contiguous copy of `arr` whose last byte (at_end) or first byte lies next to
        an inaccessible page."""
        import ctypes
        import mmap

        arr = np.ascontiguousarray(arr)
        page = mmap.PAGESIZE
        body = -(-max(arr.nbytes, 1) // page) * page
        buf = mmap.mmap(-1, body + 2 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        for start in (base, base + page + body):
            if libc.mprotect(start, page, 0) != 0:  # PROT_NONE
                raise OSError(ctypes.get_errno(), "mprotect")
        off = page + body - arr.nbytes if at_end else page
        out = np.frombuffer(buf, dtype=arr.dtype, count=arr.size, offset=off).reshape(arr.shape)
        out[...] = arr
        self._keep.append(buf)
        return out
