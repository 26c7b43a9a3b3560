"""Host side of the Triton CORAL Gram path: the routes and the backend entry points.

The contract is ``backends.reference.coral_sweep``, plus ``coral_loss`` (the value in the
caller's dtype, which the ops layer prefers).  Every entry runs under the inputs' device
(``device.on_device``).  Per call, no host sync, one of:

* float64 inputs: ``reference.coral_formula`` in float64 on the device (the kernels compute in
  float32; a float64 result must not claim precision the computation did not have);
* d ≤ CORAL_SMALL_MAX_D: one ``coral_small_kernel`` launch through its cached direct launcher
  (``launchers.launch``; no memset, inputs read in place in their own dtype, value and
  gradients written in theirs);
* wider: one memset of the N × N Gram buffer, ``coral_gram_kernel``, ``coral_grad_kernel``.

Shapes the Gram kernels do not cover (N = n_s + n_t > CORAL_MAX_ROWS = 64 rows, or the d × d
path when N ≥ d) run the reference formulas as torch ops on the device
(``reference.coral_formula``):
GEMMs with a materialised N × N (or d × d) product, which cuBLAS does well at those sizes, in
float32 (float64 for float64 inputs), with no host sync.

Determinism: the one-launch kernel and the torch formulas have no atomics.  The Gram split of
the two-kernel path adds partial Gram matrices by atomics (order-dependent rounding), so under
``torch.use_deterministic_algorithms(True)`` those calls run the torch formula instead.

Non-finite features are not checked here (a check would cost a host sync per call): they give a
non-finite loss, unlike the CPU and reference backends, which raise.
"""

from __future__ import annotations

import torch
import triton

from ..reference import coral_formula
from . import coral_kernels as K
from .configs import (
    CORAL_BD,
    CORAL_MAX_PROGRAMS,
    CORAL_MAX_ROWS,
    CORAL_NO_SMALL,
    CORAL_SMALL_MAX_D,
    CORAL_STAGES,
    CORAL_WARPS,
)
from .device import deterministic, dot_precision, on_device, target, unit_cols
from .launchers import launch

__all__ = ["coral_sweep", "coral_loss", "takes_reference"]


def takes_reference(dtype: torch.dtype) -> bool:
    """Whether inputs of ``dtype`` run ``reference.coral_formula`` in float64 on the device
    instead of the kernels: float64 (the kernels compute in float32)."""
    return dtype == torch.float64


def _small(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool,
           value: torch.Tensor) -> list[torch.Tensor]:
    """One ``coral_small_kernel`` launch writing ``value``; returns ``[gs, gt]`` or ``[]``."""
    xs, xt = unit_cols(xs), unit_cols(xt)
    ns, d = xs.shape
    grads = [torch.empty((ns, d), dtype=xs.dtype, device=xs.device),
             torch.empty(xt.shape, dtype=xt.dtype, device=xt.device)] if need_grad else []
    gs, gt = grads if need_grad else (value, value)
    launch(K.coral_small_kernel, (1,), xs.device,
           (xs, xt, value, gs, gt, ns, xt.shape[0], d, xs.stride(0), xt.stride(0)),
           _small_consts(need_grad, dot_precision(xs.dtype)))
    return grads


_SMALL_CONSTS: dict[tuple[bool, str], dict[str, object]] = {}


def _small_consts(need_grad: bool, prec: str) -> dict[str, object]:
    """Constexprs and launch options of ``coral_small_kernel`` (one dict per key, reused)."""
    hit = _SMALL_CONSTS.get((need_grad, prec))
    if hit is None:
        hit = _SMALL_CONSTS[(need_grad, prec)] = {
            "BN": CORAL_MAX_ROWS, "BD": CORAL_BD, "HAS_GRAD": need_grad, "DOT_PREC": prec,
            "num_warps": CORAL_WARPS, "num_stages": CORAL_STAGES}
    return hit


def _split_columns(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool) -> tuple:
    """The two-kernel path (any d): float64 value, gradients in the input dtype."""
    xs, xt = unit_cols(xs), unit_cols(xt)
    ns, d = xs.shape
    nt = xt.shape[0]
    bn = CORAL_MAX_ROWS
    prec = dot_precision(xs.dtype)
    cols_per_prog = triton.cdiv(triton.cdiv(d, CORAL_MAX_PROGRAMS), CORAL_BD) * CORAL_BD
    grid = (triton.cdiv(d, cols_per_prog),)
    gram = torch.zeros((bn, bn), dtype=torch.float32, device=xs.device)
    value = torch.empty((), dtype=torch.float64, device=xs.device)
    K.coral_gram_kernel[grid](
        xs, xt, gram, ns, nt, d, xs.stride(0), xt.stride(0), cols_per_prog,
        BN=bn, BD=CORAL_BD, DOT_PREC=prec, num_warps=CORAL_WARPS, num_stages=CORAL_STAGES,
    )
    gs = torch.empty((ns, d), dtype=xs.dtype, device=xs.device) if need_grad else value
    gt = torch.empty((nt, d), dtype=xs.dtype, device=xs.device) if need_grad else value
    K.coral_grad_kernel[grid if need_grad else (1,)](
        xs, xt, gram, value, gs, gt, ns, nt, d, xs.stride(0), xt.stride(0), cols_per_prog,
        BN=bn, BD=CORAL_BD, HAS_GRAD=need_grad, DOT_PREC=prec, num_warps=CORAL_WARPS,
        num_stages=CORAL_STAGES,
    )
    return value, [gs, gt] if need_grad else []


def _takes_kernels(xs: torch.Tensor, xt: torch.Tensor, path: str) -> bool:
    return path == "gram" and xs.shape[0] + xt.shape[0] <= CORAL_MAX_ROWS


def _takes_small(xs: torch.Tensor, need_grad: bool) -> bool:
    return xs.shape[1] <= CORAL_SMALL_MAX_D and (
        target(xs.device), need_grad, dot_precision(xs.dtype)) not in CORAL_NO_SMALL


def coral_sweep(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str = "gram"
) -> tuple:
    """Triton implementation of :func:`dapkernels.backends.reference.coral_sweep`.

    Args:
        xs: (n_s, d) source features, xt: (n_t, d) target features, n_s, n_t ≥ 2, one device.
        need_grad: whether to return gradients.
        path: ``"gram"`` runs the kernels when n_s + n_t ≤ CORAL_MAX_ROWS; ``"cov"`` (or more
            rows) runs ``reference.coral_formula`` on the device.

    Returns:
        ``(value, grads)``: float64 0-dim device tensor and ``[∂L/∂xs, ∂L/∂xt]`` in the input
        dtype (float32 accumulation in the kernels), or ``[]``.
    """
    return coral_loss(xs, xt, need_grad, path, torch.float64)


def coral_loss(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str, out_dtype: torch.dtype
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`coral_sweep` with the 0-dim value in ``out_dtype``: at DA batch sizes one launch
    that writes it (no conversion op)."""
    with on_device(xs.device):
        return _loss(xs, xt, need_grad, path, out_dtype)


def _loss(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str,
          out_dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`coral_loss` under the device guard."""
    if takes_reference(xs.dtype):
        value, grads = coral_formula(xs, xt, need_grad, path, torch.float64)
        return value.to(out_dtype), grads
    if not _takes_kernels(xs, xt, path) or (not _takes_small(xs, need_grad) and deterministic()):
        # also the deterministic alternative to the two-kernel route, whose Gram matrix is
        # summed by atomic adds over column ranges: the same formula as torch GEMMs
        # (n_s + n_t ≤ 64 rows, so the N × N product is small)
        cdt = torch.float64 if xs.dtype == torch.float64 else torch.float32
        value, grads = coral_formula(xs, xt, need_grad, path, cdt)
    elif _takes_small(xs, need_grad):
        value = torch.empty((), dtype=out_dtype, device=xs.device)
        return value, _small(xs, xt, need_grad, value)
    else:
        value, grads = _split_columns(xs, xt, need_grad)
    return value.to(out_dtype), grads
