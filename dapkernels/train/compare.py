"""``dapkernels train-compare``: fused vs naive losses, step by step in one process.

A fused and a naive trainer with the same seed are stepped alternately (fused step, naive
step, …), so both see the same machine load; the result is the median step time of each, their
ratio, and how far apart the two loss trajectories drift.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import METHODS, TrainConfig
from .datasets import DomainData
from .trainer import Trainer

__all__ = ["compare_impls", "add_compare_parser"]


def compare_impls(config: TrainConfig, steps: int, data: DomainData | None = None
                  ) -> dict[str, Any]:
    """Runs ``steps`` interleaved steps of a fused and a naive trainer built from ``config``.

    Returns:
        ``fused_ms`` / ``naive_ms`` (median step times), ``speedup`` (naive / fused),
        ``max_rel_gap`` (largest ``|L_fused − L_naive| / |L_fused|`` of the total loss over the
        steps), ``first_step_over_1e-4`` (first step whose gap exceeds 1e-4, or ``None``),
        ``steps`` and the two ``loss_curve`` lists.
    """
    fused = Trainer(replace(config, impl="fused"), data=data, progress=False)
    naive = Trainer(replace(config, impl="naive"), data=fused.data, progress=False)
    records: dict[str, list] = {"fused": [], "naive": []}
    for _ in range(steps):
        records["fused"].append(fused.train_step())
        records["naive"].append(naive.train_step())
    curves = {k: [r["loss"] for r in v] for k, v in records.items()}
    gaps = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(curves["fused"], curves["naive"])]
    over = [i + 1 for i, g in enumerate(gaps) if g > 1e-4]
    fused_ms = statistics.median(r["time_ms"] for r in records["fused"])
    naive_ms = statistics.median(r["time_ms"] for r in records["naive"])
    return {
        "method": config.method, "dataset": config.dataset, "dtype": config.dtype,
        "batch_size": config.batch_size, "bottleneck_dim": config.bottleneck_dim,
        "steps": steps, "fused_ms": fused_ms, "naive_ms": naive_ms,
        "speedup": naive_ms / fused_ms, "max_rel_gap": max(gaps),
        "first_step_over_1e-4": over[0] if over else None,
        "loss_curve": curves,
    }


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(method=args.method, dataset=args.dataset, seed=args.seed,
                      batch_size=args.batch_size, bottleneck_dim=args.bottleneck_dim,
                      dtype=args.dtype)
    res = compare_impls(cfg, args.steps)
    first = res["first_step_over_1e-4"]
    print(f"{args.method} on {args.dataset}, batch {args.batch_size}, bottleneck "
          f"{args.bottleneck_dim}, {args.dtype}, {args.steps} interleaved steps:\n"
          f"  median step fused {res['fused_ms']:.2f} ms, naive {res['naive_ms']:.2f} ms "
          f"-> fused is {res['speedup']:.2f}x faster\n"
          f"  loss trajectories: max relative gap {res['max_rel_gap']:.1e}"
          + ("" if first is None else f" (first above 1e-4 at step {first})"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def add_compare_parser(subparsers: Any) -> None:
    """Adds ``train-compare`` to the ``dapkernels`` sub-parsers."""
    p = subparsers.add_parser(
        "train-compare",
        help="fused vs naive losses: median step time and loss-trajectory gap",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("method", choices=[m for m in METHODS if m != "source-only"])
    p.add_argument("--dataset", default="digits-rotate", help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=200, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--bottleneck-dim", type=int, default=256, help="(default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--out", help="write the result (with both loss curves) to this JSON file")
    p.set_defaults(func=_run)
