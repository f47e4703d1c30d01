"""A decomposition with its report: the text forms of the settings (as ``deepzip decompose`` takes them), one call
that factors a model and counts what changed (:func:`decompose_with_report`), so the CLI only parses, calls and
prints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...errors import LowRankError
from ._common import convs_and_linears, convs_only, lowrank_table
from .decompose import count_macs, decompose_

__all__ = ["FACTORIZATIONS", "decompose_with_report", "example_input", "parse_modes", "parse_rank"]

#: What ``deepzip decompose --factorization`` (alias ``--method``) factors: tucker2 convs, svd linear layers, tt both.
FACTORIZATIONS: tuple[str, ...] = ("tucker2", "svd", "tt")


def example_input(model: nn.Module, shape: Sequence[int] | None = None) -> torch.Tensor:
    """One zero input batch for counting ``model``'s multiply-adds: ``(1, *shape)``.

    A model that takes token ids (a Hugging Face text model, ``main_input_name == "input_ids"``) gets integer ids,
    ``shape`` being the sequence length (default 8 tokens); any other model gets float32 zeros, ``shape`` being one
    input's shape (default ``(1, 28, 28)``, an MNIST image).

    Example:
        >>> example_input(nn.Linear(4, 2), (4,)).shape
        torch.Size([1, 4])
    """
    if getattr(model, "main_input_name", None) == "input_ids":
        return torch.zeros((1, *(shape or (8,))), dtype=torch.long)  # (B, T) token ids
    return torch.zeros((1, *(shape or (1, 28, 28))))  # (B, C, H, W)


def parse_rank(text: str) -> tuple[str, float, dict[str, Any] | None]:
    """``vbmf`` | ``energy=0.9`` | ``fc1=32,conv2=16x8`` (a conv's ``R_outxR_in``, or one number) ->
    (rank rule, energy, explicit ranks or None).

    Example:
        >>> parse_rank("energy=0.8"), parse_rank("fc1=32,conv2=16x8")
        (('energy', 0.8, None), ('vbmf', 0.9, {'fc1': 32, 'conv2': (16, 8)}))
    """
    text = text.strip()
    if text == "vbmf":
        return "vbmf", 0.9, None
    if text.startswith("energy="):
        try:
            return "energy", float(text[7:]), None
        except ValueError:
            raise LowRankError(f"--rank {text!r}: energy must be a number in (0, 1]") from None
    ranks: dict[str, Any] = {}
    for part in text.split(","):
        key, eq, val = part.partition("=")
        try:
            if not eq or not key.strip():
                raise ValueError
            nums = [int(v) for v in val.lower().split("x")]
            if len(nums) not in (1, 2):
                raise ValueError
        except ValueError:
            raise LowRankError(f"--rank {text!r}: expected vbmf, energy=F, or layer=R[,layer=RoutxRin...]") from None
        ranks[key.strip()] = nums[0] if len(nums) == 1 else tuple(nums)
    return "vbmf", 0.9, ranks


def parse_modes(text: str | None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``fc1=4x7x4x7:3x4x5x5,conv2=2x4x4:4x4x4`` -> {layer: (in modes, out modes)} (channel modes for a conv).

    Example:
        >>> parse_modes("conv2=2x8:4x8")
        {'conv2': ((2, 8), (4, 8))}
    """
    out: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, _, val = part.partition("=")
        ins, _, outs = val.partition(":")
        try:
            out[key.strip()] = (tuple(int(v) for v in ins.split("x")), tuple(int(v) for v in outs.split("x")))
        except ValueError:
            raise LowRankError(f"--modes {part!r}: expected layer=4x7x4x7:3x4x5x5 (in modes : out modes)") from None
    return out


def _linears(m: nn.Module, fqn: str) -> bool:
    return isinstance(m, nn.Linear)


def _layer_sum(macs: dict[str, int], name: str) -> int:
    return sum(v for k, v in macs.items() if k == name or k.startswith(name + "."))


def decompose_with_report(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    factorization: str = "tucker2",
    rank: str = "vbmf",
    layers: Sequence[str] | None = None,
    modes: str | None = None,
    tt_cores: int = 4,
    keep_larger: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Factor ``model`` in place as ``deepzip decompose`` does, and report per layer and in total.

    Args:
        model: the model; modified in place.
        example_input: one input batch, for counting multiply-adds before and after.
        factorization: ``"tucker2"`` (convs), ``"svd"`` (linear layers) or ``"tt"`` (convs as :class:`TTConv2d`
            and linear layers as :class:`TTLinear`).
        rank: ``vbmf``, ``energy=F`` or per layer ``fc1=32,conv2=16x8`` (:func:`parse_rank`; tt: one number, the
            largest TT rank).
        layers: only these layers (dotted names).
        modes: tt: per layer in:out modes (:func:`parse_modes`); default ``tt_cores`` even factors.
        keep_larger: factor a layer even when that adds parameters.

    Returns:
        ``{"layers": rows (lowrank_table's, with macs_before / macs_after), "total": {params_before,
        params_after, macs_before, macs_after}}``.

    Raises:
        LowRankError: an input the model does not take, bad settings, a named layer of the wrong kind for the
            factorization (the message names it).

    Example:
        >>> m = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 9, 10))
        >>> rep = decompose_with_report(m, torch.zeros(1, 8, 5, 5), factorization="tt", rank="0=4,2=4",
        ...                             modes="0=2x4:4x4,2=16x9:5x2", keep_larger=True)
        >>> [(r["layer"], r["kind"]) for r in rep["layers"]], rep["total"]["params_after"] < 1178 + 1450
        ([('0', 'ttconv'), ('2', 'tt')], True)
    """
    if factorization not in FACTORIZATIONS:
        raise LowRankError(f"factorization={factorization!r}, expected one of {', '.join(FACTORIZATIONS)}")
    try:
        before = count_macs(model, example_input)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # a foreign model's forward raises any of these
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise LowRankError(f"input of shape {tuple(example_input.shape)}: the model does not accept it ({first}); "
                           "give one input's shape with --input-shape") from None
    params_before = sum(p.numel() for p in model.parameters())
    rule, energy, ranks = parse_rank(rank)
    tt_modes = parse_modes(modes)
    mods = dict(model.named_modules())
    want: tuple[type, ...] = {"tucker2": (nn.Conv2d,), "svd": (nn.Linear,), "tt": (nn.Conv2d, nn.Linear)}[factorization]
    for name in [*(ranks or {}), *tt_modes]:
        if name in mods and not isinstance(mods[name], want):
            kinds = " or ".join(t.__name__ for t in want)
            raise LowRankError(f"{name}: a {type(mods[name]).__name__}, not a {kinds}; {factorization} factors "
                               f"{kinds} layers")
    if ranks is not None:
        for name, r in list(ranks.items()):
            if factorization == "tucker2" and isinstance(r, int):
                ranks[name] = (r, r)  # one number: R_out = R_in
            elif factorization == "tt" and isinstance(r, tuple):
                raise LowRankError(f"{name}: rank {'x'.join(map(str, r))}, expected one largest TT rank")
    if factorization == "tt" and layers is not None and ranks is not None:  # ranks name layers, --layers filters
        ranks = {k: v for k, v in ranks.items() if k in layers}
        layers = None
    chosen = set(ranks) if ranks is not None else set(layers) if layers is not None else set(mods)
    unknown = sorted(set(tt_modes) - chosen)
    if unknown:
        raise LowRankError(f"--modes {unknown[0]}: that layer is not factored (no rank given for it)")
    n_before = len(lowrank_table(model))
    keep = {"tucker2": convs_only, "svd": _linears, "tt": convs_and_linears}[factorization]
    decompose_(model, rule, energy=energy, ranks=ranks, layers=layers, filter_fn=keep, skip_larger=not keep_larger,
               progress=progress, conv_factorization="tt" if factorization == "tt" else "tucker2",
               linear_factorization="tt" if factorization == "tt" else "svd", tt_modes=tt_modes, tt_cores=tt_cores)
    rows = lowrank_table(model)[n_before:]
    after = count_macs(model, example_input)
    for r in rows:
        r["macs_before"] = _layer_sum(before, r["layer"])
        r["macs_after"] = r["macs_before"] if r["skipped"] else _layer_sum(after, r["layer"])
    total = {"params_before": params_before, "params_after": sum(p.numel() for p in model.parameters()),
             "macs_before": sum(before.values()), "macs_after": sum(after.values())}
    return {"layers": rows, "total": total}
