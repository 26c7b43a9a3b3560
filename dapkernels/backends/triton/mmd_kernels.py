"""Triton kernels of the fused MMD / JMMD sweep (DESIGN §3).

Two kernels per call:

* ``prep_kernel`` (once per layer): shifts the rows by the first row, ``y_i = z_i − z_0``,
  writes them into a packed, zero-padded (N, D_pad) buffer in the compute dtype, stores the
  squared row norms ``‖y_i‖²`` and atomically adds ``Σ_i y_i`` and ``Σ_i ‖y_i‖²`` (float64) for
  the bandwidth: ``Σ_ij ‖z_i − z_j‖² = 2N Σ_i ‖y_i‖² − 2 ‖Σ_i y_i‖²``.  Distances are
  shift-invariant; the shift keeps ``‖a‖² + ‖b‖² − 2 a·b`` from cancelling when the data sit
  far from the origin.
* ``sweep_kernel``: flash-attention-style tiles.  A program owns a block of B_M rows ``I`` and
  walks over column blocks ``J``: ``D_IJ = ‖y_I‖² + ‖y_J‖² − 2 Y_I Y_Jᵀ`` (tl.dot over d-chunks),
  clamped at 0, the Gaussian bank in registers, the three block sums, and for the gradient
  ``C_IJ = W_IJ · Π_{l'≠l} K_l'(D) · K_l′(D)`` and ``acc += C_IJ Y_J`` (a second tl.dot), so
  ``∂L/∂z_I = 4 [rowsum(C)_I · y_I − (C Y)_I]``.  With no gradient the program visits only
  tiles on or above the diagonal and counts off-diagonal pairs twice.
"""

from __future__ import annotations

import triton
import triton.language as tl

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


@triton.jit
def prep_kernel(
    z_ptr, zp_ptr, sq_ptr, stats_ptr,
    N, d, stride_z, stride_p, col_off, rows_per_prog,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Packs one layer ``z`` (N, d) into ``zp[:, col_off : col_off + pad(d)]`` as ``z − z_0``.

    Writes ``sq[i] = ‖y_i‖²`` (float32, N), adds ``Σ_i y_i`` to ``stats[0:d]`` and
    ``Σ_i ‖y_i‖²`` to ``stats[d]`` (float64 atomics: one per column per program).
    Grid: ``cdiv(N, rows_per_prog)``; columns run to the next multiple of BLOCK_C (zeros).
    """
    pid = tl.program_id(0)
    row_start = pid * rows_per_prog
    row_end = tl.minimum(row_start + rows_per_prog, N)
    cols = tl.arange(0, BLOCK_C)
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, d, BLOCK_C):
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
def _inverse_mean_distances(stats_ptr, layer_ptr, N, L, BLOCK_C: tl.constexpr):
    """(MAX_LAYERS,) vector: 1 / mean_ij ‖z_i − z_j‖² for relative banks (0 → 1), 1 for fixed."""
    lanes = tl.arange(0, MAX_LAYERS)
    inv = tl.full([MAX_LAYERS], 1.0, dtype=tl.float32)
    cols = tl.arange(0, BLOCK_C)
    for l in range(L):
        rec = layer_ptr + l * LAYER_FIELDS
        if tl.load(rec + RELATIVE) != 0:
            d = tl.load(rec + DIM)
            st = stats_ptr + tl.load(rec + STATS_OFF)
            sq_of_sum = tl.zeros([BLOCK_C], dtype=tl.float64)
            for c0 in range(0, d, BLOCK_C):
                s = tl.load(st + c0 + cols, mask=(c0 + cols) < d, other=0.0)
                sq_of_sum += s * s
            # Σ_ij ‖z_i − z_j‖² / N² = 2 (Σ‖y‖² − ‖Σy‖²/N) / N
            mean = 2.0 * (tl.load(st + d) - tl.sum(sq_of_sum, axis=0) / N) / N
            mean = tl.where(mean > 0.0, mean, 1.0)
            inv = tl.where(lanes == l, (1.0 / mean).to(tl.float32), inv)
    return inv


@triton.jit
def _bank(D, bank_ptr, q_count, squaring, inv_mean):
    """``K = Σ_q e^{−γ_q D}`` and ``K′ = −Σ_q γ_q e^{−γ_q D}``, γ_q = bank[1+q] · inv_mean.

    ``bank[0]`` holds max_q bank[1+q] (for the gradient's rescaling).

    With ``squaring`` the γ_q are γ_0 · 2^q: one exp, then each kernel squares the previous one.
    """
    g0 = tl.load(bank_ptr + 1) * inv_mean
    if squaring != 0:
        e = tl.exp(-g0 * D)
        k = e
        slope = e
        weight = 1.0
        for _ in range(1, q_count):
            e = e * e
            weight = weight * 2.0
            k += e
            slope += weight * e
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
def sweep_kernel(
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
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    # Widths and offsets are multiples of BD ≥ 16: the hint lets loads vectorise (fewer registers).
    stride_p = tl.multiple_of(stride_p, 16)
    rows_i = pid_m * B_M + tl.arange(0, B_M)
    mask_i = rows_i < N
    off_i = rows_i.to(tl.int64) * stride_p
    src_i = rows_i < n
    cols_k = tl.arange(0, BD)
    inv_means = _inverse_mean_distances(stats_ptr, layer_ptr, N, L, 256)
    lanes = tl.arange(0, MAX_LAYERS)

    if HAS_GRAD:
        own = tl.load(group_ptr + pid_g * GROUP_FIELDS)
        g_c0 = tl.multiple_of(tl.load(group_ptr + pid_g * GROUP_FIELDS + 1), 16)
        g_c1 = tl.load(group_ptr + pid_g * GROUP_FIELDS + 2)
        cols_g = g_c0 + tl.arange(0, DG)
        mask_g = cols_g < g_c1
        own_rec = layer_ptr + own * LAYER_FIELDS
        own_inv = tl.sum(tl.where(lanes == own, inv_means, 0.0), axis=0)
        w_max = tl.maximum(tl.maximum(tl.abs(w_ss), tl.abs(w_st)), tl.abs(w_tt))
        scale = w_max * tl.load(bank_ptr + tl.load(own_rec + BANK_OFF)) * own_inv
        w_to_src = tl.where(src_i, w_ss, w_st) / scale
        w_to_tgt = tl.where(src_i, w_st, w_tt) / scale
        acc = tl.zeros([B_M, DG], dtype=tl.float32)
        rowsum = tl.zeros([B_M], dtype=tl.float32)
        j_start = 0
    else:
        own = -1
        # Upper triangle only: start at the column block holding this row block's diagonal.
        j_start = (pid_m * B_M // B_N) * B_N

    # Per row: Σ_j k over source columns and over target columns.
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
            k, k_slope = _bank(dist, bank_ptr + tl.load(rec + BANK_OFF), tl.load(rec + NUM_Q),
                               tl.load(rec + SQUARING), inv)
            if ONE_LAYER:  # no product bookkeeping: fewer live tiles, fewer registers
                k_all = k
                slope = k_slope
            else:
                k_all = k_all * k
                if HAS_GRAD:
                    mine = l == own
                    others = others * tl.where(mine, 1.0, k)
                    slope = tl.where(mine, k_slope, slope)

        # Masked rows and columns have an infinite norm, hence k = 0 and K′ = 0: no 2-D masks.
        if HAS_GRAD:
            kv = k_all
        else:
            diag = rows_i[:, None] - rows_j[None, :]
            kv = tl.where(diag < 0, 2.0 * k_all, tl.where(diag == 0, k_all, 0.0))
        src_j = rows_j < n
        to_src = tl.sum(tl.where(src_j[None, :], kv, 0.0), axis=1)
        acc_src += to_src.to(tl.float64)
        acc_tgt += (tl.sum(kv, axis=1) - to_src).to(tl.float64)
        if HAS_GRAD:
            w = tl.where(src_j[None, :], w_to_src[:, None], w_to_tgt[:, None])
            if ONE_LAYER:
                c = w * slope
            else:
                c = w * others * slope
            rowsum += tl.sum(c, axis=1)
            y_j = tl.load(zp_ptr + off_j[:, None] + cols_g[None, :],
                          mask=mask_j[:, None] & mask_g[None, :], other=0.0)
            acc = tl.dot(c.to(y_j.dtype), y_j, acc, input_precision=DOT_PREC)

    if pid_g == 0:
        s_ss = tl.sum(tl.where(src_i, acc_src, 0.0), axis=0)
        s_tt = tl.sum(tl.where(src_i, 0.0, acc_tgt), axis=0)
        # Mixed pairs appear as (s, t) and (t, s): S_st is half of their sum.
        s_x = tl.sum(tl.where(src_i, acc_tgt, acc_src), axis=0)
        tl.atomic_add(sums_ptr, s_ss)
        tl.atomic_add(sums_ptr + 1, 0.5 * s_x)
        tl.atomic_add(sums_ptr + 2, s_tt)
    if HAS_GRAD:
        m2 = mask_i[:, None] & mask_g[None, :]
        y_i = tl.load(zp_ptr + off_i[:, None] + cols_g[None, :], mask=m2, other=0.0)
        grad = (4.0 * scale) * (rowsum[:, None] * y_i.to(tl.float32) - acc)
        out = grad_ptr + rows_i.to(tl.int64)[:, None] * stride_g + cols_g[None, :]
        tl.store(out, grad.to(grad_ptr.dtype.element_ty), mask=m2)
