"""Host side of the Triton CORAL Gram path: launch configuration and the backend entry point.

The contract is ``backends.reference.coral_sweep``, plus ``coral_loss`` (the value in the
caller's dtype, which the ops layer prefers).  Per call, no host sync, one of:

* d ≤ SMALL_MAX_D: one ``coral_small_kernel`` launch (no memset, inputs read in place in their
  own dtype, value and gradients written in theirs);
* wider: one memset of the N × N Gram buffer, ``coral_gram_kernel``, ``coral_grad_kernel``.

Shapes the Gram kernels do not cover (N = n_s + n_t > MAX_ROWS = 64 rows, or the d × d path
when N ≥ d) run the reference formulas as torch ops on the device (``reference.coral_formula``):
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
from .mmd import _unit_cols, deterministic, dot_precision, target

#: most rows (n_s + n_t) of the Gram path: the N × N Gram tile lives in registers.  A 128-row
#: tile spills on sm_80 and sm_90 even on 16 warps (``python -m dapkernels.backends.triton.aot``),
#: so larger batches take ``reference.coral_formula``.
MAX_ROWS = 64
_BD = 32
#: warps and pipeline stages per program: the 64 × 64 Gram tile and its float32 product fit
#: without spills (3 stages spill on sm_80 for float64 inputs).
_WARPS = 8
_STAGES = 1
#: programs per kernel: the feature dimension is split into at most this many column ranges.
_MAX_PROGRAMS = 128
#: widest features of the one-program kernel.  Its two passes over 64 × d inputs run on one
#: SM; past this width the two-kernel path spreads the columns over the GPU.
SMALL_MAX_D = 2048
#: (target, has_grad, tl.dot precision) where ``coral_small_kernel`` spills (3×TF32 with the
#: gradient on sm_80, for every warp / stage count tried): those calls take the two kernels.
NO_SMALL = frozenset({(80, True, "tf32x3")})


def coral_jobs(arch: int) -> list[tuple[str, str, tuple, int, int]]:
    """Shipped ``(kernel, dtype, constexprs, num_warps, num_stages)`` for target ``arch``."""
    jobs = []
    for dtype in ("float32", "float64", "float16", "bfloat16"):
        # half inputs always multiply natively (``dot_precision``): no 3×TF32 variant
        for prec in ("tf32", "tf32x3") if dtype in ("float32", "float64") else ("tf32",):
            base = (("BN", MAX_ROWS), ("BD", _BD))
            jobs.append(("coral_gram_kernel", dtype, base + (("DOT_PREC", prec),), _WARPS, _STAGES))
            for grad in (True, False):
                flags = base + (("HAS_GRAD", grad), ("DOT_PREC", prec))
                jobs.append(("coral_grad_kernel", dtype, flags, _WARPS, _STAGES))
                if (arch, grad, prec) not in NO_SMALL:
                    jobs.append(("coral_small_kernel", dtype, flags, _WARPS, _STAGES))
    return jobs


def coral_signature(kernel: str, x_type: str) -> dict[str, str]:
    """Triton signature (without constexprs) of a CORAL kernel for inputs of ``x_type``."""
    x = "*" + x_type
    tail = {"ns": "i32", "nt": "i32", "d": "i32", "stride_s": "i32", "stride_t": "i32",
            "cols_per_prog": "i32"}
    if kernel == "coral_gram_kernel":
        return {"xs_ptr": x, "xt_ptr": x, "g_ptr": "*fp32", **tail}
    if kernel == "coral_small_kernel":
        del tail["cols_per_prog"]
        value = "*fp64" if x_type == "fp64" else "*fp32"  # the ops' output dtype
        return {"xs_ptr": x, "xt_ptr": x, "value_ptr": value, "gs_ptr": x, "gt_ptr": x, **tail}
    return {"xs_ptr": x, "xt_ptr": x, "g_ptr": "*fp32", "value_ptr": "*fp64", "gs_ptr": x,
            "gt_ptr": x, **tail}


def _small(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool,
           value: torch.Tensor) -> list[torch.Tensor]:
    """One ``coral_small_kernel`` launch writing ``value``; returns ``[gs, gt]`` or ``[]``."""
    xs, xt = _unit_cols(xs), _unit_cols(xt)
    ns, d = xs.shape
    grads = [torch.empty((ns, d), dtype=xs.dtype, device=xs.device),
             torch.empty(xt.shape, dtype=xt.dtype, device=xt.device)] if need_grad else []
    gs, gt = grads if need_grad else (value, value)
    K.coral_small_kernel[(1,)](
        xs, xt, value, gs, gt, ns, xt.shape[0], d, xs.stride(0), xt.stride(0),
        BN=MAX_ROWS, BD=_BD, HAS_GRAD=need_grad, DOT_PREC=dot_precision(xs.dtype),
        num_warps=_WARPS, num_stages=_STAGES,
    )
    return grads


def _split_columns(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool) -> tuple:
    """The two-kernel path (any d): float64 value, gradients in the input dtype."""
    xs, xt = _unit_cols(xs), _unit_cols(xt)
    ns, d = xs.shape
    nt = xt.shape[0]
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
    return value, [gs, gt] if need_grad else []


def _takes_kernels(xs: torch.Tensor, xt: torch.Tensor, path: str) -> bool:
    return path == "gram" and xs.shape[0] + xt.shape[0] <= MAX_ROWS


def _takes_small(xs: torch.Tensor, need_grad: bool) -> bool:
    return xs.shape[1] <= SMALL_MAX_D and (
        target(xs.device), need_grad, dot_precision(xs.dtype)) not in NO_SMALL


def coral_sweep(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str = "gram"
) -> tuple:
    """Triton implementation of :func:`dapkernels.backends.reference.coral_sweep`.

    Args:
        xs: (n_s, d) source features, xt: (n_t, d) target features, n_s, n_t ≥ 2, one device.
        need_grad: whether to return gradients.
        path: ``"gram"`` runs the kernels when n_s + n_t ≤ MAX_ROWS; ``"cov"`` (or more rows) runs
            ``reference.coral_formula`` on the device.

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
