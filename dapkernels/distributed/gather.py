"""Collectives without autograd: gather rows of different counts, all-reduce sums.

Nothing here records a graph: the distributed losses keep the gradient of each rank's own
rows local (exact for them), so no gradient ever crosses the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from .errors import comm_device

__all__ = ["all_gather_rows", "all_reduce_sum", "world_size", "rank", "scale_grad"]


def world_size(group) -> int:
    return dist.get_world_size(group)


def rank(group) -> int:
    return dist.get_rank(group)


@torch.no_grad()
def all_gather_rows(x: torch.Tensor, counts: Sequence[int], group) -> torch.Tensor:
    """Concatenation, in rank order, of every rank's ``x``; ranks may hold different row counts.

    Every rank pads its (counts[rank], c) block to ``max(counts)`` rows and one
    ``all_gather`` moves ``W · max(counts) · c`` values (each rank contributes
    ``max(counts) · c``); the padding is dropped.  The counts come from an earlier exchange
    (:func:`dapkernels.distributed.errors.agree`), so no extra round trip is needed.

    Args:
        x: (counts[rank], c) tensor, detached (no autograd through the gather).
        counts: rows held by each rank, the same list on every rank.
        group: the process group.

    Returns:
        (Σ counts, c) tensor on ``x``'s device, in ``x``'s dtype.
    """
    world = len(counts)
    top = max(counts)
    x = x.detach()
    dev = comm_device(group, x.device)
    buf = x.new_zeros((top, x.shape[1]), device=dev)
    buf[: x.shape[0]] = x
    out = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(out, buf, group=group)
    return torch.cat([out[r][: counts[r]] for r in range(world)]).to(x.device)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    """Sum over ranks of ``x`` (a new tensor on ``x``'s device)."""
    dev = comm_device(group, x.device)
    buf = x.detach().to(dev, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    return buf.to(x.device)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, with its gradient multiplied by ``scale`` in backward (the group size
    W of the gradient convention: DDP's averaging then gives the global gradient)."""
    return _ScaleGrad.apply(x, scale)
