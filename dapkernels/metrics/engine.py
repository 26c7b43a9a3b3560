r"""The resampling engine behind the quadratic-time tests: labels, quadratic forms, statistics.

Every resampled statistic of :func:`dapkernels.metrics.mmd_test` ("permutation", "wild",
"aggregated") is an affine function of three quadratic-form outputs of the pooled sample
``Z = [x; y]`` (N = n + m rows), computed in one tiled sweep that never stores a kernel matrix
(contract in :mod:`dapkernels.backends.reference_quadratic_forms`)::

    Q[l, b]       = Σ_{i≠j} K_l[i, j] v[i, b] v[j, b]        (L', B)
    rowsums[l, i] = Σ_{j≠i} K_l[i, j]                          (L', N)
    total[l]      = Σ_{i≠j} K_l[i, j]                          (L',)

Write ``K0`` for the kernel's value at distance 0 (the number of kernels summed, 1 for a
single kernel); ``K`` below is one row l of the outputs.

**Permutation.**  The b-th permutation π_b puts the pooled rows ``π_b[:n]`` in the source.
With ``s ∈ {0, 1}^N`` their indicator, ``t = 1 − s`` and ``v = s − t ∈ {±1}^N`` (int8), and
the off-diagonal block sums ``A = sᵀK°s``, ``C = tᵀK°t``, ``X = sᵀK°t`` (K° = K without its
diagonal; the cross block never meets the diagonal)::

    Q = A + C − 2X,   total = A + C + 2X,   r := sᵀ rowsums = A + X = (total + rowsums·v) / 2
    ⇒ X = (total − Q) / 4,   A = r − X,   C = total − r − X

    unbiased:  T = A / (n(n−1)) + C / (m(m−1)) − 2X / (nm)
    biased:    T = (A + n·K0) / n² + (C + m·K0) / m² − 2X / (nm)

which are ``dk.mmd``'s estimators on the permuted split (the biased one restores the diagonal).

**Wild bootstrap** (n = m).  The b-th sign vector ε ∈ {±1}^n gives ``v = [ε; −ε]``.  With
``h_ij = k(x_i, x_j) + k(y_i, y_j) − k(x_i, y_j) − k(x_j, y_i)`` and
``D = Σ_i k(x_i, y_i)`` (the pairs (i, i + n), computed directly in O(n·d))::

    Q = Σ_{i≠j} ε_i ε_j (Kxx_ij + Kyy_ij) − 2 Σ_{i,j} ε_i ε_j Kxy_ij
      = Σ_{i≠j} ε_i ε_j h_ij − 2D                       (ε_i² = 1 on the i = j cross terms)

    unbiased:  T = Σ_{i≠j} ε_i ε_j h_ij / (n(n−1)) = (Q + 2D) / (n(n−1))
    biased:    T = Σ_{i,j} ε_i ε_j h_ij / n²  = (Q + 2D + Σ_i h_ii) / n² = (Q + 2n·K0) / n²
               (h_ii = 2K0 − 2k(x_i, y_i)).

At ε = 1 the biased form is ``dk.mmd(…, "biased")``; the unbiased one is the complete
U-statistic over pairs, which differs from ``dk.mmd``'s unbiased estimate (whose cross term
keeps i = j) by ``2(D − S_xy / n) / (n(n−1))``, ``S_xy = Σ_{i,j} k(x_i, y_j)``.

**Labels.**  Permutations: the b-th is ``torch.randperm(n + m, generator=generator,
device=device)``, drawn in order.  Wild signs: the b-th is
``torch.randint(0, 2, (n,), generator=generator, device=device) * 2 − 1``, drawn in order.
Labels are int8 and generated in chunks of columns so that a chunk holds at most
:data:`LABEL_BYTES` bytes (each chunk is one sweep; the observed labels — identity split or all
signs +1 — are column 0 of the first chunk, so the observed statistic goes through the same
arithmetic as the resampled ones).

**Routes** (``backend``): ``None`` → the C++ core on CPU tensors when it is built (else the tiled
torch engine; the C++ core is the default because it measured faster than the tiled torch engine
on CPU, e.g. 0.23 s vs 0.36 s for N = 4000, d = 256, B = 1000 on one AVX-512 core); on CUDA
the Triton kernel (:mod:`dapkernels.backends.triton.quadratic_forms`, float32 only, so float64
work — every problem up to ``EXACT_ROWS`` — takes the tiled torch engine there; ``on_row_tile`` is
not called on this route: a bar advances once per label chunk);
``"cpu"`` → the C++ core; ``"triton"`` → the Triton kernel; ``"torch"`` → the tiled torch engine
(:mod:`dapkernels.backends.torch_quadratic_forms`) on any device; ``"reference"`` → the dense
float64 oracle (small N only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from .. import backends
from ..backends import reference_quadratic_forms as _reference
from ..backends import torch_quadratic_forms as _tiled
from ..kernels import GaussianKernels

__all__ = [
    "ENGINE_BACKENDS",
    "resolve",
    "LABEL_BYTES",
    "bank_gammas",
    "quadratic_forms",
    "permutation_labels",
    "wild_labels",
    "permutation_statistics",
    "permutation_statistics_dot",
    "wild_statistics",
    "cross_diagonal",
]

ENGINE_BACKENDS = ("cpu", "triton", "torch", "reference")

#: Largest int8 label chunk (N × columns bytes) one sweep takes; more columns → more sweeps.
LABEL_BYTES = 64 * 2**20


def bank_gammas(kernels: GaussianKernels, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """γ_l = 1 / (2σ_l²) of a bank, float64 (L,), as ``dk.mmd`` uses them on ``[x; y]``.

    Relative banks: ``σ_l² = α_l · md`` with ``md = mean_{i,j} ‖z_i − z_j‖²`` over all N²
    ordered pairs of the pooled sample (``= 2/N Σ_i ‖z_i − z̄‖²``; 1.0 when it is 0), fixed
    once from the observed sample (permuting does not change the pooled sample).
    """
    factors = torch.tensor(kernels.sigma2_factors, dtype=torch.float64)
    if not kernels.relative:
        return 0.5 / factors
    n_rows = sum(p.shape[0] for p in parts)
    mean = sum(p.sum(0, dtype=torch.float64) for p in parts) / n_rows
    ss = 0.0
    for p in parts:  # in row chunks of ≤ 2^17 values: no float64 copy of the sample
        step = max(1, 2**17 // p.shape[1])
        for r0 in range(0, p.shape[0], step):
            ss += float((p[r0:r0 + step].to(torch.float64) - mean).pow_(2).sum())
    md = 2.0 * ss / n_rows
    if md == 0.0:
        md = 1.0
    return 0.5 / (factors * md)


def _core_available() -> bool:
    try:
        from .. import _C
    except ImportError:
        return False
    return hasattr(_C, "quadratic_forms")


def resolve(backend: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """The engine route for parts on ``device`` computed in ``dtype`` (see Routes above)."""
    if backend is None:
        if device.type == "cpu" and _core_available():
            return "cpu"
        if device.type == "cuda" and dtype == torch.float32 and backends.available("triton"):
            return "triton"
        return "torch"
    if backend not in ENGINE_BACKENDS:
        raise ValueError(f"backend must be one of {ENGINE_BACKENDS} or None, got {backend!r}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' runs on CPU tensors only, got a {device.type} tensor")
    if backend == "triton" and (device.type != "cuda" or dtype != torch.float32):
        raise ValueError(f"backend 'triton' runs on float32 CUDA work only, got {dtype} on "
                         f"{device.type}")
    return backend


def quadratic_forms(
    parts: Sequence[torch.Tensor],
    gammas: torch.Tensor,
    v: torch.Tensor,
    sum_bank: bool,
    backend: str | None = None,
    on_row_tile: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract on ``z = [parts[0]; parts[1]; …]`` through the route ``backend`` (above).

    Returns ``(Q, rowsums, total)`` as float64 tensors on the device of the parts.
    """
    route = resolve(backend, parts[0].device, parts[0].dtype)
    if route == "triton":
        from ..backends.triton.quadratic_forms import quadratic_forms as triton_forms

        return triton_forms(torch.cat(list(parts)), gammas, v, sum_bank)
    if route == "reference":
        return _reference.quadratic_forms(torch.cat(list(parts)), gammas, v, sum_bank)
    if route == "torch":
        return _tiled.quadratic_forms_parts(parts, gammas, v, sum_bank,
                                            on_row_tile=on_row_tile)
    from ..backends import cpu_quadratic_forms

    return cpu_quadratic_forms.quadratic_forms_parts(parts, gammas, v, sum_bank)


def _chunks(total: int, rows: int) -> list:
    """Column counts of the label chunks: ``total`` columns, ≤ LABEL_BYTES each, balanced."""
    per = max(1, LABEL_BYTES // max(rows, 1))
    count = max(1, math.ceil(total / per))
    size = math.ceil(total / count)
    return [min(size, total - k) for k in range(0, total, size)]


def permutation_labels(
    n: int, m: int, num: int, generator: torch.Generator | None, device: torch.device,
    observed: bool = True,
) -> Iterator[torch.Tensor]:
    """Yields int8 (N, c) chunks of ``v = s − t`` for ``num`` permutations drawn in order.

    The b-th permutation is ``torch.randperm(n + m, generator=generator, device=device)``; its
    first n entries are the pooled rows of the permuted source.  With ``observed`` the first
    chunk starts with the identity split ``[1_n; −1_m]`` (num + 1 columns in all).
    """
    big_n = n + m
    first = observed
    for cols in _chunks(num + int(observed), big_n):
        v = torch.full((big_n, cols), -1, dtype=torch.int8, device=device)
        start = 0
        if first:
            v[:n, 0] = 1
            start, first = 1, False
        for b in range(start, cols):
            perm = torch.randperm(big_n, generator=generator, device=device)
            v[perm[:n], b] = 1
        yield v


def wild_labels(
    n: int, num: int, generator: torch.Generator | None, device: torch.device,
    observed: bool = True,
) -> Iterator[torch.Tensor]:
    """Yields int8 (2n, c) chunks of ``v = [ε; −ε]`` for ``num`` sign vectors drawn in order.

    The b-th is ``torch.randint(0, 2, (n,), generator=generator, device=device) * 2 − 1``.
    With ``observed`` the first chunk starts with ε = 1.
    """
    first = observed
    for cols in _chunks(num + int(observed), 2 * n):
        v = torch.empty((2 * n, cols), dtype=torch.int8, device=device)
        start = 0
        if first:
            v[:n, 0] = 1
            v[n:, 0] = -1
            start, first = 1, False
        for b in range(start, cols):
            eps = torch.randint(0, 2, (n,), generator=generator, device=device) * 2 - 1
            v[:n, b] = eps
            v[n:, b] = -eps
        yield v


def _rowsums_dot(rowsums: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``rowsums @ v`` in float64, (L', N) × (N, c) → (L', c), a few columns at a time."""
    step = max(1, 2**17 // max(v.shape[0], 1))  # ≤ 1 MiB of float64 labels at a time
    out = torch.empty(rowsums.shape[0], v.shape[1], dtype=torch.float64, device=rowsums.device)
    for c0 in range(0, v.shape[1], step):
        out[:, c0:c0 + step] = rowsums @ v[:, c0:c0 + step].to(torch.float64)
    return out


def permutation_statistics(
    q: torch.Tensor, rowsums: torch.Tensor, total: torch.Tensor, v: torch.Tensor,
    n: int, m: int, estimator: str, k0: float,
) -> torch.Tensor:
    """(L', c) permuted statistics from the engine outputs of the label chunk ``v`` (above)."""
    return permutation_statistics_dot(q, _rowsums_dot(rowsums, v), total, n, m, estimator, k0)


def permutation_statistics_dot(
    q: torch.Tensor, rv: torch.Tensor, total: torch.Tensor, n: int, m: int, estimator: str,
    k0: float,
) -> torch.Tensor:
    """:func:`permutation_statistics` from ``rv = rowsums @ v`` (L', c), already formed (the
    sharded test all-reduces each process's partial ``rowsums_R @ v_R``)."""
    r = 0.5 * (total[:, None] + rv)
    x = 0.25 * (total[:, None] - q)
    a = r - x
    c = total[:, None] - r - x
    if estimator == "unbiased":
        return a / (n * (n - 1)) + c / (m * (m - 1)) - 2.0 * x / (n * m)
    return (a + n * k0) / (n * n) + (c + m * k0) / (m * m) - 2.0 * x / (n * m)


def cross_diagonal(x: torch.Tensor, y: torch.Tensor, gammas: torch.Tensor,
                   sum_bank: bool) -> torch.Tensor:
    """``D[l] = Σ_i k_l(x_i, y_i)`` in float64, (L',) (the pairs of the wild bootstrap)."""
    g = gammas.to(device=x.device, dtype=torch.float64)
    d = torch.zeros(g.shape[0], dtype=torch.float64, device=x.device)
    step = max(1, 2**17 // x.shape[1])
    for r0 in range(0, x.shape[0], step):  # row chunks: no float64 copy of the sample
        diff = x[r0:r0 + step].to(torch.float64) - y[r0:r0 + step].to(torch.float64)
        d += torch.exp(-g[:, None] * diff.pow(2).sum(1)[None]).sum(1)
    return d.sum(0, keepdim=True) if sum_bank else d


def wild_statistics(q: torch.Tensor, diag: torch.Tensor, n: int, estimator: str,
                    k0: float) -> torch.Tensor:
    """(L', c) wild-bootstrap statistics from ``Q`` and :func:`cross_diagonal` (above)."""
    if estimator == "unbiased":
        return (q + 2.0 * diag[:, None]) / (n * (n - 1))
    return (q + 2.0 * n * k0) / (n * n)
