"""2D mesh (and torus) topologies for the all-reduce model (SPEC section 7).

A :class:`Mesh2D` of ``rows x cols`` nodes, node ``r*cols + c``. Every mesh edge is two
independent directed links of bandwidth ``link_bandwidth`` (bytes/s); nodes are all-port.
A message of ``m`` bytes over ``h`` hops (dimension-order routing: along the row first, then
along the column, cut-through) takes ``link_latency + (h-1)*hop_latency + m/link_bandwidth``.

Presets use the D1 figures of SPEC section 6. Every figure is a parameter; the ones marked
"assumption" are not public and are our guesses.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _units
from .d1 import D1Chip, D1Node, DojoSystem, TrainingTile

# Directions of the four links leaving a node, in link-index order.
EAST, WEST, SOUTH, NORTH = 0, 1, 2, 3

# --- D1 figures: SPEC section 6. Each lives in dojo_kernels.d1 (one place); these module
# constants are read from the default machine objects, for backward compatibility. ----------
_NODE, _CHIP, _TILE, _SYSTEM = D1Node(), D1Chip(), TrainingTile(), DojoSystem()
CLOCK_HZ = _NODE.clock_hz
#: Node-to-node link, bytes/s per direction (D1Node.noc_link_bytes_per_cycle: 64 B/cycle,
#: HC34 via TNP; AI Day 2021 said 512 GB/s; unresolved, SPEC section 6).
NODE_LINK_BANDWIDTH = _NODE.noc_link_bw
#: "single cycle per hop" (HC34): D1Node.hop_latency_cycles per extra hop, and
#: D1Node.link_latency_cycles (assumption: one cycle) of fixed cost per message.
NODE_HOP_LATENCY = _NODE.hop_latency_s
NODE_LINK_LATENCY = _NODE.link_latency_s
#: Node grid of one D1 (D1Chip.grid): 354 nodes, shape not public; the full 18 x 20
#: rectangle is modelled.
D1_NODE_ROWS, D1_NODE_COLS = _CHIP.grid
#: Chip-to-chip link inside a training tile (TrainingTile.chip_link_bw, derived: one D1
#: edge, ~2 TB/s per direction: 576 SerDes lanes x 112 Gb/s over 4 edges; AI Day, HC34).
CHIP_LINK_BANDWIDTH = _TILE.chip_link_bw
#: Per-message and per-hop latency between chips (TrainingTile; assumption).
CHIP_LINK_LATENCY = _TILE.chip_link_latency
CHIP_HOP_LATENCY = _TILE.chip_hop_latency
#: Training tile: 5 x 5 D1 (TrainingTile.chips; HC34 system talk, high).
TILE_ROWS, TILE_COLS = _TILE.chips
#: Tile-to-tile (TrainingTile.offtile_bw_per_edge: 36 TB/s off-tile, 9 TB/s per edge, HC34);
#: taken per direction (assumption).
TILE_LINK_BANDWIDTH = _TILE.offtile_bw_per_edge
#: Per-message and per-hop latency between tiles (DojoSystem; assumption).
TILE_LINK_LATENCY = _SYSTEM.tile_link_latency
TILE_HOP_LATENCY = _SYSTEM.tile_hop_latency
#: ExaPOD: 10 cabinets x 2 trays x 6 tiles = 120 tiles = 3000 D1 (DojoSystem.tiles).
EXAPOD_TILES = _SYSTEM.tiles


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name}: expected a positive int, got {v}")
    return int(v)


def _real(name: str, v: Any, *, positive: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f) or (f <= 0 if positive else f < 0):
        what = "a positive finite number" if positive else "a non-negative finite number"
        raise ValueError(f"{name}: expected {what}, got {f}")
    return f


@dataclass(frozen=True)
class Mesh2D:
    """A ``rows x cols`` mesh (``wraparound=True``: torus) of all-port nodes.

    Parameters
    ----------
    rows, cols : mesh shape; node ``r*cols + c`` sits at row ``r``, column ``c``.
    link_bandwidth : bytes/s of one directed link (each edge is two, full duplex).
    link_latency : seconds, the fixed cost ``alpha`` of every message.
    hop_latency : seconds, ``delta``, added per hop beyond the first.
    wraparound : add the wrap-around links of a torus. A dimension of size 1 or 2 has no
        wrap link (it would duplicate an existing edge or be a self-loop).
    """

    rows: int
    cols: int
    link_bandwidth: float
    link_latency: float
    hop_latency: float = 0.0
    wraparound: bool = False

    def __init__(self, rows: int, cols: int, *, link_bandwidth: float, link_latency: float,
                 hop_latency: float = 0.0, wraparound: bool = False) -> None:
        object.__setattr__(self, "rows", _positive_int("rows", rows))
        object.__setattr__(self, "cols", _positive_int("cols", cols))
        object.__setattr__(self, "link_bandwidth",
                           _real("link_bandwidth", link_bandwidth, positive=True))
        object.__setattr__(self, "link_latency",
                           _real("link_latency", link_latency, positive=False))
        object.__setattr__(self, "hop_latency", _real("hop_latency", hop_latency, positive=False))
        if not isinstance(wraparound, (bool, np.bool_)):
            raise TypeError(f"wraparound: expected a bool, got {type(wraparound).__name__}")
        object.__setattr__(self, "wraparound", bool(wraparound))
        if self.rows * self.cols > 1 << 24:
            raise ValueError(f"rows*cols: at most {1 << 24} nodes, got {self.rows * self.cols}")

    # --- structure ------------------------------------------------------------------------
    @property
    def nodes(self) -> int:
        """Number of nodes ``P``."""
        return self.rows * self.cols

    @property
    def shape(self) -> Tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def wrap_rows(self) -> bool:
        """Whether each row is a cycle (wrap link between columns 0 and cols-1)."""
        return self.wraparound and self.cols >= 3

    @property
    def wrap_cols(self) -> bool:
        """Whether each column is a cycle."""
        return self.wraparound and self.rows >= 3

    def coords(self, node: Any) -> Tuple[np.ndarray, np.ndarray]:
        """(row, col) of node id(s)."""
        node = np.asarray(node)
        return node // self.cols, node % self.cols

    def node(self, row: Any, col: Any) -> np.ndarray:
        """Node id(s) of (row, col)."""
        return np.asarray(np.asarray(row) * self.cols + np.asarray(col))

    def _neighbor_table(self) -> np.ndarray:
        """(P, 4) neighbour of each node in directions E, W, S, N; -1 where no link."""
        a, b = self.rows, self.cols
        r, c = np.divmod(np.arange(self.nodes), b)
        out = np.full((self.nodes, 4), -1, np.int64)
        e = np.where(c + 1 < b, c + 1, 0 if self.wrap_rows else -1)
        w = np.where(c - 1 >= 0, c - 1, b - 1 if self.wrap_rows else -1)
        s = np.where(r + 1 < a, r + 1, 0 if self.wrap_cols else -1)
        n = np.where(r - 1 >= 0, r - 1, a - 1 if self.wrap_cols else -1)
        out[:, EAST] = np.where(e >= 0, r * b + e, -1)
        out[:, WEST] = np.where(w >= 0, r * b + w, -1)
        out[:, SOUTH] = np.where(s >= 0, s * b + c, -1)
        out[:, NORTH] = np.where(n >= 0, n * b + c, -1)
        return out

    def _link_index(self) -> np.ndarray:
        """(P*4,) compact directed-link index of (node, direction), -1 where no link."""
        nb = self._neighbor_table().reshape(-1)
        idx = np.full(nb.shape, -1, np.int64)
        ok = nb >= 0
        idx[ok] = np.arange(int(ok.sum()))
        return idx

    @property
    def num_links(self) -> int:
        """Number of directed links (twice the number of edges)."""
        return int((self._neighbor_table() >= 0).sum())

    def links(self) -> np.ndarray:
        """(L, 2) array of (src, dst) of every directed link, in the order used by
        ``report.bytes_per_link``: by source node, then direction east, west, south, north."""
        nb = self._neighbor_table()
        src = np.repeat(np.arange(self.nodes), 4).reshape(self.nodes, 4)
        ok = nb >= 0
        return np.stack([src[ok], nb[ok]], axis=1)

    def link_grid(self, values: Any) -> np.ndarray:
        """Per-link values (in :meth:`links` order, e.g. ``report.bytes_per_link``) as a
        ``(rows, cols, 4)`` float array indexed by source node and direction (east, west,
        south, north), NaN where there is no link: ready for plotting."""
        values = np.asarray(values, np.float64)
        if values.shape != (self.num_links,):
            raise ValueError(f"values: expected shape ({self.num_links},), got {values.shape}")
        out = np.full(self.nodes * 4, np.nan)
        idx = self._link_index()
        ok = idx >= 0
        out[ok] = values[idx[ok]]
        return out.reshape(self.rows, self.cols, 4)

    def degree(self) -> np.ndarray:
        """Number of links leaving each node."""
        return np.asarray((self._neighbor_table() >= 0).sum(axis=1))

    def diameter(self) -> int:
        """Largest hop count of a dimension-order route."""
        dr = self.rows // 2 if self.wrap_cols else self.rows - 1
        dc = self.cols // 2 if self.wrap_rows else self.cols - 1
        return dr + dc

    def grid_hops(self, src: Any, dst: Any) -> np.ndarray:
        """Hops of the dimension-order route from ``src`` to ``dst`` (arrays of node ids) on
        the healthy grid: the Manhattan distance, the shorter way round on a wrapped
        dimension. No routing tables: cheap. On a damaged mesh it is a lower bound of the
        route's hops."""
        b = self.cols
        r1, c1 = np.divmod(np.asarray(src, np.int64), b)
        r2, c2 = np.divmod(np.asarray(dst, np.int64), b)
        return np.asarray(_signed_steps(c2 - c1, b, self.wrap_rows)[0]
                          + _signed_steps(r2 - r1, self.rows, self.wrap_cols)[0], np.int64)

    def route(self, src: Any, dst: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dimension-order routes of messages ``src[i] -> dst[i]`` (along the row first).

        Returns ``(msg, link, hops)``: for every hop, the message index and the compact
        directed-link index (see :meth:`links`), and the hop count of every message.
        Torus dimensions take the shorter way (ties: increasing index).
        """
        src = np.asarray(src, np.int64).reshape(-1)
        dst = np.asarray(dst, np.int64).reshape(-1)
        a, b = self.rows, self.cols
        r1, c1 = np.divmod(src, b)
        r2, c2 = np.divmod(dst, b)
        dc, sc = _signed_steps(c2 - c1, b, self.wrap_rows)
        dr, sr = _signed_steps(r2 - r1, a, self.wrap_cols)
        hops = dc + dr
        lid = self._link_index()
        if hops.size and int(hops.max()) <= 1:
            # one hop or none (most schedules): no expansion needed
            msg = np.flatnonzero(hops)
            h = dc[msg] > 0
            direction = np.where(h, np.where(sc[msg] > 0, EAST, WEST),
                                 np.where(sr[msg] > 0, SOUTH, NORTH))
            link = lid[src[msg] * 4 + direction]
            if (link < 0).any():  # pragma: no cover - a routing bug, never user input
                raise AssertionError("route crosses a missing link")
            return msg, link, hops
        total = int(hops.sum())
        msg = np.repeat(np.arange(src.size), hops)
        if total == 0:
            return msg, np.zeros(0, np.int64), hops
        start = np.cumsum(hops) - hops
        k = np.arange(total) - np.repeat(start, hops)      # hop number within the message
        dcm = np.repeat(dc, hops)
        horiz = k < dcm
        rr = np.repeat(r1, hops)
        cc = np.repeat(c1, hops)
        scm = np.repeat(sc, hops)
        srm = np.repeat(sr, hops)
        # Horizontal hop k leaves (r1, c1 + k*sc); vertical hop j leaves (r1 + j*sr, c2).
        col_h = (cc + k * scm) % b
        j = k - dcm
        row_v = (rr + j * srm) % a
        col_v = np.repeat(c2, hops)
        node = np.where(horiz, rr * b + col_h, row_v * b + col_v)
        direction = np.where(horiz, np.where(scm > 0, EAST, WEST),
                             np.where(srm > 0, SOUTH, NORTH))
        link = lid[node * 4 + direction]
        if (link < 0).any():  # pragma: no cover - a routing bug, never user input
            raise AssertionError("route crosses a missing link")
        return msg, link, hops

    # --- failures (see DamagedMesh2D) -----------------------------------------------------
    @property
    def damaged(self) -> bool:
        """Whether some nodes or links have failed (a :class:`DamagedMesh2D`)."""
        return False

    def survivors(self) -> np.ndarray:
        """Sorted ids of the nodes that take part in collectives (all of them here)."""
        return np.arange(self.nodes)

    def with_failures(self, nodes: Iterable[Any] = (), links: Iterable[Any] = ()
                      ) -> "DamagedMesh2D":
        """This mesh with failed ``nodes`` (node ids) and ``links`` (pairs ``(u, v)`` of
        neighbouring node ids; the edge fails in both directions) removed: a
        :class:`DamagedMesh2D`. Node ids keep their meaning (row-major ids of the full grid).
        A bad id, a pair that is not an edge of this mesh, or a malformed argument is a
        ValueError/TypeError naming ``nodes`` or ``links``. Failures add up when called on a
        damaged mesh."""
        return DamagedMesh2D(self, nodes=nodes, links=links)

    def replace(self, **changes: Any) -> "Mesh2D":
        """A copy with some parameters changed."""
        kw: Dict[str, Any] = dict(rows=self.rows, cols=self.cols, link_bandwidth=self.link_bandwidth,
                  link_latency=self.link_latency, hop_latency=self.hop_latency,
                  wraparound=self.wraparound)
        kw.update(changes)
        return Mesh2D(kw.pop("rows"), kw.pop("cols"), **kw)


def _int_id(name: str, v: Any, P: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected node ids (ints), got {type(v).__name__}")
    if not 0 <= int(v) < P:
        raise ValueError(f"{name}: node id {int(v)} out of range [0, {P})")
    return int(v)


@dataclass(frozen=True, eq=True, repr=True)
class DamagedMesh2D(Mesh2D):
    """A :class:`Mesh2D` with failed nodes and links (from :meth:`Mesh2D.with_failures`).

    Node ids keep their meaning: ``nodes``, ``coords``, ``node`` and the buffer rows of
    ``allreduce`` are those of the full ``rows x cols`` grid; failed nodes take no part
    (:meth:`survivors` lists the others). A failed link ``(u, v)`` removes both directed links
    of that edge; a failed node removes the links to and from it. :meth:`links`,
    ``num_links``, :meth:`degree` (0 for a failed node) and ``report.bytes_per_link``
    describe the surviving links only.

    **Routing** (deterministic): a message takes its dimension-order route (row first, as on a
    healthy mesh) when that route avoids every failed link and node; otherwise a shortest path
    of the damaged graph, chosen hop by hop: from the current node, the first neighbour in the
    order east, west, south, north that is one hop closer to the destination. Either way the
    route is a shortest path of the damaged graph, so :meth:`diameter` (the largest hop count
    between two survivors) is the longest route. Messages from or to a failed node, or between
    survivors in different components, are a ValueError.

    Attributes
    ----------
    failed_nodes : sorted tuple of failed node ids.
    failed_links : sorted tuple of failed edges ``(u, v)``, ``u < v`` (only edges between two
        surviving nodes are listed; an edge at a failed node is gone with it).
    """

    failed_nodes: Tuple[int, ...] = ()
    failed_links: Tuple[Tuple[int, int], ...] = ()

    def __init__(self, base: Mesh2D, *, nodes: Iterable[Any] = (),
                 links: Iterable[Any] = ()) -> None:
        if not isinstance(base, Mesh2D):
            raise TypeError(f"base: expected a Mesh2D, got {type(base).__name__}")
        Mesh2D.__init__(self, base.rows, base.cols, link_bandwidth=base.link_bandwidth,
                        link_latency=base.link_latency, hop_latency=base.hop_latency,
                        wraparound=base.wraparound)
        P = self.nodes
        if isinstance(nodes, (str, bytes)) or not hasattr(nodes, "__iter__"):
            raise TypeError(f"nodes: expected an iterable of node ids, got {type(nodes).__name__}")
        if isinstance(links, (str, bytes)) or not hasattr(links, "__iter__"):
            raise TypeError(f"links: expected an iterable of (u, v) pairs, got "
                            f"{type(links).__name__}")
        dead = set(getattr(base, "failed_nodes", ()))
        for v in nodes:
            dead.add(_int_id("nodes", v, P))
        nb = Mesh2D._neighbor_table(self)
        cut = set(getattr(base, "failed_links", ()))
        for pair in links:
            try:
                u, v = pair
            except (TypeError, ValueError):
                raise TypeError(f"links: expected pairs (u, v) of node ids, got {pair!r}") from None
            u, v = _int_id("links", u, P), _int_id("links", v, P)
            if v not in nb[u]:
                raise ValueError(f"links: ({u}, {v}) is not an edge of the {self.rows}x"
                                 f"{self.cols} {'torus' if self.wraparound else 'mesh'} "
                                 f"(expected neighbouring node ids)")
            cut.add((min(u, v), max(u, v)))
        cut = {e for e in cut if e[0] not in dead and e[1] not in dead}
        if len(dead) >= P:
            raise ValueError(f"nodes: every node of the {self.rows}x{self.cols} mesh failed")
        object.__setattr__(self, "failed_nodes", tuple(sorted(dead)))
        object.__setattr__(self, "failed_links", tuple(sorted(cut)))

    @property
    def damaged(self) -> bool:
        return bool(self.failed_nodes or self.failed_links)

    def healthy(self) -> Mesh2D:
        """The same mesh with nothing failed."""
        return Mesh2D(self.rows, self.cols, link_bandwidth=self.link_bandwidth,
                      link_latency=self.link_latency, hop_latency=self.hop_latency,
                      wraparound=self.wraparound)

    def survivors(self) -> np.ndarray:
        alive = np.ones(self.nodes, bool)
        alive[list(self.failed_nodes)] = False
        return np.flatnonzero(alive)

    def replace(self, **changes: Any) -> "DamagedMesh2D":
        """A copy with some parameters changed, the same failures."""
        return DamagedMesh2D(self.healthy().replace(**changes), nodes=self.failed_nodes,
                             links=self.failed_links)

    def _neighbor_table(self) -> np.ndarray:
        return _damaged_table(self)

    def degree(self) -> np.ndarray:
        """Number of surviving links leaving each node (0 for a failed node)."""
        return np.asarray((self._neighbor_table() >= 0).sum(axis=1))

    def components(self) -> List[List[int]]:
        """Connected components of the surviving nodes (lists of ids), largest first (ties:
        the one with the smallest id first)."""
        return [list(c) for c in _damaged_components(self)]

    def check_connected(self, what: str = "topology") -> None:
        """ValueError naming the cut-off nodes (those outside the largest component) when
        the survivors are not connected."""
        comps = _damaged_components(self)
        if len(comps) > 1:
            cut = sorted(v for c in comps[1:] for v in c)
            raise ValueError(f"{what}: the surviving nodes are not connected; nodes {cut} are "
                             f"cut off from the {len(comps[0])} nodes of the largest component")

    def distances(self) -> np.ndarray:
        """(P, P) hop counts of the damaged graph (-1 between failed or unconnected nodes)."""
        return _damaged_distances(self)

    def diameter(self) -> int:
        """Largest hop count between two surviving nodes (a shortest path of the damaged
        graph; routes are shortest paths). ValueError when the survivors are not connected."""
        self.check_connected()
        d = _damaged_distances(self)
        alive = self.survivors()
        return int(d[np.ix_(alive, alive)].max())

    def route(self, src: Any, dst: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Routes of messages ``src[i] -> dst[i]`` around the failures (see the class
        docstring); same return value as :meth:`Mesh2D.route`, link indices into
        :meth:`links` of this damaged mesh."""
        src = np.asarray(src, np.int64).reshape(-1)
        dst = np.asarray(dst, np.int64).reshape(-1)
        if src.size and (src.min() < 0 or dst.min() < 0 or max(src.max(), dst.max()) >= self.nodes):
            raise ValueError(f"src, dst: node ids out of range [0, {self.nodes})")
        if self.failed_nodes and src.size:
            ends = np.concatenate([src, dst])
            dead = np.isin(ends, self.failed_nodes)
            if dead.any():
                raise ValueError(f"src, dst: messages from or to failed nodes "
                                 f"{sorted(set(ends[dead].tolist()))}")
        h = self.healthy()
        msg, hlink, hops = h.route(src, dst)
        remap = _healthy_to_damaged(self)
        dl = remap[hlink]
        bad = np.zeros(src.size, bool)
        bad[msg[dl < 0]] = True
        if not bad.any():
            return msg, dl, hops
        good_hop = ~bad[msg]
        msgs = [msg[good_hop]]
        lks = [dl[good_hop]]
        hops = hops.copy()
        dist = _damaged_distances(self)
        nb = self._neighbor_table()
        lid = self._link_index()
        cache: Dict[Tuple[int, int], List[int]] = {}
        for i in np.flatnonzero(bad).tolist():
            s, d = int(src[i]), int(dst[i])
            path = cache.get((s, d))
            if path is None:
                if dist[s, d] < 0:
                    self.check_connected("src, dst")
                path = []
                cur = s
                while cur != d:
                    for k in range(4):
                        w = int(nb[cur, k])
                        if w >= 0 and dist[w, d] == dist[cur, d] - 1:
                            path.append(int(lid[cur * 4 + k]))
                            cur = w
                            break
                cache[(s, d)] = path
            msgs.append(np.full(len(path), i, np.int64))
            lks.append(np.asarray(path, np.int64))
            hops[i] = len(path)
        m = np.concatenate(msgs)
        l_ = np.concatenate(lks)
        order = np.argsort(m, kind="stable")
        return m[order], l_[order], hops


@functools.lru_cache(maxsize=64)
def _damaged_table(t: DamagedMesh2D) -> np.ndarray:
    nb = Mesh2D._neighbor_table(t)
    if t.failed_nodes:
        dead = np.zeros(t.nodes, bool)
        dead[list(t.failed_nodes)] = True
        nb[dead] = -1
        nb[(nb >= 0) & dead[np.maximum(nb, 0)]] = -1
    for u, v in t.failed_links:
        nb[u][nb[u] == v] = -1
        nb[v][nb[v] == u] = -1
    nb.setflags(write=False)
    return nb


@functools.lru_cache(maxsize=64)
def _healthy_to_damaged(t: DamagedMesh2D) -> np.ndarray:
    """Compact link index of the healthy mesh -> that of the damaged one (-1: failed)."""
    h = Mesh2D._neighbor_table(t).reshape(-1)
    dl = t._link_index()
    out = dl[h >= 0]
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=64)
def _damaged_distances(t: DamagedMesh2D) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path
    lk = t.links()
    P = t.nodes
    g = coo_matrix((np.ones(lk.shape[0]), (lk[:, 0], lk[:, 1])), shape=(P, P)).tocsr()
    d = shortest_path(g, directed=True, unweighted=True)
    out = np.where(np.isfinite(d), d, -1).astype(np.int64)
    dead = list(t.failed_nodes)
    out[dead, :] = -1
    out[:, dead] = -1
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=64)
def _damaged_components(t: DamagedMesh2D) -> Tuple[Tuple[int, ...], ...]:
    d = _damaged_distances(t)
    seen: set[int] = set()
    comps = []
    for v in t.survivors().tolist():
        if v in seen:
            continue
        c = tuple(np.flatnonzero(d[v] >= 0).tolist())
        seen.update(c)
        comps.append(c)
    comps.sort(key=lambda c: (-len(c), c[0]))
    return tuple(comps)


def _signed_steps(d: Any, k: int, wrap: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Hop count and direction (+1/-1) along one dimension of size k."""
    d = np.asarray(d, np.int64)
    if wrap:
        fwd = d % k
        back = k - fwd
        use_fwd = fwd <= back
        steps = np.where(fwd == 0, 0, np.where(use_fwd, fwd, back))
        sign = np.where(use_fwd, 1, -1)
    else:
        steps = np.abs(d)
        sign = np.where(d >= 0, 1, -1)
    return steps, sign


# --- presets ---------------------------------------------------------------------------------
def _preset_figures(link_bandwidth: float, link_latency: float, hop_latency: float) -> None:
    """The presets model Dojo hardware: a figure off by a unit prefix is an error there
    (Mesh2D itself stays generic and takes any positive bandwidth)."""
    _units.check("link_bandwidth", link_bandwidth, "B/s")
    _units.check_latency("link_latency", link_latency)
    _units.check_latency("hop_latency", hop_latency)


def d1_chip(machine: Optional[D1Chip] = None, *, rows: Optional[int] = None,
            cols: Optional[int] = None, link_bandwidth: Optional[float] = None,
            link_latency: Optional[float] = None, hop_latency: Optional[float] = None,
            wraparound: bool = False) -> Mesh2D:
    """The node mesh of one D1 chip (SPEC section 6): by default 18 x 20 nodes (the real chip
    has 354; the 6 missing nodes are not modelled), 128 GB/s per directed link, one cycle per
    hop and per message. ``machine`` (a :class:`dojo_kernels.d1.D1Chip`) supplies the grid,
    link bandwidth (bytes/s) and latencies (seconds, from the node's cycles and clock);
    keyword figures (SI units) override it."""
    chip = _CHIP if machine is None else machine
    if not isinstance(chip, D1Chip):
        raise TypeError(f"machine: expected a dojo_kernels.d1.D1Chip, got {type(chip).__name__}")
    node = chip.node
    bw = node.noc_link_bw if link_bandwidth is None else link_bandwidth
    la = node.link_latency_s if link_latency is None else link_latency
    hl = node.hop_latency_s if hop_latency is None else hop_latency
    _preset_figures(bw, la, hl)
    return Mesh2D(chip.grid[0] if rows is None else rows, chip.grid[1] if cols is None else cols,
                  link_bandwidth=bw, link_latency=la, hop_latency=hl, wraparound=wraparound)


def chip_mesh(rows: int, cols: int, *, link_bandwidth: float = CHIP_LINK_BANDWIDTH,
              link_latency: float = CHIP_LINK_LATENCY, hop_latency: float = CHIP_HOP_LATENCY,
              wraparound: bool = False) -> Mesh2D:
    """A mesh of D1 chips joined by their off-chip links (~2 TB/s per edge per direction;
    ``link_bandwidth`` in bytes/s, latencies in seconds). ``chip_mesh(50, 60)`` is an
    ExaPOD's 3000 D1 as one flat chip mesh."""
    _preset_figures(link_bandwidth, link_latency, hop_latency)
    return Mesh2D(rows, cols, link_bandwidth=link_bandwidth, link_latency=link_latency,
                  hop_latency=hop_latency, wraparound=wraparound)


def training_tile(machine: Optional[TrainingTile] = None, *, rows: Optional[int] = None,
                  cols: Optional[int] = None, link_bandwidth: Optional[float] = None,
                  link_latency: Optional[float] = None, hop_latency: Optional[float] = None,
                  wraparound: bool = False) -> Mesh2D:
    """The 5 x 5 chip mesh of a training tile (HC34), chip-to-chip links of ~2 TB/s.
    ``machine`` (a :class:`dojo_kernels.d1.TrainingTile`, e.g. a ``D2Tile``) supplies the chip
    grid, link bandwidth (bytes/s) and latencies (seconds); keyword figures override it."""
    tile = _TILE if machine is None else machine
    if not isinstance(tile, TrainingTile):
        raise TypeError(f"machine: expected a dojo_kernels.d1.TrainingTile, got {type(tile).__name__}")
    return chip_mesh(tile.chips[0] if rows is None else rows, tile.chips[1] if cols is None else cols,
                     link_bandwidth=tile.chip_link_bw if link_bandwidth is None else link_bandwidth,
                     link_latency=tile.chip_link_latency if link_latency is None else link_latency,
                     hop_latency=tile.chip_hop_latency if hop_latency is None else hop_latency,
                     wraparound=wraparound)


def system(rows: Optional[int] = None, cols: Optional[int] = None, *,
           link_bandwidth: Optional[float] = None, link_latency: Optional[float] = None,
           hop_latency: Optional[float] = None, wraparound: bool = False,
           machine: Optional[DojoSystem] = None) -> Mesh2D:
    """A mesh of training tiles (9 TB/s per tile edge, HC34; ``link_bandwidth`` in bytes/s,
    latencies in seconds). An ExaPOD has 120 tiles, e.g. ``system(10, 12)``. ``machine`` (a
    :class:`dojo_kernels.d1.DojoSystem`, default ``DojoSystem()``) supplies the grid (when
    ``rows``/``cols`` are not given), the link (its tile's ``offtile_bw_per_edge``) and the
    latencies; keyword figures override it."""
    sysm = _SYSTEM if machine is None else machine
    if not isinstance(sysm, DojoSystem):
        raise TypeError(f"machine: expected a dojo_kernels.d1.DojoSystem, got {type(sysm).__name__}")
    if (rows is None) != (cols is None):
        raise TypeError("rows, cols: give both or neither (then the machine's grid)")
    bw = sysm.tile.offtile_bw_per_edge if link_bandwidth is None else link_bandwidth
    la = sysm.tile_link_latency if link_latency is None else link_latency
    hl = sysm.tile_hop_latency if hop_latency is None else hop_latency
    _preset_figures(bw, la, hl)
    r, c = sysm.grid if rows is None or cols is None else (rows, cols)
    return Mesh2D(r, c, link_bandwidth=bw, link_latency=la, hop_latency=hl, wraparound=wraparound)


#: The D1 machine objects a topology argument accepts besides a Mesh2D.
Machine = Union[D1Chip, TrainingTile, DojoSystem]

#: What :func:`as_topology` accepts (the ``topology`` argument of the all-reduce functions):
#: a :class:`Mesh2D`, or a machine object (``D1Chip``: its node mesh; ``TrainingTile``: its
#: chip mesh; ``DojoSystem``: its tile mesh).
TopologyLike = Union[Mesh2D, D1Chip, TrainingTile, DojoSystem]

#: What :func:`as_levels` accepts (the ``levels`` argument of the hierarchical all-reduce): a
#: non-empty sequence of :data:`TopologyLike`, innermost first, or one machine object, which
#: stands for its levels with chips as endpoints.
LevelsLike = Union[Sequence[TopologyLike], D1Chip, TrainingTile, DojoSystem]


def as_topology(obj: Any, name: str = "topology") -> Mesh2D:
    """The all-reduce topology a machine stands for -- the one conversion every function
    taking a machine or a topology uses:

    - a :class:`Mesh2D`: itself;
    - a :class:`~dojo_kernels.d1.D1Chip`: its node mesh, :func:`d1_chip` (machine);
    - a :class:`~dojo_kernels.d1.TrainingTile` (or ``D2Tile``): its chip mesh,
      :func:`training_tile` (machine);
    - a :class:`~dojo_kernels.d1.DojoSystem`: its tile mesh, :func:`system` (machine=...).

    Anything else is a TypeError naming ``name``.
    """
    if isinstance(obj, Mesh2D):
        return obj
    if isinstance(obj, D1Chip):
        return d1_chip(obj)
    if isinstance(obj, TrainingTile):
        return training_tile(obj)
    if isinstance(obj, DojoSystem):
        return system(machine=obj)
    raise TypeError(f"{name}: expected a dojo_kernels.mesh.Mesh2D or a machine (D1Chip, "
                    f"TrainingTile, D2Tile, DojoSystem), got {type(obj).__name__}")


def as_levels(obj: Any) -> Tuple[Mesh2D, ...]:
    """The levels of a hierarchical all-reduce a machine stands for, innermost first, with
    chips as endpoints (a D1Chip's endpoints are its nodes): D1Chip -> (node mesh,),
    TrainingTile -> (chip mesh,), DojoSystem -> (chip mesh of a tile, tile mesh). A sequence
    is returned as a tuple of :func:`as_topology` of its items."""
    if isinstance(obj, DojoSystem):
        return (training_tile(obj.tile), system(machine=obj))
    if isinstance(obj, (D1Chip, TrainingTile, Mesh2D)):
        return (as_topology(obj),)
    if isinstance(obj, (list, tuple)) and obj:
        return tuple(as_topology(m, "levels") for m in obj)
    raise TypeError("levels: expected a non-empty sequence of Mesh2D (or machines), innermost "
                    f"first, or a machine (D1Chip, TrainingTile, DojoSystem); got "
                    f"{type(obj).__name__}")


__all__ = ["Mesh2D", "DamagedMesh2D", "d1_chip", "chip_mesh", "training_tile", "system", "as_topology",
           "as_levels", "EAST", "WEST", "SOUTH", "NORTH", "TopologyLike", "LevelsLike"]
