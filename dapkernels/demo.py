"""``dapkernels demo``: domain adaptation on an embedded digits shift, fused vs naive losses.

Trains source-only, DAN, DANN and Deep CORAL with the fused dapkernels losses, then runs each
adaptation method with ``impl="fused"`` and ``impl="naive"`` (the copied-code baselines) side
by side, stepped alternately for ``--naive-steps`` steps with the same seed
(:func:`dapkernels.train.compare.compare_impls`).  Prints one table — target accuracy, median step
time fused vs naive, the largest relative gap between the two loss trajectories, the MMD and
CORAL between source and target features relative to source-only — writes it as JSON and a
PNG, then a short kernel micro-benchmark of the fused MMD against the naive baselines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .train.config import TrainConfig
from .train.datasets import DIGITS_SHIFTS

__all__ = ["add_demo_parser", "run_demo", "DEMO_METHODS"]

#: Methods of the demo, source-only first (the reference for the discrepancy reduction).
DEMO_METHODS = ("source-only", "dan", "dann", "coral")


def _max_rel_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a, b))


def run_demo(
    out: Path,
    dataset: str = "digits-rotate",
    epochs: int = 6,
    iters_per_epoch: int = 100,
    naive_steps: int = 100,
    seed: int = 0,
    log=print,
) -> dict[str, Any]:
    """Runs the demo's trainings and returns one row per method (also written to JSON).

    Args:
        out: output directory (each fused run in ``out/runs/METHOD``).
        dataset: an embedded digits shift.
        epochs, iters_per_epoch: length of the fused runs.
        naive_steps: length of the interleaved fused-vs-naive comparison.
        seed: training seed of every run.
        log: progress lines.
    """
    from .train.compare import compare_impls
    from .train.trainer import Trainer

    rows: list[dict[str, Any]] = []
    for method in DEMO_METHODS:
        cfg = TrainConfig(method=method, dataset=dataset, seed=seed, epochs=epochs,
                          iters_per_epoch=iters_per_epoch)
        start = time.perf_counter()
        trainer = Trainer(cfg, out=out / "runs" / method, progress=False)
        final = trainer.fit()
        row: dict[str, Any] = {
            "method": method,
            "target_acc": final["target_acc"],
            "mmd": final["mmd"],
            "coral": final["coral"],
            "step_time_ms": trainer.step_time_median_ms,
        }
        log(f"  {method:<11} fused {epochs * iters_per_epoch:>5} steps "
            f"in {time.perf_counter() - start:5.1f} s")
        if method != "source-only":
            start = time.perf_counter()
            cmp = compare_impls(cfg, naive_steps, data=trainer.data)
            cmp.pop("loss_curve")
            row["compare"] = cmp
            log(f"  {method:<11} fused vs naive, {naive_steps} interleaved steps "
                f"in {time.perf_counter() - start:5.1f} s")
        rows.append(row)
    ref = rows[0]
    for row in rows:
        row["mmd_reduction"] = 1.0 - row["mmd"] / ref["mmd"] if ref["mmd"] > 0 else None
        row["coral_reduction"] = 1.0 - row["coral"] / ref["coral"] if ref["coral"] > 0 else None
    result = {"dataset": dataset, "seed": seed, "epochs": epochs,
              "iters_per_epoch": iters_per_epoch, "rows": rows}
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_demo_table(result: dict[str, Any]) -> str:
    """The demo's table as plain text."""
    head = (f"{'method':<12}{'target acc':>11}{'fused ms':>10}{'naive ms':>10}{'speed-up':>10}"
            f"{'loss gap':>10}{'MMD':>9}{'MMD red.':>10}{'CORAL red.':>11}")
    lines = [head, "-" * len(head)]
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
    for row in result["rows"]:
        c = row.get("compare")
        lines.append(
            f"{row['method']:<12}{row['target_acc']:>10.1f}%"
            + (f"{c['fused_ms']:>10.2f}{c['naive_ms']:>10.2f}{c['speedup']:>9.2f}x"
               f"{c['max_rel_gap']:>10.1e}" if c else f"{'-':>10}{'-':>10}{'-':>10}{'-':>10}")
            + f"{row['mmd']:>9.4f}{pct(row['mmd_reduction']):>10}{pct(row['coral_reduction']):>11}"
        )
    steps = next((r["compare"]["steps"] for r in result["rows"] if "compare" in r), 0)
    lines += [
        "",
        f"target acc: held-out target test split after {result['epochs']} x "
        f"{result['iters_per_epoch']} steps.  fused / naive ms:",
        "median training step with the dapkernels losses / the copied naive losses, measured",
        f"over the first {steps} steps of two same-seed runs stepped alternately.  loss gap:",
        "largest relative difference of their loss trajectories (float32 rounding, amplified",
        "by training).  MMD red., CORAL red.: discrepancy between the source and target",
        "evaluation features, relative to source-only.",
    ]
    return "\n".join(lines)


def plot_demo(path: Path, result: dict[str, Any]) -> None:
    """Bar charts: target accuracy per method, and fused vs naive median step time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["method"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(names, [r["target_acc"] for r in rows], color="tab:blue")
    ax1.set(ylabel="target test accuracy (%)", title=f"{result['dataset']}: target accuracy")
    for i, r in enumerate(rows):
        ax1.text(i, r["target_acc"] + 0.5, f"{r['target_acc']:.1f}", ha="center")
    adapt = [r for r in rows if "compare" in r]
    xs = range(len(adapt))
    ax2.bar([x - 0.2 for x in xs], [r["compare"]["fused_ms"] for r in adapt], 0.4,
            label="fused (dapkernels)")
    ax2.bar([x + 0.2 for x in xs], [r["compare"]["naive_ms"] for r in adapt], 0.4,
            label="naive (copied code)")
    ax2.set_xticks(list(xs), [r["method"] for r in adapt])
    ax2.set(ylabel="median step time (ms)", title="training step time")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def kernel_benchmark_table() -> str:
    """Quick forward+backward timing of our MK-MMD vs the naive patterns (batch 32 and 64)."""
    from .bench.mmd import IMPL_LABELS, IMPLS, quick_mmd_comparison

    rows = quick_mmd_comparison("cpu")
    head = f"{'batch':>7}{'d':>6}" + "".join(f"{IMPL_LABELS[i]:>14}" for i in IMPLS)
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for impl in IMPLS:
            t = row.get(f"{impl}_s")
            if t is None:
                cells.append(f"{'-':>14}")
            elif impl == "ours":
                cells.append(f"{t * 1e6:>11.0f} us")
            else:
                cells.append(f"{t * 1e6:>7.0f} us {row[f'speedup_{impl}']:>4.0f}x")
        lines.append(f"{row['b']:>3}+{row['b']:<3}{row['d']:>6}" + "".join(cells))
    lines.append("(median time; Nx = how many times slower than ours)")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        epochs, iters, naive_steps = 2, 20, 20
    else:
        epochs, iters, naive_steps = args.epochs, args.iters_per_epoch, args.naive_steps
    print(f"dapkernels demo: source-only, DAN, DANN, Deep CORAL on {args.dataset} "
          f"({epochs} x {iters} steps; fused vs naive losses compared over {naive_steps} steps)")
    start = time.perf_counter()
    result = run_demo(out, args.dataset, epochs, iters, naive_steps, args.seed)
    plot_demo(out / "demo.png", result)
    print()
    print(format_demo_table(result))
    if not args.no_bench:
        print("\nKernel micro-benchmark (forward + backward, unbiased MK-MMD, float32):")
        print(kernel_benchmark_table())
    print(f"\nwrote {out / 'demo.json'} and {out / 'demo.png'} "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


def add_demo_parser(subparsers: Any) -> None:
    """Adds ``demo`` to the ``dapkernels`` sub-parsers."""
    p = subparsers.add_parser(
        "demo",
        help="domain adaptation on digits with fused vs naive losses (about 2 minutes)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--dataset", choices=DIGITS_SHIFTS, default="digits-rotate",
                   help="embedded digits shift (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=6, help="epochs (default: %(default)s)")
    p.add_argument("--iters-per-epoch", type=int, default=100,
                   help="steps per epoch (default: %(default)s)")
    p.add_argument("--naive-steps", type=int, default=100,
                   help="steps of each interleaved fused-vs-naive comparison "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--out", default="demo_out", help="output directory (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds: 2 epochs of 20 steps (smoke test)")
    p.add_argument("--no-bench", action="store_true", help="skip the kernel micro-benchmark")
    p.set_defaults(func=_run)
