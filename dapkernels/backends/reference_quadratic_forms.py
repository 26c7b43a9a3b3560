"""Dense float64 oracle of the quadratic-forms engine contract (tests and small N only).

The contract every engine route keeps (``dapkernels.metrics.engine``, the C++ core, the Triton
kernel)::

    quadratic_forms(z, gammas, v, sum_bank) -> (Q, rowsums, total)

* ``z``: (N, d) float32 / float64 pooled sample ``[x; y]``.
* ``gammas``: (L,) float64, kernel ``k_l(a, b) = exp(−γ_l ‖a − b‖²)``.
* ``v``: (N, B) int8 labels with values in {−1, 0, 1}.
* ``sum_bank``: one kernel ``K = Σ_l K_l`` (L' = 1) or each kernel on its own (L' = L).

Returns, all float64, with ``K_l[i, j] = k_l(z_i, z_j)`` and the diagonal always excluded:

* ``Q``: (L', B), ``Q[l, b] = Σ_{i≠j} K_l[i, j] v[i, b] v[j, b]``
* ``rowsums``: (L', N), ``rowsums[l, i] = Σ_{j≠i} K_l[i, j]``
* ``total``: (L',), ``total[l] = Σ_{i≠j} K_l[i, j]``

This oracle builds the full N × N kernel matrices in float64 (O(L·N²) memory): it exists to
check the tiled engines, never for real data.
"""

from __future__ import annotations

import torch

__all__ = ["quadratic_forms"]


def quadratic_forms(
    z: torch.Tensor, gammas: torch.Tensor, v: torch.Tensor, sum_bank: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense float64 evaluation of the contract above (see the module docstring)."""
    z64 = z.detach().to(torch.float64)
    g = gammas.detach().to(device=z.device, dtype=torch.float64)
    d2 = (z64[:, None, :] - z64[None, :, :]).pow(2).sum(-1)  # exact differences, no GEMM
    k = torch.exp(-g[:, None, None] * d2[None])  # (L, N, N)
    if sum_bank:
        k = k.sum(0, keepdim=True)
    k.diagonal(dim1=1, dim2=2).zero_()
    vf = v.to(torch.float64)
    q = torch.einsum("ib,lij,jb->lb", vf, k, vf)
    rowsums = k.sum(2)
    return q, rowsums, rowsums.sum(1)
