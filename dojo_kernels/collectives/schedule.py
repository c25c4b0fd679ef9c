"""The all-reduce schedule as public data: who sends what to whom at which step.

``estimate_allreduce(...).schedule`` (and ``allreduce(...)[1].schedule``) is a
:class:`Schedule`: the very schedule the timing model, the numerics kernel and the MPI
executor run. Export it as

- :meth:`Schedule.messages`: one row per message, a structured NumPy array;
- :meth:`Schedule.to_json` and :meth:`Schedule.to_csv`: the same rows as text;
- :meth:`Schedule.to_msccl_xml`: MSCCL-IR XML, the format MSCCLang (msccl-tools) emits, which
  NCCL's MSCCL runtime executes and ASTRA-sim's collective API turns into Chakra ET.

Model of a schedule (docs/allreduce.md, "Schedule export"): every node holds a buffer of
``units`` equal units (unit ``u`` of a buffer of ``N`` elements starts at element
``(u*N)//units``), plus ``slots - 1`` scratch buffers of the same size (only ``"chain"`` uses
scratch). Steps are synchronous. Within a step, ``phase 0`` node-local operations run first,
then every ``phase 1`` link message reads its source as it was before the step and is
applied at its destination in the listed order, then ``phase 2`` local operations in the
listed order.
"""
from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from ..machine.mesh import Mesh2D

if TYPE_CHECKING:  # pragma: no cover
    from ._schedule import Schedule as _Plan

#: dtype of :meth:`Schedule.messages` rows.
MESSAGE_DTYPE = np.dtype([
    ("step", np.int64),        # synchronous step, from 0
    ("phase", np.int8),        # 0: local before the links, 1: link message, 2: local after
    ("src", np.int64),         # sending node
    ("dst", np.int64),         # receiving node (== src for a local operation)
    ("src_buf", np.int8),      # 0: the node's data buffer, k >= 1: scratch buffer k
    ("dst_buf", np.int8),
    ("offset", np.int64),      # first element of the range (same offset in src and dst)
    ("count", np.int64),       # elements
    ("bytes", np.float64),     # bytes in the timing model (units x nbytes/units)
    ("hops", np.int64),        # links crossed (dimension-order route); 0 for local
    ("op", "U6"),              # "reduce": dst += data; "copy": dst = data
])

_COLUMNS = MESSAGE_DTYPE.names or ()


class Schedule:
    """A step-synchronous all-reduce schedule on a :class:`~dojo_kernels.mesh.Mesh2D`.

    Obtained from a report (``estimate_allreduce(nbytes, topology).schedule``); not built by
    hand. Read-only.

    Attributes
    ----------
    algorithm : the algorithm's name.
    topology : the :class:`~dojo_kernels.mesh.Mesh2D` it runs on.
    nbytes : bytes per node the schedule was built (and timed) for.
    nodes : number of nodes ``P``.
    units : the buffer is cut into this many equal units; offsets and counts of
        :meth:`messages` and of the MSCCL export are in units unless ``elements`` is given.
    slots : buffers per node (1 data buffer + scratch buffers).
    steps : number of synchronous steps.
    bit_identical : whether every node ends with the same bits.
    info : algorithm details (e.g. ``chunks``, ``trees``, ``weights``, ``ring``).
    """

    __slots__ = ("_plan_or_none", "_algorithm", "_rebuildable", "topology", "nbytes")

    def __init__(self, plan: "_Plan", topology: Mesh2D, nbytes: float, *,
                 rebuildable: bool = False) -> None:
        self._plan_or_none: Optional["_Plan"] = plan
        self._algorithm = str(plan.algorithm)
        self._rebuildable = bool(rebuildable)
        self.topology = topology
        self.nbytes = float(nbytes)

    @property
    def _plan(self) -> "_Plan":
        plan = self._plan_or_none
        if plan is None:        # unpickled from its recipe: build it again (deterministic)
            from ._schedule import build
            plan = build(self._algorithm, self.topology, self.nbytes)
            self._plan_or_none = plan
        return plan

    # pickling: a schedule that ``build(algorithm, topology, nbytes)`` makes again travels as
    # that recipe (a 50 x 60 spanning-tree schedule is tens of MB of arrays)
    def __getstate__(self) -> Tuple[Any, ...]:
        plan = None if self._rebuildable else self._plan
        return (plan, self._algorithm, self._rebuildable, self.topology, self.nbytes)

    def __setstate__(self, state: Tuple[Any, ...]) -> None:
        (self._plan_or_none, self._algorithm, self._rebuildable, self.topology,
         self.nbytes) = state

    def __repr__(self) -> str:
        t = self.topology
        return (f"Schedule(algorithm={self.algorithm!r}, mesh={t.rows}x{t.cols}"
                f"{' torus' if t.wraparound else ''}, nbytes={self.nbytes:g}, "
                f"steps={self.steps}, units={self.units})")

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def nodes(self) -> int:
        return int(self._plan.nodes)

    @property
    def units(self) -> int:
        return int(self._plan.units)

    @property
    def slots(self) -> int:
        return int(self._plan.slots)

    @property
    def bit_identical(self) -> bool:
        return bool(self._plan.bit_identical)

    @property
    def info(self) -> Dict[str, object]:
        return dict(self._plan.info)

    @property
    def steps(self) -> int:
        a = self._plan.arrays
        if a["count"].size == 0:
            return 0
        return int((a["start"] + a["count"]).max())

    # --- rows ------------------------------------------------------------------------------
    def messages(self, elements: Optional[int] = None) -> np.ndarray:
        """One row per message, in execution order (step, phase, then the order in which a
        step's messages are applied), as a structured array of :data:`MESSAGE_DTYPE`:

        ``step``, ``phase`` (0 local before the link messages, 1 link message, 2 local
        after), ``src``, ``dst`` (equal for a local operation), ``src_buf`` and ``dst_buf``
        (0 the node's data buffer, ``k >= 1`` scratch buffer ``k``), ``offset`` and
        ``count`` (elements; the range is the same in both buffers), ``bytes`` (the timing
        model's bytes: units moved x ``nbytes/units``), ``hops`` (links on the
        dimension-order route, 0 for local operations), ``op`` (``"reduce"``: the
        destination adds the data to its range; ``"copy"``: the destination stores it).

        ``elements``: elements per node; default ``units`` (one element per unit). With
        ``N`` elements, unit ``u`` starts at element ``(u*N)//units``; a message may then
        cover 0 elements (it is kept: the model still counts its bytes).

        ``sum(bytes * hops)`` equals the report's ``byte_hops``. The table has one row per
        message, so it grows with the schedule: a ring on ``P`` nodes has ``2P(P-1)`` rows
        (18 million on a 50 x 60 mesh, about 1.5 GB).
        """
        plan = self._plan
        U = plan.units
        if elements is None:
            N = U
        else:
            if isinstance(elements, bool) or not isinstance(elements, (int, np.integer)) \
                    or elements < 0:
                raise ValueError(f"elements: expected a non-negative int, got {elements!r}")
            N = int(elements)
        tpl, step, lo_u, hi_u = plan.instances()
        a = plan.arrays
        src, dst = a["src"][tpl], a["dst"][tpl]
        hops_t = np.zeros(a["src"].size, np.int64)
        if a["src"].size:
            _, _, h = self.topology.route(a["src"], a["dst"])
            hops_t = h
        out = np.empty(tpl.size, MESSAGE_DTYPE)
        out["step"] = step
        out["phase"] = a["stage"][tpl]
        out["src"] = src
        out["dst"] = dst
        out["src_buf"] = a["sslot"][tpl]
        out["dst_buf"] = a["dslot"][tpl]
        lo_e = (lo_u * N) // U
        hi_e = (hi_u * N) // U
        out["offset"] = lo_e
        out["count"] = hi_e - lo_e
        out["bytes"] = (hi_u - lo_u) * (self.nbytes / U)
        out["hops"] = hops_t[tpl]
        out["op"] = np.where(a["op"][tpl] == 1, "reduce", "copy")
        return out

    def _header(self) -> Dict[str, Any]:
        t = self.topology
        return {"kind": "Schedule", "algorithm": self.algorithm, "nodes": self.nodes,
                "rows": t.rows, "cols": t.cols, "wraparound": t.wraparound,
                "link_bandwidth_bytes_per_s": t.link_bandwidth,
                "link_latency_s": t.link_latency, "hop_latency_s": t.hop_latency,
                "per_node_bytes": self.nbytes, "units": self.units, "slots": self.slots,
                "steps": self.steps, "bit_identical": self.bit_identical}

    def to_json(self, path: Optional[str] = None, *, elements: Optional[int] = None) -> str:
        """The schedule as JSON: the header (algorithm, mesh, ``per_node_bytes``, ``units``,
        ``steps``, ...) and ``"messages"``: one list per column of :meth:`messages`
        (column-oriented, so that a table library can load it directly). Written to
        ``path`` too when given."""
        rows = self.messages(elements)
        doc = self._header()
        doc["elements"] = self.units if elements is None else int(elements)
        doc["messages"] = {c: rows[c].tolist() for c in _COLUMNS}
        text = json.dumps(doc)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    def to_csv(self, path: Optional[str] = None, *, elements: Optional[int] = None) -> str:
        """The rows of :meth:`messages` as CSV with a header line (columns ``step, phase,
        src, dst, src_buf, dst_buf, offset, count, bytes, hops, op``). Written to ``path``
        too when given."""
        rows = self.messages(elements)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(_COLUMNS)
        cols = [rows[c].tolist() for c in _COLUMNS]
        w.writerows(zip(*cols))
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as f:
                f.write(text)
        return text

    # --- MSCCL-IR -------------------------------------------------------------------------
    def to_msccl_xml(self, path: Optional[str] = None, *, name: Optional[str] = None,
                     proto: str = "Simple", channels: int = 1, min_bytes: int = 0,
                     max_bytes: int = 1 << 40) -> str:
        """The schedule as MSCCL-IR XML (the ``<algo>`` format msccl-tools emit and the MSCCL
        runtime of NCCL/RCCL loads; ASTRA-sim converts it to Chakra ET).

        - ``<algo name proto nchannels nchunksperloop=units ngpus=P coll="allreduce"
          inplace="1" outofplace="0" redop="sum" minBytes maxBytes>`` (``minBytes`` and
          ``maxBytes``: the buffer sizes, bytes, for which the runtime may pick this
          algorithm; ``min_bytes``, ``max_bytes``): one ``<gpu id i_chunks o_chunks
          s_chunks>`` per node; in place,
          so the input buffer ``i`` is the output ``o``; scratch buffer ``k`` of the
          schedule is chunks ``[(k-1)*units, k*units)`` of ``s``.
        - Per node, one threadblock ``<tb id send recv chan>`` per (peer, direction,
          channel) and one for local operations, each running its steps in order.
        - Steps: ``s`` send, ``r`` receive (copy), ``rrc`` receive-reduce-copy (``dst =
          src + received``, with ``src = dst`` the local range), ``cpy`` and ``re`` (local
          copy and reduce, ``dst += src``), ``nop`` (carries an extra dependency).
          ``srcbuf/srcoff``, ``dstbuf/dstoff`` and ``cnt`` are in chunks (= units).
        - ``depid``/``deps``: the step waits for step ``deps`` of threadblock ``depid`` on the
          same GPU (read-after-write, write-after-read and write-after-write hazards across
          threadblocks, as the synchronous steps order them); ``hasdep="1"`` marks steps
          others wait for. A step with several dependencies is preceded by ``nop`` steps,
          one per extra dependency, as msccl-tools does.
        - Messages on a connection (sender, receiver, channel) are matched in order.

        ``channels``: spread a connection's messages over this many channels (a message's
        channel is its schedule template modulo ``channels``). The MSCCL runtime caps
        threadblocks per channel (32) and steps per threadblock (256): a large pipelined
        schedule may need fewer chunks (smaller ``nbytes``) to load there.
        """
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) \
                or channels < 1:
            raise ValueError(f"channels: expected a positive int, got {channels!r}")
        if not isinstance(proto, str) or proto not in ("Simple", "LL", "LL128"):
            raise ValueError(f"proto: expected 'Simple', 'LL' or 'LL128', got {proto!r}")
        for nm, v in (("min_bytes", min_bytes), ("max_bytes", max_bytes)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{nm}: expected a non-negative int (bytes), got {v!r}")
        if max_bytes < min_bytes:
            raise ValueError(f"max_bytes: expected >= min_bytes={min_bytes}, got {max_bytes}")
        text = _msccl_xml(self, name or f"dojo_{self.algorithm}_{self.topology.rows}x"
                          f"{self.topology.cols}", proto, int(channels), int(min_bytes),
                          int(max_bytes))
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text


def _msccl_xml(sch: Schedule, name: str, proto: str, channels: int, min_bytes: int,
               max_bytes: int) -> str:
    plan = sch._plan
    P, U, K = plan.nodes, plan.units, plan.slots
    a = plan.arrays
    tpl, step, lo_u, hi_u = plan.instances()
    stage = a["stage"][tpl]

    def buf(slot: int, lo: int) -> Tuple[str, int]:
        return ("i", lo) if slot == 0 else ("s", (slot - 1) * U + lo)

    # per rank: threadblocks keyed by (send, recv, chan); ops as dicts
    tbs: List[Dict[Tuple[int, int, int], int]] = [dict() for _ in range(P)]
    ops: List[List[List[Dict[str, Any]]]] = [[] for _ in range(P)]
    # hazard tables per rank: per tb, last op index writing / reading each (slot, unit)
    last_w: List[List[np.ndarray]] = [[] for _ in range(P)]
    last_r: List[List[np.ndarray]] = [[] for _ in range(P)]

    def tb_of(rank: int, key: Tuple[int, int, int]) -> int:
        got = tbs[rank].get(key)
        if got is None:
            got = len(ops[rank])
            tbs[rank][key] = got
            ops[rank].append([])
            last_w[rank].append(np.full((K, U), -1, np.int64))
            last_r[rank].append(np.full((K, U), -1, np.int64))
        return got

    def emit(rank: int, key: Tuple[int, int, int], typ: str, reads: List[Tuple[int, int, int]],
             writes: List[Tuple[int, int, int]], src: Tuple[str, int], dst: Tuple[str, int],
             cnt: int) -> None:
        t = tb_of(rank, key)
        idx = len(ops[rank][t])
        deps: Dict[int, int] = {}
        for x in range(len(ops[rank])):
            if x == t:
                continue
            m = -1
            for (sl, lo, hi) in reads:
                m = max(m, int(last_w[rank][x][sl, lo:hi].max()))
            for (sl, lo, hi) in writes:
                m = max(m, int(last_w[rank][x][sl, lo:hi].max()),
                        int(last_r[rank][x][sl, lo:hi].max()))
            if m >= 0:
                deps[x] = m
        for (sl, lo, hi) in reads:
            last_r[rank][t][sl, lo:hi] = idx
        for (sl, lo, hi) in writes:
            last_w[rank][t][sl, lo:hi] = idx
        ops[rank][t].append(dict(type=typ, src=src, dst=dst, cnt=cnt, deps=deps))

    # groups of equal (step, stage) in execution order
    key = step * 3 + stage
    cut = np.flatnonzero(np.diff(key)) + 1 if key.size else np.zeros(0, np.int64)
    starts = np.concatenate([[0], cut]) if key.size else np.zeros(0, np.int64)
    ends = np.concatenate([cut, [key.size]]) if key.size else np.zeros(0, np.int64)
    for g0, g1 in zip(starts.tolist(), ends.tolist()):
        rows = range(g0, g1)
        if int(stage[g0]) == 1:
            # every send of the step reads the value from before the step: sends first
            for i in rows:
                t = int(tpl[i])
                s, d = int(a["src"][t]), int(a["dst"][t])
                lo, hi = int(lo_u[i]), int(hi_u[i])
                ss, ds = int(a["sslot"][t]), int(a["dslot"][t])
                emit(s, (d, -1, t % channels), "s", [(ss, lo, hi)], [], buf(ss, lo),
                     buf(ds, lo), hi - lo)
            for i in rows:
                t = int(tpl[i])
                s, d = int(a["src"][t]), int(a["dst"][t])
                lo, hi = int(lo_u[i]), int(hi_u[i])
                ss, ds = int(a["sslot"][t]), int(a["dslot"][t])
                if int(a["op"][t]) == 1:
                    emit(d, (-1, s, t % channels), "rrc", [(ds, lo, hi)], [(ds, lo, hi)],
                         buf(ds, lo), buf(ds, lo), hi - lo)
                else:
                    emit(d, (-1, s, t % channels), "r", [], [(ds, lo, hi)], buf(ss, lo),
                         buf(ds, lo), hi - lo)
        else:
            for i in rows:
                t = int(tpl[i])
                v = int(a["src"][t])
                lo, hi = int(lo_u[i]), int(hi_u[i])
                ss, ds = int(a["sslot"][t]), int(a["dslot"][t])
                if int(a["op"][t]) == 1:
                    emit(v, (-1, -1, 0), "re", [(ss, lo, hi), (ds, lo, hi)], [(ds, lo, hi)],
                         buf(ss, lo), buf(ds, lo), hi - lo)
                else:
                    emit(v, (-1, -1, 0), "cpy", [(ss, lo, hi)], [(ds, lo, hi)], buf(ss, lo),
                         buf(ds, lo), hi - lo)

    algo = ET.Element("algo", {
        "name": name, "proto": proto, "nchannels": str(channels),
        "nchunksperloop": str(U), "ngpus": str(P), "coll": "allreduce", "inplace": "1",
        "outofplace": "0", "redop": "sum", "minBytes": str(min_bytes),
        "maxBytes": str(max_bytes)})
    for rank in range(P):
        keys = sorted(tbs[rank], key=lambda k: (k[0], k[1], k[2]))
        # threadblock ids in msccl-tools order (by send peer, recv peer, channel)
        new_id = {tbs[rank][k]: i for i, k in enumerate(keys)}
        # drop dependencies implied by an earlier wait of the same threadblock
        for t, lst in enumerate(ops[rank]):
            waited: Dict[int, int] = {}
            for op in lst:
                keep = {x: i for x, i in op["deps"].items() if waited.get(x, -1) < i}
                for x, i in keep.items():
                    waited[x] = i
                op["deps"] = keep
        # step numbers with one nop per extra dependency
        snum: List[List[int]] = []
        for lst in ops[rank]:
            nums, s = [], 0
            for op in lst:
                s += max(len(op["deps"]) - 1, 0)
                nums.append(s)
                s += 1
            snum.append(nums)
        hasdep = set()
        for lst in ops[rank]:
            for op in lst:
                for x, i in op["deps"].items():
                    hasdep.add((x, i))
        g = ET.SubElement(algo, "gpu", {"id": str(rank), "i_chunks": str(U),
                                        "o_chunks": str(U), "s_chunks": str((K - 1) * U)})
        for k in keys:
            t = tbs[rank][k]
            tb = ET.SubElement(g, "tb", {"id": str(new_id[t]), "send": str(k[0]),
                                         "recv": str(k[1]), "chan": str(k[2])})
            s = 0
            for j, op in enumerate(ops[rank][t]):
                deps = sorted(op["deps"].items(), key=lambda kv: new_id[kv[0]])
                for x, i in deps[1:]:
                    ET.SubElement(tb, "step", {
                        "s": str(s), "type": "nop", "srcbuf": "i", "srcoff": "-1",
                        "dstbuf": "o", "dstoff": "-1", "cnt": "0", "depid": str(new_id[x]),
                        "deps": str(snum[x][i]), "hasdep": "0"})
                    s += 1
                depid, depstep = ((str(new_id[deps[0][0]]), str(snum[deps[0][0]][deps[0][1]]))
                                  if deps else ("-1", "-1"))
                ET.SubElement(tb, "step", {
                    "s": str(s), "type": op["type"], "srcbuf": op["src"][0],
                    "srcoff": str(op["src"][1]), "dstbuf": op["dst"][0],
                    "dstoff": str(op["dst"][1]), "cnt": str(op["cnt"]), "depid": depid,
                    "deps": depstep, "hasdep": "1" if (t, j) in hasdep else "0"})
                s += 1
    ET.indent(algo, space="  ")
    return ET.tostring(algo, encoding="unicode")


def pack_spanning_trees(nodes: int, edges: Any, seeds: Any = (), *, groups: Any = None,
                        max_rounds: int = 60
                        ) -> Tuple[List[np.ndarray], np.ndarray, float, bool]:
    """Fractional spanning-tree packing of any connected graph by linear programming (the LP
    behind the ``"spanning_trees"`` schedule; SciPy's HiGHS solves it).

    Maximise ``sum(lambda_T)`` over spanning trees ``T`` with, for every undirected edge, the
    total ``lambda`` of the trees through it at most 1 (the packing number ``tau``). Column
    generation: HiGHS (``scipy.optimize.linprog``) solves the LP over the trees found so far,
    the minimum spanning tree under its edge duals prices the next tree.

    Parameters
    ----------
    nodes : number of nodes ``P`` (ids ``0..P-1``).
    edges : ``(E, 2)`` array-like of undirected edges; any connected graph (for example a
        mesh with failed links removed), no grid assumption.
    seeds : starting trees as parent arrays (``-1`` at the root); optional.
    groups : optional class id per seed; the seeds of a class share one weight (one LP
        column): for a family that a symmetry of the graph maps onto itself this loses
        nothing and keeps the LP small. Pricing still compares against every tree.
    max_rounds : cap on pricing rounds.

    Returns
    -------
    (parents, weights, tau, optimal) : the trees with positive weight (parent arrays; new
        trees rooted at a centre), their ``lambda``, ``sum(lambda)``, and whether it is
        proved optimal (no spanning tree prices below 1, or a bound is reached).

    Raises
    ------
    ValueError : the graph is not connected, or a seed is not a spanning tree of it.
    """
    from . import _schedule
    if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 1:
        raise ValueError(f"nodes: expected a positive int, got {nodes!r}")
    e = np.asarray(edges)
    if e.size == 0:
        e = e.reshape(0, 2)
    if e.ndim != 2 or e.shape[1] != 2 or not np.issubdtype(e.dtype, np.integer):
        raise ValueError(f"edges: expected an (E, 2) array of int node ids, got shape "
                         f"{e.shape} and dtype {e.dtype}")
    if e.size and (e.min() < 0 or e.max() >= nodes or (e[:, 0] == e[:, 1]).any()):
        raise ValueError(f"edges: node ids must be in 0..{int(nodes) - 1}, no self-loops")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, (int, np.integer)) \
            or max_rounds < 0:
        raise ValueError(f"max_rounds: expected a non-negative int, got {max_rounds!r}")
    if int(nodes) > 1 and e.shape[0] == 0:
        raise ValueError("edges: the graph is not connected (no edges)")
    return _schedule.pack_spanning_trees(int(nodes), e.astype(np.int64), tuple(seeds),
                                         groups=None if groups is None else list(groups),
                                         max_rounds=int(max_rounds))


__all__ = ["Schedule", "MESSAGE_DTYPE", "pack_spanning_trees"]
