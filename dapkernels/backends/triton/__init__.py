"""Triton backend: fused GPU kernels with the contract of ``backends.reference``.

Modules by job: ``mmd_kernels`` / ``coral_kernels`` (the kernels), ``configs`` (every launch
configuration, also read by ``aot``), ``device`` (table selection, device guard, precision,
determinism), ``mmd_caches`` (device tables), ``launchers`` (cached direct launchers of the
one-launch routes), ``mmd`` / ``coral`` (routes and entry points), ``quadratic_forms`` (the
two-sample test's engine), ``aot`` (ahead-of-time compile checks); the routes:
docs/design.md §Routes.

Importing it raises ImportError when triton is missing, which ``backends.available`` turns
into the reference fallback (with a warning) for CUDA tensors.  Under ``TRITON_INTERPRET=1``
(set before this package is first imported) the same kernels run on CPU tensors.
"""

from __future__ import annotations

import triton  # noqa: F401  (ImportError here marks the backend unavailable)

from .coral import coral_loss, coral_sweep
from .mmd import mmd_loss, mmd_sweep

__all__ = ["coral_loss", "coral_sweep", "mmd_loss", "mmd_sweep"]
