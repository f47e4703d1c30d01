"""Sensitivities from calibration inputs: the diagonal Gauss-Newton (Fisher) of the output agreement per weight,
the input Gram matrix of each Linear layer (for GPTQ and the Kronecker-factored error), and the row usage of
embedding tables with the Good-Turing weight of the rows the calibration never uses."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._calibration import _outputs, _split
from ._types import Forward


def fisher_diagonal(model: nn.Module, batches: list[Any], forward: Forward, modules: dict[str, nn.Module],
                    probes: int = 1, seed: int = 0, progress: bool = False,
                    per_sample: bool = True, max_passes: int = 256) -> dict[str, np.ndarray]:
    """Diagonal Gauss-Newton sensitivity of the normalised outputs for each module's weight, per sample.

    ``F = sum_x sum_probes (d <v, u(x)> / dw)**2 / N`` with ``u`` the L2-normalised output and ``v`` Rademacher
    (shapes: each weight's own). With ``per_sample`` every sample gets its own backward pass (batches are split,
    see :func:`_split`): one probe over a whole batch is unbiased too, but its square mixes the samples' gradients
    (cross terms of mean zero), so it is much noisier -- on MiniLM the split-half correlation of the log-Fisher of
    a Linear layer is ~0.92 per sample against ~0.6 per batch of 32. Large calibration sets are cut into
    sub-batches of equal size so that there are at most ``max_passes`` of them (the noise then averages out).
    Embedding rows with zero sensitivity (tokens not in the calibration set) get the mean of the other rows.
    """
    if per_sample:
        total = sum(len(_split(b)) for b in batches)
        size = max(1, math.ceil(total / max_passes))
        batches = [part for b in batches for part in _split(b, size)]
    gen = torch.Generator().manual_seed(seed)
    params = {n: m.weight for n, m in modules.items()}
    req = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    count = 0
    try:
        for b in tqdm(batches, desc="sensitivity", disable=not progress, leave=False):
            for _ in range(probes):
                y = _outputs(model, [b], forward, grad=True)[0]
                u = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (N, D)
                v = torch.randint(0, 2, u.shape, generator=gen).to(u.dtype) * 2 - 1
                grads = torch.autograd.grad((u * v).sum(), list(params.values()), allow_unused=True)
                for (n, _p), g in zip(params.items(), grads):
                    if g is not None:
                        acc[n] += g.double() ** 2
            count += y.shape[0]
    finally:
        for n, p in params.items():
            p.requires_grad_(req[n])
    out = {}
    for n, a in acc.items():
        f = (a / (count * probes)).cpu().numpy()
        if isinstance(modules[n], nn.Embedding):
            seen = f.sum(axis=1) > 0
            if seen.any() and not seen.all():
                f[~seen] = f[seen].mean(axis=0)
        out[n] = f
    return out


def input_grams(model: nn.Module, batches: list[Any], forward: Forward,
                modules: dict[str, nn.Module]) -> dict[str, np.ndarray]:
    """Mean Gram matrix ``H = X^T X / n`` of the inputs of each Linear module on the calibration batches.

    ``X`` is (n, in_features): every input row the layer sees (all tokens of all samples). ``H`` is what the
    output error ``|dW x|**2`` of a weight change ``dW`` averages to: ``sum_i dW_i H dW_i^T`` (GPTQ's objective).

    Returns:
        name -> (in_features, in_features) float64, for the Linear modules of ``modules`` only.
    """
    grams: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()  # (n, in)
            grams[name] = grams.get(name, 0) + x.T @ x  # type: ignore[assignment,operator]
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for n, m in modules.items():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_pre_hook(hook(n)))
    try:
        _outputs(model, batches, forward)
    finally:
        for h in hooks:
            h.remove()
    return {n: (g / counts[n]).cpu().numpy() for n, g in grams.items()}

def row_counts(model: nn.Module, batches: list[Any], forward: Forward,
               modules: dict[str, nn.Module]) -> dict[str, np.ndarray]:
    """How often the calibration inputs use each row of each ``nn.Embedding`` in ``modules`` (name -> (R,) int64)."""
    counts = {n: np.zeros(m.weight.shape[0], np.int64) for n, m in modules.items() if isinstance(m, nn.Embedding)}
    hooks = []

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            ids = inputs[0].detach().reshape(-1).cpu().numpy().astype(np.int64)
            counts[name] += np.bincount(ids[(ids >= 0) & (ids < counts[name].size)], minlength=counts[name].size)
        return fn

    for n in counts:
        hooks.append(modules[n].register_forward_pre_hook(hook(n)))
    try:
        _outputs(model, batches, forward)
    finally:
        for h in hooks:
            h.remove()
    return counts


def unseen_scale(f: np.ndarray, counts: np.ndarray, fisher_counts: np.ndarray | None = None, *,
                 min_rows: int = 16) -> float:
    """How much more one occurrence of a rare row weighs than the average occurrence, by the sensitivity ``f``.

    Good-Turing lets the rows seen once stand for the rows never seen; the same goes for their sensitivity. The
    average occurrence is dominated by frequent rows (special and punctuation tokens of a text model), which a
    sentence embedding barely depends on, while rare rows are content words. Returns
    ``(sum f / sum n over rare rows) / (sum f / sum n over all rows)``, with ``n`` each row's count in the text
    the sensitivity was measured on (``fisher_counts``; default ``counts``) and rare = counted once in ``counts``
    among the rows that text uses (widened to <= 2, 4, ... occurrences until ``min_rows`` rows qualify); at least 1.
    (Measured on MiniLM: benchmarks/post_training.py logs it.)

    Example:
        >>> f = np.array([[1.0, 1.0], [4.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
        >>> unseen_scale(f, np.array([3, 1, 0, 0]), min_rows=1)
        3.2
    """
    c = np.asarray(counts, np.float64)
    fc = c if fisher_counts is None else np.asarray(fisher_counts, np.float64)
    s = np.asarray(f, np.float64).reshape(c.size, -1).sum(axis=1)
    seen = fc > 0
    if not seen.any() or s[seen].sum() <= 0:
        return 1.0
    average = s[seen].sum() / fc[seen].sum()
    k = 1.0
    while True:
        rare = seen & (c <= k)
        if rare.sum() >= min_rows or rare.sum() == seen.sum():
            break
        k *= 2
    if not rare.any():
        return 1.0
    # never below 1: rows seen rarely can look insensitive for reasons an unseen row does not share (padding
    # positions of a text model's position table are counted but masked), and the unseen mass is a floor
    return max(1.0, float(s[rare].sum() / fc[rare].sum() / average))


def usage_fisher(f: np.ndarray, counts: np.ndarray, fisher_counts: np.ndarray | None = None, *,
                 rare_scale: bool = True) -> np.ndarray:
    """Sensitivity of an embedding table's weights from how often each row is used: the mean sensitivity profile
    of the used rows (over columns), times each row's count relative to the mean count of the used rows.

    Rows the calibration never used get the Good-Turing estimate of the unseen mass spread over them: a
    pseudo-count of ``N1 / n_unused`` (``N1``: rows used exactly once), so they are neither free to destroy nor as
    important as the common tokens, times :func:`unseen_scale` (one occurrence of a rare row weighs more than the
    average occurrence; ``fisher_counts``: the row counts of the text ``f`` was measured on, default ``counts``;
    ``rare_scale=False``: not).

    Example:
        >>> usage_fisher(np.ones((4, 2)), np.array([3, 1, 0, 0])).tolist()
        [[1.5, 1.5], [0.5, 0.5], [0.25, 0.25], [0.25, 0.25]]
    """
    c = np.asarray(counts, np.float64)
    used = c > 0
    if not used.any():
        return f
    ones, unused = float((c == 1).sum()), float((~used).sum())
    pseudo = ones / unused * (unseen_scale(f, c, fisher_counts) if rare_scale else 1.0) if unused else 0.0
    weight = np.where(used, c, pseudo) / c[used].mean()
    profile = f.reshape(f.shape[0], -1)[used].mean(axis=0)  # (C,)
    return (weight[:, None] * profile[None, :]).reshape(f.shape)

