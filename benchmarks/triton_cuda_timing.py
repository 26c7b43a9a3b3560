"""GPU timings of the Triton MMD sweep against the bars of issue 4 (needs a CUDA device).

``python benchmarks/triton_cuda_timing.py OUT.json``:

* batch 32+32, d = 256, forward+backward: ``dk.mmd`` (Triton) vs the Transfer-Learning-Library
  pattern (``naive_mmd(pattern="tll")``);
* N = 65536, d = 256, forward+backward and forward only, vs the floor ``2 · t(Z Zᵀ)`` with
  torch.mm on the same Z in the same precision: TF32 (``set_float32_matmul_precision("high")``,
  our tl.dot in TF32) and float32 ("highest": cuBLAS SGEMM; our tl.dot in 3×TF32, float32-level
  error), plus float16.
Times are medians of CUDA-event-timed calls after warm-up.
"""

from __future__ import annotations

import json
import sys

import torch

import dapkernels as dk
from dapkernels.train.baselines.mmd import naive_mmd


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
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


def main(out: str) -> None:
    torch.manual_seed(0)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import triton
    res["triton"] = triton.__version__

    s = torch.randn(32, 256, device="cuda", requires_grad=True)
    t = (torch.randn(32, 256, device="cuda") + 0.5).requires_grad_()
    ours = median_ms(fwd_bwd(dk.mmd, s, t), 200, 20)
    tll = median_ms(fwd_bwd(lambda a, b: naive_mmd(a, b, pattern="tll"), s, t), 200, 20)
    res["small_32+32_d256_fwd_bwd_ms"] = {"ours": ours, "tll": tll, "speedup": tll / ours}
    print(res["small_32+32_d256_fwd_bwd_ms"], flush=True)

    n = 65536 // 2
    for label, dtype, prec in (("tf32", torch.float32, "high"), ("fp32", torch.float32, "highest"),
                               ("fp16", torch.float16, "high")):
        torch.set_float32_matmul_precision(prec)
        z = torch.randn(2 * n, 256, device="cuda", dtype=dtype)
        zs, zt = z[:n].clone().requires_grad_(), z[n:].clone().requires_grad_()
        mm = median_ms(lambda z=z: torch.mm(z, z.T), 5, 2)
        fb = median_ms(fwd_bwd(dk.mmd, zs, zt), 5, 1)
        with torch.no_grad():
            fo = median_ms(lambda a=zs, b=zt: dk.mmd(a, b), 5, 1)
        res[f"N65536_d256_{label}_ms"] = {
            "mm": mm, "floor_2mm": 2 * mm, "ours_fwd_bwd": fb, "ours_fwd": fo,
            "fwd_bwd_over_floor": fb / (2 * mm), "fwd_over_floor": fo / (2 * mm)}
        print(label, res[f"N65536_d256_{label}_ms"], flush=True)
        torch.cuda.empty_cache()
    with open(out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
