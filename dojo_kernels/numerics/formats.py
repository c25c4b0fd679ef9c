"""Number formats of the Dojo D1 (SPEC section 1): FP32, BF16, CFloat8 (1-4-3, 1-5-2),
SHP and UHP (the two CFloat16 flavours).

A :class:`Format` is a small frozen value: the bit layout, the exponent bias and the
subnormal rule. Codes are stored as unsigned integers of ``nbits`` bits (FP32 "codes"
are float32 values themselves).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

import numpy as np

SUBNORMAL_MODES = ("tesla", "ieee", "flush")

# name -> (exponent_bits, mantissa_bits, signed, has_inf_nan, fixed bias, fixed subnormals);
# a bias of None means "per tensor, 0..63".
_LAYOUTS = {
    "fp32": (8, 23, True, True, 127, "ieee"),
    "bf16": (8, 7, True, True, 127, "ieee"),
    "uhp": (6, 10, False, True, 31, "flush"),
    "cfloat8_143": (4, 3, True, False, None, None),
    "cfloat8_152": (5, 2, True, False, None, None),
    "shp": (5, 10, True, False, None, None),
}
_NAN_CODES = {"fp32": 0x7FC00000, "bf16": 0x7FC0, "uhp": 0xFE00}


@dataclass(frozen=True)
class Format:
    """A floating-point storage format.

    Parameters
    ----------
    name : family name: ``"fp32"``, ``"bf16"``, ``"cfloat8_143"``, ``"cfloat8_152"``,
        ``"shp"`` or ``"uhp"``.
    exponent_bits, mantissa_bits : field widths.
    signed : whether there is a sign bit (UHP has none).
    bias : exponent bias.
    subnormals : how codes with a zero exponent field decode (SPEC section 1):
        ``"tesla"`` -- the white paper's literal ``2^-bias * M/2^m`` (a gap below the
        smallest normal; model choice, the default for Tesla's configurable formats);
        ``"ieee"`` -- ``2^(1-bias) * M/2^m`` (no gap, as OCP FP8 and ml_dtypes);
        ``"flush"`` -- decode to zero, and results that would be subnormal become zero (UHP).
    has_inf_nan : whether the all-ones exponent encodes Inf/NaN (IEEE style). CFloat8 and
        SHP have none: every code is finite and overflow saturates.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    signed: bool
    bias: int
    subnormals: str
    has_inf_nan: bool

    def __getstate__(self) -> Dict[str, Any]:
        # the fields only: the package memoizes derived values on a format object
        # (dojo_kernels.numerics._fmt_info), which pickles and copies must not carry
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __post_init__(self) -> None:
        layout = _LAYOUTS.get(self.name)
        if layout is None:
            raise ValueError(f"name: expected one of {', '.join(map(repr, _LAYOUTS))}, "
                             f"got {self.name!r}")
        got = (self.exponent_bits, self.mantissa_bits, self.signed, self.has_inf_nan)
        if got != layout[:4]:
            raise ValueError(
                f"{self.name}: expected (exponent_bits, mantissa_bits, signed, has_inf_nan) = "
                f"{layout[:4]}, got {got}")
        fixed_bias, fixed_sub = layout[4], layout[5]
        if fixed_bias is not None:
            if self.bias != fixed_bias or self.subnormals != fixed_sub:
                raise ValueError(f"{self.name}: bias and subnormals are fixed at "
                                 f"{fixed_bias}, {fixed_sub!r}")
        else:
            _check_bias(self.bias)
            _check_subnormals(self.subnormals)

    @property
    def nbits(self) -> int:
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def storage_dtype(self) -> type:
        """NumPy dtype of the codes: uint8, uint16, or float32 for FP32."""
        if self.name == "fp32":
            return np.float32
        return np.uint8 if self.nbits == 8 else np.uint16

    @property
    def _emax_field(self) -> int:
        top = (1 << self.exponent_bits) - 1
        return top - 1 if self.has_inf_nan else top

    @property
    def max(self) -> float:
        """Largest finite value."""
        m = self.mantissa_bits
        return math.ldexp((1 << (m + 1)) - 1, self._emax_field - self.bias - m)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value."""
        return math.ldexp(1.0, 1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive subnormal value (0.0 for ``subnormals="flush"``)."""
        if self.subnormals == "flush":
            return 0.0
        lowest = -self.bias if self.subnormals == "tesla" else 1 - self.bias
        return math.ldexp(1.0, lowest - self.mantissa_bits)

    @property
    def max_code(self) -> int:
        """Code of the largest finite positive value."""
        return (self._emax_field << self.mantissa_bits) | ((1 << self.mantissa_bits) - 1)

    @property
    def nan_code(self) -> Optional[int]:
        """Canonical (positive, quiet) NaN code, or None for formats without NaN."""
        return _NAN_CODES.get(self.name)

    def __repr__(self) -> str:
        if self.name in ("fp32", "bf16", "uhp"):
            return self.name.upper()
        sub = "" if self.subnormals == "tesla" else f", subnormals={self.subnormals!r}"
        fam = {"cfloat8_143": "cfloat8_143", "cfloat8_152": "cfloat8_152", "shp": "shp"}[self.name]
        return f"{fam}(bias={self.bias}{sub})"


def _check_bias(bias: object) -> int:
    if isinstance(bias, bool) or not isinstance(bias, (int, np.integer)):
        raise ValueError(f"bias: expected an integer in 0..63, got {bias!r}")
    if not 0 <= int(bias) <= 63:
        raise ValueError(f"bias: expected an integer in 0..63, got {bias}")
    return int(bias)


def _check_subnormals(subnormals: object) -> str:
    if subnormals not in SUBNORMAL_MODES:
        raise ValueError(
            f"subnormals: expected one of {', '.join(map(repr, SUBNORMAL_MODES))}, got {subnormals!r}")
    return str(subnormals)


def cfloat8_143(bias: int, subnormals: str = "tesla") -> Format:
    """Tesla CFloat8 with 1 sign, 4 exponent and 3 mantissa bits; bias 0..63 per tensor."""
    return Format("cfloat8_143", 4, 3, True, _check_bias(bias), _check_subnormals(subnormals), False)


def cfloat8_152(bias: int, subnormals: str = "tesla") -> Format:
    """Tesla CFloat8 with 1 sign, 5 exponent and 2 mantissa bits; bias 0..63 per tensor."""
    return Format("cfloat8_152", 5, 2, True, _check_bias(bias), _check_subnormals(subnormals), False)


def shp(bias: int, subnormals: str = "tesla") -> Format:
    """Signed half precision CFloat16 (1-5-10, bias 0..63, no Inf/NaN)."""
    return Format("shp", 5, 10, True, _check_bias(bias), _check_subnormals(subnormals), False)


FP32 = Format("fp32", 8, 23, True, 127, "ieee", True)
"""IEEE binary32."""
BF16 = Format("bf16", 8, 7, True, 127, "ieee", True)
"""bfloat16: FP32's exponent, 7 mantissa bits; rounding as ml_dtypes (NaN -> sign|0x7FC0)."""
UHP = Format("uhp", 6, 10, False, 31, "flush", True)
"""Unsigned half precision CFloat16: 6 exponent bits (bias 31), 10 mantissa bits, IEEE-style
Inf/NaN (canonical NaN 0xFE00), subnormal results flushed to +0."""

FAMILIES = {"cfloat8_143": cfloat8_143, "cfloat8_152": cfloat8_152, "shp": shp}
