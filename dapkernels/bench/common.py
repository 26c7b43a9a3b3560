"""Benchmark framework shared by the ``dapkernels bench <op>`` commands (mmd, coral, grl, …).

A benchmark is a list of :class:`Case` objects.  A case names a *factory*, an importable
``"package.module:function"`` called as ``factory(device, **params)``; the factory builds the
inputs once and returns an ordered ``dict`` ``{label: callable}`` of zero-argument callables,
each running one complete step on those inputs (typically forward + backward of one
implementation; or a reference such as a GEMM reference time).  All callables of a case are measured
side by side in one process, so the figures of a case are directly comparable.

:func:`run_cases` measures every case and returns plain dicts (JSON-ready):

* **Peak memory growth** (:func:`measure_peak_growth`) of one steady-state call of each
  callable, in order, each right after its own ``warmup`` calls — growth beyond what exists
  at that moment (the inputs), outputs of the step (gradients) included.
  - CPU: freed heap is first handed back to the OS with glibc ``malloc_trim(0)`` (so memory
    that malloc cached from earlier calls can neither hide nor inflate the growth), the peak
    resident set size ``VmHWM`` is reset by writing ``5`` to ``/proc/self/clear_refs``, and
    growth = ``VmHWM`` after the call − ``VmRSS`` before it.  By default every case runs in a
    fresh Python subprocess (``isolate=True``).  Where ``clear_refs`` is not writable, the
    fallback ``resource.getrusage().ru_maxrss`` gives a lower bound (marked in the results).
  - CUDA: ``torch.cuda.reset_peak_memory_stats``; growth = ``max_memory_allocated`` −
    ``memory_allocated`` before the call (the caching allocator's view; cases run in process).
* **Time** (:func:`time_interleaved`): the callables are timed in interleaved rounds (each
  round times every callable for about ``slice_s`` seconds), until each has ``min_repeats``
  samples and ``time_budget_s`` seconds per callable have passed (at most ``max_repeats``
  samples each), so that a change of machine load hits all of them alike.  Median and min
  are reported.  CPU: ``time.perf_counter`` around the call (CPU ops are synchronous).
  CUDA: CUDA events around the call, then ``torch.cuda.synchronize``.  The memory call is
  counted as the first sample.
* **Skipping**: a case carries an estimate of its peak memory; where it exceeds the budget
  (default half the memory available when the run starts) it is not run and is reported as
  ``"skipped"`` with the reason (:func:`skipped_result` builds such an entry for benchmarks
  that decide per implementation).  A subprocess that dies (e.g. killed for memory) is
  reported as ``"failed"``.

Output helpers: :func:`format_table` (plain-text table), :func:`write_json` (with
:func:`machine_info`), :func:`write_bar_chart` (matplotlib, Agg backend, PNG).

Running a case in a subprocess: ``python -m dapkernels.bench.common`` reads one JSON request
on stdin and prints one JSON result line prefixed with ``RESULT:``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Case",
    "run_cases",
    "run_case",
    "skipped_result",
    "time_callable",
    "time_interleaved",
    "measure_peak_growth",
    "available_memory_bytes",
    "machine_info",
    "format_table",
    "format_seconds",
    "format_bytes",
    "write_json",
    "write_bar_chart",
]

_RESULT_PREFIX = "RESULT:"
GiB = 1024**3
MiB = 1024**2


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


# --------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(fn: Callable[[], object], device: torch.device) -> float:
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
                taken[label].append(_timed_call(fn, device))
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
        _sync(device)
    return time_interleaved({"fn": fn}, device, min_repeats, max_repeats, time_budget_s)["fn"]


# --------------------------------------------------------------------------------------------
# memory


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_peak_growth(fn: Callable[[], object], device: torch.device) -> tuple:
    """Runs ``fn`` once and returns ``(peak_growth_bytes, method, seconds)``.

    See the module docstring for the method on each device.  Call it after a warm-up call so
    that one-time initialisation (thread pools, lazy imports) is not counted.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        seconds = _timed_call(fn, device)
        peak = torch.cuda.max_memory_allocated(device)
        return max(0, peak - base), "cuda max_memory_allocated", seconds
    _malloc_trim()
    rss = _status_kib("VmRSS")
    if _reset_peak_rss():
        seconds = _timed_call(fn, device)
        return max(0, _status_kib("VmHWM") - rss) * 1024, "VmHWM (clear_refs)", seconds
    seconds = _timed_call(fn, device)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, maxrss - rss) * 1024, "ru_maxrss (lower bound)", seconds


def available_memory_bytes(device: torch.device) -> int:
    """Memory a case may use now: ``MemAvailable`` (CPU) or free device memory (CUDA)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


# --------------------------------------------------------------------------------------------
# running cases


def _load_factory(spec: str) -> Callable[..., dict]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _measure_in_process(request: dict) -> dict:
    """Builds the case's callables and measures them (the worker body)."""
    device = torch.device(request["device"])
    if request.get("num_threads"):
        torch.set_num_threads(int(request["num_threads"]))
    callables = _load_factory(request["factory"])(device, **request["params"])
    memory, first = {}, {}
    for label, fn in callables.items():
        for _ in range(request["warmup"]):
            fn()
            _sync(device)
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


def _run_subprocess(request: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "dapkernels.bench.common"],
        input=json.dumps(request), capture_output=True, text=True, check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return json.loads(line[len(_RESULT_PREFIX):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    reason = f"worker exited with code {proc.returncode}"
    if proc.returncode in (-9, 137):
        reason += " (killed, probably out of memory)"
    return {"status": "failed", "reason": reason + (": " + " | ".join(tail) if tail else "")}


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
        result.update(_run_subprocess(request))
    else:
        try:
            result.update(_measure_in_process(request))
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


# --------------------------------------------------------------------------------------------
# output


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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _core_info() -> dict:
    """Instruction-set copy the C++ core dispatches to, its cap, and whether it has OpenMP."""
    info = {"isa_cap": os.environ.get("DAPKERNELS_ISA") or None}
    try:
        from .. import _C
    except ImportError:
        return {**info, "core_isa": None, "core_openmp": None}
    return {**info, "core_isa": _C.isa, "core_openmp": bool(_C.openmp)}


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
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **_core_info(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "mem_available_bytes": available_memory_bytes(torch.device("cpu")),
        "device": str(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "git": _git_revision(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Writes ``payload`` as indented JSON (creating parent folders) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return path


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


def _worker_main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        result = _measure_in_process(request)
    except torch.OutOfMemoryError as exc:
        result = {"status": "failed", "reason": f"out of memory: {exc}".splitlines()[0]}
    print(_RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main())
