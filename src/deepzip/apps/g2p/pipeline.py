"""The G2P pipeline: evaluate a model on CMUdict, load a G2P model from a checkpoint or a ``.dz`` file, and compress a
distilled student (gradual pruning + k-means sharing, both retrained with the distillation loss).

Used by the ``deepzip g2p-*`` commands and ``benchmarks/seq_kd_g2p.py``.

Example:
    >>> from deepzip.apps.g2p.recipes import STUDENT
    >>> from deepzip.models.seq2seq import Seq2Seq
    >>> m = Seq2Seq(STUDENT)
    >>> len(pronounce(m, ["cat", "dog"]))
    2
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from torch import nn

from ...errors import InputError
from ...models.seq2seq import Seq2Seq, decode_many
from ...techniques.prune import AGPSchedule, prunable_tensors, prune_
from ...techniques.seqdistill import SeqTrainConfig, fit_seq2seq
from ...techniques.share import share_weights_
from .data import G2PSplit, decode_phonemes, encode_word, phoneme_error_rate, word_error_rate
from .recipes import G2PCompressConfig

__all__ = ["compress_student_", "evaluate_g2p", "load_g2p_model", "load_recipe_model", "pronounce", "save_recipe_model",
           "words_per_second"]


def pronounce(model: nn.Module, words: list[str], *, beam: int = 1, device: str = "cpu") -> list[tuple[str, ...]]:
    """Phonemes of each word (raises :class:`~deepzip.errors.InputError` on a word outside the alphabet)."""
    src = [encode_word(w) for w in words]
    model.to(device)
    return [decode_phonemes(h) for h in decode_many(model, src, beam=beam, batch_size=512, device=device)]


def evaluate_g2p(model: nn.Module, split: G2PSplit, *, beam: int = 1, device: str = "cpu") -> dict[str, float]:
    """``{"wer_pct", "per_pct"}`` of ``model`` on ``split`` (greedy for ``beam=1``)."""
    hyps = pronounce(model, split.words, beam=beam, device=device)
    return {"wer_pct": word_error_rate(hyps, split.refs), "per_pct": phoneme_error_rate(hyps, split.refs)}


def words_per_second(model: nn.Module, words: list[str], *, beam: int = 1, batch_size: int = 256,
                     repeats: int = 3) -> float:
    """Decoding speed on CPU: words per second, median of ``repeats`` runs over ``words``."""
    model.to("cpu").eval()
    src = [encode_word(w) for w in words]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decode_many(model, src, beam=beam, batch_size=batch_size)
        times.append(time.perf_counter() - t0)
    return len(words) / sorted(times)[len(times) // 2]


def load_g2p_model(path: str | os.PathLike[str]) -> tuple[Seq2Seq, dict[str, Any]]:
    """A G2P model from a ``.dz`` file or a checkpoint: (model, info with ``bytes`` and ``arch``).

    Raises:
        InputError: the file holds a model that is not a G2P encoder-decoder (a LeNet, say).
        DeepzipFormatError / CheckpointError: a damaged or foreign file.
    """
    from ...io.reader import architecture_of, load_model

    p = Path(path)
    arch = architecture_of(p) or ""  # what the file names, nothing built yet
    if not arch.startswith("seq2seq:"):
        raise InputError(f"{p}: holds a {arch or 'unnamed'} model, not a G2P encoder-decoder (seq2seq:...)")
    model, _ = load_model(p)
    assert isinstance(model, Seq2Seq)
    return model.eval(), {"bytes": p.stat().st_size, "arch": arch}


def save_recipe_model(model: nn.Module, path: str | os.PathLike[str], recipe: str, **meta: Any) -> int:
    """Write a trained G2P model to a ``.dz`` file (lossless unless it is pruned/shared: then its compact form) with
    its ``recipe`` hash (:func:`~deepzip.apps.g2p.recipes.g2p_recipe_tag`) and ``meta`` in the header; returns the
    bytes. Written atomically: an interrupted run leaves the old file or none."""
    from ...io.serialize import save

    model.to("cpu")
    return save(model, path, config={"recipe": recipe, **meta})


def load_recipe_model(path: str | os.PathLike[str], recipe: str) -> tuple[Seq2Seq, dict[str, Any]]:
    """A model written by :func:`save_recipe_model`, if it was made by ``recipe``: (model, header config).

    Raises:
        DeepzipFormatError: the file is damaged, truncated or not a ``.dz`` file.
        InputError: it holds another model, or was made by another recipe (the message names both hashes).
    """
    from ...codec.fileinfo import read_dz

    p = Path(path)
    found = read_dz(p).config.get("recipe")
    if found != recipe:
        raise InputError(f"{p}: made by recipe {found or 'unknown'}, this run's recipe is {recipe} (the sizes or "
                         "training settings changed): retrain it (--retrain) or restore the file")
    model, _ = load_g2p_model(p)
    return model, dict(read_dz(p).config)


def compress_student_(
    model: Seq2Seq,
    sources: list[list[int]],
    targets: list[list[int]],
    config: G2PCompressConfig,
    train: SeqTrainConfig,
    *,
    teacher: nn.Module | None = None,
    epoch_callback: Any = None,
) -> Seq2Seq:
    """Prune and weight-share a trained encoder-decoder in place, retraining with the distillation loss.

    1. masks on every weight matrix (embeddings, GRU matrices per matrix, linear layers), grown along the AGP cubic
       schedule to ``config.sparsity`` (embeddings ``config.embedding_sparsity``) during the first 60 % of
       ``config.prune_epochs`` epochs of retraining on (sources, targets) -- with word-level KD when a ``teacher``
       is given;
    2. k-means sharing with ``config.bits`` bits per index, then ``config.centroid_epochs`` epochs of centroid
       fine-tuning with the same loss.

    ``train`` gives batch size, device, alpha and temperature; its epochs and learning rate are replaced.
    ``epoch_callback(epoch, loss)`` is called after every epoch of both retraining phases.
    """
    final = {n: (config.embedding_sparsity if n.endswith("_emb") else config.sparsity) for n in prunable_tensors(model)}
    prune_(model, sparsity={n: 0.0 for n in final})  # masks exist before the optimizer takes the parameters
    p_cfg = dataclasses.replace(train, epochs=config.prune_epochs, lr=config.lr, warmup=50)
    steps = -(-len(sources) // p_cfg.batch_size) * p_cfg.epochs
    schedule = AGPSchedule(final=final, begin=0, end=int(0.6 * steps), every=max(1, steps // 100))
    fit_seq2seq(model, sources, targets, p_cfg, teacher=teacher, desc="prune + retrain", step_callback=schedule,
                epoch_callback=epoch_callback)
    prune_(model, sparsity=final)  # exactly the final sparsities, whatever the step count
    share_weights_(model, config.bits, progress=False)
    f_cfg = dataclasses.replace(train, epochs=config.centroid_epochs, lr=config.lr / 2, warmup=50)
    fit_seq2seq(model, sources, targets, f_cfg, teacher=teacher, desc="centroid fine-tune",
                epoch_callback=epoch_callback)
    return model
