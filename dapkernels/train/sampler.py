"""An endless, resumable mini-batch stream over an in-memory tensor dataset.

Each pass draws a fresh permutation from the stream's own ``torch.Generator`` and yields
full batches (the incomplete tail is dropped, as with ``drop_last=True``).  The whole
position — generator state, current permutation, offset — is a small ``state_dict``, so a
run restored from a checkpoint sees exactly the batches it would have seen uninterrupted.
"""

from __future__ import annotations

import torch

__all__ = ["BatchStream"]


class BatchStream:
    """Endless shuffled batches of ``(x[idx], y[idx])`` (``y`` may be ``None``).

    Args:
        x: samples, (n, …).
        y: labels, (n,), or ``None``.
        batch_size: rows per batch; must not exceed ``n``.
        seed: seed of this stream's generator (independent of the global RNG).
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor | None, batch_size: int, seed: int
    ) -> None:
        if batch_size < 1 or batch_size > x.shape[0]:
            raise ValueError(
                f"batch_size must be between 1 and the dataset size {x.shape[0]}, got {batch_size}"
            )
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(x.shape[0], generator=self.generator)
        self.offset = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next batch; starts a new shuffled pass when the current one is exhausted."""
        if self.offset + self.batch_size > self.perm.numel():
            self.perm = torch.randperm(self.x.shape[0], generator=self.generator)
            self.offset = 0
        idx = self.perm[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        return self.x[idx], None if self.y is None else self.y[idx]

    def state_dict(self) -> dict[str, object]:
        """Generator state, current permutation and offset."""
        return {
            "generator": self.generator.get_state(),
            "perm": self.perm.clone(),
            "offset": self.offset,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restores a position saved by :meth:`state_dict`."""
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.offset = int(state["offset"])
