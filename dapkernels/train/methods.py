"""The adaptation losses of each method, in a fused (dapkernels) and a naive implementation.

An :class:`Adaptation` maps the bottleneck features and logits of a source and a target batch
to the transfer loss.  ``impl="naive"`` swaps in the baselines of
:mod:`dapkernels.train.baselines` (Transfer-Learning-Library-pattern MK-MMD / JMMD, d×d
CORAL, copying gradient reversal) and changes nothing else: same modules, same parameters,
same random-number consumption, so a fused and a naive run with one seed follow the same
trajectory up to floating-point rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import GaussianKernels, JMMDLoss, MMDLoss, coral
from ..kernels import DEFAULT_ALPHAS
from .baselines import naive_coral, naive_jmmd, naive_mmd
from .config import TrainConfig

__all__ = ["Adaptation", "build_adaptation", "JAN_SOFTMAX_SIGMA"]

#: Fixed bandwidth of JAN's kernel on the softmax outputs (the JAN recipe).
JAN_SOFTMAX_SIGMA = 0.92


class Adaptation(nn.Module):
    """Base class: no transfer loss (source-only).

    Attributes:
        needs_target: whether the step must forward a target batch.
    """

    needs_target = False

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor | None,
        logits_s: torch.Tensor,
        logits_t: torch.Tensor | None,
    ) -> torch.Tensor:
        return f_s.new_zeros(())

    def after_step(self) -> None:
        """Called once after every optimiser step (advances schedules)."""

    def extra_state_dict(self) -> dict[str, object]:
        """Non-parameter state to checkpoint (schedule counters)."""
        return {}

    def load_extra_state_dict(self, state: dict[str, object]) -> None:
        """Restores :meth:`extra_state_dict`."""


class MMDAdaptation(Adaptation):
    """DAN: unbiased multi-kernel MMD between the bottleneck features."""

    needs_target = True

    def __init__(self, impl: str) -> None:
        super().__init__()
        self.kernels = GaussianKernels(alphas=DEFAULT_ALPHAS)
        self.impl = impl
        self.loss = MMDLoss(self.kernels, estimator="unbiased") if impl == "fused" else None

    def forward(self, f_s, f_t, logits_s, logits_t):
        if self.loss is not None:
            return self.loss(f_s, f_t)
        return naive_mmd(f_s, f_t, self.kernels, estimator="unbiased", pattern="tll")


class JMMDAdaptation(Adaptation):
    """JAN: unbiased joint MMD of (bottleneck features, softmax outputs)."""

    needs_target = True

    def __init__(self, impl: str) -> None:
        super().__init__()
        self.kernels = [
            GaussianKernels(alphas=DEFAULT_ALPHAS),
            GaussianKernels(sigmas=[JAN_SOFTMAX_SIGMA]),
        ]
        self.loss = JMMDLoss(self.kernels, estimator="unbiased") if impl == "fused" else None

    def forward(self, f_s, f_t, logits_s, logits_t):
        sources = [f_s, torch.softmax(logits_s, dim=1)]
        targets = [f_t, torch.softmax(logits_t, dim=1)]
        if self.loss is not None:
            return self.loss(sources, targets)
        return naive_jmmd(sources, targets, self.kernels, estimator="unbiased", pattern="tll")


class CORALAdaptation(Adaptation):
    """Deep CORAL: ``‖C_s − C_t‖²_F / (4d²)`` between the bottleneck features."""

    needs_target = True

    def __init__(self, impl: str) -> None:
        super().__init__()
        self.fn = coral if impl == "fused" else naive_coral

    def forward(self, f_s, f_t, logits_s, logits_t):
        return self.fn(f_s, f_t)


def build_adaptation(config: TrainConfig, features_dim: int) -> Adaptation:
    """The :class:`Adaptation` of ``config.method`` with ``config.impl``, ready to train.

    Modules with parameters (the DANN discriminator) are created here, after the model, so
    that both impls consume the global RNG identically.
    """
    method, impl = config.method, config.impl
    if method == "source-only":
        return Adaptation()
    if method == "dan":
        return MMDAdaptation(impl)
    if method == "jan":
        return JMMDAdaptation(impl)
    if method == "coral":
        return CORALAdaptation(impl)
    from .dann import DANNAdaptation

    return DANNAdaptation(config, features_dim)
