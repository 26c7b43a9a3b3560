"""The fused MMD / JMMD op: one sweep over the concatenated batch gives the loss and its gradient.

Formulas and the bandwidth convention: docs/design.md §MMD; names: §Layers and naming.

``L = w_ss S_ss + 2 w_st S_st + w_tt S_tt + c`` where ``S_ab`` are the block sums of the
(joint) kernel; the backend computes the unscaled gradient ∂L/∂Z in the same sweep and the
backward pass only multiplies it by ``grad_output``.

Double backward (``create_graph=True``, e.g. a gradient penalty): when the backward pass is
itself recorded (``torch.is_grad_enabled()`` inside backward), it recomputes ∂L/∂Z from the
saved inputs with differentiable float64 torch ops
(:func:`dapkernels.backends.reference.mmd_grad_formula`: dense, O(N²) memory) instead of
scaling the stored gradient, so second derivatives are exact.  The relative bandwidths are
recomputed from the inputs inside that formula: the second derivative is the exact derivative
of the backward function (the first derivative holds the bandwidth fixed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch

from .. import backends
from .._validation import check_finite
from ..backends.reference import mean_sq_distance, mmd_grad_formula
from ._autograd import direct_apply, mul_grad, scale_grad

__all__ = ["mmd_fused", "mmd_fused_compiled", "mmd_fused_op", "mmd_fused_backward",
           "mmd_estimator_weights", "mmd_linear"]


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


def _mmd_forward(sources, targets, factors, relative, weights, const, need_grad, backend, dtype):
    """``(L as a 0-dim dtype tensor, unscaled gradients)`` from the backend's ``mmd_loss`` if
    it has one, else from its ``mmd_sweep`` block sums (docs/design.md §Backend contract)."""
    if backend == "cpu":  # lean path: the sums come back as floats, one tensor creation
        sums, grads = backends.get("cpu").mmd_sweep(sources, targets, factors, relative, weights,
                                                   need_grad)
        return _value(sums, weights, const, dtype), grads
    module = backends.get(backend)
    loss = getattr(module, "mmd_loss", None)
    if loss is not None:  # the backend forms the value itself (triton: inside the kernel)
        return loss(sources, targets, factors, relative, weights, const, dtype, need_grad)
    sums, grads = module.mmd_sweep(sources, targets, factors, relative, weights, need_grad)
    return _value(sums, weights, const, dtype), grads


def _halves(grads: Sequence[torch.Tensor], n: int) -> list[torch.Tensor]:
    """Per layer, the source rows then the target rows of a stored (n + m, d_l) gradient.

    Split once when the gradient is stored (the eager Function and the custom op save this
    layout), so that backward only scales what it hands back.
    """
    return [h for g in grads for h in (g[:n], g[n:])]


def mmd_fused_backward(
    saved: Sequence[torch.Tensor],
    bank: tuple,
    grad_out: torch.Tensor,
    needs: Sequence[bool],
    scale: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mul_grad,
) -> tuple[list, list]:
    """The backward of the fused op: the eager Function and the custom op both call it.

    Args:
        saved: ``(*halves, *sources, *targets)``: per layer the stored gradient's source rows
            (n, d_l) and target rows (m, d_l) (:func:`_halves`; none when the forward ran
            without gradients), then the 2L inputs.
        bank: ``(factors, relative, weights)``.
        grad_out: 0-dim incoming gradient.
        needs: per input tensor (sources then targets), whether its gradient is wanted.
        scale: ``(stored gradient, grad_out) → gradient`` of the ordinary path.

    Returns:
        per layer, the source and the target gradients (None where not needed): the stored
        gradients scaled by ``grad_out``, or, when the backward is being recorded
        (``create_graph=True``), ``grad_out · ∂L/∂z_l`` recomputed differentiably from the
        inputs by :func:`~dapkernels.backends.reference.mmd_grad_formula` (dense, float64).
        The formula: docs/design.md §MMD.
    """
    layers = len(needs) // 2
    inputs = saved[len(saved) - 2 * layers:]
    if len(saved) == 2 * layers:  # forward ran without gradients
        return [None] * layers, [None] * layers
    if torch.is_grad_enabled():
        factors, relative, weights = bank
        exact = mmd_grad_formula(inputs[:layers], inputs[layers:], factors, relative, weights)
        go = grad_out.to(torch.float64)
        n = inputs[0].shape[0]
        halves = _halves([(g * go).to(x.dtype) for g, x in zip(exact, inputs[:layers])], n)
    else:
        halves = [scale(h, grad_out) for h in saved[:2 * layers]]
    src = [halves[2 * l] if needs[l] else None for l in range(layers)]
    tgt = [halves[2 * l + 1] if needs[layers + l] else None for l in range(layers)]
    return src, tgt


class _MMDFusedFunction(torch.autograd.Function):
    """Eager path: forward sweeps, backward scales the stored gradients.

    Arguments are one ``plan`` tuple (everything that is not a tensor, so argument parsing
    stays cheap) then ``*sources, *targets``: the graph holds this one node.
    """

    @staticmethod
    def forward(ctx, plan, *tensors):
        n, factors, relative, weights, const, backend, out_dtype = plan
        layers = len(tensors) // 2
        value, grads = _mmd_forward(
            tensors[:layers], tensors[layers:], factors, relative, weights, const,
            any(ctx.needs_input_grad), backend, out_dtype,
        )
        ctx.bank = (factors, relative, weights)
        ctx.save_for_backward(*_halves(grads, n), *tensors)
        return value

    @staticmethod
    def backward(ctx, grad_out):
        src, tgt = mmd_fused_backward(ctx.saved_tensors, ctx.bank, grad_out,
                                      ctx.needs_input_grad[1:], scale_grad)
        return (None, *src, *tgt)


_apply = direct_apply(_MMDFusedFunction)


def _split(flat: Sequence[float], counts: Sequence[int]) -> list[list[float]]:
    out, start = [], 0
    for c in counts:
        out.append(list(flat[start : start + c]))
        start += c
    return out


def mmd_estimator_weights(estimator: str, n: int, m: int, k0: float) -> tuple:
    """``(w_ss, w_st, w_tt), c`` such that the estimate is ``Σ w·S + c`` (k0 = k(0)).

    ``"biased"``: ``(1/n², −1/(nm), 1/m²), 0``; ``"unbiased"``:
    ``(1/(n(n−1)), −1/(nm), 1/(m(m−1))), −k0·(1/(n−1) + 1/(m−1))``.
    """
    if estimator == "biased":
        return (1.0 / (n * n), -1.0 / (n * m), 1.0 / (m * m)), 0.0
    w_ss, w_tt = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1))
    return (w_ss, -1.0 / (n * m), w_tt), -(n * k0 * w_ss + m * k0 * w_tt)


def _op_plan(sources, targets, counts, estimator) -> tuple:
    """``(weights, const)`` of the custom op, from the concrete batch sizes of its inputs."""
    k0 = 1.0
    for c in counts:
        k0 *= c
    return mmd_estimator_weights(estimator, sources[0].shape[0], targets[0].shape[0], k0)


@torch.library.custom_op("dapkernels::mmd_fused", mutates_args=())
def mmd_fused_op(
    sources: list[torch.Tensor],
    targets: list[torch.Tensor],
    factors: list[float],
    counts: list[int],
    relative: list[bool],
    estimator: str,
    need_grad: bool,
    backend: str,
) -> list[torch.Tensor]:
    """Compiled path: returns ``[value (float64, 0-dim), *grads]``, grads (n + m, d_l),
    contiguous, in the inputs' dtype.

    The estimator is passed by name, not as weights: its weights depend on the batch sizes,
    and under ``torch.compile(dynamic=True)`` floats computed from symbolic sizes would be
    specialised (one recompilation per batch size, or a failing guard).
    """
    weights, const = _op_plan(sources, targets, counts, estimator)
    value, grads = _mmd_forward(
        sources, targets, _split(factors, counts), relative, weights, const, need_grad,
        backend, torch.float64,
    )
    return [value.to(sources[0].device)] + [g.contiguous() for g in grads]


@mmd_fused_op.register_fake
def _mmd_fused_op_fake(sources, targets, factors, counts, relative, estimator, need_grad,
                       backend):
    value = sources[0].new_empty((), dtype=torch.float64)
    if not need_grad:
        return [value]
    return [value] + [torch.empty((s.shape[0] + t.shape[0], s.shape[1]), dtype=s.dtype,
                                  device=s.device) for s, t in zip(sources, targets)]


def _mmd_fused_op_setup_context(ctx, inputs, output):
    sources, targets, factors, counts, relative, estimator = inputs[:6]
    weights, _ = _op_plan(sources, targets, counts, estimator)
    ctx.layers = len(sources)
    ctx.bank = (_split(factors, counts), list(relative), list(weights))
    ctx.save_for_backward(*_halves(output[1:], sources[0].shape[0]), *sources, *targets)


def _mmd_fused_op_backward(ctx, grad_outputs):
    src, tgt = mmd_fused_backward(ctx.saved_tensors, ctx.bank, grad_outputs[0],
                                  [True] * (2 * ctx.layers))
    return src, tgt, None, None, None, None, None, None


mmd_fused_op.register_autograd(_mmd_fused_op_backward,
                              setup_context=_mmd_fused_op_setup_context)


def mmd_fused(
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
    plan = (n, factors, relative, weights, const, backend, out_dtype)
    return _apply(plan, *sources, *targets)


def mmd_fused_compiled(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    estimator: str,
    backend: str,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """:func:`mmd_fused` under ``torch.compile``: the ``dapkernels::mmd_fused`` custom op, which
    takes the estimator by name (its weights are formed from the batch sizes at run time)."""
    need_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (*sources, *targets))
    flat = [float(f) for fs in factors for f in fs]
    counts = [len(fs) for fs in factors]
    out = mmd_fused_op(list(sources), list(targets), flat, counts, list(relative), estimator,
                    need_grad, backend)
    return out[0].to(out_dtype)


def mmd_linear(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
) -> torch.Tensor:
    """DAN's linear-time estimate, O(N·d): plain torch ops, so autograd and compile just work.

    ``(1/n) Σ_i [k(s_i, s_i') + k(t_i, t_i') − k(s_i, t_i') − k(s_i', t_i)]``, ``i' = (i+1) mod n``,
    with ``k`` the product over layers of each layer's bank.  Bandwidths come from the full
    concatenated batch, as for the quadratic estimators.

    Double backward is plain autograd through these ops, with the relative bandwidths held
    fixed at both orders (they are detached): with fixed bandwidths the second derivatives are
    exact; with relative ones they omit the bandwidth's dependence on the batch (unlike the
    quadratic estimators, whose double backward differentiates the bandwidth; see
    :func:`~dapkernels.backends.reference.mmd_grad_formula`).

    Args:
        sources, targets: per layer, (n, d_l) tensors (n = m, validated).
        factors, relative: per layer, the bank.

    Returns:
        0-dim tensor (float64 for float64 inputs, else float32).

    Raises:
        ValueError: non-finite features on CPU tensors (CUDA tensors are not checked: the
            check would synchronise with the host).
    """
    for l, (s, t) in enumerate(zip(sources, targets)):
        if s.device.type == "cpu":
            check_finite(s, f"source features (layer {l})")
            check_finite(t, f"target features (layer {l})")

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
