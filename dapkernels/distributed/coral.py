"""Global-batch Deep CORAL over a process group: all-reduced column sums and d×d products.

Rank r holds ``n_r`` source rows ``X_s,r`` and ``m_r`` target rows; the global batches are
their concatenations (n = Σ n_r, m = Σ m_r).  Per call:

1. local validation + one ``all_gather`` of a status vector (every rank raises together);
2. ``all_reduce`` of the 2d column sums (float64) → global means μ_s, μ_t;
3. ``all_reduce`` of the 2d² centred products ``Σ_i (x_i − μ)(x_i − μ)ᵀ`` (float64) →
   ``C_s = X̃_sᵀX̃_s/(n − 1)``, ``C_t`` (the d×d path: 2d² values per rank whatever the batch;
   the Gram path would gather N·d values, cheaper only when N < 2d);
4. ``L = ‖C_s − C_t‖_F² / (4d²)`` (or the log-Euclidean ``‖log C_s − log C_t‖_F² / (4d²)``),
   the same on every rank, and the exact gradient of the local rows::

       ∂L/∂x_i = 2 x̃_i G_s / (n − 1)   (source),   ∂L/∂x_j = 2 x̃_j G_t / (m − 1)   (target)

   with ``G = ∂L/∂C`` (d×d, symmetric; plain CORAL: ``G_s = (C_s − C_t)/(2d²) = −G_t``,
   i.e. ``∂L/∂x_i = x̃_i (C_s − C_t) / (d² (n − 1))``).  The mean's own dependence on x_i
   drops out (``Σ_i x̃_i = 0``), so the formula is exact for the local rows.

Gradient convention as for MMD: rank r's rows receive ``W · ∂L/∂x_local``; DDP's averaging
then gives the exact gradient of the global loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..ops.coral import coral_symmetric_log
from .errors import agree, signature
from .gather import all_reduce_sum
from .mmd import _features, _first_device, _out_dtype

__all__ = ["global_coral"]


def global_coral(f_s: torch.Tensor, f_t: torch.Tensor, log: bool, eps: float,
                 backend: str | None, group) -> torch.Tensor:
    """Deep CORAL of the global batch over ``group``; see the module docstring.

    Args:
        f_s: (n_r, …) this rank's source rows (n_r ≥ 0; globally ≥ 2).
        f_t: (m_r, …) this rank's target rows; same d and dtype on every rank.
        log: log-Euclidean variant (eigenvalues floored at ``eps``).
        eps: eigenvalue floor of the log variant.
        backend: accepted for symmetry with :func:`dapkernels.coral`; the global path always
            reduces in float64 with torch on the features' device.
        group: the process group.

    Returns:
        0-dim tensor, the same on every rank; backward gives ``W · ∂L/∂(local rows)``.
    """
    error, xs, xt = None, None, None
    try:
        if backend is not None and backend not in ("reference", "cpu", "triton"):
            raise ValueError(f"backend must be one of ('reference', 'cpu', 'triton'), got "
                             f"{backend!r}")
        if log and not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        xs, xt = _features(f_s, "f_s"), _features(f_t, "f_t")
        if xs.shape[1] != xt.shape[1]:
            raise ValueError(f"feature dimensions differ: f_s has d={xs.shape[1]}, f_t has "
                             f"d={xt.shape[1]}")
        if xs.dtype != xt.dtype or xs.device != xt.device:
            raise TypeError(f"f_s is {xs.dtype} on {xs.device} but f_t is {xt.dtype} on "
                            f"{xt.device}")
    except (TypeError, ValueError) as exc:
        error = exc
    device = _first_device([f_s, f_t])
    if error is None:
        d = xs.shape[1]
        sig = signature("coral", d, str(xs.dtype), bool(log), float(eps) if log else None)
        fields = [xs.shape[0], xt.shape[0]]
        describe = f"d={d}, {xs.dtype}, log={log}" + (f", eps={eps}" if log else "")
    else:
        sig, fields, describe = 0, [0, 0], ""
    table = agree(group, error, fields, sig, device, describe)
    n, m = int(table[:, 2].sum()), int(table[:, 3].sum())
    if n < 2 or m < 2:
        raise ValueError(f"CORAL estimates covariances and needs at least 2 samples per domain "
                         f"in the global batch, got {n} source and {m} target rows")
    grad = torch.is_grad_enabled() and (xs.requires_grad or xt.requires_grad)
    return _GlobalCORAL.apply((group, n, m, bool(log), float(eps), grad), xs, xt)


class _GlobalCORAL(torch.autograd.Function):
    """Forward: two all-reduces (2d sums, 2d² products), the loss and ``G = ∂L/∂C``; the local
    rows' gradient is stored.  Backward: ``grad_output · W · stored``."""

    @staticmethod
    def forward(ctx, plan, xs, xt):
        group, n, m, log, eps, grad = plan
        d = xs.shape[1]
        world = dist.get_world_size(group)
        x64s, x64t = xs.detach().to(torch.float64), xt.detach().to(torch.float64)
        sums = all_reduce_sum(torch.cat((x64s.sum(dim=0), x64t.sum(dim=0))), group)
        ys, yt = x64s - sums[:d] / n, x64t - sums[d:] / m
        prods = all_reduce_sum(torch.stack((ys.mT @ ys, yt.mT @ yt)), group)
        with torch.enable_grad():
            cs = (prods[0] / (n - 1)).requires_grad_()
            ct = (prods[1] / (m - 1)).requires_grad_()
            if log:
                diff = coral_symmetric_log(cs, eps) - coral_symmetric_log(ct, eps)
            else:
                diff = cs - ct
            value = diff.square().sum() / (4.0 * d * d)
            need_grad = grad and any(ctx.needs_input_grad)  # not under no_grad
            if need_grad:
                g_s, g_t = torch.autograd.grad(value, (cs, ct))
        if need_grad:
            g_s = 0.5 * (g_s + g_s.mT)
            g_t = 0.5 * (g_t + g_t.mT)
            ctx.save_for_backward((ys @ g_s) * (2.0 / (n - 1)), (yt @ g_t) * (2.0 / (m - 1)))
        ctx.world = world
        ctx.dtypes = (xs.dtype, xt.dtype)
        return value.detach().to(_out_dtype(xs.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        gs, gt = ctx.saved_tensors
        scale = grad_out.to(torch.float64) * ctx.world
        return (None,
                (gs * scale).to(ctx.dtypes[0]) if ctx.needs_input_grad[1] else None,
                (gt * scale).to(ctx.dtypes[1]) if ctx.needs_input_grad[2] else None)
