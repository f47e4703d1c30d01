"""Knowledge distillation for sequence models (Kim & Rush 2016, arXiv 1606.07947), generic over encoder-decoders.

- **word-level KD**: at every target position the student matches the teacher's softened distribution
  (temperature T) on the reference prefix, mixed with the usual cross-entropy:
  ``(1 - alpha) CE(student, y) + alpha T^2 KL(softmax(teacher/T) || softmax(student/T))``.
- **sequence-level KD**: the student is trained with plain cross-entropy on the teacher's beam-search outputs
  instead of the references (:func:`teacher_targets`, computed once, batched, and cached on disk).
- **both**: the teacher's beam outputs as targets *and* the word-level loss on them.

Any model works that follows :mod:`deepzip.models.seq2seq`'s protocol: ``model(src, src_len, tgt_in) -> logits (B, T,
V)``
for training, and ``encode``/``step``/``init_hidden``/``expand``/``select`` for decoding.

Example:
    >>> import torch
    >>> from deepzip.models.seq2seq import Seq2Seq, Seq2SeqConfig
    >>> s = Seq2Seq(Seq2SeqConfig(src_vocab=8, tgt_vocab=8, emb=4, enc=4, dec=4))
    >>> t = Seq2Seq(Seq2SeqConfig(src_vocab=8, tgt_vocab=8, emb=8, enc=8, dec=8))
    >>> src, tgt = [[3, 4], [5, 6, 7]], [[4, 5], [6]]
    >>> hist = fit_seq2seq(s, src, tgt, SeqTrainConfig(epochs=1, batch_size=2, progress=False), teacher=t)
    >>> len(hist["loss"]) == 1 and hist["loss"][0] > 0
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..models.seq2seq import PAD, decode_many, pad_batch

__all__ = [
    "KD_MODES",
    "SeqTrainConfig",
    "distill_seq2seq",
    "fit_seq2seq",
    "sequence_ce",
    "teacher_logits",
    "teacher_targets",
    "word_kd_loss",
]

#: Student training modes: references only, word-level KD, sequence-level KD, and both.
KD_MODES = ("labels", "word", "seq", "both")


@dataclass
class SeqTrainConfig:
    """Training of an encoder-decoder: Adam with linear warm-up (``warmup`` steps) then cosine decay to
    ``lr * final_lr``; batches of similar source length; gradient norm clipped at ``clip``. ``temperature`` and
    ``alpha`` (weight of the KD term) apply when a teacher is given."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    final_lr: float = 0.02
    warmup: int = 200
    clip: float = 1.0
    weight_decay: float = 0.0
    temperature: float = 1.0
    alpha: float = 0.5
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"epochs={self.epochs}, batch_size={self.batch_size}: expected >= 0 and >= 1")
        if not self.lr > 0 or not self.temperature > 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"lr={self.lr}, temperature={self.temperature}, alpha={self.alpha}: expected lr > 0, "
                             "T > 0, alpha in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sequence_ce(logits: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over non-PAD target tokens; ``logits`` (B, T, V), ``tgt_out`` (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD)


def word_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tgt_out: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))`` per target token, averaged over non-PAD tokens.

    Example:
        >>> z = torch.randn(2, 3, 5)
        >>> float(word_kd_loss(z, z, torch.ones(2, 3, dtype=torch.long))) < 1e-6
        True
    """
    keep = tgt_out != PAD  # (B, T)
    s = F.log_softmax(student_logits[keep] / temperature, dim=-1)  # (N, V)
    t = F.log_softmax(teacher_logits[keep] / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (N,)
    return kl.mean() * temperature ** 2 if kl.numel() else student_logits.sum() * 0.0


def _batches(n: int, src: list[list[int]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar source length: shuffle, sort within chunks of 50 batches, shuffle the batches."""
    order = list(range(n))
    rng.shuffle(order)
    chunk = 50 * batch_size
    batches = []
    for c in range(0, n, chunk):
        part = sorted(order[c:c + chunk], key=lambda i: len(src[i]))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def fit_seq2seq(
    model: nn.Module,
    sources: list[list[int]],
    targets: list[list[int]],
    config: SeqTrainConfig,
    *,
    teacher: nn.Module | None = None,
    desc: str = "train",
    step_callback: Any = None,
    teacher_logits: Sequence[torch.Tensor] | None = None,
    epoch_callback: Callable[[int, float], None] | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` on (source ids, target ids) pairs, in place; with a ``teacher``, add word-level KD.

    Args:
        model: an encoder-decoder, ``model(src, src_len, tgt_in) -> logits``.
        sources / targets: id lists without special tokens (SOS/EOS are added here).
        config: see :class:`SeqTrainConfig`.
        teacher: when given, the loss is ``(1 - alpha) CE + alpha T^2 KL`` against its logits (word-level KD).
        step_callback: ``step_callback(model, step)`` after every optimizer step (e.g. a pruning schedule).
        teacher_logits: the teacher's logits per pair, precomputed by :func:`teacher_logits` (``(len(target) + 1, V)``
            each): word-level KD without running the teacher at every step (the same loss: the teacher is frozen and
            in eval mode, so its logits do not change during training).
        epoch_callback: ``epoch_callback(epoch, mean_loss)`` after every epoch (progress in a log file, say).

    Returns:
        ``{"loss": [mean loss per epoch]}``.
    """
    config.validate()
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources for {len(targets)} targets")
    if teacher_logits is not None and len(teacher_logits) != len(targets):
        raise ValueError(f"{len(teacher_logits)} teacher logit rows for {len(targets)} targets")
    dev = torch.device(config.device)
    model.to(dev).train()
    if teacher is not None:
        teacher.to(dev).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    rng = random.Random(config.seed)
    steps_per_epoch = math.ceil(len(sources) / config.batch_size)
    total = max(1, steps_per_epoch * config.epochs)

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        t = (step - config.warmup) / max(1, total - config.warmup)
        return config.lr * (config.final_lr + (1 - config.final_lr) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    history: dict[str, list[float]] = {"loss": []}
    step = 0
    torch.manual_seed(config.seed)
    bar = tqdm(total=total, desc=desc, disable=not config.progress, leave=False)
    for epoch in range(config.epochs):
        run, count = 0.0, 0
        for idx in _batches(len(sources), sources, config.batch_size, rng):
            src, n = pad_batch([sources[i] for i in idx])
            tgt_in, _ = pad_batch([targets[i] for i in idx], sos=True)
            tgt_out, _ = pad_batch([targets[i] for i in idx], eos=True)
            src, tgt_in, tgt_out = src.to(dev), tgt_in.to(dev), tgt_out.to(dev)
            logits = model(src, n, tgt_in)  # (B, T, V)
            loss = sequence_ce(logits, tgt_out)
            if (teacher is not None or teacher_logits is not None) and config.alpha > 0:
                if teacher_logits is not None:
                    t_logits = _pad_logits([teacher_logits[i] for i in idx], tgt_out.shape[1]).to(dev)
                else:
                    assert teacher is not None
                    with torch.no_grad():
                        t_logits = teacher(src, n, tgt_in)
                kd = word_kd_loss(logits, t_logits, tgt_out, config.temperature)
                loss = (1 - config.alpha) * loss + config.alpha * kd
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip > 0:
                nn.utils.clip_grad_norm_(params, config.clip)
            opt.step()
            step += 1
            if step_callback is not None:
                step_callback(model, step)
            run, count = run + float(loss.detach()) * len(idx), count + len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{run / count:.3f}")
        history["loss"].append(run / max(count, 1))
        if epoch_callback is not None:
            epoch_callback(epoch, history["loss"][-1])
    bar.close()
    model.eval()
    return history


def _pad_logits(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack per-pair logits ``(T_i, V)`` into ``(B, length, V)``, zero-padded (padding is masked by the loss)."""
    out = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
    for b, r in enumerate(rows):
        out[b, :r.shape[0]] = r
    return out


@torch.no_grad()
def teacher_logits(
    teacher: nn.Module,
    sources: list[list[int]],
    targets: list[list[int]],
    *,
    batch_size: int = 512,
    device: str = "cpu",
    progress: bool = False,
) -> list[torch.Tensor]:
    """The teacher's teacher-forced logits for every (source, target) pair, ``(len(target) + 1, V)`` float32 each
    (one row per target token and one for EOS), computed once in eval mode in batches of similar length.

    What :func:`fit_seq2seq` needs for word-level KD (``teacher_logits=``) without a teacher pass per training step.
    """
    was = teacher.training
    teacher.to(device).eval()
    order = sorted(range(len(sources)), key=lambda i: (len(sources[i]), len(targets[i])))
    out: list[torch.Tensor] = [torch.empty(0)] * len(sources)
    bar = tqdm(total=len(sources), desc="teacher logits", disable=not progress, leave=False, unit="pair")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        src, n = pad_batch([sources[i] for i in idx])
        tgt_in, _ = pad_batch([targets[i] for i in idx], sos=True)
        logits = teacher(src.to(device), n, tgt_in.to(device)).float().cpu()  # (B, T, V)
        for b, i in enumerate(idx):
            out[i] = logits[b, :len(targets[i]) + 1].clone()
        bar.update(len(idx))
    bar.close()
    teacher.train(was)
    return out


def _model_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def teacher_targets(
    teacher: nn.Module,
    sources: list[list[int]],
    *,
    beam: int = 5,
    batch_size: int = 256,
    max_len: int = 30,
    cache: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> list[list[int]]:
    """The teacher's beam-search output for every source (sequence-level KD targets), computed once.

    Duplicate sources are decoded once. With ``cache``, the outputs are stored in that JSON file together with a
    digest of the teacher's weights, the sources and the beam width, and reused when all three match.
    """
    key = hashlib.sha256(json.dumps([_model_digest(teacher), beam, max_len, sources]).encode()).hexdigest()[:16]
    if cache is not None and Path(cache).is_file():
        try:
            stored = json.loads(Path(cache).read_text())
            if stored.get("key") == key:
                return [list(t) for t in stored["targets"]]
        except (OSError, ValueError):
            pass  # a broken cache is recomputed
    unique = sorted({tuple(s) for s in sources})
    teacher.to(device)
    outs = decode_many(teacher, [list(u) for u in unique], beam=beam, batch_size=batch_size, max_len=max_len,
                       device=device, progress=progress, desc=f"teacher beam {beam}")
    table = dict(zip(unique, outs))
    targets = [table[tuple(s)] for s in sources]
    if cache is not None:
        path = Path(cache)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # temp file + rename: never a half-written cache
        tmp.write_text(json.dumps({"key": key, "beam": beam, "targets": targets}))
        os.replace(tmp, path)
    return targets


def distill_seq2seq(
    student: nn.Module,
    teacher: nn.Module,
    sources: list[list[int]],
    labels: list[list[int]],
    config: SeqTrainConfig,
    *,
    mode: str = "seq",
    seq_targets: list[list[int]] | None = None,
    beam: int = 5,
    cache: str | os.PathLike[str] | None = None,
    desc: str | None = None,
) -> dict[str, list[float]]:
    """Train ``student`` from ``teacher`` in one of :data:`KD_MODES`, in place.

    ``labels``: reference targets (used by ``"labels"`` and ``"word"``). ``"seq"``/``"both"`` train on the teacher's
    beam outputs: ``seq_targets`` if given (one per source), else :func:`teacher_targets` (cached at ``cache``).
    """
    if mode not in KD_MODES:
        raise ValueError(f"mode={mode!r}, expected one of {KD_MODES}")
    if mode in ("seq", "both") and seq_targets is None:
        seq_targets = teacher_targets(teacher, sources, beam=beam, cache=cache, device=config.device,
                                      progress=config.progress)
    targets = seq_targets if mode in ("seq", "both") else labels
    assert targets is not None
    return fit_seq2seq(student, sources, targets, config, teacher=teacher if mode in ("word", "both") else None,
                       desc=desc or f"student ({mode})")
