"""Host side of the Triton engine of the kernel two-sample test: check, allocate, launch.

:func:`quadratic_forms` evaluates, for a bank of Gaussian kernels on rows ``z`` (N, d) and a
label matrix ``v`` (N, B) with entries in {−1, 0, 1} (one column per permutation or sign
vector), every permuted statistic's quadratic form, the kernel row sums and their total in one
tiled sweep (``quadratic_forms_kernels.quadratic_forms_kernel``) that never stores an N × N
matrix: memory O(N·d + N·B + G·L'·B) for G ≤ 8 programs per multiprocessor.

Determinism: no atomics.  Each program stores its own float64 partial of Q (one slice of a
(G, L', B) buffer) and its own rows of the row sums; Q and the total are summed here in float64
with torch in a fixed order, so repeated calls on one device give identical bits (and
``torch.use_deterministic_algorithms(True)`` has nothing to flag).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from . import quadratic_forms_kernels as K
from .device import on_device

__all__ = ["QFConfig", "CONFIGS", "MAX_L_PAD", "PROGRAMS_PER_SM", "config_class", "pick_config",
           "shared_limit", "num_groups", "dot_precision", "quadratic_forms"]


@dataclass(frozen=True)
class QFConfig:
    """A launch configuration of ``quadratic_forms_kernel``: tiles, warps, pipeline stages."""

    BLOCK_I: int
    BLOCK_J: int
    BLOCK_B: int
    BLOCK_D: int
    num_warps: int
    num_stages: int
    #: ptxas register bound (``.maxnreg``), None for ptxas's own choice
    maxnreg: int | None = None

    def options(self) -> dict[str, int]:
        """Launch / compile options: warps, stages and, where set, maxnreg."""
        opts = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.maxnreg is not None:
            opts["maxnreg"] = self.maxnreg
        return opts


#: ``quadratic_forms_kernels.QF_CONFIGS`` as ``{class: (min shared bytes, {DOT_PREC:
#: QFConfig})}``.
CONFIGS: dict[str, tuple[int, dict[str, QFConfig]]] = {
    name: (limit, {prec: QFConfig(*c) for prec, c in per_prec.items()})
    for name, (limit, per_prec) in K.QF_CONFIGS.items()
}
MAX_L_PAD = K.MAX_L_PAD.value
#: programs per multiprocessor the grid aims at (the triangle makes row blocks unequal: several
#: waves even out the load).
PROGRAMS_PER_SM = 8


def config_class(shared_limit: int) -> str:
    """The device class of an opt-in shared memory per block of ``shared_limit`` bytes: the
    class with the largest minimum ≤ the limit ("227KB" for H100 / B200, "163KB" for A100,
    "99KB" for the RTX / L4 / L40S parts), the smallest class below every minimum."""
    fitting = [(limit, name) for name, (limit, _) in CONFIGS.items() if limit <= shared_limit]
    if not fitting:
        return min((limit, name) for name, (limit, _) in CONFIGS.items())[1]
    return max(fitting)[1]


def pick_config(shared_limit: int, precision: str = "ieee") -> QFConfig:
    """The configuration for a device with ``shared_limit`` bytes of opt-in shared memory per
    block (``torch.cuda.get_device_properties(dev).shared_memory_per_block_optin``) and the
    tl.dot precision ``precision`` ("ieee" or "tf32")."""
    return CONFIGS[config_class(shared_limit)][1][precision]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def shared_limit(device: torch.device) -> int:
    """Opt-in shared memory per block of ``device`` (CPU tensors under the interpreter: the
    ≈ 99 KB class)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return 99 * 1024


def num_groups(row_blocks: int, other_programs: int, device: torch.device) -> int:
    """G, the programs along the row axis: enough for ``PROGRAMS_PER_SM`` programs per
    multiprocessor next to the ``other_programs`` label blocks × kernel chunks, at most one per
    row block.  CPU tensors (interpreter) take 2, so the tests exercise a program that owns
    several row blocks."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = triton.cdiv(PROGRAMS_PER_SM * sms, other_programs)
    else:
        want = 2
    return max(1, min(row_blocks, want))


def dot_precision() -> str:
    """tl.dot input precision of both GEMMs: "tf32" when
    ``torch.backends.cuda.matmul.allow_tf32`` (torch's default: off), else "ieee" (full
    float32)."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _check(z: object, gammas: object, v: object, sum_bank: object) -> None:
    """ValueError naming the argument for a wrong type, shape, dtype, device or value."""
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.dtype != torch.float32:
        raise ValueError(f"z must be a 2-D float32 tensor (N, d), got {_describe(z)}")
    if z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"z must have at least one row and one column, got {tuple(z.shape)}")
    if z.device.type != "cuda" and not _interpreting():
        raise ValueError(f"z must be a CUDA tensor (CPU tensors only under TRITON_INTERPRET=1), "
                         f"got device {z.device}")
    if not isinstance(gammas, torch.Tensor) or gammas.dim() != 1 \
            or gammas.dtype != torch.float64 or gammas.numel() < 1:
        raise ValueError(f"gammas must be a non-empty 1-D float64 tensor (L,), got "
                         f"{_describe(gammas)}")
    if not bool(torch.isfinite(gammas).all()) or not bool((gammas > 0).all()):
        raise ValueError("gammas must be finite and > 0")
    if not isinstance(v, torch.Tensor) or v.dim() != 2 or v.dtype != torch.int8:
        raise ValueError(f"v must be a 2-D int8 tensor (N, B), got {_describe(v)}")
    if v.shape[0] != z.shape[0]:
        raise ValueError(f"v must have N = {z.shape[0]} rows (one per row of z), got "
                         f"{v.shape[0]}")
    if v.device != z.device:
        raise ValueError(f"v must be on z's device {z.device}, got {v.device}")
    if v.numel() and bool((v.abs() > 1).any()):
        raise ValueError("v must hold only −1, 0 and 1")
    if not isinstance(sum_bank, bool):
        raise ValueError(f"sum_bank must be a bool, got {type(sum_bank).__name__}")


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def quadratic_forms(
    z: torch.Tensor,
    gammas: torch.Tensor,
    v: torch.Tensor,
    sum_bank: bool,
    *,
    config: QFConfig | None = None,
    groups: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Label quadratic forms, row sums and total of a Gaussian bank, diagonal excluded.

    With ``K_l[i, j] = exp(−γ_l ‖z_i − z_j‖²)`` and ``L' = 1`` (``K = Σ_l K_l``) if ``sum_bank``
    else ``L' = L``:

    * ``Q[l, b]       = Σ_{i≠j} K_l[i, j] v[i, b] v[j, b]``
    * ``rowsums[l, i] = Σ_{j≠i} K_l[i, j]``
    * ``total[l]      = Σ_{i≠j} K_l[i, j]``

    Args:
        z: (N, d) float32 on a CUDA device (CPU under ``TRITON_INTERPRET=1``).  The rows are
            centred (column mean subtracted) before the sweep, which leaves distances unchanged
            and keeps ``‖a‖² + ‖b‖² − 2 a·b`` (float32) from cancelling far from the origin.
        gammas: (L,) float64, finite and > 0 (rounded to float32 for the exponentials).
        v: (N, B) int8 with values in {−1, 0, 1}, on ``z``'s device.
        sum_bank: sum the bank into one kernel (L' = 1) or keep each kernel (L' = L).
        config: a launch configuration (default: ``pick_config`` for the device and
            ``dot_precision()``).
        groups: programs along the row axis (default: ``num_groups``).

    Returns:
        ``(Q (L', B), rowsums (L', N), total (L',))``, float64 on ``z``'s device.  Sums are
        float64 across tiles and float32 within a tile; the distance and label GEMMs use
        ``dot_precision()``.
    """
    _check(z, gammas, v, sum_bank)
    z, v = z.detach(), v.detach()
    device = z.device
    N, d = z.shape
    B = v.shape[1]
    L = gammas.numel()
    prec = dot_precision()
    cfg = config if config is not None else pick_config(shared_limit(device), prec)
    l_pad = 1 if sum_bank else min(MAX_L_PAD, triton.next_power_of_2(L))
    num_out = 1 if sum_bank else L
    chunks = 1 if sum_bank else triton.cdiv(L, l_pad)
    label_blocks = max(1, triton.cdiv(B, cfg.BLOCK_B))
    row_blocks = triton.cdiv(N, cfg.BLOCK_I)
    G = groups if groups is not None else num_groups(row_blocks, label_blocks * chunks, device)
    G = max(1, min(G, row_blocks))
    with on_device(device):
        mean = z.mean(0, dtype=torch.float64).to(torch.float32)
        zc = (z - mean).contiguous()
        sq = zc.square().sum(1, dtype=torch.float64).to(torch.float32)
        g32 = gammas.to(device=device, dtype=torch.float32)
        vc = v if v.stride(1) == 1 else v.contiguous()
        q_part = torch.empty((G, num_out, B), dtype=torch.float64, device=device)
        rowsums = torch.empty((num_out, N), dtype=torch.float64, device=device)
        K.quadratic_forms_kernel[(G, label_blocks, chunks)](
            zc, sq, g32, vc, q_part, rowsums,
            N, d, B, L, G,
            zc.stride(0), vc.stride(0),
            BLOCK_I=cfg.BLOCK_I, BLOCK_J=cfg.BLOCK_J, BLOCK_B=cfg.BLOCK_B,
            BLOCK_D=cfg.BLOCK_D, L_PAD=l_pad, SUM_BANK=sum_bank, DOT_PREC=prec,
            **cfg.options(),
        )
        return q_part.sum(0), rowsums, rowsums.sum(1)

