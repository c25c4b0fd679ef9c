"""Hierarchical all-reduce across levels of meshes: nodes within chips, chips within tiles,
tiles within a system.

``levels[0]`` is the innermost mesh (e.g. ``mesh.d1_chip()``), ``levels[-1]`` the outermost
(e.g. ``mesh.system(10, 12)``); the system has ``P = P_0 * P_1 * ... * P_L`` endpoints,
numbered innermost first: endpoint ``((g_L * P_{L-1} + ...) * P_0 + g_0)``.

Schedule: reduce-scatter inside every level-0 group (all groups at once), then inside every
level-1 group on the level-1 mesh (a group of the level below counts as one node holding
``n`` bytes), ..., all-reduce on the outermost level, then the all-gathers back down. The
inner levels use a ring-family algorithm (``"ring"``, ``"bidirectional_ring"`` or ``"2d"``),
whose reduce-scatter and all-gather halves take the same time: half of that algorithm's
all-reduce. The outermost level may use any algorithm. What moves inside a group between
its members and its links to the next level is not modelled (the inner network is assumed to
keep up with the outer links).

Association: every element is summed inside its level-0 group in that level's algorithm
order, those group sums inside their level-1 group in the level-1 order, and so on; every
endpoint ends with the same bits when the outermost algorithm gives every node the same bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._common import (as_codes, check_algorithm, check_nbytes, check_topology,
                      from_dict_fields)
from ._allreduce import AllreduceReport, allreduce, estimate_allreduce
from ..numerics.formats import BF16, FP32, Format
from ..machine.mesh import LevelsLike, Mesh2D

INNER_ALGORITHMS = ("ring", "bidirectional_ring", "2d")


@dataclass(frozen=True, eq=False)
class HierarchicalReport:
    """Timing of a hierarchical all-reduce (seconds, bytes).

    ``time``: total; ``level_times``: per level, the time that level contributes (reduce-scatter
    plus all-gather for inner levels, the all-reduce for the outermost); ``levels``: the
    per-level :class:`~dojo_kernels.AllreduceReport` of a full all-reduce of ``nbytes`` on
    that level's mesh; ``algorithms``: the algorithm used at each level; ``nodes``: endpoints.
    ``bus_bandwidth``: ``2(P-1)/P * n / time``.

    Results as data: it pickles, ``dataclasses.asdict`` works, :meth:`to_dict` gives a
    JSON-serializable dict (units in the keys; the levels as
    :meth:`AllreduceReport.to_dict <dojo_kernels.AllreduceReport.to_dict>` dicts) and
    :meth:`from_dict` rebuilds an equal report.
    """

    time: float
    level_times: Tuple[float, ...]
    levels: Tuple[AllreduceReport, ...]
    algorithms: Tuple[str, ...]
    nodes: int
    nbytes: float
    bus_bandwidth: float
    bit_identical: bool

    def to_dict(self) -> Dict[str, Any]:
        """The report as plain JSON types, units in the keys."""
        return {
            "kind": "HierarchicalReport",
            "time_s": float(self.time),
            "level_times_s": [float(t) for t in self.level_times],
            "levels": [r.to_dict() for r in self.levels],
            "algorithms": [str(a) for a in self.algorithms],
            "nodes": int(self.nodes),
            "per_node_bytes": float(self.nbytes),
            "bus_bandwidth_bytes_per_s": float(self.bus_bandwidth),
            "bit_identical": bool(self.bit_identical),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HierarchicalReport":
        """Rebuild a report from :meth:`to_dict` output (the levels' schedules are ``None``)."""
        return from_dict_fields("HierarchicalReport", d, lambda d: cls(
            time=float(d["time_s"]),
            level_times=tuple(float(t) for t in d["level_times_s"]),
            levels=tuple(AllreduceReport.from_dict(r) for r in d["levels"]),
            algorithms=tuple(str(a) for a in d["algorithms"]), nodes=int(d["nodes"]),
            nbytes=float(d["per_node_bytes"]),
            bus_bandwidth=float(d["bus_bandwidth_bytes_per_s"]),
            bit_identical=bool(d["bit_identical"])))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HierarchicalReport):
            return NotImplemented
        return (self.time == other.time and self.level_times == other.level_times
                and self.levels == other.levels and self.algorithms == other.algorithms
                and self.nodes == other.nodes and self.nbytes == other.nbytes
                and self.bus_bandwidth == other.bus_bandwidth
                and self.bit_identical == other.bit_identical)

    def __hash__(self) -> int:
        return hash((self.time, self.algorithms, self.nodes, self.nbytes))


def _check_levels(levels: Any, algorithms: Any) -> Tuple[Tuple[Mesh2D, ...], Tuple[str, ...]]:
    from ..machine import D1Chip, DojoSystem, TrainingTile
    from ..machine.mesh import as_levels

    if isinstance(levels, Mesh2D) or not (isinstance(levels, (list, tuple, D1Chip, TrainingTile,
                                                             DojoSystem)) and levels):
        raise TypeError("levels: expected a non-empty sequence of Mesh2D (or machines), innermost "
                        "first, or a machine (D1Chip, TrainingTile, DojoSystem)")
    levels = tuple(check_topology(m) for m in as_levels(levels))
    if algorithms is None:
        algorithms = ("bidirectional_ring",) * (len(levels) - 1) + ("auto",)
    if isinstance(algorithms, str) or len(algorithms) != len(levels):
        raise ValueError(f"algorithms: expected one name per level ({len(levels)}), "
                         f"got {algorithms!r}")
    algorithms = tuple(check_algorithm(a) for a in algorithms)
    for k, a in enumerate(algorithms[:-1]):
        if a not in INNER_ALGORITHMS:
            raise ValueError(f"algorithms: level {k} is not the outermost, so it needs one of "
                             f"{', '.join(INNER_ALGORITHMS)} (a reduce-scatter/all-gather), "
                             f"got {a!r}")
    return levels, algorithms


def estimate_hierarchical(nbytes: float, levels: LevelsLike, *,
                          algorithms: Optional[Sequence[str]] = None) -> HierarchicalReport:
    """Timing of a hierarchical all-reduce of ``nbytes`` (bytes) per endpoint (see the module
    doc).

    ``levels``: the meshes, innermost first, each a :class:`~dojo_kernels.mesh.Mesh2D` or a
    machine object; or one machine, which stands for its levels with chips as endpoints
    (:func:`dojo_kernels.mesh.as_levels`): ``D1Chip`` -> (its node mesh,), ``TrainingTile`` ->
    (its chip mesh,), ``DojoSystem`` -> (the chip mesh of a tile, the tile mesh). The answer is
    the same as with the equivalent explicit meshes. ``algorithms``: one per level, default
    bidirectional rings inside and ``"auto"`` at the top.
    """
    n = check_nbytes(nbytes)
    levels, algorithms = _check_levels(levels, algorithms)
    reps = tuple(estimate_allreduce(n, m, algorithm=a) for m, a in zip(levels, algorithms))
    # inner levels: reduce-scatter + all-gather = one full all-reduce of that level
    # (counted once on the way up and once on the way down, half each)
    level_times = tuple(r.time for r in reps)
    time = float(sum(level_times))
    P = int(np.prod([m.nodes for m in levels]))
    return HierarchicalReport(
        time=time, level_times=level_times, levels=reps,
        algorithms=tuple(r.algorithm for r in reps), nodes=P, nbytes=n,
        bus_bandwidth=(2 * (P - 1) / P * n / time) if time > 0 else 0.0,
        bit_identical=bool(reps[-1].bit_identical))


def allreduce_hierarchical(buffers: Any, levels: LevelsLike, *,
                           algorithms: Optional[Sequence[str]] = None, fmt: Format = FP32,
                           accumulate: str = "fp32") -> Tuple[np.ndarray, HierarchicalReport]:
    """All-reduce of ``buffers`` (shape ``(P, ...)``, endpoints numbered innermost first) in
    the hierarchical order; returns ``(result, HierarchicalReport)``. ``levels``: as in
    :func:`estimate_hierarchical` (meshes or machine objects, innermost first, or one machine).

    With ``fmt=BF16`` and ``accumulate="fp32"`` the partial sums of every level stay FP32 and
    are rounded once at the end; with ``accumulate="bf16"`` every addition rounds.
    """
    levels, algorithms = _check_levels(levels, algorithms)
    arr, wire = as_codes(buffers, fmt, accumulate)
    sizes = [m.nodes for m in levels]
    P = int(np.prod(sizes))
    if arr.shape[0] != P:
        raise ValueError(f"buffers: first dimension must be the number of endpoints "
                         f"P={P} ({' x '.join(map(str, sizes))}), got shape {arr.shape}")
    out_dtype = np.asarray(buffers).dtype
    flat = np.ascontiguousarray(arr.reshape(P, -1))
    N = flat.shape[1]
    # partial sums travel between levels in the accumulation format
    if fmt == BF16 and accumulate == "fp32":
        cur = (flat.astype(np.uint32) << 16).view(np.float32)
        lvl_fmt = FP32
    else:
        cur = flat
        lvl_fmt = fmt
    acc = accumulate if lvl_fmt == BF16 else "fp32"
    chosen = []
    for m, alg in zip(levels[:-1], algorithms[:-1]):
        # every group of this level sums its members (all members end with the same bits);
        # the group sums are the members of the next level
        groups = cur.reshape(-1, m.nodes, N)
        nxt = np.empty((groups.shape[0], N), cur.dtype)
        for g in range(groups.shape[0]):
            res, rep = allreduce(groups[g], m, algorithm=alg, fmt=lvl_fmt, accumulate=acc)
            nxt[g] = res[0]
        chosen.append(alg)
        cur = nxt
    final, rep = allreduce(cur.reshape(levels[-1].nodes, N), levels[-1], algorithm=algorithms[-1],
                           fmt=lvl_fmt, accumulate=acc)
    chosen.append(rep.algorithm)
    # every endpoint of top-level node j holds row j of the outermost result
    top_nodes = levels[-1].nodes
    inner = P // top_nodes
    result = np.repeat(np.asarray(final).reshape(top_nodes, N), inner, axis=0)
    if fmt == BF16 and accumulate == "fp32":
        from .. import _config, _reduce
        codes = np.empty(result.size, np.uint16)
        if result.size:
            _reduce.f32_to_bf16(_config.isa(), _config.threads(), codes,
                                np.ascontiguousarray(result, np.float32).reshape(-1))
        result = codes.reshape(result.shape)
    result = result.reshape(arr.shape)
    if result.dtype != out_dtype:
        result = result.view(out_dtype)
    report = estimate_hierarchical(float(N * wire), levels, algorithms=tuple(chosen))
    return result, report


__all__ = ["HierarchicalReport", "estimate_hierarchical", "allreduce_hierarchical",
           "INNER_ALGORITHMS"]
