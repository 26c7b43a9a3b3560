"""Host side of the Triton MMD / JMMD sweep: the four routes and the backend entry points.

Launch configurations live in ``configs.py``, device facts in ``device.py``, the cached device
tables in ``mmd_caches.py``; this module picks a route per call and launches it.

The contract is ``backends.reference.mmd_sweep``, plus ``mmd_loss`` (the loss value itself,
which the ops layer prefers).  Everything stays on the device: the bandwidths are computed by
the kernels from device-side statistics (no host sync), the block sums (or the value) come back
as a device tensor.  Every entry runs under the inputs' device (``device.on_device``).  Per
call, one of:

* float64 inputs: ``reference.mmd_formula``, the dense float64 formulas as torch ops on the
  device (exact float64, O(N²) memory, no host sync): the kernels compute in float32, and a
  float64 result must not claim precision the computation did not have;
* one layer, N ≤ 64: one ``mmd_small_kernel`` launch through its cached direct launcher
  (``launchers.launch``) that reads the source and target rows in place (no copy, no memset)
  and, for ``mmd_loss``, writes the value, except where ``configs.MMD_NO_SMALL`` says it spills;
* one layer, d ≤ 256 where the device's table has a flash configuration (see
  ``FLASH_CONFIGS``): one memset, ``mmd_prep_kernel``, ``mmd_flash_kernel``;
* other single layers with the gradient (d > 256, or no flash configuration): two memsets,
  ``mmd_prep_kernel``, ``mmd_wide_kernel`` (every distance tile once, over all d),
  ``mmd_finish_kernel``;
* otherwise (JMMD, or no gradient): one memset, ``mmd_prep_kernel`` per layer, ``mmd_sweep_kernel``.

All but the first concatenate each layer's source and target blocks on the device first (one
copy per layer, small next to the sweep).

Determinism: ``mmd_small_kernel`` has no atomics.  The others add float statistics, block sums
(and in ``mmd_wide_kernel`` the gradient accumulator) by atomics from several programs, whose
order changes the rounding.  Under ``torch.use_deterministic_algorithms(True)``
``mmd_prep_kernel`` runs as one program (deterministic), and a flash / wide / sweep launch with
more than one program calls torch's ``alert_not_deterministic`` first (RuntimeError, or a
warning with ``warn_only=True``); with a single program they are deterministic and run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton

from ..reference import mmd_formula
from . import mmd_kernels as K
from .configs import (
    COMPUTE_DTYPE,
    FINISH_BLOCK_C,
    FINISH_BLOCK_R,
    FLASH_MAX_D,
    MAX_LAYERS,
    MMD_NO_SMALL,
    PREP_BLOCK_C,
    PREP_BLOCK_R,
    PREP_MAX_PROGRAMS,
    SMALL_BN,
    WIDE_CONFIGS,
    WIDE_DG,
    SweepConfig,
    flash_config,
    flash_width,
    group_width,
    sweep_config,
)
from .device import (
    alert_atomic,
    deterministic,
    dot_precision,
    multiprocessors,
    on_device,
    target,
    unit_cols,
)
from .launchers import launch
from .mmd_caches import bank_table, coef_table, layer_tables, small_plan, squaring

__all__ = ["mmd_sweep", "mmd_loss", "takes_reference"]


def takes_reference(dtype: torch.dtype) -> bool:
    """Whether inputs of ``dtype`` run the float64 reference formulas on the device instead of
    the kernels: float64 (the kernels compute in float32)."""
    return dtype == torch.float64


def _wide_splits(N: int, device: torch.device, cfg: SweepConfig) -> int:
    """Column ranges per row block of ``mmd_wide_kernel``, in whole B_N tiles: enough programs for
    two per multiprocessor when the row blocks alone are fewer."""
    row_blocks, col_tiles = triton.cdiv(N, cfg.B_M), triton.cdiv(N, cfg.B_N)
    splits = max(1, min(col_tiles, triton.cdiv(2 * multiprocessors(device), row_blocks)))
    return triton.cdiv(col_tiles, triton.cdiv(col_tiles, splits))


def _flat_grad(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The gradient in the input dtype (float64 inputs get a float32 kernel result)."""
    return grad if grad.dtype == dtype else grad.to(dtype)


def _takes_small(sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                 need_grad: bool) -> bool:
    """One layer of at most SMALL_BN rows, on a target / precision where the kernel fits."""
    if len(sources) != 1 or sources[0].shape[0] + targets[0].shape[0] > SMALL_BN:
        return False
    dtype = sources[0].dtype
    return (target(sources[0].device), need_grad, dot_precision(dtype)) not in MMD_NO_SMALL


def _small(s: torch.Tensor, t: torch.Tensor, factors: tuple, rel: bool,
           weights: Sequence[float], need_grad: bool, coef: torch.Tensor | None,
           out: torch.Tensor) -> torch.Tensor | None:
    """One ``mmd_small_kernel`` launch (n + m ≤ SMALL_BN) writing ``out``: the block sums, or with
    ``coef`` the loss value.  Returns the (n + m, d) gradient in the input dtype, or None."""
    s, t = unit_cols(s), unit_cols(t)
    dtype, device = s.dtype, s.device
    key = (dtype, device, factors, need_grad, dot_precision(dtype), coef is not None)
    bank, consts = small_plan(key)
    n, d = s.shape
    N = n + t.shape[0]
    grad = torch.empty((N, d), dtype=dtype, device=device) if need_grad else None
    launch(K.mmd_small_kernel, (1,), device,
           (s, t, bank, out if coef is None else coef, out if grad is None else grad, out, N, n,
            d, s.stride(0), t.stride(0), len(factors), int(rel), *weights), consts)
    return grad


def _flash(z: torch.Tensor, n: int, factors: tuple, rel: bool, weights: Sequence[float],
           need_grad: bool, cfg: SweepConfig, prec: str) -> tuple:
    """``mmd_prep_kernel`` then ``mmd_flash_kernel`` with ``cfg`` (one layer, d ≤ cfg.BD = DP)."""
    N, d = z.shape
    device, cdt, dp = z.device, COMPUTE_DTYPE[z.dtype], cfg.BD
    zp = torch.empty((N, dp), dtype=cdt, device=device)
    sq = torch.empty(N, dtype=torch.float32, device=device)
    stats = torch.zeros(3 + d + 1, dtype=torch.float64, device=device)
    _prep(z, zp, sq, stats[3:], d, dp, 0)
    grad = torch.empty((N, d), dtype=torch.float32 if z.dtype == torch.float64 else z.dtype,
                       device=device) if need_grad else zp
    alert_atomic("dapkernels.mmd (triton flash route: block sums by float64 atomic adds)",
                 triton.cdiv(N, cfg.B_M))
    K.mmd_flash_kernel[(triton.cdiv(N, cfg.B_M),)](
        zp, sq, stats[3:], bank_table(factors, device), grad, stats, N, n, d, dp, len(factors),
        int(rel), *weights, B_M=cfg.B_M, B_N=cfg.B_N, DP=dp, SQUARE=squaring(factors),
        HAS_GRAD=need_grad, DOT_PREC=prec, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return stats[:3], grad


def _wide(z: torch.Tensor, n: int, factors: tuple, rel: bool, weights: Sequence[float],
          cfg: SweepConfig, prec: str) -> tuple:
    """``mmd_prep_kernel``, ``mmd_wide_kernel`` with ``cfg``, ``mmd_finish_kernel`` (one layer,
    with the gradient)."""
    N, d = z.shape
    device, cdt = z.device, COMPUTE_DTYPE[z.dtype]
    dpad = triton.cdiv(d, max(cfg.BD, WIDE_DG)) * max(cfg.BD, WIDE_DG)
    zp = torch.empty((N, dpad), dtype=cdt, device=device)
    sq = torch.empty(N, dtype=torch.float32, device=device)
    stats = torch.zeros(3 + d + 1, dtype=torch.float64, device=device)
    _prep(z, zp, sq, stats[3:], d, dpad, 0)
    # the float32 accumulator of C'Y and the row sums of C', zeroed together
    acc_rowsum = torch.zeros(N * dpad + N, dtype=torch.float32, device=device)
    acc, rowsum = acc_rowsum[:N * dpad].view(N, dpad), acc_rowsum[N * dpad:]
    splits = _wide_splits(N, device, cfg)
    cols_per_split = triton.cdiv(triton.cdiv(N, cfg.B_N), splits) * cfg.B_N
    bank = bank_table(factors, device)
    alert_atomic("dapkernels.mmd (triton wide route: gradient accumulator and block sums by "
                 "atomic adds)", triton.cdiv(N, cfg.B_M) * splits)
    K.mmd_wide_kernel[(triton.cdiv(N, cfg.B_M), splits)](
        zp, sq, stats[3:], bank, acc, rowsum, stats, N, n, d, dpad, dpad, len(factors),
        int(rel), *weights, cols_per_split, B_M=cfg.B_M, B_N=cfg.B_N, BD=cfg.BD, DG=WIDE_DG,
        SQUARE=squaring(factors), DOT_PREC=prec, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    # float32 gradients overwrite the accumulator in place (no second N × d buffer)
    grad = acc if cdt == torch.float32 else torch.empty((N, dpad), dtype=cdt, device=device)
    K.mmd_finish_kernel[(triton.cdiv(N, FINISH_BLOCK_R), triton.cdiv(d, FINISH_BLOCK_C))](
        zp, acc, rowsum, stats[3:], bank, grad, N, n, d, dpad, dpad, int(rel), *weights,
        BLOCK_R=FINISH_BLOCK_R, BLOCK_C=FINISH_BLOCK_C,
    )
    return stats[:3], grad[:, :d]


def _prep(z: torch.Tensor, zp: torch.Tensor, sq: torch.Tensor, stats: torch.Tensor, d: int,
          dpad: int, col: int) -> None:
    """Launches ``mmd_prep_kernel`` for one layer (columns ``col … col + dpad`` of ``zp``).

    Its column statistics are float64 atomic adds, one per column per program: under
    ``torch.use_deterministic_algorithms(True)`` one program packs every row, so they are
    added once, in a fixed order (deterministic; slower only for very large N).
    """
    N = z.shape[0]
    if z.stride(1) != 1:
        z = z.contiguous()
    rows_per_prog = triton.cdiv(triton.cdiv(N, PREP_MAX_PROGRAMS), PREP_BLOCK_R) * PREP_BLOCK_R
    if deterministic():
        rows_per_prog = triton.cdiv(N, PREP_BLOCK_R) * PREP_BLOCK_R
    K.mmd_prep_kernel[(triton.cdiv(N, rows_per_prog),)](
        z, zp, sq, stats, N, d, dpad, z.stride(0), zp.stride(0), col, rows_per_prog,
        BLOCK_R=PREP_BLOCK_R, BLOCK_C=PREP_BLOCK_C,
    )


def mmd_sweep(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    weights: Sequence[float],
    need_grad: bool,
) -> tuple:
    """Triton implementation of :func:`dapkernels.backends.reference.mmd_sweep` (same contract).

    Args:
        sources, targets: per layer (L ≤ 8), (n, d_l) and (m, d_l) tensors on one device.
        factors, relative, weights, need_grad: as in the reference.

    Returns:
        ``(sums, grads)``: float64 ``[S_ss, S_st, S_tt]`` on the device (no host sync) and,
        with ``need_grad``, ∂L/∂z_l (N, d_l) in the dtype of z_l.
    """
    num_layers = len(sources)
    if num_layers > MAX_LAYERS:
        raise ValueError(
            f"the triton backend handles at most {MAX_LAYERS} layers, got {num_layers}"
        )
    weights = tuple(float(w) for w in weights)
    if takes_reference(sources[0].dtype):
        with on_device(sources[0].device):
            return mmd_formula(sources, targets, factors, relative, weights, need_grad)
    with on_device(sources[0].device):
        return _sweep(sources, targets, factors, relative, weights, need_grad)


def _sweep(sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
           factors: Sequence[Sequence[float]], relative: Sequence[bool],
           weights: tuple[float, ...], need_grad: bool) -> tuple:
    """:func:`mmd_sweep` by the kernels, under the device guard."""
    num_layers = len(sources)
    n = sources[0].shape[0]
    if _takes_small(sources, targets, need_grad):
        sums = torch.empty(3, dtype=torch.float64, device=sources[0].device)
        grad = _small(sources[0], targets[0], tuple(factors[0]), bool(relative[0]), weights,
                      need_grad, None, sums)
        return sums, [grad] if need_grad else []
    # The other kernels read one packed (N, d_l) array per layer: z_l = [source_l; target_l].
    zs = [torch.cat((s.detach(), t.detach())) for s, t in zip(sources, targets)]
    z0 = zs[0]
    device, dtype, N = z0.device, z0.dtype, z0.shape[0]
    cdt, prec = COMPUTE_DTYPE[dtype], dot_precision(dtype)
    tgt = target(device)
    if num_layers == 1:
        if z0.stride(1) != 1:
            z0 = z0.contiguous()
        d = z0.shape[1]
        flash = flash_config(tgt, need_grad, cdt, prec, flash_width(d)) if d <= FLASH_MAX_D \
            else None
        if flash is not None:
            sums, grad = _flash(z0, n, tuple(factors[0]), bool(relative[0]), weights, need_grad,
                                flash, prec)
            return sums, [_flat_grad(grad, dtype)] if need_grad else []
        if need_grad:
            cfg = WIDE_CONFIGS[tgt][(cdt != torch.float32, prec == "tf32x3")]
            sums, grad = _wide(z0, n, tuple(factors[0]), bool(relative[0]), weights, cfg, prec)
            return sums, [_flat_grad(grad, dtype)]

    cfg = sweep_config(tgt, need_grad, cdt, prec)
    dims = tuple(int(z.shape[1]) for z in zs)
    dpads = [triton.cdiv(d, cfg.BD) * cfg.BD for d in dims]
    dg = group_width(max(dpads), cfg.BD, prec) if need_grad else cfg.BD
    key = (device, dims, tuple(tuple(f) for f in factors), tuple(relative), cfg.BD, dg)
    layer_t, bank_t, group_t = layer_tables(key, device)

    width = sum(dpads)
    zp = torch.empty((N, width), dtype=cdt, device=device)
    sq = torch.empty((num_layers, N), dtype=torch.float32, device=device)
    # [S_ss, S_st, S_tt] then per layer Σ_i y_i (d_l values) and Σ_i ‖y_i‖²: one memset.
    stats = torch.zeros(3 + sum(dims) + num_layers, dtype=torch.float64, device=device)
    col = st = 0
    for l, (z, d, dpad) in enumerate(zip(zs, dims, dpads)):
        _prep(z.detach(), zp, sq[l], stats[3 + st:], d, dpad, col)
        col += dpad
        st += d + 1

    gdt = torch.float32 if dtype == torch.float64 else dtype
    grad = torch.empty((N, width), dtype=gdt, device=device) if need_grad else zp
    num_groups = group_t.numel() // K.GROUP_FIELDS if need_grad else 1
    alert_atomic("dapkernels.mmd / jmmd (triton sweep route: block sums by float64 atomic adds)",
                 triton.cdiv(N, cfg.B_M))
    K.mmd_sweep_kernel[(triton.cdiv(N, cfg.B_M), num_groups)](
        zp, sq, stats[3:], layer_t, bank_t, group_t, grad, stats,
        N, n, num_layers, width, width, *weights,
        B_M=cfg.B_M, B_N=cfg.B_N, BD=cfg.BD, DG=dg, HAS_GRAD=need_grad, ONE_LAYER=num_layers == 1,
        DOT_PREC=prec, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    sums = stats[:3]
    if not need_grad:
        return sums, []
    grads, col = [], 0
    for d, dpad in zip(dims, dpads):
        grads.append(_flat_grad(grad[:, col:col + d], dtype))
        col += dpad
    return sums, grads


def mmd_loss(
    sources: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    weights: Sequence[float],
    const: float,
    out_dtype: torch.dtype,
    need_grad: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss ``L = w_ss S_ss + 2 w_st S_st + w_tt S_tt + const`` and its unscaled gradients.

    Same arguments as :func:`mmd_sweep` plus ``const`` and the dtype of the 0-dim value.  At
    DA batch sizes (one layer, n + m ≤ SMALL_BN) this is one kernel launch that writes the
    value itself (no concatenation, no combining ops); otherwise :func:`mmd_sweep` then one
    float64 dot product on the device.  No host sync either way.
    """
    weights = tuple(float(w) for w in weights)
    device = sources[0].device
    if takes_reference(sources[0].dtype):
        sums, grads = mmd_sweep(sources, targets, factors, relative, weights, need_grad)
        with on_device(device):
            coef = coef_table(weights, float(const), device)
            return (torch.dot(sums, coef[:3]) + coef[3]).to(out_dtype), grads
    with on_device(device):
        coef = coef_table(weights, float(const), device)
        if _takes_small(sources, targets, need_grad):
            value = torch.empty((), dtype=out_dtype, device=device)
            grad = _small(sources[0], targets[0], tuple(factors[0]), bool(relative[0]), weights,
                          need_grad, coef, value)
            return value, [grad] if need_grad else []
        sums, grads = _sweep(sources, targets, factors, relative, weights, need_grad)
        return (torch.dot(sums, coef[:3]) + coef[3]).to(out_dtype), grads
