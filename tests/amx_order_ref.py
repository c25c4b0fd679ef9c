"""Exact reference of the two GEMM accumulation orders, written from their description
(include/dk_gemm.h, docs/gemm.md, ../shared/notes/amx.md), sharing no code with the kernels.

Values are Python floats holding FP32 values exactly (every FP32 value is a double);
every operation is done exactly with integers and Fractions and rounded here:

- an FMA or an addition is computed exactly and rounded once to 24 significant bits,
  nearest even, with an unbounded exponent;
- ``flush=True`` (the kernel's own arithmetic): BF16 inputs below 2**-126 in magnitude are
  read as zeros of their sign (DAZ); a result whose magnitude after that rounding is below
  2**-126 becomes a zero with the sign of the exact result (FTZ, tininess after rounding);
  a result of magnitude 2**128 or more after rounding is an infinity;
- ``flush=False`` (what the SPEC section 5 scaling promises in range): no DAZ, no FTZ;
- an exact zero sum is +0 unless both addends are -0; NaN in, or Inf * 0, or Inf - Inf
  gives NaN;
- the end: ``C * scale`` as an IEEE FP32 multiply (gradual underflow), and any NaN
  becomes the bits 0x7FC00000.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional

import numpy as np

NAN = float("nan")
TWO_M126 = Fraction(1, 2 ** 126)
TWO_128 = Fraction(2 ** 128)


def bf16_value(code: int, daz: bool) -> float:
    """The value of a BF16 code (sign, 8 exponent bits, 7 fraction bits), from the bits."""
    code = int(code) & 0xFFFF
    sign = -1.0 if code >> 15 else 1.0
    e = (code >> 7) & 0xFF
    f = code & 0x7F
    if e == 0xFF:
        return NAN if f else sign * math.inf
    if e == 0:
        if daz:
            return sign * 0.0
        return sign * math.ldexp(f, -133)            # 0.f * 2**-126
    return sign * math.ldexp(128 + f, e - 134)      # 1.f * 2**(e-127)


def _floor_log2(x: Fraction) -> int:
    """floor(log2(x)) of a positive Fraction."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    elif Fraction(2) ** (e + 1) <= x:
        e += 1
    return e


def round_nearest_even(x: Fraction, bits: int = 24, min_exp: Optional[int] = None) -> Fraction:
    """x rounded to `bits` significant bits, nearest even; with min_exp, the quantum is at
    least 2**(min_exp - bits + 1) (IEEE gradual underflow below 2**min_exp)."""
    if x == 0:
        return Fraction(0)
    ax = abs(x)
    e = _floor_log2(ax)
    if min_exp is not None:
        e = max(e, min_exp)
    quantum = Fraction(2) ** (e - bits + 1)
    n = ax / quantum
    q, r = divmod(n.numerator, n.denominator)
    if 2 * r > n.denominator or (2 * r == n.denominator and q % 2 == 1):
        q += 1
    res = q * quantum
    return res if x > 0 else -res


def _finish(exact: Fraction, flush: bool) -> float:
    """One rounding of a nonzero exact result to the kernel's FP32 arithmetic."""
    r = round_nearest_even(exact)
    if abs(r) >= TWO_128:
        return math.copysign(math.inf, exact)
    if flush and abs(r) < TWO_M126:
        return math.copysign(0.0, exact)
    return float(r)


def _signbit(x: float) -> bool:
    return math.copysign(1.0, x) < 0


def fma(a: float, b: float, c: float, flush: bool = True) -> float:
    """round(a * b + c), the product exact (IEEE 754 fusedMultiplyAdd, then FTZ)."""
    if math.isnan(a) or math.isnan(b) or math.isnan(c):
        return NAN
    if math.isinf(a) or math.isinf(b):
        if a == 0 or b == 0:
            return NAN                                   # Inf * 0
        p_neg = _signbit(a) != _signbit(b)
        if math.isinf(c) and _signbit(c) != p_neg:
            return NAN                                   # Inf - Inf
        return -math.inf if p_neg else math.inf
    if math.isinf(c):
        return c
    prod = Fraction(a) * Fraction(b)
    exact = prod + Fraction(c)
    if exact == 0:
        if prod == 0 and c == 0:
            p_neg = _signbit(a) != _signbit(b)
            return -0.0 if (p_neg and _signbit(c)) else 0.0
        return 0.0                                       # cancellation of nonzero terms
    return _finish(exact, flush)


def add(x: float, y: float, flush: bool = True) -> float:
    """round(x + y) (IEEE addition, then FTZ)."""
    if math.isnan(x) or math.isnan(y):
        return NAN
    if math.isinf(x) or math.isinf(y):
        if math.isinf(x) and math.isinf(y) and _signbit(x) != _signbit(y):
            return NAN
        return x if math.isinf(x) else y
    exact = Fraction(x) + Fraction(y)
    if exact == 0:
        if x == 0 and y == 0:
            return -0.0 if (_signbit(x) and _signbit(y)) else 0.0
        return 0.0
    return _finish(exact, flush)


def final_bits(acc: float, scale: float) -> int:
    """FP32 bits of acc * scale (an IEEE FP32 multiply, gradual underflow), NaN canonical."""
    if math.isnan(acc):
        return 0x7FC00000
    if math.isinf(acc) or acc == 0:
        v = acc * scale
    else:
        exact = Fraction(acc) * Fraction(scale)
        r = round_nearest_even(exact, 24, min_exp=-126)
        v = math.copysign(math.inf, exact) if abs(r) >= TWO_128 else float(r)
        if v == 0:
            v = math.copysign(0.0, exact)
    return int(np.array([v], np.float32).view(np.uint32)[0])


def _values(codes: np.ndarray, flush: bool) -> list:
    return [[bf16_value(c, daz=flush) for c in row] for row in np.asarray(codes).tolist()]


def amx_order(a_codes: np.ndarray, b_codes: np.ndarray, scale: float = 1.0,
              flush: bool = True) -> np.ndarray:
    """C = A @ B (BF16 codes, (m, k) and (k, n)) in the amx order, as FP32 bits (uint32).

    Per output: k in blocks of 32 elements from k = 0, the last block padded with zeros
    (A and B both +0); C = +0; per block E = +0, O = +0, for q = 0..15 E = fma(A[2q],
    B[2q], E) and O = fma(A[2q+1], B[2q+1], O); T = E + O; C = C + T. Then C * scale."""
    A, B = _values(a_codes, flush), _values(b_codes, flush)
    m, k = np.shape(a_codes)
    n = np.shape(b_codes)[1]
    kpad = -(-k // 32) * 32
    out = np.zeros((m, n), np.uint32)
    for i in range(m):
        row = A[i] + [0.0] * (kpad - k)
        for j in range(n):
            col = [B[t][j] for t in range(k)] + [0.0] * (kpad - k)
            c = 0.0
            for k0 in range(0, kpad, 32):
                e = 0.0
                o = 0.0
                for q in range(16):
                    e = fma(row[k0 + 2 * q], col[k0 + 2 * q], e, flush)
                    o = fma(row[k0 + 2 * q + 1], col[k0 + 2 * q + 1], o, flush)
                t = add(e, o, flush)
                c = add(c, t, flush)
            out[i, j] = final_bits(c, scale)
    return out


def vdpbf16ps_order(a_codes: np.ndarray, b_codes: np.ndarray, scale: float = 1.0,
                    flush: bool = True) -> np.ndarray:
    """C = A @ B in the vdpbf16ps order, as FP32 bits: k padded to even length with a
    zero, acc = +0, per pair p: acc = fma(A[2p+1], B[2p+1], acc), then fma(A[2p], B[2p],
    acc). Then acc * scale."""
    A, B = _values(a_codes, flush), _values(b_codes, flush)
    m, k = np.shape(a_codes)
    n = np.shape(b_codes)[1]
    kpad = k + (k % 2)
    out = np.zeros((m, n), np.uint32)
    for i in range(m):
        row = A[i] + [0.0] * (kpad - k)
        for j in range(n):
            col = [B[t][j] for t in range(k)] + [0.0] * (kpad - k)
            acc = 0.0
            for p in range(kpad // 2):
                acc = fma(row[2 * p + 1], col[2 * p + 1], acc, flush)
                acc = fma(row[2 * p], col[2 * p], acc, flush)
            out[i, j] = final_bits(acc, scale)
    return out


ORDERS = {"amx": amx_order, "vdpbf16ps": vdpbf16ps_order}
