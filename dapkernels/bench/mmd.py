"""``dapkernels bench mmd``: fused MK-MMD vs the naive baselines and vs the GEMM reference time.

Two kinds of cases, all forward + backward (``torch.autograd.grad`` of the loss w.r.t. both
batches), float32, unbiased estimator, default bank (``GaussianKernels()``: α = 2^-3 … 2^1):

* **Comparison** at ``n = m = b`` per domain and feature size ``d``: ours (:func:`dapkernels.mmd`)
  vs the naive baselines of :mod:`dapkernels.baselines` — (a) ``tll``
  (Transfer-Learning-Library pattern), (b) ``deepda`` (DeepDA pattern), (c) ``torch`` (plain
  torch with GEMM distances) — on the same inputs, in one process, timed in interleaved
  rounds.  A baseline whose estimated memory exceeds the budget is skipped and the table says
  so.  Speed-ups are baseline time / our time, from medians (and from minima, less sensitive
  to other load on the machine).
* **GEMM reference** at ``N = n + m`` rows: our time divided by the reference time
  ``2 · t(Z @ Zᵀ)`` (a reference, not a floor: the fused sweep beats it),
  measured in the same process right after ours, on ``Z = cat(source, target)``.
  The GEMM writes into a preallocated output (allocation and page faults are not part of the
  reference).  When the N×N output would exceed 1 GiB (N > 16384 in float32; at N = 65536 it is
  16 GiB) it is computed as row blocks ``Z[i:i+B] @ Zᵀ`` of at most 1 GiB each, one after the
  other into the same buffer, and the reference is the total time of all blocks.

Peak memory is the growth during one steady-state call beyond the inputs (see
:mod:`dapkernels.bench.runner`); it includes the returned gradients (``grad_bytes`` = N·d·4 is
reported next to it).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .. import backends
from ..baselines import naive_mmd
from ..functional import mmd
from ..kernels import GaussianKernels
from .memory import GiB, MiB, available_memory_bytes
from .options import run_options
from .plots import write_bar_chart
from .report import format_bytes, format_seconds, format_table, write_json
from .runner import Case, run_benchmark, run_cases, skipped_result

__all__ = [
    "IMPLS",
    "IMPL_LABELS",
    "FULL_SIZES",
    "FULL_DIMS",
    "FULL_REF_CASES",
    "make_comparison",
    "make_gemm_ref",
    "estimate_bytes",
    "build_cases",
    "summarize",
    "report",
    "quick_mmd_comparison",
    "add_arguments",
    "run",
]

#: Implementations compared: ours, then (a), (b), (c).
IMPLS = ("ours", "tll", "deepda", "torch")
IMPL_LABELS = {"ours": "ours", "tll": "(a) TLL", "deepda": "(b) DeepDA", "torch": "(c) torch"}
FULL_SIZES = (32, 128, 512, 2048)
FULL_DIMS = (256, 2048)
FULL_REF_CASES = ("16384:256", "65536:256", "65536:64")
QUICK_SIZES = (32, 64)
QUICK_DIMS = (256,)
QUICK_REF_CASES = ("1024:256",)
_REF_BLOCK_BYTES = GiB
_ESTIMATOR = "unbiased"
_FACTORY = "dapkernels.bench.mmd"


def _inputs(device: torch.device, n: int, m: int, d: int, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(n, d, generator=gen)
    t = torch.randn(m, d, generator=gen) * 1.1 + 0.1
    return s.to(device).requires_grad_(), t.to(device).requires_grad_()


def _step(loss_fn: Callable, s: torch.Tensor, t: torch.Tensor) -> Callable[[], object]:
    def step() -> None:
        torch.autograd.grad(loss_fn(s, t), (s, t))

    return step


def _loss(impl: str) -> Callable:
    kernels = GaussianKernels()
    if impl == "ours":
        return lambda s, t: mmd(s, t, kernels=kernels, estimator=_ESTIMATOR)
    if impl in IMPLS:
        return lambda s, t: naive_mmd(s, t, kernels, _ESTIMATOR, pattern=impl)
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def make_comparison(
    device: torch.device, impls: Sequence[str], n: int, m: int, d: int, seed: int = 0
) -> dict:
    """Factory of a comparison case: ``{impl: forward+backward step}``, all on the same inputs."""
    s, t = _inputs(device, n, m, d, seed)
    return {impl: _step(_loss(impl), s, t) for impl in impls}


def _ref_block_rows(n_total: int) -> int:
    return max(1, min(n_total, _REF_BLOCK_BYTES // (4 * n_total)))


def make_gemm_ref(device: torch.device, n_total: int, d: int, seed: int = 0) -> dict:
    """Factory of a reference case: ``{"ours": step, "gemm": Z @ Zᵀ (row blocks)}`` on one Z."""
    n = n_total // 2
    s, t = _inputs(device, n, n_total - n, d, seed)
    z = torch.cat([s.detach(), t.detach()])
    rows = _ref_block_rows(n_total)
    out = torch.empty(rows, n_total, device=device)
    zt = z.T

    def gemm() -> None:
        for i in range(0, n_total, rows):
            block = z[i : i + rows]
            torch.mm(block, zt, out=out[: block.shape[0]])

    return {"ours": _step(_loss("ours"), s, t), "gemm": gemm}


def _ours_fused(device: torch.device) -> bool:
    if device.type == "cpu":
        return backends.available("cpu")
    return backends.available("triton")


def estimate_bytes(impl: str, n_total: int, d: int, device: torch.device) -> int:
    """Peak memory of one forward+backward call (float32), from the tensors each keeps."""
    q, nn = len(GaussianKernels().alphas), n_total * n_total
    if impl == "ours":
        if _ours_fused(device):
            return 6 * n_total * d * 4 + 64 * MiB
        return (3 * q + 8) * nn * 8  # reference backend: dense float64 matrices
    if impl == "tll":  # one N×N×d difference kept per kernel + two transients
        return (q + 2) * nn * d * 4 + (q + 4) * nn * 4
    if impl == "deepda":  # one kept N×N×d difference + two transients
        return 3 * nn * d * 4 + (q + 4) * nn * 4
    return (2 * q + 8) * nn * 4


def _parse_ref_case(text: str) -> tuple:
    try:
        n_total, d = (int(v) for v in text.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"reference case must be N:d, got {text!r}") from exc
    if n_total < 4 or d < 1:
        raise argparse.ArgumentTypeError(f"reference case needs N >= 4 and d >= 1, got {text!r}")
    return n_total, d


def build_cases(
    device: torch.device,
    sizes: Sequence[int],
    dims: Sequence[int],
    ref_cases: Sequence[tuple],
    impls: Sequence[str] = IMPLS,
    time_budget_s: float = 2.0,
    mem_budget_bytes: int | None = None,
) -> tuple:
    """Cases to run and the skipped entries.

    One comparison case per ``(b, d)`` holding every implementation whose estimated memory
    fits ``mem_budget_bytes`` (default: half the memory available now), measured side by side;
    the others become ``"skipped"`` entries.  Then one reference case per ``(N, d)``.

    Returns:
        ``(cases, skipped)``: a list of :class:`~dapkernels.bench.runner.Case` and a list of
        result dicts.
    """
    if mem_budget_bytes is None:
        mem_budget_bytes = available_memory_bytes(device) // 2
    cases, skipped = [], []
    for d in dims:
        for b in sizes:
            group = f"b={b} d={d}"
            run = []
            for impl in impls:
                est = estimate_bytes(impl, 2 * b, d, device)
                if est > mem_budget_bytes:
                    params = {"impls": [impl], "n": b, "m": b, "d": d}
                    skipped.append(skipped_result(group, impl, params, est, mem_budget_bytes))
                else:
                    run.append((impl, est))
            if run:
                cases.append(Case(
                    group=group, name="comparison", factory=f"{_FACTORY}:make_comparison",
                    params={"impls": [i for i, _ in run], "n": b, "m": b, "d": d},
                    est_bytes=max(e for _, e in run), time_budget_s=time_budget_s,
                ))
    for n_total, d in ref_cases:
        big = n_total * n_total * d > 2**38
        cases.append(Case(
            group=f"N={n_total} d={d}", name="gemm_ref", factory=f"{_FACTORY}:make_gemm_ref",
            params={"n_total": n_total, "d": d},
            est_bytes=max(estimate_bytes("ours", n_total, d, device),
                          _ref_block_rows(n_total) * n_total * 4),
            min_repeats=2 if big else 3, time_budget_s=0.0 if big else time_budget_s,
        ))
    return cases, skipped


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def summarize(results: Sequence[dict]) -> dict:
    """Table rows from raw results: ``{"comparison": [...], "gemm_ref": [...]}``.

    Comparison rows: ``b``, ``d``, per impl ``<impl>_s`` (median seconds or None),
    ``<impl>_min_s`` (minimum), ``<impl>_mem`` (peak growth bytes or None), ``<impl>_note``
    (why it is missing) and per baseline ``speedup_<impl>`` = baseline median / our median and
    ``speedup_min_<impl>`` = baseline minimum / our minimum.  Reference rows: ``N``, ``d``,
    ``ours_s``, ``ref_s`` (2 × median GEMM), ``ratio`` (ours / ref, medians),
    ``ratio_min`` (from the minima), ``peak_mem_bytes``, ``grad_bytes``, ``block_rows``.
    """
    comparison: dict = {}
    ref = []
    for res in results:
        p = res["params"]
        ok = res["status"] == "ok"
        if res["name"] == "gemm_ref":
            row = {"N": p["n_total"], "d": p["d"], "status": res["status"],
                   "note": res.get("reason", ""), "grad_bytes": p["n_total"] * p["d"] * 4,
                   "block_rows": _ref_block_rows(p["n_total"]),
                   "ours_s": None, "ref_s": None, "ratio": None, "ratio_min": None,
                   "peak_mem_bytes": None}
            if ok:
                gemm = res["timings"]["gemm"]
                row.update(ours_s=res["median_s"], ref_s=2 * gemm["median_s"],
                           ratio=_ratio(res["median_s"], 2 * gemm["median_s"]),
                           ratio_min=_ratio(res["min_s"], 2 * gemm["min_s"]),
                           peak_mem_bytes=res["peak_mem_bytes"])
            ref.append(row)
            continue
        row = comparison.setdefault((p["n"], p["d"]), {"b": p["n"], "d": p["d"]})
        for impl in p["impls"]:
            timing = res["timings"][impl] if ok else {}
            row[f"{impl}_s"] = timing.get("median_s")
            row[f"{impl}_min_s"] = timing.get("min_s")
            row[f"{impl}_mem"] = timing.get("peak_mem_bytes")
            row[f"{impl}_note"] = "" if ok else f"{res['status']}: {res['reason']}"
    rows = [comparison[key] for key in sorted(comparison, key=lambda k: (k[1], k[0]))]
    for row in rows:
        for impl in IMPLS[1:]:
            row[f"speedup_{impl}"] = _ratio(row.get(f"{impl}_s"), row.get("ours_s"))
            row[f"speedup_min_{impl}"] = _ratio(row.get(f"{impl}_min_s"), row.get("ours_min_s"))
    return {"comparison": rows, "gemm_ref": ref}


def _speedup_cell(row: dict, impl: str) -> str:
    v, v_min = row.get(f"speedup_{impl}"), row.get(f"speedup_min_{impl}")
    if v is not None:
        return f"{v:.1f}x ({v_min:.1f}x)"
    note = row.get(f"{impl}_note", "")
    return "skipped" if note.startswith("skipped") else ("failed" if note else "-")


def report(summary: dict) -> str:
    """The printed report: comparison table, GEMM reference table, skip notes."""
    cols: list = [("b/domain", "b"), ("d", "d")]
    for impl in IMPLS:
        cols.append((f"{IMPL_LABELS[impl]} time",
                     lambda r, i=impl: format_seconds(r.get(f"{i}_s"))))
    for impl in IMPLS[1:]:
        cols.append((f"vs {IMPL_LABELS[impl]}", lambda r, i=impl: _speedup_cell(r, i)))
    for impl in IMPLS:
        cols.append((f"{IMPL_LABELS[impl]} mem", lambda r, i=impl: format_bytes(r.get(f"{i}_mem"))))
    parts = ["MMD forward+backward, float32, unbiased, default bank; "
             "vs X = X time / our time from medians (from minima)",
             format_table(summary["comparison"], cols)]
    notes = [f"  b={r['b']} d={r['d']} {IMPL_LABELS[i]}: {r[f'{i}_note']}"
             for r in summary["comparison"] for i in IMPLS if r.get(f"{i}_note")]
    if notes:
        parts += ["Not measured:"] + notes
    if summary["gemm_ref"]:
        fcols = [
            ("N", "N"), ("d", "d"),
            ("ours", lambda r: format_seconds(r["ours_s"])),
            ("GEMM ref. 2·t(ZZᵀ)", lambda r: format_seconds(r["ref_s"])),
            ("ours/ref", lambda r: "-" if r["ratio"] is None else f"{r['ratio']:.2f}"),
            ("(minima)", lambda r: "-" if r["ratio_min"] is None else f"{r['ratio_min']:.2f}"),
            ("peak growth", lambda r: format_bytes(r["peak_mem_bytes"])),
            ("gradient", lambda r: format_bytes(r["grad_bytes"])),
            ("GEMM rows/block", "block_rows"),
            ("status", lambda r: r["status"] if not r["note"] else f"{r['status']}: {r['note']}"),
        ]
        parts += ["", "Ours vs the GEMM reference time (same Z, same process)",
                  format_table(summary["gemm_ref"], fcols)]
    return "\n".join(parts)


def _chart_panels(summary: dict) -> list:
    comp = summary["comparison"]
    labels = [f"b={r['b']} d={r['d']}" for r in comp]
    panels = [
        {"title": "MMD forward+backward time (float32, unbiased)", "xlabels": labels,
         "ylabel": "seconds (median)",
         "series": {IMPL_LABELS[i]: [r.get(f"{i}_s") for r in comp] for i in IMPLS}},
        {"title": "Speed-up of ours (baseline time / our time)", "xlabels": labels,
         "ylabel": "x faster", "hline": 1.0,
         "series": {IMPL_LABELS[i]: [r.get(f"speedup_{i}") for r in comp] for i in IMPLS[1:]}},
    ]
    if summary["gemm_ref"]:
        panels.append({
            "title": "Ours / GEMM reference time 2·t(Z Zᵀ) (lower is better)", "logy": False,
            "xlabels": [f"N={r['N']} d={r['d']}" for r in summary["gemm_ref"]],
            "ylabel": "ratio", "hline": 1.0,
            "series": {"ours / ref": [r["ratio"] for r in summary["gemm_ref"]]},
        })
    return panels


def _finite(value: object) -> object:
    """JSON has no NaN/Inf: such floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def quick_mmd_comparison(
    device: str = "cpu", progress: Callable[[str], None] | None = None
) -> list:
    """A few-second comparison of ours vs (a), (b), (c) for the demo (in process).

    Returns:
        Comparison rows as in :func:`summarize` (batch 32 and 64 per domain, d = 256).
    """
    dev = torch.device(device)
    cases, skipped = build_cases(dev, QUICK_SIZES, QUICK_DIMS, (), time_budget_s=0.3)
    results = run_cases(cases, dev, isolate=False, progress=progress)
    return summarize(skipped + results)["comparison"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bench mmd`` (the common ones are added by :mod:`dapkernels.bench.cli`)."""
    parser.add_argument("--sizes", type=int, nargs="+", metavar="B",
                        help=f"batch per domain (default {' '.join(map(str, FULL_SIZES))}; "
                             f"--quick: {' '.join(map(str, QUICK_SIZES))})")
    parser.add_argument("--dims", type=int, nargs="+", metavar="D",
                        help=f"feature sizes (default {' '.join(map(str, FULL_DIMS))}; "
                             f"--quick: {' '.join(map(str, QUICK_DIMS))})")
    parser.add_argument("--ref-cases", type=_parse_ref_case, nargs="*", metavar="N:D",
                        help=f"ours vs GEMM reference time at N rows, d features (default "
                             f"{' '.join(FULL_REF_CASES)}; --quick: "
                             f"{' '.join(QUICK_REF_CASES)}); give none to skip")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS),
                        help="implementations to compare (default: all)")


def run(args: argparse.Namespace) -> int:
    """Runs ``bench mmd`` from parsed arguments: prints the report, writes JSON and PNG."""
    opts = run_options(args)
    device = opts.device
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    dims = args.dims or (QUICK_DIMS if args.quick else FULL_DIMS)
    if args.ref_cases is None:
        ref_cases = [_parse_ref_case(c)
                       for c in (QUICK_REF_CASES if args.quick else FULL_REF_CASES)]
    else:
        ref_cases = args.ref_cases
    impls = [i for i in IMPLS if i in args.impls]
    if "ours" not in impls:
        impls.insert(0, "ours")
    cases, skipped = build_cases(device, sizes, dims, ref_cases, impls,
                                 time_budget_s=opts.time_budget_s,
                                 mem_budget_bytes=opts.mem_budget_bytes)
    results, machine = run_benchmark(cases, opts)
    results = skipped + results
    summary = summarize(results)
    print(report(summary))
    out = Path(args.out if args.out is not None else f"bench-results/mmd_{device.type}")
    payload = {
        "benchmark": "mmd",
        "machine": machine,
        "config": {"device": str(device), "dtype": "float32", "estimator": _ESTIMATOR,
                   "kernels": {"alphas": list(GaussianKernels().alphas)},
                   "ours_backend": backends.resolve(None, device), "quick": bool(args.quick),
                   "isolate": opts.isolate, "time_budget_s": opts.time_budget_s,
                   "sizes": list(sizes),
                   "dims": list(dims), "ref_cases": [list(c) for c in ref_cases]},
        "summary": summary,
        "results": results,
    }
    json_path = write_json(out / "mmd.json", _finite(payload))
    png_path = write_bar_chart(out / "mmd.png", _chart_panels(summary),
                               title=f"dapkernels bench mmd ({machine.get('gpu', machine['cpu'])})")
    print(f"\nwrote {json_path} and {png_path}")
    return 0 if all(r["status"] != "failed" for r in results) else 1
