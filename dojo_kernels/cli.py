"""The ``dojo-kernels`` command (also ``python -m dojo_kernels``)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _info(args: argparse.Namespace) -> int:
    import dojo_kernels

    dojo_kernels.show_config()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dojo-kernels",
        description="Tesla Dojo D1 numerics, SRAM-tiled GEMM and mesh all-reduce emulation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="version, ISA tier, CPU features, threads, compiler")
    p.set_defaults(func=_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
