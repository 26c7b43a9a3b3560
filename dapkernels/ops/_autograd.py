"""Helpers shared by the eager ``torch.autograd.Function`` of every fused op.

At small batches the Python around a kernel is a large share of a forward + backward step
(for the fused MMD of 32 + 32 rows at d = 256, more than the C++ sweep itself), so the eager
paths avoid work that does not change results: no scaled copy of a stored
gradient when the incoming gradient is exactly 1, and no Python wrapper around
``Function.apply`` when no functorch transform is active.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._torch_private import functorch_active, unwrap_if_dead

__all__ = ["mul_grad", "scale_grad", "direct_apply"]


def mul_grad(grad: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``grad_out · grad`` as a new tensor (the custom ops' backward: no aliasing of a saved
    output)."""
    return grad_out.to(grad.dtype) * grad


def scale_grad(grad: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """``grad · grad_out`` for a stored gradient and the 0-dim incoming gradient.

    The common case ``grad_out = 1`` (the loss is backpropagated directly; checked on the CPU
    only, where reading the scalar costs no device sync, and not when ``grad_out`` is itself
    part of a graph under ``create_graph=True``) hands back the stored tensor itself.
    It is held by ``save_for_backward``, so an in-place change of the returned gradient
    followed by a second backward through a retained graph raises autograd's usual error
    rather than using the changed values.
    """
    if grad_out.is_cpu and not grad_out.requires_grad and grad_out.item() == 1.0:
        return grad
    return grad * (grad_out if grad_out.dtype == grad.dtype else grad_out.to(grad.dtype))


def direct_apply(function: type[torch.autograd.Function]) -> Callable[..., torch.Tensor]:
    """``function.apply`` without its Python wrapper where that is safe.

    ``torch.autograd.Function.apply`` binds default arguments, checks for functorch transforms
    and unwraps dead functorch wrappers before calling the C-level ``apply``.  The returned
    callable does the same checks inline (the fused ops' ``forward`` has no defaults) and calls
    the C-level ``apply`` directly; under a functorch transform, or on a torch that lacks
    these internals (``dapkernels._torch_private``), it defers to ``function.apply``.
    """
    unwrap = unwrap_if_dead
    if unwrap is None:
        return function.apply
    c_apply = super(torch.autograd.Function, function).apply

    def apply(*args):
        if functorch_active():
            return function.apply(*args)
        return c_apply(*[unwrap(a) if isinstance(a, torch.Tensor) else a for a in args])

    return apply
