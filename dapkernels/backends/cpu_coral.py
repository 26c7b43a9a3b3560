"""CPU backend for CORAL: a thin wrapper that hands raw pointers to ``dapkernels._C``.

One C++ call returns the value and, when asked, writes both gradients (see csrc/coral.cpp).
The kernel uses at most ``torch.get_num_threads()`` threads, and one for small inputs.
"""

from __future__ import annotations

import torch

from .. import _C

__all__ = ["coral_sweep", "PATHS"]

PATHS = {"auto": 0, "gram": 1, "cov": 2}
_FLOAT32_MAX = torch.finfo(torch.float32).max


def coral_sweep(
    xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str = "auto"
) -> tuple:
    """:func:`dapkernels.backends.reference.coral_sweep` with the value as a Python float (one
    tensor fewer per call; the CPU backend's form of the contract, docs/design.md §Backend
    contract).

    ``path="auto"`` picks the Gram path when ``n_s + n_t < d`` (cost ~1.5 N²d and N² memory),
    else the d×d covariance path (~1.5 N d²); both are exact.  Inputs: CPU, float32 or float64,
    rows with unit column stride (other layouts are copied once).  Raises ``ValueError`` for
    NaN/Inf features (naming the domain and row), overflowing products or a float32 loss
    beyond float32's range (the value scales as the 4th power of the features), and
    ``MemoryError`` when the kernel's scratch cannot be allocated.
    """
    if xs.stride(-1) != 1:
        xs = xs.contiguous()
    if xt.stride(-1) != 1:
        xt = xt.contiguous()
    if need_grad:
        gs = torch.empty(xs.shape, dtype=xs.dtype)
        gt = torch.empty(xt.shape, dtype=xt.dtype)
        gs_ptr, gt_ptr = gs.data_ptr(), gt.data_ptr()
    else:
        gs_ptr = gt_ptr = 0
    value, _ = _C.coral_sweep(
        xs.data_ptr(), xs.shape[0], xs.shape[1], xs.stride(0), xs.stride(1),
        xt.data_ptr(), xt.shape[0], xt.shape[1], xt.stride(0), xt.stride(1),
        "float32" if xs.dtype == torch.float32 else "float64",
        gs_ptr, gt_ptr, need_grad, PATHS[path], torch.get_num_threads(),
    )
    if xs.dtype == torch.float32 and abs(value) > _FLOAT32_MAX:
        raise ValueError(
            f"features too large: the CORAL loss {value:.3g} overflows float32 (use float64 or "
            f"rescale the features)"
        )
    return value, ([gs, gt] if need_grad else [])
