"""``nn.Module`` wrappers around :mod:`dapkernels.functional`, in the style of
``torch.nn.modules.loss``: they hold configuration, the functional does the work."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from . import functional as F
from ._validation import check_estimator
from .kernels import GaussianKernels

__all__ = [
    "MMDLoss",
    "JMMDLoss",
    "CORALLoss",
    "GradientReversal",
    "WarmStartGradientReversal",
]


class MMDLoss(nn.Module):
    """Multi-kernel MMD between a source and a target batch; see :func:`dapkernels.mmd`.

    Example::

        loss_fn = MMDLoss(GaussianKernels(alphas=[0.125, 0.25, 0.5, 1.0, 2.0]))
        loss = loss_fn(f_s, f_t)       # f_s: (n, d), f_t: (m, d) -> 0-dim tensor

    ``process_group`` (e.g. ``torch.distributed.group.WORLD``): the global-batch MMD over
    every rank's rows; each rank's rows receive ``W · ∂L/∂z_local`` (see :func:`dapkernels.mmd`).
    """

    def __init__(
        self,
        kernels: GaussianKernels | None = None,
        estimator: str = "unbiased",
        backend: str | None = None,
        process_group: torch.distributed.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        check_estimator(estimator, 2, 2)
        self.kernels = kernels if kernels is not None else GaussianKernels()
        self.estimator = estimator
        self.backend = backend
        self.process_group = process_group

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.process_group is not None:
            return F.mmd(source, target, self.kernels, self.estimator, self.backend,
                         process_group=self.process_group)
        return F.mmd(source, target, self.kernels, self.estimator, self.backend)

    def extra_repr(self) -> str:
        return f"kernels={self.kernels}, estimator={self.estimator!r}"


class JMMDLoss(nn.Module):
    """Joint MMD of JAN over several layers; see :func:`dapkernels.jmmd`.

    Example::

        loss_fn = JMMDLoss([GaussianKernels(), GaussianKernels(sigmas=[0.92])])
        loss = loss_fn([f_s, p_s], [f_t, p_t])

    ``process_group``: the global-batch JMMD over every rank's rows (see :func:`dapkernels.mmd`).
    """

    def __init__(
        self,
        kernels: Sequence[GaussianKernels] | None = None,
        estimator: str = "unbiased",
        backend: str | None = None,
        process_group: torch.distributed.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        check_estimator(estimator, 2, 2)
        self.kernels = None if kernels is None else list(kernels)
        self.estimator = estimator
        self.backend = backend
        self.process_group = process_group

    def forward(
        self, sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if self.process_group is not None:
            return F.jmmd(sources, targets, self.kernels, self.estimator, self.backend,
                          process_group=self.process_group)
        return F.jmmd(sources, targets, self.kernels, self.estimator, self.backend)

    def extra_repr(self) -> str:
        return f"kernels={self.kernels}, estimator={self.estimator!r}"


class CORALLoss(nn.Module):
    """Deep CORAL loss ``‖C_s − C_t‖_F² / (4d²)``; see :func:`dapkernels.coral`.

    Example::

        loss_fn = CORALLoss()
        loss = loss_fn(f_s, f_t)       # f_s: (n_s, d), f_t: (n_t, d) -> 0-dim tensor

    ``process_group``: CORAL of the global batch over every rank's rows (see
    :func:`dapkernels.coral`).
    """

    def __init__(self, log: bool = False, eps: float = 1e-5, backend: str | None = None,
                 process_group: torch.distributed.ProcessGroup | None = None) -> None:
        super().__init__()
        self.log = log
        self.eps = eps
        self.backend = backend
        self.process_group = process_group

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        if self.process_group is not None:
            return F.coral(f_s, f_t, self.log, self.eps, self.backend,
                           process_group=self.process_group)
        return F.coral(f_s, f_t, self.log, self.eps, self.backend)

    def extra_repr(self) -> str:
        return f"log={self.log}" + (f", eps={self.eps}" if self.log else "")


class GradientReversal(nn.Module):
    """Identity forward, ``−coeff · grad`` backward; see :func:`dapkernels.grad_reverse`.

    A tensor ``coeff`` is kept as a buffer (it follows ``.to(device)`` and ``state_dict``) and
    may be changed in place (``layer.coeff.fill_(v)``) without recompiling a compiled model;
    a float ``coeff`` is a constant of the compiled graph.
    """

    def __init__(self, coeff: float | torch.Tensor = 1.0) -> None:
        super().__init__()
        if isinstance(coeff, torch.Tensor):
            self.register_buffer("coeff", coeff.detach().clone())
        else:
            self.coeff = float(coeff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.grad_reverse(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}"


class WarmStartGradientReversal(nn.Module):
    """Gradient reversal whose coefficient ramps from ``lo`` to ``hi`` (the DANN schedule).

    At iteration ``i`` (``i`` counts :meth:`step` calls)::

        coeff(i) = 2(hi − lo) / (1 + exp(−alpha · i / max_iters)) − (hi − lo) + lo

    ``coeff(0) = lo`` and ``coeff(i) → hi`` as ``i`` grows.  With ``clamp=True`` the value is
    held at ``coeff(max_iters)`` from ``max_iters`` on.  The counter is a buffer, so
    ``state_dict`` round-trips it; the coefficient used in ``forward`` is computed from that
    buffer with tensor ops, so a compiled model does not recompile as it changes.
    ``forward`` uses ``coeff(num_iters)``; call :meth:`step` once per iteration, or set
    ``auto_step=True`` to advance the counter after every ``forward`` (eager mode only: under
    ``torch.compile`` it raises, because the compiled backward could read the advanced counter;
    with ``auto_step=False`` and ``step()`` outside the compiled region nothing recompiles).
    """

    num_iters: torch.Tensor

    def __init__(
        self,
        alpha: float = 1.0,
        lo: float = 0.0,
        hi: float = 1.0,
        max_iters: int = 1000,
        auto_step: bool = False,
        clamp: bool = False,
    ) -> None:
        super().__init__()
        if max_iters <= 0:
            raise ValueError(f"max_iters must be positive, got {max_iters}")
        self.alpha, self.lo, self.hi = float(alpha), float(lo), float(hi)
        self.max_iters = int(max_iters)
        self.auto_step = auto_step
        self.clamp = clamp
        self.register_buffer("num_iters", torch.zeros((), dtype=torch.int64))

    def coeff_at(self, i: int) -> float:
        """The schedule at iteration ``i`` as a Python float."""
        if self.clamp:
            i = min(i, self.max_iters)
        span = self.hi - self.lo
        return 2.0 * span / (1.0 + math.exp(-self.alpha * i / self.max_iters)) - span + self.lo

    @property
    def coeff(self) -> float:
        """The schedule at the current counter, ``coeff(num_iters)``."""
        return self.coeff_at(int(self.num_iters))

    def _coeff_tensor(self) -> torch.Tensor:
        i = self.num_iters.to(torch.float64)
        if self.clamp:
            i = i.clamp(max=float(self.max_iters))
        span = self.hi - self.lo
        return 2.0 * span / (1.0 + torch.exp(-self.alpha * i / self.max_iters)) - span + self.lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.auto_step and torch.compiler.is_compiling():
            # AOTAutograd (torch 2.13) may recompute the coefficient in the backward from the
            # counter buffer after this forward has advanced it: the gradient would silently use
            # coeff(i + 1).  Refuse rather than return a wrong gradient.
            raise RuntimeError(
                "WarmStartGradientReversal(auto_step=True) cannot run under torch.compile; use "
                "auto_step=False and call step() outside the compiled region"
            )
        # Eager: a Python float (math.exp) is cheapest.  Compiled: tensor ops on the buffer, so
        # the graph does not specialise on the counter's value.
        coeff = self._coeff_tensor() if torch.compiler.is_compiling() else self.coeff
        y = F.grad_reverse(x, coeff)
        if self.auto_step:
            self.step()
        return y

    @torch.no_grad()
    def step(self) -> None:
        """Advances the iteration counter by one."""
        self.num_iters.add_(1)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, lo={self.lo}, hi={self.hi}, max_iters={self.max_iters}, "
            f"auto_step={self.auto_step}, clamp={self.clamp}"
        )

