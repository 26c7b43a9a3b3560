"""Rendering results: human-readable times and sizes, plain-text tables, JSON files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .memory import GiB, MiB

__all__ = ["format_seconds", "format_bytes", "format_table", "write_json"]


def format_seconds(seconds: float | None) -> str:
    """``1.23 ms``-style rendering (``-`` for None)."""
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def format_bytes(num: float | None) -> str:
    """``12.3 MiB``-style rendering (``-`` for None)."""
    if num is None:
        return "-"
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if num >= scale:
            return f"{num / scale:.3g} {unit}"
    return f"{int(num)} B"


def format_table(rows: Sequence[dict], columns: Sequence[tuple]) -> str:
    """Renders ``rows`` as a plain-text table.

    Args:
        rows: one dict per line.
        columns: ``(header, key)`` pairs, where key is a dict key or a callable ``row -> str``.
    """
    cells = [[h for h, _ in columns]]
    for row in rows:
        line = []
        for _, key in columns:
            value = key(row) if callable(key) else row.get(key, "")
            line.append("" if value is None else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for i, line in enumerate(cells):
        out.append("  ".join(c.rjust(w) if j else c.ljust(w)
                             for j, (c, w) in enumerate(zip(line, widths))).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Writes ``payload`` as indented JSON (creating parent folders) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path
