"""pytest-benchmark suite: fused MK-MMD (ours) vs the naive baselines, forward + backward.

Not part of the CI test command (``pyproject`` sets ``testpaths = ["tests"]``).  Run it with::

    pip install -e ".[test]"
    python -m pytest benchmarks/ --benchmark-only --benchmark-group-by=group

Cases: unbiased estimator, default bank, float32 on CPU, batch ``b`` per domain and ``d``
features, for ours (:func:`dapkernels.mmd`) and the baselines of
:mod:`dapkernels.baselines` — ``tll`` (a), ``deepda`` (b), ``torch`` (c).  A baseline
whose estimated memory exceeds 4 GiB is skipped.  The full comparison with memory, the GEMM
GEMM reference time, JSON and a plot is ``dapkernels bench mmd`` (see :mod:`dapkernels.bench.mmd`).
"""

from __future__ import annotations

import pytest
import torch

import dapkernels as dk
from dapkernels.baselines import naive_mmd
from dapkernels.bench.mmd import IMPLS, estimate_bytes

SIZES = [(32, 256), (128, 256), (512, 256), (32, 2048), (128, 2048)]
KERNELS = dk.GaussianKernels()
MAX_BYTES = 4 * 1024**3


def _loss(impl: str):
    if impl == "ours":
        return lambda s, t: dk.mmd(s, t, kernels=KERNELS, estimator="unbiased")
    return lambda s, t: naive_mmd(s, t, KERNELS, "unbiased", pattern=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("b", "d"), SIZES, ids=[f"b{b}-d{d}" for b, d in SIZES])
def test_mmd_forward_backward(benchmark, fwd_bwd, impl: str, b: int, d: int) -> None:
    if estimate_bytes(impl, 2 * b, d, torch.device("cpu")) > MAX_BYTES:
        pytest.skip(f"{impl} at b={b} d={d} needs more than 4 GiB")
    benchmark.group = f"mmd b={b} d={d}"
    step = fwd_bwd(_loss(impl), b, b, d)
    step()  # warm-up (and TLL's index matrix)
    benchmark.pedantic(step, rounds=5 if impl in ("tll", "deepda") and b >= 128 else 20,
                       warmup_rounds=1)
