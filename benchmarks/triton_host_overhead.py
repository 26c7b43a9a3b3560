"""Host (Python) time of the Triton backend's small-batch MMD path, without a GPU.

``python benchmarks/triton_host_overhead.py [--repeats R]`` replaces the four MMD kernels with
a no-op launcher and times, on CPU tensors (32 + 32 rows, d = 256, float32):

* ``backend``: ``backends.triton.mmd_loss`` with the gradient, the entry the op uses (the work
  this package's Triton host code does per call: route, cached plan lookup, output allocation);
* ``op fwd+bwd``: ``dk.mmd(..., backend="triton")`` forward and backward (adds the autograd /
  ops layer, which is not part of the Triton backend).

It also lists the aten ops one ``dk.mmd`` forward+backward dispatches besides the kernel launch
(views excluded): on a GPU each op that touches memory is one more launch.

It measures everything but the launch itself: ``JITFunction.run`` (argument binding,
specialisation key, kernel cache lookup, driver launch) needs a GPU and is measured by
``benchmarks/triton_cuda_timing.py`` (``ours_host_us``).  Best of R rounds of 200 calls, µs
(the minimum: on a shared machine the median mostly measures the other load).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dapkernels as dk
from dapkernels.backends.triton import mmd as tmmd
from dapkernels.backends.triton import mmd_kernels


class _NoLaunch:
    """Stands in for a ``triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _per_call_us(fn, repeats: int, calls: int = 200) -> float:
    for _ in range(20):
        fn()
    rounds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return min(rounds)


class _Ops(TorchDispatchMode):
    """Names of the aten ops dispatched in the block, views left out."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for name in ("mmd_small_kernel", "mmd_flash_kernel", "mmd_prep_kernel", "mmd_sweep_kernel",
                 "mmd_wide_kernel", "mmd_finish_kernel"):
        setattr(mmd_kernels, name, _NoLaunch())
    torch.manual_seed(0)
    s = torch.randn(32, 256, requires_grad=True)
    t = torch.randn(32, 256, requires_grad=True)
    sd, td = s.detach(), t.detach()
    factors = [tuple(2.0**i for i in range(-3, 2))]

    def backend():
        tmmd.mmd_loss([sd], [td], factors, [True], (1 / 32**2, -1 / 32**2, 1 / 32**2), 0.0,
                      torch.float32, True)

    def op():
        s.grad = t.grad = None
        dk.mmd(s, t, backend="triton").backward()

    print(f"backend mmd_loss (N=64, d=256, grad):  {_per_call_us(backend, args.repeats):7.1f} µs")
    print(f"dk.mmd fwd+bwd, backend='triton':       {_per_call_us(op, args.repeats):7.1f} µs")
    with _Ops() as ops:
        op()
    print(f"aten ops in one fwd+bwd besides the launch: {len(ops.names)} ({', '.join(ops.names)})")


if __name__ == "__main__":
    main()
