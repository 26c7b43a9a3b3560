"""Global-batch MMD / JMMD over a process group: each rank sweeps its own rows against all rows.

Setting.  Rank r holds ``n_r`` source and ``m_r`` target rows (any counts, zero allowed);
the global batch is ``S = [S_0; …; S_{W−1}]`` (n = Σ n_r rows), ``T`` likewise (m rows), and
the pooled ``Z = [S; T]`` (N = n + m).  The loss is exactly the single-process estimator of
:func:`dapkernels.mmd` / :func:`dapkernels.jmmd` on ``(S, T)``::

    L = Σ_{i,j} W_ij k(z_i, z_j) + c,      k = Π_l Σ_q exp(−γ_lq ‖z_l,i − z_l,j‖²)

with the symmetric pair weights ``W_ij = w_ss / w_st / w_tt`` by the domains of i and j
(biased: ``1/n², −1/(nm), 1/m²``, c = 0; unbiased: ``1/(n(n−1)), −1/(nm), 1/(m(m−1))``,
``c = −k(0)·(1/(n−1) + 1/(m−1))``, which removes the i = i pairs) and relative bandwidths
``σ_lq² = α_lq · mean_{i,j} ‖z_l,i − z_l,j‖²`` over all N² ordered pairs of the *global*
batch (detached).

Algorithm (per call, per rank):

1. local validation, then one ``all_gather`` of a small status vector (row counts, a
   signature of width / dtype / estimator / kernels): a rank with bad input makes every rank
   raise :class:`~dapkernels.distributed.errors.DistributedInputError`, none hangs;
2. one ``all_gather`` of the features without autograd (``W · max_r(n_r + m_r) · Σ_l d_l``
   values; rank r contributes its padded rows);
3. bandwidths from the gathered batch (float64, centred: ``2 Σ_i ‖z_i − μ‖² / N``), the same
   on every rank;
4. rows-vs-all sweep: for the rank's own rows i (their global indices known) and every row
   j, the kernel ``k_ij`` and the partial block sums ``P_ab = Σ_{i∈a, local} Σ_{j∈b} k_ij``;
   every ordered pair (i, j) is owned by the rank of i, so ``S_ab = Σ_r P_ab`` — one
   ``all_reduce`` of 3 float64 values (``S_ss, S_st + S_ts, S_tt``) gives the loss, the same on
   every rank.  Each rank does ``(n_r + m_r) · N`` pairs, ``N²`` in all: no rank repeats
   another's work.  Chunked over the local rows: O(chunk · N) memory, no N×N matrix;
5. the exact gradient of the local rows only, from the same sweep::

       ∂L/∂z_l,i = 2 Σ_j W_ij ∂k(z_i, z_j)/∂z_l,i = 4 Σ_j C^l_ij (z_l,i − z_l,j),
       C^l_ij = W_ij · K_l′(D_l,ij) · Π_{o≠l} K_o(D_o,ij),  K′ = −Σ_q γ_q e^{−γ_q D}

   (the factor 2 because z_i appears in both k(z_i, z_j) and k(z_j, z_i)); no gradient
   crosses the network.

Gradient convention: the backward hands rank r's feature rows ``W · ∂L/∂z_local`` (W =
group size), the convention of a gather whose backward is sum-reduced.  DDP averages the
parameter gradients over ranks, ``(1/W) Σ_r W ∂L/∂θ|_r = ∂L/∂θ``: a W-rank DDP step equals a
one-process step on the concatenated batch.

Precision: float64 inputs (or ``backend="reference"``) are swept in float64; other dtypes in
float32 (distances from float64-centred rows, block sums accumulated in float64).  The sweep
is plain torch on the features' device; the ``backend`` argument only selects that precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from .._validation import check_finite
from ..kernels import GaussianKernels
from .errors import agree, signature
from .gather import all_gather_rows, all_reduce_sum

__all__ = ["global_mmd", "estimator_weights", "CHUNK_ELEMENTS"]

ESTIMATORS = ("biased", "unbiased", "linear")
_BACKENDS = ("reference", "cpu", "triton")
#: target size (elements) of one chunk × N block of the sweep
CHUNK_ELEMENTS = 1 << 21


def estimator_weights(estimator: str, n: int, m: int, k0: float) -> tuple:
    """``(w_ss, w_st, w_tt), c`` of the quadratic estimators for global sizes n, m (k0 = k(0))."""
    if estimator == "biased":
        return (1.0 / (n * n), -1.0 / (n * m), 1.0 / (m * m)), 0.0
    w_ss, w_tt = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1))
    return (w_ss, -1.0 / (n * m), w_tt), -(n * k0 * w_ss + m * k0 * w_tt)


def _features(x: object, name: str) -> torch.Tensor:
    """A (rows, features…) float tensor flattened to (rows, d); zero rows are allowed here (a
    rank may hold none of a domain's rows)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (batch, features...), got shape "
                         f"{tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} has dtype {x.dtype}; expected a floating dtype")
    d = 1
    for s in x.shape[1:]:
        d *= s
    if d == 0:
        raise ValueError(f"{name} has no features (shape {tuple(x.shape)})")
    flat = x.reshape(x.shape[0], d)
    if flat.shape[0] > 0:
        check_finite(flat.detach(), name)
    return flat


def _validate(sources, targets, kernels, estimator, backend):
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if len(sources) == 0 or len(sources) != len(targets) or len(kernels) != len(sources):
        raise ValueError(f"need one source, target and kernel bank per layer, got "
                         f"{len(sources)}, {len(targets)} and {len(kernels)}")
    for k in kernels:
        if not isinstance(k, GaussianKernels):
            raise TypeError(f"kernels must be GaussianKernels, got {type(k).__name__}")
    srcs = [_features(s, f"sources[{i}]") for i, s in enumerate(sources)]
    tgts = [_features(t, f"targets[{i}]") for i, t in enumerate(targets)]
    ref = srcs[0]
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        for x, nm in ((s, f"sources[{i}]"), (t, f"targets[{i}]")):
            if x.device != ref.device or x.dtype != ref.dtype:
                raise TypeError(f"{nm} is {x.dtype} on {x.device}, sources[0] is {ref.dtype} "
                                f"on {ref.device}")
        if s.shape[1] != t.shape[1]:
            raise ValueError(f"feature dimensions differ: sources[{i}] has d={s.shape[1]}, "
                             f"targets[{i}] has d={t.shape[1]}")
        if s.shape[0] != srcs[0].shape[0] or t.shape[0] != tgts[0].shape[0]:
            raise ValueError(f"every layer must share the batch: layer {i} has "
                             f"{s.shape[0]} + {t.shape[0]} rows, layer 0 "
                             f"{srcs[0].shape[0]} + {tgts[0].shape[0]}")
    return srcs, tgts


def _first_device(tensors) -> torch.device:
    for x in tensors:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def global_mmd(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    kernels: Sequence[GaussianKernels],
    estimator: str,
    backend: str | None,
    group,
) -> torch.Tensor:
    """The global-batch (joint) MMD over ``group``; see the module docstring.

    Args:
        sources: L tensors (n_r, …) — this rank's source rows of each layer (n_r ≥ 0).
        targets: L tensors (m_r, …) — this rank's target rows.
        kernels: L :class:`GaussianKernels` banks (the same on every rank).
        estimator: ``"unbiased"``, ``"biased"`` or ``"linear"`` (linear: the O(N·d) estimate
            over the global batch in rank order, computed on every rank from the gathered rows).
        backend: ``"reference"`` sweeps in float64; otherwise by input dtype.
        group: a ``torch.distributed`` process group (e.g. ``dist.group.WORLD``).

    Returns:
        0-dim tensor, the same value on every rank (float32 for half inputs, else the input
        dtype); backward gives each rank ``W · ∂L/∂(its rows)``.
    """
    sources, targets, kernels = list(sources), list(targets), list(kernels)
    error, srcs, tgts = None, [], []
    try:
        srcs, tgts = _validate(sources, targets, kernels, estimator, backend)
    except (TypeError, ValueError) as exc:
        error = exc
    device = _first_device(sources + targets)
    if error is None:
        dims = tuple(s.shape[1] for s in srcs)
        sig = signature("mmd", dims, str(srcs[0].dtype), estimator, tuple(kernels),
                        backend == "reference")
        fields = [srcs[0].shape[0], tgts[0].shape[0]]
        describe = (f"{len(dims)} layer(s) of width {dims}, {srcs[0].dtype}, estimator "
                    f"{estimator!r}, kernels {kernels}, backend {backend!r}")
    else:
        sig, fields, describe = 0, [0, 0], ""
    table = agree(group, error, fields, sig, device, describe)
    counts_s = [int(v) for v in table[:, 2]]
    counts_t = [int(v) for v in table[:, 3]]
    n, m = sum(counts_s), sum(counts_t)
    _check_global_sizes(estimator, n, m)
    if estimator == "linear":
        return _linear(srcs, tgts, kernels, counts_s, counts_t, backend, group)
    k0 = 1.0
    for k in kernels:
        k0 *= k.num_kernels
    weights, const = estimator_weights(estimator, n, m, k0)
    plan = (group, tuple(kernels), weights, const, counts_s, counts_t,
            backend == "reference")
    return _GlobalMMD.apply(plan, *srcs, *tgts)


def _check_global_sizes(estimator: str, n: int, m: int) -> None:
    """Checks on the global sizes: the same on every rank, so every rank raises alike."""
    if min(n, m) == 0:
        raise ValueError(f"the global batch has {n} source and {m} target rows; both domains "
                         f"need rows")
    if estimator == "unbiased" and min(n, m) < 2:
        raise ValueError(f"the unbiased estimator needs at least 2 samples per domain, got "
                         f"global source batch {n} and target batch {m}")
    if estimator == "linear" and (n != m or n < 2):
        raise ValueError(f"the linear estimator needs equal global batches of at least 2, got "
                         f"{n} and {m}")


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _gather_layers(srcs, tgts, counts_s, counts_t, group) -> tuple[list, list]:
    """Global (n, d_l) sources and (m, d_l) targets per layer, from one all_gather."""
    local = torch.cat((torch.cat([s.detach() for s in srcs], dim=1),
                       torch.cat([t.detach() for t in tgts], dim=1)))
    counts = [a + b for a, b in zip(counts_s, counts_t)]
    glob = all_gather_rows(local, counts, group)
    starts = [sum(counts[:r]) for r in range(len(counts))]
    src_rows = torch.cat([glob[a: a + cs] for a, cs in zip(starts, counts_s)])
    tgt_rows = torch.cat([glob[a + cs: a + cs + ct] for a, cs, ct in
                          zip(starts, counts_s, counts_t)])
    widths = [s.shape[1] for s in srcs]
    return list(src_rows.split(widths, dim=1)), list(tgt_rows.split(widths, dim=1))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (the group size)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _linear(srcs, tgts, kernels, counts_s, counts_t, backend, group) -> torch.Tensor:
    """The linear estimate of the global batch: O(N·d) on every rank from the gathered rows,
    with this rank's own rows (not the gathered copies) in their place, so autograd gives
    their exact gradient; scaled by W in the backward (the convention)."""
    from .. import functional

    me, world = dist.get_rank(group), dist.get_world_size(group)
    g_src, g_tgt = _gather_layers(srcs, tgts, counts_s, counts_t, group)
    a_s, a_t = sum(counts_s[:me]), sum(counts_t[:me])
    mixed_s = [_ScaleGrad.apply(torch.cat((g[:a_s].to(s.dtype), s, g[a_s + s.shape[0]:]
                                           .to(s.dtype))), world) for g, s in zip(g_src, srcs)]
    mixed_t = [_ScaleGrad.apply(torch.cat((g[:a_t].to(t.dtype), t, g[a_t + t.shape[0]:]
                                           .to(t.dtype))), world) for g, t in zip(g_tgt, tgts)]
    return functional.jmmd(mixed_s, mixed_t, kernels, "linear", backend)


def _bank(z_all: torch.Tensor, kernel: GaussianKernels) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, γ)``: the rows centred on the global mean (float64) and γ_q = 1/(2σ_q²) (float64)
    with ``σ_q² = α_q · 2 Σ_i ‖z_i − μ‖² / N`` (relative; 1.0 replaces a zero mean) or fixed."""
    z64 = z_all.to(torch.float64)
    c = z64 - z64.mean(dim=0, keepdim=True)
    f = torch.tensor(kernel.sigma2_factors, dtype=torch.float64, device=z64.device)
    if kernel.relative:
        msd = 2.0 * c.square().sum() / z64.shape[0]
        msd = torch.where(msd > 0, msd, torch.ones_like(msd))
        f = f * msd
    return c, 0.5 / f


def rows_vs_all(
    cs: Sequence[torch.Tensor],
    gams: Sequence[Sequence[float]],
    rows: torch.Tensor,
    n: int,
    weights: Sequence[float],
    need_grad: bool,
    chunk: int | None = None,
) -> tuple[torch.Tensor, list]:
    """The rows-vs-all sweep of one rank: partial block sums and the local rows' gradient.

    Args:
        cs: per layer, the (N, d_l) centred global rows (sources first), in the compute dtype.
        gams: per layer, γ_q = 1/(2σ_q²) as Python floats.
        rows: (r,) int64 global indices of this rank's rows.
        n: global source rows (rows ``< n`` of ``cs`` are source rows).
        weights: ``(w_ss, w_st, w_tt)``.
        need_grad: also return the gradient.
        chunk: local rows per block (default: ``CHUNK_ELEMENTS // N``).

    Returns:
        ``partial``: float64 (3,) ``[P_ss, P_st + P_ts, P_tt]``, ``P_ab = Σ_{i local ∈ a}
        Σ_{j ∈ b} k_ij`` (self pairs at distance exactly 0); ``grads``: per layer the (r, d_l)
        ``∂L/∂z_l`` of the local rows for ``L = Σ_ij W_ij k_ij`` (compute dtype), or ``[]``.
    """
    big_n = cs[0].shape[0]
    dtype, device = cs[0].dtype, cs[0].device
    sqs = [c.square().sum(dim=1) for c in cs]
    w_ss, w_st, w_tt = weights
    partial = torch.zeros(3, dtype=torch.float64, device=device)
    grads = [c.new_empty((rows.numel(), c.shape[1])) for c in cs] if need_grad else []
    step = chunk or max(16, CHUNK_ELEMENTS // max(big_n, 1))
    for a in range(0, rows.numel(), step):
        g = rows[a: a + step]
        b = g.numel()
        diag = (torch.arange(b, device=device), g)
        values, slopes = [], []
        for c, sq, gam in zip(cs, sqs, gams):
            dist_ = torch.addmm(sq[None, :], c[g], c.T, alpha=-2.0).add_(sq[g][:, None])
            dist_.clamp_min_(0.0)
            dist_[diag] = 0.0
            k = torch.zeros_like(dist_)
            kp = torch.zeros_like(dist_) if need_grad else None
            for gq in gam:
                e = torch.exp(dist_ * (-gq))
                k += e
                if need_grad:
                    kp.add_(e, alpha=-gq)
            values.append(k)
            slopes.append(kp)
        kernel = values[0]
        for v in values[1:]:
            kernel = kernel * v
        src = g < n
        to_s = kernel[:, :n].sum(dim=1, dtype=torch.float64)
        to_t = kernel[:, n:].sum(dim=1, dtype=torch.float64)
        partial[0] += to_s[src].sum()
        partial[1] += to_t[src].sum() + to_s[~src].sum()
        partial[2] += to_t[~src].sum()
        if not need_grad:
            continue
        ones = torch.ones(b, dtype=dtype, device=device)
        wa = torch.where(src, ones * w_ss, ones * w_st)[:, None]  # weight towards source cols
        wb = torch.where(src, ones * w_st, ones * w_tt)[:, None]  # towards target columns
        for l, c in enumerate(cs):
            coef = slopes[l]
            for o, v in enumerate(values):
                if o != l:
                    coef = coef * v
            coef[:, :n] *= wa
            coef[:, n:] *= wb
            grads[l][a: a + b] = 4.0 * (coef.sum(dim=1, keepdim=True) * c[g] - coef @ c)
    return partial, grads


class _GlobalMMD(torch.autograd.Function):
    """Forward: gather, bandwidths, rows-vs-all sweep, all-reduce of 3 sums; the local rows'
    gradient is stored.  Backward: ``grad_output · W · stored`` (grad_output is the same on
    every rank, since the loss is)."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        group, kernels, weights, const, counts_s, counts_t, exact = plan
        layers = len(tensors) // 2
        srcs, tgts = tensors[:layers], tensors[layers:]
        in_dtype = srcs[0].dtype
        dtype = torch.float64 if (exact or in_dtype == torch.float64) else torch.float32
        me, world = dist.get_rank(group), dist.get_world_size(group)
        n = sum(counts_s)
        g_src, g_tgt = _gather_layers(srcs, tgts, counts_s, counts_t, group)
        cs, gams = [], []
        for gs_, gt_, k in zip(g_src, g_tgt, kernels):
            c, gam = _bank(torch.cat((gs_, gt_)), k)
            cs.append(c.to(dtype))
            gams.append([float(v) for v in gam])
        device = cs[0].device
        a_s, a_t = sum(counts_s[:me]), sum(counts_t[:me])
        ns, nt = srcs[0].shape[0], tgts[0].shape[0]
        rows = torch.cat((torch.arange(a_s, a_s + ns, device=device),
                          torch.arange(n + a_t, n + a_t + nt, device=device)))
        need_grad = any(ctx.needs_input_grad)
        partial, grads = rows_vs_all(cs, gams, rows, n, weights, need_grad)
        sums = all_reduce_sum(partial, group)
        w_ss, w_st, w_tt = weights
        value = float(w_ss * sums[0] + w_st * sums[1] + w_tt * sums[2]) + const
        ctx.layers, ctx.ns, ctx.world = layers, ns, world
        ctx.shapes = [x.shape for x in tensors]
        ctx.dtypes = [x.dtype for x in tensors]
        if need_grad:
            ctx.save_for_backward(*grads)
        return torch.scalar_tensor(value, dtype=_out_dtype(in_dtype), device=srcs[0].device)

    @staticmethod
    def backward(ctx, grad_out):
        grads = ctx.saved_tensors
        layers, ns, world = ctx.layers, ctx.ns, ctx.world
        scale = grad_out.to(torch.float64) * world
        out_s, out_t = [], []
        for l, g in enumerate(grads):
            full = g * scale.to(g.dtype)
            out_s.append(full[:ns].to(ctx.dtypes[l]) if ctx.needs_input_grad[1 + l] else None)
            out_t.append(full[ns:].to(ctx.dtypes[layers + l])
                         if ctx.needs_input_grad[1 + layers + l] else None)
        return (None, *out_s, *out_t)
