"""Conversion and arithmetic in the Dojo number formats (SPEC sections 2-4).

Every function here validates its arguments, then calls one C driver with the GIL released.
Results are bit-identical whatever the ISA tier and the thread count.

Model choices (SPEC marks them; each is written down here and in README.md):

* ``rounding="nearest"`` is round-to-nearest, ties to even (the white paper only says
  "round-to-nearest").
* ``rounding="stochastic"`` is SPEC's bit-exact recipe: the random number of element ``i``
  (flat C-order index in the logical array) is the top half of SplitMix64 after ``i + 1``
  steps from ``seed``, so results never depend on memory layout, threads or SIMD path.
* NaN into CFloat8/SHP (which have no NaN) gives ``+max``; ``+-Inf`` and overflow saturate
  to ``+-max``. BF16/FP32 NaN becomes the quiet NaN ``sign|0x7FC0`` (``sign|0x7FC00000``),
  as ml_dtypes does. UHP: NaN and any negative non-zero input give ``0xFE00``; ``-0 -> +0``.
* Overflow is signalled (and a value clamped) when the value rounded with an unbounded
  exponent exceeds ``max``. Toward zero, BF16/UHP overflow gives ``+-max``; nearest and
  stochastic give ``+-Inf`` (stochastic: the grid continues past ``max`` and its next point
  is Inf, so values at or above ``2^(emax+1)`` always become Inf).
* In the ``"tesla"`` subnormal gap a value rounds between the largest subnormal and the
  smallest normal (a tie goes to the smallest normal).
"""
from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Tuple, Union, cast, overload

import numpy as np

from .. import _config, _numerics
from .._cformat import ctuple as _ctuple
from .._cformat import memory_order as _memory_order
from .formats import FAMILIES, Format

__all__ = ["Flags", "quantize", "dequantize", "fake_quantize", "add", "sub", "mul", "fma",
           "choose_bias"]

_ROUNDING = {"nearest": 0, "stochastic": 1, "toward_zero": 2}
_F32, _F64, _BF16 = 0, 1, 2
_F32_DT, _F64_DT = np.dtype(np.float32), np.dtype(np.float64)
_OPS = {"add": 0, "sub": 1, "mul": 2, "fma": 3}


@dataclass(frozen=True)
class Flags:
    """Exception counts of one call (SPEC section 3): how many elements raised each flag.

    Attributes
    ----------
    invalid : int
        NaN operand, a negative non-zero value into UHP, or an invalid operation
        (Inf - Inf, 0 * Inf).
    denormal : int
        An operand that is subnormal in its source format (float32/float64/bf16 for
        quantize; the format itself for arithmetic, one count per element).
    overflow : int
        A finite value whose result was clamped to max or rounded to Inf, and in
        CFloat8/SHP also an infinite input (it is clamped).
    underflow : int
        A non-zero value whose result is subnormal or zero and differs from it.
    """

    invalid: int = 0
    denormal: int = 0
    overflow: int = 0
    underflow: int = 0


@functools.lru_cache(maxsize=None)
def _check_format(fmt: Any, name: str = "fmt") -> Format:
    if not isinstance(fmt, Format):
        raise TypeError(f"{name}: expected a dojo_kernels.Format (e.g. BF16, cfloat8_143(7)), "
                        f"got {type(fmt).__name__}")
    return fmt


def _check_rounding(rounding: Any, seed: Any) -> Tuple[int, int]:
    if not isinstance(rounding, str) or rounding not in _ROUNDING:
        raise ValueError(f"rounding: expected one of {', '.join(map(repr, _ROUNDING))}, "
                         f"got {rounding!r}")
    mode = _ROUNDING[rounding]
    if mode != 1:
        return mode, 0
    if seed is None:
        raise ValueError("seed: rounding='stochastic' needs an integer seed (0 <= seed < 2**64)")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed: expected 0 <= seed < 2**64, got {seed}")
    return mode, seed


@functools.lru_cache(maxsize=64)
def _is_bf16(dtype: np.dtype) -> bool:
    # cached per dtype: ``dtype.name`` is built by NumPy in Python, about 2.7 us a call
    return dtype.name == "bfloat16" and dtype.itemsize == 2


def _native(a: np.ndarray) -> np.ndarray:
    fl = a.flags
    if fl.c_contiguous and fl.aligned and a.dtype.isnative:
        return a  # what np.require would return, without its 0.8 us of set-up
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    # C order AND aligned: the kernels load whole floats/codes (a misaligned pointer is UB in
    # C and breaks the vector loops' alignment peeling). np.require keeps 0-d arrays 0-d.
    return np.require(a, requirements=("C_CONTIGUOUS", "ALIGNED"))


def _source(x: Any, name: str = "x") -> Tuple[np.ndarray, int]:
    """x as a C-contiguous native float32/float64/bf16-bits array, and its kind."""
    a = np.asarray(x)
    dt = a.dtype
    if dt == _F32_DT:  # (native float32: the common case first; a dtype compares cheapest)
        return _native(a), _F32
    if not dt.isnative:
        dt = dt.newbyteorder("=")  # big-endian too
    if dt == _F32_DT:
        return _native(a), _F32
    if dt == _F64_DT:
        return _native(a), _F64
    if _is_bf16(a.dtype):
        return _native(a).view(np.uint16), _BF16
    raise TypeError(f"{name}: expected a float32, float64 or ml_dtypes.bfloat16 array, "
                    f"got dtype {a.dtype}")


def _codes(codes: Any, fmt: Format, name: str = "codes") -> np.ndarray:
    """codes as a C-contiguous native array of fmt's storage dtype."""
    a = np.asarray(codes)
    want = _storage(fmt)
    if a.dtype == want:  # (the common case: skips the bfloat16 test)
        return _native(a)
    if fmt.name == "bf16" and _is_bf16(a.dtype):
        a = a.view(np.uint16)
    if a.dtype.kind != want.kind or a.dtype.itemsize != want.itemsize:
        raise TypeError(f"{name}: expected {want} codes for {fmt!r}, got dtype {a.dtype}")
    return _native(a)


def _fmt_info(fmt: Format) -> Tuple[np.dtype[Any], Tuple[Any, ...]]:
    """fmt's storage dtype (as a NumPy dtype) and its tuple for the compiled modules, built
    once per format object and kept on it (a private attribute, not a field: equality,
    hashing and repr see the fields only). Looking it up costs an attribute read, where a
    cache keyed by the format would hash its seven fields in Python on every call."""
    try:
        return fmt._dk_info  # type: ignore[attr-defined, no-any-return]
    except AttributeError:
        info = (np.dtype(fmt.storage_dtype), _ctuple(fmt))
        object.__setattr__(fmt, "_dk_info", info)  # the dataclass is frozen
        return info


def _storage(fmt: Format) -> np.dtype[Any]:
    """fmt's storage dtype as a NumPy dtype (built once per format: _fmt_info)."""
    return _fmt_info(fmt)[0]


def _check_out(out: Any, shape: Tuple[int, ...], dtype: np.dtype[Any],
               name: str = "out") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name}: array is read-only")
    return out


def _deliver(result: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    if out is not None and result is not out:
        out[...] = result
        return out
    return result


def _dest(out: Optional[np.ndarray], shape: Tuple[int, ...], dtype: np.dtype[Any]
          ) -> np.ndarray:
    """Where the kernel writes: ``out`` (checked: of the native ``dtype`` and ``shape``)
    itself when it is C-contiguous and aligned, else a new array. Overlap with the inputs is
    the glue's to find (_run)."""
    if out is not None:
        _check_out(out, shape, dtype)
        fl = out.flags
        if fl.c_contiguous and fl.aligned:
            return out
    return _numerics.empty_lined(shape, dtype)


def _run(kernel: Callable[[np.ndarray], Any], dst: np.ndarray) -> Tuple[np.ndarray, Any]:
    """Call the glue ``kernel(dst)``; the glue refuses (returns None, computing nothing) a
    ``dst`` that overlaps an input other than element for element, and then a new array
    takes its place. Returns the array written and what the glue returned."""
    got = kernel(dst)
    if got is None:
        dst = np.empty(dst.shape, dst.dtype)  # (a temporary that _deliver copies into out)
        got = kernel(dst)
        assert got is not None  # (a new array overlaps nothing)
    return dst, got


@overload
def quantize(x: Any, fmt: Format, *, rounding: str = ..., seed: Optional[int] = ...,
             out: Optional[np.ndarray] = ..., return_flags: Literal[False] = ...
             ) -> np.ndarray: ...
@overload
def quantize(x: Any, fmt: Format, *, rounding: str = ..., seed: Optional[int] = ...,
             out: Optional[np.ndarray] = ..., return_flags: Literal[True]
             ) -> Tuple[np.ndarray, Flags]: ...
@overload
def quantize(x: Any, fmt: Format, *, rounding: str = ..., seed: Optional[int] = ...,
             out: Optional[np.ndarray] = ..., return_flags: bool = ...
             ) -> Union[np.ndarray, Tuple[np.ndarray, Flags]]: ...
def quantize(x: Any, fmt: Format, *, rounding: str = "nearest", seed: Optional[int] = None,
             out: Optional[np.ndarray] = None, return_flags: bool = False
             ) -> Union[np.ndarray, Tuple[np.ndarray, Flags]]:
    """Round ``x`` into ``fmt``; return the codes (uint8 or uint16; float32 for FP32).

    Parameters
    ----------
    x : float32, float64 or ml_dtypes.bfloat16 array of any shape and strides. float64 is
        rounded from its own value, never through float32.
    fmt : the target :class:`Format`.
    rounding : ``"nearest"`` (ties to even), ``"stochastic"`` (SPEC section 2; needs
        ``seed``) or ``"toward_zero"``.
    seed : int in ``[0, 2**64)``, required for stochastic rounding.
    out : optional array of ``fmt.storage_dtype`` and ``x``'s shape to write into.
    return_flags : also return a :class:`Flags` of exception counts.

    ``quantize(x, BF16).view(ml_dtypes.bfloat16)`` equals ``x.astype(ml_dtypes.bfloat16)``
    bit for bit for float32 ``x``.
    """
    if not isinstance(fmt, Format):
        _check_format(fmt)
    mode, seed_ = _check_rounding(rounding, seed)
    dtype, ctup = _fmt_info(fmt)
    isa, threads, want = _config.isa(), _config.threads(), bool(return_flags)
    # The common call, a float32/float64 array into one of the codes or None, in one step
    # (the glue checks that it is one, and otherwise computes nothing: the general path).
    got = _numerics.convert_plain(0, x, out, ctup, dtype, 0, mode, seed_, want, isa, threads)
    if got is not None:  # (entry 0 gives the flag counts, never True)
        return (got[0], Flags(*cast(Tuple[int, int, int, int], got[1]))) if return_flags else got[0]
    src, kind = _source(x)
    dst = _dest(out, src.shape, dtype)
    flags = (0, 0, 0, 0)
    if src.size:
        n = src.size
        dst, flags = _run(lambda d: _numerics.quantize(src, kind, d, n, ctup, mode, seed_, want,
                                                       isa, threads), dst)
    dst = _deliver(dst, out)
    if return_flags:
        return dst, Flags(*flags)
    return dst


def dequantize(codes: Any, fmt: Format, *, dtype: Any = np.float32,
               out: Optional[np.ndarray] = None) -> np.ndarray:
    """The exact values of ``codes`` in ``fmt``, as float32 (default) or float64.

    ``codes`` must have ``fmt.storage_dtype`` (an ml_dtypes.bfloat16 array is accepted as
    BF16 codes). Every value of every format is exact in float32.
    """
    if not isinstance(fmt, Format):
        _check_format(fmt)
    try:
        dt, okind = _DEQ_DTYPES[dtype]  # (the usual spellings: no dtype to build)
    except (KeyError, TypeError):
        dt, okind = _deq_dtype(dtype)
    isa, threads, ctup = _config.isa(), _config.threads(), _fmt_info(fmt)[1]
    got = _numerics.convert_plain(1, codes, out, ctup, dt, okind, 0, 0, False, isa, threads)
    if got is not None:  # (the common call: see quantize)
        return got[0]
    c = _codes(codes, fmt)
    dst = _dest(out, c.shape, dt)
    if c.size:
        n = c.size
        dst, _ = _run(lambda d: _numerics.dequantize(c, d, okind, n, ctup, isa, threads), dst)
    return _deliver(dst, out)


def _deq_dtype(dtype: Any) -> Tuple[np.dtype[Any], int]:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from None
    if dt == _F32_DT:
        return _F32_DT, _F32
    if dt == _F64_DT:
        return _F64_DT, _F64
    raise ValueError(f"dtype: expected float32 or float64, got {dt}")


_DEQ_DTYPES = {d: _deq_dtype(d) for d in (np.float32, np.float64, _F32_DT, _F64_DT,
                                          "float32", "float64")}


def _fits_bf16(fmt: Format) -> bool:
    return fmt.name == "bf16" or (fmt.nbits == 8)


def fake_quantize(x: Any, fmt: Format, *, rounding: str = "nearest",
                  seed: Optional[int] = None, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``dequantize(quantize(x, fmt, ...), fmt)`` in one pass, in ``x``'s float dtype.

    What quantization-aware training calls. float32 and float64 inputs keep their dtype; a
    bfloat16 input gives bfloat16 for formats whose values are all bfloat16 values (BF16,
    CFloat8) and is refused for the others (cast it to float32 first). ``out``: an optional
    array of ``x``'s dtype and shape to write into (``x`` itself is allowed: in place); a
    preallocated output saves the page faults of a fresh one.
    """
    if not isinstance(fmt, Format):
        _check_format(fmt)
    mode, seed_ = _check_rounding(rounding, seed)
    isa, threads, ctup = _config.isa(), _config.threads(), _fmt_info(fmt)[1]
    got = _numerics.convert_plain(2, x, out, ctup, None, 0, mode, seed_, False, isa, threads)
    if got is not None:  # (the common call: see quantize)
        return got[0]
    a = np.asarray(x)
    src, kind = _source(a)
    if kind == _BF16 and not _fits_bf16(fmt):
        raise TypeError(f"x: a bfloat16 input cannot hold every {fmt!r} value; "
                        "pass x.astype(np.float32)")
    outv = out
    if out is not None and kind == _BF16:
        _check_out(out, src.shape, a.dtype)
        outv = out.view(np.uint16)  # (a bfloat16 array exports no buffer)
    dst = _dest(outv, src.shape, src.dtype)
    if src.size:
        n = src.size
        dst, _ = _run(lambda d: _numerics.fake_quantize(src, kind, d, n, ctup, mode, seed_, isa,
                                                        threads), dst)
    if out is not None:
        _deliver(dst, outv)
        return out
    return dst.view(a.dtype) if kind == _BF16 else dst


def _arith(op: str, operands: Tuple[Any, ...], fmt: Format, rounding: str, seed: Optional[int],
           out: Optional[np.ndarray], return_flags: bool
           ) -> Union[np.ndarray, Tuple[np.ndarray, Flags]]:
    if not isinstance(fmt, Format):
        _check_format(fmt)
    mode, seed_ = _check_rounding(rounding, seed)
    dtype, ctup = _fmt_info(fmt)
    opc, isa, threads = _OPS[op], _config.isa(), _config.threads()
    want = bool(return_flags)  # (uncounted, nearest BF16 skips tests only flags need)
    table = dtype.itemsize == 1 and not want and mode != 1 and opc != 3  # (_LUT_MIN)
    # The common call, arrays of the code type and of one shape, in one step (the glue
    # checks that it is one, and otherwise computes nothing: the general path below).
    got = _numerics.arith_plain(opc, operands, out, ctup, dtype, mode, seed_, want, isa,
                                threads, _LUT_MIN - 1 if table else _NO_LIMIT)
    if got is not None:
        return (got[0], Flags(*got[1])) if return_flags else got[0]
    a, b = _codes(operands[0], fmt, "a"), _codes(operands[1], fmt, "b")
    three = len(operands) == 3
    c = _codes(operands[2], fmt, "c") if three else a
    shape = a.shape
    if b.shape != shape or c.shape != shape:  # (equal shapes: nothing to do)
        arrays: Tuple[np.ndarray, ...] = (a, b, c) if three else (a, b)
        try:
            arrays = tuple(np.asarray(v, order="C") for v in np.broadcast_arrays(*arrays))
        except ValueError:
            shapes = ", ".join(str(v.shape) for v in arrays)
            raise ValueError(f"a, b{', c' if three else ''}: shapes {shapes} do "
                             "not broadcast together") from None
        a, b = arrays[0], arrays[1]
        c = arrays[2] if three else a
        shape = a.shape
    dst = _dest(out, shape, dtype)
    flags = (0, 0, 0, 0)
    if dst.size:
        n = dst.size
        if table and n >= _LUT_MIN:
            lut = _lut(fmt, opc, mode, isa)
            dst, _ = _run(lambda d: _numerics.lut2(lut, a, b, d, n, threads), dst)
        else:
            dst, flags = _run(lambda d: _numerics.arith(opc, a, b, c, d, n, ctup, mode, seed_,
                                                        want, isa, threads), dst)
    dst = _deliver(dst, out)
    return (dst, Flags(*flags)) if return_flags else dst


#: 8-bit add/sub/mul of at least this many elements, rounded to nearest or toward zero and
#: without flags, look their results up in a table of every pair of codes (_lut), built by
#: the kernels once per (format, op, rounding, tier): as long as computing 65,536 results.
_LUT_MIN = 1 << 16
_NO_LIMIT = 1 << 62


@functools.lru_cache(maxsize=32)
def _lut(fmt: Format, opc: int, mode: int, isa: int) -> np.ndarray:
    """The codes of op on every pair of fmt's 8-bit codes, at index a << 8 | b: the results
    of tier isa's kernel, so a lookup gives its bits. 64 KiB, over immutable bytes (NumPy
    refuses to make it writable); the 32 most recently used are kept. Threads that ask for
    the same new table at once may each build it (the same bits; one is kept)."""
    a = np.repeat(np.arange(256, dtype=np.uint8), 256)
    b = np.tile(np.arange(256, dtype=np.uint8), 256)
    table = np.empty(1 << 16, np.uint8)
    got = _numerics.arith(opc, a, b, a, table, 1 << 16, _fmt_info(fmt)[1], mode, 0, False,
                          isa, 1)
    assert got is not None  # (a new array overlaps nothing)
    return np.frombuffer(table.tobytes(), np.uint8)


def add(a: Any, b: Any, fmt: Format, *, rounding: str = "nearest", seed: Optional[int] = None,
        out: Optional[np.ndarray] = None, return_flags: bool = False
        ) -> Union[np.ndarray, Tuple[np.ndarray, Flags]]:
    """``a + b`` on code arrays of ``fmt`` (NumPy broadcasting), the exact sum correctly
    rounded into ``fmt`` (SPEC section 4). Stochastic random numbers follow the flat C-order
    index of the broadcast result."""
    return _arith("add", (a, b), fmt, rounding, seed, out, return_flags)


def sub(a: Any, b: Any, fmt: Format, *, rounding: str = "nearest", seed: Optional[int] = None,
        out: Optional[np.ndarray] = None, return_flags: bool = False
        ) -> Union[np.ndarray, Tuple[np.ndarray, Flags]]:
    """``a - b`` on code arrays of ``fmt``, correctly rounded (see :func:`add`)."""
    return _arith("sub", (a, b), fmt, rounding, seed, out, return_flags)


def mul(a: Any, b: Any, fmt: Format, *, rounding: str = "nearest", seed: Optional[int] = None,
        out: Optional[np.ndarray] = None, return_flags: bool = False
        ) -> Union[np.ndarray, Tuple[np.ndarray, Flags]]:
    """``a * b`` on code arrays of ``fmt``, correctly rounded (see :func:`add`)."""
    return _arith("mul", (a, b), fmt, rounding, seed, out, return_flags)


def fma(a: Any, b: Any, c: Any, fmt: Format, *, rounding: str = "nearest",
        seed: Optional[int] = None, out: Optional[np.ndarray] = None, return_flags: bool = False
        ) -> Union[np.ndarray, Tuple[np.ndarray, Flags]]:
    """``a * b + c`` with a single rounding, on code arrays of ``fmt`` (see :func:`add`)."""
    return _arith("fma", (a, b, c), fmt, rounding, seed, out, return_flags)


def _max_abs(x: Any, name: str = "x") -> float:
    """max|x| of a float32, float64 or bfloat16 array in one pass (0.0 when empty; NaN or
    Inf when x holds one): the threaded kernel of choose_bias, also the amax of the torch
    recipes. Any strides: a view whose axes can be permuted into C order (a transpose) is
    read in place; max|x| does not depend on the order."""
    src, kind = _source(_memory_order(np.asarray(x))[0], name)
    if src.size == 0:
        return 0.0
    return float(_numerics.maxabs(src, kind, src.size, _config.threads()))


def choose_bias(x: Any, family: str, *, margin: int = 0) -> int:
    """The largest bias (0..63) of ``family`` whose max is at least ``max|x| * 2**margin``.

    So nothing in ``x`` overflows, with ``margin`` binades of headroom: the per-tensor
    scale FP8 training picks. ``family`` is ``"cfloat8_143"``, ``"cfloat8_152"`` or
    ``"shp"``. An all-zero ``x`` gives 63. Raises ValueError when even bias 0 is too small,
    or when ``x`` holds NaN or Inf.
    """
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"family: expected one of {', '.join(map(repr, FAMILIES))}, "
                         f"got {family!r}")
    try:
        margin = operator.index(margin)
    except TypeError:
        raise TypeError(f"margin: expected an int, got {type(margin).__name__}") from None
    top = _max_abs(x)
    if not math.isfinite(top):
        raise ValueError("x: contains NaN or Inf; no bias makes it representable")
    if top == 0.0:
        return 63
    try:
        need = math.ldexp(top, margin)
    except OverflowError:  # a margin of thousands of binades: no bias can hold it
        need = math.inf
    bias = _largest_bias(need, *_BIAS_FAMILY[family])
    if bias < 0:
        raise ValueError(f"x: max|x| * 2**margin = {need!r} exceeds {family}'s largest value even "
                         f"at bias 0 ({FAMILIES[family](0).max!r})")
    return bias


# family -> (largest exponent field, mantissa bits): every family of choose_bias has no
# Inf/NaN, so its max at bias b is (2 - 2**-m) * 2**(emax - b).
_BIAS_FAMILY = {"cfloat8_143": (15, 3), "cfloat8_152": (31, 2), "shp": (31, 10)}


def _largest_bias(need: float, emax: int, m: int) -> int:
    """The largest b <= 63 with (2 - 2**-m) * 2**(emax - b) >= need (need >= 0), or -1.

    With need = fr * 2**ex (frexp, 0.5 <= fr < 1) the condition reads
    (1 - 2**-(m+1)) * 2**(emax + 1 - b) >= fr * 2**ex: when fr <= 1 - 2**-(m+1) it holds iff
    emax + 1 - b >= ex, otherwise iff emax + 1 - b > ex. Both sides are exact binary
    fractions, so the comparison is exact; max decreases with b, so the largest such b is
    the answer of the loop over the 64 biases this replaces.
    """
    if need == 0.0:
        return 63
    if need == math.inf:
        return -1
    fr, ex = math.frexp(need)
    b = emax + 1 - ex - (fr > 1.0 - math.ldexp(1.0, -(m + 1)))
    return min(b, 63) if b >= 0 else -1
