"""The C kernels' view of a :class:`~dojo_kernels.numerics.formats.Format` (an internal interface:
numerics and gemm pass it to the compiled modules)."""
from __future__ import annotations

from typing import Any, Tuple

from .numerics.formats import Format

#: the subnormal policies as the C structs number them (include/dk_format.h)
SUBNORMALS = {"tesla": 0, "ieee": 1, "flush": 2}


def ctuple(fmt: Format) -> Tuple[Any, ...]:
    """(exponent bits, mantissa bits, bias, signed, subnormal policy, has Inf/NaN, NaN code),
    the argument the compiled modules build their format struct from."""
    return (fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, int(fmt.signed),
            SUBNORMALS[fmt.subnormals], int(fmt.has_inf_nan), fmt.nan_code or 0)
