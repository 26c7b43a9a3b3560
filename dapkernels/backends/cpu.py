"""CPU backend: the fused MMD / JMMD sweep of the C++ core ``dapkernels._C``.

Same contract as :func:`dapkernels.backends.reference.mmd_sweep`.  With ``c`` the centred rows
of a layer, ``D_ij = ‖c_i‖² + ‖c_j‖² − 2 c_i·c_j``, the joint kernel ``k = Π_l Σ_q e^{−γ_lq D_l}``
and ``C^l_ij = W_ij ∂k/∂D_l``, one sweep over the tiles ``I ≤ J`` gives the block sums and
``∂L/∂z_l = 4 [rowsum(C^l) ⊙ c_l − C^l c_l]``; no N×N matrix is ever stored.

The whole sweep is one C++ call for every N: its GEMM micro-kernel, distance/bank/C epilogue
and C·c products work tile by tile, so Python costs a few microseconds per call.  Handing the
tile GEMMs to torch's BLAS from a Python loop instead (one fused C++ epilogue per tile) was
measured slower at every size on the 2-core development machine (1.1–1.5× the GEMM floor at
N = 16384, d = 256, against 0.6× for the single call), so only the single call is kept.
Extra memory: the centred copy (N × d) and one N × d accumulator per extra thread.

The CORAL functions live in :mod:`dapkernels.backends.cpu_coral` and are re-exported here, so
this module is the whole CPU backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _C
from .cpu_coral import coral_sweep, coral_sweep_float

__all__ = ["mmd_sweep", "coral_sweep", "coral_sweep_float"]

#: Tile edge of the sweep: 32 keeps small batches in few, cheap tiles; 128 amortises the
#: micro-kernel's accumulator traffic at large N (multiples of 32 only).
SMALL_TILE = 32
LARGE_TILE = 128

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def mmd_sweep(
    zs: Sequence[torch.Tensor],
    n: int,
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    weights: Sequence[float],
    need_grad: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Block sums ``[S_ss, S_st, S_tt]`` (float64) and, if ``need_grad``, ∂L/∂z_l per layer.

    Args:
        zs: one (N, d_l) float32/float64 CPU tensor per layer; source rows first (n of them).
        n: number of source rows.
        factors: per layer, σ_q² (fixed) or α_q (relative to the mean pairwise squared distance).
        relative: per layer, whether ``factors`` are relative.
        weights: ``(w_ss, w_st, w_tt)`` of ``L = w_ss S_ss + 2 w_st S_st + w_tt S_tt``.
        need_grad: whether to return the gradients (dtype and shape of each z_l).

    Raises:
        ValueError: non-finite features (the message names the layer and source/target row).
    """
    zs = [z if z.stride(1) == 1 else z.contiguous() for z in zs]
    dtype = _DTYPES.get(zs[0].dtype)
    if dtype is None or zs[0].device.type != "cpu":
        raise TypeError(f"the cpu backend takes float32/float64 CPU tensors, got {zs[0].dtype} "
                        f"on {zs[0].device}")
    N = zs[0].shape[0]
    grads = [torch.empty(z.shape, dtype=z.dtype) for z in zs] if need_grad else []
    sums = _C.mmd_sweep(
        [z.data_ptr() for z in zs], [z.shape[0] for z in zs], [z.shape[1] for z in zs],
        [z.stride(0) for z in zs], [z.stride(1) for z in zs], dtype, n,
        [list(f) for f in factors], list(relative), list(weights),
        [g.data_ptr() for g in grads], [g.stride(0) for g in grads],
        SMALL_TILE if N <= 4 * SMALL_TILE else LARGE_TILE,
    )
    return torch.tensor(sums, dtype=torch.float64), grads
