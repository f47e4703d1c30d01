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
``prune.get_mask`` keeps working. ``prune.strip(model)`` bakes the shared values into a plain weight. A codebook is
the whole weight: sharing a weight-normalised layer (or one under any other parametrization) bakes that
parametrization first.

``SharedWeight`` is deepzip's one codebook representation: post-training compression
(:mod:`deepzip.techniques.posttrain`) puts its codebooks per group or tier of rows, with exact outliers, into the
same class (:func:`set_codebooks_`; ``(G, k)`` centroids, ``indices`` into their flattened form), so a post-training
file reloads with codebooks that train like these.

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
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..codec._tensor import MAX_CODEBOOK
from .prune import get_mask, remove_parametrization_, resolve_layer
from .walk import FilterFn, Own, chain, prunable_tensors

__all__ = [
    "PRESETS",
    "SharedWeight",
    "get_codebook",
    "get_codebooks",
    "is_shared",
    "resolve_bits",
    "round_centroids_",
    "set_codebook_",
    "set_codebooks_",
    "share_biases_",
    "share_weights_",
    "sharing_table",
]

#: The paper's conv/fc bit settings (Deep Compression, Table 7); any ``"C/F"`` string is accepted.
PRESETS: tuple[str, ...] = ("8/5", "8/4", "4/2")
_METHODS = ("kmeans", "linear")
_INITS = ("linear", "density", "random")

Bits = int | str | Mapping[str, "int | str"]


class _Gather(torch.autograd.Function):
    """``centroids.flatten()[indices]`` whose backward sums the gradient per centroid with ``bincount`` (in float64,
    in a fixed order): the default backward of indexing scatter-adds in parallel, so the same run could end with
    centroids that differ in the last bit, and a file that differs from run to run."""

    @staticmethod
    def forward(ctx: Any, centroids: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices)
        ctx.shape = centroids.shape
        return centroids.reshape(-1)[indices]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (indices,) = ctx.saved_tensors
        k = math.prod(ctx.shape)
        sums = torch.bincount(indices.reshape(-1).long(), weights=grad.reshape(-1).double(), minlength=k)
        return sums.to(grad.dtype).reshape(ctx.shape), None


class SharedWeight(Own):
    """Parametrization ``weight = centroids.flatten()[indices] * mask``, exact outliers written over it.

    The one codebook representation of deepzip: k-means weight sharing makes it with one codebook (``(k,)``
    centroids); post-training compression (:mod:`deepzip.techniques.posttrain`) with one codebook per group of rows
    or per tier of rows (``(G, k)`` centroids, ``books`` giving each row's codebook, ``layout`` saying how the file
    stores them) and exact outliers. Either way the centroids are trained by :func:`deepzip.train.fit` and the
    indices, mask and outliers stay.

    Args:
        centroids: (k,) shared values, or (G, k): G codebooks of k values; becomes a trainable ``nn.Parameter``.
        indices: weight-shaped index of every weight into the flattened centroids (int64; anything at pruned
            positions, stored as 0): for (G, k) centroids, ``books[row] * k + label``.
        mask: weight-shaped bool keep-mask (all True for a layer that was not pruned).
        books: (R,) the codebook of each row (first dimension) of the weight; only with (G, k) centroids.
        layout: with (G, k) centroids, how the file stores them: ``"grouped"`` (consecutive rows in equal groups)
            or ``"tiered"`` (any row -> codebook map); ``""`` for (k,) centroids.
        outlier_pos: (n,) distinct flat positions whose value is ``outlier_val`` instead of the codebook's.
        outlier_val: (n,) float32, not trained.
    """

    centroids: nn.Parameter
    indices: torch.Tensor
    mask: torch.Tensor
    books: torch.Tensor | None
    outlier_pos: torch.Tensor | None
    outlier_val: torch.Tensor | None

    def __init__(self, centroids: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor, *,
                 books: torch.Tensor | None = None, layout: str = "", outlier_pos: torch.Tensor | None = None,
                 outlier_val: torch.Tensor | None = None) -> None:
        super().__init__()
        mask = mask.detach().to(torch.bool).clone()
        self.layout = layout
        self.centroids = nn.Parameter(centroids.detach().clone())
        # index 0 at pruned positions: a valid gather target whose value the mask then zeroes
        self.register_buffer("indices", torch.where(mask, indices.detach().to(torch.int64), 0))
        self.register_buffer("mask", mask)
        # only with several codebooks: a one-codebook layer's state_dict keeps its three entries (None buffers are
        # not saved)
        z = torch.zeros(0, dtype=torch.int64, device=mask.device)
        parts = {"books": z if books is None else books.detach().to(torch.int64).clone(),
                 "outlier_pos": z if outlier_pos is None else outlier_pos.detach().to(torch.int64),
                 "outlier_val": (z if outlier_val is None else outlier_val.detach()).to(centroids.dtype)}
        for name, t in parts.items():
            self.register_buffer(name, t if layout else None)

    def _pruned(self) -> bool:
        """Whether the mask drops anything (checked again whenever the mask buffer is replaced or written)."""
        seen = (self.mask.data_ptr(), self.mask._version)
        if getattr(self, "_seen", None) != seen:
            self._seen, self._drops = seen, not bool(self.mask.all())
        return self._drops

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # (k,) or (G, k) [weight-shaped] -> weight-shaped; the backward sums gradients per centroid (eq. 3)
        w = _Gather.apply(self.centroids, self.indices)
        if self._pruned():  # (an all-True mask changes nothing and would cost half the step of a large layer)
            w = w * self.mask
        if self.outlier_pos is not None and self.outlier_pos.numel():
            w = w.reshape(-1).index_put((self.outlier_pos,), self.outlier_val).reshape(w.shape)
        return w

    def extra_repr(self) -> str:
        books = f", {self.layout} {tuple(self.centroids.shape)}" if self.layout else ""
        n = 0 if self.outlier_pos is None else self.outlier_pos.numel()
        out = f", outliers={n}" if n else ""
        return f"k={self.centroids.numel()}{books}{out}, kept={int(self.mask.sum())}/{self.mask.numel()}"


def _shared(module: nn.Module, tensor: str = "weight") -> SharedWeight | None:
    return next((p for p in chain(module, tensor)[1] if isinstance(p, SharedWeight)), None)


def share_biases_(model: nn.Module, bits: int, layers: Iterable[str] | None = None, *, init: str = "linear",
                  seed: int = 0) -> dict[str, int]:
    """Weight-share the biases of ``model``'s layers, in place: each bias with at least ``2 ** (bits + 1)`` entries
    gets a codebook of at most ``2 ** bits`` k-means centroids (:func:`set_codebook_` on ``"bias"``), fine-tuned by
    :func:`deepzip.train.fit` like a weight's, stored as a ``codebook`` tensor. Smaller biases stay plain (their
    codebook would cost more than their values). At < 1% density the biases of a LeNet are a tenth of its file.

    Args:
        model: the model.
        bits: bits per bias index, 1..16.
        layers: dotted names of the layers whose bias to share (default: every layer with a floating-point bias).
        init, seed: k-means initialisation, as :func:`share_weights_`.

    Returns:
        layer name -> number of centroids, for the biases shared.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
        >>> share_biases_(m, 3)
        {'0': 8}
    """
    from . import _kmeans

    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits={bits!r}, expected an integer in 1..16")
    modules = dict(model.named_modules())
    names = list(layers) if layers is not None else [n for n in modules if n]
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"share_biases_: no layer named {unknown[0]!r}")
    done = {}
    for name in names:
        b = getattr(modules[name], "bias", None)
        if not isinstance(b, torch.Tensor) or not b.is_floating_point() or b.numel() < 2 << bits:
            continue
        values = b.detach().float().cpu().numpy().reshape(-1)
        if not np.isfinite(values).all():
            raise ValueError(f"{name}.bias: contains NaN or inf; cannot share it")
        centroids, labels = _kmeans.kmeans1d(values, 1 << bits, init=init, seed=seed)
        set_codebook_(modules[name], centroids, labels.reshape(b.shape), np.ones(b.shape, bool), tensor="bias")
        done[name] = int(centroids.size)
    return done


def round_centroids_(model: nn.Module) -> nn.Module:
    """Round the centroids of every shared tensor of ``model`` to float16 values, in place (they stay float32
    parameters, so the model runs as before); returns ``model``. :func:`deepzip.save` then stores each such codebook
    in 16 bits (format 1.4).

    Example:
        >>> m = nn.Linear(4, 2)
        >>> _ = set_codebook_(m, np.array([0.1, -0.3], np.float32), np.zeros((2, 4), np.int64), np.ones((2, 4), bool))
        >>> float(round_centroids_(m).weight[0, 0].detach()) == float(np.float16(0.1))
        True
    """
    with torch.no_grad():
        for module in model.modules():
            for tensor in getattr(module, "parametrizations", {}):
                p = _shared(module, tensor)
                if p is not None:
                    p.centroids.copy_(p.centroids.half().to(p.centroids.dtype))
    return model


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
        filter_fn: ``filter_fn(module, name)`` selects layers (default: :data:`deepzip.techniques.walk.LAYER_TYPES`:
            Linear, every Conv and ConvTranspose, Embedding, recurrent matrices).
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


def _as_tensor(x: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)


def _install_(module: nn.Module, tensor: str, p: SharedWeight) -> nn.Module:
    """Make ``p`` the parametrization of ``module.<tensor>``, replacing any (a foreign one such as weight_norm too:
    the codebook is the whole weight)."""
    weight = getattr(module, tensor)
    p = p.to(weight.device)
    with torch.no_grad():
        p.centroids.data = p.centroids.data.to(weight.dtype)
        if p.outlier_val is not None:
            p.outlier_val = p.outlier_val.to(weight.dtype)
        # deep-copy safe (prune._own_class_); a chain of several inputs (weight_norm's g and v) cannot be left
        # unparametrized, so it is baked first
        remove_parametrization_(module, leave_parametrized=bool(chain(module, tensor)[0]), tensor=tensor)
        # `original` becomes unused: it holds the shared weight at this moment (so a stray read sees sane values)
        getattr(module, tensor).copy_(p(getattr(module, tensor)))
        parametrize.register_parametrization(module, tensor, p)
    module.parametrizations[tensor].original.requires_grad_(False)  # type: ignore[index,union-attr]
    return module


def _check_indices(idx: torch.Tensor, m: torch.Tensor, shape: tuple[int, ...], k: int) -> torch.Tensor:
    if tuple(idx.shape) != shape or tuple(m.shape) != shape:
        raise ValueError(f"indices {tuple(idx.shape)} / mask {tuple(m.shape)} do not fit the weight's shape {shape}")
    if torch.is_floating_point(idx) or idx.dtype == torch.bool or torch.is_complex(idx):
        raise ValueError(f"indices: dtype {idx.dtype}, expected integers")
    idx = torch.where(m.to(torch.bool), idx.to(torch.int64), 0)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= k):
        raise ValueError(f"indices out of range [0, {k}) (min {int(idx.min())}, max {int(idx.max())})")
    return idx


def _check_centroids(c: torch.Tensor, ndim: int) -> None:
    if c.ndim != ndim or not 1 <= c.shape[-1] <= MAX_CODEBOOK or not c.numel():
        want = "(k,)" if ndim == 1 else "(G, k)"
        raise ValueError(f"codebook of shape {tuple(c.shape)}, expected {want} with 1 <= k <= {MAX_CODEBOOK}")
    if not torch.is_floating_point(c) or not torch.isfinite(c).all():
        raise ValueError("codebook: expected finite floating-point centroids")


def set_codebook_(module: nn.Module, centroids: Any, indices: Any, mask: Any, *, tensor: str = "weight") -> nn.Module:
    """Make ``module.<tensor>`` (default ``weight``) the shared weight ``centroids[indices] * mask``, replacing any
    parametrization (a foreign one such as weight_norm too: the codebook is the whole weight).

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
    shape = tuple(getattr(module, tensor).shape)
    c, m = _as_tensor(centroids), _as_tensor(mask).to(torch.bool)
    _check_centroids(c, 1)
    idx = _check_indices(_as_tensor(indices), m, shape, c.numel())
    return _install_(module, tensor, SharedWeight(c, idx, m))


def set_codebooks_(module: nn.Module, codebooks: Any, labels: Any, books: Any, *, layout: str,
                   outlier_pos: Any = None, outlier_val: Any = None, tensor: str = "weight") -> nn.Module:
    """Make ``module.<tensor>`` computed from one codebook per group (or tier) of rows, with exact outliers.

    The post-training form (:mod:`deepzip.techniques.posttrain`), in the same :class:`SharedWeight`
    parametrization as :func:`set_codebook_`'s: row ``r`` of the weight takes its values from
    ``codebooks[books[r]]``.

    Args:
        module: a layer with a ``weight``.
        codebooks: (G, k) float values, finite, 1 <= k <= 65536.
        labels: weight-shaped integers in [0, k): each weight's entry in its row's codebook.
        books: (R,) integers in [0, G): the codebook of each row (first dimension).
        layout: ``"grouped"`` or ``"tiered"``: how a ``.dz`` file stores them (see :mod:`deepzip.codec.grouped`,
            :mod:`deepzip.codec.tiered`).
        outlier_pos: flat positions written with ``outlier_val`` (exact) over the codebook values.
        outlier_val: their values.

    Raises:
        ValueError: shapes or values that do not fit, naming the part.
    """
    shape = tuple(getattr(module, tensor).shape)
    c, lab, bk = _as_tensor(codebooks), _as_tensor(labels), _as_tensor(books).reshape(-1).to(torch.int64)
    _check_centroids(c, 2)
    if layout not in ("grouped", "tiered"):
        raise ValueError(f"layout={layout!r}, expected 'grouped' or 'tiered'")
    if not shape or bk.numel() != shape[0] or (bk.numel() and (int(bk.min()) < 0 or int(bk.max()) >= c.shape[0])):
        raise ValueError(f"books: {bk.numel()} row codebooks in [0, {c.shape[0]}) expected for shape {shape}")
    m = torch.ones(shape, dtype=torch.bool)
    lab = _check_indices(lab, m, shape, c.shape[1])
    flat = bk.reshape(-1, *[1] * (len(shape) - 1)) * c.shape[1] + lab  # (R, ...) index into the flat centroids
    pos = _as_tensor(np.zeros(0, np.int64) if outlier_pos is None else outlier_pos).reshape(-1).to(torch.int64)
    val = _as_tensor(np.zeros(0, np.float32) if outlier_val is None else outlier_val).reshape(-1).float()
    if pos.numel() != val.numel() or (pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= m.numel())):
        raise ValueError(f"outliers: {pos.numel()} positions in [0, {m.numel()}) and {val.numel()} values expected")
    return _install_(module, tensor, SharedWeight(c, flat, m, books=bk, layout=layout, outlier_pos=pos,
                                                  outlier_val=val))


def get_codebook(module: nn.Module, tensor: str = "weight") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The codebook of a shared layer: ``(centroids float32 (k,), indices int64 weight-shaped, mask bool)``.

    Indices at pruned positions are 0. Several codebooks (:func:`set_codebooks_`) come flattened into one, their
    outliers appended as entries of their own. Raises ValueError when the layer is not shared, or when that one
    codebook would exceed 2**16 entries.
    """
    p = _shared(module, tensor)
    if p is None:
        raise ValueError(f"{type(module).__name__}: weight is not shared (call share_weights_ first)")
    centroids = p.centroids.detach().float().cpu().numpy().reshape(-1).copy()
    indices = p.indices.detach().cpu().numpy().copy()
    if p.outlier_pos is not None and p.outlier_val is not None and p.outlier_pos.numel():
        n = p.outlier_pos.numel()
        indices.reshape(-1)[p.outlier_pos.cpu().numpy()] = centroids.size + np.arange(n)
        centroids = np.concatenate([centroids, p.outlier_val.detach().float().cpu().numpy()])
    if centroids.size > MAX_CODEBOOK:
        raise ValueError(f"{type(module).__name__}: {centroids.size} codebook values and outliers, more than one "
                         f"codebook holds ({MAX_CODEBOOK}); store it in a .dz file (deepzip.save)")
    return centroids, indices, p.mask.detach().cpu().numpy().copy()


def get_codebooks(module: nn.Module, tensor: str = "weight") -> dict[str, Any] | None:
    """The parts :func:`set_codebooks_` takes, read back: ``codebooks`` (G, k) float32, ``labels`` (weight-shaped
    int64), ``books`` (R,), ``layout``, ``outlier_pos``, ``outlier_val``; None for a layer with one codebook or none.
    """
    p = _shared(module, tensor)
    if p is None or not p.layout or p.books is None or p.outlier_pos is None or p.outlier_val is None:
        return None
    cb = p.centroids.detach().float().cpu().numpy()
    books = p.books.cpu().numpy()
    flat = p.indices.cpu().numpy()
    labels = flat - books.reshape(-1, *[1] * (flat.ndim - 1)) * cb.shape[1]
    return {"codebooks": cb, "labels": labels, "books": books, "layout": p.layout,
            "outlier_pos": p.outlier_pos.cpu().numpy(), "outlier_val": p.outlier_val.detach().float().cpu().numpy()}


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

