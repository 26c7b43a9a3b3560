"""Benchmark cases and the loop that measures them (docs/design.md §Benchmarks).

A benchmark is a list of :class:`Case` objects.  A case names a *factory*, an importable
``"package.module:function"`` called as ``factory(device, **params)``; the factory builds the
inputs once and returns an ordered ``dict`` ``{label: callable}`` of zero-argument callables,
each running one complete step on those inputs (typically forward + backward of one
implementation, or a reference such as a GEMM).  All callables of a case are measured side by
side in one process (:mod:`.measure`), so the figures of a case are directly comparable; on
CPU each case runs by default in a fresh subprocess (:mod:`.subprocess_protocol`).

A case carries an estimate of its peak memory; where it exceeds the budget (default half the
memory available when the run starts) it is not run and is reported as ``"skipped"`` with the
reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .machine import machine_info, machine_summary
from .measure import measure_request
from .memory import available_memory_bytes
from .options import RunOptions
from .report import format_bytes, format_seconds
from .subprocess_protocol import run_in_subprocess

__all__ = ["Case", "run_case", "run_cases", "run_benchmark", "skipped_result"]


@dataclass
class Case:
    """One measurement: a factory building the callables, its parameters and its limits.

    Attributes:
        group: label shared by cases that are compared with each other (e.g. ``"b=32 d=256"``).
        name: label of this implementation inside the group (e.g. ``"ours"``).
        factory: ``"package.module:function"``; called as ``factory(device, **params)`` and
            returning an ordered dict ``{label: callable}`` (the first is the *primary* one,
            whose figures are copied to the top level of the result).
        params: JSON-serialisable keyword arguments of the factory (also stored in results).
        est_bytes: estimated peak memory of one call of the hungriest callable (to skip it).
        warmup: untimed calls of each callable before measuring.
        min_repeats: minimum number of timed calls of each callable.
        max_repeats: maximum number of timed calls of each callable.
        time_budget_s: seconds of timing per callable (rounds go on until all is spent).
    """

    group: str
    name: str
    factory: str
    params: dict = field(default_factory=dict)
    est_bytes: int = 0
    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 100_000
    time_budget_s: float = 1.0


def run_case(case: Case, device: torch.device, isolate: bool, mem_budget_bytes: int) -> dict:
    """Measures one case (or skips it when its estimate exceeds ``mem_budget_bytes``)."""
    result: dict[str, Any] = {
        "group": case.group, "name": case.name, "params": dict(case.params),
        "est_bytes": int(case.est_bytes),
    }
    if case.est_bytes > mem_budget_bytes:
        return skipped_result(case.group, case.name, case.params, case.est_bytes,
                              mem_budget_bytes)
    request = {
        "factory": case.factory, "params": case.params, "device": str(device),
        "warmup": case.warmup, "min_repeats": case.min_repeats,
        "max_repeats": case.max_repeats, "time_budget_s": case.time_budget_s,
        "num_threads": torch.get_num_threads(),
    }
    if isolate:
        result.update(run_in_subprocess(request))
    else:
        try:
            result.update(measure_request(request))
        except torch.OutOfMemoryError as exc:
            result.update(status="failed", reason=f"out of memory: {exc}".splitlines()[0])
    if result["status"] == "ok":
        primary = next(iter(result["timings"].values()))
        for key in ("median_s", "min_s", "peak_mem_bytes", "mem_method"):
            result[key] = primary[key]
    return result


def skipped_result(group: str, name: str, params: dict, est_bytes: int, budget: int) -> dict:
    """A ``"skipped"`` result entry, for a benchmark that decides per implementation."""
    return {"group": group, "name": name, "params": dict(params), "est_bytes": int(est_bytes),
            "status": "skipped",
            "reason": f"needs ~{format_bytes(est_bytes)} > budget {format_bytes(budget)}"}


def run_cases(
    cases: Sequence[Case],
    device: torch.device,
    isolate: bool | None = None,
    mem_budget_bytes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list:
    """Measures ``cases`` one after the other and returns one result dict per case.

    Args:
        cases: what to measure.
        device: ``cpu`` or ``cuda``.
        isolate: run each case in a fresh subprocess (default: True on CPU, False on CUDA).
        mem_budget_bytes: skip cases estimated above this (default: half of the memory
            available when the run starts).
        progress: called with a one-line message before and after each case.

    Returns:
        Dicts with ``group``, ``name``, ``params``, ``est_bytes``, ``status`` (``ok``,
        ``skipped``, ``failed``) and, when ``ok``, ``timings`` (per callable label:
        ``median_s``, ``min_s``, ``mean_s``, ``repeats``, ``peak_mem_bytes``,
        ``mem_method``) plus those four of the primary callable at the top level; otherwise
        ``reason``.
    """
    if isolate is None:
        isolate = device.type == "cpu"
    if mem_budget_bytes is None:
        mem_budget_bytes = available_memory_bytes(device) // 2
    results = []
    for case in cases:
        if progress is not None:
            progress(f"[{case.group}] {case.name} …")
        res = run_case(case, device, isolate, mem_budget_bytes)
        if progress is not None:
            if res["status"] == "ok":
                progress(f"[{case.group}] " + "; ".join(
                    f"{label}: median {format_seconds(t['median_s'])} "
                    f"(min {format_seconds(t['min_s'])}, {t['repeats']} runs), "
                    f"peak +{format_bytes(t['peak_mem_bytes'])}"
                    for label, t in res["timings"].items()))
            else:
                progress(f"[{case.group}] {case.name}: {res['status']} ({res['reason']})")
        results.append(res)
    return results


def run_benchmark(cases: Sequence[Case], opts: RunOptions) -> tuple[list, dict]:
    """What every ``dapkernels bench <name>`` does around its cases: prints the machine line,
    measures ``cases`` with the run's options and records the load average at the end.

    Returns:
        ``(results, machine)``: :func:`run_cases`'s results and :func:`machine_info`'s dict.
    """
    machine = machine_info(opts.device)
    print(machine_summary(machine))
    results = run_cases(cases, opts.device, isolate=opts.isolate,
                        mem_budget_bytes=opts.mem_budget_bytes, progress=opts.progress)
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = list(os.getloadavg())
    return results, machine
