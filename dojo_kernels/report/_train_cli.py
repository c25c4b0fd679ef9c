"""The ``dojo-kernels train`` subcommand: its arguments and handler (imports torch lazily, so
``dojo-kernels`` itself works without the [train] extra)."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Tuple

EXTRA_HINT = ("dojo-kernels train needs PyTorch and scikit-learn: "
              "pip install 'dojo_kernels[train]' (from a checkout: pip install '.[train]')")


def _csv(text: str) -> Tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subparser to ``sub`` (the result of ``add_subparsers``)."""
    t: argparse.ArgumentParser = sub.add_parser(
        "train", help="train an MLP on scikit-learn's digits in FP32, BF16 and CFloat8 (torch)",
        description="Train a small MLP on scikit-learn's digits under the recipes fp32, bf16, "
                    "cfloat8 and cfloat8 with stochastic-rounding BF16 weights (D1 GEMMs via "
                    "dojo_kernels.torch), print per-epoch loss and test accuracy side by side "
                    "and the D1 time of one training step on a chip and on a tile. Needs the "
                    "[train] extra (torch, scikit-learn).")
    t.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    t.add_argument("--recipes", default="fp32,bf16,cfloat8,cfloat8_sr",
                   help="comma-separated, from fp32, bf16, cfloat8, cfloat8_sr, cfloat8_rn, "
                        "cfloat8_delayed (default fp32,bf16,cfloat8,cfloat8_sr)")
    t.add_argument("--model", default="mlp", choices=["mlp", "rnn"],
                   help="mlp (default) or rnn: a row-by-row Elman RNN, a sequence model")
    t.add_argument("--seed", type=int, default=0, help="seed of weights, batches, SR (default 0)")
    t.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    t.add_argument("--lr", type=float, default=0.005, help="SGD learning rate (default 0.005)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    t.add_argument("--threads", type=int, default=1,
                   help="kernel and torch threads while training (default 1)")
    t.add_argument("--json", metavar="FILE", help="write every figure as JSON (- : stdout only)")
    t.add_argument("--plot", metavar="DIR", help="write loss/accuracy curves (PNG) into DIR")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    t.set_defaults(func=run)
    return t


def run(args: argparse.Namespace) -> int:
    """Handler of ``dojo-kernels train``; returns the exit status."""
    try:
        import torch  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        print(f"{EXTRA_HINT} ({exc})", file=sys.stderr)
        return 2
    from . import train as tr
    from ._report import Progress

    try:
        cfg = tr.TrainConfig(epochs=args.epochs, recipes=_csv(args.recipes), seed=args.seed,
                             batch=args.batch, lr=args.lr, momentum=args.momentum,
                             threads=args.threads, model=args.model)
    except (TypeError, ValueError) as exc:
        print(f"dojo-kernels train: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("dojo-kernels train: --plot needs matplotlib: pip install "
                  "'dojo_kernels[train]'", file=sys.stderr)
            return 2
    bar = Progress(1, enabled=not args.quiet)

    def total(n: int) -> None:
        bar.total = n
        bar.show("loading digits")

    try:
        result = tr.run_training(cfg, progress=bar.advance, progress_total=total)
    finally:
        bar.close()
    to_stdout = args.json == "-"
    if not to_stdout:
        print(tr.render_training(result))
    if args.json:
        tr.write_json(result, args.json)
        if not to_stdout:
            print(f"\nJSON written to {args.json}")
    if args.plot:
        paths = tr.plot_training(result, args.plot)
        print("\nPlots: " + ", ".join(paths), file=sys.stderr if to_stdout else sys.stdout)
    return 0
