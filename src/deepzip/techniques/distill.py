"""Knowledge distillation (Hinton, Vinyals, Dean 2015, arXiv 1503.02531): train a student on a teacher's soft targets.

The loss is ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``. The soft term is the
KL divergence, not the soft-target cross-entropy: the two differ only by the teacher's entropy, a constant that
carries no gradient, and KL reads as 0 when the student matches the teacher. The ``T^2`` factor keeps the soft
term's gradients at the same scale for every temperature (they shrink as ``1/T^2`` otherwise), so ``alpha`` means
the same thing at T=2 and at T=20.

Teacher logits are computed once (:func:`teacher_logits`) and looked up per batch by the dataset indices that
:func:`deepzip.train.fit` hands to its ``loss_fn``: the teacher costs one forward pass over the data set instead of
one per epoch. With input jitter on the *student* the cached logits are of the unjittered image, a slightly
different input; ``distill(..., cache=False)`` runs the teacher per batch on the same augmented input instead, at
the cost of a teacher forward pass per step. (The paper jittered the teacher's input only; its students saw the
plain images, where the cache is exact.)

Example:
    >>> import torch
    >>> from deepzip.apps.mnist.data import synthetic_mnist
    >>> from deepzip.models import get_model
    >>> from deepzip.train import TrainConfig
    >>> data = synthetic_mnist(256)
    >>> teacher, student = get_model("mlp30"), get_model("mlp30")
    >>> log = distill(student, teacher, data, TrainConfig(epochs=1, progress=False), temperature=4.0, alpha=0.9)
    >>> len(log)
    1
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..train import LossFn, TrainConfig, fit, jitter, jitter_augment, predict

__all__ = [
    "distill", "distill_loss_fn", "distillation_loss", "jitter", "live_teacher", "teacher_logits", "teacher_loss_for",
]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]  # also NumPy scalars and 0-d tensors
    except (TypeError, ValueError):
        return math.nan


def _check_hyper(temperature: float, alpha: float) -> None:
    t, a = _number(temperature), _number(alpha)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature={temperature}, expected a finite number > 0")
    if not 0.0 <= a <= 1.0:  # NaN fails too
        raise ValueError(f"alpha={alpha}, expected a weight in [0, 1]")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch.

    ``alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(q_1, labels)`` with ``p_T = softmax(teacher / T)``,
    ``q_T = softmax(student / T)``. No gradient flows into ``teacher_logits``.

    Args:
        student_logits: (B, C) logits of the student.
        teacher_logits: (B, C) logits of the teacher for the same inputs.
        labels: (B,) class indices; may be None only when ``alpha == 1`` (an unlabelled transfer set).
        temperature: T > 0 of the soft term (the paper: 20 for large students, 2.5-4 for tiny ones).
        alpha: weight of the soft term in [0, 1]; ``alpha=0`` is plain cross-entropy on the labels.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: teacher and student disagree on the number of classes or the batch size, T <= 0,
            alpha outside [0, 1], or labels missing while alpha < 1.

    Example:
        >>> s, t, y = torch.zeros(4, 10), torch.zeros(4, 10), torch.zeros(4, dtype=torch.long)
        >>> float(distillation_loss(s, t, y, temperature=20.0, alpha=1.0))
        0.0
    """
    _check_hyper(temperature, alpha)
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError(f"distillation_loss: expected (batch, classes) logits, got student "
                         f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}")
    if student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(f"distillation_loss: the student has {student_logits.shape[1]} classes but the teacher has "
                         f"{teacher_logits.shape[1]}; both must predict the same classes")
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(f"distillation_loss: batch of {student_logits.shape[0]} student logits but "
                         f"{teacher_logits.shape[0]} teacher logits")
    if labels is None and alpha < 1.0:
        raise ValueError(f"distillation_loss: labels=None needs alpha=1 (got alpha={alpha})")
    loss = student_logits.new_zeros(())
    alpha = float(alpha)
    if alpha > 0.0:
        t = float(temperature)
        log_q = F.log_softmax(student_logits / t, dim=1)  # (B, C)
        log_p = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / t, dim=1)  # (B, C)
        soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        loss = loss + alpha * t * t * soft
    if alpha < 1.0:
        assert labels is not None  # checked above
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


@torch.no_grad()
def teacher_logits(teacher: nn.Module, data: Dataset | torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """The teacher's logits on every example of ``data`` (eval mode: no dropout), to index per batch.

    Args:
        teacher: the teacher model.
        data: a :class:`~deepzip.data.Dataset` or a tensor of inputs (N, ...).
        batch_size: examples per forward pass.

    Returns:
        (N, C) float tensor, row ``i`` for example ``i``: the cache :func:`distill_loss_fn` takes.

    Example:
        >>> from deepzip.apps.mnist.data import synthetic_mnist
        >>> from deepzip.models import get_model
        >>> tuple(teacher_logits(get_model("mlp30"), synthetic_mnist(32)).shape)
        (32, 10)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}, expected >= 1")
    x = data.x if isinstance(data, Dataset) else data
    return predict(teacher, x, batch_size).detach()


def distill_loss_fn(
    teacher: torch.Tensor | nn.Module,
    temperature: float,
    alpha: float,
    *,
    data: Dataset | None = None,
) -> LossFn:
    """A ``loss_fn(logits, labels, index)`` for :func:`deepzip.train.fit` that distills from ``teacher``.

    Args:
        teacher: either the (N, C) logit cache from :func:`teacher_logits` (looked up by ``index``), or the
            teacher module itself, run per batch in eval mode on ``data.x[index]`` (unaugmented inputs).
        temperature: T of the soft term.
        alpha: weight of the soft term in [0, 1].
        data: the training set; needed (only) with a teacher module.

    Returns:
        The loss function.

    Raises:
        ValueError: bad T or alpha; a teacher module without ``data``; at call time, an index beyond the cache
            (a cache computed on another data set).
        TypeError: ``teacher`` is neither a tensor nor a module.

    Example:
        >>> cache = torch.randn(100, 10)
        >>> loss_fn = distill_loss_fn(cache, temperature=4.0, alpha=0.9)
        >>> idx = torch.tensor([3, 7])
        >>> float(loss_fn(cache[idx].clone(), torch.tensor([0, 1]), idx)) >= 0.0
        True
    """
    _check_hyper(temperature, alpha)
    if isinstance(teacher, torch.Tensor):
        cache = teacher.detach()
        if cache.dim() != 2:
            raise ValueError(f"teacher logit cache has shape {tuple(cache.shape)}, expected (N, classes)")

        def cached(logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            if len(index) and int(index.max()) >= cache.shape[0]:
                raise ValueError(f"batch index {int(index.max())} is beyond the teacher cache of {cache.shape[0]} "
                                 "rows: was the cache computed on this data set?")
            return distillation_loss(logits, cache[index.to(cache.device)].to(logits.device), labels,
                                     temperature, alpha)

        return cached
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a logit tensor or an nn.Module, not {type(teacher).__name__}")
    if data is None:
        raise ValueError("distill_loss_fn: a live teacher module needs data= (the training set it indexes)")
    module, inputs = teacher, data.x

    def live(logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return distillation_loss(logits, _teacher_forward(module, inputs[index]), labels, temperature, alpha)

    return live


@torch.no_grad()
def _teacher_forward(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = teacher.training
    teacher.eval()
    out = teacher(x)
    teacher.train(was_training)
    return out


class _LiveOnAugmented:
    """Runs the teacher on each batch's augmented input: ``augment`` stashes the teacher's logits, the loss uses them.

    fit() calls ``augment(x)`` then ``loss_fn(model(x), y, idx)`` for the same batch, so the stash always belongs to
    the batch being scored.
    """

    def __init__(self, teacher: nn.Module, augment: Augment, temperature: float, alpha: float) -> None:
        self.teacher, self.base, self.temperature, self.alpha = teacher, augment, temperature, alpha
        self.stash: torch.Tensor | None = None

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.base(x, generator)
        self.stash = _teacher_forward(self.teacher, x)
        return x

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.stash is None or self.stash.shape[0] != logits.shape[0]:
            raise RuntimeError("live teacher: no teacher logits for this batch (augment was not called)")
        stash, self.stash = self.stash, None  # used once: a stale batch's logits must never score the next one
        return distillation_loss(logits, stash, labels, self.temperature, self.alpha)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    cfg: TrainConfig | None = None,
    *,
    temperature: float,
    alpha: float,
    cache: bool = True,
    augment: Augment | None = None,
    eval_data: Dataset | None = None,
    desc: str = "distill",
) -> list[dict]:
    """Train ``student`` in place on ``data`` with the distillation loss from ``teacher``; returns fit()'s log.

    Args:
        student: the model to train.
        teacher: the trained teacher (left unchanged; run in eval mode).
        data: the transfer set (with labels for the hard term).
        cfg: training settings (epochs, lr schedule, ...).
        temperature: T of the soft term.
        alpha: weight of the soft term; ``1 - alpha`` goes to cross-entropy on the labels.
        cache: compute the teacher's logits once (fast); False runs the teacher every step, on the augmented
            input when ``augment`` is given (exact soft targets for jittered inputs).
        augment: optional input augmentation of the student's batches, e.g. :func:`jitter` (the default when
            ``cfg.jitter`` > 0).
        eval_data: test set evaluated after each epoch, if given.
        desc: progress-bar label.

    Raises:
        ValueError: bad T or alpha; teacher and student predict different numbers of classes.
    """
    _check_hyper(temperature, alpha)
    if augment is None and cfg is not None:  # explicit, so the live teacher sees the same shifts
        augment = jitter_augment(cfg.jitter)
    with torch.no_grad():  # fail before training, with the class counts named, rather than at the first step
        probe = data.x[:1]
        was = student.training
        student.eval()
        n_s, n_t = student(probe).shape[-1], _teacher_forward(teacher, probe).shape[-1]
        student.train(was)
    if n_s != n_t:
        raise ValueError(f"distill: the student has {n_s} classes but the teacher has {n_t}")
    if cache:
        loss_fn = distill_loss_fn(teacher_logits(teacher, data), temperature, alpha)
        return fit(student, data, cfg, loss_fn=loss_fn, augment=augment, eval_data=eval_data, desc=desc)
    if augment is None:
        loss_fn = distill_loss_fn(teacher, temperature, alpha, data=data)
        return fit(student, data, cfg, loss_fn=loss_fn, eval_data=eval_data, desc=desc)
    live = _LiveOnAugmented(teacher, augment, temperature, alpha)
    return fit(student, data, cfg, loss_fn=live, augment=live.augment, eval_data=eval_data, desc=desc)


def live_teacher(
    teacher: nn.Module, augment: Augment, temperature: float, alpha: float
) -> tuple[LossFn, Augment]:
    """``(loss_fn, augment)`` for :func:`deepzip.train.fit` when the inputs are augmented: ``augment`` shifts each
    batch and runs ``teacher`` on the shifted images, ``loss_fn`` distills from those logits (a logit cache would
    hold the unshifted images' targets). Pass both to the same ``fit`` call.

    Example:
        >>> from deepzip.apps.mnist.data import synthetic_mnist
        >>> from deepzip.models import get_model
        >>> from deepzip.train import TrainConfig, fit, jitter
        >>> loss_fn, aug = live_teacher(get_model("lenet300"), jitter, temperature=4.0, alpha=0.5)
        >>> log = fit(get_model("lenet300"), synthetic_mnist(64), TrainConfig(epochs=1, progress=False),
        ...           loss_fn=loss_fn, augment=aug)
        >>> len(log)
        1
    """
    _check_hyper(temperature, alpha)
    live = _LiveOnAugmented(teacher, augment, temperature, alpha)
    return live, live.augment


def teacher_loss_for(
    model: nn.Module, train_data: Dataset, temperature: float, alpha: float, *, batch_size: int = 2000
) -> LossFn:
    """Freeze ``model`` as its own teacher: the retraining loss for compression stages (prune, share).

    Caches the logits of ``model`` as it is *now* on ``train_data`` (that cache is the snapshot: later pruning or
    sharing of ``model`` does not change the targets) and returns ``distill_loss_fn(cache, T, alpha)``.
    The model is only run, in eval mode, and left as it was (no copy is made: stripping the parametrizations of a
    ``copy.deepcopy`` would delete the ``weight`` property from the parametrized class the copy shares with the
    original, breaking the original; and a copy costs a model's memory for nothing).
    Call it on the uncompressed model before pruning; pass the result as ``fit(..., loss_fn=...)`` in every
    retraining round after pruning and after weight sharing. The data set must be the one fit() then iterates
    (the cache is indexed by position).

    Example:
        >>> from deepzip.apps.mnist.data import synthetic_mnist
        >>> from deepzip.models import get_model
        >>> m, data = get_model("lenet300"), synthetic_mnist(64)
        >>> loss_fn = teacher_loss_for(m, data, temperature=4.0, alpha=0.5)
        >>> idx = torch.arange(8)
        >>> loss_fn(m(data.x[idx]), data.y[idx], idx).dim()
        0
    """
    _check_hyper(temperature, alpha)
    return distill_loss_fn(teacher_logits(model, train_data, batch_size), temperature, alpha)
