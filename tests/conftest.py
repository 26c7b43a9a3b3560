"""Suite-wide set-up.

Without a CUDA device the Triton kernels run in Triton's interpreter on CPU tensors.  Triton
reads ``TRITON_INTERPRET`` when it (and each kernel) is first imported, so it is set here,
before any test module imports triton; on a GPU machine the same tests run compiled kernels on
CUDA tensors instead.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
