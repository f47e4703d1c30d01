"""Distillation from the original model: codebooks, float16 tensors, biases and norms (and optionally the indices)
fine-tuned to the original's outputs on unlabeled inputs, then stored again."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..share import set_codebooks_
from ..walk import Own
from ._calibration import _default_forward
from ._candidates import _stored_bytes
from ._types import BoundError, Candidate, Forward, PostTrainResult


class _Rounded(Own):
    """Parametrization for quantisation-aware distillation of a one-codebook tensor: a float ``latent`` copy of the
    weights is rounded to the nearest codebook value in the forward pass, with the straight-through gradient
    (``w = codebook[nearest(latent)] + latent - stop_grad(latent)``), so the indices themselves can change; the
    codebook values get their gradient through the gather. Outliers stay exact."""

    def __init__(self, cand: Candidate, shape: Sequence[int]) -> None:
        super().__init__()
        assert cand.codebooks is not None and cand.codebooks.shape[0] == 1
        self.centroids = nn.Parameter(torch.from_numpy(cand.codebooks.astype(np.float32)))  # (1, k)
        self.latent = nn.Parameter(torch.from_numpy(cand.weight(shape).astype(np.float32).reshape(-1)))
        self.register_buffer("pos", torch.from_numpy(np.asarray(cand.outlier_pos, np.int64)))
        self.register_buffer("val", torch.from_numpy(np.asarray(cand.outlier_val, np.float32)))
        self.shape = tuple(shape)

    def indices(self) -> torch.Tensor:
        """(numel,) index of the codebook value nearest each latent weight."""
        with torch.no_grad():
            cb = self.centroids.reshape(-1)
            s, perm = cb.sort()
            if s.numel() == 1:
                return torch.zeros(self.latent.shape, dtype=torch.long)
            return perm[torch.searchsorted((s[1:] + s[:-1]) / 2, self.latent.detach())]

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        w = self.centroids.reshape(-1)[self.indices()] + self.latent - self.latent.detach()
        if self.pos.numel():
            w = w.index_put((self.pos,), self.val)
        return w.reshape(self.shape)


def distill_(
    model: nn.Module,
    teacher: nn.Module,
    result: PostTrainResult,
    batches: Sequence[Any],
    *,
    forward: Forward | None = None,
    seconds: float = 300.0,
    max_steps: int | None = None,
    lr: float = 1e-4,
    latent_lr: float = 0.0,
    modules: dict[str, nn.Module] | None = None,
    progress: bool = False,
    schedule: str = "constant",
    hidden: Sequence[str] = (),
    hidden_weight: float = 1.0,
) -> list[float]:
    """Fine-tune the compressed ``model`` to match ``teacher`` (the original) on unlabeled inputs; in place.

    The codebooks (one centroid set per group), the float16 tensors, and every parameter not compressed (biases,
    norms) are trained with Adam on ``1 - cos(student, teacher)`` of the outputs; indices and outliers stay, and so
    do quantised embedding tables (their codebooks see only the rows a batch uses; rebuilding the table every step
    would cost more than it buys). Afterwards codebooks and float16 tensors are rounded to float16 again and
    written back into ``result``, and the parameters allocation rounded to float16 (``result.float16_others``) are
    rounded again.

    Args:
        model: the model :func:`compress_to_bound_` compressed.
        teacher: the original model (not changed).
        result: the result whose choices are fine-tuned (updated in place).
        batches: unlabeled input batches, cycled until ``seconds`` run out (or ``max_steps`` are taken).
        forward: as for :func:`compress_to_bound_`.
        seconds: budget in CPU seconds of this process (``time.process_time``); ``math.inf``: none.
        max_steps: at most this many steps (None: as many as ``seconds`` allow). With a step cap and an
            unlimited time budget the result does not depend on the machine's speed (tests, reproductions).
        lr: Adam learning rate.
        latent_lr: > 0: also move the weights between codebook values (quantisation-aware training with the
            straight-through estimator, Adam at this rate on a float copy of each one-codebook tensor); the indices
            change, so the stored size is computed again afterwards. 0: indices stay.
        modules: the compressed modules (default: found from ``result`` names).
        progress: show a progress bar over the steps.
        schedule: ``"constant"`` learning rates, or ``"cosine"``: both rates decay to 0 along a half cosine of the
            budget spent: the CPU time spent (``time.process_time``) over ``seconds``, or the steps taken over
            ``max_steps``, whichever is further along.
        hidden: names of modules (the same in ``model`` and ``teacher``) whose outputs are matched too, as in
            intermediate-layer distillation (TinyBERT, Jiao et al. 2020): ``hidden_weight`` times the mean over
            them of the relative squared error ``|h - h_teacher|^2 / |h_teacher|^2`` is added to the loss (a
            module returning a tuple is matched on its first tensor).
        hidden_weight: weight of the hidden-state term.

    Returns:
        The loss of every step (the output term, ``1 - cos``).

    Raises:
        BoundError: an unknown schedule, no batches, ``max_steps < 1``, or a ``hidden`` name missing from a model.

    Example:
        >>> import copy
        >>> from deepzip.techniques.posttrain import PostTrainConfig, compress_to_bound_
        >>> torch.manual_seed(0) and None
        >>> teacher = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
        >>> model = copy.deepcopy(teacher)
        >>> xs = [torch.randn(64, 32) for _ in range(2)]
        >>> res = compress_to_bound_(model, xs, PostTrainConfig(max_drop=0.05, min_numel=64))
        >>> len(distill_(model, teacher, res, xs, seconds=math.inf, max_steps=20, lr=1e-3))
        20
    """
    start = time.process_time()  # the budget counts the teacher's forward passes too
    _check(schedule, batches, max_steps)
    fwd = forward or _default_forward
    named = dict(model.named_modules())
    mods = modules if modules is not None else {n: named[n[: -len(".weight")]] for n in result.choices}
    t_named = dict(teacher.named_modules())
    missing = [h for h in hidden if h not in t_named or h not in named]
    if missing:
        raise BoundError(f"hidden={missing[0]!r}: no such module in the model and the teacher")
    targets, hidden_targets = _teacher_targets(teacher, batches, fwd, [t_named[h] for h in hidden], hidden)
    opt = _optimizer(model, mods, result, lr, latent_lr)
    model.train(False)  # no dropout: match the teacher's deterministic outputs
    try:
        with _capture([named[h] for h in hidden], hidden) as captured:

            def step_loss(i: int) -> tuple[torch.Tensor, torch.Tensor]:
                """(output loss, total loss) of batch ``i``: ``1 - cos``, plus the weighted hidden-state term."""
                y = fwd(model, batches[i])
                y = y.reshape(y.shape[0], -1)
                loss = (1 - nn.functional.cosine_similarity(y, targets[i], dim=1)).mean()
                if not hidden:
                    return loss, loss
                rel = [(captured[h] - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)
                       for h, t in hidden_targets[i].items()]
                return loss, loss + hidden_weight * torch.stack(rel).mean()

            return _train(opt, step_loss, len(batches), start, seconds, max_steps, schedule, progress)
    finally:
        _store_back_(model, mods, result)


def _check(schedule: str, batches: Sequence[Any], max_steps: int | None) -> None:
    if schedule not in ("constant", "cosine"):
        raise BoundError(f"schedule={schedule!r}: expected 'constant' or 'cosine'")
    if not batches:
        raise BoundError("the distillation set is empty: give at least one batch of inputs")
    if max_steps is not None and max_steps < 1:
        raise BoundError(f"max_steps={max_steps}: expected >= 1 (or None: as many as the time budget allows)")


@contextlib.contextmanager
def _capture(modules: Sequence[nn.Module], names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, the last output of each of ``modules`` (its first tensor, for a tuple) under its name."""
    captured: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            captured[name] = out if isinstance(out, torch.Tensor) else next(
                t for t in out if isinstance(t, torch.Tensor))
        return hook

    handles = [m.register_forward_hook(grab(n)) for m, n in zip(modules, names)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        captured.clear()


def _teacher_targets(teacher: nn.Module, batches: Sequence[Any], fwd: Forward, modules: Sequence[nn.Module],
                     names: Sequence[str]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The teacher's outputs on every batch, (N, D) float32, and the outputs of its ``modules`` (by ``names``)."""
    targets: list[torch.Tensor] = []
    hidden_targets: list[dict[str, torch.Tensor]] = []
    with _capture(modules, names) as captured, torch.no_grad():
        teacher.eval()
        for b in batches:
            y = fwd(teacher, b)
            targets.append(y.reshape(y.shape[0], -1).float())
            hidden_targets.append({h: captured[h].detach().float() for h in names})
    return targets, hidden_targets


def _optimizer(model: nn.Module, mods: dict[str, nn.Module], result: PostTrainResult, lr: float,
               latent_lr: float) -> torch.optim.Adam:
    """Adam over what distillation trains: codebooks (through parametrizations), float16 tensors, every parameter
    not compressed (biases, norms), and with ``latent_lr`` the latent weights of one-codebook tensors."""
    params: list[nn.Parameter] = []
    latents: list[nn.Parameter] = []
    frozen: list[torch.Tensor] = []
    for n, m in mods.items():
        c = result.choices[n]
        if c.bits and isinstance(m, nn.Embedding):
            # kept as stored: a table's codebook gets gradient only through the few rows a batch uses, and
            # rebuilding the whole table from it every step costs ~15% of a MiniLM step (more steps instead)
            m.weight.requires_grad_(False)
            frozen.append(m.weight)
        elif c.bits == 0:
            m.weight.requires_grad_(True)
            params.append(m.weight)
        else:
            rounded = latent_lr > 0 and c.codebooks is not None and c.codebooks.shape[0] == 1
            if rounded:
                parametrize.register_parametrization(m, "weight", _Rounded(c, m.weight.shape), unsafe=True)
                m.parametrizations["weight"].original.requires_grad_(False)  # type: ignore[index,union-attr]
            else:  # the codebook parametrization a loaded post-training file gets too: codebooks train, indices stay
                set_codebooks_(m, **c.codebook_parts(m.weight.shape))
            p = m.parametrizations["weight"]  # type: ignore[index,union-attr]
            params.append(p[0].centroids)
            if rounded:
                latents.append(p[0].latent)
    taken = {id(q) for q in params + latents + frozen} | {
        id(m.parametrizations["weight"].original) for m in mods.values()  # type: ignore[index,union-attr]
        if parametrize.is_parametrized(m)}
    others = [p for p in model.parameters() if id(p) not in taken]  # biases, norms, small tensors
    for p in others:
        p.requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": params + others, "lr": lr}]
    if latents:
        groups.append({"params": latents, "lr": latent_lr})
    return torch.optim.Adam(groups)


def _train(opt: torch.optim.Optimizer, step_loss: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
           n_batches: int, start: float, seconds: float, max_steps: int | None, schedule: str,
           progress: bool) -> list[float]:
    """Steps over the batches in turn until ``seconds`` of CPU time since ``start`` or ``max_steps`` are spent;
    returns the output loss of every step."""
    end = start + seconds  # CPU seconds of this process: the budget does not shrink under load
    base_lrs = [g["lr"] for g in opt.param_groups]
    losses: list[float] = []
    step = 0
    with tqdm(desc="distill", total=max_steps, disable=not progress, leave=False) as bar:
        while (now := time.process_time()) < end and (max_steps is None or step < max_steps):
            if schedule == "cosine":
                spent = (now - start) / max(seconds, 1e-9)
                if max_steps is not None:
                    spent = max(spent, step / max_steps)
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = base * 0.5 * (1 + math.cos(math.pi * min(1.0, spent)))
            loss, total = step_loss(step % n_batches)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
    return losses


def _store_back_(model: nn.Module, mods: dict[str, nn.Module], result: PostTrainResult) -> None:
    """Round what was trained to what the file stores (float16 codebooks and tensors, the latent weights' nearest
    indices, the parameters allocation rounded to float16), write it into ``result``'s choices and bake it into
    plain weights."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in result.float16_others:
            if name in params:
                half = params[name].to(torch.float16)
                if bool(torch.isfinite(half).all()):  # trained out of float16's range: stays float32
                    params[name].copy_(half.to(params[name].dtype))
        for n, m in mods.items():
            c = result.choices[n]
            if c.bits and isinstance(m, nn.Embedding):
                continue
            if c.bits == 0:
                c.fp16 = m.weight.detach().cpu().numpy().astype(np.float16)
                m.weight.copy_(torch.from_numpy(c.fp16.astype(np.float32)))
                continue
            par = m.parametrizations["weight"][0]  # type: ignore[index,union-attr]
            c.codebooks = par.centroids.detach().cpu().numpy().astype(np.float16)
            if isinstance(par, _Rounded):
                k = c.codebooks.shape[1]
                labels = par.indices().cpu().numpy().reshape(c.labels.shape)  # type: ignore[union-attr]
                c.labels = labels.astype(np.uint8 if k <= 256 else np.uint16)
                c.nbytes = _stored_bytes(c.labels, c.codebooks, c.outlier_pos)
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            m.weight.copy_(torch.from_numpy(c.weight(m.weight.shape)))
