"""DANN: a domain discriminator behind a warm-start gradient reversal layer.

``impl="fused"`` reverses gradients with :class:`dapkernels.WarmStartGradientReversal`;
``impl="naive"`` with :class:`CopyingWarmStartReversal` (the copying reversal of
:mod:`dapkernels.baselines.grl` on the same schedule).  The discriminator
(:class:`dapkernels.DomainDiscriminator`) and the loss (:class:`dapkernels.DomainAdversarialLoss`)
are the same in both, so only the reversal layer differs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import DomainAdversarialLoss, DomainDiscriminator, WarmStartGradientReversal
from ..baselines import naive_grad_reverse
from .adaptation import Adaptation
from .config import TrainConfig

__all__ = ["DANNAdaptation", "CopyingWarmStartReversal"]


class CopyingWarmStartReversal(nn.Module):
    """The usual copied GRL: ``x * 1.0`` forward, ``−coeff · grad`` backward, with DANN's ramp
    ``coeff(i) = 2/(1 + exp(−alpha·i/max_iters)) − 1`` computed in Python each call."""

    num_iters: torch.Tensor

    def __init__(self, alpha: float, max_iters: int) -> None:
        super().__init__()
        self.alpha, self.max_iters = alpha, max_iters
        self.register_buffer("num_iters", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = int(self.num_iters)
        coeff = 2.0 / (1.0 + math.exp(-self.alpha * i / self.max_iters)) - 1.0
        return naive_grad_reverse(x, coeff)

    @torch.no_grad()
    def step(self) -> None:
        """Advances the iteration counter by one."""
        self.num_iters.add_(1)


class DANNAdaptation(Adaptation):
    """Domain BCE (source = 1, target = 0) of a 2-hidden-layer discriminator behind a GRL.

    The reversal counter is a buffer, so it is part of ``state_dict`` (and checkpoints).
    """

    needs_target = True

    def __init__(self, config: TrainConfig, features_dim: int) -> None:
        super().__init__()
        discriminator = DomainDiscriminator(features_dim, config.discriminator_hidden)
        if config.impl == "fused":
            grl: nn.Module = WarmStartGradientReversal(
                alpha=config.grl_alpha, lo=0.0, hi=1.0, max_iters=config.grl_max_iters,
                auto_step=False,
            )
        else:
            grl = CopyingWarmStartReversal(config.grl_alpha, config.grl_max_iters)
        self.loss = DomainAdversarialLoss(discriminator, grl=grl)

    def forward(self, f_s, f_t, logits_s, logits_t) -> torch.Tensor:
        return self.loss(f_s, f_t)

    def after_step(self) -> None:
        self.loss.grl.step()
