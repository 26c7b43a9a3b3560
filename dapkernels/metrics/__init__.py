"""Measuring domain shift: kernel two-sample tests, proxy A-distance, streaming shift states."""

from .result import KernelResult, TestResult
from .two_sample import AGGREGATED_KERNELS, mmd_test

__all__ = ["TestResult", "KernelResult", "mmd_test", "AGGREGATED_KERNELS"]
