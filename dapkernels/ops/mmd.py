"""The fused MMD / JMMD op: one sweep over the concatenated batch gives the loss and its gradient.

``L = w_ss S_ss + 2 w_st S_st + w_tt S_tt + c`` where ``S_ab`` are the block sums of the
(joint) kernel; the backend computes the unscaled gradient ∂L/∂Z in the same sweep and the
backward pass only multiplies it by ``grad_output``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from .. import backends
from ._autograd import direct_apply, scale_grad


@functools.lru_cache(maxsize=64)
def _device_weights(weights: tuple, device: torch.device) -> torch.Tensor:
    """``[w_ss, 2 w_st, w_tt]`` on ``device``, created once per (weights, device): a fresh
    host-to-device copy on every call would cost more than the small-batch kernel itself."""
    w_ss, w_st, w_tt = weights
    return torch.tensor([w_ss, 2.0 * w_st, w_tt], dtype=torch.float64, device=device)


def _value(sums, weights: Sequence[float], const: float, dtype: torch.dtype) -> torch.Tensor:
    """``w_ss S_ss + 2 w_st S_st + w_tt S_tt + const`` as a 0-dim ``dtype`` tensor.

    ``sums`` is a tuple of three floats (CPU backend: the value is formed in Python and becomes
    one tensor) or a float64 device tensor (combined on the device, no host sync).  Either way
    the combination is evaluated in float64 and rounded once.
    """
    w_ss, w_st, w_tt = weights
    if isinstance(sums, tuple):
        value = w_ss * sums[0] + 2.0 * w_st * sums[1] + w_tt * sums[2] + const
        return torch.scalar_tensor(value, dtype=dtype)
    value = torch.dot(sums, _device_weights(tuple(weights), sums.device)) + const
    return value.to(dtype)


def _sweep(sources, targets, factors, relative, weights, const, need_grad, backend, dtype):
    module = backends.get(backend)
    loss = getattr(module, "mmd_loss", None)
    if loss is not None:  # the backend forms the value itself (triton: inside the kernel)
        return loss(sources, targets, factors, relative, weights, const, dtype, need_grad)
    sums, grads = module.mmd_sweep(sources, targets, factors, relative, weights, need_grad)
    return _value(sums, weights, const, dtype), grads


class _FusedMMDFunction(torch.autograd.Function):
    """Eager path: forward sweeps, backward scales the stored gradients.

    Arguments are one ``plan`` tuple (everything that is not a tensor, so argument parsing
    stays cheap) then ``*sources, *targets``: the graph holds this one node.
    """

    @staticmethod
    def forward(ctx, plan, *tensors):
        n, factors, relative, weights, const, backend, out_dtype = plan
        layers = len(tensors) // 2
        value, grads = _sweep(
            tensors[:layers], tensors[layers:], factors, relative, weights, const,
            any(ctx.needs_input_grad), backend, out_dtype,
        )
        ctx.n = n
        ctx.save_for_backward(*grads)
        return value

    @staticmethod
    def backward(ctx, grad_out):
        grads = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if not grads:
            return (None,) * len(needs)
        n, layers = ctx.n, len(grads)
        src, tgt = [None] * layers, [None] * layers
        for l, g in enumerate(grads):
            scaled = scale_grad(g, grad_out)
            if needs[1 + l]:
                src[l] = scaled[:n]
            if needs[1 + layers + l]:
                tgt[l] = scaled[n:]
        return (None, *src, *tgt)


_apply = direct_apply(_FusedMMDFunction)


def _split(flat: Sequence[float], counts: Sequence[int]) -> list[list[float]]:
    out, start = [], 0
    for c in counts:
        out.append(list(flat[start : start + c]))
        start += c
    return out


@torch.library.custom_op("dapkernels::mmd_fused", mutates_args=())
def mmd_fused(
    sources: list[torch.Tensor],
    targets: list[torch.Tensor],
    factors: list[float],
    counts: list[int],
    relative: list[bool],
    weights: list[float],
    const: float,
    need_grad: bool,
    backend: str,
) -> list[torch.Tensor]:
    """Compiled path: returns ``[value (float64, 0-dim), *grads]``, grads (n + m, d_l)."""
    value, grads = _sweep(
        sources, targets, _split(factors, counts), relative, weights, const, need_grad,
        backend, torch.float64,
    )
    return [value.to(sources[0].device)] + [g.contiguous() for g in grads]


@mmd_fused.register_fake
def _(sources, targets, factors, counts, relative, weights, const, need_grad, backend):
    value = sources[0].new_empty((), dtype=torch.float64)
    if not need_grad:
        return [value]
    return [value] + [s.new_empty((s.shape[0] + t.shape[0], s.shape[1]))
                      for s, t in zip(sources, targets)]


def _setup_context(ctx, inputs, output):
    ctx.n = inputs[0][0].shape[0]
    ctx.save_for_backward(*output[1:])


def _backward(ctx, grad_outputs):
    grad_value = grad_outputs[0]
    grads = ctx.saved_tensors
    if not grads:
        return None, None, None, None, None, None, None, None, None
    scaled = [grad_value.to(g.dtype) * g for g in grads]
    n = ctx.n
    return ([g[:n] for g in scaled], [g[n:] for g in scaled],
            None, None, None, None, None, None, None)


mmd_fused.register_autograd(_backward, setup_context=_setup_context)


def fused_mmd(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    weights: Sequence[float],
    const: float,
    backend: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``L`` as a 0-dim tensor of ``out_dtype``, differentiable w.r.t. sources and targets.

    Args:
        sources, targets: per layer, (n, d_l) and (m, d_l) tensors (already validated).
        factors, relative: per layer, the bank (see ``backends.reference.mmd_sweep``).
        weights, const: ``L = w_ss S_ss + 2 w_st S_st + w_tt S_tt + const``.
    """
    if torch.compiler.is_compiling():
        need_grad = torch.is_grad_enabled() and any(
            x.requires_grad for x in (*sources, *targets)
        )
        flat = [float(f) for fs in factors for f in fs]
        counts = [len(fs) for fs in factors]
        out = mmd_fused(
            list(sources), list(targets), flat, counts, list(relative), list(weights), const,
            need_grad, backend,
        )
        return out[0].to(out_dtype)
    n = sources[0].shape[0]
    plan = (n, factors, relative, weights, const, backend, out_dtype)
    return _apply(plan, *sources, *targets)


def linear_mmd(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
) -> torch.Tensor:
    """DAN's linear-time estimate, O(N·d): plain torch ops, so autograd and compile just work.

    ``(1/n) Σ_i [k(s_i, s_i') + k(t_i, t_i') − k(s_i, t_i') − k(s_i', t_i)]``, ``i' = (i+1) mod n``,
    with ``k`` the product over layers of each layer's bank.  Bandwidths come from the full
    concatenated batch, as for the quadratic estimators.
    """
    from ..backends.reference import mean_sq_distance

    acc = torch.float64 if sources[0].dtype == torch.float64 else torch.float32

    def bank(a: torch.Tensor, b: torch.Tensor, gam: torch.Tensor) -> torch.Tensor:
        d = (a.to(acc) - b.to(acc)).square().sum(dim=1)
        return torch.exp(-gam[:, None] * d[None]).sum(dim=0)

    k_ss = k_tt = k_st = k_ts = None
    for s, t, f, rel in zip(sources, targets, factors, relative):
        fac = torch.tensor(f, dtype=torch.float64, device=s.device)
        if rel:
            fac = fac * mean_sq_distance(torch.cat([s, t]))
        gam = (0.5 / fac).to(acc)
        s_next, t_next = s.roll(-1, dims=0), t.roll(-1, dims=0)
        terms = (bank(s, s_next, gam), bank(t, t_next, gam), bank(s, t_next, gam),
                 bank(s_next, t, gam))
        if k_ss is None:
            k_ss, k_tt, k_st, k_ts = terms
        else:
            k_ss, k_tt, k_st, k_ts = (a * b for a, b in zip((k_ss, k_tt, k_st, k_ts), terms))
    return (k_ss + k_tt - k_st - k_ts).mean()
