"""Measuring one case in the current process: build its callables, then memory, then time.

A request is a JSON-ready dict: ``factory`` (``"package.module:function"``, called as
``factory(device, **params)`` and returning ``{label: zero-argument callable}``), ``params``,
``device``, ``warmup``, ``min_repeats``, ``max_repeats``, ``time_budget_s`` and
``num_threads``.  Each callable gets ``warmup`` untimed calls, then one call measured for peak
memory growth (:mod:`.memory`, counted as its first timing sample); then all are timed
together in interleaved rounds (:mod:`.timing`).
"""

from __future__ import annotations

import gc
import importlib
from collections.abc import Callable

import torch

from .memory import measure_peak_growth
from .timing import sync, time_interleaved

__all__ = ["measure_request"]


def _load_factory(spec: str) -> Callable[..., dict]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def measure_request(request: dict) -> dict:
    """Builds the case's callables and measures them (the worker body)."""
    device = torch.device(request["device"])
    if request.get("num_threads"):
        torch.set_num_threads(int(request["num_threads"]))
    callables = _load_factory(request["factory"])(device, **request["params"])
    memory, first = {}, {}
    for label, fn in callables.items():
        for _ in range(request["warmup"]):
            fn()
            sync(device)
        growth, method, seconds = measure_peak_growth(fn, device)
        memory[label] = {"peak_mem_bytes": growth, "mem_method": method}
        first[label] = [seconds]
    timings = time_interleaved(
        callables, device, min_repeats=request["min_repeats"],
        max_repeats=request["max_repeats"], time_budget_s=request["time_budget_s"],
        samples=first,
    )
    for label, timing in timings.items():
        timing.update(memory[label])
    del callables
    gc.collect()
    return {"status": "ok", "timings": timings}
