"""All-reduce schedules on a damaged mesh (:class:`dojo_kernels.mesh.DamagedMesh2D`).

Every algorithm runs on the surviving nodes only (node ids of the full grid; failed nodes
send and receive nothing and keep their own buffer) or raises a ValueError saying why:

- ``ring``, ``bidirectional_ring``: a Hamiltonian cycle of the survivors (searched by
  backtracking, Warnsdorff order, bounded); else a Hamiltonian path closed by one routed
  multi-hop message (``ring_kind = "routed"``, as on a healthy odd x odd mesh); else a
  ValueError (when the survivors of a bipartite mesh have colour classes differing by more
  than one, no such path exists, and the error says so).
- ``2d``: needs full rows and columns: any failed node is a ValueError. Failed links only:
  the row and column rings route around them.
- ``halving_doubling``: the survivors in id order take the places of ``0..P'-1``.
- ``tree``: the breadth-first tree of the damaged graph from the surviving node nearest the
  centre (Manhattan distance in the grid; ties: the smallest id).
- ``chain``: a Hamiltonian path of the survivors, else a ValueError.
- ``spanning_trees``: the LP packing (:func:`dojo_kernels.schedule.pack_spanning_trees`) of
  the surviving graph, seeded with that BFS tree.

A disconnected set of survivors is a ValueError naming the cut-off nodes for every algorithm.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from ._schedule import (Schedule, _Builder, _forest_shape, _ham_path, _integer_weights,
                        _ring_into, _spanning_schedule, bfs_tree, build_2d, build_chain,
                        build_halving_doubling, pack_spanning_trees, skeleton_from_trees,
                        _tree_into, _chunks, Skeleton)
from ..machine.mesh import DamagedMesh2D

_CAP = 5000       # backtracking steps per Hamiltonian search start


def _graph(topology: DamagedMesh2D, algorithm: str
           ) -> Tuple[np.ndarray, List[List[int]], np.ndarray]:
    """(survivor ids, adjacency of the compact graph in E, W, S, N order, compact edges)."""
    topology.check_connected(algorithm)
    alive = topology.survivors()
    index = np.full(topology.nodes, -1, np.int64)
    index[alive] = np.arange(alive.size)
    nb = topology._neighbor_table()
    adj = [[int(index[w]) for w in nb[v] if w >= 0] for v in alive.tolist()]
    lk = topology.links()
    und = lk[lk[:, 0] < lk[:, 1]]
    return alive, adj, index[und]


def _coords(topology: DamagedMesh2D, alive: np.ndarray) -> Callable[[int], Tuple[int, int]]:
    b = topology.cols

    def coords(v: int) -> Tuple[int, int]:
        if v >= alive.size:        # the virtual end node of a free Hamiltonian path search
            return (0, 0)
        r, c = divmod(int(alive[v]), b)
        return int(r), int(c)
    return coords


def _colour_gap(adj: List[List[int]]) -> Optional[int]:
    """|#black - #white| of a 2-colouring, or None when the graph is not bipartite."""
    n = len(adj)
    col = [-1] * n
    col[0] = 0
    stack = [0]
    while stack:
        v = stack.pop()
        for w in adj[v]:
            if col[w] < 0:
                col[w] = 1 - col[v]
                stack.append(w)
            elif col[w] == col[v]:
                return None
    return abs(n - 2 * sum(col))


def _starts(adj: List[List[int]]) -> List[int]:
    """Search starts: the nodes of least degree (ties: smallest compact id), at most 4."""
    return sorted(range(len(adj)), key=lambda v: (len(adj[v]), v))[:4]


def hamiltonian_cycle(adj: List[List[int]], coords: Callable[[int], Tuple[int, int]]
                      ) -> Optional[List[int]]:
    n = len(adj)
    if n <= 2:
        return list(range(n)) if n == 1 or (n == 2 and 1 in adj[0]) else None
    gap = _colour_gap(adj)
    if (gap is not None and gap != 0) or min(len(a) for a in adj) < 2:
        return None
    s = _starts(adj)[0]
    for t in adj[s]:
        path = _ham_path(adj, s, t, coords, _CAP)
        if path is not None:
            return path
    return None


def hamiltonian_path(adj: List[List[int]], coords: Callable[[int], Tuple[int, int]]
                     ) -> Optional[List[int]]:
    """A Hamiltonian path with free ends: a path to a virtual node joined to every node."""
    n = len(adj)
    if n <= 1:
        return list(range(n))
    gap = _colour_gap(adj)
    if (gap is not None and gap > 1) or sum(len(a) == 1 for a in adj) > 2:
        return None
    x = n
    aug = [list(a) + [x] for a in adj] + [list(range(n))]
    for s in _starts(adj):
        path = _ham_path(aug, s, x, coords, _CAP)
        if path is not None:
            return path[:-1]
    return None


def _why_no_path(adj: List[List[int]], what: str) -> str:
    ends = sum(len(a) == 1 for a in adj)
    if ends > 2:
        return f"none exists: {ends} surviving nodes have a single surviving link"
    gap = _colour_gap(adj)
    if gap is not None and gap > (0 if what == "cycle" else 1):
        return (f"none exists: the surviving mesh is bipartite and its two colour classes "
                f"differ by {gap}")
    return f"none found within {_CAP} backtracking steps per start"


@functools.lru_cache(maxsize=64)
def _ring_order(topology: DamagedMesh2D) -> Tuple[Optional[Tuple[int, ...]], str]:
    """(order, kind) of the ring on the survivors, or (None, why)."""
    alive, adj, _ = _graph(topology, "ring")
    coords = _coords(topology, alive)
    cyc = hamiltonian_cycle(adj, coords)
    kind = "cycle"
    if cyc is None:
        cyc = _path(topology)
        kind = "routed"
        if cyc is None:
            return None, _why_no_path(adj, "path")
    return tuple(int(x) for x in alive[cyc]), kind


@functools.lru_cache(maxsize=64)
def _path(topology: DamagedMesh2D) -> Optional[List[int]]:
    """A Hamiltonian path of the survivors (compact ids), or None."""
    alive, adj, _ = _graph(topology, "chain")
    return hamiltonian_path(adj, _coords(topology, alive))


def _ring(topology: DamagedMesh2D, bidirectional: bool) -> Schedule:
    name = "bidirectional_ring" if bidirectional else "ring"
    topology.check_connected(name)
    got, kind = _ring_order(topology)
    if got is None:
        raise ValueError(f"algorithm: {name} needs a Hamiltonian cycle (or a Hamiltonian "
                         f"path, closed by a routed message) of the "
                         f"{topology.survivors().size} surviving nodes; {kind}")
    order = list(got)
    P = len(order)
    bld = _Builder(topology.nodes)
    _ring_into(bld, order, t0=0, base=0, bsize=1)
    units = P
    if bidirectional:
        _ring_into(bld, order[::-1], t0=0, base=P, bsize=1)
        units = 2 * P
    return bld.build(name, max(units, 1), 1, True, {"order": order, "ring_kind": kind})


def _root(topology: DamagedMesh2D, alive: np.ndarray) -> int:
    cr, cc = (topology.rows - 1) // 2, (topology.cols - 1) // 2
    r, c = np.divmod(alive, topology.cols)
    d = np.abs(r - cr) + np.abs(c - cc)
    return int(alive[np.lexsort((alive, d))[0]])


def _tree(topology: DamagedMesh2D, nbytes: float) -> Schedule:
    alive, _, _ = _graph(topology, "tree")
    root = _root(topology, alive)
    parent = bfs_tree(topology, root)
    parent[parent == -2] = -1          # failed nodes: isolated, never a message
    d, h, _ = _forest_shape(parent[None])
    s = _chunks(2 * int(h[0, root]) - 1, 1.0, nbytes, topology)
    bld = _Builder(topology.nodes)
    _tree_into(bld, parent, s=s, base=0, csize=1, shape=(d[0], h[0], root))
    return bld.build("tree", s, 1, True, {"chunks": s, "parent": parent.tolist(), "root": root})


def _chain(topology: DamagedMesh2D, nbytes: float) -> Schedule:
    alive, adj, _ = _graph(topology, "chain")
    path = _path(topology)
    if path is None:
        raise ValueError(f"algorithm: chain needs a Hamiltonian path of the {alive.size} "
                         f"surviving nodes; {_why_no_path(adj, 'path')}")
    return build_chain(topology, nbytes, [int(x) for x in alive[path]])


@functools.lru_cache(maxsize=16)
def _spanning_skeleton(topology: DamagedMesh2D) -> Skeleton:
    alive, _, edges = _graph(topology, "spanning_trees")
    n = int(alive.size)
    P = topology.nodes
    if n == 1:
        par = np.full(P, -2, np.int64)
        par[alive] = -1
        z = np.zeros(0, np.int64)
        sk = dict(src=z, dst=z, prio=z, start=z, size=z, off=z, op=z)
        return sk, 0, 1, 1, [1], par[None], 0.0, (0.0, np.zeros((0, 1)))
    index = np.full(P, -1, np.int64)
    index[alive] = np.arange(n)
    root = _root(topology, alive)
    full = bfs_tree(topology, root)
    seed = np.where(full[alive] >= 0, index[np.maximum(full[alive], 0)], -1)
    parents, lam, _tau, _opt = pack_spanning_trees(n, edges, [seed],
                                                   max_rounds=40 if n <= 256 else 8)
    key = np.unique(np.sort(edges, axis=1), axis=0)
    w, share = _integer_weights(lam, parents, key[:, 0] * n + key[:, 1])
    sk, H, W, T, weights, cpar, share, fill = skeleton_from_trees(
        [(p, int(x)) for p, x in zip(parents, w)], share)
    out = dict(sk)
    out["src"] = alive[sk["src"]]
    out["dst"] = alive[sk["dst"]]
    for arr in out.values():
        arr.setflags(write=False)
    fpar = np.full((cpar.shape[0], P), -2, np.int64)
    fpar[:, alive] = np.where(cpar >= 0, alive[np.maximum(cpar, 0)], -1)
    fpar.setflags(write=False)
    return out, H, W, T, weights, fpar, share, fill


def build_damaged(algorithm: str, topology: Any, nbytes: float) -> Schedule:
    """The schedule of ``algorithm`` on a damaged mesh (see the module docstring)."""
    if algorithm in ("ring", "bidirectional_ring"):
        return _ring(topology, algorithm == "bidirectional_ring")
    if algorithm == "2d":
        if topology.failed_nodes:
            raise ValueError(f"algorithm: 2d needs full rows and columns; failed nodes "
                             f"{list(topology.failed_nodes)} break them")
        topology.check_connected("2d")
        return build_2d(topology)
    if algorithm == "halving_doubling":
        alive, _, _ = _graph(topology, "halving_doubling")
        return build_halving_doubling(topology, alive.tolist())
    if algorithm == "tree":
        return _tree(topology, nbytes)
    if algorithm == "chain":
        return _chain(topology, nbytes)
    if algorithm == "spanning_trees":
        sch = _spanning_schedule(topology, nbytes, _spanning_skeleton(topology))
        return sch
    raise ValueError(f"algorithm: unknown algorithm {algorithm!r}")


__all__ = ["build_damaged", "hamiltonian_cycle", "hamiltonian_path"]
