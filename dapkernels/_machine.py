"""Facts about the machine a result was measured on, shared by every report that records them
(``dapkernels bench``, ``dapkernels shift``): the CPU model and the C++ core's instruction set."""

from __future__ import annotations

import os
import platform

__all__ = ["cpu_model", "core_info"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def core_info() -> dict:
    """Instruction-set copy the C++ core dispatches to (``core_isa``), its ``DAPKERNELS_ISA``
    cap (``isa_cap``) and whether it was built with OpenMP (``core_openmp``); None when the
    core is not built."""
    info = {"isa_cap": os.environ.get("DAPKERNELS_ISA") or None}
    try:
        from . import _C
    except ImportError:
        return {**info, "core_isa": None, "core_openmp": None}
    return {**info, "core_isa": _C.isa, "core_openmp": bool(_C.openmp)}
