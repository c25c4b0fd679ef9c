"""Mesh all-reduce: the reduced values in each algorithm's order, and link-level timing.

``allreduce(buffers, topology)`` returns what every node holds at the end and a report of
the SPEC section 7 timing model; ``estimate_allreduce(nbytes, topology)`` gives the report
alone. One schedule (``dojo_kernels._schedule``) drives the timing, the numerics (additions
in our C kernels, GIL released) and the MPI executor (``dojo_kernels.mpi``). The algorithms
and their association orders are documented in docs/allreduce.md.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .. import _config
from ._common import (as_codes, check_algorithm, check_nbytes, check_topology,
                      from_dict_fields)
from ._schedule import ALGORITHMS, COPY, Schedule, build
from ._timing import BOUND_KEYS, lower_bounds, simulate, time_floor
from ..numerics.formats import BF16, FP32, Format
from ..machine.mesh import Mesh2D, TopologyLike
from .schedule import Schedule as PublicSchedule


class FrozenDict(Dict[str, float]):
    """A read-only ``dict`` (the report's ``lower_bounds``): it pickles, deep-copies and
    serializes to JSON like a dict, and refuses changes (reports are shared by a cache)."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("this mapping is read-only (a report field)")

    __setitem__ = __delitem__ = _readonly  # type: ignore[assignment, unused-ignore]
    clear = pop = popitem = _readonly  # type: ignore[assignment, unused-ignore]
    setdefault = update = _readonly  # type: ignore[assignment, unused-ignore]

    def __ior__(self, other: Any) -> "FrozenDict":  # type: ignore[override,misc]
        raise TypeError("this mapping is read-only (a report field)")

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __copy__(self) -> "FrozenDict":
        return self

    def __deepcopy__(self, memo: Dict[int, Any]) -> "FrozenDict":
        return self


def _float_list(a: Any) -> List[float]:
    return [float(x) for x in np.asarray(a, np.float64).reshape(-1)]


def _ro(a: Any) -> np.ndarray:
    arr = np.array(a, np.float64).reshape(-1)
    arr.setflags(write=False)
    return arr


def _same(x: float, y: float) -> bool:
    return x == y or (math.isnan(x) and math.isnan(y))


@dataclass(frozen=True, eq=False)
class AllreduceReport:
    """Timing-model report of one all-reduce (SPEC section 7). Units: seconds, bytes, B/s.

    Results as data: a report pickles, ``dataclasses.asdict`` works, :meth:`to_dict` gives
    a JSON-serializable dict with the units in its keys (``time_s``,
    ``bytes_per_link_bytes``, and so on) and :meth:`from_dict` rebuilds an equal report.
    ``==`` compares every field but ``schedule`` (arrays element by element).

    Attributes
    ----------
    time : total time (s), the sum of ``step_times``.
    algorithm : the algorithm run (the one chosen when ``"auto"`` was asked).
    steps : number of synchronous steps; ``step_times`` their durations (s).
    nbytes : bytes per node ``n`` (for BF16 with ``accumulate="fp32"``: 4 bytes per element,
        since FP32 partials travel).
    nodes : ``P``.
    bytes_per_link : bytes carried by every directed link (order: ``topology.links()``);
        ``bytes_per_link_max`` and ``bytes_per_link_mean`` over all directed links.
    byte_hops : sum over messages of bytes x hops.
    max_contention : most messages sharing one directed link in one step.
    links_used, longest_path_hops : directed links that carry data; the longest route.
    bus_bandwidth : ``2(P-1)/P * n / time`` (B/s, as nccl-tests).
    lower_bounds : the SPEC section 7 bounds (s): ``latency``, ``degree``, ``capacity``, and
        ``latency_spec`` for comparison. ``latency`` is ``alpha + (D-1)*min(alpha, delta)``
        (D the diameter): a message may cross several hops for ``delta`` each. SPEC's
        ``(a+b-2)*alpha``, reported as ``latency_spec``, assumes ``delta >= alpha`` (and no
        wrap links); then the two are equal. Otherwise it is not a bound (halving-doubling
        with small ``delta`` beats it), so it never enters ``lower_bound``.
    lower_bound : the largest of ``latency``, ``degree``, ``capacity``;
        ``efficiency = lower_bound / time``.
    bit_identical : whether every node ends with the same bits.
    chunks : pipeline depth of the chunked algorithms (1 otherwise).
    schedule : the :class:`dojo_kernels.schedule.Schedule` that was timed (who sends what to whom at
        which step; ``messages()``, ``to_json()``, ``to_csv()``, ``to_msccl_xml()``), or
        ``None`` for a report rebuilt by :meth:`from_dict`. Not part of ``to_dict()`` nor of
        ``==`` (export it with its own methods).
    """

    time: float
    algorithm: str
    steps: int
    step_times: np.ndarray = field(repr=False)
    nbytes: float = 0.0
    nodes: int = 1
    bytes_per_link: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    bytes_per_link_max: float = 0.0
    bytes_per_link_mean: float = 0.0
    byte_hops: float = 0.0
    max_contention: int = 0
    links_used: int = 0
    longest_path_hops: int = 0
    bus_bandwidth: float = 0.0
    lower_bounds: Mapping[str, float] = field(default_factory=dict)
    lower_bound: float = 0.0
    efficiency: float = 1.0
    bit_identical: bool = True
    chunks: int = 1
    schedule: Optional[PublicSchedule] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        """The report as plain JSON types, units in the keys (seconds ``_s``, bytes
        ``_bytes``, bytes/s ``_bytes_per_s``, ratios ``_fraction``). The schedule is left out:
        ``report.schedule.to_json()`` exports it."""
        return {
            "kind": "AllreduceReport",
            "algorithm": self.algorithm,
            "time_s": float(self.time),
            "steps": int(self.steps),
            "step_times_s": _float_list(self.step_times),
            "per_node_bytes": float(self.nbytes),
            "nodes": int(self.nodes),
            "bytes_per_link_bytes": _float_list(self.bytes_per_link),
            "bytes_per_link_max_bytes": float(self.bytes_per_link_max),
            "bytes_per_link_mean_bytes": float(self.bytes_per_link_mean),
            "byte_hops": float(self.byte_hops),
            "max_contention_messages": int(self.max_contention),
            "links_used": int(self.links_used),
            "longest_path_hops": int(self.longest_path_hops),
            "bus_bandwidth_bytes_per_s": float(self.bus_bandwidth),
            "lower_bounds_s": {str(k): float(v) for k, v in self.lower_bounds.items()},
            "lower_bound_s": float(self.lower_bound),
            "efficiency_fraction": float(self.efficiency),
            "bit_identical": bool(self.bit_identical),
            "chunks": int(self.chunks),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AllreduceReport":
        """Rebuild a report from :meth:`to_dict` output (``schedule`` is ``None``)."""
        return from_dict_fields("AllreduceReport", d, lambda d: cls(
            time=float(d["time_s"]), algorithm=str(d["algorithm"]), steps=int(d["steps"]),
            step_times=_ro(d["step_times_s"]), nbytes=float(d["per_node_bytes"]),
            nodes=int(d["nodes"]), bytes_per_link=_ro(d["bytes_per_link_bytes"]),
            bytes_per_link_max=float(d["bytes_per_link_max_bytes"]),
            bytes_per_link_mean=float(d["bytes_per_link_mean_bytes"]),
            byte_hops=float(d["byte_hops"]),
            max_contention=int(d["max_contention_messages"]),
            links_used=int(d["links_used"]), longest_path_hops=int(d["longest_path_hops"]),
            bus_bandwidth=float(d["bus_bandwidth_bytes_per_s"]),
            lower_bounds=FrozenDict({str(k): float(v)
                                     for k, v in dict(d["lower_bounds_s"]).items()}),
            lower_bound=float(d["lower_bound_s"]),
            efficiency=float(d["efficiency_fraction"]),
            bit_identical=bool(d["bit_identical"]), chunks=int(d["chunks"])))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AllreduceReport):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        if a.keys() != b.keys():
            return False
        for k in a:
            x, y = a[k], b[k]
            if isinstance(x, float) and isinstance(y, float):
                if not _same(x, y):
                    return False
            elif x != y:
                return False
        return True

    def __hash__(self) -> int:
        return hash((self.algorithm, self.time, self.nbytes, self.nodes, self.steps))


# The argument checks live in the internal interface module ``_common`` (shared with
# ``hierarchical`` and ``mpi``); these aliases keep the old private names importable.
_check_topology = check_topology
_check_nbytes = check_nbytes
_check_algorithm = check_algorithm
_as_codes = as_codes


def _report(schedule: Schedule, topology: Mesh2D, nbytes: float, *,
            rebuildable: bool = False) -> AllreduceReport:
    """Simulate ``schedule``; the report carries it (as a public Schedule). ``rebuildable``:
    the schedule is ``build(schedule.algorithm, topology, nbytes)``, so a pickled report
    carries its recipe instead of its arrays."""
    t = simulate(schedule, topology, nbytes)
    P = int(topology.survivors().size)
    time = float(t.step_times.sum())
    lb = lower_bounds(topology, nbytes)
    lbmax = max(lb[k] for k in BOUND_KEYS)
    bpl = t.bytes_per_link
    bpl.setflags(write=False)
    st = t.step_times
    st.setflags(write=False)
    return AllreduceReport(
        time=time, algorithm=schedule.algorithm, steps=int(st.size), step_times=st,
        nbytes=nbytes, nodes=P, bytes_per_link=bpl,
        bytes_per_link_max=float(bpl.max()) if bpl.size else 0.0,
        bytes_per_link_mean=float(bpl.mean()) if bpl.size else 0.0,
        byte_hops=t.byte_hops, max_contention=t.max_contention, links_used=t.links_used,
        longest_path_hops=t.longest_path_hops,
        bus_bandwidth=(2 * (P - 1) / P * nbytes / time) if time > 0 else 0.0,
        lower_bounds=FrozenDict(lb), lower_bound=lbmax,
        efficiency=(lbmax / time) if time > 0 else 1.0,
        bit_identical=schedule.bit_identical,
        chunks=int(str(schedule.info.get("chunks", 1))),
        schedule=PublicSchedule(schedule, topology, nbytes, rebuildable=rebuildable))


@functools.lru_cache(maxsize=64)
def _choose(topology: Mesh2D, nbytes: float, algorithm: str
            ) -> Tuple[Schedule, AllreduceReport]:
    """(schedule, report) of the algorithm, or of the fastest one for "auto". Both are
    immutable, so repeated calls share them."""
    if algorithm != "auto":
        sch = build(algorithm, topology, nbytes)
        return sch, _report(sch, topology, nbytes, rebuildable=True)
    # The fastest; ties go to the earlier name in ALGORITHMS. Candidates are simulated in
    # the order of a cheap lower bound on their time (time_floor), and one whose bound
    # exceeds the best time found is skipped: it cannot win, so the choice is the same as
    # simulating all of them.
    cands: List[Tuple[float, int, Schedule]] = []
    why: List[str] = []
    for idx, name in enumerate(ALGORITHMS):
        try:
            sch = build(name, topology, nbytes)
        except ValueError as exc:
            # a damaged mesh: an algorithm that cannot run there is not a candidate
            if not topology.damaged:
                raise
            why.append(f"{name}: {exc}")
            continue
        cands.append((time_floor(sch, topology, nbytes), idx, sch))
    if not cands:
        raise ValueError("topology: no all-reduce algorithm runs on this damaged mesh ("
                         + "; ".join(why) + ")")
    cands.sort(key=lambda c: (c[0], c[1]))
    best: Optional[Tuple[Tuple[float, int], Schedule, AllreduceReport]] = None
    for floor, idx, sch in cands:
        if best is not None and floor > best[0][0] * (1 + 1e-9):
            continue
        rep = _report(sch, topology, nbytes, rebuildable=True)
        key = (rep.time, idx)
        if best is None or key < best[0]:
            best = (key, sch, rep)
    assert best is not None  # the smallest floor is never skipped
    return best[1], best[2]


def schedule_for(nbytes: float, topology: TopologyLike, *, algorithm: str = "auto"
                 ) -> Schedule:
    """The schedule ``allreduce``/``estimate_allreduce`` run for ``nbytes`` per node."""
    topology = check_topology(topology)
    return _choose(topology, check_nbytes(nbytes), check_algorithm(algorithm))[0]


def estimate_allreduce(nbytes: float, topology: TopologyLike, *, algorithm: str = "auto"
                       ) -> AllreduceReport:
    """Timing-model report of an all-reduce of ``nbytes`` per node on ``topology``, without
    moving data. ``nbytes``: bytes per node. ``topology``: a
    :class:`~dojo_kernels.mesh.Mesh2D` or a machine object (:data:`~dojo_kernels.mesh.TopologyLike`:
    ``D1Chip`` its node mesh, ``TrainingTile`` its chip mesh, ``DojoSystem`` its tile mesh; the
    same answer as the equivalent ``Mesh2D``). ``algorithm``: one of ``"ring"``, ``"bidirectional_ring"``, ``"2d"``,
    ``"halving_doubling"``, ``"tree"``, ``"chain"``, ``"spanning_trees"``, or ``"auto"`` (the
    fastest by the model). On a damaged mesh an algorithm that cannot run there is a
    ValueError saying why, and ``"auto"`` picks among those that run."""
    topology = check_topology(topology)
    return _choose(topology, check_nbytes(nbytes), check_algorithm(algorithm))[1]


def estimate_schedule(schedule: Schedule, topology: TopologyLike, nbytes: float
                      ) -> AllreduceReport:
    """Timing-model report of any schedule (for example ``build_ring`` on a given order)."""
    return _report(schedule, check_topology(topology), check_nbytes(nbytes))


# --- numerics ------------------------------------------------------------------------------
def unit_boundaries(schedule: Schedule, n_elements: int) -> np.ndarray:
    """Element index where each unit starts: ``(u * N) // units``, u = 0..units."""
    u = np.arange(schedule.units + 1, dtype=np.int64)
    return (u * n_elements) // schedule.units


@dataclass
class Program:
    seg_lo: np.ndarray
    add_off: np.ndarray
    add_out: np.ndarray
    add_a: np.ndarray
    add_b: np.ndarray
    out_op: np.ndarray
    nslots: int
    bit_identical: bool


@functools.lru_cache(maxsize=32)
def compile_program(schedule: Schedule, n_elements: int) -> Program:
    """Symbolic execution of the schedule over the element segments it distinguishes: the
    additions each segment needs, in schedule order, and what each node ends with."""
    P, K = schedule.nodes, schedule.slots
    ub = unit_boundaries(schedule, n_elements)
    tpl, step, lo_u, hi_u = schedule.instances(ub)
    a = schedule.arrays
    lo_e, hi_e = ub[lo_u], ub[hi_u]
    bnds = np.unique(np.concatenate([lo_e, hi_e, [0, n_elements]]))
    S = bnds.size - 1
    s0 = np.searchsorted(bnds, lo_e)
    s1 = np.searchsorted(bnds, hi_e)
    state = np.full((P, K, S), -1, np.int64)
    state[:, 0, :] = np.arange(P)[:, None]
    lhs_l, rhs_l, seg_l = [], [], []
    next_id = P
    stage = a["stage"][tpl]
    # groups of equal (step, stage), in execution order
    key = step * 3 + stage
    cut = np.flatnonzero(np.diff(key)) + 1
    starts = np.concatenate([[0], cut]) if key.size else np.zeros(0, np.int64)
    ends = np.concatenate([cut, [key.size]]) if key.size else np.zeros(0, np.int64)
    src_a, dst_a, ss_a, ds_a, op_a = a["src"], a["dst"], a["sslot"], a["dslot"], a["op"]
    for g0, g1 in zip(starts, ends):
        ids = tpl[g0:g1]
        nseg = s1[g0:g1] - s0[g0:g1]
        inst = np.repeat(np.arange(g1 - g0), nseg)
        first = np.repeat(np.cumsum(nseg) - nseg, nseg)
        seg = np.repeat(s0[g0:g1], nseg) + (np.arange(inst.size) - first)
        t = ids[inst]
        src, dst, ss, ds, op = src_a[t], dst_a[t], ss_a[t], ds_a[t], op_a[t]
        snapshot = stage[g0] == 1
        if snapshot:
            vals = state[src, ss, seg]
        # rank of each delivery among those to the same target (in order)
        tkey = (dst * K + ds) * S + seg
        order = np.argsort(tkey, kind="stable")
        sk = tkey[order]
        newgrp = np.concatenate([[True], sk[1:] != sk[:-1]])
        grp_start = np.maximum.accumulate(np.where(newgrp, np.arange(sk.size), 0))
        rank = np.empty(sk.size, np.int64)
        rank[order] = np.arange(sk.size) - grp_start
        for lvl in range(int(rank.max()) + 1 if rank.size else 0):
            m = rank == lvl
            v = vals[m] if snapshot else state[src[m], ss[m], seg[m]]
            if (v < 0).any():
                raise AssertionError(f"{schedule.algorithm}: a message reads an empty slot")
            dd, dsl, sg, o = dst[m], ds[m], seg[m], op[m]
            cp = o == COPY
            state[dd[cp], dsl[cp], sg[cp]] = v[cp]
            rd = ~cp
            if rd.any():
                lhs = state[dd[rd], dsl[rd], sg[rd]]
                if (lhs < 0).any():
                    raise AssertionError(f"{schedule.algorithm}: a reduction into an empty slot")
                k = int(rd.sum())
                new = np.arange(next_id, next_id + k)
                next_id += k
                lhs_l.append(lhs)
                rhs_l.append(v[rd])
                seg_l.append(sg[rd])
                state[dd[rd], dsl[rd], sg[rd]] = new
    final = state[:, 0, :]
    if (final < 0).any():
        raise AssertionError(f"{schedule.algorithm}: a node ends without a value")
    bit_identical = bool((final == final[0]).all())
    lhs = np.concatenate(lhs_l) if lhs_l else np.zeros(0, np.int64)
    rhs = np.concatenate(rhs_l) if rhs_l else np.zeros(0, np.int64)
    aseg = np.concatenate(seg_l) if seg_l else np.zeros(0, np.int64)
    nadd = lhs.size
    # Slots: an add writes into its left operand's slot when that value has no other use.
    uses = np.bincount(np.concatenate([lhs, rhs, final.reshape(-1)]), minlength=P + nadd)
    idx = np.arange(nadd)
    inh_l = (lhs >= P) & (uses[lhs] == 1)
    inh_r = ~inh_l & (rhs >= P) & (uses[rhs] == 1)
    root = np.where(inh_l, lhs - P, np.where(inh_r, rhs - P, idx))
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    # dense slot numbers of roots within each segment
    order = np.lexsort((root, aseg))
    sr = root[order]
    sg = aseg[order]
    newslot = (np.concatenate([[True], (sr[1:] != sr[:-1]) | (sg[1:] != sg[:-1])]) if nadd
               else np.zeros(0, bool))
    segstart = np.concatenate([[True], sg[1:] != sg[:-1]]) if nadd else np.zeros(0, bool)
    cum = np.cumsum(newslot) - 1
    base = np.maximum.accumulate(np.where(segstart, cum, 0)) if nadd else cum
    slot_sorted = cum - base
    slot_of_root = np.empty(nadd, np.int64)
    slot_of_root[sr] = slot_sorted
    slot = slot_of_root[root]
    nslots = int(slot.max()) + 1 if nadd else 0

    def operand(ids: Any) -> np.ndarray:
        ids = np.asarray(ids)
        return np.where(ids < P, -(ids + 1), slot[np.maximum(ids - P, 0)] if nadd else 0)

    # adds grouped by segment (creation order inside a segment)
    by_seg = np.argsort(aseg, kind="stable")
    add_off = np.zeros(S + 1, np.int64)
    np.cumsum(np.bincount(aseg, minlength=S), out=add_off[1:])
    prog = Program(
        seg_lo=bnds.astype(np.int64),
        add_off=add_off,
        add_out=slot[by_seg].astype(np.int32),
        add_a=operand(lhs[by_seg]).astype(np.int32),
        add_b=operand(rhs[by_seg]).astype(np.int32),
        out_op=operand(final[:1].T.reshape(-1) if bit_identical
                       else final.T.reshape(-1)).astype(np.int32),
        nslots=nslots, bit_identical=bit_identical)
    for arr in (prog.seg_lo, prog.add_off, prog.add_out, prog.add_a, prog.add_b, prog.out_op):
        arr.setflags(write=False)
    return prog


def allreduce(buffers: Any, topology: TopologyLike, *, algorithm: str = "auto",
              fmt: Format = FP32,
              accumulate: str = "fp32") -> Tuple[np.ndarray, AllreduceReport]:
    """All-reduce (sum) of ``buffers`` over the nodes of ``topology``.

    When every node ends with the same bits (``report.bit_identical``: every algorithm but
    ``"chain"``), ``result`` is a **read-only** broadcast view of one row -- the P identical
    copies are not materialised. ``np.array(result)`` gives a writable copy.

    Parameters
    ----------
    buffers : array of shape ``(P, ...)``; row i is node i's contribution: float32 for
        ``fmt=FP32``, uint16 BF16 codes (or an ``ml_dtypes.bfloat16`` array) for ``fmt=BF16``.
        Never modified.
    topology : a :class:`dojo_kernels.mesh.Mesh2D` with ``P`` nodes (or a machine object).
        On a damaged mesh (:meth:`~dojo_kernels.mesh.Mesh2D.with_failures`) ``buffers``
        still has one row per node of the full grid: failed nodes' rows are ignored and left
        unchanged in ``result``, every surviving node ends with the sum of the survivors'
        rows, and ``result`` is a new array (docs/allreduce.md, "Failed nodes and links").
    algorithm : see :func:`estimate_allreduce`.
    fmt : ``FP32`` or ``BF16``.
    accumulate : ``"fp32"`` (BF16: FP32 partials, rounded once at the end) or ``"bf16"``
        (round to nearest even after every addition; BF16 only).

    Returns
    -------
    (result, report) : ``result`` has the shape and dtype of ``buffers`` (uint16 codes for
        BF16); row i is what node i holds at the end. ``report`` is an
        :class:`AllreduceReport` with ``nbytes`` = elements per node x bytes per element on
        the wire. When every node ends with the same bits (the schedule sums each element
        once and copies it: see ``report.bit_identical``), ``result`` is a read-only
        broadcast view of one row (``np.array(result)`` for a writable copy); otherwise a
        new writable array.
    """
    topology = check_topology(topology)
    algorithm = check_algorithm(algorithm)
    arr, wire = as_codes(buffers, fmt, accumulate)
    P = topology.nodes
    if arr.shape[0] != P:
        raise ValueError(f"buffers: first dimension must be the number of nodes P={P} of the "
                         f"{topology.rows}x{topology.cols} mesh, got shape {arr.shape}")
    out_dtype = np.asarray(buffers).dtype
    flat = np.require(arr.reshape(P, -1), requirements=("C_CONTIGUOUS", "ALIGNED"))
    N = flat.shape[1]
    schedule, report = _choose(topology, float(N * wire), algorithm)
    if N:
        prog = compile_program(schedule, N)
        out = np.empty((1 if prog.bit_identical else P, N), flat.dtype)
        args = (_config.isa(), _config.threads(), prog.seg_lo, prog.add_off, prog.add_out,
                prog.add_a, prog.add_b, prog.out_op, prog.nslots)
        from .. import _reduce
        if fmt == FP32:
            _reduce.run_f32(*args, flat, out)
        else:
            _reduce.run_bf16(*args, accumulate == "bf16", flat, out)
        if out.shape[0] != P:  # every node holds the same bits: one row, broadcast
            out = np.broadcast_to(out, (P, N))
    else:
        out = np.empty_like(flat)
    result = out.reshape(arr.shape)
    if result.dtype != out_dtype:
        result = result.view(out_dtype)
    return result, report


__all__ = ["AllreduceReport", "allreduce", "estimate_allreduce", "estimate_schedule",
           "schedule_for", "ALGORITHMS"]
