"""Spanning-tree packing from a linear program (issue 12 item 7): the LP reaches the packing
number on meshes, tori and damaged graphs, and the schedule built on it is near the capacity
bound. Its numerics are checked in test_allreduce_numerics.py (tori included)."""
from fractions import Fraction

import numpy as np
import pytest

import dojo_kernels as dk
from dojo_kernels.collectives._schedule import lp_trees
from dojo_kernels.schedule import pack_spanning_trees
from dojo_kernels.collectives import estimate_schedule
from dojo_kernels.mesh import Mesh2D, chip_mesh

GiB = 1 << 30


def make(a, b, wrap=False, alpha=0.0, delta=0.0, bw=2e12):
    return Mesh2D(a, b, link_bandwidth=bw, link_latency=alpha, hop_latency=delta,
                  wraparound=wrap)


def check_packing(P, edges, parents, lam):
    """Every returned tree is a spanning tree of the graph; every edge carries <= 1."""
    eset = {frozenset(e) for e in np.asarray(edges).tolist()}
    load = {e: 0.0 for e in eset}
    for par, w in zip(parents, lam):
        par = np.asarray(par)
        assert par.shape == (P,) and (par == -1).sum() == 1
        root = int(np.flatnonzero(par == -1)[0])
        for v in range(P):
            if v != root:
                e = frozenset((v, int(par[v])))
                assert e in eset, (v, par[v])
                load[e] += w
            seen, u = 0, v
            while u != root:           # reaches the root: no cycle
                u = int(par[u])
                seen += 1
                assert seen < P
    assert max(load.values()) <= 1 + 1e-7


@pytest.mark.parametrize("a,b,wrap", [(5, 5, False), (8, 8, False), (5, 5, True),
                                      (8, 8, True), (3, 7, False), (4, 6, True), (3, 4, True),
                                      (1, 6, True), (2, 5, False)])
def test_lp_reaches_the_packing_number(a, b, wrap):
    """tau = E/(P-1) on meshes and tori (no subgraph is denser than the whole; notes §2.8):
    E counted here from the shape, not from the package."""
    m = make(a, b, wrap)
    P = a * b
    wr, wc = wrap and b >= 3, wrap and a >= 3
    E = a * (b - 1) + b * (a - 1) + (a if wr else 0) + (b if wc else 0)
    trees, tau, optimal, share = lp_trees(a, b, wrap)
    assert optimal
    assert tau == pytest.approx(E / (P - 1), rel=1e-9)
    edges = [tuple(l) for l in m.links().tolist() if l[0] < l[1]]
    assert len(edges) == E
    assert share == pytest.approx(1 / tau, rel=1e-3)   # integer weights: close to exact
    check_packing(P, edges, [p for p, _ in trees], [0.0] * len(trees))


def test_lp_on_damaged_graphs():
    """A 4x4 mesh with links removed, and two 4-cliques joined by one bridge: the bridge is
    in every spanning tree, so tau = 1, below E/(P-1); the dual bound proves it."""
    # two K4 joined by the bridge 3-4
    k4 = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    edges = k4 + [(i + 4, j + 4) for i, j in k4] + [(3, 4)]
    parents, lam, tau, optimal = pack_spanning_trees(8, edges)
    assert optimal and tau == pytest.approx(1.0)
    check_packing(8, edges, parents, lam)
    # K5: tau = E/(P-1) = 10/4
    k5 = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    parents, lam, tau, optimal = pack_spanning_trees(5, k5)
    assert optimal and tau == pytest.approx(2.5)
    check_packing(5, k5, parents, lam)
    # a 4x4 mesh less two links (node ids kept): 22 edges over 15 nodes - 1, and no part is
    # denser, so tau = 22/15 (every tree has 15 edges: sum(lambda) <= 22/15 always)
    m = make(4, 4)
    edges = [tuple(l) for l in m.links().tolist() if l[0] < l[1]]
    edges.remove((5, 6))
    edges.remove((9, 10))
    parents, lam, tau, optimal = pack_spanning_trees(16, edges)
    assert optimal
    check_packing(16, edges, parents, lam)
    assert tau == pytest.approx(22 / 15)


@pytest.mark.parametrize("a,b,wrap", [(5, 5, False), (3, 5, True)])
def test_column_generation_from_one_bfs_tree(a, b, wrap):
    """Without seeds the LP starts from one BFS tree (value 1) and pricing adds trees until
    it proves tau = E/(P-1); capped at 0 rounds it stops at 1, not proved."""
    m = make(a, b, wrap)
    edges = [tuple(l) for l in m.links().tolist() if l[0] < l[1]]
    P = a * b
    parents, lam, tau, optimal = pack_spanning_trees(P, edges)
    assert optimal and tau == pytest.approx(len(edges) / (P - 1))
    check_packing(P, edges, parents, lam)
    _, _, tau0, optimal0 = pack_spanning_trees(P, edges, max_rounds=0)
    assert tau0 == pytest.approx(1.0) and not optimal0


def test_grouped_seeds_share_a_weight():
    """Combs of a 4x6 mesh in two classes (column spines, row spines): one weight per class,
    still tau (the classes are symmetric); a wrong group count is refused."""
    from dojo_kernels.collectives._schedule import comb_trees
    m = make(4, 6)
    edges = [tuple(l) for l in m.links().tolist() if l[0] < l[1]]
    seeds = [p for p, _ in comb_trees(m)]
    groups = [0] * 6 + [1] * 4
    parents, lam, tau, optimal = pack_spanning_trees(24, edges, seeds, groups=groups,
                                                     max_rounds=0)
    assert optimal and tau == pytest.approx(38 / 23)
    assert len(set(np.round(lam[:6], 12))) == 1 and len(set(np.round(lam[6:], 12))) == 1
    # (a-1)/(ab-1) per column comb, (b-1)/(ab-1) per row comb: notes §2.8
    assert lam[0] == pytest.approx(3 / 23) and lam[-1] == pytest.approx(5 / 23)
    with pytest.raises(ValueError, match="groups"):
        pack_spanning_trees(24, edges, seeds, groups=[0, 1])


def test_large_torus_one_drop_per_spine_is_near_tau():
    """Beyond 256 nodes a torus gets one comb per spine (a + b trees), no pricing: 2 against
    tau = 2ab/(ab-1), a loss of 1/(ab); the schedule uses the wrap links."""
    trees, tau, optimal, share = lp_trees(17, 17, True)
    assert len(trees) == 34
    assert tau >= (1 - 1e-9) * 2 * 289 / 288 * (288 / 289)
    r = dk.estimate_allreduce(GiB, make(17, 17, True), algorithm="spanning_trees")
    assert r.links_used == 4 * 289


def test_lp_rejects_disconnected_graphs_and_bad_seeds():
    with pytest.raises(ValueError, match="connected"):
        pack_spanning_trees(4, [(0, 1), (2, 3)])
    with pytest.raises(ValueError, match="seeds"):
        pack_spanning_trees(3, [(0, 1), (1, 2)], seeds=[np.array([-1, 0, 0])])
    with pytest.raises(ValueError, match="edges"):
        pack_spanning_trees(3, [(0, 1), (1, 3)])
    with pytest.raises(ValueError, match="edges"):
        pack_spanning_trees(3, [(0, 1), (1, 1)])
    with pytest.raises(ValueError, match="edges"):
        pack_spanning_trees(3, [0, 1, 2])
    with pytest.raises(ValueError, match="edges"):
        pack_spanning_trees(3, [])
    with pytest.raises(ValueError, match="nodes"):
        pack_spanning_trees(0, [(0, 1)])
    with pytest.raises(ValueError, match="max_rounds"):
        pack_spanning_trees(2, [(0, 1)], max_rounds=-1)
    parents, lam, tau, optimal = pack_spanning_trees(1, np.zeros((0, 2), np.int64))
    assert tau == 1.0 and optimal and list(parents[0]) == [-1]


@pytest.mark.parametrize("k", [5, 8])
@pytest.mark.parametrize("wrap", [False, True])
def test_efficiency_at_least_0_9(k, wrap):
    """Capacity bound / time >= 0.9 at 1 GiB per node, with alpha = delta = 0 (the bandwidth
    and pipeline-fill terms alone)."""
    m = make(k, k, wrap)
    r = dk.estimate_allreduce(GiB, m, algorithm="spanning_trees")
    E = 2 * k * (k - 1) + (2 * k if wrap else 0)
    cap = (k * k - 1) * GiB / (E * m.link_bandwidth)
    assert r.lower_bounds["capacity"] == pytest.approx(cap)
    assert cap / r.time >= 0.9, (k, wrap, cap / r.time)
    assert r.time >= cap * (1 - 1e-12)


CHIP_FLOOR = {(5, False): 0.9, (5, True): 0.9, (8, True): 0.9, (8, False): 0.875}


@pytest.mark.parametrize("k,wrap", sorted(CHIP_FLOOR))
def test_efficiency_on_chip_meshes(k, wrap):
    """With the chip-mesh figures (alpha = 100 ns per step, 2 TB/s) the pipeline fill costs
    alpha per step and the busiest link's load in the fill and drain steps; the chunk count
    minimises the model's time. >= 0.9 on the 5x5 mesh and both tori; the 8x8 mesh reaches
    0.879 (its fill, 13.0 steps, is at least the spread of the links' mean first steps, and
    no packing of combs, BFS trees or snake paths with any timing gets that spread below
    32/3, where 0.9 needs 8.5: docs/allreduce.md, "Why the 8x8 mesh stays below 0.9") and is
    held to 0.875 here; the >= 0.9 the issue asks for is the strict xfail below."""
    m = chip_mesh(k, k, wraparound=wrap)
    r = dk.estimate_allreduce(GiB, m, algorithm="spanning_trees")
    E = 2 * k * (k - 1) + (2 * k if wrap else 0)
    cap = (k * k - 1) * GiB / (E * 2e12)
    assert r.lower_bounds["capacity"] == pytest.approx(cap)
    assert cap / r.time >= CHIP_FLOOR[k, wrap], cap / r.time
    assert r.efficiency == pytest.approx(cap / r.time)


@pytest.mark.xfail(strict=True, reason="issue 12 item 7 asks >= 0.9 on the 8x8 chip mesh; the "
                   "tree packing reaches 0.879: fill >= spread of link mean first steps, "
                   ">= 32/3 for these tree families, 0.9 needs <= 8.5 (docs/allreduce.md)")
def test_efficiency_8x8_chip_mesh_at_least_0_9():
    r = dk.estimate_allreduce(GiB, chip_mesh(8, 8), algorithm="spanning_trees")
    assert r.lower_bounds["capacity"] / r.time >= 0.9


@pytest.mark.parametrize("k,wrap,nbytes", [(5, False, GiB), (8, False, GiB), (8, True, GiB),
                                           (5, True, GiB), (5, True, 64 << 20),
                                           (4, False, 1 << 20), (8, False, 4 << 20)])
def test_chunk_count_minimises_the_model_time(k, wrap, nbytes, monkeypatch):
    """The pipeline depth s of the spanning-tree schedule is the model's optimum: the same
    trees with s - 1 or s + 1 chunks, timed by the simulator, are not faster."""
    from dojo_kernels import _schedule
    m = chip_mesh(k, k, wraparound=wrap)
    r = dk.estimate_allreduce(nbytes, m, algorithm="spanning_trees")
    s = r.chunks
    assert 1 <= s < _schedule.MAX_CHUNKS
    for other in [c for c in (s - 1, s + 1) if c >= 1]:
        monkeypatch.setattr(_schedule, "_chunks", lambda *a, _o=other, **k: _o)
        sch = _schedule._spanning_schedule(m, nbytes, _schedule._spanning_skeleton(k, k, wrap))
        assert sch.info["chunks"] == other
        t = estimate_schedule(sch, m, nbytes).time
        assert t >= r.time * (1 - 1e-12), (other, t, r.time)


def _post_order(x, parent, lo, hi):
    """Node values summed in the documented order: a node's value is ((own + child_1) +
    child_2) + ..., children by increasing id, one float32 add at a time."""
    kids = {v: [] for v in range(len(parent))}
    for v, p in enumerate(parent):
        if p >= 0:
            kids[p].append(v)

    def val(v):
        acc = x[v, lo:hi].astype(np.float32)
        for c in sorted(kids[v]):
            acc = (acc + val(c)).astype(np.float32)
        return acc

    return val(parent.index(-1))


@pytest.mark.parametrize("k,wrap,n", [(5, False, 4099), (5, True, 20000), (8, False, 3001),
                                      (8, True, 7777)])
def test_lp_schedule_numerics_exact_sum_in_documented_order(k, wrap, n):
    """Every node ends with the same float32 bits: tree T (weights w in order, offsets off
    their running sum) owns units [off*s, (off+w)*s) of W*s units (unit u starts at element
    u*N // units), and each element of that share is the sum in T's post-order. The trees
    and chunk count are the schedule's choice (checked to be spanning trees of the mesh);
    the values come from the documented order, computed here with NumPy float32 adds."""
    m = chip_mesh(k, k, wraparound=wrap)
    P = k * k
    rng = np.random.default_rng(k * 100 + n)
    # magnitudes spread over many binades: the grouping changes the bits
    x = (rng.standard_normal((P, n)) * np.exp2(rng.integers(-20, 20, (P, n)))).astype(np.float32)
    got, rep = dk.allreduce(x, m, algorithm="spanning_trees")
    assert rep.algorithm == "spanning_trees" and rep.bit_identical
    info = rep.schedule.info
    trees = [list(map(int, p)) for p in np.asarray(info["parents"])]
    weights = [int(w) for w in info["weights"]]
    edges = {tuple(l) for l in m.links().tolist()}
    for par in trees:
        assert par.count(-1) == 1
        assert all(p == -1 or (v, p) in edges for v, p in enumerate(par))
    s = rep.chunks
    U = sum(weights) * s
    want = np.empty(n, np.float32)
    off = 0
    for par, w in zip(trees, weights):
        lo, hi = (off * s * n) // U, ((off + w) * s * n) // U
        want[lo:hi] = _post_order(x, par, lo, hi)
        off += w
    assert off * s == U
    np.testing.assert_array_equal(np.asarray(got), np.broadcast_to(want, (P, n)))
    # and it is the sum: close to the float64 one
    np.testing.assert_allclose(want, x.astype(np.float64).sum(axis=0), rtol=1e-4,
                               atol=1e-3 * np.abs(x).max())


def test_torus_uses_wrap_links():
    m = make(5, 5, wrap=True)
    r = dk.estimate_allreduce(GiB, m, algorithm="spanning_trees")
    assert r.links_used == m.num_links            # wrap links included
    mesh = dk.estimate_allreduce(GiB, make(5, 5), algorithm="spanning_trees")
    assert r.time < mesh.time * 0.85              # tau 50/24 against 40/24


def test_weights_are_exact_shares_on_symmetric_meshes():
    """On a k x k mesh the combs with equal weights are an optimum; whichever optimum the LP
    returns, the busiest edge carries exactly (P-1)/E of the buffer in the model."""
    for k in (3, 4, 5):
        m = make(k, k)
        n = float(GiB)
        r = dk.estimate_allreduce(n, m, algorithm="spanning_trees")
        per_link = Fraction(k * k - 1, 2 * k * (k - 1))
        assert r.bytes_per_link_max == pytest.approx(float(per_link) * n, rel=1e-9)



@pytest.mark.parametrize("k,wrap", [(5, False), (8, False), (5, True), (8, True), (4, False)])
def test_fill_is_at_least_the_spread_of_link_mean_starts(k, wrap):
    """docs/allreduce.md, "Why the 8x8 mesh stays below 0.9": in a pipelined tree schedule
    (every tree edge carries, per direction, s equal messages in s consecutive steps, and
    s >= F - 1 with F - 1 the latest first step) two directed links that carry the same
    bytes, with byte-weighted mean steps m1 <= m2, force a bandwidth time of at least
    (s + m2 - m1) / s times those bytes over B: split the steps at any tau in [F-1, s],
    charge the early link before tau and the late one from tau on. Checked against the
    simulator with the means taken from the public message table; and the spread of the
    shipped 8x8 comb packing is above the 8.5 steps that 0.9 would allow."""
    m = chip_mesh(k, k, wraparound=wrap)
    P = k * k
    r = dk.estimate_allreduce(GiB, m, algorithm="spanning_trees")
    s = r.chunks
    if s < r.steps - s:   # the 5x5 torus runs in one chunk: the lemma does not apply
        assert (k, wrap) == (5, True)
        return
    rows = r.schedule.messages()
    link = rows["src"].astype(np.int64) * P + rows["dst"]
    _, link = np.unique(link, return_inverse=True)
    link = link.reshape(-1)
    nb = rows["bytes"].astype(np.float64)
    tot = np.bincount(link, weights=nb)
    mean = np.bincount(link, weights=nb * rows["step"]) / tot
    assert tot.max() == pytest.approx(r.bytes_per_link_max, rel=1e-12)
    full = tot >= tot.max() * (1 - 1e-12)
    spread = mean[full].max() - mean[full].min()
    bandwidth = r.time - r.steps * m.link_latency
    assert bandwidth >= (s + spread) / s * tot.max() / m.link_bandwidth * (1 - 1e-12)
    if (k, wrap) == (8, False):
        assert full.all()                 # the combs load every link equally (tau exactly)
        # 0.9 needs 2 sqrt(spread X alpha) + 15 alpha <= X / 9 (X: capacity bound)
        X = r.lower_bounds["capacity"]
        allowed = ((X / 9 - 15 * m.link_latency) / 2) ** 2 / (X * m.link_latency)
        assert 8.4 < allowed < 8.6
        assert spread > allowed


def _tool():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "tools" / "tree_fill_lp.py"
    spec = importlib.util.spec_from_file_location("tree_fill_lp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("k", [4, 5])
def test_fill_lp_is_a_bound_for_the_comb_family(k):
    """tools/tree_fill_lp.py (the joint LP of docs/allreduce.md): its optimum is a
    capacity-optimal packing with valid timings whose spread of link mean first steps is the
    LP value, and it is no larger than the spread of the shipped schedule (centre-rooted
    combs with their ASAP timing: one feasible point of that LP)."""
    tool = _tool()
    trees = tool.family(k, k, ["combs"])
    spread, lam, R, B = tool.min_spread(trees)
    P = k * k
    use = lam > 1e-9
    load = {}
    means = {}
    for par, w, r, b in zip(np.asarray(trees)[use], lam[use], R[use], B[use]):
        root = int(np.flatnonzero(par < 0)[0])
        assert r[root] + 1 <= b[root] + 1e-6
        for v in range(P):
            p = int(par[v])
            if p < 0:
                continue
            if (par == v).any():                 # v has children: timings nest
                assert r[v] + 1 <= r[p] + 1e-6 and b[p] + 1 <= b[v] + 1e-6
            e = (min(v, p), max(v, p))
            load[e] = load.get(e, 0.0) + w
            means[(v, p)] = means.get((v, p), 0.0) + w * r[p]
            means[(p, v)] = means.get((p, v), 0.0) + w * b[p]
    assert len(load) == 2 * k * (k - 1)
    assert np.allclose(list(load.values()), 1.0, atol=1e-7)
    got = max(means.values()) - min(means.values())
    assert got == pytest.approx(spread, abs=1e-6)
    # the shipped schedule's spread (byte-weighted mean steps of its messages)
    r = dk.estimate_allreduce(GiB, chip_mesh(k, k), algorithm="spanning_trees")
    rows = r.schedule.messages()
    link = np.unique(rows["src"].astype(np.int64) * P + rows["dst"], return_inverse=True)[1]
    link = link.reshape(-1)
    nb = rows["bytes"].astype(np.float64)
    mean = np.bincount(link, weights=nb * rows["step"]) / np.bincount(link, weights=nb)
    assert spread <= mean.max() - mean.min() + 1e-9
