"""The Dojo machine model: node, chip, training tile and system (SPEC section 6), one place for
every figure.

Every figure is a keyword parameter whose default is the public figure named in the
docstring (source tags as in SPEC.md: AI Day 2021/2022, HC34 = Hot Chips 34, MICRO23 =
IEEE Micro 2023) or, marked "assumption", our guess. Each figure lives in exactly one object;
derived quantities (peaks, SRAM totals, bandwidths in bytes/s of per-cycle figures, the tile
mesh's chip links) are read-only properties, so a modified figure propagates.

Units (docs/machine.md): SI base units -- bytes, seconds, bytes/s, Hz, FLOP/s -- or per cycle
where a figure scales with the node clock. Per cycle (scale with ``clock_hz``): the matrix and
FP32 FLOPs, the SRAM load/store port widths, the NoC link width, the NoC hop and message
latencies, the per-step synchronization. Per second (do not scale with the core clock): the
SerDes off-chip links, the chip-to-chip, off-tile and interface-processor links and their
latencies (their own PHY clocks). So ``D1Node(clock_hz=3e9)`` has 1.5x the FLOPs, SRAM and NoC
bandwidth of the default, and the same off-chip links. The per-second spellings of the
per-cycle figures (``sram_load_bw=400e9``, ``noc_link_bw=512e9``) are accepted keywords and
properties, converted at the node's clock. A figure off by a unit prefix (a link below 1 MB/s,
a clock below 1 MHz, an SRAM below 1 KiB, a latency of a second or more) is a ValueError that
names the probable intent.

The objects are frozen, hashable and picklable; ``dataclasses.replace(chip, offchip_bw_per_edge=
4e12)`` explores a variant; ``to_dict()`` / ``from_dict()`` round-trip through JSON with the
unit in every key. Wherever a machine is taken (``plan_gemm``, ``gemm(..., return_plan=True)``,
``estimate_allreduce``, ``allreduce``, the hierarchical pair, ``mpi.allreduce`` through its
topology, the report), a :class:`D1Chip`, :class:`TrainingTile` (or :class:`D2Tile`) or
:class:`DojoSystem` is accepted; for the all-reduce it stands for its mesh
(:func:`dojo_kernels.mesh.as_topology`).

How Tesla's compiler tiles work across nodes is not public; :func:`dojo_kernels.plan_gemm`
is our own model on these figures.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Type, TypeVar, cast

from . import _units

__all__ = ["D1Node", "D1Chip", "TrainingTile", "D2Tile", "DojoSystem", "machine_from_dict"]

T = TypeVar("T")


def _positive(obj: object, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name}: expected a positive number, got {v!r}")


def _nonneg(obj: object, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name}: expected a number >= 0, got {v!r}")


def _pair(name: str, v: Any) -> Tuple[int, int]:
    try:
        g = tuple(v)
    except TypeError:
        raise ValueError(f"{name}: expected (rows, cols) of positive ints, got {v!r}") from None
    if len(g) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in g):
        raise ValueError(f"{name}: expected (rows, cols) of positive ints, got {v!r}")
    return (int(g[0]), int(g[1]))


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


class _Machine:
    """Shared serialization of the machine objects: ``to_dict`` names every figure with its
    unit (``_UNITS`` maps a field to its key suffix); ``from_dict`` inverts it."""

    _UNITS: Dict[str, str] = {}

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict: ``"kind"`` (the class), then every figure, the key ending in
        its unit (``_hz``, ``_bytes``, ``_bytes_per_s``, ``_s``, ``_per_cycle``, ...);
        nested machines are nested dicts. :meth:`from_dict` inverts it."""
        out: Dict[str, Any] = {"kind": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            key = f.name + self._UNITS.get(f.name, "")
            if isinstance(v, _Machine):
                out[key] = v.to_dict()
            elif isinstance(v, tuple):
                out[key] = list(v)
            else:
                out[key] = v
        return out

    @classmethod
    def from_dict(cls: Type[T], d: Dict[str, Any]) -> T:
        """The object :meth:`to_dict` described (``kind`` must name this class or a subclass)."""
        return cast(T, machine_from_dict(d, cls))

    def with_failures(self, nodes: Any = (), links: Any = ()) -> Any:
        """The all-reduce topology of this machine with failed nodes and links:
        ``mesh.as_topology(self).with_failures(nodes=nodes, links=links)``, a
        :class:`dojo_kernels.mesh.DamagedMesh2D`. Node ids are those of that topology: a
        D1Chip's nodes, a TrainingTile's chips, a DojoSystem's tiles (row-major); ``links``
        are pairs of neighbouring ids. A D1Node has no topology (TypeError)."""
        from .mesh import as_topology
        return as_topology(self, "machine").with_failures(nodes=nodes, links=links)


def machine_from_dict(d: Dict[str, Any], expected: Optional[type] = None) -> Any:
    """The machine object a ``to_dict()`` dict describes (any kind)."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"d: expected a dict from a machine's to_dict(), got {d!r:.80}")
    kinds = {c.__name__: c for c in (D1Node, D1Chip, TrainingTile, D2Tile, DojoSystem)}
    cls = kinds.get(d["kind"])
    if cls is None or (expected is not None and not issubclass(cls, expected)):
        raise ValueError(f"d: kind {d['kind']!r} is not a {getattr(expected, '__name__', 'machine')}")
    kw: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f.name + cls._UNITS.get(f.name, "")
        if key not in d:
            continue
        v = d[key]
        if isinstance(v, dict):
            v = machine_from_dict(v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


@dataclass(frozen=True, init=False)
class D1Node(_Machine):
    """One D1 processing node (core + SRAM + matrix units + NoC router). Its per-cycle
    figures scale with ``clock_hz``.

    Parameters
    ----------
    clock_hz : core clock, Hz: 2 GHz (AI Day 2021, HC34; high confidence).
    sram_bytes : node SRAM, bytes: 1.25 MB taken as 1.25 MiB = 1,310,720 B (AI Day, HC34;
        SPEC section 6 explains the MiB reading: 354 x 1.25 MiB is the "440 MB" per D1).
    sram_load_bytes_per_cycle : SRAM load port, bytes/cycle: 200 (HC34's 400 GB/s at 2 GHz).
    sram_store_bytes_per_cycle : SRAM store port, bytes/cycle: 135 (HC34's 270 GB/s at 2 GHz).
    matrix_flops_per_cycle : BF16/CFP8 matrix-unit FLOP per cycle, 512: one 8x8x4
        multiply-accumulate block (256 MACs) per cycle, i.e. 1024 GFLOPS at 2 GHz (AI Day 2021).
    fp32_flops_per_cycle : FP32 FLOP per cycle, 32 (64 GFLOPS at 2 GHz; AI Day 2021).
    mac_block : (m, n, k) granularity of the matrix unit, (8, 8, 4) (HC34: "8x8x4 matrix
        multiplication units"). Work is padded up to whole blocks.
    noc_link_bytes_per_cycle : bytes/cycle per direction on each of the 4 mesh links: 64
        (HC34, 128 GB/s at 2 GHz). AI Day 2021 quotes 512 GB/s (256 B/cycle): unresolved, so
        a parameter.
    hop_latency_cycles : cycles per extra mesh hop, 1 ("single cycle per hop", HC34).
    link_latency_cycles : fixed cycles of every NoC message, 1 (assumption: an optimistic
        floor of one hop).
    step_sync_cycles : cycles of synchronization between two steps of a GEMM plan (the nodes
        of the grid agree that the next panels may be overwritten): 0 by default, because no
        public figure exists; a what-if parameter (docs/gemm.md).

    The per-second spellings ``sram_load_bw``, ``sram_store_bw``, ``noc_link_bw`` (bytes/s)
    are accepted as keywords (converted at ``clock_hz``; they take precedence over the
    per-cycle keyword) and read back as properties.
    """

    clock_hz: float
    sram_bytes: int
    sram_load_bytes_per_cycle: float
    sram_store_bytes_per_cycle: float
    matrix_flops_per_cycle: int
    fp32_flops_per_cycle: int
    mac_block: Tuple[int, int, int]
    noc_link_bytes_per_cycle: float
    hop_latency_cycles: float
    link_latency_cycles: float
    step_sync_cycles: float

    _UNITS = {"clock_hz": "", "sram_bytes": "", "mac_block": "_mnk"}

    def __init__(self, clock_hz: float = 2.0e9, sram_bytes: int = 1_310_720,
                 sram_load_bw: Optional[float] = None, sram_store_bw: Optional[float] = None,
                 matrix_flops_per_cycle: int = 512, fp32_flops_per_cycle: int = 32,
                 mac_block: Tuple[int, int, int] = (8, 8, 4),
                 noc_link_bw: Optional[float] = None, hop_latency_cycles: float = 1.0, *,
                 sram_load_bytes_per_cycle: float = 200.0,
                 sram_store_bytes_per_cycle: float = 135.0,
                 noc_link_bytes_per_cycle: float = 64.0, link_latency_cycles: float = 1.0,
                 step_sync_cycles: float = 0.0) -> None:
        clock = _units.check("clock_hz", clock_hz, "Hz")
        _set(self, "clock_hz", clock_hz)
        if isinstance(sram_bytes, bool) or not isinstance(sram_bytes, int):
            raise ValueError(f"sram_bytes: expected a positive int (bytes), got {sram_bytes!r}")
        _units.check("sram_bytes", sram_bytes, "B")
        _set(self, "sram_bytes", sram_bytes)
        for name, bw, per in (("sram_load_bw", sram_load_bw, sram_load_bytes_per_cycle),
                              ("sram_store_bw", sram_store_bw, sram_store_bytes_per_cycle),
                              ("noc_link_bw", noc_link_bw, noc_link_bytes_per_cycle)):
            pname = {"sram_load_bw": "sram_load_bytes_per_cycle",
                     "sram_store_bw": "sram_store_bytes_per_cycle",
                     "noc_link_bw": "noc_link_bytes_per_cycle"}[name]
            if bw is not None:
                per = _units.check(name, bw, "B/s") / clock
            _set(self, pname, per)
        _set(self, "matrix_flops_per_cycle", matrix_flops_per_cycle)
        _set(self, "fp32_flops_per_cycle", fp32_flops_per_cycle)
        _set(self, "hop_latency_cycles", hop_latency_cycles)
        _set(self, "link_latency_cycles", link_latency_cycles)
        _set(self, "step_sync_cycles", step_sync_cycles)
        _positive(self, "sram_load_bytes_per_cycle", "sram_store_bytes_per_cycle",
                  "matrix_flops_per_cycle", "fp32_flops_per_cycle", "noc_link_bytes_per_cycle")
        _nonneg(self, "hop_latency_cycles", "link_latency_cycles", "step_sync_cycles")
        try:
            mb = tuple(mac_block)
        except TypeError:
            mb = ()
        if len(mb) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in mb):
            raise ValueError(f"mac_block: expected three positive ints (m, n, k), got {mac_block!r}")
        if 2 * mb[0] * mb[1] * mb[2] != matrix_flops_per_cycle:
            raise ValueError(
                f"mac_block: {mb} does 2*{mb[0]}*{mb[1]}*{mb[2]} FLOP per block, but "
                f"matrix_flops_per_cycle is {matrix_flops_per_cycle} (one block per cycle)")
        _set(self, "mac_block", mb)

    @property
    def peak_flops(self) -> float:
        """BF16/CFP8 matrix peak, FLOP/s (1.024e12 by default)."""
        return self.matrix_flops_per_cycle * self.clock_hz

    @property
    def fp32_peak_flops(self) -> float:
        """FP32 peak, FLOP/s (64e9 by default)."""
        return self.fp32_flops_per_cycle * self.clock_hz

    @property
    def sram_load_bw(self) -> float:
        """SRAM load bandwidth, bytes/s (400e9 by default)."""
        return self.sram_load_bytes_per_cycle * self.clock_hz

    @property
    def sram_store_bw(self) -> float:
        """SRAM store bandwidth, bytes/s (270e9 by default)."""
        return self.sram_store_bytes_per_cycle * self.clock_hz

    @property
    def noc_link_bw(self) -> float:
        """NoC link bandwidth per direction, bytes/s (128e9 by default)."""
        return self.noc_link_bytes_per_cycle * self.clock_hz

    @property
    def hop_latency_s(self) -> float:
        """Seconds per extra NoC hop."""
        return self.hop_latency_cycles / self.clock_hz

    @property
    def link_latency_s(self) -> float:
        """Fixed seconds of every NoC message."""
        return self.link_latency_cycles / self.clock_hz

    @property
    def step_sync_s(self) -> float:
        """Seconds of synchronization per GEMM step."""
        return self.step_sync_cycles / self.clock_hz


@dataclass(frozen=True)
class D1Chip(_Machine):
    """One D1 die: a 2D mesh of nodes.

    Parameters
    ----------
    node : the :class:`D1Node` every node is.
    grid : (rows, cols) of the node mesh. The shape is not public; 18 x 20 less 6 disabled
        nodes is a guess consistent with 354 active (SPEC section 6).
    active_nodes : 354 working nodes (AI Day, HC34, MICRO23). The planner assumes the
        disabled ones lie outside the rectangle it uses, so it never uses more than this.
    offchip_bw_per_edge : bytes/s per direction on each of the 4 die edges, 2 TB/s
        (576 SerDes lanes x 112 Gb/s; AI Day, HC34; medium confidence). Per second: the
        SerDes run on their own clock.
    edges : die edges that carry off-chip traffic, 4.
    bisection_bw : on-chip bisection, bytes/s per direction, 10 TB/s (AI Day; informative:
        it matches 20 NoC links at AI Day's 512 GB/s; the model uses the node's links).
    """

    node: D1Node = field(default_factory=D1Node)
    grid: Tuple[int, int] = (18, 20)
    active_nodes: int = 354
    offchip_bw_per_edge: float = 2e12
    edges: int = 4
    bisection_bw: float = 10e12

    _UNITS = {"grid": "_nodes", "offchip_bw_per_edge": "_bytes_per_s",
              "bisection_bw": "_bytes_per_s"}

    def __post_init__(self) -> None:
        if not isinstance(self.node, D1Node):
            raise TypeError(f"node: expected a D1Node, got {type(self.node).__name__}")
        g = _pair("grid", self.grid)
        _set(self, "grid", g)
        if (isinstance(self.active_nodes, bool) or not isinstance(self.active_nodes, int)
                or not 1 <= self.active_nodes <= g[0] * g[1]):
            raise ValueError(f"active_nodes: expected an int in 1..{g[0] * g[1]}, got {self.active_nodes!r}")
        _units.check("offchip_bw_per_edge", self.offchip_bw_per_edge, "B/s")
        _units.check("bisection_bw", self.bisection_bw, "B/s")
        _positive(self, "edges")

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
        """Total SRAM of the active nodes, bytes (~464e6 B = 442 MiB, "440 MB")."""
        return self.active_nodes * self.node.sram_bytes

    @property
    def offchip_bw(self) -> float:
        """Off-chip bandwidth per direction over all edges, bytes/s (8 TB/s)."""
        return self.edges * self.offchip_bw_per_edge


@dataclass(frozen=True, init=False)
class TrainingTile(_Machine):
    """A training tile: a 5 x 5 mesh of D1 chips.

    Parameters
    ----------
    chip : the :class:`D1Chip` every chip is.
    chips : (rows, cols) of chips, (5, 5) (HC34 system talk).
    chip_link_bw : bytes/s per direction between two neighbouring chips. Default None:
        derived, one D1 edge's off-chip bandwidth (``chip.offchip_bw_per_edge``, 2 TB/s;
        the chips of a D1 tile meet edge to edge). Read back as a property.
    offtile_bw_per_edge : bytes/s per direction on each tile edge, 9 TB/s (36 TB/s off-tile,
        HC34 system talk). Also the tile-to-tile link of a :class:`DojoSystem`.
    edges : tile edges that carry off-tile traffic, 4.
    bisection_bw : bytes/s, 10 TB/s (HC34 system talk; informative only).
    power_w : watts, 15 kW (HC34 system talk; informative only).
    chip_link_latency : seconds, the fixed cost of a chip-to-chip message, 100 ns
        (assumption: not public; SerDes + PHY of a few tens of ns each side).
    chip_hop_latency : seconds per extra chip hop (cut-through), 20 ns (assumption).
    name : a label for reports.
    """

    chip: D1Chip
    chips: Tuple[int, int]
    chip_link_bw_override: Optional[float]
    offtile_bw_per_edge: float
    edges: int
    bisection_bw: float
    power_w: float
    chip_link_latency: float
    chip_hop_latency: float
    name: str

    _UNITS = {"chips": "_grid", "chip_link_bw_override": "_bytes_per_s",
              "offtile_bw_per_edge": "_bytes_per_s", "bisection_bw": "_bytes_per_s",
              "power_w": "", "chip_link_latency": "_s", "chip_hop_latency": "_s"}

    def __init__(self, chip: Optional[D1Chip] = None, chips: Tuple[int, int] = (5, 5),
                 chip_link_bw: Optional[float] = None, offtile_bw_per_edge: float = 9e12,
                 edges: int = 4, bisection_bw: float = 10e12, power_w: float = 15e3, *,
                 chip_link_latency: float = 100e-9, chip_hop_latency: float = 20e-9,
                 name: str = "D1 training tile",
                 chip_link_bw_override: Optional[float] = None) -> None:
        chip = D1Chip() if chip is None else chip
        if not isinstance(chip, D1Chip):
            raise TypeError(f"chip: expected a D1Chip, got {type(chip).__name__}")
        _set(self, "chip", chip)
        _set(self, "chips", _pair("chips", chips))
        link = chip_link_bw if chip_link_bw is not None else chip_link_bw_override
        if link is not None:
            _units.check("chip_link_bw", link, "B/s")
        _set(self, "chip_link_bw_override", link)
        _units.check("offtile_bw_per_edge", offtile_bw_per_edge, "B/s")
        _set(self, "offtile_bw_per_edge", offtile_bw_per_edge)
        _set(self, "edges", edges)
        _set(self, "bisection_bw", bisection_bw)
        _set(self, "power_w", power_w)
        _set(self, "chip_link_latency", _units.check_latency("chip_link_latency", chip_link_latency))
        _set(self, "chip_hop_latency", _units.check_latency("chip_hop_latency", chip_hop_latency))
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {type(name).__name__}")
        _set(self, "name", name)
        _positive(self, "edges", "bisection_bw", "power_w")
        _units.check("bisection_bw", bisection_bw, "B/s")   # as D1Chip's: a prefix mistake

    @property
    def chip_link_bw(self) -> float:
        """Chip-to-chip link bandwidth per direction, bytes/s (derived unless set)."""
        if self.chip_link_bw_override is not None:
            return self.chip_link_bw_override
        return self.chip.offchip_bw_per_edge

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


@dataclass(frozen=True, init=False)
class D2Tile(TrainingTile):
    """What-if: the next Dojo, a whole 5 x 5 training tile on one wafer (Tesla has said D2
    does this to remove the chip-to-chip bottleneck; no figure of it is public).

    Every figure is an assumption (docs/machine.md, "D2 what-if"):

    - the nodes and chips are D1's (same clock, SRAM, NoC, 354 nodes per chip-sized
      region): only the integration changes;
    - chip-to-chip link: on-wafer wiring continues the on-chip NoC across the former die
      edge, so a region boundary carries what the chip's bisection carries: default
      ``chip.bisection_bw`` (10 TB/s per direction, AI Day), 5x a D1 edge's SerDes;
    - its latency: crossing a chip-sized region is ~20 NoC hops at one cycle each, so
      ``chip_link_latency = chip_hop_latency = 20 / clock_hz`` (10 ns at 2 GHz) instead of
      SerDes' 100 ns / 20 ns;
    - the tile's off-tile edges and interface processors are D1's (9 TB/s per edge).
    """

    def __init__(self, chip: Optional[D1Chip] = None, chips: Tuple[int, int] = (5, 5),
                 chip_link_bw: Optional[float] = None, offtile_bw_per_edge: float = 9e12,
                 edges: int = 4, bisection_bw: float = 10e12, power_w: float = 15e3, *,
                 chip_link_latency: Optional[float] = None,
                 chip_hop_latency: Optional[float] = None,
                 name: str = "D2 wafer tile (what-if)",
                 chip_link_bw_override: Optional[float] = None) -> None:
        chip = D1Chip() if chip is None else chip
        if not isinstance(chip, D1Chip):
            raise TypeError(f"chip: expected a D1Chip, got {type(chip).__name__}")
        crossing = 20.0 / chip.node.clock_hz
        link = chip_link_bw if chip_link_bw is not None else chip_link_bw_override
        super().__init__(
            chip, chips, link, offtile_bw_per_edge,
            edges, bisection_bw, power_w,
            chip_link_latency=crossing if chip_link_latency is None else chip_link_latency,
            chip_hop_latency=crossing if chip_hop_latency is None else chip_hop_latency,
            name=name)

    @property
    def chip_link_bw(self) -> float:
        """Chip-to-chip (region-to-region) bandwidth per direction, bytes/s: the chip's
        bisection unless set."""
        if self.chip_link_bw_override is not None:
            return self.chip_link_bw_override
        return self.chip.bisection_bw


@dataclass(frozen=True, init=False)
class DojoSystem(_Machine):
    """A Dojo system: a 2D mesh of training tiles fed by interface processors.

    Parameters
    ----------
    tile : the :class:`TrainingTile` every tile is (a :class:`D2Tile` for the what-if).
    tiles : number of tiles, 120 = an ExaPOD (tray = 6 tiles, cabinet = 2 trays, ExaPOD = 10
        cabinets; AI Day 2021/2022), 3000 D1 chips, ~1.1 EFLOPS. When given without a
        matching ``grid``, the grid is its most square factorization (120: 10 x 12).
    grid : (rows, cols) of the tile mesh (the arrangement is not public: assumption).
        Tile-to-tile links carry ``tile.offtile_bw_per_edge`` per direction.
    tile_link_latency : seconds, fixed cost of a tile-to-tile message, 1 us (assumption).
    tile_hop_latency : seconds per extra tile hop, 100 ns (assumption).
    dips_per_edge : Dojo interface processors per tile edge, 5 (HC34).
    dip_hbm_bytes : HBM per DIP, bytes, 32 GB (HC34).
    dip_hbm_bw : HBM bandwidth per DIP, bytes/s, 800 GB/s (HC34).
    dip_link_bw : DIP to tile, bytes/s, 900 GB/s (HC34).

    DIPs sit on the outer tile edges of the system's mesh (assumption; HC34 shows them at
    the tile edges): an outer tile edge is fed at :attr:`edge_feed_bw`.
    """

    tile: TrainingTile
    grid: Tuple[int, int]
    tile_link_latency: float
    tile_hop_latency: float
    dips_per_edge: int
    dip_hbm_bytes: float
    dip_hbm_bw: float
    dip_link_bw: float

    _UNITS = {"grid": "_tiles", "tile_link_latency": "_s", "tile_hop_latency": "_s",
              "dip_hbm_bytes": "", "dip_hbm_bw": "_bytes_per_s", "dip_link_bw": "_bytes_per_s"}

    def __init__(self, tile: Optional[TrainingTile] = None, tiles: Optional[int] = None, *,
                 grid: Optional[Tuple[int, int]] = None, tile_link_latency: float = 1e-6,
                 tile_hop_latency: float = 100e-9, dips_per_edge: int = 5,
                 dip_hbm_bytes: float = 32e9, dip_hbm_bw: float = 800e9,
                 dip_link_bw: float = 900e9) -> None:
        tile = TrainingTile() if tile is None else tile
        if not isinstance(tile, TrainingTile):
            raise TypeError(f"tile: expected a TrainingTile, got {type(tile).__name__}")
        _set(self, "tile", tile)
        if tiles is not None:
            if isinstance(tiles, bool) or not isinstance(tiles, int) or tiles < 1:
                raise ValueError(f"tiles: expected a positive int, got {tiles!r}")
            if grid is None or _pair("grid", grid)[0] * _pair("grid", grid)[1] != tiles:
                r = max(d for d in range(1, math.isqrt(tiles) + 1) if tiles % d == 0)
                grid = (r, tiles // r)
        elif grid is None:
            grid = (10, 12)
        _set(self, "grid", _pair("grid", grid))
        _set(self, "tile_link_latency", _units.check_latency("tile_link_latency", tile_link_latency))
        _set(self, "tile_hop_latency", _units.check_latency("tile_hop_latency", tile_hop_latency))
        if isinstance(dips_per_edge, bool) or not isinstance(dips_per_edge, int) or dips_per_edge < 1:
            raise ValueError(f"dips_per_edge: expected a positive int, got {dips_per_edge!r}")
        _set(self, "dips_per_edge", dips_per_edge)
        _set(self, "dip_hbm_bytes", _units.check("dip_hbm_bytes", dip_hbm_bytes, "B"))
        _set(self, "dip_hbm_bw", _units.check("dip_hbm_bw", dip_hbm_bw, "B/s"))
        _set(self, "dip_link_bw", _units.check("dip_link_bw", dip_link_bw, "B/s"))

    @property
    def tiles(self) -> int:
        """Number of tiles, ``grid[0] * grid[1]``."""
        return self.grid[0] * self.grid[1]

    @property
    def n_chips(self) -> int:
        return self.tiles * self.tile.n_chips

    @property
    def peak_flops(self) -> float:
        """BF16/CFP8 peak, FLOP/s (~1.09e18 for an ExaPOD)."""
        return self.tiles * self.tile.peak_flops

    @property
    def sram_bytes(self) -> int:
        """Total SRAM, bytes."""
        return self.tiles * self.tile.sram_bytes

    @property
    def edge_feed_bw(self) -> float:
        """Bytes/s per direction into one outer tile edge from its DIPs' HBM:
        ``min(dips_per_edge * min(dip_hbm_bw, dip_link_bw), tile.offtile_bw_per_edge)``
        (4 TB/s by default)."""
        return min(self.dips_per_edge * min(self.dip_hbm_bw, self.dip_link_bw),
                   self.tile.offtile_bw_per_edge)

    @property
    def hbm_bytes(self) -> float:
        """HBM of the DIPs on the system's outer edges, bytes."""
        return self.dip_hbm_bytes * self.dips_per_edge * 2 * (self.grid[0] + self.grid[1])
