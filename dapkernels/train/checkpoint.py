"""Atomic per-epoch checkpoints and the process-wide random-number state they carry."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state",
           "set_rng_state"]

_NAME = re.compile(r"epoch_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """The global torch, NumPy and Python random states."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, epoch: int, payload: dict[str, Any]) -> Path:
    """Writes ``directory/epoch_NNN.pt`` atomically (temp file + rename) and returns its path.

    A ``kill -9`` during the write leaves at worst a stray temp file, never a truncated
    checkpoint that :func:`latest_checkpoint` would pick.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"epoch_{epoch:03d}.pt"
    tmp = directory / f".epoch_{epoch:03d}.pt.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest epoch in ``directory``, or ``None``."""
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Loads a checkpoint written by :func:`save_checkpoint` (trusted, local file)."""
    return torch.load(path, map_location="cpu", weights_only=False)
