"""Timing of benchmark callables: interleaved rounds, so a change of machine load hits all alike.

The callables of one case are timed in rounds (each round times every callable for about
``slice_s`` seconds) until each has ``min_repeats`` samples and ``time_budget_s`` seconds per
callable have passed (at most ``max_repeats`` samples each).  Median and minimum are reported.
CPU: ``time.perf_counter`` around the call (CPU ops are synchronous).  CUDA: CUDA events
around the call, then ``torch.cuda.synchronize``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["sync", "timed_call", "time_interleaved", "time_callable"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by one call of ``fn`` (CUDA: measured with events)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(
    callables: dict,
    device: torch.device,
    min_repeats: int = 3,
    max_repeats: int = 100_000,
    time_budget_s: float = 1.0,
    samples: dict | None = None,
    slice_s: float = 0.05,
) -> dict:
    """Times several callables in interleaved rounds (see the module docstring).

    Args:
        callables: ``{label: zero-argument callable}``, already warmed up.
        device: where they run (selects the clock).
        min_repeats: at least this many samples of each.
        max_repeats: at most this many samples of each.
        time_budget_s: seconds per callable; rounds continue until ``len(callables)`` times
            this has passed.
        samples: samples already taken per label (e.g. by the memory call), counted in.
        slice_s: a round gives each callable about ``max(slice_s, t_slow / 4)`` seconds, where
            ``t_slow`` is the slowest callable's fastest sample (so fast callables keep being
            sampled between the calls of a slow one); at least one call each.

    Returns:
        ``{label: {"median_s", "min_s", "mean_s", "repeats"}}``.
    """
    taken = {label: list((samples or {}).get(label, ())) for label in callables}
    total = time_budget_s * len(callables)
    start = time.perf_counter()
    while True:
        full = all(len(v) >= max_repeats for v in taken.values())
        enough = all(len(v) >= min_repeats for v in taken.values())
        if full or (enough and time.perf_counter() - start >= total):
            break
        fastest = {label: min(v) for label, v in taken.items() if v}
        share = max([slice_s] + [0.25 * t for t in fastest.values()])
        for label, fn in callables.items():
            per_round = max(1, int(share / fastest[label])) if label in fastest else 1
            for _ in range(min(per_round, max_repeats - len(taken[label]))):
                taken[label].append(timed_call(fn, device))
    return {
        label: {"median_s": statistics.median(v), "min_s": min(v),
                "mean_s": statistics.fmean(v), "repeats": len(v)}
        for label, v in taken.items()
    }


def time_callable(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 100_000,
    time_budget_s: float = 1.0,
) -> dict:
    """Times one callable: ``warmup`` untimed calls, then as :func:`time_interleaved`.

    Returns:
        ``{"median_s", "min_s", "mean_s", "repeats"}``.
    """
    for _ in range(warmup):
        fn()
        sync(device)
    return time_interleaved({"fn": fn}, device, min_repeats, max_repeats, time_budget_s)["fn"]
