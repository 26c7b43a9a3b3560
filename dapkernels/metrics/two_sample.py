r"""Quadratic-time kernel two-sample tests: ``dk.metrics.mmd_test``.

Methods run here: "permutation", "wild" and "aggregated", all on the resampling engine of
:mod:`dapkernels.metrics.engine` (formulas, label draw order and routes are documented there);
"block" and "linear" are dispatched to :mod:`dapkernels.metrics.streaming`.

With ``process_group=group`` x and y are per-rank shards and the quadratic-time tests run
sharded (:func:`_sharded_test`; docs/distributed.md §Two-sample test): rows gathered once,
each rank sweeps its own rows against all rows, one all-reduce per label chunk.

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
import zlib

import torch

from .._validation import as_features, check_finite, check_same_space
from ..backends import torch_quadratic_forms as _tiled
from ..distributed.errors import agree, signature
from ..distributed.gather import all_gather_rows, all_reduce_sum, rank
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
    process_group: torch.distributed.ProcessGroup | None = None,
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
        progress: show a tqdm bar over the sweep (with a group: on rank 0 only).
        process_group: ``None`` (default): x and y are the whole samples.  A
            ``torch.distributed`` group: x and y are this rank's **shards** (any row counts, 0
            included; ≥ 2 rows per sample over all ranks), and the test is the one of the
            concatenations in rank order, the same result on every rank and the same as one
            process on the concatenated samples with the same generator state (seed every rank
            alike; a differing generator state raises).  "permutation", "wild" and
            "aggregated" only ("block" / "linear" raise ``ValueError``: not supported with
            process_group); ``backend`` None or "torch".  See :func:`_sharded_test` and
            docs/distributed.md.

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
    if process_group is not None:
        return _sharded_test(x, y, kernels, method, num_permutations, estimator, alpha,
                             generator, backend, progress, process_group)
    _check_arguments(method, estimator, alpha, kernels)
    if method in ("block", "linear"):
        test = block_mmd_test if method == "block" else linear_mmd_test
        return test(x, y, kernels, estimator=estimator, alpha=float(alpha), progress=progress)
    _check_resampling(num_permutations, backend)
    xs, ys = _features(x, y, allow_empty=False)
    n, m = xs.shape[0], ys.shape[0]
    _check_sizes(method, n, m)
    _check_generator(generator, xs.device)
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


def _check_arguments(method, estimator, alpha, kernels) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if kernels is not None and not isinstance(kernels, GaussianKernels):
        raise TypeError(f"kernels must be GaussianKernels or None, got {type(kernels).__name__}")


def _check_resampling(num_permutations, backend) -> None:
    if isinstance(num_permutations, bool) or not isinstance(num_permutations, int) \
            or num_permutations < 1:
        raise ValueError(f"num_permutations must be an int ≥ 1, got {num_permutations!r}")
    if backend is not None and backend not in engine.ENGINE_BACKENDS:
        raise ValueError(
            f"backend must be one of {engine.ENGINE_BACKENDS} or None, got {backend!r}")


def _features(x, y, allow_empty: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y as checked, finite (n, d) / (m, d) tensors (``allow_empty``: a shard may be empty)."""
    xs = _shard(x, "x") if allow_empty else as_features(x, "x")
    ys = _shard(y, "y") if allow_empty else as_features(y, "y")
    check_same_space(xs, ys, "x", "y")
    for t, name in ((xs, "x"), (ys, "y")):  # in row chunks: no full-size temporary
        step = max(1, 2**18 // max(t.shape[1], 1))
        for r0 in range(0, t.shape[0], step):
            check_finite(t[r0:r0 + step], name)
    return xs, ys


def _shard(x: object, name: str) -> torch.Tensor:
    """``as_features`` that accepts a shard without rows (shape (0, …))."""
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == 0:
        width = as_features(x.new_empty((1, *x.shape[1:])), name).shape[1]  # dtype, width
        return x.reshape(0, width)
    return as_features(x, name)


def _check_sizes(method: str, n: int, m: int) -> None:
    if n < 2 or m < 2:
        raise ValueError(f"x and y need at least 2 rows each, got n={n} and m={m}")
    if method == "wild" and n != m:
        raise ValueError(f"method 'wild' pairs the samples and needs n = m, got n={n}, m={m}")


def _check_generator(generator, device: torch.device) -> None:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(
                f"generator is on {generator.device} but x is on {device}")


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
                step = v.shape[1] / max(1, self._row_tiles())

                def tick(bar=bar, step=step):
                    bar.update(step)
            stats = self._statistics(v, gammas, sum_bank, wild, diag, k0, tick)
            done += v.shape[1]
            if bar is not None:
                bar.update(done - bar.n)
            out.append(stats.cpu())
            del v, stats
        if bar is not None:
            bar.close()
        return torch.cat(out, dim=1)

    def _row_tiles(self) -> int:
        return math.ceil((self.n + self.m) / _tiled.DEFAULT_TILE)

    def _statistics(self, v, gammas, sum_bank, wild, diag, k0, tick) -> torch.Tensor:
        """(L', c) statistics of the label chunk ``v``: one engine sweep."""
        n, m = self.n, self.m
        q, rowsums, total = engine.quadratic_forms([self.ex, self.ey], gammas, v, sum_bank,
                                                   self.backend, on_row_tile=tick)
        if wild:
            return engine.wild_statistics(q, diag, n, self.estimator, k0)
        return engine.permutation_statistics(q, rowsums, total, v, n, m, self.estimator, k0)

    def _statistic(self, kernels: GaussianKernels) -> float:
        """``dk.mmd(x, y, kernels, estimator)`` (after the sweep, whose labels are freed by
        now: the two never add up in memory)."""
        return float(mmd(self.x, self.y, kernels, self.estimator))

    def _bar(self, num: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=num + 1, desc="mmd_test", unit="perm")

    def single(self, kernels: GaussianKernels, method: str) -> TestResult:
        gammas = engine.bank_gammas(kernels, [self.x, self.y])
        stats = self._resample(gammas, True, method == "wild", self.num)[0]
        statistic = self._statistic(kernels)
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
        statistic = self._statistic(kernels)
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


# --- sharded test over a process group (docs/distributed.md §Two-sample test) ----------------


def _generator_state(generator: torch.Generator | None, device: torch.device) -> int:
    """CRC of the state of the generator the labels will come from (every rank must draw the
    same labels, so every rank's generator must be in the same state)."""
    if generator is None:
        if device.type == "cuda":
            generator = torch.cuda.default_generators[
                device.index if device.index is not None else torch.cuda.current_device()]
        else:
            generator = torch.default_generator
    return zlib.crc32(generator.get_state().numpy().tobytes())


def _sharded_test(x, y, kernels, method, num, estimator, alpha, generator, backend, progress,
                  group) -> TestResult:
    """``mmd_test`` over the shards of ``group`` (see :func:`mmd_test`, docs/distributed.md).

    1. every rank validates its arguments and shards, then one ``all_gather`` of a status
       vector (:func:`dapkernels.distributed.errors.agree`: failure flag, signature of width,
       dtype, method, estimator, B, α, kernels, backend and generator state, row counts):
       bad input on one rank raises :class:`~dapkernels.distributed.DistributedInputError`
       (a ``ValueError``) on every rank;
    2. one ``all_gather`` of the rows, no autograd: every rank holds ``[x; y]`` of the global
       samples (x rows of every rank in rank order, then the y rows);
    3. every rank computes the bandwidths (and, "wild", ``D = Σ_i k(x_i, y_i)``) from the
       gathered rows and draws the same labels from its generator, in the documented order;
    4. per label chunk, each rank sweeps its own rows against all rows
       (:func:`~dapkernels.backends.torch_quadratic_forms.quadratic_forms_rows`) and one
       ``all_reduce`` of ``[Q_R | rowsums_R·v_R | total_R]``, (L', 2c + 1) float64 values,
       gives ``Q``, ``rowsums·v`` and the total: the statistics of every label column.

    ``statistic`` (``dk.mmd`` of the global samples) is the identity split's permutation
    statistic of the same sums (the same formula; equal to one process's ``dk.mmd`` up to
    rounding).
    """
    error, xs, ys = None, None, None
    try:
        if method in ("block", "linear"):
            raise ValueError(
                f"method {method!r} is not supported with process_group (the streaming tests "
                f"have no sharded form); use 'permutation', 'wild' or 'aggregated'")
        _check_arguments(method, estimator, alpha, kernels)
        _check_resampling(num, backend)
        if backend not in (None, "torch"):
            raise ValueError(f"backend {backend!r} is not supported with process_group (the "
                             f"sharded sweep is the tiled torch engine): use None or 'torch'")
        xs, ys = _features(x, y, allow_empty=True)
        _check_generator(generator, xs.device)
        state = _generator_state(generator, xs.device)
    except (TypeError, ValueError) as exc:
        error = exc
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    if error is None:
        sig = signature("mmd_test", xs.shape[1], str(xs.dtype), method, estimator, num,
                        float(alpha), kernels, backend, state)
        fields = [xs.shape[0], ys.shape[0]]
        describe = (f"width {xs.shape[1]}, {xs.dtype}, method {method!r}, estimator "
                    f"{estimator!r}, num_permutations {num}, alpha {alpha}, kernels {kernels}, "
                    f"backend {backend!r}, generator state crc {state}")
    else:
        sig, fields, describe = 0, [0, 0], ""
    table = agree(group, error, fields, sig, device, describe)
    counts_x = [int(c) for c in table[:, 2]]
    counts_y = [int(c) for c in table[:, 3]]
    n, m = sum(counts_x), sum(counts_y)
    _check_sizes(method, n, m)  # global sizes: every rank raises alike
    if xs.dtype in _HALF:
        xs, ys = xs.float(), ys.float()
    rows = all_gather_rows(torch.cat([xs.detach(), ys.detach()]),
                           [a + b for a, b in zip(counts_x, counts_y)], group)
    gx, gy, start = [], [], 0
    for a, b in zip(counts_x, counts_y):
        gx.append(rows[start:start + a])
        gy.append(rows[start + a:start + a + b])
        start += a + b
    gx, gy = torch.cat(gx), torch.cat(gy)
    del rows
    ex, ey = gx, gy
    if n + m <= EXACT_ROWS and gx.dtype != torch.float64:
        ex, ey = gx.double(), gy.double()
    me = rank(group)
    x0, y0 = sum(counts_x[:me]), sum(counts_y[:me])
    own = [(x0, x0 + counts_x[me]), (n + y0, n + y0 + counts_y[me])]
    run = _ShardedRun(gx, gy, ex, ey, num, estimator, float(alpha), generator, backend,
                      progress and me == 0, group, own)
    if method == "aggregated":
        return run.aggregated(kernels or AGGREGATED_KERNELS)
    return run.single(kernels or _DEFAULT_KERNELS, method)


class _ShardedRun(_Run):
    """:class:`_Run` on the gathered samples; each rank sweeps its own rows ``own``."""

    def __init__(self, x, y, ex, ey, num, estimator, alpha, generator, backend, progress,
                 group, own) -> None:
        super().__init__(x, y, ex, ey, num, estimator, alpha, generator, backend, progress)
        self.group, self.own = group, own
        self.identity: torch.Tensor | None = None  # (L',) statistics of the identity split

    def _row_tiles(self) -> int:
        return sum(math.ceil((b - a) / _tiled.DEFAULT_TILE) for a, b in self.own)

    def _statistics(self, v, gammas, sum_bank, wild, diag, k0, tick) -> torch.Tensor:
        n, m = self.n, self.m
        q, rowsums = _tiled.quadratic_forms_rows([self.ex, self.ey], self.own, gammas, v,
                                                 sum_bank, on_row_tile=tick)
        rv = torch.zeros_like(q)
        off = 0
        step = max(1, 2**17 // max(rowsums.shape[1], 1))  # ≤ 1 MiB of float64 labels at once
        for a, b in self.own:
            for c0 in range(0, v.shape[1], step):
                rv[:, c0:c0 + step] += rowsums[:, off:off + b - a] @ v[a:b, c0:c0 + step].to(
                    torch.float64)
            off += b - a
        packed = all_reduce_sum(torch.cat([q, rv, rowsums.sum(1, keepdim=True)], 1),
                                self.group)
        c = v.shape[1]
        q, rv, total = packed[:, :c], packed[:, c:2 * c], packed[:, 2 * c]
        if self.identity is None:  # column 0 of the first chunk: the identity split
            self.identity = engine.permutation_statistics_dot(
                q[:, :1], rv[:, :1], total, n, m, self.estimator, k0)[:, 0].cpu()
        if wild:
            return engine.wild_statistics(q, diag, n, self.estimator, k0)
        return engine.permutation_statistics_dot(q, rv, total, n, m, self.estimator, k0)

    def _statistic(self, kernels: GaussianKernels) -> float:
        return float(self.identity.sum())
