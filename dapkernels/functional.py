"""Functional entry points, in the style of ``torch.nn.functional``.

Shapes: features are (batch, features…) tensors, flattened to (batch, d).  ``n`` source rows,
``m`` target rows, ``N = n + m``.  The maths of each op and its gradient: docs/design.md §MMD,
§CORAL, §Gradient reversal; this layer validates, picks the backend and calls ``ops``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from . import backends
from ._validation import (
    ESTIMATORS,
    as_features,
    check_estimator,
    check_same_space,
    cpu_compute_view,
)
from .kernels import GaussianKernels
from .ops.coral import coral_fused, coral_log
from .ops.grl import Coeff, grl_fused
from .ops.mmd import mmd_estimator_weights, mmd_fused, mmd_fused_compiled, mmd_linear

__all__ = ["mmd", "jmmd", "coral", "grad_reverse"]

_DEFAULT_KERNELS = GaussianKernels()


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def jmmd(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    kernels: Sequence[GaussianKernels] | None = None,
    estimator: str = "unbiased",
    backend: str | None = None,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> torch.Tensor:
    """Joint MMD of JAN: MMD with the product kernel ``k(i, j) = Π_l k_l(z_{l,i}, z_{l,j})``.

    Each layer ``l`` has its own bank ``k_l = Σ_q exp(−‖z_{l,i} − z_{l,j}‖² / (2σ_{lq}²))`` and
    its own features (e.g. bottleneck features and softmax outputs); layers may differ in
    dimension but share the batch.  Estimators as in :func:`mmd`, with ``k(0) = Π_l Q_l``.

    Args:
        sources: L tensors of shape (n, …) — layer l of the source batch.
        targets: L tensors of shape (m, …) — layer l of the target batch.
        kernels: L kernel banks (default: ``GaussianKernels()`` for every layer).
        estimator: ``"unbiased"`` (default), ``"biased"`` or ``"linear"``.
        backend: force ``"reference"``, ``"cpu"`` or ``"triton"`` (default: by device).
        process_group: a ``torch.distributed`` group: the global-batch JMMD over every rank's
            rows, as in :func:`mmd` (the layers are gathered in one collective).

    Returns:
        0-dim tensor (float32 for half-precision inputs, else the input dtype).  float16 /
        bfloat16 CPU inputs (``torch.autocast("cpu")``) are computed in float32; their
        gradient comes back in their own dtype.
    """
    if isinstance(sources, torch.Tensor) or isinstance(targets, torch.Tensor):
        raise TypeError("sources and targets must be sequences of tensors (one per layer)")
    sources, targets = list(sources), list(targets)
    if process_group is not None:
        from .distributed.mmd import global_mmd

        banks = [_DEFAULT_KERNELS] * len(sources) if kernels is None else list(kernels)
        return global_mmd(sources, targets, banks, estimator, backend, process_group)
    if len(sources) == 0 or len(sources) != len(targets):
        raise ValueError(
            f"sources and targets must hold the same, non-zero number of layers, got "
            f"{len(sources)} and {len(targets)}"
        )
    if kernels is None:
        kernels = [_DEFAULT_KERNELS] * len(sources)
    kernels = list(kernels)
    if len(kernels) != len(sources):
        raise ValueError(
            f"kernels must hold one bank per layer ({len(sources)}), got {len(kernels)}"
        )
    for k in kernels:
        if not isinstance(k, GaussianKernels):
            raise TypeError(f"kernels must be GaussianKernels, got {type(k).__name__}")
    srcs = [as_features(s, f"sources[{i}]") for i, s in enumerate(sources)]
    tgts = [as_features(t, f"targets[{i}]") for i, t in enumerate(targets)]
    n, m = srcs[0].shape[0], tgts[0].shape[0]
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        check_same_space(s, t, f"sources[{i}]", f"targets[{i}]")
        if s.device != srcs[0].device or s.dtype != srcs[0].dtype:
            raise TypeError(
                f"every layer must share device and dtype: sources[{i}] is {s.dtype} on "
                f"{s.device}, sources[0] is {srcs[0].dtype} on {srcs[0].device}"
            )
        if s.shape[0] != n or t.shape[0] != m:
            raise ValueError(
                f"every layer must share the batch: sources[{i}] has {s.shape[0]} rows "
                f"(expected {n}), targets[{i}] has {t.shape[0]} (expected {m})"
            )
    srcs = [cpu_compute_view(s) for s in srcs]
    tgts = [cpu_compute_view(t) for t in tgts]
    return _joint_mmd(srcs, tgts, kernels, estimator, backend)


@functools.lru_cache(maxsize=256)
def _fused_plan(kernels: tuple, estimator: str, n: int, m: int) -> tuple:
    """``(factors, relative, weights, const)`` of a quadratic estimator, validated once.

    Cached on the (hashable, frozen) kernel banks, the estimator and the batch sizes: a
    training loop asks for the same plan every step, and building it costs a noticeable share
    of a small batch's whole forward + backward.
    """
    check_estimator(estimator, n, m)
    k0 = 1.0
    for k in kernels:
        k0 *= k.num_kernels
    weights, const = mmd_estimator_weights(estimator, n, m, k0)
    factors = tuple(k.sigma2_factors for k in kernels)
    relative = tuple(k.relative for k in kernels)
    return factors, relative, weights, const


def _joint_mmd(srcs, tgts, kernels, estimator, backend) -> torch.Tensor:
    """Estimator on validated (batch, d_l) layers: the linear one in torch, the others fused."""
    n, m = srcs[0].shape[0], tgts[0].shape[0]
    if estimator not in ESTIMATORS:  # before the cache, which cannot hash e.g. a list
        check_estimator(estimator, n, m)
    if estimator == "linear":
        check_estimator(estimator, n, m)
        factors = [k.sigma2_factors for k in kernels]
        relative = [k.relative for k in kernels]
        return mmd_linear(srcs, tgts, factors, relative)
    name = backends.resolve(backend, srcs[0].device)
    out_dtype = _out_dtype(srcs[0].dtype)
    if torch.compiler.is_compiling():
        # no weights from (possibly symbolic) batch sizes in the graph: the op forms them
        check_estimator(estimator, n, m)
        return mmd_fused_compiled(srcs, tgts, [k.sigma2_factors for k in kernels],
                            [k.relative for k in kernels], estimator, name, out_dtype)
    factors, relative, weights, const = _fused_plan(tuple(kernels), estimator, n, m)
    return mmd_fused(srcs, tgts, factors, relative, weights, const, name, out_dtype)


def mmd(
    source: torch.Tensor,
    target: torch.Tensor,
    kernels: GaussianKernels | None = None,
    estimator: str = "unbiased",
    backend: str | None = None,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> torch.Tensor:
    """Multi-kernel maximum mean discrepancy (MK-MMD, as in DAN) between two batches.

    With ``k = Σ_q k_q`` the bank of ``kernels`` and ``S_ab = Σ_{i∈a, j∈b} k(z_i, z_j)``:

    * ``"biased"`` (V-statistic): ``S_ss/n² + S_tt/m² − 2 S_st/(nm)``; never negative.
    * ``"unbiased"`` (U-statistic, diagonal excluded inside each domain):
      ``(S_ss − n·Q)/(n(n−1)) + (S_tt − m·Q)/(m(m−1)) − 2 S_st/(nm)``, Q = number of kernels.
      It is an unbiased estimate of MMD² and **can be negative** when the domains are close;
      it is returned unclamped (clamping would bias it and kill its gradient).
    * ``"linear"`` (DAN's O(N·d) estimate, needs n = m):
      ``(1/n) Σ_i [k(s_i, s_i') + k(t_i, t_i') − k(s_i, t_i') − k(s_i', t_i)]``, i' = (i+1) mod n.

    The quadratic estimators run one fused sweep over the concatenated batch: no N×N matrix is
    stored, and the gradient is computed in the same pass (backward only rescales it).

    Args:
        source: (n, …) source features.
        target: (m, …) target features; same feature size, dtype and device.
        kernels: the bank (default ``GaussianKernels()``: α = 2^-3 … 2^1, relative bandwidths).
        estimator: ``"unbiased"`` (default), ``"biased"`` or ``"linear"``.
        backend: force ``"reference"``, ``"cpu"`` or ``"triton"`` (default: by device, or the
            ``DAPKERNELS_BACKEND`` environment variable).
        process_group: ``None`` (default): this process's batch only.  A ``torch.distributed``
            group (e.g. ``dist.group.WORLD``): the global-batch estimator over the
            concatenation of every rank's source and target rows (bandwidths from the global
            batch, every pair counted once, the same value on every rank; ranks may hold
            different row counts).  Gradient convention: each rank's rows receive
            ``W · ∂L/∂z_local`` (W = group size), so DDP's gradient averaging gives the exact
            gradient of the global loss.  Bad input on one rank makes every rank raise
            :class:`dapkernels.distributed.DistributedInputError`.  See
            :mod:`dapkernels.distributed.mmd`.

    Returns:
        0-dim tensor (float32 for half-precision inputs, else the input dtype).  float16 /
        bfloat16 CPU inputs (``torch.autocast("cpu")``) are computed in float32; their
        gradient comes back in their own dtype.
    """
    if process_group is not None:
        from .distributed.mmd import global_mmd

        return global_mmd([source], [target], [kernels or _DEFAULT_KERNELS], estimator,
                          backend, process_group)
    if kernels is not None and not isinstance(kernels, GaussianKernels):
        raise TypeError(f"kernels must be GaussianKernels, got {type(kernels).__name__}")
    s = as_features(source, "source")
    t = as_features(target, "target")
    check_same_space(s, t, "source", "target")
    s, t = cpu_compute_view(s), cpu_compute_view(t)
    return _joint_mmd([s], [t], [kernels or _DEFAULT_KERNELS], estimator, backend)


def coral(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    log: bool = False,
    eps: float = 1e-5,
    backend: str | None = None,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> torch.Tensor:
    """Deep CORAL loss between a source and a target batch.

    With ``X̃`` the column-centred (n, d) batch and ``C = X̃ᵀX̃ / (n − 1)``::

        coral(f_s, f_t) = ‖C_s − C_t‖_F² / (4d²)

    ``n_s ≠ n_t`` is allowed.  The CPU kernel picks, by cost, the d×d covariance path
    (~1.5·N·d² flops) or the Gram path (~1.5·N²·d flops, N×N memory, N = n_s + n_t), which
    never builds a d×d matrix when N < d; both are exact.  Centring happens before any product
    (float64 means), so a large common offset in the features costs no precision.  The gradient
    is computed in the same call as the value.

    ``log=True`` gives the log-Euclidean variant ``‖log C_s − log C_t‖_F² / (4d²)`` with
    ``log C = V diag(log max(λ, eps)) Vᵀ`` (``torch.linalg.eigh`` in float64; eigenvalues
    below ``eps`` are floored, so rank-deficient covariances, n ≤ d, stay finite).  It always
    builds d×d matrices (O(d³)) and runs in plain torch.

    Args:
        f_s: (n_s, …) source features, n_s ≥ 2; flattened to (n_s, d).
        f_t: (n_t, …) target features, n_t ≥ 2; same d, dtype and device.
        log: log-Euclidean variant.
        eps: eigenvalue floor of the log variant.
        backend: as in :func:`mmd`.
        process_group: a ``torch.distributed`` group: CORAL of the global batch (every
            rank's rows; all-reduced column sums and d×d products in float64), the same
            value on every rank; each rank's rows receive ``W · ∂L/∂x_local``.  See
            :mod:`dapkernels.distributed.coral`.

    Returns:
        0-dim tensor, of the dtype :func:`mmd` returns for the same inputs.
    """
    if process_group is not None:
        from .distributed.coral import global_coral

        return global_coral(f_s, f_t, log, eps, backend, process_group)
    s = as_features(f_s, "f_s")
    t = as_features(f_t, "f_t")
    check_same_space(s, t, "f_s", "f_t")
    if s.shape[0] < 2 or t.shape[0] < 2:
        raise ValueError(
            f"CORAL estimates covariances and needs at least 2 samples per domain, got f_s "
            f"batch {s.shape[0]} and f_t batch {t.shape[0]}"
        )
    s, t = cpu_compute_view(s), cpu_compute_view(t)
    if log:
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        return coral_log(s, t, float(eps), _out_dtype(s.dtype))
    name = backends.resolve(backend, s.device)
    return coral_fused(s, t, name, _out_dtype(s.dtype))


def grad_reverse(x: torch.Tensor, coeff: Coeff = 1.0) -> torch.Tensor:
    """Gradient reversal of DANN: ``y = x`` (a view, no copy) with ``∂L/∂x = −coeff · ∂L/∂y``.

    Args:
        x: any tensor.
        coeff: Python float or 0-dim tensor (same device as ``x`` or CPU).  A tensor is a graph
            input under ``torch.compile`` (changing it does not recompile); it never receives a
            gradient.  A negative ``coeff`` scales the gradient by ``|coeff|`` without
            reversing it.

    Returns:
        A view of ``x`` with the same shape.  In-place ops on it raise (clone it first).
    """
    if isinstance(coeff, torch.Tensor):
        if coeff.dim() != 0:
            raise ValueError(
                f"coeff must be a float or a 0-dim tensor, got shape {tuple(coeff.shape)}"
            )
    elif isinstance(coeff, bool) or not isinstance(coeff, (int, float)):
        raise TypeError(f"coeff must be a float or a 0-dim tensor, got {type(coeff).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return grl_fused(x, coeff)
