"""CPU backend: the fused MMD / JMMD sweep of the C++ core ``dapkernels._C``.

Same contract as :func:`dapkernels.backends.reference.mmd_sweep`.  With ``c`` the centred rows
of a layer, ``D_ij = ‖c_i‖² + ‖c_j‖² − 2 c_i·c_j``, the joint kernel ``k = Π_l Σ_q e^{−γ_lq D_l}``
and ``C^l_ij = W_ij ∂k/∂D_l``, one sweep over the tiles ``I ≤ J`` gives the block sums and
``∂L/∂z_l = 4 [rowsum(C^l) ⊙ c_l − C^l c_l]``; no N×N matrix is ever stored.

Two paths, chosen by the batch size ``N`` (threshold measured on a 2-core AVX-512 machine):

* ``N ≤ SMALL_N``: one call into C++ does everything (own GEMM micro-kernel), so the per-call
  cost is a few microseconds of Python.
* larger ``N``: torch's BLAS computes the Gram tile ``c_I c_Jᵀ`` and the products ``C c_J``,
  ``Cᵀ c_I`` on blocks of ``ROWS × COLS`` that stay in cache; everything between those GEMMs
  (distances, bank, block sums, the C tile, row sums) is one fused C++ pass per tile.
  Extra memory: the centred copy (N × d) plus one ``ROWS × COLS`` tile per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _C

#: Largest N handled entirely in C++; above it the tile GEMMs go to torch's BLAS.
SMALL_N = 768
#: Tile of the large-N path: ROWS rows × up to COLS columns (COLS a multiple of ROWS).
ROWS = 512
COLS = 2048

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _layer_args(zs: Sequence[torch.Tensor]) -> tuple[list, ...]:
    zs = [z if z.stride(1) == 1 else z.contiguous() for z in zs]
    dtype = _DTYPES.get(zs[0].dtype)
    if dtype is None or zs[0].device.type != "cpu":
        raise TypeError(f"the cpu backend takes float32/float64 CPU tensors, got {zs[0].dtype} "
                        f"on {zs[0].device}")
    return (
        zs,
        [z.data_ptr() for z in zs],
        [z.shape[0] for z in zs],
        [z.shape[1] for z in zs],
        [z.stride(0) for z in zs],
        [z.stride(1) for z in zs],
        dtype,
    )


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
    zs, ptrs, rows, cols, rstr, cstr, dtype = _layer_args(zs)
    factors = [list(f) for f in factors]
    relative = list(relative)
    weights = list(weights)
    if rows[0] <= SMALL_N:
        grads = [torch.empty(z.shape, dtype=z.dtype) for z in zs] if need_grad else []
        sums = _C.mmd_sweep(ptrs, rows, cols, rstr, cstr, dtype, n, factors, relative, weights,
                            [g.data_ptr() for g in grads], [g.stride(0) for g in grads])
        return torch.tensor(sums, dtype=torch.float64), grads
    return _tiled(zs, ptrs, rows, cols, rstr, cstr, dtype, n, factors, relative, weights,
                  need_grad)


def _tiled(zs, ptrs, rows, cols, rstr, cstr, dtype, n, factors, relative, weights, need_grad):
    N = rows[0]
    cs = [torch.empty(z.shape, dtype=z.dtype) for z in zs]
    sweep = _C.MMDSweep(ptrs, rows, cols, rstr, cstr, dtype, n, factors, relative, weights,
                        [c.data_ptr() for c in cs], need_grad)
    accs = [torch.zeros_like(c) for c in cs] if need_grad else []
    bufs = [torch.empty(min(ROWS, N) * min(COLS, N), dtype=z.dtype) for z in zs]
    for i0 in range(0, N, ROWS):
        i1 = min(i0 + ROWS, N)
        for j0 in range(i0, N, COLS):
            j1 = min(j0 + COLS, N)
            tiles = [b[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0) for b in bufs]
            for g, c in zip(tiles, cs):
                torch.mm(c[i0:i1], c[j0:j1].t(), out=g)
            sweep.tile([g.data_ptr() for g in tiles], j1 - j0, i0, i1, j0, j1)
            for g, c, acc in zip(tiles, cs, accs):  # tile now holds C: acc += C c_J, Cᵀ c_I
                acc[i0:i1].addmm_(g, c[j0:j1])
                acc[j0:j1].addmm_(g.t(), c[i0:i1])
    if need_grad:
        sweep.finish([a.data_ptr() for a in accs])
    return torch.tensor(sweep.sums(), dtype=torch.float64), accs
