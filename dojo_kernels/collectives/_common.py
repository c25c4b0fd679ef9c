"""Internal interface of the collectives: argument checks and report-dict helpers shared by
:mod:`dojo_kernels.collectives`, :mod:`dojo_kernels.hierarchical` and :mod:`dojo_kernels.mpi`.

Not public API (names may change between releases), but an explicit interface: these modules
import these functions from here, never each other's private names.

- :func:`check_topology`: a :class:`~dojo_kernels.mesh.Mesh2D`, or the mesh a machine object
  stands for.
- :func:`check_nbytes`: a non-negative finite byte count, as ``float``.
- :func:`check_algorithm`: ``"auto"`` or a name of :data:`ALGORITHMS`.
- :func:`as_codes`: a buffer of FP32 values or BF16 codes for an all-reduce, and the bytes per
  element on the wire.
- :func:`from_dict_fields`: the common validation of a report's ``from_dict`` (a mapping of
  the right ``kind``; a missing key is a ValueError naming it).
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .._fromdict import check_dict
from ._schedule import ALGORITHMS
from ..numerics.formats import BF16, FP32, Format
from ..machine.mesh import Mesh2D, as_topology


__all__ = ["ALGORITHMS", "check_topology", "check_nbytes", "check_algorithm", "as_codes",
           "from_dict_fields"]


def check_topology(topology: Any) -> Mesh2D:
    """A Mesh2D, or the mesh a machine object stands for (``mesh.as_topology``)."""
    return as_topology(topology)


def check_nbytes(nbytes: Any) -> float:
    """``nbytes`` as a float: TypeError unless a real number, ValueError if negative or not
    finite."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, float, np.integer, np.floating)):
        raise TypeError(f"nbytes: expected a non-negative number, got {type(nbytes).__name__}")
    v = float(nbytes)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"nbytes: expected a non-negative finite number, got {nbytes!r}")
    return v


def check_algorithm(algorithm: Any) -> str:
    """``algorithm`` if it is ``"auto"`` or one of :data:`ALGORITHMS`, else a ValueError."""
    if not isinstance(algorithm, str) or (algorithm != "auto" and algorithm not in ALGORITHMS):
        raise ValueError(f"algorithm: expected 'auto' or one of {', '.join(ALGORITHMS)}, "
                         f"got {algorithm!r}")
    return algorithm


def as_codes(buffers: Any, fmt: Format, accumulate: str, name: str = "buffers"
             ) -> Tuple[np.ndarray, int]:
    """Validate; return ``(codes, wire_itemsize)``: the array of codes (float32, or uint16
    BF16 codes) and the bytes per element on the wire (4 when BF16 accumulates in FP32)."""
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt: expected a dojo_kernels Format (FP32 or BF16), got "
                        f"{type(fmt).__name__}")
    if fmt != FP32 and fmt != BF16:
        raise ValueError(f"fmt: all-reduce supports FP32 and BF16, got {fmt.name}")
    if accumulate not in ("fp32", "bf16"):
        raise ValueError(f"accumulate: expected 'fp32' or 'bf16', got {accumulate!r}")
    if fmt == FP32 and accumulate != "fp32":
        raise ValueError("accumulate: 'bf16' rounding needs fmt=BF16")
    arr = np.asarray(buffers)
    if fmt == FP32:
        if arr.dtype != np.float32:
            raise TypeError(f"{name}: expected float32 for fmt=FP32, got {arr.dtype}")
    else:
        if arr.dtype.name == "bfloat16":
            arr = arr.view(np.uint16)
        if arr.dtype != np.uint16:
            raise TypeError(f"{name}: expected uint16 BF16 codes (or ml_dtypes.bfloat16) for "
                            f"fmt=BF16, got {arr.dtype}")
    if arr.ndim < 1:
        raise ValueError(f"{name}: expected shape (P, ...), got a scalar")
    return arr, (4 if (fmt == BF16 and accumulate == "fp32") else arr.itemsize)


from_dict_fields = check_dict  # the core validation (dojo_kernels/_fromdict.py)
