"""The C kernels' view of a :class:`~dojo_kernels.numerics.formats.Format` and of arrays (an
internal interface: numerics and gemm pass them to the compiled modules)."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .numerics.formats import Format

#: the subnormal policies as the C structs number them (include/dk_format.h)
SUBNORMALS = {"tesla": 0, "ieee": 1, "flush": 2}


def ctuple(fmt: Format) -> Tuple[Any, ...]:
    """(exponent bits, mantissa bits, bias, signed, subnormal policy, has Inf/NaN, NaN code),
    the argument the compiled modules build their format struct from."""
    return (fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, int(fmt.signed),
            SUBNORMALS[fmt.subnormals], int(fmt.has_inf_nan), fmt.nan_code or 0)


def memory_order(a: np.ndarray) -> Tuple[np.ndarray, Optional[Tuple[int, ...]]]:
    """For order-free uses (a reduction, or nearest rounding read back through the same
    axes): ``(a, None)`` when ``a`` is C-contiguous or in no other dense order handled here,
    else ``(t, perm)`` with ``t = a.transpose(perm)`` C-contiguous, the same memory read in
    its own order, so that no strided copy is made: a Fortran-ordered array (a transpose,
    ``perm`` reverses the axes) or a 3-D batch with its last two axes swapped
    (``perm = (0, 2, 1)``). Both permutations are their own inverse. Only flags are looked
    at: this runs on every gemm call."""
    if a.ndim < 2 or a.flags.c_contiguous:
        return a, None
    if a.flags.f_contiguous:
        return a.T, tuple(range(a.ndim - 1, -1, -1))
    if a.ndim == 3:
        t = a.transpose(0, 2, 1)
        if t.flags.c_contiguous:
            return t, (0, 2, 1)
    return a, None
