"""Tiled torch engine of the quadratic-forms contract: CPU and CUDA, no N × N matrix stored.

Contract (see :mod:`dapkernels.backends.reference_quadratic_forms`)::

    quadratic_forms(z, gammas, v, sum_bank) -> (Q (L', B), rowsums (L', N), total (L',))

with ``Q[l, b] = Σ_{i≠j} K_l[i, j] v[i, b] v[j, b]``, ``rowsums[l, i] = Σ_{j≠i} K_l[i, j]``,
``total[l] = Σ_{i≠j} K_l[i, j]``, ``K_l[i, j] = exp(−γ_l ‖z_i − z_j‖²)`` (``K = Σ_l K_l``
when ``sum_bank``, L' = 1; else L' = L).

Sweep: the rows are cut into tiles of T rows; for every tile pair I ≤ J

1. ``D_IJ = ‖c_I‖² + ‖c_J‖² − 2 c_I c_Jᵀ`` (clamped at 0) on centred rows ``c = z − mean``
   (centring removes the cancellation a common offset would cause);
2. the bank ``K_IJ = Σ_l exp(−γ_l D_IJ)`` (or each ``K_l`` alone), diagonal zeroed when I = J;
3. the label product ``P = K_IJ · V_J`` (T × B) reduced on the fly:
   ``Q += w · Σ_{i∈I} V_I[i, :] ∘ P[i, :]`` with ``w = 2`` for I < J (the symmetric tile
   (J, I) contributes the same) and ``w = 1`` on the diagonal tile;
4. ``rowsums[I] += K_IJ 1`` and, for I < J, ``rowsums[J] += K_IJᵀ 1``.

Compute dtype: float64 for float64 input, else float32; every reduction (Q, rowsums) is
accumulated in float64 across tiles.  Scratch: a few T × T and T × B tiles of the compute
dtype (T = 512 by default), independent of N; labels stay int8 and are converted one tile at a
time.

**Rows against all rows** (:func:`quadratic_forms_rows`, the sharded test of
``mmd_test(..., process_group=…)``): the same sums restricted to the rows ``i`` of a given set
``R`` (a process's own rows), each against every row ``j ≠ i``::

    Q_R[l, b]       = Σ_{i∈R} Σ_{j≠i} K_l[i, j] v[i, b] v[j, b]
    rowsums_R[l, i] = Σ_{j≠i} K_l[i, j]        (i ∈ R)

Every ordered pair (i, j) belongs to the set of i, so over sets that partition the rows the
partial sums add up to the contract's outputs (``|R| · N`` pair evaluations per set instead of
the symmetric sweep's N²/2 in all).  Tiles: T own rows × T columns, ``K_IJ @ V_J`` reduced
against ``V_I`` on the fly, the self pairs (global index i = j) zeroed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["quadratic_forms", "quadratic_forms_parts", "quadratic_forms_rows", "DEFAULT_TILE"]

#: Rows per tile (T): scratch is O(T² + T·B) elements of the compute dtype.
DEFAULT_TILE = 512


class _Rows:
    """Row ranges of the pooled sample ``[parts[0]; parts[1]; …]`` without concatenating it."""

    def __init__(self, parts: Sequence[torch.Tensor], dtype: torch.dtype) -> None:
        self.parts = list(parts)
        self.dtype = dtype
        self.starts = []
        start = 0
        for p in self.parts:
            self.starts.append(start)
            start += p.shape[0]
        self.n = start
        total = torch.zeros(self.parts[0].shape[1], dtype=torch.float64,
                            device=self.parts[0].device)
        for p in self.parts:
            total += p.sum(0, dtype=torch.float64)
        self.mean = (total / self.n).to(dtype)

    def get(self, i0: int, i1: int) -> torch.Tensor:
        """Centred rows ``i0 … i1 − 1`` in the compute dtype (a fresh tile)."""
        pieces = []
        for p, s in zip(self.parts, self.starts):
            a, b = max(i0, s), min(i1, s + p.shape[0])
            if a < b:
                pieces.append(p[a - s:b - s].to(self.dtype))
        rows = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return rows - self.mean


def _sweep_setup(parts: Sequence[torch.Tensor], gammas: torch.Tensor,
                 sum_bank: bool) -> tuple[torch.dtype, _Rows, list[float], int]:
    """What every tiled sweep starts from: the compute dtype (float64 for float64 parts, else
    float32), the centred-row reader, the bandwidths γ as floats and L' (1 when the bank is
    summed, else one quadratic form per γ)."""
    cdt = torch.float64 if parts[0].dtype == torch.float64 else torch.float32
    g = [float(x) for x in gammas.detach().cpu().to(torch.float64)]
    return cdt, _Rows(parts, cdt), g, 1 if sum_bank else len(g)


def quadratic_forms_parts(
    parts: Sequence[torch.Tensor],
    gammas: torch.Tensor,
    v: torch.Tensor,
    sum_bank: bool,
    tile: int = DEFAULT_TILE,
    on_row_tile: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract on ``z = [parts[0]; parts[1]; …]`` (row blocks of equal width, one device).

    ``on_row_tile`` is called once per row tile I (progress reporting).
    """
    device = parts[0].device
    cdt, rows, g, lp = _sweep_setup(parts, gammas, sum_bank)
    n_rows = rows.n
    nb = v.shape[1]
    q = torch.zeros(lp, nb, dtype=torch.float64, device=device)
    rowsums = torch.zeros(lp, n_rows, dtype=torch.float64, device=device)
    norms = torch.empty(n_rows, dtype=cdt, device=device)
    for i0 in range(0, n_rows, tile):
        i1 = min(i0 + tile, n_rows)
        c = rows.get(i0, i1)
        norms[i0:i1] = (c * c).sum(1)
    for i0 in range(0, n_rows, tile):
        i1 = min(i0 + tile, n_rows)
        ci = rows.get(i0, i1)
        vi = v[i0:i1].to(cdt)
        for j0 in range(i0, n_rows, tile):
            j1 = min(j0 + tile, n_rows)
            cj = ci if j0 == i0 else rows.get(j0, j1)
            vj = vi if j0 == i0 else v[j0:j1].to(cdt)
            dist = torch.addmm(norms[i0:i1, None] + norms[None, j0:j1], ci, cj.T, alpha=-2.0)
            dist.clamp_(min=0.0)
            w = 1.0 if j0 == i0 else 2.0
            kernels = _bank(dist, g, sum_bank)
            for idx, k in enumerate(kernels):
                if j0 == i0:
                    k.fill_diagonal_(0.0)
                p = k @ vj
                q[idx] += w * torch.einsum("ib,ib->b", vi, p).to(torch.float64)
                rowsums[idx, i0:i1] += k.sum(1, dtype=torch.float64)
                if j0 != i0:
                    rowsums[idx, j0:j1] += k.sum(0, dtype=torch.float64)
        if on_row_tile is not None:
            on_row_tile()
    return q, rowsums, rowsums.sum(1)


def quadratic_forms_rows(
    parts: Sequence[torch.Tensor],
    own: Sequence[tuple[int, int]],
    gammas: torch.Tensor,
    v: torch.Tensor,
    sum_bank: bool,
    tile: int = DEFAULT_TILE,
    on_row_tile: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``R`` of ``z = [parts[0]; parts[1]; …]`` against all rows (module docstring).

    Args:
        parts: row blocks of the pooled sample (equal width, one device); centred by the mean
            of all of them, as :func:`quadratic_forms_parts` does.
        own: ``R`` as half-open global row ranges ``[(i0, i1), …]`` (empty ranges allowed).
        gammas, sum_bank: the bank, as in the contract.
        v: (N, B) labels of **all** rows (int8 or float).
        tile: rows per tile T (own rows and columns alike).
        on_row_tile: called once per tile of own rows (progress reporting).

    Returns:
        ``(Q_R (L', B), rowsums_R (L', |R|))`` float64 on the parts' device; the row sums in
        the order of ``own``.
    """
    device = parts[0].device
    cdt, rows, g, lp = _sweep_setup(parts, gammas, sum_bank)
    n_rows = rows.n
    nb = v.shape[1]
    tiles = [(a, min(a + tile, i1)) for i0, i1 in own for a in range(i0, i1, tile)]
    q = torch.zeros(lp, nb, dtype=torch.float64, device=device)
    rowsums = torch.zeros(lp, sum(b - a for a, b in tiles), dtype=torch.float64, device=device)
    norms = torch.empty(n_rows, dtype=cdt, device=device)
    for j0 in range(0, n_rows, tile):
        c = rows.get(j0, min(j0 + tile, n_rows))
        norms[j0:j0 + c.shape[0]] = (c * c).sum(1)
    out0 = 0
    for i0, i1 in tiles:
        ci = rows.get(i0, i1)
        vi = v[i0:i1].to(cdt)
        for j0 in range(0, n_rows, tile):
            j1 = min(j0 + tile, n_rows)
            cj = rows.get(j0, j1)
            dist = torch.addmm(norms[i0:i1, None] + norms[None, j0:j1], ci, cj.T, alpha=-2.0)
            dist.clamp_(min=0.0)
            kernels = _bank(dist, g, sum_bank)
            lo, hi = max(i0, j0), min(i1, j1)
            for idx, k in enumerate(kernels):
                if lo < hi:  # the self pairs i = j inside this tile
                    r = torch.arange(lo, hi, device=device)
                    k[r - i0, r - j0] = 0.0
                p = k @ v[j0:j1].to(cdt)
                q[idx] += torch.einsum("ib,ib->b", vi, p).to(torch.float64)
                rowsums[idx, out0:out0 + i1 - i0] += k.sum(1, dtype=torch.float64)
        out0 += i1 - i0
        if on_row_tile is not None:
            on_row_tile()
    return q, rowsums


def _bank(dist: torch.Tensor, g: list, sum_bank: bool) -> list:
    """``[Σ_l exp(−γ_l D)]`` when ``sum_bank``, else ``[exp(−γ_0 D), exp(−γ_1 D), …]``."""
    if not sum_bank:
        return [torch.exp(dist * -gl) for gl in g]
    k = torch.exp(dist * -g[0])
    for gl in g[1:]:
        k += torch.exp(dist * -gl)
    return [k]


def quadratic_forms(
    z: torch.Tensor, gammas: torch.Tensor, v: torch.Tensor, sum_bank: bool,
    tile: int = DEFAULT_TILE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The engine contract on a pooled (N, d) sample (see the module docstring)."""
    return quadratic_forms_parts([z], gammas, v, sum_bank, tile)
