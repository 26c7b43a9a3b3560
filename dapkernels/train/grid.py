"""``dapkernels train-grid``: every method on every dataset over several seeds, one table.

Writes ``train_results.json`` (every run's final metrics and the per-cell mean ± std) and
``train_results.md`` (the tables, with the exact command that produced them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import METHODS, TrainConfig
from .datasets import EMBEDDED_DATASETS

__all__ = ["run_grid", "add_grid_parser", "format_markdown"]


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def run_grid(
    datasets: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    runs_dir: Path,
    impl: str = "fused",
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> dict[str, Any]:
    """Trains every (dataset, method, seed) and aggregates the final metrics.

    Args:
        datasets, methods, seeds: the grid.
        runs_dir: each run writes into ``runs_dir/DATASET/METHOD-sSEED``.
        impl: loss implementation for every run.
        log: receives one line per finished run.
        overrides: further :class:`TrainConfig` fields (epochs, iters_per_epoch, …).

    Returns:
        ``{"runs": [...], "cells": {dataset: {method: {metric: {mean, std}}}}}``.
    """
    from .trainer import Trainer

    runs: list[dict[str, Any]] = []
    for dataset in datasets:
        for method in methods:
            for seed in seeds:
                cfg = TrainConfig(method=method, dataset=dataset, seed=seed, impl=impl,
                                  **overrides)
                trainer = Trainer(cfg, out=runs_dir / dataset / f"{method}-s{seed}",
                                  progress=False)
                final = trainer.fit()
                run = {"dataset": dataset, "method": method, "seed": seed,
                       "target_acc": final["target_acc"], "source_acc": final["source_acc"],
                       "mmd": final["mmd"], "coral": final["coral"],
                       "step_time_ms": trainer.step_time_median_ms}
                runs.append(run)
                log(f"{dataset:>14} {method:>11} seed {seed}: target {run['target_acc']:.2f}% "
                    f"MMD {run['mmd']:.4f} step {run['step_time_ms']:.2f} ms")
    cells: dict[str, dict[str, Any]] = {}
    for dataset in datasets:
        cells[dataset] = {}
        for method in methods:
            mine = [r for r in runs if r["dataset"] == dataset and r["method"] == method]
            cells[dataset][method] = {
                key: _mean_std([r[key] for r in mine])
                for key in ("target_acc", "source_acc", "mmd", "coral", "step_time_ms")
            }
    return {"runs": runs, "cells": cells}


def format_markdown(result: dict[str, Any], command: str) -> str:
    """Target-accuracy table (mean ± std) and the MMD of the evaluation features."""
    cells = result["cells"]
    datasets = list(cells)
    methods = list(next(iter(cells.values())))
    seeds = sorted({r["seed"] for r in result["runs"]})
    lines = [
        f"Target test accuracy (%), mean ± std over seeds {', '.join(map(str, seeds))}; "
        "best per row in bold.",
        "",
        "| dataset | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for d in datasets:
        best = max(cells[d][m]["target_acc"]["mean"] for m in methods)
        row = []
        for m in methods:
            acc = cells[d][m]["target_acc"]
            text = f"{acc['mean']:.1f} ± {acc['std']:.1f}"
            row.append(f"**{text}**" if acc["mean"] == best else text)
        lines.append(f"| {d} | " + " | ".join(row) + " |")
    lines += [
        "",
        "MK-MMD between source and target-test bottleneck features after training "
        "(unbiased, DAN bank; mean over seeds):",
        "",
        "| dataset | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for d in datasets:
        lines.append(f"| {d} | " + " | ".join(
            f"{cells[d][m]['mmd']['mean']:.4f}" for m in methods) + " |")
    lines += ["", "Reproduce with:", "", "```", command, "```", ""]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {METHODS}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    overrides = {k: v for k, v in (("epochs", args.epochs),
                                   ("iters_per_epoch", args.iters_per_epoch)) if v is not None}
    result = run_grid(datasets, methods, seeds, Path(args.runs_dir), impl=args.impl,
                      **overrides)
    command = "dapkernels " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result["command"] = command
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = format_markdown(result, command)
    (out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


def add_grid_parser(subparsers: Any) -> None:
    """Adds ``train-grid`` to the ``dapkernels`` sub-parsers."""
    p = subparsers.add_parser(
        "train-grid",
        help="train every method on every embedded dataset over several seeds",
        description="Mean ± std table of every method on every dataset (README results).",
    )
    p.add_argument("--datasets", default=",".join(EMBEDDED_DATASETS),
                   help="comma-separated datasets (default: %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated methods (default: %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--impl", choices=("fused", "naive"), default="fused",
                   help="loss implementation (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="override every run's epochs")
    p.add_argument("--iters-per-epoch", type=int, help="override every run's steps per epoch")
    p.add_argument("--runs-dir", default="runs/grid",
                   help="where the individual runs write (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results",
                   help="directory for NAME.json / NAME.md (default: %(default)s)")
    p.add_argument("--name", default="train_results",
                   help="file stem of the results (default: %(default)s)")
    p.set_defaults(func=_run)
