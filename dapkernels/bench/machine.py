"""Where and when a run happened: the facts its figures depend on, recorded with every result."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .._machine import core_info, cpu_model
from .memory import available_memory_bytes

__all__ = ["machine_info", "machine_summary"]


def machine_summary(info: dict) -> str:
    """One printed line naming what a run's figures depend on: CPU model, core ISA, threads."""
    cap = f" (DAPKERNELS_ISA={info['isa_cap']})" if info.get("isa_cap") else ""
    line = (f"machine: {info['cpu']}, {info['cpu_count']} cores, C++ core ISA "
            f"{info.get('core_isa')}{cap}, torch threads {info['torch_threads']}")
    if info.get("gpu"):
        line += f", GPU {info['gpu']}"
    return line


def _git_revision() -> dict | None:
    """Commit of the source tree the package runs from, and whether it has local changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "csrc", "dapkernels"],
                               cwd=root, text=True, capture_output=True, check=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": rev, "local_changes": bool(dirty)}


def machine_info(device: torch.device) -> dict:
    """Where and when the run happened: CPU, cores, threads, memory, GPU, versions, command,
    and the git commit of the source tree when it is a checkout."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **core_info(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "mem_available_bytes": available_memory_bytes(torch.device("cpu")),
        "device": str(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "git": _git_revision(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
