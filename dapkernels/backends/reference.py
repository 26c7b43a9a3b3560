"""Reference backend: straightforward torch that materialises N×N matrices.

It evaluates everything in float64 (whatever the input dtype) with dense matrices and the
closed-form gradient ``∂L/∂z_i = 4 [rowsum(C)_i z_i − (C Z)_i]``, ``C_ij = W_ij k′(d_ij)``.
The tests check it against torch.autograd on the dense formula, then use it as the oracle for
the CPU and Triton kernels; it is also the fallback for devices no kernel covers.
Memory is O(N²) per call: use it for N up to a few thousand.  Formulas: docs/design.md §MMD
and §CORAL.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._validation import check_finite

__all__ = [
    "mmd_sweep", "mmd_formula", "mmd_grad_formula", "coral_sweep", "coral_formula",
    "coral_grad_formula",
    "mean_sq_distance", "gammas", "pairwise_sq_distances", "pair_weight_matrix",
]


def mean_sq_distance(z: torch.Tensor) -> torch.Tensor:
    """Mean over all N² ordered pairs of ‖z_i − z_j‖², in float64, without an N×N matrix.

    ``Σ_ij ‖z_i − z_j‖² = 2N Σ_i ‖z_i − μ‖²``: centring first avoids the cancellation of the
    uncentred form ``2N Σ‖z_i‖² − 2‖Σ z_i‖²``.  A zero mean (all rows identical) becomes 1.0.
    """
    return _mean_sq_distance(z.detach().to(torch.float64))


def _mean_sq_distance(z64: torch.Tensor) -> torch.Tensor:
    """:func:`mean_sq_distance` of a float64 tensor, differentiable (no detach)."""
    centred = z64 - z64.mean(dim=0, keepdim=True)
    mean = 2.0 * centred.square().sum() / z64.shape[0]
    return torch.where(mean > 0, mean, torch.ones_like(mean))


def gammas(z: torch.Tensor, factors: Sequence[float], relative: bool) -> torch.Tensor:
    """γ_q = 1 / (2σ_q²) with σ_q² = factor_q (fixed) or factor_q · mean distance (relative)."""
    return _gammas(z.detach().to(torch.float64), factors, relative)


def _gammas(z64: torch.Tensor, factors: Sequence[float], relative: bool) -> torch.Tensor:
    """:func:`gammas` of a float64 tensor, differentiable in ``z64`` (no detach)."""
    f = torch.tensor(list(factors), dtype=torch.float64, device=z64.device)
    return 0.5 / (f * _mean_sq_distance(z64) if relative else f)


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
    for l, (s, t) in enumerate(zip(sources, targets)):
        check_finite(torch.cat((s, t)), f"features (layer {l})")
    return mmd_formula(sources, targets, factors, relative, weights, need_grad)


def mmd_formula(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    weights: Sequence[float],
    need_grad: bool,
) -> tuple:
    """:func:`mmd_sweep` without the finiteness check: dense float64 torch ops on the inputs'
    device, no host sync (the Triton backend runs it for float64 CUDA inputs).  Same
    arguments and results; O(Q·N²) float64 memory."""
    n = sources[0].shape[0]
    zs = [torch.cat((s, t)) for s, t in zip(sources, targets)]
    z64s = [z.detach().to(torch.float64) for z in zs]
    values, slopes = _banks(z64s, [gammas(z64, f, rel) for z64, f, rel in
                                   zip(z64s, factors, relative)], exact_diagonal=False)
    kernel = values[0]
    for v in values[1:]:
        kernel = kernel * v
    sums = torch.stack([kernel[:n, :n].sum(), kernel[:n, n:].sum(), kernel[n:, n:].sum()])
    if not need_grad:
        return sums, []
    w = pair_weight_matrix(n, kernel.shape[0] - n, weights, kernel.dtype, kernel.device)
    grads = _closed_form_grads(z64s, values, slopes, w)
    return sums, [g.to(z.dtype) for g, z in zip(grads, zs)]


def _banks(z64s: Sequence[torch.Tensor], gams: Sequence[torch.Tensor],
           exact_diagonal: bool) -> tuple[list, list]:
    """Per layer ``K_l = Σ_q e^{−γ_q D}`` and ``K_l′ = −Σ_q γ_q e^{−γ_q D}`` (N × N), from the
    float64 rows and the γ of each layer; ``exact_diagonal`` sets ``D_ii`` to exactly 0 instead
    of its rounding residue (and keeps the diagonal out of the autograd graph)."""
    values, slopes = [], []
    for z64, gam in zip(z64s, gams):
        dist = pairwise_sq_distances(z64)
        if exact_diagonal:
            eye = torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device)
            dist = dist.masked_fill(eye, 0.0)
        g = gam[:, None, None]
        e = torch.exp(-g * dist[None])
        values.append(e.sum(dim=0))
        slopes.append(-(g * e).sum(dim=0))
    return values, slopes


def _closed_form_grads(z64s: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                       slopes: Sequence[torch.Tensor], w: torch.Tensor) -> list[torch.Tensor]:
    """``∂L/∂z_l = 4 [rowsum(C^l) ⊙ z_l − C^l z_l]``, ``C^l = W ∘ K_l′ ∘ Π_{o≠l} K_o`` (float64)."""
    grads = []
    for l, z64 in enumerate(z64s):
        c = w * slopes[l]
        for o, v in enumerate(values):
            if o != l:
                c = c * v
        grads.append(4.0 * (c.sum(dim=1, keepdim=True) * z64 - c @ z64))
    return grads


def pair_weight_matrix(n: int, m: int, weights: Sequence[float], dtype: torch.dtype,
                       device: torch.device) -> torch.Tensor:
    """(N, N) ``W``: ``w_ss`` on source pairs, ``w_st`` on mixed pairs, ``w_tt`` on target
    pairs (N = n + m, source rows first)."""
    w_ss, w_st, w_tt = weights
    w = torch.full((n + m, n + m), w_tt, dtype=dtype, device=device)
    w[:n, :n] = w_ss
    w[:n, n:] = w_st
    w[n:, :n] = w_st
    return w


def mmd_grad_formula(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    weights: Sequence[float],
) -> list[torch.Tensor]:
    """∂L/∂z_l of :func:`mmd_sweep` as differentiable float64 torch ops (double backward).

    ``∂L/∂z_l = 4 [rowsum(C^l) ⊙ z_l − C^l z_l]`` with
    ``C^l_ij = W_ij · K_l′(D_l,ij) · Π_{o≠l} K_o(D_o,ij)``, ``K_l(D) = Σ_q e^{−γ_lq D}``,
    ``K_l′(D) = −Σ_q γ_lq e^{−γ_lq D}`` and ``D_l,ij = ‖z_l,i − z_l,j‖²``.

    Bandwidth convention: the first derivative holds the bandwidth fixed (it is detached in
    the forward pass, as everywhere in the package).  Here the relative bandwidths
    ``σ_q² = α_q · mean_ij D_ij`` are recomputed *from the inputs, differentiably*, so
    differentiating this function gives the exact derivative of the backward function
    ``z ↦ ∂L/∂z|_{σ = σ(z)}`` (what ``torch.autograd.gradgradcheck`` compares against).

    Dense: O(Q·N²) float64 memory per layer, for N up to a few thousand.

    Args:
        sources, targets: per layer, (n, d_l) and (m, d_l) tensors (any float dtype, any
            layout); they may require grad.
        factors, relative, weights: as in :func:`mmd_sweep`.

    Returns:
        per layer, ∂L/∂z_l as an (n + m, d_l) float64 tensor, differentiable w.r.t. the inputs.
    """
    n, m = sources[0].shape[0], targets[0].shape[0]
    zs = [torch.cat((s, t)).to(torch.float64) for s, t in zip(sources, targets)]
    values, slopes = _banks(zs, [_gammas(z, f, rel) for z, f, rel in zip(zs, factors, relative)],
                            exact_diagonal=True)
    w = pair_weight_matrix(n, m, weights, torch.float64, zs[0].device)
    return _closed_form_grads(zs, values, slopes, w)


# ---- CORAL --------------------------------------------------------------------------------------


def coral_sweep(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str = "cov"
) -> tuple:
    """Deep CORAL value ``‖C_s − C_t‖_F² / (4d²)`` and its gradient, in float64.

    ``C = X̃ᵀX̃/(n − 1)`` with ``X̃`` the column-centred batch.  ``path="cov"`` (the oracle)
    builds both d×d covariances; ``path="gram"`` uses the n×n Gram matrices of
    :func:`coral_formula`
    (the fallback for devices without a kernel, where d×d may not fit).  Formulas in
    :func:`coral_formula`; this entry adds the finiteness checks.

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
    return coral_formula(xs, xt, need_grad, path, torch.float64)


def _centred(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Column-centred rows in ``dtype``, shifted by the first row before the mean is taken
    (the mean of the shifted rows is O(spread), so a far-away mean costs no precision)."""
    y = x.to(dtype) - x[:1].to(dtype)
    return y - y.mean(dim=0, keepdim=True)


_PAIR_WEIGHTS: dict[tuple, torch.Tensor] = {}


def _pair_weights(ns: int, nt: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(N, N) ``W``: 1/a² source pairs, 1/b² target pairs, −1/(ab) mixed (a = n_s − 1,
    b = n_t − 1); cached per shape, dtype and device."""
    key = (ns, nt, dtype, device)
    hit = _PAIR_WEIGHTS.get(key)
    if hit is None:
        if len(_PAIR_WEIGHTS) >= 64:
            _PAIR_WEIGHTS.clear()
        scale = torch.tensor([1.0 / (ns - 1)] * ns + [-1.0 / (nt - 1)] * nt, dtype=torch.float64)
        hit = _PAIR_WEIGHTS[key] = torch.outer(scale, scale).to(device=device, dtype=dtype)
    return hit


def coral_formula(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str, dtype: torch.dtype
) -> tuple:
    """:func:`coral_sweep`'s formulas as torch ops in ``dtype`` on the inputs' device: no
    checks, no host sync (the Triton backend runs them in float32 where its kernels stop).

    ``cov``: ``D = C_s − C_t``, ``L = ‖D‖² / (4d²)``, ``∂L/∂X̃_s = X̃_s D / ((n_s − 1) d²)``,
    ``∂L/∂X̃_t = −X̃_t D / ((n_t − 1) d²)``.  ``gram``: with ``X̃`` both batches stacked,
    ``G = X̃ X̃ᵀ`` (N × N) and pair weights ``W``, ``L = Σ W ∘ G² / (4d²)``,
    ``∂L/∂X̃ = (W ∘ G) X̃ / d²``.  Gradients are then centred (the adjoint of the centring);
    the value is reduced in float64.
    """
    if path not in ("gram", "cov"):
        raise ValueError(f"path must be 'cov' or 'gram', got {path!r}")
    ys, yt = _centred(xs.detach(), dtype), _centred(xt.detach(), dtype)
    ns, nt, d = ys.shape[0], yt.shape[0], ys.shape[1]
    scale = 1.0 / (d * d)
    if path == "gram":
        y = torch.cat((ys, yt))
        gram = y @ y.T
        wg = _pair_weights(ns, nt, dtype, y.device) * gram
        value = (wg.double() * gram.double()).sum() * (0.25 * scale)
        if not need_grad:
            return value, []
        g = (wg @ y) * scale
        gs, gt = g[:ns], g[ns:]
    else:
        diff = ys.T @ ys / (ns - 1) - yt.T @ yt / (nt - 1)
        value = diff.double().square().sum() * (0.25 * scale)
        if not need_grad:
            return value, []
        gs, gt = (ys @ diff) * (scale / (ns - 1)), (yt @ diff) * (-scale / (nt - 1))
    gs = gs - gs.mean(dim=0, keepdim=True)
    gt = gt - gt.mean(dim=0, keepdim=True)
    return value, [gs.to(xs.dtype), gt.to(xt.dtype)]


def coral_grad_formula(xs: torch.Tensor, xt: torch.Tensor, path: str) -> list[torch.Tensor]:
    """``[∂L/∂X_s, ∂L/∂X_t]`` of Deep CORAL as differentiable float64 torch ops (double backward).

    With ``X̃`` the column-centred batch, ``C = X̃ᵀX̃/(n − 1)`` and ``L = ‖C_s − C_t‖_F²/(4d²)``:
    ``∂L/∂X_s = X̃_s (C_s − C_t) / (d² (n_s − 1))``,
    ``∂L/∂X_t = −X̃_t (C_s − C_t) / (d² (n_t − 1))`` (``path="cov"``, d×d matrices), or in Gram
    form (``path="gram"``, no d×d matrix: for n_s + n_t < d) ``∂L/∂X̃ = (W ∘ X̃X̃ᵀ) X̃ / d²`` with
    both batches stacked and the pair weights ``W`` of :func:`coral_formula`.  The centring
    stays in the graph, so differentiating the result is exact.

    Args:
        xs: (n_s, d), xt: (n_t, d) features (any float dtype); they may require grad.
        path: ``"cov"`` or ``"gram"``.

    Returns:
        ``[gs, gt]``, (n_s, d) and (n_t, d) float64 tensors.
    """
    if path not in ("gram", "cov"):
        raise ValueError(f"path must be 'cov' or 'gram', got {path!r}")
    ys, yt = xs.to(torch.float64), xt.to(torch.float64)
    ys = ys - ys.mean(dim=0, keepdim=True)
    yt = yt - yt.mean(dim=0, keepdim=True)
    ns, nt, d = ys.shape[0], yt.shape[0], ys.shape[1]
    scale = 1.0 / (d * d)
    if path == "gram":
        y = torch.cat((ys, yt))
        g = ((_pair_weights(ns, nt, torch.float64, y.device) * (y @ y.T)) @ y) * scale
        return [g[:ns], g[ns:]]
    diff = ys.T @ ys / (ns - 1) - yt.T @ yt / (nt - 1)
    return [(ys @ diff) * (scale / (ns - 1)), (yt @ diff) * (-scale / (nt - 1))]
