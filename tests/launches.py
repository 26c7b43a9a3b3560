"""Counting what a backend call asks of the device: kernel launches and other aten ops.

On a GPU every aten op that touches memory (a copy, a memset, a dot, a dtype conversion) is a
kernel launch, so at small batches the count is the cost.  ``record_launches`` swaps the named
``triton.jit`` kernels of a module for recorders that still run them, and records the aten ops
dispatched outside those launches (the interpreter's own tensor work is not counted).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

from torch.utils._python_dispatch import TorchDispatchMode


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


class _Launches:
    """``launches`` (kernel names in call order) and ``ops`` (aten op names) of one block."""

    def __init__(self) -> None:
        self.launches: list[str] = []
        self.ops: list[str] = []


class _RecordingKernel:
    def __init__(self, kernel, name: str, record: _Launches, recorder: _OpRecorder) -> None:
        self.kernel, self.name, self.record, self.recorder = kernel, name, record, recorder

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.record.launches.append(self.name)
            self.recorder.paused = True
            try:
                self.kernel[grid](*args, **kwargs)
            finally:
                self.recorder.paused = False
        return launch


@contextlib.contextmanager
def record_launches(monkeypatch, module: ModuleType, names: list[str]) -> Iterator[_Launches]:
    """Within the block, launches of ``module.<name>`` and other aten ops are recorded."""
    record, recorder = _Launches(), _OpRecorder()
    for name in names:
        monkeypatch.setattr(module, name,
                            _RecordingKernel(getattr(module, name), name, record, recorder))
    record.ops = recorder.ops  # the same list: read it inside the block for the ops so far
    with recorder:
        yield record
