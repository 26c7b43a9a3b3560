"""Ahead-of-time compilation of every shipped Triton kernel configuration, without a GPU.

``python -m dapkernels.backends.triton.aot [--arch 80 90] [--subset] [--jobs J]`` compiles each
configuration with ``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget(
"cuda", cc, 32))`` (triton ships ptxas, so no GPU or CUDA toolkit is needed), prints registers,
spill bytes and shared memory per kernel and configuration, and exits with status 1 on a
compile error or any spill.  Registers and spills come from the ptxas log of that compile.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

#: torch dtype name → (packed compute dtype, gradient dtype) as Triton pointer types.
DTYPES = {
    "float32": ("fp32", "fp32"),
    "float64": ("fp32", "fp64"),
    "float16": ("fp16", "fp16"),
    "bfloat16": ("bf16", "bf16"),
}


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


def shipped_jobs(archs: list[int]) -> list[Job]:
    """Every configuration ``mmd_sweep`` can launch: dtypes × gradient groups × layer modes."""
    from .mmd import _PREP_BLOCK_R, CONFIGS, MAX_GROUP

    jobs = []
    for arch in archs:
        for dtype in DTYPES:
            half = dtype in ("float16", "bfloat16")
            precisions = ("tf32",) if half else ("tf32", "tf32x3")
            jobs.append(Job("prep_kernel", dtype, (("BLOCK_R", _PREP_BLOCK_R),
                                                   ("BLOCK_C", CONFIGS[(True, half)].BD)),
                            4, 3, arch))
            for has_grad in (True, False):
                cfg = CONFIGS[(has_grad, half)]
                for prec in precisions:
                    for one_layer in (True, False):
                        groups = [g for g in (32, 64, 128, 256)
                                  if cfg.BD <= g <= MAX_GROUP[one_layer]]
                        for dg in groups if has_grad else [cfg.BD]:
                            const = (("B_M", cfg.B_M), ("B_N", cfg.B_N), ("BD", cfg.BD),
                                     ("DG", dg), ("HAS_GRAD", has_grad),
                                     ("ONE_LAYER", one_layer), ("DOT_PREC", prec))
                            jobs.append(Job("sweep_kernel", dtype, const, cfg.num_warps,
                                            cfg.num_stages, arch))
    return jobs


def subset_jobs() -> list[Job]:
    """A representative few for the test suite: gradient at the widest group, both layer modes,
    half precision, the symmetric forward, the packing kernel; sm_80 and sm_90."""
    from .mmd import MAX_GROUP

    jobs = shipped_jobs([80, 90])
    pick = []
    for j in jobs:
        c = dict(j.constexprs)
        if j.kernel == "prep_kernel":
            keep = j.dtype == "float16" and j.arch == 80
        elif c["HAS_GRAD"]:
            widest = c["DG"] == MAX_GROUP[c["ONE_LAYER"]]
            keep = widest and c["DOT_PREC"] == "tf32" and (
                (j.dtype == "float32" and c["ONE_LAYER"] and j.arch == 90)
                or (j.dtype == "bfloat16" and not c["ONE_LAYER"] and j.arch == 80))
        else:
            keep = j.dtype == "float32" and c["DOT_PREC"] == "tf32x3" and c["ONE_LAYER"] \
                and j.arch == 90
        if keep:
            pick.append(j)
    return pick


def _signature(job: Job) -> dict[str, str]:
    packed, grad = DTYPES[job.dtype]
    const = {k: "constexpr" for k, _ in job.constexprs}
    if job.kernel == "prep_kernel":
        z_type = "*fp64" if job.dtype == "float64" else "*" + packed
        return {"z_ptr": z_type, "zp_ptr": "*" + packed,
                "sq_ptr": "*fp32", "stats_ptr": "*fp64", "N": "i32", "d": "i32",
                "stride_z": "i32", "stride_p": "i32", "col_off": "i32", "rows_per_prog": "i32",
                **const}
    return {"zp_ptr": "*" + packed, "sq_ptr": "*fp32", "stats_ptr": "*fp64", "layer_ptr": "*i32",
            "bank_ptr": "*fp32", "group_ptr": "*i32", "grad_ptr": "*" + grad, "sums_ptr": "*fp64",
            "N": "i32", "n": "i32", "L": "i32", "stride_p": "i32", "stride_g": "i32",
            "w_ss": "fp32", "w_st": "fp32", "w_tt": "fp32", **const}


def compile_job(job: Job) -> dict[str, object]:
    """Compiles one job; returns registers, spill bytes, shared memory (or the error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import mmd_kernels

    fn = getattr(mmd_kernels, job.kernel)
    sig = _signature(job)
    # Mirror the launcher's specialisation: pointers and the packed row stride are 16-aligned.
    aligned = [i for i, (name, ty) in enumerate(sig.items())
               if ty.startswith("*") or name in ("stride_p", "stride_g")]
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
    }


def run(jobs: list[Job], workers: int) -> list[tuple[Job, dict[str, object]]]:
    """Compiles ``jobs`` in ``workers`` processes; returns (job, result) in order."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if workers <= 1:
        return [(j, compile_job(j)) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(zip(jobs, pool.map(compile_job, jobs)))


def failed(result: dict[str, object]) -> bool:
    """A compile error, a spill, or a log without register counts is a failure."""
    return "error" in result or result["spill_bytes"] != 0 or result["registers"] < 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--subset", action="store_true", help="the test suite's subset")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    jobs = subset_jobs() if args.subset else shipped_jobs(args.arch)
    results = run(jobs, args.jobs)
    print(f"{'sm':>3} {'regs':>4} {'spill':>5} {'smem':>6}  kernel / configuration")
    bad = 0
    for job, res in results:
        if "error" in res:
            print(f"{job.arch:>3} {'ERR':>4} {'-':>5} {'-':>6}  {job.label}: {res['error']}")
        else:
            print(f"{job.arch:>3} {res['registers']:>4} {res['spill_bytes']:>5} "
                  f"{res['shared_bytes']:>6}  {job.label}")
        bad += failed(res)
    print(f"{len(results)} configurations, {bad} failed (compile error or spills)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
