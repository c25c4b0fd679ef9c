"""One machine model (issue 12 items 1-5, 9): machine objects wherever a topology is taken,
SI units with prefix checks, per-cycle figures that follow the clock, pickle/JSON round trips,
the plan cache, the k-split, the per-step synchronization, DojoSystem plans, the D2 what-if.

Expected figures are written from SPEC section 6 (and the issue's arithmetic), not read from
the code under test."""
from __future__ import annotations

import dataclasses
import json
import pickle
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dojo_kernels as dk
from dojo_kernels import BF16, FP32, D1Chip, D1Node, DojoSystem, TrainingTile, cfloat8_143
from dojo_kernels import mesh
from dojo_kernels import report as rp
from dojo_kernels.d1 import D2Tile, machine_from_dict
from dojo_kernels.mesh import Mesh2D

G = sys.modules["dojo_kernels.gemm"]

# The explicit meshes, written from SPEC section 6 and the documented assumptions:
# D1 node mesh 18 x 20, 64 B/cycle at 2 GHz, one cycle per message and per hop;
# tile 5 x 5 chips, 2 TB/s, 100 ns + 20 ns per extra hop; tiles 9 TB/s, 1 us + 100 ns.
CHIP_MESH = Mesh2D(18, 20, link_bandwidth=128e9, link_latency=0.5e-9, hop_latency=0.5e-9)
TILE_MESH = Mesh2D(5, 5, link_bandwidth=2e12, link_latency=100e-9, hop_latency=20e-9)
SYS_MESH = Mesh2D(2, 3, link_bandwidth=9e12, link_latency=1e-6, hop_latency=100e-9)
# the D2 what-if (docs/machine.md): chip-to-chip at the D1 chip's 10 TB/s bisection, 10 ns
D2_MESH = Mesh2D(5, 5, link_bandwidth=10e12, link_latency=10e-9, hop_latency=10e-9)
PAIRS = [(D1Chip(), CHIP_MESH), (TrainingTile(), TILE_MESH), (DojoSystem(tiles=6), SYS_MESH),
         (D2Tile(), D2_MESH)]


# --- item 1: one conversion, the same answer -------------------------------------------------
@pytest.mark.parametrize("machine, explicit", PAIRS)
def test_as_topology_is_the_explicit_mesh(machine, explicit):
    assert mesh.as_topology(machine) == explicit
    assert mesh.as_topology(explicit) is explicit


@pytest.mark.parametrize("machine, explicit", PAIRS)
@pytest.mark.parametrize("algorithm", ["auto", "ring", "2d", "tree"])
def test_estimate_allreduce_same_through_machine(machine, explicit, algorithm):
    a = dk.estimate_allreduce(1e9, machine, algorithm=algorithm)
    b = dk.estimate_allreduce(1e9, explicit, algorithm=algorithm)
    assert a.time == b.time and a.algorithm == b.algorithm
    assert np.array_equal(a.bytes_per_link, b.bytes_per_link)


@pytest.mark.parametrize("machine, explicit", PAIRS[1:])
def test_allreduce_same_bits_through_machine(machine, explicit):
    x = np.random.default_rng(1).standard_normal((explicit.nodes, 300)).astype(np.float32)
    ra, _ = dk.allreduce(x, machine, algorithm="ring")
    rb, _ = dk.allreduce(x, explicit, algorithm="ring")
    assert np.array_equal(ra.view(np.uint32), rb.view(np.uint32))


def test_hierarchical_same_through_machine():
    system = DojoSystem(tiles=6)
    a = dk.estimate_hierarchical(1e9, system)
    b = dk.estimate_hierarchical(1e9, [TILE_MESH, SYS_MESH])
    assert a.time == b.time and a.algorithms == b.algorithms and a.nodes == 150
    c = dk.estimate_hierarchical(1e9, [TrainingTile(), system])   # machines as levels
    assert c.time == b.time
    d2 = dk.estimate_hierarchical(1e9, DojoSystem(D2Tile(), tiles=6))   # the D2 what-if
    assert d2 == dk.estimate_hierarchical(1e9, [D2_MESH, SYS_MESH]) and d2.time < a.time
    x = np.random.default_rng(2).standard_normal((150, 64)).astype(np.float32)
    ra, _ = dk.allreduce_hierarchical(x, system)
    rb, _ = dk.allreduce_hierarchical(x, [TILE_MESH, SYS_MESH])
    assert np.array_equal(ra.view(np.uint32), rb.view(np.uint32))


def test_bad_topology_is_a_type_error():
    with pytest.raises(TypeError, match="topology.*D1Chip"):
        dk.estimate_allreduce(1e9, "5x5")
    with pytest.raises(TypeError, match="levels"):
        dk.estimate_hierarchical(1e9, 5)


def test_gemm_return_plan_takes_every_machine():
    a = np.ones((16, 32), np.float32)
    b = np.ones((32, 8), np.float32)
    for machine in (D1Chip(), TrainingTile(), D2Tile(), DojoSystem(tiles=4)):
        _, plan = dk.gemm(a, b, return_plan=True, machine=machine)
        assert plan == dk.plan_gemm(16, 8, 32, a_format=BF16, b_format=BF16, machine=machine)
        assert plan.machine == machine
    with pytest.raises(TypeError, match="machine"):
        dk.gemm(a, b, return_plan=True, machine=TILE_MESH)


def test_report_tile_link_bandwidth_is_derived_and_deprecated():
    cfg = rp.ReportConfig()
    assert cfg.tile_link_bandwidth is None
    assert cfg.system_link_bandwidth == 9e12           # HC34: 9 TB/s per tile edge
    assert mesh.as_topology(cfg.system) == Mesh2D(2, 3, link_bandwidth=9e12, link_latency=1e-6,
                                                  hop_latency=100e-9)
    faster = dataclasses.replace(TrainingTile(), offtile_bw_per_edge=18e12)
    assert rp.ReportConfig(machine=faster).system_link_bandwidth == 18e12
    with pytest.warns(DeprecationWarning, match="offtile_bw_per_edge"):
        old = rp.ReportConfig(tile_link_bandwidth=4e12)
    assert old.system_link_bandwidth == 4e12
    with pytest.raises(ValueError, match="did you mean 9000 GB/s"):
        rp.ReportConfig(tile_link_bandwidth=9000)


# --- per cycle or per second -----------------------------------------------------------------
def test_per_cycle_figures_follow_the_clock():
    base, fast = D1Node(), D1Node(clock_hz=3e9)
    assert (base.sram_load_bw, base.sram_store_bw, base.noc_link_bw) == (400e9, 270e9, 128e9)
    assert fast.sram_load_bw == pytest.approx(600e9)   # 200 B/cycle
    assert fast.sram_store_bw == pytest.approx(405e9)  # 135 B/cycle
    assert fast.noc_link_bw == pytest.approx(192e9)    # 64 B/cycle
    assert fast.peak_flops == pytest.approx(1.536e12)
    assert dataclasses.replace(base, clock_hz=3e9) == fast
    # the SerDes links do not follow the core clock
    chip = D1Chip(node=fast)
    assert chip.offchip_bw_per_edge == 2e12
    assert TrainingTile(chip=chip).chip_link_bw == 2e12
    # the per-second spelling still works, at the node's clock
    assert D1Node(sram_load_bw=500e9).sram_load_bytes_per_cycle == 250
    assert dataclasses.replace(base, noc_link_bw=512e9).noc_link_bytes_per_cycle == 256
    # a derived figure follows its source
    assert TrainingTile(chip=D1Chip(offchip_bw_per_edge=3e12)).chip_link_bw == 3e12
    assert TrainingTile(chip_link_bw=1e12).chip_link_bw == 1e12


# --- item 2: units ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, pattern", [
    (lambda: mesh.training_tile(link_bandwidth=2000), r"link_bandwidth=2000 B/s.*2000 GB/s = 2e\+12"),
    (lambda: mesh.system(2, 3, link_bandwidth=9000), r"9000 GB/s"),
    (lambda: mesh.d1_chip(link_latency=100), r"100 ns = 1e-07"),
    (lambda: D1Node(clock_hz=2), r"clock_hz=2 Hz.*1 MHz.*2 GHz = 2e\+09"),
    (lambda: D1Node(sram_bytes=1000), r"sram_bytes=1000 B.*1 KiB.*1000 KiB"),
    (lambda: D1Node(noc_link_bw=128), r"noc_link_bw=128 B/s.*128 GB/s"),
    (lambda: D1Chip(offchip_bw_per_edge=2000), r"offchip_bw_per_edge.*2000 GB/s"),
    (lambda: TrainingTile(offtile_bw_per_edge=9000), r"offtile_bw_per_edge"),
    (lambda: TrainingTile(chip_hop_latency=20), r"chip_hop_latency=20 s.*20 ns"),
    (lambda: TrainingTile(bisection_bw=10), r"bisection_bw=10 B/s.*10 GB/s"),
    (lambda: D1Chip(bisection_bw=10000), r"bisection_bw=10000 B/s.*10000 GB/s"),
    (lambda: D2Tile(chip_link_bw=10000), r"chip_link_bw=10000 B/s.*10000 GB/s"),
    (lambda: DojoSystem(dip_hbm_bytes=32), r"dip_hbm_bytes=32 B.*1 KiB"),
    (lambda: DojoSystem(tile_link_latency=1000), r"tile_link_latency=1000 s.*1000 ns"),
    (lambda: rp.machine_with(clock_hz=2), r"clock_hz=2 Hz.*2 GHz"),
    (lambda: DojoSystem(dip_hbm_bw=800), r"dip_hbm_bw.*800 GB/s"),
])
def test_unit_prefix_mistakes_are_errors_with_a_hint(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_generic_mesh_keeps_any_positive_bandwidth():
    # Mesh2D is the generic topology: normalised units (B = 1) stay valid
    assert Mesh2D(3, 3, link_bandwidth=1, link_latency=0).link_bandwidth == 1.0


def test_cli_units_convert_in_one_place():
    from dojo_kernels._units import CLI_UNITS, from_cli
    assert from_cli(2000, "GB/s") == 2e12 and from_cli(2, "GHz") == 2e9
    assert from_cli(1280, "KiB") == 1_310_720 and from_cli(100, "ns") == pytest.approx(1e-7)
    assert set(CLI_UNITS) >= {"GB/s", "GHz", "KiB"}


# --- item 5: results as data ----------------------------------------------------------------
MACHINES = [D1Node(), D1Node(clock_hz=2.5e9, step_sync_cycles=40), D1Chip(),
            D1Chip(node=D1Node(noc_link_bw=512e9), grid=(16, 23)), TrainingTile(),
            TrainingTile(chip_link_bw=1e12, name="slow links"), D2Tile(), DojoSystem(),
            DojoSystem(D2Tile(), grid=(3, 4), dips_per_edge=3)]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: type(m).__name__)
def test_machine_pickle_and_json_round_trip(machine):
    assert pickle.loads(pickle.dumps(machine)) == machine
    d = machine.to_dict()
    back = json.loads(json.dumps(d))
    assert type(machine).from_dict(back) == machine
    assert machine_from_dict(back) == machine
    assert hash(type(machine).from_dict(back)) == hash(machine)


@pytest.mark.parametrize("machine", [D1Chip(), TrainingTile(), D2Tile(), DojoSystem(tiles=6)],
                         ids=lambda m: type(m).__name__)
def test_plan_pickle_and_json_round_trip(machine):
    p = dk.plan_gemm(300, 500, 700, a_format=cfloat8_143(9), b_format=BF16, machine=machine)
    assert pickle.loads(pickle.dumps(p)) == p
    d = p.to_dict()
    assert "time_s" in d and "offchip_bytes" in d and "utilization_fraction" in d
    assert dk.GemmPlan.from_dict(json.loads(json.dumps(d))) == p


# --- plan cache -------------------------------------------------------------------------------
def test_plan_cache_hits_and_never_goes_stale():
    G.clear_plan_cache()
    kw = dict(a_format=BF16, b_format=BF16)
    p1 = dk.plan_gemm(1000, 2000, 3000, **kw)
    assert dk.plan_gemm(1000, 2000, 3000, **kw) is p1          # repeated: the same object
    assert dk.plan_gemm(np.int64(1000), 2000, 3000, **kw) is p1
    changed = [
        dict(m=1001), dict(k=3001),
        dict(machine=D1Chip(node=D1Node(clock_hz=2.1e9))),
        dict(machine=D1Chip(offchip_bw_per_edge=1e12)),
        dict(machine=D1Chip(node=D1Node(step_sync_cycles=10))),
        dict(a_format=cfloat8_143(7)), dict(out_format=BF16), dict(k_split=False),
    ]
    for ch in changed:
        args = dict(m=1000, n=2000, k=3000, **kw)
        args.update(ch)
        m, n, k = args.pop("m"), args.pop("n"), args.pop("k")
        cached = dk.plan_gemm(m, n, k, **args)
        assert (cached.m, cached.k) == (m, k)
        G.clear_plan_cache()
        fresh = dk.plan_gemm(m, n, k, **args)
        assert cached == fresh and cached is not p1
        assert cached.machine == args.get("machine", D1Chip())


# --- item 4: k-split, synchronization ---------------------------------------------------------
def test_gemv_is_no_longer_slower_than_streaming_b():
    """The issue's case: a CFloat8 GEMV 1x8192x8192 on one D1 was planned compute-bound at
    53.3 us, slower than streaming B once over one 2 TB/s chip edge (33.5 us)."""
    f = cfloat8_143(7)
    stream_b = 8192 * 8192 * 1 / 2e12                      # 33.55 us
    p = dk.plan_gemm(1, 8192, 8192, a_format=f, b_format=f)
    assert stream_b <= p.seconds < 1.05 * stream_b
    assert p.k_split > 1
    q = dk.plan_gemm(1, 8192, 8192, a_format=f, b_format=f, k_split=False)
    assert q.k_split == 1 and q.seconds > 1.5 * stream_b   # the old compute-bound plan


def test_k_split_reduction_time_from_the_documented_chain():
    """The k-split's reduction as plan_gemm documents it: after every super-tile, each C tile
    is reduced by a chain down its ks node rows, ks - 1 transfers of the FP32 partial tile
    (4 mt nt bytes) over one NoC link (128 GB/s), one hop and one message latency (0.5 ns
    each at 2 GHz), then added at the node's FP32 rate (32 FLOP/cycle = 64 GFLOP/s), not
    overlapped. Written from SPEC section 6 figures; on one chip every NoC link is a node
    link."""
    f = cfloat8_143(7)
    for m, n, k in ((1, 8192, 8192), (8, 4096, 65536), (3, 512, 100000)):
        p = dk.plan_gemm(m, n, k, a_format=f, b_format=f, machine=D1Chip())
        ks, (rows, cols), (mt, nt, kt) = p.k_split, p.node_grid, p.tile
        assert ks > 1, (m, n, k)
        c_rows = rows // ks
        supertiles = -(-m // (c_rows * mt)) * -(-n // (cols * nt))
        per_transfer = 4 * mt * nt / 128e9 + 0.5e-9 + 0.5e-9 + mt * nt / 64e9
        assert p.reduction_seconds == pytest.approx(supertiles * (ks - 1) * per_transfer,
                                                    rel=1e-12)
        assert p.seconds >= p.reduction_seconds + p.compute_seconds * (1 - 1e-12)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 5000), n=st.integers(1, 20000), k=st.integers(1, 50000),
       machine=st.sampled_from([D1Chip(), TrainingTile(), D2Tile(), DojoSystem(tiles=4),
                                DojoSystem(grid=(2, 3))]),
       fmt=st.sampled_from([BF16, cfloat8_143(7)]))
def test_k_split_never_slower(m, n, k, machine, fmt):
    p = dk.plan_gemm(m, n, k, a_format=fmt, b_format=fmt, machine=machine)
    q = dk.plan_gemm(m, n, k, a_format=fmt, b_format=fmt, machine=machine, k_split=False)
    assert p.seconds <= q.seconds
    if p.k_split == 1:
        assert p.reduction_seconds == 0
    else:
        assert p.reduction_seconds > 0 and p.node_grid[0] % p.k_split == 0


def test_step_sync_cost():
    node = D1Node(step_sync_cycles=200)   # 100 ns per step at 2 GHz
    chip = D1Chip(node=node)
    p = dk.plan_gemm(2048, 2048, 2048, a_format=BF16, b_format=BF16, machine=chip)
    assert p.sync_seconds == pytest.approx(p.steps * 100e-9)
    q = dk.plan_gemm(2048, 2048, 2048, a_format=BF16, b_format=BF16)
    assert q.sync_seconds == 0 and p.seconds > q.seconds
    assert p.seconds >= p.sync_seconds + p.compute_seconds


def test_feed_bandwidths_from_spec():
    # a chip: 2 TB/s per edge; A west, B north, C over the other two
    assert G.feed_bandwidths(D1Chip()) == (2e12, 2e12, 4e12)
    # a tile: 9 TB/s per tile edge, reached through 5 chips of 2 TB/s (10 TB/s): 9 TB/s;
    # C over two tile edges: 18 TB/s
    assert G.feed_bandwidths(TrainingTile()) == (9e12, 9e12, 18e12)
    # a system of 2 x 3 tiles: 5 DIPs x 800 GB/s = 4 TB/s per outer tile edge
    assert G.feed_bandwidths(DojoSystem(tiles=6)) == (2 * 4e12, 3 * 4e12, 5 * 4e12)


# --- item 3: DojoSystem plans -----------------------------------------------------------------
def check_system_plan(p, system):
    tile = system.tile
    node = tile.chip.node
    tr, tc = p.tile_grid
    assert 1 <= tr <= system.grid[0] and 1 <= tc <= system.grid[1]
    assert p.node_grid[0] * p.node_grid[1] <= system.tiles * tile.n_chips * tile.chip.active_nodes
    assert p.seconds >= p.flops / system.peak_flops * (1 - 1e-12)
    assert 0 < p.utilization <= 1 + 1e-12
    assert p.sram_bytes_per_node <= node.sram_bytes
    feed = 5 * min(800e9, 900e9)                       # one outer tile edge's DIPs (SPEC)
    ab, bb = p.a_format.nbits / 8, p.b_format.nbits / 8
    tol = 1 - 1e-12
    assert p.offchip_seconds >= p.m * p.k * ab / (tr * feed) * tol   # A in over the west
    assert p.offchip_seconds >= p.k * p.n * bb / (tc * feed) * tol   # B in over the north
    assert p.offchip_seconds >= p.m * p.n * 4 / ((tr + tc) * feed) * tol
    assert p.seconds >= p.offchip_seconds * tol
    assert p.padded_flops >= p.flops


@settings(max_examples=15, deadline=None)
@given(m=st.integers(4096, 65536), n=st.integers(4096, 65536), k=st.integers(4096, 65536),
       a=st.integers(1, 4), b=st.integers(1, 4), da=st.integers(0, 3), db=st.integers(0, 3))
def test_more_tiles_never_slower_for_a_large_gemm(m, n, k, a, b, da, db):
    small, big = DojoSystem(grid=(a, b)), DojoSystem(grid=(a + da, b + db))
    p = dk.plan_gemm(m, n, k, a_format=BF16, b_format=BF16, machine=small)
    q = dk.plan_gemm(m, n, k, a_format=BF16, b_format=BF16, machine=big)
    check_system_plan(p, small)
    check_system_plan(q, big)
    assert q.seconds <= p.seconds


def test_system_spans_tiles_for_a_big_product():
    system = DojoSystem(tiles=6)
    p = dk.plan_gemm(65536, 65536, 16384, a_format=BF16, b_format=BF16, machine=system)
    one = dk.plan_gemm(65536, 65536, 16384, a_format=BF16, b_format=BF16,
                       machine=DojoSystem(tiles=1))
    assert p.tile_grid[0] * p.tile_grid[1] > 1 and p.seconds < one.seconds / 2
    check_system_plan(p, system)


# --- item 9: the D2 what-if -------------------------------------------------------------------
def test_d2_tile_figures_and_acceptance():
    d2, d1 = D2Tile(), TrainingTile()
    assert isinstance(d2, TrainingTile) and d2 != d1 and dk.D2Tile is D2Tile
    assert d2.chip_link_bw == 10e12                    # the D1 chip's bisection, AI Day
    assert d2.chip_link_latency == pytest.approx(10e-9)  # 20 cycles at 2 GHz
    assert d2.peak_flops == d1.peak_flops and d2.chips == (5, 5)
    assert mesh.as_topology(d2) == Mesh2D(5, 5, link_bandwidth=10e12, link_latency=10e-9,
                                          hop_latency=10e-9)
    assert dk.estimate_allreduce(1e9, d2).time < dk.estimate_allreduce(1e9, d1).time
    p2 = dk.plan_gemm(8192, 8192, 8192, a_format=BF16, b_format=BF16, machine=d2)
    p1 = dk.plan_gemm(8192, 8192, 8192, a_format=BF16, b_format=BF16, machine=d1)
    assert p2.seconds <= p1.seconds
    assert dk.plan_gemm(8192, 8192, 8192, a_format=BF16, b_format=BF16,
                        machine=DojoSystem(d2, tiles=2)).machine.tile == d2


def test_report_compare_d1_d2():
    cfg = rp.ReportConfig(d_model=64, seq=64, batch=1, mlp_ratio=2, formats=("bf16",),
                          machine=D2Tile(), algorithms=("ring", "2d"), check_elements=0)
    r = rp.run_report(cfg)
    assert "D2 wafer" in rp.render_report(r)
    lines = rp.compare_machines(r, TrainingTile())
    text = "\n".join(lines)
    assert "Side by side" in text and "D1 training tile" in text
    # the D1 side equals a report run on the D1 tile
    r1 = rp.run_report(dataclasses.replace(cfg, machine=TrainingTile()))
    assert f"{r1.compute_s('bf16') * 1e9:.3g} ns" in text or \
        f"{r1.compute_s('bf16') * 1e6:.3g} us" in text


def test_cli_report_machine_d2():
    import subprocess
    out = subprocess.run(
        [sys.executable, "-m", "dojo_kernels", "report", "--machine", "d2", "--d-model", "64",
         "--seq", "64", "--mlp-ratio", "2", "--formats", "bf16", "--algorithms", "ring,2d",
         "--check-elements", "0", "--overlap", "-q"],
        capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "D2 wafer tile (what-if)" in out.stdout and "Side by side" in out.stdout
    assert "(overlap)" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "dojo_kernels", "report", "--machine", "d3"],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert bad.returncode == 2 and "d3" in bad.stderr


def _exhaustive_seconds(m, n, k, machine, fa, fb, out=FP32):
    """The fewest seconds over every candidate the planner has (no bounds, no dominance):
    checks that the pruned search is exact."""
    node = (machine if isinstance(machine, D1Chip) else
            machine.chip if isinstance(machine, TrainingTile) else machine.tile.chip).node
    ab, bb, ob = fa.nbits / 8, fb.nbits / 8, out.nbits / 8
    g = G._groups(machine, True)
    mt, nt, kt, fits = G._tiles(node.sram_bytes, ab, bb, ob)
    i, j, l = np.nonzero(fits)
    ng, nt_ = len(g["gr"]), len(i)
    gi = np.repeat(np.arange(ng), nt_)
    c = G._cost(m, n, k, g, gi, np.tile(mt[i, j, l], ng), np.tile(nt[i, j, l], ng),
                np.tile(kt[i, j, l], ng), node, ab, bb, ob)
    return float(c["seconds"].min())


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1, 30000), n=st.integers(1, 30000), k=st.integers(1, 30000),
       machine=st.sampled_from([D1Chip(), TrainingTile(), DojoSystem(tiles=4)]),
       fa=st.sampled_from([BF16, cfloat8_143(7)]))
def test_pruned_search_is_exact(m, n, k, machine, fa):
    p = dk.plan_gemm(m, n, k, a_format=fa, b_format=BF16, machine=machine)
    assert p.seconds == pytest.approx(_exhaustive_seconds(m, n, k, machine, fa, BF16), rel=1e-12)
