"""The Dojo D1 machine model: node, chip, training tile and system (SPEC section 6).

Every figure is a keyword parameter whose default is the public figure named in the
docstring (source tags as in SPEC.md: AI Day 2021/2022, HC34 = Hot Chips 34, MICRO23 =
IEEE Micro 2023). Derived quantities (peaks, SRAM totals) are read-only properties, so a
modified figure propagates. The objects are frozen and hashable; use
``dataclasses.replace(chip, noc_link_bw=512e9)`` to explore a variant.

How Tesla's compiler tiles work across nodes is not public; :func:`dojo_kernels.plan_gemm`
is our own model on these figures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

__all__ = ["D1Node", "D1Chip", "TrainingTile", "DojoSystem"]


def _positive(obj: object, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name}: expected a positive number, got {v!r}")


@dataclass(frozen=True)
class D1Node:
    """One D1 processing node (core + SRAM + matrix units + NoC router).

    Parameters
    ----------
    clock_hz : core clock, 2 GHz (AI Day 2021, HC34; high confidence).
    sram_bytes : node SRAM, 1.25 MB taken as 1.25 MiB = 1,310,720 B (AI Day, HC34; SPEC
        section 6 explains the MiB reading: 354 x 1.25 MiB is the "440 MB" per D1).
    sram_load_bw : SRAM load bandwidth, 400 GB/s (HC34 slide).
    sram_store_bw : SRAM store bandwidth, 270 GB/s (HC34 slide).
    matrix_flops_per_cycle : BF16/CFP8 matrix-unit FLOP per cycle, 512: one 8x8x4
        multiply-accumulate block (256 MACs) per cycle, i.e. 1024 GFLOPS at 2 GHz (AI Day 2021).
    fp32_flops_per_cycle : FP32 FLOP per cycle, 32 (64 GFLOPS at 2 GHz; AI Day 2021).
    mac_block : (m, n, k) granularity of the matrix unit, (8, 8, 4) (HC34: "8x8x4 matrix
        multiplication units"). Work is padded up to whole blocks.
    noc_link_bw : bytes/s per direction on each of the 4 mesh links. Default 128 GB/s
        (64 B/cycle, HC34); AI Day 2021 quotes 512 GB/s: unresolved, so a parameter.
    hop_latency_cycles : cycles per mesh hop, 1 ("single cycle per hop", HC34).
    """

    clock_hz: float = 2.0e9
    sram_bytes: int = 1_310_720
    sram_load_bw: float = 400e9
    sram_store_bw: float = 270e9
    matrix_flops_per_cycle: int = 512
    fp32_flops_per_cycle: int = 32
    mac_block: Tuple[int, int, int] = (8, 8, 4)
    noc_link_bw: float = 128e9
    hop_latency_cycles: float = 1.0

    def __post_init__(self) -> None:
        _positive(self, "clock_hz", "sram_bytes", "sram_load_bw", "sram_store_bw",
                  "matrix_flops_per_cycle", "fp32_flops_per_cycle", "noc_link_bw")
        if not (isinstance(self.hop_latency_cycles, (int, float)) and self.hop_latency_cycles >= 0):
            raise ValueError(f"hop_latency_cycles: expected a number >= 0, got {self.hop_latency_cycles!r}")
        mb = tuple(self.mac_block)
        if len(mb) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in mb):
            raise ValueError(f"mac_block: expected three positive ints (m, n, k), got {self.mac_block!r}")
        if 2 * mb[0] * mb[1] * mb[2] != self.matrix_flops_per_cycle:
            raise ValueError(
                f"mac_block: {mb} does 2*{mb[0]}*{mb[1]}*{mb[2]} FLOP per block, but "
                f"matrix_flops_per_cycle is {self.matrix_flops_per_cycle} (one block per cycle)")
        object.__setattr__(self, "mac_block", mb)

    @property
    def peak_flops(self) -> float:
        """BF16/CFP8 matrix peak, FLOP/s (1.024e12 by default)."""
        return self.matrix_flops_per_cycle * self.clock_hz

    @property
    def fp32_peak_flops(self) -> float:
        """FP32 peak, FLOP/s (64e9 by default)."""
        return self.fp32_flops_per_cycle * self.clock_hz

    @property
    def hop_latency_s(self) -> float:
        return self.hop_latency_cycles / self.clock_hz


@dataclass(frozen=True)
class D1Chip:
    """One D1 die: a 2D mesh of nodes.

    Parameters
    ----------
    node : the :class:`D1Node` every node is.
    grid : (rows, cols) of the node mesh. The shape is not public; 18 x 20 less 6 disabled
        nodes is a guess consistent with 354 active (SPEC section 6).
    active_nodes : 354 working nodes (AI Day, HC34, MICRO23). The planner assumes the
        disabled ones lie outside the rectangle it uses, so it never uses more than this.
    offchip_bw_per_edge : bytes/s per direction on each of the 4 die edges, 2 TB/s
        (576 SerDes lanes x 112 Gb/s; AI Day, HC34; medium confidence).
    edges : die edges that carry off-chip traffic, 4.
    bisection_bw : on-chip bisection, 10 TB/s per direction (AI Day; informative only).
    """

    node: D1Node = field(default_factory=D1Node)
    grid: Tuple[int, int] = (18, 20)
    active_nodes: int = 354
    offchip_bw_per_edge: float = 2e12
    edges: int = 4
    bisection_bw: float = 10e12

    def __post_init__(self) -> None:
        if not isinstance(self.node, D1Node):
            raise TypeError(f"node: expected a D1Node, got {type(self.node).__name__}")
        g = tuple(self.grid)
        if len(g) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in g):
            raise ValueError(f"grid: expected (rows, cols) of positive ints, got {self.grid!r}")
        object.__setattr__(self, "grid", g)
        if (isinstance(self.active_nodes, bool) or not isinstance(self.active_nodes, int)
                or not 1 <= self.active_nodes <= g[0] * g[1]):
            raise ValueError(f"active_nodes: expected an int in 1..{g[0] * g[1]}, got {self.active_nodes!r}")
        _positive(self, "offchip_bw_per_edge", "edges", "bisection_bw")

    @property
    def peak_flops(self) -> float:
        """BF16/CFP8 peak, FLOP/s: active nodes x node peak (~362e12; AI Day: 362 TFLOPS)."""
        return self.active_nodes * self.node.peak_flops

    @property
    def fp32_peak_flops(self) -> float:
        """FP32 peak, FLOP/s (~22.6e12; AI Day: 22.6 TFLOPS)."""
        return self.active_nodes * self.node.fp32_peak_flops

    @property
    def sram_bytes(self) -> int:
        """Total SRAM of the active nodes (~464e6 B = 442 MiB, "440 MB")."""
        return self.active_nodes * self.node.sram_bytes

    @property
    def offchip_bw(self) -> float:
        """Off-chip bandwidth per direction over all edges, bytes/s (8 TB/s)."""
        return self.edges * self.offchip_bw_per_edge


@dataclass(frozen=True)
class TrainingTile:
    """A training tile: a 5 x 5 mesh of D1 chips.

    Parameters
    ----------
    chip : the :class:`D1Chip` every chip is.
    chips : (rows, cols) of chips, (5, 5) (HC34 system talk).
    chip_link_bw : bytes/s per direction between two neighbouring chips, 2 TB/s: one D1
        edge's off-chip bandwidth (AI Day, HC34; medium).
    offtile_bw_per_edge : bytes/s per direction on each tile edge, 9 TB/s (36 TB/s off-tile,
        HC34 system talk).
    edges : tile edges that carry off-tile traffic, 4.
    bisection_bw : 10 TB/s (HC34 system talk; informative only).
    power_w : 15 kW (HC34 system talk; informative only).
    """

    chip: D1Chip = field(default_factory=D1Chip)
    chips: Tuple[int, int] = (5, 5)
    chip_link_bw: float = 2e12
    offtile_bw_per_edge: float = 9e12
    edges: int = 4
    bisection_bw: float = 10e12
    power_w: float = 15e3

    def __post_init__(self) -> None:
        if not isinstance(self.chip, D1Chip):
            raise TypeError(f"chip: expected a D1Chip, got {type(self.chip).__name__}")
        c = tuple(self.chips)
        if len(c) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in c):
            raise ValueError(f"chips: expected (rows, cols) of positive ints, got {self.chips!r}")
        object.__setattr__(self, "chips", c)
        _positive(self, "chip_link_bw", "offtile_bw_per_edge", "edges", "bisection_bw", "power_w")

    @property
    def n_chips(self) -> int:
        return self.chips[0] * self.chips[1]

    @property
    def peak_flops(self) -> float:
        """BF16/CFP8 peak, FLOP/s: 25 x chip (~9.06e15; HC34: 9 PFLOPS)."""
        return self.n_chips * self.chip.peak_flops

    @property
    def sram_bytes(self) -> int:
        """Total SRAM, bytes (~11.6e9; HC34: 11 GB)."""
        return self.n_chips * self.chip.sram_bytes

    @property
    def offchip_bw(self) -> float:
        """Off-tile bandwidth per direction over all edges, bytes/s (36 TB/s)."""
        return self.edges * self.offtile_bw_per_edge


@dataclass(frozen=True)
class DojoSystem:
    """A Dojo system: a number of training tiles.

    Parameters
    ----------
    tile : the :class:`TrainingTile` every tile is.
    tiles : 120 = an ExaPOD (tray = 6 tiles, cabinet = 2 trays, ExaPOD = 10 cabinets;
        AI Day 2021/2022), 3000 D1 chips, ~1.1 EFLOPS.
    """

    tile: TrainingTile = field(default_factory=TrainingTile)
    tiles: int = 120

    def __post_init__(self) -> None:
        if not isinstance(self.tile, TrainingTile):
            raise TypeError(f"tile: expected a TrainingTile, got {type(self.tile).__name__}")
        if isinstance(self.tiles, bool) or not isinstance(self.tiles, int) or self.tiles < 1:
            raise ValueError(f"tiles: expected a positive int, got {self.tiles!r}")

    @property
    def n_chips(self) -> int:
        return self.tiles * self.tile.n_chips

    @property
    def peak_flops(self) -> float:
        """BF16/CFP8 peak, FLOP/s (~1.09e18 for an ExaPOD)."""
        return self.tiles * self.tile.peak_flops

    @property
    def sram_bytes(self) -> int:
        return self.tiles * self.tile.sram_bytes
