"""Every private torch API the package touches, each behind a fallback that uses public API.

Why pyproject pins torch from above (``torch>=2.4,<=2.13.0``): private names move or vanish
between releases without notice.  Each one below has been checked on the releases in that
range, and each has a fallback (tested in ``tests/test_torch_private.py``) so that a newer
torch that drops one keeps working, only slower or with a plainer message; raise the upper
pin once the suite passes on the new release.

* ``torch._C._are_functorch_transforms_active``: whether a ``torch.func`` transform is
  active.  Fallback: report one as active, so callers take their transform-safe path.
* ``torch._C._functorch.unwrap_if_dead``: what ``autograd.Function.apply`` does to its
  arguments before the C-level apply (``ops/_autograd.py``).  Fallback: ``None``, and callers
  use the public ``Function.apply``.
* ``torch._C._alert_not_deterministic`` (older releases) / ``torch._prims_common.
  alert_not_deterministic`` (2.13): torch's own error or warning for a nondeterministic
  kernel under ``torch.use_deterministic_algorithms(True)``.  Fallback: the same
  RuntimeError / warning built from the public ``torch.is_deterministic_algorithms_*``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

__all__ = ["functorch_active", "unwrap_if_dead", "alert_not_deterministic"]


def _transforms_active_fallback() -> bool:
    return True


#: ``() -> bool``: True under a ``torch.func`` transform (always True where torch lacks it).
functorch_active: Callable[[], bool] = (
    getattr(torch._C, "_are_functorch_transforms_active", None) or _transforms_active_fallback
)

#: ``(tensor) -> tensor`` that unwraps a dead functorch wrapper, or None where torch lacks it.
unwrap_if_dead: Callable[[torch.Tensor], torch.Tensor] | None = getattr(
    getattr(torch._C, "_functorch", None), "unwrap_if_dead", None
)


def _alert_fallback(caller: str) -> None:
    message = (f"{caller} does not have a deterministic implementation, but you set "
               f"'torch.use_deterministic_algorithms(True)'")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, UserWarning, stacklevel=3)
    else:
        raise RuntimeError(message)


def _find_alert() -> Callable[[str], None]:
    alert = getattr(torch._C, "_alert_not_deterministic", None)
    if alert is not None:
        return alert
    try:
        from torch._prims_common import alert_not_deterministic
    except ImportError:
        return _alert_fallback
    return alert_not_deterministic


def alert_not_deterministic(caller: str) -> None:
    """torch's RuntimeError (a warning with ``warn_only=True``) naming ``caller``; call it only
    when deterministic algorithms are enabled."""
    _find_alert()(caller)
