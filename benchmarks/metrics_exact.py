"""Exactness of ``dk.metrics.mmd_test``: same counts as a dense float64 computation.

``python -m benchmarks.metrics_exact [--permutations 200] [--out benchmarks/results/metrics_exact]``
(from the repository root) writes ``report.txt`` / ``report.json``.  For every method that
resamples and both estimators, on float32 data with a small shift (so the counts are neither 0
nor B), it recomputes the test densely here: the full float64 kernel matrix of the pooled sample
(bandwidths from the mean pairwise squared distance over all N² pairs), the documented draws
(``torch.randperm(n + m, generator=g)`` / ``torch.randint(0, 2, (n,), generator=g) * 2 − 1``
from a same-seed generator), block sums ``sᵀKs``, ``tᵀKt``, ``sᵀKt`` by matrix–vector products
for each permutation, the wild statistic ``εᵀHε`` with ``H = Kxx + Kyy − Kxy − Kxyᵀ`` (diagonal
dropped for the unbiased one).  Bar: identical p-values (identical counts), for n, m ≤ 2000.

Cases: "permutation" n = 2000, m = 1500; "wild" n = m = 2000; "aggregated" n = m = 1000 with
the default collection (10 kernels): per-kernel p-values and the aggregated p-value.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dapkernels import _C
from dapkernels.metrics import AGGREGATED_KERNELS, mmd_test

DIM = 16


def _data(n: int, m: int, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=gen)
    y = torch.randn(m, DIM, generator=gen) + 0.04
    return x, y


def _kernels(x, y, alphas) -> torch.Tensor:
    z = torch.cat([x, y]).double()
    sq = (z * z).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_(min=0)
    d2.fill_diagonal_(0)
    md = float(d2.mean())
    return torch.stack([torch.exp(-d2 / (2 * a * md)) for a in alphas])


def _perm_stats(k, n, m, perms, estimator) -> torch.Tensor:
    out = []
    big_n = n + m
    tr = float(k.diagonal().sum()) / big_n  # K_ii, the same for every i
    for idx in perms:
        s = torch.zeros(big_n, dtype=torch.float64)
        s[idx[:n]] = 1.0
        t = 1.0 - s
        ks, kt = k @ s, k @ t
        a, c, x = float(s @ ks), float(t @ kt), float(s @ kt)
        if estimator == "unbiased":
            out.append((a - n * tr) / (n * (n - 1)) + (c - m * tr) / (m * (m - 1))
                       - 2 * x / (n * m))
        else:
            out.append(a / n**2 + c / m**2 - 2 * x / (n * m))
    return torch.tensor(out, dtype=torch.float64)


def _count_p(obs, null) -> float:
    return (1 + int((null >= obs).sum())) / (1 + null.numel())


def _row(method: str, estimator: str, n: int, m: int, res, stats: torch.Tensor) -> dict:
    """One report row: our p-value and null against the dense recomputation ``stats``
    (observed statistic first, then the null)."""
    p_dense = _count_p(stats[0], stats[1:])
    return {"method": method, "estimator": estimator, "n": n, "m": m,
            "p_ours": res.p_value, "p_dense": p_dense,
            "max_abs_null_diff": float((res.null - stats[1:]).abs().max()),
            "equal": res.p_value == p_dense}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/metrics_exact")
    args = parser.parse_args()
    num = args.permutations
    rows = []
    t0 = time.time()
    for estimator in ("unbiased", "biased"):
        n, m = 2000, 1500
        x, y = _data(n, m, 1)
        res = mmd_test(x, y, num_permutations=num, estimator=estimator,
                       generator=torch.Generator().manual_seed(7))
        k = _kernels(x, y, (0.125, 0.25, 0.5, 1.0, 2.0)).sum(0)
        gen = torch.Generator().manual_seed(7)
        perms = [torch.arange(n + m)] + [torch.randperm(n + m, generator=gen) for _ in range(num)]
        stats = _perm_stats(k, n, m, perms, estimator)
        rows.append(_row("permutation", estimator, n, m, res, stats))

        n = m = 2000
        x, y = _data(n, m, 2)
        res = mmd_test(x, y, method="wild", num_permutations=num, estimator=estimator,
                       generator=torch.Generator().manual_seed(8))
        k = _kernels(x, y, (0.125, 0.25, 0.5, 1.0, 2.0)).sum(0)
        h = k[:n, :n] + k[n:, n:] - k[:n, n:] - k[:n, n:].T
        if estimator == "unbiased":
            h.fill_diagonal_(0)
        norm = n * (n - 1) if estimator == "unbiased" else n * n
        gen = torch.Generator().manual_seed(8)
        eps = [torch.ones(n, dtype=torch.float64)] + [
            (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).double() for _ in range(num)]
        stats = torch.tensor([float(e @ h @ e) / norm for e in eps], dtype=torch.float64)
        rows.append(_row("wild", estimator, n, m, res, stats))

        n = m = 1000
        x, y = _data(n, m, 3)
        res = mmd_test(x, y, method="aggregated", num_permutations=num, estimator=estimator,
                       generator=torch.Generator().manual_seed(9))
        ks = _kernels(x, y, AGGREGATED_KERNELS.alphas)
        gen = torch.Generator().manual_seed(9)
        perms = [torch.arange(n + m)] + [torch.randperm(n + m, generator=gen)
                                          for _ in range(2 * num)]
        per = torch.stack([_perm_stats(kl, n, m, perms, estimator) for kl in ks])
        obs, set1, set2 = per[:, 0], per[:, 1:num + 1], per[:, num + 1:]
        p_k = [_count_p(obs[i], set1[i]) for i in range(len(ks))]
        big_l = len(ks)
        m_obs = big_l * min(p_k)
        m_null = torch.tensor([big_l * min(_count_p(set2[i, b], set1[i]) for i in range(big_l))
                               for b in range(num)])
        p_dense = (1 + int((m_null <= m_obs).sum())) / (1 + num)
        ours_k = [kr.p_value for kr in res.per_kernel]
        rows.append({"method": "aggregated", "estimator": estimator, "n": n, "m": m,
                     "p_ours": res.p_value, "p_dense": p_dense,
                     "per_kernel_equal": ours_k == p_k,
                     "max_abs_null_diff": float((res.null - set1).abs().max()),
                     "equal": res.p_value == p_dense and ours_k == p_k})
        print(rows[-3:], flush=True)
    report = {"command": f"python -m benchmarks.metrics_exact --permutations {num}",
              "isa": _C.isa, "num_permutations": num, "d": DIM, "rows": rows,
              "seconds": time.time() - t0, "pass": all(r["equal"] for r in rows)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# {report['command']}  (dapkernels._C.isa = {_C.isa}; float32 data, d = {DIM})",
             "method       estimator  n     m     p ours    p dense   max|null diff|  equal"]
    for r in rows:
        lines.append(f"{r['method']:12s} {r['estimator']:9s} {r['n']:<5d} {r['m']:<5d} "
                     f"{r['p_ours']:<9.5f} {r['p_dense']:<9.5f} {r['max_abs_null_diff']:<15.3g} "
                     f"{r['equal']}")
    lines.append(f"bar (identical p-values): {'PASS' if report['pass'] else 'FAIL'}")
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
