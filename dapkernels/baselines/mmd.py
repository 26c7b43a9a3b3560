"""Naive MK-MMD / JMMD baselines, written from the formulas in the style people copy today.

Three patterns, each computing exactly the quantity of :func:`dapkernels.mmd` /
:func:`dapkernels.jmmd` for a given :class:`~dapkernels.GaussianKernels` bank and estimator
(``"biased"``, ``"unbiased"``, ``"linear"``), differentiable with plain autograd:

* ``"tll"`` — the Transfer-Learning-Library pattern.  Every kernel of the bank builds its own
  N×N squared-distance matrix from broadcast differences of the concatenated batch,
  ``((z[None] − z[:, None]) ** 2).sum(2)`` (an N×N×d temporary per kernel), takes its bandwidth
  from the detached mean of that matrix, and exponentiates; the kernels are summed; the loss is
  ``(K * W).sum()`` with an N×N index matrix ``W`` of estimator weights that is filled element
  by element with Python loops and cached until the batch sizes change.  JMMD (JAN) multiplies
  the per-layer kernel matrices.
* ``"deepda"`` — the DeepDA pattern.  One broadcast N×N×d difference tensor (``expand``,
  subtract, square, sum over d), a list of bandwidths scaled from the sum of all pairwise
  distances, one ``exp`` per kernel, and block means / block sums of the kernel matrix.
* ``"torch"`` — a good plain-torch version.  Centred GEMM distances
  ``‖a‖² + ‖b‖² − 2abᵀ`` clamped at 0, closed-form bandwidth in O(N·d), one ``exp`` per kernel,
  block sums combined with the estimator weights; the linear estimator is O(N·d).

Bandwidth convention (all patterns, as in :class:`~dapkernels.GaussianKernels`): for relative banks
``σ_q² = α_q · mean_{i,j} ‖z_i − z_j‖²`` over all N² ordered pairs, detached.  DeepDA divides
the distance sum by ``N² − N`` and uses ``exp(−D / bw)``; here its bandwidth list is
``bw_q = 2 α_q · Σ D / N²`` so that it equals our bank — with ``kernel_mul = 2``,
``kernel_num = 5`` DeepDA's list ``bw · 2^(i − 2)`` is the default bank ``α = 2^-3 … 2^1``
(:func:`deepda_kernels` converts DeepDA's two hyper-parameters into a bank).
Unlike :func:`dapkernels.mmd`, the ``"tll"`` and ``"deepda"`` patterns return NaN when every
row of the batch is identical (zero bandwidth), as the code they imitate does.

Memory: ``"tll"`` and ``"deepda"`` need several N×N×d tensors per call (they are kept for
backward); ``"torch"`` needs a few N×N matrices.  They are baselines for benchmarks and tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..kernels import GaussianKernels

__all__ = ["PATTERNS", "naive_mmd", "naive_jmmd", "deepda_kernels"]

#: The implementation patterns, see the module docstring.
PATTERNS = ("tll", "deepda", "torch")
_ESTIMATORS = ("biased", "unbiased", "linear")


def deepda_kernels(kernel_mul: float = 2.0, kernel_num: int = 5) -> GaussianKernels:
    """The bank that DeepDA's ``kernel_mul`` / ``kernel_num`` describe, in our convention.

    DeepDA's bandwidths are ``bw · kernel_mul^(i − kernel_num // 2)`` for ``i < kernel_num``
    with ``k = exp(−D / bandwidth)``, i.e. ``2σ² = bandwidth``; so ``α_i`` is half that
    multiplier (``bw`` being the mean pairwise squared distance).
    """
    if kernel_num < 1:
        raise ValueError(f"kernel_num must be at least 1, got {kernel_num}")
    half = kernel_num // 2
    return GaussianKernels(alphas=[0.5 * kernel_mul ** (i - half) for i in range(kernel_num)])


# --------------------------------------------------------------------------------------------
# (a) Transfer-Learning-Library pattern


def _tll_gaussian(z: torch.Tensor, factor: float, relative: bool) -> torch.Tensor:
    """One kernel: its own broadcast distance matrix, bandwidth from the matrix mean."""
    l2_distance_square = ((z.unsqueeze(0) - z.unsqueeze(1)) ** 2).sum(2)
    if relative:
        sigma_square = factor * torch.mean(l2_distance_square.detach())
    else:
        sigma_square = factor
    return torch.exp(-l2_distance_square / (2 * sigma_square))


def _tll_kernel_matrix(z: torch.Tensor, kernels: GaussianKernels) -> torch.Tensor:
    return sum([_tll_gaussian(z, f, kernels.relative) for f in kernels.sigma2_factors])


def _build_index_matrix(n: int, m: int, estimator: str, dtype: torch.dtype) -> torch.Tensor:
    """Estimator weights W (N×N) such that the estimate is ``(K * W).sum()``, filled by loops."""
    index_matrix = torch.zeros(n + m, n + m, dtype=dtype)
    if estimator == "linear":
        for i in range(n):
            s1, s2 = i, (i + 1) % n
            t1, t2 = s1 + n, s2 + n
            index_matrix[s1, s2] += 1.0 / n
            index_matrix[t1, t2] += 1.0 / n
            index_matrix[s1, t2] += -1.0 / n
            index_matrix[s2, t1] += -1.0 / n
        return index_matrix
    unbiased = estimator == "unbiased"
    w_ss = 1.0 / (n * (n - 1)) if unbiased else 1.0 / (n * n)
    w_tt = 1.0 / (m * (m - 1)) if unbiased else 1.0 / (m * m)
    w_st = -1.0 / (n * m)
    for i in range(n):
        for j in range(n):
            if i != j or not unbiased:
                index_matrix[i][j] = w_ss
    for i in range(m):
        for j in range(m):
            if i != j or not unbiased:
                index_matrix[i + n][j + n] = w_tt
    for i in range(n):
        for j in range(m):
            index_matrix[i][j + n] = w_st
            index_matrix[j + n][i] = w_st
    return index_matrix


# Like TLL's loss module: the index matrix is kept and rebuilt only when the sizes change.
_index_cache: dict = {"key": None, "matrix": None}


def _tll_index_matrix(n: int, m: int, estimator: str, like: torch.Tensor) -> torch.Tensor:
    key = (n, m, estimator, like.dtype, like.device)
    if _index_cache["key"] != key:
        _index_cache["matrix"] = _build_index_matrix(n, m, estimator, like.dtype).to(like.device)
        _index_cache["key"] = key
    return _index_cache["matrix"]


def _tll_reduce(
    kernel_matrix: torch.Tensor, n: int, m: int, estimator: str, k0: float
) -> torch.Tensor:
    return (kernel_matrix * _tll_index_matrix(n, m, estimator, kernel_matrix)).sum()


# --------------------------------------------------------------------------------------------
# (b) DeepDA pattern


def _deepda_kernel_matrix(z: torch.Tensor, kernels: GaussianKernels) -> torch.Tensor:
    n_samples = int(z.size(0))
    total0 = z.unsqueeze(0).expand(n_samples, n_samples, int(z.size(1)))
    total1 = z.unsqueeze(1).expand(n_samples, n_samples, int(z.size(1)))
    l2_distance = ((total0 - total1) ** 2).sum(2)
    if kernels.relative:
        bandwidth = torch.sum(l2_distance.detach()) / (n_samples * n_samples)
        bandwidth_list = [bandwidth * (2.0 * a) for a in kernels.sigma2_factors]
    else:
        bandwidth_list = [2.0 * s2 for s2 in kernels.sigma2_factors]
    kernel_val = [torch.exp(-l2_distance / bandwidth_temp) for bandwidth_temp in bandwidth_list]
    return sum(kernel_val)


def _deepda_reduce(
    kernels: torch.Tensor, n: int, m: int, estimator: str, k0: float
) -> torch.Tensor:
    if estimator == "biased":
        xx = torch.mean(kernels[:n, :n])
        yy = torch.mean(kernels[n:, n:])
        xy = torch.mean(kernels[:n, n:])
        yx = torch.mean(kernels[n:, :n])
        return xx + yy - xy - yx
    if estimator == "unbiased":
        k_ss, k_tt = kernels[:n, :n], kernels[n:, n:]
        xx = (k_ss.sum() - k_ss.diagonal().sum()) / (n * (n - 1))
        yy = (k_tt.sum() - k_tt.diagonal().sum()) / (m * (m - 1))
        xy = torch.mean(kernels[:n, n:])
        yx = torch.mean(kernels[n:, :n])
        return xx + yy - xy - yx
    i = torch.arange(n, device=kernels.device)
    j = (i + 1) % n
    terms = kernels[i, j] + kernels[i + n, j + n] - kernels[i, j + n] - kernels[j, i + n]
    return terms.mean()


# --------------------------------------------------------------------------------------------
# (c) good plain-torch version


def _torch_gammas(z: torch.Tensor, kernels: GaussianKernels) -> list:
    """γ_q = 1/(2σ_q²); relative banks use ``Σ_ij D_ij = 2N Σ_i ‖z_i − μ‖²`` (O(N·d))."""
    if not kernels.relative:
        return [0.5 / s2 for s2 in kernels.sigma2_factors]
    zd = z.detach()
    mean_d = 2.0 * (zd - zd.mean(dim=0, keepdim=True)).square().sum() / zd.shape[0]
    return [0.5 / (a * mean_d) for a in kernels.sigma2_factors]


def _torch_kernel_matrix(z: torch.Tensor, kernels: GaussianKernels) -> torch.Tensor:
    c = z - z.mean(dim=0, keepdim=True)
    sq = c.square().sum(dim=1)
    dist = torch.addmm(sq[:, None] + sq[None, :], c, c.T, alpha=-2.0).clamp_min(0.0)
    out = None
    for g in _torch_gammas(z, kernels):
        k = torch.exp(dist * -g)
        out = k if out is None else out + k
    return out


def _torch_reduce(kernel: torch.Tensor, n: int, m: int, estimator: str, k0: float) -> torch.Tensor:
    s_ss, s_st, s_tt = kernel[:n, :n].sum(), kernel[:n, n:].sum(), kernel[n:, n:].sum()
    if estimator == "biased":
        return s_ss / (n * n) + s_tt / (m * m) - 2.0 * s_st / (n * m)
    return (s_ss - n * k0) / (n * (n - 1)) + (s_tt - m * k0) / (m * (m - 1)) - 2.0 * s_st / (n * m)


def _torch_linear(
    sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], kernels: Sequence
) -> torch.Tensor:
    """Linear-time estimate: only the 4n paired distances, no N×N matrix."""
    k_ss = k_tt = k_st = k_ts = 1.0
    for s, t, bank in zip(sources, targets, kernels):
        gam = _torch_gammas(torch.cat([s, t]), bank)
        s2, t2 = s.roll(-1, dims=0), t.roll(-1, dims=0)

        def k(a: torch.Tensor, b: torch.Tensor, gam: list = gam) -> torch.Tensor:
            d = (a - b).square().sum(dim=1)
            return sum(torch.exp(d * -g) for g in gam)

        k_ss, k_tt = k_ss * k(s, s2), k_tt * k(t, t2)
        k_st, k_ts = k_st * k(s, t2), k_ts * k(s2, t)
    return (k_ss + k_tt - k_st - k_ts).mean()


_KERNEL_MATRIX = {"tll": _tll_kernel_matrix, "deepda": _deepda_kernel_matrix,
                  "torch": _torch_kernel_matrix}
_REDUCE = {"tll": _tll_reduce, "deepda": _deepda_reduce, "torch": _torch_reduce}


# --------------------------------------------------------------------------------------------
# public entry points


def naive_jmmd(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    kernels: Sequence[GaussianKernels] | None = None,
    estimator: str = "unbiased",
    pattern: str = "tll",
) -> torch.Tensor:
    """Joint MMD of JAN (same value as :func:`dapkernels.jmmd`) the naive way.

    The joint kernel matrix is the elementwise product of each layer's N×N bank matrix.

    Args:
        sources: L tensors of shape (n, …), one per layer.
        targets: L tensors of shape (m, …), one per layer.
        kernels: L banks (default ``GaussianKernels()`` for every layer).
        estimator: ``"unbiased"`` (default), ``"biased"`` or ``"linear"`` (needs n = m).
        pattern: ``"tll"`` (default), ``"deepda"`` or ``"torch"``; see the module docstring.

    Returns:
        0-dim tensor in the input dtype, differentiable by autograd.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
    srcs = [s.reshape(s.shape[0], -1) for s in sources]
    tgts = [t.reshape(t.shape[0], -1) for t in targets]
    if not srcs or len(srcs) != len(tgts):
        raise ValueError("sources and targets must hold the same, non-zero number of layers")
    banks = [GaussianKernels()] * len(srcs) if kernels is None else list(kernels)
    if len(banks) != len(srcs):
        raise ValueError(f"kernels must hold one bank per layer ({len(srcs)}), got {len(banks)}")
    n, m = srcs[0].shape[0], tgts[0].shape[0]
    if estimator == "unbiased" and min(n, m) < 2:
        raise ValueError(f"the unbiased estimator needs 2 samples per domain, got {n} and {m}")
    if estimator == "linear" and (n != m or n < 2):
        raise ValueError(f"the linear estimator needs equal batches of 2 or more, got {n}, {m}")
    if pattern == "torch" and estimator == "linear":
        return _torch_linear(srcs, tgts, banks)
    k0 = 1.0
    kernel_matrix = None
    for s, t, bank in zip(srcs, tgts, banks):
        layer = _KERNEL_MATRIX[pattern](torch.cat([s, t], dim=0), bank)
        kernel_matrix = layer if kernel_matrix is None else kernel_matrix * layer
        k0 *= bank.num_kernels
    return _REDUCE[pattern](kernel_matrix, n, m, estimator, k0)


def naive_mmd(
    source: torch.Tensor,
    target: torch.Tensor,
    kernels: GaussianKernels | None = None,
    estimator: str = "unbiased",
    pattern: str = "tll",
) -> torch.Tensor:
    """MK-MMD (same value as :func:`dapkernels.mmd`) the naive way; a drop-in for benchmarks.

    Args:
        source: (n, …) source features.
        target: (m, …) target features.
        kernels: the bank (default ``GaussianKernels()``).
        estimator: ``"unbiased"`` (default), ``"biased"`` or ``"linear"`` (needs n = m).
        pattern: ``"tll"`` (default), ``"deepda"`` or ``"torch"``; see the module docstring.

    Returns:
        0-dim tensor in the input dtype, differentiable by autograd.
    """
    return naive_jmmd([source], [target], None if kernels is None else [kernels], estimator,
                      pattern)
