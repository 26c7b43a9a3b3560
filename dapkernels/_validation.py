"""Input checks shared by the functional API: clear errors that name the offending argument."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_CPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)
#: MMD estimators accepted by ``dapkernels.mmd`` / ``jmmd`` and their modules.
ESTIMATORS = ("biased", "unbiased", "linear")


def as_features(x: object, name: str) -> torch.Tensor:
    """Checks a (batch, features…) tensor and flattens it to (batch, d)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(
            f"{name} must have shape (batch, features...), got a {len(shape)}-D tensor of shape "
            f"{tuple(shape)}"
        )
    if shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(shape)})")
    # is_cpu, not device.type: no device object per call (these checks run on every step)
    allowed = _CPU_DTYPES if x.is_cpu else _GPU_DTYPES
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} has dtype {x.dtype}; on {x.device.type} expected one of {names}")
    flat = x if len(shape) == 2 else x.reshape(shape[0], -1)
    if flat.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {tuple(shape)})")
    return flat


def cpu_compute_view(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 CPU features (e.g. from ``torch.autocast("cpu")``) as float32.

    The CPU kernels compute in float32 / float64 only; the cast is an autograd op, so the
    gradient flows back to ``x`` in its own dtype.  Other tensors are returned unchanged (the
    GPU kernels take half precision natively).
    """
    if x.dtype in _HALF and x.device.type == "cpu":
        return x.to(torch.float32)
    return x


def check_same_space(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Both tensors must live on one device, share a dtype and a feature dimension."""
    if not (a.is_cpu and b.is_cpu) and a.device != b.device:  # two CPU tensors: one device
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} has dtype {a.dtype} but {name_b} has dtype {b.dtype}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature dimensions differ: {name_a} has d={a.shape[1]}, {name_b} has d={b.shape[1]}"
        )


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raises if ``x`` holds NaN or ±Inf (one reduction; used by the reference backend)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def check_all_same_device(tensors: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    first = tensors[0]
    for t, nm in zip(tensors[1:], names[1:]):
        if t.device != first.device:
            raise ValueError(f"{nm} is on {t.device} but {names[0]} is on {first.device}")


def check_estimator(estimator: str, n: int, m: int) -> None:
    """Rejects an unknown MMD estimator name, or batch sizes it cannot use (n source rows, m
    target rows): ``"unbiased"`` needs n, m ≥ 2; ``"linear"`` needs n = m ≥ 2."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "unbiased" and min(n, m) < 2:
        raise ValueError(
            f"the unbiased estimator needs at least 2 samples per domain, got source batch {n} "
            f"and target batch {m}"
        )
    if estimator == "linear":
        if n != m:
            raise ValueError(
                f"the linear estimator pairs samples and needs equal batches, got source batch "
                f"{n} and target batch {m}"
            )
        if n < 2:
            raise ValueError(f"the linear estimator needs a batch of at least 2, got {n}")
