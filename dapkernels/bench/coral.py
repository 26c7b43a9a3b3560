"""``dapkernels bench coral``: fused Deep CORAL vs the naive d×d version and the torch Gram form.

Every case is forward + backward (``torch.autograd.grad`` of the loss w.r.t. both batches),
float32, ``n`` rows per domain and ``d`` features, three implementations on the same inputs in
one process, timed in interleaved rounds (see :mod:`dapkernels.bench.runner`):

* ``ours``: :func:`dapkernels.coral` (one C++ call, Gram or d×d path by cost);
* ``naive``: :func:`dapkernels.baselines.naive_coral`, two d×d covariances + autograd;
* ``gram-torch``: the Gram formula of ``reference.coral_formula`` in plain torch, with
  autograd.

Speed-ups are naive time / our time from medians (and from minima, less sensitive to other
load on the machine).  Peak memory is the growth during one steady-state call beyond the
inputs, gradients included.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import backends
from ..baselines import naive_coral
from ..functional import coral
from .options import parse_cases, run_options
from .plots import write_bar_chart
from .report import format_bytes, format_seconds, format_table, write_json
from .runner import Case, run_benchmark

__all__ = ["IMPLS", "FULL_CASES", "gram_torch_coral", "make_case", "add_arguments", "run"]

IMPLS = ("ours", "naive", "gram-torch")
#: (rows per domain, d) of a full run.
FULL_CASES = ((32, 256), (32, 2048), (64, 8192), (128, 512), (256, 64))
QUICK_CASES = ((32, 256), (16, 512))


def gram_torch_coral(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """The Gram formula of ``reference.coral_formula`` in plain torch (autograd: backward)."""
    d = f_s.shape[1]
    a, b = f_s.shape[0] - 1, f_t.shape[0] - 1
    xs = f_s - f_s.mean(dim=0, keepdim=True)
    xt = f_t - f_t.mean(dim=0, keepdim=True)
    value = ((xs @ xs.T).square().sum() / a**2 + (xt @ xt.T).square().sum() / b**2
             - 2 * (xs @ xt.T).square().sum() / (a * b))
    return value / (4 * d * d)


_LOSSES = {"ours": coral, "naive": naive_coral, "gram-torch": gram_torch_coral}


def make_case(device: torch.device, n: int, d: int, impls: Sequence[str], seed: int = 0) -> dict:
    """Factory of :class:`~dapkernels.bench.runner.Case`: ``{impl: fwd+bwd step}``."""
    g = torch.Generator().manual_seed(seed)
    f_s = torch.randn(n, d, generator=g).to(device).requires_grad_()
    f_t = (1.5 * torch.randn(n, d, generator=g) + 0.3).to(device).requires_grad_()

    def step_of(loss_fn):
        def step() -> None:
            torch.autograd.grad(loss_fn(f_s, f_t), (f_s, f_t))
        return step

    return {impl: step_of(_LOSSES[impl]) for impl in impls}


def _estimate_bytes(n: int, d: int, impls: Sequence[str]) -> int:
    """Hungriest implementation: naive keeps ~4 d×d float32 buffers alive in its backward."""
    return (4 * d * d * 4 if "naive" in impls else 0) + 16 * n * d * 4


def _summarize(results: Sequence[dict]) -> list:
    rows = []
    for res in results:
        row = {"case": res["group"], "status": res["status"]}
        if res["status"] == "ok":
            t = res["timings"]
            for impl, timing in t.items():
                row[f"{impl}_median_s"] = timing["median_s"]
                row[f"{impl}_min_s"] = timing["min_s"]
                row[f"{impl}_peak_bytes"] = timing["peak_mem_bytes"]
            for impl in t:
                if impl != "ours":
                    row[f"speedup_vs_{impl}"] = t[impl]["median_s"] / t["ours"]["median_s"]
                    row[f"speedup_vs_{impl}_min"] = t[impl]["min_s"] / t["ours"]["min_s"]
        else:
            row["reason"] = res.get("reason", "")
        row["n"], row["d"] = res["params"]["n"], res["params"]["d"]
        rows.append(row)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench coral`` (the common ones are added by :mod:`dapkernels.bench.cli`)."""
    parser.add_argument("--cases", nargs="+", metavar="N:D",
                        help="rows per domain and features, e.g. 32:2048 (default: "
                             + " ".join(f"{n}:{d}" for n, d in FULL_CASES) + ")")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS),
                        help="implementations to compare (default: all)")


def run(args: argparse.Namespace) -> int:
    """Runs ``bench coral``: prints a table, writes ``coral.json`` and ``coral.png``."""
    opts = run_options(args)
    device, budget = opts.device, opts.time_budget_s
    sizes = parse_cases(args.cases, args.quick, QUICK_CASES, FULL_CASES)
    impls = ["ours"] + [i for i in IMPLS if i in args.impls and i != "ours"]
    cases = [
        Case(group=f"b={n}+{n} d={d}", name="ours", factory="dapkernels.bench.coral:make_case",
             params={"n": n, "d": d, "impls": impls}, est_bytes=_estimate_bytes(n, d, impls),
             warmup=2 if d < 4096 else 1, min_repeats=3, time_budget_s=budget)
        for n, d in sizes
    ]
    results, machine = run_benchmark(cases, opts)
    rows = _summarize(results)
    columns = [("case", "case")]
    for impl in impls:
        columns.append((f"{impl} (median)", f"{impl}_median_s"))
    columns += [("vs naive", "speedup_vs_naive"), ("vs naive (min)", "speedup_vs_naive_min"),
                ("ours peak", "ours_peak_bytes")]
    if "naive" in impls:
        columns.append(("naive peak", "naive_peak_bytes"))
    table = []
    for row in rows:
        cells = {}
        for _, key in columns:
            v = row.get(key)
            if key.endswith("_s"):
                cells[key] = format_seconds(v)
            elif key.endswith("_bytes"):
                cells[key] = format_bytes(v)
            elif key.startswith("speedup"):
                cells[key] = "-" if v is None else f"{v:.1f}x"
            else:
                cells[key] = "-" if v is None else str(v)
        table.append(cells)
    print(format_table(table, columns))
    out = Path(args.out if args.out is not None else f"bench-results/coral_{device.type}")
    payload = {
        "benchmark": "coral", "machine": machine,
        "config": {"device": str(device), "dtype": "float32", "impls": impls,
                   "ours_backend": backends.resolve(None, device), "quick": bool(args.quick),
                   "isolate": opts.isolate, "time_budget_s": budget,
                   "cases": [list(c) for c in sizes]},
        "summary": rows, "results": results,
    }
    json_path = write_json(out / "coral.json", payload)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    panels = [{
        "title": "CORAL forward+backward, float32 (median)", "ylabel": "seconds",
        "xlabels": [r["case"] for r in ok_rows],
        "series": {impl: [r.get(f"{impl}_median_s") for r in ok_rows] for impl in impls},
    }, {
        "title": "peak memory growth of one call", "ylabel": "bytes",
        "xlabels": [r["case"] for r in ok_rows],
        "series": {impl: [r.get(f"{impl}_peak_bytes") or None for r in ok_rows]
                   for impl in impls},
    }]
    png_path = write_bar_chart(out / "coral.png", panels,
                               title=f"dapkernels bench coral ({machine.get('cpu', '')})")
    print(f"\nwrote {json_path} and {png_path}")
    return 0 if all(r["status"] != "failed" for r in results) else 1
