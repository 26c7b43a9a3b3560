"""The ``dapkernels`` console script: ``demo``, ``train``, ``bench``.

Each command lives in the module that does its work and adds its own sub-parser; this file
only assembles them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .bench.cli import add_bench_parser
    from .demo import add_demo_parser
    from .metrics.cli import add_shift_parser
    from .train.cli import add_train_parser

    parser = argparse.ArgumentParser(
        prog="dapkernels",
        description="Fused kernels for deep domain adaptation: demo, training, benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(sub)
    add_train_parser(sub)
    add_bench_parser(sub)
    add_shift_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line, for commands that relaunch themselves
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
