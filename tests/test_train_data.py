"""Datasets of the reference trainers: shapes, disjoint splits, npz and folder loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dapkernels.train.datasets import DIGITS_SHIFTS, load_dataset
from dapkernels.train.sampler import BatchStream


@pytest.mark.parametrize("name", DIGITS_SHIFTS)
def test_digits_shift_shapes_and_disjoint_splits(name):
    from sklearn.datasets import load_digits

    data = load_dataset(name)
    assert data.kind == "image" and data.num_classes == 10
    assert data.xs.shape[1:] == data.xt.shape[1:] == data.xt_test.shape[1:] == (1, 16, 16)
    src, tgt, test = data.splits["source"], data.splits["target"], data.splits["test"]
    assert len(src) == data.xs.shape[0] and len(tgt) == data.xt.shape[0]
    assert len(test) == data.xt_test.shape[0] == data.yt_test.shape[0]
    everything = torch.cat([src, tgt, test])
    assert len(everything) == 1797 and len(set(everything.tolist())) == 1797  # disjoint
    raw = load_digits()
    assert torch.equal(data.ys, torch.tensor(raw.target)[src])
    assert torch.equal(data.yt_test, torch.tensor(raw.target)[test])
    up = torch.nn.functional.interpolate(
        torch.tensor(raw.images, dtype=torch.float32)[:, None] / 16.0, size=(16, 16),
        mode="bilinear", align_corners=False)
    assert torch.equal(data.xs, up[src])  # the source is untouched
    # the target is shifted: far from its own originals, and from every source image
    assert (data.xt - up[tgt]).flatten(1).norm(dim=1).mean() > 1.0
    assert torch.cdist(data.xt.flatten(1), data.xs.flatten(1)).min() > 1e-3
    assert 0.0 <= float(data.xt.min()) and float(data.xt.max()) <= 1.0


def test_moons_is_rotated_and_balanced():
    data = load_dataset("moons")
    assert data.xs.shape == data.xt.shape == data.xt_test.shape == (1000, 2)
    assert data.num_classes == 2 and data.ys.float().mean() == 0.5
    assert not torch.equal(data.xt, data.xt_test)
    # the rotation moves the target's principal direction
    def angle(x):
        u = torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[0]
        return torch.atan2(u[1], u[0]).rad2deg().remainder(180.0)
    assert abs(float(angle(data.xt) - angle(data.xs))) > 10.0


def test_npz_loader(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "feat.npz"
    np.savez(path, Xs=rng.normal(size=(20, 7)), ys=rng.integers(0, 3, 20),
             Xt=rng.normal(size=(12, 7)), yt=rng.integers(0, 3, 12))
    data = load_dataset(f"npz:{path}")
    assert data.xs.shape == (20, 7) and data.xt.shape == (12, 7) and data.kind == "vector"
    assert data.xs.dtype == torch.float32 and data.yt_test.shape == (12,)
    np.savez(path, Xs=rng.normal(size=(20, 7)), ys=rng.integers(0, 3, 20),
             Xt=rng.normal(size=(12, 7)))
    assert load_dataset(f"npz:{path}").yt_test is None
    np.savez(path, Xs=rng.normal(size=(20, 7)), ys=rng.integers(0, 3, 20))
    with pytest.raises(ValueError, match="Xt"):
        load_dataset(f"npz:{path}")


def _write_folder(root, classes, per_class, colour):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10 + i, 12), colour).save(root / c / f"{i}.png")


def test_folder_loader(tmp_path):
    _write_folder(tmp_path / "src", ["cat", "dog"], 3, (255, 0, 0))
    _write_folder(tmp_path / "tgt", ["dog"], 2, (0, 0, 255))
    data = load_dataset(f"folder:{tmp_path / 'src'}:{tmp_path / 'tgt'}", image_size=8)
    assert data.xs.shape == (6, 3, 8, 8) and data.xt.shape == (2, 3, 8, 8)
    assert data.ys.tolist() == [0, 0, 0, 1, 1, 1] and data.yt_test.tolist() == [1, 1]
    assert float(data.xs[:, 0].mean()) == pytest.approx(1.0)
    assert float(data.xt[:, 2].mean()) == pytest.approx(1.0)
    _write_folder(tmp_path / "bad", ["bird"], 1, (0, 0, 0))
    with pytest.raises(ValueError, match="bird"):
        load_dataset(f"folder:{tmp_path / 'src'}:{tmp_path / 'bad'}")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


def test_batch_stream_resumes_exactly():
    x = torch.arange(10.0)[:, None]
    a = BatchStream(x, None, 4, seed=3)
    for _ in range(3):
        a.next()
    state = a.state_dict()
    expected = [a.next()[0] for _ in range(5)]
    b = BatchStream(x, None, 4, seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(e, b.next()[0]) for e in expected)
    # every pass covers distinct rows (drop_last)
    c = BatchStream(x, None, 5, seed=0)
    assert sorted(torch.cat([c.next()[0], c.next()[0]]).flatten().tolist()) == list(range(10))


def test_npz_and_folder_datasets_train(tmp_path):
    """One tiny epoch on each user-data loader (identity / CNN backbones)."""
    from dapkernels.train import TrainConfig, Trainer

    rng = np.random.default_rng(1)
    path = tmp_path / "feat.npz"
    np.savez(path, Xs=rng.normal(size=(16, 40)), ys=rng.integers(0, 3, 16),
             Xt=rng.normal(size=(12, 40)))
    _write_folder(tmp_path / "src", ["a", "b"], 4, (200, 10, 10))
    _write_folder(tmp_path / "tgt", ["a", "b"], 3, (10, 10, 200))
    for name in (f"npz:{path}", f"folder:{tmp_path / 'src'}:{tmp_path / 'tgt'}"):
        cfg = TrainConfig(method="coral", dataset=name, epochs=1, iters_per_epoch=2,
                          batch_size=4, bottleneck_dim=8, image_size=12)
        trainer = Trainer(cfg, out=tmp_path / name[:3], progress=False)
        final = trainer.fit()
        assert final["step"] == 2 and np.isfinite(final["mmd"])
        if name.startswith("npz"):
            assert final["target_acc"] is None  # no yt
        else:
            assert final["target_acc"] is not None
