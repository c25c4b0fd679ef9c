"""The all-reduce timing model against SPEC section 7: closed forms where they are exact,
lower bounds as properties, contention, conservation of bytes, report fields and errors.
Every expected value here is computed from SPEC's formulas, not from the code under test."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dojo_kernels
from dojo_kernels import estimate_allreduce
from dojo_kernels.collectives import ALGORITHMS, estimate_schedule, schedule_for
from dojo_kernels.mesh import Mesh2D, chip_mesh, training_tile
from dojo_kernels._schedule import build_ring
from dojo_kernels._timing import time_floor

ALPHA, DELTA, BW = 1.3e-6, 0.2e-6, 7e9


def make(a, b, wrap=False, alpha=ALPHA, delta=DELTA, bw=BW):
    return Mesh2D(a, b, link_bandwidth=bw, link_latency=alpha, hop_latency=delta,
                  wraparound=wrap)


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-15)


# --- closed forms ----------------------------------------------------------------------------
@pytest.mark.parametrize("a,b", [(2, 2), (2, 3), (3, 4), (4, 4), (4, 6), (6, 5), (2, 8)])
@pytest.mark.parametrize("n", [1.0, 12345.0, 1 << 26])
def test_ring_on_even_mesh(a, b, n):
    m = make(a, b)
    P = a * b
    r = estimate_allreduce(n, m, algorithm="ring")
    assert r.time == approx(2 * (P - 1) * (ALPHA + n / (P * BW)))
    assert r.steps == 2 * (P - 1) and r.max_contention == 1
    r2 = estimate_allreduce(n, m, algorithm="bidirectional_ring")
    assert r2.time == approx(2 * (P - 1) * (ALPHA + n / (2 * P * BW)))
    assert r2.max_contention == 1


@pytest.mark.parametrize("P", [3, 5, 7, 8, 13])
def test_ring_on_1xP_torus(P):
    n = 1e7
    for m in (make(1, P, wrap=True), make(P, 1, wrap=True)):
        assert estimate_allreduce(n, m, algorithm="ring").time == \
            approx(2 * (P - 1) * (ALPHA + n / (P * BW)))
        assert estimate_allreduce(n, m, algorithm="bidirectional_ring").time == \
            approx(2 * (P - 1) * (ALPHA + n / (2 * P * BW)))


@pytest.mark.parametrize("a,b", [(5, 5), (5, 3), (3, 5), (7, 5), (7, 7), (9, 9), (3, 11),
                                 (11, 7), (21, 21), (49, 61)])
def test_two_hop_closed_rings_on_odd_meshes(a, b):
    n = 3e6
    m = make(a, b)
    P = a * b
    r = estimate_allreduce(n, m, algorithm="bidirectional_ring")
    assert r.time == approx(2 * (P - 1) * (ALPHA + DELTA + n / (2 * P * BW)))
    assert r.max_contention == 1 and r.longest_path_hops == 2
    u = estimate_allreduce(n, m, algorithm="ring")
    assert u.time == approx(2 * (P - 1) * (ALPHA + DELTA + n / (P * BW)))


@pytest.mark.parametrize("a,b", [(5, 5), (7, 9), (4, 4), (2, 7), (1, 9), (25, 25)])
def test_ring_order_is_a_hamiltonian_ring(a, b):
    from dojo_kernels._schedule import ring_order
    order, kind = ring_order(make(a, b))
    P = a * b
    assert sorted(order) == list(range(P))
    steps = []
    for i in range(P):
        (r1, c1), (r2, c2) = divmod(order[i], b), divmod(order[(i + 1) % P], b)
        steps.append((abs(r1 - r2), abs(c1 - c2)))
    if kind == "cycle":
        assert all(dr + dc == 1 for dr, dc in steps)
    elif kind == "closure":   # one straight 2-hop message closes a Hamiltonian path
        assert all(dr + dc == 1 for dr, dc in steps[:-1])
        assert steps[-1] in ((2, 0), (0, 2))
    else:
        assert kind == "folded" and 1 in (a, b)
        assert all(max(dr, dc) <= 2 for dr, dc in steps)


def test_training_tile_ring_matches_spec():
    t = training_tile()
    n = 1 << 30
    P = 25
    r = estimate_allreduce(n, t, algorithm="bidirectional_ring")
    a, d, B = t.link_latency, t.hop_latency, t.link_bandwidth
    assert r.time == approx(2 * (P - 1) * (a + d + n / (2 * P * B)))
    # SPEC: 0.96 n/B for the bidirectional ring against the 0.6 n/B capacity bound
    assert 2 * (P - 1) / (2 * P) == pytest.approx(0.96)
    assert r.lower_bounds["capacity"] == approx(0.6 * n / B)


@pytest.mark.parametrize("a,b", [(3, 3), (4, 4), (3, 5), (5, 4), (6, 3)])
def test_2d_on_torus(a, b):
    n = 5e6
    m = make(a, b, wrap=True)
    want = 2 * (a - 1) * (ALPHA + n / (a * BW)) + 2 * (b - 1) * (ALPHA + n / (a * b * BW))
    r = estimate_allreduce(n, m, algorithm="2d")
    assert r.time == approx(want)
    assert r.steps == 2 * (a - 1) + 2 * (b - 1)


@pytest.mark.parametrize("a,b", [(5, 5), (4, 4), (3, 4), (2, 5), (5, 2)])
def test_2d_on_mesh_folded(a, b):
    # rows (b nodes) and columns (a nodes) are folded rings: +delta per step when k >= 3
    n = 5e6
    m = make(a, b)
    db = DELTA if b >= 3 else 0.0
    da = DELTA if a >= 3 else 0.0
    want = 2 * (b - 1) * (ALPHA + db + n / (b * BW)) + 2 * (a - 1) * (ALPHA + da + n / (a * b * BW))
    assert estimate_allreduce(n, m, algorithm="2d").time == approx(want)


@pytest.mark.parametrize("k", [2, 3, 4, 7, 10])
@pytest.mark.parametrize("n", [1e3, 1e6, 1e9])
def test_chain_on_a_line(k, n):
    for m in (make(1, k), make(k, 1)):
        r = estimate_allreduce(n, m, algorithm="chain")
        s = r.chunks
        assert 1 <= s
        assert r.time == approx((s + k - 2) * (ALPHA + n / (s * BW)))
        assert r.steps == s + k - 2


def test_chain_chunks_near_optimum():
    # (s + k - 2)(alpha + n/(sB)) is minimised near sqrt(n (k-2) / (alpha B))
    k, n = 10, 1e8
    m = make(1, k)
    r = estimate_allreduce(n, m, algorithm="chain")
    best = min((s + k - 2) * (ALPHA + n / (s * BW)) for s in range(1, 257))
    assert r.time <= best * 1.01


# --- contention --------------------------------------------------------------------------------
def _ham_path_first_hop(a, b, start, second, end):
    """Hamiltonian path start -> second -> ... -> end on an a x b mesh (plain DFS, Warnsdorff
    order), written for this test."""
    P = a * b

    def nbrs(v):
        r, c = divmod(v, b)
        out = []
        for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            if 0 <= r + dr < a and 0 <= c + dc < b:
                out.append((r + dr) * b + c + dc)
        return out

    path = [start, second]
    seen = {start, second}

    def dfs():
        v = path[-1]
        if len(path) == P:
            return v == end
        cand = [w for w in nbrs(v) if w not in seen and (w != end or len(path) == P - 1)]
        cand.sort(key=lambda w: sum(1 for x in nbrs(w) if x not in seen))
        for w in cand:
            path.append(w)
            seen.add(w)
            if dfs():
                return True
            path.pop()
            seen.discard(w)
        return False

    assert dfs()
    return path


def test_naive_closure_halves_the_ring():
    """SPEC/notes: a closure whose 2-hop message shares a directed link with a path message
    makes every step carry two messages on that link: the whole ring at half speed."""
    a = b = 5
    u, m_, w = 2, 7, 12                      # (0,2), (1,2), (2,2)
    order = _ham_path_first_hop(a, b, u, m_, w)  # first hop u -> m: the naive closure
    topo = make(a, b)
    n, P = 1e8, 25
    naive = estimate_schedule(build_ring(topo, bidirectional=True, order=order), topo, n)
    assert naive.max_contention == 2
    assert naive.time == approx(2 * (P - 1) * (ALPHA + DELTA + 2 * n / (2 * P * BW)))
    good = estimate_allreduce(n, topo, algorithm="bidirectional_ring")
    assert good.max_contention == 1
    bw_naive = naive.time - 2 * (P - 1) * (ALPHA + DELTA)
    bw_good = good.time - 2 * (P - 1) * (ALPHA + DELTA)
    assert bw_naive == pytest.approx(2 * bw_good, rel=1e-9)


def test_two_messages_on_one_link_take_twice_as_long():
    # 1x3 line, ring order 0,1,2: the closure 2 -> 0 is routed 2 -> 1 -> 0; the counter-
    # rotating ring sends 2 -> 1 and 1 -> 0 itself: each of those links carries two messages.
    topo = make(1, 3, delta=0.0)
    n = 3e6
    r = estimate_schedule(build_ring(topo, bidirectional=True, order=[0, 1, 2]), topo, n)
    assert r.max_contention == 2
    assert r.time == approx(4 * (ALPHA + 2 * n / (6 * BW)))
    one = estimate_schedule(build_ring(topo, bidirectional=False, order=[0, 1, 2]), topo, n)
    assert one.max_contention == 1
    assert one.time == approx(4 * (ALPHA + n / (3 * BW)))


# --- lower bounds and conservation as properties ------------------------------------------------
def spec_bounds(m, n):
    a, b = m.rows, m.cols
    P = a * b
    if P == 1:
        return 0.0
    da = a // 2 if (m.wraparound and a >= 3) else a - 1
    db = b // 2 if (m.wraparound and b >= 3) else b - 1
    D = da + db
    alpha, delta, B = m.link_latency, m.hop_latency, m.link_bandwidth
    # count edges and degrees independently
    deg = np.zeros(P, int)
    edges = set()
    for v in range(P):
        r, c = divmod(v, b)
        for dr, dc in ((0, 1), (1, 0)):
            rr, cc = r + dr, c + dc
            if m.wraparound and b >= 3:
                cc %= b
            if m.wraparound and a >= 3:
                rr %= a
            if rr < a and cc < b and (rr, cc) != (r, c):
                edges.add(frozenset((v, rr * b + cc)))
    for e in edges:
        for v in e:
            deg[v] += 1
    E = len(edges)
    return max(alpha + (D - 1) * min(alpha, delta), n / (deg.min() * B), (P - 1) * n / (E * B))


def _dor_steps(d, k, wrap):
    """Signed unit steps along one dimension of size k: the shorter way round a ring (ties:
    increasing index), else straight."""
    if wrap:
        fwd = d % k
        if fwd == 0:
            return []
        return [1] * fwd if fwd <= k - fwd else [-1] * (k - fwd)
    return [1 if d > 0 else -1] * abs(d)


def expected_link_bytes(schedule, m, n):
    """Bytes per directed link (u, v), from the schedule's definition (module docstring of
    dojo_kernels._schedule): template i moves size[i] units of n/units bytes in each of its
    count[i] steps from src[i] to dst[i] (nothing over a link when src == dst), routed by
    dimension order -- along the row (column index) first, then the column."""
    a, b = m.rows, m.cols
    wrap_c = m.wraparound and b >= 3          # each row is a ring
    wrap_r = m.wraparound and a >= 3          # each column is a ring
    unit = n / schedule.units
    out = {}
    arr = schedule.arrays
    for s_, d_, sz, cnt in zip(arr["src"].tolist(), arr["dst"].tolist(), arr["size"].tolist(),
                               arr["count"].tolist()):
        if s_ == d_:
            continue
        r, c = divmod(s_, b)
        r2, c2 = divmod(d_, b)
        x = sz * cnt * unit
        for st_ in _dor_steps(c2 - c, b, wrap_c):
            nc = (c + st_) % b
            out[(r * b + c, r * b + nc)] = out.get((r * b + c, r * b + nc), 0.0) + x
            c = nc
        for st_ in _dor_steps(r2 - r, a, wrap_r):
            nr = (r + st_) % a
            out[(r * b + c, nr * b + c)] = out.get((r * b + c, nr * b + c), 0.0) + x
            r = nr
    return out


@settings(max_examples=120, deadline=None)
@given(a=st.integers(1, 6), b=st.integers(1, 6), wrap=st.booleans(),
       alpha=st.one_of(st.just(0.0), st.floats(1e-12, 1e-5)),
       delta=st.one_of(st.just(0.0), st.floats(1e-12, 1e-5)), bw=st.floats(1e8, 1e12),
       n=st.one_of(st.just(0.0), st.floats(1e-3, 1e9)),   # physical sizes: no subnormals
       alg=st.sampled_from(ALGORITHMS + ("auto",)))
def test_time_respects_lower_bounds(a, b, wrap, alpha, delta, bw, n, alg):
    m = make(a, b, wrap, alpha, delta, bw)
    r = estimate_allreduce(n, m, algorithm=alg)
    lb = spec_bounds(m, n)
    assert r.lower_bound == pytest.approx(lb, rel=1e-9, abs=1e-300)
    assert r.time >= lb * (1 - 1e-9)
    assert r.efficiency <= 1 + 1e-9
    assert r.time == pytest.approx(float(np.sum(r.step_times)), rel=1e-12, abs=1e-300)
    assert r.steps == len(r.step_times)
    # conservation, from the schedule's messages routed here independently of the model
    want = expected_link_bytes(schedule_for(n, m, algorithm=alg), m, n)
    got = {(int(u), int(v)): float(x) for (u, v), x in zip(m.links(), r.bytes_per_link)}
    assert set(want) <= set(got), "a route crosses a link the mesh does not have"
    for key, x in got.items():
        assert x == pytest.approx(want.get(key, 0.0), rel=1e-9, abs=1e-6), key
    hops = sum(want.values())
    assert r.byte_hops == pytest.approx(hops, rel=1e-9, abs=1e-6)
    # the bound "auto" prunes with never exceeds the simulated time
    assert time_floor(schedule_for(n, m, algorithm=alg), m, n) <= r.time * (1 + 1e-12)
    P = a * b
    if P > 1 and r.time > 0:
        assert r.bus_bandwidth == pytest.approx(2 * (P - 1) / P * n / r.time, rel=1e-12)


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("shape,wrap", [((5, 5), False), ((3, 7), False), ((4, 4), True),
                                        ((1, 8), True), ((6, 4), True), ((2, 6), True)])
def test_link_bytes_match_an_independent_routing(alg, shape, wrap):
    """bytes_per_link and byte_hops against the schedule's messages routed in this file."""
    n = 3e6
    m = make(*shape, wrap=wrap)
    r = estimate_allreduce(n, m, algorithm=alg)
    want = expected_link_bytes(schedule_for(n, m, algorithm=alg), m, n)
    got = {(int(u), int(v)): float(x) for (u, v), x in zip(m.links(), r.bytes_per_link)}
    assert set(want) <= set(got)
    np.testing.assert_allclose([got[k] for k in sorted(got)],
                               [want.get(k, 0.0) for k in sorted(got)], rtol=1e-9, atol=1e-6)
    assert r.byte_hops == pytest.approx(sum(want.values()), rel=1e-9)
    assert r.links_used == sum(1 for x in want.values() if x > 0)


def test_latency_spec_reported_but_not_a_bound_when_delta_is_small():
    """SPEC's (a+b-2)*alpha is reported as 'latency_spec'; with delta < alpha a schedule of
    long messages beats it, so it must not enter lower_bound."""
    alpha, delta = 1e-6, 1e-9
    m = make(1, 8, alpha=alpha, delta=delta)
    r = estimate_allreduce(0.0, m, algorithm="halving_doubling")
    assert r.lower_bounds["latency_spec"] == approx(7 * alpha)
    assert r.lower_bounds["latency"] == approx(alpha + 6 * delta)
    assert r.time < r.lower_bounds["latency_spec"]      # SPEC's form is not a bound here
    assert r.lower_bound == approx(alpha + 6 * delta)
    assert r.time >= r.lower_bound
    # delta >= alpha on a mesh: the two agree
    m2 = make(3, 5, alpha=1e-7, delta=2e-7)
    lb = estimate_allreduce(1e3, m2, algorithm="ring").lower_bounds
    assert lb["latency_spec"] == approx(6 * 1e-7) and lb["latency"] == approx(6 * 1e-7)


@pytest.mark.parametrize("alg,shape,wrap", [
    ("ring", (4, 4), False), ("bidirectional_ring", (2, 6), False), ("tree", (5, 5), False),
    ("spanning_trees", (5, 5), False), ("spanning_trees", (3, 7), False),
    ("chain", (1, 9), False), ("2d", (4, 4), True), ("2d", (3, 5), True),
    ("ring", (1, 7), True)])
def test_single_hop_traffic_is_2_P_minus_1_n(alg, shape, wrap):
    """An all-reduce moves 2(P-1)n bytes in total (each node: (P-1)/P n out in each half);
    with one-hop messages every byte crosses one link."""
    n = 1e6
    m = make(*shape, wrap=wrap)
    r = estimate_allreduce(n, m, algorithm=alg)
    P = m.nodes
    assert r.longest_path_hops == 1
    assert float(np.sum(r.bytes_per_link)) == pytest.approx(2 * (P - 1) * n, rel=1e-9)
    assert r.bytes_per_link.shape == (m.num_links,)
    assert r.bytes_per_link_max == pytest.approx(float(np.max(r.bytes_per_link)))
    assert r.bytes_per_link_mean == pytest.approx(2 * (P - 1) * n / m.num_links)


def test_halving_doubling_power_of_two_traffic():
    n = 1e6
    m = make(1, 8)
    r = estimate_allreduce(n, m, algorithm="halving_doubling")
    # messages: 3 steps each way; step t moves n/2^t over distance 2^(t-1) per node
    hops = sum(8 * n / 2 ** t * 2 ** (t - 1) for t in (1, 2, 3)) * 2
    assert r.byte_hops == pytest.approx(hops)
    assert r.steps == 6


# --- spanning trees near the capacity bound ----------------------------------------------------
@pytest.mark.parametrize("k", [5, 8])
def test_spanning_trees_near_capacity(k):
    n = 1 << 30
    for topo in (make(k, k, alpha=0.0, delta=0.0), chip_mesh(k, k)):
        r = estimate_allreduce(n, topo, algorithm="spanning_trees")
        cap = (k * k - 1) * n / ((2 * k * k - 2 * k) * topo.link_bandwidth)
        assert r.lower_bound == approx(cap)
        assert r.time <= 1.25 * cap, (topo, r.time / cap)
        assert r.efficiency >= 0.8


@pytest.mark.parametrize("m,n", [
    (make(5, 5), 1e3), (make(5, 5), 1e9), (make(1, 8), 1e6), (make(4, 6), 5e7),
    (make(4, 6, wrap=True), 3e5), (make(3, 3, alpha=0.0, delta=0.0), 0.0),   # all tie at 0
    (make(2, 2, alpha=1e-6, delta=0.0), 0.0), (chip_mesh(8, 8), 1 << 30),
    (chip_mesh(8, 8), 1e4)])
def test_auto_picks_the_fastest(m, n):
    """auto skips algorithms by a cheap bound; the choice must be the one simulating them
    all gives: the least time, ties to the first name in ALGORITHMS."""
    times = [estimate_allreduce(n, m, algorithm=alg).time for alg in ALGORITHMS]
    r = estimate_allreduce(n, m, algorithm="auto")
    best = min(range(len(times)), key=lambda i: (times[i], i))
    assert r.algorithm == ALGORITHMS[best]
    assert r.time == times[best]


def test_report_is_frozen_and_complete():
    r = estimate_allreduce(1e6, make(3, 3), algorithm="ring")
    assert isinstance(r, dojo_kernels.AllreduceReport)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.time = 0.0
    names = {f.name for f in dataclasses.fields(r)}
    for f in ("time", "algorithm", "steps", "step_times", "bytes_per_link", "bytes_per_link_max",
              "bytes_per_link_mean", "byte_hops", "max_contention", "bus_bandwidth",
              "lower_bound", "efficiency", "bit_identical"):
        assert f in names
    assert not r.step_times.flags.writeable and not r.bytes_per_link.flags.writeable
    assert r.efficiency == pytest.approx(r.lower_bound / r.time)


def test_single_node_and_zero_bytes():
    r = estimate_allreduce(1e6, make(1, 1), algorithm="auto")
    assert r.time == 0.0 and r.steps == 0 and r.efficiency == 1.0
    r = estimate_allreduce(0, make(2, 3), algorithm="ring")
    assert r.time == pytest.approx(10 * ALPHA) and r.bus_bandwidth == 0.0


def test_exapod_sized_mesh():
    m = chip_mesh(50, 60)
    r = estimate_allreduce(1 << 30, m, algorithm="ring")
    P = 3000
    a, d, B = m.link_latency, m.hop_latency, m.link_bandwidth
    assert r.time == approx(2 * (P - 1) * (a + (1 << 30) / (P * B)))


def test_bad_inputs():
    m = make(2, 2)
    with pytest.raises(ValueError, match="algorithm"):
        estimate_allreduce(1e6, m, algorithm="butterfly")
    with pytest.raises(ValueError, match="nbytes"):
        estimate_allreduce(-1, m)
    with pytest.raises(ValueError, match="nbytes"):
        estimate_allreduce(float("nan"), m)
    with pytest.raises(TypeError, match="nbytes"):
        estimate_allreduce("1e6", m)
    with pytest.raises(TypeError, match="topology"):
        estimate_allreduce(1e6, (2, 2))


def test_hierarchical_time_is_the_sum_of_the_levels():
    from dojo_kernels.hierarchical import estimate_hierarchical
    inner = make(2, 4)                              # even: a Hamiltonian cycle
    top = make(1, 5, wrap=True, alpha=3e-6, bw=2e9)
    n = 1e7
    r = estimate_hierarchical(n, [inner, top], algorithms=["bidirectional_ring", "ring"])
    t_in = 2 * 7 * (ALPHA + n / (2 * 8 * BW))       # reduce-scatter + all-gather inside
    t_top = 2 * 4 * (3e-6 + n / (5 * 2e9))          # ring all-reduce across the groups
    assert r.level_times == (approx(t_in), approx(t_top))
    assert r.time == approx(t_in + t_top)
    assert r.nodes == 40
    assert r.bus_bandwidth == pytest.approx(2 * 39 / 40 * n / r.time)
