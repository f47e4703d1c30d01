"""Calibration inputs: batches (lists, callables, tokenized text), the model's outputs on them, and the output
agreement (``1 - mean cosine``) that the quality bound is stated in."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..walk import prunable_layers
from ._types import BoundError, Forward


# ---------------------------------------------------------------------------------------------------- data
def _batches(calibration: Iterable[Any] | Callable[[], Iterable[Any]]) -> list[Any]:
    data = calibration() if callable(calibration) else calibration
    out = list(data)
    if not out:
        raise BoundError("the calibration set is empty: give at least one batch of inputs")
    return out


def text_batches(tokenizer: Any, sentences: Sequence[str], size: int = 16, *, max_length: int = 128,
                 seed: int | None = 0) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches of ``size`` sentences of similar length (a Hugging Face ``tokenizer``), in shuffled order.

    Sentences are sorted by token count before batching, so a batch pads to little more than its own lengths
    (random batches of sentences of mixed lengths are mostly padding, and a distillation step pays for every padded
    token). ``seed``: the batch order is shuffled with it (``None``: shortest first).

    Example:
        >>> def tok(s, padding=False, truncation=False, max_length=None, return_tensors=None):  # one id per word
        ...     if not padding:
        ...         return {"input_ids": [x.split() for x in s]}
        ...     n = max(len(x.split()) for x in s)
        ...     return {"input_ids": torch.tensor([[1] * len(x.split()) + [0] * (n - len(x.split())) for x in s])}
        >>> [b["input_ids"].shape[1] for b in text_batches(tok, ["a b c", "a", "a b", "a b c d"], 2, seed=None)]
        [2, 4]
    """
    if size < 1:
        raise BoundError(f"batch size {size}: expected >= 1")
    lengths = [len(ids) for ids in tokenizer(list(sentences), truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(sentences)), key=lambda i: lengths[i])
    groups = [order[i:i + size] for i in range(0, len(order), size)]
    if seed is not None:
        random.Random(seed).shuffle(groups)
    return [dict(tokenizer([sentences[i] for i in g], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for g in groups]


def _default_forward(model: nn.Module, batch: Any) -> torch.Tensor:
    return model(batch)


def _outputs(model: nn.Module, batches: list[Any], forward: Forward, grad: bool = False) -> list[torch.Tensor]:
    outs = []
    with torch.set_grad_enabled(grad):
        for i, b in enumerate(batches):
            try:
                y = forward(model, b)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
                raise BoundError(f"calibration batch {i} (input {shape}) does not fit the model: {first}") from None
            if not isinstance(y, torch.Tensor) or y.ndim < 1 or y.shape[0] == 0:
                raise BoundError(f"calibration batch {i}: the model's output is not a non-empty tensor")
            outs.append(y.reshape(y.shape[0], -1).double())  # float64: drops of 1e-9 stay visible
    return outs


def agreement(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample cosine between outputs and reference outputs, all batches concatenated: (N,)."""
    return torch.cat([nn.functional.cosine_similarity(o, r, dim=1, eps=1e-12) for o, r in zip(outputs, reference)])


def _drop(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """``1 - mean cosine`` of outputs against reference outputs (the quantity ``max_drop`` bounds)."""
    return float(1 - agreement(outputs, reference).mean())


def measure_drop(model: nn.Module, reference: nn.Module, batches: Iterable[Any] | Callable[[], Iterable[Any]],
                 forward: Forward | None = None) -> float:
    """The output agreement lost by ``model`` against ``reference`` (the original): ``1 - mean cosine`` of their
    outputs over every sample of ``batches``, as :func:`compress_to_bound_` measures it (no gradients, float64).

    Args:
        model: the compressed model.
        reference: the model it must agree with (e.g. a copy of the original taken before compressing).
        batches: inputs (a list, an iterable, or a callable returning one).
        forward: ``forward(model, batch) -> Tensor`` (first dimension = samples); default ``model(batch)``.

    Returns:
        The drop, 0 when the outputs point the same way for every sample.

    Raises:
        BoundError: no batches, or a batch either model cannot take.

    Example:
        >>> lin = nn.Linear(4, 3)
        >>> abs(measure_drop(lin, lin, [torch.randn(5, 4)])) < 1e-12
        True
    """
    data = _batches(batches)
    fwd = forward or _default_forward
    return _drop(_outputs(model, data, fwd), _outputs(reference, data, fwd))


def target_tensors(model: nn.Module, min_numel: int = 1024) -> dict[str, nn.Module]:
    """The modules whose ``weight`` post-training compression stores: Linear, Embedding and Conv layers (any module
    with a floating weight of >= 2 dims), with at least ``min_numel`` weights, keyed by ``"name.weight"``."""
    def keep(m: nn.Module, name: str) -> bool:
        w = m.weight
        return bool(w.ndim >= 2 and torch.is_floating_point(w) and w.numel() >= min_numel
                    and not parametrize.is_parametrized(m))

    return {f"{name}.weight": m for name, m in prunable_layers(model, keep).items()}


def _split(batch: Any, size: int = 1) -> list[Any]:
    """One batch as batches of ``size`` samples (the last may be smaller): a tensor, or a dict / list / tuple of
    tensors sharing the first dimension; anything else stays one batch."""
    def cut(n: int, take: Callable[[int, int], Any]) -> list[Any]:
        return [take(i, min(i + size, n)) for i in range(0, n, size)]

    if isinstance(batch, torch.Tensor) and batch.ndim >= 1:
        return cut(batch.shape[0], lambda a, b: batch[a:b])
    if isinstance(batch, dict) and batch and all(isinstance(v, torch.Tensor) and v.ndim >= 1 for v in batch.values()):
        sizes = {v.shape[0] for v in batch.values()}
        if len(sizes) == 1:
            return cut(sizes.pop(), lambda a, b: {k: v[a:b] for k, v in batch.items()})
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(v, torch.Tensor) and v.ndim >= 1 for v in batch):
        sizes = {v.shape[0] for v in batch}
        if len(sizes) == 1:
            return cut(sizes.pop(), lambda a, b: type(batch)(v[a:b] for v in batch))
    return [batch]

