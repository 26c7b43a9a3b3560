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


@functools.lru_cache(maxsize=64)
def _device_weights(weights: tuple, device: torch.device) -> torch.Tensor:
    """``[w_ss, 2 w_st, w_tt]`` on ``device``, created once per (weights, device): a fresh
    host-to-device copy on every call would cost more than the small-batch kernel itself."""
    w_ss, w_st, w_tt = weights
    return torch.tensor([w_ss, 2.0 * w_st, w_tt], dtype=torch.float64, device=device)


def _value(
    sums: torch.Tensor, weights: Sequence[float], const: float, dtype: torch.dtype
) -> torch.Tensor:
    """``w_ss S_ss + 2 w_st S_st + w_tt S_tt + const`` as a 0-dim ``dtype`` tensor on sums' device.

    The combination is evaluated in float64 and rounded once.
    """
    if sums.device.type == "cpu":  # three floats, one tensor creation
        w_ss, w_st, w_tt = weights
        s = sums.tolist()
        return torch.tensor(w_ss * s[0] + 2.0 * w_st * s[1] + w_tt * s[2] + const, dtype=dtype)
    value = torch.dot(sums, _device_weights(tuple(weights), sums.device)) + const
    return value.to(dtype)


def _sweep(zs, n, factors, relative, weights, const, need_grad, backend, dtype):
    sums, grads = backends.get(backend).mmd_sweep(zs, n, factors, relative, weights, need_grad)
    return _value(sums, weights, const, dtype), grads


class _FusedMMDFunction(torch.autograd.Function):
    """Eager path: forward concatenates and sweeps, backward scales the stored gradients.

    Arguments are one ``plan`` tuple (everything that is not a tensor, so argument parsing
    stays cheap) then ``*sources, *targets``; concatenating inside forward keeps the autograd
    graph to this one node.
    """

    @staticmethod
    def forward(ctx, plan, *tensors):
        n, factors, relative, weights, const, backend, out_dtype = plan
        layers = len(tensors) // 2
        zs = [torch.cat((s, t)) for s, t in zip(tensors[:layers], tensors[layers:])]
        value, grads = _sweep(
            zs, n, factors, relative, weights, const, any(ctx.needs_input_grad), backend,
            out_dtype,
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
            scaled = g * grad_out.to(g.dtype)
            if needs[1 + l]:
                src[l] = scaled[:n]
            if needs[1 + layers + l]:
                tgt[l] = scaled[n:]
        return (None, *src, *tgt)


def _split(flat: Sequence[float], counts: Sequence[int]) -> list[list[float]]:
    out, start = [], 0
    for c in counts:
        out.append(list(flat[start : start + c]))
        start += c
    return out


@torch.library.custom_op("dapkernels::mmd_fused", mutates_args=())
def mmd_fused(
    zs: list[torch.Tensor],
    n: int,
    factors: list[float],
    counts: list[int],
    relative: list[bool],
    weights: list[float],
    const: float,
    need_grad: bool,
    backend: str,
) -> list[torch.Tensor]:
    """Compiled path: returns ``[value (float64, 0-dim), *grads]``."""
    value, grads = _sweep(
        zs, n, _split(factors, counts), relative, weights, const, need_grad, backend,
        torch.float64,
    )
    return [value.to(zs[0].device)] + [g.contiguous() for g in grads]


@mmd_fused.register_fake
def _(zs, n, factors, counts, relative, weights, const, need_grad, backend):
    value = zs[0].new_empty((), dtype=torch.float64)
    return [value] + ([torch.empty_like(z) for z in zs] if need_grad else [])


def _setup_context(ctx, inputs, output):
    ctx.num_layers = len(inputs[0])
    ctx.save_for_backward(*output[1:])


def _backward(ctx, grad_outputs):
    grad_value = grad_outputs[0]
    grads = ctx.saved_tensors
    zgrads = [grad_value.to(g.dtype) * g for g in grads] if grads else None
    return zgrads, None, None, None, None, None, None, None, None


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
    n = sources[0].shape[0]
    if torch.compiler.is_compiling():
        zs = [torch.cat([s, t]) for s, t in zip(sources, targets)]
        need_grad = torch.is_grad_enabled() and any(z.requires_grad for z in zs)
        flat = [float(f) for fs in factors for f in fs]
        counts = [len(fs) for fs in factors]
        out = mmd_fused(
            zs, n, flat, counts, list(relative), list(weights), const, need_grad, backend
        )
        return out[0].to(out_dtype)
    plan = (n, factors, relative, weights, const, backend, out_dtype)
    return _FusedMMDFunction.apply(plan, *sources, *targets)


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
