"""All-reduce schedules on a 2D mesh: one representation for the timing model, the
numerics and the MPI executor (see docs/allreduce.md).

A :class:`Schedule` is a table of *message templates*. Template ``i`` is active in steps
``start[i] .. start[i]+count[i]-1``; in its ``j``-th active step it moves the unit range
``[lo, lo+size[i])`` with ``lo = base[i] + ((k0[i] + j*dk[i]) mod kmod[i]) * size[i]`` from
slot ``sslot[i]`` of node ``src[i]`` to slot ``dslot[i]`` of node ``dst[i]``, where it is
added (``op = REDUCE``: ``dst = dst + received``) or stored (``op = COPY``). A buffer of N
elements is cut into ``units`` equal units; unit ``u`` starts at element ``(u*N)//units``.
The timing model treats bytes as divisible (a unit is ``n/units`` bytes).

Within a step: ``stage 0`` node-local operations (``src == dst``, no link, no time), then
every link message (``stage 1``: all read the senders' values from before the step, then
are applied in ``(prio, template)`` order), then ``stage 2`` local operations, applied in
``(prio, template)`` order. Slot 0 holds each node's contribution at the start and its
result at the end.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..machine.mesh import Mesh2D

COPY, REDUCE = 0, 1
MAX_CHUNKS = 256           # pipeline depth cap for the chunked algorithms

ALGORITHMS = ("ring", "bidirectional_ring", "2d", "halving_doubling", "tree", "chain",
              "spanning_trees")

_FIELDS = ("src", "dst", "sslot", "dslot", "op", "stage", "prio", "start", "count",
           "base", "size", "k0", "dk", "kmod")


@dataclass(frozen=True, eq=False)
class Schedule:
    """A step-synchronous all-reduce schedule (see the module docstring)."""

    algorithm: str
    nodes: int
    units: int
    slots: int
    bit_identical: bool
    arrays: Dict[str, np.ndarray] = field(repr=False)
    info: Dict[str, object] = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            got: np.ndarray = arrays[name]
            return got
        raise AttributeError(name)

    @property
    def num_templates(self) -> int:
        return int(self.arrays["src"].size)

    def ranges(self, j: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Unit ranges (lo, hi) of every template for its j-th active step (array j)."""
        a = self.arrays
        if j is None:
            j = np.zeros(a["src"].size, np.int64)
        lo = a["base"] + ((a["k0"] + j * a["dk"]) % a["kmod"]) * a["size"]
        return lo, lo + a["size"]

    def instances(self, unit_bounds: Optional[np.ndarray] = None
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every (template, step, lo_unit, hi_unit) in execution order. With ``unit_bounds``
        (element index of every unit boundary), only those moving at least one element."""
        a = self.arrays
        parts = []
        cnt_all = a["count"]
        # in pieces of about a million instances, so that huge schedules stay in memory
        total = int(cnt_all.sum())
        cuts = np.searchsorted(np.cumsum(cnt_all), np.arange(1, 1 + total // (1 << 20)) << 20)
        for t0, t1 in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [cnt_all.size]])):
            if t1 <= t0:
                continue
            cnt = cnt_all[t0:t1]
            tpl = t0 + np.repeat(np.arange(cnt.size), cnt)
            first = np.repeat(np.cumsum(cnt) - cnt, cnt)
            j = np.arange(tpl.size) - first
            k = (a["k0"][tpl] + j * a["dk"][tpl]) % a["kmod"][tpl]
            lo = a["base"][tpl] + k * a["size"][tpl]
            hi = lo + a["size"][tpl]
            if unit_bounds is not None:
                keep = unit_bounds[hi] > unit_bounds[lo]
                tpl, j, lo, hi = tpl[keep], j[keep], lo[keep], hi[keep]
            parts.append((tpl, a["start"][tpl] + j, lo, hi))
        if not parts:
            z = np.zeros(0, np.int64)
            return z, z, z, z
        tpl, step, lo, hi = (np.concatenate([p[k] for p in parts]) for k in range(4))
        order = np.lexsort((tpl, a["prio"][tpl], a["stage"][tpl], step))
        return tpl[order], step[order], lo[order], hi[order]


class _Builder:
    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.parts: List[Dict[str, np.ndarray]] = []

    def add(self, src: Any, dst: Any, *, start: Any, count: Any, base: Any, size: Any,
            k0: Any = 0, dk: Any = 0, kmod: Any = 1, op: Any = REDUCE, sslot: Any = 0,
            dslot: Any = 0, prio: Any = 0, stage: Any = 1) -> None:
        src = np.asarray(src, np.int64).reshape(-1)
        vals = dict(src=src, dst=dst, sslot=sslot, dslot=dslot, op=op, stage=stage, prio=prio,
                    start=start, count=count, base=base, size=size, k0=k0, dk=dk, kmod=kmod)
        n = src.size
        if n == 0:
            return
        # broadcast views: build() makes the one copy
        self.parts.append({k: np.broadcast_to(np.asarray(v, np.int64), (n,))
                           for k, v in vals.items()})

    def build(self, algorithm: str, units: int, slots: int, bit_identical: bool,
              info: Optional[Dict[str, object]] = None) -> Schedule:
        if self.parts:
            arrays = {k: np.concatenate([p[k] for p in self.parts]) for k in _FIELDS}
        else:
            arrays = {k: np.zeros(0, np.int64) for k in _FIELDS}
        keep = arrays["count"] > 0
        if not keep.all():
            arrays = {k: v[keep] for k, v in arrays.items()}
        for v in arrays.values():
            v.setflags(write=False)
        return Schedule(algorithm, self.nodes, int(units), int(slots), bool(bit_identical),
                        arrays, dict(info or {}))


# --- Hamiltonian cycles and paths ---------------------------------------------------------
def _snake_cycle(a: int, b: int) -> List[int]:
    """Hamiltonian cycle of an a x b mesh (a, b >= 2, a*b even), as (row, col) node ids."""
    if a % 2 == 1:  # transpose: construct on b x a, map back
        cyc = _snake_cycle(b, a)
        return [(v % a) * b + (v // a) for v in cyc]
    order = [(0, c) for c in range(b)]
    for r in range(1, a):
        cols = range(b - 1, 0, -1) if r % 2 == 1 else range(1, b)
        order += [(r, c) for c in cols]
    order += [(r, 0) for r in range(a - 1, 0, -1)]
    return [r * b + c for r, c in order]


def _snake_path(a: int, b: int) -> List[int]:
    """Boustrophedon Hamiltonian path by rows."""
    out = []
    for r in range(a):
        cols = range(b) if r % 2 == 0 else range(b - 1, -1, -1)
        out += [r * b + c for c in cols]
    return out


def _folded_order(k: int) -> List[int]:
    if k <= 2:
        return list(range(k))
    evens = list(range(0, k, 2))
    odds = [i for i in range(k - 1, 0, -1) if i % 2 == 1]
    return evens + odds


def _ham_path(adj: List[List[int]], start: int, target: int,
              coords: Callable[[int], Tuple[int, int]], cap: int) -> Optional[List[int]]:
    """Hamiltonian path start -> target by backtracking in Warnsdorff order (fewest unvisited
    neighbours first; ties: farther from the target first). None if not found within cap."""
    P = len(adj)
    visited = [False] * P
    visited[start] = True
    path = [start]
    tr, tc = coords(target)

    def candidates(v: int) -> List[int]:
        out = []
        for w in adj[v]:
            if visited[w]:
                continue
            if w == target and len(path) != P - 1:
                continue
            deg = sum(1 for x in adj[w] if not visited[x])
            r, c = coords(w)
            out.append((deg, -(abs(r - tr) + abs(c - tc)), w))
        out.sort()
        return [w for _, _, w in out]

    stack = [iter(candidates(start))]
    visits = 0
    while stack:
        if len(path) == P:
            return path if path[-1] == target else None
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            visited[path.pop()] = False
            continue
        visits += 1
        if visits > cap:
            return None
        visited[nxt] = True
        path.append(nxt)
        if len(path) == P:
            if nxt == target:
                return path
            visited[path.pop()] = False
            continue
        stack.append(iter(candidates(nxt)))
    return None


def _closure_rings(a: int, b: int, cap: int = 20000) -> Iterator[Tuple[List[int], int]]:
    """Candidate (order, m) pairs for an odd x odd mesh: a Hamiltonian path u .. w of the mesh
    less the edges {u,m}, {m,w}, closed by the straight 2-hop message w -> m -> u."""
    nb = Mesh2D(a, b, link_bandwidth=1, link_latency=0)._neighbor_table()
    def coords(v: int) -> Tuple[int, int]:
        return divmod(v, b)

    for r in range(1, a - 1):
        for c in range(1, b - 1):
            if (r + c) % 2 == 0:
                continue
            m = r * b + c
            for d in ((0, 1), (1, 0)):
                u = (r - d[0]) * b + (c - d[1])
                w = (r + d[0]) * b + (c + d[1])
                adj = [[int(x) for x in nb[v] if x >= 0] for v in range(a * b)]
                adj[u].remove(m)
                adj[m].remove(u)
                adj[m].remove(w)
                adj[w].remove(m)
                path = _ham_path(adj, u, w, coords, cap)
                if path is not None:
                    yield path, m


def ring_order(topology: Mesh2D) -> Tuple[List[int], str]:
    """The cycle the ring algorithms run on, as a list of node ids, and how it closes:
    ``"cycle"`` (a Hamiltonian cycle), ``"closure"`` (a Hamiltonian path closed by a straight
    2-hop message on an odd x odd mesh), ``"folded"`` (a line: 0, 2, 4, ..., 3, 1) or
    ``"routed"`` (a path closed by a dimension-order multi-hop message; may share links)."""
    return _ring_order_cached(topology.rows, topology.cols, topology.wrap_rows,
                              topology.wrap_cols)


_RING_CACHE: Dict[Tuple[int, int, bool, bool], Tuple[List[int], str]] = {}


def _ring_order_cached(a: int, b: int, wr: bool, wc: bool) -> Tuple[List[int], str]:
    key = (a, b, wr, wc)
    if key not in _RING_CACHE:
        _RING_CACHE[key] = _ring_order_uncached(a, b, wr, wc)
    order, kind = _RING_CACHE[key]
    return list(order), kind


def _ring_order_uncached(a: int, b: int, wr: bool, wc: bool) -> Tuple[List[int], str]:
    P = a * b
    if P <= 2:
        return list(range(P)), "cycle"
    if a == 1:
        return (list(range(b)), "cycle") if wr else ([int(x) for x in _folded_order(b)], "folded")
    if b == 1:
        return (list(range(a)), "cycle") if wc else ([int(x) for x in _folded_order(a)], "folded")
    if P % 2 == 0:
        return _snake_cycle(a, b), "cycle"
    if a >= 3 and b >= 3 and (a, b) != (3, 3):
        ring = _grown_closure(a, b)
        if ring is not None and _shares_no_link(ring, a, b):
            return ring, "closure"
    return _snake_path(a, b), "routed"


def _shares_no_link(order: Sequence[int], a: int, b: int) -> bool:
    """With both ring directions running (every ring message is in flight in every step), no
    directed link carries two messages."""
    m = Mesh2D(a, b, link_bandwidth=1, link_latency=0)
    o = np.asarray(order)
    nxt = np.roll(o, -1)
    _, links, _ = m.route(np.concatenate([o, nxt]), np.concatenate([nxt, o]))
    return bool(np.unique(links).size == links.size)


def _first_closure(a: int, b: int) -> Optional[List[int]]:
    for path, _m in _closure_rings(a, b):
        return path
    return None


def _widen(order: Sequence[int], a: int, b: int) -> Optional[List[int]]:
    """A closure ring of an a x b mesh -> one of a x (b+2): a vertical edge of the ring on the
    last column is replaced by a detour through the two new columns (which covers them)."""
    rc = [divmod(v, b) for v in order]
    P = len(rc)
    for i in range(P - 1):  # consecutive pairs only: the closure (last -> first) stays
        (r1, c1), (r2, c2) = rc[i], rc[i + 1]
        if c1 == c2 == b - 1 and abs(r1 - r2) == 1:
            if r2 == r1 + 1:
                det = [(r, b) for r in range(r1, -1, -1)] + [(r, b + 1) for r in range(a)] + \
                      [(r, b) for r in range(a - 1, r2 - 1, -1)]
            else:
                det = [(r, b) for r in range(r1, a)] + [(r, b + 1) for r in range(a - 1, -1, -1)] \
                      + [(r, b) for r in range(0, r2 + 1)]
            new = rc[: i + 1] + det + rc[i + 1:]
            return [r * (b + 2) + c for r, c in new]
    return None


def _transpose(order: Sequence[int], a: int, b: int) -> List[int]:
    return [(v % b) * a + v // b for v in order]


def _grown_closure(a: int, b: int) -> Optional[List[int]]:
    """Closure ring of an odd x odd mesh: searched on a small base (5x5, 5x3, 3x5), then grown
    two columns / two rows at a time (each growth keeps the path's edges and the 2-hop closure
    disjoint, so the two ring directions still share no directed link)."""
    a0 = 5 if a >= 5 else 3
    b0 = 5 if b >= 5 else 3
    if a * b <= 81:
        direct = _first_closure(a, b)
        if direct is not None:
            return direct
    order = _first_closure(a0, b0)
    if order is None:
        return None
    cur_b = b0
    while cur_b < b:
        order = _widen(order, a0, cur_b)
        if order is None:
            return None
        cur_b += 2
    cur_a = a0
    order = _transpose(order, cur_a, b)       # now a b x cur_a mesh: widen its columns
    while cur_a < a:
        order = _widen(order, b, cur_a)
        if order is None:
            return None
        cur_a += 2
    return _transpose(order, b, a)


# --- builders -------------------------------------------------------------------------------
def _ring_into(bld: _Builder, order_seq: Sequence[int], *, t0: int, base: int, bsize: int,
               prio: int = 0) -> int:
    """Unidirectional ring all-reduce on ``order``: P-1 reduce-scatter steps then P-1
    all-gather steps; block j = units [base + j*bsize, ...); at step s the node at ring
    position r sends block (r - s) mod P (reduce), then block (r + 1 - s) mod P (copy)."""
    order = np.asarray(order_seq, np.int64)
    P = order.size
    if P < 2:
        return t0
    pos = np.arange(P)
    nxt = np.roll(order, -1)
    bld.add(order, nxt, start=t0, count=P - 1, base=base, size=bsize, k0=pos, dk=-1, kmod=P,
            op=REDUCE, prio=prio)
    bld.add(order, nxt, start=t0 + P - 1, count=P - 1, base=base, size=bsize, k0=pos + 1,
            dk=-1, kmod=P, op=COPY, prio=prio)
    return t0 + 2 * (P - 1)


def build_ring(topology: Mesh2D, *, bidirectional: bool = False,
               order: Optional[Sequence[int]] = None) -> Schedule:
    """Ring (or two counter-rotating rings, n/2 each) on ``order`` (default
    :func:`ring_order`)."""
    P = topology.nodes
    kind = "given"
    if order is None:
        order, kind = ring_order(topology)
    order = [int(x) for x in order]
    if sorted(order) != list(range(P)):
        raise ValueError("order: expected a permutation of the node ids")
    bld = _Builder(P)
    if bidirectional:
        _ring_into(bld, order, t0=0, base=0, bsize=1)
        _ring_into(bld, order[::-1], t0=0, base=P, bsize=1)
        units = 2 * P
    else:
        _ring_into(bld, order, t0=0, base=0, bsize=1)
        units = P
    name = "bidirectional_ring" if bidirectional else "ring"
    return bld.build(name, max(units, 1), 1, True, {"order": order, "ring_kind": kind})


def _line_orders(k: int, wrap: bool) -> List[int]:
    return list(range(k)) if (wrap or k <= 2) else _folded_order(k)


def build_2d(topology: Mesh2D) -> Schedule:
    """Reduce-scatter along every row (ring over the row, folded on a mesh), all-reduce along
    every column on the row block a node owns, all-gather along rows."""
    a, b, P = topology.rows, topology.cols, topology.nodes
    bld = _Builder(P)
    rord = np.asarray(_line_orders(b, topology.wrap_rows), np.int64)   # positions -> column
    cord = np.asarray(_line_orders(a, topology.wrap_cols), np.int64)   # positions -> row
    # Units: P; row block j (j = 0..b-1) is units [j*a, (j+1)*a); column sub-block unit 1.
    t = 0
    if b >= 2:
        p = np.tile(np.arange(b), a)
        r = np.repeat(np.arange(a), b)
        src = r * b + rord[p]
        dst = r * b + rord[(p + 1) % b]
        bld.add(src, dst, start=0, count=b - 1, base=0, size=a, k0=p, dk=-1, kmod=b, op=REDUCE)
        t = b - 1
    if a >= 2:
        # Column of position p owns row block (p + 1) mod b after the reduce-scatter.
        q = np.tile(np.arange(a), b)                  # position along the column ring
        p = np.repeat(np.arange(b), a)                # position of the column in the row ring
        col = rord[p]
        blk = (p + 1) % b if b >= 2 else np.zeros_like(p)
        src = cord[q] * b + col
        dst = cord[(q + 1) % a] * b + col
        bld.add(src, dst, start=t, count=a - 1, base=blk * a, size=1, k0=q, dk=-1, kmod=a,
                op=REDUCE)
        bld.add(src, dst, start=t + a - 1, count=a - 1, base=blk * a, size=1, k0=q + 1, dk=-1,
                kmod=a, op=COPY)
        t += 2 * (a - 1)
    if b >= 2:
        p = np.tile(np.arange(b), a)
        r = np.repeat(np.arange(a), b)
        src = r * b + rord[p]
        dst = r * b + rord[(p + 1) % b]
        bld.add(src, dst, start=t, count=b - 1, base=0, size=a, k0=p + 1, dk=-1, kmod=b,
                op=COPY)
    return bld.build("2d", P, 1, True, {"row_order": rord.tolist(), "col_order": cord.tolist()})


def build_halving_doubling(topology: Mesh2D, ids: Optional[Sequence[int]] = None) -> Schedule:
    """Rabenseifner: recursive-halving reduce-scatter (partner distance 1, 2, 4, ... in node-id
    order) then recursive-doubling all-gather. P not a power of two: the first 2r nodes pair
    up (2i sends everything to 2i+1) before, and get the result back after. ``ids``: the
    participating node ids in that order (default all; a damaged mesh: its survivors)."""
    ids_a = (np.arange(topology.nodes, dtype=np.int64) if ids is None
             else np.asarray(ids, np.int64))
    P = int(ids_a.size)
    bld = _Builder(topology.nodes)
    if P == 1:
        return bld.build("halving_doubling", 1, 1, True)
    q = int(math.floor(math.log2(P)))
    Pp = 1 << q
    r = P - Pp
    U = Pp
    t = 0
    if r:
        ev = np.arange(r) * 2
        bld.add(ids_a[ev], ids_a[ev + 1], start=0, count=1, base=0, size=U, op=REDUCE)
        t = 1
    part = ids_a[np.concatenate([np.arange(r) * 2 + 1, np.arange(2 * r, P)]).astype(np.int64)]
    v = np.arange(Pp)
    lo = np.zeros(Pp, np.int64)
    size = U
    for s in range(q):
        bit = (v >> s) & 1
        half = size // 2
        partner = v ^ (1 << s)
        keep_lo = np.where(bit == 0, lo, lo + half)
        send_lo = np.where(bit == 0, lo + half, lo)
        bld.add(part[v], part[partner], start=t, count=1, base=send_lo, size=half, op=REDUCE)
        lo = keep_lo
        size = half
        t += 1
    for s in reversed(range(q)):
        partner = v ^ (1 << s)
        bld.add(part[v], part[partner], start=t, count=1, base=lo, size=size, op=COPY)
        bit = (v >> s) & 1
        lo = np.where(bit == 0, lo, lo - size)
        size *= 2
        t += 1
    if r:
        ev = np.arange(r) * 2
        bld.add(ids_a[ev + 1], ids_a[ev], start=t, count=1, base=0, size=U, op=COPY)
    return bld.build("halving_doubling", U, 1, True, {"participants": part.tolist()})


def bfs_tree(topology: Mesh2D, root: Optional[int] = None) -> np.ndarray:
    """Parent array of the breadth-first spanning tree from ``root`` (default: the central
    node), neighbours visited east, west, south, north; parent[root] = -1."""
    P = topology.nodes
    if root is None:
        root = ((topology.rows - 1) // 2) * topology.cols + (topology.cols - 1) // 2
    nb = topology._neighbor_table()
    parent = np.full(P, -2, np.int64)
    parent[root] = -1
    frontier = np.array([root])
    while frontier.size:
        cand = nb[frontier].reshape(-1)
        par = np.repeat(frontier, 4)
        ok = cand >= 0
        cand, par = cand[ok], par[ok]
        fresh = parent[cand] == -2
        cand, par = cand[fresh], par[fresh]
        u, first = np.unique(cand, return_index=True)
        # first discoverer in visiting order
        order = np.argsort(first, kind="stable")
        u = u[order]
        parent[u] = par[first[order]]
        frontier = u
    return parent


def _forest_shape(parents: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """depth, height (of the subtree) and root of every node of a stack of trees (T, P)."""
    T, P = parents.shape
    par = parents + (np.arange(T) * P)[:, None]
    par = np.where(parents < 0, -1, par).reshape(-1)
    n = par.size
    me = np.arange(n)
    jump = np.where(par < 0, me, par)
    depth = (par >= 0).astype(np.int64)
    while True:  # pointer jumping: depth = number of ancestors
        nxt = jump[jump]
        if np.array_equal(nxt, jump):
            break
        depth = depth + np.where(jump != nxt, depth[jump], 0)
        jump = nxt
    # max depth in each subtree, bottom-up by levels
    sub = depth.copy()
    order = np.argsort(-depth, kind="stable")
    d_sorted = depth[order]
    cuts = np.flatnonzero(np.diff(d_sorted)) + 1
    for grp in np.split(order, cuts):
        grp = grp[par[grp] >= 0]
        if grp.size:
            np.maximum.at(sub, par[grp], sub[grp])
    height = (sub - depth).reshape(T, P)
    roots = np.argmax(parents < 0, axis=1)
    return depth.reshape(T, P), height, roots


def _tree_shape(parent: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """depth and height (of the subtree) of every node; the root."""
    d, h, r = _forest_shape(np.asarray(parent)[None])
    return d[0], h[0], int(r[0])


def _tree_into(bld: _Builder, parent: np.ndarray, *, s: int, base: int, csize: int, t0: int = 0,
               shape: Optional[Tuple[np.ndarray, np.ndarray, int]] = None) -> int:
    """Pipelined reduce (children of a node send chunk c together, added in id order) and
    broadcast over one tree; chunk c = units [base + c*csize, ...). Returns the step count."""
    depth, height, root = shape if shape is not None else _tree_shape(parent)
    H = int(height[root])
    v = np.flatnonzero(parent >= 0)
    if v.size == 0:
        return 0
    pv = parent[v]
    bld.add(v, pv, start=t0 + height[pv] - 1, count=s, base=base, size=csize, k0=0, dk=1,
            kmod=s, op=REDUCE, prio=v)
    bld.add(pv, v, start=t0 + H + depth[pv], count=s, base=base, size=csize, k0=0, dk=1,
            kmod=s, op=COPY, prio=v)
    return 2 * H + s - 1


def _chunks(fill: float, factor: float, nbytes: float, topology: Mesh2D,
            least: int = 0) -> int:
    """Pipeline depth s minimising (s + fill) * (alpha + factor*n/(s*B)), capped.

    With ``least`` (a tree schedule whose model time is exactly ``const + s*alpha +
    fill*factor*n/(s*B)`` for ``s >= least``, see ``_fill_steps``): the integer optimum of
    that function in ``[least, MAX_CHUNKS]`` (``fill`` may then be fractional or 0)."""
    if nbytes <= 0:
        return 1
    alpha = topology.link_latency
    if alpha <= 0:
        return MAX_CHUNKS
    if least:
        c = fill * factor * nbytes / topology.link_bandwidth
        with np.errstate(over="ignore"):
            x = math.sqrt(c / alpha) if c > 0 else 0.0
        lo = max(1, least)
        if not math.isfinite(x) or x >= MAX_CHUNKS:
            return MAX_CHUNKS
        cands = {min(MAX_CHUNKS, max(lo, v)) for v in (math.floor(x), math.ceil(x))}
        return min(cands, key=lambda v: (v * alpha + (c / v), v))
    with np.errstate(over="ignore"):
        s = math.sqrt(max(fill, 1) * factor * nbytes / alpha / topology.link_bandwidth)
    if not math.isfinite(s) or s >= MAX_CHUNKS:
        return MAX_CHUNKS
    return int(max(1, round(s)))


def build_tree(topology: Mesh2D, nbytes: float) -> Schedule:
    parent = bfs_tree(topology)
    depth, height, root = _tree_shape(parent)
    s = _chunks(2 * int(height[root]) - 1, 1.0, nbytes, topology)
    bld = _Builder(topology.nodes)
    _tree_into(bld, parent, s=s, base=0, csize=1)
    return bld.build("tree", s, 1, True, {"chunks": s, "parent": parent.tolist()})


def comb_trees(topology: Mesh2D) -> List[Tuple[np.ndarray, int]]:
    """The spanning trees of the packing and their integer weights: for every column j the
    comb of all horizontal edges plus column j (weight rows-1), for every row i the comb of all
    vertical edges plus row i (weight cols-1). Each mesh edge carries total weight P-1 out of
    E = 2ab-a-b, so the packing reaches tau = E/(P-1) (SPEC section 7). A line is one tree."""
    a, b = topology.rows, topology.cols
    r, c = np.divmod(np.arange(a * b), b)
    trees = []
    if a == 1 or b == 1:
        return [(bfs_tree(topology), 1)]
    ra, cb = (a - 1) // 2, (b - 1) // 2
    for j in range(b):
        pr = np.where(c != j, r, np.where(r < ra, r + 1, r - 1))
        pc = np.where(c < j, c + 1, np.where(c > j, c - 1, c))
        parent = pr * b + pc
        parent[ra * b + j] = -1
        trees.append((parent, a - 1))
    for i in range(a):
        pr = np.where(r < i, r + 1, np.where(r > i, r - 1, r))
        pc = np.where(r != i, c, np.where(c < cb, c + 1, c - 1))
        parent = pr * b + pc
        parent[i * b + cb] = -1
        trees.append((parent, b - 1))
    return trees


# --- spanning-tree packing by linear programming ------------------------------------------
def graph_edges(topology: Mesh2D) -> np.ndarray:
    """(E, 2) undirected edges ``(u, v)``, ``u < v``, of the topology, wrap links included
    (each edge is two directed links of :meth:`Mesh2D.links`)."""
    lk = topology.links()
    und = lk[lk[:, 0] < lk[:, 1]]
    return np.unique(und, axis=0)


def _edge_ids(u: np.ndarray, v: np.ndarray, keys: np.ndarray, P: int) -> np.ndarray:
    """Indices of the undirected edges {u[i], v[i]} among the sorted keys ``lo*P + hi``."""
    k = np.minimum(u, v) * P + np.maximum(u, v)
    i = np.searchsorted(keys, k)
    if (i >= keys.size).any() or (keys[np.minimum(i, keys.size - 1)] != k).any():
        raise ValueError("seeds: a tree uses a pair of nodes that is not an edge")
    return np.asarray(i, np.int64)


def _tree_edges(parent: np.ndarray, keys: np.ndarray, P: int) -> np.ndarray:
    v = np.flatnonzero(parent >= 0)
    if v.size != P - 1 or parent.shape != (P,):
        raise ValueError("seeds: expected parent arrays of spanning trees (one root)")
    return _edge_ids(v, parent[v], keys, P)


def _rooted(P: int, edges: np.ndarray, tree: np.ndarray) -> np.ndarray:
    """Parent array of the tree (edge indices) rooted at a centre (least height)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order
    e = edges[tree]
    g = coo_matrix((np.ones(e.shape[0]), (e[:, 0], e[:, 1])), shape=(P, P)).tocsr()
    order, pred = breadth_first_order(g, 0, directed=False)
    u = int(order[-1])                        # an end of a longest path
    order, pred = breadth_first_order(g, u, directed=False)
    path = [int(order[-1])]
    while pred[path[-1]] >= 0:
        path.append(int(pred[path[-1]]))
    centre = path[len(path) // 2]
    _, pred = breadth_first_order(g, centre, directed=False)
    parent = np.asarray(pred, np.int64)
    parent[centre] = -1
    if (parent < -1).any():  # pragma: no cover - pricing returns spanning trees only
        raise AssertionError("not a spanning tree")
    return parent


def pack_spanning_trees(nodes: int, edges: Any, seeds: Sequence[np.ndarray] = (), *,
                        groups: Optional[Sequence[int]] = None, max_rounds: int = 60,
                        tol: float = 1e-9
                        ) -> Tuple[List[np.ndarray], np.ndarray, float, bool]:
    """Fractional spanning-tree packing of a connected graph by linear programming.

    Maximise ``sum(lambda_T)`` over spanning trees ``T`` subject to ``sum of lambda_T over
    the trees using edge e <= 1`` for every (undirected) edge: the packing number ``tau``
    (Tutte, Nash-Williams). Column generation: the master LP over the trees found so far is
    solved by SciPy's HiGHS (``scipy.optimize.linprog``); its edge duals ``y`` price a new
    column, the minimum spanning tree under ``y`` (``scipy.sparse.csgraph``), added while its
    weight is below 1 (a tree of reduced cost < 0). When no such tree exists the LP optimum
    over *all* spanning trees is reached (``optimal``).

    Parameters
    ----------
    nodes : number of nodes ``P`` (ids ``0..P-1``).
    edges : ``(E, 2)`` undirected edges (no grid assumption: any connected graph, e.g. a
        mesh with failed links or nodes removed and renumbered).
    seeds : starting trees as parent arrays (``-1`` at the root), e.g. good shallow trees;
        without seeds the first column is a BFS tree.
    groups : optional class id per seed: the seeds of one class share one weight (one LP
        column, their summed edge use). For a family that a symmetry maps onto itself (the
        combs of a mesh or torus) uniform weights lose nothing and the LP stays tiny; pricing
        still checks the result against every spanning tree. Generated trees are classes of
        their own.
    max_rounds : cap on pricing rounds.

    Returns
    -------
    (parents, weights, tau, optimal) : the trees with ``weight > 0`` as parent arrays (seeds
        keep their root; generated trees are rooted at a centre), their ``lambda``, the LP
        value ``sum(lambda)``, and whether pricing proved it optimal.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

    P = int(nodes)
    ed = np.asarray(edges, np.int64).reshape(-1, 2)
    ed = np.unique(np.sort(ed, axis=1), axis=0)      # sorted by key lo*P + hi
    E = ed.shape[0]
    if P < 2 or E == 0:
        return [np.full(max(P, 1), -1, np.int64)], np.ones(1), 1.0, True
    keys = ed[:, 0] * P + ed[:, 1]
    # every tree has P-1 edges, so sum(lambda) <= E/(P-1): reaching it proves optimality
    trivial_bound = E / (P - 1)
    cols: List[np.ndarray] = []
    parents: List[Optional[np.ndarray]] = []
    for par in seeds:
        par = np.asarray(par, np.int64)
        cols.append(_tree_edges(par, keys, P))
        parents.append(par)
    if groups is None:
        cls = list(range(len(cols)))
    else:
        if len(groups) != len(cols):
            raise ValueError(f"groups: expected one class id per seed ({len(cols)}), got "
                             f"{len(groups)}")
        _, first = np.unique(np.asarray(groups), return_inverse=True)
        cls = [int(c) for c in first.reshape(-1)]
    if not cols:
        g = coo_matrix((np.ones(E), (ed[:, 0], ed[:, 1])), shape=(P, P)).tocsr()
        _, pred = breadth_first_order(g, 0, directed=False)
        par = np.asarray(pred, np.int64)
        par[0] = -1
        if (par < -1).any():
            raise ValueError("edges: the graph is not connected")
        cols.append(_tree_edges(par, keys, P))
        parents.append(None)
        cls = [0]
    optimal = False
    lam = np.zeros(0)
    for rnd in range(max_rounds + 1):
        T = len(cols)
        K = max(cls) + 1
        size = np.bincount(cls, minlength=K).astype(np.float64)
        rows = np.concatenate(cols)
        cidx = np.repeat(np.asarray(cls, np.int64), [c.size for c in cols])
        # A[e, k]: how many trees of class k use edge e (duplicates add up)
        A = csr_matrix((np.ones(rows.size), (rows, cidx)), shape=(E, K))
        A.sum_duplicates()
        A.sort_indices()
        # Equal rows are the same constraint: keep one of each (on a mesh with its combs,
        # 5890 edges become a + b rows). Rows are compared by two random projections;
        # equal rows (same pattern, same order) give bit-equal sums.
        rng = np.random.default_rng(0x5EED)
        k1 = A @ rng.random(K)
        k2 = A @ rng.random(K)
        _, rep, inv, cnt = np.unique(k1 + 1j * k2, return_index=True, return_inverse=True,
                                     return_counts=True)
        inv = inv.reshape(-1)
        res = linprog(-size, A_ub=A[rep], b_ub=np.ones(rep.size), bounds=(0, None),
                      method="highs")
        if res.status != 0:  # pragma: no cover - the LP is always feasible and bounded
            raise RuntimeError(f"spanning-tree LP failed: {res.message}")
        lam = np.asarray(res.x, np.float64)[np.asarray(cls, np.int64)]    # per tree
        if lam.sum() >= trivial_bound * (1 - 1e-9):
            optimal = True
            break
        # a merged row's dual, split evenly over its edges, is a dual solution of the full LP
        y_red = np.maximum(-np.asarray(res.ineqlin.marginals, np.float64), 0.0)
        y = y_red[inv] / cnt[inv]
        # pricing: the lightest spanning tree under the duals (csgraph drops zero weights,
        # so every weight gets a tiny positive floor)
        w = y + 1e-12
        g = coo_matrix((w, (ed[:, 0], ed[:, 1])), shape=(P, P)).tocsr()
        mst = minimum_spanning_tree(g).tocoo()
        if mst.nnz != P - 1:
            raise ValueError("edges: the graph is not connected")
        tree = _edge_ids(mst.row.astype(np.int64), mst.col.astype(np.int64), keys, P)
        # a dual bound: y / min_T y(T) is feasible for the dual, so tau <= sum(y) / y(mst)
        if float(y[tree].sum()) >= 1.0 - 1e-7 or \
                lam.sum() >= y.sum() / max(float(y[tree].sum()), 1e-300) * (1 - 1e-9):
            optimal = True
            break
        if rnd == max_rounds:
            break
        cols.append(tree)
        parents.append(None)
        cls.append(K)
    keep = np.flatnonzero(lam > tol)
    out: List[np.ndarray] = []
    for i in keep:
        got = parents[i]
        out.append(got if got is not None else _rooted(P, ed, cols[i]))
    return out, lam[keep], float(lam.sum()), optimal


def _line_tree(k: int, centre: int) -> np.ndarray:
    """Parent array of a path 0..k-1 rooted at ``centre``."""
    i = np.arange(k)
    return np.where(i < centre, i + 1, np.where(i > centre, i - 1, -1)).astype(np.int64)


def _torus_combs(a: int, b: int, wr: bool, wc: bool, all_drops: bool) -> List[np.ndarray]:
    """Shallow seed trees of an a x b torus (either dimension may wrap): for each column j a
    comb of the rows (each row a cycle less the edge opposite column j) on the spine column j
    (a cycle less one edge: every choice of that edge when ``all_drops``, else one, rotating
    with j); and the same with rows and columns swapped. Every tree is rooted at the middle
    of its spine, so its height is about a/2 + b/2."""
    out: List[np.ndarray] = []
    r, c = np.divmod(np.arange(a * b), b)

    def along(pos: np.ndarray, k: int, root: int, wrap: bool) -> np.ndarray:
        """Parent position of ``pos`` on a line (or a cycle less the edge opposite root)
        of k nodes rooted at ``root``."""
        if wrap:
            d = (pos - root) % k                       # 0..k-1 forward distance
            fwd = d <= k // 2
            return np.where(d == 0, -1, np.where(fwd, (pos - 1) % k, (pos + 1) % k))
        return np.where(pos < root, pos + 1, np.where(pos > root, pos - 1, -1))

    for j in range(b):
        drops = range(a) if (wc and all_drops) else [j % a if wc else 0]
        for g in drops:
            # spine column j: a path of the column; with wrap, the cycle less the edge
            # (g, g+1), rooted at its middle
            if wc:
                order = [(g + 1 + t) % a for t in range(a)]       # path g+1, ..., g
                rootrow = order[(a - 1) // 2]
                pos_of = {row: t for t, row in enumerate(order)}
                pr_t = np.array([pos_of[x] for x in range(a)])
                par_t = np.where(pr_t < (a - 1) // 2, pr_t + 1,
                                 np.where(pr_t > (a - 1) // 2, pr_t - 1, -1))
                spine_par = np.array([order[t] if t >= 0 else -1 for t in par_t])
            else:
                rootrow = (a - 1) // 2
                spine_par = _line_tree(a, rootrow)
            pc = along(c, b, j, wr)
            par = np.where(c != j, r * b + pc, np.where(spine_par[r] >= 0,
                                                        spine_par[r] * b + c, -1))
            out.append(par.astype(np.int64))
    for i in range(a):
        drops = range(b) if (wr and all_drops) else [i % b if wr else 0]
        for g in drops:
            if wr:
                order = [(g + 1 + t) % b for t in range(b)]
                pos_of = {col: t for t, col in enumerate(order)}
                pc_t = np.array([pos_of[x] for x in range(b)])
                par_t = np.where(pc_t < (b - 1) // 2, pc_t + 1,
                                 np.where(pc_t > (b - 1) // 2, pc_t - 1, -1))
                spine_par = np.array([order[t] if t >= 0 else -1 for t in par_t])
            else:
                spine_par = _line_tree(b, (b - 1) // 2)
            pr = along(r, a, i, wc)
            par = np.where(r != i, pr * b + c, np.where(spine_par[c] >= 0,
                                                        r * b + spine_par[c], -1))
            out.append(par.astype(np.int64))
    return out


def _integer_weights(lam: np.ndarray, parents: Sequence[np.ndarray], keys: np.ndarray,
                     resolution: int = 64) -> Tuple[np.ndarray, float]:
    """Integer shares proportional to ``lam`` (each tree's units per chunk). Two candidates:
    the LP values as exact fractions (a vertex of this LP has small denominators), scaled by
    the lcm of the denominators, and a rounding to ``resolution`` steps per tree; the one
    whose busiest edge carries the smaller share of the buffer wins (ties: fewer units).
    Returns the weights and that share. ``keys``: the sorted edge keys ``lo*P + hi``."""
    from fractions import Fraction
    P = parents[0].size
    par = np.stack(parents)
    t, v = np.nonzero(par >= 0)
    edge = _edge_ids(v, par[t, v], keys, P)

    def share(w: np.ndarray) -> float:
        return float(np.bincount(edge, weights=w[t].astype(np.float64)).max()) / float(w.sum())

    cands = []
    q = lam / lam.sum()
    r = np.maximum(1, np.rint(q * resolution * lam.size)).astype(np.int64)
    cands.append(r // int(np.gcd.reduce(r)))
    # exact fractions of the LP values, and small ratios to the smallest value (trees of one
    # class share one value, so there are few distinct ratios)
    lo = float(lam.min())
    for fr in ([Fraction(float(x)).limit_denominator(8 * P) for x in lam],
               [Fraction(float(x) / lo).limit_denominator(64) for x in lam]):
        den = 1
        for f in fr:
            den = den * f.denominator // math.gcd(den, f.denominator)
            if den > 1 << 20:
                break
        else:
            e = np.array([int(f * den) for f in fr], np.int64)
            if (e > 0).all() and int(e.sum()) <= 1 << 16:
                cands.append(e // int(np.gcd.reduce(e)))
    best = min(cands, key=lambda w: (share(w), int(w.sum())))
    return np.asarray(best, np.int64), share(best)


@functools.lru_cache(maxsize=8)
def lp_trees(a: int, b: int, wraparound: bool
             ) -> Tuple[List[Tuple[np.ndarray, int]], float, bool, float]:
    """The spanning trees of the packing of an ``a x b`` mesh or torus and their integer
    weights, from :func:`pack_spanning_trees` seeded with shallow combs (mesh: the combs of
    :func:`comb_trees`, which already reach ``tau = E/(P-1)``; torus: the wrap-aware combs
    of ``_torus_combs``); returns ``(trees, tau, optimal, share)``, ``share`` the fraction
    of the buffer on the busiest edge with these integer weights (``1/tau`` when exact)."""
    topo = Mesh2D(a, b, link_bandwidth=1.0, link_latency=0.0, wraparound=wraparound)
    P = a * b
    if P == 1:
        return [(np.full(1, -1, np.int64), 1)], 1.0, True, 0.0
    wr, wc = topo.wrap_rows, topo.wrap_cols
    if a == 1 or b == 1:
        seeds = [p for p, _ in comb_trees(topo)]
        if wr or wc:   # a ring: every path less one edge, rooted at its middle
            seeds = []
            for g in range(P):
                order = [(g + 1 + t) % P for t in range(P)]
                par = np.full(P, -1, np.int64)
                mid = (P - 1) // 2
                for t in range(P):
                    if t != mid:
                        par[order[t]] = order[t + 1] if t < mid else order[t - 1]
                seeds.append(par)
    elif wr or wc:
        # every choice of the spine's dropped edge: tau exactly, 2P trees; on larger tori
        # one choice per spine (a + b trees) reaches 2 against tau = 2ab/(ab-1)
        seeds = _torus_combs(a, b, wr, wc, all_drops=P <= 256)
    else:
        seeds = [p for p, _ in comb_trees(topo)]
    # two classes: the combs on a column spine, the combs on a row spine (a translation of
    # the mesh or torus maps each class onto itself)
    if a > 1 and b > 1:
        ncol = b * (a if (wc and P <= 256) else 1) if (wr or wc) else b
    else:
        ncol = len(seeds)
    groups = [0] * ncol + [1] * (len(seeds) - ncol)
    edges = graph_edges(topo)
    # pricing may add deep trees (pipeline fill) for little capacity once the shallow seeds
    # are near tau: it runs on small graphs only
    parents, lam, tau, optimal = pack_spanning_trees(P, edges, seeds, groups=groups,
                                                     max_rounds=40 if P <= 256 else 0)
    w, share = _integer_weights(lam, parents, edges[:, 0] * P + edges[:, 1])
    return [(p, int(x)) for p, x in zip(parents, w)], tau, optimal, share


#: The size-independent part of a spanning-tree schedule (see :func:`skeleton_from_trees`):
#: (templates, deepest tree height, sum of the weights, tree count, weights, parent arrays,
#: busiest edge's share of the buffer, (effective fill in steps, load profile)).
Skeleton = Tuple[Any, int, int, int, List[int], np.ndarray, float, Tuple[float, np.ndarray]]


@functools.lru_cache(maxsize=2)
def _spanning_skeleton(a: int, b: int, wraparound: bool
                       ) -> Skeleton:
    """The size-independent part of the spanning-tree schedule of an ``a x b`` mesh: the
    reduce and broadcast templates of every tree (src, dst, prio, start), the tree of every
    template and its weight. Building it is most of the cost of ``build_spanning_trees`` on a
    large mesh, and it depends only on the shape, so the last two meshes are kept (about
    40 MB each on a 50 x 60 ExaPOD mesh; the arrays are read-only and shared by the
    schedules)."""
    trees, _tau, _opt, share = lp_trees(a, b, wraparound)
    return skeleton_from_trees(trees, share)


def skeleton_from_trees(trees: Sequence[Tuple[np.ndarray, int]], share: float
                        ) -> Skeleton:
    """The templates of the pipelined reduce + broadcast on ``trees`` (``(parent array,
    integer weight)`` pairs on any graph, e.g. from :func:`pack_spanning_trees` on a damaged
    mesh) for :func:`build_spanning_trees`; ``share``: the busiest edge's fraction of the
    buffer with these weights."""
    parents = np.stack([np.asarray(p, np.int64) for p, _ in trees])
    parents.setflags(write=False)
    fd, fh, fr = _forest_shape(parents)
    H = fh[np.arange(len(trees)), fr]
    w = np.array([w for _, w in trees], np.int64)
    off = np.cumsum(w) - w
    t_idx, v = np.nonzero(parents >= 0)
    pv = parents[t_idx, v]
    sk = dict(
        src=np.concatenate([v, pv]), dst=np.concatenate([pv, v]),
        prio=np.concatenate([v, v]),
        # reduce: v -> parent when the parent's subtree below it is done; then broadcast
        start=np.concatenate([fh[t_idx, pv] - 1, H[t_idx] + fd[t_idx, pv]]),
        size=np.concatenate([w[t_idx], w[t_idx]]),
        off=np.concatenate([off[t_idx], off[t_idx]]),
        op=np.concatenate([np.full(v.size, REDUCE, np.int64), np.full(v.size, COPY, np.int64)]))
    for arr in sk.values():
        arr.setflags(write=False)
    # the busiest edge's share of the buffer (each tree uses each of its edges once per
    # direction): sum of the weights of the trees through it, out of sum(w)
    fill = _fill_steps(sk["src"], sk["dst"], sk["start"], sk["size"], parents.shape[1])
    return (sk, int(H.max()), int(w.sum()), len(trees), [int(x) for x in w], parents, share,
            fill)


def _fill_steps(src: np.ndarray, dst: np.ndarray, start: np.ndarray, size: np.ndarray,
                P: int) -> Tuple[float, np.ndarray]:
    """Effective pipeline fill of a tree schedule, in steps at the busiest link's full load,
    and the load profile it comes from.

    Every template is one hop (tree edges are links) and active in steps ``start ..
    start + s - 1`` with ``size`` units per step. ``profile[e, t]`` (``t < F``, ``F =
    max(start) + 1``) is the sum of ``size`` over the templates on directed link ``e`` with
    ``start <= t`` (equal rows merged): with ``s`` chunks link ``e`` carries ``profile[e, min(t, F-1)] -
    profile[e, t-s]`` units in step ``t`` (:func:`_tree_time`). For ``s >= F - 1`` the busiest
    link's load, summed over the steps, is ``(s - F + 1) * Smax + Z``: ``Smax`` the largest
    total on one link (all its templates active: steps ``F-1 .. s-1``), ``Z`` the sum over
    the ``F - 1`` fill steps and the ``F - 1`` drain steps of the busiest link's load then,
    which does not depend on ``s``. Returns ``fill = Z/Smax - (F - 1)``: the bandwidth time is
    ``(s + fill) * Smax`` units, so :func:`_chunks` minimises the model's time ``(s + F - 1)
    * alpha + (s + fill) * Smax * unit / B`` exactly (``2H - 1`` overstates the fill when
    trees of different heights or roots load different links in their fill and drain)."""
    if src.size == 0:
        return 0.0, np.zeros((0, 1))
    F = int(start.max()) + 1
    key = src * P + dst
    if P * P < 2**31:      # a sort of int32 keys is about twice as fast
        key = key.astype(np.int32)
    link = np.unique(key, return_inverse=True)[1].reshape(-1)
    NL = int(link.max()) + 1
    w = size.astype(np.float64)
    profile = np.cumsum(np.bincount(link * F + start, weights=w,
                                    minlength=NL * F).reshape(NL, F), axis=1)
    # only the busiest link of each step matters: links with equal rows count once (the
    # combs of a large mesh give a few hundred distinct rows out of thousands of links)
    # (rows compared by two random projections, as in pack_spanning_trees: equal rows give
    # bit-equal sums; much cheaper than np.unique(axis=0))
    rng = np.random.default_rng(0x5EED)
    key = profile @ rng.random(F) + 1j * (profile @ rng.random(F))
    profile = profile[np.unique(key, return_index=True)[1]]
    profile.setflags(write=False)
    if F <= 1:
        return 0.0, profile
    total = profile[:, -1]
    smax = float(total.max())
    fill_part = float(profile[:, :F - 1].max(axis=0).sum())
    drain_part = float((total[:, None] - profile[:, :F - 1]).max(axis=0).sum())
    return max(0.0, (fill_part + drain_part) / smax - (F - 1)), profile


def _local_min(cost: Callable[[int], float], lo: int, hi: int) -> int:
    """An integer ``s`` in ``[lo, hi]`` with ``cost(s)`` no larger than at ``s - 1`` and ``s + 1``
    (within the range): ternary search (exact for a unimodal cost, about ``2 log1.5(hi-lo)``
    evaluations), then steps downhill until neither neighbour is better."""
    memo: Dict[int, float] = {}

    def f(c: int) -> float:
        if c not in memo:
            memo[c] = cost(c)
        return memo[c]

    a, b = lo, hi
    while b - a > 2:
        m1 = a + (b - a) // 3
        m2 = b - (b - a) // 3
        if f(m1) <= f(m2):
            b = m2
        else:
            a = m1
    s = min(range(a, b + 1), key=lambda c: (f(c), c))
    while True:
        nb = [c for c in (s - 1, s + 1) if lo <= c <= hi and f(c) < f(s)]
        if not nb:
            return s
        s = min(nb, key=lambda c: (f(c), c))


def _tree_time(profile: np.ndarray, s: int, unit_bytes: float, topology: Mesh2D) -> float:
    """The model's time (SPEC section 7: per step ``alpha`` plus the busiest link's bytes
    over ``B``; every message one hop) of a tree schedule with ``s`` chunks, from its load
    profile (:func:`_fill_steps`); ``unit_bytes``: bytes of one unit of ``size``."""
    F = profile.shape[1]
    t = np.arange(F - 1 + s)
    hi = profile[:, np.minimum(t, F - 1)]
    back = t - s
    lo = np.where(back >= 0, profile[:, np.clip(back, 0, F - 1)], 0.0)
    mx = (hi - lo).max(axis=0)
    act = mx > 0
    return float(np.sum(topology.link_latency + mx[act] * unit_bytes
                        / topology.link_bandwidth))


def build_spanning_trees(topology: Mesh2D, nbytes: float) -> Schedule:
    """Every tree of the LP packing (:func:`lp_trees`) at once, tree ``T`` (weight ``w_T``,
    trees in order, ``off_T`` the sum of the weights before it) on units
    ``[off_T*s, (off_T+w_T)*s)``, chunk ``c`` of it units ``off_T*s + c*w_T ..``: the same
    pipelined reduce + broadcast as ``_tree_into``. ``info["parents"]`` holds the trees
    (``(trees, P)`` parent arrays) and ``info["weights"]`` their weights."""
    return _spanning_schedule(topology, nbytes, _spanning_skeleton(
        topology.rows, topology.cols, topology.wraparound))


def _spanning_schedule(topology: Mesh2D, nbytes: float,
                       skeleton: Skeleton
                       ) -> Schedule:
    sk, Hmax, W, ntrees, weights, parents, share, (fill, profile) = skeleton
    P = topology.nodes
    factor = share if ntrees > 1 else 1.0
    s = _chunks(2 * Hmax - 1, factor, nbytes, topology)
    F = profile.shape[1]
    if sk["src"].size and nbytes > 0 and topology.link_latency > 0:
        # The model's time, minimised over s exactly: in closed form for s >= F - 1
        # (_fill_steps), then downwards step by step while it improves (_tree_time).
        s = _chunks(fill, factor, nbytes, topology, least=max(F - 1, 1))
        if s == max(F - 1, 1) and s > 1:
            s = _local_min(lambda c: _tree_time(profile, c, nbytes / (W * c), topology), 1, s)
    n = sk["src"].size
    if n == 0:
        return _Builder(P).build("spanning_trees", max(W * s, 1), 1, True,
                                 {"chunks": s, "trees": ntrees, "weights": weights,
                                  "parents": parents})
    zeros = np.zeros(n, np.int64)
    zeros.setflags(write=False)
    arrays = dict(src=sk["src"], dst=sk["dst"], sslot=zeros, dslot=zeros, op=sk["op"],
                  stage=np.ones(n, np.int64), prio=sk["prio"], start=sk["start"],
                  count=np.full(n, s, np.int64), base=sk["off"] * s, size=sk["size"],
                  k0=zeros, dk=np.ones(n, np.int64), kmod=np.full(n, s, np.int64))
    for arr in arrays.values():
        arr.setflags(write=False)
    return Schedule("spanning_trees", P, max(W * s, 1), 1, True, arrays,
                    {"chunks": s, "trees": ntrees, "weights": weights, "parents": parents})


def chain_path(topology: Mesh2D) -> List[int]:
    """The line the chain runs on: the mesh itself if it is a line, else the row-by-row
    boustrophedon Hamiltonian path."""
    return _snake_path(topology.rows, topology.cols)


def build_chain(topology: Mesh2D, nbytes: float, line: Optional[Sequence[int]] = None
                ) -> Schedule:
    """Pipelined chain on a line v_0..v_{k-1}, s chunks: prefix sums flow right, suffix sums
    flow left at once; node i ends with prefix_i + suffix_{i+1} (not the same bits on every
    node). Slots: 0 own/result, 1 prefix, 2 suffix, 3 received suffix. ``line``: the nodes in
    line order (default :func:`chain_path`; a damaged mesh: a Hamiltonian path of its
    survivors)."""
    path = np.asarray(chain_path(topology) if line is None else line, np.int64)
    k = path.size
    bld = _Builder(topology.nodes)
    if k == 1:
        return bld.build("chain", 1, 1, True, {"chunks": 1, "path": path.tolist()})
    s = _chunks(k - 2, 1.0, nbytes, topology)
    U = s
    ch = dict(count=s, k0=0, dk=1, kmod=s, size=1, base=0)
    # stage 0, step 0: prefix and suffix accumulators start as the node's own value
    bld.add(path[1:], path[1:], start=0, count=1, base=0, size=U, op=COPY, sslot=0, dslot=1,
            stage=0)
    bld.add(path[:-1], path[:-1], start=0, count=1, base=0, size=U, op=COPY, sslot=0, dslot=2,
            stage=0)
    i = np.arange(k - 1)
    # prefix: v_i -> v_{i+1} at step i + c, added into slot 1
    bld.add(path[i], path[i + 1], start=i, op=REDUCE, sslot=np.where(i == 0, 0, 1), dslot=1,
            **ch)
    # suffix: v_j -> v_{j-1} at step (k-1-j) + c, stored in slot 3, then added into slot 2
    j = np.arange(k - 1, 0, -1)
    bld.add(path[j], path[j - 1], start=k - 1 - j, op=COPY,
            sslot=np.where(j == k - 1, 0, 2), dslot=3, **ch)
    jj = j[j - 1 >= 1]  # receivers v_{j-1} that forward the suffix (not v_0)
    bld.add(path[jj - 1], path[jj - 1], start=k - 1 - jj, op=REDUCE, sslot=3, dslot=2, stage=2,
            **ch)
    # results: v_0 = x_0 + S_1; v_i = P_i + S_{i+1}; v_{k-1} = P_{k-1}
    bld.add(path[0], path[0], start=k - 2, op=REDUCE, sslot=3, dslot=0, stage=2, prio=1, **ch)
    mid = np.arange(1, k - 1)
    when = np.maximum(mid - 1, k - 2 - mid)
    bld.add(path[mid], path[mid], start=when, op=COPY, sslot=1, dslot=0, stage=2, prio=0, **ch)
    bld.add(path[mid], path[mid], start=when, op=REDUCE, sslot=3, dslot=0, stage=2, prio=1,
            **ch)
    bld.add(path[k - 1], path[k - 1], start=k - 2, op=COPY, sslot=1, dslot=0, stage=2, **ch)
    return bld.build("chain", U, 4, False, {"chunks": s, "path": path.tolist()})


def build(algorithm: str, topology: Mesh2D, nbytes: float) -> Schedule:
    if topology.damaged:
        from ._faults import build_damaged
        return build_damaged(algorithm, topology, nbytes)
    if algorithm == "ring":
        return build_ring(topology)
    if algorithm == "bidirectional_ring":
        return build_ring(topology, bidirectional=True)
    if algorithm == "2d":
        return build_2d(topology)
    if algorithm == "halving_doubling":
        return build_halving_doubling(topology)
    if algorithm == "tree":
        return build_tree(topology, nbytes)
    if algorithm == "chain":
        return build_chain(topology, nbytes)
    if algorithm == "spanning_trees":
        return build_spanning_trees(topology, nbytes)
    raise ValueError(f"algorithm: expected 'auto' or one of {', '.join(ALGORITHMS)}, "
                     f"got {algorithm!r}")
