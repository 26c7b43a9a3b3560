"""Triton kernels of the fused MMD / JMMD sweep (formulas: docs/design.md §MMD).

Launch configurations: ``configs.py``; routes: docs/design.md §Routes.

Three sweep kernels, picked by the host (``mmd.py``) per call:

* ``mmd_small_kernel`` (one layer, N ≤ 64): one program does everything — the shifted Gram matrix
  over d-chunks, distances, bandwidth, bank, block sums, the loss value and the gradient,
  reading the source and target rows in place.  One launch, no memset, no copy: at DA batch
  sizes the host work around the launches is the cost.
* ``mmd_flash_kernel`` (one layer, d ≤ 256) after ``mmd_prep_kernel``: flash-attention structure.  A
  program keeps its B_M rows ``Y_I`` (all d columns) in registers and streams column blocks
  ``Y_J`` once each: ``D = ‖y_I‖² + ‖y_J‖² − 2 Y_I Y_Jᵀ`` and ``acc += C_IJ Y_J`` reuse the same
  loaded ``Y_J`` tile, and the loop body has no inner loop, so Triton pipelines the loads.
* ``mmd_wide_kernel`` (one layer with the gradient, d > 256) after ``mmd_prep_kernel``: each
  distance tile once over all d, ``C′ Y_J`` added to a float32 accumulator in DG-column chunks;
  ``mmd_finish_kernel`` then forms the gradient.
* ``mmd_sweep_kernel`` (JMMD, or no gradient) after ``mmd_prep_kernel``: the general form below.

``mmd_prep_kernel`` (once per layer): shifts the rows by the first row, ``y_i = z_i − z_0``,
  writes them into a packed, zero-padded (N, D_pad) buffer in the compute dtype, stores the
  squared row norms ``‖y_i‖²`` and atomically adds ``Σ_i y_i`` and ``Σ_i ‖y_i‖²`` (float64) for
  the bandwidth: ``Σ_ij ‖z_i − z_j‖² = 2N Σ_i ‖y_i‖² − 2 ‖Σ_i y_i‖²``.  Distances are
  shift-invariant; the shift keeps ``‖a‖² + ‖b‖² − 2 a·b`` from cancelling when the data sit
  far from the origin.
* ``mmd_sweep_kernel``: flash-attention-style tiles.  A program owns a block of B_M rows ``I`` and
  walks over column blocks ``J``: ``D_IJ = ‖y_I‖² + ‖y_J‖² − 2 Y_I Y_Jᵀ`` (tl.dot over d-chunks),
  clamped at 0, the Gaussian bank in registers, the three block sums, and for the gradient
  ``C_IJ = W_IJ · Π_{l'≠l} K_l'(D) · K_l′(D)`` and ``acc += C_IJ Y_J`` (a second tl.dot), so
  ``∂L/∂z_I = 4 [rowsum(C)_I · y_I − (C Y)_I]``.  With no gradient the program visits only
  tiles on or above the diagonal and counts off-diagonal pairs twice.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["mmd_prep_kernel", "mmd_small_kernel", "mmd_flash_kernel", "mmd_sweep_kernel",
           "mmd_wide_kernel", "mmd_finish_kernel", "LAYER_FIELDS", "GROUP_FIELDS", "MAX_LAYERS",
           "MAX_SQUARINGS"]

#: ints per layer in the layer table.  Fields: packed column offset, padded width, true width,
#: offset of the layer's statistics (Σ y, then Σ‖y‖²) in the float64 stats buffer, offset of
#: its bank in the float32 bank table, number of kernels Q, relative-bandwidth flag,
#: geometric-ratio-2 flag.
LAYER_FIELDS: tl.constexpr = tl.constexpr(8)
COL_OFF: tl.constexpr = tl.constexpr(0)
DPAD: tl.constexpr = tl.constexpr(1)
DIM: tl.constexpr = tl.constexpr(2)
STATS_OFF: tl.constexpr = tl.constexpr(3)
BANK_OFF: tl.constexpr = tl.constexpr(4)
NUM_Q: tl.constexpr = tl.constexpr(5)
RELATIVE: tl.constexpr = tl.constexpr(6)
SQUARING: tl.constexpr = tl.constexpr(7)
#: ints per gradient group: layer, first packed column, end packed column.
GROUP_FIELDS: tl.constexpr = tl.constexpr(3)
#: layers one sweep handles (JAN uses 2); per-layer bandwidths live in a vector of this size.
MAX_LAYERS: tl.constexpr = tl.constexpr(8)
#: longest doubling bank evaluated by squaring (unrolled, masked to the real count); longer
#: banks take one exp per kernel.
MAX_SQUARINGS: tl.constexpr = tl.constexpr(8)


@triton.jit
def mmd_prep_kernel(
    z_ptr, zp_ptr, sq_ptr, stats_ptr,
    N, d, dpad, stride_z, stride_p, col_off, rows_per_prog,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Packs one layer ``z`` (N, d) into ``zp[:, col_off : col_off + dpad]`` as ``z − z_0``.

    Writes ``sq[i] = ‖y_i‖²`` (float32, N), adds ``Σ_i y_i`` to ``stats[0:d]`` and
    ``Σ_i ‖y_i‖²`` to ``stats[d]`` (float64 atomics: one per column per program).
    Grid: ``cdiv(N, rows_per_prog)``; columns d … dpad − 1 (dpad a multiple of BLOCK_C) are zeros.
    """
    pid = tl.program_id(0)
    row_start = pid * rows_per_prog
    row_end = tl.minimum(row_start + rows_per_prog, N)
    cols = tl.arange(0, BLOCK_C)
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, dpad, BLOCK_C):
        cmask = (c0 + cols) < d
        z0 = tl.load(z_ptr + c0 + cols, mask=cmask, other=0.0).to(tl.float32)
        colsum = tl.zeros([BLOCK_C], dtype=tl.float32)
        for r0 in range(row_start, row_end, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            rmask = rows < row_end
            rows64 = rows.to(tl.int64)
            m2 = rmask[:, None] & cmask[None, :]
            z = tl.load(z_ptr + rows64[:, None] * stride_z + c0 + cols[None, :], mask=m2, other=0.0)
            # Round to the storage dtype first: norms and sums then describe the stored rows.
            y = tl.where(m2, z.to(tl.float32) - z0[None, :], 0.0).to(zp_ptr.dtype.element_ty)
            tl.store(zp_ptr + rows64[:, None] * stride_p + col_off + c0 + cols[None, :], y,
                     mask=rmask[:, None])
            y = y.to(tl.float32)
            part = tl.sum(y * y, axis=1)
            prev = tl.load(sq_ptr + rows, mask=rmask & (c0 > 0), other=0.0)
            tl.store(sq_ptr + rows, prev + part, mask=rmask)
            colsum += tl.sum(y, axis=0)
            total += part
        tl.atomic_add(stats_ptr + c0 + cols, colsum.to(tl.float64), mask=cmask)
    tl.atomic_add(stats_ptr + d, tl.sum(total, axis=0).to(tl.float64))


@triton.jit
def _inverse_mean_distance(st_ptr, d, N, relative, BLOCK_C: tl.constexpr):
    """1 / mean_ij ‖z_i − z_j‖² (0 → 1) from ``st = [Σ y (d values), Σ‖y‖²]``; 1 if not relative.

    ``Σ_ij ‖z_i − z_j‖² / N² = 2 (Σ‖y‖² − ‖Σy‖²/N) / N``, in float64.
    """
    cols = tl.arange(0, BLOCK_C)
    sq_of_sum = tl.zeros([BLOCK_C], dtype=tl.float64)
    for c0 in range(0, d * relative, BLOCK_C):
        s = tl.load(st_ptr + c0 + cols, mask=(c0 + cols) < d, other=0.0)
        sq_of_sum += s * s
    mean = 2.0 * (tl.load(st_ptr + d) - tl.sum(sq_of_sum, axis=0) / N) / N
    mean = tl.where((mean > 0.0) & (relative != 0), mean, 1.0)
    return (1.0 / mean).to(tl.float32)


@triton.jit
def _bank(D, bank_ptr, q_count, inv_mean, SQUARE: tl.constexpr):
    """``K = Σ_q e^{−γ_q D}`` and ``K′ = −Σ_q γ_q e^{−γ_q D}``, γ_q = bank[1+q] · inv_mean.

    ``bank[0]`` holds max_q bank[1+q] (for the gradient's rescaling).  With SQUARE the γ_q are
    γ_0 · 2^q (q_count ≤ MAX_SQUARINGS): one exp, then each kernel squares the previous one;
    the chain is unrolled and masked, so the caller's loop body holds no inner loop.
    """
    g0 = tl.load(bank_ptr + 1) * inv_mean
    if SQUARE:
        e = tl.exp(-g0 * D)
        k = e
        slope = e
        for q in tl.static_range(1, MAX_SQUARINGS):
            e = e * e
            on = tl.where(q < q_count, 1.0, 0.0)
            k += on * e
            slope += (on * (1 << q)) * e
        slope = -g0 * slope
    else:
        k = tl.zeros_like(D)
        slope = tl.zeros_like(D)
        for q in range(q_count):
            g = tl.load(bank_ptr + 1 + q) * inv_mean
            e = tl.exp(-g * D)
            k += e
            slope -= g * e
    return k, slope


@triton.jit
def _block_sums(kv, rows_i, rows_j, n, acc_src, acc_tgt):
    """Adds Σ_j k over source columns j < n and over target columns to the per-row float64 sums."""
    to_src = tl.sum(tl.where((rows_j < n)[None, :], kv, 0.0), axis=1)
    return acc_src + to_src.to(tl.float64), acc_tgt + (tl.sum(kv, axis=1) - to_src).to(tl.float64)


@triton.jit
def _sums(src_i, acc_src, acc_tgt):
    """``S_ss, S_st, S_tt`` from per-row sums; S_st is half the mixed pairs (s, t) and (t, s)."""
    s_ss = tl.sum(tl.where(src_i, acc_src, 0.0), axis=0)
    s_tt = tl.sum(tl.where(src_i, 0.0, acc_tgt), axis=0)
    s_st = 0.5 * tl.sum(tl.where(src_i, acc_tgt, acc_src), axis=0)
    return s_ss, s_st, s_tt


@triton.jit
def _store_sums(sums_ptr, src_i, acc_src, acc_tgt, ATOMIC: tl.constexpr):
    """Writes (or atomically adds) ``[S_ss, S_st, S_tt]`` from per-row sums."""
    s_ss, s_st, s_tt = _sums(src_i, acc_src, acc_tgt)
    if ATOMIC:
        tl.atomic_add(sums_ptr, s_ss)
        tl.atomic_add(sums_ptr + 1, s_st)
        tl.atomic_add(sums_ptr + 2, s_tt)
    else:
        tl.store(sums_ptr, s_ss)
        tl.store(sums_ptr + 1, s_st)
        tl.store(sums_ptr + 2, s_tt)


@triton.jit
def _unit_weights(src_i, w_ss, w_st, w_tt, bank_ptr, inv):
    """Gradient scale ``s = max|w| · γ_max`` and the row weights to source / target columns / s.

    ``C' = C / s`` keeps a float16 tl.dot from overflowing or flushing to zero.
    """
    w_max = tl.maximum(tl.maximum(tl.abs(w_ss), tl.abs(w_st)), tl.abs(w_tt))
    scale = w_max * tl.load(bank_ptr) * inv
    return scale, tl.where(src_i, w_ss, w_st) / scale, tl.where(src_i, w_st, w_tt) / scale


@triton.jit
def _row_starts(s_ptr, t_ptr, rows, n, stride_s, stride_t):
    """Pointers to the rows of the batch ``[source; target]`` read in place: row i < n of
    ``s``, row i − n of ``t`` for i ≥ n (one gather per tile instead of two masked loads)."""
    return tl.where(rows < n, s_ptr + rows * stride_s, t_ptr + (rows - n) * stride_t)


@triton.jit
def mmd_small_kernel(
    s_ptr, t_ptr, bank_ptr, coef_ptr, grad_ptr, out_ptr,
    N, n, d, stride_s, stride_t, q_count, relative, w_ss, w_st, w_tt,
    BN: tl.constexpr, BD: tl.constexpr, SQUARE: tl.constexpr, HAS_GRAD: tl.constexpr,
    OUT_VALUE: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """The whole loss for one layer, ``[s; t]`` (N = n + m ≤ BN rows, d), in one program.

    ``G = Y Yᵀ`` with ``y_i = z_i − s_0`` (tl.dot over BD-chunks), ``D_ij = G_ii + G_jj − 2 G_ij``
    (exactly 0 on the diagonal), the bandwidth from ``mean(D)``, then the bank.  The source and
    target rows are read where they are (no concatenated copy).  Writes, in float64 arithmetic,
    ``out = [S_ss, S_st, S_tt]`` or with OUT_VALUE the loss itself,
    ``out = coef · [S_ss, S_st, S_tt] + coef[3]`` (``coef`` float64 ``[w_ss, 2 w_st, w_tt, c]``)
    in ``out``'s dtype; with HAS_GRAD ``grad = 4 [rowsum(C) y − C Y]`` (N, d) with
    ``C = W ∘ K′(D)``, in ``grad``'s dtype.  Distances and the bank are float32.
    """
    rows = tl.arange(0, BN)
    rmask = rows < N
    src = rows < n
    cols = tl.arange(0, BD)
    starts = _row_starts(s_ptr, t_ptr, rows, n, stride_s, stride_t)
    gram = tl.zeros([BN, BN], dtype=tl.float32)
    for c0 in range(0, d, BD):
        cmask = (c0 + cols) < d
        m2 = rmask[:, None] & cmask[None, :]
        z0 = tl.load(s_ptr + c0 + cols, mask=cmask, other=0.0).to(tl.float32)
        z = tl.load(starts[:, None] + c0 + cols[None, :], mask=m2, other=0.0)
        y = tl.where(m2, z.to(tl.float32) - z0[None, :], 0.0)
        gram = tl.dot(y, tl.trans(y), gram, input_precision=DOT_PREC)
    eye = rows[:, None] == rows[None, :]
    diag = tl.where(eye, gram, 0.0)
    dist = tl.maximum(tl.sum(diag, axis=1)[:, None] + tl.sum(diag, axis=0)[None, :] - 2.0 * gram,
                      0.0)
    valid = rmask[:, None] & rmask[None, :]
    mean = tl.sum(tl.sum(tl.where(valid, dist, 0.0), axis=1), axis=0) / (N * N)
    inv = tl.where((mean > 0.0) & (relative != 0), 1.0 / tl.where(mean > 0.0, mean, 1.0), 1.0)
    k, slope = _bank(tl.where(valid, dist, float("inf")), bank_ptr, q_count, inv, SQUARE)
    acc_src = tl.zeros([BN], dtype=tl.float64)
    acc_tgt = tl.zeros([BN], dtype=tl.float64)
    acc_src, acc_tgt = _block_sums(k, rows, rows, n, acc_src, acc_tgt)
    if OUT_VALUE:
        s_ss, s_st, s_tt = _sums(src, acc_src, acc_tgt)
        value = (tl.load(coef_ptr) * s_ss + tl.load(coef_ptr + 1) * s_st
                 + tl.load(coef_ptr + 2) * s_tt + tl.load(coef_ptr + 3))
        tl.store(out_ptr, value.to(out_ptr.dtype.element_ty))
    else:
        _store_sums(out_ptr, src, acc_src, acc_tgt, False)
    if HAS_GRAD:
        w = tl.where(src[:, None] == src[None, :], tl.where(src, w_ss, w_tt)[:, None], w_st)
        c = w * slope
        rowsum = tl.sum(c, axis=1)
        for c0 in range(0, d, BD):
            cmask = (c0 + cols) < d
            m2 = rmask[:, None] & cmask[None, :]
            z0 = tl.load(s_ptr + c0 + cols, mask=cmask, other=0.0).to(tl.float32)
            z = tl.load(starts[:, None] + c0 + cols[None, :], mask=m2, other=0.0)
            y = tl.where(m2, z.to(tl.float32) - z0[None, :], 0.0)
            g = 4.0 * (rowsum[:, None] * y - tl.dot(c, y, input_precision=DOT_PREC))
            tl.store(grad_ptr + rows[:, None] * d + c0 + cols[None, :],
                     g.to(grad_ptr.dtype.element_ty), mask=m2)


@triton.jit
def mmd_flash_kernel(
    zp_ptr, sq_ptr, stats_ptr, bank_ptr, grad_ptr, sums_ptr,
    N, n, d, stride_p, q_count, relative, w_ss, w_st, w_tt,
    B_M: tl.constexpr, B_N: tl.constexpr, DP: tl.constexpr, SQUARE: tl.constexpr,
    HAS_GRAD: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Block sums over rows I = pid and, with HAS_GRAD, ∂L/∂Z for rows I, one layer, d ≤ DP.

    ``zp`` (N, DP) packed shifted rows (zero beyond d), ``sq`` (N,) their squared norms,
    ``stats`` [Σ y, Σ‖y‖²].  ``Y_I`` (B_M, DP) is loaded once; each column block ``Y_J``
    (B_N, DP) is loaded once and feeds both GEMMs.  With HAS_GRAD the program sweeps every
    column block (no atomics on the gradient) and writes ``grad[I, :d] =
    4 s [rowsum(C')_I y_I − (C' Y)_I]``; without it, only blocks on or above the diagonal,
    counting off-diagonal pairs twice.  Sums are added into ``sums`` (float64 atomics).
    """
    pid = tl.program_id(0)
    # Rows of zp are DP ≥ 64 elements: the hint lets loads vectorise.
    stride_p = tl.multiple_of(stride_p, 16)
    rows_i = pid * B_M + tl.arange(0, B_M)
    mask_i = rows_i < N
    src_i = rows_i < n
    cols = tl.arange(0, DP)
    y_i = tl.load(zp_ptr + rows_i.to(tl.int64)[:, None] * stride_p + cols[None, :],
                  mask=mask_i[:, None], other=0.0)
    # Masked rows and columns get an infinite norm, hence k = 0 and K′ = 0: no 2-D masks.
    sq_i = tl.load(sq_ptr + rows_i, mask=mask_i, other=float("inf"))
    inv = _inverse_mean_distance(stats_ptr, d, N, relative, 256)
    if HAS_GRAD:
        scale, w_to_src, w_to_tgt = _unit_weights(src_i, w_ss, w_st, w_tt, bank_ptr, inv)
        acc = tl.zeros([B_M, DP], dtype=tl.float32)
        rowsum = tl.zeros([B_M], dtype=tl.float32)
        j_start = 0
    else:
        j_start = (pid * B_M // B_N) * B_N
    acc_src = tl.zeros([B_M], dtype=tl.float64)
    acc_tgt = tl.zeros([B_M], dtype=tl.float64)
    for j0 in range(j_start, N, B_N):
        rows_j = j0 + tl.arange(0, B_N)
        mask_j = rows_j < N
        y_j = tl.load(zp_ptr + rows_j.to(tl.int64)[:, None] * stride_p + cols[None, :],
                      mask=mask_j[:, None], other=0.0)
        sq_j = tl.load(sq_ptr + rows_j, mask=mask_j, other=float("inf"))
        dot = tl.dot(y_i, tl.trans(y_j), input_precision=DOT_PREC)
        dist = tl.maximum(sq_i[:, None] + sq_j[None, :] - 2.0 * dot, 0.0)
        k, slope = _bank(dist, bank_ptr, q_count, inv, SQUARE)
        if HAS_GRAD:
            acc_src, acc_tgt = _block_sums(k, rows_i, rows_j, n, acc_src, acc_tgt)
            c = tl.where((rows_j < n)[None, :], w_to_src[:, None], w_to_tgt[:, None]) * slope
            rowsum += tl.sum(c, axis=1)
            acc = tl.dot(c.to(y_j.dtype), y_j, acc, input_precision=DOT_PREC)
        else:
            diag = rows_i[:, None] - rows_j[None, :]
            kv = tl.where(diag < 0, 2.0 * k, tl.where(diag == 0, k, 0.0))
            acc_src, acc_tgt = _block_sums(kv, rows_i, rows_j, n, acc_src, acc_tgt)
    _store_sums(sums_ptr, src_i, acc_src, acc_tgt, True)
    if HAS_GRAD:
        grad = (4.0 * scale) * (rowsum[:, None] * y_i.to(tl.float32) - acc)
        out = grad_ptr + rows_i.to(tl.int64)[:, None] * d + cols[None, :]
        tl.store(out, grad.to(grad_ptr.dtype.element_ty),
                 mask=mask_i[:, None] & (cols < d)[None, :])


@triton.jit
def _inverse_mean_distances(stats_ptr, layer_ptr, N, L):
    """(MAX_LAYERS,) vector of ``_inverse_mean_distance`` per layer."""
    lanes = tl.arange(0, MAX_LAYERS)
    inv = tl.full([MAX_LAYERS], 1.0, dtype=tl.float32)
    for l in range(L):
        rec = layer_ptr + l * LAYER_FIELDS
        one = _inverse_mean_distance(stats_ptr + tl.load(rec + STATS_OFF), tl.load(rec + DIM), N,
                                     tl.load(rec + RELATIVE), 256)
        inv = tl.where(lanes == l, one, inv)
    return inv


@triton.jit
def _row_block(N, n, stride_p, B_M: tl.constexpr):
    """Rows I of program ``pid_0``: indices, in-range mask, packed-row offsets (int64: N · width
    may pass 2³¹), source mask."""
    rows_i = tl.program_id(0) * B_M + tl.arange(0, B_M)
    return rows_i, rows_i < N, rows_i.to(tl.int64) * stride_p, rows_i < n


@triton.jit
def mmd_sweep_kernel(
    zp_ptr, sq_ptr, stats_ptr, layer_ptr, bank_ptr, group_ptr, grad_ptr, sums_ptr,
    N, n, L, stride_p, stride_g, w_ss, w_st, w_tt,
    B_M: tl.constexpr, B_N: tl.constexpr, BD: tl.constexpr, DG: tl.constexpr,
    HAS_GRAD: tl.constexpr, ONE_LAYER: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Block sums of the (joint) bank over rows I = pid_0 and, with HAS_GRAD, ∂L/∂Z for group pid_1.

    ``zp`` (N, D_pad) packed shifted rows, ``sq`` (L, N) squared row norms.  Adds
    ``[S_ss, S_st, S_tt]`` into ``sums`` (float64) from group 0; writes
    ``grad[I, c0:c1] = 4 s [rowsum(C')_I y_I − (C' Y)_I]`` for the group's columns, where
    ``C' = C / s`` is rescaled so that a float16 tl.dot neither overflows nor flushes to zero.
    """
    pid_g = tl.program_id(1)
    # Widths and offsets are multiples of BD ≥ 16: the hint lets loads vectorise (fewer registers).
    stride_p = tl.multiple_of(stride_p, 16)
    rows_i, mask_i, off_i, src_i = _row_block(N, n, stride_p, B_M)
    cols_k = tl.arange(0, BD)
    inv_means = _inverse_mean_distances(stats_ptr, layer_ptr, N, L)
    lanes = tl.arange(0, MAX_LAYERS)

    if HAS_GRAD:
        own = tl.load(group_ptr + pid_g * GROUP_FIELDS)
        g_c0 = tl.multiple_of(tl.load(group_ptr + pid_g * GROUP_FIELDS + 1), 16)
        g_c1 = tl.load(group_ptr + pid_g * GROUP_FIELDS + 2)
        cols_g = g_c0 + tl.arange(0, DG)
        mask_g = cols_g < g_c1
        own_inv = tl.sum(tl.where(lanes == own, inv_means, 0.0), axis=0)
        scale, w_to_src, w_to_tgt = _unit_weights(
            src_i, w_ss, w_st, w_tt,
            bank_ptr + tl.load(layer_ptr + own * LAYER_FIELDS + BANK_OFF), own_inv)
        acc = tl.zeros([B_M, DG], dtype=tl.float32)
        rowsum = tl.zeros([B_M], dtype=tl.float32)
        j_start = 0
    else:
        own = -1
        # Upper triangle only: start at the column block holding this row block's diagonal.
        j_start = (tl.program_id(0) * B_M // B_N) * B_N

    acc_src = tl.zeros([B_M], dtype=tl.float64)
    acc_tgt = tl.zeros([B_M], dtype=tl.float64)
    for j0 in range(j_start, N, B_N):
        rows_j = j0 + tl.arange(0, B_N)
        mask_j = rows_j < N
        off_j = rows_j.to(tl.int64) * stride_p
        k_all = tl.full([B_M, B_N], 1.0, dtype=tl.float32)
        slope = tl.zeros([B_M, B_N], dtype=tl.float32)
        if not ONE_LAYER:
            others = tl.full([B_M, B_N], 1.0, dtype=tl.float32)
        for l in range(L):
            rec = layer_ptr + l * LAYER_FIELDS
            c_off = tl.multiple_of(tl.load(rec + COL_OFF), 16)
            dpad = tl.load(rec + DPAD)
            dot = tl.zeros([B_M, B_N], dtype=tl.float32)
            for c0 in range(0, dpad, BD):
                a = tl.load(zp_ptr + off_i[:, None] + c_off + c0 + cols_k[None, :],
                            mask=mask_i[:, None], other=0.0)
                b = tl.load(zp_ptr + off_j[:, None] + c_off + c0 + cols_k[None, :],
                            mask=mask_j[:, None], other=0.0)
                dot = tl.dot(a, tl.trans(b), dot, input_precision=DOT_PREC)
            sq_i = tl.load(sq_ptr + l * N + rows_i, mask=mask_i, other=float("inf"))
            sq_j = tl.load(sq_ptr + l * N + rows_j, mask=mask_j, other=float("inf"))
            dist = tl.maximum(sq_i[:, None] + sq_j[None, :] - 2.0 * dot, 0.0)
            inv = tl.sum(tl.where(lanes == l, inv_means, 0.0), axis=0)
            bank = bank_ptr + tl.load(rec + BANK_OFF)
            if tl.load(rec + SQUARING) != 0:
                k, k_slope = _bank(dist, bank, tl.load(rec + NUM_Q), inv, True)
            else:
                k, k_slope = _bank(dist, bank, tl.load(rec + NUM_Q), inv, False)
            if ONE_LAYER:  # no product bookkeeping: fewer live tiles, fewer registers
                k_all = k
                slope = k_slope
            else:
                k_all = k_all * k
                if HAS_GRAD:
                    mine = l == own
                    others = others * tl.where(mine, 1.0, k)
                    slope = tl.where(mine, k_slope, slope)

        if HAS_GRAD:
            kv = k_all
        else:
            diag = rows_i[:, None] - rows_j[None, :]
            kv = tl.where(diag < 0, 2.0 * k_all, tl.where(diag == 0, k_all, 0.0))
        acc_src, acc_tgt = _block_sums(kv, rows_i, rows_j, n, acc_src, acc_tgt)
        if HAS_GRAD:
            w = tl.where((rows_j < n)[None, :], w_to_src[:, None], w_to_tgt[:, None])
            if ONE_LAYER:
                c = w * slope
            else:
                c = w * others * slope
            rowsum += tl.sum(c, axis=1)
            y_j = tl.load(zp_ptr + off_j[:, None] + cols_g[None, :],
                          mask=mask_j[:, None] & mask_g[None, :], other=0.0)
            acc = tl.dot(c.to(y_j.dtype), y_j, acc, input_precision=DOT_PREC)

    if pid_g == 0:
        _store_sums(sums_ptr, src_i, acc_src, acc_tgt, True)
    if HAS_GRAD:
        m2 = mask_i[:, None] & mask_g[None, :]
        y_i = tl.load(zp_ptr + off_i[:, None] + cols_g[None, :], mask=m2, other=0.0)
        grad = (4.0 * scale) * (rowsum[:, None] * y_i.to(tl.float32) - acc)
        out = grad_ptr + rows_i.to(tl.int64)[:, None] * stride_g + cols_g[None, :]
        tl.store(out, grad.to(grad_ptr.dtype.element_ty), mask=m2)


@triton.jit
def mmd_wide_kernel(
    zp_ptr, sq_ptr, stats_ptr, bank_ptr, acc_ptr, rowsum_ptr, sums_ptr,
    N, n, d, dpad, stride_p, q_count, relative, w_ss, w_st, w_tt, cols_per_split,
    B_M: tl.constexpr, B_N: tl.constexpr, BD: tl.constexpr, DG: tl.constexpr,
    SQUARE: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """One layer of any width, with the gradient: rows I = pid_0 against the column blocks J in
    ``[pid_1 · cols_per_split, (pid_1 + 1) · cols_per_split)``.

    Per tile the distance GEMM ``Y_I Y_Jᵀ`` runs once over all d (BD-chunks), then the bank and
    ``C' = C / s`` stay in registers while ``C' Y_J`` is added to the float32 accumulator
    ``acc[I, :]`` (N, dpad) one DG-column chunk at a time.  Row sums of C' go to ``rowsum``
    (N,), block sums to ``sums``; all three by atomic adds (several splits share rows I), into
    buffers the caller zeroed.  ``mmd_finish_kernel`` then forms the gradient.  Unlike a column
    group per program, no tile's distances are computed twice, whatever d.  With several
    splits the float32 additions land in a run-dependent order: the gradient's last bits may
    differ between runs (as the float64 block sums of every multi-program kernel here).
    """
    pid_s = tl.program_id(1)
    stride_p = tl.multiple_of(stride_p, 16)
    rows_i, mask_i, off_i, src_i = _row_block(N, n, stride_p, B_M)
    cols_k = tl.arange(0, BD)
    cols_g = tl.arange(0, DG)
    inv = _inverse_mean_distance(stats_ptr, d, N, relative, 256)
    scale, w_to_src, w_to_tgt = _unit_weights(src_i, w_ss, w_st, w_tt, bank_ptr, inv)
    sq_i = tl.load(sq_ptr + rows_i, mask=mask_i, other=float("inf"))
    rowsum = tl.zeros([B_M], dtype=tl.float32)
    acc_src = tl.zeros([B_M], dtype=tl.float64)
    acc_tgt = tl.zeros([B_M], dtype=tl.float64)
    j_start = pid_s * cols_per_split
    j_end = tl.minimum(j_start + cols_per_split, N)
    for j0 in range(j_start, j_end, B_N):
        rows_j = j0 + tl.arange(0, B_N)
        mask_j = rows_j < j_end
        off_j = rows_j.to(tl.int64) * stride_p
        dot = tl.zeros([B_M, B_N], dtype=tl.float32)
        for c0 in range(0, dpad, BD):
            a = tl.load(zp_ptr + off_i[:, None] + c0 + cols_k[None, :], mask=mask_i[:, None],
                        other=0.0)
            b = tl.load(zp_ptr + off_j[:, None] + c0 + cols_k[None, :], mask=mask_j[:, None],
                        other=0.0)
            dot = tl.dot(a, tl.trans(b), dot, input_precision=DOT_PREC)
        sq_j = tl.load(sq_ptr + rows_j, mask=mask_j, other=float("inf"))
        dist = tl.maximum(sq_i[:, None] + sq_j[None, :] - 2.0 * dot, 0.0)
        k, slope = _bank(dist, bank_ptr, q_count, inv, SQUARE)
        acc_src, acc_tgt = _block_sums(k, rows_i, rows_j, n, acc_src, acc_tgt)
        c = tl.where((rows_j < n)[None, :], w_to_src[:, None], w_to_tgt[:, None]) * slope
        rowsum += tl.sum(c, axis=1)
        c = c.to(zp_ptr.dtype.element_ty)
        for g0 in range(0, dpad, DG):
            y_j = tl.load(zp_ptr + off_j[:, None] + g0 + cols_g[None, :],
                          mask=mask_j[:, None], other=0.0)
            part = tl.dot(c, y_j, input_precision=DOT_PREC)
            tl.atomic_add(acc_ptr + rows_i.to(tl.int64)[:, None] * dpad + g0 + cols_g[None, :],
                          part, mask=mask_i[:, None], sem="relaxed")
    tl.atomic_add(rowsum_ptr + rows_i, rowsum, mask=mask_i, sem="relaxed")
    _store_sums(sums_ptr, src_i, acc_src, acc_tgt, True)


@triton.jit
def mmd_finish_kernel(
    zp_ptr, acc_ptr, rowsum_ptr, stats_ptr, bank_ptr, grad_ptr,
    N, n, d, dpad, stride_p, relative, w_ss, w_st, w_tt,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``grad[i, :d] = 4 s [rowsum(C')_i y_i − acc_i]`` after ``mmd_wide_kernel`` (grid over row
    and column blocks).  ``grad`` may be ``acc`` itself: each element is read, then written, by
    the same thread."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m2 = (rows < N)[:, None] & (cols < d)[None, :]
    inv = _inverse_mean_distance(stats_ptr, d, N, relative, 256)
    scale, _, _ = _unit_weights(rows < n, w_ss, w_st, w_tt, bank_ptr, inv)
    rows64 = rows.to(tl.int64)
    y = tl.load(zp_ptr + rows64[:, None] * stride_p + cols[None, :], mask=m2, other=0.0)
    acc = tl.load(acc_ptr + rows64[:, None] * dpad + cols[None, :], mask=m2, other=0.0)
    rowsum = tl.load(rowsum_ptr + rows, mask=rows < N, other=0.0)
    grad = (4.0 * scale) * (rowsum[:, None] * y.to(tl.float32) - acc)
    tl.store(grad_ptr + rows64[:, None] * dpad + cols[None, :],
             grad.to(grad_ptr.dtype.element_ty), mask=m2)
