"""Grouped bar charts of benchmark results (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_bar_chart"]


def write_bar_chart(path: str | os.PathLike, panels: Sequence[dict], title: str = "") -> Path:
    """Writes a PNG with one grouped bar chart per panel (matplotlib, Agg backend).

    Args:
        path: output file.
        panels: dicts with ``title``, ``xlabels`` (one per group), ``series`` (``{label:
            [value or None per group]}``; None draws no bar), ``ylabel`` and optional ``logy``
            (default True) and ``hline`` (a reference value drawn as a dashed line).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.2 * len(panels)), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors: dict = {}  # one colour per series label across panels
    for ax, panel in zip(axes[:, 0], panels):
        xlabels, series = panel["xlabels"], panel["series"]
        width = 0.8 / max(1, len(series))
        for k, (label, values) in enumerate(series.items()):
            color = colors.setdefault(label, cycle[len(colors) % len(cycle)])
            xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values)
                  if v is not None]
            ys = [v for v in values if v is not None]
            ax.bar(xs, ys, width=width, label=label, color=color)
        if panel.get("hline") is not None:
            ax.axhline(panel["hline"], color="black", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(xlabels)))
        ax.set_xticklabels(xlabels, rotation=20, ha="right")
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.set_title(panel.get("title", ""))
        if panel.get("logy", True):
            ax.set_yscale("log")
        ax.legend(fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
