"""Offline domain-adaptation datasets: everything is generated or read from local files.

Every loader returns a :class:`DomainData`: labelled source samples, unlabelled target samples
for training, and a labelled held-out target test split.  Names understood by
:func:`load_dataset`:

* ``moons`` — the DANN paper's toy: two inter-twinning moons; the target is the same
  distribution rotated by 35° about the centre of the data.
* ``digits-rotate`` — scikit-learn's bundled 8×8 digits upsampled to 16×16; the target
  digits are rotated by 40°.
* ``digits-scale`` — the target digits are shrunk to 60 % of their size (zoomed out about the
  centre) with additive Gaussian noise (σ = 0.1), clipped to [0, 1].
* ``npz:PATH`` — precomputed features: arrays ``Xs``, ``ys``, ``Xt`` and optionally ``yt``
  (without ``yt`` the target accuracy is not available).  The target test split is ``Xt``
  itself (the transductive protocol of Office-31 / Office-Home feature benchmarks).
* ``folder:SRC_DIR:TGT_DIR`` — ImageFolder layout (``DIR/<class>/<image>``) read with
  Pillow and resized to ``image_size``; class names come from the source directory and the
  target test split is the target directory (transductive protocol).

For the embedded datasets the source, target-train and target-test samples are disjoint
draws (for digits: disjoint images of the bundled set; for moons: independent samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DomainData", "load_dataset", "EMBEDDED_DATASETS", "DIGITS_SHIFTS"]

#: Digits shifts built into the package (from ``sklearn.datasets.load_digits``).
DIGITS_SHIFTS = ("digits-rotate", "digits-scale")
#: Every embedded dataset name.
EMBEDDED_DATASETS = ("moons",) + DIGITS_SHIFTS

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class DomainData:
    """Tensors of one source → target task.

    Attributes:
        name: dataset name as given to :func:`load_dataset`.
        xs, ys: labelled source samples, (n_s, …) float32 and (n_s,) int64.
        xt: unlabelled target samples used for training, (n_t, …).
        xt_test, yt_test: held-out labelled target test split; ``yt_test`` is ``None`` when the
            target labels are unknown (``npz`` without ``yt``).
        num_classes: number of classes.
        kind: ``"vector"`` (flat features) or ``"image"`` (C×H×W tensors).
        splits: for the digits shifts, the indices into ``sklearn.datasets.load_digits`` of
            the ``source``, ``target`` and ``test`` samples (disjoint).
    """

    name: str
    xs: torch.Tensor
    ys: torch.Tensor
    xt: torch.Tensor
    xt_test: torch.Tensor
    yt_test: torch.Tensor | None
    num_classes: int
    kind: str
    splits: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.xs.shape[1:])


def load_dataset(name: str, image_size: int = 32, data_seed: int = 0) -> DomainData:
    """Builds or reads the dataset ``name`` (see the module docstring for the names).

    Args:
        name: ``moons``, ``digits-rotate``, ``digits-scale``, ``npz:PATH`` or
            ``folder:SRC_DIR:TGT_DIR``.
        image_size: side length images are resized to (``folder:`` only).
        data_seed: seed of the sample draws and splits of the embedded datasets; fixed by
            default so that training seeds vary only the training, not the data.
    """
    if name == "moons":
        return _moons(data_seed)
    if name in DIGITS_SHIFTS:
        return _digits(name, data_seed)
    if name.startswith("npz:"):
        return _npz(name, Path(name[4:]))
    if name.startswith("folder:"):
        parts = name[7:].split(":")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"expected folder:SRC_DIR:TGT_DIR, got {name!r}")
        return _folders(name, Path(parts[0]), Path(parts[1]), image_size)
    raise ValueError(
        f"unknown dataset {name!r}; expected one of {EMBEDDED_DATASETS}, npz:PATH or "
        "folder:SRC_DIR:TGT_DIR"
    )


def _rotate_points(x: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (x - centre) @ rot.T + centre


def _moons(data_seed: int, n: int = 1000, angle: float = 35.0) -> DomainData:
    from sklearn.datasets import make_moons

    xs, ys = make_moons(n, noise=0.1, random_state=data_seed)
    xt, _ = make_moons(n, noise=0.1, random_state=data_seed + 1)
    xt_test, yt_test = make_moons(n, noise=0.1, random_state=data_seed + 2)
    centre = np.array([0.5, 0.25])
    return DomainData(
        name="moons",
        xs=torch.tensor(xs, dtype=torch.float32),
        ys=torch.tensor(ys, dtype=torch.int64),
        xt=torch.tensor(_rotate_points(xt, angle, centre), dtype=torch.float32),
        xt_test=torch.tensor(_rotate_points(xt_test, angle, centre), dtype=torch.float32),
        yt_test=torch.tensor(yt_test, dtype=torch.int64),
        num_classes=2,
        kind="vector",
    )


def _warp_images(x: torch.Tensor, matrix: list) -> torch.Tensor:
    """Bilinear resampling of (n, C, H, W) images at ``matrix @ (u, v)`` (output → input)."""
    theta = torch.tensor(
        [[matrix[0][0], matrix[0][1], 0.0], [matrix[1][0], matrix[1][1], 0.0]], dtype=x.dtype
    ).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _digits_shift(name: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if name == "digits-rotate":
        a = math.radians(40.0)
        return _warp_images(x, [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    small = _warp_images(x, [[1.0 / 0.6, 0.0], [0.0, 1.0 / 0.6]])
    return (small + 0.1 * torch.randn(x.shape, generator=gen)).clamp_(0.0, 1.0)


def _digits(name: str, data_seed: int) -> DomainData:
    """Disjoint thirds-ish split of the bundled digits: 50 % source, 25 % target, 25 % test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(data_seed)
    perm = torch.randperm(len(labels), generator=gen)
    n_src = len(perm) // 2
    n_tgt = (len(perm) - n_src) // 2
    src, tgt, test = perm[:n_src], perm[n_src : n_src + n_tgt], perm[n_src + n_tgt :]
    return DomainData(
        name=name,
        xs=images[src],
        ys=labels[src],
        xt=_digits_shift(name, images[tgt], gen),
        xt_test=_digits_shift(name, images[test], gen),
        yt_test=labels[test],
        num_classes=10,
        kind="image",
        splits={"source": src, "target": tgt, "test": test},
    )


def _npz(name: str, path: Path) -> DomainData:
    if not path.is_file():
        raise FileNotFoundError(f"npz dataset {str(path)!r} does not exist")
    with np.load(path) as arrays:
        missing = [k for k in ("Xs", "ys", "Xt") if k not in arrays]
        if missing:
            raise ValueError(f"{path} lacks arrays {missing}; expected Xs, ys, Xt[, yt]")
        xs = torch.tensor(arrays["Xs"], dtype=torch.float32)
        ys = torch.tensor(arrays["ys"], dtype=torch.int64)
        xt = torch.tensor(arrays["Xt"], dtype=torch.float32)
        yt = torch.tensor(arrays["yt"], dtype=torch.int64) if "yt" in arrays else None
    xs, xt = xs.reshape(xs.shape[0], -1), xt.reshape(xt.shape[0], -1)
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"Xs has {xs.shape[1]} features but Xt has {xt.shape[1]}")
    if ys.shape != (xs.shape[0],):
        raise ValueError(f"ys must have shape ({xs.shape[0]},), got {tuple(ys.shape)}")
    if yt is not None and yt.shape != (xt.shape[0],):
        raise ValueError(f"yt must have shape ({xt.shape[0]},), got {tuple(yt.shape)}")
    num_classes = int(ys.max()) + 1 if yt is None else int(max(ys.max(), yt.max())) + 1
    return DomainData(name, xs, ys, xt, xt, yt, num_classes, "vector")


def _image_files(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in _IMAGE_EXTS:
                files.append(f)
                labels.append(label)
    if not files:
        raise ValueError(f"no images found under {root} (expected {root}/<class>/<image>)")
    return files, labels


def _load_images(files: list[Path], size: int) -> torch.Tensor:
    from PIL import Image

    out = torch.empty(len(files), 3, size, size)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
        out[i] = torch.from_numpy(arr).permute(2, 0, 1)
    return out


def _folders(name: str, src: Path, tgt: Path, size: int) -> DomainData:
    for d in (src, tgt):
        if not d.is_dir():
            raise FileNotFoundError(f"image folder {str(d)!r} does not exist")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{src} has no class sub-directories")
    extra = sorted(p.name for p in tgt.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise ValueError(f"target classes {extra} do not exist in the source folder {src}")
    src_files, src_labels = _image_files(src, classes)
    tgt_files, tgt_labels = _image_files(tgt, classes)
    xt = _load_images(tgt_files, size)
    return DomainData(
        name=name,
        xs=_load_images(src_files, size),
        ys=torch.tensor(src_labels, dtype=torch.int64),
        xt=xt,
        xt_test=xt,
        yt_test=torch.tensor(tgt_labels, dtype=torch.int64),
        num_classes=len(classes),
        kind="image",
    )
