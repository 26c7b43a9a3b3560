"""CPU backend for CORAL: a thin wrapper that hands raw pointers to ``dapkernels._C``.

One C++ call returns the value and, when asked, writes both gradients (see csrc/coral.cpp).
The kernel uses at most ``torch.get_num_threads()`` threads, and one for small inputs.

One exception, the *BLAS route*: when the core runs its baseline copy (16-byte vectors: SSE2
on x86, the portable build on ARM) while torch's CPU kernels use wider vectors
(``torch.backends.cpu.get_cpu_capability()`` is AVX2/AVX-512/SVE), a GEMM-bound problem (one
product's work — N²·d on the Gram path, N·d² on the d×d path, N = n_s + n_t — at least
:data:`BLAS_MIN_WORK`) computes the same formulas with torch's GEMMs instead
(:func:`blas_gram_sweep`, :func:`blas_cov_sweep`).  The baseline copy's products are bound by
its 4-wide float32 vectors without FMA, which a BLAS with 8- or 16-wide FMA beats ~2× on the
same core; below the threshold the single C++ call wins on overheads.  On a CPU where torch
has no wider vectors than the core (``"DEFAULT"``), the core keeps every problem.  Measured:
`benchmarks/results/coral_cpu_baseline/`.
"""

from __future__ import annotations

import math

import torch

from .. import _C

__all__ = ["coral_sweep", "PATHS", "BLAS_MIN_WORK", "blas_route", "blas_gram_sweep",
           "blas_cov_sweep"]

PATHS = {"auto": 0, "gram": 1, "cov": 2}
_FLOAT32_MAX = torch.finfo(torch.float32).max

#: Smallest work of one product (N²·d multiply-adds on the Gram path, N·d² on the d×d path)
#: that takes the BLAS route on a baseline core (see the module docstring).  Measured on the
#: 2-core Zen 4 development machine with the core capped to baseline: with one thread the
#: torch formula overtakes the core between 8.4 M (64 + 64, d = 512: core 0.77 ms, torch Gram
#: formula 0.87 ms) and 16.8 M (64 + 64, d = 1024: 1.49 vs 1.35 ms); with two threads the core
#: also keeps 32 + 32, d = 2048 (8.4 M: 0.79 ms vs 1.52 ms through torch's GEMMs).
BLAS_MIN_WORK = 2**24


def _blas_is_wider() -> bool:
    """Whether torch's CPU kernels use wider vectors than the core's copy (baseline only)."""
    return _C.isa == "baseline" and torch.backends.cpu.get_cpu_capability() != "DEFAULT"


_BLAS_WIDER = _blas_is_wider()


def blas_route(ns: int, nt: int, d: int, path: str) -> str | None:
    """``"gram"`` or ``"cov"`` when :func:`coral_sweep` hands this problem to torch's
    GEMMs (:func:`blas_gram_sweep` / :func:`blas_cov_sweep`), else None (the C++ core)."""
    if not _BLAS_WIDER:
        return None
    n = ns + nt
    if path == "auto":
        path = "gram" if n < d else "cov"
    work = n * n * d if path == "gram" else n * d * d
    return path if work >= BLAS_MIN_WORK else None


def _centred(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x − mean(x)`` (mean accumulated in float64, rounded to x's dtype once, then one
    subtraction pass in x's dtype); NaN/Inf raise like the core."""
    mean = x.mean(dim=0, dtype=torch.float64)
    if not bool(torch.isfinite(mean).all()):
        bad = (~torch.isfinite(x)).any(dim=1).nonzero()
        if bad.numel():
            raise ValueError(f"{name} contains non-finite values (NaN or Inf): row "
                             f"{int(bad[0, 0])}")
        raise ValueError(f"{name}: features too large (their column sums overflow float64)")
    return x - mean.to(x.dtype)


def blas_gram_sweep(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool) -> tuple:
    """The Gram path of csrc/coral.cpp with torch's GEMMs; same contract as the C++ call.

    With centred ``Z_s`` (n_s × d), ``Z_t`` (n_t × d), ``a = n_s − 1``, ``b = n_t − 1`` and the
    Gram blocks ``G_ss = Z_s Z_sᵀ``, ``G_tt``, ``G_st = Z_s Z_tᵀ``::

        L       = (‖G_ss‖²/a² + ‖G_tt‖²/b² − 2‖G_st‖²/(ab)) / (4d²)
        ∂L/∂Z_s = (G_ss Z_s/a² − G_st Z_t/(ab)) / d²
        ∂L/∂Z_t = (G_tt Z_t/b² − G_stᵀ Z_s/(ab)) / d²

    then re-centred per domain (the derivative of the centring).  The squared norms are summed
    in float64.  Returns ``(value, [grad_s, grad_t] or [])``.
    """
    zs, zt = _centred(xs, "f_s"), _centred(xt, "f_t")
    a, b, dd = xs.shape[0] - 1.0, xt.shape[0] - 1.0, float(xs.shape[1]) ** 2
    gss, gtt, gst = zs @ zs.T, zt @ zt.T, zs @ zt.T

    def sq(g: torch.Tensor) -> float:
        g64 = g.to(torch.float64)
        return float(torch.dot(g64.view(-1), g64.view(-1)))

    value = (sq(gss) / (a * a) + sq(gtt) / (b * b) - 2.0 * sq(gst) / (a * b)) / (4.0 * dd)
    if not math.isfinite(value):
        raise ValueError("features too large: Z Zᵀ not finite (the products overflow the "
                         "input precision)")
    if not need_grad:
        return value, []
    gs = torch.addmm(gss @ zs, gst, zt, beta=1.0 / (a * a * dd), alpha=-1.0 / (a * b * dd))
    gt = torch.addmm(gtt @ zt, gst.T, zs, beta=1.0 / (b * b * dd), alpha=-1.0 / (a * b * dd))
    gs -= gs.mean(dim=0, keepdim=True)
    gt -= gt.mean(dim=0, keepdim=True)
    return value, [gs, gt]


def blas_cov_sweep(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool) -> tuple:
    """The d×d path of csrc/coral.cpp with torch's GEMMs; same contract as the C++ call.

    ``C_s = Z_sᵀ Z_s / a``, ``C_t = Z_tᵀ Z_t / b`` (GEMMs in the input dtype), ``D = C_s − C_t``
    formed in float64, ``L = ‖D‖_F² / (4d²)``, ``∂L/∂Z_s = Z_s D / (a d²)``,
    ``∂L/∂Z_t = −Z_t D / (b d²)``, re-centred per domain.
    """
    zs, zt = _centred(xs, "f_s"), _centred(xt, "f_t")
    a, b, dd = xs.shape[0] - 1.0, xt.shape[0] - 1.0, float(xs.shape[1]) ** 2
    diff = (zs.T @ zs).to(torch.float64) / a - (zt.T @ zt).to(torch.float64) / b
    value = float(torch.dot(diff.view(-1), diff.view(-1))) / (4.0 * dd)
    if not math.isfinite(value):
        raise ValueError("features too large: Z_sᵀ Z_s not finite (the products overflow the "
                         "input precision)")
    if not need_grad:
        return value, []
    dn = diff.to(xs.dtype)
    gs = torch.mm(zs, dn).mul_(1.0 / (a * dd))
    gt = torch.mm(zt, dn).mul_(-1.0 / (b * dd))
    gs -= gs.mean(dim=0, keepdim=True)
    gt -= gt.mean(dim=0, keepdim=True)
    return value, [gs, gt]


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
    route = blas_route(xs.shape[0], xt.shape[0], xs.shape[1], path)
    if route is not None:
        blas = blas_gram_sweep if route == "gram" else blas_cov_sweep
        try:
            value, grads = blas(xs, xt, need_grad)
        except RuntimeError as exc:  # torch's allocator: the core's MemoryError contract
            if "can't allocate memory" not in str(exc):
                raise
            raise MemoryError(f"CORAL ({route} path): {exc}") from exc
    else:
        value, grads = _core_sweep(xs, xt, need_grad, path)
    if xs.dtype == torch.float32 and abs(value) > _FLOAT32_MAX:
        raise ValueError(
            f"features too large: the CORAL loss {value:.3g} overflows float32 (use float64 or "
            f"rescale the features)"
        )
    return value, grads


def _core_sweep(xs: torch.Tensor, xt: torch.Tensor, need_grad: bool, path: str) -> tuple:
    """One call of the C++ core (``_C.coral_sweep``)."""
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
    return value, ([gs, gt] if need_grad else [])
