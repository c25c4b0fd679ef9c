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

import dataclasses
import functools
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np

from . import _config, _gemm
from . import _plan as _plan_c
from .machine import D1Chip, D1Node, DojoSystem, TrainingTile
from .numerics.formats import BF16, FP32, Format
from ._cformat import ctuple as _numerics_ctuple
from ._cformat import memory_order as _memory_order
from .numerics import dequantize, quantize

__all__ = ["gemm", "plan_gemm", "GemmPlan", "ORDERS", "kernel_names", "feed_bandwidths",
           "clear_plan_cache"]

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
# measured choice above (kernel_name()). The few-rows limits are the driver's (_gemm).
_FEW_AMX = (f"m <= {_gemm.SMALLM_MAX} (B = W.T: {_gemm.SMALLM_BT_MAX}): B read unpacked")
_FEW_VDP = (f"m <= {_gemm.SMALLM_VDP_MAX} (B = W.T: {_gemm.SMALLM_BT_VDP_MAX}): "
            "VDPBF16PS, B read unpacked")
_KERNEL_NAMES = {
    ("generic", "amx"): "generic: portable scalar C, 6x16, E/O chains",
    ("generic", "vdpbf16ps"): "generic: portable scalar C, 6x16",
    ("avx2", "amx"): "avx2: FP32 FMA ymm, 3x16, E/O accumulators",
    ("avx2", "vdpbf16ps"): "avx2: FP32 FMA ymm, 6x16",
    ("avx512bf16", "amx"): "avx512bf16: FP32 FMA zmm, 7x32, E/O accumulators; " + _FEW_AMX,
    ("avx512bf16", "vdpbf16ps", "fma"): "avx512bf16: FP32 FMA zmm, 14x32; " + _FEW_VDP,
    ("avx512bf16", "vdpbf16ps", "vdpbf16ps"): "avx512bf16: VDPBF16PS zmm, 6x64; " + _FEW_VDP,
    ("amx", "amx"): "amx: TDPBF16PS tiles, 32x32 (2x2 tiles of 16x16); "
                    f"m <= {_gemm.SMALLM_AMX_MAX}: FP32 FMA zmm, B read unpacked; B = W.T "
                    f"up to {_gemm.SMALLM_BT_TILE_MAX} (from {_gemm.SMALLM_BT_TILE_MIN} when "
                    "W's rows start on 64-byte lines): W's rows loaded as tiles, unpacked",
    ("amx", "vdpbf16ps", "fma"): "amx: the avx512bf16 FP32 FMA zmm kernel, 14x32; " + _FEW_VDP,
    ("amx", "vdpbf16ps", "vdpbf16ps"): "amx: the avx512bf16 VDPBF16PS zmm kernel, 6x64; "
                                       + _FEW_VDP,
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
def _empty_result(nb: int, m: int, n: int) -> np.ndarray:
    """An uninitialised float32 (nb, m, n) result whose first element is 64-byte aligned
    (NumPy only guarantees 16): a large result whose rows are whole cache lines is then
    written by the AMX kernel with non-temporal stores (gemm_driver.c, DK_UKR_STREAM; above
    the driver's _gemm.STREAM_MIN_BYTES)."""
    size = nb * m * n
    if size * 4 <= _gemm.STREAM_MIN_BYTES:
        return np.empty((nb, m, n), np.float32)
    buf = np.empty(size + 16, np.float32)
    off = (-buf.ctypes.data % 64) // 4
    return buf[off:off + size].reshape(nb, m, n)


# The codes of float operands, rounded for every call, go into buffers taken from here for
# the call and given back after it (_scratch_take, _scratch_give). A large array allocated
# per call is often mapped anew and zeroed page by page on first touch (glibc returns freed
# blocks of megabytes to the system, depending on the process's allocation history): with
# float32 operands a 2048^3 product then spent 29 ms against 20.6 ms into reused buffers (one
# thread, AMX machine, 1,517 page faults a call). Operands of _SCRATCH_MIN to _SCRATCH_MAX
# bytes; the _SCRATCH_KEEP largest buffers given back are kept (the two operands of a call).
# A call that raises drops its buffers (its frame, kept by the traceback, may use them).
_SCRATCH_MIN = 1 << 20
_SCRATCH_MAX = 64 << 20
_SCRATCH_KEEP = 2
_scratch_free: List[np.ndarray] = []
_scratch_lock = threading.Lock()


def _scratch_take(shape: Tuple[int, ...], dtype: Any, held: List[np.ndarray]
                  ) -> Optional[np.ndarray]:
    """An uninitialised, 64-byte aligned C-contiguous array of `shape` and `dtype` in a
    buffer recorded in `held` (for _scratch_give), or None for a size outside the range."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes < _SCRATCH_MIN or nbytes > _SCRATCH_MAX:
        return None
    buf = None
    with _scratch_lock:
        fits = [i for i, b in enumerate(_scratch_free) if b.nbytes >= nbytes + 64]
        if fits:
            buf = _scratch_free.pop(min(fits, key=lambda i: _scratch_free[i].nbytes))
    if buf is None:
        buf = np.empty(nbytes + 64, np.uint8)
    held.append(buf)
    off = -buf.ctypes.data % 64
    view: np.ndarray = buf[off:off + nbytes].view(dtype).reshape(shape)
    return view


def _scratch_give(held: List[np.ndarray]) -> None:
    """Give back the buffers of a call that returned (none of its arrays in them is used
    any more; a call that raises drops its buffers instead)."""
    if held:
        with _scratch_lock:
            _scratch_free.extend(held)
            _scratch_free.sort(key=lambda b: b.nbytes, reverse=True)
            del _scratch_free[_SCRATCH_KEEP:]
        held.clear()


_DUMMY_TABLE = np.zeros(256, np.uint16)
# gemm's small-call fast path: the native dtypes it takes (NumPy's builtin dtype objects are
# singletons, so an identity test suffices), the machine types it passes through, and the
# BF16 rounding it applies to float32 operands (the same C format as quantize's)
_U16DT, _F32DT, _U8DT = np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.uint8)
_CF8_NAMES = ("cfloat8_143", "cfloat8_152")  # the CFloat8 families GEMM takes
_MACHINE_TYPES = (D1Chip, TrainingTile, DojoSystem)
_gemm.set_bf16_format(_numerics_ctuple(BF16))


def _check_input_format(fmt: Any, name: str) -> Format:
    if not isinstance(fmt, Format):
        raise TypeError(f"{name}: expected a dojo_kernels.Format (BF16, cfloat8_143(bias) or "
                        f"cfloat8_152(bias)), got {type(fmt).__name__}")
    if fmt.name != "bf16" and fmt.name not in _CF8_NAMES:
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


@functools.lru_cache(maxsize=256)
def _format_range(fmt: Format) -> _Range:
    """A CFloat8 operand is scaled through its 256-entry table: the whole format's range
    (a pure function of the format: one object per format, which also hashes fast in the
    scaling cache)."""
    sub = fmt.min_subnormal > 0
    lo = math.frexp(fmt.min_subnormal if sub else fmt.min_normal)[1] - 1
    hi = math.frexp(fmt.max)[1] - 1
    return _Range(lo, hi, lo if sub else lo - fmt.mantissa_bits, False)


def _bf16_range(codes: np.ndarray) -> _Range:
    """The exponent range of the nonzero finite values of BF16 codes (one pass, in C)."""
    if codes.size == 0:
        return _EMPTY_RANGE
    small, big = _gemm.bf16_range(codes if codes.ndim == 3 else codes[None], _config.threads())
    return _range_of(small, big)


@functools.lru_cache(maxsize=4096)
def _range_of(small: int, big: int) -> _Range:
    """The _Range of BF16 magnitude bits (smallest nonzero, largest finite); one object per
    pair, so repeated calls cost a dict lookup (and hash fast in the scaling cache)."""
    if big == 0:
        return _EMPTY_RANGE
    lo, hi = _bf16_exp(small), _bf16_exp(big)
    return _Range(lo, hi, max(lo, -126) - 7, False)


def _bf16_exp(m: int) -> int:
    """floor(log2) of the nonzero BF16 magnitude with bits m."""
    e = m >> 7
    return e - 127 if e else (m.bit_length() - 1) - 133


_EMPTY_RANGE = _Range(0, 0, 0, True)
@functools.lru_cache(maxsize=256)
def _range_paths(isa: int, kern: int, order: int, m: int, b_cs: int,
                 b_rs: int, k: int) -> Tuple[bool, bool]:
    """Which operands' ranges the kernels measure on this path (_gemm.range_paths)."""
    return _gemm.range_paths(isa, kern, order, m, b_cs, b_rs, k)


#: The range gemm() assumes of a BF16 operand before the kernel measures it (values of
#: magnitude 1: the scaling of ordinary data)
_ORDINARY_RANGE = _range_of(0x3F80, 0x3F80)


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
        # No split keeps both operands' values normal (here S - lo_b < lo_a). An operand
        # value scaled below 2**-126 is read as zero; A's lost products are below
        # 2**(hB + 1 - 126 - sa), B's below 2**(hA + 1 - 126 - sb). Minimise the larger:
        # balance the two, but go no further than where one operand loses nothing.
        sa = (S + rb.hi - ra.hi) // 2
        sa = min(max(sa, S - lo_b), lo_a)
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


@functools.lru_cache(maxsize=4096)
def _scale_exps_cached(ra: _Range, rb: _Range, a_is_bf16: bool, b_is_bf16: bool,
                       k: int) -> Tuple[int, int]:
    """:func:`_scale_exps` for repeated arguments (a pure function of them)."""
    return _scale_exps(ra, rb, a_is_bf16, b_is_bf16, k)


@functools.lru_cache(maxsize=1024)
def _cf8_small_scaling(fa: Format, fb: Format, k: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """The fast path's scaling of two CFloat8 operands: their tables and the result's scale
    (what the general path derives from the formats' ranges and k)."""
    sa, sb = _scale_exps_cached(_format_range(fa), _format_range(fb), False, False, k)
    return _table(fa, sa), _table(fb, sb), 2.0 ** -(sa + sb)


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


def _round_in_place_order(arr: np.ndarray, fmt: Format, held: List[np.ndarray]) -> np.ndarray:
    """quantize(arr, fmt) (nearest), as codes laid out as arr is: a transposed or Fortran-
    ordered operand (``W.T`` in a backward pass) is rounded in its memory order and handed to
    the kernels as transposed codes, which they read at full speed, instead of being copied
    to C order first (a strided copy that cost more than the product). Rounding to nearest
    is per element, so the codes are the same. Large codes go into a scratch buffer of
    `held` (_scratch_take)."""
    t, perm = _memory_order(arr)
    src = arr if perm is None else t
    q = quantize(src, fmt, out=_scratch_take(src.shape, fmt.storage_dtype, held))
    return q if perm is None else q.transpose(perm)   # perm is its own inverse


def _operand(x: Any, fmt: Format, name: str, held: List[np.ndarray]) -> np.ndarray:
    """x as codes of fmt (uint16 / uint8 array of any strides), 2-D or 3-D; rounded codes
    may be in a scratch buffer recorded in `held`."""
    arr = x if type(x) is np.ndarray else np.asarray(x)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2-D (rows, cols) or 3-D (batch, rows, cols) array, "
                         f"got {arr.ndim}-D with shape {arr.shape}")
    dt = arr.dtype
    if dt.kind == "u" and dt.isnative and dt.itemsize == fmt.nbits // 8:  # codes: the fast path
        return _aligned(arr)
    want = np.dtype(fmt.storage_dtype)
    if dt.name == "bfloat16" and dt.itemsize == 2:
        if fmt.name == "bf16":
            return _aligned(arr.view(np.uint16))
        return _round_in_place_order(arr, fmt, held)
    if dt.kind == "f":
        if dt not in (np.float32, np.float64):
            arr = arr.astype(np.float32)
        return _round_in_place_order(arr, fmt, held)
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
    machine : a :class:`D1Chip` (default), :class:`TrainingTile` (or ``D2Tile``) or
        :class:`DojoSystem`, for the plan (cached: a repeated shape costs a dict lookup).
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
    # The common small call in one C-level step: 2-D float32 / BF16-code ndarrays in BF16
    # with unit scaling, or two 2-D CFloat8 code arrays, and no addend or a float32 one
    # with beta 1 (a Linear's bias). The glue returns None for anything else: the general
    # path below, which also raises every error, handles it with the same bits.
    if (type(a) is np.ndarray and type(b) is np.ndarray
            and (c is None or (type(c) is np.ndarray and c.dtype is _F32DT and c.ndim <= 2
                               and (beta is None or (type(beta) in (int, float) and beta == 1))))
            and (beta is None or c is not None)
            and (out is None or (type(out) is np.ndarray and out.dtype is _F32DT))
            and (machine is None or isinstance(machine, _MACHINE_TYPES))
            and type(order) is str and order in _ORDER_CODE):
        dta, dtb = a.dtype, b.dtype
        fb = a_format if b_format is None else b_format
        ka = kb = -1
        ta = tb = None
        sc = 1.0
        if a_format is BF16 and fb is BF16:
            ka = _gemm.KIND_U16 if dta is _U16DT else (_gemm.KIND_F32 if dta is _F32DT else -1)
            kb = _gemm.KIND_U16 if dtb is _U16DT else (_gemm.KIND_F32 if dtb is _F32DT else -1)
        elif (dta is _U8DT and dtb is _U8DT and a.ndim == 2 and b.ndim == 2
              and type(a_format) is Format and a_format.name in _CF8_NAMES
              and type(fb) is Format and fb.name in _CF8_NAMES):
            ka = kb = _gemm.KIND_U8
            ta, tb, sc = _cf8_small_scaling(a_format, fb, a.shape[1])
        res = None
        if ka >= 0 and kb >= 0:
            isa = _config.isa()
            oc = _ORDER_CODE[order]
            kern = _kernel_index() if isa >= 2 and oc == _gemm.ORDER_VDPBF16PS else 0
            res = _gemm.gemm_small(a, ka, b, kb, out, isa, kern, _config.threads(), oc, c,
                                   ta, tb, sc)
        if res is not None:
            if return_plan:
                return res, _fast_plan(res.shape[0], res.shape[1], a.shape[1], machine,
                                       a_format, fb)
            return res
    a_format = _check_input_format(a_format, "a_format")
    b_format = a_format if b_format is None else _check_input_format(b_format, "b_format")
    order_code = _check_order(order)
    held: List[np.ndarray] = []   # scratch buffers of the rounded codes (_scratch_take)
    try:
        return _gemm_general(a, b, a_format, b_format, order_code, c, beta, out, return_plan,
                             machine, held)
    except BaseException:
        # the exception's traceback keeps the call's frames, whose arrays may lie in these
        # buffers: they are dropped, not given back for another call to overwrite
        held.clear()
        raise
    finally:
        _scratch_give(held)


def _gemm_general(a: Any, b: Any, a_format: Format, b_format: Format, order_code: int,
                  c: Any, beta: Optional[float], out: Optional[np.ndarray], return_plan: bool,
                  machine: Any, held: List[np.ndarray]
                  ) -> Union[np.ndarray, Tuple[np.ndarray, "GemmPlan"]]:
    """gemm() past its small-call fast path, formats and order checked; float operands
    are rounded into scratch buffers recorded in `held`."""
    ca = _operand(a, a_format, "a", held)
    cb = _operand(b, b_format, "b", held)
    if ca.shape[-1] != cb.shape[-2]:
        raise ValueError(f"a, b: inner dimensions differ: a has k = {ca.shape[-1]} (shape "
                         f"{ca.shape}), b has k = {cb.shape[-2]} (shape {cb.shape})")
    batched = ca.ndim == 3 or cb.ndim == 3
    if ca.ndim == 3 and cb.ndim == 3 and ca.shape[0] != cb.shape[0]:
        raise ValueError(f"a, b: batch sizes differ: {ca.shape[0]} and {cb.shape[0]}")
    nb = ca.shape[0] if ca.ndim == 3 else (cb.shape[0] if cb.ndim == 3 else 1)
    m, k, n = ca.shape[-2], ca.shape[-1], cb.shape[-1]
    shape = (nb, m, n) if batched else (m, n)

    term = None                      # beta * c in float32, broadcast to (nb, m, n)
    if beta is None and c is None:   # the common call: no addend (nothing to check)
        pass
    else:
        if beta is None:
            beta = 0.0 if c is None else 1.0
        if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating, np.integer)):
            raise TypeError(f"beta: expected a real number, got {type(beta).__name__}")
        beta32 = np.float32(beta)
        if beta32 != 0:
            if c is None:
                raise ValueError(f"c: beta = {beta} needs an addend c")
            c32 = np.asarray(c)
            if c32.dtype.kind not in "fiu":
                raise TypeError(f"c: expected a real array, got dtype {c32.dtype}")
            # checked here (NumPy's rule, without building a view); the term stays c's own
            # shape, broadcast by the add
            cs = c32.shape
            if len(cs) > len(shape) or any(d != 1 and d != e for d, e in
                                           zip(cs[::-1], shape[::-1])):
                raise ValueError(f"c: shape {cs} does not broadcast to the result {shape}")
            # beta * c on c's own elements (a bias: n of them, not m * n); the driver adds it
            # to each block of the result while the block is in the caches
            # (dk_gemm_addend_ranges): one FP32 add per element, the product's value first,
            # as np.add(result, term). With beta = 1 a float32 c is the term itself (1 * x
            # is x; a signalling NaN adds as its quiet self either way), unless it overlaps
            # `out`, which the driver writes while it reads the term.
            if (beta32 == 1 and c32.dtype == np.float32 and c32.dtype.isnative
                    and c32.flags.aligned and not (out is not None and np.may_share_memory(c32, out))):
                t = c32
            else:
                with np.errstate(all="ignore"):
                    t = np.asarray(beta32 * c32.astype(np.float32, copy=False), np.float32)
            term = np.broadcast_to(t, (nb, m, n))
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
        if out.dtype != np.float32:
            raise TypeError(f"out: expected dtype float32, got {out.dtype}")
        if out.shape != shape:
            raise ValueError(f"out: expected shape {shape}, got {out.shape}")
        if not out.flags.writeable:
            raise ValueError("out: array is read-only")

    machine = _check_machine(machine)
    plan = None
    if return_plan:
        if m == 0 or n == 0 or k == 0 or nb == 0:
            plan = _zero_plan(m, n, k, a_format, b_format, machine)
        else:
            plan = plan_gemm(m, n, k, a_format=a_format, b_format=b_format, machine=machine)

    a16, b16 = a_format.nbits == 16, b_format.nbits == 16
    isa = _config.isa()
    # The scaling of SPEC section 5 depends on the operands' ranges. The kernels measure
    # the range of a BF16 operand as they read it (_gemm.gemm_ranges: each packed block
    # right after packing it; B on the few-rows path, in its registers), so the operands
    # are not scanned beforehand: the product is computed with the scaling operands of
    # ordinary values get, that scaling is checked against the measured ranges, and in the
    # rare case they ask for another one the product is computed again with it. Either way
    # the bits are those of the scaling the ranges give. An operand the guess would rescale
    # is scanned first (a rescaled copy reads it anyway).
    # the avx512bf16 kernel choice (and its first-call probe) only concerns the vdpbf16ps order
    kern = _kernel_index() if isa >= 2 and order_code == _gemm.ORDER_VDPBF16PS else 0
    meas_a, meas_b = _range_paths(isa, kern, order_code, min(m, _gemm.SMALLM_BT_MAX + 1),
                                  cb.strides[-1] // cb.itemsize, cb.strides[-2] // cb.itemsize, k)
    nonempty = m > 0 and n > 0 and k > 0 and nb > 0
    spec_a = a16 and nonempty and meas_a
    spec_b = b16 and nonempty and meas_b
    ra = _ORDINARY_RANGE if spec_a else (_bf16_range(ca) if a16 else _format_range(a_format))
    rb = _ORDINARY_RANGE if spec_b else (_bf16_range(cb) if b16 else _format_range(b_format))
    while True:
        sa, sb = _scale_exps_cached(ra, rb, a16, b16, k)
        if (spec_a and sa) or (spec_b and sb):
            if spec_a and sa:
                spec_a, ra = False, _bf16_range(ca)
            if spec_b and sb:
                spec_b, rb = False, _bf16_range(cb)
            continue
        ca_s = _rescale_bf16(ca, sa) if a16 and sa else ca
        cb_s = _rescale_bf16(cb, sb) if b16 and sb else cb
        # a 2-D operand is passed with a batch extent of 1: the glue shares it (batch stride 0)
        a3 = ca_s if ca_s.ndim == 3 else ca_s[None]
        b3 = cb_s if cb_s.ndim == 3 else cb_s[None]
        ta = _table(a_format, sa) if a_format.nbits == 8 else _DUMMY_TABLE
        tb = _table(b_format, sb) if b_format.nbits == 8 else _DUMMY_TABLE
        scale = 2.0 ** -(sa + sb)  # a float32 value: _scale_exps keeps sa + sb in [-127, 149]

        # Where the kernel writes: `out` itself when it is C-contiguous (the glue takes a
        # float[:, :, ::1] view), aligned, and overlaps nothing the computation still reads.
        dst, direct = None, False
        if out is not None:
            o3 = out if batched else out[None]
            if (o3.dtype.isnative and o3.flags.c_contiguous and o3.flags.aligned
                    and not np.may_share_memory(o3, ca_s) and not np.may_share_memory(o3, cb_s)):
                dst, direct = o3, True
        if dst is None:
            dst = _empty_result(nb, m, n)

        if not (spec_a or spec_b):
            rc = _gemm.gemm(a3, b3, ta, tb, scale, dst, isa, kern, _config.threads(), order_code,
                            term)
            break
        rc, got_a, got_b = _gemm.gemm_ranges(a3, b3, ta, tb, scale, dst, isa, kern,
                                             _config.threads(), order_code, term)
        if spec_a:
            ra = _range_of(*got_a) if got_a is not None else _bf16_range(ca)
        if spec_b:
            rb = _range_of(*got_b) if got_b is not None else _bf16_range(cb)
        spec_a = spec_b = False
        if rc != 0 or _scale_exps_cached(ra, rb, a16, b16, k) == (sa, sb):
            break
    if rc == 1:
        raise MemoryError("gemm: could not allocate the packing buffers")
    if rc != 0:  # pragma: no cover - arguments are validated above
        raise RuntimeError(f"gemm: C driver returned status {rc}")

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

_TILE_MN = np.array([8, 16, 32, 64, 128, 256])
_TILE_K = np.array([16, 32, 64, 128, 256, 512])
_DEBUG: Optional[List[Any]] = None
_TILE_MN_F = _TILE_MN.astype(np.float64)
_TILE_K_F = _TILE_K.astype(np.float64)
#: plan_gemm's candidate search: "c" (dojo_kernels._plan, the default) or "numpy" (the
#: vectorised reference it replaces; tests compare the two)
_SEARCH = "c"
#: k-split factors the planner considers (partial sums of ks node rows reduced over the NoC)
_K_SPLITS = (1, 2, 4, 8, 16)

Machine = Union[D1Chip, TrainingTile, DojoSystem]

# GemmPlan field -> to_dict key (the unit in the key, as report.py's JSON)
_PLAN_KEYS = {
    "flops": "flop", "padded_flops": "padded_flop", "seconds": "time_s",
    "utilization": "utilization_fraction", "compute_seconds": "compute_s",
    "sram_seconds": "sram_s", "noc_seconds": "noc_s", "offchip_seconds": "offchip_s",
    "fill_seconds": "fill_s", "reduction_seconds": "reduction_s", "sync_seconds": "sync_s",
    "node_grid": "node_grid_nodes", "tile": "tile_mnk", "chip_grid": "chip_grid_chips",
    "tile_grid": "tile_grid_tiles", "steps": "steps", "cycles": "cycles",
}


@dataclass(frozen=True)
class GemmPlan:
    """How a D1 chip, training tile or Dojo system runs one (m, n, k) product, and its cost.

    See :func:`plan_gemm` for the dataflow and the overlap model. Byte counts are totals
    over the whole product and every node (bytes); times in seconds; ``flops`` in FLOP.
    ``node_grid`` is the (rows, cols) of nodes used in all (with a k-split, ``k_split``
    consecutive node rows share one row of C); ``chip_grid`` / ``tile_grid``: the chips per
    tile and tiles it spans. ``reduction_seconds``: the k-split's partial-sum reduction;
    ``sync_seconds``: the per-step synchronization (``D1Node.step_sync_cycles``).
    Plans pickle and round-trip through :meth:`to_dict` / :meth:`from_dict`.
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
    k_split: int = 1
    chip_grid: Tuple[int, int] = (1, 1)
    tile_grid: Tuple[int, int] = (1, 1)
    reduction_seconds: float = 0.0
    sync_seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict; every figure's key names its unit (``_s`` seconds, ``_bytes``,
        ``flop``, ``_fraction``); formats as their fields, the machine as its ``to_dict()``.
        :meth:`from_dict` inverts it. ``"kind": "GemmPlan"`` names the class."""
        out: Dict[str, Any] = {"kind": "GemmPlan"}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            key = _PLAN_KEYS.get(f.name, f.name)
            if isinstance(v, Format):
                v = dataclasses.asdict(v)
            elif f.name == "machine":
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            out[key] = v
        return out

    @classmethod
    def empty(cls, m: int, n: int, k: int, a_format: Format = BF16,
              b_format: Optional[Format] = None, machine: Any = None) -> "GemmPlan":
        """The plan of an empty product (m, n or k == 0; :func:`plan_gemm` rejects those):
        no nodes, no steps, every byte count and time 0, ``bound == "empty"``. It is what
        ``gemm(..., return_plan=True)`` returns for an empty product."""
        return _zero_plan(m, n, k, a_format, a_format if b_format is None else b_format,
                          _check_machine(machine))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GemmPlan":
        """The plan :meth:`to_dict` described: ``GemmPlan.from_dict(p.to_dict()) == p``,
        through ``json.dumps``/``json.loads`` too. ``d`` must be a mapping (TypeError); a
        ``"kind"`` key, if present, must be ``"GemmPlan"``; a missing key of a field without
        a default is a ValueError naming it."""
        from collections.abc import Mapping

        from .machine import machine_from_dict

        if not isinstance(d, Mapping):
            raise TypeError(f"d: expected a mapping from GemmPlan.to_dict(), got "
                            f"{type(d).__name__}")
        if d.get("kind", "GemmPlan") != "GemmPlan":
            raise ValueError(f"d: expected kind 'GemmPlan', got {d.get('kind')!r}")
        kw: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = _PLAN_KEYS.get(f.name, f.name)
            if key not in d:
                if f.default is dataclasses.MISSING:
                    raise ValueError(f"d: missing key {key!r} (expected the output of "
                                     f"GemmPlan.to_dict())")
                continue
            v = d[key]
            if f.name in ("a_format", "b_format", "out_format"):
                v = Format(**v)
            elif f.name == "machine":
                v = machine_from_dict(v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[f.name] = v
        return cls(**kw)


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


_DEFAULT_CHIP: List[D1Chip] = []


def _check_machine(machine: Any) -> Machine:
    if machine is None:
        if not _DEFAULT_CHIP:
            _DEFAULT_CHIP.append(D1Chip())
        return _DEFAULT_CHIP[0]
    if not isinstance(machine, (D1Chip, TrainingTile, DojoSystem)):
        raise TypeError(f"machine: expected a D1Chip, TrainingTile (or D2Tile) or DojoSystem, "
                        f"got {type(machine).__name__}")
    return machine


def _dim_options(machine: Machine, axis: int) -> List[Tuple[int, int, int, int]]:
    """Spans the planner considers along one axis (0: node rows, 1: node columns):
    (nodes, per chip, chips per tile, tiles). Inside one chip every count; across chips and
    tiles whole chips (rows: all, columns: one less than the grid when a full grid would
    exceed the active nodes) and whole tiles."""
    chip = machine if isinstance(machine, D1Chip) else (
        machine.chip if isinstance(machine, TrainingTile) else machine.tile.chip)
    full = chip.grid[axis]
    # whole chips: all node rows, and as many columns as the active nodes allow with them
    full_multi = full if axis == 0 else min(full, chip.active_nodes // chip.grid[0])
    out = [(v, v, 1, 1) for v in range(1, full + 1)]
    if isinstance(machine, D1Chip):
        return out
    tile = machine if isinstance(machine, TrainingTile) else machine.tile
    nch = tile.chips[axis]
    out += [(full_multi * c, full_multi, c, 1) for c in range(2, nch + 1)]
    if isinstance(machine, DojoSystem):
        out += [(full_multi * nch * t, full_multi, nch, t) for t in range(2, machine.grid[axis] + 1)]
    return out


@functools.lru_cache(maxsize=32)
def _groups(machine: Machine, k_split: bool) -> Dict[str, np.ndarray]:
    """Every (row span, k-split, column span) the planner considers, with the figures that do
    not depend on (m, n, k): link bandwidths, feeds, latencies. Read-only arrays."""
    if isinstance(machine, D1Chip):
        chip, tile, sysm = machine, None, None
    elif isinstance(machine, TrainingTile):
        chip, tile, sysm = machine.chip, machine, None
    else:
        chip, tile, sysm = machine.tile.chip, machine.tile, machine
    node = chip.node
    rows = _dim_options(machine, 0)
    cols = _dim_options(machine, 1)
    recs = []
    for RT, r, cr, tr in rows:
        for ks in (_K_SPLITS if k_split else (1,)):
            if RT % ks:
                continue
            for CT, c, cc, tc in cols:
                if r * c > chip.active_nodes:
                    continue
                recs.append((RT // ks, ks, RT, r, cr, tr, CT, c, cc, tc))
    a = np.array(recs, dtype=np.float64)
    g: Dict[str, np.ndarray] = {name: a[:, i].copy() for i, name in enumerate(
        ("gr", "ks", "RT", "r", "cr", "tr", "gc", "c", "cc", "tc"))}
    link = node.noc_link_bw
    eff_h = np.full(len(a), link)
    eff_v = np.full(len(a), link)
    hop = (g["RT"] + g["gc"]) * node.hop_latency_s
    edge = chip.offchip_bw_per_edge
    if tile is not None:
        # a link crossing a chip (tile) boundary shares the chip (tile) link among the node
        # rows (columns) crossing it
        eff_h = np.where(g["cc"] > 1, np.minimum(eff_h, tile.chip_link_bw / g["r"]), eff_h)
        eff_v = np.where(g["cr"] > 1, np.minimum(eff_v, tile.chip_link_bw / g["c"]), eff_v)
        hop = hop + (g["cr"] + g["cc"] - 2) * tile.chip_hop_latency
    if sysm is not None:
        assert tile is not None
        eff_h = np.where(g["tc"] > 1, np.minimum(eff_h, tile.offtile_bw_per_edge / (g["r"] * g["cr"])),
                         eff_h)
        eff_v = np.where(g["tr"] > 1, np.minimum(eff_v, tile.offtile_bw_per_edge / (g["c"] * g["cc"])),
                         eff_v)
        hop = hop + (g["tr"] + g["tc"] - 2) * sysm.tile_hop_latency
        f = sysm.edge_feed_bw
        feed_a = g["tr"] * np.minimum(f, g["cr"] * edge)
        feed_b = g["tc"] * np.minimum(f, g["cc"] * edge)
        feed_out = feed_a + feed_b
        shared = False
    else:
        e_bw = edge if tile is None else tile.offtile_bw_per_edge
        edges = chip.edges if tile is None else tile.edges
        out_edges = edges - 2 if edges > 2 else edges
        if tile is None:
            feed_a = np.full(len(a), e_bw)
            feed_b = np.full(len(a), e_bw)
            feed_out = np.full(len(a), out_edges * e_bw)
        else:  # a tile edge reaches the grid through the chips on it
            feed_a = np.minimum(e_bw, g["cr"] * edge)
            feed_b = np.minimum(e_bw, g["cc"] * edge)
            feed_out = np.minimum(out_edges * e_bw, (g["cr"] + g["cc"]) * edge)
        shared = edges < 2
    g.update(eff_h=eff_h, eff_v=eff_v, hop=hop, feed_a=feed_a, feed_b=feed_b,
             feed_out=feed_out, shared=np.full(len(a), 1.0 if shared else 0.0))
    for key in ("gr", "gc", "ks"):
        u, inv = np.unique(g[key], return_inverse=True)
        g["u_" + key], g["i_" + key] = u, inv
    g["one_r"] = ((g["cr"] == 1) & (g["tr"] == 1)).astype(np.float64)
    g["one_c"] = ((g["cc"] == 1) & (g["tc"] == 1)).astype(np.float64)
    for v in g.values():
        v.setflags(write=False)
    return g


@functools.lru_cache(maxsize=32)
def _tiles(sram_bytes: int, ab: float, bb: float, ob: float
           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mt, nt, kt, fits) over the full tile set, shape (6, 6, 6): fits = the footprint
    (double-buffered A and B panels, FP32 accumulator, output staging) fits the SRAM."""
    mt, nt, kt = np.meshgrid(_TILE_MN, _TILE_MN, _TILE_K, indexing="ij")
    foot = 2 * mt * kt * ab + 2 * kt * nt * bb + 4 * mt * nt + ob * mt * nt
    out = (mt.astype(np.float64), nt.astype(np.float64), kt.astype(np.float64), foot <= sram_bytes)
    for x in out:
        x.setflags(write=False)
    return out


def _bounds_numpy(m: int, n: int, k: int, g: Dict[str, np.ndarray], node: D1Node, ab: float,
                  bb: float, ob: float) -> np.ndarray:
    """The lower bound of every span in NumPy (the reference of _plan.bounds; _plan sets
    the dominated spans' bounds to +inf after it)."""
    gr, gc, ks = g["gr"], g["gc"], g["ks"]
    bm, bn, bk = node.mac_block
    lb_comp = (np.ceil(np.ceil(m / gr) / bm) * np.ceil(np.ceil(n / gc) / bn)
               * np.ceil(np.ceil(k / ks) / bk) / node.clock_hz)
    shared = g["shared"] > 0
    # A is fed once per column of super-tiles, B once per row of them (at most 256 wide)
    sr_min = np.ceil(m / (gr * _TILE_MN[-1]))
    sc_min = np.ceil(n / (gc * _TILE_MN[-1]))
    in_a, in_b = sc_min * (m * k * ab), sr_min * (k * n * bb)
    lb_in = np.where(shared, (in_a + in_b) / g["feed_a"],
                     np.maximum(in_a / g["feed_a"], in_b / g["feed_b"]))
    # the fill of the smallest tile (8 x 8 x 16)
    pa0, pb0 = _TILE_MN[0] * _TILE_K[0] * ab, _TILE_K[0] * _TILE_MN[0] * bb
    fill0 = (np.where(shared, (g["RT"] * pa0 + gc * ks * pb0) / g["feed_a"],
                      np.maximum(g["RT"] * pa0 / g["feed_a"], gc * ks * pb0 / g["feed_b"]))
             + np.maximum(pa0 / g["eff_h"], pb0 / g["eff_v"])
             + gr * gc * (_TILE_MN[0] ** 2 * ob) / g["feed_out"])
    lb: np.ndarray = (np.maximum(np.maximum(lb_comp, lb_in), m * n * ob / g["feed_out"])
                      + g["hop"] + fill0)
    return lb


@functools.lru_cache(maxsize=32)
def _fits_u8(sram_bytes: int, ab: float, bb: float, ob: float) -> np.ndarray:
    """_tiles' fits as a C-contiguous uint8 array (for _plan.search)."""
    f = np.ascontiguousarray(_tiles(sram_bytes, ab, bb, ob)[3]).view(np.uint8)
    f.setflags(write=False)
    return f


def _useful(total: int, width: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(len(width), len(sizes)) bool: size i is useful for a span of ``width`` nodes unless a
    smaller size needs as many super-tiles (it then dominates: less of everything)."""
    cnt = np.ceil(total / (width[:, None] * sizes[None, :]))
    keep = np.ones(cnt.shape, dtype=bool)
    keep[:, 1:] = cnt[:, 1:] < cnt[:, :-1]
    return keep


def _cost(m: int, n: int, k: int, g: Dict[str, np.ndarray], gi: np.ndarray, mt: np.ndarray,
          nt: np.ndarray, kt: np.ndarray, node: D1Node, ab: float, bb: float, ob: float
          ) -> Dict[str, np.ndarray]:
    """The cost model on candidates (group index gi, tile mt x nt x kt): see plan_gemm."""
    gr, gc, ks, RT = g["gr"][gi], g["gc"][gi], g["ks"][gi], g["RT"][gi]
    eff_h, eff_v = g["eff_h"][gi], g["eff_v"][gi]
    feed_a, feed_b, feed_out = g["feed_a"][gi], g["feed_b"][gi], g["feed_out"][gi]
    bm, bn, bk = node.mac_block
    clock = node.clock_hz
    step_cycles = np.ceil(mt / bm) * np.ceil(nt / bn) * np.ceil(kt / bk)
    sup = np.ceil(m / (gr * mt)) * np.ceil(n / (gc * nt))
    kst = np.ceil(np.ceil(k / ks) / kt)
    steps = sup * kst
    t_comp = steps * step_cycles / clock
    red = ks > 1
    S = 4 * mt * nt                                     # one FP32 partial C tile
    pa, pb = mt * kt * ab, kt * nt * bb                 # one A panel, one B panel
    rd_node = steps * (mt * nt * kt * (ab + bb) / 8 + S + pa + pb) + sup * S + red * sup * 2 * S
    wr_node = steps * (S + pa + pb) + red * sup * 2 * S
    t_sram = np.maximum(rd_node / node.sram_load_bw, wr_node / node.sram_store_bw)
    v_panels = np.where(gr > 1, ks, ks - 1)             # distinct B panels down the top link
    h_link = steps * pa * (gc > 1)
    v_link = steps * v_panels * pb + red * sup * S
    t_noc = np.maximum(h_link / eff_h, v_link / eff_v)
    noc = (steps * (RT * (gc - 1) * pa + gc * (RT - 1) * v_panels * pb)
           + red * sup * (ks - 1) * gr * gc * S)
    off_a = steps * RT * pa
    off_b = steps * gc * ks * pb
    off_out = sup * gr * gc * mt * nt * ob
    if g["shared"][0] > 0:   # one edge: A and B share it (the same for every span)
        t_in = (off_a + off_b) / feed_a
        fill_in = (RT * pa + gc * ks * pb) / feed_a
    else:
        t_in = np.maximum(off_a / feed_a, off_b / feed_b)
        fill_in = np.maximum(RT * pa / feed_a, gc * ks * pb / feed_b)
    t_off = np.maximum(t_in, off_out / feed_out)
    fill = (fill_in + np.maximum(pa / eff_h, pb / eff_v) + g["hop"][gi]
            + gr * gc * mt * nt * ob / feed_out)
    # k-split: a chain over the ks adjacent node rows per super-tile (receive a partial tile,
    # add it at the FP32 vector rate, pass it on), not overlapped with the next super-tile
    t_red = red * sup * (ks - 1) * (S / eff_v + node.hop_latency_s + node.link_latency_s
                                    + mt * nt / node.fp32_peak_flops)
    t_sync = steps * node.step_sync_s
    totals = np.stack([t_comp, t_sram, t_noc, t_off])
    seconds = totals.max(axis=0) + fill + t_red + t_sync
    return dict(seconds=seconds, totals=totals, steps=steps, step_cycles=step_cycles,
                rd_node=rd_node, wr_node=wr_node, noc=noc, off_in=off_a + off_b,
                off_out=off_out, fill=fill, t_red=t_red, t_sync=t_sync,
                foot=2 * pa + 2 * pb + S + ob * mt * nt)


def plan_gemm(m: int, n: int, k: int, *, a_format: Format, b_format: Format,
              machine: Any = None, out_format: Format = FP32, k_split: bool = True) -> GemmPlan:
    """Plan C (m x n) = A (m x k) @ B (k x n) on a D1 chip, a training tile (or ``D2Tile``)
    or a Dojo system; return its cost (seconds, bytes, FLOP).

    Dataflow (our design on public figures; Tesla's compiler is not public): SUMMA on a
    rectangle of nodes. C is cut into super-tiles of ``(gr*mt) x (gc*nt)``; node (r, c) owns
    one ``mt x nt`` FP32 accumulator of it, resident in its SRAM for the whole k loop. Each
    of the ``ceil(k/kt)`` steps brings an A panel ``mt x kt`` into every node row from the
    west edge, forwarded node to node along the row, and a B panel ``kt x nt`` down every
    column from the north edge; the node multiplies them on its matrix unit in 8x8x4 blocks,
    one block per cycle (``ceil(mt/8) ceil(nt/8) ceil(kt/4)`` cycles: padding waste counts).
    A finished C tile is drained in ``out_format`` over the east and south edges. Every step
    and super-tile is costed at full padded size.

    k-split (``k_split=True``, the default): ``ks`` in 1, 2, 4, 8, 16 adjacent node rows
    share one row of C, each summing ``ceil(k/ks)`` of k; the ks partial tiles are reduced
    by a chain along the column (``ks - 1`` transfers of ``4 mt nt`` bytes over the NoC,
    one hop each, added at the node's FP32 rate), after every super-tile, not overlapped.
    This makes GEMV and skinny shapes use the whole grid. ``k_split=False`` plans without it
    (then k is never split across nodes); the k-split plan is never slower, since ``ks = 1``
    is among its candidates. (The product :func:`gemm` computes is unaffected: the plan is a
    cost model.)

    Edges and feeds (bytes/s per direction): a chip's edges carry ``offchip_bw_per_edge``:
    A gets the west edge, B the north, C the other ``edges - 2`` (with fewer than three
    edges: the input edges' outbound direction; with one, A and B share it). A tile's edges
    carry ``offtile_bw_per_edge``, but reach the grid only through the chips on that edge
    (``chips spanned x offchip_bw_per_edge``). On a :class:`DojoSystem` the grid may span
    several tiles of the system mesh; A, B and C move from and to the interface processors'
    HBM on the outer tile edges: ``DojoSystem.edge_feed_bw`` per tile edge spanned (west: A,
    north: B, east and south: C). A link crossing a chip (tile) boundary shares the chip
    (tile) link among the node rows or columns crossing it.

    Per node SRAM (double-buffered A and B panels, the FP32 accumulator, an output staging
    buffer): ``2 mt kt a + 2 kt nt b + 4 mt nt + o mt nt`` bytes (``a, b, o`` bytes per
    element), never above the node's SRAM. SRAM traffic per step: the matrix unit reads
    ``mt nt kt (a + b) / 8`` bytes (A and B re-read per 8-wide block, C held in the unit
    across the step), reads and writes the C tile once (4 mt nt each), writes the
    incoming panels and reads them again to forward them.

    Overlap model: with double buffering, transfers of step s+1 overlap the compute of step
    s, so the time is the largest of the per-resource totals (compute, SRAM = max(load /
    load_bw, store / store_bw), NoC = busiest link, off-chip = the busiest of the A feed,
    the B feed and the C drain) plus a fill/drain term (the first step's panels over their
    feeds, then the NoC and the hop latencies; the last C drain), plus the k-split
    reduction, plus ``steps x D1Node.step_sync_cycles`` (0 by default: no public figure).
    ``bound`` names the largest total.

    Search: every span (per chip: every node count; across chips and tiles: whole chips and
    tiles), k-split and tile size (mt, nt in 8, 16, ..., 256, kt in 16..512) is a candidate; the
    planner returns the fewest seconds, exactly (bounds prune spans that cannot win; a tile
    needing as many super-tiles as a smaller one is dominated), so a bigger problem is never
    cheaper and a bigger system never slower. Plans are cached: a repeated call with equal
    arguments returns the same plan object (machines and formats are frozen values).
    """
    # fast path: the very same argument objects as a recent call (frozen values, held by
    # the entry so their ids cannot be reused while it lives)
    fast = type(m) is int and type(n) is int and type(k) is int and type(k_split) is bool
    if fast:
        key = (m, n, k, id(a_format), id(b_format), id(machine), id(out_format), k_split)
        hit = _RECENT.get(key)
        if (hit is not None and hit[0] is a_format and hit[1] is b_format
                and hit[2] is machine and hit[3] is out_format):
            plan_hit: GemmPlan = hit[4]
            return plan_hit
    for name, v in (("m", m), ("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name}: cannot plan an empty product: expected >= 1, got {v}")
    a_format = _check_input_format(a_format, "a_format")
    b_format = _check_input_format(b_format, "b_format")
    if not isinstance(out_format, Format):
        raise TypeError(f"out_format: expected a Format, got {type(out_format).__name__}")
    if not isinstance(k_split, (bool, np.bool_)):
        raise TypeError(f"k_split: expected a bool, got {type(k_split).__name__}")
    plan = _plan(int(m), int(n), int(k), a_format, b_format, _check_machine(machine),
                 out_format, bool(k_split))
    if fast:
        if len(_RECENT) >= 1024:
            _RECENT.clear()
        _RECENT[key] = (a_format, b_format, machine, out_format, plan)
    return plan


#: plan_gemm's identity-keyed front cache (the value-keyed one is _plan's lru_cache)
_RECENT: Dict[Tuple[Any, ...], Tuple[Any, ...]] = {}
#: gemm's small-call fast path's plans: (m, n, k, id(machine)) -> (machine, plan)
_FAST_PLANS: Dict[Tuple[int, int, int, int, Format, Format], Tuple[Any, GemmPlan]] = {}


def _fast_plan(m: int, n: int, k: int, machine: Any, fa: Format = BF16,
               fb: Format = BF16) -> GemmPlan:
    """plan_gemm(m, n, k, a_format=fa, b_format=fb, machine=machine) for gemm's fast path:
    a dict lookup keyed on the machine object (held by the entry, so its id cannot be reused
    while the entry lives) and the formats (frozen values)."""
    key = (m, n, k, id(machine), fa, fb)
    hit = _FAST_PLANS.get(key)
    if hit is not None and hit[0] is machine:
        return hit[1]
    plan = plan_gemm(m, n, k, a_format=fa, b_format=fb, machine=_check_machine(machine))
    if len(_FAST_PLANS) >= 1024:
        _FAST_PLANS.clear()
    _FAST_PLANS[key] = (machine, plan)
    return plan


def clear_plan_cache() -> None:
    """Forget every cached plan (plans are pure functions of their arguments, so this only
    matters to benchmarks and tests of the cache)."""
    _RECENT.clear()
    _FAST_PLANS.clear()
    _plan.cache_clear()


@functools.lru_cache(maxsize=4096)
def _plan(m: int, n: int, k: int, a_format: Format, b_format: Format, machine: Machine,
          out_format: Format, k_split: bool) -> GemmPlan:
    chip = machine if isinstance(machine, D1Chip) else (
        machine.chip if isinstance(machine, TrainingTile) else machine.tile.chip)
    node = chip.node
    ab, bb, ob = _bytes_per(a_format), _bytes_per(b_format), _bytes_per(out_format)
    mt_a, nt_a, kt_a, fits = _tiles(node.sram_bytes, ab, bb, ob)
    if not fits.any():
        mt0, nt0, kt0 = _TILE_MN[0], _TILE_MN[0], _TILE_K[0]
        need = 2 * mt0 * kt0 * ab + 2 * kt0 * nt0 * bb + 4 * mt0 * nt0 + ob * mt0 * nt0
        raise ValueError(f"machine: no tile fits the node SRAM of {node.sram_bytes} bytes "
                         f"(even an {mt0}x{nt0}x{kt0} tile needs {int(need)} bytes)")
    g = _groups(machine, k_split)
    gr, gc, ks = g["gr"], g["gc"], g["ks"]
    bm, bn, bk = node.mac_block
    # lower bound of every span, whatever the tile: each node's share of the padded work;
    # each operand crosses its feed at least once; the hop latencies
    fast = _SEARCH == "c" and max(m, n, k) < 2 ** 62
    pa0, pb0 = _TILE_MN[0] * _TILE_K[0] * ab, _TILE_K[0] * _TILE_MN[0] * bb
    if fast:
        lb = _plan_c.bounds(m, n, k, g, float(bm), float(bn), float(bk), float(node.clock_hz),
                            float(m * k * ab), float(k * n * bb), float(m * n * ob),
                            float(pa0), float(pb0), float(_TILE_MN[0] ** 2 * ob))
    else:
        lb = _bounds_numpy(m, n, k, g, node, ab, bb, ob)
    # tiles that are not dominated, per span
    ug, ig = g["u_gr"], g["i_gr"]
    uc, ic = g["u_gc"], g["i_gc"]
    uk, ik = g["u_ks"], g["i_ks"]
    tmn = _TILE_MN.astype(np.float64)
    use_m = _useful(m, ug, tmn)
    use_n = _useful(n, uc, tmn)
    use_k = _useful_k(k, uk, _TILE_K.astype(np.float64))
    # inside one chip, a span one node narrower with as many super-tiles dominates
    # (same steps, less of everything else); spans of whole chips are kept
    min_m = _narrowest(m, ug, tmn)
    min_n = _narrowest(n, uc, tmn)

    def evaluate(sel: np.ndarray) -> Tuple[Dict[str, np.ndarray], np.ndarray, np.ndarray]:
        um = use_m[ig[sel]] & (min_m[ig[sel]] | ~one_r[sel, None])
        un = use_n[ic[sel]] & (min_n[ic[sel]] | ~one_c[sel, None])
        mask = (um[:, :, None, None] & un[:, None, :, None]
                & use_k[ik[sel]][:, None, None, :] & fits[None])
        gi, i, j, l = np.nonzero(mask)
        gsel = sel[gi]
        c = _cost(m, n, k, g, gsel, mt_a[i, j, l], nt_a[i, j, l], kt_a[i, j, l], node, ab, bb, ob)
        return c, gsel, np.stack([i, j, l])

    def search_numpy(order: np.ndarray) -> Tuple[int, int, int, int]:
        """The branch and bound in NumPy, batch by batch (the reference of _plan.search,
        which gives the same candidate: tests/test_plan_search.py)."""
        # branch and bound: spans in the order of their bounds, in growing batches; a span
        # whose bound exceeds the best plan found cannot hold the optimum
        parts: List[Tuple[Dict[str, np.ndarray], np.ndarray, np.ndarray]] = []
        ub, pos = math.inf, 0
        for size in (2, 6, 24, len(order)):
            batch = order[pos:pos + size]
            pos += size
            batch = batch[lb[batch] <= ub]
            if batch.size == 0:
                break
            part = evaluate(np.sort(batch))
            if part[0]["seconds"].size == 0:   # every candidate of these spans is dominated
                continue
            parts.append(part)
            ub = min(ub, float(part[0]["seconds"].min()))
            if _DEBUG is not None:
                _DEBUG.append((int(batch.size), int(part[0]["seconds"].size)))
        secs = np.concatenate([p[0]["seconds"] for p in parts])
        gsel = np.concatenate([p[1] for p in parts])
        idx = np.concatenate([p[2] for p in parts], axis=1)
        # the fewest seconds; ties broken by fewer nodes, then the candidate order
        nodes_used = g["RT"][gsel] * gc[gsel]
        tie = np.flatnonzero(secs == secs.min())
        best = int(tie[np.argmin(nodes_used[tie])])   # argmin: the first of equals
        i, j, l = (int(v) for v in idx[:, best])
        return int(gsel[best]), i, j, l

    # a span inside one chip with more node rows (columns) than ceil(m / 8) (ceil(n / 8)) per
    # k-split is dominated by the narrower one: the same single super-tile, less of the rest
    one_r = g["one_r"] > 0
    one_c = g["one_c"] > 0
    if not fast:
        lb[one_r & (gr > -(-m // bm))] = np.inf
        lb[one_c & (gc > -(-n // bn))] = np.inf
    order = np.argsort(lb, kind="stable")
    got = None
    if fast:
        got = _plan_c.search(m, n, k, g, order, lb, use_m.view(np.uint8), use_n.view(np.uint8),
                             use_k.view(np.uint8), min_m.view(np.uint8), min_n.view(np.uint8),
                             _fits_u8(node.sram_bytes, ab, bb, ob), _TILE_MN_F, _TILE_K_F,
                             (float(bm), float(bn), float(bk), float(node.clock_hz),
                              float(node.sram_load_bw), float(node.sram_store_bw),
                              float(node.hop_latency_s), float(node.link_latency_s),
                              float(node.fp32_peak_flops), float(node.step_sync_s)),
                             float(ab), float(bb), float(ob), _DEBUG)
    if got is not None:
        b, i, j, l = got[:4]
    else:
        b, i, j, l = search_numpy(order)
    # the chosen candidate's figures, by the cost model itself
    c = _cost(m, n, k, g, np.array([b]), mt_a[i:i + 1, j, l], nt_a[i:i + 1, j, l],
              kt_a[i:i + 1, j, l], node, ab, bb, ob)
    best = 0
    nodes_used = g["RT"][b:b + 1] * gc[b:b + 1]
    names = ("compute", "sram", "noc", "offchip")
    flops = 2.0 * m * n * k
    sec = float(c["seconds"][best])
    nodes = float(nodes_used[best])
    return GemmPlan(
        m=m, n=n, k=k, a_format=a_format, b_format=b_format, out_format=out_format,
        machine=machine,
        node_grid=(int(g["RT"][b]), int(gc[b])),
        tile=(int(_TILE_MN[i]), int(_TILE_MN[j]), int(_TILE_K[l])),
        sram_bytes_per_node=int(c["foot"][best]),
        flops=flops,
        padded_flops=float(c["steps"][best] * c["step_cycles"][best]
                           * node.matrix_flops_per_cycle * nodes),
        steps=int(c["steps"][best]),
        cycles=sec * node.clock_hz,
        seconds=sec,
        utilization=flops / (sec * machine.peak_flops),
        bound=names[int(np.argmax(c["totals"][:, best]))],
        offchip_bytes=float(c["off_in"][best] + c["off_out"][best]),
        noc_bytes=float(c["noc"][best]),
        sram_read_bytes=float(c["rd_node"][best] * nodes),
        sram_write_bytes=float(c["wr_node"][best] * nodes),
        compute_seconds=float(c["totals"][0, best]),
        sram_seconds=float(c["totals"][1, best]),
        noc_seconds=float(c["totals"][2, best]),
        offchip_seconds=float(c["totals"][3, best]),
        fill_seconds=float(c["fill"][best]),
        k_split=int(ks[b]),
        chip_grid=(int(g["cr"][b]), int(g["cc"][b])),
        tile_grid=(int(g["tr"][b]), int(g["tc"][b])),
        reduction_seconds=float(c["t_red"][best]),
        sync_seconds=float(c["t_sync"][best]),
    )


def _narrowest(total: int, width: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(len(width), len(sizes)) bool: ``width`` is the narrowest span giving its number of
    super-tiles with tiles of that size (``width - 1`` would need more)."""
    cnt = np.ceil(total / (width[:, None] * sizes[None, :]))
    narrower = np.ceil(total / (np.maximum(width - 1, 1)[:, None] * sizes[None, :]))
    return np.asarray((width[:, None] == 1) | (narrower > cnt))


def _useful_k(k: int, ks: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """As :func:`_useful` for kt: the steps are ceil(ceil(k / ks) / kt)."""
    cnt = np.ceil(np.ceil(k / ks)[:, None] / sizes[None, :])
    keep = np.ones(cnt.shape, dtype=bool)
    keep[:, 1:] = cnt[:, 1:] < cnt[:, :-1]
    return keep


def feed_bandwidths(machine: Any = None) -> Tuple[float, float, float]:
    """(A feed, B feed, C drain) in bytes/s per direction that :func:`plan_gemm` gives a
    grid spanning the whole ``machine`` (the same formulas as its search): a D1Chip's west,
    north and other edges; a tile's edges as reached through the chips on them; a system's
    interface-processor feeds on its outer tile edges. Their sum is the off-chip roof of
    the roofline plot."""
    machine = _check_machine(machine)
    g = _groups(machine, False)
    i = int(np.argmax(g["RT"] * g["gc"]))
    return float(g["feed_a"][i]), float(g["feed_b"][i]), float(g["feed_out"][i])
