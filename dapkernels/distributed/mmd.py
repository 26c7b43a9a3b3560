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
   another's work.  Tiled (local rows × columns): O(tile) memory, no N×N matrix;
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

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

from .. import backends
from .._validation import check_estimator, check_finite
from ..kernels import GaussianKernels
from ..ops.mmd import mmd_linear
from .errors import agree, signature
from .gather import all_gather_rows, all_reduce_sum, scale_grad

__all__ = ["global_mmd", "estimator_weights", "rows_vs_cols", "exp_plan", "CHUNK_ROWS",
           "CHUNK_COLS"]

ESTIMATORS = ("biased", "unbiased", "linear")
_BACKENDS = ("reference", "cpu", "triton")
#: tile of the rectangular sweep: rows × columns (a 1 MiB float32 block)
CHUNK_ROWS, CHUNK_COLS = 256, 1024


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
        return _linear(srcs, tgts, kernels, counts_s, counts_t, group)
    k0 = 1.0
    for k in kernels:
        k0 *= k.num_kernels
    weights, const = estimator_weights(estimator, n, m, k0)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in srcs + tgts)
    plan = (group, tuple(kernels), weights, const, counts_s, counts_t,
            backend == "reference", grad)
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


def _linear(srcs, tgts, kernels, counts_s, counts_t, group) -> torch.Tensor:
    """The linear estimate of the global batch: O(N·d) on every rank from the gathered rows,
    with this rank's own rows (not the gathered copies) in their place, so autograd gives
    their exact gradient; scaled by W in the backward (the convention)."""
    me, world = dist.get_rank(group), dist.get_world_size(group)
    g_src, g_tgt = _gather_layers(srcs, tgts, counts_s, counts_t, group)
    a_s, a_t = sum(counts_s[:me]), sum(counts_t[:me])
    mixed_s = [scale_grad(torch.cat((g[:a_s].to(s.dtype), s, g[a_s + s.shape[0]:]
                                           .to(s.dtype))), world) for g, s in zip(g_src, srcs)]
    mixed_t = [scale_grad(torch.cat((g[:a_t].to(t.dtype), t, g[a_t + t.shape[0]:]
                                           .to(t.dtype))), world) for g, t in zip(g_tgt, tgts)]
    check_estimator("linear", mixed_s[0].shape[0], mixed_t[0].shape[0])
    return mmd_linear(mixed_s, mixed_t, [k.sigma2_factors for k in kernels],
                      [k.relative for k in kernels])


def _bank(z_all: torch.Tensor, kernel: GaussianKernels,
          dtype: torch.dtype) -> tuple[torch.Tensor, list[float]]:
    """``(c, γ)``: the global rows centred on their float64 mean, in ``dtype``, and
    γ_q = 1/(2σ_q²) with ``σ_q² = α_q · 2 Σ_i ‖c_i‖² / N`` (relative, float64 sum; 1.0
    replaces a zero mean) or fixed.  The same on every rank (same rows, same order)."""
    big_n = z_all.shape[0]
    mu = z_all.sum(dim=0, dtype=torch.float64) / big_n
    c = z_all.to(dtype) - mu.to(dtype)
    f = list(kernel.sigma2_factors)
    if kernel.relative:
        msd = 2.0 * float(c.square().sum(dim=1).sum(dtype=torch.float64)) / big_n
        msd = msd if msd > 0 else 1.0
        f = [x * msd for x in f]
    return c, [0.5 / x for x in f]


def exp_plan(gammas: Sequence[float], dtype: torch.dtype) -> list[tuple[int, float]]:
    """``[(squarings, γ), …]`` in ascending γ: a γ that is 2^k (k = 1…3) times the previous one
    is obtained from the previous ``e^{−γD}`` by k squarings instead of an ``exp`` (the default
    bank 2^-3 … 2^1 needs one ``exp``), while the chain stays short (relative error ×2 per
    squaring: at most 5 in float32, 16 in float64)."""
    depth_max = 5 if dtype != torch.float64 else 16
    plan: list[tuple[int, float]] = []
    depth = 0
    for g in sorted(gammas):
        k = 0
        if plan:
            ratio = g / plan[-1][1]
            r = round(math.log2(ratio)) if ratio > 0 else 0
            if 1 <= r <= 3 and abs(ratio - 2.0 ** r) <= 1e-12 * ratio and depth + r <= depth_max:
                k = r
        depth = depth + k if k else 0
        plan.append((k, g))
    return plan


def rows_vs_cols(
    rows: Sequence[torch.Tensor],
    row_src: torch.Tensor,
    cols: Sequence[torch.Tensor],
    col_src: int,
    gams: Sequence[Sequence[float]],
    weights: Sequence[float],
    need_grad: bool,
    self_col: torch.Tensor | None = None,
    chunk: int | None = None,
    col_chunk: int | None = None,
) -> tuple[torch.Tensor, list]:
    """Rectangular sweep: every (row i, column j) pair once, with the gradient of the rows.

    Args:
        rows: per layer, (r, d_l) centred rows (compute dtype), e.g. this rank's rows.
        row_src: (r,) bool, whether each row is a source row.
        cols: per layer, (M, d_l) centred columns (same centring), source columns first.
        col_src: number of source columns.
        gams: per layer, γ_q = 1/(2σ_q²) as Python floats.
        weights: ``(w_ss, w_st, w_tt)``.
        need_grad: also return the gradient.
        self_col: (r,) column index of each row itself (its distance is set to exactly 0), or
            ``None`` when no column is a row.
        chunk: rows per tile (default :data:`CHUNK_ROWS`).
        col_chunk: columns per tile (default :data:`CHUNK_COLS`): tiles of chunk × col_chunk
            pairs keep the elementwise passes in cache and re-read each column block once per
            row chunk; O(chunk · col_chunk) memory.

    Returns:
        ``partial``: float64 (3,) ``[P_ss, P_st + P_ts, P_tt]`` with ``P_ab = Σ_{i ∈ a} Σ_{j ∈ b}
        k_ij`` over rows i and columns j; ``grads``: per layer the (r, d_l)
        ``Σ_j 4 C^l_ij (c_i − c_j)``, ``C^l_ij = W_ij K_l′(D_l,ij) Π_{o≠l} K_o(D_o,ij)`` —
        the gradient that the pairs (i, j) and (j, i) give row i in ``L = Σ W_ij k_ij`` — or
        ``[]``.
    """
    big_m = cols[0].shape[0]
    dtype, device = cols[0].dtype, cols[0].device
    plans = [exp_plan(g, dtype) for g in gams]
    sq_cols = [c.square().sum(dim=1) for c in cols]
    sq_rows = [r.square().sum(dim=1) for r in rows]
    w_ss, w_st, w_tt = weights
    partial = torch.zeros(3, dtype=torch.float64, device=device)
    grads = [c.new_zeros((rows[0].shape[0], c.shape[1])) for c in cols] if need_grad else []
    ms = col_src
    n_rows = rows[0].shape[0]
    rows_per = chunk or CHUNK_ROWS
    cols_per = col_chunk or CHUNK_COLS
    for a in range(0, n_rows, rows_per):
        b = min(rows_per, n_rows - a)
        src = row_src[a: a + b]
        ar = torch.arange(b, device=device)
        to_s = torch.zeros(b, dtype=torch.float64, device=device)
        to_t = torch.zeros(b, dtype=torch.float64, device=device)
        if need_grad:
            ones = torch.ones(b, dtype=dtype, device=device)
            wa = torch.where(src, ones * w_ss, ones * w_st)[:, None]  # towards source columns
            wb = torch.where(src, ones * w_st, ones * w_tt)[:, None]  # towards target columns
            rsum = [torch.zeros((b, 1), dtype=dtype, device=device) for _ in rows]
            prod = [torch.zeros((b, r.shape[1]), dtype=dtype, device=device) for r in rows]
        for j0 in range(0, big_m, cols_per):
            j1 = min(j0 + cols_per, big_m)
            bs = min(max(ms - j0, 0), j1 - j0)  # source columns of this block come first
            values, slopes = [], []
            for r, c, sq, sqr, plan in zip(rows, cols, sq_cols, sq_rows, plans):
                dist_ = torch.addmm(sq[None, j0:j1], r[a: a + b], c[j0:j1].T, alpha=-2.0)
                dist_.add_(sqr[a: a + b, None]).clamp_(min=0.0)
                if self_col is not None:  # no host sync: write back where the self is here
                    rel = self_col[a: a + b] - j0
                    here = (rel >= 0) & (rel < j1 - j0)
                    rel = rel.clamp(0, j1 - j0 - 1)
                    dist_[ar, rel] = torch.where(here, torch.zeros_like(dist_[ar, rel]),
                                                 dist_[ar, rel])
                k, kp = _bank_values(dist_, plan, need_grad)
                values.append(k)
                slopes.append(kp)
            kernel = values[0]
            for v in values[1:]:
                kernel = kernel * v
            if bs > 0:
                to_s += kernel[:, :bs].sum(dim=1, dtype=torch.float64)
            if bs < j1 - j0:
                to_t += kernel[:, bs:].sum(dim=1, dtype=torch.float64)
            if not need_grad:
                continue
            for l, c in enumerate(cols):
                coef = slopes[l]
                for o, v in enumerate(values):
                    if o != l:
                        coef = coef * v
                # row i: 4 Σ_j W_ij C_ij (c_i − c_j), W_ij = wa_i (j source) or wb_i (target)
                if bs > 0:
                    ca = coef[:, :bs]
                    rsum[l] += wa * ca.sum(dim=1, keepdim=True)
                    prod[l] -= wa * (ca @ c[j0: j0 + bs])
                if bs < j1 - j0:
                    cb = coef[:, bs:]
                    rsum[l] += wb * cb.sum(dim=1, keepdim=True)
                    prod[l] -= wb * (cb @ c[j0 + bs: j1])
        partial[0] += to_s[src].sum()
        partial[1] += to_t[src].sum() + to_s[~src].sum()
        partial[2] += to_t[~src].sum()
        if need_grad:
            for l, r in enumerate(rows):
                grads[l][a: a + b] = 4.0 * (rsum[l] * r[a: a + b] + prod[l])
    return partial, grads


def _bank_values(dist_: torch.Tensor, plan, need_grad: bool) -> tuple:
    """``K = Σ_q e^{−γ_q D}`` and ``K′ = −Σ_q γ_q e^{−γ_q D}`` (or ``None``) of a block of
    squared distances, following :func:`exp_plan`; ``dist_`` is consumed (overwritten) when
    no later γ needs it."""
    chained = all(sq > 0 for sq, _ in plan[1:])
    k = kp = e = None
    for idx, (squarings, g) in enumerate(plan):
        if squarings == 0:
            e = dist_.mul_(-g).exp_() if (idx == 0 and chained) else torch.mul(dist_, -g).exp_()
        else:
            nxt = e.square()
            for _ in range(squarings - 1):
                nxt.square_()
            e = nxt
        if k is None:
            k = e  # later e's are new tensors; k is accumulated in place after kp is taken
            kp = torch.mul(e, -g) if need_grad else None
        else:
            k = k.add_(e) if k is not e else k + e
            if need_grad:
                kp.add_(e, alpha=-g)
    return k, kp


def _core_sweep():
    """The CPU core's square sweep (``dapkernels.backends`` "cpu" ``mmd_sweep``), or ``None``
    when it is not built."""
    return backends.get("cpu").mmd_sweep if backends.available("cpu") else None


def _local_sweep(cs, gams, rows, ns, n, weights, need_grad, exact, backend):
    """This rank's share of the global sweep: every ordered pair (i, j) with i one of its rows.

    On CPU tensors (unless ``backend="reference"``) the pairs inside the rank's own block run
    in the C++ core's symmetric sweep (each unordered pair once, fixed bandwidths = the global
    ones) and only the pairs (own row, other rank's row) in the torch rectangular sweep;
    otherwise one rectangular sweep of the own rows against all rows.  Returns the float64
    partial sums ``[P_ss, P_st + P_ts, P_tt]`` and the own rows' gradients.
    """
    own = [c[rows] for c in cs]
    row_src = rows < n
    core = None
    if cs[0].device.type == "cpu" and backend != "reference" and rows.numel() > 0:
        core = _core_sweep()
    if core is None:
        return rows_vs_cols(own, row_src, cs, n, gams, weights, need_grad, self_col=rows)
    factors = [[0.5 / g for g in gam] for gam in gams]
    sums, g_own = core([o[:ns] for o in own], [o[ns:] for o in own], factors,
                       [False] * len(own), weights, need_grad)
    keep = torch.ones(cs[0].shape[0], dtype=torch.bool)
    keep[rows] = False
    others = keep.nonzero().squeeze(1)
    partial = torch.tensor([sums[0], 2.0 * sums[1], sums[2]], dtype=torch.float64)
    if others.numel() == 0:
        return partial, list(g_own)
    p_x, g_x = rows_vs_cols(own, row_src, [c[others] for c in cs], int((others < n).sum()),
                            gams, weights, need_grad)
    return partial + p_x, [a + b for a, b in zip(g_own, g_x)]


class _GlobalMMD(torch.autograd.Function):
    """Forward: gather, bandwidths, rows-vs-all sweep, all-reduce of 3 sums; the local rows'
    gradient is stored.  Backward: ``grad_output · W · stored`` (grad_output is the same on
    every rank, since the loss is)."""

    @staticmethod
    def forward(ctx, plan, *tensors):
        group, kernels, weights, const, counts_s, counts_t, exact, grad = plan
        layers = len(tensors) // 2
        srcs, tgts = tensors[:layers], tensors[layers:]
        in_dtype = srcs[0].dtype
        dtype = torch.float64 if (exact or in_dtype == torch.float64) else torch.float32
        me, world = dist.get_rank(group), dist.get_world_size(group)
        n = sum(counts_s)
        g_src, g_tgt = _gather_layers(srcs, tgts, counts_s, counts_t, group)
        cs, gams = [], []
        for gs_, gt_, k in zip(g_src, g_tgt, kernels):
            c, gam = _bank(torch.cat((gs_, gt_)), k, dtype)
            cs.append(c)
            gams.append(gam)
        device = cs[0].device
        a_s, a_t = sum(counts_s[:me]), sum(counts_t[:me])
        ns, nt = srcs[0].shape[0], tgts[0].shape[0]
        rows = torch.cat((torch.arange(a_s, a_s + ns, device=device),
                          torch.arange(n + a_t, n + a_t + nt, device=device)))
        need_grad = grad and any(ctx.needs_input_grad)  # not under no_grad
        partial, grads = _local_sweep(cs, gams, rows, ns, n, weights, need_grad, exact,
                                      "reference" if exact else None)
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
