"""PyTorch integration: D1 numerics inside a real training loop (``pip install ".[torch]"``).

This module is the only place the package imports ``torch``. It gives

* **tensors in and out** for :func:`quantize`, :func:`dequantize`, :func:`fake_quantize`,
  :func:`gemm` and the arithmetic (:func:`add`, :func:`sub`, :func:`mul`, :func:`fma`): the
  same numerics as the NumPy API of the same name, bit for bit, on CPU tensors of any
  strides. Results are tensors that share memory with the kernels' output buffers
  (``torch.from_numpy``, no copy); ``out=`` takes tensors;
* **autograd**: :func:`fake_quantize` with a straight-through estimator and a
  differentiable :func:`gemm` whose two backward products are D1 GEMMs too;
* a :class:`Recipe` (formats of the forward operands and of the gradients, the per-tensor
  bias policy, the GEMM order), :class:`D1Linear` (a drop-in ``nn.Linear``),
  :func:`convert` (swaps a model's Linear layers in place), :func:`cached_weights` (each
  layer rounds its weight once while it is unchanged: inference, microbatches) and
  :class:`SROptimizer` (weights kept in a format, each update rounded stochastically and
  reproducibly).

Tensors and dtypes
------------------
*Values* (``x`` of :func:`quantize` and :func:`fake_quantize`, float operands of
:func:`gemm`): float32, float64 and bfloat16 tensors are read in place (a bfloat16 tensor is
viewed as ``ml_dtypes.bfloat16``); float16 and the float8 types are first widened to float32
by torch (exact, one copy), the float8 types with their own (OCP) meaning.

*Codes* (what :func:`quantize` returns, what :func:`dequantize` and the arithmetic take):
uint8 tensors for the 8-bit formats, uint16 tensors for BF16/SHP/UHP (int16 on a torch
without uint16), float32 for FP32. int8/int16 tensors are accepted as codes (their bits), and
a bfloat16 tensor as BF16 codes, as the NumPy API accepts ``ml_dtypes.bfloat16``. A float8
tensor is never taken as codes: its bits mean an OCP float8 value, not a CFloat8 code (pass
``t.view(torch.uint8)`` for the bits, or the tensor itself to :func:`quantize` for its
values). ``codes.view(torch.bfloat16)`` turns BF16 codes into a bfloat16 tensor (no copy).

A tensor on another device (CUDA, meta) is a ValueError naming the argument: the kernels
emulate the D1 on this CPU. Sparse and complex tensors are refused likewise.

The GEMM order
--------------
``Recipe(order=...)`` and ``gemm(..., order=...)`` pass ``order=`` to
:func:`dojo_kernels.gemm` **only when it is not None**, so this module works with a
``dojo_kernels.gemm`` that has no ``order`` keyword (then asking for one is a ValueError)
and with one that has it (``"amx"`` by default there, or ``"vdpbf16ps"``).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import (Any, Callable, Deque, Dict, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple, Union)

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.weak import WeakIdKeyDictionary

from .. import numerics as _nx
from .formats import BF16, FAMILIES, Format
from ..gemm import GemmPlan, plan_gemm
from ..gemm import gemm as _dk_gemm

_ml_dtypes: Any
try:  # a dependency of the [torch] extra; only bfloat16 tensors need it
    _ml_dtypes = importlib.import_module("ml_dtypes")
except ImportError:  # pragma: no cover - the extra installs it
    _ml_dtypes = None

__all__ = ["quantize", "dequantize", "fake_quantize", "gemm", "add", "sub", "mul", "fma",
           "Recipe", "RECIPES", "AmaxHistory", "DelayedScaling", "D1Linear", "convert",
           "cached_weights", "SROptimizer", "step_seed", "STE_MODES"]

FormatLike = Union[Format, str]
STE_MODES = ("clip", "identity")

_U16: Optional[torch.dtype] = getattr(torch, "uint16", None)
_FLOAT8 = tuple(getattr(torch, n) for n in (
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu")
    if hasattr(torch, n))
_NP_OF = {torch.float32: np.float32, torch.float64: np.float64, torch.uint8: np.uint8,
          torch.int8: np.uint8, torch.int16: np.uint16}


# --- tensors <-> arrays ------------------------------------------------------------------
def _tensor(t: Any, name: str) -> torch.Tensor:
    """t as a detached, dense CPU tensor with no lazy conj/neg bit (no copy)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got a tensor on {t.device}; "
                         f"dojo_kernels emulates the D1 on this CPU: pass {name}.cpu()")
    if t.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    if t.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got {t.dtype}")
    return t.detach().resolve_conj().resolve_neg()


def _bf16_np(t: torch.Tensor) -> np.ndarray:
    if _ml_dtypes is None:  # pragma: no cover - the [torch] extra installs ml_dtypes
        raise ImportError("bfloat16 tensors need ml_dtypes: pip install 'dojo_kernels[torch]'")
    return t.view(torch.int16).numpy().view(_ml_dtypes.bfloat16)


def _values(x: Any, name: str) -> np.ndarray:
    """A float tensor as a float32/float64/ml_dtypes.bfloat16 array (in place when it can)."""
    t = _tensor(x, name)
    dt = t.dtype
    if dt in (torch.float32, torch.float64):
        return t.numpy()
    if dt == torch.bfloat16:
        return _bf16_np(t)
    if dt == torch.float16 or dt in _FLOAT8:
        return t.to(torch.float32).numpy()   # exact widening
    raise TypeError(f"{name}: expected a floating-point tensor (float32/64, bfloat16, float16 "
                    f"or float8), got {dt}")


def _codes_np(c: Any, name: str) -> np.ndarray:
    """A code tensor as an unsigned (or float32, for FP32) array of the same bits."""
    t = _tensor(c, name)
    dt = t.dtype
    if dt in _FLOAT8:
        raise TypeError(f"{name}: a {dt} tensor holds OCP float8 values, not codes of a Dojo "
                        f"format; pass {name}.view(torch.uint8) for its bits, or quantize() "
                        "its values")
    if dt == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if _U16 is not None and dt == _U16:
        return t.numpy()
    if dt in _NP_OF:
        a = t.numpy()
        return a.view(_NP_OF[dt]) if a.dtype != _NP_OF[dt] else a
    raise TypeError(f"{name}: expected a code tensor (uint8/int8 for 8-bit formats, "
                    f"uint16/int16/bfloat16 for 16-bit formats, float32 for FP32), got {dt}")


def _from_np(a: np.ndarray) -> torch.Tensor:
    """The array as a tensor sharing its memory."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    if a.dtype == np.uint16 and _U16 is None:  # pragma: no cover - torch < 2.3
        return torch.from_numpy(a.view(np.int16))
    return torch.from_numpy(a)


def _out_np(out: Any, want: np.dtype[Any], name: str = "out") -> np.ndarray:
    """An out= tensor as an array of dtype ``want`` sharing its memory."""
    t = out
    if isinstance(t, torch.Tensor) and t.requires_grad:
        raise ValueError(f"{name}: a tensor that requires grad cannot be written in place")
    t = _tensor(t, name)
    if want.kind == "u":
        a = _codes_np(t, name)
    elif t.dtype in (torch.float32, torch.float64):
        a = t.numpy()
    else:
        raise TypeError(f"{name}: expected a {want} tensor, got {t.dtype}")
    if a.dtype != want:
        raise TypeError(f"{name}: expected a tensor of {want} elements, got {t.dtype}")
    return a


# --- the NumPy API, tensors in and out ---------------------------------------------------
def quantize(x: Any, fmt: Format, *, rounding: str = "nearest", seed: Optional[int] = None,
             out: Optional[torch.Tensor] = None, return_flags: bool = False
             ) -> Union[torch.Tensor, Tuple[torch.Tensor, "_nx.Flags"]]:
    """:func:`dojo_kernels.quantize` on a tensor: the codes of ``x`` rounded into ``fmt``.

    Returns a uint8 (8-bit formats), uint16 (16-bit) or float32 (FP32) tensor sharing memory
    with the kernel's output, or ``out`` (a tensor of those elements, or int8/int16/bfloat16
    of the same size, written in place). ``rounding``, ``seed``, ``return_flags`` as in the
    NumPy API; stochastic rounding follows the flat C-order index of ``x``'s shape, never its
    strides.
    """
    src = _values(x, "x")
    fmt = _nx._check_format(fmt)
    o = None if out is None else _out_np(out, _nx._storage(fmt))
    if return_flags:   # flags cost the kernel a little: only when asked
        codes, flags = _nx.quantize(src, fmt, rounding=rounding, seed=seed, out=o,
                                    return_flags=True)
    else:
        codes = _nx.quantize(src, fmt, rounding=rounding, seed=seed, out=o)
    t = out if out is not None else _from_np(codes)
    return (t, flags) if return_flags else t


def dequantize(codes: Any, fmt: Format, *, dtype: Any = torch.float32,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dojo_kernels.dequantize` on a code tensor: the exact values, float32 (default)
    or float64 (``dtype`` a torch or NumPy dtype), or written into ``out``."""
    npdt = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype, dtype)
    c = _codes_np(codes, "codes")
    o = None
    if out is not None:
        try:
            want = np.dtype(npdt)
        except TypeError:
            want = np.dtype(np.float32)   # the NumPy API names the bad dtype below
        o = _out_np(out, want)
    res = _nx.dequantize(c, fmt, dtype=npdt, out=o)
    return out if out is not None else _from_np(res)


def _range_mask(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """|x| <= fmt.max, compared exactly (every finite format value is a float32)."""
    v = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    return v.abs() <= fmt.max


class _FakeQuantizeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fmt: Format, rounding: str, seed: Optional[int],
                ste: str) -> torch.Tensor:
        y = _from_np(_nx.fake_quantize(_values(x, "x"), fmt, rounding=rounding, seed=seed))
        ctx.fmt, ctx.ste, ctx.in_dtype = fmt, ste, x.dtype
        if ste == "clip":
            ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        g = grads[0]
        if ctx.ste == "clip":
            (x,) = ctx.saved_tensors
            g = g * _range_mask(x, ctx.fmt).to(g.dtype)
        return g.to(ctx.in_dtype), None, None, None, None


def fake_quantize(x: Any, fmt: Format, *, rounding: str = "nearest",
                  seed: Optional[int] = None, ste: str = "clip") -> torch.Tensor:
    """``dequantize(quantize(x, fmt))`` in one pass, differentiable (straight-through).

    The values are those of :func:`dojo_kernels.fake_quantize` bit for bit: float32 and
    float64 tensors keep their dtype, bfloat16 stays bfloat16 for BF16 and CFloat8 (refused
    for SHP/UHP, whose values bfloat16 cannot hold), float16 and float8 give float32.

    The backward pass is a straight-through estimator. Inside the format's range,
    ``|x| <= fmt.max`` (underflow to zero included), the gradient passes unchanged. Outside
    it (values that saturate to ``+-max`` or round to Inf, and NaN) ``ste`` decides:
    ``"clip"`` (default) gives zero there, as the derivative of the saturating function;
    ``"identity"`` passes the gradient everywhere. The gradient has ``x``'s dtype.
    """
    fmt = _nx._check_format(fmt)
    if ste not in STE_MODES:
        raise ValueError(f"ste: expected one of {', '.join(map(repr, STE_MODES))}, got {ste!r}")
    _tensor(x, "x")   # the argument checks, before autograd sees it
    y: torch.Tensor = _FakeQuantizeFn.apply(  # type: ignore[no-untyped-call]
        x, fmt, rounding, seed, ste)
    return y


def _arith(op: Callable[..., Any], names: Sequence[str], operands: Sequence[Any], fmt: Format,
           rounding: str, seed: Optional[int], out: Optional[torch.Tensor],
           return_flags: bool) -> Union[torch.Tensor, Tuple[torch.Tensor, "_nx.Flags"]]:
    fmt = _nx._check_format(fmt)
    arrays = [_codes_np(v, n) for v, n in zip(operands, names)]
    o = None if out is None else _out_np(out, _nx._storage(fmt))
    got = op(*arrays, fmt, rounding=rounding, seed=seed, out=o, return_flags=return_flags)
    if return_flags:
        res, flags = got
        return (out if out is not None else _from_np(res)), flags
    return out if out is not None else _from_np(got)


def add(a: Any, b: Any, fmt: Format, *, rounding: str = "nearest", seed: Optional[int] = None,
        out: Optional[torch.Tensor] = None, return_flags: bool = False
        ) -> Union[torch.Tensor, Tuple[torch.Tensor, "_nx.Flags"]]:
    """:func:`dojo_kernels.add` on code tensors (broadcasting), the result a code tensor."""
    return _arith(_nx.add, ("a", "b"), (a, b), fmt, rounding, seed, out, return_flags)


def sub(a: Any, b: Any, fmt: Format, *, rounding: str = "nearest", seed: Optional[int] = None,
        out: Optional[torch.Tensor] = None, return_flags: bool = False
        ) -> Union[torch.Tensor, Tuple[torch.Tensor, "_nx.Flags"]]:
    """:func:`dojo_kernels.sub` on code tensors, the result a code tensor."""
    return _arith(_nx.sub, ("a", "b"), (a, b), fmt, rounding, seed, out, return_flags)


def mul(a: Any, b: Any, fmt: Format, *, rounding: str = "nearest", seed: Optional[int] = None,
        out: Optional[torch.Tensor] = None, return_flags: bool = False
        ) -> Union[torch.Tensor, Tuple[torch.Tensor, "_nx.Flags"]]:
    """:func:`dojo_kernels.mul` on code tensors, the result a code tensor."""
    return _arith(_nx.mul, ("a", "b"), (a, b), fmt, rounding, seed, out, return_flags)


def fma(a: Any, b: Any, c: Any, fmt: Format, *, rounding: str = "nearest",
        seed: Optional[int] = None, out: Optional[torch.Tensor] = None,
        return_flags: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, "_nx.Flags"]]:
    """:func:`dojo_kernels.fma` on code tensors, the result a code tensor."""
    return _arith(_nx.fma, ("a", "b", "c"), (a, b, c), fmt, rounding, seed, out, return_flags)


# --- recipes and per-tensor scaling ------------------------------------------------------
BIAS_POLICIES = ("current", "delayed")


def _format_like(v: Any, name: str) -> FormatLike:
    if isinstance(v, Format):
        if v.name not in ("bf16", "cfloat8_143", "cfloat8_152"):
            raise ValueError(f"{name}: D1 GEMM operands are BF16 or CFloat8, got {v!r}")
        return v
    if isinstance(v, str):
        key = v.lower()
        if key == "bf16":
            return BF16
        if key in ("cfloat8_143", "cfloat8_152"):
            return key
        raise ValueError(f"{name}: expected a Format or one of 'bf16', 'cfloat8_143', "
                         f"'cfloat8_152', got {v!r}")
    raise TypeError(f"{name}: expected a Format or a format name, got {type(v).__name__}")


@dataclass(frozen=True)
class Recipe:
    """How a layer's GEMMs are done in D1 numerics.

    Parameters
    ----------
    forward : format of the forward operands (activations and weights): a :class:`Format`
        (BF16, or a CFloat8 with a fixed bias) or a CFloat8 family name, ``"cfloat8_143"``
        (default), ``"cfloat8_152"``, whose per-tensor bias is chosen by ``bias_policy``.
        ``"bf16"`` means BF16.
    gradient : format of the output gradients in the two backward GEMMs, likewise (default
        ``"cfloat8_152"``: wider range, WP's suggested use for gradients). The other operand
        of each backward GEMM (the weights, the activations) keeps its forward codes.
    bias_policy : how a family's per-tensor exponent bias is chosen, every call:
        ``"current"`` (default): :func:`dojo_kernels.choose_bias` of the tensor itself, the
        largest bias whose max holds ``max|x| * 2**margin`` (nothing overflows);
        ``"delayed"``: from the largest amax of the same tensor over the last ``history``
        calls (as Transformer Engine's delayed scaling does; see :class:`AmaxHistory`);
        values that outgrow the history saturate.
    margin : binades of headroom (int >= 0) for the bias choice.
    history : amax history length for ``"delayed"`` (default 16).
    order : the D1 GEMM accumulation order passed to :func:`dojo_kernels.gemm` as
        ``order=`` when not None (default None: the kernel's own default, ``"amx"``). The
        orders give different bits; on a CPU with AVX512_BF16 and no AMX (AMD Zen 4)
        ``"vdpbf16ps"`` is about twice as fast (docs/torch.md, Cost).
    """

    forward: FormatLike = "cfloat8_143"
    gradient: FormatLike = "cfloat8_152"
    bias_policy: str = "current"
    margin: int = 0
    history: int = 16
    order: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "forward", _format_like(self.forward, "forward"))
        object.__setattr__(self, "gradient", _format_like(self.gradient, "gradient"))
        if self.bias_policy not in BIAS_POLICIES:
            raise ValueError(f"bias_policy: expected one of {', '.join(map(repr, BIAS_POLICIES))}"
                             f", got {self.bias_policy!r}")
        for name in ("margin", "history"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        if self.margin < 0:
            raise ValueError(f"margin: expected >= 0, got {self.margin}")
        if self.history < 1:
            raise ValueError(f"history: expected >= 1, got {self.history}")
        if self.order is not None and not isinstance(self.order, str):
            raise TypeError(f"order: expected a str or None, got {type(self.order).__name__}")


#: The recipes of ``dojo-kernels train`` by name (fp32 is plain torch, no recipe).
RECIPES: Dict[str, Recipe] = {
    "bf16": Recipe(forward=BF16, gradient=BF16),
    "cfloat8": Recipe(),
    "cfloat8_delayed": Recipe(bias_policy="delayed"),
}


class AmaxHistory:
    """The amax (``max|x|``) of one tensor over its last ``length`` calls.

    The delayed bias of a call is ``choose_bias`` of the largest amax in the history (of the
    calls before it; the first call, with an empty history, uses its own amax), with the
    recipe's margin; then the call's own amax is pushed, dropping the oldest beyond
    ``length``.
    """

    def __init__(self, length: int = 16) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length: expected an int >= 1, got {length!r}")
        self.values: Deque[float] = deque(maxlen=length)

    def bias(self, family: str, amax: float, margin: int = 0) -> int:
        """The bias for this call, given the call's own ``amax`` (used only when empty)."""
        top = max(self.values) if self.values else amax
        return _nx.choose_bias(np.array([top], np.float64), family, margin=margin)

    def push(self, amax: float) -> None:
        """Record a call's amax."""
        self.values.append(float(amax))


class DelayedScaling:
    """The amax histories of one GEMM's tensors, by role: ``"a"``, ``"b"`` (the forward
    operands: a layer's input and weight) and ``"grad"`` (the output gradient)."""

    def __init__(self, length: int = 16) -> None:
        self.length = length
        self.histories: Dict[str, AmaxHistory] = {}

    def __getitem__(self, role: str) -> AmaxHistory:
        h = self.histories.get(role)
        if h is None:
            h = self.histories[role] = AmaxHistory(self.length)
        return h


@dataclass
class _Spec:
    """Resolved formats of one differentiable GEMM."""

    a: FormatLike
    b: FormatLike
    grad: FormatLike
    margin: int = 0
    policy: str = "current"
    scaling: Optional[DelayedScaling] = None
    order: Optional[str] = None
    formats: Dict[str, Format] = field(default_factory=dict)
    amaxes: Dict[str, float] = field(default_factory=dict)

    def resolve(self, role: str, arr: Optional[np.ndarray], amax: Optional[float] = None
                ) -> Format:
        """The format of one operand: fixed, or a family with this call's bias. ``amax``,
        when given, is ``max|arr|`` already known (a cached weight's): not measured again."""
        like = {"a": self.a, "b": self.b, "grad": self.grad}[role]
        if isinstance(like, Format):
            self.formats[role] = like
            return like
        if amax is None:
            # dojo_kernels' one-pass kernel, not a torch reduction: torch's OpenMP threads,
            # once woken, spin for milliseconds on the core the next D1 GEMM wants
            # (docs/threads.md)
            assert arr is not None
            amax = _nx._max_abs(arr)
        self.amaxes[role] = amax
        if not math.isfinite(amax):
            raise ValueError(f"{_ROLE_NAMES[role]}: contains NaN or Inf; no bias makes it "
                             "representable")
        if self.policy == "delayed":
            assert self.scaling is not None
            hist = self.scaling[role]
            bias = hist.bias(like, amax, self.margin)
            hist.push(amax)
        else:
            # choose_bias depends on max|x| alone: give it that one value (no second pass)
            try:
                bias = _nx.choose_bias(np.array([amax], np.float64), like, margin=self.margin)
            except ValueError as exc:
                raise ValueError(f"{_ROLE_NAMES[role]}: {exc}") from None
        f = FAMILIES[like](bias)
        self.formats[role] = f
        return f


_ROLE_NAMES = {"a": "a", "b": "b", "grad": "grad_output"}


# --- the differentiable GEMM -------------------------------------------------------------
_HAS_ORDER: Optional[bool] = None


def _order_kw(order: Optional[str]) -> Dict[str, Any]:
    """``{"order": order}`` when asked for, after checking dojo_kernels.gemm takes it."""
    global _HAS_ORDER
    if order is None:
        return {}
    if _HAS_ORDER is None:
        _HAS_ORDER = "order" in inspect.signature(_dk_gemm).parameters
    if not _HAS_ORDER:
        raise ValueError(f"order: this dojo_kernels.gemm has no order= keyword (asked for "
                         f"{order!r}); use order=None")
    return {"order": order}


def _beta_kw(beta: Optional[float]) -> Dict[str, Any]:
    return {} if beta is None else {"beta": beta}


def _codes_for(x: torch.Tensor, arr: np.ndarray, spec: _Spec, role: str, name: str
               ) -> Tuple[np.ndarray, Format]:
    """An operand as codes of its format: float tensors are rounded (nearest), integer
    tensors (and bfloat16 for a fixed BF16) are taken as codes."""
    like = {"a": spec.a, "b": spec.b, "grad": spec.grad}[role]
    if arr.dtype.kind in "ui":
        if not isinstance(like, Format):
            raise TypeError(f"{name}: code tensors need a fixed format (a Format), not the "
                            f"family {like!r} whose bias is chosen from values")
        spec.formats[role] = like
        return arr, like
    f = spec.resolve(role, arr)
    return _round_codes(arr, f), f


def _round_codes(arr: np.ndarray, f: Format) -> np.ndarray:
    """``arr`` rounded (nearest) into ``f``."""
    if arr.ndim >= 2 and not arr.flags.c_contiguous and _t(arr).flags.c_contiguous:
        # a transposed view (a Linear's W^T): round it in its own layout, no transposing
        # copy; nearest rounding is elementwise, so the codes are the same
        return _t(_nx.quantize(_t(arr), f))
    return _nx.quantize(arr, f)


# --- the weight cache ------------------------------------------------------------------
class _CachedWeight(NamedTuple):
    """One weight's rounding into one format (or family): the state the weight was read in,
    its storage (held, so that its address is not reused while the entry lives), its amax
    (a family's; None for a fixed format), the format and the codes. Replaced whole, never
    changed."""

    state: Tuple[Any, ...]
    storage: torch.Tensor
    amax: Optional[float]
    fmt: Format
    codes: np.ndarray


# cached_weights' state: how deep its contexts are nested, the entries (per weight, held
# weakly: a weight that dies takes its entries along; then per format or family name), and
# the optimizer hook that drops a stepped optimizer's weights. Changed under _cache_lock.
_cache_lock = threading.Lock()
_cache_depth = 0
_cache_entries: Any = None          # a torch.utils.weak.WeakIdKeyDictionary while open
_cache_hook: Any = None


def _weight_state(w: torch.Tensor, view: torch.Tensor) -> Tuple[Any, ...]:
    """What a cached rounding of ``view`` (a view of the parameter ``w``) depends on: the
    version counter (torch bumps it at every in-place write through ``w`` or a view of it),
    the storage, layout and dtype."""
    return (w._version, view.data_ptr(), tuple(view.shape), tuple(view.stride()), view.dtype)


def _drop_stepped(optimizer: Any, args: Any, kwargs: Any) -> None:
    """Optimizer step post-hook: a step writes its parameters, and fused optimizers do it
    without bumping their version counters."""
    with _cache_lock:
        if _cache_entries is None:
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                _cache_entries.pop(p, None)


def _weight_codes(w: torch.Tensor, view: torch.Tensor, spec: _Spec, name: str
                  ) -> Tuple[np.ndarray, Format]:
    """``_codes_for`` the operand ``view`` of the parameter ``w``, through the cache of
    :func:`cached_weights` when one is open and ``w`` can be cached (a leaf: a weight
    computed per call, as by a parametrization, is not; nor an inference tensor, which has
    no version counter). A hit skips the amax pass and the rounding; the bias is still
    chosen every call from the cached amax by the recipe's policy, so a delayed history is
    pushed as without the cache, and a changed bias rounds again."""
    entries = _cache_entries
    if entries is None or not w.is_leaf or w.is_inference():
        return _codes_for(view, _operand_np(view, name), spec, "b", name)
    like = spec.b
    state = _weight_state(w, view)
    with _cache_lock:
        e = entries.get(w, {}).get(like)
    if e is None or e.state != state:
        arr = _operand_np(view, name)
        codes, f = _codes_for(view, arr, spec, "b", name)
        if codes is arr:             # codes already: nothing to cache
            return codes, f
        amax = None if isinstance(like, Format) else spec.amaxes["b"]
        e = _CachedWeight(state, view.detach(), amax, f, codes)
    else:
        f = spec.resolve("b", None, e.amax)
        if f == e.fmt:
            return e.codes, f
        # the policy chose another bias (a delayed history moved on)
        e = e._replace(fmt=f, codes=_round_codes(_operand_np(view, name), f))
    e.codes.flags.writeable = False
    with _cache_lock:
        if _cache_entries is entries:
            entries.setdefault(w, {})[like] = e
    return e.codes, f


@contextlib.contextmanager
def cached_weights() -> Iterator[None]:
    """Round each :class:`D1Linear` weight once, not at every call, inside this context.

    Every ``D1Linear`` call rounds its weight into the recipe's format (for a CFloat8 family
    after an amax pass over it, for the per-tensor bias). For a batch-1 forward of a 4096 x
    4096 layer that is most of the call. Inside ``with cached_weights():`` a layer keeps its
    weight's amax and codes (per format or family) and reuses them while the weight is
    unchanged: the same parameter, storage, shape, strides and dtype, and the same version
    counter (``weight._version``, which torch bumps at every in-place write through the
    parameter or a view of it: ``load_state_dict``, ``copy_``, an in-place op under
    ``no_grad``, the for-loop and foreach optimizers; :class:`SROptimizer` bumps it after its
    writes). The step of any ``torch.optim`` optimizer (fused ones included, which write
    without bumping it) drops its parameters' entries, through torch's global optimizer
    step hook. The results are the uncached ones, bit for bit: the bias is still chosen at
    every call by the recipe's policy from the weight's amax (a ``"delayed"`` history is
    pushed as without the cache), and a changed bias rounds the weight again.

    Not seen, so not to be done inside the context: writes through a tensor that does not
    share the parameter's version counter (``weight.data.add_(...)``, a NumPy view of the
    weight, a flat buffer the weight was assigned from) outside an optimizer's step. Weights
    that are not leaves (computed at every call, as by ``torch.nn.utils.parametrize``) and
    inference tensors (no version counter) are not cached. The codes are held until the
    outermost context exits or the weight is freed: one byte per weight element for
    CFloat8, two for BF16. Contexts nest; the cache is process-wide (threads share it).
    Inputs and gradients are never cached.
    """
    global _cache_depth, _cache_entries, _cache_hook
    with _cache_lock:
        if _cache_depth == 0:
            _cache_entries = WeakIdKeyDictionary()
            _cache_hook = register_optimizer_step_post_hook(_drop_stepped)
        _cache_depth += 1
    try:
        yield
    finally:
        with _cache_lock:
            _cache_depth -= 1
            if _cache_depth == 0:
                _cache_hook.remove()
                _cache_entries = _cache_hook = None


def _operand_np(x: Any, name: str) -> np.ndarray:
    t = _tensor(x, name)
    if t.is_floating_point():
        return _values(t, name)
    return _codes_np(t, name)


def _sum_to(g: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """g summed over the axes that broadcasting ``shape`` to g's shape expanded (what
    torch's ``sum_to_size`` does), in g's dtype, as a new array of ``shape``."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape)
                                      if s == 1 and g.shape[lead + i] != 1)
    return np.asarray(np.sum(g, axis=axes, dtype=g.dtype)).reshape(shape)  # a new array


def _t(c: np.ndarray) -> np.ndarray:
    """Swap the last two axes (a view)."""
    return np.swapaxes(c, -1, -2)


class _GemmFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, c: Optional[torch.Tensor],
                ca: np.ndarray, cb: np.ndarray, spec: _Spec, beta: Optional[float],
                c_np: Optional[np.ndarray]) -> torch.Tensor:
        fa, fb = spec.formats["a"], spec.formats["b"]
        y = _dk_gemm(ca, cb, a_format=fa, b_format=fb, c=c_np, **_beta_kw(beta),
                     **_order_kw(spec.order))
        assert isinstance(y, np.ndarray)
        ctx.ca, ctx.cb, ctx.spec, ctx.beta = ca, cb, spec, beta
        ctx.a_dtype, ctx.b_dtype = a.dtype, b.dtype
        ctx.c_shape = None if c is None else c.shape
        ctx.c_dtype = None if c is None else c.dtype
        return _from_np(y)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        g = grads[0]
        spec: _Spec = ctx.spec
        ca, cb = ctx.ca, ctx.cb
        fa, fb = spec.formats["a"], spec.formats["b"]
        need_a, need_b, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1], \
            ctx.needs_input_grad[2]
        ga = gb = gc = None
        kw = _order_kw(spec.order)
        if need_a or need_b:
            g_np = _values(g, "grad_output")
            if g_np.dtype.name != "bfloat16" and g_np.dtype != np.float64:
                g_np = np.asarray(g_np, np.float32)
            fg = spec.resolve("grad", g_np)
            cg = _nx.quantize(g_np, fg)
            if need_a:   # dA = dY B^T
                da = _dk_gemm(cg, _t(cb), a_format=fg, b_format=fb, **kw)
                assert isinstance(da, np.ndarray)
                ga = _from_np(da).to(ctx.a_dtype)
            if need_b:   # dB = A^T dY (a shared 2-D B of a 3-D A: summed over the batch)
                if cb.ndim == 2:
                    # (dY^T A)^T: the same products in the same order (same bits), computed
                    # in the layout of b's transpose, so a Linear's dW needs no transpose copy
                    a2 = ca.reshape(-1, ca.shape[-1])
                    dbt = _dk_gemm(_t(cg.reshape(-1, cg.shape[-1])), a2, a_format=fg,
                                   b_format=fa, **kw)
                    assert isinstance(dbt, np.ndarray)
                    gb = _from_np(dbt).t().to(ctx.b_dtype)
                else:
                    db = _dk_gemm(_t(ca), cg, a_format=fa, b_format=fg, **kw)
                    assert isinstance(db, np.ndarray)
                    gb = _from_np(db).to(ctx.b_dtype)
        if need_c:
            beta = 1.0 if ctx.beta is None else ctx.beta
            # dY is float32 (the GEMM's result is, and autograd hands the backward that
            # dtype): beta dY summed by NumPy on the calling thread, not by a torch
            # reduction (see _Spec.resolve), then converted to c's dtype
            gv = np.asarray(_values(g, "grad_output"), np.float32)
            if beta != 1.0:
                gv = gv * np.float32(beta)
            gc = _from_np(_sum_to(gv, tuple(ctx.c_shape))).to(ctx.c_dtype)
        return ga, gb, gc, None, None, None, None, None


def gemm(a: Any, b: Any, *, a_format: Optional[FormatLike] = None,
         b_format: Optional[FormatLike] = None, grad_format: Optional[FormatLike] = None,
         recipe: Optional[Recipe] = None, scaling: Optional[DelayedScaling] = None,
         c: Optional[torch.Tensor] = None, beta: Optional[float] = None,
         out: Optional[torch.Tensor] = None, return_plan: bool = False, machine: Any = None,
         order: Optional[str] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, GemmPlan]]:
    """:func:`dojo_kernels.gemm` on tensors, differentiable.

    ``a`` (m, k) or (batch, m, k) and ``b`` (k, n) or (batch, k, n) are float tensors
    (rounded to nearest-even into their formats) or code tensors of a fixed format (uint8 for
    CFloat8, uint16/int16/bfloat16 for BF16), any strides. The result is a float32 tensor
    sharing memory with the kernel's output (or ``out``, a float32 tensor).

    Formats, either from ``recipe`` (a :class:`Recipe`: ``recipe.forward`` for both operands,
    ``recipe.gradient`` for the output gradient, its bias policy, margin and order) or from
    ``a_format`` (default BF16), ``b_format`` (default ``a_format``) and ``grad_format``
    (default BF16), each a :class:`Format` or a CFloat8 family name whose per-call bias is
    :func:`dojo_kernels.choose_bias` of the tensor (margin 0). Not both. A recipe with
    ``bias_policy="delayed"`` keeps its amax histories in ``scaling`` (a
    :class:`DelayedScaling`, required then).

    Autograd: when ``a``, ``b`` or ``c`` requires grad, the backward pass computes
    ``dA = dY B^T`` and ``dB = A^T dY`` as D1 GEMMs: ``dY`` rounded (nearest) into the
    gradient format, ``B^T`` and ``A^T`` the same codes the forward product used. For a 3-D
    ``a`` with a 2-D ``b``, ``dB`` is one GEMM over the flattened batch. ``dC = beta dY``
    summed to ``c``'s shape (an FP32 vector op). Gradients have their input's dtype.
    ``out=`` is refused then (as torch's ``out=`` functions do).

    ``c``, ``beta``, ``return_plan``, ``machine`` as in :func:`dojo_kernels.gemm`; ``order``
    is passed on only when not None (see the module docstring).
    """
    return _gemm(a, b, a_format=a_format, b_format=b_format, grad_format=grad_format,
                 recipe=recipe, scaling=scaling, c=c, beta=beta, out=out,
                 return_plan=return_plan, machine=machine, order=order)


def _gemm(a: Any, b: Any, *, a_format: Optional[FormatLike] = None,
          b_format: Optional[FormatLike] = None, grad_format: Optional[FormatLike] = None,
          recipe: Optional[Recipe] = None, scaling: Optional[DelayedScaling] = None,
          c: Optional[torch.Tensor] = None, beta: Optional[float] = None,
          out: Optional[torch.Tensor] = None, return_plan: bool = False, machine: Any = None,
          order: Optional[str] = None, b_of: Optional[torch.Tensor] = None
          ) -> Union[torch.Tensor, Tuple[torch.Tensor, GemmPlan]]:
    """:func:`gemm`; ``b_of``, when given, is the parameter ``b`` is a view of (a layer's
    weight), whose rounding :func:`cached_weights` may reuse."""
    if recipe is not None:
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe: expected a dojo_kernels.torch.Recipe, got "
                            f"{type(recipe).__name__}")
        for name, v in (("a_format", a_format), ("b_format", b_format),
                        ("grad_format", grad_format), ("order", order)):
            if v is not None:
                raise ValueError(f"{name}: give the formats either in recipe or as keywords, "
                                 "not both")
        if recipe.bias_policy == "delayed" and not isinstance(scaling, DelayedScaling):
            raise ValueError("scaling: a recipe with bias_policy='delayed' needs a "
                             "DelayedScaling to keep its amax histories")
        spec = _Spec(recipe.forward, recipe.forward, recipe.gradient, recipe.margin,
                     recipe.bias_policy, scaling, recipe.order)
    else:
        fa_like = _format_like(BF16 if a_format is None else a_format, "a_format")
        fb_like = fa_like if b_format is None else _format_like(b_format, "b_format")
        fg_like = _format_like(BF16 if grad_format is None else grad_format, "grad_format")
        spec = _Spec(fa_like, fb_like, fg_like, order=order)
    at, bt = _tensor(a, "a"), _tensor(b, "b")
    if at.dim() not in (2, 3) or bt.dim() not in (2, 3):
        bad, t = ("a", at) if at.dim() not in (2, 3) else ("b", bt)
        raise ValueError(f"{bad}: expected a 2-D or 3-D tensor, got shape {tuple(t.shape)}")
    ca, fa = _codes_for(at, _operand_np(a, "a"), spec, "a", "a")
    if b_of is None:
        cb, fb = _codes_for(bt, _operand_np(b, "b"), spec, "b", "b")
    else:
        cb, fb = _weight_codes(b_of, bt, spec, "b")
    ct = None if c is None else _tensor(c, "c")
    c_np = None
    if ct is not None:
        c_np = ct.numpy() if ct.dtype in (torch.float32, torch.float64) else \
            ct.to(torch.float32).numpy()
    grad_needed = torch.is_grad_enabled() and any(
        isinstance(v, torch.Tensor) and v.requires_grad for v in (a, b, c))
    if grad_needed:
        if out is not None:
            raise ValueError("out: gemm with tensors that require grad cannot write into out= "
                             "(autograd); drop out=")
        if ca.ndim == 2 and cb.ndim == 3:
            raise ValueError("a, b: a 2-D a with a 3-D b is not differentiable here; "
                             "broadcast a to 3-D (a.expand(batch, -1, -1))")
        if ca.shape[-1] != cb.shape[-2]:
            raise ValueError(f"a, b: inner dimensions differ: a has k = {ca.shape[-1]}, b has "
                             f"k = {cb.shape[-2]}")
        y = _GemmFn.apply(a, b, c, ca, cb, spec, beta, c_np)  # type: ignore[no-untyped-call]
    else:
        o = None if out is None else _out_np(out, np.dtype(np.float32))
        res = _dk_gemm(ca, cb, a_format=fa, b_format=fb, c=c_np, out=o, **_beta_kw(beta),
                       **_order_kw(spec.order))
        assert isinstance(res, np.ndarray)
        y = out if out is not None else _from_np(res)
    assert isinstance(y, torch.Tensor)
    if return_plan:
        m, k, n = ca.shape[-2], ca.shape[-1], cb.shape[-1]
        if m and n and k:
            plan = plan_gemm(m, n, k, a_format=fa, b_format=fb, machine=machine)
        else:
            plan = GemmPlan.empty(m, n, k, fa, fb, machine)
        return y, plan
    return y


# --- the layer -----------------------------------------------------------------------------
class D1Linear(nn.Linear):
    """A drop-in ``nn.Linear`` whose products are D1 GEMMs under a :class:`Recipe`.

    ``y = x W^T + b``: the input (any leading dimensions, flattened to rows) and the weight
    are rounded into ``recipe.forward`` (per-tensor bias by the recipe's policy), multiplied
    with FP32 accumulation by :func:`dojo_kernels.gemm`, and the bias is added in FP32. The
    result has the input's dtype (the FP32 result rounded to nearest-even by torch when the
    input is bfloat16/float16). Backward: the two products of :func:`gemm`
    (``dX = dY W``, ``dW = dY^T X`` as ``(X^T dY)^T``, same bits) with ``dY`` in
    ``recipe.gradient``; the bias gradient is the FP32 sum of ``dY``.

    Same parameters and ``state_dict`` as ``nn.Linear`` (the delayed amax histories, in
    ``scaling``, are not saved). Each call rounds the weight again (after an amax pass for
    a CFloat8 family), unless inside :func:`cached_weights`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: Any = None, dtype: Any = None, *, recipe: Optional[Recipe] = None
                 ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.recipe = Recipe() if recipe is None else recipe
        if not isinstance(self.recipe, Recipe):
            raise TypeError(f"recipe: expected a Recipe, got {type(self.recipe).__name__}")
        self.scaling = DelayedScaling(self.recipe.history)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: Optional[Recipe] = None) -> "D1Linear":
        """A D1Linear sharing ``linear``'s parameter objects (so an optimizer built on the
        old module keeps working)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device="meta", recipe=recipe)
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        # The bias as the GEMM's addend c (the same FP32 add as y + bias, done by
        # dojo_kernels.gemm; its gradient summed by NumPy): no torch operation in the layer
        # wakes torch's spinning OpenMP threads (see _Spec.resolve). A float64 bias keeps torch's add
        # (y + bias is a float64 sum there).
        fused = self.bias is not None and self.bias.dtype != torch.float64
        y = _gemm(x2, self.weight.t(), recipe=self.recipe, scaling=self.scaling,
                  c=self.bias if fused else None, b_of=self.weight)
        assert isinstance(y, torch.Tensor)
        if self.bias is not None and not fused:
            y = y + self.bias
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe!r}"


def convert(model: nn.Module, recipe: Optional[Recipe] = None, *,
            filter: Optional[Callable[[str, nn.Module], bool]] = None) -> nn.Module:
    """Swap every ``nn.Linear`` of ``model`` (that ``filter(name, module)`` accepts, all by
    default) for a :class:`D1Linear` with ``recipe`` (default ``Recipe()``), in place, keeping
    the parameter objects. Returns ``model`` (a bare ``nn.Linear`` is returned converted,
    since it cannot be replaced in place). Layers already D1Linear are left alone."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    recipe = Recipe() if recipe is None else recipe
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a Recipe, got {type(recipe).__name__}")

    def wanted(name: str, mod: nn.Module) -> bool:
        return (isinstance(mod, nn.Linear) and not isinstance(mod, D1Linear)
                and (filter is None or bool(filter(name, mod))))

    if wanted("", model):
        assert isinstance(model, nn.Linear)
        return D1Linear.from_linear(model, recipe)
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if wanted(full, child):
                assert isinstance(child, nn.Linear)
                setattr(mod, child_name, D1Linear.from_linear(child, recipe))
    return model


# --- stochastic-rounding weight updates --------------------------------------------------
_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def step_seed(seed: int, step: int, index: int) -> int:
    """The stochastic-rounding seed of parameter ``index`` at optimizer step ``step``.

    ``index`` is the parameter's position in the optimizer's ``param_groups`` (groups in
    order, parameters in order, counting from 0); ``step`` counts :meth:`SROptimizer.step`
    calls from 1. With ``mix`` SplitMix64's output function (SPEC section 2's three
    xor-shift-multiply lines) and all arithmetic mod 2**64::

        step_seed = mix(mix(seed + step * 0x9E3779B97F4A7C15) + index * 0xD1B54A32D192ED03)

    The element ``i`` of that parameter then uses SPEC section 2's random number for this
    seed and its flat C-order index, so two runs with one seed give identical bits.
    """
    s = _mix64((seed + step * 0x9E3779B97F4A7C15) & _MASK64)
    return _mix64((s + index * 0xD1B54A32D192ED03) & _MASK64)


class SROptimizer:
    """Wrap a torch optimizer so the weights stay in ``fmt``, each update rounded
    stochastically.

    At construction every parameter is rounded to nearest into ``fmt``; after each
    ``optimizer.step()`` every parameter that has a gradient is rounded into ``fmt`` with
    ``rounding`` (default ``"stochastic"``, seeded by :func:`step_seed` from ``seed``; or
    ``"nearest"``, ``"toward_zero"``), in place. The parameters stay float32/float64 tensors
    holding ``fmt``'s values: no FP32 master copy is kept, so an update smaller than half
    an ulp survives only in expectation, as on hardware that stores BF16 weights. Only the
    parameters' values change, never their objects, so LR schedulers and ``state_dict`` go to
    the wrapped optimizer (``.optimizer``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, fmt: Format = BF16, *, seed: int = 0,
                 rounding: str = "stochastic") -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.fmt = _nx._check_format(fmt)
        _nx._check_rounding(rounding, 0 if rounding == "stochastic" else None)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
            raise ValueError(f"seed: expected an int in [0, 2**64), got {seed!r}")
        self.optimizer = optimizer
        self.seed = seed
        self.rounding = rounding
        self.steps = 0
        self._codes: Dict[int, np.ndarray] = {}
        for i, p in enumerate(self._params()):
            if p.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"optimizer: parameter {i} is {p.dtype}; SROptimizer keeps "
                                "float32/float64 parameters holding the format's values "
                                "(a bfloat16 parameter would be rounded to nearest by the "
                                "optimizer first)")
            _tensor(p, f"parameter {i}")
        with torch.no_grad():
            for i, p in enumerate(self._params()):
                self._round(i, p, "nearest", None)

    def _params(self) -> Iterator[torch.Tensor]:
        for group in self.optimizer.param_groups:
            yield from group["params"]

    def _round(self, i: int, p: torch.Tensor, rounding: str, seed: Optional[int]) -> None:
        arr = p.detach().numpy()
        buf = self._codes.get(i)
        if buf is None or buf.shape != arr.shape:
            buf = self._codes[i] = np.empty(arr.shape, self.fmt.storage_dtype)
        _nx.quantize(arr, self.fmt, rounding=rounding, seed=seed, out=buf)
        _nx.dequantize(buf, self.fmt, dtype=arr.dtype, out=arr)
        # written through NumPy, which torch does not see: bump the version counter as an
        # in-place torch op would (cached_weights and autograd's saved-tensor check read it)
        torch.autograd.graph.increment_version(p)

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        """The wrapped optimizer's parameter groups."""
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The wrapped optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One step of the wrapped optimizer, then the rounding of every updated parameter."""
        loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.steps += 1
        with torch.no_grad():
            for i, p in enumerate(self._params()):
                if p.grad is None:
                    continue
                s = step_seed(self.seed, self.steps, i) if self.rounding == "stochastic" \
                    else None
                self._round(i, p, self.rounding, s)
        return loss

    def state_dict(self) -> Dict[str, Any]:
        """The wrapped optimizer's state plus the step count and seed (to resume bit for bit)."""
        return {"optimizer": self.optimizer.state_dict(),
                "sr": {"steps": self.steps, "seed": self.seed, "rounding": self.rounding}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["sr"]["steps"])
        self.seed = int(state["sr"]["seed"])
        self.rounding = str(state["sr"]["rounding"])

    def __repr__(self) -> str:
        return (f"SROptimizer({type(self.optimizer).__name__}, fmt={self.fmt!r}, "
                f"rounding={self.rounding!r}, seed={self.seed})")

