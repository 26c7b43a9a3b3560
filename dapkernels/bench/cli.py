"""``dapkernels bench <name>``: the benchmark commands.

Each benchmark is a module registered in :data:`BENCHMARKS` (one line per benchmark).  The
module provides:

* a docstring whose first line is the command's help text;
* ``add_arguments(parser)``: its own options (the common ones below are already there);
* ``run(args) -> int``: runs it, prints a table, writes JSON + PNG under ``args.out``.

Common options: ``--device cpu|cuda``, ``--out DIR``, ``--quick`` (a few small sizes, seconds:
for CI, tests and the demo), ``--time-budget S`` (seconds of repeats per measurement),
``--mem-budget-gib G`` (skip cases estimated above it), ``--isolate/--no-isolate`` (one
subprocess per case; default on for full CPU runs), ``--silent`` (no progress lines).
Measurement rules are documented in :mod:`dapkernels.bench.common`.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["BENCHMARKS", "add_bench_parser"]

#: name → module of each ``dapkernels bench <name>`` command.
BENCHMARKS: dict = {
    "mmd": "dapkernels.bench.mmd",
    "coral": "dapkernels.bench.coral",
    "grl": "dapkernels.bench.grl",
    "shift": "dapkernels.bench.shift",
    "ddp": "dapkernels.bench.ddp",
}


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to run (default cpu)")
    parser.add_argument("--out", metavar="DIR",
                        help="folder for the JSON and PNG (default bench-results/<name>_<device>)")
    parser.add_argument("--quick", action="store_true",
                        help="a few small sizes, in process: seconds (CI, tests, demo)")
    parser.add_argument("--time-budget", type=float, metavar="S",
                        help="seconds of timed repeats per measurement (default 2, --quick 0.3)")
    parser.add_argument("--mem-budget-gib", type=float, metavar="G",
                        help="skip cases whose estimated memory exceeds G GiB "
                             "(default: half the memory available at start)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="one fresh subprocess per case (default: on for a full CPU run)")
    parser.add_argument("--silent", action="store_true", help="no progress lines on stderr")


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``bench`` and one sub-command per entry of :data:`BENCHMARKS`."""
    bench = subparsers.add_parser(
        "bench", help="benchmarks: ours vs naive baselines and the GEMM reference time",
        description="Benchmarks: time and peak memory of ours vs naive baselines.",
    )
    sub = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or name).strip()
        parser = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common_arguments(parser)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
    return bench
