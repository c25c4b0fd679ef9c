"""Reduced values of dojo_kernels.allreduce against plain NumPy references that add in each
algorithm's documented order (docs/allreduce.md, notes: association order table), one float32
add at a time; BF16 rounding by ml_dtypes. Written from the documentation, not the code."""
import subprocess
import tempfile
import sys

import ml_dtypes
import numpy as np
import pytest

import dojo_kernels
from dojo_kernels import BF16, UHP, _config, allreduce
from dojo_kernels.mesh import Mesh2D
from dojo_kernels._schedule import ring_order

ALGS = ("ring", "bidirectional_ring", "2d", "halving_doubling", "tree", "chain",
        "spanning_trees")


def make(a, b, wrap=False, alpha=1e-6):
    return Mesh2D(a, b, link_bandwidth=5e9, link_latency=alpha, hop_latency=1e-7,
                  wraparound=wrap)


def rnd_bf16(v):
    return np.asarray(v, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


class Adder:
    def __init__(self, round_each):
        self.round_each = round_each

    def __call__(self, a, b):
        s = (np.asarray(a, np.float32) + np.asarray(b, np.float32)).astype(np.float32)
        return rnd_bf16(s) if self.round_each else s


def ebound(u, U, N):
    return (u * N) // U


# --- order references -----------------------------------------------------------------------
def ring_ref(x, order, add, U, base, out):
    P, N = x.shape
    for j in range(P):
        lo, hi = ebound(base + j, U, N), ebound(base + j + 1, U, N)
        acc = x[order[j], lo:hi]
        for i in range(1, P):
            acc = add(acc, x[order[(j + i) % P], lo:hi])
        out[:, lo:hi] = acc


def folded(k, wrap):
    if wrap or k <= 2:
        return list(range(k))
    return list(range(0, k, 2)) + [i for i in range(k - 1, 0, -1) if i % 2]


def ref_ring(x, m, add):
    order = ring_order(m)[0]
    out = np.empty_like(x)
    ring_ref(x, order, add, m.nodes, 0, out)
    return out


def ref_bidirectional_ring(x, m, add):
    order = ring_order(m)[0]
    P = m.nodes
    out = np.empty_like(x)
    ring_ref(x, order, add, 2 * P, 0, out)
    ring_ref(x, order[::-1], add, 2 * P, P, out)
    return out


def ref_2d(x, m, add):
    a, b = m.rows, m.cols
    P, N = x.shape
    rord, cord = folded(b, m.wraparound and b >= 3), folded(a, m.wraparound and a >= 3)
    out = np.empty_like(x)
    for j in range(b):                     # row block j: units [j*a, (j+1)*a)
        for q in range(a):                 # column sub-block q: unit j*a + q
            lo, hi = ebound(j * a + q, P, N), ebound(j * a + q + 1, P, N)

            def row_partial(r):
                acc = x[r * b + rord[j], lo:hi]
                for i in range(1, b):
                    acc = add(acc, x[r * b + rord[(j + i) % b], lo:hi])
                return acc

            acc = row_partial(cord[q])
            for i in range(1, a):
                acc = add(acc, row_partial(cord[(q + i) % a]))
            out[:, lo:hi] = acc
    return out


def ref_halving_doubling(x, m, add):
    P = m.nodes
    q = P.bit_length() - 1
    r = P - (1 << q)
    vals = [add(x[2 * i + 1], x[2 * i]) for i in range(r)] + [x[i] for i in range(2 * r, P)]
    while len(vals) > 1:
        vals = [add(vals[2 * i], vals[2 * i + 1]) for i in range(len(vals) // 2)]
    return np.broadcast_to(vals[0], x.shape).copy()


def bfs_parents(m):
    a, b = m.rows, m.cols
    root = ((a - 1) // 2) * b + (b - 1) // 2
    par = {root: -1}
    queue = [root]
    for v in queue:
        r, c = divmod(v, b)
        for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):     # east, west, south, north
            rr, cc = r + dr, c + dc
            if m.wraparound and b >= 3:
                cc %= b
            if m.wraparound and a >= 3:
                rr %= a
            if 0 <= rr < a and 0 <= cc < b:
                w = rr * b + cc
                if w not in par:
                    par[w] = v
                    queue.append(w)
    return [par[v] for v in range(a * b)]


def tree_value(x, parent, add, sl):
    children = {v: [] for v in range(len(parent))}
    for v, p in enumerate(parent):
        if p >= 0:
            children[p].append(v)

    def val(v):
        acc = x[v, sl]
        for c in sorted(children[v]):
            acc = add(acc, val(c))
        return acc

    return val(parent.index(-1))


def ref_tree(x, m, add):
    return np.broadcast_to(tree_value(x, bfs_parents(m), add, slice(None)), x.shape).copy()


def lp_trees_of(m, report):
    """The trees and weights the LP chose (schedule data: which trees is the schedule's
    choice, how each share must be summed is the documented order checked here), after
    checking that each is a spanning tree of the topology."""
    info = report.schedule.info
    parents, weights = info["parents"], info["weights"]
    links = {tuple(l) for l in m.links().tolist()}
    out = []
    for par, w in zip(parents.tolist(), weights):
        assert par.count(-1) == 1 and w >= 1
        for v, p in enumerate(par):
            assert p == -1 or (v, p) in links
        root = par.index(-1)
        for v in range(len(par)):      # every node reaches the root
            seen = 0
            while v != root:
                v = par[v]
                seen += 1
                assert seen < len(par)
        out.append((par, w))
    return out


def ref_spanning_trees(x, m, add, report):
    """Tree T (weight w_T, in order) owns units [off*s, (off+w_T)*s), s = report.chunks;
    every element of that share is summed in T's post-order, children by id."""
    chunks = report.chunks
    trees = lp_trees_of(m, report)
    W = sum(w for _, w in trees)
    U = W * chunks
    N = x.shape[1]
    out = np.empty_like(x)
    off = 0
    for par, w in trees:
        lo, hi = ebound(off * chunks, U, N), ebound((off + w) * chunks, U, N)
        out[:, lo:hi] = tree_value(x, par, add, slice(lo, hi))
        off += w
    return out


def ref_chain(x, m, add):
    a, b = m.rows, m.cols
    path = []
    for r in range(a):
        path += [r * b + c for c in (range(b) if r % 2 == 0 else range(b - 1, -1, -1))]
    k = len(path)
    out = np.empty_like(x)
    if k == 1:
        return x.copy()
    pre = [x[path[0]]]
    for i in range(1, k):
        pre.append(add(pre[-1], x[path[i]]))
    suf = [None] * k
    suf[k - 1] = x[path[k - 1]]
    for j in range(k - 2, -1, -1):
        suf[j] = add(x[path[j]], suf[j + 1])
    for i in range(k - 1):
        out[path[i]] = add(pre[i], suf[i + 1])
    out[path[k - 1]] = pre[k - 1]
    return out


def reference(alg, x, m, add, report):
    if alg == "spanning_trees":
        return ref_spanning_trees(x, m, add, report)
    return globals()["ref_" + alg](x, m, add)


def data(P, N, seed, spread=6):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((P, N)) * np.exp2(rng.integers(-spread, spread, (P, N)))
            ).astype(np.float32)


SHAPES = [((1, 1), False), ((1, 2), False), ((2, 2), False), ((1, 5), False), ((3, 3), False),
          ((2, 3), False), ((5, 5), False), ((4, 3), True), ((3, 5), True), ((1, 6), True),
          ((4, 4), True), ((5, 5), True)]


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("shape,wrap", SHAPES)
def test_fp32_in_documented_order(alg, shape, wrap):
    m = make(*shape, wrap=wrap)
    P = m.nodes
    for N in (1, 5, 137):
        x = data(P, N, seed=N + P)
        before = x.copy()
        got, rep = allreduce(x, m, algorithm=alg)
        want = reference(alg, x, m, Adder(False), rep)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        assert np.array_equal(x, before)
        if rep.bit_identical:
            assert (got == got[0]).all()


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("accumulate", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(2, 2), (5, 5), (2, 3)])
def test_bf16_in_documented_order(alg, accumulate, shape):
    m = make(*shape)
    P, N = m.nodes, 203
    vals = rnd_bf16(data(P, N, seed=7 * P))
    codes = vals.astype(ml_dtypes.bfloat16).view(np.uint16)
    got, rep = allreduce(codes, m, algorithm=alg, fmt=BF16, accumulate=accumulate)
    want = reference(alg, vals, m, Adder(accumulate == "bf16"), rep)
    want_codes = want.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, want_codes)
    assert rep.nbytes == N * (4 if accumulate == "fp32" else 2)


def test_bf16_accepts_ml_dtypes_arrays():
    m = make(2, 3)
    x = data(6, 50, 3).astype(ml_dtypes.bfloat16)
    got, _ = allreduce(x, m, algorithm="ring", fmt=BF16)
    assert got.dtype == ml_dtypes.bfloat16
    codes, _ = allreduce(x.view(np.uint16), m, algorithm="ring", fmt=BF16)
    np.testing.assert_array_equal(got.view(np.uint16), codes)


@pytest.mark.parametrize("alg", ALGS)
def test_large_p_against_float64(alg):
    m = make(16, 16)
    P, N = 256, 300
    x = data(P, N, seed=11, spread=3)
    got, rep = allreduce(x, m, algorithm=alg)
    exact = x.astype(np.float64).sum(axis=0)
    bound = (P - 1) * 2.0 ** -24 * np.abs(x.astype(np.float64)).sum(axis=0) * 1.01
    assert (np.abs(got.astype(np.float64) - exact) <= bound).all()
    if rep.bit_identical:
        assert (got == got[0]).all()


def test_bit_identical_flags():
    m = make(3, 4)
    x = data(12, 400, 5)
    for alg in ALGS:
        got, rep = allreduce(x, m, algorithm=alg)
        assert rep.bit_identical == (alg != "chain")
    got, _ = allreduce(x, m, algorithm="chain")
    assert not (got == got[0]).all()   # prefix_i + suffix_{i+1} differs between nodes here


@pytest.mark.parametrize("alg", ["ring", "spanning_trees", "chain", "2d"])
def test_every_tier_and_thread_count_same_bits(alg):
    m = make(5, 5)
    x = data(25, 5000, 9)
    codes = rnd_bf16(x).astype(ml_dtypes.bfloat16).view(np.uint16)
    outs = []
    saved = _config.threads()
    try:
        for name in _config.supported_isas():
            with _config.use_isa(name):
                for t in (1, 2, 3):
                    dojo_kernels.set_num_threads(t)
                    outs.append((allreduce(x, m, algorithm=alg)[0].copy(),
                                 allreduce(codes, m, algorithm=alg, fmt=BF16,
                                           accumulate="bf16")[0].copy(),
                                 allreduce(codes, m, algorithm=alg, fmt=BF16)[0].copy()))
    finally:
        dojo_kernels.set_num_threads(saved)
    for o in outs[1:]:
        for u, v in zip(o, outs[0]):
            assert u.tobytes() == v.tobytes()


def test_auto_runs_the_reported_algorithm():
    m = make(5, 5)
    x = data(25, 3000, 1)
    got, rep = allreduce(x, m, algorithm="auto")
    again, rep2 = allreduce(x, m, algorithm=rep.algorithm)
    assert rep.algorithm in ALGS and rep2.time == rep.time
    assert got.tobytes() == np.ascontiguousarray(again).tobytes()


def test_shapes_and_empty():
    m = make(2, 2)
    x = data(4, 60, 2).reshape(4, 3, 4, 5)
    got, _ = allreduce(x, m, algorithm="tree")
    assert got.shape == x.shape
    np.testing.assert_allclose(got[1], x.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)
    e, rep = allreduce(np.zeros((4, 0), np.float32), m, algorithm="ring")
    assert e.shape == (4, 0) and rep.nbytes == 0


def test_bad_inputs():
    m = make(2, 2)
    x = data(4, 10, 0)
    with pytest.raises(ValueError, match="buffers"):
        allreduce(x[:3], m)
    with pytest.raises(TypeError, match="float32"):
        allreduce(x.astype(np.float64), m)
    with pytest.raises(TypeError, match="uint16"):
        allreduce(x, m, fmt=BF16)
    with pytest.raises(ValueError, match="algorithm"):
        allreduce(x, m, algorithm="ringg")
    with pytest.raises(ValueError, match="accumulate"):
        allreduce(x, m, accumulate="fp16")
    with pytest.raises(ValueError, match="accumulate"):
        allreduce(x, m, accumulate="bf16")          # rounding to BF16 needs BF16 data
    with pytest.raises(ValueError, match="fmt"):
        allreduce(x.view(np.uint32).astype(np.uint16), m, fmt=UHP)
    with pytest.raises(TypeError, match="topology"):
        allreduce(x, "5x5")
    with pytest.raises(ValueError, match="link_bandwidth"):
        allreduce(x, Mesh2D(2, 2, link_bandwidth=0, link_latency=0))


def test_mpi_module_imports_without_mpi4py():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import dojo_kernels.mpi as m\n"
            "try:\n    m.allreduce(None, None)\nexcept ImportError as e:\n"
            "    assert 'mpi4py' in str(e); print('ok')\n")
    # cwd outside the repository, so the source tree cannot shadow the installed package
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- hierarchical all-reduce ---------------------------------------------------------------
def test_hierarchical_values_nest_the_level_orders():
    from dojo_kernels.hierarchical import allreduce_hierarchical
    inner, top = make(2, 3), make(2, 2)
    P = 24
    x = data(P, 97, seed=4)
    for alg_in, alg_top in [("bidirectional_ring", "tree"), ("2d", "ring"),
                            ("ring", "spanning_trees")]:
        got, rep = allreduce_hierarchical(x, [inner, top], algorithms=[alg_in, alg_top])
        add = Adder(False)
        sums = np.stack([reference(alg_in, x[g * 6:(g + 1) * 6], inner, add, None)[0]
                         for g in range(4)])
        top_rep = dojo_kernels.estimate_allreduce(97 * 4, top, algorithm=alg_top)
        want = reference(alg_top, sums, top, add, top_rep)
        np.testing.assert_array_equal(got, np.repeat(want, 6, axis=0))
        assert rep.algorithms == (alg_in, alg_top) and rep.nodes == 24


@pytest.mark.parametrize("accumulate", ["fp32", "bf16"])
def test_hierarchical_bf16(accumulate):
    from dojo_kernels.hierarchical import allreduce_hierarchical
    inner, top = make(2, 2), make(1, 3)
    vals = rnd_bf16(data(12, 55, seed=8))
    codes = vals.astype(ml_dtypes.bfloat16).view(np.uint16)
    got, rep = allreduce_hierarchical(codes, [inner, top], algorithms=["ring", "chain"],
                                      fmt=BF16, accumulate=accumulate)
    add = Adder(accumulate == "bf16")
    sums = np.stack([ref_ring(vals[g * 4:(g + 1) * 4], inner, add)[0] for g in range(3)])
    want = np.repeat(ref_chain(sums, top, add), 4, axis=0)
    np.testing.assert_array_equal(got, want.astype(ml_dtypes.bfloat16).view(np.uint16))
    assert not rep.bit_identical  # the chain at the top level


def test_hierarchical_bad_inputs():
    from dojo_kernels.hierarchical import allreduce_hierarchical, estimate_hierarchical
    a, b = make(2, 2), make(1, 2)
    with pytest.raises(ValueError, match="algorithms"):
        estimate_hierarchical(1e6, [a, b], algorithms=["tree", "ring"])
    with pytest.raises(ValueError, match="algorithms"):
        estimate_hierarchical(1e6, [a, b], algorithms=["ring"])
    with pytest.raises(TypeError, match="levels"):
        estimate_hierarchical(1e6, a)
    with pytest.raises(ValueError, match="buffers"):
        allreduce_hierarchical(data(4, 3, 0), [a, b])
