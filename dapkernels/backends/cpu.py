"""CPU backend: the fused MMD / JMMD sweep of the C++ core ``dapkernels._C``.

Same contract as :func:`dapkernels.backends.reference.mmd_sweep`.  With ``c`` the centred rows
of a layer, ``D_ij = ‖c_i‖² + ‖c_j‖² − 2 c_i·c_j``, the joint kernel ``k = Π_l Σ_q e^{−γ_lq D_l}``
and ``C^l_ij = W_ij ∂k/∂D_l``, one sweep over the tiles ``I ≤ J`` gives the block sums and
``∂L/∂z_l = 4 [rowsum(C^l) ⊙ c_l − C^l c_l]``; no N×N matrix is ever stored.

The whole sweep is one C++ call for every N: its GEMM micro-kernel, distance/bank/C epilogue
and C·c products work tile by tile, so Python costs a few microseconds per call.  Handing the
tile GEMMs to torch's BLAS from a Python loop instead (one fused C++ epilogue per tile) was
measured slower at every size on the 2-core development machine (1.1–1.5× the GEMM reference time at
N = 16384, d = 256, against 0.6× for the single call), so only the single call is kept.
Extra memory: the centred copy (N × d) and one N × d accumulator per extra thread.

The CORAL functions live in :mod:`dapkernels.backends.cpu_coral` and are re-exported here, so
this module is the whole CPU backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _C
from .cpu_coral import coral_sweep

__all__ = ["mmd_sweep", "coral_sweep"]

#: Tile edge of the sweep by batch size N = n + m (multiples of 32 only): 32 keeps small
#: batches in few, cheap tiles and 128 amortises the micro-kernel's accumulator traffic at large
#: N; 64 in between, where it also gives the round-robin schedule enough tiles per round for
#: two threads (measured at N = 128 … 2048, d = 256, every ISA copy).
SMALL_TILE, MID_TILE, LARGE_TILE = 32, 64, 128

#: Batches of at most this many rows take the core's two-phase sweep over a stored C matrix
#: (``sweep_small`` in ``csrc/mmd_kernel.h``: two threads share even a batch of two tiles
#: evenly); larger ones the one-pass tile sweep.  The two phases were measured faster at
#: N = 64 … 192 (1.2–1.5× with two threads, d = 256, every ISA copy) and level at N = 256.
SMALL_ROWS = 256


def _tile(rows: int) -> int:
    if rows <= 4 * SMALL_TILE:
        return SMALL_TILE
    return MID_TILE if rows <= 8 * MID_TILE else LARGE_TILE


_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _readable(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when the core can read its rows in place (unit column stride, rows that do
    not overlap), else a contiguous copy."""
    rows, cols = x.shape
    row_stride, col_stride = x.stride()
    if (cols <= 1 or col_stride == 1) and (rows <= 1 or row_stride >= cols):
        return x
    return x.contiguous()


def mmd_sweep(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    weights: Sequence[float],
    need_grad: bool,
) -> tuple[tuple[float, float, float], list[torch.Tensor]]:
    """Block sums ``(S_ss, S_st, S_tt)`` and, if ``need_grad``, ∂L/∂z_l per layer.

    The C++ core reads the source and target blocks where they are (no concatenated copy).
    The sums come back as a tuple of three Python floats (float64), not a tensor: on the CPU a
    tensor would be built only to be read back, and at small batches every tensor creation
    is a visible share of the whole call.

    Args:
        sources, targets: per layer, (n, d_l) and (m, d_l) float32/float64 CPU tensors.
        factors: per layer, σ_q² (fixed) or α_q (relative to the mean pairwise squared distance).
        relative: per layer, whether ``factors`` are relative.
        weights: ``(w_ss, w_st, w_tt)`` of ``L = w_ss S_ss + 2 w_st S_st + w_tt S_tt``.
        need_grad: whether to return the gradients, (n + m, d_l) each, source rows first.

    Raises:
        ValueError: non-finite features (the message names the layer and source/target row).
    """
    s0 = sources[0]
    dtype = _DTYPES.get(s0.dtype)
    if dtype is None or not s0.is_cpu:
        raise TypeError(f"the cpu backend takes float32/float64 CPU tensors, got {s0.dtype} "
                        f"on {s0.device}")
    n, m = s0.shape[0], targets[0].shape[0]
    sp, tp, cols, srs, trs, kept = [], [], [], [], [], []
    for s, t in zip(sources, targets):
        s, t = _readable(s), _readable(t)
        kept += (s, t)  # a contiguous copy must outlive the call
        sp.append(s.data_ptr())
        tp.append(t.data_ptr())
        cols.append(s.shape[1])
        srs.append(s.stride(0))
        trs.append(t.stride(0))
    unit = [1] * len(cols)
    grads = [torch.empty((n + m, d), dtype=s0.dtype) for d in cols] if need_grad else []
    sums = _C.mmd_sweep(
        sp, tp, n, m, cols, srs, unit, trs, unit, dtype, factors, relative, weights,
        [g.data_ptr() for g in grads], cols if need_grad else [],
        _tile(n + m), torch.get_num_threads(), SMALL_ROWS,
    )
    return sums, grads
