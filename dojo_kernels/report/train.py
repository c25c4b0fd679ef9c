"""``dojo-kernels train``: a small real model trained in D1 numerics, side by side with FP32.

An MLP on scikit-learn's digits (1,797 8x8 images of handwritten digits, shipped with
scikit-learn: no download) trained with plain SGD under several recipes, every recipe from
the same initial weights and the same batches:

* ``fp32``: plain torch in float32 (the reference);
* ``bf16``: every Linear a :class:`dojo_kernels.torch.D1Linear` with BF16 operands (FP32
  accumulation), FP32 weights;
* ``cfloat8``: CFloat8 1-4-3 forward and 1-5-2 gradient GEMMs, each tensor's bias from
  ``choose_bias`` (``Recipe()``), FP32 weights;
* ``cfloat8_sr``: ``cfloat8`` with the weights kept in BF16, every update rounded
  stochastically (:class:`dojo_kernels.torch.SROptimizer`);
* also available: ``cfloat8_rn`` (BF16 weights rounded to nearest: small updates are lost)
  and ``cfloat8_delayed`` (biases from a 16-step amax history).

Only the Linear layers' GEMMs are D1 numerics; activations, the loss and the optimizer's
arithmetic are FP32 torch. The D1 time of one training step is costed from
:func:`dojo_kernels.plan_gemm` (the step's GEMMs one after another on one D1 chip) and, for a
training tile, as data parallelism: each of the tile's 25 chips runs the same step on its own
batch, then the BF16 gradients are all-reduced across the tile's 5x5 chip mesh
(:func:`dojo_kernels.estimate_allreduce` on :func:`dojo_kernels.mesh.training_tile`, the
fastest algorithm), with no overlap. Elementwise work is not costed.

Needs ``pip install "dojo_kernels[train]"`` (torch, scikit-learn; matplotlib for ``--plot``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .._config import get_num_threads, set_num_threads
from ..collectives import estimate_allreduce
from ..machine import D1Chip, mesh
from ..numerics.formats import BF16, Format, cfloat8_143, cfloat8_152
from ..gemm import plan_gemm
from ..numerics.torch import RECIPES, Recipe, SROptimizer, convert
from ._data import check_dict, same, tensor_from_dict, tensor_to_dict

__all__ = ["TrainConfig", "TrainResult", "RowRNN", "RecipeRun", "StepCost", "run_training",
           "render_training", "plot_training", "write_json", "RECIPE_NAMES", "describe",
           "step_cost"]

#: Every recipe ``dojo-kernels train`` knows, in display order.
RECIPE_NAMES = ("fp32", "bf16", "cfloat8", "cfloat8_sr", "cfloat8_rn", "cfloat8_delayed")

_DESCRIBE = {
    "fp32": "torch FP32 (the reference)",
    "bf16": "D1 GEMMs on BF16 operands, FP32 weights",
    "cfloat8": "CFloat8 1-4-3 forward / 1-5-2 gradient GEMMs, bias per tensor, FP32 weights",
    "cfloat8_sr": "cfloat8 with BF16 weights, stochastic-rounding updates",
    "cfloat8_rn": "cfloat8 with BF16 weights, round-to-nearest updates",
    "cfloat8_delayed": "cfloat8 with biases from a 16-step amax history (delayed scaling)",
}


def describe(name: str) -> str:
    """One line on what a recipe name means."""
    return _DESCRIBE[name]


@dataclass(frozen=True)
class TrainConfig:
    """What :func:`run_training` trains; every field has the default of ``dojo-kernels train``.

    Parameters
    ----------
    epochs : passes over the training set (default 20).
    recipes : recipe names from :data:`RECIPE_NAMES`.
    seed : seeds the initial weights, the batch order and the stochastic rounding.
    batch : samples per step (default 32).
    lr : SGD learning rate (default 0.005).
    momentum : SGD momentum (default 0.9).
    hidden : hidden layer widths of the MLP (default (128, 64)); the RNN uses the first.
    model : ``"mlp"`` (default) or ``"rnn"``: a sequence model reading each image as 8 rows
        of 8 pixels, an Elman RNN ``h_t = tanh(W_x x_t + b + W_h h_{t-1})`` (two Linear
        layers, 8 steps) and a Linear classifier on the last ``h``.
    test_fraction : held-out share of the 1,797 digits (default 0.25, a fixed split).
    threads : kernel and torch intra-op threads during training (default 1: this model's
        GEMMs are tiny, and on a loaded machine a second thread costs more than it gives;
        results never depend on it). None leaves both settings alone.
    """

    epochs: int = 20
    recipes: Tuple[str, ...] = ("fp32", "bf16", "cfloat8", "cfloat8_sr")
    seed: int = 0
    batch: int = 32
    lr: float = 0.005
    momentum: float = 0.9
    hidden: Tuple[int, ...] = (128, 64)
    model: str = "mlp"
    test_fraction: float = 0.25
    threads: Optional[int] = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        if self.epochs < 1:
            raise ValueError(f"epochs: expected >= 1, got {self.epochs}")
        if self.batch < 1:
            raise ValueError(f"batch: expected >= 1, got {self.batch}")
        if not 0 <= self.seed < 1 << 63:
            raise ValueError(f"seed: expected 0 <= seed < 2**63, got {self.seed}")
        if not self.recipes:
            raise ValueError("recipes: expected at least one recipe")
        for r in self.recipes:
            if r not in RECIPE_NAMES:
                raise ValueError(f"recipes: unknown recipe {r!r}; expected some of "
                                 f"{', '.join(RECIPE_NAMES)}")
        if len(set(self.recipes)) != len(self.recipes):
            raise ValueError(f"recipes: a recipe is listed twice: {self.recipes}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum: expected 0 <= momentum < 1, got {self.momentum}")
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                  for h in self.hidden):
            raise ValueError(f"hidden: expected positive widths, got {self.hidden}")
        if self.threads is not None and (isinstance(self.threads, bool) or
                                         not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads: expected a positive int or None, got {self.threads!r}")
        if self.model not in ("mlp", "rnn"):
            raise ValueError(f"model: expected 'mlp' or 'rnn', got {self.model!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction: expected 0 < f < 1, got {self.test_fraction}")

    def to_dict(self) -> Dict[str, Any]:
        """Every field as JSON types (tuples as lists); the ``"config"`` of
        :meth:`TrainResult.to_dict`."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """The configuration :meth:`to_dict` described (a field missing in ``d`` takes its
        default; unknown keys are ignored)."""
        def build(d: Mapping[str, Any]) -> "TrainConfig":
            kw: Dict[str, Any] = {}
            for f in dataclasses.fields(cls):
                if f.name in d:
                    v = d[f.name]
                    kw[f.name] = tuple(v) if isinstance(v, list) else v
            return cls(**kw)
        return check_dict("TrainConfig", d, build)


@dataclass(frozen=True)
class StepCost:
    """The D1 time of one training step of one recipe (seconds)."""

    gemms: int                 # GEMMs in one step
    flops: float               # their FLOP
    chip_s: float              # one D1 chip, the GEMMs one after another
    tile_chips: int            # chips of the training tile
    allreduce_bytes: float     # BF16 gradients per chip
    allreduce_s: float         # across the tile's chips, fastest algorithm
    allreduce_algorithm: str
    tile_s: float              # chip_s + allreduce_s (data parallel: tile_chips x batch)

    def to_dict(self) -> Dict[str, Any]:
        """JSON types, units in the keys (the ``"d1_step"`` of a run in
        :meth:`TrainResult.to_dict`)."""
        return {"gemms": int(self.gemms), "flop": float(self.flops),
                "chip_s": float(self.chip_s), "tile_chips": int(self.tile_chips),
                "allreduce_bytes": float(self.allreduce_bytes),
                "allreduce_s": float(self.allreduce_s),
                "allreduce_algorithm": str(self.allreduce_algorithm),
                "tile_s": float(self.tile_s)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StepCost":
        """The cost :meth:`to_dict` described."""
        return check_dict("StepCost", d, lambda d: cls(
            int(d["gemms"]), float(d["flop"]), float(d["chip_s"]), int(d["tile_chips"]),
            float(d["allreduce_bytes"]), float(d["allreduce_s"]),
            str(d["allreduce_algorithm"]), float(d["tile_s"])))


@dataclass(eq=False)
class RecipeRun:
    """One recipe's training: per-epoch mean training loss and test accuracy, the initial
    loss, this CPU's wall time ``cpu_s`` (seconds), the D1 step cost (None for fp32) and the
    final ``weights`` (the model's ``state_dict``). ``==`` is field by field (NaN equal to
    NaN, weights bit for bit); ``to_dict()`` / ``from_dict()`` round-trip."""

    name: str
    loss: List[float] = field(default_factory=list)
    test_accuracy: List[float] = field(default_factory=list)
    initial_loss: float = math.nan
    cpu_s: float = 0.0
    cost: Optional[StepCost] = None
    weights: Dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self, weights: bool = True) -> Dict[str, Any]:
        """JSON types: a run of :meth:`TrainResult.to_dict`'s ``"runs"`` (without its name,
        which is the key there). ``weights``: include the weights (each tensor as
        ``{"dtype", "shape", "data_base64"}``, its bytes little-endian, bit exact)."""
        d: Dict[str, Any] = {"loss_per_epoch": [float(x) for x in self.loss],
                             "test_accuracy_per_epoch": [float(x) for x in self.test_accuracy],
                             "initial_loss": float(self.initial_loss),
                             "cpu_s": float(self.cpu_s), "description": describe(self.name)}
        if self.cost is not None:
            d["d1_step"] = self.cost.to_dict()
        if weights:
            d["weights"] = {k: tensor_to_dict(v) for k, v in self.weights.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: Optional[str] = None) -> "RecipeRun":
        """The run :meth:`to_dict` described; ``name``: the recipe (default ``d["name"]``).
        Without ``"weights"`` (``to_dict(weights=False)``, the CLI's JSON) ``weights`` is
        empty."""
        def build(d: Mapping[str, Any]) -> "RecipeRun":
            cost = d.get("d1_step")
            return cls(str(d["name"] if name is None else name),
                       [float(x) for x in d["loss_per_epoch"]],
                       [float(x) for x in d["test_accuracy_per_epoch"]],
                       float(d["initial_loss"]), float(d["cpu_s"]),
                       None if cost is None else StepCost.from_dict(cost),
                       {str(k): tensor_from_dict(v) for k, v in dict(d.get("weights", {})).items()})
        return check_dict("RecipeRun", d, build)

    def __eq__(self, other: object) -> bool:
        return same(self, other) if type(other) is type(self) else NotImplemented


@dataclass(eq=False)
class TrainResult:
    """What :func:`run_training` returns.

    Results as data: it pickles, :meth:`to_dict` gives JSON types (the weights bit exact
    unless left out) and :meth:`from_dict` rebuilds an equal result; ``==`` is field by
    field (NaN equal to NaN, weights bit for bit)."""

    config: TrainConfig
    runs: List[RecipeRun]
    samples: Tuple[int, int]       # train, test
    parameters: int
    layers: List[Tuple[int, int]]  # (in, out) of every Linear
    wall_s: float
    model: str = ""                # a description of the model

    def run(self, name: str) -> RecipeRun:
        """The run of one recipe."""
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self, weights: bool = True) -> Dict[str, Any]:
        """Every figure, JSON-ready (keys name their units): the config
        (:meth:`TrainConfig.to_dict`), the data set, the model, and per recipe
        (:meth:`RecipeRun.to_dict`) the curves, the D1 step cost and, with ``weights``
        (default), the final weights. :meth:`from_dict` inverts it. ``dojo-kernels train
        --json`` writes it without the weights."""
        runs = {r.name: r.to_dict(weights=weights) for r in self.runs}
        return {"kind": "TrainResult", "config": self.config.to_dict(), "model": self.model,
                "dataset": "sklearn.datasets.load_digits",
                "samples": {"train": self.samples[0], "test": self.samples[1]},
                "parameters": self.parameters, "layers": [list(x) for x in self.layers],
                "runs": runs, "wall_s": self.wall_s}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainResult":
        """The result :meth:`to_dict` described: ``TrainResult.from_dict(r.to_dict()) == r``,
        through ``json.dumps``/``json.loads`` too. From a dict without weights (``to_dict(
        weights=False)``, the CLI's JSON) every run's ``weights`` is empty."""
        def build(d: Mapping[str, Any]) -> "TrainResult":
            s = d["samples"]
            return cls(TrainConfig.from_dict(d["config"]),
                       [RecipeRun.from_dict(v, name=str(k)) for k, v in dict(d["runs"]).items()],
                       (int(s["train"]), int(s["test"])), int(d["parameters"]),
                       [(int(a), int(b)) for a, b in d["layers"]], float(d["wall_s"]),
                       str(d.get("model", "")))
        return check_dict("TrainResult", d, build)

    def __eq__(self, other: object) -> bool:
        return same(self, other) if type(other) is type(self) else NotImplemented


# --- data and model -------------------------------------------------------------------------
def _digits(cfg: TrainConfig) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (np.asarray(x, np.float32) / np.float32(16.0)).astype(np.float32)   # pixels 0..16
    y = np.asarray(y, np.int64)
    order = np.random.default_rng(12345).permutation(len(y))   # a fixed split, any seed
    n_test = int(round(len(y) * cfg.test_fraction))
    te, tr = order[:n_test], order[n_test:]
    return (torch.from_numpy(x[tr]), torch.from_numpy(y[tr]), torch.from_numpy(x[te]),
            torch.from_numpy(y[te]))


def _mlp(cfg: TrainConfig, n_in: int, n_out: int) -> nn.Sequential:
    gen = torch.Generator().manual_seed(cfg.seed)
    widths = [n_in, *cfg.hidden, n_out]
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():   # nn.Linear's own init, drawn from our generator
            bound = 1.0 / math.sqrt(a)
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RowRNN(nn.Module):
    """An Elman RNN over the 8 rows of a digit: ``h_t = tanh(W_x x_t + b + W_h h_{t-1})``,
    then a Linear classifier on ``h_8`` (every product an ``nn.Linear``, so :func:`convert`
    makes them all D1 GEMMs)."""

    def __init__(self, hidden: int, gen: torch.Generator, rows: int = 8, cols: int = 8,
                 classes: int = 10) -> None:
        super().__init__()
        self.rows, self.cols, self.hidden = rows, cols, hidden
        self.inp = nn.Linear(cols, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, classes)
        with torch.no_grad():
            for lin in (self.inp, self.rec, self.out):
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.uniform_(-bound, bound, generator=gen)
                if lin.bias is not None:
                    lin.bias.uniform_(-bound, bound, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.reshape(x.shape[0], self.rows, self.cols)
        h = torch.zeros(x.shape[0], self.hidden, dtype=x.dtype)
        for t in range(self.rows):
            h = torch.tanh(self.inp(xs[:, t]) + self.rec(h))
        out: torch.Tensor = self.out(h)
        return out


def _recipe(name: str) -> Optional[Recipe]:
    if name == "fp32":
        return None
    if name in ("cfloat8", "cfloat8_sr", "cfloat8_rn"):
        return RECIPES["cfloat8"]
    return RECIPES[name]


# --- the D1 cost of one step ------------------------------------------------------------------
def _step_gemms(cfg: TrainConfig, layers: Sequence[Tuple[int, int]], fwd: Format, grad: Format
                ) -> List[Tuple[int, int, int, Format, Format]]:
    """(m, n, k, a_format, b_format) of one step's GEMMs. MLP: per layer Y = X W^T,
    dW = dY^T X and, past the first layer, dX = dY W. RNN (``layers`` = input, recurrent,
    output Linear): per row the input and recurrent products and their dW, the recurrent dX
    past the first row, then the classifier's three."""
    out = []
    b = cfg.batch

    def linear(n_in: int, n_out: int, dx: bool) -> None:
        out.append((b, n_out, n_in, fwd, fwd))
        out.append((n_out, n_in, b, grad, fwd))
        if dx:
            out.append((b, n_in, n_out, grad, fwd))

    if cfg.model == "rnn":
        (i_in, i_out), (r_in, r_out), (o_in, o_out) = layers
        for t in range(8):
            linear(i_in, i_out, False)
            linear(r_in, r_out, t > 0)
        linear(o_in, o_out, True)
        return out
    for i, (n_in, n_out) in enumerate(layers):
        linear(n_in, n_out, i > 0)
    return out


def step_cost(cfg: TrainConfig, layers: Sequence[Tuple[int, int]], name: str,
              parameters: int) -> Optional[StepCost]:
    """The D1 time of one training step under recipe ``name`` (None for fp32: the D1 matrix
    unit takes BF16/CFloat8 operands)."""
    if name == "fp32":
        return None
    if name == "bf16":
        fwd, grad = BF16, BF16
    else:  # the plan depends on the element size, not on the bias
        fwd, grad = cfloat8_143(7), cfloat8_152(15)
    chip = D1Chip()
    gemms = _step_gemms(cfg, layers, fwd, grad)
    chip_s = 0.0
    flops = 0.0
    for m, n, k, fa, fb in gemms:
        chip_s += plan_gemm(m, n, k, a_format=fa, b_format=fb, machine=chip).seconds
        flops += 2.0 * m * n * k
    tile = mesh.training_tile()
    nbytes = float(2 * parameters)
    ar = estimate_allreduce(nbytes, tile, algorithm="auto")
    return StepCost(len(gemms), flops, chip_s, tile.nodes, nbytes, ar.time, ar.algorithm,
                    chip_s + ar.time)


# --- training ---------------------------------------------------------------------------------
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).double().mean())


def run_training(config: Optional[TrainConfig] = None, *,
                 progress: Optional[Callable[[str], None]] = None,
                 progress_total: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Train the MLP under every recipe of ``config``; return a :class:`TrainResult`.

    Every recipe starts from the same weights (seeded by ``config.seed``) and sees the same
    batches in the same order; the D1 kernels and the stochastic rounding are deterministic,
    so two runs with one seed give identical weights (``RecipeRun.weights``).
    """
    cfg = TrainConfig() if config is None else config
    t_start = time.perf_counter()
    saved_threads = torch.get_num_threads(), get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
        set_num_threads(cfg.threads)
    try:
        xtr, ytr, xte, yte = _digits(cfg)
        base: nn.Module
        if cfg.model == "rnn":
            base = RowRNN(cfg.hidden[0], torch.Generator().manual_seed(cfg.seed))
            desc = (f"row RNN (8 rows of 8 pixels, hidden {cfg.hidden[0]}, tanh) + Linear "
                    f"{cfg.hidden[0]}-10")
        else:
            base = _mlp(cfg, xtr.shape[1], 10)
            desc = "MLP " + "-".join(str(v) for v in [xtr.shape[1], *cfg.hidden, 10])
        layers = [(m.in_features, m.out_features) for m in base.modules()
                  if isinstance(m, nn.Linear)]
        parameters = sum(p.numel() for p in base.parameters())
        rng = np.random.default_rng(cfg.seed)
        orders = [torch.from_numpy(rng.permutation(len(ytr))) for _ in range(cfg.epochs)]
        if progress_total is not None:
            progress_total(cfg.epochs * len(cfg.recipes))
        tick = progress if progress is not None else (lambda label: None)
        loss_fn = nn.CrossEntropyLoss()
        runs = []
        for name in cfg.recipes:
            t0 = time.perf_counter()
            model = copy.deepcopy(base)
            recipe = _recipe(name)
            if recipe is not None:
                convert(model, recipe)
            opt: Any = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
            if name in ("cfloat8_sr", "cfloat8_rn"):
                opt = SROptimizer(opt, BF16, seed=cfg.seed,
                                  rounding="stochastic" if name == "cfloat8_sr" else "nearest")
            run = RecipeRun(name)
            with torch.no_grad():
                run.initial_loss = float(loss_fn(model(xtr), ytr))
            for epoch in range(cfg.epochs):
                total, count = 0.0, 0
                order = orders[epoch]
                for s in range(0, len(order), cfg.batch):
                    idx = order[s:s + cfg.batch]
                    xb, yb = xtr[idx], ytr[idx]
                    opt.zero_grad()
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                run.loss.append(total / count)
                run.test_accuracy.append(_evaluate(model, xte, yte))
                tick(f"{name} epoch {epoch + 1}")
            run.cpu_s = time.perf_counter() - t0
            run.cost = step_cost(cfg, layers, name, parameters)
            run.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            runs.append(run)
    finally:
        torch.set_num_threads(saved_threads[0])
        set_num_threads(saved_threads[1])
    return TrainResult(cfg, runs, (len(ytr), len(yte)), parameters, layers,
                       time.perf_counter() - t_start, desc)


# --- rendering --------------------------------------------------------------------------------
def _si(v: float, unit: str) -> str:
    """``v`` with an SI prefix: _si(1.5e-6, 's') = '1.50 us'."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g} {unit}"
    for scale, p in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "u"),
                     (1e-9, "n")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {p}{unit}"
    return f"{v * 1e12:.3g} p{unit}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An aligned text table: the first ``left`` columns left-aligned, the rest right."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def render_training(result: TrainResult) -> str:
    """The per-epoch table, the final figures and the D1 step times, as text."""
    cfg = result.config
    lines = [
        f"scikit-learn digits: {result.samples[0]} train / {result.samples[1]} test images "
        f"(8x8, 10 classes); {result.model} ({result.parameters:,} parameters)",
        f"SGD lr {cfg.lr:g} momentum {cfg.momentum:g}, batch {cfg.batch}, {cfg.epochs} "
        f"epochs, seed {cfg.seed}",
    ]
    for r in result.runs:
        lines.append(f"  {r.name:<16}{describe(r.name)}")
    lines.append("")
    lines.append("Mean training loss and test accuracy per epoch")
    headers = ["epoch"]
    for r in result.runs:
        headers += [f"{r.name} loss", "acc"]
    rows = [["0"] + sum(([f"{r.initial_loss:.4f}", "-"] for r in result.runs), [])]
    for e in range(cfg.epochs):
        row = [str(e + 1)]
        for r in result.runs:
            row += [f"{r.loss[e]:.4f}", f"{r.test_accuracy[e]:.3f}"]
        rows.append(row)
    lines.append(_table(headers, rows, left=0))
    lines.append("")
    costed = [r for r in result.runs if r.cost is not None]
    n_gemms = costed[0].cost.gemms if costed and costed[0].cost else 0
    lines.append(f"D1 time of one training step (batch {cfg.batch}: {n_gemms} GEMMs, one "
                 "after another, from plan_gemm; tile: data parallel, each chip its own batch, "
                 "then the BF16 gradients all-reduced; elementwise work not costed)")
    rows = []
    for r in result.runs:
        c = r.cost
        if c is None:
            rows.append([r.name, "-", "-", "-", "-", "-", f"{r.cpu_s:.2f} s"])
            continue
        rows.append([r.name, _si(c.chip_s, "s"), _si(c.allreduce_s, "s") + f" ({c.allreduce_algorithm})",
                     _si(c.tile_s, "s"), f"{cfg.batch * c.tile_chips}",
                     f"{cfg.batch * c.tile_chips / c.tile_s:.3g}", f"{r.cpu_s:.2f} s"])
    lines.append(_table(["recipe", "one D1", "tile all-reduce", "tile step", "tile batch",
                         "tile samples/s", "this CPU, wall"], rows))
    if any(r.cost is None for r in result.runs):
        lines.append("  fp32: the D1 matrix unit takes BF16/CFloat8 operands (FP32 runs on the "
                     "vector unit), so no GEMM plan")
    lines.append(f"  whole run {result.wall_s:.1f} s on this CPU")
    return "\n".join(lines)


def write_json(result: TrainResult, path: str, *, weights: bool = False) -> None:
    """Write :meth:`TrainResult.to_dict` to ``path`` (``-`` for stdout); ``weights``: with
    the weights (default False, as the CLI: the curves and costs only)."""
    text = json.dumps(result.to_dict(weights=weights), indent=2)
    if path == "-":
        print(text)
        return
    with open(path, "w") as f:
        f.write(text + "\n")


def plot_training(result: TrainResult, directory: str) -> List[str]:
    """Loss and test-accuracy curves per recipe, as PNGs in ``directory``; returns paths."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'dojo_kernels[train]' "
                          "(or pip install matplotlib)") from None
    os.makedirs(directory, exist_ok=True)
    paths = []
    epochs = np.arange(0, result.config.epochs + 1)
    for key, ylabel, fname in (("loss", "mean training loss", "train_loss.png"),
                               ("test_accuracy", "test accuracy", "train_accuracy.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for r in result.runs:
            ys = getattr(r, key)
            if key == "loss":
                ax.plot(epochs, [r.initial_loss, *ys], marker="o", ms=3, label=r.name)
            else:
                ax.plot(epochs[1:], ys, marker="o", ms=3, label=r.name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        if key == "loss":
            ax.set_yscale("log")
        ax.set_title(f"digits MLP, {ylabel} per recipe (seed {result.config.seed})")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = os.path.join(directory, fname)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
