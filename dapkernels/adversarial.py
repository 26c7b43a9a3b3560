"""The adversarial pieces of DANN: a domain discriminator and its loss behind a GRL.

Convention: source samples have domain label 1, target samples 0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as TF

from .losses import WarmStartGradientReversal

__all__ = ["DomainDiscriminator", "DomainAdversarialLoss"]

HEADS = ("sigmoid", "2-logit")


class DomainDiscriminator(nn.Module):
    """Two hidden layers, then a domain head.

    ``Linear(in, hidden) → [BatchNorm1d] → ReLU`` twice (with ``Dropout(0.5)`` after each ReLU
    instead when ``batch_norm=False``), then ``Linear(hidden, 1)`` + sigmoid
    (``head="sigmoid"``: ``forward`` returns P(source), shape (N, 1)) or
    ``Linear(hidden, 2)`` (``head="2-logit"``: ``forward`` returns logits, shape (N, 2)).
    :meth:`logits` returns the pre-sigmoid value, which :class:`DomainAdversarialLoss` uses for a
    numerically stable BCE.
    """

    def __init__(
        self, in_features: int, hidden: int, batch_norm: bool = True, head: str = "sigmoid"
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if in_features < 1 or hidden < 1:
            raise ValueError(
                f"in_features and hidden must be positive, got {in_features} and {hidden}"
            )
        self.head = head

        def block(i: int, o: int) -> list:
            if batch_norm:
                return [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]
            return [nn.Linear(i, o), nn.ReLU(), nn.Dropout(0.5)]

        self.body = nn.Sequential(*block(in_features, hidden), *block(hidden, hidden))
        self.out = nn.Linear(hidden, 1 if head == "sigmoid" else 2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1) or (N, 2) logits."""
        return self.out(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x)
        return torch.sigmoid(z) if self.head == "sigmoid" else z


class DomainAdversarialLoss(nn.Module):
    """Domain classification loss of DANN, computed behind a gradient reversal layer.

    ``forward(f_s, f_t, w_s=None, w_t=None)`` returns::

        0.5 · [ mean_i w_s,i · ℓ(D(R(f_s))_i, 1) + mean_j w_t,j · ℓ(D(R(f_t))_j, 0) ]

    with ``R`` the reversal layer, ``D`` the discriminator and ``ℓ`` binary cross-entropy (from
    logits when ``D`` has a :meth:`~DomainDiscriminator.logits` method, else from the
    probabilities ``D`` returns) or, for two-column outputs, cross-entropy over the two logits.
    Minimising it trains ``D``; the reversed gradient pushes the feature extractor to confuse it.
    After each call ``domain_accuracy`` holds the discriminator's balanced accuracy
    ``0.5 · (acc_s + acc_t)`` as a detached 0-dim tensor.

    Args:
        discriminator: maps (N, d) features to (N, 1) probabilities / logits or (N, 2) logits.
        grl: the reversal layer (default: ``WarmStartGradientReversal(alpha=1, lo=0, hi=1,
            max_iters=1000, auto_step=True)``, the DANN ramp).
        process_group: a ``torch.distributed`` group: the means and ``domain_accuracy`` run
            over the global batch (every rank's rows, one all-reduce of 6 sums), the value is
            the same on every rank and each rank's rows receive ``W ·`` their gradient (the
            convention of :func:`dapkernels.mmd`), so DDP's averaging gives the global
            gradient.  Every rank raises if one rank's input is invalid.
    """

    def __init__(self, discriminator: nn.Module, grl: nn.Module | None = None,
                 process_group: torch.distributed.ProcessGroup | None = None) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.grl = grl if grl is not None else WarmStartGradientReversal(auto_step=True)
        self.domain_accuracy = torch.zeros(())
        self.process_group = process_group

    def forward(
        self,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        w_s: torch.Tensor | None = None,
        w_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n = f_s.shape[0]
        if self.process_group is not None:
            from .distributed.adversarial import agree_inputs

            agree_inputs(self.process_group, f_s, f_t, w_s, w_t)
        for name, w, rows in (("w_s", w_s, n), ("w_t", w_t, f_t.shape[0])):
            if w is not None and w.shape != (rows,):
                raise ValueError(f"{name} must have shape ({rows},), got {tuple(w.shape)}")
        f = self.grl(torch.cat([f_s, f_t]))
        use_logits = hasattr(self.discriminator, "logits")
        out = self.discriminator.logits(f) if use_logits else self.discriminator(f)
        labels = torch.cat([f.new_ones(n), f.new_zeros(f_t.shape[0])])
        if out.dim() == 2 and out.shape[1] == 2:
            per_sample = TF.cross_entropy(out, labels.long(), reduction="none")
            correct = (out.argmax(dim=1) == labels.long()).to(f.dtype)
        else:
            out = out.reshape(-1)
            if use_logits:
                per_sample = TF.binary_cross_entropy_with_logits(out, labels, reduction="none")
                correct = ((out > 0).to(f.dtype) == labels).to(f.dtype)
            else:
                per_sample = TF.binary_cross_entropy(out, labels, reduction="none")
                correct = ((out > 0.5).to(f.dtype) == labels).to(f.dtype)
        l_s, l_t = per_sample[:n], per_sample[n:]
        if w_s is not None:
            l_s = l_s * w_s
        if w_t is not None:
            l_t = l_t * w_t
        if self.process_group is not None:
            from .distributed.adversarial import global_means

            loss, self.domain_accuracy = global_means(self.process_group, l_s, l_t,
                                                      correct[:n], correct[n:])
            return loss
        self.domain_accuracy = 0.5 * (correct[:n].mean() + correct[n:].mean()).detach()
        return 0.5 * (l_s.mean() + l_t.mean())

