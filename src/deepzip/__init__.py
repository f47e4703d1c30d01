"""deepzip: make trained neural networks small.

Prune (:func:`prune_`), share weights (:func:`share_weights_`), decompose into low-rank factors
(:func:`decompose_`, :class:`TTLinear`), distill, and write a real compressed ``.dz`` file
(:func:`save`) that loads back into a working model (:func:`load`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepzip")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_mnist, synthetic_mnist
from .lowrank import TTLinear, decompose_, tt_linear_
from .models import get_model
from .prune import AGPSchedule, prune_, sensitivity_scan, sparsity_table, strip
from .serialize import load, save
from .share import share_weights_
from .train import TrainConfig, evaluate, fit

__all__ = [
    "AGPSchedule",
    "TTLinear",
    "TrainConfig",
    "__version__",
    "decompose_",
    "evaluate",
    "fit",
    "get_model",
    "load",
    "load_checkpoint",
    "load_mnist",
    "prune_",
    "save",
    "save_checkpoint",
    "sensitivity_scan",
    "share_weights_",
    "sparsity_table",
    "strip",
    "synthetic_mnist",
    "tt_linear_",
]
