"""Host side of the Triton MMD / JMMD sweep: packing, tables, kernel and launch configuration.

The contract is ``backends.reference.mmd_sweep``, plus ``mmd_loss`` (the loss value itself,
which the ops layer prefers).  Everything stays on the device: the bandwidths are computed by
the kernels from device-side statistics (no host sync), the block sums (or the value) come back
as a device tensor.  Per call, one of:

* one layer, N ≤ 64: one ``small_kernel`` launch that reads the source and target rows in
  place (no copy, no memset) and, for ``mmd_loss``, writes the value, except where
  ``NO_SMALL`` says it spills;
* one layer, d ≤ 256 where the device's table has a flash configuration (see
  ``FLASH_CONFIGS``): one memset, ``prep_kernel``, ``flash_kernel``;
* other single layers with the gradient (d > 256, or no flash configuration): two memsets,
  ``prep_kernel``, ``wide_kernel`` (every distance tile once, over all d), ``finish_kernel``;
* otherwise (JMMD, or no gradient): one memset, ``prep_kernel`` per layer, ``sweep_kernel``.

All but the first concatenate each layer's source and target blocks on the device first (one
copy per layer, small next to the sweep).

Determinism: ``small_kernel`` has no atomics.  The others add float statistics, block sums
(and in ``wide_kernel`` the gradient accumulator) by atomics from several programs, whose
order changes the rounding.  Under ``torch.use_deterministic_algorithms(True)``
``prep_kernel`` runs as one program (deterministic), and a flash / wide / sweep launch with
more than one program calls torch's ``alert_not_deterministic`` first (RuntimeError, or a
warning with ``warn_only=True``); with a single program they are deterministic and run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton

from . import mmd_kernels as K

#: compute dtype of the packed buffer and of the tile GEMMs, per input dtype.  float64 inputs
#: are computed in float32 (the GPU kernels accumulate in float32 throughout) and their
#: gradient is written in float32, then converted.
_COMPUTE_DTYPE = {
    torch.float32: torch.float32,
    torch.float64: torch.float32,
    torch.float16: torch.float16,
    torch.bfloat16: torch.bfloat16,
}
_PREP_BLOCK_R = 64
_PREP_BLOCK_C = 32
_PREP_MAX_PROGRAMS = 1024
MAX_LAYERS = K.MAX_LAYERS.value
#: largest N of the one-program path (its Gram tile is SMALL_BN × SMALL_BN).
SMALL_BN = 64
SMALL_BD = 32
SMALL_WARPS = 8
#: two pipeline stages: three spilled for float64 inputs with the gradient on sm_80.
SMALL_STAGES = 2
#: (target, has_grad, tl.dot precision) where ``small_kernel`` spills on every tile / warp /
#: stage choice tried (3×TF32 with the gradient on sm_80): those calls take the flash / sweep
#: route instead.
NO_SMALL = frozenset({(80, True, "tf32x3")})
#: widest layer of the flash path: Y_I (B_M × 256) and the gradient stay in registers.
FLASH_MAX_D = 256


@dataclass(frozen=True)
class SweepConfig:
    """One launch configuration of a sweep kernel (tile sizes, warps, pipeline stages).

    ``BD`` is the d-chunk of ``sweep_kernel`` (unused by ``flash_kernel``, which takes all d).
    """

    B_M: int
    B_N: int
    BD: int
    num_warps: int
    num_stages: int


#: The tables below are per target: ``80`` (compute capability < 9: sm_80 and the consumer
#: Ampere / Ada parts, 163 KB of shared memory per block or less) and ``90`` (Hopper and newer,
#: 227 KB).  Every entry was chosen with ``python -m dapkernels.backends.triton.aot`` (registers,
#: spills, shared memory; ``benchmarks/results/aot_triton_cuda_sm80_sm90.txt``) as the widest
#: tiles that compile for that target without spills and within its shared memory.
TARGETS = (80, 90)

#: ``sweep_kernel`` configurations per target, key (has_grad, half precision, 3×TF32), and the
#: widest gradient column group of JMMD per 3×TF32 flag.  3×TF32 splits each operand in
#: two, hence smaller tiles and a single pipeline stage with the gradient.
CONFIGS: dict[int, dict[tuple[bool, bool, bool], SweepConfig]] = {
    target: {
        (True, False, False): SweepConfig(B_M=64, B_N=64, BD=32, num_warps=8, num_stages=2),
        (True, False, True): SweepConfig(B_M=64, B_N=32, BD=32, num_warps=8, num_stages=1),
        (True, True, False): SweepConfig(B_M=64, B_N=64, BD=64, num_warps=8, num_stages=2),
        (False, False, False): SweepConfig(B_M=128, B_N=64, BD=32, num_warps=8, num_stages=2),
        (False, False, True): SweepConfig(B_M=64, B_N=32, BD=32, num_warps=8, num_stages=2),
        (False, True, False): SweepConfig(B_M=128, B_N=64, BD=64, num_warps=8, num_stages=2),
    }
    for target in TARGETS
}
MAX_GROUP: dict[bool, int] = {False: 128, True: 32}  # key 3×TF32 (JMMD with the gradient)

#: ``wide_kernel`` configurations per target, key (half precision, 3×TF32), and its gradient
#: chunk: one layer with the gradient where no flash configuration applies.
WIDE_CONFIGS: dict[int, dict[tuple[bool, bool], SweepConfig]] = {
    target: {
        (False, False): SweepConfig(B_M=64, B_N=64, BD=32, num_warps=8, num_stages=2),
        (False, True): SweepConfig(B_M=64, B_N=32, BD=32, num_warps=8, num_stages=1),
        (True, False): SweepConfig(B_M=64, B_N=64, BD=64, num_warps=8, num_stages=2),
    }
    for target in TARGETS
}
WIDE_DG = 64
_FINISH_BLOCK_R = 32
_FINISH_BLOCK_C = 64


def _flash_table(entries: dict[tuple[bool, str], dict[int, tuple[int, int, int]]]) -> dict:
    """``{(grad, half, x3, DP): SweepConfig}`` from ``{(grad, kind): {DP: (B_M, B_N, warps)}}``
    with kind ``"tf32"``, ``"tf32x3"`` (float32) or ``"half"`` (float16 / bfloat16)."""
    return {(g, kind == "half", kind == "tf32x3", dp): SweepConfig(bm, bn, dp, w, 2)
            for (g, kind), per_dp in entries.items() for dp, (bm, bn, w) in per_dp.items()}


#: ``flash_kernel`` configurations per target, key (has_grad, half precision, 3×TF32, DP).  A
#: missing key routes the call to ``sweep_kernel``: where no tile shape tried kept ``Y_I`` (and
#: with the gradient its accumulator) in registers next to the tiles without spilling — 3×TF32
#: at d > 64 with the gradient or on sm_80, and at d > 128.  (On triton 3.6, 64 × 64 tiles on
#: 8 warps spilled at d = 128 with the gradient on sm_80, hence 32-row tiles there.)
FLASH_CONFIGS: dict[int, dict[tuple[bool, bool, bool, int], SweepConfig]] = {
    80: _flash_table({
        (True, "tf32"): {64: (32, 64, 4), 128: (32, 64, 4), 256: (32, 32, 8)},
        (True, "tf32x3"): {64: (32, 32, 4)},
        (True, "half"): {64: (64, 64, 8), 128: (32, 64, 4), 256: (32, 32, 4)},
        (False, "tf32"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (128, 32, 8)},
        (False, "tf32x3"): {64: (32, 64, 4)},
        (False, "half"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (64, 32, 4)},
    }),
    90: _flash_table({
        (True, "tf32"): {64: (64, 64, 8), 128: (32, 64, 4), 256: (32, 32, 8)},
        (True, "tf32x3"): {64: (32, 32, 4)},
        (True, "half"): {64: (64, 64, 8), 128: (32, 64, 4), 256: (32, 32, 4)},
        (False, "tf32"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (128, 32, 8)},
        (False, "tf32x3"): {64: (64, 64, 8), 128: (64, 32, 8)},
        (False, "half"): {64: (64, 64, 4), 128: (64, 64, 4), 256: (64, 32, 4)},
    }),
}

_TARGET: dict[torch.device, int] = {}


def target(device: torch.device) -> int:
    """Config table of ``device``: 90 from compute capability 9 on, else 80; cached per device.

    CPU tensors (``TRITON_INTERPRET=1``) use 90, whose routes launch ``small_kernel`` in every
    mode; the tests switch a device to 80 to run that table's routes.
    """
    hit = _TARGET.get(device)
    if hit is None:
        major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else 9
        hit = _TARGET[device] = 90 if major >= 9 else 80
    return hit


def sweep_config(tgt: int, need_grad: bool, cdt: torch.dtype, prec: str) -> SweepConfig:
    """``sweep_kernel`` configuration for a target, compute dtype and tl.dot precision."""
    half = cdt != torch.float32
    return CONFIGS[tgt][(need_grad, half, prec == "tf32x3" and not half)]


def flash_config(tgt: int, need_grad: bool, cdt: torch.dtype, prec: str,
                 dp: int) -> SweepConfig | None:
    """``flash_kernel`` configuration for a target, compute dtype, tl.dot precision and width
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


_SMS: dict[torch.device, int] = {}


def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (4 for CPU tensors under the interpreter, so the
    tests exercise several column splits); cached."""
    hit = _SMS.get(device)
    if hit is None:
        hit = _SMS[device] = (torch.cuda.get_device_properties(device).multi_processor_count
                              if device.type == "cuda" else 4)
    return hit


def wide_splits(N: int, device: torch.device, cfg: SweepConfig) -> int:
    """Column ranges per row block of ``wide_kernel``, in whole B_N tiles: enough programs for
    two per multiprocessor when the row blocks alone are fewer."""
    row_blocks, col_tiles = triton.cdiv(N, cfg.B_M), triton.cdiv(N, cfg.B_N)
    splits = max(1, min(col_tiles, triton.cdiv(2 * _multiprocessors(device), row_blocks)))
    return triton.cdiv(col_tiles, triton.cdiv(col_tiles, splits))


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: float32 follows ``torch.get_float32_matmul_precision()``.

    "highest" → "tf32x3" (three TF32 products, float32-level error), otherwise "tf32";
    half-precision inputs multiply natively (the argument is ignored for them).
    """
    if _COMPUTE_DTYPE[dtype] != torch.float32:
        return "tf32"
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _squaring(factors: Sequence[float]) -> bool:
    """True when the sorted factors form a geometric series of ratio 2 (γ_q = γ_0 · 2^q) short
    enough for the unrolled squaring chain."""
    f = sorted(factors, reverse=True)
    return len(f) <= K.MAX_SQUARINGS.value and all(
        math.isclose(a, 2.0 * b, rel_tol=1e-12) for a, b in zip(f, f[1:]))


def _bank_list(factors: Sequence[float]) -> list[float]:
    """``[γ_max, γ_0, γ_1, …]`` with γ = 1/(2 factor); doubling banks sorted widest first."""
    gs = [0.5 / f for f in (sorted(factors, reverse=True) if _squaring(factors) else factors)]
    return [max(gs)] + gs


_BANKS: dict[tuple, torch.Tensor] = {}


def _bank_table(factors: tuple, device: torch.device) -> torch.Tensor:
    """One layer's bank (float32) on ``device``, cached."""
    key = (factors, device)
    hit = _BANKS.get(key)
    if hit is None:
        if len(_BANKS) >= 256:
            _BANKS.clear()
        hit = _BANKS[key] = torch.tensor(_bank_list(factors), dtype=torch.float32, device=device)
    return hit


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
        layers += [col, dpad, d, stats, len(bank), len(fs), int(rel), int(_squaring(fs))]
        bank += _bank_list(fs)
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


def _flat_grad(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The gradient in the input dtype (float64 inputs get a float32 kernel result)."""
    return grad if grad.dtype == dtype else grad.to(dtype)


_COEFS: dict[tuple, torch.Tensor] = {}


def _coef_table(weights: tuple, const: float, device: torch.device) -> torch.Tensor:
    """float64 ``[w_ss, 2 w_st, w_tt, c]`` on ``device``, cached: ``L = coef · S + c``.

    float64 on the device because Triton passes Python floats as float32, which would round
    the weights of a loss that is a small difference of large terms.
    """
    key = (weights, const, device)
    hit = _COEFS.get(key)
    if hit is None:
        if len(_COEFS) >= 256:
            _COEFS.clear()
        w_ss, w_st, w_tt = weights
        hit = _COEFS[key] = torch.tensor([w_ss, 2.0 * w_st, w_tt, const], dtype=torch.float64,
                                         device=device)
    return hit


#: per (dtype, device, bank, gradient, precision, value or sums): the bank on the device and
#: the launch constants of ``small_kernel``.  A training loop builds it once; later calls do
#: one dict lookup, the output allocations and the launch.
_SMALL_PLANS: dict[tuple, tuple[torch.Tensor, dict[str, object]]] = {}


def _small_plan(key: tuple) -> tuple[torch.Tensor, dict[str, object]]:
    _, device, factors, need_grad, prec, out_value = key
    plan = (
        _bank_table(factors, device),
        {"BN": SMALL_BN, "BD": SMALL_BD, "SQUARE": _squaring(factors), "HAS_GRAD": need_grad,
         "OUT_VALUE": out_value, "DOT_PREC": prec, "num_warps": SMALL_WARPS,
         "num_stages": SMALL_STAGES},
    )
    if len(_SMALL_PLANS) >= 256:
        _SMALL_PLANS.clear()
    _SMALL_PLANS[key] = plan
    return plan


def _takes_small(sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                 need_grad: bool) -> bool:
    """One layer of at most SMALL_BN rows, on a target / precision where the kernel fits."""
    if len(sources) != 1 or sources[0].shape[0] + targets[0].shape[0] > SMALL_BN:
        return False
    dtype = sources[0].dtype
    return (target(sources[0].device), need_grad, dot_precision(dtype)) not in NO_SMALL


def _unit_cols(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself (kernels read raw pointers: no detach needed), or a copy when its columns
    are not adjacent in memory."""
    return x if x.stride(1) == 1 else x.detach().contiguous()


def _small(s: torch.Tensor, t: torch.Tensor, factors: tuple, rel: bool,
           weights: Sequence[float], need_grad: bool, coef: torch.Tensor | None,
           out: torch.Tensor) -> torch.Tensor | None:
    """One ``small_kernel`` launch (n + m ≤ SMALL_BN) writing ``out``: the block sums, or with
    ``coef`` the loss value.  Returns the (n + m, d) gradient in the input dtype, or None."""
    s, t = _unit_cols(s), _unit_cols(t)
    dtype, device = s.dtype, s.device
    key = (dtype, device, factors, need_grad, dot_precision(dtype), coef is not None)
    plan = _SMALL_PLANS.get(key)
    bank, consts = plan if plan is not None else _small_plan(key)
    n, d = s.shape
    N = n + t.shape[0]
    grad = torch.empty((N, d), dtype=dtype, device=device) if need_grad else None
    K.small_kernel[(1,)](s, t, bank, out if coef is None else coef,
                         out if grad is None else grad, out, N, n, d, s.stride(0), t.stride(0),
                         len(factors), int(rel), *weights, **consts)
    return grad


def _flash(z: torch.Tensor, n: int, factors: tuple, rel: bool, weights: Sequence[float],
           need_grad: bool, cfg: SweepConfig, prec: str) -> tuple:
    """``prep_kernel`` then ``flash_kernel`` with ``cfg`` (one layer, d ≤ cfg.BD = DP)."""
    N, d = z.shape
    device, cdt, dp = z.device, _COMPUTE_DTYPE[z.dtype], cfg.BD
    zp = torch.empty((N, dp), dtype=cdt, device=device)
    sq = torch.empty(N, dtype=torch.float32, device=device)
    stats = torch.zeros(3 + d + 1, dtype=torch.float64, device=device)
    _prep(z, zp, sq, stats[3:], d, dp, 0)
    grad = torch.empty((N, d), dtype=torch.float32 if z.dtype == torch.float64 else z.dtype,
                       device=device) if need_grad else zp
    alert_atomic("dapkernels.mmd (triton flash route: block sums by float64 atomic adds)",
                 triton.cdiv(N, cfg.B_M))
    K.flash_kernel[(triton.cdiv(N, cfg.B_M),)](
        zp, sq, stats[3:], _bank_table(factors, device), grad, stats, N, n, d, dp, len(factors),
        int(rel), *weights, B_M=cfg.B_M, B_N=cfg.B_N, DP=dp, SQUARE=_squaring(factors),
        HAS_GRAD=need_grad, DOT_PREC=prec, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return stats[:3], grad


def _wide(z: torch.Tensor, n: int, factors: tuple, rel: bool, weights: Sequence[float],
          cfg: SweepConfig, prec: str) -> tuple:
    """``prep_kernel``, ``wide_kernel`` with ``cfg``, ``finish_kernel`` (one layer, gradient)."""
    N, d = z.shape
    device, cdt = z.device, _COMPUTE_DTYPE[z.dtype]
    dpad = triton.cdiv(d, max(cfg.BD, WIDE_DG)) * max(cfg.BD, WIDE_DG)
    zp = torch.empty((N, dpad), dtype=cdt, device=device)
    sq = torch.empty(N, dtype=torch.float32, device=device)
    stats = torch.zeros(3 + d + 1, dtype=torch.float64, device=device)
    _prep(z, zp, sq, stats[3:], d, dpad, 0)
    # the float32 accumulator of C'Y and the row sums of C', zeroed together
    acc_rowsum = torch.zeros(N * dpad + N, dtype=torch.float32, device=device)
    acc, rowsum = acc_rowsum[:N * dpad].view(N, dpad), acc_rowsum[N * dpad:]
    splits = wide_splits(N, device, cfg)
    cols_per_split = triton.cdiv(triton.cdiv(N, cfg.B_N), splits) * cfg.B_N
    bank = _bank_table(factors, device)
    alert_atomic("dapkernels.mmd (triton wide route: gradient accumulator and block sums by "
                 "atomic adds)", triton.cdiv(N, cfg.B_M) * splits)
    K.wide_kernel[(triton.cdiv(N, cfg.B_M), splits)](
        zp, sq, stats[3:], bank, acc, rowsum, stats, N, n, d, dpad, dpad, len(factors),
        int(rel), *weights, cols_per_split, B_M=cfg.B_M, B_N=cfg.B_N, BD=cfg.BD, DG=WIDE_DG,
        SQUARE=_squaring(factors), DOT_PREC=prec, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    # float32 gradients overwrite the accumulator in place (no second N × d buffer)
    grad = acc if cdt == torch.float32 else torch.empty((N, dpad), dtype=cdt, device=device)
    K.finish_kernel[(triton.cdiv(N, _FINISH_BLOCK_R), triton.cdiv(d, _FINISH_BLOCK_C))](
        zp, acc, rowsum, stats[3:], bank, grad, N, n, d, dpad, dpad, int(rel), *weights,
        BLOCK_R=_FINISH_BLOCK_R, BLOCK_C=_FINISH_BLOCK_C,
    )
    return stats[:3], grad[:, :d]


def deterministic() -> bool:
    """``torch.are_deterministic_algorithms_enabled()`` (read once per call of a route)."""
    return torch.are_deterministic_algorithms_enabled()


def alert_atomic(route: str, programs: int) -> None:
    """Before launching a route whose float atomics are added by ``programs`` programs: with
    ``torch.use_deterministic_algorithms(True)`` this raises RuntimeError (a warning with
    ``warn_only=True``), as torch does for its own nondeterministic kernels.  A single program
    adds each value once onto zeros, which is exact, so it runs."""
    if programs > 1 and deterministic():
        # torch._C._alert_not_deterministic where this torch has it (older releases), else
        # its Python twin (same RuntimeError / warning); torch 2.13 has only the latter
        alert = getattr(torch._C, "_alert_not_deterministic", None)
        if alert is None:
            from torch._prims_common import alert_not_deterministic as alert
        alert(route)


def _prep(z: torch.Tensor, zp: torch.Tensor, sq: torch.Tensor, stats: torch.Tensor, d: int,
          dpad: int, col: int) -> None:
    """Launches ``prep_kernel`` for one layer (columns ``col … col + dpad`` of ``zp``).

    Its column statistics are float64 atomic adds, one per column per program: under
    ``torch.use_deterministic_algorithms(True)`` one program packs every row, so they are
    added once, in a fixed order (deterministic; slower only for very large N).
    """
    N = z.shape[0]
    if z.stride(1) != 1:
        z = z.contiguous()
    rows_per_prog = triton.cdiv(triton.cdiv(N, _PREP_MAX_PROGRAMS), _PREP_BLOCK_R) * _PREP_BLOCK_R
    if deterministic():
        rows_per_prog = triton.cdiv(N, _PREP_BLOCK_R) * _PREP_BLOCK_R
    K.prep_kernel[(triton.cdiv(N, rows_per_prog),)](
        z, zp, sq, stats, N, d, dpad, z.stride(0), zp.stride(0), col, rows_per_prog,
        BLOCK_R=_PREP_BLOCK_R, BLOCK_C=_PREP_BLOCK_C,
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
    n = sources[0].shape[0]
    weights = tuple(float(w) for w in weights)
    if _takes_small(sources, targets, need_grad):
        sums = torch.empty(3, dtype=torch.float64, device=sources[0].device)
        grad = _small(sources[0], targets[0], tuple(factors[0]), bool(relative[0]), weights,
                      need_grad, None, sums)
        return sums, [grad] if need_grad else []
    # The other kernels read one packed (N, d_l) array per layer: z_l = [source_l; target_l].
    zs = [torch.cat((s.detach(), t.detach())) for s, t in zip(sources, targets)]
    z0 = zs[0]
    device, dtype, N = z0.device, z0.dtype, z0.shape[0]
    cdt, prec = _COMPUTE_DTYPE[dtype], dot_precision(dtype)
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
    layer_t, bank_t, group_t = _tables(key, device)

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
    K.sweep_kernel[(triton.cdiv(N, cfg.B_M), num_groups)](
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
    coef = _coef_table(weights, float(const), device)
    if _takes_small(sources, targets, need_grad):
        value = torch.empty((), dtype=out_dtype, device=device)
        grad = _small(sources[0], targets[0], tuple(factors[0]), bool(relative[0]), weights,
                      need_grad, coef, value)
        return value, [grad] if need_grad else []
    sums, grads = mmd_sweep(sources, targets, factors, relative, weights, need_grad)
    return (torch.dot(sums, coef[:3]) + coef[3]).to(out_dtype), grads
