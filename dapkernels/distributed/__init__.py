"""Global-batch domain-adaptation losses over ``torch.distributed`` process groups.

``dk.mmd / dk.jmmd / dk.coral(..., process_group=group)`` (and the loss modules'
``process_group=`` argument) compute the estimator of the *concatenation* of every rank's
source and target rows, the same value on every rank, with bandwidths from the global batch.
Ranks may hold different numbers of rows.

Gradient convention: the backward hands each rank ``W · ∂L_global/∂(its own rows)`` (W = group
size).  DDP averages parameter gradients over ranks, so a W-rank DDP step equals a one-process
step on the concatenated batch.  No gradient crosses the network: the features are gathered
without autograd, each rank sweeps its own rows against all rows, and the gradient of its own
rows is exact.  See :mod:`.mmd` and :mod:`.coral` for the formulas.
"""

from .coral import global_coral
from .errors import DistributedInputError
from .gather import all_gather_rows, all_reduce_sum
from .mmd import global_mmd

__all__ = ["global_mmd", "global_coral", "all_gather_rows", "all_reduce_sum",
           "DistributedInputError"]
