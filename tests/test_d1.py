"""Tests of the D1 machine model (dojo_kernels.d1) and the GEMM cost model (plan_gemm).

Expected figures come from SPEC section 6, not from the code."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dojo_kernels as dk
from dojo_kernels import BF16, FP32, D1Chip, D1Node, DojoSystem, TrainingTile, cfloat8_143, cfloat8_152


def test_spec_defaults_and_derived_figures():
    node = D1Node()
    assert node.clock_hz == 2e9
    assert node.sram_bytes == 1_310_720
    assert node.peak_flops == pytest.approx(1024e9)
    assert node.fp32_peak_flops == pytest.approx(64e9)
    assert node.mac_block == (8, 8, 4)
    chip = D1Chip()
    assert chip.active_nodes == 354
    assert chip.peak_flops == pytest.approx(362e12, rel=0.005)        # "362 TFLOPS"
    assert chip.fp32_peak_flops == pytest.approx(22.6e12, rel=0.005)  # "22.6 TFLOPS"
    assert chip.sram_bytes / 2 ** 20 == pytest.approx(442.5)          # "440 MB"
    tile = TrainingTile()
    assert tile.peak_flops == pytest.approx(25 * chip.peak_flops)
    assert tile.peak_flops == pytest.approx(9e15, rel=0.01)           # "9 PFLOPS"
    assert tile.sram_bytes == pytest.approx(11e9, rel=0.06)           # "11 GB"
    assert tile.offchip_bw == pytest.approx(36e12)                    # "36 TB/s off-tile"
    pod = DojoSystem()
    assert pod.n_chips == 3000
    assert pod.peak_flops == pytest.approx(1.1e18, rel=0.02)          # "1.1 EFLOPS"


def test_parameters_propagate_and_validate():
    fast = D1Chip(node=D1Node(clock_hz=3e9))
    assert fast.peak_flops == pytest.approx(1.5 * D1Chip().peak_flops)
    assert dataclasses.replace(D1Node(), noc_link_bw=512e9).noc_link_bw == 512e9
    with pytest.raises(dataclasses.FrozenInstanceError):
        D1Chip().active_nodes = 3
    with pytest.raises(ValueError, match="clock_hz"):
        D1Node(clock_hz=0)
    with pytest.raises(ValueError, match="mac_block"):
        D1Node(mac_block=(8, 8, 8))
    with pytest.raises(ValueError, match="active_nodes"):
        D1Chip(active_nodes=400)
    with pytest.raises(TypeError, match="node"):
        D1Chip(node="x")
    with pytest.raises(ValueError, match="chips"):
        TrainingTile(chips=(0, 5))
    with pytest.raises(ValueError, match="tiles"):
        DojoSystem(tiles=0)


FMTS = st.sampled_from([BF16, cfloat8_143(7), cfloat8_152(15)])
SIZES = st.integers(1, 20000)


def check_invariants(p, machine):
    chip = machine if isinstance(machine, D1Chip) else machine.chip
    node = chip.node
    nchips = 1 if isinstance(machine, D1Chip) else machine.n_chips
    nodes_total = chip.active_nodes * nchips
    assert p.seconds >= p.flops / machine.peak_flops * (1 - 1e-12)
    assert 0 < p.utilization <= 1 + 1e-12
    assert p.sram_bytes_per_node <= node.sram_bytes
    assert p.node_grid[0] * p.node_grid[1] <= nodes_total
    assert p.seconds >= p.offchip_bytes / (2 * machine.offchip_bw) * (1 - 1e-12)
    # the documented dataflow: A over the west edge, B over the north edge, C over the
    # other edges -- each input edge carries at least all of its operand once
    edge_bw = (machine.offchip_bw_per_edge if isinstance(machine, D1Chip)
               else machine.offtile_bw_per_edge)
    edges = machine.edges
    ab, bb, ob = p.a_format.nbits / 8, p.b_format.nbits / 8, p.out_format.nbits / 8
    tol = 1 - 1e-12
    if edges >= 2:
        assert p.offchip_seconds >= p.m * p.k * ab / edge_bw * tol
        assert p.offchip_seconds >= p.k * p.n * bb / edge_bw * tol
    out_edges = edges - 2 if edges > 2 else edges
    assert p.offchip_seconds >= p.m * p.n * ob / (out_edges * edge_bw) * tol
    in_edges = min(edges, 2)
    assert p.offchip_bytes <= p.offchip_seconds * (in_edges + out_edges) * edge_bw / tol
    assert p.seconds >= p.offchip_seconds * tol
    assert p.seconds >= p.sram_read_bytes / (nodes_total * node.sram_load_bw) * (1 - 1e-12)
    assert p.seconds >= p.sram_write_bytes / (nodes_total * node.sram_store_bw) * (1 - 1e-12)
    links = 2 * nodes_total * 2   # at most 2 outgoing links per node per axis direction
    assert p.seconds >= p.noc_bytes / (links * node.noc_link_bw) * (1 - 1e-12)
    assert p.bound in ("compute", "sram", "noc", "offchip")
    assert p.padded_flops >= p.flops
    assert p.cycles == pytest.approx(p.seconds * node.clock_hz)
    mt, nt, kt = p.tile
    assert mt % 8 == 0 and nt % 8 == 0 and kt % 4 == 0


@settings(max_examples=25, deadline=None)
@given(m=SIZES, n=SIZES, k=SIZES, fa=FMTS, fb=FMTS)
def test_plan_invariants_chip(m, n, k, fa, fb):
    chip = D1Chip()
    p = dk.plan_gemm(m, n, k, a_format=fa, b_format=fb)
    check_invariants(p, chip)
    # a bigger problem is never cheaper
    for bigger in ((m + 1, n, k), (m, n * 2, k), (m, n, k + 7)):
        q = dk.plan_gemm(*bigger, a_format=fa, b_format=fb)
        assert q.seconds >= p.seconds


@settings(max_examples=10, deadline=None)
@given(m=st.integers(1, 100000), n=st.integers(1, 100000), k=st.integers(1, 100000))
def test_plan_invariants_tile(m, n, k):
    tile = TrainingTile()
    p = dk.plan_gemm(m, n, k, a_format=BF16, b_format=BF16, machine=tile)
    check_invariants(p, tile)
    q = dk.plan_gemm(m, n, k + 1000, a_format=BF16, b_format=BF16, machine=tile)
    assert q.seconds >= p.seconds


def test_plan_shapes_and_scale():
    chip = D1Chip()
    small = dk.plan_gemm(1, 1, 1, a_format=BF16, b_format=BF16)
    assert small.flops == 2 and small.utilization < 1e-3
    big = dk.plan_gemm(8192, 8192, 8192, a_format=BF16, b_format=BF16)
    assert big.utilization > 0.5                       # large square products run near peak
    assert big.node_grid[0] * big.node_grid[1] > 300   # ... on most of the chip
    # CFloat8 halves the operand bytes: never slower, less off-chip traffic
    c8 = dk.plan_gemm(8192, 8192, 8192, a_format=cfloat8_143(7), b_format=cfloat8_152(15))
    assert c8.seconds <= big.seconds and c8.offchip_bytes < big.offchip_bytes
    # the tile has 25x the peak: a big product is faster there
    t = dk.plan_gemm(32768, 32768, 8192, a_format=BF16, b_format=BF16, machine=TrainingTile())
    c = dk.plan_gemm(32768, 32768, 8192, a_format=BF16, b_format=BF16, machine=chip)
    assert t.seconds < c.seconds / 4
    assert t.node_grid[0] * t.node_grid[1] > chip.active_nodes
    # out_format bytes count in the drain
    o16 = dk.plan_gemm(4096, 4096, 64, a_format=BF16, b_format=BF16, out_format=BF16)
    o32 = dk.plan_gemm(4096, 4096, 64, a_format=BF16, b_format=BF16, out_format=FP32)
    assert o16.offchip_bytes < o32.offchip_bytes


def test_plan_bad_requests():
    with pytest.raises(ValueError, match="empty"):
        dk.plan_gemm(0, 4, 4, a_format=BF16, b_format=BF16)
    with pytest.raises(TypeError, match="k"):
        dk.plan_gemm(4, 4, 4.5, a_format=BF16, b_format=BF16)
    with pytest.raises(ValueError, match="BF16 or CFloat8"):
        dk.plan_gemm(4, 4, 4, a_format=FP32, b_format=BF16)
    with pytest.raises(TypeError, match="machine"):   # a bare mesh has no compute figures
        dk.plan_gemm(4, 4, 4, a_format=BF16, b_format=BF16, machine=dk.mesh.training_tile())
    tiny = D1Chip(node=D1Node(sram_bytes=1024))   # 1 KiB: no tile fits
    with pytest.raises(ValueError, match="SRAM"):
        dk.plan_gemm(4, 4, 4, a_format=BF16, b_format=BF16, machine=tiny)
    with pytest.raises(TypeError, match="b_format"):
        dk.plan_gemm(4, 4, 4, a_format=BF16, b_format=None)


def test_plan_offchip_rate_follows_the_edges():
    """Reviewer item 4: A and B come over one edge each (2 TB/s per D1 edge), so the
    bytes per off-chip second cannot exceed 2 input edges + 2 output edges."""
    chip = D1Chip()
    p = dk.plan_gemm(4096, 4096, 64, a_format=BF16, b_format=BF16)
    assert p.offchip_bytes / p.offchip_seconds <= 4 * chip.offchip_bw_per_edge * (1 + 1e-12)
    # the input alone: at most two edges' worth
    in_bytes = p.offchip_bytes - 4096 * 4096 * 4
    assert in_bytes / p.offchip_seconds <= 2 * chip.offchip_bw_per_edge * (1 + 1e-12)
    check_invariants(p, chip)
