"""Ahead-of-time compilation of every shipped Triton kernel configuration, without a GPU.

``python -m dapkernels.backends.triton.aot [--arch 80 86 …] [--subset] [--kernel K …] [--jobs J]``
compiles, for every target (sm_80, sm_86, sm_89, sm_90, sm_100, sm_120 by default:
``configs.TABLE_ARCHS``), each configuration of that target's table with
``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", cc, 32))``
(triton ships ptxas, so no GPU or CUDA toolkit is needed), prints registers, spill bytes and
shared memory per kernel and configuration, and exits with status 1 on a compile error, any
spill, or shared memory beyond the target's opt-in per-block limit (``configs.SHARED_LIMIT``:
166912 B on sm_80, 101376 B on sm_86 / sm_89 / sm_120, 232448 B on sm_90 / sm_100).
Registers and spills come from the ptxas log of that compile.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch

from . import configs as C

__all__ = ["Job", "SHARED_LIMIT", "ARCHS", "table_of", "shipped_jobs", "subset_jobs",
           "representative_jobs",
           "recorded_table", "compile_job", "run", "failed", "main"]

#: Triton pointer element type of each torch dtype.
_TRITON_TYPES = {
    torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
}
#: input dtypes of every kernel, by name.  float64 inputs never reach a kernel (the hosts run
#: the float64 reference formulas for them), so no float64 form is compiled.
DTYPES = ("float32", "float16", "bfloat16")
SWEEP_DTYPES = DTYPES


@dataclass(frozen=True)
class Job:
    """One kernel configuration for one target."""

    kernel: str
    dtype: str
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int
    arch: int

    @property
    def label(self) -> str:
        c = " ".join(f"{k}={v}" for k, v in self.constexprs)
        return f"{self.kernel} {self.dtype} {c} warps={self.num_warps} stages={self.num_stages}"


def _precisions(dtype: str) -> tuple[str, ...]:
    return ("tf32", "tf32x3") if dtype in ("float32", "float64") else ("tf32",)


#: opt-in shared memory a block may use, per target (bytes).
SHARED_LIMIT = C.SHARED_LIMIT
#: every target, in the order of the record.
ARCHS = sorted(SHARED_LIMIT)


def table_of(arch: int) -> str:
    """The configuration table (device class) compiled for target ``arch``."""
    return next(t for t, archs in C.TABLE_ARCHS.items() if arch in archs)


def shipped_jobs(archs: list[int]) -> list[Job]:
    """Every configuration the Triton backend can launch, for each target in ``archs``.

    Axes: input dtype, tl.dot precision, gradient or not, and per kernel its tile constexprs
    (flash: width DP, from that target's ``configs.FLASH_CONFIGS``; sweep: gradient group DG and
    layer mode; squaring or one exp per kernel).
    """
    jobs: list[Job] = []
    for arch in archs:
        table = table_of(arch)
        for dtype in DTYPES:
            jobs.append(Job("mmd_prep_kernel", dtype, (("BLOCK_R", C.PREP_BLOCK_R),
                                                   ("BLOCK_C", C.PREP_BLOCK_C)), 4, 3, arch))
        for dtype in DTYPES:  # mmd_small_kernel reads every input dtype in place
            for prec in _precisions(dtype):
                for grad, square, value in itertools.product((True, False), repeat=3):
                    if (table, grad, prec) not in C.MMD_NO_SMALL:
                        jobs.append(Job("mmd_small_kernel", dtype, (
                            ("BN", C.SMALL_BN), ("BD", C.SMALL_BD), ("SQUARE", square),
                            ("HAS_GRAD", grad), ("OUT_VALUE", value), ("DOT_PREC", prec)),
                            C.SMALL_WARPS, C.SMALL_STAGES, arch))
        for dtype in SWEEP_DTYPES:
            half = dtype != "float32"
            for prec in _precisions(dtype):
                x3 = prec == "tf32x3"
                for grad in (True, False):
                    for square in (True, False):
                        for (g, h, x, dp), cfg in C.FLASH_CONFIGS[table].items():
                            if (g, h, x) != (grad, half, x3):
                                continue
                            jobs.append(Job("mmd_flash_kernel", dtype, (
                                ("B_M", cfg.B_M), ("B_N", cfg.B_N), ("DP", dp), ("SQUARE", square),
                                ("HAS_GRAD", grad), ("DOT_PREC", prec)),
                                cfg.num_warps, cfg.num_stages, arch))
                    if grad:  # one layer with the gradient: mmd_wide_kernel, per bank kind
                        cfg = C.WIDE_CONFIGS[table][(half, x3)]
                        for square in (True, False):
                            jobs.append(Job("mmd_wide_kernel", dtype, (
                                ("B_M", cfg.B_M), ("B_N", cfg.B_N), ("BD", cfg.BD),
                                ("DG", C.WIDE_DG), ("SQUARE", square), ("DOT_PREC", prec)),
                                cfg.num_warps, cfg.num_stages, arch))
                    cfg = C.CONFIGS[table][(grad, half, x3)]
                    # mmd_sweep_kernel: JMMD, and one layer without the gradient
                    for one_layer in (False, True) if not grad else (False,):
                        groups = [g for g in (32, 64, 128) if cfg.BD <= g <= C.MAX_GROUP[x3]]
                        for dg in groups if grad else [cfg.BD]:
                            jobs.append(Job("mmd_sweep_kernel", dtype, (
                                ("B_M", cfg.B_M), ("B_N", cfg.B_N), ("BD", cfg.BD), ("DG", dg),
                                ("HAS_GRAD", grad), ("ONE_LAYER", one_layer), ("DOT_PREC", prec)),
                                cfg.num_warps, cfg.num_stages, arch))
            jobs.append(Job("mmd_finish_kernel", dtype, (("BLOCK_R", C.FINISH_BLOCK_R),
                                                     ("BLOCK_C", C.FINISH_BLOCK_C)), 4, 1, arch))
        jobs += _coral_jobs(arch)
    return jobs


def _coral_jobs(arch: int) -> list[Job]:
    """The CORAL kernels' configurations for target ``arch`` (``configs.CORAL_*``)."""
    jobs = []
    base = (("BN", C.CORAL_MAX_ROWS), ("BD", C.CORAL_BD))
    launch = (C.CORAL_WARPS, C.CORAL_STAGES, arch)
    for dtype in DTYPES:
        for prec in _precisions(dtype):
            jobs.append(Job("coral_gram_kernel", dtype, base + (("DOT_PREC", prec),), *launch))
            for grad in (True, False):
                flags = base + (("HAS_GRAD", grad), ("DOT_PREC", prec))
                jobs.append(Job("coral_grad_kernel", dtype, flags, *launch))
                if (table_of(arch), grad, prec) not in C.CORAL_NO_SMALL:
                    jobs.append(Job("coral_small_kernel", dtype, flags, *launch))
    return jobs


def subset_jobs() -> list[Job]:
    """The test suite's subset: per device class (compiled for its first target, sm_86 / sm_80 /
    sm_90) and kernel family (kernel × gradient or not), the shipped configuration with the most
    registers, then the most shared memory, in the committed table
    ``benchmarks/results/aot_triton_cuda_all_targets.txt``; configurations the table lacks rank
    by construction (3×TF32, float32, widest tile, JMMD mode, one exp per kernel) above every
    recorded one."""
    measured = recorded_table()
    cost = {"tf32x3": 2, "tf32": 1}
    picks: dict[tuple, tuple[tuple, Job]] = {}
    for j in shipped_jobs([archs[0] for archs in C.TABLE_ARCHS.values()]):
        c = dict(j.constexprs)
        family = (j.kernel, c.get("HAS_GRAD"), j.arch)
        rank = (measured.get((j.arch, j.label), (1 << 30, 1 << 30)),
                cost.get(str(c.get("DOT_PREC")), 0), j.dtype == "float32",
                c.get("DP", 0) + c.get("DG", 0) + c.get("BN", 0), not c.get("ONE_LAYER", True),
                not c.get("SQUARE", True))
        if family not in picks or rank > picks[family][0]:
            picks[family] = (rank, j)
    return [j for _, j in picks.values()]


def representative_jobs() -> list[Job]:
    """One configuration per device class, compiled for the class's first target: the shipped
    configuration with the most shared memory in the committed table (the one closest to the
    class's limit)."""
    measured = recorded_table()
    picks: dict[str, tuple[int, Job]] = {}
    for j in shipped_jobs([archs[0] for archs in C.TABLE_ARCHS.values()]):
        smem = measured.get((j.arch, j.label), (0, 0))[1]
        table = table_of(j.arch)
        if table not in picks or smem > picks[table][0]:
            picks[table] = (smem, j)
    return [j for _, j in picks.values()]


#: the committed full table, read by ``subset_jobs``.
TABLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks", "results",
                     "aot_triton_cuda_all_targets.txt")


def recorded_table() -> dict[tuple[int, str], tuple[int, int]]:
    """``{(arch, label): (registers, shared bytes)}`` from the committed table, if present."""
    out: dict[tuple[int, str], tuple[int, int]] = {}
    if not os.path.exists(TABLE):
        return out
    with open(TABLE) as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[0].isdigit() and parts[1].isdigit():
                out[(int(parts[0]), parts[5].strip())] = (int(parts[1]), int(parts[3]))
    return out


#: Triton type of each pointer argument, by name, for kernels whose inputs have Triton type
#: ``x``, packed into ``p`` (``COMPUTE_DTYPE``); the same name means the same buffer in every
#: kernel.  Value pointers depend on the kernel (:func:`_value_type`).
_POINTERS = {
    **dict.fromkeys(("z_ptr", "s_ptr", "t_ptr", "xs_ptr", "xt_ptr", "gs_ptr", "gt_ptr",
                     "grad_ptr"), "x"),
    "zp_ptr": "p",
    **dict.fromkeys(("sq_ptr", "bank_ptr", "acc_ptr", "rowsum_ptr", "g_ptr"), "fp32"),
    **dict.fromkeys(("stats_ptr", "coef_ptr", "sums_ptr"), "fp64"),
    **dict.fromkeys(("layer_ptr", "group_ptr"), "i32"),
}
#: scalar arguments passed as Python floats (every other scalar is an int).
_FLOAT_SCALARS = frozenset({"w_ss", "w_st", "w_tt"})


def _value_type(job: Job, x: str) -> str:
    """Triton type of a kernel's value output: the ops' output dtype (float64 for float64
    inputs, else float32) where the kernel writes the loss itself, float64 where it writes the
    block sums or a float64 value."""
    constexprs = dict(job.constexprs)
    writes_loss = (job.kernel == "coral_small_kernel"
                   or (job.kernel == "mmd_small_kernel" and constexprs["OUT_VALUE"]))
    return "fp32" if writes_loss and x != "fp64" else "fp64"


def _signature(job: Job) -> dict[str, str]:
    """The kernel's arguments in order (``JITFunction.params``) with their Triton types:
    ``constexpr`` where the kernel marks them so, pointers from :data:`_POINTERS`, scalars
    ``fp32`` or ``i32``."""
    x = _TRITON_TYPES[getattr(torch, job.dtype)]
    types = {"x": x, "p": _TRITON_TYPES[C.COMPUTE_DTYPE[getattr(torch, job.dtype)]]}
    sig = {}
    for param in _kernel(job.kernel).params:
        name = param.name
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name in ("out_ptr", "value_ptr"):
            sig[name] = "*" + _value_type(job, x)
        elif name.endswith("_ptr"):
            role = _POINTERS[name]
            sig[name] = "*" + types.get(role, role)
        else:
            sig[name] = "fp32" if name in _FLOAT_SCALARS else "i32"
    return sig


def _kernel(name: str):
    from . import coral_kernels, mmd_kernels

    return getattr(coral_kernels if name.startswith("coral_") else mmd_kernels, name)


def compile_job(job: Job) -> dict[str, object]:
    """Compiles one job; returns registers, spill bytes, shared memory (or the error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _kernel(job.kernel)
    sig = _signature(job)
    # Mirror the launcher's specialisation: pointers and packed row strides are 16-aligned
    # (the launcher specialises on it; float64 → float32 packing keeps it).
    aligned = [i for i, (name, ty) in enumerate(sig.items())
               if ty.startswith("*") or name in ("stride_p", "stride_g", "dpad",
                                                  "cols_per_split")]
    src = ASTSource(fn, sig, constexprs=dict(job.constexprs),
                    attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.compilation.always_compile = True
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(src, target=GPUTarget("cuda", job.arch, 32),
                                    options={"num_warps": job.num_warps,
                                             "num_stages": job.num_stages})
    except Exception as exc:  # reported in the table, turned into a non-zero exit status
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    text = log.getvalue()
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {
        "registers": int(regs[-1]) if regs else -1,
        "spill_bytes": sum(int(a) + int(b) for a, b in spills) if spills else -1,
        "shared_bytes": int(kernel.metadata.shared),
        # tensor cores: Blackwell tcgen05, Hopper wgmma, Ampere mma.sync, or none
        "mma": next((m for m in ("tcgen05", "wgmma", "mma.sync") if m in kernel.asm["ptx"]),
                    "fma"),
    }


def run(jobs: list[Job], workers: int) -> list[tuple[Job, dict[str, object]]]:
    """Compiles ``jobs`` in ``workers`` processes; returns (job, result) in order."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if workers <= 1:
        return [(j, compile_job(j)) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(zip(jobs, pool.map(compile_job, jobs)))


def failed(job: Job, result: dict[str, object]) -> bool:
    """A compile error, a spill, shared memory beyond the target's limit, or a log without
    register counts is a failure."""
    return ("error" in result or result["spill_bytes"] != 0 or result["registers"] < 0
            or result["shared_bytes"] > SHARED_LIMIT[job.arch])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=ARCHS, choices=ARCHS)
    parser.add_argument("--subset", action="store_true", help="the test suite's subset")
    parser.add_argument("--representatives", action="store_true",
                        help="one configuration per device class (the most shared memory)")
    parser.add_argument("--kernel", nargs="+", help="only these kernels (e.g. mmd_flash_kernel)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    jobs = (subset_jobs() if args.subset else representative_jobs() if args.representatives
            else shipped_jobs(args.arch))
    if args.kernel:
        jobs = [j for j in jobs if j.kernel in args.kernel]
    results = run(jobs, args.jobs)
    print(f"{'sm':>3} {'regs':>4} {'spill':>5} {'smem':>6} {'mma':>8}  kernel / configuration")
    bad = 0
    for job, res in results:
        if "error" in res:
            print(f"{job.arch:>3} {'ERR':>4} {'-':>5} {'-':>6} {'-':>8}  {job.label}: "
                  f"{res['error']}")
        else:
            print(f"{job.arch:>3} {res['registers']:>4} {res['spill_bytes']:>5} "
                  f"{res['shared_bytes']:>6} {res['mma']:>8}  {job.label}")
        bad += failed(job, res)
    print(f"{len(results)} configurations, {bad} failed (compile error, spills or shared memory "
          f"over {', '.join(f'sm_{a}: {v}' for a, v in SHARED_LIMIT.items())} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
