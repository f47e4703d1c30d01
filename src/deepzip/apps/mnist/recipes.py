"""Default settings per model (training, retraining, fine-tuning recipes) and the papers' figures: data only.

The paper's figures live here too (:data:`PAPER`), so tables can print them beside ours.
"""

from __future__ import annotations

import hashlib
import json

import torch

from ...data import Dataset
from ...papers import PAPER
from ...train import TrainConfig

__all__ = ["PAPER", "VD_RECIPES", "recipe_tag", "train_config", "validation_split", "vd_recipe"]


# LeNets train, retrain and fine-tune with inputs shifted by up to 2 pixels (Hinton et al.'s MNIST jitter): measured
# with 20 epochs and no jitter LeNet-300-100 reached 1.47-1.54% over 4 seeds and pruned to 93% it landed anywhere in
# 1.65-1.77% (one seed's noise is +-0.1 point); with jitter it trains to 0.90% and prunes to 1.06% at the paper's
# sparsities (benchmarks/results/prune_lenet.md).
_TRAIN = {
    "lenet300": dict(epochs=30, lr=0.1, weight_decay=1e-4, jitter=2),
    "lenet5": dict(epochs=20, lr=0.02, weight_decay=5e-4, jitter=2),
    "mlp1200": dict(epochs=30, lr=0.1, weight_decay=0.0),  # with --jitter (KD teacher)
    "mlp800": dict(epochs=30, lr=0.05, weight_decay=5e-4),
    "mlp30": dict(epochs=30, lr=0.05, weight_decay=5e-4),
}
_RETRAIN = {
    "lenet300": dict(epochs=10, lr=0.02, weight_decay=1e-4, jitter=2),
    "lenet5": dict(epochs=5, lr=0.01, weight_decay=5e-4, jitter=2),
}


# Centroid fine-tuning: a centroid's gradient is the *sum* over its cluster (Deep Compression eq. 3), thousands
# of weights at low bits, so the step that suits retraining single weights makes centroids diverge (LeNet-300-100
# at 4/2 bits: 1.80% -> 95.6% error at lr 0.02, fine at 0.01). No weight decay: it would pull shared values to 0.
_FINETUNE = {
    "lenet300": dict(epochs=4, lr=0.005, weight_decay=0.0, jitter=2),
    "lenet5": dict(epochs=3, lr=0.002, weight_decay=0.0, jitter=2),
}


def train_config(model: str, *, retrain: bool = False, finetune: bool = False) -> TrainConfig:
    """The training, retraining (after pruning, at a lower learning rate as in the paper) or centroid fine-tuning
    (after weight sharing) settings for a model name."""
    if finetune:
        return TrainConfig(**_FINETUNE.get(model, dict(epochs=3, lr=0.002, weight_decay=0.0)))
    table = _RETRAIN if retrain else _TRAIN
    default = dict(epochs=4, lr=0.01, weight_decay=5e-4) if retrain else dict(epochs=10, lr=0.05, weight_decay=5e-4)
    return TrainConfig(**table.get(model, default))


# Sparse variational dropout settings per model, for `deepzip compress --sparsifier vd` without a --config: the
# settings of the files benchmarks/vd_lenet.py reports (see its results for the curve they were chosen from). A KL
# weight above 1 trades error for sparsity; shrink removes the neurons and filters VD leaves without inputs or
# readers, so position codes run over live units only.
VD_RECIPES: dict[str, dict] = {
    "lenet300": dict(sparsifier="vd", vd_epochs=30, vd_kl_scale=4, vd_shrink_every=5, retrain_epochs=30,
                     bias_float16=True, centroids_float16=True, shrink=True, bits_tolerance=0.005),
    "lenet5": dict(sparsifier="vd", vd_epochs=30, vd_kl_scale=3, vd_shrink_every=5, retrain_epochs=10,
                   bias_float16=True, centroids_float16=True, shrink=True, bits_tolerance=0.02),
}


def vd_recipe(model: str) -> dict:
    """The :data:`VD_RECIPES` fields of ``model`` (PipelineConfig fields), or only ``sparsifier="vd"`` (the
    config's defaults: the paper's settings) for a model without one."""
    return dict(VD_RECIPES.get(model, {"sparsifier": "vd"}))


def recipe_tag(model: str) -> str:
    """8 hex digits naming the training recipe of ``model``: cached trained checkpoints carry it in their file
    name, so changing the recipe retrains instead of silently reusing a model trained the old way.

    Example:
        >>> len(recipe_tag("lenet300")), recipe_tag("lenet300") == recipe_tag("lenet300")
        (8, True)
    """
    d = {k: v for k, v in train_config(model).to_dict().items() if k != "progress"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def validation_split(train: Dataset, n: int = 5000, seed: int = 0) -> Dataset:
    """A fixed random subset of the training set, for choices (sensitivity scans) that must not peek at the test set."""
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return Dataset(train.x[idx], train.y[idx])
