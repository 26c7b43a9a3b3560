"""The CORAL op: one backend call gives the Deep CORAL value and its gradient.

``L = ‖C_s − C_t‖_F² / (4d²)``, ``C = X̃ᵀX̃/(n − 1)``.  The backend computes ∂L/∂X_s and
∂L/∂X_t in the same call as L (DESIGN §4); backward only multiplies them by ``grad_output``.
Eager calls use a lean ``torch.autograd.Function``; under ``torch.compile`` the same sweep is
reached through the ``dapkernels::coral_fused`` custom op (fake + autograd registered), so
compiled graphs do not break.
"""

from __future__ import annotations

from types import ModuleType

import torch

from .. import backends
from ..backends import reference
from ._autograd import direct_apply, scale_grad


def _module(backend: str) -> ModuleType:
    mod = backends.get(backend)
    # A device backend without a CORAL kernel runs the torch formula on its own device.
    return mod if hasattr(mod, "coral_sweep") else reference


def _sweep(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, backend: str) -> tuple:
    if backend == "cpu":
        return _module(backend).coral_sweep(xs, xt, need_grad)
    return _module(backend).coral_sweep(xs, xt, need_grad, _path(xs, xt))


def _path(xs: torch.Tensor, xt: torch.Tensor) -> str:
    """The Gram formula when it is cheaper, so d×d is never built for n ≪ d."""
    return "gram" if xs.shape[0] + xt.shape[0] < xs.shape[1] else "cov"


class _CoralFunction(torch.autograd.Function):
    """Eager path: forward runs the sweep, backward scales the stored gradients."""

    @staticmethod
    def forward(ctx, backend, out_dtype, xs, xt):
        need_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        if backend == "cpu":  # lean path: a float from C++, one tensor creation
            value, grads = _module(backend).coral_sweep_float(xs, xt, need_grad)
            ctx.save_for_backward(*grads)
            return torch.scalar_tensor(value, dtype=out_dtype)
        module = _module(backend)
        if hasattr(module, "coral_loss"):  # the value in out_dtype straight from the kernel
            value, grads = module.coral_loss(xs, xt, need_grad, _path(xs, xt), out_dtype)
        else:
            value, grads = _sweep(xs, xt, need_grad, backend)
        ctx.save_for_backward(*grads)
        return value.to(device=xs.device, dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.saved_tensors:
            return None, None, None, None
        gs, gt = ctx.saved_tensors
        need_s, need_t = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        return (
            None,
            None,
            scale_grad(gs, grad_out) if need_s else None,
            scale_grad(gt, grad_out) if need_t else None,
        )


_apply = direct_apply(_CoralFunction)


@torch.library.custom_op("dapkernels::coral_fused", mutates_args=())
def coral_fused(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, backend: str
) -> list[torch.Tensor]:
    """Compiled path: ``[value (float64, 0-dim), grad_s, grad_t]`` (grads only when asked)."""
    value, grads = _sweep(xs, xt, need_grad, backend)
    return [value.to(xs.device)] + [g.contiguous() for g in grads]


@coral_fused.register_fake
def _(xs, xt, need_grad, backend):
    value = xs.new_empty((), dtype=torch.float64)
    return [value] + ([torch.empty_like(xs), torch.empty_like(xt)] if need_grad else [])


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])


def _backward(ctx, grad_outputs):
    grad_value = grad_outputs[0]
    if not ctx.saved_tensors:
        return None, None, None, None
    gs, gt = ctx.saved_tensors
    return grad_value.to(gs.dtype) * gs, grad_value.to(gt.dtype) * gt, None, None


coral_fused.register_autograd(_backward, setup_context=_setup_context)


def fused_coral(
    xs: torch.Tensor, xt: torch.Tensor, backend: str, out_dtype: torch.dtype
) -> torch.Tensor:
    """``L`` as a 0-dim tensor of ``out_dtype``, differentiable w.r.t. ``xs`` and ``xt``."""
    if torch.compiler.is_compiling():
        need_grad = torch.is_grad_enabled() and (xs.requires_grad or xt.requires_grad)
        return coral_fused(xs, xt, need_grad, backend)[0].to(out_dtype)
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
    def backward(ctx, grad):
        lam, vec, f, fp = ctx.saved_tensors
        dl = lam[:, None] - lam[None, :]
        df = f[:, None] - f[None, :]
        # relative gap under which the divided difference is replaced by the mean slope
        close = dl.abs() <= 1e-9 * lam.abs().max().clamp_min(1e-300)
        slope = 0.5 * (fp[:, None] + fp[None, :])
        loewner = torch.where(close, slope, df / torch.where(close, 1.0, dl))
        sym = 0.5 * (grad + grad.mT)
        return vec @ (loewner * (vec.mT @ sym @ vec)) @ vec.mT, None


def log_coral(
    xs: torch.Tensor, xt: torch.Tensor, eps: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """``‖log C_s − log C_t‖_F² / (4d²)`` evaluated in float64 (always the d×d path, O(d³))."""
    d = xs.shape[1]
    x64s, x64t = xs.to(torch.float64), xt.to(torch.float64)
    zs = x64s - x64s.mean(dim=0, keepdim=True)
    zt = x64t - x64t.mean(dim=0, keepdim=True)
    cs = zs.mT @ zs / (xs.shape[0] - 1)
    ct = zt.mT @ zt / (xt.shape[0] - 1)
    diff = _SymLog.apply(cs, eps) - _SymLog.apply(ct, eps)
    return (diff.square().sum() / (4.0 * d * d)).to(out_dtype)
