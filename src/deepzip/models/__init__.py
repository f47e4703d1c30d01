"""The model registry: architectures by name, so that a file naming its architecture rebuilds it.

A name is looked up among registered models (:func:`register_model`; the applications that come with deepzip, e.g.
the MNIST LeNets, register theirs through the ``deepzip.apps`` entry-point group, loaded on the first lookup), then
among the families (``"seq2seq:..."``: :mod:`deepzip.models.seq2seq`, an attention encoder-decoder named by its
sizes). ``get_model(name, trust_code=True)`` also accepts ``"package.module:factory"``, a callable returning an
``nn.Module`` (the user's own). Importing a module runs its code, so that needs ``trust_code=True``: a name read
from a file is never imported otherwise (:class:`~deepzip.errors.UntrustedCodeError`). Registered apps are code the
user installed, not code a file names.

Example:
    >>> m = get_model("lenet300")
    >>> sum(p.numel() for p in m.parameters())
    266610
    >>> tuple(example_input(m).shape)
    (1, 1, 28, 28)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UntrustedCodeError

__all__ = ["MODELS", "example_input", "get_model", "max_pool2", "model_name", "register_model"]


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` on (B, C, H, W); without autograd, as two pairwise maxima (the same values).

    torch's CPU max-pool computes argmax indices even for inference and was the largest single cost of a Tucker-2
    CNN at batch 1 (~100 us of ~500 on a 2-core EPYC); pairwise ``torch.maximum`` over the 2x2 windows is exact and
    was 1.2-4x (batch 1) and 4-8x (batch 64) faster there. Training keeps ``F.max_pool2d`` (its gradient routing for
    ties), so trained models and files do not change.

    Example:
        >>> x = torch.randn(2, 3, 9, 8)
        >>> with torch.no_grad():
        ...     torch.equal(max_pool2(x), F.max_pool2d(x, 2))
        True
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, 2)
    h, w = x.shape[-2:]
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    x = torch.maximum(x[..., 0::2], x[..., 1::2])  # (B, C, H, W/2)
    return torch.maximum(x[:, :, 0::2], x[:, :, 1::2])  # (B, C, H/2, W/2)


torch.fx.wrap("max_pool2")  # one call in a traced graph (deepzip.techniques.shrink sees through it as a per-channel op)


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: ``factory()`` builds it fresh; ``example_input`` is the shape of one input batch
    (used to trace the model, e.g. by :func:`deepzip.techniques.shrink.shrink_` and the sparse runtime), if known."""

    factory: Callable[[], nn.Module]
    example_input: tuple[int, ...] | None = None


#: Registered models by name (filled by :func:`register_model` and the installed apps).
MODELS: dict[str, ModelSpec] = {}
_APPS_LOADED = False
#: The apps shipped with deepzip, used when the package's entry points are not installed (a bare source tree).
_BUNDLED_APPS = ("deepzip.apps.mnist:register",)


def register_model(name: str, factory: Callable[[], nn.Module], *,
                   example_input: tuple[int, ...] | None = None) -> None:
    """Register ``factory`` under ``name`` (a plain name: no ``:``), so :func:`get_model` and files find it.

    Raises:
        ValueError: a name with ``:`` (those name code or families), or a name registered to another factory.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"model name {name!r}: expected a non-empty name without ':'")
    old = MODELS.get(name)
    if old is not None and old.factory is not factory:
        raise ValueError(f"model name {name!r} is already registered to {old.factory!r}")
    MODELS[name] = ModelSpec(factory, tuple(example_input) if example_input is not None else None)


def load_apps() -> None:
    """Let the installed apps register their models (entry-point group ``deepzip.apps``), once per process."""
    global _APPS_LOADED
    if _APPS_LOADED:
        return
    _APPS_LOADED = True
    from importlib.metadata import entry_points

    targets = [ep.value for ep in entry_points(group="deepzip.apps")] or list(_BUNDLED_APPS)
    import importlib

    for target in targets:
        module, _, fn = target.partition(":")
        getattr(importlib.import_module(module), fn)()


def example_input(model: nn.Module) -> torch.Tensor | None:
    """A zero input batch for a registered model (its registered shape); None for a model of unknown origin."""
    load_apps()
    spec = MODELS.get(model_name(model) or "")
    return torch.zeros(spec.example_input) if spec is not None and spec.example_input is not None else None


def get_model(name: str, seed: int | None = 0, *, trust_code: bool = False) -> nn.Module:
    """Build a fresh model by registered name (:data:`MODELS`), or ``"package.module:factory"`` or
    ``"path/to/file.py:factory"`` (no PYTHONPATH needed) with ``trust_code``.

    ``seed`` fixes the initial weights (without touching the global random state), so a training run with the same
    seeds gives the same model; ``None`` draws them from the global generator. ``trust_code`` allows importing the
    module a ``"package.module:factory"`` name gives and calling the factory: that runs the module's code, so pass
    it only for names you wrote or files you trust (as Hugging Face's ``trust_remote_code``).

    Raises:
        UntrustedCodeError: ``"package.module:factory"`` without ``trust_code=True`` (nothing is imported).
        ValueError: unknown name, or a factory that does not return an ``nn.Module``.

    Example:
        >>> try:
        ...     get_model("os:abort")  # imports nothing
        ... except UntrustedCodeError as e:
        ...     print(str(e)[:60])
        model 'os:abort' names code to import (package.module:factor
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_model(name, seed=None, trust_code=trust_code)
    if not isinstance(name, str):
        raise ValueError(f"model name {name!r}: expected a string")
    load_apps()
    if name in MODELS:
        model = MODELS[name].factory()
    elif name.startswith("seq2seq:"):  # an attention encoder-decoder named by its sizes (deepzip.models.seq2seq)
        from .seq2seq import build_seq2seq

        model = build_seq2seq(name)
    elif ":" in name and not trust_code:
        raise UntrustedCodeError(
            f"model {name!r} names code to import (package.module:factory); deepzip imports nothing unless asked: "
            "pass trust_code=True (CLI: --trust-code) if you trust where the name came from, or give the model "
            f"yourself (deepzip.load(path, model=MyNet()), CLI: --model); registered models: {', '.join(MODELS)}"
        )
    elif ":" in name:
        from .._user import resolve

        model = resolve(name, "model")()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {name!r}: factory returned {type(model).__name__}, not an nn.Module")
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)} or 'package.module:factory' "
                         "(with trust_code)")
    model.deepzip_arch = name  # type: ignore[assignment]  # remembered so files can name their architecture
    return model


def model_name(model: nn.Module) -> str | None:
    """The architecture name a model was built under by :func:`get_model`, if any."""
    name = getattr(model, "deepzip_arch", None)
    return name if isinstance(name, str) else None
