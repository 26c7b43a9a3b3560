"""Host side of the Triton MMD / JMMD sweep: packing, tables, launch configuration.

The contract is ``backends.reference.mmd_sweep``.  Everything stays on the device: the
bandwidths are computed by the kernels from device-side statistics (no host sync), the block
sums come back as a float64 device tensor.  Per call: one memset, one ``prep_kernel`` launch
per layer and one ``sweep_kernel`` launch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton

from . import mmd_kernels as K

#: compute dtype of the packed buffer and of the tile GEMMs, per input dtype.  float64 inputs
#: are computed in float32 (the GPU kernels accumulate in float32 throughout).
_COMPUTE_DTYPE = {
    torch.float32: torch.float32,
    torch.float64: torch.float32,
    torch.float16: torch.float16,
    torch.bfloat16: torch.bfloat16,
}
#: widest gradient column group held in registers, per (one layer?): JMMD keeps one more
#: tile live (the product of the other layers) and spills at 256 on sm_80 (see the AOT table).
MAX_GROUP = {True: 256, False: 128}
_PREP_BLOCK_R = 64
_PREP_MAX_PROGRAMS = 1024
MAX_LAYERS = K.MAX_LAYERS.value


@dataclass(frozen=True)
class SweepConfig:
    """One launch configuration of ``sweep_kernel`` (tile sizes, warps, pipeline stages)."""

    B_M: int
    B_N: int
    BD: int
    num_warps: int
    num_stages: int


#: The shipped configurations, chosen with ``python -m dapkernels.backends.triton.aot``: the
#: widest tiles that compile without spills for sm_80 and sm_90 (4 warps spill at 64×64 with a
#: 256-column gradient group; 8 warps do not).  Key: (has_grad, half precision).
CONFIGS: dict[tuple[bool, bool], SweepConfig] = {
    (True, False): SweepConfig(B_M=64, B_N=64, BD=32, num_warps=8, num_stages=2),
    (True, True): SweepConfig(B_M=64, B_N=64, BD=64, num_warps=8, num_stages=2),
    (False, False): SweepConfig(B_M=128, B_N=64, BD=32, num_warps=8, num_stages=2),
    (False, True): SweepConfig(B_M=128, B_N=64, BD=64, num_warps=8, num_stages=2),
}


def group_width(dpad_max: int, bd: int, one_layer: bool) -> int:
    """Columns of the gradient held in registers by one program: a power of two in [BD, 256]."""
    return max(bd, min(MAX_GROUP[one_layer], triton.next_power_of_2(dpad_max)))


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: float32 follows ``torch.get_float32_matmul_precision()``.

    "highest" → "tf32x3" (three TF32 products, float32-level error), otherwise "tf32";
    half-precision inputs multiply natively (the argument is ignored for them).
    """
    if _COMPUTE_DTYPE[dtype] != torch.float32:
        return "tf32"
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _is_doubling(factors: Sequence[float]) -> bool:
    """True when the sorted factors form a geometric series of ratio 2 (γ_q = γ_0 · 2^q)."""
    f = sorted(factors, reverse=True)
    return all(math.isclose(a, 2.0 * b, rel_tol=1e-12) for a, b in zip(f, f[1:]))


_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _tables(key: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer, bank and group tables on ``device``, cached: a training loop uploads them once."""
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    _, dims, factors, relative, bd, dg = key
    layers: list[int] = []
    bank: list[float] = []
    groups: list[int] = []
    col = stats = 0
    for l, (d, fs, rel) in enumerate(zip(dims, factors, relative)):
        dpad = triton.cdiv(d, bd) * bd
        squaring = _is_doubling(fs)
        gs = [0.5 / f for f in (sorted(fs, reverse=True) if squaring else fs)]
        layers += [col, dpad, d, stats, len(bank), len(fs), int(rel), int(squaring)]
        bank += [max(gs)] + gs
        for c0 in range(col, col + dpad, dg):
            groups += [l, c0, min(c0 + dg, col + dpad)]
        col += dpad
        stats += d + 1
    out = (
        torch.tensor(layers, dtype=torch.int32, device=device),
        torch.tensor(bank, dtype=torch.float32, device=device),
        torch.tensor(groups, dtype=torch.int32, device=device),
    )
    if len(_TABLES) >= 256:
        _TABLES.clear()
    _TABLES[key] = out
    return out


def mmd_sweep(
    zs: Sequence[torch.Tensor],
    n: int,
    factors: Sequence[Sequence[float]],
    relative: Sequence[bool],
    weights: Sequence[float],
    need_grad: bool,
) -> tuple:
    """Triton implementation of :func:`dapkernels.backends.reference.mmd_sweep` (same contract).

    Args:
        zs: L ≤ 8 tensors (N, d_l) on one device: source rows ``0 … n−1``, then target rows.
        n, factors, relative, weights, need_grad: as in the reference.

    Returns:
        ``(sums, grads)``: float64 ``[S_ss, S_st, S_tt]`` on the device (no host sync) and,
        with ``need_grad``, ∂L/∂z_l (N, d_l) in the dtype of z_l (views of one packed buffer).
    """
    num_layers = len(zs)
    if num_layers > MAX_LAYERS:
        raise ValueError(
            f"the triton backend handles at most {MAX_LAYERS} layers, got {num_layers}"
        )
    z0 = zs[0]
    device, dtype, N = z0.device, z0.dtype, z0.shape[0]
    cdt = _COMPUTE_DTYPE[dtype]
    cfg = CONFIGS[(need_grad, cdt != torch.float32)]
    dims = tuple(int(z.shape[1]) for z in zs)
    dpads = [triton.cdiv(d, cfg.BD) * cfg.BD for d in dims]
    dg = group_width(max(dpads), cfg.BD, num_layers == 1) if need_grad else cfg.BD
    key = (str(device), dims, tuple(tuple(f) for f in factors), tuple(relative), cfg.BD, dg)
    layer_t, bank_t, group_t = _tables(key, device)

    width = sum(dpads)
    zp = torch.empty((N, width), dtype=cdt, device=device)
    sq = torch.empty((num_layers, N), dtype=torch.float32, device=device)
    # [S_ss, S_st, S_tt] then per layer Σ_i y_i (d_l values) and Σ_i ‖y_i‖²: one memset.
    stats = torch.zeros(3 + sum(dims) + num_layers, dtype=torch.float64, device=device)
    rows_per_prog = triton.cdiv(triton.cdiv(N, _PREP_MAX_PROGRAMS), _PREP_BLOCK_R) * _PREP_BLOCK_R
    col = st = 0
    for l, (z, d, dpad) in enumerate(zip(zs, dims, dpads)):
        z = z.detach()
        if z.stride(1) != 1:
            z = z.contiguous()
        K.prep_kernel[(triton.cdiv(N, rows_per_prog),)](
            z, zp, sq[l], stats[3 + st:], N, d, z.stride(0), width, col, rows_per_prog,
            BLOCK_R=_PREP_BLOCK_R, BLOCK_C=cfg.BD,
        )
        col += dpad
        st += d + 1

    grad = torch.empty((N, width), dtype=dtype, device=device) if need_grad else zp
    num_groups = group_t.numel() // K.GROUP_FIELDS if need_grad else 1
    w_ss, w_st, w_tt = (float(w) for w in weights)
    K.sweep_kernel[(triton.cdiv(N, cfg.B_M), num_groups)](
        zp, sq, stats[3:], layer_t, bank_t, group_t, grad, stats,
        N, n, num_layers, width, width, w_ss, w_st, w_tt,
        B_M=cfg.B_M, B_N=cfg.B_N, BD=cfg.BD, DG=dg, HAS_GRAD=need_grad, ONE_LAYER=num_layers == 1,
        DOT_PREC=dot_precision(dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    sums = stats[:3]
    if not need_grad:
        return sums, []
    grads, col = [], 0
    for d, dpad in zip(dims, dpads):
        grads.append(grad[:, col:col + d])
        col += dpad
    return sums, grads
