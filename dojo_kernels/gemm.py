"""D1-style GEMM: BF16 / CFloat8 inputs, FP32 accumulation (SPEC section 5), and the D1
cost model of the same product (SPEC section 6, our own dataflow).

Numerics of :func:`gemm` (every ISA tier, every thread count gives the same bits)
---------------------------------------------------------------------------------
Products are exact and accumulate in FP32 with RNE in one of two fixed, documented orders,
chosen with ``order=`` (docs/gemm.md). In both, every operation (a fused multiply-add, or an
addition) is computed exactly and rounded once to FP32 (round to nearest even, unbounded
exponent); ``F`` flushes a result whose magnitude after that rounding is below ``2**-126``
to a zero with the sign of the exact result (FTZ, tininess after rounding); subnormal BF16
inputs are read as zeros of their sign (DAZ); an exact zero sum is +0 unless both addends
are -0.

``order="amx"`` (the default): what Intel AMX ``TDPBF16PS`` computes. ``k`` is taken in
blocks of 32 elements (16 pairs) from ``k = 0``, the last block padded with zeros (A and B
both +0: a padded step turns a -0 partial sum into +0)::

    C = +0
    for k0 in range(0, K, 32):                   # one block
        E = +0; O = +0
        for q in range(16):
            E = F(fma(A[i, k0+2q],   B[k0+2q, j],   E))   # even elements
            O = F(fma(A[i, k0+2q+1], B[k0+2q+1, j], O))   # odd elements
        T = F(E + O)
        C = F(C + T)
    C[i, j] = C * 2**-(sa + sb)                  # exact power of two; NaN -> 0x7FC00000

``order="vdpbf16ps"``: one chain of VDPBF16PS instructions along ``k`` (the order of
dojo_kernels 0.1). ``k`` is padded to even length with a zero, the pairs ``(2p, 2p+1)`` are
taken in increasing ``p`` and, within a pair, the **odd** element first::

    acc = +0
    for p in range(ceil(K / 2)):
        acc = F(fma(A[i, 2p+1], B[2p+1, j], acc))
        acc = F(fma(A[i, 2p],   B[2p, j],   acc))
    C[i, j] = acc * 2**-(sa + sb)                # exact power of two; NaN -> 0x7FC00000

The amx order is the default: its chains are at most 16 steps long (E and O) before
they are added, so it is the more accurate of the two, and it is the native order of
the CPUs with AMX (the most common server CPUs). Its bits differ from the vdpbf16ps
order's (CHANGELOG.md).

The scaling below keeps every input normal and every product and partial sum at least
``2**-126``, so nothing is flushed (subnormal BF16 inputs included) unless the operands'
exponent ranges together span more than 253 binades -- in either order.

Scaling (SPEC section 5): each operand is multiplied by an exact power of two (a CFloat8
operand through its decode table, as a whole format) and the result by the inverse. The
exponents are chosen per call from the exponent ranges of both operands so that every
scaled value is a normal BF16, every scaled product is a multiple of ``2**-126`` (so no
partial sum is ever flushed) and ``K`` times the largest product stays below ``2**127``;
then the result is within ``gamma(K) * (|A| @ |B|)``, ``gamma(K) = K u / (1 - K u)``,
``u = 2**-24`` (barring a final result below FP32's normal range, rounded by the last
multiply). None of this depends on the order in which the products are added: a sum of
multiples of ``2**-126`` is one, and stays one when rounded to 24 bits, whichever
products it holds; every partial sum (E, O, T, C or the chain's acc) is a rounded sum of
a subset of the products, so at most ``K`` times the largest in magnitude, up to the
rounding error; and any summation tree of ``K`` terms gives at most ``K - 1`` roundings to
each. See docs/gemm.md for when that is possible.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np

from . import _config, _gemm
from .d1 import D1Chip, TrainingTile
from .formats import BF16, FP32, Format
from .numerics import dequantize, quantize

__all__ = ["gemm", "plan_gemm", "GemmPlan", "ORDERS", "kernel_names"]

#: The accumulation orders of :func:`gemm` (``order=``); the first is the default.
ORDERS = ("amx", "vdpbf16ps")
_ORDER_CODE = {"amx": _gemm.ORDER_AMX, "vdpbf16ps": _gemm.ORDER_VDPBF16PS}


def _check_order(order: Any) -> int:
    """The C code of an ``order=`` value (a ValueError/TypeError naming ``order`` if bad)."""
    if not isinstance(order, str):
        raise TypeError(f"order: expected a str, one of {', '.join(map(repr, ORDERS))}, "
                        f"got {type(order).__name__}")
    if order not in _ORDER_CODE:
        raise ValueError(f"order: expected one of {', '.join(map(repr, ORDERS))}, got {order!r}")
    return _ORDER_CODE[order]


# The avx512bf16 tier has two micro-kernels with identical bits: VDPBF16PS (6 x 64) and
# FP32 FMA on widened values under FTZ|DAZ (14 x 32). Which is faster depends on the CPU
# (measured on a Sapphire-Rapids-class Xeon: VDPBF16PS issues once per 2 cycles, 512-bit
# FMA twice per cycle, so FMA has twice the peak). The first call on that tier times both
# instructions for a few milliseconds and keeps the faster; DOJO_KERNELS_GEMM_KERNEL=fma or
# =vdpbf16ps forces one.
KERNELS = ("fma", "vdpbf16ps")
_kernel: Optional[int] = None


def _measure_kernel() -> int:
    import time

    forced = os.environ.get("DOJO_KERNELS_GEMM_KERNEL", "").strip().lower()
    if forced:
        if forced not in KERNELS:
            raise ValueError(f"DOJO_KERNELS_GEMM_KERNEL={forced!r}: expected one of {KERNELS}")
        return KERNELS.index(forced)
    rate = {}
    for name, probe in (("fma", "fma_zmm"), ("vdpbf16ps", "vdpbf16ps_zmm")):
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            flops = _gemm.probe(probe, 200_000)
            best = max(best, flops / max(time.perf_counter() - t, 1e-9))
        rate[name] = best
    # an FMA does 2 FLOP (one MAC); VDPBF16PS 64 (32 MACs): the probes count both as FLOP
    return 0 if rate["fma"] >= rate["vdpbf16ps"] else 1


def kernel_name() -> str:
    """The avx512bf16 micro-kernel of the vdpbf16ps order: ``"fma"`` or ``"vdpbf16ps"``
    (same bits; the amx order has one kernel per tier, :func:`kernel_names`)."""
    return KERNELS[_kernel_index()]


def _kernel_index() -> int:
    global _kernel
    if _kernel is None:
        from . import _cpu

        _kernel = _measure_kernel() if _cpu.best_isa() >= 2 else 0
    return _kernel


# The micro-kernel of each (tier, order); ("avx512bf16", "vdpbf16ps") depends on the
# measured choice above (kernel_name()).
_KERNEL_NAMES = {
    ("generic", "amx"): "generic: portable scalar C, 6x16, E/O chains",
    ("generic", "vdpbf16ps"): "generic: portable scalar C, 6x16",
    ("avx2", "amx"): "avx2: FP32 FMA ymm, 3x16, E/O accumulators",
    ("avx2", "vdpbf16ps"): "avx2: FP32 FMA ymm, 6x16",
    ("avx512bf16", "amx"): "avx512bf16: FP32 FMA zmm, 7x32, E/O accumulators",
    ("avx512bf16", "vdpbf16ps", "fma"): "avx512bf16: FP32 FMA zmm, 14x32",
    ("avx512bf16", "vdpbf16ps", "vdpbf16ps"): "avx512bf16: VDPBF16PS zmm, 6x64",
}


def kernel_names() -> Dict[str, str]:
    """Which GEMM micro-kernel each accumulation order runs on the current ISA tier:
    ``{"amx": "...", "vdpbf16ps": "..."}`` (for ``show_config()`` and benchmarks)."""
    tier = _config.get_isa()
    out: Dict[str, str] = {}
    for order in ORDERS:
        key: Tuple[str, ...] = (tier, order)
        if key not in _KERNEL_NAMES:
            key = (tier, order, kernel_name())
        out[order] = _KERNEL_NAMES.get(key, f"{tier} ({order} order)")
    return out


class use_kernel:
    """Context manager forcing the avx512bf16 micro-kernel (tests and benchmarks)."""

    def __init__(self, name: str) -> None:
        if name not in KERNELS:
            raise ValueError(f"name: expected one of {KERNELS}, got {name!r}")
        self._idx = KERNELS.index(name)

    def __enter__(self) -> "use_kernel":
        global _kernel
        self._saved = _kernel_index()
        _kernel = self._idx
        return self

    def __exit__(self, *exc: object) -> None:
        global _kernel
        _kernel = self._saved
_DUMMY_TABLE = np.zeros(256, np.uint16)


def _check_input_format(fmt: Any, name: str) -> Format:
    if not isinstance(fmt, Format):
        raise TypeError(f"{name}: expected a dojo_kernels.Format (BF16, cfloat8_143(bias) or "
                        f"cfloat8_152(bias)), got {type(fmt).__name__}")
    if fmt.name not in ("bf16", "cfloat8_143", "cfloat8_152"):
        raise ValueError(f"{name}: GEMM inputs are BF16 or CFloat8 (SPEC section 5), got {fmt!r}")
    return fmt


_BIG = 1 << 20  # "no constraint" for an exponent bound


@dataclass(frozen=True)
class _Range:
    """What the scaling needs to know of one operand (exponents are floor(log2(.)))."""

    lo: int      # smallest nonzero finite magnitude
    hi: int      # largest finite magnitude
    quantum: int  # every finite value is a multiple of 2**quantum
    empty: bool  # no nonzero finite value


def _format_range(fmt: Format) -> _Range:
    """A CFloat8 operand is scaled through its 256-entry table: the whole format's range."""
    sub = fmt.min_subnormal > 0
    lo = math.frexp(fmt.min_subnormal if sub else fmt.min_normal)[1] - 1
    hi = math.frexp(fmt.max)[1] - 1
    return _Range(lo, hi, lo if sub else lo - fmt.mantissa_bits, False)


def _bf16_range(codes: np.ndarray) -> _Range:
    """The exponent range of the nonzero finite values of BF16 codes (one pass)."""
    if codes.size == 0:
        return _Range(0, 0, 0, True)
    mag = np.bitwise_and(codes, np.uint16(0x7FFF), dtype=np.uint16)
    big = int(mag.max())
    if big >= 0x7F80:  # Inf or NaN present (rare): leave them out
        big = int(np.where(mag < 0x7F80, mag, 0).max())
    if big == 0:
        return _Range(0, 0, 0, True)
    np.subtract(mag, np.uint16(1), out=mag)   # 0 wraps to 0xFFFF: the min skips zeros
    small = int(mag.min()) + 1

    def exp_of(m: int) -> int:  # floor(log2) of the BF16 magnitude with bits m
        e = m >> 7
        return e - 127 if e else (m.bit_length() - 1) - 133

    lo, hi = exp_of(small), exp_of(big)
    return _Range(lo, hi, max(lo, -126) - 7, False)


def _scale_exps(ra: _Range, rb: _Range, a_is_bf16: bool, b_is_bf16: bool,
                k: int) -> Tuple[int, int]:
    """Exact power-of-two exponents (sa, sb) for the operands (SPEC section 5).

    Every scaled operand value must be a normal BF16 (the kernel reads subnormal BF16 as
    zero); with S = sa + sb, every scaled product must be a multiple of 2**-126 (then every
    partial sum is 0 or at least 2**-126 in magnitude: nothing is ever flushed), K times
    the largest scaled product must stay below 2**127 (no overflow), and 2**-S must be a
    float32 (the final multiply). When these cannot all hold (operands spanning more than
    about 250 binades together), the scaling never makes a result overflow that an FP32
    product would not (SPEC section 5 holds "barring overflow"), keeps every operand value
    normal when a split allows it, and otherwise balances the two operands' losses. A BF16 operand keeps s = 0 when possible (a nonzero s costs a scaled copy,
    :func:`_rescale_bf16`); one whose own values span more than 253 binades keeps its
    largest values and loses its smallest.
    """
    def own(r: _Range, is_bf16: bool) -> Tuple[int, int]:
        if r.empty:
            return (-_BIG, _BIG) if not is_bf16 else (0, 0)
        lo, hi = -126 - r.lo, 127 - r.hi
        return (lo, hi) if lo <= hi else (hi, hi)

    lo_a, hi_a = own(ra, a_is_bf16)
    lo_b, hi_b = own(rb, b_is_bf16)
    if ra.empty or rb.empty:
        s_lo, s_hi = -_BIG, _BIG
    else:
        s_lo = -126 - (ra.quantum + rb.quantum)
        s_hi = 127 - (ra.hi + rb.hi + 2) - max(k, 1).bit_length()
    L = max(s_lo, lo_a + lo_b, -127)
    H = min(s_hi, hi_a + hi_b, 149)

    def split(S: int) -> Optional[Tuple[int, int]]:
        cands = []
        if a_is_bf16:
            cands.append(0)
        if b_is_bf16:
            cands.append(S)
        cands.append(S // 2)
        lo, hi = max(lo_a, S - hi_b), min(hi_a, S - lo_b)
        if lo > hi:
            return None
        for sa in cands:
            if lo <= sa <= hi:
                return sa, S - sa
        sa = min(max(cands[-1], lo), hi)
        return sa, S - sa

    if L > H:
        # The products span more than FP32 holds: no scaling avoids both overflow and
        # flushing. Scale down only as far as the products need when FP32 itself could hold
        # them (s_hi >= 0); when it could not (s_hi < 0) keep S = 0, so results overflow
        # exactly where an FP32 product would (SPEC section 5: "barring overflow"). Then keep
        # every operand value normal if a split allows it, else balance what each operand
        # loses against the other's largest values.
        S = max(min(max(s_hi, 0), hi_a + hi_b, 149), -127)
        got = split(S)
        if got is not None:
            return got
        sa = (S + (rb.hi if not rb.empty else 0) - (ra.hi if not ra.empty else 0)) // 2
        if not a_is_bf16:
            sa = min(max(sa, lo_a), hi_a)  # a CFloat8 table must stay exact
        elif not b_is_bf16:
            sa = S - min(max(S - sa, lo_b), hi_b)
        sa = min(max(sa, S - hi_b), hi_a)
        return sa, S - sa
    S = min(max(0, L), H)
    got = split(S)
    if got is None:  # pragma: no cover - the per-operand ranges are always compatible
        got = (min(max(0, lo_a), hi_a), min(max(0, lo_b), hi_b))
    return got


def _rescale_bf16(codes: np.ndarray, s: int) -> np.ndarray:
    """BF16 codes of value * 2**s (exact: _scale_exps keeps the results normal BF16;
    subnormal inputs scaled up become normal). Inf and NaN stay Inf and NaN."""
    f = (codes.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(all="ignore"):
        f = np.ldexp(f, s).astype(np.float32)
    return (f.view(np.uint32) >> 16).astype(np.uint16)


@functools.lru_cache(maxsize=64)
def _table(fmt: Format, s: int) -> np.ndarray:
    """256-entry table: CFloat8 code -> BF16 bits of (value * 2**s), exact."""
    vals = dequantize(np.arange(256, dtype=np.uint8), fmt).astype(np.float64) * 2.0 ** s
    v32 = vals.astype(np.float32)
    if not np.array_equal(v32.astype(np.float64), vals):  # pragma: no cover - by construction
        raise AssertionError("scaled CFloat8 table is not exact in float32")
    bits = v32.view(np.uint32)
    if np.any(bits & 0xFFFF):  # pragma: no cover - by construction
        raise AssertionError("scaled CFloat8 table is not exact in BF16")
    t = (bits >> 16).astype(np.uint16)
    t.setflags(write=False)
    return t


def _aligned(arr: np.ndarray) -> np.ndarray:
    """arr, copied if its data pointer or a stride (of an axis longer than 1) is not a
    multiple of the item size: the C driver addresses elements as pointer +
    (stride // itemsize) * index, and the glue refuses such strides."""
    isz = arr.dtype.itemsize
    ok = arr.flags.aligned   # NumPy: the pointer and the strides (of axes longer than 1)
    if ok:
        for st, ext in zip(arr.strides, arr.shape):
            if ext > 1 and st % isz:
                ok = False
    return arr if ok else np.array(arr, order="C")


def _operand(x: Any, fmt: Format, name: str) -> np.ndarray:
    """x as codes of fmt (uint16 / uint8 array of any strides), 2-D or 3-D."""
    arr = np.asarray(x)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2-D (rows, cols) or 3-D (batch, rows, cols) array, "
                         f"got {arr.ndim}-D with shape {arr.shape}")
    want = np.dtype(fmt.storage_dtype)
    dt = arr.dtype
    if dt.name == "bfloat16" and dt.itemsize == 2:
        if fmt.name == "bf16":
            return _aligned(arr.view(np.uint16))
        return quantize(arr, fmt)
    if dt.kind == "f":
        if dt not in (np.float32, np.float64):
            arr = arr.astype(np.float32)
        return quantize(arr, fmt)
    if dt.kind == "u" or dt.kind == "i" or dt.kind == "b":
        if dt.kind != "u" or dt.itemsize != want.itemsize:
            raise TypeError(f"{name}: codes for {fmt!r} must be {want}, got dtype {dt} "
                            f"(float arrays are rounded into the format)")
        if not dt.isnative:
            arr = arr.astype(dt.newbyteorder("="))
        return _aligned(arr.view(want))
    raise TypeError(f"{name}: expected a float array or {want} codes of {fmt!r}, got dtype {dt}")


@overload
def gemm(a: Any, b: Any, *, a_format: Format = ..., b_format: Optional[Format] = ...,
         c: Any = ..., beta: float = ..., out: Optional[np.ndarray] = ...,
         return_plan: Literal[False] = ..., machine: Any = ..., order: str = ...) -> np.ndarray: ...
@overload
def gemm(a: Any, b: Any, *, a_format: Format = ..., b_format: Optional[Format] = ...,
         c: Any = ..., beta: float = ..., out: Optional[np.ndarray] = ...,
         return_plan: Literal[True], machine: Any = ..., order: str = ...
         ) -> Tuple[np.ndarray, "GemmPlan"]: ...
@overload
def gemm(a: Any, b: Any, *, a_format: Format = ..., b_format: Optional[Format] = ...,
         c: Any = ..., beta: float = ..., out: Optional[np.ndarray] = ...,
         return_plan: bool = ..., machine: Any = ..., order: str = ...
         ) -> Union[np.ndarray, Tuple[np.ndarray, "GemmPlan"]]: ...
def gemm(a: Any, b: Any, *, a_format: Format = BF16, b_format: Optional[Format] = None,
         c: Any = None, beta: Optional[float] = None, out: Optional[np.ndarray] = None,
         return_plan: bool = False, machine: Any = None, order: str = "amx"
         ) -> Union[np.ndarray, Tuple[np.ndarray, "GemmPlan"]]:
    """D1-style matrix product ``a @ b`` (+ ``beta * c``) with FP32 accumulation.

    Parameters
    ----------
    a : (m, k) or (batch, m, k). Float arrays (float16/32/64, ml_dtypes.bfloat16) are
        rounded to nearest-even into ``a_format`` first (``quantize``); unsigned-integer
        arrays are codes of ``a_format`` (uint16 for BF16, uint8 for CFloat8). Any strides,
        C or Fortran order, transposed views.
    b : (k, n) or (batch, k, n), likewise in ``b_format``. A 2-D operand is shared by every
        batch item of a 3-D one.
    a_format, b_format : BF16, ``cfloat8_143(bias)`` or ``cfloat8_152(bias)``; A and B may
        differ in format and bias. ``b_format`` defaults to ``a_format``.
    c, beta : optional addend, broadcastable to the result, converted to float32. The result
        is ``P + float32(beta) * c`` in float32 (two roundings) where ``P`` is the product.
        ``beta`` defaults to 1.0 when ``c`` is given (``gemm(a, b, c=c)`` is ``a @ b + c``,
        as torch.addmm) and to 0 otherwise. An explicit ``beta == 0`` follows BLAS: ``c``
        is never read (it may hold NaN).
    out : optional float32 array of the result's shape to write into (returned).
    return_plan : also return :func:`plan_gemm`'s plan of one (m, n, k) product on
        ``machine`` (a batch runs its products one after the other: multiply by batch).
        An empty product (m, n or k == 0, or an empty batch) has the zero plan: no nodes,
        no steps, every byte count and time 0, ``bound == "empty"``.
    machine : a :class:`D1Chip` (default) or :class:`TrainingTile`, for the plan.
    order : the accumulation order of the FP32 sums, ``"amx"`` (default) or
        ``"vdpbf16ps"`` (see the module docstring and docs/gemm.md). ``"amx"``: what Intel
        AMX TDPBF16PS computes -- k in blocks of 32 (the last padded with zeros), per
        block an FP32 FMA chain over the even and one over the odd elements, added, then
        added to C; the more accurate order, and the default (a change from 0.1:
        CHANGELOG.md).
        ``"vdpbf16ps"``: one chain of VDPBF16PS steps along k, odd element of each pair
        first (the only order, and the bits, of 0.1). Both are exact emulations, not
        approximations: each gives identical bits on every tier and thread count, and
        both keep the SPEC section 5 scaling guarantees.

    Returns the float32 result (m, n) or (batch, m, n), or ``(result, plan)``.

    Numerics: see the module docstring (docs/gemm.md): the accumulation order ``order``,
    identical bits on every tier and thread count.
    """
    a_format = _check_input_format(a_format, "a_format")
    b_format = a_format if b_format is None else _check_input_format(b_format, "b_format")
    order_code = _check_order(order)
    ca = _operand(a, a_format, "a")
    cb = _operand(b, b_format, "b")
    if ca.shape[-1] != cb.shape[-2]:
        raise ValueError(f"a, b: inner dimensions differ: a has k = {ca.shape[-1]} (shape "
                         f"{ca.shape}), b has k = {cb.shape[-2]} (shape {cb.shape})")
    batched = ca.ndim == 3 or cb.ndim == 3
    if ca.ndim == 3 and cb.ndim == 3 and ca.shape[0] != cb.shape[0]:
        raise ValueError(f"a, b: batch sizes differ: {ca.shape[0]} and {cb.shape[0]}")
    nb = ca.shape[0] if ca.ndim == 3 else (cb.shape[0] if cb.ndim == 3 else 1)
    m, k, n = ca.shape[-2], ca.shape[-1], cb.shape[-1]
    a3 = ca if ca.ndim == 3 else np.broadcast_to(ca, (nb, m, k))
    b3 = cb if cb.ndim == 3 else np.broadcast_to(cb, (nb, k, n))
    shape = (nb, m, n) if batched else (m, n)

    if beta is None:
        beta = 0.0 if c is None else 1.0
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)):
        raise TypeError(f"beta: expected a real number, got {type(beta).__name__}")
    beta32 = np.float32(beta)
    use_c = beta32 != 0
    if use_c:
        if c is None:
            raise ValueError(f"c: beta = {beta} needs an addend c")
        c32 = np.asarray(c)
        if c32.dtype.kind not in "fiu":
            raise TypeError(f"c: expected a real array, got dtype {c32.dtype}")
        try:
            c32 = np.broadcast_to(c32, shape)
        except ValueError:
            raise ValueError(f"c: shape {c32.shape} does not broadcast to the result {shape}") from None

    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
        if out.dtype != np.float32:
            raise TypeError(f"out: expected dtype float32, got {out.dtype}")
        if out.shape != shape:
            raise ValueError(f"out: expected shape {shape}, got {out.shape}")
        if not out.flags.writeable:
            raise ValueError("out: array is read-only")

    if machine is not None and not isinstance(machine, (D1Chip, TrainingTile)):
        raise TypeError(f"machine: expected a D1Chip or a TrainingTile, got {type(machine).__name__}")
    plan = None
    if return_plan:
        if m == 0 or n == 0 or k == 0 or nb == 0:
            plan = _zero_plan(m, n, k, a_format, b_format, machine)
        else:
            plan = plan_gemm(m, n, k, a_format=a_format, b_format=b_format, machine=machine)

    a16, b16 = a_format.nbits == 16, b_format.nbits == 16
    ra = _bf16_range(ca) if a16 else _format_range(a_format)
    rb = _bf16_range(cb) if b16 else _format_range(b_format)
    sa, sb = _scale_exps(ra, rb, a16, b16, k)
    if a16 and sa:
        ca = _rescale_bf16(ca, sa)
        a3 = ca if ca.ndim == 3 else np.broadcast_to(ca, (nb, m, k))
    if b16 and sb:
        cb = _rescale_bf16(cb, sb)
        b3 = cb if cb.ndim == 3 else np.broadcast_to(cb, (nb, k, n))
    ta = _table(a_format, sa) if a_format.nbits == 8 else _DUMMY_TABLE
    tb = _table(b_format, sb) if b_format.nbits == 8 else _DUMMY_TABLE
    scale = float(np.float32(2.0 ** -(sa + sb)))

    # Where the kernel writes: `out` itself when it is C-contiguous (the glue takes a
    # float[:, :, ::1] view), aligned, and overlaps nothing the computation still reads.
    dst, direct = None, False
    if out is not None:
        o3 = out if batched else out[None]
        if (o3.dtype.isnative and o3.flags.c_contiguous and o3.flags.aligned
                and not np.may_share_memory(o3, ca) and not np.may_share_memory(o3, cb)
                and not (use_c and np.may_share_memory(o3, c32))):
            dst, direct = o3, True
    if dst is None:
        dst = np.empty((nb, m, n), np.float32)

    isa = _config.isa()
    # the avx512bf16 kernel choice (and its first-call probe) only concerns the vdpbf16ps order
    kern = _kernel_index() if isa >= 2 and order_code == _gemm.ORDER_VDPBF16PS else 0
    rc = _gemm.gemm(a3, b3, ta, tb, scale, dst, isa, kern, _config.threads(), order_code)
    if rc == 1:
        raise MemoryError("gemm: could not allocate the packing buffers")
    if rc != 0:  # pragma: no cover - arguments are validated above
        raise RuntimeError(f"gemm: C driver returned status {rc}")

    if use_c:
        with np.errstate(all="ignore"):
            term = (beta32 * c32.astype(np.float32, copy=False)).astype(np.float32, copy=False)
            np.add(dst, term if batched else term[None], out=dst)
    res = dst if batched else dst[0]
    if out is not None:
        if not direct:
            out[...] = res
        res = out
    if plan is not None:
        return res, plan
    return res


# ---------------------------------------------------------------------------------------
# The D1 cost model
# ---------------------------------------------------------------------------------------

_TILE_MN = np.array([8, 16, 32, 48, 64, 96, 128, 192, 256])
_TILE_K = np.array([16, 32, 64, 128, 256, 512])
_TILE_MN_COARSE = np.array([8, 16, 32, 64, 128, 256])
_TILE_K_COARSE = np.array([32, 64, 128, 256, 512])


@dataclass(frozen=True)
class GemmPlan:
    """How a D1 chip (or training tile) runs one (m, n, k) product, and what it costs.

    See :func:`plan_gemm` for the dataflow and the overlap model. Byte counts are totals
    over the whole product and every node; times in seconds.
    """

    m: int
    n: int
    k: int
    a_format: Format
    b_format: Format
    out_format: Format
    machine: Any
    node_grid: Tuple[int, int]        # (rows, cols) of nodes used
    tile: Tuple[int, int, int]        # (mt, nt, kt) per node step
    sram_bytes_per_node: int
    flops: float                      # 2 m n k (useful work)
    padded_flops: float               # work done at 8x8x4 granularity, padding included
    steps: int                        # node steps (every node does the same number)
    cycles: float
    seconds: float
    utilization: float
    bound: str                        # "compute", "sram", "noc", "offchip" ("empty": m n k = 0)
    offchip_bytes: float
    noc_bytes: float
    sram_read_bytes: float
    sram_write_bytes: float
    compute_seconds: float
    sram_seconds: float
    noc_seconds: float
    offchip_seconds: float
    fill_seconds: float


def _zero_plan(m: int, n: int, k: int, a_format: Format, b_format: Format,
               machine: Any) -> GemmPlan:
    """The plan of an empty product: nothing to move or multiply."""
    return GemmPlan(
        m=m, n=n, k=k, a_format=a_format, b_format=b_format, out_format=FP32,
        machine=D1Chip() if machine is None else machine, node_grid=(0, 0), tile=(0, 0, 0),
        sram_bytes_per_node=0, flops=0.0, padded_flops=0.0, steps=0, cycles=0.0, seconds=0.0,
        utilization=0.0, bound="empty", offchip_bytes=0.0, noc_bytes=0.0, sram_read_bytes=0.0,
        sram_write_bytes=0.0, compute_seconds=0.0, sram_seconds=0.0, noc_seconds=0.0,
        offchip_seconds=0.0, fill_seconds=0.0)


def _bytes_per(fmt: Format) -> float:
    return fmt.nbits / 8


def _pick(top: int) -> List[int]:
    return sorted({v for v in (1, 2, 4, top // 2, top - 1, top) if 1 <= v <= top})


def _grids(machine: Union[D1Chip, TrainingTile]
           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate node grids: rows, cols, chip rows, chip cols spanned."""
    rs: Sequence[int]
    cs: Sequence[int]
    crs: Sequence[int]
    ccs: Sequence[int]
    if isinstance(machine, D1Chip):
        chip, crs, ccs = machine, [1], [1]
        rs, cs = range(1, chip.grid[0] + 1), range(1, chip.grid[1] + 1)
    else:
        chip = machine.chip
        crs, ccs = range(1, machine.chips[0] + 1), range(1, machine.chips[1] + 1)
        rs, cs = _pick(chip.grid[0]), _pick(chip.grid[1])
    out = [(r, c, cr, cc) for r in rs for c in cs if r * c <= chip.active_nodes
           for cr in crs for cc in ccs]
    arr = np.array(out, dtype=np.int64)
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]


@functools.lru_cache(maxsize=8)
def _candidates(machine: Union[D1Chip, TrainingTile], ab: float, bb: float, ob: float
                ) -> Optional[Tuple[np.ndarray, ...]]:
    """Every (grid, tile) pair the planner considers, as flat float arrays (read-only)."""
    node = (machine if isinstance(machine, D1Chip) else machine.chip).node
    r, c, cr, cc = _grids(machine)
    if isinstance(machine, D1Chip):
        tmn, tk = _TILE_MN, _TILE_K
    else:  # a coarser tile set: the tile has ~25x more grid shapes
        tmn, tk = _TILE_MN_COARSE, _TILE_K_COARSE
    mt, nt, kt = np.meshgrid(tmn, tmn, tk, indexing="ij")
    mt, nt, kt = mt.ravel(), nt.ravel(), kt.ravel()
    foot = 2 * mt * kt * ab + 2 * kt * nt * bb + 4 * mt * nt + ob * mt * nt
    fits = foot <= node.sram_bytes
    if not fits.any():
        return None
    mt, nt, kt, foot = mt[fits], nt[fits], kt[fits], foot[fits]
    G, T = len(r), len(mt)
    r, c, cr, cc = (np.repeat(x, T).astype(np.float64) for x in (r, c, cr, cc))
    mt, nt, kt, foot = (np.tile(x, G).astype(np.float64) for x in (mt, nt, kt, foot))
    out = (r, c, cr, cc, r * cr, c * cc, mt, nt, kt, foot)
    for x in out:
        x.setflags(write=False)
    return out


def plan_gemm(m: int, n: int, k: int, *, a_format: Format, b_format: Format,
              machine: Any = None, out_format: Format = FP32) -> GemmPlan:
    """Plan C (m x n) = A (m x k) @ B (k x n) on a D1 chip or a training tile; return its cost.

    Dataflow (our design on public figures; Tesla's compiler is not public): SUMMA on a
    ``gr x gc`` rectangle of nodes. C is cut into super-tiles of ``(gr*mt) x (gc*nt)``; node
    (r, c) owns one ``mt x nt`` FP32 accumulator of it, resident in its SRAM for the whole k
    loop (k is never split across nodes, so the sum order is fixed). Each of the
    ``ceil(k/kt)`` steps brings an A panel ``mt x kt`` into every node row from the west
    edge (off-chip), forwarded node to node along the row, and a B panel ``kt x nt`` down
    every column from the north edge; the node multiplies them on its matrix unit in
    8x8x4 blocks, one block per cycle (``ceil(mt/8) ceil(nt/8) ceil(kt/4)`` cycles: padding
    waste counts). A finished C tile is drained off-chip in ``out_format`` over the east and
    south edges. Each edge carries ``offchip_bw_per_edge`` (a tile: ``offtile_bw_per_edge``)
    per direction: A gets one edge, B one, C the other ``edges - 2`` (with fewer than three
    edges: the input edges' outbound direction). Every step and
    super-tile is costed at full padded size (edge tiles are padded).

    Per node SRAM (double-buffered A and B panels, the FP32 accumulator, an output staging
    buffer): ``2 mt kt a + 2 kt nt b + 4 mt nt + o mt nt`` bytes (``a, b, o`` bytes per
    element), never above the node's SRAM. SRAM traffic per step: the matrix unit reads
    ``mt nt kt (a + b) / 8`` bytes (A and B re-read per 8-wide block, C held in the unit
    across the step), reads and writes the C tile once (4 mt nt each), writes the
    incoming panels and reads them again to forward them.

    Overlap model: with double buffering, transfers of step s+1 overlap the compute of step
    s, so the time is the largest of the per-resource totals (compute, SRAM = max(load /
    load_bw, store / store_bw), NoC = busiest link, off-chip = the busiest of the A edge,
    the B edge and the C edges) plus a fill/drain term: the first step's panels (over their
    edges, then NoC and hop latency across ``gr + gc`` hops) and the last C drain. ``bound`` names the largest total. On a
    :class:`TrainingTile` the grid may span ``cr x cc`` chips; a link crossing a chip
    boundary shares the chip-to-chip bandwidth among the rows (columns) crossing it.
    The planner searches grid shapes and tile sizes (a fixed candidate set) for the
    fewest seconds, so a bigger problem is never cheaper.
    """
    for name, v in (("m", m), ("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name}: cannot plan an empty product: expected >= 1, got {v}")
    a_format = _check_input_format(a_format, "a_format")
    b_format = _check_input_format(b_format, "b_format")
    if not isinstance(out_format, Format):
        raise TypeError(f"out_format: expected a Format, got {type(out_format).__name__}")
    if machine is None:
        machine = D1Chip()
    if not isinstance(machine, (D1Chip, TrainingTile)):
        raise TypeError(f"machine: expected a D1Chip or a TrainingTile, got {type(machine).__name__}")
    m, n, k = int(m), int(n), int(k)
    chip = machine if isinstance(machine, D1Chip) else machine.chip
    node = chip.node
    ab, bb, ob = _bytes_per(a_format), _bytes_per(b_format), _bytes_per(out_format)
    bm, bn, bk = node.mac_block

    cand = _candidates(machine, ab, bb, ob)
    if cand is None:
        mt0, nt0, kt0 = _TILE_MN[0], _TILE_MN[0], _TILE_K[0]
        need = 2 * mt0 * kt0 * ab + 2 * kt0 * nt0 * bb + 4 * mt0 * nt0 + ob * mt0 * nt0
        raise ValueError(f"machine: no tile fits the node SRAM of {node.sram_bytes} bytes "
                         f"(even an {mt0}x{nt0}x{kt0} tile needs {int(need)} bytes)")
    r, c, cr, cc, gr, gc, mt, nt, kt, foot = cand
    clock = node.clock_hz
    step_cycles = np.ceil(mt / bm) * np.ceil(nt / bn) * np.ceil(kt / bk)
    sup = np.ceil(m / (gr * mt)) * np.ceil(n / (gc * nt))
    kst = np.ceil(k / kt)
    steps = sup * kst
    t_comp = steps * step_cycles / clock
    # SRAM per node
    rd_step = mt * nt * kt * (ab + bb) / 8 + 4 * mt * nt + (mt * kt * ab + kt * nt * bb)
    wr_step = 4 * mt * nt + (mt * kt * ab + kt * nt * bb)
    rd_node = steps * rd_step + sup * mt * nt * 4          # + reading C out for the drain
    wr_node = steps * wr_step
    t_sram = np.maximum(rd_node / node.sram_load_bw, wr_node / node.sram_store_bw)
    # NoC: busiest horizontal / vertical link
    link = node.noc_link_bw
    if isinstance(machine, TrainingTile):
        eff_h = np.where(cc > 1, np.minimum(link, machine.chip_link_bw / r), link)
        eff_v = np.where(cr > 1, np.minimum(link, machine.chip_link_bw / c), link)
        edge_bw = machine.offtile_bw_per_edge
    else:
        eff_h = eff_v = np.full_like(r, link)
        edge_bw = machine.offchip_bw_per_edge
    edges = machine.edges
    # A enters over the west edge, B over the north edge (one edge each, inbound; with a
    # single edge they share it); C leaves over the other edges (east and south), or over
    # the outbound direction of the input edges when there are only two (or one).
    out_bw = (edges - 2 if edges > 2 else edges) * edge_bw
    h_link = steps * mt * kt * ab * (gc > 1)
    v_link = steps * kt * nt * bb * (gr > 1)
    t_noc = np.maximum(h_link / eff_h, v_link / eff_v)
    noc = steps * (gr * (gc - 1) * mt * kt * ab + gc * (gr - 1) * kt * nt * bb)
    # off-chip
    off_a = steps * gr * mt * kt * ab
    off_b = steps * gc * kt * nt * bb
    off_in = off_a + off_b
    off_out = sup * gr * gc * mt * nt * ob

    def t_in(a_bytes: Any, b_bytes: Any) -> Any:
        if edges >= 2:
            return np.maximum(a_bytes, b_bytes) / edge_bw
        return (a_bytes + b_bytes) / edge_bw

    t_off = np.maximum(t_in(off_a, off_b), off_out / out_bw)
    # fill / drain: the first step's panels (west and north edges, then the NoC and the
    # hops), and the last super-tile's C drain
    fill = (t_in(gr * mt * kt * ab, gc * kt * nt * bb)
            + np.maximum(mt * kt * ab / eff_h, kt * nt * bb / eff_v)
            + (gr + gc) * node.hop_latency_s
            + gr * gc * mt * nt * ob / out_bw)
    totals = np.stack([t_comp, t_sram, t_noc, t_off])
    seconds = totals.max(axis=0) + fill
    best = int(np.argmin(seconds))
    names = ("compute", "sram", "noc", "offchip")
    peak = machine.peak_flops
    flops = 2.0 * m * n * k
    nodes = gr[best] * gc[best]
    sec = float(seconds[best])
    return GemmPlan(
        m=m, n=n, k=k, a_format=a_format, b_format=b_format, out_format=out_format,
        machine=machine,
        node_grid=(int(gr[best]), int(gc[best])),
        tile=(int(mt[best]), int(nt[best]), int(kt[best])),
        sram_bytes_per_node=int(foot[best]),
        flops=flops,
        padded_flops=float(steps[best] * step_cycles[best] * node.matrix_flops_per_cycle * nodes),
        steps=int(steps[best]),
        cycles=sec * clock,
        seconds=sec,
        utilization=flops / (sec * peak),
        bound=names[int(np.argmax(totals[:, best]))],
        offchip_bytes=float(off_in[best] + off_out[best]),
        noc_bytes=float(noc[best]),
        sram_read_bytes=float(rd_node[best] * nodes),
        sram_write_bytes=float(wr_node[best] * nodes),
        compute_seconds=float(t_comp[best]),
        sram_seconds=float(t_sram[best]),
        noc_seconds=float(t_noc[best]),
        offchip_seconds=float(t_off[best]),
        fill_seconds=float(fill[best]),
    )
