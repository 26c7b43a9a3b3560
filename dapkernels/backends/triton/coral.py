"""Host side of the Triton CORAL Gram path: launch configuration and the backend entry point.

The contract is ``backends.reference.coral_sweep``.  Per call: one memset of the N × N Gram
buffer, ``coral_gram_kernel``, ``coral_grad_kernel``; no host sync.  Shapes the Gram kernels do
not cover (N = n_s + n_t > MAX_ROWS = 64 rows, or the d × d path when N ≥ d) run the reference torch
formula on the same device.
"""

from __future__ import annotations

import torch
import triton

from .. import reference
from . import coral_kernels as K
from .mmd import dot_precision

#: most rows (n_s + n_t) of the Gram path: the N × N Gram tile lives in registers.  A 128-row
#: tile spills on sm_80 and sm_90 even on 16 warps (``python -m dapkernels.backends.triton.aot``),
#: so larger batches take the reference formula.
MAX_ROWS = 64
_BD = 32
#: warps and pipeline stages per program: the 64 × 64 Gram tile and its float32 product fit
#: without spills (3 stages spill on sm_80 for float64 inputs).
_WARPS = 8
_STAGES = 1
#: programs per kernel: the feature dimension is split into at most this many column ranges.
_MAX_PROGRAMS = 128


def coral_jobs() -> list[tuple[str, str, tuple, int, int]]:
    """Shipped ``(kernel, dtype, constexprs, num_warps, num_stages)`` for the AOT table."""
    jobs = []
    for dtype in ("float32", "float64", "float16", "bfloat16"):
        for prec in ("tf32", "tf32x3"):
            base = (("BN", MAX_ROWS), ("BD", _BD))
            jobs.append(("coral_gram_kernel", dtype, base + (("DOT_PREC", prec),), _WARPS, _STAGES))
            for grad in (True, False):
                jobs.append(("coral_grad_kernel", dtype,
                             base + (("HAS_GRAD", grad), ("DOT_PREC", prec)), _WARPS, _STAGES))
    return jobs


def coral_signature(kernel: str, x_type: str) -> dict[str, str]:
    """Triton signature (without constexprs) of a CORAL kernel for inputs of ``x_type``."""
    x = "*" + x_type
    tail = {"ns": "i32", "nt": "i32", "d": "i32", "stride_s": "i32", "stride_t": "i32",
            "cols_per_prog": "i32"}
    if kernel == "coral_gram_kernel":
        return {"xs_ptr": x, "xt_ptr": x, "g_ptr": "*fp32", **tail}
    return {"xs_ptr": x, "xt_ptr": x, "g_ptr": "*fp32", "value_ptr": "*fp64", "gs_ptr": x,
            "gt_ptr": x, **tail}


def coral_sweep(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str = "gram"
) -> tuple:
    """Triton implementation of :func:`dapkernels.backends.reference.coral_sweep`.

    Args:
        xs: (n_s, d) source features, xt: (n_t, d) target features, n_s, n_t ≥ 2, one device.
        need_grad: whether to return gradients.
        path: ``"gram"`` runs the kernels when n_s + n_t ≤ MAX_ROWS; ``"cov"`` (or more rows) runs
            the reference formula on the device.

    Returns:
        ``(value, grads)``: float64 0-dim device tensor and ``[∂L/∂xs, ∂L/∂xt]`` in the input
        dtype (float32 accumulation; float64 inputs are computed in float32), or ``[]``.
    """
    ns, d = xs.shape
    nt = xt.shape[0]
    if path != "gram" or ns + nt > MAX_ROWS:
        return reference.coral_sweep(xs, xt, need_grad, path)
    dtype = xs.dtype
    xs, xt = xs.detach(), xt.detach()
    if dtype == torch.float64:
        xs, xt = xs.float(), xt.float()
    if xs.stride(1) != 1:
        xs = xs.contiguous()
    if xt.stride(1) != 1:
        xt = xt.contiguous()
    bn = MAX_ROWS
    prec = dot_precision(xs.dtype)
    cols_per_prog = triton.cdiv(triton.cdiv(d, _MAX_PROGRAMS), _BD) * _BD
    grid = (triton.cdiv(d, cols_per_prog),)
    gram = torch.zeros((bn, bn), dtype=torch.float32, device=xs.device)
    value = torch.empty((), dtype=torch.float64, device=xs.device)
    K.coral_gram_kernel[grid](
        xs, xt, gram, ns, nt, d, xs.stride(0), xt.stride(0), cols_per_prog,
        BN=bn, BD=_BD, DOT_PREC=prec, num_warps=_WARPS, num_stages=_STAGES,
    )
    gs = torch.empty((ns, d), dtype=xs.dtype, device=xs.device) if need_grad else value
    gt = torch.empty((nt, d), dtype=xs.dtype, device=xs.device) if need_grad else value
    K.coral_grad_kernel[grid if need_grad else (1,)](
        xs, xt, gram, value, gs, gt, ns, nt, d, xs.stride(0), xt.stride(0), cols_per_prog,
        BN=bn, BD=_BD, HAS_GRAD=need_grad, DOT_PREC=prec, num_warps=_WARPS, num_stages=_STAGES,
    )
    if not need_grad:
        return value, []
    return value, [gs.to(dtype), gt.to(dtype)]
