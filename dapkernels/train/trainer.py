"""The training loop shared by every method: one step = one source and one target batch.

Usage from Python (bring your own backbone, or let the dataset pick one)::

    from dapkernels.train import Trainer, TrainConfig
    trainer = Trainer(TrainConfig(method="dan", dataset="digits-rotate"), out="runs/dan")
    final = trainer.fit()            # per-epoch metrics dict of the last epoch
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .datasets import DomainData, load_dataset
from .evaluation import evaluate
from .methods import build_adaptation
from .models import DAModel, build_backbone
from .report import plot_curves, write_csv, write_json
from .sampler import BatchStream

__all__ = ["Trainer", "progress_enabled"]


def progress_enabled() -> bool:
    """Progress bars only on an interactive terminal, never in CI (``CI`` set and not false)."""
    ci = os.environ.get("CI", "").strip().lower()
    if ci not in ("", "0", "false", "no"):
        return False
    return sys.stderr.isatty()


class Trainer:
    """Trains ``backbone → bottleneck → classifier`` with the adaptation loss of a method.

    Args:
        config: the run's :class:`TrainConfig` (``None`` fields get the recipe defaults).
        out: output directory for ``metrics.json``, ``metrics.csv``, ``steps.csv``,
            ``curves.png`` and ``checkpoints/epoch_NNN.pt``; ``None`` keeps everything in
            memory.
        data: a :class:`DomainData` to train on instead of loading ``config.dataset``.
        backbone: your own feature extractor (an ``nn.Module`` with ``out_features``) instead
            of :func:`build_backbone`.
        progress: show a tqdm bar (default: :func:`progress_enabled`).
        distributed: a :class:`~dapkernels.train.distributed.DistContext` (from
            :func:`~dapkernels.train.distributed.setup_from_env`) to train as one rank of a
            DDP job: sharded batches, global-batch losses, gathered metrics, files and bar on
            rank 0 only.  ``None`` (default): one process, exactly as before.

    Attributes:
        history: ``{"epochs": [per-epoch metrics], "steps": [per-step losses and times]}``.
    """

    def __init__(
        self,
        config: TrainConfig,
        out: str | Path | None = None,
        data: DomainData | None = None,
        backbone: nn.Module | None = None,
        progress: bool | None = None,
        distributed: Any = None,
    ) -> None:
        cfg = self.config = config.resolved()
        self.dist = distributed
        self.out = None if out is None else Path(out)
        self.progress = progress_enabled() if progress is None else progress
        self.device = torch.device(cfg.device)
        if distributed is not None:
            self.progress = self.progress and distributed.is_main
            self.device = distributed.device
        self.dtype = getattr(torch, cfg.dtype)
        self.data = data if data is not None else load_dataset(
            cfg.dataset, cfg.image_size, cfg.data_seed
        )
        torch.manual_seed(cfg.seed)
        if backbone is None:
            backbone = build_backbone(cfg.backbone, self.data.input_shape, cfg.backbone_weights)
        self.model = DAModel(backbone, self.data.num_classes, cfg.bottleneck_dim)
        self.adaptation = build_adaptation(cfg, self.model.features_dim)
        self.model.to(device=self.device, dtype=self.dtype)
        self.adaptation.to(device=self.device, dtype=self.dtype)
        self._model, self._adaptation = self.model, self.adaptation  # what train_step calls
        if distributed is not None:
            from .distributed import distribute_adaptation, wrap_ddp

            distribute_adaptation(self.adaptation, distributed.group)
            self.model, self._model = wrap_ddp(self.model, distributed)
            self.adaptation, self._adaptation = wrap_ddp(self.adaptation, distributed)
        params = list(self.model.parameters()) + list(self.adaptation.parameters())
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        gamma, decay = cfg.lr_gamma, cfg.lr_decay
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (1.0 + gamma * step) ** (-decay)
        )
        if distributed is None:
            self.source = BatchStream(self.data.xs, self.data.ys, cfg.batch_size,
                                      2 * cfg.seed + 1)
            self.target = BatchStream(self.data.xt, None, cfg.batch_size, 2 * cfg.seed + 2)
        else:
            from .distributed import ShardedBatchStream

            r, w = distributed.rank, distributed.world
            self.source = ShardedBatchStream(self.data.xs, self.data.ys, cfg.batch_size,
                                             2 * cfg.seed + 1, r, w)
            self.target = ShardedBatchStream(self.data.xt, None, cfg.batch_size,
                                             2 * cfg.seed + 2, r, w)
        self.epoch = 0
        self.step = 0
        self.history: dict[str, list[dict[str, Any]]] = {"epochs": [], "steps": []}

    # ------------------------------------------------------------------ training

    def train_step(self) -> dict[str, float]:
        """One optimiser step; returns its losses, source batch accuracy and time (ms)."""
        start = time.perf_counter()
        xs, ys = self.source.next()
        xs = xs.to(device=self.device, dtype=self.dtype)
        ys = ys.to(self.device)
        self.model.train()
        self.adaptation.train()
        if self.adaptation.needs_target:
            xt, _ = self.target.next()
            xt = xt.to(device=self.device, dtype=self.dtype)
            logits, feats = self._model(torch.cat([xs, xt]))
            logits_s, logits_t = logits.split([xs.shape[0], xt.shape[0]])
            f_s, f_t = feats.split([xs.shape[0], xt.shape[0]])
        else:
            logits_s, f_s = self._model(xs)
            logits_t = f_t = None
        cls_loss = F.cross_entropy(logits_s, ys)
        transfer_loss = self._adaptation(f_s, f_t, logits_s, logits_t)
        loss = cls_loss + self.config.trade_off * transfer_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.adaptation.after_step()
        elapsed = time.perf_counter() - start
        self.step += 1
        record = {
            "step": self.step,
            "loss": loss.item(),
            "cls_loss": cls_loss.item(),
            "transfer_loss": transfer_loss.item(),
            "batch_acc": float((logits_s.argmax(1) == ys).double().mean()) * 100.0,
            "time_ms": elapsed * 1e3,
        }
        if self.dist is not None:
            from .distributed import reduce_step

            record = reduce_step(record, self.dist)
        return record

    def train_epoch(self) -> dict[str, Any]:
        """Runs one epoch of ``iters_per_epoch`` steps, evaluates, checkpoints, writes reports."""
        from tqdm.auto import tqdm

        cfg = self.config
        epoch = self.epoch + 1
        steps = []
        bar = tqdm(total=cfg.iters_per_epoch, desc=f"{cfg.method} epoch {epoch}/{cfg.epochs}",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        with bar:
            for i in range(cfg.iters_per_epoch):
                steps.append(self.train_step())
                bar.update()
                if i % 10 == 0 or i == cfg.iters_per_epoch - 1:
                    bar.set_postfix(loss=f"{steps[-1]['loss']:.3f}",
                                    acc=f"{steps[-1]['batch_acc']:.0f}%")
        self.history["steps"].extend(steps)
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": self.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": statistics.fmean(s["loss"] for s in steps),
            "cls_loss": statistics.fmean(s["cls_loss"] for s in steps),
            "transfer_loss": statistics.fmean(s["transfer_loss"] for s in steps),
        }
        d = self.data
        if self.dist is None:
            record.update(evaluate(self.model, d.xs, d.ys, d.xt_test, d.yt_test, self.device,
                                   self.dtype))
        else:
            from .distributed import evaluate_distributed

            record.update(evaluate_distributed(self.model, d.xs, d.ys, d.xt_test, d.yt_test,
                                               self.dist, self.dtype))
        record["step_time_ms"] = statistics.median(s["time_ms"] for s in steps)
        self.history["epochs"].append(record)
        self.epoch = epoch
        if self.out is not None and (self.dist is None or self.dist.is_main):
            self.save()
        if self.progress:
            tgt = record["target_acc"]
            tqdm.write(f"{cfg.method} epoch {epoch}: loss {record['loss']:.4f} source acc "
                       f"{record['source_acc']:.1f}% target acc "
                       f"{'n/a' if tgt is None else f'{tgt:.1f}%'}")
        return record

    def fit(self) -> dict[str, Any]:
        """Trains up to ``config.epochs`` (from the current epoch) and returns the last record.

        With an output directory, every epoch writes a checkpoint and the metrics files, and
        the end of training writes ``curves.png``.
        """
        while self.epoch < self.config.epochs:
            self.train_epoch()
        if self.out is not None and (self.dist is None or self.dist.is_main):
            self.plot()
        return self.history["epochs"][-1]

    # ------------------------------------------------------------------ results

    @property
    def step_time_median_ms(self) -> float:
        """Median wall time of one training step over every recorded step."""
        return statistics.median(s["time_ms"] for s in self.history["steps"])

    def summary(self) -> dict[str, Any]:
        """Config, per-epoch metrics, final metrics, median step time and the loss curve."""
        epochs = self.history["epochs"]
        return {
            "config": self.config.to_dict(),
            "epochs": epochs,
            "final": epochs[-1] if epochs else None,
            "step_time_median_ms": self.step_time_median_ms if self.history["steps"] else None,
            "loss_curve": [s["loss"] for s in self.history["steps"]],
        }

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: model, optimiser, schedule, streams, RNG."""
        state = {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "adaptation": self.adaptation.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "source": self.source.state_dict(),
            "target": self.target.state_dict(),
            "rng": rng_state(),
            "history": self.history,
        }
        if self.dist is not None:
            state["world_size"] = self.dist.world
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`; the run's config must match (the epoch count may grow)."""
        saved = dict(state["config"])
        mine = self.config.to_dict()
        saved.pop("epochs")
        diff = sorted(k for k in saved if saved[k] != mine.get(k) and k != "device")
        if diff:
            raise ValueError(f"checkpoint was written with a different config: {diff}")
        world = 1 if self.dist is None else self.dist.world
        if int(state.get("world_size", 1)) != world:
            raise ValueError(f"checkpoint was written by {state.get('world_size', 1)} "
                             f"process(es); this run has {world}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.model.load_state_dict(state["model"])
        self.adaptation.load_state_dict(state["adaptation"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.source.load_state_dict(state["source"])
        self.target.load_state_dict(state["target"])
        set_rng_state(state["rng"])
        self.history = state["history"]

    def save(self) -> Path:
        """Writes the epoch checkpoint, metrics.json / .csv and steps.csv."""
        if self.out is None:
            raise ValueError("save needs an output directory")
        self.out.mkdir(parents=True, exist_ok=True)
        path = save_checkpoint(self.out / "checkpoints", self.epoch, self.state_dict())
        write_json(self.out / "metrics.json", self.summary())
        write_csv(self.out / "metrics.csv", self.history["epochs"])
        write_csv(self.out / "steps.csv", self.history["steps"])
        return path

    def plot(self) -> Path:
        """Writes ``curves.png`` (losses per step; accuracies, MMD, CORAL per epoch)."""
        if self.out is None:
            raise ValueError("plot needs an output directory")
        title = f"{self.config.method} ({self.config.impl}) on {self.config.dataset}"
        path = self.out / "curves.png"
        plot_curves(path, title, self.history["steps"], self.history["epochs"])
        return path

    def resume(self) -> Path | None:
        """Loads the latest checkpoint under ``out/checkpoints``; returns it (``None``: none)."""
        if self.out is None:
            raise ValueError("resume needs an output directory")
        path = latest_checkpoint(self.out / "checkpoints")
        if path is not None:
            self.load_state_dict(load_checkpoint(path))
        return path
