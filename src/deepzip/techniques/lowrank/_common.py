"""Shared pieces of the low-rank package: argument checks, the module swap, the per-model table of factorizations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import LowRankError

ConvRanks = tuple[int, int]
LayerRanks = Mapping[str, "int | tuple[int, int] | Sequence[int]"]
TTSpec = tuple[Sequence[int], Sequence[int], int]
#: ``filter_fn(module, fqn) -> bool``: which layers a transform touches (torchao's convention).
FilterFn = Callable[[nn.Module, str], bool]


def _check_energy(energy: Any) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
        raise LowRankError(f"energy={energy!r}, expected a fraction in (0, 1]")
    return float(energy)


def _rel_error(w: torch.Tensor, approx: torch.Tensor) -> float:
    norm = float(torch.linalg.vector_norm(w.double()))
    return float(torch.linalg.vector_norm(w.double() - approx.double())) / norm if norm > 0 else 0.0


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_rank(where: str, r: Any) -> int:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise LowRankError(f"{where}: rank={r!r}, expected an integer >= 1")
    return int(r)


def _check_conv_ranks(where: str, ranks: Any) -> ConvRanks:
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2 or any(
            isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in ranks):
        raise LowRankError(f"{where}: ranks={ranks!r}, expected (R_out, R_in), two integers >= 1")
    return int(ranks[0]), int(ranks[1])


def _check_plain(name: str, module: nn.Module) -> None:
    if parametrize.is_parametrized(module, "weight"):
        raise LowRankError(f"{name}.weight: pruned or weight-shared (parametrized); decompose before "
                           "pruning/sharing or strip() the model first")
    if not torch.is_floating_point(module.weight):
        raise LowRankError(f"{name}.weight: dtype {module.weight.dtype} is not floating point")


_TABLE_ATTR = "deepzip_lowrank"


def _record(model: nn.Module, rows: list[dict]) -> None:
    table = getattr(model, _TABLE_ATTR, None)
    if not isinstance(table, list):
        table = []
        object.__setattr__(model, _TABLE_ATTR, table)  # a plain attribute, not a submodule or buffer
    table.extend(rows)


def lowrank_table(model: nn.Module) -> list[dict]:
    """The rows of every :func:`decompose_` / :func:`tt_linear_` call on ``model`` so far, oldest first (a copy).

    Example:
        >>> from torch import nn
        >>> lowrank_table(nn.Linear(4, 4))
        []
    """
    return [dict(r) for r in getattr(model, _TABLE_ATTR, None) or []]


def convs_only(module: nn.Module, fqn: str) -> bool:
    """The default ``filter_fn`` of :func:`decompose_`: every ``nn.Conv2d`` (Tucker-2 is where the speed is)."""
    return isinstance(module, nn.Conv2d)


def convs_and_linears(module: nn.Module, fqn: str) -> bool:
    """A ``filter_fn`` selecting every ``nn.Conv2d`` and ``nn.Linear``."""
    return isinstance(module, (nn.Conv2d, nn.Linear))


def _check_modes(where: str, in_modes: Sequence[int], out_modes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    mods = []
    for what, modes in (("in_modes", in_modes), ("out_modes", out_modes)):
        if not isinstance(modes, (tuple, list)) or not modes or any(
                isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in modes):
            raise LowRankError(f"{where}: {what}={modes!r}, expected a non-empty list of integers >= 1")
        mods.append(tuple(int(m) for m in modes))
    if len(mods[0]) != len(mods[1]):
        raise LowRankError(f"{where}: in_modes={in_modes!r} and out_modes={out_modes!r} differ in length")
    return tuple(mods)


