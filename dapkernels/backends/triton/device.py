"""Facts about the device a Triton call runs on, shared by the MMD and CORAL hosts.

Which configuration table applies (:func:`target`, from the device's real limits), how many
multiprocessors share the work, which ``tl.dot`` precision float32 inputs get, the device guard
of every entry point (:func:`on_device`), and the determinism policy of routes that add floats
by atomics (docs/design.md §Routes).
"""

from __future__ import annotations

import contextlib

import torch

from ..._torch_private import alert_not_deterministic
from .configs import COMPUTE_DTYPE, select_table

__all__ = ["target", "multiprocessors", "dot_precision", "deterministic", "alert_atomic",
           "unit_cols", "on_device", "is_cuda"]

_TARGET: dict[torch.device, str] = {}


def target(device: torch.device) -> str:
    """Config table of ``device`` (``configs.select_table`` of its opt-in shared memory per
    block, compute capability and multiprocessor count); cached per device.

    CPU tensors (``TRITON_INTERPRET=1``) use "227KB", whose routes launch ``mmd_small_kernel``
    in every mode; the tests switch a device to the other tables to run their routes.
    """
    hit = _TARGET.get(device)
    if hit is None:
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            hit = select_table(props.shared_memory_per_block_optin, (props.major, props.minor),
                               props.multi_processor_count)
        else:
            hit = "227KB"
        _TARGET[device] = hit
    return hit


def is_cuda(device: torch.device) -> bool:
    """Whether launches on ``device`` need a CUDA device guard (the tests stand a CPU tensor
    in for a second GPU by replacing this)."""
    return device.type == "cuda"


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """The device guard of every backend entry: ``torch.cuda.device(device)`` for CUDA tensors
    (Triton launches on the current device and its current stream, so a tensor on cuda:1 while
    cuda:0 is current would otherwise be read by a kernel of the wrong context), nothing for
    CPU tensors under the interpreter."""
    return torch.cuda.device(device) if is_cuda(device) else contextlib.nullcontext()


_SMS: dict[torch.device, int] = {}


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (4 for CPU tensors under the interpreter, so the
    tests exercise several column splits); cached."""
    hit = _SMS.get(device)
    if hit is None:
        hit = _SMS[device] = (torch.cuda.get_device_properties(device).multi_processor_count
                              if device.type == "cuda" else 4)
    return hit


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: float32 follows ``torch.get_float32_matmul_precision()``.

    "highest" → "tf32x3" (three TF32 products, float32-level error), otherwise "tf32";
    half-precision inputs multiply natively (the argument is ignored for them).
    """
    if COMPUTE_DTYPE[dtype] != torch.float32:
        return "tf32"
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def deterministic() -> bool:
    """``torch.are_deterministic_algorithms_enabled()`` (read once per call of a route)."""
    return torch.are_deterministic_algorithms_enabled()


def alert_atomic(route: str, programs: int) -> None:
    """Before launching a route whose float atomics are added by ``programs`` programs: with
    ``torch.use_deterministic_algorithms(True)`` this raises RuntimeError (a warning with
    ``warn_only=True``), as torch does for its own nondeterministic kernels.  A single program
    adds each value once onto zeros, which is exact, so it runs."""
    if programs > 1 and deterministic():
        alert_not_deterministic(route)


def unit_cols(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself (kernels read raw pointers: no detach needed), or a copy when its columns
    are not adjacent in memory."""
    return x if x.stride(1) == 1 else x.detach().contiguous()
