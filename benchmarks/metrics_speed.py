"""Speed and memory of ``dk.metrics.mmd_test`` against an alibi-style dense permutation test.

``python -m benchmarks.metrics_speed [--n 10000] [--d 256] [--permutations 1000]
[--dense-permutations 5] [--routes cpu,torch] [--big] [--out benchmarks/results/metrics_speed]``
(from the repository root; threads: torch's default, i.e. ``OMP_NUM_THREADS`` or all cores).

Each measurement runs in a fresh subprocess on float32 data x, y ~ N(0, I) (+0.05 on y),
n = m, default bank, unbiased estimator, ``generator`` seeded 0:

* ``ours[<route>]``: ``mmd_test(x, y, num_permutations=B, backend=<route>)`` (route "cpu": the
  C++ core, the default on CPU; "torch": the tiled torch engine).
* ``dense``: the alibi-detect PyTorch recipe (``cd/pytorch/mmd.py``): build and keep the full
  float32 kernel matrix of the pooled sample (default bank, bandwidths from the mean pairwise
  squared distance, as ``dk.mmd``), then per permutation ``k = K[idx][:, idx]`` in a Python
  loop and the unbiased statistic from its blocks.  Running B = 1000 of these takes many
  minutes, so only ``--dense-permutations`` are timed and the total is extrapolated linearly:
  ``build + B × (mean time per permutation)`` (reported as such).

Memory: growth of the peak resident set (``ru_maxrss``) from after the imports (torch,
dapkernels) and the data creation to the end of the run, in MiB.  ``--big`` adds the Big case
(n = m = 10^5, d = 128, B = 200, ours only); ``--big-only`` runs just that case into
``big.json`` / ``big.txt``.  Writes ``report.json`` and ``report.txt`` under
``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def _cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip()
                    for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(kind: str, n: int, d: int, num: int, dense_num: int) -> dict:
    import torch

    from dapkernels.metrics import mmd_test  # imported before the baseline (fixed cost)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen)
    y = torch.randn(n, d, generator=gen) + 0.05
    base = _maxrss_mib()
    out: dict = {"kind": kind, "n": n, "m": n, "d": d, "threads": torch.get_num_threads()}
    if kind.startswith("ours"):
        route = kind[len("ours:"):]
        t0 = time.perf_counter()
        res = mmd_test(x, y, num_permutations=num, generator=torch.Generator().manual_seed(0),
                       backend=route)
        out.update(seconds=time.perf_counter() - t0, p_value=res.p_value,
                   statistic=res.statistic, num_permutations=num, extrapolated=False)
    else:
        t0 = time.perf_counter()
        z = torch.cat([x, y])
        big_n = z.shape[0]
        dist = torch.cdist(z, z).pow_(2)
        md = float(dist.mean())
        kmat = torch.zeros_like(dist)
        tmp = torch.empty_like(dist)
        for a in (0.125, 0.25, 0.5, 1.0, 2.0):
            torch.mul(dist, -1.0 / (2.0 * a * md), out=tmp)
            kmat += tmp.exp_()
        del dist, tmp
        build = time.perf_counter() - t0

        def stat(k: torch.Tensor) -> float:
            k_xx, k_yy, k_xy = k[:n, :n], k[n:, n:], k[:n, n:]
            k_xx.fill_diagonal_(0.0)
            k_yy.fill_diagonal_(0.0)
            return float(k_xx.sum() / (n * (n - 1)) + k_yy.sum() / (n * (n - 1))
                         - 2.0 * k_xy.mean())

        pgen = torch.Generator().manual_seed(0)
        t1 = time.perf_counter()
        for _ in range(dense_num):
            idx = torch.randperm(big_n, generator=pgen)
            stat(kmat[idx][:, idx])
        per = (time.perf_counter() - t1) / dense_num
        out.update(build_seconds=build, seconds_per_permutation=per,
                   timed_permutations=dense_num, num_permutations=num,
                   seconds=build + num * per, extrapolated=True)
    out["rss_growth_mib"] = _maxrss_mib() - base
    return out


def _run_child(kind: str, n: int, d: int, num: int, dense_num: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.metrics_speed", "--child", kind, "--n", str(n),
           "--d", str(d), "--permutations", str(num), "--dense-permutations", str(dense_num)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--dense-permutations", type=int, default=5)
    parser.add_argument("--routes", default="cpu,torch")
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--big-only", action="store_true",
                        help="run only the Big case; writes big.json / big.txt")
    parser.add_argument("--child", default=None)
    parser.add_argument("--out", default="benchmarks/results/metrics_speed")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.n, args.d, args.permutations,
                                args.dense_permutations)))
        return
    from dapkernels import _C

    command = " ".join(["python -m benchmarks.metrics_speed", *sys.argv[1:]])
    report: dict = {"command": command, "cpu": _cpu_model(), "isa": _C.isa,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "runs": []}
    runs = report["runs"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.big_only:
        big = _run_child("ours:cpu", 100_000, 128, 200, 0)
        report["runs"] = [big]
        (out / "big.json").write_text(json.dumps(report, indent=2) + "\n")
        line = (f"# {command}\n# CPU: {report['cpu']}, dapkernels._C.isa = {report['isa']}, "
                f"threads = {big['threads']}\n\nours:cpu   n = m = 100000, d = 128, B = 200: "
                f"{big['seconds']:.1f} s, peak RSS growth {big['rss_growth_mib']:.0f} MiB, "
                f"p = {big['p_value']:.4g}\n")
        (out / "big.txt").write_text(line)
        print(line)
        return
    for route in [r for r in args.routes.split(",") if r]:
        runs.append(_run_child(f"ours:{route}", args.n, args.d, args.permutations, 0))
        print(runs[-1], flush=True)
    runs.append(_run_child("dense", args.n, args.d, args.permutations, args.dense_permutations))
    print(runs[-1], flush=True)
    dense = runs[-1]
    for r in runs[:-1]:
        r["speedup_vs_dense"] = dense["seconds"] / r["seconds"]
    if args.big:
        runs.append(_run_child("ours:cpu", 100_000, 128, 200, 0))
        runs[-1]["case"] = "big"
        print(runs[-1], flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# {command}", f"# CPU: {report['cpu']}, dapkernels._C.isa = {report['isa']}, "
             f"threads = {runs[0]['threads']}", ""]
    for r in runs:
        what = f"{r['kind']:10s} n = m = {r['n']}, d = {r['d']}, B = {r['num_permutations']}"
        if r["extrapolated"]:
            what += (f": {r['seconds']:.1f} s EXTRAPOLATED (build {r['build_seconds']:.1f} s + "
                     f"B × {r['seconds_per_permutation']:.2f} s/permutation, timed over "
                     f"{r['timed_permutations']})")
        else:
            what += f": {r['seconds']:.2f} s"
        what += f", peak RSS growth {r['rss_growth_mib']:.0f} MiB"
        if "speedup_vs_dense" in r:
            what += f", {r['speedup_vs_dense']:.0f}x faster than dense"
        lines.append(what)
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
