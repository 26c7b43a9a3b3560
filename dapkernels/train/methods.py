"""The adaptation losses of each method, in a fused (dapkernels) and a naive implementation.

An :class:`~dapkernels.train.adaptation.Adaptation` maps the bottleneck features and logits of
a source and a target batch to the transfer loss.  ``impl="naive"`` swaps in the baselines of
:mod:`dapkernels.baselines` (Transfer-Learning-Library-pattern MK-MMD / JMMD, d×d CORAL,
copying gradient reversal) and changes nothing else: same modules, same parameters,
same random-number consumption, so a fused and a naive run with one seed follow the same
trajectory up to floating-point rounding.
"""

from __future__ import annotations

import torch

from .. import GaussianKernels, JMMDLoss, MMDLoss, coral
from ..baselines import naive_coral, naive_jmmd, naive_mmd
from ..kernels import DEFAULT_ALPHAS
from .adaptation import Adaptation
from .config import TrainConfig
from .dann import DANNAdaptation

__all__ = ["build_adaptation", "JAN_SOFTMAX_SIGMA", "MMDAdaptation", "JMMDAdaptation",
           "CORALAdaptation"]

#: Fixed bandwidth of JAN's kernel on the softmax outputs (the JAN recipe).
JAN_SOFTMAX_SIGMA = 0.92


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
    return DANNAdaptation(config, features_dim)
