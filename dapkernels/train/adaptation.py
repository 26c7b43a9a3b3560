"""The interface every method's transfer loss implements (source-only is the base itself)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Adaptation"]


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
