"""Streaming mean and covariance of feature sets too large for one batch.

Per-batch statistics are merged with Chan et al.'s pairwise update, in float64::

    n = n_a + n_b,   δ = μ_b − μ_a
    μ = μ_a + δ · n_b / n
    M2 = M2_a + M2_b + δ δᵀ · n_a n_b / n          (M2 = Σ (x − μ)(x − μ)ᵀ)

Each batch contributes its own centred scatter matrix, so no running sum of raw squares (the
source of catastrophic cancellation in the one-pass formula) is ever formed.
"""

from __future__ import annotations

import torch

from ._validation import as_features

__all__ = ["RunningCovariance"]


class RunningCovariance:
    """Accumulates the mean and covariance of (n, d…) batches, possibly across workers.

    Example::

        acc = RunningCovariance()
        for x in loader:
            acc.update(features(x))
        cov = acc.covariance()          # (d, d) float64, ddof=1
        acc.merge(other_worker_acc)     # Chan's merge; order does not matter

    Attributes:
        count: number of rows seen.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> RunningCovariance:
        """Adds the rows of ``batch`` (n, d…); returns ``self``."""
        x = as_features(batch, "batch").detach().to(torch.float64)
        mean = x.mean(dim=0)
        centred = x - mean
        self._combine(x.shape[0], mean, centred.T @ centred)
        return self

    def merge(self, other: RunningCovariance) -> RunningCovariance:
        """Adds the statistics accumulated by ``other`` (left unchanged); returns ``self``."""
        if not isinstance(other, RunningCovariance):
            raise TypeError(f"other must be a RunningCovariance, got {type(other).__name__}")
        if other.count:
            self._combine(other.count, other._mean, other._m2)
        return self

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        if self._mean is None:
            self.count, self._mean, self._m2 = n_b, mean_b.clone(), m2_b.clone()
            return
        if mean_b.shape != self._mean.shape:
            raise ValueError(
                f"feature dimensions differ: accumulated d={self._mean.shape[0]}, "
                f"new d={mean_b.shape[0]}"
            )
        if mean_b.device != self._mean.device:
            raise ValueError(f"statistics on {self._mean.device}, new batch on {mean_b.device}")
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def _require(self) -> None:
        if self._mean is None:
            raise ValueError("no data: call update() first")

    @property
    def mean(self) -> torch.Tensor:
        """(d,) float64 mean of all rows seen."""
        self._require()
        return self._mean

    def covariance(self, ddof: int = 1) -> torch.Tensor:
        """(d, d) float64 covariance ``M2 / (count − ddof)``."""
        self._require()
        if self.count <= ddof:
            raise ValueError(
                f"covariance with ddof={ddof} needs more than {ddof} rows, got {self.count}"
            )
        return self._m2 / (self.count - ddof)
