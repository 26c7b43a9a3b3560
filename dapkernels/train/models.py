"""Backbone → bottleneck → classifier, the model layout of the DAN / DANN / JAN recipes.

A backbone is any ``nn.Module`` with an ``out_features`` attribute that maps a batch to
(batch, out_features) features; bring your own or use :func:`build_backbone`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["MLPBackbone", "SmallCNN", "DAModel", "build_backbone", "BACKBONES"]

#: Backbone names accepted by :func:`build_backbone`; ``resnet*`` need torchvision.
BACKBONES = ("auto", "mlp", "identity", "cnn", "resnet18", "resnet50")


class MLPBackbone(nn.Module):
    """Fully connected ReLU layers for flat inputs (the moons toy, precomputed features)."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))


class IdentityBackbone(nn.Module):
    """Passes precomputed features through unchanged (flattened)."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.out_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class SmallCNN(nn.Module):
    """Two strided conv-BN-ReLU blocks and a 4×4 adaptive pool: ``2·width·16`` features.

    A 5×5 stride-2 convolution then a 3×3 stride-2 one (16×16 digits → 4×4 maps).  Small
    enough that a batch-32+32 step on digits costs a few milliseconds on a 2-core CPU, so the
    domain-adaptation loss is a visible part of the step, as it is with a large backbone on a
    GPU.
    """

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, stride=2, padding=2),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.out_features = 2 * width * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _TorchvisionBackbone(nn.Module):
    def __init__(self, net: nn.Module, out_features: int) -> None:
        super().__init__()
        self.net = net
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


def _torchvision_backbone(name: str, weights: str | None) -> nn.Module:
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(
            f"backbone {name!r} needs torchvision (pip install torchvision); the default "
            "backbone 'cnn' does not"
        ) from exc
    net = getattr(torchvision.models, name)(weights=None)
    if weights is not None:
        net.load_state_dict(torch.load(Path(weights), map_location="cpu", weights_only=True))
    out_features = net.fc.in_features
    net.fc = nn.Identity()
    return _TorchvisionBackbone(net, out_features)


def build_backbone(
    name: str, input_shape: tuple[int, ...], weights: str | None = None
) -> nn.Module:
    """Backbone for inputs of shape ``input_shape`` (one sample).

    Args:
        name: ``auto`` (``cnn`` for C×H×W images, ``mlp`` for flat inputs of ≤ 16 features,
            ``identity`` for wider precomputed features), ``mlp``, ``identity``, ``cnn``, or a
            torchvision ResNet (``resnet18``, ``resnet50``; needs torchvision, never
            downloads: pass a local ``weights`` state-dict file or train from scratch).
        input_shape: shape of one sample.
        weights: local state-dict file for a torchvision backbone.
    """
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    if weights is not None and not name.startswith("resnet"):
        raise ValueError("--backbone-weights applies to torchvision backbones only")
    if name == "auto":
        if len(input_shape) == 3:
            name = "cnn"
        else:
            name = "mlp" if input_shape[0] <= 16 else "identity"
    flat = 1
    for s in input_shape:
        flat *= s
    if name == "mlp":
        return MLPBackbone(flat)
    if name == "identity":
        return IdentityBackbone(flat)
    if len(input_shape) != 3:
        raise ValueError(f"backbone {name!r} needs C×H×W images, got sample shape {input_shape}")
    if name == "cnn":
        return SmallCNN(input_shape[0])
    return _torchvision_backbone(name, weights)


class DAModel(nn.Module):
    """``backbone → bottleneck (Linear, BatchNorm1d, ReLU) → linear classifier``.

    ``forward`` returns ``(logits, features)``; the adaptation losses act on the bottleneck
    features (and, for JAN, on the softmax of the logits).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, bottleneck_dim: int = 256) -> None:
        super().__init__()
        if not hasattr(backbone, "out_features"):
            raise TypeError("backbone must expose an out_features attribute")
        self.backbone = backbone
        self.bottleneck = nn.Sequential(
            nn.Linear(backbone.out_features, bottleneck_dim),
            nn.BatchNorm1d(bottleneck_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(bottleneck_dim, num_classes)
        self.features_dim = bottleneck_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.bottleneck(self.backbone(x))
        return self.head(f), f
