"""Launch configurations of every Triton kernel: the one table the routes and the AOT tool read.

The MMD hosts (``mmd.py``) and the CORAL host (``coral.py``) pick their tile sizes, warps and
pipeline stages here, from the table of the device's class (:func:`select_table`: by the
opt-in shared memory per block the device reports); ``aot.py`` compiles exactly these
configurations for every compute capability of each class (``TABLE_ARCHS``: sm_86 / sm_89 /
sm_120 for the 99 KB table, sm_80 for 163 KB, sm_90 / sm_100 for 227 KB).  Every entry was
chosen with ``python -m dapkernels.backends.triton.aot`` (registers, spills, shared memory; the
committed record is ``benchmarks/results/aot_triton_cuda_all_targets.txt``) as the widest tiles
that compile for every target of its class without spills and within its shared memory.
Why the routes exist at all: docs/design.md §Routes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from . import mmd_kernels

__all__ = [
    "COMPUTE_DTYPE", "TARGETS", "TABLE_SHARED", "TABLE_ARCHS", "SHARED_LIMIT", "select_table",
    "SweepConfig",
    "PREP_BLOCK_R", "PREP_BLOCK_C", "PREP_MAX_PROGRAMS", "FINISH_BLOCK_R", "FINISH_BLOCK_C",
    "MAX_LAYERS", "SMALL_BN", "SMALL_BD", "SMALL_WARPS", "SMALL_STAGES", "MMD_NO_SMALL",
    "FLASH_MAX_D", "CONFIGS", "MAX_GROUP", "WIDE_CONFIGS", "WIDE_DG", "FLASH_CONFIGS",
    "CORAL_MAX_ROWS", "CORAL_BD", "CORAL_WARPS", "CORAL_STAGES", "CORAL_MAX_PROGRAMS",
    "CORAL_SMALL_MAX_D", "CORAL_NO_SMALL",
    "sweep_config", "flash_config", "flash_width", "group_width",
]

# ---- MMD / JMMD (mmd_kernels.py) ------------------------------------------------------------

#: compute dtype of the packed buffer and of the tile GEMMs, per input dtype.  float64 inputs
#: never reach the kernels (the hosts run the float64 reference formulas on the device for
#: them, docs/design.md §Routes); the entry only keeps the table total.
COMPUTE_DTYPE = {
    torch.float32: torch.float32,
    torch.float64: torch.float32,
    torch.float16: torch.float16,
    torch.bfloat16: torch.bfloat16,
}
#: 32-row blocks: 64 rows spilled for float16 / bfloat16 inputs on sm_86 and sm_89.
PREP_BLOCK_R = 32
PREP_BLOCK_C = 32
PREP_MAX_PROGRAMS = 1024
MAX_LAYERS = mmd_kernels.MAX_LAYERS.value
#: largest N of the one-program path (its Gram tile is SMALL_BN × SMALL_BN).
SMALL_BN = 64
SMALL_BD = 32
SMALL_WARPS = 8
#: two pipeline stages: three spilled for float64 inputs with the gradient on sm_80.
SMALL_STAGES = 2
#: (table, has_grad, tl.dot precision) where ``mmd_small_kernel`` spills on every tile / warp /
#: stage choice tried (3×TF32 with the gradient on sm_80, sm_86, sm_89 and sm_120): those calls
#: take the flash / sweep route instead.
MMD_NO_SMALL = frozenset({("163KB", True, "tf32x3"), ("99KB", True, "tf32x3")})
#: widest layer of the flash path: Y_I (B_M × 256) and the gradient stay in registers.
FLASH_MAX_D = 256


@dataclass(frozen=True)
class SweepConfig:
    """One launch configuration of a sweep kernel (tile sizes, warps, pipeline stages).

    ``BD`` is the d-chunk of ``mmd_sweep_kernel`` (unused by ``mmd_flash_kernel``, which takes
    all d).
    """

    B_M: int
    B_N: int
    BD: int
    num_warps: int
    num_stages: int


#: The tables below are per device class, named by the opt-in shared memory per block the
#: class allows (``TABLE_SHARED``, bytes): ``"99KB"`` (sm_86 / sm_89 / sm_120: RTX 30 / 40 / 50,
#: A10, A40, L4, L40S), ``"163KB"`` (sm_80: A100, A30; sm_87) and ``"227KB"`` (sm_90 / sm_100:
#: H100, H200, B200).
TARGETS = ("99KB", "163KB", "227KB")
TABLE_SHARED = {"99KB": 101376, "163KB": 166912, "227KB": 232448}
#: compute capabilities (major·10 + minor) each table is compiled and checked for by ``aot.py``.
TABLE_ARCHS = {"99KB": (86, 89, 120), "163KB": (80,), "227KB": (90, 100)}
#: opt-in shared memory per block of each compiled target (bytes), the AOT limit.
SHARED_LIMIT = {arch: TABLE_SHARED[t] for t, archs in TABLE_ARCHS.items() for arch in archs}


def select_table(shared_optin: int, capability: tuple[int, int], sms: int) -> str:
    """The configuration table of a device with ``shared_optin`` bytes of opt-in shared memory
    per block (``torch.cuda.get_device_properties(d).shared_memory_per_block_optin``), compute
    capability ``capability`` and ``sms`` multiprocessors.

    The rule: the class with the largest shared memory that does not exceed the device's, so no
    shipped configuration asks for more shared memory than the device has (the smallest class
    where the device has less than every class: pre-Ampere parts, on which Triton's tensor-core
    paths are not supported anyway).  Compute capability and multiprocessor count do not change
    the table today (every listed capability of a class compiles the class's table without
    spills, and the grids adapt to the multiprocessor count at launch); they are arguments so
    that a future table keyed on them changes this function only.
    """
    del capability, sms  # see the docstring
    fitting = [(limit, name) for name, limit in TABLE_SHARED.items() if limit <= shared_optin]
    if not fitting:
        return min((limit, name) for name, limit in TABLE_SHARED.items())[1]
    return max(fitting)[1]

#: ``mmd_sweep_kernel`` configurations per target, key (has_grad, half precision, 3×TF32), and the
#: widest gradient column group of JMMD per 3×TF32 flag.  3×TF32 splits each operand in
#: two, hence smaller tiles and a single pipeline stage with the gradient (and 4 warps in the
#: 227 KB class: 8 spilled on sm_100).
_SWEEP = {
    (True, False, False): SweepConfig(B_M=64, B_N=64, BD=32, num_warps=8, num_stages=2),
    (True, False, True): SweepConfig(B_M=64, B_N=32, BD=32, num_warps=8, num_stages=1),
    (True, True, False): SweepConfig(B_M=64, B_N=64, BD=64, num_warps=8, num_stages=2),
    (False, False, False): SweepConfig(B_M=128, B_N=64, BD=32, num_warps=8, num_stages=2),
    (False, False, True): SweepConfig(B_M=64, B_N=32, BD=32, num_warps=8, num_stages=2),
    (False, True, False): SweepConfig(B_M=128, B_N=64, BD=64, num_warps=8, num_stages=2),
}
CONFIGS: dict[str, dict[tuple[bool, bool, bool], SweepConfig]] = {
    "99KB": dict(_SWEEP),
    "163KB": dict(_SWEEP),
    "227KB": {**_SWEEP, (True, False, True): SweepConfig(B_M=64, B_N=32, BD=32, num_warps=4,
                                                        num_stages=1)},
}
MAX_GROUP: dict[bool, int] = {False: 128, True: 32}  # key 3×TF32 (JMMD with the gradient)

#: ``mmd_wide_kernel`` configurations per target, key (half precision, 3×TF32), and its gradient
#: chunk: one layer with the gradient where no flash configuration applies.
#: The 99 KB class runs one pipeline stage (two spilled on sm_86 / sm_89 / sm_120) and 32 × 32
#: tiles under 3×TF32.
_WIDE = {
    (False, False): SweepConfig(B_M=64, B_N=64, BD=32, num_warps=8, num_stages=2),
    (False, True): SweepConfig(B_M=64, B_N=32, BD=32, num_warps=8, num_stages=1),
    (True, False): SweepConfig(B_M=64, B_N=64, BD=64, num_warps=8, num_stages=2),
}
WIDE_CONFIGS: dict[str, dict[tuple[bool, bool], SweepConfig]] = {
    "99KB": {
        (False, False): SweepConfig(B_M=64, B_N=64, BD=32, num_warps=8, num_stages=1),
        (False, True): SweepConfig(B_M=32, B_N=32, BD=32, num_warps=8, num_stages=1),
        (True, False): SweepConfig(B_M=64, B_N=64, BD=64, num_warps=8, num_stages=1),
    },
    "163KB": dict(_WIDE),
    "227KB": dict(_WIDE),
}
WIDE_DG = 64
FINISH_BLOCK_R = 32
FINISH_BLOCK_C = 64


def _flash_table(entries: dict[tuple[bool, str], dict[int, tuple[int, int, int]]]) -> dict:
    """``{(grad, half, x3, DP): SweepConfig}`` from ``{(grad, kind): {DP: (B_M, B_N, warps)}}``
    with kind ``"tf32"``, ``"tf32x3"`` (float32) or ``"half"`` (float16 / bfloat16)."""
    return {(g, kind == "half", kind == "tf32x3", dp): SweepConfig(bm, bn, dp, w, 2)
            for (g, kind), per_dp in entries.items() for dp, (bm, bn, w) in per_dp.items()}


#: ``mmd_flash_kernel`` configurations per target, key (has_grad, half precision, 3×TF32, DP).  A
#: missing key routes the call to ``mmd_sweep_kernel``: where no tile shape tried kept ``Y_I`` (and
#: with the gradient its accumulator) in registers next to the tiles without spilling — 3×TF32
#: at d > 64 with the gradient or on sm_80, and at d > 128.  (On triton 3.6, 64 × 64 tiles on
#: 8 warps spilled at d = 128 with the gradient on sm_80, hence 32-row tiles there.)
FLASH_CONFIGS: dict[str, dict[tuple[bool, bool, bool, int], SweepConfig]] = {
    # the 163 KB table with 64-row tiles at DP = 256 without the gradient (128 rows need 147 /
    # 165 KB of shared memory)
    "99KB": _flash_table({
        (True, "tf32"): {64: (32, 64, 4), 128: (32, 64, 4), 256: (32, 32, 8)},
        (True, "tf32x3"): {64: (32, 32, 4)},
        (True, "half"): {64: (64, 64, 8), 128: (32, 64, 4), 256: (32, 32, 4)},
        (False, "tf32"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (64, 32, 8)},
        (False, "tf32x3"): {64: (32, 64, 4)},
        (False, "half"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (64, 32, 4)},
    }),
    "163KB": _flash_table({
        (True, "tf32"): {64: (32, 64, 4), 128: (32, 64, 4), 256: (32, 32, 8)},
        (True, "tf32x3"): {64: (32, 32, 4)},
        (True, "half"): {64: (64, 64, 8), 128: (32, 64, 4), 256: (32, 32, 4)},
        (False, "tf32"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (128, 32, 8)},
        (False, "tf32x3"): {64: (32, 64, 4)},
        (False, "half"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (64, 32, 4)},
    }),
    # 64 × 32 tiles with the gradient at DP = 64 (64 × 64 spilled on sm_100)
    "227KB": _flash_table({
        (True, "tf32"): {64: (64, 32, 8), 128: (32, 64, 4), 256: (32, 32, 8)},
        (True, "tf32x3"): {64: (32, 32, 4)},
        (True, "half"): {64: (64, 32, 8), 128: (32, 64, 4), 256: (32, 32, 4)},
        (False, "tf32"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (128, 32, 8)},
        (False, "tf32x3"): {64: (64, 64, 8), 128: (64, 32, 8)},
        (False, "half"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (64, 32, 4)},
    }),
}


def sweep_config(tgt: str, need_grad: bool, cdt: torch.dtype, prec: str) -> SweepConfig:
    """``mmd_sweep_kernel`` configuration for a target, compute dtype and tl.dot precision."""
    half = cdt != torch.float32
    return CONFIGS[tgt][(need_grad, half, prec == "tf32x3" and not half)]


def flash_config(tgt: str, need_grad: bool, cdt: torch.dtype, prec: str,
                 dp: int) -> SweepConfig | None:
    """``mmd_flash_kernel`` configuration for a target, compute dtype, tl.dot precision and width
    DP, or None where no flash configuration compiles cleanly (the call takes the sweep)."""
    half = cdt != torch.float32
    return FLASH_CONFIGS[tgt].get((need_grad, half, prec == "tf32x3" and not half, dp))


def flash_width(d: int) -> int:
    """Packed row width of the flash path: a power of two ≥ 64 (tl.arange and tl.dot shapes)."""
    return max(64, triton.next_power_of_2(d))


def group_width(dpad_max: int, bd: int, prec: str) -> int:
    """JMMD: columns of the gradient held in registers by one program, a power of two in
    [BD, max]."""
    return max(bd, min(MAX_GROUP[prec == "tf32x3"], triton.next_power_of_2(dpad_max)))


# ---- CORAL (coral_kernels.py) ---------------------------------------------------------------

#: most rows (n_s + n_t) of the Gram path: the N × N Gram tile lives in registers.  A 128-row
#: tile spills on sm_80 and sm_90 even on 16 warps (``python -m dapkernels.backends.triton.aot``),
#: so larger batches take ``reference.coral_formula``.
CORAL_MAX_ROWS = 64
CORAL_BD = 32
#: warps and pipeline stages per program: the 64 × 64 Gram tile and its float32 product fit
#: without spills (3 stages spill on sm_80 for float64 inputs).
CORAL_WARPS = 8
CORAL_STAGES = 1
#: programs per kernel: the feature dimension is split into at most this many column ranges.
CORAL_MAX_PROGRAMS = 128
#: widest features of the one-program kernel.  Its two passes over 64 × d inputs run on one
#: SM; past this width the two-kernel path spreads the columns over the GPU.
CORAL_SMALL_MAX_D = 2048
#: (table, has_grad, tl.dot precision) where ``coral_small_kernel`` spills (3×TF32 with the
#: gradient on sm_80 and on sm_120, for every warp / stage count tried): those calls take the two
#: kernels.
CORAL_NO_SMALL = frozenset({("163KB", True, "tf32x3"), ("99KB", True, "tf32x3")})
