"""Triton kernel of the kernel two-sample test's engine: the label quadratic forms of a bank.

For rows ``z`` (N, d), a bank of Gaussian kernels ``k_l(a, b) = exp(−γ_l ‖a − b‖²)`` and a
matrix of labels ``V`` (N, B) with entries in {−1, 0, 1} (one column per permutation or sign
vector), the host (``quadratic_forms.py``) asks for

* ``Q[l, b]       = Σ_{i≠j} K_l[i, j] V[i, b] V[j, b]``   (L', B)
* ``rowsums[l, i] = Σ_{j≠i} K_l[i, j]``                   (L', N)

with ``L' = 1`` and ``K = Σ_l K_l`` when the bank is summed, else ``L' = L`` kernels.  No N × N
matrix is ever stored: ``quadratic_forms_kernel`` sweeps tiles (I, J) of rows.

Grid ``(G, cdiv(B, BLOCK_B), num_chunks)``.  Program (g, p, c) owns

* the row blocks I = g, g + G, g + 2G, … (BLOCK_I rows each; G ≤ cdiv(N, BLOCK_I) is chosen
  by the host to fill the device, so the partial buffer stays (G, L', B) and not
  (N / BLOCK_I, L', B));
* the label columns ``p · BLOCK_B … (p + 1) · BLOCK_B − 1``;
* the kernels ``c · L_PAD … (c + 1) · L_PAD − 1`` of the bank (all L summed when SUM_BANK, one
  chunk).

Per tile (I, J): ``D_IJ = ‖z_I‖² + ‖z_J‖² − 2 Z_I Z_Jᵀ`` (tl.dot over BLOCK_D-chunks of the
columns, float32, clamped at 0; +inf on the diagonal and for rows ≥ N, so that K = 0 there
with γ > 0), per kernel ``K = exp(−γ_l D)``, ``rowsum_I += Σ_J K`` and ``P = (2 K ∘ [i < j]) V_J``
(BLOCK_I × BLOCK_B, a second tl.dot with V cast to float32), reduced against ``V_I`` over the rows
into a BLOCK_B partial of Q.  Symmetry: ``K`` is symmetric, so ``Σ_{i≠j} = 2 Σ_{i<j}`` and only
tiles with ``J ≥ I`` (from the column block holding the diagonal of I) enter Q.  The row sums
need every column: programs of label block 0 also visit the tiles left of the diagonal, for
the row sums only (no label GEMM there).

Accumulation and determinism: a tile's sums are float32, added into float64 accumulators (the
row sums ``[L_PAD, BLOCK_I]`` per row block, Q ``[L_PAD, BLOCK_B]`` over the program's row
blocks).  Each program then plainly stores its own slice — ``rowsums[l, I]`` (label block 0
only; every row belongs to one row block, one program) and ``q_part[g, l, p-block]`` — no
atomics anywhere: the host sums ``q_part`` over g in float64 with torch.  For a given device
(G depends on its number of multiprocessors) and configuration the result is bitwise
reproducible.

Cost: each label block recomputes the distance tiles, so the sweep does about
``N²/2 · (d · cdiv(B, BLOCK_B) + B · L')`` multiply-adds (plus ``N² d / 2`` for the row sums
left of the diagonal) and ``N²/2 · L · cdiv(B, BLOCK_B)`` exponentials; memory is the inputs
plus the (G, L', B) partials.

Precision: both GEMMs take ``DOT_PREC`` — "ieee" (full float32; FMA units) by default, "tf32"
(tensor cores, 10-bit mantissa operands) when the host allows TF32.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["IEEE", "QF_CONFIGS", "MAX_L_PAD", "quadratic_forms_kernel"]

#: Launch configurations per device class and tl.dot precision,
#: ``{class: (min opt-in shared bytes per block, {DOT_PREC: (BLOCK_I, BLOCK_J, BLOCK_B,
#: BLOCK_D, num_warps, num_stages, maxnreg)})}``; the class is read off the device's
#: ``shared_memory_per_block_optin`` (``quadratic_forms.pick_config``), ``maxnreg`` None leaves
#: ptxas its own register bound.  Registers, not shared memory, bind here: every entry takes
#: ≤ 64 KB of shared memory, while wider tiles (BLOCK_B = 128, BLOCK_I = 128, BLOCK_D = 64) or
#: deeper pipelines spill on some target (two GEMMs, the distance tile, the labels of I and J
#: and the float64 accumulators are live together; the IEEE GEMMs run on FMA units, which hold
#: whole operand rows in registers).  The IEEE entry needs ``maxnreg=255``: left alone, ptxas
#: caps it at 128 registers on sm_80 / 86 / 89 (two blocks per SM) and spills; the TF32 entries
#: spill with that bound on sm_80 and compile clean without it.  Each entry compiles without
#: spills, within the shared memory of its class, on each target of its class, for both bank
#: modes and with or without 16-aligned sizes: ``benchmarks/results/aot_quadratic_forms.txt``.
IEEE = (64, 64, 32, 16, 8, 1, 255)
QF_CONFIGS = {
    # ≈ 99 KB: sm_86, sm_89, sm_120 (RTX 30 / 40 / 50, A10, L4, L40S); also the fallback
    "99KB": (99 * 1024, {"ieee": IEEE, "tf32": (64, 64, 64, 32, 8, 2, None)}),
    # 163 KB: sm_80 (A100, A30)
    "163KB": (163 * 1024, {"ieee": IEEE, "tf32": (64, 64, 64, 32, 8, 3, None)}),
    # 227 KB: sm_90, sm_100 (H100 / H200, B200)
    "227KB": (227 * 1024, {"ieee": IEEE, "tf32": (64, 64, 64, 32, 8, 4, None)}),
}
#: kernels of the bank handled by one program in per-kernel mode (a power of two); a longer
#: bank is split over the third grid axis.
MAX_L_PAD: tl.constexpr = tl.constexpr(16)


@triton.jit
def _distances(z_ptr, sq_ptr, rows_i, mask_i, off_i, sq_i, j0, N, d, stride_z,
               BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
               DOT_PREC: tl.constexpr):
    """Tile ``D_IJ = max(‖z_i‖² + ‖z_j‖² − 2 z_i·z_j, 0)`` (BLOCK_I × BLOCK_J, float32) for the
    column rows ``j0 … j0 + BLOCK_J − 1``, +inf on the diagonal and for rows ≥ N (``sq_i`` of
    those rows is +inf too); with the column rows and their mask."""
    rows_j = j0 + tl.arange(0, BLOCK_J)
    mask_j = rows_j < N
    off_j = rows_j.to(tl.int64) * stride_z
    cols = tl.arange(0, BLOCK_D)
    dot = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
    for c0 in range(0, d, BLOCK_D):
        cmask = (c0 + cols) < d
        a = tl.load(z_ptr + off_i[:, None] + c0 + cols[None, :],
                    mask=mask_i[:, None] & cmask[None, :], other=0.0)
        b = tl.load(z_ptr + off_j[:, None] + c0 + cols[None, :],
                    mask=mask_j[:, None] & cmask[None, :], other=0.0)
        dot = tl.dot(a, tl.trans(b), dot, input_precision=DOT_PREC)
    # Rows ≥ N have an infinite norm and the diagonal an infinite distance, so exp(−γ D) = 0
    # there (γ > 0) without a 2-D mask kept alive next to the tile.
    sq_j = tl.load(sq_ptr + rows_j, mask=mask_j, other=float("inf"))
    dist = tl.maximum(sq_i[:, None] + sq_j[None, :] - 2.0 * dot, 0.0)
    dist = tl.where(rows_i[:, None] == rows_j[None, :], float("inf"), dist)
    return dist, rows_j, mask_j


@triton.jit
def _kernel_values(dist, gamma_ptr, l, l_count, SUM_BANK: tl.constexpr):
    """``K = Σ_l exp(−γ_l D)`` over the whole bank (SUM_BANK) or ``exp(−γ_l D)`` for kernel
    ``l`` (0 where D = +inf)."""
    if SUM_BANK:
        k = tl.zeros_like(dist)
        for q in range(l_count):
            k += tl.exp(-tl.load(gamma_ptr + q) * dist)
    else:
        k = tl.exp(-tl.load(gamma_ptr + l) * dist)
    return k


@triton.jit
def _set_lane(tile, lanes, l, part):
    """``tile[l, :] = part`` in an (L_PAD, n) float32 tile of one tile's sums (a select: no
    rounding).  The tile is then added to the float64 accumulator once — L_PAD·n float64 adds
    per tile instead of L_PAD²·n (float64 is 1/64 rate on the RTX / L4 / L40S parts)."""
    return tl.where((lanes == l)[:, None], part[None, :], tile)


@triton.jit
def quadratic_forms_kernel(
    # pointers: centred rows (N, d) float32, their squared norms (N,) float32, the bank's γ (L,)
    # float32, the labels (N, B) int8, the Q partials (G, L', B) float64, row sums (L', N) float64
    z_ptr, sq_ptr, gamma_ptr, v_ptr, q_part_ptr, rowsum_ptr,
    # sizes
    N, d, B, L, num_groups,
    # strides (elements) of a row of z and of v
    stride_z, stride_v,
    # tiles: rows I, rows J, label columns, feature chunk; kernels per program (power of two)
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
    L_PAD: tl.constexpr,
    # the bank summed into one kernel (L' = 1, L_PAD = 1) or kept per kernel (L' = L)
    SUM_BANK: tl.constexpr,
    # tl.dot input precision of both GEMMs: "ieee" (full float32) or "tf32"
    DOT_PREC: tl.constexpr,
):
    """Partial quadratic forms and row sums of one program; see the module docstring.

    Writes ``q_part[g, l, b] = Σ_{I ∈ g} Σ_{i ∈ I, j ≠ i} K_l[i, j] V[i, b] V[j, b]`` for its
    label block and kernel chunk, and (label block 0) ``rowsum[l, i] = Σ_{j≠i} K_l[i, j]``
    for the rows of its row blocks.
    """
    pid_g = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_c = tl.program_id(2)
    cols_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = cols_b < B
    lanes = tl.arange(0, L_PAD)
    if SUM_BANK:
        num_out = 1  # L'
        l_lo = 0
        l_count = L
        n_lanes = 1
    else:
        num_out = L
        l_lo = pid_c * L_PAD
        l_count = tl.minimum(L - l_lo, L_PAD)
        n_lanes = l_count
    gammas = gamma_ptr + l_lo
    q_acc = tl.zeros([L_PAD, BLOCK_B], dtype=tl.float64)

    for i0 in range(pid_g * BLOCK_I, N, num_groups * BLOCK_I):
        rows_i = i0 + tl.arange(0, BLOCK_I)
        mask_i = rows_i < N
        off_i = rows_i.to(tl.int64) * stride_z
        sq_i = tl.load(sq_ptr + rows_i, mask=mask_i, other=float("inf"))
        v_i = tl.load(v_ptr + rows_i.to(tl.int64)[:, None] * stride_v + cols_b[None, :],
                      mask=mask_i[:, None] & mask_b[None, :], other=0).to(tl.float32)
        r_acc = tl.zeros([L_PAD, BLOCK_I], dtype=tl.float64)
        # first column block on or above the diagonal of I
        j_diag = (i0 // BLOCK_J) * BLOCK_J

        # Left of the diagonal: row sums only, in label block 0.
        for j0 in range(0, tl.where(pid_b == 0, j_diag, 0), BLOCK_J):
            dist, rows_j, mask_j = _distances(
                z_ptr, sq_ptr, rows_i, mask_i, off_i, sq_i, j0, N, d, stride_z,
                BLOCK_I, BLOCK_J, BLOCK_D, DOT_PREC)
            r_tile = tl.zeros([L_PAD, BLOCK_I], dtype=tl.float32)
            for l in range(n_lanes):
                k = _kernel_values(dist, gammas, l, l_count, SUM_BANK)
                r_tile = _set_lane(r_tile, lanes, l, tl.sum(k, axis=1))
            r_acc += r_tile.to(tl.float64)

        # On and right of the diagonal: row sums and the pairs i < j of Q (counted twice).
        for j0 in range(j_diag, N, BLOCK_J):
            dist, rows_j, mask_j = _distances(
                z_ptr, sq_ptr, rows_i, mask_i, off_i, sq_i, j0, N, d, stride_z,
                BLOCK_I, BLOCK_J, BLOCK_D, DOT_PREC)
            v_j = tl.load(v_ptr + rows_j.to(tl.int64)[:, None] * stride_v + cols_b[None, :],
                          mask=mask_j[:, None] & mask_b[None, :], other=0).to(tl.float32)
            upper = rows_i[:, None] < rows_j[None, :]
            r_tile = tl.zeros([L_PAD, BLOCK_I], dtype=tl.float32)
            q_tile = tl.zeros([L_PAD, BLOCK_B], dtype=tl.float32)
            for l in range(n_lanes):
                k = _kernel_values(dist, gammas, l, l_count, SUM_BANK)
                r_tile = _set_lane(r_tile, lanes, l, tl.sum(k, axis=1))
                p = tl.dot(tl.where(upper, 2.0 * k, 0.0), v_j, input_precision=DOT_PREC)
                q_tile = _set_lane(q_tile, lanes, l, tl.sum(p * v_i, axis=0))
            r_acc += r_tile.to(tl.float64)
            q_acc += q_tile.to(tl.float64)

        out_r = rowsum_ptr + (l_lo + lanes).to(tl.int64)[:, None] * N + rows_i[None, :]
        # row sums from label block 0 only (a scalar folded into the lane bound: the
        # interpreter cannot broadcast a scalar mask)
        r_lanes = tl.where(pid_b == 0, n_lanes, 0)
        tl.store(out_r, r_acc, mask=(lanes < r_lanes)[:, None] & mask_i[None, :])

    out_q = (q_part_ptr + pid_g.to(tl.int64) * num_out * B
             + (l_lo + lanes).to(tl.int64)[:, None] * B + cols_b[None, :])
    tl.store(out_q, q_acc, mask=(lanes < n_lanes)[:, None] & mask_b[None, :])
