"""Reference domain-adaptation trainers (source-only, DAN, DANN, Deep CORAL, JAN).

``Trainer`` runs backbone → bottleneck → classifier with a method's adaptation loss, with the
fused dapkernels losses or (``impl="naive"``) the copied-code baselines; ``load_dataset``
builds the offline datasets.  The command line is ``dapkernels train`` / ``train-grid``.
"""

from .compare import compare_impls
from .config import IMPLS, METHODS, RECIPES, TrainConfig
from .datasets import DIGITS_SHIFTS, EMBEDDED_DATASETS, DomainData, load_dataset
from .models import DAModel, MLPBackbone, SmallCNN, build_backbone
from .trainer import Trainer

__all__ = [
    "Trainer",
    "TrainConfig",
    "compare_impls",
    "METHODS",
    "IMPLS",
    "RECIPES",
    "DomainData",
    "load_dataset",
    "DIGITS_SHIFTS",
    "EMBEDDED_DATASETS",
    "DAModel",
    "MLPBackbone",
    "SmallCNN",
    "build_backbone",
]
