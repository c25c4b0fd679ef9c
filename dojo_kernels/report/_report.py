"""The main job: one training step of a transformer block, emulated and costed on Dojo.

:func:`run_report` runs the step's GEMMs for real on this CPU in FP32 (NumPy float32 matmul,
the reference), BF16 and CFloat8 (the D1 kernels of :func:`dojo_kernels.gemm`), measures each
format's error against FP32, plans every GEMM on a D1 training tile
(:func:`dojo_kernels.plan_gemm`), costs the gradient all-reduce across the tile's chips and
across a set of tiles (:func:`dojo_kernels.estimate_allreduce`) and adds it all up.
:func:`render_report` prints it as tables; :meth:`Report.to_dict` gives a JSON-ready dict
whose keys carry their units and :meth:`Report.from_dict` rebuilds an equal report from it
(results as data, docs/report.md: every result class here pickles and round-trips);
:func:`plot_report` draws PNGs (needs matplotlib).

The block (``M = batch * seq`` tokens, ``d = d_model``, ``h = mlp_ratio * d``):

- forward: ``QKV = X Wqkv`` (M x d x 3d), ``Out = Ctx Wo`` (M x d x d),
  ``U = X1 W1`` (M x d x h), ``Y = gelu(U) W2`` (M x h x d);
- backward, for every forward ``Y = A W``: ``dA = dY W^T`` and ``dW = A^T dY``.

That is 12 GEMMs, ``3 x 2 M (4 d^2 + 2 d h)`` FLOP. Attention itself (the softmax and its two
batched products) is not part of the step here: the context is ``V`` (as if each token
attended only to itself) and ``dQ, dK`` are Gaussian with ``dV``'s RMS. The operands are
computed once in FP32 from Gaussian ``X``, weights ``N(0, 1/fan_in)`` and a Gaussian output
gradient ``dY`` of RMS ``grad_scale``; every format multiplies the same FP32 operands
(rounded to nearest-even into the format), so each error is that of one GEMM.

Formats: BF16 for both operands; CFloat8 uses ``forward_format`` (1-4-3) for activations and
weights and ``gradient_format`` (1-5-2) for output gradients, each tensor with its own bias
from :func:`dojo_kernels.choose_bias` (the largest with no overflow, ``bias_margin``
binades of headroom) unless ``bias`` fixes one.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

import numpy as np

from .. import _config
from ..collectives import ALGORITHMS, allreduce, estimate_allreduce
from ..machine import D2Tile, DojoSystem, TrainingTile, machine_from_dict, mesh
from ..collectives.hierarchical import INNER_ALGORITHMS, HierarchicalReport, estimate_hierarchical
from ..numerics.formats import BF16, Format, cfloat8_143, cfloat8_152
from ..gemm import ORDERS as GEMM_ORDERS
from ..gemm import GemmPlan, feed_bandwidths, gemm, plan_gemm
from ..numerics import choose_bias
from ._data import check_dict, same

__all__ = ["ReportConfig", "GemmResult", "AllreduceResult", "Report", "run_report",
           "compare_machines", "MACHINES",
           "render_report", "plot_report", "Progress", "HIST_EDGES", "FaultResult",
           "fault_scenarios"]

#: Edges of the error histograms: ``log10(|error| / RMS(reference))`` of each output element.
HIST_EDGES: np.ndarray = np.linspace(-9.0, 1.0, 51)

_CF8 = {"cfloat8_143": cfloat8_143, "cfloat8_152": cfloat8_152}


@dataclass(frozen=True)
class ReportConfig:
    """What :func:`run_report` emulates. Every field has the default of ``dojo-kernels report``.

    Attributes
    ----------
    d_model, seq, batch, mlp_ratio : the block's shape (``M = batch * seq`` tokens, MLP
        hidden ``mlp_ratio * d_model``).
    formats : emulated formats besides the FP32 reference, from ``"bf16"``, ``"cfloat8"``.
    forward_format, gradient_format : CFloat8 families for activations/weights and for
        gradients (``"cfloat8_143"`` or ``"cfloat8_152"``).
    bias : a fixed CFloat8 bias for every tensor, or None for :func:`choose_bias` per tensor.
    bias_margin : binades of headroom for :func:`choose_bias`.
    gemm_order : the accumulation order of every emulated GEMM, ``"amx"`` (default) or
        ``"vdpbf16ps"`` (the ``order=`` of :func:`dojo_kernels.gemm`, docs/gemm.md).
    grad_scale : RMS of the output gradient ``dY``.
    grad_bytes_per_param : bytes per gradient element on the wire of the all-reduce (2: BF16).
    machine : the :class:`TrainingTile` (or :class:`~dojo_kernels.d1.D2Tile`) the GEMMs are
        planned on; its figures also set the tile mesh's links and (``offtile_bw_per_edge``)
        the tile-to-tile links.
    system_shape : (rows, cols) of training tiles of the system: :attr:`system` is the
        ``DojoSystem(machine, grid=system_shape)`` of the system-scale step.
    tile_link_bandwidth : deprecated (it duplicated ``machine.offtile_bw_per_edge``). None
        (default): the machine's figure. A value (bytes/s) still overrides the tile-to-tile
        link of the system, with a DeprecationWarning; set
        ``machine=dataclasses.replace(tile, offtile_bw_per_edge=...)`` instead.
    overlap : the system-scale step overlaps each weight's gradient all-reduce with the
        backward GEMMs that follow its dW (False: the all-reduce starts after the last GEMM).
    algorithms : all-reduce algorithms to cost.
    check_elements : elements per node of the real all-reduce run as a numeric check
        (0: skip).
    seed : seed of the operands.
    failed_chips, failed_links : an extra case of the fault study: chip ids (row-major on the
        tile's chip mesh) and pairs of neighbouring chip ids whose link failed.
    fault_study : run the fault study (:func:`fault_scenarios`; ``Report.faults``).
    """

    d_model: int = 1024
    seq: int = 2048
    batch: int = 1
    mlp_ratio: int = 4
    formats: Tuple[str, ...] = ("bf16", "cfloat8")
    forward_format: str = "cfloat8_143"
    gradient_format: str = "cfloat8_152"
    bias: Optional[int] = None
    bias_margin: int = 0
    gemm_order: str = "amx"
    grad_scale: float = 1e-3
    grad_bytes_per_param: int = 2
    machine: TrainingTile = field(default_factory=TrainingTile)
    system_shape: Tuple[int, int] = (2, 3)
    tile_link_bandwidth: Optional[float] = None
    overlap: bool = False
    algorithms: Tuple[str, ...] = ALGORITHMS
    check_elements: int = 4096
    seed: int = 0
    failed_chips: Tuple[int, ...] = ()
    failed_links: Tuple[Tuple[int, int], ...] = ()
    fault_study: bool = True

    def __post_init__(self) -> None:
        for name in ("d_model", "seq", "batch", "mlp_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        for f in self.formats:
            if f not in ("bf16", "cfloat8"):
                raise ValueError(f"formats: expected 'bf16' and/or 'cfloat8', got {f!r}")
        for name in ("forward_format", "gradient_format"):
            if getattr(self, name) not in _CF8:
                raise ValueError(f"{name}: expected one of {', '.join(_CF8)}, "
                                 f"got {getattr(self, name)!r}")
        if self.gemm_order not in GEMM_ORDERS:
            raise ValueError(f"gemm_order: expected one of {', '.join(GEMM_ORDERS)}, "
                             f"got {self.gemm_order!r}")
        if self.bias is not None and not (isinstance(self.bias, int) and 0 <= self.bias <= 63):
            raise ValueError(f"bias: expected an int in 0..63 or None, got {self.bias!r}")
        if not self.algorithms:
            raise ValueError("algorithms: expected at least one algorithm")
        for a in self.algorithms:
            if a not in ALGORITHMS:
                raise ValueError(f"algorithms: expected names from {', '.join(ALGORITHMS)}, "
                                 f"got {a!r}")
        if not isinstance(self.machine, TrainingTile):
            raise TypeError(f"machine: expected a TrainingTile (or D2Tile), got "
                            f"{type(self.machine).__name__}")
        if self.tile_link_bandwidth is not None:
            import warnings

            from ..machine import check_unit
            check_unit("tile_link_bandwidth", self.tile_link_bandwidth, "B/s")
            warnings.warn("ReportConfig.tile_link_bandwidth is deprecated: it duplicates "
                          "machine.offtile_bw_per_edge; set that instead",
                          DeprecationWarning, stacklevel=3)
        if not isinstance(self.overlap, (bool, np.bool_)):
            raise TypeError(f"overlap: expected a bool, got {type(self.overlap).__name__}")
        if len(self.system_shape) != 2 or min(self.system_shape) < 1:
            raise ValueError(f"system_shape: expected (rows, cols) >= 1, got {self.system_shape!r}")
        if not (self.grad_scale > 0 and math.isfinite(self.grad_scale)):
            raise ValueError(f"grad_scale: expected a positive number, got {self.grad_scale!r}")
        if not isinstance(self.fault_study, (bool, np.bool_)):
            raise TypeError(f"fault_study: expected a bool, got {type(self.fault_study).__name__}")
        if self.failed_chips or self.failed_links:   # ids and links checked on the tile mesh
            try:
                mesh.training_tile(self.machine).with_failures(nodes=self.failed_chips,
                                                               links=self.failed_links)
            except (ValueError, TypeError) as exc:
                msg = str(exc)
                for old, new in (("nodes:", "failed_chips:"), ("links:", "failed_links:")):
                    if msg.startswith(old):
                        msg = new + msg[len(old):]
                raise type(exc)(msg) from None
        if self.grad_bytes_per_param not in (1, 2, 4):
            raise ValueError(f"grad_bytes_per_param: expected 1, 2 or 4, got "
                             f"{self.grad_bytes_per_param!r}")

    @property
    def system(self) -> DojoSystem:
        """The Dojo system of the system-scale step: ``system_shape`` tiles of ``machine``
        (the deprecated ``tile_link_bandwidth``, when set, replaces the tile-to-tile link)."""
        tile = self.machine
        if self.tile_link_bandwidth is not None:
            tile = replace(tile, offtile_bw_per_edge=self.tile_link_bandwidth)
        return DojoSystem(tile, grid=self.system_shape)

    @property
    def system_link_bandwidth(self) -> float:
        """Bytes/s per direction between two tiles (the system's tile-to-tile link)."""
        return self.system.tile.offtile_bw_per_edge

    @property
    def tokens(self) -> int:
        """``M = batch * seq``."""
        return self.batch * self.seq

    @property
    def hidden(self) -> int:
        """MLP hidden width ``mlp_ratio * d_model``."""
        return self.mlp_ratio * self.d_model

    @property
    def params(self) -> int:
        """Weights of the block's four matrices: ``4 d^2 + 2 d h``."""
        d, h = self.d_model, self.hidden
        return 4 * d * d + 2 * d * h

    def to_dict(self) -> Dict[str, Any]:
        """The configuration as JSON types (the ``"config"`` section of
        :meth:`Report.to_dict`): every field, the unit in the key where it has one
        (``bias_margin_binades``, ``system_shape_tiles``, ``machine``: the tile's
        ``to_dict()``), plus derived figures for the reader (``tokens``, ``hidden``,
        ``params``, the machine's clock, SRAM and link bandwidths, ``tile_link_bandwidth_
        bytes_per_s``: the system's tile-to-tile link in use, ``system``: the
        :class:`DojoSystem`'s ``to_dict()``), which :meth:`from_dict` ignores.
        ``tile_link_bandwidth_setting_bytes_per_s`` is the deprecated ``tile_link_bandwidth``
        field itself (None unless set)."""
        m = self.machine
        return {
            "d_model": self.d_model, "seq": self.seq, "batch": self.batch,
            "mlp_ratio": self.mlp_ratio,
            "tokens": self.tokens, "hidden": self.hidden, "params": self.params,
            "formats": list(self.formats), "forward_format": self.forward_format,
            "gradient_format": self.gradient_format, "bias": self.bias,
            "bias_margin_binades": self.bias_margin, "gemm_order": self.gemm_order,
            "grad_scale": self.grad_scale,
            "grad_bytes_per_param": self.grad_bytes_per_param,
            "system_shape_tiles": list(self.system_shape),
            "algorithms": list(self.algorithms), "seed": self.seed,
            "clock_hz": m.chip.node.clock_hz, "sram_per_node_bytes": m.chip.node.sram_bytes,
            "noc_link_bandwidth_bytes_per_s": m.chip.node.noc_link_bw,
            "chip_link_bandwidth_bytes_per_s": m.chip_link_bw,
            "tile_link_bandwidth_bytes_per_s": self.system_link_bandwidth,
            "tile_peak_flop_per_s": m.peak_flops,
            "machine": m.to_dict(), "system": self.system.to_dict(), "overlap": self.overlap,
            "tile_link_bandwidth_setting_bytes_per_s": self.tile_link_bandwidth,
            "check_elements": self.check_elements, "fault_study": self.fault_study,
            "failed_chips": list(self.failed_chips),
            "failed_links": [list(e) for e in self.failed_links],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReportConfig":
        """The configuration :meth:`to_dict` described: ``ReportConfig.from_dict(c.to_dict())
        == c``, through ``json.dumps``/``json.loads`` too. The derived keys are ignored; a
        key added after the JSON was written (``check_elements``, ``fault_study``, ...) takes
        its default. The deprecated ``tile_link_bandwidth``, when set, is restored without a
        DeprecationWarning."""
        def build(d: Mapping[str, Any]) -> "ReportConfig":
            import warnings

            kw: Dict[str, Any] = dict(
                d_model=int(d["d_model"]), seq=int(d["seq"]), batch=int(d["batch"]),
                mlp_ratio=int(d["mlp_ratio"]), formats=tuple(str(f) for f in d["formats"]),
                forward_format=str(d["forward_format"]),
                gradient_format=str(d["gradient_format"]),
                bias=None if d["bias"] is None else int(d["bias"]),
                bias_margin=int(d["bias_margin_binades"]), gemm_order=str(d["gemm_order"]),
                grad_scale=float(d["grad_scale"]),
                grad_bytes_per_param=int(d["grad_bytes_per_param"]),
                machine=machine_from_dict(dict(d["machine"]), TrainingTile),
                system_shape=tuple(int(x) for x in d["system_shape_tiles"]),
                overlap=bool(d.get("overlap", False)),
                algorithms=tuple(str(a) for a in d["algorithms"]), seed=int(d["seed"]),
                failed_chips=tuple(int(x) for x in d.get("failed_chips", ())),
                failed_links=tuple((int(u), int(v)) for u, v in d.get("failed_links", ())))
            if "check_elements" in d:
                kw["check_elements"] = int(d["check_elements"])
            if "fault_study" in d:
                kw["fault_study"] = bool(d["fault_study"])
            tlb = d.get("tile_link_bandwidth_setting_bytes_per_s")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return cls(**kw, tile_link_bandwidth=None if tlb is None else float(tlb))
        return check_dict("ReportConfig", d, build)


def _opt_float(v: Any) -> float:
    """``None`` (a figure that does not exist, written as JSON null) as NaN."""
    return float("nan") if v is None else float(v)


@dataclass(eq=False)
class FormatError:
    """One format's result of one GEMM against the FP32 reference.

    ``max_rel_error = max|y - ref| / max|ref|`` and ``rms_rel_error = ||y - ref|| / ||ref||``
    (norm-wise: element-wise ratios blow up where the reference is near zero).
    ``emulation_s`` is this CPU's wall time (seconds; rounding the operands included).
    ``a_format`` and ``b_format`` name the operand formats with their biases. ``histogram``
    counts the output elements per bin of ``HIST_EDGES`` of ``log10(|y - ref| / RMS(ref))``
    (exact results are left out; their number is ``exact``).

    ``to_dict()`` / ``from_dict()`` round-trip (``==`` is field by field, NaN equal to NaN).
    """

    max_rel_error: float
    rms_rel_error: float
    emulation_s: float
    a_format: str
    b_format: str
    histogram: List[int]
    exact: int

    def to_dict(self) -> Dict[str, Any]:
        """JSON types, the keys of a format entry of :meth:`Report.to_dict`'s GEMMs."""
        return {"a_format": self.a_format, "b_format": self.b_format,
                "max_rel_error": float(self.max_rel_error),
                "rms_rel_error": float(self.rms_rel_error),
                "cpu_emulation_s": float(self.emulation_s),
                "error_histogram_counts": [int(x) for x in self.histogram],
                "exact_elements": int(self.exact)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FormatError":
        """The result :meth:`to_dict` described (extra keys are ignored)."""
        return check_dict("FormatError", d, lambda d: cls(
            float(d["max_rel_error"]), float(d["rms_rel_error"]), float(d["cpu_emulation_s"]),
            str(d["a_format"]), str(d["b_format"]),
            [int(x) for x in d["error_histogram_counts"]], int(d["exact_elements"])))

    def __eq__(self, other: object) -> bool:
        return same(self, other) if type(other) is type(self) else NotImplemented


@dataclass(eq=False)
class GemmResult:
    """One GEMM of the step: its shape, the CPU emulation per format, the D1 plan per format.

    ``flops`` = 2 m n k (FLOP); ``reference_s``: the NumPy float32 matmul's wall time on this
    CPU (seconds); ``errors`` and ``plans`` by format key (``"bf16"``, ``"cfloat8"``).
    ``to_dict()`` / ``from_dict()`` round-trip (``==`` is field by field, NaN equal to NaN).
    """

    name: str
    phase: str                      # "forward" or "backward"
    m: int
    n: int
    k: int
    flops: float                    # 2 m n k
    reference_s: float              # NumPy float32 matmul wall time on this CPU
    errors: Dict[str, FormatError]  # by format key ("bf16", "cfloat8")
    plans: Dict[str, GemmPlan]      # by format key

    def to_dict(self, machine: Optional[Any] = None) -> Dict[str, Any]:
        """JSON types, an entry of :meth:`Report.to_dict`'s ``"gemms"``: per format, the
        error's keys (:meth:`FormatError.to_dict`), a summary of the plan (``d1_time_s``,
        ``d1_bound`` ...) and the whole plan, ``d1_plan`` (:meth:`GemmPlan.to_dict`).
        A plan on ``machine`` (the report's tile) is written without its ``machine`` key."""
        gd: Dict[str, Any] = {"name": self.name, "phase": self.phase, "m": int(self.m),
                              "n": int(self.n), "k": int(self.k), "flop": float(self.flops),
                              "fp32_reference_s": float(self.reference_s), "formats": {}}
        for key in dict.fromkeys([*self.errors, *self.plans]):
            fd: Dict[str, Any] = {}
            e = self.errors.get(key)
            if e is not None:
                fd.update(e.to_dict())
            p = self.plans.get(key)
            if p is not None:
                pd = p.to_dict()
                if machine is not None and p.machine == machine:
                    del pd["machine"]
                fd.update({
                    "d1_time_s": p.seconds, "d1_utilization_fraction": p.utilization,
                    "d1_bound": p.bound, "d1_node_grid": list(p.node_grid),
                    "d1_tile_mnk": list(p.tile), "d1_offchip_bytes": p.offchip_bytes,
                    "d1_k_split": p.k_split,
                    "d1_achieved_flop_per_s": p.flops / p.seconds if p.seconds > 0 else 0.0,
                    "d1_plan": pd})
            gd["formats"][key] = fd
        return gd

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], machine: Optional[Any] = None) -> "GemmResult":
        """The result :meth:`to_dict` described; a plan written without its machine gets
        ``machine``."""
        def build(d: Mapping[str, Any]) -> "GemmResult":
            errors: Dict[str, FormatError] = {}
            plans: Dict[str, GemmPlan] = {}
            for key, fd in dict(d["formats"]).items():
                if "max_rel_error" in fd:
                    errors[key] = FormatError.from_dict(fd)
                if "d1_plan" in fd:
                    pd = dict(fd["d1_plan"])
                    if "machine" not in pd:
                        if machine is None:
                            raise ValueError("machine: the plans were written without their "
                                             "machine; pass the report's machine")
                        pd["machine"] = machine.to_dict()
                    plans[key] = GemmPlan.from_dict(pd)
                elif "d1_time_s" in fd:
                    raise KeyError("d1_plan")
            return cls(str(d["name"]), str(d["phase"]), int(d["m"]), int(d["n"]), int(d["k"]),
                       float(d["flop"]), float(d["fp32_reference_s"]), errors, plans)
        return check_dict("GemmResult", d, build)

    def __eq__(self, other: object) -> bool:
        return same(self, other) if type(other) is type(self) else NotImplemented


@dataclass(eq=False)
class AllreduceResult:
    """One algorithm's all-reduce of the step's gradients on one mesh.

    ``mesh``: ``"tile"`` or ``"system"``; ``shape`` (rows, cols) of that mesh; ``nbytes``
    bytes per node; ``time_s``, ``lower_bound_s`` seconds; ``bus_bandwidth`` bytes/s;
    ``bytes_per_link`` the bytes every directed link carries (``Mesh2D.links()`` order).
    ``check_max_rel_error``: the real FP32 all-reduce of a small buffer against float64
    (None when not run). ``to_dict()`` / ``from_dict()`` round-trip (``==`` is field by
    field, arrays element by element).
    """

    mesh: str                       # "tile" or "system"
    shape: Tuple[int, int]
    algorithm: str
    nbytes: float                   # bytes per node
    time_s: float
    efficiency: float
    bus_bandwidth: float            # B/s
    lower_bound_s: float
    steps: int
    bytes_per_link_max: float
    bit_identical: bool
    check_max_rel_error: Optional[float]  # real all-reduce of a small FP32 buffer vs float64
    bytes_per_link: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> Dict[str, Any]:
        """JSON types, an entry of :meth:`Report.to_dict`'s ``"allreduce"``."""
        return {
            "mesh": self.mesh, "shape": [int(x) for x in self.shape],
            "algorithm": self.algorithm,
            "per_node_bytes": float(self.nbytes), "time_s": float(self.time_s),
            "efficiency_fraction": float(self.efficiency),
            "bus_bandwidth_bytes_per_s": float(self.bus_bandwidth),
            "lower_bound_s": float(self.lower_bound_s), "steps": int(self.steps),
            "busiest_link_bytes": float(self.bytes_per_link_max),
            "bit_identical": bool(self.bit_identical),
            "check_max_rel_error": (None if self.check_max_rel_error is None
                                    else float(self.check_max_rel_error)),
            "bytes_per_link_bytes": [float(x) for x in
                                     np.asarray(self.bytes_per_link, np.float64).ravel()]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AllreduceResult":
        """The result :meth:`to_dict` described (a dict without ``bytes_per_link_bytes``,
        written by an older version, gives an empty ``bytes_per_link``)."""
        def build(d: Mapping[str, Any]) -> "AllreduceResult":
            sh = [int(x) for x in d["shape"]]
            chk = d["check_max_rel_error"]
            return cls(str(d["mesh"]), (sh[0], sh[1]), str(d["algorithm"]),
                       float(d["per_node_bytes"]), float(d["time_s"]),
                       float(d["efficiency_fraction"]), float(d["bus_bandwidth_bytes_per_s"]),
                       float(d["lower_bound_s"]), int(d["steps"]),
                       float(d["busiest_link_bytes"]), bool(d["bit_identical"]),
                       None if chk is None else float(chk),
                       np.array(d.get("bytes_per_link_bytes", []), np.float64))
        return check_dict("AllreduceResult", d, build)

    def __eq__(self, other: object) -> bool:
        return same(self, other) if type(other) is type(self) else NotImplemented


@dataclass(eq=False)
class FaultResult:
    """One row of the fault study: the tile's gradient all-reduce with ``failed_chips`` and
    ``failed_links`` (chip ids of the tile's row-major chip mesh) by ``algorithm``. ``ran``:
    whether the algorithm runs on that damaged mesh; if not, ``reason`` says why and the
    figures are NaN. ``time_s`` seconds; ``efficiency`` = lower bound of the damaged mesh /
    time. ``to_dict()`` (NaN figures as null) / ``from_dict()`` round-trip (``==`` is field
    by field, NaN equal to NaN)."""

    scenario: str
    failed_chips: Tuple[int, ...]
    failed_links: Tuple[Tuple[int, int], ...]
    algorithm: str
    ran: bool
    time_s: float
    efficiency: float
    lower_bound_s: float
    reason: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON types, an entry of :meth:`Report.to_dict`'s ``"faults"`` (the figures are
        null when the algorithm did not run)."""
        def fig(v: float) -> Optional[float]:
            return float(v) if self.ran and not math.isnan(v) else None

        return {"scenario": self.scenario, "failed_chips": [int(x) for x in self.failed_chips],
                "failed_links": [[int(u), int(v)] for u, v in self.failed_links],
                "algorithm": self.algorithm, "ran": bool(self.ran),
                "time_s": fig(self.time_s), "efficiency_fraction": fig(self.efficiency),
                "lower_bound_s": fig(self.lower_bound_s), "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FaultResult":
        """The result :meth:`to_dict` described (null figures are NaN)."""
        return check_dict("FaultResult", d, lambda d: cls(
            str(d["scenario"]), tuple(int(x) for x in d["failed_chips"]),
            tuple((int(u), int(v)) for u, v in d["failed_links"]), str(d["algorithm"]),
            bool(d["ran"]), _opt_float(d["time_s"]), _opt_float(d["efficiency_fraction"]),
            _opt_float(d["lower_bound_s"]),
            None if d.get("reason") is None else str(d["reason"])))

    def __eq__(self, other: object) -> bool:
        return same(self, other) if type(other) is type(self) else NotImplemented


def fault_scenarios(cfg: "ReportConfig") -> List[Tuple[str, Tuple[int, ...],
                                                          Tuple[Tuple[int, int], ...]]]:
    """The fault study's scenarios on the tile's ``a x b`` chip mesh: no failure; the centre
    chip ``c = (a//2)*b + b//2`` failed; ``c`` and the chip diagonally above-left of it
    failed; the link from ``c`` to its east neighbour failed; and, when ``failed_chips`` or
    ``failed_links`` are set, that case ("given"). Scenarios that do not fit the tile's
    shape (a dimension below 2) are left out."""
    a, b = cfg.machine.chips
    out: List[Tuple[str, Tuple[int, ...], Tuple[Tuple[int, int], ...]]] = [("healthy", (), ())]
    c = (a // 2) * b + b // 2
    if a >= 2 and b >= 2:
        out.append(("1 chip", (c,), ()))
        out.append(("2 chips", (c - b - 1, c), ()))
    if b >= 2 and b // 2 + 1 < b:
        out.append(("1 link", (), ((c, c + 1),)))
    if cfg.failed_chips or cfg.failed_links:
        out.append(("given", tuple(int(x) for x in cfg.failed_chips),
                    tuple((int(u), int(v)) for u, v in cfg.failed_links)))
    return out


def _fault_study(cfg: "ReportConfig", nbytes: float, tick: Callable[[str], None]
                 ) -> List[FaultResult]:
    out: List[FaultResult] = []
    tile = mesh.training_tile(cfg.machine)
    nan = float("nan")
    for name, chips, links in fault_scenarios(cfg):
        topo = tile.with_failures(nodes=chips, links=links) if (chips or links) else tile
        for alg in cfg.algorithms:
            try:
                r = estimate_allreduce(nbytes, topo, algorithm=alg)
            except ValueError as exc:
                out.append(FaultResult(name, chips, links, alg, False, nan, nan, nan, str(exc)))
                continue
            out.append(FaultResult(name, chips, links, alg, True, r.time, r.efficiency,
                                   r.lower_bound))
        tick(f"fault study: {name}")
    return out


@dataclass(eq=False)
class Report:
    """Everything :func:`run_report` found. See :meth:`to_dict` for the units.

    Results as data: a report pickles, :meth:`to_dict` gives a JSON-serializable dict with
    the units in its keys (what ``dojo-kernels report --json`` writes) and :meth:`from_dict`
    rebuilds an equal report from it. ``==`` compares every field (NaN equal to NaN)."""

    config: ReportConfig
    gemms: List[GemmResult]
    allreduce: List[AllreduceResult]
    cpu_emulation_s: Dict[str, float]     # per format key and "fp32": the step's GEMMs
    wall_s: float                         # the whole report on this CPU
    threads: int
    isa: str
    faults: List[FaultResult] = field(default_factory=list)   # the fault study

    # --- totals -------------------------------------------------------------------------
    @property
    def flops(self) -> float:
        """FLOP of the step's GEMMs."""
        return float(sum(g.flops for g in self.gemms))

    def compute_s(self, fmt: str) -> float:
        """Sum of the D1 plan times of the step's GEMMs in format ``fmt`` (one after another)."""
        return float(sum(g.plans[fmt].seconds for g in self.gemms))

    def best_allreduce(self, where: str) -> AllreduceResult:
        """The fastest costed algorithm on ``where`` (``"tile"`` or ``"system"``)."""
        return min((a for a in self.allreduce if a.mesh == where), key=lambda a: a.time_s)

    def step_s(self, fmt: str) -> float:
        """The step on one tile: GEMMs one after another, then the tile all-reduce (no
        overlap: the all-reduce starts when the last dW is done)."""
        return self.compute_s(fmt) + self.best_allreduce("tile").time_s

    def hierarchical_allreduce(self) -> HierarchicalReport:
        """The system's gradient all-reduce: hierarchical (``estimate_hierarchical`` on the
        system: across the tile's chips with the fastest costed ring-family algorithm, then
        across the tiles with the fastest costed algorithm)."""
        return self._hier(float(self.config.params * self.config.grad_bytes_per_param))

    def _hier(self, nbytes: float) -> HierarchicalReport:
        c = self.config
        inner = [a for a in self.allreduce if a.mesh == "tile" and a.algorithm in INNER_ALGORITHMS]
        inner_alg = (min(inner, key=lambda a: a.time_s).algorithm if inner
                     else "bidirectional_ring")
        return estimate_hierarchical(nbytes, mesh.as_levels(c.system),
                                     algorithms=(inner_alg, self.best_allreduce("system").algorithm))

    def system_step_s(self, fmt: str, overlap: Optional[bool] = None) -> float:
        """The step on the system of tiles, data parallel (each tile runs the block on its
        own batch): the tile's GEMMs and the hierarchical gradient all-reduce
        (:meth:`hierarchical_allreduce`). ``overlap`` (default ``config.overlap``): each
        weight's gradient all-reduce starts when its dW GEMM is done and the previous
        all-reduce has finished, concurrently with the remaining backward GEMMs (links and
        compute are separate resources; contention on the tile edges is not modelled);
        the step ends when both are done; per-weight all-reduces pay their latencies four
        times, so the overlapped step is the faster of that and the serial one (one fused
        all-reduce at the end), as a framework's gradient buckets choose. Without overlap:
        GEMMs, then the all-reduce."""
        c = self.config
        serial = self.compute_s(fmt) + self.hierarchical_allreduce().time
        if not (c.overlap if overlap is None else overlap):
            return serial
        t = 0.0
        ar_end = 0.0
        d, h = c.d_model, c.hidden
        weights = {"qkv.dW": 3 * d * d, "attn_out.dW": d * d, "mlp_up.dW": d * h,
                   "mlp_down.dW": h * d}
        for g in self.gemms:
            t += g.plans[fmt].seconds
            if g.name in weights:
                ar = self._hier(float(weights[g.name] * c.grad_bytes_per_param)).time
                ar_end = max(ar_end, t) + ar
        return min(serial, max(t, ar_end))

    @property
    def peak_flops(self) -> float:
        """The tile's BF16/CFloat8 peak, FLOP/s."""
        return self.config.machine.peak_flops

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict; every figure's key names its unit (``_s`` seconds, ``_bytes``,
        ``_bytes_per_s``, ``_flop``, ``_flop_per_s``, ``_fraction`` for ratios in 0..1,
        ``_rel_error`` for relative errors).

        Lossless: :meth:`from_dict` rebuilds an equal report (``Report.from_dict(r.to_dict())
        == r``, also through ``json.dumps``/``json.loads``): ``"config"`` is
        :meth:`ReportConfig.to_dict`, every GEMM's format entry holds its whole plan
        (``d1_plan``, :meth:`GemmPlan.to_dict` without the machine, which is the config's),
        every all-reduce its ``bytes_per_link_bytes``. ``"totals"`` and
        ``error_histogram_log10_edges`` are derived (recomputed, not read back)."""
        c = self.config
        out: Dict[str, Any] = {
            "kind": "Report",
            "config": c.to_dict(),
            "cpu": {"threads": self.threads, "isa": self.isa, "wall_s": self.wall_s,
                    "gemm_emulation": {f"{k}_s": v for k, v in self.cpu_emulation_s.items()}},
            "gemms": [g.to_dict(machine=c.machine) for g in self.gemms],
            "allreduce": [a.to_dict() for a in self.allreduce],
            "totals": {"step_flop": self.flops},
        }
        out["error_histogram_log10_edges"] = HIST_EDGES.tolist()
        t = out["totals"]
        t["tile_peak_flop_per_s"] = self.peak_flops
        t["tile_allreduce_best"] = self.best_allreduce("tile").algorithm
        t["tile_allreduce_s"] = self.best_allreduce("tile").time_s
        t["system_allreduce_best"] = self.best_allreduce("system").algorithm
        t["system_allreduce_s"] = self.best_allreduce("system").time_s
        h = self.hierarchical_allreduce()
        t["system_hierarchical_allreduce_s"] = h.time
        t["system_hierarchical_algorithms"] = list(h.algorithms)
        for key in self.config.formats:
            t[key] = {"d1_compute_s": self.compute_s(key), "d1_step_s": self.step_s(key),
                      "d1_step_peak_fraction": self.flops / (self.step_s(key) * self.peak_flops),
                      "d1_system_step_s": self.system_step_s(key),
                      "d1_system_step_overlapped_s": self.system_step_s(key, overlap=True),
                      "d1_system_step_serial_s": self.system_step_s(key, overlap=False),
                      "cpu_emulation_s": self.cpu_emulation_s[key]}
        t["fp32_reference_cpu_s"] = self.cpu_emulation_s["fp32"]
        out["faults"] = [f.to_dict() for f in self.faults]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Report":
        """The report :meth:`to_dict` described: ``Report.from_dict(r.to_dict()) == r``,
        through ``json.dumps``/``json.loads`` too (so ``dojo-kernels report --json`` output
        loads back: ``Report.from_dict(json.load(f))``). The derived sections (``totals``
        ...) are not read: the methods recompute them. A dict without ``"kind"`` is
        accepted; a missing key is a ValueError naming it."""
        def build(d: Mapping[str, Any]) -> "Report":
            cfg = ReportConfig.from_dict(d["config"])
            cpu = d["cpu"]
            emu = {str(k)[:-2] if str(k).endswith("_s") else str(k): float(v)
                   for k, v in dict(cpu["gemm_emulation"]).items()}
            return cls(cfg, [GemmResult.from_dict(g, machine=cfg.machine) for g in d["gemms"]],
                       [AllreduceResult.from_dict(a) for a in d["allreduce"]], emu,
                       float(cpu["wall_s"]), int(cpu["threads"]), str(cpu["isa"]),
                       [FaultResult.from_dict(f) for f in d.get("faults", [])])
        return check_dict("Report", d, build)

    def __eq__(self, other: object) -> bool:
        """Field by field (the config, every GEMM's errors and plans, every all-reduce, the
        CPU figures, the fault study); NaN equals NaN, arrays compare element by element."""
        return same(self, other) if type(other) is type(self) else NotImplemented


# --- progress ---------------------------------------------------------------------------
class Progress:
    """A textual progress bar on ``stream`` (stderr), redrawn in place.

    Silent unless ``enabled`` and the stream is a terminal. ``advance(label)`` counts one
    unit of work; ``close()`` clears the line.
    """

    def __init__(self, total: int, *, enabled: bool = True,
                 stream: Optional[TextIO] = None, width: int = 30) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and isatty is not None and isatty())
        self.width = width
        self.t0 = time.perf_counter()

    def advance(self, label: str = "") -> None:
        """Count one unit of work done and redraw."""
        self.done = min(self.total, self.done + 1)
        self.show(label)

    def show(self, label: str = "") -> None:
        """Redraw the bar (without counting work), e.g. before a long first unit."""
        if not self.enabled:
            return
        frac = self.done / self.total
        fill = int(round(frac * self.width))
        bar = "#" * fill + "-" * (self.width - fill)
        el = time.perf_counter() - self.t0
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {el:5.1f}s {label[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        """Clear the bar's line."""
        if self.enabled:
            self.stream.write("\r" + " " * (self.width + 60) + "\r")
            self.stream.flush()


# --- the step ---------------------------------------------------------------------------
def _gelu(u: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * u * (1.0 + np.tanh(0.7978845608 * (u + 0.044715 * u ** 3))))


def _gelu_grad(u: np.ndarray) -> np.ndarray:
    t = np.tanh(0.7978845608 * (u + 0.044715 * u ** 3))
    return np.asarray(0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * 0.7978845608 * (1.0 + 3 * 0.044715 * u * u))


def _operands(cfg: ReportConfig) -> List[Tuple[str, str, np.ndarray, np.ndarray, str, str]]:
    """The 12 GEMMs as (name, phase, A, B, a_role, b_role); roles "act"/"weight"/"grad"."""
    rng = np.random.default_rng(cfg.seed)
    M, d, h = cfg.tokens, cfg.d_model, cfg.hidden
    f32 = np.float32

    def gauss(*shape: int, std: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=f32) * f32(std)).astype(f32)

    X = gauss(M, d)
    Wqkv, Wo = gauss(d, 3 * d, std=d ** -0.5), gauss(d, d, std=d ** -0.5)
    W1, W2 = gauss(d, h, std=d ** -0.5), gauss(h, d, std=h ** -0.5)
    QKV = X @ Wqkv
    ctx = np.ascontiguousarray(QKV[:, 2 * d:])
    X1 = X + ctx @ Wo
    U = X1 @ W1
    H = _gelu(U).astype(f32)
    dY = gauss(M, d, std=cfg.grad_scale)
    dH = dY @ W2.T
    dU = (dH * _gelu_grad(U)).astype(f32)
    dX1 = dU @ W1.T
    dctx = dX1 @ Wo.T
    rms = float(np.sqrt(np.mean(dctx.astype(np.float64) ** 2)))
    dQKV = np.concatenate([gauss(M, 2 * d, std=rms), dctx], axis=1)
    return [
        ("qkv", "forward", X, Wqkv, "act", "weight"),
        ("attn_out", "forward", ctx, Wo, "act", "weight"),
        ("mlp_up", "forward", X1, W1, "act", "weight"),
        ("mlp_down", "forward", H, W2, "act", "weight"),
        ("mlp_down.dX", "backward", dY, W2.T, "grad", "weight"),
        ("mlp_down.dW", "backward", H.T, dY, "act", "grad"),
        ("mlp_up.dX", "backward", dU, W1.T, "grad", "weight"),
        ("mlp_up.dW", "backward", X1.T, dU, "act", "grad"),
        ("attn_out.dX", "backward", dX1, Wo.T, "grad", "weight"),
        ("attn_out.dW", "backward", ctx.T, dX1, "act", "grad"),
        ("qkv.dX", "backward", dQKV, Wqkv.T, "grad", "weight"),
        ("qkv.dW", "backward", X.T, dQKV, "act", "grad"),
    ]


def _format_for(cfg: ReportConfig, key: str, role: str, x: np.ndarray) -> Format:
    if key == "bf16":
        return BF16
    family = cfg.gradient_format if role == "grad" else cfg.forward_format
    bias = cfg.bias if cfg.bias is not None else choose_bias(x, family, margin=cfg.bias_margin)
    return _CF8[family](bias)


def _error(y: np.ndarray, ref: np.ndarray) -> Tuple[float, float, List[int], int]:
    diff = np.abs(y.astype(np.float64) - ref)
    ref_rms = float(np.sqrt(np.mean(ref * ref)))
    ref_max = float(np.max(np.abs(ref)))
    max_rel = float(diff.max() / ref_max) if ref_max > 0 else float(diff.max())
    rms_rel = float(np.sqrt(np.mean(diff * diff)) / ref_rms) if ref_rms > 0 else 0.0
    nz = diff[diff > 0]
    exact = int(diff.size - nz.size)
    scale = ref_rms if ref_rms > 0 else 1.0
    hist, _ = np.histogram(np.clip(np.log10(nz / scale), HIST_EDGES[0], HIST_EDGES[-1]),
                           bins=HIST_EDGES)
    return max_rel, rms_rel, hist.astype(int).tolist(), exact


def _tile_mesh(cfg: ReportConfig) -> mesh.Mesh2D:
    return mesh.training_tile(cfg.machine)


def _system_mesh(cfg: ReportConfig) -> mesh.Mesh2D:
    return mesh.as_topology(cfg.system)


def run_report(config: Optional[ReportConfig] = None, *,
               progress: Optional[Callable[[str], None]] = None,
               progress_total: Optional[Callable[[int], None]] = None) -> Report:
    """Emulate and cost one training step (see the module docstring); return a :class:`Report`.

    Parameters
    ----------
    config : what to run; ``ReportConfig()`` (the defaults of ``dojo-kernels report``).
    progress : called with a label after every unit of work (for a progress bar).
    progress_total : called once, first, with the number of units of work.
    """
    cfg = ReportConfig() if config is None else config
    t_start = time.perf_counter()
    ops = _operands(cfg)
    meshes = [("tile", _tile_mesh(cfg)), ("system", _system_mesh(cfg))]
    units = len(ops) * (1 + len(cfg.formats)) + len(meshes) * len(cfg.algorithms)
    if cfg.fault_study:
        units += len(fault_scenarios(cfg))
    if progress_total is not None:
        progress_total(units)
    tick = progress if progress is not None else (lambda label: None)

    gemms: List[GemmResult] = []
    emu: Dict[str, float] = {"fp32": 0.0, **{k: 0.0 for k in cfg.formats}}
    for name, phase, A, B, ra, rb in ops:
        t0 = time.perf_counter()
        ref32 = A @ B
        t_ref = time.perf_counter() - t0
        emu["fp32"] += t_ref
        tick(f"{name} fp32")
        ref = ref32.astype(np.float64)
        m, k = A.shape
        n = B.shape[1]
        errors: Dict[str, FormatError] = {}
        plans: Dict[str, GemmPlan] = {}
        for key in cfg.formats:
            t0 = time.perf_counter()
            fa, fb = _format_for(cfg, key, ra, A), _format_for(cfg, key, rb, B)
            y = gemm(A, B, a_format=fa, b_format=fb, order=cfg.gemm_order)
            dt = time.perf_counter() - t0
            emu[key] += dt
            assert isinstance(y, np.ndarray)
            mx, rms, hist, exact = _error(y, ref)
            errors[key] = FormatError(mx, rms, dt, repr(fa), repr(fb), hist, exact)
            plans[key] = plan_gemm(m, n, k, a_format=fa, b_format=fb, machine=cfg.machine)
            tick(f"{name} {key}")
        gemms.append(GemmResult(name, phase, m, n, k, 2.0 * m * n * k, t_ref, errors, plans))

    nbytes = float(cfg.params * cfg.grad_bytes_per_param)
    ars: List[AllreduceResult] = []
    rng = np.random.default_rng(cfg.seed + 1)
    for where, topo in meshes:
        bufs = (rng.standard_normal((topo.nodes, cfg.check_elements), dtype=np.float32)
                if cfg.check_elements > 0 else None)
        exact_sum = bufs.astype(np.float64).sum(axis=0) if bufs is not None else None
        for alg in cfg.algorithms:
            r = estimate_allreduce(nbytes, topo, algorithm=alg)
            check = None
            if bufs is not None and exact_sum is not None:
                res, _ = allreduce(bufs, topo, algorithm=alg)
                err = np.abs(np.asarray(res, np.float64) - exact_sum[None, :])
                check = float(err.max() / np.abs(exact_sum).max())
            ars.append(AllreduceResult(
                where, topo.shape, alg, nbytes, r.time, r.efficiency, r.bus_bandwidth,
                r.lower_bound, r.steps, r.bytes_per_link_max, r.bit_identical, check,
                np.array(r.bytes_per_link)))
            tick(f"all-reduce {where} {alg}")
    faults = _fault_study(cfg, nbytes, tick) if cfg.fault_study else []
    return Report(cfg, gemms, ars, emu, time.perf_counter() - t_start,
                  _config.threads(), _config.get_isa(), faults)


# --- rendering --------------------------------------------------------------------------
def _si(v: float, unit: str, digits: int = 3) -> str:
    """``v`` with an SI prefix: _si(1.5e-6, 's') = '1.50 us'."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g} {unit}"
    prefixes = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
                (1e-3, "m"), (1e-6, "u"), (1e-9, "n")]
    for scale, p in prefixes:
        if abs(v) >= scale:
            break
    return f"{v / scale:.{digits}g} {p}{unit}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           align: Optional[str] = None) -> List[str]:
    """Aligned text table; ``align`` has one 'l' or 'r' per column (default: first left)."""
    al = align or ("l" + "r" * (len(headers) - 1))
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, al)).rstrip()

    return [fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]


def render_report(report: Report) -> str:
    """The report as aligned text tables (what ``dojo-kernels report`` prints)."""
    c = report.config
    m = c.machine
    L: List[str] = []
    L.append(f"dojo_kernels report: one training step of a transformer block on a {m.name}")
    L.append(f"  block: d_model {c.d_model}, seq {c.seq}, batch {c.batch}, MLP {c.mlp_ratio}x "
             f"({c.hidden}); {c.params / 1e6:.2f} M weights; 12 GEMMs, "
             f"{report.flops / 1e9:.1f} GFLOP")
    L.append(f"  tile: {m.chips[0]}x{m.chips[1]} D1, {m.chip.active_nodes} nodes each at "
             f"{m.chip.node.clock_hz / 1e9:g} GHz, {m.chip.node.sram_bytes / 2**20:g} MiB SRAM/node, "
             f"peak {_si(m.peak_flops, 'FLOP/s')}")
    names = {"bf16": "BF16", "cfloat8": f"CFloat8 ({c.forward_format[-3:]} fwd, "
                                       f"{c.gradient_format[-3:]} grad)"}
    L.append(f"  CPU: {report.threads} thread(s), ISA tier {report.isa}; formats: FP32 reference "
             f"(NumPy float32 matmul), " + ", ".join(names[f] for f in c.formats))
    L.append("")

    L.append("GEMM error against FP32 (norm-wise relative: max|y-ref|/max|ref|, "
             "||y-ref||/||ref||)")
    hdr = ["GEMM", "m x n x k", "GFLOP"]
    for f in c.formats:
        hdr += [f"{f} max", f"{f} rms"]
    rows = []
    for g in report.gemms:
        row = [g.name, f"{g.m}x{g.n}x{g.k}", f"{g.flops / 1e9:.2f}"]
        for f in c.formats:
            e = g.errors[f]
            row += [f"{e.max_rel_error:.2e}", f"{e.rms_rel_error:.2e}"]
        rows.append(row)
    L += _table(hdr, rows)
    if "cfloat8" in c.formats:
        g0 = report.gemms[0].errors["cfloat8"]
        L.append(f"  CFloat8 operand formats, e.g. {report.gemms[0].name}: A {g0.a_format}, "
                 f"B {g0.b_format} (biases from choose_bias, margin {c.bias_margin})"
                 if c.bias is None else f"  CFloat8 bias fixed at {c.bias}")
    L.append("")

    L.append(f"D1 plan of each GEMM on the tile (plan_gemm, machine={type(m).__name__}; "
             f"ks = k split across node rows)")
    hdr = ["GEMM"]
    for f in c.formats:
        hdr += [f"{f} time", "util", "bound"]
    hdr += [f"{c.formats[0]} node grid", "ks"]
    rows = []
    for g in report.gemms:
        row = [g.name]
        for f in c.formats:
            p = g.plans[f]
            row += [_si(p.seconds, "s"), f"{p.utilization:.1%}", p.bound]
        p0 = g.plans[c.formats[0]]
        row += [f"{p0.node_grid[0]}x{p0.node_grid[1]}", str(p0.k_split)]  # of the first format
        rows.append(row)
    L += _table(hdr, rows)
    L.append("")

    L.append(f"Gradient all-reduce: {c.params / 1e6:.2f} M gradients x {c.grad_bytes_per_param} B "
             f"= {_si(c.params * c.grad_bytes_per_param, 'B')} per chip/tile "
             f"(estimate_allreduce; check: a real FP32 all-reduce of "
             f"{c.check_elements} elements vs float64)")
    for where, title in (("tile", f"across the tile's {m.n_chips} chips "
                                  f"({m.chips[0]}x{m.chips[1]} mesh, "
                                  f"{_si(m.chip_link_bw, 'B/s')} per link)"),
                         ("system", f"across {c.system_shape[0]}x{c.system_shape[1]} tiles "
                                    f"({_si(c.system_link_bandwidth, 'B/s')} per link)")):
        L.append("  " + title)
        rows = []
        best = report.best_allreduce(where).algorithm
        for a in report.allreduce:
            if a.mesh != where:
                continue
            rows.append([a.algorithm + (" *" if a.algorithm == best else ""), _si(a.time_s, "s"),
                         f"{a.efficiency:.1%}", _si(a.bus_bandwidth, "B/s"), str(a.steps),
                         _si(a.bytes_per_link_max, "B"), "yes" if a.bit_identical else "no",
                         "-" if a.check_max_rel_error is None else f"{a.check_max_rel_error:.1e}"])
        L += ["  " + s for s in _table(["algorithm", "time", "efficiency", "bus bw", "steps",
                                        "busiest link", "same bits", "check err"], rows)]
    L.append("  * fastest. efficiency = SPEC section 7 lower bound / time; bus bw = "
             "2(P-1)/P x bytes / time; check err = max|error| / max|sum| of the real FP32 "
             "all-reduce against float64")
    L.append("")

    if report.faults:
        L.append(f"Fault study: the tile's gradient all-reduce with failed chips / links "
                 f"(chip ids row-major on the {m.chips[0]}x{m.chips[1]} mesh; "
                 f"estimate_allreduce on Mesh2D.with_failures)")
        healthy = {fr.algorithm: fr.time_s for fr in report.faults if fr.scenario == "healthy"}
        rows = []
        for fr in report.faults:
            what = ", ".join([f"chip {x}" for x in fr.failed_chips]
                             + [f"link {u}-{v}" for u, v in fr.failed_links]) or "-"
            if fr.ran:
                h = healthy.get(fr.algorithm, float("nan"))
                rows.append([fr.scenario, what, fr.algorithm, _si(fr.time_s, "s"),
                             f"{fr.efficiency:.1%}",
                             f"{fr.time_s / h:.2f}x" if h == h and h > 0 else "-", "ran"])
            else:
                why = (fr.reason or "").replace("algorithm: ", "")
                rows.append([fr.scenario, what, fr.algorithm, "-", "-", "-",
                             "no: " + (why[:60] + "..." if len(why) > 63 else why)])
        L += ["  " + s for s in _table(["case", "failed", "algorithm", "time", "efficiency",
                                        "vs healthy", "ran"], rows)]
        L.append("  efficiency = lower bound of the damaged mesh (its diameter, least degree, "
                 "surviving links) / time; docs/allreduce.md, 'Failed nodes and links'")
        L.append("")

    L.append("The step (GEMMs one after another, then the fastest all-reduce: no overlap; the "
             "system: data parallel, hierarchical all-reduce)")
    rows = []
    tile_ar = report.best_allreduce("tile")
    sys_ar = report.best_allreduce("system")
    for f in c.formats:
        comp = report.compute_s(f)
        step = report.step_s(f)
        rows.append([names[f].split(" (")[0], _si(comp, "s"), _si(tile_ar.time_s, "s"),
                     _si(step, "s"), f"{report.flops / (step * report.peak_flops):.1%}",
                     _si(report.flops / step, "FLOP/s"), _si(report.system_step_s(f), "s"),
                     f"{report.cpu_emulation_s[f]:.2f} s",
                     f"{report.cpu_emulation_s[f] / step:.3g}x"])
    L += _table(["format", "GEMMs", "all-reduce", "tile step", "of peak", "achieved",
                 f"{c.system_shape[0]}x{c.system_shape[1]} tiles"
                 + (" (overlap)" if c.overlap else ""), "CPU emulation",
                 "CPU/D1 time"], rows)
    hier = report.hierarchical_allreduce()
    L.append(f"  tile all-reduce: {tile_ar.algorithm}; system: hierarchical "
             f"{' then '.join(hier.algorithms)} ({_si(hier.time, 's')}; estimate_hierarchical"
             f"); FP32 reference on this CPU: "
             f"{report.cpu_emulation_s['fp32']:.2f} s; whole report {report.wall_s:.1f} s")
    over = ", ".join(
        f"{names[f].split(' (')[0]} {_si(max(report.compute_s(f), tile_ar.time_s), 's')} "
        f"({report.flops / (max(report.compute_s(f), tile_ar.time_s) * report.peak_flops):.1%}"
        f" of peak)" for f in c.formats)
    L.append(f"  With the all-reduce fully overlapped with the GEMMs (step = the longer of the "
             f"two): {over}.")
    sysov = ", ".join(f"{names[f].split(' (')[0]} {_si(report.system_step_s(f, overlap=True), 's')}"
                      for f in c.formats)
    L.append(f"  System step with each gradient all-reduce overlapped with the later backward "
             f"GEMMs (--overlap): {sysov}.")
    return "\n".join(L)


# --- plots ------------------------------------------------------------------------------
def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend, for :func:`plot_report`;
    ImportError naming the ``[plot]`` extra when matplotlib is missing (the CLI checks this
    before the work)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'dojo_kernels[plot]' "
                          "(or pip install matplotlib)") from None
    return plt


_pyplot = pyplot   # the old private name


def _draw_links(ax: Any, topo: mesh.Mesh2D, values: np.ndarray, vmax: float, cmap: Any) -> Any:
    grid = topo.link_grid(values) / 1e6  # MB
    off = 0.12
    import matplotlib.colors as mcolors
    norm = mcolors.Normalize(vmin=0, vmax=max(vmax / 1e6, 1e-12))
    # (dx, dy, perpendicular offset) per direction E, W, S, N; row 0 drawn at the top
    dirs = {mesh.EAST: (1, 0, (0, off)), mesh.WEST: (-1, 0, (0, -off)),
            mesh.SOUTH: (0, -1, (off, 0)), mesh.NORTH: (0, 1, (-off, 0))}
    for r in range(topo.rows):
        for cc in range(topo.cols):
            for dr, (dx, dy, (ox, oy)) in dirs.items():
                v = grid[r, cc, dr]
                if not np.isfinite(v):
                    continue
                x0, y0 = cc + ox, -r + oy
                ax.annotate("", xy=(x0 + 0.78 * dx, y0 + 0.78 * dy),
                            xytext=(x0 + 0.22 * dx, y0 + 0.22 * dy),
                            arrowprops=dict(arrowstyle="-|>", lw=2.2,
                                            color=cmap(norm(v)) if v > 0 else "0.85"))
    ax.scatter([cc for r in range(topo.rows) for cc in range(topo.cols)],
               [-r for r in range(topo.rows) for cc in range(topo.cols)], s=60, c="k", zorder=3)
    ax.set_xlim(-0.6, topo.cols - 0.4)
    ax.set_ylim(-topo.rows + 0.4, 0.6)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return norm


def plot_report(report: Report, directory: str) -> List[str]:
    """Write the report's PNGs into ``directory`` (created); return their paths.

    ``allreduce_links_tile.png`` / ``allreduce_links_system.png``: the bytes every directed
    link carries, per algorithm, drawn on the mesh; ``gemm_roofline.png``: each GEMM plan's
    achieved FLOP/s against its off-chip arithmetic intensity under the tile's roofs;
    ``error_histograms.png``: the distribution of the element errors of each format.
    Raises ImportError with the install command when matplotlib is missing.
    """
    plt = _pyplot()
    os.makedirs(directory, exist_ok=True)
    paths: List[str] = []
    c = report.config
    cmap = plt.get_cmap("viridis")

    for where, topo in (("tile", _tile_mesh(c)), ("system", _system_mesh(c))):
        ars = [a for a in report.allreduce if a.mesh == where]
        ncol = min(4, len(ars))
        nrow = math.ceil(len(ars) / ncol)
        cell = 3.4
        fig, axes = plt.subplots(nrow, ncol, squeeze=False, layout="constrained",
                                 figsize=(cell * ncol + 1.2,
                                          cell * nrow * min(1.0, topo.rows / topo.cols) + 1.0))
        vmax = max(float(a.bytes_per_link.max()) if a.bytes_per_link.size else 0.0 for a in ars)
        norm = None
        for ax, a in zip(axes.flat, ars):
            norm = _draw_links(ax, topo, a.bytes_per_link, vmax, cmap)
            ax.set_title(f"{a.algorithm}\n{_si(a.time_s, 's')}, eff. {a.efficiency:.0%}",
                         fontsize=10)
        for ax in list(axes.flat)[len(ars):]:
            ax.axis("off")
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.8, label="MB carried per directed link")
        what = (f"{topo.rows}x{topo.cols} D1 chips of a training tile" if where == "tile"
                else f"{topo.rows}x{topo.cols} training tiles")
        fig.suptitle(f"Gradient all-reduce ({_si(ars[0].nbytes, 'B')} per node) on {what}")
        path = os.path.join(directory, f"allreduce_links_{where}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    # roofline
    m = c.machine
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ais = [g.plans[f].flops / g.plans[f].offchip_bytes for g in report.gemms for f in c.formats]
    feed = float(sum(feed_bandwidths(m)))   # the feeds plan_gemm gives the whole tile
    knee = m.peak_flops / feed
    ai = np.logspace(math.log10(min(min(ais), knee) / 3), math.log10(max(max(ais), knee) * 10),
                     200)
    ax.loglog(ai, np.minimum(m.peak_flops, ai * feed), "k-",
              label=f"tile roof: {_si(m.peak_flops, 'FLOP/s')}, A+B feeds and C drain "
                    f"{_si(feed, 'B/s')} (plan_gemm's)")
    markers = {"compute": "o", "sram": "s", "noc": "^", "offchip": "D"}
    colors = {"bf16": "tab:blue", "cfloat8": "tab:orange"}
    seen = set()
    for g in report.gemms:
        for f in c.formats:
            p = g.plans[f]
            x = p.flops / p.offchip_bytes
            y = p.flops / p.seconds
            lab = f"{f}, {p.bound}-bound"
            ax.loglog(x, y, markers[p.bound], color=colors[f], ms=8,
                      label=None if lab in seen else lab, alpha=0.85)
            seen.add(lab)
            if f == c.formats[0] and g.phase == "forward":
                ax.annotate(g.name, (x, y), textcoords="offset points", xytext=(5, -10),
                            fontsize=7)
    ax.set_xlabel("arithmetic intensity, FLOP per off-tile byte")
    ax.set_ylabel("achieved FLOP/s (plan_gemm)")
    ax.set_title("Roofline of the step's GEMM plans on a D1 training tile "
                 "(forward GEMMs labelled)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    path = os.path.join(directory, "gemm_roofline.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    # error histograms
    fig, ax = plt.subplots(figsize=(8, 5))
    centers = 0.5 * (HIST_EDGES[1:] + HIST_EDGES[:-1])
    for f in c.formats:
        for phase, ls in (("forward", "-"), ("backward", "--")):
            h = np.sum([g.errors[f].histogram for g in report.gemms if g.phase == phase], axis=0)
            tot = h.sum()
            if tot:
                ax.plot(centers, h / tot, ls, color=colors[f], label=f"{f} {phase}")
    ax.set_xlabel("log10(|y - FP32 reference| / RMS(reference)) per output element")
    ax.set_ylabel("fraction of elements")
    ax.set_title("Error of the step's GEMMs against FP32")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path = os.path.join(directory, "error_histograms.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def write_json(report: Report, path: str) -> None:
    """Write :meth:`Report.to_dict` to ``path`` (``-`` for stdout)."""
    text = json.dumps(report.to_dict(), indent=2)
    if path == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(path, "w") as fh:
            fh.write(text + "\n")


def machine_with(*, clock_hz: Optional[float] = None, sram_bytes: Optional[int] = None,
                 noc_link_bw: Optional[float] = None, chip_link_bw: Optional[float] = None,
                 base: Optional[TrainingTile] = None,
                 offtile_bw_per_edge: Optional[float] = None) -> TrainingTile:
    """A :class:`TrainingTile` with some figures replaced (None keeps the default), in SI
    units: ``clock_hz`` Hz, ``sram_bytes`` bytes, the bandwidths bytes/s. The node's
    per-cycle figures (SRAM, NoC) scale with a new clock unless given."""
    tile = TrainingTile() if base is None else base
    node = tile.chip.node
    nk: Dict[str, Any] = {}
    if clock_hz is not None:
        nk["clock_hz"] = clock_hz
    if sram_bytes is not None:
        nk["sram_bytes"] = sram_bytes
    if noc_link_bw is not None:
        nk["noc_link_bw"] = noc_link_bw
    chip = replace(tile.chip, node=replace(node, **nk)) if nk else tile.chip
    tk: Dict[str, Any] = {"chip": chip}
    if chip_link_bw is not None:
        tk["chip_link_bw"] = chip_link_bw
    if offtile_bw_per_edge is not None:
        tk["offtile_bw_per_edge"] = offtile_bw_per_edge
    return replace(tile, **tk)



def compare_machines(report: Report, other: TrainingTile) -> List[str]:
    """Lines of a side-by-side table: the report's step on its machine and on ``other``
    (e.g. a D1 tile against a :class:`~dojo_kernels.d1.D2Tile`): the same GEMMs (same
    operand formats) re-planned, the all-reduces re-costed; the CPU emulation and the
    errors do not depend on the machine."""
    c = report.config
    other_cfg = replace(c, machine=other)
    nbytes = float(c.params * c.grad_bytes_per_param)
    tile_o = mesh.as_topology(other)
    ar_tile = min((estimate_allreduce(nbytes, tile_o, algorithm=a) for a in c.algorithms),
                  key=lambda r: r.time)
    sys_topo = mesh.as_topology(other_cfg.system)
    ar_sys = min((estimate_allreduce(nbytes, sys_topo, algorithm=a) for a in c.algorithms),
                 key=lambda r: r.time)
    inner = [a for a in c.algorithms if a in INNER_ALGORITHMS] or ["bidirectional_ring"]
    inner_alg = min(inner, key=lambda a: estimate_allreduce(nbytes, tile_o, algorithm=a).time)
    hier = estimate_hierarchical(nbytes, mesh.as_levels(other_cfg.system), algorithms=(inner_alg, ar_sys.algorithm))
    me = report.config.machine
    rows = []
    for f in c.formats:
        comp_o = sum(plan_gemm(g.m, g.n, g.k, a_format=g.plans[f].a_format,
                               b_format=g.plans[f].b_format, machine=other).seconds
                     for g in report.gemms)
        comp = report.compute_s(f)
        step, step_o = report.step_s(f), comp_o + ar_tile.time
        sys_s = report.system_step_s(f, overlap=False)
        sys_o = comp_o + hier.time
        rows.append([f, _si(comp, "s"), _si(comp_o, "s"),
                     _si(report.best_allreduce("tile").time_s, "s"), _si(ar_tile.time, "s"),
                     _si(step, "s"), _si(step_o, "s"), f"{step / step_o:.2f}x",
                     _si(sys_s, "s"), _si(sys_o, "s")])
    a, b = me.name, other.name
    L = [f"Side by side: {a} (A) and {b} (B), same step, same formats",
         f"  chip-to-chip links: A {_si(me.chip_link_bw, 'B/s')}, {_si(me.chip_link_latency, 's')}; "
         f"B {_si(other.chip_link_bw, 'B/s')}, {_si(other.chip_link_latency, 's')}"]
    L += ["  " + r for r in _table(["format", "GEMMs A", "GEMMs B", "tile AR A", "tile AR B",
                                    "tile step A", "tile step B", "A/B",
                                    f"{c.system_shape[0]}x{c.system_shape[1]} A",
                                    f"{c.system_shape[0]}x{c.system_shape[1]} B"], rows)]
    L.append("  AR = the fastest costed gradient all-reduce; system steps without overlap. "
             "Every D2 figure is an assumption (docs/machine.md).")
    return L


#: ``--machine`` choices of ``dojo-kernels report``.
MACHINES: Dict[str, Callable[[], TrainingTile]] = {"d1": TrainingTile, "d2": D2Tile}
