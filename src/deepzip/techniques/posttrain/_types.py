"""What post-training compression is configured with and what it returns: the options, one storage candidate of
one tensor, the held-out estimate of the drop, the result, and the error raised when a bound cannot be met."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import codec
from ...errors import DeepzipError

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
        fp16_others: round every other float32 parameter (biases, norms, tensors under ``min_numel``) to float16
            values before anything is measured, so the bound is checked with them and the file stores them in 2
            bytes instead of 4 (MiniLM: 127 KB of biases and norms in float32, 1.5% of its file at 11x); a tensor
            float16 cannot hold (a value out of its range) stays as it is.
        min_numel: tensors with fewer elements are left as they are.
        grids: uniform-grid candidates (entropy-coded scalar quantization): a zero-centred grid of step
            ``std(w) / r`` for each ``r`` here; the used levels are the codebook, Huffman codes the indices, so
            the error of every weight, outliers included, is at most half a step.
        tier_grids: embedding tables: std/step ratios of a coarse grid for the rows the calibration inputs never
            use, each paired with every finer ratio of ``grids`` for the rows they do use (the ``tiered`` codec
            kind: one codebook and one Huffman stream per tier). Rows are weighted by how often the calibration
            uses them; unused rows get the Good-Turing estimate of the unseen mass (see :func:`usage_fisher`).
            Spaced by 2**(1/4), half the spacing of ``grids``: the coarse tier is most of a text model's
            largest tensor (MiniLM: 27k of 30.5k word-embedding rows), where one step of sqrt(2) moves ~0.5 MB
            and leaves gaps in the size-quality curve that no other tensor can fill.
        unseen_weights: with held-out inputs, the predicted damage to embedding rows the calibration never uses
            (see ``rare_scale``) is also tried at these multiples, each with its own budget search on the held-out
            inputs, and the smallest allocation within the bound is kept (the held-out inputs use such rows, so
            they measure what the prediction can only estimate).
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
    tier_grids: tuple[float, ...] = (0.5, 0.59, 0.71, 0.84, 1.0, 1.19, 1.41)
    unseen_weights: tuple[float, ...] = (1.0, 3.0, 10.0)
    rare_scale: bool = True
    gptq: bool = True
    weighting: str = "fisher"
    per_layer: bool = True
    fp16: bool = True
    fp16_others: bool = True
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
        if any(not k > 0 for k in self.unseen_weights):
            raise ValueError(f"unseen_weights={self.unseen_weights}, expected positive multiples")
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

    def codebook_parts(self, shape: Sequence[int]) -> dict[str, Any]:
        """This candidate (bits > 0) as :func:`deepzip.techniques.share.set_codebooks_`'s arguments: the
        parametrization that fine-tunes its codebooks, and that a saved file is loaded back into."""
        assert self.codebooks is not None and self.labels is not None
        return {"codebooks": self.codebooks.astype(np.float32), "labels": self.labels.reshape(shape),
                "books": self.row_codebook(), "layout": "grouped" if self.row_tiers is None else "tiered",
                "outlier_pos": self.outlier_pos, "outlier_val": self.outlier_val}

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


#: a held-out estimate is trusted when its standard error is at most this fraction of the bound: a true drop of
#: 1.25x the bound then lies 2.5 standard errors above an estimate that just meets it
HELDOUT_REL_SE = 0.1
#: and when it rests on at least this many inputs (fewer: the standard error itself is too rough to go by)
HELDOUT_MIN = 32


@dataclass(frozen=True)
class HeldOut:
    """The drop measured on calibration inputs that nothing was fitted on (sensitivities, Gram matrices, row counts,
    candidates, per-layer factors, distillation): an unbiased estimate of the drop on more inputs of the same kind.

    Attributes:
        drop: ``1 - mean cosine`` of the outputs against the original on the held-out inputs.
        se: its standard error, ``std(1 - cos_i) / sqrt(n)`` over the held-out inputs.
        n: held-out inputs.
    """

    drop: float
    se: float
    n: int

    def trusted(self, max_drop: float) -> bool:
        """Whether the estimate is precise enough to state ``max_drop`` by: at least :data:`HELDOUT_MIN` inputs
        and a standard error of at most :data:`HELDOUT_REL_SE` times the bound."""
        return self.n >= HELDOUT_MIN and self.se <= HELDOUT_REL_SE * max_drop

    def inputs_needed(self, max_drop: float) -> int:
        """Held-out inputs an estimate as spread as this one needs to be trusted at ``max_drop`` (the standard
        error falls as ``1 / sqrt(n)``).

        Example:
            >>> HeldOut(drop=0.01, se=0.002, n=50).inputs_needed(0.01)
            200
        """
        want = HELDOUT_REL_SE * max_drop
        by_se = math.ceil(self.n * (self.se / want) ** 2 - 1e-9) if self.se > 0 else 0
        return max(HELDOUT_MIN, by_se)


@dataclass
class PostTrainResult:
    """What :func:`compress_to_bound_` chose and measured.

    Attributes:
        choices: tensor name (``"fc1.weight"``) -> the chosen :class:`Candidate`.
        drop: measured ``1 - mean cosine`` on the calibration inputs with every choice applied, plus the
            predicted drop from embedding rows the calibration never uses (``alpha * unseen_error``).
        predicted_bytes: sum of the chosen candidates' predicted bytes (the file adds the other tensors and its
            header).
        sensitivity: tensor name -> measured drop per unit of weighted error (alpha).
        hulls: tensor name -> the candidates kept (lower convex hull), cheapest last.
        seconds: wall time of each phase.
        heldout: the drop on held-out calibration inputs (:class:`HeldOut`) when :func:`compress_to_bound_` was
            given some: the bound was met on them; None: the bound was met on the inputs fitted on (``drop``).
        float16_others: the parameters outside ``choices`` rounded to float16 values (``fp16_others``), which
            :func:`distill_` rounds again after training them.
    """

    choices: dict[str, Candidate]
    drop: float
    predicted_bytes: float
    sensitivity: dict[str, float] = field(default_factory=dict)
    hulls: dict[str, list[Candidate]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    heldout: HeldOut | None = None
    float16_others: list[str] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """Per tensor: name, choice, predicted bytes, weighted error."""
        return [{"tensor": n, "choice": c.label, "bytes": int(c.nbytes), "error": c.error}
                for n, c in self.choices.items()]

