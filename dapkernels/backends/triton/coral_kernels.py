"""Triton kernels of the CORAL Gram path, for n_s + n_t ≤ BN rows (BN = 64).

Formulas: docs/design.md §CORAL; launch configurations: ``configs.py``.

With ``X̃`` the per-domain column-centred rows of both batches stacked (N = n_s + n_t) and
``G = X̃ X̃ᵀ`` (N × N):

    L = Σ_ij W_ij G_ij² / (4d²),   ∂L/∂X̃ = (W ∘ G) X̃ / d²,
    W_ij = 1/a² (both source), 1/b² (both target), −1/(ab) (mixed),   a = n_s − 1, b = n_t − 1,

then each domain's gradient is centred (the adjoint of the centring).  Kernels:

* ``coral_small_kernel`` (d ≤ configs.CORAL_SMALL_MAX_D): one program does it all — the Gram
  over d-chunks, ``L`` and the gradient.  One launch, no memset: at DA batch sizes the host
  work around launches is the cost.
* wider features, two launches that split the feature dimension over programs:
  ``coral_gram_kernel`` (each program centres its columns and adds its partial ``X̃_c X̃_cᵀ``
  into the float32 N × N buffer ``G``, atomics), then ``coral_grad_kernel`` (each reads ``G``,
  program 0 writes ``L``, and with HAS_GRAD each writes its columns of the gradient).

``L`` is reduced in float64 and stored in the value pointer's dtype; gradients in theirs.

Rows are shifted by each domain's first row before the column means are taken: the mean of
the shifted rows is O(spread), not O(offset), so large offsets cost no float32 precision.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["coral_gram_kernel", "coral_small_kernel", "coral_grad_kernel"]


@triton.jit
def _centred_chunk(xs_ptr, xt_ptr, ns, nt, c0, d, stride_s, stride_t,
                   BN: tl.constexpr, BD: tl.constexpr):
    """(BN, BD) float32 tile: centred source rows 0 … ns−1, centred target rows ns … ns+nt−1,
    zeros elsewhere, for feature columns c0 … c0 + BD − 1 (zeros beyond d)."""
    rows = tl.arange(0, BN)
    cols = c0 + tl.arange(0, BD)
    cmask = cols < d
    src = rows < ns
    tgt = (rows >= ns) & (rows < ns + nt)
    m_s = src[:, None] & cmask[None, :]
    m_t = tgt[:, None] & cmask[None, :]
    a = tl.load(xs_ptr + rows[:, None] * stride_s + cols[None, :], mask=m_s, other=0.0)
    b = tl.load(xt_ptr + (rows - ns)[:, None] * stride_t + cols[None, :], mask=m_t, other=0.0)
    s0 = tl.load(xs_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    t0 = tl.load(xt_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    y = tl.where(m_s, a.to(tl.float32) - s0[None, :], 0.0) + \
        tl.where(m_t, b.to(tl.float32) - t0[None, :], 0.0)
    return _centre(y, src, tgt, ns, nt)


@triton.jit
def _centre(y, src, tgt, ns, nt):
    """Subtracts each domain's column mean from its rows (other rows stay zero)."""
    mean_s = tl.sum(tl.where(src[:, None], y, 0.0), axis=0) / ns
    mean_t = tl.sum(tl.where(tgt[:, None], y, 0.0), axis=0) / nt
    return tl.where(src[:, None], y - mean_s[None, :], tl.where(tgt[:, None], y - mean_t[None, :],
                                                                0.0))


@triton.jit
def coral_gram_kernel(
    xs_ptr, xt_ptr, g_ptr, ns, nt, d, stride_s, stride_t, cols_per_prog,
    BN: tl.constexpr, BD: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """``G += X̃_c X̃_cᵀ`` over this program's columns ``c`` (grid ``cdiv(d, cols_per_prog)``).

    ``G`` (BN, BN) float32, zeroed by the caller.
    """
    c_start = tl.program_id(0) * cols_per_prog
    c_end = tl.minimum(c_start + cols_per_prog, d)
    gram = tl.zeros([BN, BN], dtype=tl.float32)
    for c0 in range(c_start, c_end, BD):
        y = _centred_chunk(xs_ptr, xt_ptr, ns, nt, c0, d, stride_s, stride_t, BN, BD)
        gram = tl.dot(y, tl.trans(y), gram, input_precision=DOT_PREC)
    rows = tl.arange(0, BN)
    tl.atomic_add(g_ptr + rows[:, None] * BN + rows[None, :], gram)


@triton.jit
def _pair_weights(src, tgt, ns, nt):
    """``W`` (BN, BN): 1/a² source pairs, 1/b² target pairs, −1/(ab) mixed, 0 on padding."""
    # "* 1.0": Triton specialises integer arguments equal to 1 into constants.
    a = (ns - 1) * 1.0
    b = (nt - 1) * 1.0
    return tl.where(src[:, None] & src[None, :], 1.0 / (a * a),
                    tl.where(tgt[:, None] & tgt[None, :], 1.0 / (b * b),
                             tl.where((src[:, None] & tgt[None, :]) | (tgt[:, None] & src[None, :]),
                                      -1.0 / (a * b), 0.0)))


@triton.jit
def _store_value(value_ptr, w, gram, d):
    """``L = Σ W G² / (4d²)``; the products mix both signs, so they are summed in float64."""
    g64 = gram.to(tl.float64)
    total = tl.sum(tl.sum(w.to(tl.float64) * g64 * g64, axis=1), axis=0)
    tl.store(value_ptr, (0.25 * total / (d * 1.0 * d)).to(value_ptr.dtype.element_ty))


@triton.jit
def _store_grad_columns(xs_ptr, xt_ptr, gs_ptr, gt_ptr, m, ns, nt, d, stride_s, stride_t,
                        c_start, c_end, BN: tl.constexpr, BD: tl.constexpr,
                        DOT_PREC: tl.constexpr):
    """Columns ``c_start … c_end`` of ``∂L/∂X = centre((W ∘ G / d²) X̃)`` into ``gs`` (ns, d) and
    ``gt`` (nt, d), contiguous, in their dtype; ``m = W ∘ G / d²``."""
    rows = tl.arange(0, BN)
    src = rows < ns
    tgt = (rows >= ns) & (rows < ns + nt)
    for c0 in range(c_start, c_end, BD):
        y = _centred_chunk(xs_ptr, xt_ptr, ns, nt, c0, d, stride_s, stride_t, BN, BD)
        g = _centre(tl.dot(m, y, input_precision=DOT_PREC), src, tgt, ns, nt)
        cols = c0 + tl.arange(0, BD)
        cmask = cols < d
        tl.store(gs_ptr + rows[:, None] * d + cols[None, :], g.to(gs_ptr.dtype.element_ty),
                 mask=src[:, None] & cmask[None, :])
        tl.store(gt_ptr + (rows - ns)[:, None] * d + cols[None, :],
                 g.to(gt_ptr.dtype.element_ty), mask=tgt[:, None] & cmask[None, :])


@triton.jit
def coral_small_kernel(
    xs_ptr, xt_ptr, value_ptr, gs_ptr, gt_ptr, ns, nt, d, stride_s, stride_t,
    BN: tl.constexpr, BD: tl.constexpr, HAS_GRAD: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Everything in one program (grid ``(1,)``): ``G`` over all d, ``L``, and with HAS_GRAD
    both gradients (contiguous, in their pointers' dtype)."""
    rows = tl.arange(0, BN)
    src = rows < ns
    tgt = (rows >= ns) & (rows < ns + nt)
    gram = tl.zeros([BN, BN], dtype=tl.float32)
    for c0 in range(0, d, BD):
        y = _centred_chunk(xs_ptr, xt_ptr, ns, nt, c0, d, stride_s, stride_t, BN, BD)
        gram = tl.dot(y, tl.trans(y), gram, input_precision=DOT_PREC)
    w = _pair_weights(src, tgt, ns, nt)
    _store_value(value_ptr, w, gram, d)
    if HAS_GRAD:
        _store_grad_columns(xs_ptr, xt_ptr, gs_ptr, gt_ptr, w * gram * (1.0 / (d * 1.0 * d)),
                            ns, nt, d, stride_s, stride_t, 0, d, BN, BD, DOT_PREC)


@triton.jit
def coral_grad_kernel(
    xs_ptr, xt_ptr, g_ptr, value_ptr, gs_ptr, gt_ptr, ns, nt, d, stride_s, stride_t,
    cols_per_prog,
    BN: tl.constexpr, BD: tl.constexpr, HAS_GRAD: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Value (program 0) and the gradient columns of this program (with HAS_GRAD).

    ``gs`` (ns, d) and ``gt`` (nt, d) are contiguous, in the input dtype.
    """
    rows = tl.arange(0, BN)
    src = rows < ns
    tgt = (rows >= ns) & (rows < ns + nt)
    gram = tl.load(g_ptr + rows[:, None] * BN + rows[None, :])
    w = _pair_weights(src, tgt, ns, nt)
    if tl.program_id(0) == 0:
        _store_value(value_ptr, w, gram, d)
    if HAS_GRAD:
        c_start = tl.program_id(0) * cols_per_prog
        _store_grad_columns(xs_ptr, xt_ptr, gs_ptr, gt_ptr, w * gram * (1.0 / (d * 1.0 * d)),
                            ns, nt, d, stride_s, stride_t, c_start,
                            tl.minimum(c_start + cols_per_prog, d), BN, BD, DOT_PREC)
