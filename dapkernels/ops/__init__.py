"""torch.library custom ops with fake implementations and autograd, one file per op family.

Eager calls go through a lean ``torch.autograd.Function`` (a custom-op round trip costs
~150 µs, more than the whole fused kernel at batch 32); under ``torch.compile`` the same
computation is reached through the registered custom op, so graphs never break.  Names:
docs/design.md §Layers and naming.
"""

__all__ = ["coral", "grl", "mmd"]  # the op families, one module each
