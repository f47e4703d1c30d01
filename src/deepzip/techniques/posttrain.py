"""Post-training compression of a pretrained model under a quality bound, without labels or training data.

The user states how much output agreement may be lost (``max_drop``: ``1 - mean cosine`` between the compressed
and the original model's outputs on calibration inputs); this module picks, per weight tensor, how it is stored:

1. **Sensitivity weights.** The diagonal of the Gauss-Newton matrix of the output-agreement loss at the original
   weights, ``F = E_x diag(J^T J)`` with ``J`` the Jacobian of the (L2-normalised) output with respect to the
   weights, estimated with Rademacher probes: ``g = grad <v, u(x)>``, ``F += g**2`` (``E[g**2] = diag(J^T J)``).
   For unit outputs ``1 - cos(u, u0) = |u - u0|**2 / 2``, so ``drop ~= sum F * dw**2 / (2 N)``: the squared
   gradients of the output-agreement loss play the part the task-loss Fisher plays in SqueezeLLM
   (Kim et al. 2023, arXiv 2306.07629). Embedding tables are weighted by how often the calibration inputs use
   each row (:func:`row_counts`, :func:`usage_fisher`); rows never used get the Good-Turing estimate of the
   unseen mass (else they would look free to destroy, and evaluation text uses other tokens). Their damage is
   invisible to the calibration: it is predicted (the layer's sensitivity, measured on the rows the
   calibration uses, times their weighted error) and added to every measured drop.
2. **Candidates per tensor.** Uniform grids (zero-centred, step ``std / r``; the used levels are the codebook and
   Huffman codes the indices: entropy-coded scalar quantisation, every weight within half a step, so large weights
   are not sacrificed to the bulk as a k-means codebook does), and Fisher-weighted k-means
   (:func:`deepzip.techniques._kmeans.weighted_kmeans_rows`) at 2..8 bits with one codebook per tensor or per group
   of rows,
   with or without an exact side list of the largest-magnitude weights (outliers); plus float16 as a near-lossless
   top option. Embedding tables also get *tiered* grids: the rows the calibration uses on a fine grid, the others
   on a coarse one, each tier with its own codebook and Huffman stream (the ``tiered`` codec kind). Linear layers
   are rounded onto each per-tensor codebook or grid with GPTQ (:func:`gptq_round`,
   error compensation through the Gram matrix ``H`` of the layer's calibration inputs, :func:`input_grams`), and
   their errors use the Kronecker-factored proxy ``sum_i s_i dW_i H dW_i^T`` (see :func:`_proxy_error`), which
   sees the cross terms GPTQ exploits. Each candidate's bytes (exact Huffman stream + float16 codebooks +
   outliers) and error are computed; only the lower convex hull in (bytes, error) is kept, so per-row codebooks
   or outliers survive exactly where they pay for themselves.
   Measured on MiniLM (benchmarks/post_training.py): the grid beats k-means by far at equal bytes (embedding
   matrix at ~3 bits/weight: drop 0.002 vs 0.010), and Fisher-*weighted* k-means loses to plain k-means even with
   a reliable Fisher estimate, so the grids are unweighted; the Fisher still sets the per-row sensitivity ``s``.
3. **Per-layer sensitivities, measured once.** For every tensor one candidate is applied alone and the real drop
   on the calibration inputs is measured: ``alpha = drop / E`` turns the proxy into that layer's predicted drop.
4. **Budget split.** Steps down each tensor's hull, all tensors together, are taken greedily by predicted drop
   per byte saved until the predicted total reaches a budget; the budget is then searched (a few full
   measurements) for the smallest model whose *measured* drop is within ``max_drop``.
5. **Distillation from the original** (:func:`distill_`): centroids, float16 tensors, biases and norms are
   fine-tuned to match the original model's outputs on unlabeled inputs (``1 - cos`` loss; quantised embedding
   tables stay as stored), then stored again;
   optionally (``latent_lr``) the indices move too (straight-through rounding of a float copy).

Without data (:func:`compress_weights_only`), each tensor gets the cheapest candidate whose weight SQNR reaches a
floor: weaker, since it cannot tell which layers the outputs depend on.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    >>> batches = [torch.randn(64, 32) for _ in range(2)]
    >>> res = compress_to_bound_(model, batches, PostTrainConfig(max_drop=0.01, min_numel=64))
    >>> res.drop <= 0.01, sorted(res.choices)
    (True, ['0.weight', '2.weight'])
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .. import codec
from ..errors import DeepzipError
from . import _kmeans

__all__ = [
    "BoundError",
    "Candidate",
    "PostTrainConfig",
    "PostTrainResult",
    "agreement",
    "compress_to_bound_",
    "compress_weights_only",
    "distill_",
    "fisher_diagonal",
    "gptq_factor",
    "gptq_round",
    "input_grams",
    "make_candidates",
    "row_counts",
    "save_posttrained",
    "target_tensors",
    "text_batches",
    "unseen_scale",
    "usage_fisher",
]

Forward = Callable[[nn.Module, Any], torch.Tensor]


class BoundError(DeepzipError, ValueError):
    """The quality bound cannot be met, or the calibration data cannot be used."""


@dataclass(frozen=True)
class PostTrainConfig:
    """What :func:`compress_to_bound_` may choose from.

    Attributes:
        max_drop: allowed ``1 - mean cosine`` of outputs against the original, on the calibration inputs.
        bits: index bit widths tried per tensor.
        group_rows: rows sharing one codebook; 0 = one codebook for the whole tensor (1 = per-row codebooks).
        row_bits_max: per-group codebooks (group_rows > 0) are tried only up to this many bits.
        outlier_fracs: fractions of each tensor's largest-magnitude weights kept exactly.
        weighting: ``"fisher"`` (k-means weighted by the sensitivity) or ``"none"`` (plain k-means).
        per_layer: False: one setting (bits, groups, outliers) for every tensor (an ablation).
        fp16: offer float16 storage as the top option of every tensor.
        min_numel: tensors with fewer elements are left as they are.
        grids: uniform-grid candidates (entropy-coded scalar quantization): a zero-centred grid of step
            ``std(w) / r`` for each ``r`` here; the used levels are the codebook, Huffman codes the indices, so
            the error of every weight, outliers included, is at most half a step.
        tier_grids: embedding tables: std/step ratios of a coarse grid for the rows the calibration inputs never
            use, each paired with every finer ratio of ``grids`` for the rows they do use (the ``tiered`` codec
            kind: one codebook and one Huffman stream per tier). Rows are weighted by how often the calibration
            uses them; unused rows get the Good-Turing estimate of the unseen mass (see :func:`usage_fisher`).
        rare_scale: weigh unused embedding rows by the sensitivity per occurrence of the rows used once
            (:func:`unseen_scale`) rather than of the average occurrence (False: the ablation).
        gptq: error-compensated rounding (GPTQ, Frantar et al. 2022, arXiv 2210.17323) of Linear layers for each
            per-tensor codebook or grid: the columns are rounded one at a time and the rounding error is pushed
            onto the columns not yet rounded through the Gram matrix of the layer's calibration inputs.
        probes: Rademacher probes per calibration sample for the sensitivity.
        kmeans_iter: Lloyd steps at most.
        seed: seed of the probes and k-means subsets.
    """

    max_drop: float = 0.01
    bits: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    group_rows: tuple[int, ...] = (0, 32)
    row_bits_max: int = 3
    outlier_fracs: tuple[float, ...] = (0.0, 0.003)
    grids: tuple[float, ...] = (1.0, 1.41, 2.0, 2.83, 4.0, 5.66, 8.0, 11.3, 16.0)
    tier_grids: tuple[float, ...] = (0.5, 0.71, 1.0, 1.41)
    rare_scale: bool = True
    gptq: bool = True
    weighting: str = "fisher"
    per_layer: bool = True
    fp16: bool = True
    min_numel: int = 1024
    probes: int = 1
    kmeans_iter: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.max_drop < 1:
            raise BoundError(f"max_drop={self.max_drop}, expected a number in (0, 1)")
        if not self.bits or any(not 1 <= b <= 8 for b in self.bits):
            raise ValueError(f"bits={self.bits}, expected widths in 1..8")
        if any(not 0 < r <= 256 for r in self.grids + self.tier_grids):
            raise ValueError(f"grids={self.grids}, expected std/step ratios in (0, 256]")
        if self.weighting not in ("fisher", "none"):
            raise ValueError(f"weighting={self.weighting!r}, expected 'fisher' or 'none'")


@dataclass
class Candidate:
    """One way to store one tensor: per-group codebooks + indices + exact outliers, or float16 (``bits == 0``).

    ``nbytes`` is the predicted stored size (index entropy, float16 codebooks, outliers); ``error`` the
    sensitivity-weighted squared error ``sum F (w - q)**2``.
    """

    bits: int
    rows_per_group: int
    outlier_frac: float
    weighted: bool
    nbytes: float
    error: float
    codebooks: np.ndarray | None = None  # (G, k) float16
    labels: np.ndarray | None = None  # (R, C) uint8/uint16
    outlier_pos: np.ndarray | None = None  # (n_out,) int64 flat positions
    outlier_val: np.ndarray | None = None  # (n_out,) float32
    fp16: np.ndarray | None = None  # the tensor in float16 (bits == 0)
    grid: float = 0.0  # > 0: uniform grid of step std/grid (bits = ceil(log2(levels used)))
    gptq: bool = False  # rounded with error compensation through the input Gram matrix
    row_tiers: np.ndarray | None = None  # (R,) uint8: tier of each row (codebook row); None: groups of rows
    coarse_grid: float = 0.0  # > 0: tier 1 (rows the calibration never uses) on the grid of step std/coarse_grid
    unseen_error: float = 0.0  # the part of ``error`` on embedding rows the calibration never uses

    @property
    def setting(self) -> tuple[int, int, float, float, bool]:
        """What a configuration chooses: (bits, rows_per_group, outlier_frac, grid, gptq); bits=0: float16."""
        return (0, 0, 0.0, 0.0, False) if self.bits == 0 else (
            0 if self.grid else self.bits, self.rows_per_group, self.outlier_frac, self.grid, self.gptq)

    @property
    def label(self) -> str:
        if self.bits == 0:
            return "fp16"
        g = "tensor" if self.rows_per_group == 0 else f"rows/{self.rows_per_group}"
        out = f"+{self.outlier_frac:.1%} outliers" if self.outlier_frac else ""
        levels = self.codebooks.shape[1] if self.codebooks is not None else 0
        q = f"grid std/{self.grid:g} ({levels} levels)" if self.grid else f"{self.bits}b"
        if self.coarse_grid:
            q = f"used rows grid std/{self.grid:g}, unused rows std/{self.coarse_grid:g}"
            g = "tiered"
        w = "" if self.weighted or self.grid else " unweighted"
        return f"{q} {g}{out}{w}{' gptq' if self.gptq else ''}"

    def weight(self, shape: Sequence[int]) -> np.ndarray:
        """The dense float32 tensor this candidate stores."""
        if self.bits == 0:
            assert self.fp16 is not None
            return self.fp16.astype(np.float32).reshape(shape)
        assert self.codebooks is not None and self.labels is not None
        cb = self.codebooks.astype(np.float32)
        out = np.take_along_axis(cb[self.row_codebook()], self.labels.astype(np.int64), axis=1).reshape(-1)
        if self.outlier_pos is not None and self.outlier_pos.size:
            out[self.outlier_pos] = self.outlier_val
        return out.reshape(shape)

    def row_codebook(self) -> np.ndarray:
        """(R,) the codebook of each row: its tier, or its group of ``rows_per_group`` rows."""
        assert self.labels is not None
        rows = self.labels.shape[0]
        if self.row_tiers is not None:
            return self.row_tiers.astype(np.int64)
        return np.arange(rows) // (self.rows_per_group or rows)

    def encode(self, name: str, shape: Sequence[int]) -> codec.EncodedTensor:
        """The tensor as stored in a ``.dz`` file (``grouped`` or ``tiered`` kind, or dense float16)."""
        if self.bits == 0:
            assert self.fp16 is not None
            return codec.encode_dense(self.fp16.reshape(shape), name=name)
        assert self.codebooks is not None and self.labels is not None
        if self.row_tiers is not None:
            return codec.encode_tiered(self.codebooks, self.row_tiers, self.labels.reshape(shape), self.outlier_pos,
                                       self.outlier_val, name=name)
        rows = self.labels.shape[0]
        return codec.encode_grouped(self.codebooks, self.labels.reshape(shape), self.rows_per_group or rows,
                                    self.outlier_pos, self.outlier_val, name=name)


@dataclass
class PostTrainResult:
    """What :func:`compress_to_bound_` chose and measured.

    Attributes:
        choices: tensor name (``"fc1.weight"``) -> the chosen :class:`Candidate`.
        drop: measured ``1 - mean cosine`` on the calibration inputs with every choice applied, plus the
            predicted drop from embedding rows the calibration never uses (``alpha * unseen_error``).
        predicted_bytes: sum of the chosen candidates' predicted bytes (the file adds the other tensors).
        sensitivity: tensor name -> measured drop per unit of weighted error (alpha).
        hulls: tensor name -> the candidates kept (lower convex hull), cheapest last.
        seconds: wall time of each phase.
    """

    choices: dict[str, Candidate]
    drop: float
    predicted_bytes: float
    sensitivity: dict[str, float] = field(default_factory=dict)
    hulls: dict[str, list[Candidate]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """Per tensor: name, choice, predicted bytes, weighted error."""
        return [{"tensor": n, "choice": c.label, "bytes": int(c.nbytes), "error": c.error}
                for n, c in self.choices.items()]


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


def target_tensors(model: nn.Module, min_numel: int = 1024) -> dict[str, nn.Module]:
    """The modules whose ``weight`` post-training compression stores: Linear, Embedding and Conv layers (any module
    with a floating weight of >= 2 dims), with at least ``min_numel`` weights, keyed by ``"name.weight"``."""
    out = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if (isinstance(w, torch.Tensor) and w.ndim >= 2 and torch.is_floating_point(w) and w.numel() >= min_numel
                and not parametrize.is_parametrized(m)):
            out[f"{name}.weight"] = m
    return out


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


def _nearest(cb: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest value of the sorted codebook ``cb`` (k,) for every value of ``x``."""
    if cb.size == 1:
        return np.zeros(x.shape, np.int64)
    return np.searchsorted((cb[1:] + cb[:-1]) / 2, x).astype(np.int64)


def gptq_factor(gram: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`gptq_round` needs from a Gram matrix, computed once per layer: (column order, upper Cholesky
    factor of the damped inverse in that order, dead-input mask)."""
    c = gram.shape[0]
    h = np.array(gram, dtype=np.float64, copy=True)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(c)] += damp * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h), kind="stable")
    hp = h[np.ix_(order, order)]
    return order, np.linalg.cholesky(np.linalg.inv(hp)).T, dead  # upper: hinv.T @ hinv = inverse of hp


def gptq_round(w: np.ndarray, gram: np.ndarray, codebook: np.ndarray, keep: np.ndarray | None = None,
               damp: float = 0.01, block: int = 128,
               factor: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Error-compensated rounding of a Linear weight onto one codebook (GPTQ with a non-uniform grid).

    Columns are rounded in order of decreasing input energy (``diag(H)``, "act-order"); after each column the
    rounding error, scaled by the inverse-Hessian Cholesky factor, is subtracted from the columns not yet rounded,
    which minimises ``sum_i dW_i H dW_i^T`` greedily (Frantar et al. 2022).

    Args:
        w: (R, C) weights of a Linear layer (out, in).
        gram: (C, C) input Gram matrix (:func:`input_grams`).
        codebook: (k,) sorted values every weight is rounded to.
        keep: (R, C) bool, weights stored exactly (outliers): rounded to themselves.
        damp: added to the diagonal, as a fraction of its mean (keeps the inverse stable).
        block: columns per lazy update.
        factor: :func:`gptq_factor` of ``gram`` (to share it between codebooks of one layer).

    Returns:
        (R, C) int64 labels into ``codebook``.
    """
    r, c = w.shape
    order, hinv, dead = factor if factor is not None else gptq_factor(gram, damp)
    inv_order = np.argsort(order)
    wq = np.array(w, dtype=np.float64)[:, order]  # (R, C) being rounded
    wq[:, dead[order]] = 0.0
    kp = None if keep is None else keep[:, order]
    labels = np.zeros((r, c), np.int64)
    cb = np.asarray(codebook, np.float64)
    for i1 in range(0, c, block):
        i2 = min(i1 + block, c)
        err = np.zeros((r, i2 - i1))
        for j in range(i1, i2):
            col = wq[:, j]
            lab = _nearest(cb, col)
            q = cb[lab]
            if kp is not None:
                q = np.where(kp[:, j], col, q)
            labels[:, j] = lab
            e = (col - q) / hinv[j, j]
            wq[:, j:i2] -= np.outer(e, hinv[j, j:i2])
            err[:, j - i1] = e
        wq[:, i2:] -= err @ hinv[i1:i2, i2:]
    return labels[:, inv_order]


# ---------------------------------------------------------------------------------------------------- candidates
def _entropy_bytes(labels: np.ndarray, k: int) -> float:
    """Exact size of the Huffman index stream the codec writes (code lengths, sync table and bits): at low rates
    a Huffman code costs more than the entropy (at least one bit per symbol)."""
    return float(codec.huffman.stream_size(np.bincount(labels.reshape(-1).astype(np.int64), minlength=k)))


def _outlier_bytes(pos: np.ndarray | None) -> float:
    """Bytes of the exact side list: float32 values + varint position deltas (about; Huffman shrinks these)."""
    if pos is None or not pos.size:
        return 0.0
    return float(4 * pos.size + codec.grouped.varint_encode(np.diff(pos, prepend=0)).size)


def _proxy_error(w: np.ndarray, q: np.ndarray, f: np.ndarray, gram: np.ndarray | None) -> float:
    """Predicted output damage of storing ``q`` for ``w`` (up to the per-tensor factor alpha).

    Without a Gram matrix: ``sum F (w - q)**2`` (diagonal Fisher). With one (Linear layers): the Kronecker-factored
    form ``sum_i s_i dW_i H dW_i^T`` with per-output-row sensitivity ``s_i = sum_j F_ij / trace(H)``, which keeps the
    cross terms between input features that error-compensated rounding exploits (the diagonal cannot see them).
    """
    d = (np.asarray(w, np.float64) - q).reshape(w.shape[0], -1)
    if gram is None:
        return float((f.reshape(d.shape) * d**2).sum())
    s = f.reshape(d.shape).sum(axis=1) / max(float(np.trace(gram)), 1e-300)  # (R,)
    return float((((d @ gram) * d).sum(axis=1) * s).sum())


def _candidate(w: np.ndarray, f: np.ndarray, bits: int, rpg: int, frac: float, weighted: bool,
               cfg: PostTrainConfig, grid: float = 0.0, gram: np.ndarray | None = None,
               gptq: bool = False, factor: tuple | None = None) -> Candidate | None:
    """One candidate: k-means (``bits``) or a uniform grid (``grid`` > 0), optionally GPTQ-rounded (needs ``gram``).

    Returns None for a grid that would need more than the codec's 65536 levels.
    """
    rows = w.shape[0]
    x = w.reshape(rows, -1).astype(np.float64)  # (R, C)
    fw = f.reshape(rows, -1)
    n = x.size
    pos = np.zeros(0, np.int64)
    kw = fw if weighted else np.ones_like(fw)
    if frac > 0:
        dev = np.abs(x - x.mean()).reshape(-1)
        n_out = max(1, round(frac * n))
        pos = np.sort(np.argpartition(dev, n - n_out)[n - n_out:])
        kw = kw.copy().reshape(-1)
        kw[pos] = 0.0  # outliers are stored exactly: they do not pull the centroids
        kw = kw.reshape(rows, -1)
    keep: np.ndarray | None = None
    if pos.size:
        flat_keep = np.zeros(n, bool)
        flat_keep[pos] = True
        keep = flat_keep.reshape(rows, -1)
    if grid > 0:
        # zero-centred uniform grid; the levels actually used form the codebook (Huffman codes the indices)
        rest = x if keep is None else x[~keep]
        step = float(rest.std()) / grid or 1.0
        lo, hi = math.floor(float(rest.min()) / step), math.ceil(float(rest.max()) / step)
        if hi - lo + 1 > codec.grouped.MAX_K:
            return None
        levels = (step * np.arange(lo, hi + 1)).astype(np.float16).astype(np.float64)  # (L,) sorted
        raw = gptq_round(x, gram, levels, keep, factor=factor) if gptq and gram is not None else _nearest(levels, x)
        used, inv = np.unique(raw, return_inverse=True)
        c16 = levels[used].astype(np.float16)[None, :]  # (1, k)
        labels = inv.reshape(rows, -1)
        k = c16.shape[1]
        bits = max(1, math.ceil(math.log2(k))) if k > 1 else 1
        rpg, weighted = 0, False
    else:
        g = rpg or rows
        pad = (-rows) % g
        xp = np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x
        wp = np.concatenate([kw, np.zeros((pad, kw.shape[1]))]) if pad else kw
        groups = xp.shape[0] // g
        k = 1 << bits
        c, lab = _kmeans.weighted_kmeans_rows(xp.reshape(groups, -1), wp.reshape(groups, -1), k,
                                              max_iter=cfg.kmeans_iter, fit_cap=65536 if groups == 1 else 8192,
                                              seed=cfg.seed)
        c16 = c.astype(np.float16)
        labels = lab.reshape(xp.shape)[:rows]  # (R, C)
        if gptq and gram is not None and groups == 1:
            labels = gptq_round(x, gram, c16[0].astype(np.float64), keep, factor=factor)
    labels = labels.astype(np.uint8 if k <= 256 else np.uint16)
    cand = Candidate(bits, rpg, frac, weighted, 0.0, 0.0, c16, labels,
                     pos, w.reshape(-1)[pos].astype(np.float32), grid=grid, gptq=gptq and gram is not None)
    q = cand.weight(w.shape).astype(np.float64)
    cand.error = _proxy_error(w, q, f, gram)
    cand.nbytes = _entropy_bytes(labels, k) + 2 * c16.size + _outlier_bytes(pos)
    return cand


def _hull(cands: list[Candidate]) -> list[Candidate]:
    """The lower convex hull of (bytes, error), from the most accurate (largest) to the cheapest."""
    pts = sorted(cands, key=lambda c: (c.nbytes, c.error))
    front: list[Candidate] = []
    for c in pts:  # Pareto: keep a candidate only if it beats every cheaper one on error
        if not front or c.error < front[-1].error:
            front.append(c)
    hull: list[Candidate] = []
    for c in front:  # convexity: predicted drop per byte must grow as we go cheaper
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (b.error - a.error) * (c.nbytes - a.nbytes) >= (c.error - a.error) * (b.nbytes - a.nbytes):
                hull.pop()
            else:
                break
        hull.append(c)
    return hull[::-1]


def _allowed(c: Candidate, cfg: PostTrainConfig, gptq_able: bool = True) -> bool:
    """Whether ``cfg`` offers candidate ``c`` (to reuse one candidate set across configurations); ``gptq_able``:
    the tensor has GPTQ candidates (a Linear layer with a Gram matrix)."""
    if c.bits == 0:
        return cfg.fp16
    if c.gptq != (cfg.gptq and gptq_able):
        return False
    if c.coarse_grid:
        return c.grid in cfg.grids and c.coarse_grid in cfg.tier_grids
    if c.grid:
        return c.grid in cfg.grids and c.outlier_frac in cfg.outlier_fracs
    return (c.bits in cfg.bits and c.rows_per_group in cfg.group_rows and c.outlier_frac in cfg.outlier_fracs
            and c.weighted == (cfg.weighting == "fisher"))


def _key(c: Candidate) -> tuple:
    return (*c.setting, c.weighted if c.bits and not c.grid else False, c.coarse_grid)


def make_candidates(modules: dict[str, nn.Module], fisher: dict[str, np.ndarray],
                    configs: Sequence[PostTrainConfig], progress: bool = False,
                    grams: dict[str, np.ndarray] | None = None,
                    counts: dict[str, np.ndarray] | None = None,
                    fisher_counts: dict[str, np.ndarray] | None = None) -> dict[str, list[Candidate]]:
    """Every candidate any of ``configs`` offers, per tensor (pass to :func:`compress_to_bound_` to share them).

    With ``grams`` (:func:`input_grams`), Linear layers' errors use the Kronecker-factored proxy (see
    :func:`_proxy_error`) and configurations with ``gptq`` get GPTQ-rounded candidates. With ``counts``
    (:func:`row_counts`), embedding tables are weighted by row usage and get the tiered candidates;
    ``fisher_counts``: the row counts of the text ``fisher`` was measured on, where ``counts`` come from more text
    (see :func:`unseen_scale`).
    """
    if counts and len({c.rare_scale for c in configs}) > 1:
        raise ValueError("configs differ in rare_scale: their embedding candidates cannot be shared")
    out: dict[str, list[Candidate]] = {}
    for n in tqdm(modules, desc="candidates", disable=not progress, leave=False):
        w = modules[n].weight.detach().cpu().float().numpy()
        seen: dict[tuple, Candidate] = {}
        for cfg in configs:
            for c in _candidates(n, w, fisher[n], cfg, skip=set(seen), gram=(grams or {}).get(n),
                                 counts=(counts or {}).get(n), fisher_counts=(fisher_counts or {}).get(n)):
                seen[_key(c)] = c
        out[n] = list(seen.values())
    return out


def _candidates(name: str, w: np.ndarray, f: np.ndarray, cfg: PostTrainConfig,
                skip: set[tuple] | None = None, gram: np.ndarray | None = None,
                counts: np.ndarray | None = None, fisher_counts: np.ndarray | None = None) -> list[Candidate]:
    skip = skip or set()
    fw = f if counts is None else usage_fisher(f, counts, fisher_counts, rare_scale=cfg.rare_scale)
    out = _candidates_of(name, w, fw, cfg, skip, gram, counts)
    if counts is not None:  # what the calibration cannot measure: the damage to the rows it never uses
        unused = counts == 0
        rows = w.shape[0]
        fu = fw.reshape(rows, -1)[unused]
        wu = w.reshape(rows, -1)[unused].astype(np.float64)
        for c in out:
            c.unseen_error = float((fu * (wu - c.weight(w.shape).reshape(rows, -1)[unused]) ** 2).sum())
    return out


def _candidates_of(name: str, w: np.ndarray, f: np.ndarray, cfg: PostTrainConfig, skip: set[tuple],
                   gram: np.ndarray | None, counts: np.ndarray | None) -> list[Candidate]:
    out: list[Candidate] = []
    if cfg.fp16 and (0, 0, 0.0, 0.0, False, False, 0.0) not in skip:
        w16 = w.astype(np.float16)
        out.append(Candidate(0, 0, 0.0, False, 2.0 * w.size, _proxy_error(w, w16.astype(np.float64), f, gram),
                             fp16=w16))
    weighted = cfg.weighting == "fisher"
    gptq = cfg.gptq and gram is not None
    if cfg.gptq and gram is None:  # layers GPTQ cannot round (embeddings, convs) get the plain candidates
        cfg = dataclasses.replace(cfg, gptq=False)
    factor = gptq_factor(gram) if gptq and gram is not None else None
    for b in cfg.bits:
        for rpg in cfg.group_rows:
            if rpg and (b > cfg.row_bits_max or rpg >= w.shape[0] or gptq):
                continue
            for frac in cfg.outlier_fracs:
                if (b, rpg, frac, 0.0, gptq, weighted, 0.0) not in skip:
                    c = _candidate(w, f, b, rpg, frac, weighted, cfg, gram=gram, gptq=gptq, factor=factor)
                    if c is not None:
                        out.append(c)
    for r in cfg.grids:
        for frac in cfg.outlier_fracs:
            if (0, 0, frac, r, gptq, False, 0.0) not in skip:
                c = _candidate(w, f, 0, 0, frac, False, cfg, grid=r, gram=gram, gptq=gptq, factor=factor)
                if c is not None:
                    out.append(c)
    if counts is not None and (counts > 0).any() and not (counts > 0).all():
        for r in cfg.grids:
            for rc in cfg.tier_grids:
                if rc < r and (0, 0, 0.0, r, False, False, rc) not in skip:
                    c = _tiered_candidate(w, f, counts > 0, r, rc)
                    if c is not None:
                        out.append(c)
    return out


def _tiered_candidate(w: np.ndarray, f: np.ndarray, used: np.ndarray, fine: float, coarse: float) -> Candidate | None:
    """Rows in ``used`` on the grid of step ``std / fine``, the others on ``std / coarse`` (one std: the tensor's);
    the ``tiered`` kind stores each tier's used levels as its codebook and codes its indices apart."""
    rows = w.shape[0]
    x = w.reshape(rows, -1).astype(np.float64)
    std = float(x.std()) or 1.0
    tiers = (~used).astype(np.uint8)  # 0: used rows (fine), 1: the rest (coarse)
    labels = np.zeros(x.shape, np.int64)
    books, nbytes = [], 0.0
    for t, r in ((0, fine), (1, coarse)):
        sel = tiers == t
        step = std / r
        q = np.round(x[sel] / step)
        used_levels, inv = np.unique(q, return_inverse=True)
        if used_levels.size > codec.grouped.MAX_K:
            return None
        books.append((used_levels * step).astype(np.float16))
        labels[sel] = inv.reshape(q.shape)
        nbytes += _entropy_bytes(inv, used_levels.size)
    k = max(b.size for b in books)
    c16 = np.stack([np.concatenate([b, np.full(k - b.size, b[-1], np.float16)]) for b in books])  # (2, k)
    nbytes += 2 * c16.size + codec.huffman.stream_size(np.bincount(tiers, minlength=2))
    bits = max(1, math.ceil(math.log2(k))) if k > 1 else 1
    cand = Candidate(bits, 0, 0.0, False, nbytes, 0.0, c16, labels.astype(np.uint8 if k <= 256 else np.uint16),
                     np.zeros(0, np.int64), np.zeros(0, np.float32), grid=fine, row_tiers=tiers, coarse_grid=coarse)
    cand.error = _proxy_error(w, cand.weight(w.shape).astype(np.float64), f, None)
    return cand


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


# ---------------------------------------------------------------------------------------------------- allocation
def _set_weights_(modules: dict[str, nn.Module], weights: dict[str, np.ndarray | torch.Tensor]) -> None:
    with torch.no_grad():
        for n, w in weights.items():
            p = modules[n].weight
            p.copy_(torch.as_tensor(w, dtype=p.dtype))


def _greedy(hulls: dict[str, list[Candidate]], alpha: dict[str, float], budget: float) -> dict[str, int]:
    """Index into each hull: steps cheapest-drop-per-byte first while the predicted total drop stays <= budget."""
    steps = []
    for n, h in hulls.items():
        for i in range(1, len(h)):
            dd = alpha[n] * (h[i].error - h[i - 1].error)
            db = h[i - 1].nbytes - h[i].nbytes
            steps.append((dd / max(db, 1e-9), n, i, dd))
    steps.sort(key=lambda s: (s[0], s[1], s[2]))
    pick = {n: 0 for n in hulls}
    total = sum(alpha[n] * h[0].error for n, h in hulls.items())
    for _, n, i, dd in steps:
        if pick[n] != i - 1:  # hull steps of one tensor come in order (convex): a skipped one blocks the rest
            continue
        if total + dd > budget:
            continue
        total += dd
        pick[n] = i
    return pick


def compress_to_bound_(
    model: nn.Module,
    calibration: Iterable[Any] | Callable[[], Iterable[Any]],
    config: PostTrainConfig | None = None,
    *,
    forward: Forward | None = None,
    modules: dict[str, nn.Module] | None = None,
    fisher: dict[str, np.ndarray] | None = None,
    candidates: dict[str, list[Candidate]] | None = None,
    sensitivity: dict[str, float] | None = None,
    grams: dict[str, np.ndarray] | None = None,
    counts: dict[str, np.ndarray] | None = None,
    fisher_counts: dict[str, np.ndarray] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> PostTrainResult:
    """Store every large weight tensor as cheaply as the quality bound allows; changes ``model``'s weights in place.

    Args:
        model: the pretrained model (eval mode is set during measurements and restored).
        calibration: batches of inputs (a list, an iterable, or a callable returning one); ``forward(model, batch)``
            must give the outputs, first dimension = samples.
        config: the options (:class:`PostTrainConfig`; default: ``max_drop=0.01``).
        forward: ``forward(model, batch) -> Tensor``; default ``model(batch)``.
        modules: the tensors to compress (default :func:`target_tensors`).
        fisher: precomputed :func:`fisher_diagonal` (reused across ablations).
        candidates: precomputed :func:`make_candidates` (reused across ablations; those ``config`` offers are used).
        sensitivity: per-tensor drop per unit of weighted error from an earlier result (``result.sensitivity``),
            to skip measuring them again.
        grams: precomputed :func:`input_grams` (computed when ``config.gptq`` and no candidates are given).
        counts: precomputed :func:`row_counts` of the embedding tables (computed from the calibration batches when
            no candidates are given).
        fisher_counts: the row counts of the text ``fisher`` was measured on, where ``counts`` come from more text
            (default: the calibration batches' counts when ``fisher`` is computed here, else ``counts``).
        progress: progress bars while sensitivities are measured.
        log: called with one line per phase.

    Returns:
        :class:`PostTrainResult`; the model's weights are the chosen stored values.

    Raises:
        BoundError: an empty calibration set, inputs the model cannot take, or a bound that even the most
            accurate choice for every tensor misses (the message gives the best reachable drop and size).
    """
    cfg = config or PostTrainConfig()
    fwd = forward or _default_forward
    say = log or (lambda s: None)
    batches = _batches(calibration)
    mods = modules if modules is not None else target_tensors(model, cfg.min_numel)
    if not mods:
        raise BoundError(f"no weight tensor of >= {cfg.min_numel} elements to compress")
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    secs: dict[str, float] = {}
    try:
        ref = _outputs(model, batches, fwd)
        orig = {n: m.weight.detach().cpu().float().numpy().copy() for n, m in mods.items()}
        fisher_computed = fisher is None
        if fisher is None:
            fisher = fisher_diagonal(model, batches, fwd, mods, cfg.probes, cfg.seed, progress)
        if grams is None and cfg.gptq and candidates is None:
            grams = input_grams(model, batches, fwd, mods)
        embeddings = candidates is None and any(isinstance(m, nn.Embedding) for m in mods.values())
        if counts is None and embeddings:
            counts = row_counts(model, batches, fwd, mods)
        elif fisher_counts is None and embeddings and fisher_computed:  # counts of other text: the Fisher's own
            fisher_counts = row_counts(model, batches, fwd, mods)
        secs["sensitivity"] = time.perf_counter() - t0

        def drop_now() -> float:
            return float(1 - agreement(_outputs(model, batches, fwd), ref).mean())

        hulls: dict[str, list[Candidate]] = {}
        for n in tqdm(mods, desc="candidates", disable=not progress, leave=False):
            if candidates is not None:
                able = any(c.gptq for c in candidates[n])
                mine = [c for c in candidates[n] if _allowed(c, cfg, able)]
            else:
                mine = _candidates(n, orig[n], fisher[n], cfg, gram=(grams or {}).get(n),
                                   counts=(counts or {}).get(n), fisher_counts=(fisher_counts or {}).get(n))
            if not mine:
                raise BoundError(f"{n}: no storage option left by the configuration")
            hulls[n] = _hull(mine)
        secs["candidates"] = time.perf_counter() - t0 - secs["sensitivity"]
        if not cfg.per_layer:
            return _uniform(model, mods, hulls, orig, cfg, drop_now, secs, say)
        # per-layer sensitivity: the candidate nearest 3 bits per weight applied alone, measured for real
        alpha: dict[str, float] = dict(sensitivity or {})
        for n in tqdm([n for n in mods if n not in alpha], desc="layer sensitivity", disable=not progress,
                      leave=False):
            h = hulls[n]
            probe = min(h[1:] or h, key=lambda c: abs(c.nbytes * 8 / orig[n].size - 3.0))
            _set_weights_(mods, {n: probe.weight(orig[n].shape)})
            d = max(drop_now(), 0.0)
            _set_weights_(mods, {n: orig[n]})
            seen = probe.error - probe.unseen_error  # the calibration measures the damage to the rows it uses
            alpha[n] = d / seen if seen > 0 else 0.0
        secs["layer_sensitivity"] = time.perf_counter() - t0 - secs["sensitivity"] - secs["candidates"]
        say(f"sensitivities of {len(mods)} tensors measured in {time.perf_counter() - t0:.0f} s")

        def apply(pick: dict[str, int]) -> float:
            """Measured drop on the calibration inputs, plus the predicted drop on embedding rows they never use."""
            _set_weights_(mods, {n: hulls[n][i].weight(orig[n].shape) for n, i in pick.items()})
            return drop_now() + sum(alpha.get(n, 0.0) * hulls[n][i].unseen_error for n, i in pick.items())

        best = {n: 0 for n in hulls}
        d0 = apply(best)
        if d0 > cfg.max_drop:
            _set_weights_(mods, orig)
            size = sum(h[0].nbytes for h in hulls.values())
            raise BoundError(f"max_drop={cfg.max_drop:g} cannot be met: the most accurate choice for every tensor "
                             f"({size / 1e6:.2f} MB) already loses {d0:.4g} (mean cosine {1 - d0:.5f})")
        # search the predicted budget for the cheapest choice whose measured drop stays within the bound
        lo, lo_pick, lo_drop = 0.0, best, d0
        hi = None
        budget = cfg.max_drop
        for _ in range(9):
            pick = _greedy(hulls, alpha, budget)
            d = apply(pick)
            say(f"budget {budget:.4g}: measured drop {d:.4g}, "
                f"{sum(hulls[n][i].nbytes for n, i in pick.items()) / 1e6:.3f} MB")
            if d <= cfg.max_drop:
                lo, lo_pick, lo_drop = budget, pick, d
            else:
                hi = budget
            budget = budget * 2 if hi is None else (lo + hi) / 2
            if hi is not None and hi - lo < 0.05 * hi:
                break
        apply(lo_pick)
        secs["allocation"] = time.perf_counter() - t0 - sum(secs.values())
        choices = {n: hulls[n][i] for n, i in lo_pick.items()}
        return PostTrainResult(choices, lo_drop, sum(c.nbytes for c in choices.values()), alpha, hulls, secs)
    finally:
        model.train(was_training)


def _uniform(model: nn.Module, mods: dict[str, nn.Module], hulls: dict[str, list[Candidate]],
             orig: dict[str, np.ndarray], cfg: PostTrainConfig, drop_now: Callable[[], float],
             secs: dict[str, float], say: Callable[[str], None]) -> PostTrainResult:
    """One setting for every tensor (ablation of per-layer budgets): the cheapest setting within the bound."""
    # GPTQ or not is fixed by the configuration and the layer type: settings differ in bits, groups, outliers, grid
    settings = sorted({c.setting[:4] for h in hulls.values() for c in h},
                      key=lambda s: (s[0] == 0 and not s[3], s[3], s[0], -s[1] if s[1] else 0, s[2]))
    best = None
    for s in settings:
        pick = {}
        for n, h in hulls.items():
            # the setting's candidate when it is on the hull, else the tensor's closest more accurate one
            same = [c for c in h if c.setting[:4] == s]
            richer = [c for c in h if c.bits == 0 or (c.grid >= s[3] if s[3] else c.bits >= s[0] and not c.grid)]
            pick[n] = same[0] if same else min(richer or h, key=lambda c: c.nbytes)
        _set_weights_(mods, {n: c.weight(orig[n].shape) for n, c in pick.items()})
        d = drop_now()
        size = sum(c.nbytes for c in pick.values())
        say(f"uniform {s}: drop {d:.4g}, {size / 1e6:.3f} MB")
        if d <= cfg.max_drop and (best is None or size < best[1]):
            best = (pick, size, d)
    if best is None:
        _set_weights_(mods, orig)
        raise BoundError(f"max_drop={cfg.max_drop:g} cannot be met with one setting for every tensor")
    _set_weights_(mods, {n: c.weight(orig[n].shape) for n, c in best[0].items()})
    return PostTrainResult(best[0], best[2], best[1], {}, hulls, secs)


def compress_weights_only(model: nn.Module, min_sqnr_db: float = 30.0, config: PostTrainConfig | None = None,
                          modules: dict[str, nn.Module] | None = None) -> PostTrainResult:
    """The no-data fallback: per tensor, the cheapest candidate with weight SQNR >= ``min_sqnr_db`` (unweighted).

    Weaker than :func:`compress_to_bound_`: weight error says nothing about which layers the outputs need.
    ``drop`` in the result is NaN (nothing measured).
    """
    cfg = config or PostTrainConfig(weighting="none")
    mods = modules if modules is not None else target_tensors(model, cfg.min_numel)
    choices = {}
    for n, m in mods.items():
        w = m.weight.detach().cpu().float().numpy()
        cands = _candidates(n, w, np.ones_like(w), cfg)
        power = float((w.astype(np.float64) ** 2).sum())
        ok = [c for c in cands if c.error == 0 or 10 * math.log10(power / c.error) >= min_sqnr_db]
        choices[n] = min(ok or cands, key=lambda c: (c.nbytes if ok else c.error))
        _set_weights_(mods, {n: choices[n].weight(w.shape)})
    return PostTrainResult(choices, float("nan"), sum(c.nbytes for c in choices.values()))


# ---------------------------------------------------------------------------------------------------- distillation
class _Codebook(nn.Module):
    """Parametrization ``weight = codebooks.flatten()[flat] `` with exact outliers written over it (fine-tuning)."""

    def __init__(self, cand: Candidate, shape: Sequence[int]) -> None:
        super().__init__()
        assert cand.codebooks is not None and cand.labels is not None
        k = cand.codebooks.shape[1]
        flat = cand.row_codebook()[:, None] * k + cand.labels.astype(np.int64)  # (R, C)
        self.codebooks = nn.Parameter(torch.from_numpy(cand.codebooks.astype(np.float32)))
        self.register_buffer("flat", torch.from_numpy(flat.reshape(-1)))
        self.register_buffer("pos", torch.from_numpy(np.asarray(cand.outlier_pos, np.int64)))
        self.register_buffer("val", torch.from_numpy(np.asarray(cand.outlier_val, np.float32)))
        self.shape = tuple(shape)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        w = self.codebooks.reshape(-1)[self.flat]  # (numel,)
        if self.pos.numel():
            w = w.index_put((self.pos,), self.val)
        return w.reshape(self.shape)


class _Rounded(nn.Module):
    """Parametrization for quantisation-aware distillation of a one-codebook tensor: a float ``latent`` copy of the
    weights is rounded to the nearest codebook value in the forward pass, with the straight-through gradient
    (``w = codebook[nearest(latent)] + latent - stop_grad(latent)``), so the indices themselves can change; the
    codebook values get their gradient through the gather. Outliers stay exact."""

    def __init__(self, cand: Candidate, shape: Sequence[int]) -> None:
        super().__init__()
        assert cand.codebooks is not None and cand.codebooks.shape[0] == 1
        self.codebooks = nn.Parameter(torch.from_numpy(cand.codebooks.astype(np.float32)))  # (1, k)
        self.latent = nn.Parameter(torch.from_numpy(cand.weight(shape).astype(np.float32).reshape(-1)))
        self.register_buffer("pos", torch.from_numpy(np.asarray(cand.outlier_pos, np.int64)))
        self.register_buffer("val", torch.from_numpy(np.asarray(cand.outlier_val, np.float32)))
        self.shape = tuple(shape)

    def indices(self) -> torch.Tensor:
        """(numel,) index of the codebook value nearest each latent weight."""
        with torch.no_grad():
            cb = self.codebooks.reshape(-1)
            s, perm = cb.sort()
            if s.numel() == 1:
                return torch.zeros(self.latent.shape, dtype=torch.long)
            return perm[torch.searchsorted((s[1:] + s[:-1]) / 2, self.latent.detach())]

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        w = self.codebooks.reshape(-1)[self.indices()] + self.latent - self.latent.detach()
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
    written back into ``result``.

    Args:
        model: the model :func:`compress_to_bound_` compressed.
        teacher: the original model (not changed).
        result: the result whose choices are fine-tuned (updated in place).
        batches: unlabeled input batches, cycled until ``seconds`` run out.
        forward: as for :func:`compress_to_bound_`.
        seconds: budget in CPU seconds of this process (``time.process_time``).
        lr: Adam learning rate.
        latent_lr: > 0: also move the weights between codebook values (quantisation-aware training with the
            straight-through estimator, Adam at this rate on a float copy of each one-codebook tensor); the indices
            change, so the stored size is computed again afterwards. 0: indices stay.
        modules: the compressed modules (default: found from ``result`` names).
        progress: show a progress bar over the steps.
        schedule: ``"constant"`` learning rates, or ``"cosine"``: both rates decay to 0 along a half cosine of the
            CPU budget spent (the budget is time, not steps, so the decay follows ``time.process_time``).
        hidden: names of modules (the same in ``model`` and ``teacher``) whose outputs are matched too, as in
            intermediate-layer distillation (TinyBERT, Jiao et al. 2020): ``hidden_weight`` times the mean over
            them of the relative squared error ``|h - h_teacher|^2 / |h_teacher|^2`` is added to the loss (a
            module returning a tuple is matched on its first tensor).
        hidden_weight: weight of the hidden-state term.

    Returns:
        The loss of every step (the output term, ``1 - cos``).
    """
    start = time.process_time()  # the budget counts the teacher's forward passes too
    if schedule not in ("constant", "cosine"):
        raise BoundError(f"schedule={schedule!r}: expected 'constant' or 'cosine'")
    if not batches:
        raise BoundError("the distillation set is empty: give at least one batch of inputs")
    fwd = forward or _default_forward
    named = dict(model.named_modules())
    mods = modules if modules is not None else {n: named[n[: -len(".weight")]] for n in result.choices}
    t_named = dict(teacher.named_modules())
    missing = [h for h in hidden if h not in t_named or h not in named]
    if missing:
        raise BoundError(f"hidden={missing[0]!r}: no such module in the model and the teacher")
    captured: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            captured[name] = out if isinstance(out, torch.Tensor) else next(
                t for t in out if isinstance(t, torch.Tensor))
        return hook

    handles = [t_named[h].register_forward_hook(grab(h)) for h in hidden]
    hidden_targets: list[dict[str, torch.Tensor]] = []
    try:
        with torch.no_grad():
            teacher.eval()
            targets = []
            for b in batches:
                y = fwd(teacher, b)
                targets.append(y.reshape(y.shape[0], -1).float())
                hidden_targets.append({h: captured[h].detach().float() for h in hidden})
    finally:
        for handle in handles:
            handle.remove()
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
        elif latent_lr > 0 and c.codebooks is not None and c.codebooks.shape[0] == 1:
            parametrize.register_parametrization(m, "weight", _Rounded(c, m.weight.shape), unsafe=True)
            p = m.parametrizations["weight"]  # type: ignore[index,union-attr]
            p.original.requires_grad_(False)
            params.append(p[0].codebooks)
            latents.append(p[0].latent)
        else:
            parametrize.register_parametrization(m, "weight", _Codebook(c, m.weight.shape), unsafe=True)
            p = m.parametrizations["weight"]  # type: ignore[index,union-attr]
            p.original.requires_grad_(False)
            params.append(p[0].codebooks)
    taken = {id(q) for q in params + latents + frozen} | {
        id(m.parametrizations["weight"].original) for m in mods.values()  # type: ignore[index,union-attr]
        if parametrize.is_parametrized(m)}
    others = [p for p in model.parameters() if id(p) not in taken]  # biases, norms, small tensors
    for p in others:
        p.requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": params + others, "lr": lr}]
    if latents:
        groups.append({"params": latents, "lr": latent_lr})
    opt = torch.optim.Adam(groups)
    losses: list[float] = []
    model.train(False)  # no dropout: match the teacher's deterministic outputs
    end = start + seconds  # CPU seconds of this process: the budget does not shrink under load
    base_lrs = [g["lr"] for g in opt.param_groups]
    bar = tqdm(desc="distill", disable=not progress, leave=False)
    step = 0
    handles = [named[h].register_forward_hook(grab(h)) for h in hidden]
    try:
        while (now := time.process_time()) < end:
            if schedule == "cosine":
                scale = 0.5 * (1 + math.cos(math.pi * min(1.0, (now - start) / max(seconds, 1e-9))))
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = base * scale
            i = step % len(batches)
            y = fwd(model, batches[i])
            y = y.reshape(y.shape[0], -1)
            loss = (1 - nn.functional.cosine_similarity(y, targets[i], dim=1)).mean()
            total = loss
            if hidden:
                rel = [(captured[h] - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)
                       for h, t in hidden_targets[i].items()]
                total = loss + hidden_weight * torch.stack(rel).mean()
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
        captured.clear()
        with torch.no_grad():
            for n, m in mods.items():
                c = result.choices[n]
                if c.bits and isinstance(m, nn.Embedding):
                    continue
                if c.bits == 0:
                    c.fp16 = m.weight.detach().cpu().numpy().astype(np.float16)
                    m.weight.copy_(torch.from_numpy(c.fp16.astype(np.float32)))
                else:
                    par = m.parametrizations["weight"][0]  # type: ignore[index,union-attr]
                    c.codebooks = par.codebooks.detach().cpu().numpy().astype(np.float16)
                    if isinstance(par, _Rounded):
                        k = c.codebooks.shape[1]
                        labels = par.indices().cpu().numpy().reshape(c.labels.shape)  # type: ignore[union-attr]
                        c.labels = labels.astype(np.uint8 if k <= 256 else np.uint16)
                        c.nbytes = _entropy_bytes(c.labels, k) + 2 * c.codebooks.size + _outlier_bytes(c.outlier_pos)
                    parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
                    m.weight.copy_(torch.from_numpy(c.weight(m.weight.shape)))
    return losses


# ---------------------------------------------------------------------------------------------------- file
def save_posttrained(model: nn.Module, result: PostTrainResult, path: Any, *, architecture: str | None = None,
                     config: dict | None = None) -> int:
    """Write the compressed model to a ``.dz`` file (atomically); returns the bytes written.

    Compressed tensors are stored as ``grouped`` (codebooks per row group + outliers) or float16 ``dense``; every
    other tensor as float32 ``dense``. All layers are ``plain`` for :func:`deepzip.load`, which decodes them to
    float32 weights (``deepzip.load(path, model=...)`` for a model deepzip does not name).
    """
    tensors: dict[str, codec.EncodedTensor] = {}
    state = model.state_dict()
    for key, value in state.items():
        if key in result.choices:
            tensors[key] = result.choices[key].encode(key, tuple(value.shape))
        else:
            arr = value.detach().cpu().contiguous().numpy()
            tensors[key] = codec.encode_dense(arr, name=key)
    missing = set(result.choices) - set(state)
    if missing:
        raise BoundError(f"tensors {sorted(missing)[:3]} of the result are not in the model's state_dict")
    return codec.write(path, tensors, config=config or {}, architecture=architecture,
                       extra={"layers": {k: "plain" for k in tensors}})
