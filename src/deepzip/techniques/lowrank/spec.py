"""The record of a model's factored layers (:func:`lowrank_spec`) and the rebuild of that structure on the base
architecture (:func:`rebuild_`): what :func:`deepzip.save` writes in a ``.dz`` header and :func:`deepzip.load` reads."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ...errors import LowRankError
from ..walk import set_module
from ._common import _n_params
from .decompose import _check_fits
from .tt import TTConv2d, TTLinear
from .tucker import SVDLinear, Tucker2Conv

__all__ = ["SPEC_KINDS", "lowrank_spec", "rebuild_"]


#: The kinds of factored layer a model's :func:`lowrank_spec` (and a ``.dz`` header's ``extra.lowrank``) may name.
SPEC_KINDS: tuple[str, ...] = ("tucker2", "svd", "tt", "ttconv")


def lowrank_spec(model: nn.Module) -> list[dict]:
    """What :func:`rebuild_` needs to turn the base architecture into ``model``'s factored one, read off its modules.

    One entry per :class:`Tucker2Conv`, :class:`SVDLinear`, :class:`TTLinear` and :class:`TTConv2d`, in module
    order: ``{"layer", "kind", "shape", "ranks"}`` with ``shape`` the dense layer's weight shape, ``ranks``
    ``[R_out, R_in]`` (tucker2), ``[r]`` (svd), the full TT ranks ``[1, r_1, ..., 1]`` (tt) or
    ``[r_0, ..., r_{d-1}, 1]`` (ttconv: r_0 after the window core); tt and ttconv also have ``in_modes`` and
    ``out_modes`` (channel modes for ttconv; the conv's geometry is the base model's). Plain JSON:
    :func:`deepzip.save` stores it in the header.

    Example:
        >>> from deepzip.techniques.lowrank import decompose_
        >>> m = decompose_(nn.Sequential(nn.Conv2d(8, 16, 3)), ranks={"0": (4, 2)}, progress=False)
        >>> lowrank_spec(m)
        [{'layer': '0', 'kind': 'tucker2', 'shape': [16, 8, 3, 3], 'ranks': [4, 2]}]
    """
    out: list[dict] = []
    for name, m in model.named_modules():
        if isinstance(m, Tucker2Conv):
            first, middle, last = m[0], m[1], m[2]
            kh, kw = middle.kernel_size  # type: ignore[misc]
            out.append({"layer": name, "kind": "tucker2",
                        "shape": [last.out_channels, first.in_channels, kh, kw],
                        "ranks": list(m.ranks)})
        elif isinstance(m, SVDLinear):
            out.append({"layer": name, "kind": "svd", "shape": [m[1].out_features, m[0].in_features],
                        "ranks": [m.rank]})
        elif isinstance(m, TTLinear):
            out.append({"layer": name, "kind": "tt", "shape": [m.out_features, m.in_features],
                        "ranks": list(m.ranks), "in_modes": list(m.in_modes), "out_modes": list(m.out_modes)})
        elif isinstance(m, TTConv2d):
            out.append({"layer": name, "kind": "ttconv",
                        "shape": [m.out_channels, m.in_channels, *m.kernel_size],
                        "ranks": list(m.ranks), "in_modes": list(m.in_modes), "out_modes": list(m.out_modes)})
    return out


def _ints(where: str, what: str, v: Any, n: int | None = None) -> list[int]:
    if not isinstance(v, list) or (n is not None and len(v) != n) or any(
            isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v):
        count = f"{n} " if n is not None else ""
        raise LowRankError(f"{where}: {what}={v!r}, expected a list of {count}integers >= 1")
    return v


def _describe(m: nn.Module) -> str:
    if isinstance(m, Tucker2Conv):
        return f"a Tucker-2 triple with ranks {m.ranks}"
    if isinstance(m, SVDLinear):
        return f"an SVD pair with rank {m.rank}"
    if isinstance(m, TTLinear):
        return f"a TTLinear with ranks {m.ranks}, modes {m.in_modes} x {m.out_modes}"
    if isinstance(m, TTConv2d):
        return f"a TTConv2d with ranks {m.ranks}, channel modes {m.in_modes} x {m.out_modes}"
    w = getattr(m, "weight", None)
    shape = f" {tuple(w.shape)}" if isinstance(w, torch.Tensor) else ""
    return f"a plain {type(m).__name__}{shape}"


def _spec_module(where: str, entry: Any) -> tuple[str, str, list[int], list[int], dict]:
    """Validate one record entry (it may come from a file): (layer, kind, shape, ranks, tt modes)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("layer"), str) or not entry["layer"]:
        raise LowRankError(f"{where}: expected an object with a layer name, got {entry!r}"[:200])
    name, kind = entry["layer"], entry.get("kind")
    where = f"{where} ({name})"
    if kind not in SPEC_KINDS:
        raise LowRankError(f"{where}: kind={kind!r}, expected one of {', '.join(SPEC_KINDS)}")
    conv = kind in ("tucker2", "ttconv")
    shape = _ints(where, "shape", entry.get("shape"), 4 if conv else 2)
    modes: dict = {}
    if kind in ("tt", "ttconv"):
        for key in ("in_modes", "out_modes"):
            modes[key] = _ints(where, key, entry.get(key))
        d = len(modes["in_modes"])
        if len(modes["out_modes"]) != d:
            raise LowRankError(f"{where}: {d} in_modes but {len(modes['out_modes'])} out_modes")
        ranks = _ints(where, "ranks", entry.get("ranks"), d + 1)
        if (kind == "tt" and ranks[0] != 1) or ranks[-1] != 1:
            first = "start and end" if kind == "tt" else "end"
            raise LowRankError(f"{where}: TT ranks {ranks} must {first} with 1")
        if math.prod(modes["in_modes"]) != shape[1] or math.prod(modes["out_modes"]) != shape[0]:
            what = "channels" if conv else "features"
            raise LowRankError(f"{where}: modes {modes['in_modes']} x {modes['out_modes']} give "
                               f"{math.prod(modes['in_modes'])} x {math.prod(modes['out_modes'])} {what}, the "
                               f"layer is {shape[1]} x {shape[0]}")
    else:
        ranks = _ints(where, "ranks", entry.get("ranks"), 2 if kind == "tucker2" else 1)
    return name, kind, shape, ranks, modes


def _matches(m: nn.Module, kind: str, ranks: list[int], modes: dict) -> bool:
    if kind == "tucker2":
        return isinstance(m, Tucker2Conv) and list(m.ranks) == ranks
    if kind == "svd":
        return isinstance(m, SVDLinear) and [m.rank] == ranks
    return (isinstance(m, TTLinear if kind == "tt" else TTConv2d) and list(m.ranks) == ranks
            and list(m.in_modes) == modes["in_modes"] and list(m.out_modes) == modes["out_modes"])


_KIND_NAMES = {"tucker2": "a Tucker-2 triple with ranks {r}", "svd": "an SVD pair with rank {r}",
               "tt": "a TTLinear with ranks {r}", "ttconv": "a TTConv2d with ranks {r}"}


def rebuild_(model: nn.Module, spec: Sequence[Mapping[str, Any]], *, swap: bool = True) -> nn.Module:
    """Give ``model`` (the base architecture) the factored layers ``spec`` describes, in place, uninitialized.

    The weights are whatever the new layers' constructors give: load a state_dict (or a ``.dz`` file) afterwards.
    Layers that already are what the entry says are left alone, so rebuilding twice is harmless.

    Args:
        model: the model; modified in place.
        spec: entries as :func:`lowrank_spec` returns (e.g. from a file's header).
        swap: False: only check that the model already has this structure, replace nothing.

    Returns:
        ``model``.

    Raises:
        LowRankError: a malformed entry, a layer the model lacks, a dense layer of another shape than the entry's,
            ranks larger than the layer, TT modes whose product is not the layer's size, a layer already factored
            differently, or (``swap=False``) a plain layer where the spec has a factored one; the message names
            the layer and both numbers. Nothing is changed when it raises.

    Example:
        >>> from deepzip.techniques.lowrank import decompose_
        >>> m = decompose_(nn.Sequential(nn.Conv2d(8, 16, 3)), ranks={"0": (4, 2)}, progress=False)
        >>> fresh = rebuild_(nn.Sequential(nn.Conv2d(8, 16, 3)), lowrank_spec(m))
        >>> _ = fresh.load_state_dict(m.state_dict())  # strict: same structure
        >>> x = torch.randn(1, 8, 5, 5); bool(torch.equal(fresh(x), m(x)))
        True
    """
    if not isinstance(spec, (list, tuple)):
        raise LowRankError(f"low-rank spec: expected a list of layer entries, got {type(spec).__name__}")
    mods = dict(model.named_modules())
    todo: list[tuple[str, nn.Module]] = []
    for i, entry in enumerate(spec):
        name, kind, shape, ranks, modes = _spec_module(f"lowrank[{i}]", entry)
        have = mods.get(name)
        shown = _KIND_NAMES[kind].format(r=tuple(ranks) if kind != "svd" else ranks[0])
        if have is None:
            raise LowRankError(f"{name}: the spec has {shown}, the model has no layer {name!r}")
        if _matches(have, kind, ranks, modes):
            continue
        if isinstance(have, (Tucker2Conv, SVDLinear, TTLinear, TTConv2d)):
            raise LowRankError(f"{name}: the spec has {shown}, the model has {_describe(have)}")
        dense = nn.Conv2d if kind in ("tucker2", "ttconv") else nn.Linear
        if not isinstance(have, dense):
            raise LowRankError(f"{name}: the spec has {shown} in place of a {dense.__name__}, the model has "
                               f"{_describe(have)}")
        if list(have.weight.shape) != shape:
            raise LowRankError(f"{name}: the spec's dense weight is {tuple(shape)}, the model's "
                               f"{tuple(have.weight.shape)}")
        if not swap:
            raise LowRankError(f"{name}: the file holds {shown}, the model has {_describe(have)} "
                               f"({_n_params(have):,} params); load without a model to rebuild the factored "
                               "architecture")
        new: nn.Module
        if kind == "tucker2":
            if isinstance(have, nn.Conv2d) and have.groups != 1:
                raise LowRankError(f"{name}: Conv2d with groups={have.groups}; Tucker-2 needs groups=1")
            _check_fits(name, have, (ranks[0], ranks[1]))
            new = Tucker2Conv.like(have, (ranks[0], ranks[1]))  # type: ignore[arg-type]
        elif kind == "svd":
            _check_fits(name, have, ranks[0])
            new = SVDLinear.like(have, ranks[0])  # type: ignore[arg-type]
        elif kind == "ttconv":
            c = have
            new = TTConv2d(c.in_channels, c.out_channels, c.kernel_size, modes["in_modes"],  # type: ignore
                           modes["out_modes"], ranks[:-1], c.stride, c.padding, c.dilation, c.groups,  # type: ignore
                           c.bias is not None, c.padding_mode, where=name,  # type: ignore[arg-type]
                           device=c.weight.device, dtype=c.weight.dtype).train(c.training)  # type: ignore
        else:
            w = have.weight
            new = TTLinear(modes["in_modes"], modes["out_modes"], ranks[1:-1], bias=have.bias is not None,
                           device=w.device, dtype=w.dtype).train(have.training)
        todo.append((name, new))
    for name, new in todo:
        set_module(model, name, new)
    return model


