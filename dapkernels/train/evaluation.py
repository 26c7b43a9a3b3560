"""Evaluation of a trained model: accuracies and the domain discrepancy of its features."""

from __future__ import annotations

import torch
from torch import nn

from .. import GaussianKernels, coral, mmd

__all__ = ["predict", "evaluate"]


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype, chunk: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, features)`` of ``x`` in eval mode, computed in chunks, returned on CPU."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    for start in range(0, x.shape[0], chunk):
        out, f = model(x[start : start + chunk].to(device=device, dtype=dtype))
        logits.append(out.cpu())
        feats.append(f.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(feats)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    if labels is None:
        return None
    return float((logits.argmax(dim=1) == labels).double().mean()) * 100.0


def evaluate(
    model: nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    xt: torch.Tensor,
    yt: torch.Tensor | None,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float | None]:
    """Source accuracy, target accuracy and feature discrepancy of the evaluation sets.

    The discrepancies are computed with dapkernels on the bottleneck features of the whole
    sets: the unbiased MK-MMD with the DAN bank (``σ² = 2^k · mean dist``, k = −3…1) and the
    Deep CORAL distance ``‖C_s − C_t‖²_F / (4d²)``.  Accuracies are percentages; the target
    accuracy is ``None`` without target labels.
    """
    logits_s, f_s = predict(model, xs, device, dtype)
    logits_t, f_t = predict(model, xt, device, dtype)
    f_s64, f_t64 = f_s.double(), f_t.double()
    return {
        "source_acc": _accuracy(logits_s, ys),
        "target_acc": _accuracy(logits_t, yt),
        "mmd": float(mmd(f_s64, f_t64, GaussianKernels(), estimator="unbiased")),
        "coral": float(coral(f_s64, f_t64)),
    }
