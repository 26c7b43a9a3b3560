"""Kernel specifications: plain data describing a bank of Gaussian kernels, no compute.

A bank ``{k_q}`` is summed without weights, ``k(a, b) = Σ_q k_q(a, b)``, as in DAN and
Transfer-Learning-Library, with ``k_q(a, b) = exp(−‖a − b‖² / (2σ_q²))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["GaussianKernels", "DEFAULT_ALPHAS"]

#: DAN / Transfer-Learning-Library default: σ_q² = 2^q · mean squared distance, q = −3 … 1.
DEFAULT_ALPHAS = tuple(2.0**i for i in range(-3, 2))


def _positive_floats(values: Sequence[float], name: str) -> tuple:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from exc
    if not out:
        raise ValueError(f"{name} must not be empty")
    for v in out:
        if not math.isfinite(v) or v <= 0.0:
            raise ValueError(f"{name} must be finite and positive, got {v}")
    return out


@dataclass(frozen=True, init=False)
class GaussianKernels:
    """A bank of Gaussian kernels with fixed or data-driven bandwidths.

    Exactly one of ``alphas`` and ``sigmas`` is given (neither: ``alphas = 2^-3 … 2^1``):

    * ``alphas``: data-driven, ``σ_q² = α_q · mean_{i,j} ‖z_i − z_j‖²`` where the mean runs
      over all N² ordered pairs of the concatenated batch (diagonal zeros included) and is
      detached from autograd.  If every row is identical the mean distance is 0; it is then
      replaced by 1.0 (all distances are 0, so every kernel value is exactly 1 whatever the
      bandwidth and the loss stays finite).
    * ``sigmas``: fixed, ``k_q(a, b) = exp(−‖a − b‖² / (2σ_q²))``.

    Attributes:
        alphas: relative bandwidth multipliers, or ``None``.
        sigmas: fixed bandwidths σ_q, or ``None``.
    """

    alphas: tuple | None
    sigmas: tuple | None

    def __init__(
        self,
        alphas: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        if alphas is not None and sigmas is not None:
            raise ValueError("give either alphas or sigmas, not both")
        if alphas is None and sigmas is None:
            alphas = DEFAULT_ALPHAS
        object.__setattr__(
            self, "alphas", None if alphas is None else _positive_floats(alphas, "alphas")
        )
        object.__setattr__(
            self, "sigmas", None if sigmas is None else _positive_floats(sigmas, "sigmas")
        )

    @property
    def relative(self) -> bool:
        """True when bandwidths scale with the mean pairwise squared distance."""
        return self.alphas is not None

    @property
    def num_kernels(self) -> int:
        """Number of kernels Q in the bank; also the kernel value at distance 0."""
        return len(self.alphas if self.alphas is not None else self.sigmas)

    @property
    def sigma2_factors(self) -> tuple:
        """σ_q² for fixed banks, or the α_q that multiply the mean distance for relative ones."""
        if self.alphas is not None:
            return self.alphas
        return tuple(s * s for s in self.sigmas)
