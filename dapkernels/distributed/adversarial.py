"""Global-batch means for :class:`dapkernels.DomainAdversarialLoss` over a process group.

``L = 0.5 · [Σ_{i ∈ S} ℓ_i / n + Σ_{j ∈ T} ℓ_j / m]`` over every rank's rows (n, m global),
and the balanced accuracy ``0.5 · (acc_s + acc_t)`` of the global batch: one all-reduce of
six sums.  Each rank's rows receive ``W · ∂L/∂ℓ_local`` (the package's convention).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .errors import agree, signature
from .gather import all_reduce_sum, scale_grad

__all__ = ["agree_inputs", "global_means"]


def agree_inputs(group, f_s, f_t, w_s, w_t) -> None:
    """Every rank raises when one rank's discriminator inputs are invalid."""
    error = None
    try:
        for name, x in (("f_s", f_s), ("f_t", f_t)):
            if not isinstance(x, torch.Tensor) or x.dim() < 1:
                raise TypeError(f"{name} must be a (batch, …) tensor")
        for name, w, rows in (("w_s", w_s, f_s.shape[0]), ("w_t", w_t, f_t.shape[0])):
            if w is not None and w.shape != (rows,):
                raise ValueError(f"{name} must have shape ({rows},), got {tuple(w.shape)}")
        if f_s.shape[1:] != f_t.shape[1:]:
            raise ValueError(f"f_s has shape {tuple(f_s.shape)}, f_t {tuple(f_t.shape)}")
    except (TypeError, ValueError) as exc:
        error = exc
    device = f_s.device if isinstance(f_s, torch.Tensor) else torch.device("cpu")
    shape = tuple(f_s.shape[1:]) if error is None else ()
    agree(group, error, [], signature("dann", shape) if error is None else 0, device,
          f"features of shape (·, {shape})")


def global_means(group, l_s, l_t, correct_s, correct_t) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, balanced accuracy)`` of the global batch from this rank's per-sample terms."""
    world = dist.get_world_size(group)
    dev = l_s.device

    def count(x):
        return torch.scalar_tensor(float(x.numel()), dtype=torch.float64, device=dev)

    local = torch.stack([l_s.detach().double().sum(), count(l_s), l_t.detach().double().sum(),
                         count(l_t), correct_s.double().sum(), correct_t.double().sum()])
    tot = all_reduce_sum(local, group)
    n, m = tot[1], tot[3]
    value = (0.5 * (tot[0] / n + tot[2] / m)).to(l_s.dtype)
    mine = 0.5 * (l_s.sum() / n.to(l_s.dtype) + l_t.sum() / m.to(l_t.dtype))
    mine = scale_grad(mine, world)
    loss = mine - mine.detach() + value
    acc = (0.5 * (tot[4] / n + tot[5] / m)).to(l_s.dtype)
    return loss, acc
