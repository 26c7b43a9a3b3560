"""``dapkernels train METHOD``, ``train-grid`` and ``train-compare``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from .config import IMPLS, METHODS, RECIPES, SCHEDULES, TrainConfig
from .datasets import EMBEDDED_DATASETS
from .models import BACKBONES

__all__ = ["add_train_parser", "config_from_args"]

_RECIPE_LINES = "\n".join(
    f"  {m:<12} lr {r['lr']:<6g} lr-gamma {r['lr_gamma']:<7g} weight-decay {r['weight_decay']:g}"
    for m, r in RECIPES.items()
)

EPILOG = f"""\
Model: backbone -> bottleneck (Linear, BatchNorm, ReLU; 256 wide) -> linear classifier; the
method's loss acts on the bottleneck features (JAN: features and softmax outputs).

Defaults (published DAN / JAN / DANN recipes, Transfer-Learning-Library style):
  SGD, momentum 0.9, Nesterov; lr annealed as lr * (1 + lr_gamma * step) ** -0.75;
  batch 32 per domain; bottleneck 256; trade-off 1.
{_RECIPE_LINES}
  dan:   unbiased MK-MMD, Gaussian bank sigma^2 = 2^k * mean pairwise distance, k = -3..1
  jan:   joint MMD of (features, softmax), same bank x a fixed sigma = 0.92 kernel
  dann:  domain BCE through a warm-start gradient reversal layer
         coeff(i) = 2 / (1 + exp(-alpha * i / max_iters)) - 1, alpha 1, max_iters 1000,
         discriminator 2 hidden layers of 1024 (BatchNorm, ReLU)
  coral: Deep CORAL ||C_s - C_t||_F^2 / (4 d^2)
  epochs x iters-per-epoch: moons {SCHEDULES['moons']['epochs']} x \
{SCHEDULES['moons']['iters_per_epoch']}, digits-* {SCHEDULES['digits']['epochs']} x \
{SCHEDULES['digits']['iters_per_epoch']}, npz:/folder: {SCHEDULES['other']['epochs']} x \
{SCHEDULES['other']['iters_per_epoch']}

Datasets (all offline): {', '.join(EMBEDDED_DATASETS)}; npz:PATH (arrays Xs, ys, Xt[, yt]);
folder:SRC_DIR:TGT_DIR (ImageFolder layout, read with Pillow).

--impl naive swaps in the naive loss baselines (Transfer-Learning-Library-pattern MK-MMD /
JMMD, d x d CORAL, copying gradient reversal) and changes nothing else: the same seed gives
the same loss trajectory, and the median step time shows what the fused kernels buy.

Output (--out, default runs/METHOD-IMPL-DATASET-sSEED): metrics.json / metrics.csv per epoch
(losses, source and target accuracy, MMD and CORAL between the evaluation features, median
step time), steps.csv (per-step losses and times), curves.png, checkpoints/epoch_NNN.pt.
--resume continues from the latest checkpoint to the same result as an uninterrupted run.
"""


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits-rotate",
                   help="moons | digits-rotate | digits-scale | npz:PATH | folder:SRC:TGT "
                        "(default: %(default)s)")
    p.add_argument("--impl", choices=IMPLS, default="fused",
                   help="loss implementation (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: per dataset)")
    p.add_argument("--iters-per-epoch", type=int, help="steps per epoch (default: per dataset)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="samples per domain per step (default: %(default)s)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: per method)")
    p.add_argument("--lr-gamma", type=float, help="annealing gamma (default: per method)")
    p.add_argument("--lr-decay", type=float, default=0.75,
                   help="annealing power (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    p.add_argument("--no-nesterov", dest="nesterov", action="store_false",
                   help="plain instead of Nesterov momentum")
    p.add_argument("--weight-decay", type=float, help="SGD weight decay (default: per method)")
    p.add_argument("--trade-off", type=float, default=1.0,
                   help="weight of the adaptation loss (default: %(default)s)")
    p.add_argument("--bottleneck-dim", type=int, default=256,
                   help="bottleneck width (default: %(default)s)")
    p.add_argument("--discriminator-hidden", type=int, default=1024,
                   help="DANN discriminator width (default: %(default)s)")
    p.add_argument("--grl-max-iters", type=int, default=1000,
                   help="DANN warm-start length (default: %(default)s)")
    p.add_argument("--grl-alpha", type=float, default=TrainConfig.grl_alpha,
                   help="DANN warm-start steepness γ (default: %(default)s, the DANN paper's)")
    p.add_argument("--backbone", choices=BACKBONES, default="auto",
                   help="feature extractor (default: cnn for images, mlp for moons, identity "
                        "for npz features)")
    p.add_argument("--backbone-weights", help="local state-dict file for a torchvision backbone")
    p.add_argument("--image-size", type=int, default=32,
                   help="image side for folder: datasets (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="seed of the embedded datasets' draws and splits (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="model and data precision (default: %(default)s)")


def config_from_args(args: argparse.Namespace, **override: Any) -> TrainConfig:
    """The :class:`TrainConfig` described by parsed ``train`` options."""
    values = {
        "method": getattr(args, "method", "dan"), "dataset": args.dataset, "impl": args.impl,
        "epochs": args.epochs, "iters_per_epoch": args.iters_per_epoch,
        "batch_size": args.batch_size, "lr": args.lr, "lr_gamma": args.lr_gamma,
        "lr_decay": args.lr_decay, "momentum": args.momentum, "nesterov": args.nesterov,
        "weight_decay": args.weight_decay, "trade_off": args.trade_off,
        "bottleneck_dim": args.bottleneck_dim, "discriminator_hidden": args.discriminator_hidden,
        "grl_max_iters": args.grl_max_iters, "grl_alpha": args.grl_alpha,
        "backbone": args.backbone, "backbone_weights": args.backbone_weights,
        "image_size": args.image_size, "seed": args.seed, "data_seed": args.data_seed,
        "device": args.device, "dtype": args.dtype,
    }
    values.update(override)
    return TrainConfig(**values)


def default_out(config: TrainConfig) -> Path:
    """``runs/METHOD-IMPL-DATASET-sSEED`` with the dataset name made path-safe."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.dataset).strip("_")[:60]
    return Path("runs") / f"{config.method}-{config.impl}-{name}-s{config.seed}"


def _run_train(args: argparse.Namespace) -> int:
    from .distributed import env_world_size, launch, setup_from_env, strip_nproc, teardown
    from .trainer import Trainer

    nproc = getattr(args, "nproc_per_node", None)
    if nproc is not None and nproc < 1:
        raise SystemExit(f"--nproc-per-node must be at least 1, got {nproc}")
    if nproc is not None and nproc > 1 and env_world_size() == 1:
        return launch(nproc, strip_nproc(args.argv))
    config = config_from_args(args)
    out = Path(args.out) if args.out else default_out(config)
    ctx = setup_from_env(config.device)
    try:
        return _train(Trainer(config, out=out, progress=args.progress, distributed=ctx),
                      config, out, args.resume, ctx is None or ctx.is_main)
    finally:
        teardown(ctx)


def _train(trainer: Any, config: TrainConfig, out: Path, resume: bool, main: bool) -> int:
    if resume:
        path = trainer.resume()
        if main:
            print(f"resuming from {path}" if path else
                  f"no checkpoint under {out}; starting afresh")
    final = trainer.fit()
    if not main:
        return 0
    tgt = final["target_acc"]
    print(
        f"{config.method} ({config.impl}) on {config.dataset}, seed {config.seed}: "
        f"target acc {'n/a' if tgt is None else f'{tgt:.2f}%'}, "
        f"source acc {final['source_acc']:.2f}%, MMD {final['mmd']:.4g}, "
        f"CORAL {final['coral']:.4g}, median step {trainer.step_time_median_ms:.2f} ms -> {out}"
    )
    return 0


def add_train_parser(subparsers: Any) -> None:
    """Adds ``train``, ``train-grid`` and ``train-compare`` to the ``dapkernels`` sub-parsers."""
    from .compare import add_compare_parser
    from .grid import add_grid_parser

    p = subparsers.add_parser(
        "train",
        help="train source-only / DAN / DANN / Deep CORAL / JAN on an offline dataset",
        description="Train a reference domain-adaptation model and record what it does.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("method", choices=METHODS, help="training method")
    _add_config_options(p)
    p.add_argument("--out", help="output directory (default: runs/METHOD-IMPL-DATASET-sSEED)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out")
    p.add_argument("--nproc-per-node", type=int, metavar="W",
                   help="train on W local processes with DistributedDataParallel (relaunches "
                        "through torch.distributed.run; gloo on CPU, NCCL on CUDA): every "
                        "rank draws --batch-size rows per domain, the losses are global-batch "
                        "estimators, rank 0 writes the files.  Plain `torchrun "
                        "--nproc-per-node W -m dapkernels train ...` works too")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="force the progress bar on")
    bar.add_argument("--no-progress", dest="progress", action="store_false",
                     help="force the progress bar off (default: on for a terminal, off in CI)")
    p.set_defaults(func=_run_train)
    add_grid_parser(subparsers)
    add_compare_parser(subparsers)
