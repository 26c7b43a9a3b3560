"""Peak memory growth of one call, and the memory a run may use.

* CPU: freed heap is first handed back to the OS with glibc ``malloc_trim(0)`` (so memory that
  malloc cached from earlier calls can neither hide nor inflate the growth), the peak resident
  set size ``VmHWM`` is reset by writing ``5`` to ``/proc/self/clear_refs``, and growth =
  ``VmHWM`` after the call − ``VmRSS`` before it.  Where ``clear_refs`` is not writable,
  ``resource.getrusage().ru_maxrss`` gives a lower bound (the method says so).
* CUDA: ``torch.cuda.reset_peak_memory_stats``; growth = ``max_memory_allocated`` −
  ``memory_allocated`` before the call (the caching allocator's view).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import resource
from collections.abc import Callable

import torch

from .timing import timed_call

__all__ = ["GiB", "MiB", "measure_peak_growth", "available_memory_bytes", "reset_peak_rss"]

GiB = 1024**3
MiB = 1024**2


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def reset_peak_rss() -> bool:
    """Resets the process's peak resident set (``VmHWM``); False where /proc does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_peak_growth(fn: Callable[[], object], device: torch.device) -> tuple:
    """Runs ``fn`` once and returns ``(peak_growth_bytes, method, seconds)``.

    The method on each device: this module's docstring.  Call it after a warm-up call so
    that one-time initialisation (thread pools, lazy imports) is not counted.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        seconds = timed_call(fn, device)
        peak = torch.cuda.max_memory_allocated(device)
        return max(0, peak - base), "cuda max_memory_allocated", seconds
    _malloc_trim()
    rss = _status_kib("VmRSS")
    if reset_peak_rss():
        seconds = timed_call(fn, device)
        return max(0, _status_kib("VmHWM") - rss) * 1024, "VmHWM (clear_refs)", seconds
    seconds = timed_call(fn, device)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, maxrss - rss) * 1024, "ru_maxrss (lower bound)", seconds


def available_memory_bytes(device: torch.device) -> int:
    """Memory a case may use now: ``MemAvailable`` (CPU) or free device memory (CUDA)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
