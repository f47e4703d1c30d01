"""Calibration inputs: batches (lists, callables, tokenized text), the split into inputs fitted on and inputs held
out, the model's outputs on them, and the output agreement (``1 - mean cosine``) that the quality bound is stated
in."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..walk import prunable_layers
from ._types import BoundError, Forward, HeldOut


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


def heldout_mask(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Which of ``n`` calibration inputs are held out: ``round(fraction * n)`` of them (at least 1, and at least 1
    left to fit on), drawn at random with ``seed``. (n,) bool.

    Raises:
        BoundError: ``fraction`` outside (0, 1), or fewer than 2 inputs.

    Example:
        >>> int(heldout_mask(8, 0.25).sum())
        2
    """
    if not 0 < fraction < 1:
        raise BoundError(f"held-out fraction {fraction:g}: expected a number in (0, 1)")
    if n < 2:
        raise BoundError(f"{n} calibration input(s): at least 2 are needed to hold some out (one to fit on, one to "
                         "check on)")
    k = min(n - 1, max(1, round(fraction * n)))
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:k]] = True
    return mask


def _size(batch: Any) -> int | None:
    """Samples in a batch: the first dimension of a tensor, or of a dict / list / tuple of tensors that share it;
    None for anything else."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim >= 1 else None
    parts = list(batch.values()) if isinstance(batch, dict) else list(batch) if isinstance(batch, (list, tuple)) \
        else []
    if not parts or not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in parts):
        return None
    sizes = {int(t.shape[0]) for t in parts}
    return sizes.pop() if len(sizes) == 1 else None


def _take(batch: Any, idx: torch.Tensor) -> Any:
    """The samples ``idx`` of a batch :func:`_size` can count."""
    if isinstance(batch, torch.Tensor):
        return batch[idx]
    if isinstance(batch, dict):
        return {k: v[idx] for k, v in batch.items()}
    return type(batch)(v[idx] for v in batch)


def split_heldout(batches: Iterable[Any] | Callable[[], Iterable[Any]], fraction: float = 0.25,
                  seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Calibration batches split into those to fit on and those held out to check the bound on.

    Samples are drawn as :func:`heldout_mask` says, over all batches' samples in order; each batch becomes its fit
    part and its held-out part (a dict of tokenized text keeps its padding). Batches whose samples cannot be
    counted (not a tensor, nor a dict / list / tuple of tensors sharing the first dimension) are held out whole.

    Returns:
        (fit batches, held-out batches), neither empty.

    Raises:
        BoundError: no batches, fewer than 2 inputs, or ``fraction`` outside (0, 1).

    Example:
        >>> fit, held = split_heldout([torch.zeros(6, 3), torch.ones(2, 3)], 0.25)
        >>> sum(len(b) for b in fit), sum(len(b) for b in held)
        (6, 2)
    """
    data = _batches(batches)
    sizes = [_size(b) for b in data]
    if any(s is None for s in sizes):
        mask = heldout_mask(len(data), fraction, seed)
        return [b for b, m in zip(data, mask) if not m], [b for b, m in zip(data, mask) if m]
    mask = heldout_mask(sum(sizes), fraction, seed)  # type: ignore[arg-type]
    fit: list[Any] = []
    held: list[Any] = []
    start = 0
    for b, n in zip(data, sizes):
        m = torch.from_numpy(mask[start:start + n])  # type: ignore[operator]
        start += n  # type: ignore[operator]
        for part, keep in ((fit, ~m), (held, m)):
            if keep.any():
                part.append(_take(b, keep.nonzero().reshape(-1)))
    return fit, held


def _estimate(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> HeldOut:
    """The drop of ``outputs`` against ``reference`` with its standard error over the samples (:class:`HeldOut`)."""
    d = 1 - agreement(outputs, reference)  # (N,)
    n = int(d.numel())
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    return HeldOut(drop=float(d.mean()), se=se, n=n)


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


def estimate_drop(model: nn.Module, reference: nn.Module, batches: Iterable[Any] | Callable[[], Iterable[Any]],
                  forward: Forward | None = None) -> HeldOut:
    """:func:`measure_drop` with its standard error over the samples: on inputs nothing was fitted on (held out),
    an estimate of the drop on more inputs of their kind (:class:`HeldOut`).

    Example:
        >>> lin = nn.Linear(4, 3)
        >>> est = estimate_drop(lin, lin, [torch.randn(5, 4)])
        >>> est.n, abs(est.drop) < 1e-12
        (5, True)
    """
    data = _batches(batches)
    fwd = forward or _default_forward
    return _estimate(_outputs(model, data, fwd), _outputs(reference, data, fwd))


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

