"""Independent float64 oracle for the tests: the MMD estimators written directly from their
definitions with dense matrices, differentiated by torch.autograd (shares no code with the
package's kernels or its reference backend)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def dense_kernel(z: torch.Tensor, sigma2: Sequence[float]) -> torch.Tensor:
    """Σ_q exp(−‖z_i − z_j‖² / (2σ_q²)) from explicit differences (N×N×d, small N only)."""
    d = (z[:, None, :] - z[None, :, :]).square().sum(-1)
    return sum(torch.exp(-d / (2.0 * s2)) for s2 in sigma2)


def bank_sigma2(z: torch.Tensor, alphas=None, sigmas=None) -> list:
    """σ_q² of a bank: fixed, or α_q times the mean over all N² ordered pairs (detached)."""
    if sigmas is not None:
        return [s * s for s in sigmas]
    d = (z[:, None, :] - z[None, :, :]).square().sum(-1).detach()
    mean = float(d.mean())
    mean = mean if mean > 0 else 1.0
    return [a * mean for a in alphas]


def oracle_jmmd(sources, targets, banks, estimator: str) -> torch.Tensor:
    """Estimator value from the definitions; banks: list of (alphas, sigmas) per layer."""
    n, m = sources[0].shape[0], targets[0].shape[0]
    k = None
    q0 = 1.0
    for s, t, (alphas, sigmas) in zip(sources, targets, banks):
        z = torch.cat([s, t]).double()
        kl = dense_kernel(z, bank_sigma2(z, alphas, sigmas))
        k = kl if k is None else k * kl
        q0 *= len(alphas if alphas is not None else sigmas)
    kss, kst, ktt = k[:n, :n], k[:n, n:], k[n:, n:]
    if estimator == "biased":
        return kss.sum() / n**2 + ktt.sum() / m**2 - 2 * kst.sum() / (n * m)
    if estimator == "unbiased":
        return ((kss.sum() - n * q0) / (n * (n - 1)) + (ktt.sum() - m * q0) / (m * (m - 1))
                - 2 * kst.sum() / (n * m))
    idx = torch.arange(n)
    nxt = (idx + 1) % n
    return (kss[idx, nxt] + ktt[idx, nxt] - kst[idx, nxt] - kst[nxt, idx]).mean()
