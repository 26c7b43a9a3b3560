"""The CORAL op: one backend call gives the Deep CORAL value and its gradient.

Both paths and their gradients: docs/design.md §CORAL.

``L = ‖C_s − C_t‖_F² / (4d²)``, ``C = X̃ᵀX̃/(n − 1)``.  The backend computes ∂L/∂X_s and
∂L/∂X_t in the same call as L (formulas: ``backends.reference.coral_formula``); backward only
multiplies them by ``grad_output``.
Eager calls use a lean ``torch.autograd.Function``; under ``torch.compile`` the same sweep is
reached through the ``dapkernels::coral_fused`` custom op (fake + autograd registered), so
compiled graphs do not break.

Double backward (``create_graph=True``): when the backward pass is itself recorded, both
routes recompute the gradient from the saved inputs with differentiable float64 torch ops
(:func:`dapkernels.backends.reference.coral_grad_formula`, Gram form when n_s + n_t < d), so
second derivatives are exact; otherwise backward only scales the stored gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

from .. import backends
from .._validation import check_finite
from ..backends import reference
from ._autograd import direct_apply, mul_grad, scale_grad

__all__ = ["coral_fused", "coral_fused_op", "coral_fused_backward", "coral_path", "coral_log",
           "coral_symmetric_log"]


def coral_path(xs: torch.Tensor, xt: torch.Tensor) -> str:
    """The Gram formula when it is cheaper, so d×d is never built for n ≪ d."""
    return "gram" if xs.shape[0] + xt.shape[0] < xs.shape[1] else "cov"


def _coral_forward(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, backend: str,
                   out_dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(L as a 0-dim out_dtype tensor on the inputs' device, unscaled gradients)`` from the
    backend's ``coral_loss`` if it has one, else from its ``coral_sweep``
    (docs/design.md §Backend contract)."""
    if backend == "cpu":  # lean path: the C++ core picks the path; a float, one tensor creation
        value, grads = backends.get("cpu").coral_sweep(xs, xt, need_grad)
        return torch.scalar_tensor(value, dtype=out_dtype), grads
    module = backends.get(backend)
    loss = getattr(module, "coral_loss", None)
    if loss is not None:  # the value in out_dtype straight from the kernel
        return loss(xs, xt, need_grad, coral_path(xs, xt), out_dtype)
    value, grads = module.coral_sweep(xs, xt, need_grad, coral_path(xs, xt))
    return value.to(device=xs.device, dtype=out_dtype), grads


def coral_fused_backward(
    saved: Sequence[torch.Tensor],
    grad_out: torch.Tensor,
    needs: Sequence[bool],
    scale: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mul_grad,
) -> tuple:
    """The backward of the CORAL op: the eager Function and the custom op both call it.

    Args:
        saved: ``(gs, gt, xs, xt)`` (the stored gradients, then the inputs), or ``(xs, xt)``
            when the forward ran without gradients.
        grad_out: 0-dim incoming gradient.
        needs: whether the gradients of ``xs`` and ``xt`` are wanted.
        scale: ``(stored gradient, grad_out) → gradient`` of the ordinary path.

    Returns:
        ``(grad_xs, grad_xt)`` (None where not needed): the stored gradients scaled by
        ``grad_out``, or, when the backward is being recorded (``create_graph=True``),
        ``grad_out · ∂L/∂X`` recomputed differentiably by
        :func:`~dapkernels.backends.reference.coral_grad_formula` (float64).
    """
    if len(saved) == 2:
        return None, None
    gs, gt, xs, xt = saved
    if torch.is_grad_enabled():
        go = grad_out.to(torch.float64)
        es, et = reference.coral_grad_formula(xs, xt, coral_path(xs, xt))
        gs, gt = (es * go).to(xs.dtype), (et * go).to(xt.dtype)
    else:
        gs, gt = scale(gs, grad_out), scale(gt, grad_out)
    return gs if needs[0] else None, gt if needs[1] else None


class _CORALFusedFunction(torch.autograd.Function):
    """Eager path: forward runs the backend, backward scales the stored gradients."""

    @staticmethod
    def forward(ctx, backend, out_dtype, xs, xt):
        need_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        value, grads = _coral_forward(xs, xt, need_grad, backend, out_dtype)
        ctx.save_for_backward(*grads, xs, xt)
        return value

    @staticmethod
    def backward(ctx, grad_out):
        gs, gt = coral_fused_backward(ctx.saved_tensors, grad_out, ctx.needs_input_grad[2:],
                                      scale_grad)
        return None, None, gs, gt


_apply = direct_apply(_CORALFusedFunction)


@torch.library.custom_op("dapkernels::coral_fused", mutates_args=())
def coral_fused_op(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, backend: str
) -> list[torch.Tensor]:
    """Compiled path: ``[value (float64, 0-dim), grad_s, grad_t]`` (grads only when asked)."""
    value, grads = _coral_forward(xs, xt, need_grad, backend, torch.float64)
    return [value.to(xs.device)] + [g.contiguous() for g in grads]


@coral_fused_op.register_fake
def _coral_fused_op_fake(xs, xt, need_grad, backend):
    value = xs.new_empty((), dtype=torch.float64)
    # the real op returns contiguous gradients whatever the inputs' layout (not empty_like,
    # which would copy a transposed input's strides)
    if not need_grad:
        return [value]
    return [value] + [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (xs, xt)]


def _coral_fused_op_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*output[1:], inputs[0], inputs[1])


def _coral_fused_op_backward(ctx, grad_outputs):
    gs, gt = coral_fused_backward(ctx.saved_tensors, grad_outputs[0], (True, True))
    return gs, gt, None, None


coral_fused_op.register_autograd(_coral_fused_op_backward,
                                 setup_context=_coral_fused_op_setup_context)


def coral_fused(
    xs: torch.Tensor, xt: torch.Tensor, backend: str, out_dtype: torch.dtype
) -> torch.Tensor:
    """``L`` as a 0-dim tensor of ``out_dtype``, differentiable w.r.t. ``xs`` and ``xt``."""
    if torch.compiler.is_compiling():
        need_grad = torch.is_grad_enabled() and (xs.requires_grad or xt.requires_grad)
        return coral_fused_op(xs, xt, need_grad, backend)[0].to(out_dtype)
    return _apply(backend, out_dtype, xs, xt)


# ---- log-Euclidean CORAL ----------------------------------------------------------------------


def _floored_log(lam: torch.Tensor, eps: float) -> tuple:
    """``f(λ) = log(max(λ, eps))`` and ``f′(λ)`` (0 where the floor is active)."""
    floored = lam.clamp_min(eps)
    return floored.log(), torch.where(lam > eps, 1.0 / floored, torch.zeros_like(lam))


class _SymLog(torch.autograd.Function):
    """Matrix logarithm of a symmetric PSD matrix with an eigenvalue floor.

    ``log C = V diag(log max(λ, eps)) Vᵀ`` (``torch.linalg.eigh``).  The backward pass uses the
    Daleckii–Krein formula ``∂ = V (Λ_f ∘ (Vᵀ G V)) Vᵀ`` with the divided differences
    ``Λ_f[i,j] = (f(λ_i) − f(λ_j)) / (λ_i − λ_j)`` (``f′`` when they coincide), which stays
    finite for repeated eigenvalues, unlike differentiating through ``eigh`` (rank-deficient
    covariances, n ≤ d, have many equal floored eigenvalues).
    """

    @staticmethod
    def forward(ctx, c, eps):
        lam, vec = torch.linalg.eigh(c)
        f, fp = _floored_log(lam, eps)
        ctx.save_for_backward(lam, vec, f, fp)
        return (vec * f) @ vec.mT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        # once_differentiable: the formula uses the eigendecomposition as constants, so its own
        # derivative would be wrong; differentiating it again raises instead.
        lam, vec, f, fp = ctx.saved_tensors
        dl = lam[:, None] - lam[None, :]
        df = f[:, None] - f[None, :]
        # relative gap under which the divided difference is replaced by the mean slope
        close = dl.abs() <= 1e-9 * lam.abs().max().clamp_min(1e-300)
        slope = 0.5 * (fp[:, None] + fp[None, :])
        loewner = torch.where(close, slope, df / torch.where(close, 1.0, dl))
        sym = 0.5 * (grad + grad.mT)
        return vec @ (loewner * (vec.mT @ sym @ vec)) @ vec.mT, None


def coral_symmetric_log(c: torch.Tensor, eps: float) -> torch.Tensor:
    """``log C = V diag(log max(λ, eps)) Vᵀ`` of a symmetric PSD (d, d) matrix, differentiable
    once (Daleckii–Krein backward); shared by :func:`coral_log` and the global-batch CORAL."""
    return _SymLog.apply(c, eps)


def coral_log(
    xs: torch.Tensor, xt: torch.Tensor, eps: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """``‖log C_s − log C_t‖_F² / (4d²)`` evaluated in float64 (always the d×d path, O(d³)).

    Args:
        xs: (n_s, d), xt: (n_t, d) features, n ≥ 2.
        eps: eigenvalue floor (> 0).
        out_dtype: dtype of the 0-dim result.

    Raises:
        ValueError: non-finite features on CPU tensors (CUDA tensors are not checked: the
            check would synchronise with the host).

    First derivatives only: differentiating the gradient again (``create_graph=True``) raises.
    """
    if xs.device.type == "cpu":
        check_finite(xs, "f_s")
        check_finite(xt, "f_t")
    d = xs.shape[1]
    x64s, x64t = xs.to(torch.float64), xt.to(torch.float64)
    zs = x64s - x64s.mean(dim=0, keepdim=True)
    zt = x64t - x64t.mean(dim=0, keepdim=True)
    cs = zs.mT @ zs / (xs.shape[0] - 1)
    ct = zt.mT @ zt / (xt.shape[0] - 1)
    diff = coral_symmetric_log(cs, eps) - coral_symmetric_log(ct, eps)
    return (diff.square().sum() / (4.0 * d * d)).to(out_dtype)
