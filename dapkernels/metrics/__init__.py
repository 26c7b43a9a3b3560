"""Measuring domain shift: kernel two-sample tests, proxy A-distance, streaming shift states."""

from .pad import PADResult, proxy_a_distance
from .result import KernelResult, TestResult
from .shift_state import DomainShift
from .streaming import BlockStream, block_mmd_test, linear_mmd_test
from .two_sample import AGGREGATED_KERNELS, mmd_test

__all__ = [
    "mmd_test",
    "AGGREGATED_KERNELS",
    "TestResult",
    "KernelResult",
    "block_mmd_test",
    "linear_mmd_test",
    "BlockStream",
    "DomainShift",
    "proxy_a_distance",
    "PADResult",
]
