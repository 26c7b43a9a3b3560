"""Naive Deep CORAL, written the way DA code bases usually write it: two d×d covariances.

``C = (X − 1μᵀ)ᵀ(X − 1μᵀ)/(n − 1)`` per domain, then either the Frobenius form of the Deep
CORAL paper, ``‖C_s − C_t‖_F² / (4d²)`` (``reduction="frobenius"``), or the elementwise mean
``mean((C_s − C_t)²)`` (``reduction="mean"``, = ``‖C_s − C_t‖_F² / d²``, 4× the former).
Autograd differentiates through both d×d matrices: O(n·d²) flops and 2–4 d×d buffers.
"""

from __future__ import annotations

import torch

__all__ = ["naive_coral"]


def naive_coral(
    f_s: torch.Tensor, f_t: torch.Tensor, reduction: str = "frobenius"
) -> torch.Tensor:
    """The d×d reference pattern; ``reduction`` is ``"frobenius"`` or ``"mean"``."""
    f_s = f_s.reshape(f_s.shape[0], -1)
    f_t = f_t.reshape(f_t.shape[0], -1)
    d = f_s.shape[1]
    xs = f_s - f_s.mean(dim=0, keepdim=True)
    xt = f_t - f_t.mean(dim=0, keepdim=True)
    c_s = xs.t() @ xs / (f_s.shape[0] - 1)
    c_t = xt.t() @ xt / (f_t.shape[0] - 1)
    sq = (c_s - c_t).pow(2)
    if reduction == "frobenius":
        return sq.sum() / (4 * d * d)
    if reduction == "mean":
        return sq.mean()
    raise ValueError(f"reduction must be 'frobenius' or 'mean', got {reduction!r}")
