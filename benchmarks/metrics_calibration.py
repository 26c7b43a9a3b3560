"""Calibration and power of ``dk.metrics.mmd_test`` ("permutation", "wild", "aggregated").

``python -m benchmarks.metrics_calibration [--trials 1000] [--power-trials 200]
[--permutations 200] [--out benchmarks/results/metrics_calibration]`` (from the repository root)
writes ``report.txt`` and ``report.json`` with:

1. **Level**: ``--trials`` null trials, x, y ~ N(0, I_16), n = m = 200, B permutations /
   sign vectors, α = 0.05, default bank (aggregated: default collection): the rejection rate of
   each method with its 95 % Clopper–Pearson interval; bar: the rate lies in [0.03, 0.07].
2. **Power = the dense test's**: ``--power-trials`` trials of a mean shift (y₀ += 0.35):
   "permutation" against a dense float64 test written here (full kernel matrix, the same
   ``torch.randperm`` draws from a same-seed generator, ``K[idx][:, idx]``); reports both
   powers and in how many trials the p-values differ (bar: none).
3. **Aggregated vs single bandwidths**, on the documented case "mixed alternatives" (the
   practitioner does not know the kind of shift): trial t is a mean shift (y₀ += 0.5; large
   bandwidths detect it best) for even t, and for odd t 10 % of the y rows are replaced by
   near-duplicates of other y rows (``(y_{j} + 0.5 ε) / √1.25``, ε ~ N(0, I); only the smallest
   bandwidths see this local structure); the power of "aggregated" (the
   default collection α = 2^-4 … 2^5) against each single-bandwidth "permutation" test of the
   collection (same permutations); bar: aggregated ≥ the best single bandwidth.

Trial k uses data seed k and permutation seed 10⁶ + k.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from dapkernels import _C
from dapkernels.kernels import GaussianKernels
from dapkernels.metrics import AGGREGATED_KERNELS, mmd_test

N_SAMPLES, DIM, ALPHA = 200, 16, 0.05


def _clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple:
    from scipy.stats import beta  # only for the interval

    lo = 0.0 if k == 0 else float(beta.ppf((1 - level) / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf((1 + level) / 2, k + 1, n - k))
    return lo, hi


def _data(seed: int, kind: str) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N_SAMPLES, DIM, generator=gen)
    y = torch.randn(N_SAMPLES, DIM, generator=gen)
    if kind == "shift":
        y[:, 0] += 0.35
    elif kind == "mixed":
        if seed % 2 == 0:
            y[:, 0] += 0.5
        else:  # 10 % of y are near-duplicates of other y rows, variance kept
            k = N_SAMPLES // 10
            y[:k] = (y[k:2 * k] + 0.5 * torch.randn(k, DIM, generator=gen)) / 1.25**0.5
    return x, y


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(10**6 + seed)


def _dense_pvalue(x, y, num, seed) -> float:
    """Dense float64 permutation test (default bank, unbiased), alibi-style re-indexing."""
    z = torch.cat([x, y]).double()
    d2 = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
    md = d2.mean()
    k = sum(torch.exp(-d2 / (2 * a * md)) for a in GaussianKernels().alphas)
    n, m = x.shape[0], y.shape[0]

    def stat(idx):
        kp = k[idx][:, idx]
        kss, ktt, kst = kp[:n, :n], kp[n:, n:], kp[:n, n:]
        return float((kss.sum() - kss.trace()) / (n * (n - 1))
                     + (ktt.sum() - ktt.trace()) / (m * (m - 1)) - 2 * kst.sum() / (n * m))

    obs = stat(torch.arange(n + m))
    gen = _gen(seed)
    null = [stat(torch.randperm(n + m, generator=gen)) for _ in range(num)]
    return (1 + sum(1 for t in null if t >= obs)) / (1 + num)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--power-trials", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/metrics_calibration")
    args = parser.parse_args()
    num = args.permutations
    report: dict = {
        "command": "python -m benchmarks.metrics_calibration "
                   f"--trials {args.trials} --power-trials {args.power_trials} "
                   f"--permutations {num}",
        "cpu": platform.processor() or platform.machine(), "isa": _C.isa,
        "torch_threads": torch.get_num_threads(), "n": N_SAMPLES, "m": N_SAMPLES, "d": DIM,
        "alpha": ALPHA, "num_permutations": num,
    }
    try:
        report["cpu"] = next(line.split(":", 1)[1].strip()
                             for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    t0 = time.time()
    level = {}
    for method in ("permutation", "wild", "aggregated"):
        rejections = 0
        for k in range(args.trials):
            x, y = _data(k, "null")
            res = mmd_test(x, y, method=method, num_permutations=num, alpha=ALPHA,
                           generator=_gen(k))
            rejections += res.reject
        rate = rejections / args.trials
        lo, hi = _clopper_pearson(rejections, args.trials)
        level[method] = {"rejections": rejections, "trials": args.trials, "rate": rate,
                         "ci95": [lo, hi], "pass": 0.03 <= rate <= 0.07}
    report["level"] = level
    report["level_seconds"] = time.time() - t0

    t0 = time.time()
    ours = dense = differ = 0
    for k in range(args.power_trials):
        x, y = _data(k, "shift")
        res = mmd_test(x, y, num_permutations=num, alpha=ALPHA, generator=_gen(k))
        p_dense = _dense_pvalue(x, y, num, k)
        ours += res.reject
        dense += p_dense <= ALPHA
        differ += res.p_value != p_dense
    report["power_vs_dense"] = {
        "case": "mean shift y0 += 0.35", "trials": args.power_trials,
        "power_ours": ours / args.power_trials, "power_dense": dense / args.power_trials,
        "trials_with_different_p": differ, "pass": differ == 0 and ours == dense,
        "seconds": time.time() - t0,
    }

    t0 = time.time()
    alphas = AGGREGATED_KERNELS.alphas
    single = [0] * len(alphas)
    agg = 0
    for k in range(args.power_trials):
        x, y = _data(k, "mixed")
        agg += mmd_test(x, y, method="aggregated", num_permutations=num, alpha=ALPHA,
                        generator=_gen(k)).reject
        for i, a in enumerate(alphas):
            single[i] += mmd_test(x, y, GaussianKernels(alphas=(a,)), num_permutations=num,
                                  alpha=ALPHA, generator=_gen(k)).reject
    powers = {f"2^{round(math.log2(a))}": s / args.power_trials for a, s in zip(alphas, single)}
    best = max(powers, key=powers.get)
    report["aggregated_vs_single"] = {
        "case": "mixed alternatives: even trials y0 += 0.5, odd trials 10% near-duplicate y rows",
        "trials": args.power_trials, "power_aggregated": agg / args.power_trials,
        "power_single": powers, "best_single": best, "power_best_single": powers[best],
        "pass": agg / args.power_trials >= powers[best], "seconds": time.time() - t0,
    }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# {report['command']}", f"# CPU: {report['cpu']}, dapkernels._C.isa = {_C.isa}, "
             f"torch threads = {report['torch_threads']}",
             f"n = m = {N_SAMPLES}, d = {DIM}, alpha = {ALPHA}, B = {num}", "",
             "Level (null: x, y ~ N(0, I)), bar: rate in [0.03, 0.07]"]
    for method, r in level.items():
        lines.append(f"  {method:12s} {r['rejections']:4d}/{r['trials']}  rate {r['rate']:.4f}  "
                     f"95% CI [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]  "
                     f"{'PASS' if r['pass'] else 'FAIL'}")
    p = report["power_vs_dense"]
    lines += ["", f"Power vs dense float64 test, same permutations ({p['case']}, "
              f"{p['trials']} trials): ours {p['power_ours']:.3f}, dense {p['power_dense']:.3f}, "
              f"trials with a different p-value: {p['trials_with_different_p']}  "
              f"{'PASS' if p['pass'] else 'FAIL'}"]
    a = report["aggregated_vs_single"]
    lines += ["", f"Aggregated vs single bandwidths ({a['case']}, {a['trials']} trials):",
              f"  aggregated {a['power_aggregated']:.3f}; best single {a['best_single']} "
              f"{a['power_best_single']:.3f}  {'PASS' if a['pass'] else 'FAIL'}",
              "  single: " + ", ".join(f"{k} {v:.3f}" for k, v in a["power_single"].items())]
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
