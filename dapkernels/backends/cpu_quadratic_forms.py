"""C++ core route of the quadratic-forms engine (``dapkernels._C.quadratic_forms``), CPU only.

Same contract as :mod:`dapkernels.backends.reference_quadratic_forms`; the sweep is described
in ``csrc/qf_kernel.h`` (per-ISA copies, OpenMP over row tiles, results identical for every
thread count).  Compute dtype: float64 for float64 input, else float32 (half precision is
cast); Q and the row sums are accumulated in float64 (row sums in 2^-k fixed point, exact
order-independent integer sums).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _C

__all__ = ["quadratic_forms", "quadratic_forms_parts", "DEFAULT_TILE"]

#: Rows per tile of the C++ sweep.
DEFAULT_TILE = 256


def quadratic_forms_parts(
    parts: Sequence[torch.Tensor],
    gammas: torch.Tensor,
    v: torch.Tensor,
    sum_bank: bool,
    tile: int = DEFAULT_TILE,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract on ``z = [parts[0]; parts[1]; …]`` (CPU tensors of one width and dtype).

    ``threads``: OpenMP threads (default ``torch.get_num_threads()``).
    """
    dtype = torch.float64 if parts[0].dtype == torch.float64 else torch.float32
    ps = [p.detach().to(dtype) for p in parts]
    ps = [p if p.stride(1) == 1 or p.shape[1] == 1 else p.contiguous() for p in ps]
    for p in ps:
        if p.device.type != "cpu":
            raise ValueError(f"the C++ engine takes CPU tensors, got one on {p.device}")
    v = v.detach()
    if v.dtype != torch.int8 or v.dim() != 2:
        raise TypeError(f"v must be a 2-D int8 tensor, got {v.dtype} with shape {tuple(v.shape)}")
    v = v.contiguous()
    n_rows = sum(p.shape[0] for p in ps)
    if v.shape[0] != n_rows:
        raise ValueError(f"v has {v.shape[0]} rows, the pooled sample {n_rows}")
    g = [float(x) for x in gammas.detach().cpu().to(torch.float64)]
    lp = 1 if sum_bank else len(g)
    nb = v.shape[1]
    q = torch.empty(lp, nb, dtype=torch.float64)
    rowsums = torch.empty(lp, n_rows, dtype=torch.float64)
    _C.quadratic_forms(
        [p.data_ptr() for p in ps], [p.shape[0] for p in ps], [p.stride(0) for p in ps],
        [p.stride(1) for p in ps], ps[0].shape[1], str(dtype).replace("torch.", ""), g,
        v.data_ptr(), v.stride(0), nb, bool(sum_bank), q.data_ptr(), rowsums.data_ptr(),
        tile=int(tile), threads=int(threads or torch.get_num_threads()),
    )
    return q, rowsums, rowsums.sum(1)


def quadratic_forms(
    z: torch.Tensor, gammas: torch.Tensor, v: torch.Tensor, sum_bank: bool,
    tile: int = DEFAULT_TILE, threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The engine contract on a pooled (N, d) CPU sample."""
    return quadratic_forms_parts([z], gammas, v, sum_bank, tile, threads)
