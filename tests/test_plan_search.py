"""plan_gemm's compiled candidate loop (dojo_kernels._plan.search, issue 11 part 2): the
plans are the very same values as those of the vectorised NumPy search it replaced
(gemm._SEARCH = "numpy", kept as the reference), and the chosen plan is the least-seconds,
then fewest-nodes candidate of an exhaustive search written here (every span and every tile
that fits, no bound and no dominance)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dojo_kernels as dk
from dojo_kernels import BF16, FP32, D1Chip, D1Node, DojoSystem, TrainingTile, cfloat8_143

G = importlib.import_module("dojo_kernels.gemm")

MACHINES = [D1Chip(), TrainingTile(), DojoSystem(tiles=4), D1Chip(edges=1),
            D1Chip(node=D1Node(sram_bytes=96 * 1024)), DojoSystem(tiles=6)]
FORMATS = [BF16, cfloat8_143(7)]


def plan_with(search, m, n, k, **kw):
    saved = G._SEARCH
    G._SEARCH = search
    G.clear_plan_cache()
    debug: list = []
    G._DEBUG = debug
    try:
        return dk.plan_gemm(m, n, k, **kw), debug
    finally:
        G._SEARCH = saved
        G._DEBUG = None
        G.clear_plan_cache()


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 70000), n=st.integers(1, 70000), k=st.integers(1, 70000),
       machine=st.sampled_from(MACHINES), fa=st.sampled_from(FORMATS),
       fb=st.sampled_from(FORMATS), out=st.sampled_from([FP32, BF16]),
       k_split=st.booleans())
def test_compiled_search_gives_the_numpy_search_plan(m, n, k, machine, fa, fb, out, k_split):
    kw = dict(a_format=fa, b_format=fb, machine=machine, out_format=out, k_split=k_split)
    pc, dc = plan_with("c", m, n, k, **kw)
    pn, dn = plan_with("numpy", m, n, k, **kw)
    assert pc == pn                 # every field, floats compared exactly
    assert dc == dn                 # the same batches and candidate counts


@pytest.mark.parametrize("shape", [(1, 8192, 8192), (64, 8192, 8192), (4096, 4096, 4096),
                                   (3, 5, 7), (1000, 17, 100000), (8, 8, 8)])
@pytest.mark.parametrize("machine", MACHINES[:4], ids=["chip", "tile", "system4", "chip-1edge"])
def test_plan_is_the_exhaustive_minimum(shape, machine):
    m, n, k = shape
    fa = fb = BF16
    p = dk.plan_gemm(m, n, k, a_format=fa, b_format=fb, machine=machine)
    node = (machine if isinstance(machine, D1Chip) else
            machine.chip if isinstance(machine, TrainingTile) else machine.tile.chip).node
    ab = bb = 2.0
    ob = 4.0
    g = G._groups(machine, True)
    # every tile that fits, from the footprint formula of plan_gemm's docstring
    tiles = [(mt, nt, kt) for mt in (8, 16, 32, 64, 128, 256) for nt in (8, 16, 32, 64, 128, 256)
             for kt in (16, 32, 64, 128, 256, 512)
             if 2 * mt * kt * ab + 2 * kt * nt * bb + 4 * mt * nt + ob * mt * nt <= node.sram_bytes]
    ng = len(g["gr"])
    t = np.array(tiles, np.float64)
    gi = np.repeat(np.arange(ng), len(t))
    c = G._cost(m, n, k, g, gi, np.tile(t[:, 0], ng), np.tile(t[:, 1], ng),
                np.tile(t[:, 2], ng), node, ab, bb, ob)
    secs = c["seconds"]
    assert p.seconds == secs.min()
    nodes = g["RT"][gi] * g["gc"][gi]
    best = secs == secs.min()
    assert p.node_grid[0] * p.node_grid[1] == nodes[best].min()
    # the plan is one of the minimal candidates
    cand = {(int(g["RT"][a]), int(g["gc"][a]), int(g["ks"][a]), tuple(int(v) for v in t[b]))
            for a, b in zip(gi[best] , np.tile(np.arange(len(t)), ng)[best])}
    assert (p.node_grid[0], p.node_grid[1], p.k_split, p.tile) in cand


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 10 ** 7), n=st.integers(1, 10 ** 7), k=st.integers(1, 10 ** 7),
       machine=st.sampled_from(MACHINES), fa=st.sampled_from(FORMATS), k_split=st.booleans())
def test_compiled_bounds_equal_the_numpy_bounds(m, n, k, machine, fa, k_split):
    from dojo_kernels import _plan
    node = (machine if isinstance(machine, D1Chip) else
            machine.chip if isinstance(machine, TrainingTile) else machine.tile.chip).node
    ab = bb = fa.nbits / 8
    ob = 4.0
    g = G._groups(machine, k_split)
    want = G._bounds_numpy(m, n, k, g, node, ab, bb, ob)
    bm, bn, bk = node.mac_block
    want[(g["one_r"] > 0) & (g["gr"] > -(-m // bm))] = np.inf
    want[(g["one_c"] > 0) & (g["gc"] > -(-n // bn))] = np.inf
    got = _plan.bounds(m, n, k, g, float(bm), float(bn), float(bk), float(node.clock_hz),
                       float(m * k * ab), float(k * n * bb), float(m * n * ob),
                       128 * ab, 128 * bb, 64 * ob)
    assert np.array_equal(got, want)
