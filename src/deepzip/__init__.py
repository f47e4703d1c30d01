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
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "load_mnist": "data", "synthetic_mnist": "data",
    "TTLinear": "lowrank", "decompose_": "lowrank", "tt_linear_": "lowrank",
    "get_model": "models",
    "AGPSchedule": "prune", "prune_": "prune", "sensitivity_scan": "prune", "sparsity_table": "prune", "strip": "prune",
    "load": "serialize", "save": "serialize",
    "share_weights_": "share",
    "PostTrainConfig": "posttrain", "compress_to_bound_": "posttrain", "save_posttrained": "posttrain",
    "shrink_": "shrink",
    "sparsify_": "runtime",
    "TrainConfig": "train", "evaluate": "train", "fit": "train",
    "DeepzipError": "errors", "DeepzipFormatError": "errors", "CheckpointError": "errors", "DataError": "errors",
    "InputError": "errors", "prunable_tensors": "prune",
    "Seq2Seq": "seq", "Seq2SeqConfig": "seq", "beam_search": "seq", "greedy_decode": "seq",
    "distill_seq2seq": "seqdistill", "fit_seq2seq": "seqdistill", "load_g2p": "g2p_data",
    "UntrustedCodeError": "errors",
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
    from .checkpoint import load_checkpoint, save_checkpoint
    from .data import load_mnist, synthetic_mnist
    from .errors import CheckpointError, DataError, DeepzipError, DeepzipFormatError, InputError, UntrustedCodeError
    from .g2p_data import load_g2p
    from .lowrank import TTLinear, decompose_, tt_linear_
    from .models import get_model
    from .posttrain import PostTrainConfig, compress_to_bound_, save_posttrained
    from .prune import AGPSchedule, prunable_tensors, prune_, sensitivity_scan, sparsity_table, strip
    from .runtime import sparsify_
    from .seq import Seq2Seq, Seq2SeqConfig, beam_search, greedy_decode
    from .seqdistill import distill_seq2seq, fit_seq2seq
    from .serialize import load, save
    from .share import share_weights_
    from .shrink import shrink_
    from .train import TrainConfig, evaluate, fit

__all__ = [
    "AGPSchedule",
    "CheckpointError",
    "DataError",
    "DeepzipError",
    "DeepzipFormatError",
    "InputError",
    "PostTrainConfig",
    "Seq2Seq",
    "Seq2SeqConfig",
    "TTLinear",
    "TrainConfig",
    "UntrustedCodeError",
    "__version__",
    "beam_search",
    "compress_to_bound_",
    "decompose_",
    "distill_seq2seq",
    "evaluate",
    "fit",
    "fit_seq2seq",
    "get_model",
    "greedy_decode",
    "load",
    "load_checkpoint",
    "load_g2p",
    "load_mnist",
    "prunable_tensors",
    "prune_",
    "save",
    "save_checkpoint",
    "save_posttrained",
    "sensitivity_scan",
    "share_weights_",
    "shrink_",
    "sparsify_",
    "sparsity_table",
    "strip",
    "synthetic_mnist",
    "tt_linear_",
]
