"""The all-reduce model on meshes with failed nodes and links (issue 14, second half).

References are independent of the code under test: the surviving graph, its hop distances
(a plain breadth-first search here), its degrees and edges are recomputed from the grid and
the failure sets; sums of integer-valued float32 data are exact in any order.
"""
from __future__ import annotations

from collections import deque
from typing import Dict, List, Set, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dojo_kernels import allreduce, estimate_allreduce
from dojo_kernels.collectives import ALGORITHMS
from dojo_kernels.d1 import D1Chip, DojoSystem, TrainingTile
from dojo_kernels.mesh import DamagedMesh2D, Mesh2D, training_tile

ALPHA, DELTA, BW = 1e-6, 2e-7, 1e9


# --- independent model of the damaged grid -------------------------------------------------
def grid_edges(a: int, b: int, wrap: bool) -> Set[Tuple[int, int]]:
    """Undirected edges (u < v) of an a x b mesh/torus, written from SPEC section 7."""
    out = set()
    for r in range(a):
        for c in range(b):
            u = r * b + c
            if c + 1 < b:
                out.add((u, u + 1))
            elif wrap and b >= 3:
                out.add((r * b, u))
            if r + 1 < a:
                out.add((u, u + b))
            elif wrap and a >= 3:
                out.add((c, u))
    return out


def surviving(a: int, b: int, wrap: bool, dead: Set[int], cut: Set[Tuple[int, int]]
              ) -> Dict[int, Set[int]]:
    adj: Dict[int, Set[int]] = {v: set() for v in range(a * b) if v not in dead}
    for u, v in grid_edges(a, b, wrap):
        if u in dead or v in dead or (u, v) in cut:
            continue
        adj[u].add(v)
        adj[v].add(u)
    return adj


def bfs(adj: Dict[int, Set[int]], s: int) -> Dict[int, int]:
    dist = {s: 0}
    q = deque([s])
    while q:
        v = q.popleft()
        for w in adj[v]:
            if w not in dist:
                dist[w] = dist[v] + 1
                q.append(w)
    return dist


@st.composite
def damaged(draw: st.DrawFn, connected: bool = True) -> Tuple[Mesh2D, DamagedMesh2D, Set[int],
                                                              Set[Tuple[int, int]]]:
    a = draw(st.integers(3, 6))
    b = draw(st.integers(3, 6))
    wrap = draw(st.booleans())
    healthy = Mesh2D(a, b, link_bandwidth=BW, link_latency=ALPHA, hop_latency=DELTA,
                     wraparound=wrap)
    dead = set(draw(st.lists(st.integers(0, a * b - 1), max_size=3)))
    edges = sorted(grid_edges(a, b, wrap))
    picks = draw(st.lists(st.integers(0, len(edges) - 1), max_size=3))
    cut = {edges[i] for i in picks}
    # links given in either direction
    links = [(v, u) if i % 2 else (u, v) for i, (u, v) in enumerate(sorted(cut))]
    topo = healthy.with_failures(nodes=sorted(dead), links=links)
    adj = surviving(a, b, wrap, dead, cut)
    if connected:
        s = min(adj)
        from hypothesis import assume
        assume(len(bfs(adj, s)) == len(adj) and len(adj) >= 2)
    return healthy, topo, dead, cut


FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# --- structure and routing -------------------------------------------------------------------
@FAST
@given(damaged())
def test_links_degree_and_routes_avoid_failures(case: Tuple) -> None:
    healthy, topo, dead, cut = case
    a, b = topo.rows, topo.cols
    adj = surviving(a, b, topo.wraparound, dead, cut)
    lk = [tuple(x) for x in topo.links().tolist()]
    assert sorted(lk) == sorted((u, v) for u in adj for v in adj[u])
    deg = topo.degree()
    for v in range(a * b):
        assert deg[v] == (len(adj[v]) if v in adj else 0)
    alive = sorted(adj)
    assert topo.survivors().tolist() == alive
    src = np.repeat(alive, len(alive))
    dst = np.tile(alive, len(alive))
    msg, link, hops = topo.route(src, dst)
    hmsg, hlink, hhops = healthy.route(src, dst)
    hl = healthy.links()
    diam = 0
    for i in range(src.size):
        path = [lk[k] for k in link[msg == i]]
        s, d = int(src[i]), int(dst[i])
        assert len(path) == hops[i]
        cur = s
        for u, v in path:                       # a walk s -> d over surviving links only
            assert u == cur and v in adj[u] and u not in dead and v not in dead
            assert (min(u, v), max(u, v)) not in cut
            cur = v
        assert cur == d
        dist = bfs(adj, s)[d]
        assert hops[i] == dist                  # a shortest path of the damaged graph
        diam = max(diam, dist)
        # dimension order where it survives
        hpath = [tuple(hl[k]) for k in hlink[hmsg == i]]
        if all(v in adj.get(u, ()) for u, v in hpath):
            assert path == hpath
    assert topo.diameter() == diam


@FAST
@given(damaged())
def test_routes_are_deterministic(case: Tuple) -> None:
    healthy, topo, dead, cut = case
    again = healthy.with_failures(nodes=sorted(dead, reverse=True),
                                  links=[(v, u) for u, v in sorted(cut)])
    assert again == topo and hash(again) == hash(topo)
    alive = topo.survivors()
    src, dst = np.repeat(alive, alive.size), np.tile(alive, alive.size)
    for x, y in zip(topo.route(src, dst), again.route(src, dst)):
        assert np.array_equal(x, y)


# --- every algorithm: runs correctly or says why -------------------------------------------
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(damaged(), st.integers(1, 40))
def test_conservation_bounds_and_errors(case: Tuple, n: int) -> None:
    healthy, topo, dead, cut = case
    P = topo.nodes
    adj = surviving(topo.rows, topo.cols, topo.wraparound, dead, cut)
    alive = sorted(adj)
    rng = np.random.default_rng(n)
    x = rng.integers(-1000, 1000, size=(P, n)).astype(np.float32)
    expect = x[alive].astype(np.float64).sum(axis=0)       # exact: small integers
    # bounds of the surviving graph, from the independent model
    D = max(max(bfs(adj, v).values()) for v in alive)
    E = sum(len(s) for s in adj.values()) // 2
    nbytes = 4.0 * n
    lat = ALPHA + (D - 1) * min(ALPHA, DELTA)
    deg = nbytes / (min(len(adj[v]) for v in alive) * BW)
    cap = (len(alive) - 1) * nbytes / (E * BW)
    ran = {}
    for alg in ALGORITHMS:
        try:
            out, rep = allreduce(x, topo, algorithm=alg)
        except ValueError as exc:
            msg = str(exc)
            assert alg in msg
            if alg == "2d":
                assert dead and "rows and columns" in msg
            else:
                assert alg in ("ring", "bidirectional_ring", "chain") and "Hamiltonian" in msg
            continue
        out = np.asarray(out)
        assert rep.algorithm == alg and rep.nodes == len(alive)
        assert np.array_equal(out[alive].astype(np.float64), np.broadcast_to(expect, (len(alive), n)))
        if dead:
            assert np.array_equal(out[sorted(dead)], x[sorted(dead)])    # left unchanged
        assert rep.lower_bounds["latency"] == pytest.approx(lat, rel=1e-12)
        assert rep.lower_bounds["degree"] == pytest.approx(deg, rel=1e-12)
        assert rep.lower_bounds["capacity"] == pytest.approx(cap, rel=1e-12)
        assert rep.time >= rep.lower_bound * (1 - 1e-12)
        assert rep.bytes_per_link.size == 2 * E
        # per-link traffic: every byte-hop lands on a surviving link
        assert rep.bytes_per_link.sum() == pytest.approx(rep.byte_hops, rel=1e-9)
        ran[alg] = rep.time
        if alg == "2d":
            assert not dead
    assert {"halving_doubling", "tree", "spanning_trees"} <= set(ran)
    auto = estimate_allreduce(nbytes, topo)
    assert auto.algorithm in ran and auto.time == min(ran.values())


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(damaged())
def test_reports_are_deterministic(case: Tuple) -> None:
    healthy, topo, dead, cut = case
    again = DamagedMesh2D(healthy, nodes=list(dead), links=list(cut))
    for alg in ("tree", "spanning_trees", "halving_doubling"):
        assert estimate_allreduce(1e5, topo, algorithm=alg) == \
            estimate_allreduce(1e5, again, algorithm=alg)


# --- specific cases and errors ---------------------------------------------------------------
def mesh(a: int, b: int, wrap: bool = False) -> Mesh2D:
    return Mesh2D(a, b, link_bandwidth=BW, link_latency=ALPHA, hop_latency=DELTA,
                  wraparound=wrap)


def test_no_failures_is_the_healthy_mesh() -> None:
    m = mesh(4, 5)
    d = m.with_failures()
    for alg in ALGORITHMS:
        assert estimate_allreduce(1e6, d, algorithm=alg) == estimate_allreduce(1e6, m, algorithm=alg)


def test_bad_arguments_name_them() -> None:
    m = mesh(3, 3)
    with pytest.raises(ValueError, match="nodes"):
        m.with_failures(nodes=[9])
    with pytest.raises(ValueError, match="nodes"):
        m.with_failures(nodes=[-1])
    with pytest.raises(TypeError, match="nodes"):
        m.with_failures(nodes=[1.5])
    with pytest.raises(ValueError, match="links.*not an edge"):
        m.with_failures(links=[(0, 4)])           # diagonal
    with pytest.raises(ValueError, match="links.*not an edge"):
        m.with_failures(links=[(0, 2)])           # no wrap link on a mesh
    mesh(3, 3, True).with_failures(links=[(0, 2)])    # a torus has it
    with pytest.raises(TypeError, match="links"):
        m.with_failures(links=[(0, 1, 2)])
    with pytest.raises(ValueError, match="links"):
        m.with_failures(links=[(0, 99)])
    with pytest.raises(ValueError, match="nodes"):
        m.with_failures(nodes=range(9))


def test_disconnected_names_the_cut_off_nodes() -> None:
    # 3x3 mesh: node 0 loses both its links
    d = mesh(3, 3).with_failures(links=[(0, 1), (0, 3)])
    for alg in ALGORITHMS + ("auto",):
        with pytest.raises(ValueError, match=r"nodes \[0\] are cut off"):
            estimate_allreduce(1e3, d, algorithm=alg)
    # a failed column cuts the mesh in two: the smaller part is named
    d = mesh(3, 4).with_failures(nodes=[1, 5, 9])
    with pytest.raises(ValueError, match=r"nodes \[0, 4, 8\] are cut off"):
        estimate_allreduce(1e3, d, algorithm="spanning_trees")


def test_ring_needs_a_hamiltonian_cycle_or_path() -> None:
    # 4x4 mesh less one node: 7 + 8 colours -> no cycle, but a path (routed closure)
    d = mesh(4, 4).with_failures(nodes=[5])
    rep = estimate_allreduce(1e6, d, algorithm="ring")
    assert rep.schedule is not None and rep.schedule.info["ring_kind"] == "routed"
    # 4x4 less two nodes of one colour: colour classes 6 and 8 -> neither exists
    d = mesh(4, 4).with_failures(nodes=[0, 5])
    for alg in ("ring", "bidirectional_ring", "chain"):
        with pytest.raises(ValueError, match="Hamiltonian.*none exists.*differ by 2"):
            estimate_allreduce(1e6, d, algorithm=alg)
    with pytest.raises(ValueError, match="2d needs full rows and columns"):
        estimate_allreduce(1e6, d, algorithm="2d")


def test_failed_link_detour_and_traffic() -> None:
    # 1 x 2 would be trivial; a 3x3 mesh with the link 0-1 failed: 0 -> 1 goes 0-3-4-1
    d = mesh(3, 3).with_failures(links=[(1, 0)])
    msg, link, hops = d.route([0], [1])
    lk = d.links()
    assert [tuple(lk[k]) for k in link] == [(0, 3), (3, 4), (4, 1)] and hops.tolist() == [3]
    assert d.num_links == mesh(3, 3).num_links - 2


def test_machine_objects_offer_with_failures() -> None:
    t = TrainingTile().with_failures(nodes=[12], links=[(0, 1)])
    assert isinstance(t, DamagedMesh2D) and t == training_tile().with_failures(
        nodes=[12], links=[(1, 0)])
    assert DojoSystem().with_failures(nodes=[0]).failed_nodes == (0,)
    assert D1Chip().with_failures(nodes=[0]).survivors().size == 18 * 20 - 1
    with pytest.raises(ValueError, match="links"):
        TrainingTile().with_failures(links=[(0, 6)])


def test_replace_keeps_failures() -> None:
    d = mesh(3, 3).with_failures(nodes=[4])
    r = d.replace(link_bandwidth=2 * BW)
    assert isinstance(r, DamagedMesh2D) and r.failed_nodes == (4,)
    assert r.link_bandwidth == 2 * BW


# --- the report's fault study -------------------------------------------------------------
def test_report_fault_study_and_options() -> None:
    from dojo_kernels import report as rp
    from dojo_kernels.cli import _id_list, _link_list

    assert _id_list("6,12") == (6, 12)
    assert _link_list("12-13, 0-1") == ((12, 13), (0, 1))
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        _link_list("12:13")
    with pytest.raises(ValueError, match="failed_links"):
        rp.ReportConfig(failed_links=((0, 2),))
    with pytest.raises(ValueError, match="failed_chips"):
        rp.ReportConfig(failed_chips=(25,))
    cfg = rp.ReportConfig(failed_chips=(3,), failed_links=((0, 1),),
                          algorithms=("2d", "tree", "spanning_trees"))
    names = [n for n, _, _ in rp.fault_scenarios(cfg)]
    assert names == ["healthy", "1 chip", "2 chips", "1 link", "given"]
    from dojo_kernels.report._report import _fault_study
    rows = _fault_study(cfg, 1e6, lambda label: None)
    assert len(rows) == 5 * 3
    tile = training_tile()
    for f in rows:
        topo = tile.with_failures(nodes=f.failed_chips, links=f.failed_links)
        if f.algorithm == "2d" and f.failed_chips:
            assert not f.ran and "rows and columns" in (f.reason or "")
            continue
        assert f.ran
        r = estimate_allreduce(1e6, topo, algorithm=f.algorithm)
        assert (f.time_s, f.efficiency) == (r.time, r.efficiency)
        assert f.time_s >= f.lower_bound_s
    one = [f for f in rows if f.scenario == "1 chip"]
    assert all(f.failed_chips == (12,) for f in one)       # the centre of the 5x5 tile


def test_bf16_on_a_damaged_mesh() -> None:
    import ml_dtypes
    d = mesh(4, 4, True).with_failures(nodes=[3, 5], links=[(0, 4)])
    alive = d.survivors()
    x = np.random.default_rng(5).integers(-8, 8, size=(16, 33)).astype(ml_dtypes.bfloat16)
    expect = x[alive].astype(np.float64).sum(axis=0)      # |sum| <= 112: exact in BF16
    for alg in ("tree", "spanning_trees", "halving_doubling", "ring"):
        for acc in ("fp32", "bf16"):
            out, _ = allreduce(x, d, algorithm=alg, fmt=__import__("dojo_kernels").BF16,
                               accumulate=acc)
            out = np.asarray(out).view(ml_dtypes.bfloat16)
            assert np.array_equal(out[alive].astype(np.float64), np.broadcast_to(expect, (14, 33)))
            assert np.array_equal(out[[3, 5]].view(np.uint16), x[[3, 5]].view(np.uint16))
