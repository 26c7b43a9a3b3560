"""The result every two-sample test in :mod:`dapkernels.metrics` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["TestResult", "KernelResult"]


@dataclass(frozen=True)
class KernelResult:
    """One bandwidth of an aggregated test.

    Attributes:
        sigma2: the bandwidth σ² this kernel used (after the data-driven scaling).
        statistic: the observed MMD² under this kernel alone.
        p_value: its permutation / wild-bootstrap p-value, ``(1 + #{T_b ≥ T}) / (1 + B)``.
        level: the corrected level this kernel was tested at (MMDAgg's ``u_α · w_λ``).
        reject: ``p_value <= level``.
    """

    sigma2: float
    statistic: float
    p_value: float
    level: float
    reject: bool


@dataclass(frozen=True)
class TestResult:
    """Outcome of :func:`dapkernels.metrics.mmd_test`.

    Attributes:
        statistic: observed statistic; equals ``dk.mmd(x, y, kernels, estimator)`` for the
            quadratic-time methods.
        p_value: ``(1 + #{b : T_b ≥ T_obs}) / (1 + B)`` for resampling methods; the Gaussian
            tail ``1 − Φ(T_obs / se)`` for "block" and "linear".
        reject: ``p_value <= alpha`` (aggregated: any kernel rejects at its corrected level).
        threshold: the critical value of the statistic at level ``alpha`` (the ⌈(1 − α)(B + 1)⌉-th
            smallest of the null with the observed one included, or the normal quantile).
        null: the B resampled statistics in draw order (float64, CPU; "aggregated": (L, B),
            each kernel's statistics under the first permutation set), or ``None`` when the
            null is Gaussian.
        method: "permutation" | "wild" | "aggregated" | "block" | "linear".
        num_permutations: B (0 for Gaussian-null methods).
        alpha: the level tested at.
        estimator: "unbiased" | "biased" (block / linear: the estimator inside each block).
        std_error: standard error of the statistic under the null (Gaussian-null methods).
        per_kernel: one :class:`KernelResult` per bandwidth for "aggregated", else empty.
        num_blocks: "block" / "linear": the number K of units averaged (0 otherwise).
        block_size: "block": rows per domain in a block; "linear": 2 (0 otherwise).
        sigma2: "block" / "linear": the bandwidths σ_q² of the bank used (empty otherwise).
        observed: the observed statistic as the resampling engine computes it (the resampled
            statistic at the identity permutation / all signs +1), the value ``p_value`` and
            ``threshold`` refer to; equals ``statistic`` up to rounding except for "wild" with
            the unbiased estimator (complete U-statistic; see ``dapkernels.metrics.engine``).
            ``None`` for Gaussian-null methods.
    """

    statistic: float
    p_value: float
    reject: bool
    threshold: float
    null: torch.Tensor | None
    method: str
    num_permutations: int
    alpha: float
    estimator: str
    std_error: float | None = None
    per_kernel: tuple[KernelResult, ...] = field(default_factory=tuple)
    num_blocks: int = 0
    block_size: int = 0
    sigma2: tuple[float, ...] = ()
    observed: float | None = None
