"""Training and evaluation loops used for training and for retraining after each compression stage.

Data sets are held in memory (:class:`deepzip.data.Dataset`); batches are index slices of a seeded permutation,
which is faster than a DataLoader for MNIST-sized data and lets a loss look up per-example extras (cached teacher
logits) by index. Under ``torch.distributed`` each rank trains on its own shard of the same permutation, so a
``DistributedDataParallel`` model sees the whole epoch across ranks.

Example:
    >>> from deepzip.apps.mnist.data import synthetic_mnist
    >>> from deepzip.models import get_model
    >>> m = get_model("lenet300")
    >>> _ = fit(m, synthetic_mnist(256), TrainConfig(epochs=1, progress=False))
    >>> 0.0 <= evaluate(m, synthetic_mnist(128, seed=1)).error_pct <= 100.0
    True
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Dataset

__all__ = ["EvalResult", "LossFn", "TrainConfig", "evaluate", "fit", "jitter", "jitter_augment", "predict", "set_seed"]


class LossFn(Protocol):
    """A training loss: ``loss_fn(logits, labels, index)``, ``index`` being the batch's positions in the data set."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TrainConfig:
    """Settings of one training run (SGD with momentum, L2 weight decay, a learning-rate schedule).

    ``schedule``: ``"cosine"`` (to zero over the run), ``"step"`` (x0.1 at 50% and 75%) or ``"constant"``.
    ``jitter``: shift each training image by up to this many pixels per axis (0: no augmentation).
    """

    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    optimizer: str = "sgd"
    seed: int = 0
    jitter: int = 0
    progress: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs={self.epochs}, expected >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr}, expected > 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}, expected >= 1")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"schedule={self.schedule!r}, expected 'cosine', 'step' or 'constant'")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int) or self.jitter < 0:
            raise ValueError(f"jitter={self.jitter!r}, expected an integer >= 0 (pixels)")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer={self.optimizer!r}, expected 'sgd' or 'adam'")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EvalResult:
    """Test error of a model on a data set."""

    error_pct: float
    errors: int
    n: int
    loss: float


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "constant" or total == 0:
        return cfg.lr
    t = step / total
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    return cfg.lr * (0.1 ** (int(t >= 0.5) + int(t >= 0.75)))


def fit(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig | None = None,
    *,
    loss_fn: LossFn | None = None,
    step_callback: Callable[[nn.Module, int], None] | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    eval_data: Dataset | None = None,
    desc: str = "train",
    schedule_span: tuple[int, int] | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``data``; returns a per-epoch log of train loss (and test error with ``eval_data``).

    Args:
        model: any ``nn.Module`` mapping a batch of ``data.x`` to logits, possibly wrapped in
            ``DistributedDataParallel`` (then each rank trains on its shard of every epoch).
        data: the training set.
        cfg: the run's settings.
        loss_fn: ``loss_fn(logits, labels, index)``; default cross-entropy on the labels.
        step_callback: called as ``step_callback(model, step)`` after every optimizer step (pruning schedules).
        augment: optional ``augment(x, generator)`` applied to each training batch; by default :func:`jitter`
            when ``cfg.jitter`` > 0.
        eval_data: evaluated after each epoch when given.
        desc: progress-bar label.
        schedule_span: ``(done, total)`` when this call is a part of a longer run (trained in pieces, e.g. with the
            model made smaller between them): the learning rate follows ``cfg.schedule`` over ``total`` steps, from
            step ``done`` on, and ``step_callback`` gets the step counted from the start of the whole run.
    """
    cfg = cfg or TrainConfig()
    check_fits(model, data)
    set_seed(cfg.seed)
    if augment is None:
        augment = jitter_augment(cfg.jitter)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    n = len(data)
    per_rank = n // world
    steps_per_epoch = math.ceil(per_rank / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    done, span = (0, total) if schedule_span is None else schedule_span
    if done < 0 or span < done + total:
        raise ValueError(f"schedule_span={schedule_span}: expected 0 <= done and done + {total} steps <= total")
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    log: list[dict] = []
    step = 0
    bar = tqdm(total=total, desc=desc, disable=not cfg.progress or rank != 0, leave=False, unit="step")
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)[rank * per_rank:(rank + 1) * per_rank]
        running, seen = 0.0, 0
        for start in range(0, per_rank, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            x, y = data.x[idx], data.y[idx]
            if augment is not None:
                x = augment(x, aug_gen)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, done + step, span)
            logits = model(x)
            loss = loss_fn(logits, y, idx) if loss_fn is not None else F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step_callback is not None:
                step_callback(model, done + step)
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{running / max(seen, 1):.4f}")
        entry = {"epoch": epoch + 1, "train_loss": running / max(seen, 1)}
        if eval_data is not None:
            entry["test_error_pct"] = evaluate(model, eval_data).error_pct
        log.append(entry)
    bar.close()
    return log


@torch.no_grad()
def check_fits(model: nn.Module, data: Dataset) -> None:
    """Run two examples through ``model`` (eval mode) and check it gives one logit row per example, with a column
    for every label in ``data``.

    Raises:
        DataError: one line with the input shape and what went wrong (a model built for other inputs).
    """
    from .errors import DataError

    x, y = data.x[:2], data.y
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"the model does not fit the data: inputs of shape {tuple(x.shape[1:])} give "
                        f"'{msg[:200]}'") from None
    finally:
        model.train(was_training)
    classes = int(y.max()) + 1 if y.numel() else 0
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0] or out.shape[1] < classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(f"the model does not fit the data: {x.shape[0]} inputs of shape {tuple(x.shape[1:])} give "
                        f"output {shape}, expected ({x.shape[0]}, >= {classes}) logits for labels 0..{classes - 1}")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched. Returns (N, classes)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]) if len(x) else \
        torch.empty(0)
    model.train(was_training)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, batch_size: int = 2000) -> EvalResult:
    """Top-1 error (percent), error count and mean cross-entropy of ``model`` on ``data``."""
    if len(data) == 0:
        raise ValueError("evaluate: empty data set")
    check_fits(model, data)
    logits = predict(model, data.x, batch_size)
    errors = int((logits.argmax(1) != data.y).sum())
    loss = float(F.cross_entropy(logits, data.y))
    return EvalResult(error_pct=100.0 * errors / len(data), errors=errors, n=len(data), loss=loss)


def jitter(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by a random whole number of pixels in [-max_shift, max_shift] on each axis, zero-filled.

    The input jitter of Hinton et al.'s MNIST teacher ("jittered by up to two pixels in any direction"); what
    :attr:`TrainConfig.jitter` turns on, and usable as :func:`fit`'s ``augment``.

    Args:
        x: (B, C, H, W) or (B, H, W) images.
        generator: a CPU generator (fit() passes its own, seeded).
        max_shift: the largest shift in pixels, >= 0.

    Returns:
        A new tensor of the same shape, dtype and device.

    Example:
        >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
        >>> y = jitter(x, torch.Generator().manual_seed(0), max_shift=1)
        >>> float(y.sum()), tuple(y.shape)
        (1.0, (1, 1, 5, 5))
    """
    if max_shift < 0:
        raise ValueError(f"max_shift={max_shift}, expected >= 0")
    if x.dim() not in (3, 4):
        raise ValueError(f"jitter: expected (B, C, H, W) or (B, H, W) images, got shape {tuple(x.shape)}")
    if max_shift == 0 or x.shape[0] == 0:
        return x.clone()
    squeeze = x.dim() == 3
    img = x.unsqueeze(1) if squeeze else x  # (B, C, H, W)
    b, _, h, w = img.shape
    s = max_shift
    shifts = torch.randint(-s, s + 1, (b, 2), generator=generator).to(img.device)  # (B, 2): dy, dx
    padded = F.pad(img, (s, s, s, s)).permute(0, 2, 3, 1)  # (B, H+2s, W+2s, C)
    # an image shifted by (dy, dx) reads the padded image at row i + s - dy, column j + s - dx
    rows = torch.arange(h, device=img.device)[None, :] + s - shifts[:, :1]  # (B, H)
    cols = torch.arange(w, device=img.device)[None, :] + s - shifts[:, 1:]  # (B, W)
    out = padded[torch.arange(b, device=img.device)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B,H,W,C)
    out = out.permute(0, 3, 1, 2).contiguous()
    return out.squeeze(1) if squeeze else out


def jitter_augment(max_shift: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """The ``augment`` of :func:`fit` that :attr:`TrainConfig.jitter` stands for: :func:`jitter` by up to
    ``max_shift`` pixels, or None for 0.

    Example:
        >>> jitter_augment(0) is None, jitter_augment(2) is not None
        (True, True)
    """
    return functools.partial(jitter, max_shift=max_shift) if max_shift > 0 else None
