"""What a run leaves on disk: per-epoch JSON / CSV, the per-step loss curve, PNG plots."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_json", "write_csv", "plot_curves"]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes ``data`` as indented JSON, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Writes dict rows (columns of the first row) as CSV, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        if rows:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    os.replace(tmp, path)


def plot_curves(path: Path, title: str, steps: list[dict[str, Any]],
                epochs: list[dict[str, Any]]) -> None:
    """2×2 PNG: step losses, accuracies, MMD and CORAL of the evaluation features per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0, 0]
    x = [s["step"] for s in steps]
    for key in ("loss", "cls_loss", "transfer_loss"):
        ax.plot(x, [s[key] for s in steps], label=key, lw=0.8)
    ax.set(xlabel="step", ylabel="loss", title="training losses")
    ax.legend()
    e = [r["epoch"] for r in epochs]
    ax = axes[0, 1]
    for key in ("source_acc", "target_acc"):
        if all(r[key] is not None for r in epochs):
            ax.plot(e, [r[key] for r in epochs], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax.legend()
    for ax, key in ((axes[1, 0], "mmd"), (axes[1, 1], "coral")):
        ax.plot(e, [r[key] for r in epochs], marker="o")
        ax.set(xlabel="epoch", ylabel=key, title=f"{key} between evaluation features")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
