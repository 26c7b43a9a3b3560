"""``dapkernels bench <name>``: the benchmark commands.

Each benchmark is a module registered in :data:`BENCHMARKS` (one line per benchmark).  The
module provides:

* a docstring whose first line is the command's help text;
* ``add_arguments(parser)``: its own options (the common ones below are already there);
* ``run(args) -> int``: runs it, prints a table, writes JSON + PNG under ``args.out``.

The common options (``--device``, ``--out``, ``--quick``, ``--time-budget``,
``--mem-budget-gib``, ``--isolate``, ``--silent``) are declared and read in
:mod:`dapkernels.bench.options`.
Measurement rules are documented in :mod:`dapkernels.bench.runner` and the modules it uses.
"""

from __future__ import annotations

import argparse
import importlib

from .options import add_common_arguments

__all__ = ["BENCHMARKS", "add_bench_parser"]

#: name → module of each ``dapkernels bench <name>`` command.
BENCHMARKS: dict = {
    "mmd": "dapkernels.bench.mmd",
    "coral": "dapkernels.bench.coral",
    "grl": "dapkernels.bench.grl",
    "shift": "dapkernels.bench.shift",
    "ddp": "dapkernels.bench.ddp",
}


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
        add_common_arguments(parser)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
    return bench
