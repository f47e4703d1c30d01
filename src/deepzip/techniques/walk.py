"""The one module walker: which tensors of a model deepzip compresses, and how their parametrizations stack.

Every technique (pruning, weight sharing, post-training) and the model <-> file bridge (:mod:`deepzip.io.serialize`)
find weight tensors here, so they agree on the layers users have:

- ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` (every ``_ConvNd``) and ``nn.Embedding``: their
  ``weight``, listed under the layer's dotted name (``"fc1"``);
- ``nn.RNN/GRU/LSTM``: every weight matrix (``weight_ih_l0``, ``weight_hh_l0_reverse``, ``weight_hr_l0`` ...),
  under ``"<layer>.<tensor>"`` (biases stay plain);
- a module that names its own tensors in ``compressible_tensors`` (a TT layer's cores, ``TTCores``): each of them,
  under ``"<module>.<tensor>"`` (``"fc1.cores.0"``);
- any of them with the weight computed by a parametrization (``torch.nn.utils.parametrizations.weight_norm``,
  ``spectral_norm``, a user's own): the *computed* weight is what deepzip compresses.

A weight's parametrizations form a chain (``torch.nn.utils.parametrize``): the user's ("foreign") ones first, then
at most one of deepzip's own (:class:`Own`: a pruning mask or a codebook) on top, so deepzip's always sees the
finished weight. :func:`chain` splits a tensor's chain into those two parts.

Example:
    >>> from torch import nn
    >>> from torch.nn.utils.parametrizations import weight_norm
    >>> m = nn.Sequential(nn.ConvTranspose2d(3, 4, 3), weight_norm(nn.Linear(4, 2)), nn.LSTM(2, 3))
    >>> list(prunable_tensors(m))
    ['0', '1', '2.weight_ih_l0', '2.weight_hh_l0']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize

__all__ = [
    "LAYER_TYPES",
    "FilterFn",
    "Own",
    "chain",
    "default_filter",
    "parametrized_tensors",
    "prunable_layers",
    "prunable_tensors",
    "run_hooked",
    "set_module",
    "weight_names",
]

FilterFn = Callable[[nn.Module, str], bool]

#: The layer types compressed by default (``_ConvNd`` covers Conv1d/2d/3d and ConvTranspose1d/2d/3d).
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, _ConvNd, nn.Embedding, nn.RNNBase)


class Own(nn.Module):
    """Base of deepzip's own parametrizations (a pruning mask, a codebook): what a file stores as a layer kind.

    Anything else in a weight's parametrization chain (weight_norm, spectral_norm, a user's) is *foreign*: deepzip
    keeps it below its own and stores its inputs as ordinary tensors."""


def default_filter(module: nn.Module, name: str) -> bool:
    """The layers compressed when no ``filter_fn`` is given: :data:`LAYER_TYPES`, and holders of
    ``compressible_tensors``."""
    return isinstance(module, LAYER_TYPES) or bool(getattr(module, "compressible_tensors", ()))


def weight_names(module: nn.Module) -> list[str]:
    """The compressible tensors of one layer: ``["weight"]``, or for ``nn.RNN/GRU/LSTM`` every weight matrix
    (``weight_ih_l0``, ``weight_hh_l0``, ``weight_ih_l0_reverse``, ``weight_hr_l0`` ...; biases stay plain).

    A recurrent layer is compressed per matrix, not per gate block: each matrix is one parameter of the layer (one
    parametrization, one tensor in the file), and the gate blocks of one matrix see the same input, so their
    weights have the same scale; a codebook per gate would cost 3-4x the (small) codebooks for no measured gain.
    """
    if isinstance(module, nn.RNNBase):
        return [n for n in module._flat_weights_names if n.startswith("weight_")]
    own = getattr(module, "compressible_tensors", None)  # a holder of weights without one ``weight`` (TT cores)
    if own:
        return list(own)
    return ["weight"] if isinstance(getattr(module, "weight", None), torch.Tensor) else []


def prunable_layers(model: nn.Module, filter_fn: FilterFn | None = None) -> dict[str, nn.Module]:
    """Layers whose ``weight`` may be compressed, by dotted name (default: :data:`LAYER_TYPES` but recurrent ones).

    Recurrent layers have no ``weight``; :func:`prunable_tensors` lists their matrices."""
    keep = filter_fn or default_filter
    return {
        name: m for name, m in model.named_modules()
        if name and isinstance(getattr(m, "weight", None), torch.Tensor) and keep(m, name)
    }


def prunable_tensors(model: nn.Module, filter_fn: FilterFn | None = None) -> dict[str, tuple[nn.Module, str]]:
    """Compressible tensors by name -> ``(module, tensor name)``: a layer's ``weight`` under the layer's name
    (``"fc1"``), a recurrent layer's matrices under ``"<layer>.<tensor>"`` (``"encoder.weight_hh_l0"``).

    Example:
        >>> from torch import nn
        >>> list(prunable_tensors(nn.Sequential(nn.Embedding(5, 4), nn.GRU(4, 3))))
        ['0', '1.weight_ih_l0', '1.weight_hh_l0']
    """
    keep = filter_fn or default_filter
    out: dict[str, tuple[nn.Module, str]] = {}
    for name, m in model.named_modules():
        if name and keep(m, name):
            for t in weight_names(m):
                out[name if t == "weight" else f"{name}.{t}"] = (m, t)
    return out


def chain(module: nn.Module, tensor: str = "weight") -> tuple[list[nn.Module], list[Own]]:
    """``module.<tensor>``'s parametrizations split into ``(foreign, own)``, each in the order they apply.

    Foreign ones always come first: deepzip registers its own on top of the user's and removes only its own."""
    if not parametrize.is_parametrized(module, tensor):
        return [], []
    ps = list(module.parametrizations[tensor])  # type: ignore[index,arg-type]
    first = next((i for i, p in enumerate(ps) if isinstance(p, Own)), len(ps))
    return ps[:first], [p for p in ps[first:] if isinstance(p, Own)]


def parametrized_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(layer name, layer, tensor name)`` of every tensor carrying one of deepzip's parametrizations."""
    return [(mname, module, tname) for mname, module in model.named_modules()
            if mname and parametrize.is_parametrized(module)
            for tname in module.parametrizations  # type: ignore[union-attr]
            if chain(module, tname)[1]]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the submodule at dotted ``name`` (``"features.0"``)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def run_hooked(model: nn.Module, x: torch.Tensor, hooks: Mapping[str, Callable[[nn.Module, tuple, Any], None]]) -> None:
    """Run ``model(x)`` once without gradients, with forward hook ``hooks[name]`` on the submodule at each dotted
    name (registered in the mapping's order), all removed afterwards even when the forward pass raises."""
    handles = [model.get_submodule(name).register_forward_hook(hook) for name, hook in hooks.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
