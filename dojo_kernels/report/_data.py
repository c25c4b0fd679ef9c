"""Internal interface of the report capability: results as data.

Shared by :mod:`dojo_kernels.report` (``_report``) and :mod:`dojo_kernels.report.train`. Not
public API (names may change between releases).

- :func:`same`: the equality of the result classes (``Report``, ``TrainResult``, ...):
  field by field, NaN equal to NaN (a figure that could not be measured round-trips as
  NaN), arrays and tensors element by element (tensors bit for bit).
- :func:`check_dict`: the common validation of a ``from_dict`` (a mapping of the right
  ``kind``; a missing key is a ValueError naming it).
- :func:`tensor_to_dict` / :func:`tensor_from_dict`: a torch tensor as JSON (dtype, shape,
  the raw little-endian bytes in base64), bit exact.
"""
from __future__ import annotations

import base64
import dataclasses
import math
from typing import Any, Dict, Mapping

from .._fromdict import check_dict

import numpy as np


__all__ = ["same", "check_dict", "tensor_to_dict", "tensor_from_dict"]


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "dtype") \
        and hasattr(x, "shape")


def _tensor_bits(t: Any) -> np.ndarray:
    """The tensor's elements as unsigned integers of its element size (bit patterns)."""
    import torch

    t = t.detach().cpu().contiguous()
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    size = t.element_size()
    if size not in ints:
        raise TypeError(f"tensor of dtype {t.dtype}: unsupported element size {size}")
    v = t.view(ints[size]) if t.dtype != ints[size] else t
    return np.asarray(v.numpy()).view(f"u{size}")


def same(a: Any, b: Any) -> bool:
    """Deep equality for results: dataclasses field by field (same class), mappings by key,
    sequences element by element, floats with NaN == NaN, NumPy arrays element by element
    (NaN == NaN, same shape), torch tensors bit for bit (same dtype and shape)."""
    if a is b:
        return True
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return False
        return all(same(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a) if f.compare)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a.shape != b.shape:
            return False
        if a.dtype.kind in "fc" and b.dtype.kind in "fc":
            return bool(np.array_equal(a, b, equal_nan=True))
        return bool(np.array_equal(a, b))
    if _is_tensor(a) or _is_tensor(b):
        if not (_is_tensor(a) and _is_tensor(b)):
            return False
        return (a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
                and bool(np.array_equal(_tensor_bits(a), _tensor_bits(b))))
    if isinstance(a, Mapping):
        if not isinstance(b, Mapping) or set(a) != set(b):
            return False
        return all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or isinstance(a, tuple) != isinstance(b, tuple) \
                or len(a) != len(b):
            return False
        return all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (float, np.floating)) and isinstance(b, (float, np.floating)):
        return bool(a == b) or (math.isnan(a) and math.isnan(b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # pragma: no cover - incomparable objects
        return False




def tensor_to_dict(t: Any) -> Dict[str, Any]:
    """A torch tensor as JSON types: ``{"dtype": "float32", "shape": [...],
    "data_base64": ...}``, the data its elements' bytes, little-endian (bit exact)."""
    bits = _tensor_bits(t)
    raw = bits.astype(bits.dtype.newbyteorder("<"), copy=False).tobytes()
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": [int(s) for s in t.shape],
            "data_base64": base64.b64encode(raw).decode("ascii")}


def tensor_from_dict(d: Mapping[str, Any]) -> Any:
    """The tensor :func:`tensor_to_dict` described."""
    import torch

    dtype = getattr(torch, str(d["dtype"]), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"d: unknown tensor dtype {d['dtype']!r}")
    shape = tuple(int(s) for s in d["shape"])
    size = torch.empty((), dtype=dtype).element_size()
    raw = base64.b64decode(str(d["data_base64"]))
    bits = np.frombuffer(raw, dtype=f"<u{size}").astype(f"=u{size}")
    if bits.size != math.prod(shape):
        raise ValueError(f"d: tensor data holds {bits.size} elements, shape {shape} needs "
                         f"{math.prod(shape)}")
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    t = torch.from_numpy(bits.view(f"i{size}") if size > 1 else bits.copy()).clone()
    if dtype == torch.bool:
        return t.to(torch.bool).reshape(shape)
    if dtype != ints[size]:
        t = t.view(dtype)
    return t.reshape(shape)
