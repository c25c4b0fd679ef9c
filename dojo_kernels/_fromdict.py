"""The common validation of every result class's ``from_dict`` (core: shared by the
collectives and report capabilities). Not public API."""
from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

__all__ = ["check_dict"]


def check_dict(kind: str, d: Any, build: Callable[[Mapping[str, Any]], T]) -> T:
    """``build(d)`` for the ``from_dict`` of result class ``kind`` (e.g. ``"Report"``): ``d``
    must be a mapping (TypeError) whose ``"kind"``, if present, is ``kind`` (ValueError); a
    key missing in ``d`` while building is a ValueError naming it and the ``to_dict`` it
    should come from."""
    if not isinstance(d, Mapping):
        raise TypeError(f"d: expected a mapping from {kind}.to_dict(), got {type(d).__name__}")
    if d.get("kind", kind) != kind:
        raise ValueError(f"d: expected kind {kind!r}, got {d.get('kind')!r}")
    try:
        return build(d)
    except KeyError as exc:
        raise ValueError(f"d: missing key {exc.args[0]!r} (expected the output of "
                         f"{kind}.to_dict())") from None
