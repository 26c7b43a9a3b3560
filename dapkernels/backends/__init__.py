"""Backend selection.

Every backend module exposes the same primitives (docs/design.md §Backend contract):

* ``mmd_sweep(sources, targets, factors, relative, weights, need_grad) -> (sums, grads)``
* ``coral_sweep(xs, xt, need_grad, path) -> (value, grads)``
* optionally ``mmd_loss(…, weights, const, out_dtype, need_grad)`` and ``coral_loss(…,
  out_dtype)`` ``-> (value, grads)``, the loss value itself in the caller's dtype (the ops
  layer forms it from the sweep for backends without them)

Choice, first match wins: the ``backend=`` argument of an op, the ``DAPKERNELS_BACKEND``
environment variable (read at import), then the device: CPU tensors use ``cpu`` (the C++
core), CUDA tensors use ``triton``.  A CUDA tensor never silently moves to the CPU: without
Triton the ops run the plain torch ``reference`` backend on the GPU and warn once.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from types import ModuleType

import torch

__all__ = ["BACKENDS", "resolve", "available", "get"]

BACKENDS = ("reference", "cpu", "triton")
#: ``DAPKERNELS_BACKEND``, read once when dapkernels is imported (reading the environment on
#: every call cost a visible share of a small batch's step: ``os.environ.get`` of an unset
#: name raises and catches two KeyErrors).
ENV_BACKEND = os.environ.get("DAPKERNELS_BACKEND") or None
_warned: set = set()
_loaded: dict = {}


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


@torch.compiler.assume_constant_result
def resolve(backend: str | None, device: torch.device) -> str:
    """Returns the backend name to use for tensors on ``device`` (cached per argument and
    device type).  Under ``torch.compile`` the answer is fixed when the graph is traced."""
    return _choose(backend if backend is not None else ENV_BACKEND, device.type)


@functools.lru_cache(maxsize=64)
def _choose(name: str | None, device_type: str) -> str:
    """:func:`resolve` once the requested name (or None) is known."""
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
        if name == "cpu" and device_type != "cpu":
            raise ValueError(f"backend 'cpu' runs on CPU tensors only, got a {device_type} tensor")
        return name
    if device_type == "cpu":
        if available("cpu"):
            return "cpu"
        _warn_once("cpu", "dapkernels._C is not built; using the slow reference backend on CPU")
        return "reference"
    if device_type == "cuda":
        if available("triton"):
            return "triton"
        _warn_once("triton", "triton is not installed; CUDA tensors use the reference backend")
        return "reference"
    return "reference"


def available(name: str) -> bool:
    """True when the backend's compiled dependencies import."""
    try:
        get(name)
    except ImportError:
        return False
    return True


def get(name: str) -> ModuleType:
    """Imports (once) and returns the backend module ``dapkernels.backends.<name>``."""
    module = _loaded.get(name)
    if module is None:
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
        module = _loaded[name] = importlib.import_module(f"dapkernels.backends.{name}")
    return module
