"""dapkernels: fused kernels and metrics for deep domain adaptation.

Public API (see DESIGN §2): ``GaussianKernels``, ``mmd`` / ``MMDLoss``, ``jmmd`` / ``JMMDLoss``.
"""

from .functional import jmmd, mmd
from .kernels import GaussianKernels
from .losses import JMMDLoss, MMDLoss

__version__ = "0.1.0"

__all__ = ["GaussianKernels", "mmd", "jmmd", "MMDLoss", "JMMDLoss", "__version__"]
