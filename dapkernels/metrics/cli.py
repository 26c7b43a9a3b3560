"""``dapkernels shift SOURCE TARGET``: is there a domain shift between two feature files?

SOURCE and TARGET are feature files, one row per sample (extra dimensions are flattened):

* ``.npy`` — memory-mapped (``np.load(mmap_mode="r")``): the block / linear tests and the
  CORAL / mean-shift state stream over it, so it need not fit in memory;
* ``.npz`` — the file's only array, or ``FILE.npz:KEY`` for a named one (a trainers' ``npz:``
  dataset file gives ``FILE.npz:Xs FILE.npz:Xt``);
* ``.pt`` / ``.pth`` — a tensor saved with ``torch.save`` (or a dict holding exactly one tensor),
  loaded with ``weights_only=True``.

Image folders pushed through a backbone (the trainers' ``folder:`` inputs) are not read here:
extract the features with the trained model first and save them as one of the files above.

For each ``--method``: "block" and "linear" run :func:`~dapkernels.metrics.block_mmd_test` /
:func:`~dapkernels.metrics.linear_mmd_test` (Gaussian null, streamed); "permutation", "wild"
and "aggregated" run :func:`dapkernels.metrics.mmd_test` on the rows in memory
(``--permutations`` resamples, drawn from a generator seeded with ``--seed``).  Then the proxy
A-distance (:func:`~dapkernels.metrics.proxy_a_distance`, on at most ``--pad-max-rows`` rows per
domain drawn at random with ``--seed``) and :class:`~dapkernels.metrics.DomainShift` (CORAL
distance and mean shift with standard errors, streamed).

Prints a table, writes ``DIR/shift.json`` (every figure, runtimes, inputs) and
``DIR/shift.png`` (the null distribution with the observed statistic, p-values per bandwidth or
per method, and a 2-D PCA view of ≤ 2000 rows per domain).  A missing or unreadable file, a
width mismatch, non-finite rows or too few rows print one line naming the file and the problem,
and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._machine import core_info, cpu_model

__all__ = ["add_shift_parser", "run", "report", "machine_info", "MIN_ROWS", "METHODS"]

#: Fewest rows per file: two complete units of the block and linear tests (B ≥ 2).
MIN_ROWS = 4
METHODS = ("permutation", "wild", "aggregated", "block", "linear")
_STREAMED = ("block", "linear")
_PCA_ROWS = 2000
_SCAN_ROWS = 65536
_FEED_ROWS = 8192


class InputError(Exception):
    """A problem with an input file, reported as one line and exit status 2."""


def add_shift_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the ``shift`` sub-command to the console script's sub-parsers."""
    doc = __doc__.strip()
    parser = subparsers.add_parser(
        "shift", help=doc.splitlines()[0].split(": ", 1)[1], description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SOURCE", help="source features (.npy, .npz, .pt)")
    parser.add_argument("target", metavar="TARGET", help="target features (.npy, .npz, .pt)")
    parser.add_argument("--method", nargs="+", choices=METHODS, default=["aggregated", "block"],
                        help="tests to run (default: aggregated block)")
    parser.add_argument("--permutations", type=int, default=1000, metavar="B",
                        help="resamples of the permutation-family tests (default 1000)")
    parser.add_argument("--alpha", type=float, default=0.05, help="level (default 0.05)")
    parser.add_argument("--block-size", type=int, metavar="B",
                        help="block test: rows per block (default ⌊√min(n, m)⌋)")
    parser.add_argument("--pad-max-rows", type=int, default=20000, metavar="N",
                        help="rows per domain for the proxy A-distance (default 20000)")
    parser.add_argument("--no-pad", action="store_true", help="skip the proxy A-distance")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the in-memory computations run (default cpu)")
    parser.add_argument("--out", metavar="DIR", default="shift-results",
                        help="folder for shift.json and shift.png (default shift-results)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.set_defaults(func=run)
    return parser


# ------------------------------------------------------------------------------------ inputs


def _load(spec: str, role: str) -> np.ndarray:
    """The (rows, …) float array of a file (a memmap for .npy)."""
    path, key = spec, None
    if ".npz:" in spec:
        path, key = spec.rsplit(":", 1)
    label = f"{role} '{spec}'"
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{label}: no such file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = list(z.files)
                if key is None:
                    if len(names) != 1:
                        raise InputError(f"{label}: holds arrays {', '.join(names) or '(none)'}; "
                                         f"name one as FILE.npz:KEY")
                    key = names[0]
                elif key not in names:
                    raise InputError(f"{label}: no array '{key}' (it holds {', '.join(names)})")
                arr = z[key]
        elif suffix in (".pt", ".pth"):
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
                obj = tensors[0] if len(tensors) == 1 else obj
            if not isinstance(obj, torch.Tensor):
                raise InputError(f"{label}: expected a saved tensor, found {type(obj).__name__}")
            arr = obj.detach().float().numpy() if obj.dtype in (torch.float16, torch.bfloat16) \
                else obj.detach().numpy()
        else:
            raise InputError(f"{label}: unsupported file type '{suffix}' (use .npy, .npz, .pt)")
    except InputError:
        raise
    except (OSError, ValueError, RuntimeError, zipfile.BadZipFile, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{label}: cannot read it ({first})") from None
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{label}: dtype {arr.dtype} is not numeric")
    if arr.ndim < 2:
        raise InputError(f"{label}: shape {arr.shape}; expected (rows, features...)")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float32)
    if arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[0] < MIN_ROWS:
        raise InputError(f"{label}: {arr.shape[0]} rows, need at least {MIN_ROWS}")
    if arr.shape[1] == 0:
        raise InputError(f"{label}: no features (shape {arr.shape})")
    bad, first = 0, None
    for i in range(0, arr.shape[0], _SCAN_ROWS):
        rows = ~np.isfinite(np.asarray(arr[i:i + _SCAN_ROWS])).all(axis=1)
        if rows.any():
            first = i + int(np.argmax(rows)) if first is None else first
            bad += int(rows.sum())
    if bad:
        raise InputError(f"{label}: {bad} row(s) contain NaN or Inf (first: row {first})")
    return arr


def _tensor(arr: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.array(arr, copy=True))
    return t.to(device)


def _subsample(arr: np.ndarray, rows: int, gen: torch.Generator) -> np.ndarray:
    """A copy of all rows, or of ``rows`` rows drawn without replacement (kept in file order)."""
    if arr.shape[0] <= rows:
        return np.array(arr, copy=True)
    idx = torch.randperm(arr.shape[0], generator=gen)[:rows].sort().values.numpy()
    return np.array(arr[idx], copy=True)


# ------------------------------------------------------------------------------------ running


def _result_dict(res: object) -> dict:
    out = {k: getattr(res, k) for k in ("method", "statistic", "p_value", "reject", "threshold",
                                         "alpha", "estimator", "std_error", "num_permutations")}
    for key in ("num_blocks", "block_size"):
        if getattr(res, key, 0):
            out[key] = getattr(res, key)
    if getattr(res, "sigma2", ()):
        out["sigma2"] = list(res.sigma2)
    out["per_kernel"] = [dataclasses.asdict(k) for k in getattr(res, "per_kernel", ())]
    return out


def _run_test(method: str, src, tgt, xt, yt, args, device) -> tuple:
    """``(result, seconds)`` of one method."""
    from .streaming import block_mmd_test, linear_mmd_test

    start = time.perf_counter()
    if method in _STREAMED:
        fn = block_mmd_test if method == "block" else linear_mmd_test
        a, b = (src, tgt) if device.type == "cpu" else (xt(), yt())
        res = fn(a, b, alpha=args.alpha, block_size=args.block_size if method == "block"
                 else None, progress=args.progress)
    else:
        from .two_sample import mmd_test

        gen = torch.Generator(device=device).manual_seed(args.seed)
        res = mmd_test(xt(), yt(), method=method, num_permutations=args.permutations,
                       alpha=args.alpha, generator=gen, progress=args.progress)
    return res, time.perf_counter() - start


def _domain_shift(src: np.ndarray, tgt: np.ndarray) -> dict:
    from .shift_state import DomainShift

    state = DomainShift()
    for i in range(0, max(src.shape[0], tgt.shape[0]), _FEED_ROWS):
        s = torch.from_numpy(np.array(src[i:i + _FEED_ROWS])) if i < src.shape[0] else None
        t = torch.from_numpy(np.array(tgt[i:i + _FEED_ROWS])) if i < tgt.shape[0] else None
        state.update(source=s, target=t)
    return state.compute()


def machine_info() -> dict:
    """CPU model, cores, torch version and threads, the C++ core's instruction set."""
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), **core_info(),
            "python": platform.python_version()}


# ------------------------------------------------------------------------------------ output


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _table(rows: list, headers: tuple) -> str:
    cells = [list(headers)] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(payload: dict) -> str:
    """The printed tables of a ``shift.json`` payload."""
    rows = []
    for method, r in payload["tests"].items():
        rows.append((method, "all", r["statistic"], r["std_error"], r["p_value"], r["threshold"],
                     r["reject"], r["runtime_s"]))
        for k in r["per_kernel"]:
            rows.append(("", f"σ²={k['sigma2']:.4g}", k["statistic"], None, k["p_value"],
                         k["level"], k["reject"], None))
    parts = [f"source {payload['source']} ({payload['num_source']} rows), target "
             f"{payload['target']} ({payload['num_target']} rows), d = {payload['dim']}, "
             f"alpha = {payload['alpha']}"]
    if rows:
        parts += ["", _table(rows, ("test", "kernel", "statistic", "std err", "p-value",
                                    "threshold/level", "reject", "time s"))]
    other = []
    pad = payload.get("pad")
    if pad is not None:
        other.append(("proxy A-distance", pad["value"],
                      f"{int(100 * pad['confidence'])}% CI [{pad['ci_low']:.3g}, "
                      f"{pad['ci_high']:.3g}], error {pad['error']:.3g}", pad["runtime_s"]))
    ds = payload["domain_shift"]
    other.append(("CORAL distance", ds["coral"], f"± {ds['coral_se']:.3g} (se)",
                  ds["runtime_s"]))
    other.append(("mean shift ‖μs−μt‖²", ds["mean_shift"], f"± {ds['mean_shift_se']:.3g} (se)",
                  None))
    parts += ["", _table(other, ("measure", "value", "uncertainty", "time s")),
              "", f"total runtime {payload['runtime_s']:.3g} s"]
    return "\n".join(parts)


def _write_png(path: Path, payload: dict, results: dict, src, tgt, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    with_null = [m for m, r in results.items() if r.null is not None]
    observed = threshold = None
    if with_null:
        r = results[with_null[0]]
        null, observed, threshold = r.null, r.statistic, r.threshold
        title = f"{with_null[0]}: null of {r.num_permutations} resamples"
        if null.dim() == 2:  # aggregated: (L, B), shown for its most significant kernel
            k = min(range(len(r.per_kernel)), key=lambda i: r.per_kernel[i].p_value)
            null, observed, threshold = null[k], r.per_kernel[k].statistic, None
            title += f", σ²={r.per_kernel[k].sigma2:.3g}"
        ax.hist(null.double().numpy(), bins=40, color="tab:gray", alpha=0.8, label="null")
        ax.set_title(title)
    elif results:
        r = results[next(iter(results))]
        se = r.std_error or 1.0
        observed, threshold = r.statistic, r.threshold
        grid = np.linspace(-4 * se, max(4 * se, 1.2 * r.statistic), 300)
        ax.plot(grid, np.exp(-0.5 * (grid / se) ** 2) / (se * math.sqrt(2 * math.pi)),
                color="tab:gray", label="Gaussian null N(0, se²)")
        ax.set_title(f"{next(iter(results))}: Gaussian null ({r.num_blocks} units)")
    if observed is not None:
        ax.axvline(observed, color="tab:red", label="observed")
        if threshold is not None and math.isfinite(threshold):
            ax.axvline(threshold, color="black", linestyle="--",
                       label=f"threshold (α = {payload['alpha']})")
        ax.legend(fontsize="small")
    ax.set_xlabel("MMD² statistic")
    ax = axes[1]
    agg = [m for m, r in results.items() if r.per_kernel]
    if agg:
        ks = results[agg[0]].per_kernel
        labels = [f"{k.sigma2:.3g}" for k in ks]
        ax.bar(labels, [max(k.p_value, 1e-300) for k in ks], color="tab:blue", label="p-value")
        ax.plot(labels, [k.level for k in ks], "k_", markersize=20, label="corrected level")
        ax.set_xlabel("bandwidth σ²")
        ax.set_title(f"{agg[0]}: p-value per bandwidth")
    else:
        names = list(results)
        ax.bar(names, [max(results[m].p_value, 1e-300) for m in names], color="tab:blue",
               label="p-value")
        ax.set_title("p-value per method")
    ax.axhline(payload["alpha"], color="tab:red", linestyle="--", label="α")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax = axes[2]
    gen = torch.Generator().manual_seed(seed)
    a = torch.from_numpy(_subsample(src, _PCA_ROWS, gen)).double()
    b = torch.from_numpy(_subsample(tgt, _PCA_ROWS, gen)).double()
    z = torch.cat([a, b])
    mean = z.mean(0)
    _, _, vh = torch.linalg.svd(z - mean, full_matrices=False)
    basis = vh[:2].T if vh.shape[0] >= 2 else torch.cat([vh.T, torch.zeros_like(vh.T)], 1)
    pa, pb = ((a - mean) @ basis).numpy(), ((b - mean) @ basis).numpy()
    ax.scatter(pa[:, 0], pa[:, 1], s=4, alpha=0.5, label="source")
    ax.scatter(pb[:, 0], pb[:, 1], s=4, alpha=0.5, label="target")
    ax.set_title("PCA of the pooled rows (2 leading components)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Runs ``dapkernels shift``; returns the exit status (2 on bad input)."""
    try:
        return _run(args)
    except InputError as exc:
        print(f"dapkernels shift: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    for name, value, low in (("--permutations", args.permutations, 1),
                             ("--pad-max-rows", args.pad_max_rows, 4)):
        if value < low:
            raise InputError(f"{name} must be at least {low}, got {value}")
    if not 0.0 < args.alpha < 1.0:
        raise InputError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.block_size is not None and args.block_size < 2:
        raise InputError(f"--block-size must be at least 2, got {args.block_size}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    start = time.perf_counter()
    src = _load(args.source, "SOURCE")
    tgt = _load(args.target, "TARGET")
    if src.shape[1] != tgt.shape[1]:
        raise InputError(f"TARGET '{args.target}': {tgt.shape[1]} features per row, but SOURCE "
                         f"'{args.source}' has {src.shape[1]}")
    cache: dict = {}

    def tensor(which: str):
        def get() -> torch.Tensor:
            if which not in cache:
                cache[which] = _tensor(src if which == "x" else tgt, device)
            return cache[which]
        return get

    results, tests = {}, {}
    for method in dict.fromkeys(args.method):
        try:
            res, seconds = _run_test(method, src, tgt, tensor("x"), tensor("y"), args, device)
        except ValueError as exc:
            raise InputError(f"{method} test: {exc}") from None
        results[method] = res
        tests[method] = {**_result_dict(res), "runtime_s": seconds}
    payload = {
        "source": args.source, "target": args.target, "num_source": int(src.shape[0]),
        "num_target": int(tgt.shape[0]), "dim": int(src.shape[1]), "alpha": args.alpha,
        "seed": args.seed, "permutations": args.permutations, "tests": tests,
    }
    if not args.no_pad:
        from .pad import proxy_a_distance

        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(args.seed)
        xs = torch.from_numpy(_subsample(src, args.pad_max_rows, gen)).to(device)
        ys = torch.from_numpy(_subsample(tgt, args.pad_max_rows, gen)).to(device)
        pad = proxy_a_distance(xs, ys, generator=gen)
        payload["pad"] = {**dataclasses.asdict(pad), "rows_per_domain_max": args.pad_max_rows,
                          "runtime_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    payload["domain_shift"] = {**_domain_shift(src, tgt), "runtime_s": time.perf_counter() - t0}
    payload["runtime_s"] = time.perf_counter() - start
    payload["machine"] = machine_info()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(report(payload))
    (out / "shift.json").write_text(json.dumps(_finite(payload), indent=2) + "\n")
    _write_png(out / "shift.png", payload, results, src, tgt, args.seed)
    print(f"\nwrote {out / 'shift.json'} and {out / 'shift.png'}")
    return 0


def _finite(value: object) -> object:
    """JSON has no NaN / Inf: such floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
