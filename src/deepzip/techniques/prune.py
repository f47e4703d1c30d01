"""Magnitude pruning with retraining (Han et al. 2015, arXiv 1506.02626), masks as parametrizations.

A pruned layer's ``weight`` is computed as ``original * mask`` by a :class:`Mask` parametrization
(``torch.nn.utils.parametrize``). Why a parametrization and not a zeroed tensor plus a hook: an optimizer step with
momentum or weight decay moves every entry of a plain tensor, so zeros come back to life unless they are re-applied
after each step (Distiller's comment on this is the classic warning). Here the forward pass multiplies by the mask,
so the layer's weight is exactly zero at pruned entries whatever the optimizer does, and the gradient reaching
pruned entries of ``original`` is exactly zero. The mask is a registered buffer, so it is part of the state_dict.

Pruning criteria per layer: a threshold of ``quality x std`` of the layer's kept weights, or a target sparsity
(the fraction of the layer's weights that are zero). Re-pruning never revives earlier zeros.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(8, 4))
    >>> _ = prune_(m, sparsity=0.75)
    >>> int((m[0].weight == 0).sum())
    24
    >>> _ = strip(m)  # back to a plain nn.Linear whose weight has the zeros baked in
    >>> type(m[0].weight).__name__
    'Parameter'
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .walk import FilterFn, Own, chain, prunable_layers, prunable_tensors, weight_names

__all__ = [
    "SCAN_SPARSITIES",
    "AGPSchedule",
    "FilterFn",
    "Mask",
    "SensitivityScan",
    "allocate_sparsities",
    "choose_sparsities",
    "clone_model",
    "get_mask",
    "iterative_prune_",
    "prunable_layers",
    "prunable_tensors",
    "prune_",
    "remove_own_",
    "remove_parametrization_",
    "resolve_layer",
    "sensitivity_scan",
    "set_mask_",
    "sparsity_table",
    "strip",
    "weight_names",
]



class Mask(Own):
    """Parametrization ``weight = original * mask``; ``mask`` is a bool buffer of the weight's shape."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.mask


def get_mask(module: nn.Module, tensor: str = "weight") -> torch.Tensor | None:
    """The keep-mask of a layer's ``tensor`` (bool, of its shape), or ``None`` when it is not pruned."""
    for p in chain(module, tensor)[1]:
        mask = getattr(p, "mask", None)
        if isinstance(mask, torch.Tensor):
            return mask
    return None


def resolve_layer(key: str, layers: Mapping[str, object], what: str, kind: str = "prunable") -> str:
    """The layer a user's key names: ``"fc1"`` or ``"fc1.weight"`` -> ``"fc1"``, checked against ``layers``.

    Every per-layer setting in deepzip (sparsity, bits, ranks, config fields) goes through here, so the error is
    the same everywhere.

    Raises:
        ValueError: ``"fc9: unknown layer for sparsity; prunable layers: fc1, fc2, fc3"``.

    Example:
        >>> resolve_layer("fc1.weight", {"fc1": None, "fc2": None}, "bits")
        'fc1'
    """
    name = key.removesuffix(".weight")
    if name not in layers:
        raise ValueError(f"{key}: unknown layer for {what}; {kind} layers: {', '.join(layers) or 'none'}")
    return name


def _resolve(value: float | dict[str, float] | None, layers: dict[str, object], what: str) -> dict[str, float]:
    """Per-layer values from one float or a dict keyed by dotted layer names (``"fc1"`` or ``"fc1.weight"``)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {resolve_layer(key, layers, what): v for key, v in value.items()}
    return {name: value for name in layers}


def _check_float(name: str, value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}.weight: {what}={value!r}, expected a finite number")
    return float(value)


def prune_(
    model: nn.Module,
    sparsity: float | dict[str, float] | None = None,
    *,
    quality: float | dict[str, float] | None = None,
    filter_fn: FilterFn | None = None,
) -> nn.Module:
    """Prune weights by magnitude, in place; returns ``model``.

    Args:
        model: the model; its prunable layers get (or update) a :class:`Mask` parametrization.
        sparsity: fraction in [0, 1] of each layer's weights to be zero afterwards: one float for all layers or a
            dict of dotted layer names. Layers not named are left alone.
        quality: alternatively, prune ``|w| <= quality * std(kept weights of the layer)`` (Han et al.'s rule).
        filter_fn: ``filter_fn(module, name)`` selects layers (default: :data:`deepzip.techniques.walk.LAYER_TYPES`:
            Linear, every Conv and ConvTranspose, Embedding, recurrent matrices).

    Raises:
        ValueError: sparsity outside [0, 1], a negative quality, an unknown layer name, a non-float weight,
            or both/neither of sparsity and quality; the message names the layer.
    """
    if (sparsity is None) == (quality is None):
        raise ValueError("prune_: give exactly one of sparsity= or quality=")
    layers = prunable_tensors(model, filter_fn)
    targets = _resolve(sparsity, layers, "sparsity")
    qualities = _resolve(quality, layers, "quality")
    for name, s in targets.items():
        s = _check_float(name, s, "sparsity")
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"{name}.weight: sparsity={s}, expected a fraction in [0, 1]")
    for name, q in qualities.items():
        if _check_float(name, q, "quality") < 0:
            raise ValueError(f"{name}.weight: quality={q}, expected >= 0")
    for name in {**targets, **qualities}:
        w = getattr(*layers[name])
        if not torch.is_floating_point(w):
            raise ValueError(f"{name}.weight: dtype {w.dtype} is not floating point; cannot prune it")
        shared = [p for p in chain(*layers[name])[1] if not isinstance(p, Mask)]
        if shared:
            raise ValueError(f"{name}.weight: already weight-shared ({type(shared[0]).__name__}); prune before "
                             "sharing")

    with torch.no_grad():
        for name in {**targets, **qualities}:
            module, tensor = layers[name]
            w = getattr(module, tensor).detach()
            old = get_mask(module, tensor)
            old = old.clone() if old is not None else torch.ones_like(w, dtype=torch.bool)
            if name in targets:
                n_prune = round(targets[name] * w.numel())
                scores = w.abs().float().flatten()
                scores[~old.flatten()] = -1.0  # earlier zeros are pruned first, so they stay pruned
                new = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
                if n_prune > 0:
                    new[torch.topk(scores, n_prune, largest=False, sorted=False).indices] = False
                new = new.view_as(w) & old
            else:
                kept = w[old]
                thr = float(qualities[name]) * (float(kept.float().std()) if kept.numel() > 1 else 0.0)
                new = old & (w.abs() > thr)
            _set_mask(module, new, tensor)
    return model


def set_mask_(module: nn.Module, mask: torch.Tensor, tensor: str = "weight") -> nn.Module:
    """Give ``module.<tensor>`` the pruning mask ``mask`` (1 = kept), in place: a new mask, or the one it has
    replaced; the masked-out stored values are zeroed. Returns ``module``.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> _ = set_mask_(layer, torch.tensor([[1.0, 0, 0], [0, 1, 1]]))
        >>> int((layer.weight != 0).sum()), int(get_mask(layer).sum())
        (3, 3)
    """
    target = getattr(module, tensor, None)
    if not isinstance(target, torch.Tensor) or tuple(mask.shape) != tuple(target.shape):
        raise ValueError(f"set_mask_: mask of shape {tuple(mask.shape)} for {tensor} of shape "
                         f"{tuple(getattr(target, 'shape', ()))}")
    with torch.no_grad():
        _set_mask(module, mask.to(torch.bool), tensor)
    return module


def _set_mask(module: nn.Module, mask: torch.Tensor, tensor: str = "weight") -> None:
    existing = get_mask(module, tensor)
    if existing is not None:
        existing.copy_(mask)
    else:
        parametrize.register_parametrization(module, tensor, Mask(mask))  # on top of any foreign ones
    if not chain(module, tensor)[0]:
        # Zero the stored original too: the file then holds exact zeros and a later strip() needs no mask. (Under a
        # foreign parametrization, weight_norm say, the inputs are not the weight: zeroing them would change the kept
        # weights, so the mask alone zeroes them.)
        module.parametrizations[tensor].original.mul_(mask)  # type: ignore[index,union-attr]


def _own_class_(module: nn.Module) -> None:
    """Give a parametrized module a class of its own.

    Why: ``torch.nn.utils.parametrize`` injects a generated class per module, and ``copy.deepcopy`` shares that
    class between the original and the copy; removing the copy's parametrization then deletes the ``weight``
    property from the shared class and breaks the original. Every removal in deepzip goes through
    :func:`remove_parametrization_`, which calls this first.
    """
    cls = module.__class__
    if not parametrize.is_parametrized(module) or getattr(cls, "_deepzip_owner", None) == id(module):
        return
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    body["_deepzip_owner"] = id(module)
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def remove_parametrization_(module: nn.Module, *, leave_parametrized: bool = True, tensor: str = "weight") -> None:
    """Remove the parametrizations of ``module.<tensor>`` (safe on deep copies, see :func:`_own_class_`)."""
    if parametrize.is_parametrized(module, tensor):
        _own_class_(module)
        parametrize.remove_parametrizations(module, tensor, leave_parametrized=leave_parametrized)


def remove_own_(module: nn.Module, tensor: str = "weight") -> None:
    """Remove deepzip's parametrizations (masks, codebooks) of ``module.<tensor>``, keeping the user's.

    Without foreign parametrizations the tensor becomes a plain one holding its current value; with some
    (weight_norm, say) deepzip's are taken off the top of the chain and the weight is the foreign chain's again.
    """
    foreign, own = chain(module, tensor)
    if not own:
        return
    if not foreign:
        remove_parametrization_(module, leave_parametrized=True, tensor=tensor)
        return
    plist = module.parametrizations[tensor]  # type: ignore[index,union-attr]
    for i in reversed(range(len(foreign), len(plist))):  # type: ignore[arg-type]
        del plist[i]  # type: ignore[union-attr]


def clone_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` whose parametrized modules do not share classes with the original's (safe to strip)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        _own_class_(module)
    return twin


def strip(model: nn.Module) -> nn.Module:
    """Bake every weight parametrization (masks, codebooks) into a plain weight, in place; returns ``model``.

    The outputs are unchanged; afterwards the model is an ordinary model with zeros (and shared values) in it.
    """
    for module in list(model.modules()):
        for tensor in list(getattr(module, "parametrizations", {}) if parametrize.is_parametrized(module) else []):
            # A shared layer freezes its unused `original` (which remove_parametrizations reuses as the weight) and
            # trains its centroids: the baked weight is trainable when anything in the parametrization was.
            trainable = any(p.requires_grad for p in module.parametrizations[tensor].parameters())  # type: ignore
            remove_parametrization_(module, leave_parametrized=True, tensor=tensor)  # deep-copy safe
            getattr(module, tensor).requires_grad_(trainable)
    return model


def sparsity_table(model: nn.Module, filter_fn: FilterFn | None = None) -> list[dict]:
    """Per prunable layer: ``layer``, ``weights``, ``kept`` (non-zero) and ``kept_pct``."""
    rows = []
    for name, (m, tensor) in prunable_tensors(model, filter_fn).items():
        w = getattr(m, tensor).detach()
        kept = int((w != 0).sum())
        rows.append({"layer": name, "weights": w.numel(), "kept": kept, "kept_pct": 100.0 * kept / max(w.numel(), 1)})
    return rows


def _cubic(initial: float, final: float, t: float) -> float:
    """AGP (Zhu & Gupta 2017): s_t = s_f + (s_i - s_f) * (1 - t)^3 for t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return final + (initial - final) * (1.0 - t) ** 3


@dataclass
class AGPSchedule:
    """Gradual (automated gradual pruning, cubic) schedule, stepped like an LR scheduler.

    Pass as ``fit(..., step_callback=schedule)``: every ``every`` optimizer steps between ``begin`` and ``end`` the
    per-layer sparsity follows ``s_f + (s_i - s_f)(1 - t)^3`` and the layers are re-pruned to it.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(10, 10))
        >>> sched = AGPSchedule(final={"0": 0.9}, begin=0, end=10, every=1)
        >>> for step in range(1, 11): sched(m, step)
        >>> int((m[0].weight == 0).sum())
        90
    """

    final: dict[str, float]
    begin: int
    end: int
    every: int = 10
    initial: float = 0.0
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def targets(self, step: int) -> dict[str, float]:
        t = (step - self.begin) / max(self.end - self.begin, 1)
        return {name: _cubic(self.initial, s, t) for name, s in self.final.items()}

    def __call__(self, model: nn.Module, step: int) -> None:
        if step < self.begin or (step > self.end) or ((step - self.begin) % self.every and step != self.end):
            return
        targets = self.targets(step)
        prune_(model, sparsity=targets)
        self.history.append((step, targets))

    def step(self, model: nn.Module, step: int) -> None:
        self(model, step)


def iterative_prune_(
    model: nn.Module,
    retrain: Callable[[nn.Module, int], object],
    *,
    sparsity: dict[str, float] | None = None,
    quality: dict[str, float] | None = None,
    rounds: int = 3,
    progress: bool = False,
) -> nn.Module:
    """Prune -> retrain, ``rounds`` times, reaching the final per-layer ``sparsity`` (or ``quality``) in the last.

    Intermediate targets follow the cubic schedule, so early rounds remove the most (and least important) weights.
    ``retrain(model, round)`` trains the model (e.g. a closure over :func:`deepzip.train.fit`).
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds}, expected >= 1")
    for r in tqdm(range(1, rounds + 1), desc="prune rounds", disable=not progress, leave=False):
        if sparsity is not None:
            prune_(model, sparsity={k: _cubic(0.0, v, r / rounds) for k, v in sparsity.items()})
        else:
            prune_(model, quality={k: v * r / rounds for k, v in (quality or {}).items()})
        retrain(model, r)
    return model


SensitivityScan = dict[str, list[tuple[float, float]]]

#: The sparsities every sensitivity scan tries (dense to 99%), finer where layers start to break.
SCAN_SPARSITIES: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)


def sensitivity_scan(
    model: nn.Module,
    error_fn: Callable[[nn.Module], float],
    sparsities: Iterable[float] = SCAN_SPARSITIES,
    *,
    filter_fn: FilterFn | None = None,
    progress: bool = False,
) -> SensitivityScan:
    """Error vs sparsity for each layer pruned alone, without retraining (Han et al. 2015, Fig. 5).

    Returns:
        ``{layer: [(sparsity, error), ...]}`` with ``error = error_fn(pruned copy)``.
    """
    sparsities = list(sparsities)
    layers = list(prunable_tensors(model, filter_fn))
    scan: SensitivityScan = {}
    bar = tqdm(total=len(layers) * len(sparsities), desc="sensitivity", disable=not progress, leave=False)
    for name in layers:
        scan[name] = []
        for s in sparsities:
            trial = clone_model(model)
            prune_(trial, sparsity={name: s})
            scan[name].append((s, float(error_fn(trial))))
            bar.update(1)
    bar.close()
    return scan


def choose_sparsities(scan: SensitivityScan, baseline_error: float, tolerance: float = 0.5) -> dict[str, float]:
    """Per layer, the largest scanned sparsity whose error (pruned alone, no retraining) stays within
    ``baseline_error + tolerance``; retraining then recovers most of that loss."""
    return {
        name: max([s for s, err in points if err <= baseline_error + tolerance], default=0.0)
        for name, points in scan.items()
    }


def allocate_sparsities(
    scan: SensitivityScan, weights: dict[str, int], target: float, *, baseline_error: float | None = None
) -> dict[str, float]:
    """Per-layer sparsities from a sensitivity scan that together reach an overall ``target`` sparsity.

    Greedy on marginal cost: starting from each layer's lowest scanned sparsity, repeatedly move the layer whose
    next scanned point costs the least error (or loss) per additional weight removed, until ``target`` of all
    weights is pruned; the layer moved last then stops between its two scan points, exactly at ``target`` (rounded up
    to 1e-4). So a large, robust layer (LeNet's fc1) is pruned hard and a small or sensitive one (the output layer,
    the first conv) keeps more, as in the paper. Errors are made monotone in sparsity first (a
    scan's noise must not make a higher sparsity look free). If even the most aggressive scanned points fall
    short of ``target``, they are returned. ``baseline_error`` is accepted for symmetry and not needed.

    Example:
        >>> scan = {"big": [(0.0, 1.0), (0.5, 1.0), (0.9, 1.1)], "small": [(0.0, 1.0), (0.5, 2.0), (0.9, 5.0)]}
        >>> allocate_sparsities(scan, {"big": 1000, "small": 10}, 0.85)
        {'big': 0.8585, 'small': 0.0}
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target sparsity={target}, expected a fraction in [0, 1]")
    unknown = set(scan) - set(weights)
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: layer in the scan but not among the weights")
    total = sum(weights[name] for name in scan)
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, points in scan.items():
        pts = sorted(points)
        best, mono = -math.inf, []
        for s_, e in pts:
            best = max(best, e)
            mono.append((s_, best))
        curves[name] = mono
    pos = {name: 0 for name in curves}
    last: str | None = None

    def overall() -> float:
        return sum(curves[n][pos[n]][0] * weights[n] for n in curves) / max(total, 1)

    while overall() < target:
        options = []
        for n, i in pos.items():
            if i + 1 < len(curves[n]):
                (s0, e0), (s1, e1) = curves[n][i], curves[n][i + 1]
                removed = (s1 - s0) * weights[n]
                options.append(((e1 - e0) / removed if removed > 0 else math.inf, n))
        if not options:
            break
        last = min(options)[1]
        pos[last] += 1
    chosen = {n: curves[n][pos[n]][0] for n in curves}
    if last is not None and overall() > target:
        # the last move overshot (scan points are coarse: one step of LeNet's fc1 is ~5k weights): stop that layer
        # between its two scan points, exactly at the target (its cost there is interpolated, so never higher)
        others = sum(chosen[n] * weights[n] for n in curves if n != last)
        s_exact = (target * total - others) / weights[last]
        lo = curves[last][pos[last] - 1][0]
        chosen[last] = min(max(math.ceil(s_exact * 1e4) / 1e4, lo), chosen[last])
    return chosen
