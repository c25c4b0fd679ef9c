"""How small can the pipeline fill of a spanning-tree all-reduce get? (docs/allreduce.md,
"Why the 8x8 mesh stays below 0.9".)

The schedules of ``algorithm="spanning_trees"`` are pipelined reduce + broadcast on spanning
trees: in tree ``T`` the children of node ``p`` send chunk ``c`` to ``p`` in step
``R_T(p) + c`` and ``p`` sends chunk ``c`` to its children in step ``B_T(p) + c``, with

    R_T(p) >= R_T(child) + 1  (a child with children of its own),
    B_T(root) >= R_T(root) + 1,   B_T(child) >= B_T(p) + 1,

and every message runs ``s`` steps (``s`` chunks). With ``s >= F - 1`` (``F - 1`` the latest
first step) the model's bandwidth time is at least ``s + spread`` steps at full load, where
``spread`` is the largest difference between the mean first steps (weighted by the trees'
shares) of two directed links that carry the full load (the lemma in the docs; tested in
tests/test_tree_packing.py against the simulator).

This script minimises that spread with SciPy's HiGHS, jointly over the trees' weights
``lambda_T`` (a capacity-optimal packing: every edge carries total weight exactly 1) and
their timings: with ``y = lambda_T * t`` (perspective variables) the timing constraints
become ``y_T(child) + lambda_T <= y_T(p)`` and a link's mean first step ``sum_T y_T(...)``,
all linear. Any mixture of timings of one tree (per-tree shifts, staggered copies, ASAP or
ALAP reduce) is a convex combination, so one column per tree covers them. Timings are
continuous here (a relaxation): the value is a lower bound for the given family of trees.

    python tools/tree_fill_lp.py 8 combs          # 128 combs (every spine, every root)
    python tools/tree_fill_lp.py 8 combs,bfs      # + a BFS tree from every node

Families: ``combs`` (spine along a column or a row, root anywhere on the spine), ``bfs``
(breadth-first from every node, neighbours east, west, south, north), ``snakes``
(boustrophedon Hamiltonian paths, 8 orientations, roots at 8 positions along them),
``random`` (128 minimum spanning trees under random edge weights, random roots, seeded).
"""
from __future__ import annotations

import sys
import time
from typing import List, Sequence, Tuple

import numpy as np


def comb(a: int, b: int, spine: int, root: int, columns: bool = True) -> np.ndarray:
    """Parent array of the comb of an a x b mesh: every edge across the spine's direction
    plus the spine (column ``spine`` when ``columns``, else row ``spine``), rooted at
    position ``root`` along the spine."""
    if not columns:
        t = comb(b, a, spine, root, True)             # on the transposed mesh
        v = np.arange(a * b)
        r, c = np.divmod(v, b)
        tv = c * a + r                                # our node -> transposed id
        tp = t[tv]
        return np.where(tp < 0, -1, (tp % a) * b + tp // a)
    r, c = np.divmod(np.arange(a * b), b)
    pr = np.where(c != spine, r, np.where(r < root, r + 1, r - 1))
    pc = np.where(c < spine, c + 1, np.where(c > spine, c - 1, c))
    par = pr * b + pc
    par[root * b + spine] = -1
    return par.astype(np.int64)


def bfs(a: int, b: int, root: int) -> np.ndarray:
    from dojo_kernels.mesh import Mesh2D
    from dojo_kernels.collectives._schedule import bfs_tree
    return np.asarray(bfs_tree(Mesh2D(a, b, link_bandwidth=1.0, link_latency=0.0), root),
                      np.int64)


def snakes(a: int, b: int) -> List[np.ndarray]:
    P = a * b
    rows = [r * b + (c if r % 2 == 0 else b - 1 - c) for r in range(a) for c in range(b)]
    cols = [(r if c % 2 == 0 else a - 1 - r) * b + c for c in range(b) for r in range(a)]
    out = []
    for path in (rows, cols):
        for q in (path, path[::-1]):
            for flip in (False, True):
                qq = [(v // b) * b + (b - 1 - v % b) for v in q] if flip else list(q)
                for pos in range(0, P, max(1, P // 8)):
                    par = np.full(P, -1, np.int64)
                    for t in range(P):
                        if t != pos:
                            par[qq[t]] = qq[t + 1] if t < pos else qq[t - 1]
                    out.append(par)
    return out


def random_trees(a: int, b: int, count: int, seed: int = 12) -> List[np.ndarray]:
    """``count`` spanning trees: minimum spanning trees under random edge weights, each
    rooted at a random node (seeded: the same trees every run)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree
    P = a * b
    v = np.arange(P)
    r, c = np.divmod(v, b)
    ed = np.concatenate([np.stack([v[c < b - 1], v[c < b - 1] + 1], 1),
                         np.stack([v[r < a - 1], v[r < a - 1] + b], 1)])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        w = rng.random(ed.shape[0]) + 1e-3
        mst = minimum_spanning_tree(coo_matrix((w, (ed[:, 0], ed[:, 1])), shape=(P, P)))
        root = int(rng.integers(P))
        _, pred = breadth_first_order(mst, root, directed=False)
        par = np.asarray(pred, np.int64)
        par[root] = -1
        out.append(par)
    return out


def family(a: int, b: int, names: Sequence[str]) -> List[np.ndarray]:
    trees: List[np.ndarray] = []
    if "combs" in names:
        trees += [comb(a, b, j, i) for j in range(b) for i in range(a)]
        trees += [comb(a, b, i, j, columns=False) for i in range(a) for j in range(b)]
    if "bfs" in names:
        trees += [bfs(a, b, v) for v in range(a * b)]
    if "snakes" in names:
        trees += snakes(a, b)
    if "random" in names:
        trees += random_trees(a, b, 128)
    return trees


def min_spread(trees: Sequence[np.ndarray], fmax: float = 1e4
               ) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Minimum over capacity-optimal packings by ``trees`` and their timings (first steps
    at most ``fmax``) of the spread of the links' mean first steps. Returns (spread, lambda
    per tree, R, B) with R, B the (trees, P) timings (meaningful where lambda > 0)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix
    par = np.stack([np.asarray(t, np.int64) for t in trees])
    T, P = par.shape
    nv = T + 2 * T * P + 2
    zlo, zhi = nv - 2, nv - 1
    tt, v = np.nonzero(par >= 0)
    p = par[tt, v]
    yR = T + tt * P + p                          # variable of R_T(p), as y = lambda * R
    yB = T + T * P + tt * P + p
    kids = np.zeros((T, P), bool)
    kids[tt, p] = True
    inner = kids[tt, v]                          # v has children of its own
    ti, vi, pi = tt[inner], v[inner], p[inner]
    roots = np.argmax(par < 0, axis=1)
    rows: List[np.ndarray] = []
    cols: List[np.ndarray] = []
    vals: List[np.ndarray] = []
    nrow = 0

    def add(cs: Sequence[np.ndarray], ws: Sequence[float], n: int) -> None:
        nonlocal nrow
        r = nrow + np.arange(n)
        for c, w in zip(cs, ws):
            rows.append(r)
            cols.append(np.asarray(c, np.int64))
            vals.append(np.full(n, float(w)))
        nrow += n

    # R(v) + 1 <= R(p), B(p) + 1 <= B(v), R(root) + 1 <= B(root), B(p) <= fmax
    add([T + ti * P + vi, T + ti * P + pi, ti], [1, -1, 1], ti.size)
    add([T + T * P + ti * P + pi, T + T * P + ti * P + vi, ti], [1, -1, 1], ti.size)
    ar = np.arange(T)
    add([T + ar * P + roots, T + T * P + ar * P + roots, ar], [1, -1, 1], T)
    kt, kp = np.nonzero(kids)
    add([T + T * P + kt * P + kp, kt], [1, -fmax], kt.size)
    # per directed link: sum of y (its mean first step) within [zlo, zhi]
    src = np.concatenate([v, p])
    dst = np.concatenate([p, v])
    var = np.concatenate([yR, yB])
    _, link = np.unique(src * P + dst, return_inverse=True)
    link = link.reshape(-1)
    NL = int(link.max()) + 1
    for sign, z in ((1.0, zhi), (-1.0, zlo)):
        rows.append(nrow + link)
        cols.append(var)
        vals.append(np.full(var.size, sign))
        rows.append(nrow + np.arange(NL))
        cols.append(np.full(NL, z))
        vals.append(np.full(NL, -sign))
        nrow += NL
    A = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(nrow, nv)).tocsr()
    # every undirected edge carries total weight 1 (a capacity-optimal packing)
    _, edge = np.unique(np.minimum(v, p) * P + np.maximum(v, p), return_inverse=True)
    edge = edge.reshape(-1)
    Aeq = coo_matrix((np.ones(edge.size), (edge, tt)), shape=(int(edge.max()) + 1, nv))
    c = np.zeros(nv)
    c[zhi], c[zlo] = 1.0, -1.0
    res = linprog(c, A_ub=A, b_ub=np.zeros(nrow), A_eq=Aeq.tocsr(),
                  b_eq=np.ones(Aeq.shape[0]), bounds=[(0, None)] * (nv - 2) + [(None, None)] * 2,
                  method="highs")
    if res.status != 0:
        raise RuntimeError(f"LP: {res.message}")
    x = np.asarray(res.x)
    lam = x[:T]
    with np.errstate(invalid="ignore", divide="ignore"):
        R = x[T:T + T * P].reshape(T, P) / lam[:, None]
        B = x[T + T * P:T + 2 * T * P].reshape(T, P) / lam[:, None]
    return float(res.fun), lam, R, B


def main(argv: Sequence[str]) -> None:
    k = int(argv[1]) if len(argv) > 1 else 8
    names = (argv[2] if len(argv) > 2 else "combs").split(",")
    trees = family(k, k, names)
    t0 = time.perf_counter()
    spread, lam, _, _ = min_spread(trees)
    print(f"{k}x{k} mesh, {'+'.join(names)}: {len(trees)} trees, least spread "
          f"{spread:.4f} steps ({int((lam > 1e-9).sum())} trees used, "
          f"{time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main(sys.argv)
