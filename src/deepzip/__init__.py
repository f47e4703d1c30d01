"""deepzip: make trained neural networks small.

Prune (:func:`prune_`), share weights (:func:`share_weights_`), decompose into low-rank factors
(:func:`decompose_`, :class:`TTLinear`), distill, and write a real compressed ``.dz`` file
(:func:`save`) that loads back into a working model (:func:`load`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("deepzip")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

# The public API, imported lazily (PEP 562): ``import deepzip.codec`` must work where torch is absent, and the CLI
# should not pay for torch before it knows which command runs. name -> the submodule that defines it.
_LAZY: dict[str, str] = {
    "load_checkpoint": "io.checkpoint", "save_checkpoint": "io.checkpoint",
    "TTLinear": "techniques.lowrank", "decompose_": "techniques.lowrank", "tt_linear_": "techniques.lowrank",
    "get_model": "models", "register_model": "models",
    "AGPSchedule": "techniques.prune", "prune_": "techniques.prune", "sensitivity_scan": "techniques.prune",
    "sparsity_table": "techniques.prune", "strip": "techniques.prune", "prunable_tensors": "techniques.prune",
    "load": "io.serialize", "save": "io.serialize",
    "share_weights_": "techniques.share",
    "PostTrainConfig": "techniques.posttrain", "compress_to_bound_": "techniques.posttrain",
    "save_posttrained": "io.serialize",
    "shrink_": "techniques.shrink",
    "sparsify_": "runtime",
    "TrainConfig": "train", "evaluate": "train", "fit": "train",
    "DeepzipError": "errors", "DeepzipFormatError": "errors", "CheckpointError": "errors", "DataError": "errors",
    "InputError": "errors", "UntrustedCodeError": "errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deepzip' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .errors import CheckpointError, DataError, DeepzipError, DeepzipFormatError, InputError, UntrustedCodeError
    from .io.checkpoint import load_checkpoint, save_checkpoint
    from .io.serialize import load, save, save_posttrained
    from .models import get_model, register_model
    from .runtime import sparsify_
    from .techniques.lowrank import TTLinear, decompose_, tt_linear_
    from .techniques.posttrain import PostTrainConfig, compress_to_bound_
    from .techniques.prune import AGPSchedule, prunable_tensors, prune_, sensitivity_scan, sparsity_table, strip
    from .techniques.share import share_weights_
    from .techniques.shrink import shrink_
    from .train import TrainConfig, evaluate, fit

__all__ = [
    "AGPSchedule",
    "CheckpointError",
    "DataError",
    "DeepzipError",
    "DeepzipFormatError",
    "InputError",
    "PostTrainConfig",
    "TTLinear",
    "TrainConfig",
    "UntrustedCodeError",
    "__version__",
    "compress_to_bound_",
    "decompose_",
    "evaluate",
    "fit",
    "get_model",
    "load",
    "load_checkpoint",
    "prunable_tensors",
    "prune_",
    "register_model",
    "save",
    "save_checkpoint",
    "save_posttrained",
    "sensitivity_scan",
    "share_weights_",
    "shrink_",
    "sparsify_",
    "sparsity_table",
    "strip",
    "tt_linear_",
]
