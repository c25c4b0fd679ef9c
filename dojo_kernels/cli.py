"""The ``dojo-kernels`` command (also ``python -m dojo_kernels``).

``dojo-kernels report`` (the main job), ``dojo-kernels bench [--quick]``, ``dojo-kernels info``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Optional, Sequence, Tuple


def _info(args: argparse.Namespace) -> int:
    import dojo_kernels

    dojo_kernels.show_config()
    return 0


def _csv(text: str) -> Tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _shape(text: str) -> Tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS, e.g. 2x3, got {text!r}") from None
    if r < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"expected positive ROWSxCOLS, got {text!r}")
    return r, c


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def rp_machines() -> Tuple[str, ...]:
    """The ``--machine`` choices (report.MACHINES), without importing NumPy at parse time."""
    return ("d1", "d2")


def _id_list(text: str) -> Tuple[int, ...]:
    """``"6,12"`` -> (6, 12) (argparse type of --failed-chips)."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated chip ids, got {text!r}") from None


def _link_list(text: str) -> Tuple[Tuple[int, int], ...]:
    """``"12-13,0-1"`` -> ((12, 13), (0, 1)) (argparse type of --failed-links)."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        parts = item.split("-")
        try:
            if len(parts) != 2:
                raise ValueError
            out.append((int(parts[0]), int(parts[1])))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected links as U-V (neighbouring chip ids), comma-separated, got {item!r}"
            ) from None
    return tuple(out)


def _report(args: argparse.Namespace) -> int:
    from . import report as rp
    from ._config import set_num_threads
    from .collectives import ALGORITHMS

    if args.threads is not None:
        set_num_threads(args.threads)
    formats = _csv(args.formats)
    algorithms = ALGORITHMS if args.algorithms == "all" else _csv(args.algorithms)
    from .machine import from_cli

    # human units (labelled in --help) -> SI, in this one place
    def si(value: Optional[float], unit: str) -> Optional[float]:
        return None if value is None else from_cli(value, unit)

    sram = si(args.sram, "KiB")
    try:
        machine = rp.machine_with(
            base=rp.MACHINES[args.machine](),
            clock_hz=si(args.clock, "GHz"),
            sram_bytes=None if sram is None else int(sram),
            noc_link_bw=si(args.noc_bandwidth, "GB/s"),
            chip_link_bw=si(args.link_bandwidth, "GB/s"),
            offtile_bw_per_edge=si(args.tile_link_bandwidth, "GB/s"))
        cfg = rp.ReportConfig(
            d_model=args.d_model, seq=args.seq, batch=args.batch, mlp_ratio=args.mlp_ratio,
            formats=formats, forward_format=args.forward_format,
            gradient_format=args.gradient_format, bias=args.bias, bias_margin=args.bias_margin,
            gemm_order=args.gemm_order,
            grad_bytes_per_param={"bf16": 2, "fp32": 4, "cfloat8": 1}[args.grad_dtype],
            machine=machine, system_shape=args.system, overlap=args.overlap,
            algorithms=algorithms, check_elements=args.check_elements, seed=args.seed,
            failed_chips=args.failed_chips, failed_links=args.failed_links,
            fault_study=not args.no_fault_study)
    except (ValueError, TypeError) as exc:
        print(f"dojo-kernels report: {exc}", file=sys.stderr)
        return 2
    if args.plot:  # fail before the work when matplotlib is missing
        try:
            rp.pyplot()
        except ImportError as exc:
            print(f"dojo-kernels report: {exc}", file=sys.stderr)
            return 2
    bar = rp.Progress(1, enabled=not args.quiet)

    def total(n: int) -> None:
        bar.total = n
        bar.show("FP32 operands of the step")

    try:
        result = rp.run_report(cfg, progress=bar.advance, progress_total=total)
    finally:
        bar.close()
    to_stdout = args.json == "-"   # JSON alone on stdout (the tables would corrupt it)
    if not to_stdout:
        print(rp.render_report(result))
        if args.machine != "d1":   # the what-if beside the D1 tile it changes
            d1 = rp.machine_with(
                base=rp.MACHINES["d1"](), clock_hz=si(args.clock, "GHz"),
                sram_bytes=None if sram is None else int(sram),
                noc_link_bw=si(args.noc_bandwidth, "GB/s"),
                offtile_bw_per_edge=si(args.tile_link_bandwidth, "GB/s"))
            print()
            print("\n".join(rp.compare_machines(result, d1)))
    if args.json:
        rp.write_json(result, args.json)
        if not to_stdout:
            print(f"\nJSON written to {args.json}")
    if args.plot:
        paths = rp.plot_report(result, args.plot)
        print("\nPlots: " + ", ".join(paths), file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _find_suite() -> Optional[str]:
    """The source checkout's bench/ directory, searched from the cwd upwards."""
    d = os.getcwd()
    while True:
        cand = os.path.join(d, "bench")
        if os.path.isfile(os.path.join(cand, "conftest.py")) and os.path.isfile(
                os.path.join(cand, "_benchlib.py")):
            return cand
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _bench(args: argparse.Namespace) -> int:
    if args.suite:
        suite = _find_suite()
        if suite is None:
            print("dojo-kernels bench --suite: no bench/ directory (with conftest.py and "
                  "_benchlib.py) in the current directory or above; run it from the source "
                  "checkout, or drop --suite for the built-in benchmark", file=sys.stderr)
            return 2
        env = dict(os.environ)
        if args.quick:
            env.setdefault("DOJO_BENCH_SCALE", "0.1")
        cmd = [sys.executable, "-m", "pytest", suite, "--benchmark-only", "-q", "-p",
               "no:cacheprovider"] + (["--collect-only"] if args.collect_only else [])
        print("running: " + " ".join(cmd), flush=True)
        # from inside bench/: at the checkout's root, `python -m` would put the source tree
        # (no compiled modules unless built in place) before the installed package
        return subprocess.call(cmd, env=env, cwd=suite)

    from . import _bench as bm
    from .report import Progress

    state = bm.machine_state(quick=args.quick)
    for w in state.warnings:
        print(f"WARNING: {w}", file=sys.stderr, flush=True)
    counts = 1 if args.threads is not None else 2
    bar = Progress(1 + 4 * counts, enabled=not args.quiet)
    try:
        rows = bm.run_bench(quick=args.quick, threads=args.threads, progress=bar.advance)
    finally:
        bar.close()
    print(bm.render_bench(rows, threads=args.threads, state=state))
    if args.json:
        import json

        text = json.dumps(bm.bench_json(rows, state), indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dojo-kernels`` command."""
    from .collectives import ALGORITHMS

    parser = argparse.ArgumentParser(
        prog="dojo-kernels",
        description="Tesla Dojo D1 numerics, SRAM-tiled GEMM and mesh all-reduce emulation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="version, ISA tier, CPU features, threads, compiler")
    p.set_defaults(func=_info)

    r = sub.add_parser(
        "report", help="one transformer-block training step: emulated here, costed on a D1 tile",
        description="Run one training step of a transformer block: its 12 GEMMs for real on "
                    "this CPU in FP32, BF16 and CFloat8 (errors against FP32), their D1 plans "
                    "on a training tile, the gradient all-reduce across the tile's chips and "
                    "across a set of tiles, and the step's total against the tile's peak.")
    g = r.add_argument_group("shape")
    g.add_argument("--d-model", type=int, default=1024, help="model width (default 1024)")
    g.add_argument("--seq", type=int, default=2048, help="sequence length (default 2048)")
    g.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    g.add_argument("--mlp-ratio", type=int, default=4, help="MLP hidden / d_model (default 4)")
    g = r.add_argument_group("formats")
    g.add_argument("--formats", default="bf16,cfloat8",
                   help="emulated formats besides FP32, comma-separated (default bf16,cfloat8)")
    g.add_argument("--forward-format", default="cfloat8_143", choices=["cfloat8_143", "cfloat8_152"],
                   help="CFloat8 family of activations and weights (default cfloat8_143)")
    g.add_argument("--gradient-format", default="cfloat8_152", choices=["cfloat8_143", "cfloat8_152"],
                   help="CFloat8 family of gradients (default cfloat8_152)")
    g.add_argument("--bias", type=int, default=None,
                   help="fixed CFloat8 bias 0..63 (default: choose_bias per tensor)")
    g.add_argument("--bias-margin", type=int, default=0,
                   help="binades of headroom for choose_bias (default 0)")
    g.add_argument("--gemm-order", default="amx", choices=["amx", "vdpbf16ps"],
                   help="accumulation order of the emulated GEMMs (default amx: Intel AMX's; "
                        "vdpbf16ps: one VDPBF16PS chain, dojo_kernels 0.1's bits)")
    g.add_argument("--grad-dtype", default="bf16", choices=["bf16", "fp32", "cfloat8"],
                   help="gradient element on the all-reduce wire (default bf16: 2 B)")
    g = r.add_argument_group("machine (defaults: the public D1 figures, see dojo_kernels.d1; "
                             "units as labelled: the CLI's human units, converted to SI)")
    g.add_argument("--machine", choices=sorted(rp_machines()), default="d1",
                   help="d1: a D1 training tile (default); d2: the D2 wafer what-if (every "
                        "figure an assumption, docs/machine.md), printed beside the D1 tile")
    g.add_argument("--clock", type=_positive_float, metavar="GHZ",
                   help="node clock in GHz (2); SRAM and NoC bandwidths scale with it")
    g.add_argument("--sram", type=_positive_float, metavar="KIB", help="SRAM per node in KiB (1280)")
    g.add_argument("--noc-bandwidth", type=_positive_float, metavar="GB/S",
                   help="node-to-node link per direction in GB/s (128)")
    g.add_argument("--link-bandwidth", type=_positive_float, metavar="GB/S",
                   help="chip-to-chip link per direction inside a tile in GB/s (2000)")
    g.add_argument("--tile-link-bandwidth", type=_positive_float, metavar="GB/S",
                   help="tile edge and tile-to-tile link per direction in GB/s (9000)")
    g.add_argument("--system", type=_shape, default=(2, 3), metavar="ROWSxCOLS",
                   help="tiles of the system-scale step (default 2x3)")
    g.add_argument("--overlap", action="store_true",
                   help="system step: overlap each gradient all-reduce with the later "
                        "backward GEMMs")
    g.add_argument("--algorithms", default="all",
                   help=f"all-reduce algorithms, comma-separated, or all ({','.join(ALGORITHMS)})")
    g = r.add_argument_group("faults (the fault study: the tile's all-reduce with 0, 1, 2 "
                             "failed chips and a failed link, plus the case given here)")
    g.add_argument("--failed-chips", type=_id_list, default=(), metavar="IDS",
                   help="comma-separated chip ids (row-major on the tile's chip mesh, 0..24 on "
                        "a 5x5 tile) that have failed, e.g. 12 or 6,12")
    g.add_argument("--failed-links", type=_link_list, default=(), metavar="U-V,...",
                   help="comma-separated failed chip-to-chip links between neighbouring "
                        "chips, e.g. 12-13 (both directions fail)")
    g.add_argument("--no-fault-study", action="store_true",
                   help="leave the fault study out of the report")
    g = r.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", help="write every figure as JSON (- : JSON alone on stdout)")
    g.add_argument("--plot", metavar="DIR", help="write PNG plots into DIR (needs matplotlib)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    g.add_argument("--seed", type=int, default=0, help="seed of the operands (default 0)")
    g.add_argument("--check-elements", type=int, default=4096,
                   help="elements per node of the real all-reduce check (0: skip)")
    r.set_defaults(func=_report)

    b = sub.add_parser(
        "bench", help="key rates against the peers installed (NumPy, ml_dtypes, torch)",
        description="Measure conversion, arithmetic, GEMM and all-reduce rates against the "
                    "peers found installed (NumPy, ml_dtypes, torch) at 1 and 2 threads, with "
                    "this CPU's measured FMA/VDPBF16PS peaks; every figure is the median "
                    "[min-max] of repeats, and the run warns when the machine is busy. --suite "
                    "runs the full pytest-benchmark suite of a source checkout's bench/ instead.")
    b.add_argument("--quick", action="store_true", help="smaller problems, a few seconds")
    b.add_argument("--suite", action="store_true",
                   help="run pytest-benchmark on ./bench (source checkout) instead")
    b.add_argument("--collect-only", action="store_true",
                   help="with --suite: list the suite's benchmarks without running them")
    b.add_argument("--threads", type=int, default=None,
                   help="kernel (and BLAS, torch) threads (default: 1 and 2, in turn)")
    b.add_argument("--json", metavar="FILE", help="also write every figure as JSON (- : stdout)")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    b.set_defaults(func=_bench)

    from .report import _train_cli   # dojo-kernels train: the [train] extra, torch imported lazily
    _train_cli.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``dojo-kernels``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
