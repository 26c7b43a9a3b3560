"""GPU timings of the Triton MMD / CORAL kernels against the bars of issue 4 (needs CUDA).

``python benchmarks/triton_cuda_timing.py OUT.json [--variants]``:

* batch 32+32, d = 256, MMD forward+backward: ``dk.mmd`` vs the Transfer-Learning-Library
  pattern (``naive_mmd(pattern="tll")``), plus the host time of one call (no GPU wait) and a
  torch.profiler table of the call;
* CORAL 32+32, d = 2048, forward+backward: ``dk.coral`` vs the naive d×d ``naive_coral``;
* N = 65536, d = 256, MMD forward+backward and forward only, vs the GEMM reference time
  ``2 · t(Z Zᵀ)`` (torch.mm on the same Z, same precision): TF32
  (``set_float32_matmul_precision("high")``, our tl.dot in TF32), float32 ("highest": cuBLAS
  SGEMM vs our 3×TF32) and float16.  With
  ``--variants`` every candidate ``mmd_flash_kernel`` launch configuration is timed as well (they
  override the device's ``mmd.FLASH_CONFIGS`` table for d = 256 in this process; the
  shipped entry may be absent, i.e. the call takes ``mmd_sweep_kernel``).
Times are medians of CUDA-event-timed calls after warm-up.
"""

from __future__ import annotations

import json
import sys
import time

import torch

import dapkernels as dk
from dapkernels.backends.triton import configs as tconfigs
from dapkernels.backends.triton import device as tdevice
from dapkernels.baselines import naive_coral, naive_mmd


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median over ``repeats`` CUDA-event-timed calls of ``fn``, in milliseconds."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def fwd_bwd(loss_fn, s, t):
    def call():
        s.grad = t.grad = None
        loss_fn(s, t).backward()
    return call


def host_us(fn, repeats: int = 200) -> float:
    """Mean host (CPU) time of one call in µs, without waiting for the GPU."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / repeats * 1e6


def small_cases(res: dict) -> None:
    s = torch.randn(32, 256, device="cuda", requires_grad=True)
    t = (torch.randn(32, 256, device="cuda") + 0.5).requires_grad_()
    ours_fn = fwd_bwd(dk.mmd, s, t)
    ours = median_ms(ours_fn, 200, 20)
    tll = median_ms(fwd_bwd(lambda a, b: naive_mmd(a, b, pattern="tll"), s, t), 200, 20)
    res["mmd_32+32_d256_fwd_bwd_ms"] = {"ours": ours, "tll": tll, "speedup": tll / ours,
                                        "ours_host_us": host_us(ours_fn)}
    print(res["mmd_32+32_d256_fwd_bwd_ms"], flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            ours_fn()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25), flush=True)

    xs = torch.randn(32, 2048, device="cuda", requires_grad=True)
    xt = (1.3 * torch.randn(32, 2048, device="cuda")).requires_grad_()
    ours = median_ms(fwd_bwd(dk.coral, xs, xt), 200, 20)
    naive = median_ms(fwd_bwd(naive_coral, xs, xt), 200, 20)
    res["coral_32+32_d2048_fwd_bwd_ms"] = {"ours": ours, "naive_dxd": naive,
                                           "speedup": naive / ours}
    print(res["coral_32+32_d2048_fwd_bwd_ms"], flush=True)


#: candidate mmd_flash_kernel launch configurations (B_M, B_N, num_warps, num_stages).
CANDIDATES = [(64, 32, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (64, 64, 8, 2),
              (128, 32, 8, 2)]


def large_cases(res: dict, variants: bool) -> None:
    n = 65536 // 2
    for label, dtype, prec in (("tf32", torch.float32, "high"), ("fp32", torch.float32, "highest"),
                               ("fp16", torch.float16, "high")):
        torch.set_float32_matmul_precision(prec)
        z = torch.randn(2 * n, 256, device="cuda", dtype=dtype)
        zs, zt = z[:n].clone().requires_grad_(), z[n:].clone().requires_grad_()
        mm = median_ms(lambda z=z: torch.mm(z, z.T), 5, 2)
        row = {"mm": mm, "ref_2mm": 2 * mm}
        half = dtype != torch.float32
        x3 = prec == "highest" and not half
        table = tconfigs.FLASH_CONFIGS[tdevice.target(z.device)]
        shipped = {g: table.get((g, half, x3, 256)) for g in (True, False)}
        for cand in CANDIDATES if variants else [None]:
            if cand is not None:
                bm, bn, w, st = cand
                for g in (True, False):
                    table[(g, half, x3, 256)] = tconfigs.SweepConfig(bm, bn, 256, w, st)
            name = "shipped" if cand is None else "x".join(map(str, cand))
            try:
                fb = median_ms(fwd_bwd(dk.mmd, zs, zt), 3, 1)
                with torch.no_grad():
                    fo = median_ms(lambda a=zs, b=zt: dk.mmd(a, b), 3, 1)
            except Exception as exc:  # a candidate that does not fit (shared memory) is reported
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
                continue
            row[name] = {"fwd_bwd": fb, "fwd": fo, "fwd_bwd_over_ref": fb / (2 * mm),
                         "fwd_over_ref": fo / (2 * mm)}
            print(label, name, row[name], flush=True)
        for g in (True, False):
            table.pop((g, half, x3, 256), None)
            if shipped[g] is not None:
                table[(g, half, x3, 256)] = shipped[g]
        res[f"mmd_N65536_d256_{label}_ms"] = row
        torch.cuda.empty_cache()


def main(argv: list[str]) -> None:
    torch.manual_seed(0)
    import triton

    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": triton.__version__}
    small_cases(res)
    large_cases(res, "--variants" in argv)
    with open(argv[0], "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
