"""Naive gradient reversal, the common pattern: ``x * 1.0`` forward, ``neg() * coeff`` backward.

The multiplication copies the activations on every call; :func:`dapkernels.grad_reverse`
returns a view instead.
"""

from __future__ import annotations

import torch

__all__ = ["NaiveGradReverse", "naive_grad_reverse"]


class NaiveGradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        ctx.coeff = coeff
        return x * 1.0

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.neg() * ctx.coeff, None


def naive_grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    return NaiveGradReverse.apply(x, coeff)
