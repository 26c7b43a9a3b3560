r"""Quadratic-time kernel two-sample tests: ``dk.metrics.mmd_test``.

Methods run here: "permutation", "wild" and "aggregated", all on the resampling engine of
:mod:`dapkernels.metrics.engine` (formulas, label draw order and routes are documented there);
"block" and "linear" are dispatched to :mod:`dapkernels.metrics.streaming`.

Precision: up to :data:`EXACT_ROWS` pooled rows the engine runs in float64 (the counts then
equal a dense float64 computation with the same draws); beyond, in the input's precision
(float32 tiles, float64 accumulation), where a resampled statistic within float32 rounding of
the observed one may count differently than in float64.

p-values count the observed statistic in: ``p = (1 + #{b : T_b ≥ T_obs}) / (1 + B)``, so p is
never 0 and the test has level α exactly under exchangeability.  ``threshold`` is the
⌈(1 − α)(B + 1)⌉-th smallest value of the null with the observed statistic included.

**Aggregated** (MMDAgg, Schrag et al. 2023, with uniform weights ``w_λ = 1/L``).  Each of the
L kernels of the collection (``kernels=None``: :data:`AGGREGATED_KERNELS`, relative
α = 2^-4 … 2^5; a given bank: its kernels one by one, never summed) is tested on its own.  One
label stream of ``2B`` permutations is drawn in order (same recipe as "permutation"): the first
B (set 1) give each kernel's null and its p-value ``p_λ(t) = (1 + #{b ≤ B : T_λ,b ≥ t}) / (1 + B)``;
the next B (set 2) calibrate the level.  With ``M = min_λ p_λ / w_λ = L · min_λ p_λ`` (the
observed one ``M_obs``, and ``M_b`` for every permutation b of set 2 evaluated against set 1),
the family-wise error at correction u is estimated as ``(1 + #{b : M_b ≤ u}) / (1 + B)``;
``u_α`` is the largest u among ``{M_b} ∪ {M_obs}`` where this is ≤ α (0 if none; the exact value
MMDAgg's bisection converges to, since the estimate only jumps at these points, with the
observed one counted in as for every p-value here).  Kernel λ rejects when
``p_λ ≤ u_α · w_λ`` (its ``KernelResult.level``); the test rejects when any kernel does.
The reported ``p_value = (1 + #{b : M_b ≤ M_obs}) / (1 + B)`` is the Monte-Carlo p-value of the
min-p statistic; ``p_value ≤ α`` exactly when some kernel rejects.  Permutations are used for
every n, m (no wild bootstrap), so "aggregated" needs no n = m.  The min-p statistic is
discrete (p-values in steps of 1/(1 + B)) and its ties count against rejection, so the test is
conservative for small B: a null rejection rate of 0.033 at B = 200 and 0.041 at B = 500 for
α = 0.05 (``benchmarks/metrics_calibration.py``); MMDAgg's default is B = 2000.
"""

from __future__ import annotations

import math

import torch

from .._validation import as_features, check_finite, check_same_space
from ..backends import torch_quadratic_forms as _tiled
from ..functional import mmd
from ..kernels import GaussianKernels
from . import engine
from .result import KernelResult, TestResult
from .streaming import block_mmd_test, linear_mmd_test

__all__ = ["mmd_test", "METHODS", "AGGREGATED_KERNELS", "EXACT_ROWS"]

METHODS = ("permutation", "wild", "aggregated", "block", "linear")
ESTIMATORS = ("unbiased", "biased")

#: Up to this many pooled rows the engine computes in float64 whatever the input dtype, so that
#: the null and the count equal a dense float64 computation (beyond: the input's precision,
#: float32 with float64 accumulation for float32 input).
EXACT_ROWS = 4096

#: Default collection of "aggregated": σ_λ² = 2^λ · mean pairwise squared distance, λ = −4 … 5.
AGGREGATED_KERNELS = GaussianKernels(alphas=tuple(2.0**i for i in range(-4, 6)))

_DEFAULT_KERNELS = GaussianKernels()
_HALF = (torch.float16, torch.bfloat16)


def mmd_test(
    x: torch.Tensor | object,
    y: torch.Tensor | object,
    kernels: GaussianKernels | None = None,
    method: str = "permutation",
    num_permutations: int = 1000,
    estimator: str = "unbiased",
    alpha: float = 0.05,
    generator: torch.Generator | None = None,
    backend: str | None = None,
    progress: bool = False,
) -> TestResult:
    """Kernel two-sample test of ``H0: P_x = P_y`` with the MMD.

    Args:
        x: (n, …) source features, n ≥ 2 (flattened to (n, d) like the losses), finite.
        y: (m, …) target features, m ≥ 2, same width, dtype and device.
        kernels: Gaussian bank as in ``dk.mmd`` (default ``GaussianKernels()``, summed);
            relative bandwidths come from the pooled observed sample and stay fixed for every
            permutation.  "aggregated": the collection tested kernel by kernel (default
            :data:`AGGREGATED_KERNELS`).
        method: "permutation" | "wild" (wild bootstrap, n = m) | "aggregated" | "block" |
            "linear" (the last two: Gaussian null, :mod:`dapkernels.metrics.streaming`).
        num_permutations: B ≥ 1 permutations / sign vectors ("aggregated": B for the
            per-kernel nulls and B more for the level correction).
        estimator: "unbiased" | "biased" (``dk.mmd``'s estimators; wild bootstrap: see
            :mod:`dapkernels.metrics.engine`).
        alpha: level in (0, 1).
        generator: ``torch.Generator`` on x's device, drives ``torch.randperm`` /
            ``torch.randint`` in the documented order (None: torch's default generator).
        backend: engine route — None (C++ core on CPU, tiled torch on CUDA), "cpu", "torch" or
            "reference" (dense float64, small N only).
        progress: show a tqdm bar over the sweep.

    Returns:
        :class:`~dapkernels.metrics.result.TestResult`.  ``statistic`` is
        ``dk.mmd(x, y, kernels, estimator)`` ("aggregated": the collection summed, = Σ_λ of the
        per-kernel statistics); ``observed`` is the statistic the null is compared with, the
        engine's value at the identity permutation / all signs +1 (equal to ``statistic`` up to
        rounding, except "wild" + "unbiased": the complete U-statistic, see the engine).
        ``null``: (B,) float64 CPU, in draw order ("aggregated": (L, B), set 1).
        ``threshold``: critical value of ``observed`` ("aggregated": NaN, see the per-kernel
        levels).

    Raises:
        ValueError / TypeError naming the argument for invalid input.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if kernels is not None and not isinstance(kernels, GaussianKernels):
        raise TypeError(f"kernels must be GaussianKernels or None, got {type(kernels).__name__}")
    if method in ("block", "linear"):
        test = block_mmd_test if method == "block" else linear_mmd_test
        return test(x, y, kernels, estimator=estimator, alpha=float(alpha), progress=progress)
    if isinstance(num_permutations, bool) or not isinstance(num_permutations, int) \
            or num_permutations < 1:
        raise ValueError(f"num_permutations must be an int ≥ 1, got {num_permutations!r}")
    if backend is not None and backend not in engine.ENGINE_BACKENDS:
        raise ValueError(
            f"backend must be one of {engine.ENGINE_BACKENDS} or None, got {backend!r}")
    xs = as_features(x, "x")
    ys = as_features(y, "y")
    check_same_space(xs, ys, "x", "y")
    for t, name in ((xs, "x"), (ys, "y")):  # in row chunks: no full-size temporary
        step = max(1, 2**18 // max(t.shape[1], 1))
        for r0 in range(0, t.shape[0], step):
            check_finite(t[r0:r0 + step], name)
    n, m = xs.shape[0], ys.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"x and y need at least 2 rows each, got n={n} and m={m}")
    if method == "wild" and n != m:
        raise ValueError(f"method 'wild' pairs the samples and needs n = m, got n={n}, m={m}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != xs.device.type:
            raise ValueError(
                f"generator is on {generator.device} but x is on {xs.device}")
    if xs.dtype in _HALF:
        xs, ys = xs.float(), ys.float()
    xs, ys = xs.detach(), ys.detach()
    ex, ey = xs, ys
    if n + m <= EXACT_ROWS and xs.dtype != torch.float64:
        ex, ey = xs.double(), ys.double()
    run = _Run(xs, ys, ex, ey, num_permutations, estimator, float(alpha), generator, backend,
               progress)
    if method == "aggregated":
        return run.aggregated(kernels or AGGREGATED_KERNELS)
    return run.single(kernels or _DEFAULT_KERNELS, method)


class _Run:
    """One call of :func:`mmd_test` on validated (n, d) / (m, d) tensors."""

    def __init__(self, x, y, ex, ey, num, estimator, alpha, generator, backend,
                 progress) -> None:
        self.x, self.y = x, y  # as given: the statistic, dk.mmd's
        self.ex, self.ey = ex, ey  # as the engine computes (float64 up to EXACT_ROWS rows)
        self.n, self.m = x.shape[0], y.shape[0]
        self.num, self.estimator, self.alpha = num, estimator, alpha
        self.generator, self.backend, self.progress = generator, backend, progress

    def _resample(self, gammas: torch.Tensor, sum_bank: bool, wild: bool, num: int) -> torch.Tensor:
        """(L', 1 + num) statistics: column 0 observed, then ``num`` resamples in draw order."""
        n, m, device = self.n, self.m, self.x.device
        labels = (engine.wild_labels(n, num, self.generator, device) if wild
                  else engine.permutation_labels(n, m, num, self.generator, device))
        k0 = float(gammas.numel()) if sum_bank else 1.0
        diag = engine.cross_diagonal(self.ex, self.ey, gammas, sum_bank) if wild else None
        bar = self._bar(num)
        out = []
        done = 0
        for v in labels:
            tick = None
            if bar is not None:  # the tiled torch route reports each row tile of the sweep
                step = v.shape[1] / math.ceil((n + m) / _tiled.DEFAULT_TILE)

                def tick(bar=bar, step=step):
                    bar.update(step)
            q, rowsums, total = engine.quadratic_forms([self.ex, self.ey], gammas, v, sum_bank,
                                                       self.backend, on_row_tile=tick)
            done += v.shape[1]
            if bar is not None:
                bar.update(done - bar.n)
            if wild:
                stats = engine.wild_statistics(q, diag, n, self.estimator, k0)
            else:
                stats = engine.permutation_statistics(q, rowsums, total, v, n, m,
                                                      self.estimator, k0)
            out.append(stats.cpu())
            del v, q, rowsums, total
        if bar is not None:
            bar.close()
        return torch.cat(out, dim=1)

    def _bar(self, num: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=num + 1, desc="mmd_test", unit="perm")

    def single(self, kernels: GaussianKernels, method: str) -> TestResult:
        gammas = engine.bank_gammas(kernels, [self.x, self.y])
        stats = self._resample(gammas, True, method == "wild", self.num)[0]
        # after the sweep, whose labels are freed by now: the two never add up in memory
        statistic = float(mmd(self.x, self.y, kernels, self.estimator))
        observed, null = float(stats[0]), stats[1:].clone()
        count = int((null >= observed).sum())
        p_value = (1 + count) / (1 + self.num)
        k = math.ceil((1.0 - self.alpha) * (self.num + 1))
        threshold = float(torch.sort(stats).values[k - 1])
        return TestResult(
            statistic=statistic, p_value=p_value, reject=p_value <= self.alpha,
            threshold=threshold, null=null, method=method, num_permutations=self.num,
            alpha=self.alpha, estimator=self.estimator, observed=observed,
        )

    def aggregated(self, kernels: GaussianKernels) -> TestResult:
        num, alpha = self.num, self.alpha
        gammas = engine.bank_gammas(kernels, [self.x, self.y])
        stats = self._resample(gammas, False, False, 2 * num)  # (L, 1 + 2B)
        statistic = float(mmd(self.x, self.y, kernels, self.estimator))
        lam = stats.shape[0]
        observed, null1, null2 = stats[:, 0], stats[:, 1:1 + num], stats[:, 1 + num:]
        sorted1 = torch.sort(null1, dim=1).values

        def p_values(t: torch.Tensor) -> torch.Tensor:  # (L, c) → (L, c): p_λ against set 1
            below = torch.searchsorted(sorted1, t.contiguous(), side="left")
            return (1 + num - below).to(torch.float64) / (1 + num)

        p_obs = p_values(observed[:, None])[:, 0]
        m_obs = float(lam * p_obs.min())
        m_null = lam * p_values(null2).min(dim=0).values  # (B,)
        p_value = (1 + int((m_null <= m_obs).sum())) / (1 + num)
        u_alpha = 0.0
        for u in torch.cat([m_null, torch.tensor([m_obs], dtype=m_null.dtype)]).tolist():
            if u > u_alpha and (1 + int((m_null <= u).sum())) / (1 + num) <= alpha:
                u_alpha = u
        sigma2 = 0.5 / gammas
        per_kernel = tuple(
            KernelResult(sigma2=float(sigma2[i]), statistic=float(observed[i]),
                         p_value=float(p_obs[i]), level=u_alpha / lam,
                         reject=bool(p_obs[i] * lam <= u_alpha))
            for i in range(lam)
        )
        return TestResult(
            statistic=statistic, p_value=p_value, reject=p_value <= alpha,
            threshold=float("nan"), null=null1.clone(), method="aggregated",
            num_permutations=num, alpha=alpha, estimator=self.estimator,
            per_kernel=per_kernel, observed=float(observed.sum()),
        )
