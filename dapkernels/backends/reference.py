"""Reference backend: straightforward torch that materialises N×N matrices.

It evaluates everything in float64 (whatever the input dtype) with dense matrices and the
closed-form gradient ``∂L/∂z_i = 4 [rowsum(C)_i z_i − (C Z)_i]``, ``C_ij = W_ij k′(d_ij)``.
The tests check it against torch.autograd on the dense formula, then use it as the oracle for
the CPU and Triton kernels; it is also the fallback for devices no kernel covers.
Memory is O(N²) per call: use it for N up to a few thousand.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._validation import check_finite


def mean_sq_distance(z: torch.Tensor) -> torch.Tensor:
    """Mean over all N² ordered pairs of ‖z_i − z_j‖², in float64, without an N×N matrix.

    ``Σ_ij ‖z_i − z_j‖² = 2N Σ_i ‖z_i − μ‖²``: centring first avoids the cancellation of the
    uncentred form ``2N Σ‖z_i‖² − 2‖Σ z_i‖²``.  A zero mean (all rows identical) becomes 1.0.
    """
    z64 = z.detach().to(torch.float64)
    centred = z64 - z64.mean(dim=0, keepdim=True)
    mean = 2.0 * centred.square().sum() / z64.shape[0]
    return torch.where(mean > 0, mean, torch.ones_like(mean))


def gammas(z: torch.Tensor, factors: Sequence[float], relative: bool) -> torch.Tensor:
    """γ_q = 1 / (2σ_q²) with σ_q² = factor_q (fixed) or factor_q · mean distance (relative)."""
    f = torch.tensor(factors, dtype=torch.float64, device=z.device)
    sigma2 = f * mean_sq_distance(z) if relative else f
    return 0.5 / sigma2


def pairwise_sq_distances(z64: torch.Tensor) -> torch.Tensor:
    """N×N squared distances in float64 (centred GEMM form, clamped at 0)."""
    c = z64 - z64.mean(dim=0, keepdim=True)
    sq = c.square().sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2.0 * c @ c.T).clamp_min(0.0)


def mmd_sweep(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    weights: Sequence[float],
    need_grad: bool,
) -> tuple:
    """Block sums of a (joint) Gaussian-bank kernel and the gradient of their weighted sum.

    Args:
        sources: one (n, d_l) tensor per layer (the source batch).
        targets: one (m, d_l) tensor per layer (the target batch); ``N = n + m``, and row
            ``i`` of the concatenation ``z_l = [source_l; target_l]`` is a source row for
            ``i < n``.
        factors: per layer, σ_q² (fixed) or α_q (relative) for each kernel of the bank.
        relative: per layer, whether the factors multiply the mean pairwise squared distance.
        weights: ``(w_ss, w_st, w_tt)``.
        need_grad: whether to return gradients.

    Returns:
        ``sums``: ``[S_ss, S_st, S_tt]`` with ``S_ab = Σ_{i∈a, j∈b} k(z_i, z_j)`` and
        ``k = Π_l Σ_q exp(−γ_{lq} ‖z_{l,i} − z_{l,j}‖²)``: a float64 tensor on the device
        (this backend, Triton) or a tuple of three Python floats (the CPU backend);
        ``grads``: per layer, ∂L/∂z_l, (N, d_l) in the dtype of the inputs, for
        ``L = w_ss S_ss + 2 w_st S_st + w_tt S_tt``, or an empty list when ``need_grad`` is
        False.
    """
    n = sources[0].shape[0]
    zs = [torch.cat((s, t)) for s, t in zip(sources, targets)]
    for l, z in enumerate(zs):
        check_finite(z, f"features (layer {l})")
    z64s = [z.detach().to(torch.float64) for z in zs]
    values, slopes = [], []  # per layer: K_l = Σ_q e^{−γ_q D}, K_l' = −Σ_q γ_q e^{−γ_q D}
    for z64, f, rel in zip(z64s, factors, relative):
        g = gammas(z64, f, rel)[:, None, None]
        e = torch.exp(-g * pairwise_sq_distances(z64)[None])
        values.append(e.sum(dim=0))
        slopes.append(-(g * e).sum(dim=0))
    kernel = values[0]
    for v in values[1:]:
        kernel = kernel * v
    sums = torch.stack([kernel[:n, :n].sum(), kernel[:n, n:].sum(), kernel[n:, n:].sum()])
    if not need_grad:
        return sums, []
    w_ss, w_st, w_tt = weights
    w = torch.full_like(kernel, w_tt)
    w[:n, :n] = w_ss
    w[:n, n:] = w_st
    w[n:, :n] = w_st
    grads = []
    for l, z64 in enumerate(z64s):
        others = torch.ones_like(kernel)
        for j, v in enumerate(values):
            if j != l:
                others = others * v
        c = w * others * slopes[l]  # C_ij = W_ij · Π_{l'≠l} K_l' · K_l'(d_ij)
        grad = 4.0 * (c.sum(dim=1, keepdim=True) * z64 - c @ z64)
        grads.append(grad.to(zs[l].dtype))
    return sums, grads


# ---- CORAL --------------------------------------------------------------------------------------


def coral_sweep(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str = "cov"
) -> tuple:
    """Deep CORAL value ``‖C_s − C_t‖_F² / (4d²)`` and its gradient, in float64.

    ``C = X̃ᵀX̃/(n − 1)`` with ``X̃`` the column-centred batch.  ``path="cov"`` (the oracle)
    builds both d×d covariances; ``path="gram"`` uses the n×n Gram matrices of DESIGN §4
    (the fallback for devices without a kernel, where d×d may not fit).  Gradients:
    ``∂L/∂X̃_s = X̃_s D / ((n_s − 1) d²)``, ``∂L/∂X̃_t = −X̃_t D / ((n_t − 1) d²)`` with
    ``D = C_s − C_t``, then centred (the adjoint of the centring).

    Args:
        xs: (n_s, d) source features, n_s ≥ 2.
        xt: (n_t, d) target features, n_t ≥ 2.
        need_grad: whether to return gradients.
        path: ``"cov"`` or ``"gram"``.

    Returns:
        ``(value, grads)``: a float64 0-dim tensor and ``[∂L/∂xs, ∂L/∂xt]`` (input dtype), or
        ``[]`` when ``need_grad`` is False.
    """
    check_finite(xs, "f_s")
    check_finite(xt, "f_t")
    zs = xs.detach().to(torch.float64)
    zt = xt.detach().to(torch.float64)
    zs = zs - zs.mean(dim=0, keepdim=True)
    zt = zt - zt.mean(dim=0, keepdim=True)
    a, b, d = zs.shape[0] - 1, zt.shape[0] - 1, zs.shape[1]
    scale = 1.0 / (d * d)
    if path == "cov":
        diff = zs.T @ zs / a - zt.T @ zt / b
        value = 0.25 * scale * diff.square().sum()
        if not need_grad:
            return value, []
        gs, gt = (zs @ diff) * (scale / a), (zt @ diff) * (-scale / b)
    elif path == "gram":
        g_ss, g_tt, g_st = zs @ zs.T, zt @ zt.T, zs @ zt.T
        value = 0.25 * scale * (
            g_ss.square().sum() / a**2 + g_tt.square().sum() / b**2
            - 2.0 * g_st.square().sum() / (a * b)
        )
        if not need_grad:
            return value, []
        gs = (g_ss @ zs / a**2 - g_st @ zt / (a * b)) * scale
        gt = (g_tt @ zt / b**2 - g_st.T @ zs / (a * b)) * scale
    else:
        raise ValueError(f"path must be 'cov' or 'gram', got {path!r}")
    gs = gs - gs.mean(dim=0, keepdim=True)
    gt = gt - gt.mean(dim=0, keepdim=True)
    return value, [gs.to(xs.dtype), gt.to(xt.dtype)]
