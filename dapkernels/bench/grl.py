"""``dapkernels bench grl``: cost of gradient reversal inside a DANN-style MLP step.

One step = forward of a 3-layer MLP (``Linear(d, h) → ReLU → Linear(h, h) → ReLU →
Linear(h, 1)``) on the (batch, d) features passed through the layer under test, ``sum()``,
and ``torch.autograd.grad`` w.r.t. the features and all parameters.  Layers compared on the
same inputs in one process, timed in interleaved rounds:

* ``identity``: ``x.view_as(x)`` (the floor: no reversal at all);
* ``ours``: :func:`dapkernels.grad_reverse` (a view forward, ``−coeff · grad`` backward);
* ``ours-warmstart``: :class:`dapkernels.WarmStartGradientReversal` (coefficient from a buffer);
* ``naive``: ``x * 1.0`` forward, ``grad.neg() * coeff`` backward.

Overhead = time / identity time − 1, from medians (and minima).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ..baselines import naive_grad_reverse
from ..functional import grad_reverse
from ..losses import WarmStartGradientReversal
from .options import parse_cases, run_options
from .plots import write_bar_chart
from .report import format_seconds, format_table, write_json
from .runner import Case, run_benchmark

__all__ = ["LAYERS", "FULL_CASES", "make_case", "add_arguments", "run"]

LAYERS = ("identity", "ours", "ours-warmstart", "naive")
#: (batch, d, hidden): ResNet-50 features into a DANN discriminator, then a small layer.
FULL_CASES = ((64, 2048, 1024), (32, 256, 256))
QUICK_CASES = ((16, 64, 64),)


def make_case(device: torch.device, batch: int, d: int, hidden: int, seed: int = 0) -> dict:
    """Factory of :class:`~dapkernels.bench.runner.Case`: ``{layer: MLP step}``."""
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                        nn.Linear(hidden, 1)).to(device)
    x = torch.randn(batch, d, device=device, requires_grad=True)
    inputs = [x, *mlp.parameters()]
    warm = WarmStartGradientReversal(max_iters=1000).to(device)
    layers = {
        "identity": lambda v: v.view_as(v),
        "ours": lambda v: grad_reverse(v, 1.0),
        "ours-warmstart": warm,
        "naive": lambda v: naive_grad_reverse(v, 1.0),
    }

    def step_of(layer):
        def step() -> None:
            torch.autograd.grad(mlp(layer(x)).sum(), inputs)
        return step

    return {name: step_of(layers[name]) for name in LAYERS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench grl`` (the common ones are added by :mod:`dapkernels.bench.cli`)."""
    parser.add_argument("--cases", nargs="+", metavar="B:D:H",
                        help="batch, features, hidden width (default: "
                             + " ".join(":".join(map(str, c)) for c in FULL_CASES) + ")")


def run(args: argparse.Namespace) -> int:
    """Runs ``bench grl``: prints a table, writes ``grl.json`` and ``grl.png``."""
    opts = run_options(args, full_time_budget_s=3.0)
    device, budget = opts.device, opts.time_budget_s
    sizes = parse_cases(args.cases, args.quick, QUICK_CASES, FULL_CASES)
    cases = [
        Case(group=f"b={b} d={d} h={h}", name="identity", factory="dapkernels.bench.grl:make_case",
             params={"batch": b, "d": d, "hidden": h}, est_bytes=4 * (d * h + h * h) * 4,
             warmup=5, min_repeats=20, time_budget_s=budget)
        for b, d, h in sizes
    ]
    results, machine = run_benchmark(cases, opts)
    rows = []
    for res in results:
        row = {"case": res["group"], "status": res["status"], **res["params"]}
        if res["status"] == "ok":
            t = res["timings"]
            base, base_min = t["identity"]["median_s"], t["identity"]["min_s"]
            for name in LAYERS:
                row[f"{name}_median_s"] = t[name]["median_s"]
                row[f"{name}_min_s"] = t[name]["min_s"]
                row[f"{name}_overhead"] = t[name]["median_s"] / base - 1.0
                row[f"{name}_overhead_min"] = t[name]["min_s"] / base_min - 1.0
        else:
            row["reason"] = res.get("reason", "")
        rows.append(row)

    def pct(key):
        return lambda r: "-" if r.get(key) is None else f"{100 * r[key]:+.1f}%"

    def sec(key):
        return lambda r: format_seconds(r.get(key))

    columns = [("case", "case"), ("identity", sec("identity_median_s"))]
    for name in LAYERS[1:]:
        columns += [(name, sec(f"{name}_median_s")), (f"{name} ovh", pct(f"{name}_overhead")),
                    (f"{name} ovh (min)", pct(f"{name}_overhead_min"))]
    print(format_table(rows, columns))
    out = Path(args.out if args.out is not None else f"bench-results/grl_{device.type}")
    payload = {"benchmark": "grl", "machine": machine,
               "config": {"device": str(device), "dtype": "float32", "quick": bool(args.quick),
                          "isolate": opts.isolate, "time_budget_s": budget,
                          "cases": [list(c) for c in sizes]},
               "summary": rows, "results": results}
    json_path = write_json(out / "grl.json", payload)
    ok_rows = [r for r in rows if r["status"] == "ok"]
    panels = [{"title": "MLP step (forward+backward) with each layer, float32 (median)",
               "ylabel": "seconds", "xlabels": [r["case"] for r in ok_rows],
               "series": {n: [r[f"{n}_median_s"] for r in ok_rows] for n in LAYERS}}]
    png_path = write_bar_chart(out / "grl.png", panels,
                               title=f"dapkernels bench grl ({machine.get('cpu', '')})")
    print(f"\nwrote {json_path} and {png_path}")
    return 0 if all(r["status"] != "failed" for r in results) else 1
