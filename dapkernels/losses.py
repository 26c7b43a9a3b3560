"""``nn.Module`` wrappers around :mod:`dapkernels.functional`, in the style of
``torch.nn.modules.loss``: they hold configuration, the functional does the work."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import functional as F
from .kernels import GaussianKernels

__all__ = ["MMDLoss", "JMMDLoss"]


class MMDLoss(nn.Module):
    """Multi-kernel MMD between a source and a target batch; see :func:`dapkernels.mmd`.

    Example::

        loss_fn = MMDLoss(GaussianKernels(alphas=[0.125, 0.25, 0.5, 1.0, 2.0]))
        loss = loss_fn(f_s, f_t)       # f_s: (n, d), f_t: (m, d) -> 0-dim tensor
    """

    def __init__(
        self,
        kernels: GaussianKernels | None = None,
        estimator: str = "unbiased",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        F._check_estimator(estimator, 2, 2)
        self.kernels = kernels if kernels is not None else GaussianKernels()
        self.estimator = estimator
        self.backend = backend

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mmd(source, target, self.kernels, self.estimator, self.backend)

    def extra_repr(self) -> str:
        return f"kernels={self.kernels}, estimator={self.estimator!r}"


class JMMDLoss(nn.Module):
    """Joint MMD of JAN over several layers; see :func:`dapkernels.jmmd`.

    Example::

        loss_fn = JMMDLoss([GaussianKernels(), GaussianKernels(sigmas=[0.92])])
        loss = loss_fn([f_s, p_s], [f_t, p_t])
    """

    def __init__(
        self,
        kernels: Sequence[GaussianKernels] | None = None,
        estimator: str = "unbiased",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        F._check_estimator(estimator, 2, 2)
        self.kernels = None if kernels is None else list(kernels)
        self.estimator = estimator
        self.backend = backend

    def forward(
        self, sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        return F.jmmd(sources, targets, self.kernels, self.estimator, self.backend)

    def extra_repr(self) -> str:
        return f"kernels={self.kernels}, estimator={self.estimator!r}"
