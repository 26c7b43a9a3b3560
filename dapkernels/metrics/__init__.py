"""Measuring domain shift: kernel two-sample tests, proxy A-distance, streaming shift states."""

from .result import KernelResult, TestResult

__all__ = ["TestResult", "KernelResult"]
