"""Weight sharing (Deep Compression, Han et al. 2016, arXiv 1510.00149 section 3): per-layer codebooks by 1-D
k-means, with trainable centroids, as a parametrization.

A shared layer's ``weight`` is computed by a :class:`SharedWeight` parametrization as
``centroids[indices] * mask``: ``centroids`` (k,) is an ``nn.Parameter``, ``indices`` (weight-shaped, int64) and
``mask`` (weight-shaped, bool) are buffers. Pruned weights (mask False) are exactly zero and belong to no cluster
(their index is 0 and irrelevant). Why this form:

- Fine-tuning the centroids needs no special code. The gradient autograd gives ``centroids`` through the gather is
  ``dL/dc_k = sum over kept (i, j) with indices[i, j] == k of dL/dW[i, j]`` -- exactly the paper's eq. (3) -- so
  :func:`deepzip.train.fit` retrains a shared model unchanged. Indices never change, so the number of distinct
  values per layer stays <= k whatever the optimizer (momentum, weight decay) does.
- The multiplication by ``mask`` keeps pruned weights at zero even when they share index 0 with kept weights.
- The parametrization's ``original`` tensor is no longer used; it is frozen (``requires_grad=False``) so optimizers
  skip it, and holds the shared weight at the time of sharing (not saved by :mod:`deepzip.io.checkpoint`).

Sharing a pruned layer replaces its :class:`deepzip.techniques.prune.Mask` by a ``SharedWeight`` holding the same
mask, so
``prune.get_mask`` keeps working. ``prune.strip(model)`` bakes the shared values into a plain weight.

Bits per layer: an int for every layer; a preset ``"C/F"`` (``"8/5"``, ``"8/4"``, ``"4/2"``: conv layers get C bits,
all other layers F bits, the paper's notation); or a dict of dotted layer names (``"fc1"`` or ``"fc1.weight"``) with
an optional ``"default"`` entry (an int or a preset) for the layers not named. Layers not covered are left alone.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from deepzip.techniques.prune import prune_
    >>> m = prune_(nn.Sequential(nn.Linear(16, 8)), sparsity=0.5)
    >>> _ = share_weights_(m, 2, progress=False)
    >>> w = m[0].weight
    >>> int(torch.unique(w[w != 0]).numel()) <= 4, int((w == 0).sum()) >= 64
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .prune import FilterFn, get_mask, prunable_tensors, remove_parametrization_, resolve_layer

__all__ = [
    "PRESETS",
    "SharedWeight",
    "get_codebook",
    "is_shared",
    "resolve_bits",
    "set_codebook_",
    "share_weights_",
    "sharing_table",
]

#: Layer kinds :func:`pack_layer` produces (read by :mod:`deepzip.io.checkpoint`).
#: The paper's conv/fc bit settings (Deep Compression, Table 7); any ``"C/F"`` string is accepted.
PRESETS: tuple[str, ...] = ("8/5", "8/4", "4/2")
_METHODS = ("kmeans", "linear")
_INITS = ("linear", "density", "random")
_MAX_K = 1 << 16

Bits = int | str | Mapping[str, "int | str"]


class _Gather(torch.autograd.Function):
    """``centroids[indices]`` whose backward sums the gradient per centroid with ``bincount`` (in float64, in a fixed
    order): the default backward of indexing scatter-adds in parallel, so the same run could end with centroids
    that differ in the last bit, and a file that differs from run to run."""

    @staticmethod
    def forward(ctx: Any, centroids: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices)
        ctx.k = centroids.numel()
        return centroids[indices]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (indices,) = ctx.saved_tensors
        sums = torch.bincount(indices.reshape(-1).long(), weights=grad.reshape(-1).double(), minlength=ctx.k)
        return sums.to(grad.dtype), None


class SharedWeight(nn.Module):
    """Parametrization ``weight = centroids[indices] * mask``.

    Args:
        centroids: (k,) the shared values; becomes a trainable ``nn.Parameter``.
        indices: weight-shaped cluster index of every weight (int64; anything at pruned positions, stored as 0).
        mask: weight-shaped bool keep-mask (all True for a layer that was not pruned).
    """

    centroids: nn.Parameter
    indices: torch.Tensor
    mask: torch.Tensor


    def __init__(self, centroids: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        mask = mask.detach().to(torch.bool).clone()
        self.centroids = nn.Parameter(centroids.detach().clone())
        # index 0 at pruned positions: a valid gather target whose value the mask then zeroes
        self.register_buffer("indices", torch.where(mask, indices.detach().to(torch.int64), 0))
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # (k,)[weight-shaped] -> weight-shaped; the backward sums gradients per cluster (eq. 3)
        return _Gather.apply(self.centroids, self.indices) * self.mask

    def extra_repr(self) -> str:
        return f"k={self.centroids.numel()}, kept={int(self.mask.sum())}/{self.mask.numel()}"


def _shared(module: nn.Module, tensor: str = "weight") -> SharedWeight | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    for p in module.parametrizations[tensor]:  # type: ignore[index,union-attr]
        if isinstance(p, SharedWeight):
            return p
    return None


def is_shared(module: nn.Module, tensor: str = "weight") -> bool:
    """Whether ``module.<tensor>`` (default ``weight``) is computed by a :class:`SharedWeight` codebook."""
    return _shared(module, tensor) is not None


# ---------------------------------------------------------------------------------------------------- bits
def _check_bits(name: str, b: Any) -> int:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)):
        raise ValueError(f"{name}.weight: bits={b!r}, expected an integer 1..16")
    if not 1 <= b <= 16:
        raise ValueError(f"{name}.weight: bits={b}, expected 1..16")
    return int(b)


def _preset(text: str) -> tuple[Any, Any]:
    conv, sep, fc = text.partition("/")
    try:
        return (int(conv), int(fc)) if sep else (int(text), int(text))
    except ValueError:
        raise ValueError(f"bits={text!r}: expected an integer or a conv/fc preset such as "
                         f"{', '.join(repr(p) for p in PRESETS)}") from None


def _default_bits(spec: int | str, module: nn.Module) -> Any:
    if isinstance(spec, str):
        conv, fc = _preset(spec)
        return conv if isinstance(module, _ConvNd) else fc
    return spec


def resolve_bits(model: nn.Module, bits: Bits, filter_fn: FilterFn | None = None) -> dict[str, int]:
    """Bits per layer (dotted name -> 1..16) that :func:`share_weights_` would use, validated.

    Raises:
        ValueError: a bit width outside 1..16 or not an integer (naming the layer), an unknown layer name, or a
            malformed preset.
    """
    layers = prunable_tensors(model, filter_fn)
    raw: dict[str, Any] = {}
    if isinstance(bits, Mapping):
        default = bits.get("default")
        if default is not None:
            raw = {name: _default_bits(default, m) for name, (m, _) in layers.items()}
        for key, b in bits.items():
            if key == "default":
                continue
            raw[resolve_layer(key, layers, "bits", "shareable")] = b
    elif isinstance(bits, (str, int, np.integer)) and not isinstance(bits, bool):
        raw = {name: _default_bits(bits, m) for name, (m, _) in layers.items()}
    else:
        raise ValueError(
            f"bits={bits!r}: expected an int, a preset such as '8/5', or a dict of layer names")
    return {name: _check_bits(name, b) for name, b in raw.items()}


# ---------------------------------------------------------------------------------------------------- sharing
def share_weights_(
    model: nn.Module,
    bits: Bits,
    *,
    init: str = "linear",
    method: str = "kmeans",
    filter_fn: FilterFn | None = None,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Replace each selected layer's weights by at most ``2**bits`` shared values, in place; returns ``model``.

    Per layer, the weights that pruning kept (all weights of an unpruned layer) are clustered by exact 1-D k-means
    (:func:`deepzip.techniques._kmeans.kmeans1d`); the layer then computes its weight from the codebook through a
    :class:`SharedWeight` parametrization whose centroids can be fine-tuned with :func:`deepzip.train.fit`.
    A layer that is already shared is re-clustered from its current values. Special cases:

    - every weight pruned: a one-entry codebook ``[0.0]`` with an all-False mask (the layer stays all zero);
    - at most ``2**bits`` distinct kept values: those values exactly (k' = number of distinct values);
    - k-means may drop clusters that end up empty, so a layer can get fewer than ``2**bits`` centroids.

    Args:
        model: the model (pruned or not).
        bits: bits per index: an int for all layers; ``"C/F"`` (e.g. ``"8/5"``): conv layers C bits, other layers
            F bits; or a dict of dotted layer names (``"fc1"`` / ``"fc1.weight"``) to bits, whose optional
            ``"default"`` entry (int or preset) covers the layers not named, e.g. ``{"default": "8/5", "fc3": 6}``.
            With a dict and no default, layers not named are left alone.
        init: k-means initialisation: ``"linear"`` (evenly spaced over [min, max], the paper's best), ``"density"``
            or ``"random"`` (Forgy).
        method: ``"kmeans"``, or ``"linear"``: uniform fixed-point quantisation to ``2**bits`` evenly spaced levels
            over [min, max] of the kept weights (the simple baseline; same parametrization).
        filter_fn: ``filter_fn(module, name)`` selects layers (default: Linear and Conv).
        seed: seed of ``init="random"``.
        progress: show a progress bar over the layers.

    Returns:
        ``model``, with a :class:`SharedWeight` on every selected layer.

    Raises:
        ValueError: bits outside 1..16 (``"fc1.weight: bits=0, expected 1..16"``), an unknown layer name, an unknown
            init or method, a non-floating-point or non-finite weight.

    Example:
        >>> from deepzip.models import get_model
        >>> m = share_weights_(get_model("lenet5"), "8/5", progress=False)
        >>> [t["bits"] for t in sharing_table(m)]
        [8, 8, 5, 5]
    """
    if method not in _METHODS:
        raise ValueError(f"method={method!r}, expected one of {_METHODS}")
    if init not in _INITS:
        raise ValueError(f"init={init!r}, expected one of {_INITS}")
    from . import _kmeans

    layers = prunable_tensors(model, filter_fn)
    per_layer = resolve_bits(model, bits, filter_fn)
    for name in per_layer:
        w = getattr(*layers[name])
        if not torch.is_floating_point(w):
            raise ValueError(f"{name}.weight: dtype {w.dtype} is not floating point; cannot share it")
        if not torch.isfinite(w.detach()).all():
            raise ValueError(f"{name}.weight: contains NaN or inf; cannot share it")

    for name in tqdm(per_layer, desc="share weights", disable=not progress, leave=False):
        (module, tensor), b = layers[name], per_layer[name]
        with torch.no_grad():
            w = getattr(module, tensor).detach()
            mask = get_mask(module, tensor)
            mask = mask.clone() if mask is not None else torch.ones_like(w, dtype=torch.bool)
            kept = w[mask].float().cpu().numpy()  # (n_kept,)
            indices = np.zeros(tuple(w.shape), dtype=np.int64)
            if kept.size == 0:
                centroids = np.zeros(1, dtype=np.float32)
            else:
                if method == "kmeans":
                    centroids, labels = _kmeans.kmeans1d(kept, 1 << b, init=init, seed=seed)
                else:
                    centroids, labels = _kmeans.linear_quantize(kept, b)
                indices[mask.cpu().numpy()] = labels
            set_codebook_(module, centroids, indices, mask.cpu().numpy(), tensor=tensor)
    return model


def _dense(centroids: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return centroids[indices] * mask


def set_codebook_(module: nn.Module, centroids: Any, indices: Any, mask: Any, *, tensor: str = "weight") -> nn.Module:
    """Make ``module.<tensor>`` (default ``weight``) the shared weight ``centroids[indices] * mask``, replacing any
    parametrization.

    Used by :func:`share_weights_` and when loading a compressed file.

    Args:
        module: a layer with a ``weight``.
        centroids: (k,) float values, 1 <= k <= 65536, finite.
        indices: weight-shaped integer cluster indices in [0, k) at kept positions (ignored where ``mask`` is False).
        mask: weight-shaped bool keep-mask.

    Returns:
        ``module``.

    Raises:
        ValueError: shapes that do not fit the weight, an empty or too large codebook, non-finite centroids,
            non-integer indices or indices out of range.
    """
    weight = getattr(module, tensor)
    shape = tuple(weight.shape)
    c = torch.as_tensor(np.asarray(centroids) if not isinstance(centroids, torch.Tensor) else centroids)
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if c.ndim != 1 or not 1 <= c.numel() <= _MAX_K:
        raise ValueError(f"codebook of shape {tuple(c.shape)}, expected (k,) with 1 <= k <= {_MAX_K}")
    if not torch.is_floating_point(c) or not torch.isfinite(c).all():
        raise ValueError("codebook: expected finite floating-point centroids")
    if tuple(idx.shape) != shape or tuple(m.shape) != shape:
        raise ValueError(f"indices {tuple(idx.shape)} / mask {tuple(m.shape)} do not fit the weight's shape {shape}")
    if torch.is_floating_point(idx) or idx.dtype == torch.bool or torch.is_complex(idx):
        raise ValueError(f"indices: dtype {idx.dtype}, expected integers")
    m = m.to(torch.bool)
    idx = torch.where(m, idx.to(torch.int64), 0)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= c.numel()):
        raise ValueError(f"indices out of range [0, {c.numel()}) (min {int(idx.min())}, max {int(idx.max())})")
    device = weight.device
    c = c.to(device=device, dtype=weight.dtype)
    idx, m = idx.to(device), m.to(device)
    with torch.no_grad():
        remove_parametrization_(module, leave_parametrized=False, tensor=tensor)  # deep-copy safe (prune._own_class_)
        # `original` becomes unused: it holds the shared weight at this moment (so a stray read sees sane values)
        getattr(module, tensor).copy_(_dense(c, idx, m))
        parametrize.register_parametrization(module, tensor, SharedWeight(c, idx, m))
    module.parametrizations[tensor].original.requires_grad_(False)  # type: ignore[index,union-attr]
    return module


def get_codebook(module: nn.Module, tensor: str = "weight") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The codebook of a shared layer: ``(centroids float32 (k,), indices int64 weight-shaped, mask bool)``.

    Indices at pruned positions are 0. Raises ValueError when the layer is not shared.
    """
    p = _shared(module, tensor)
    if p is None:
        raise ValueError(f"{type(module).__name__}: weight is not shared (call share_weights_ first)")
    return (
        p.centroids.detach().float().cpu().numpy().copy(),
        p.indices.detach().cpu().numpy().copy(),
        p.mask.detach().cpu().numpy().copy(),
    )


# ---------------------------------------------------------------------------------------------------- reports
def sharing_table(model: nn.Module, filter_fn: FilterFn | None = None) -> list[dict]:
    """Per layer: ``layer``, ``weights``, ``kept_pct``, ``centroids`` (k; None if not shared), ``bits``
    (index bits, ceil(log2 k), at least 1; None if not shared) and ``distinct`` (distinct values among the
    kept weights; for an unshared layer, among its non-zero weights)."""
    rows = []
    for name, (m, tensor) in prunable_tensors(model, filter_fn).items():
        w = getattr(m, tensor).detach()
        p = _shared(m, tensor)
        own_mask = get_mask(m, tensor)
        mask = p.mask if p is not None else (own_mask if own_mask is not None else w != 0)
        k = p.centroids.numel() if p is not None else None
        rows.append({
            "layer": name,
            "weights": w.numel(),
            "kept_pct": 100.0 * float(mask.sum()) / max(w.numel(), 1),
            "centroids": k,
            "bits": max(1, math.ceil(math.log2(k))) if k is not None else None,
            "distinct": int(torch.unique(w[mask]).numel()),
        })
    return rows

