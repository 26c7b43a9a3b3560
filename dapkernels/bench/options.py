"""The options every ``dapkernels bench <name>`` shares: declared once, read once.

``--device cpu|cuda``, ``--out DIR``, ``--quick`` (a few small sizes, seconds: for CI, tests
and the demo), ``--time-budget S`` (seconds of repeats per measurement), ``--mem-budget-gib G``
(skip cases estimated above it), ``--isolate/--no-isolate`` (one subprocess per case; default
on for full CPU runs), ``--silent`` (no progress lines).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .memory import GiB, available_memory_bytes

__all__ = ["add_common_arguments", "RunOptions", "run_options", "parse_cases"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the common options to one benchmark's parser."""
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


@dataclass(frozen=True)
class RunOptions:
    """The common options of a run, with their defaults applied."""

    device: torch.device
    time_budget_s: float
    mem_budget_bytes: int
    isolate: bool
    progress: Callable[[str], None] | None


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_options(args: argparse.Namespace, full_time_budget_s: float = 2.0) -> RunOptions:
    """Reads the common options: time budget 0.3 s with ``--quick``, else
    ``full_time_budget_s``; memory budget half the memory available now; quick runs stay in
    process (seconds), full CPU runs isolate each case."""
    device = torch.device(args.device)
    quick = bool(args.quick)
    budget = args.time_budget if args.time_budget is not None else (
        0.3 if quick else full_time_budget_s)
    mem_budget = (int(args.mem_budget_gib * GiB) if args.mem_budget_gib is not None
                  else available_memory_bytes(device) // 2)
    isolate = args.isolate if args.isolate is not None else (device.type == "cpu" and not quick)
    return RunOptions(device, budget, mem_budget, isolate,
                      None if args.silent else _print_progress)


def parse_cases(given: Sequence[str] | None, quick: bool, quick_cases: Sequence[tuple],
                full_cases: Sequence[tuple]) -> list[tuple[int, ...]]:
    """``--cases`` given as ``"A:B[:C]"`` strings, else the quick or the full default."""
    if given:
        return [tuple(int(v) for v in c.split(":")) for c in given]
    return list(quick_cases if quick else full_cases)
