"""dapkernels: fused kernels and metrics for deep domain adaptation.

Public API (README "Use"): ``GaussianKernels``, ``mmd`` / ``MMDLoss``, ``jmmd`` / ``JMMDLoss``,
``coral`` / ``CORALLoss``, ``grad_reverse`` / ``GradientReversal`` /
``WarmStartGradientReversal``, ``DomainDiscriminator`` / ``DomainAdversarialLoss``,
``RunningCovariance``.
"""

from . import metrics
from ._version import __version__
from .adversarial import DomainAdversarialLoss, DomainDiscriminator
from .covariance import RunningCovariance
from .functional import coral, grad_reverse, jmmd, mmd
from .kernels import GaussianKernels
from .losses import (
    CORALLoss,
    GradientReversal,
    JMMDLoss,
    MMDLoss,
    WarmStartGradientReversal,
)

__all__ = [
    "GaussianKernels",
    "mmd",
    "jmmd",
    "MMDLoss",
    "JMMDLoss",
    "coral",
    "CORALLoss",
    "grad_reverse",
    "GradientReversal",
    "WarmStartGradientReversal",
    "DomainDiscriminator",
    "DomainAdversarialLoss",
    "RunningCovariance",
    "metrics",
    "__version__",
]
