"""The decomposition API: :func:`choose_ranks` (which layers, which ranks, what it costs), :func:`factorize_` (the
module swap), :func:`decompose_` (both), and :func:`count_macs`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import LowRankError
from ..prune import resolve_layer
from ..walk import prunable_layers, run_hooked, set_module
from ._common import (
    ConvRanks,
    FilterFn,
    LayerRanks,
    _check_conv_ranks,
    _check_energy,
    _check_modes,
    _check_plain,
    _check_rank,
    _n_params,
    _record,
    _rel_error,
    convs_only,
)
from .ranks import energy_rank, evbmf
from .tt import TTConv2d, TTLinear, _check_ranks, _full_ranks, tt_modes, tt_svd
from .tucker import SVDLinear, Tucker2Conv, _svd_linear, _tucker2_conv, _unfold, svd_factors, tucker2

__all__ = ["CONV_FACTORIZATIONS", "LINEAR_FACTORIZATIONS", "METHODS", "choose_ranks", "count_macs", "decompose_",
           "factorize_"]

#: Rank rules of :func:`decompose_` (``rank_rule=``; explicit per-layer ``ranks=`` override them).
METHODS: tuple[str, ...] = ("vbmf", "energy")
#: How :func:`decompose_` factors a conv (``conv_factorization=``) and a linear layer (``linear_factorization=``).
CONV_FACTORIZATIONS: tuple[str, ...] = ("tucker2", "tt")
LINEAR_FACTORIZATIONS: tuple[str, ...] = ("svd", "tt")


def _check_fits(name: str, module: nn.Module, r: int | ConvRanks) -> None:
    """Explicit ranks must fit the layer: never silently clamped, the message names the layer and both numbers."""
    if isinstance(module, nn.Conv2d):
        for what, value, dim in (("R_out", r[0], module.out_channels), ("R_in", r[1], module.in_channels)):  # type: ignore
            if value > dim:
                side = "output" if what == "R_out" else "input"
                raise LowRankError(f"{name}: {what}={value} exceeds the layer's {dim} {side} channels")
    else:
        limit = min(module.weight.shape)
        if r > limit:  # type: ignore[operator]
            raise LowRankError(f"{name}: rank={r} exceeds min(out, in)={limit} of the {tuple(module.weight.shape)} "
                               "weight")


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return prunable_layers(model, lambda m, name: isinstance(m, (nn.Conv2d, nn.Linear))
                           and not isinstance(_parent(model, name), (Tucker2Conv, SVDLinear)))


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    parent = name.rpartition(".")[0]
    return model.get_submodule(parent) if parent else None



def _rank_rule(rank_rule: str, method: str | None) -> str:
    """``rank_rule``, or the old keyword ``method`` meaning the same (kept so old calls keep working)."""
    rule = method if method is not None else rank_rule
    if rule not in METHODS:
        field = "method" if method is not None else "rank_rule"
        raise LowRankError(f"{field}={rule!r}, expected one of {', '.join(METHODS)}")
    return rule


def _check_factorizations(conv: str, linear: str) -> None:
    if conv not in CONV_FACTORIZATIONS:
        raise LowRankError(f"conv_factorization={conv!r}, expected one of {', '.join(CONV_FACTORIZATIONS)}")
    if linear not in LINEAR_FACTORIZATIONS:
        raise LowRankError(f"linear_factorization={linear!r}, expected one of {', '.join(LINEAR_FACTORIZATIONS)}")


def _tt_geometry(name: str, module: nn.Module, modes: Any, tt_cores: int) -> tuple[tuple[int, ...], ...]:
    """(in_modes, out_modes) of a TT layer for ``module``: the given ones (checked), or even factors."""
    conv = isinstance(module, nn.Conv2d)
    n_in, n_out = (module.in_channels, module.out_channels) if conv else (module.in_features, module.out_features)
    if modes is None:
        return tt_modes(n_in, tt_cores), tt_modes(n_out, tt_cores)
    if not isinstance(modes, (tuple, list)) or len(modes) != 2:
        raise LowRankError(f"{name}: tt_modes={modes!r}, expected (in_modes, out_modes)")
    ins, outs = _check_modes(name, modes[0], modes[1])
    if math.prod(ins) != n_in or math.prod(outs) != n_out:
        what = "channels" if conv else "features"
        raise LowRankError(f"{name}: modes {ins} x {outs} give {math.prod(ins)} x {math.prod(outs)} {what}, the "
                           f"layer has {n_in} in, {n_out} out")
    return ins, outs


def _tt_plan(name: str, module: nn.Module, given: Any, rule: str, energy: float, modes: Any,
             tt_cores: int) -> dict[str, Any]:
    """Modes, full ranks and parameter count of the TT layer for ``module`` (kind "ttconv" for a conv, "tt" else).

    Ranks: ``given`` -- one int (the largest TT rank, clamped to the full ranks) or the list of ranks (ttconv:
    r_0..r_{d-1}; tt: the d - 1 inner ones) -- else each rank by ``rule`` on its TT-SVD unfolding."""
    conv = isinstance(module, nn.Conv2d)
    if conv and module.groups != 1:
        raise LowRankError(f"{name}: Conv2d with groups={module.groups}; a TT-conv needs groups=1")
    ins, outs = _tt_geometry(name, module, modes, tt_cores)
    window = math.prod(module.kernel_size) if conv else 0  # type: ignore[arg-type]
    row_modes, col_modes = ((window, *ins), (1, *outs)) if conv else (ins, outs)
    full = _full_ranks(row_modes, col_modes)
    if given is None:
        pick = evbmf if rule == "vbmf" else (lambda a: energy_rank(a, energy))
        w = module.weight.detach()
        matrix = w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]) if conv else w.t()
        inner = [c.shape[-1] for c in tt_svd(matrix, row_modes, col_modes, max(full, default=1),
                                              rank_fn=pick)[:-1]]
    elif isinstance(given, (list, tuple)):
        inner = list(_check_ranks(name, given, len(full)))
        for k, (r, f) in enumerate(zip(inner, full)):
            if r > f:
                raise LowRankError(f"{name}: TT rank {k}={r} exceeds the full TT rank {f} of modes {ins} x {outs}")
    else:
        inner = [min(_check_rank(name, given), f) for f in full]
    ranks = [1, *inner, 1]
    params = sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(row_modes, col_modes)))
    params += 0 if module.bias is None else module.bias.numel()
    shown = (*inner, 1) if conv else tuple(ranks)  # ttconv: (r_0, ..., 1) as TTConv2d.ranks; tt: (1, ..., 1)
    return {"kind": "ttconv" if conv else "tt", "ranks": shown, "in_modes": ins, "out_modes": outs,
            "params_after": params}


def choose_ranks(
    model: nn.Module,
    rank_rule: str = "vbmf",
    *,
    energy: float = 0.9,
    ranks: LayerRanks | None = None,
    filter_fn: FilterFn | None = None,
    layers: Iterable[str] | None = None,
    skip_larger: bool = True,
    conv_factorization: str = "tucker2",
    linear_factorization: str = "svd",
    tt_modes: Mapping[str, Any] | None = None,
    tt_cores: int = 3,
    method: str | None = None,
) -> list[dict]:
    """Rank choice, the first half of :func:`decompose_`: which layers, at which ranks, and what that would cost.

    Which layers: the dotted names in ``layers`` plus those named in ``ranks``; when neither is given, every
    ``nn.Conv2d`` / ``nn.Linear`` ``module`` with ``filter_fn(module, fqn)`` true (default :func:`convs_only`).
    A dict of ``ranks`` alone leaves the layers it does not name alone (as ``prune_``'s per-layer dicts do). Names
    may carry a ``.weight`` suffix.

    How: convs by ``conv_factorization`` (``"tucker2"``: Tucker-2; ``"tt"``: :class:`TTConv2d`, Garipov et al.),
    linear layers by ``linear_factorization`` (``"svd"``; ``"tt"``: :class:`TTLinear`).

    Ranks: explicit ``ranks[name]`` -- Tucker-2 ``(R_out, R_in)``, SVD an int, each at most the layer's dimension;
    TT one int (the largest TT rank, clamped to the full TT ranks) or the list of TT ranks (TTConv2d
    ``r_0..r_{d-1}``, TTLinear the d - 1 inner ranks) -- else by ``rank_rule`` on each unfolding (for TT: each
    TT-SVD step's): ``"vbmf"`` (analytical empirical VBMF, :func:`evbmf`, as Kim et al.) or ``"energy"``
    (:func:`energy_rank` keeping ``energy`` of the squared singular values); those are clamped to [1, dim].
    TT modes: ``tt_modes[name] = (in_modes, out_modes)`` (channel modes for a conv), else ``tt_cores`` even factors
    of each side (:func:`deepzip.techniques.lowrank.tt_modes`).

    Args:
        model: the model (not modified).
        rank_rule: ``"vbmf"`` or ``"energy"``, for the layers without explicit ranks (``method``: its old name).
        energy: fraction in (0, 1] for ``rank_rule="energy"``.
        ranks: explicit per-layer ranks, by dotted name.
        filter_fn: ``filter_fn(module, fqn) -> bool`` (torchao's convention), used when ``layers`` and ``ranks``
            are both None.
        layers: dotted names of the layers to decompose (``nn.Conv2d`` or ``nn.Linear``).
        skip_larger: mark a layer as skipped when its factorization would not have fewer parameters.
        conv_factorization, linear_factorization: see above.
        tt_modes, tt_cores: TT modes per layer, or how many cores when chosen automatically.

    Returns:
        One row per selected layer, as :func:`lowrank_table`'s (``rel_error`` still 0.0): pass them to
        :func:`factorize_`.

    Raises:
        LowRankError: an unknown layer name or one that is not Conv2d/Linear, a grouped conv, a pruned or shared
            layer, ranks < 1, of the wrong form or larger than the layer, TT modes that do not multiply to the
            layer's sizes, an unknown rank rule or factorization, energy outside (0, 1]; the message names the
            layer or field.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 4, 64))
        >>> [(r["layer"], r["ranks"], r["params_after"]) for r in choose_ranks(m, ranks={"0": (4, 4), "2": 8})]
        [('0', (4, 4), 368), ('2', 8, 1600)]
        >>> [(r["kind"], r["ranks"], r["in_modes"]) for r in choose_ranks(m, ranks={"0": 4}, conv_factorization="tt",
        ...                                                                tt_modes={"0": ((4, 4), (4, 8))})]
        [('ttconv', (4, 4, 1), (4, 4))]
    """
    rule = _rank_rule(rank_rule, method)
    _check_factorizations(conv_factorization, linear_factorization)
    energy = _check_energy(energy)
    if isinstance(tt_cores, bool) or not isinstance(tt_cores, int) or tt_cores < 1:
        raise LowRankError(f"tt_cores={tt_cores!r}, expected an integer >= 1")
    cands = _candidates(model)

    def known(key: str, what: str) -> str:
        return resolve_layer(key, cands, what, "decomposable (Conv2d or Linear)")

    def is_tt(module: nn.Module) -> bool:
        return (conv_factorization if isinstance(module, nn.Conv2d) else linear_factorization) == "tt"

    explicit: dict[str, Any] = {}
    for key, given in (ranks or {}).items():
        name = known(key, "ranks")
        if is_tt(cands[name]):
            explicit[name] = given  # checked with the modes, in _tt_plan
        elif isinstance(cands[name], nn.Conv2d):
            explicit[name] = _check_conv_ranks(name, given)
            _check_fits(name, cands[name], explicit[name])
        else:
            explicit[name] = _check_rank(name, given)
            _check_fits(name, cands[name], explicit[name])
    modes = {known(k, "tt_modes"): v for k, v in (tt_modes or {}).items()}
    if layers is not None:
        if isinstance(layers, str):
            raise LowRankError(f"layers={layers!r}: expected a list of layer names, not one string")
        names = [known(k, "layers") for k in layers]
    elif ranks is not None:
        names = []
    else:
        keep = filter_fn or convs_only
        names = [n for n, m in cands.items() if keep(m, n)]
    names = list(dict.fromkeys([*names, *explicit]))  # in order, without repeats
    rows = []
    for name in names:
        module = cands[name]
        _check_plain(name, module)
        w = module.weight.detach()
        before = _n_params(module)
        bias = 0 if module.bias is None else module.bias.numel()
        r: Any
        extra: dict[str, Any] = {}
        if is_tt(module):
            extra = _tt_plan(name, module, explicit.get(name), rule, energy, modes.get(name), tt_cores)
            kind, r, after = extra.pop("kind"), extra.pop("ranks"), extra.pop("params_after")
        elif isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise LowRankError(f"{name}: Conv2d with groups={module.groups}; Tucker-2 needs groups=1")
            n_out, n_in, kh, kw = w.shape
            if name in explicit:
                r = explicit[name]
            else:
                pick = evbmf if rule == "vbmf" else (lambda a: energy_rank(a, energy))
                r = (min(max(pick(_unfold(w, 0)), 1), n_out), min(max(pick(_unfold(w, 1)), 1), n_in))
            kind, after = "tucker2", n_in * r[1] + r[0] * r[1] * kh * kw + r[0] * n_out + bias
        else:
            n_out, n_in = w.shape
            if name in explicit:
                r = explicit[name]
            else:
                r = min(max(evbmf(w) if rule == "vbmf" else energy_rank(w, energy), 1), n_out, n_in)
            kind, after = "svd", r * (n_out + n_in) + bias
        row = {"layer": name, "kind": kind, "shape": list(w.shape),
               "method": "explicit" if name in explicit else rule, "ranks": r, **extra,
               "params_before": before, "params_after": after, "rel_error": 0.0, "skipped": None}
        if skip_larger and after >= before:
            row.update(params_after=before, skipped=f"factorization has {after} params, the layer {before}")
        rows.append(row)
    return rows


_KIND_LAYER = {"tucker2": nn.Conv2d, "svd": nn.Linear, "tt": nn.Linear, "ttconv": nn.Conv2d}


def _factor(module: nn.Module, row: Mapping[str, Any], hooi_iters: int) -> tuple[nn.Module, torch.Tensor]:
    """The factored layer of one plan row, and the dense weight it represents (float64, for the error)."""
    w = module.weight.detach()
    kind = row["kind"]
    if kind == "tucker2":
        core, u_in, u_out = tucker2(w, tuple(row["ranks"]), hooi_iters)  # type: ignore[arg-type]
        approx = torch.einsum("rshw,or,is->oihw", core.double(), u_out.double(), u_in.double())
        return _tucker2_conv(module, core, u_in, u_out), approx  # type: ignore[arg-type]
    if kind == "svd":
        first, second = svd_factors(w, int(row["ranks"]))
        return _svd_linear(module, first, second), second.double() @ first.double()  # type: ignore[arg-type]
    if kind == "tt":
        tt = TTLinear.from_linear(module, row["in_modes"], row["out_modes"],  # type: ignore[arg-type]
                                  list(row["ranks"])[1:-1])
        return tt, tt.full_weight().detach().double()
    conv = TTConv2d.from_conv(module, row["in_modes"], row["out_modes"],  # type: ignore[arg-type]
                              list(row["ranks"])[:-1], where=row["layer"])
    return conv, conv.kernel().detach().double()


def factorize_(model: nn.Module, plan: Sequence[Mapping[str, Any]], *, hooi_iters: int = 5,
               progress: bool = False) -> nn.Module:
    """The module swap, the second half of :func:`decompose_`: replace each planned layer by its factors, in place.

    Args:
        model: the model; modified in place.
        plan: rows as :func:`choose_ranks` returns (``layer``, ``kind`` ``"tucker2"``/``"svd"``/``"tt"``/
            ``"ttconv"``, ``ranks``, and ``in_modes``/``out_modes`` for TT; rows with ``skipped`` set are recorded
            but not applied).
        hooi_iters: HOOI refinement sweeps of each Tucker-2 decomposition (see :func:`tucker2`).
        progress: show a progress bar over the layers.

    Returns:
        ``model``; the rows, with ``rel_error`` (``||W - W_hat|| / ||W||``) filled in, are appended to
        :func:`lowrank_table`.

    Raises:
        LowRankError: a row naming a layer that is not there or not of its kind, ranks too large, negative
            ``hooi_iters``. Nothing is changed when it raises.

    Example:
        >>> from deepzip.techniques.lowrank import lowrank_table
        >>> m = nn.Sequential(nn.Linear(20, 20))
        >>> _ = factorize_(m, [{"layer": "0", "kind": "svd", "ranks": 20}], progress=False)
        >>> type(m[0]).__name__, lowrank_table(m)[0]["rel_error"] < 1e-6
        ('SVDLinear', True)
    """
    if isinstance(hooi_iters, bool) or not isinstance(hooi_iters, int) or hooi_iters < 0:
        raise LowRankError(f"hooi_iters={hooi_iters!r}, expected an integer >= 0")
    cands = _candidates(model)
    for row in plan:
        name, kind = row.get("layer"), row.get("kind")
        want = _KIND_LAYER.get(kind)  # type: ignore[arg-type]
        if want is None:
            raise LowRankError(f"{name}: kind={kind!r}, expected one of {', '.join(_KIND_LAYER)}")
        module = cands.get(name)  # type: ignore[arg-type]
        if not isinstance(module, want):
            raise LowRankError(f"{name}: not a {want.__name__} of the model (a {type(module).__name__})")
        if not row.get("skipped"):
            if kind in ("tt", "ttconv"):
                ins, _ = _tt_geometry(name, module, (row.get("in_modes"), row.get("out_modes")), 1)  # type: ignore
                ranks = row.get("ranks")
                if not isinstance(ranks, (list, tuple)) or len(ranks) != len(ins) + 1:
                    raise LowRankError(f"{name}: ranks={ranks!r}, expected the full TT ranks of a {kind} row")
                if kind == "ttconv" and module.groups != 1:  # type: ignore[union-attr]
                    raise LowRankError(f"{name}: Conv2d with groups={module.groups}; a TT-conv needs groups=1")
            else:
                r = _check_conv_ranks(name, row["ranks"]) if kind == "tucker2" else _check_rank(name, row["ranks"])
                _check_fits(name, module, r)  # type: ignore[arg-type]
            _check_plain(name, module)  # type: ignore[arg-type]
    rows = []
    for row in tqdm(plan, desc="decompose", disable=not progress, leave=False):
        row = dict(row)
        rows.append(row)
        if row.get("skipped"):
            continue
        module = cands[row["layer"]]
        new, approx = _factor(module, row, hooi_iters)
        row["rel_error"] = _rel_error(module.weight.detach(), approx)
        set_module(model, row["layer"], new)
    _record(model, rows)
    return model


def decompose_(
    model: nn.Module,
    rank_rule: str = "vbmf",
    *,
    energy: float = 0.9,
    ranks: LayerRanks | None = None,
    filter_fn: FilterFn | None = None,
    layers: Iterable[str] | None = None,
    hooi_iters: int = 5,
    skip_larger: bool = True,
    progress: bool = False,
    conv_factorization: str = "tucker2",
    linear_factorization: str = "svd",
    tt_modes: Mapping[str, Any] | None = None,
    tt_cores: int = 3,
    method: str | None = None,
) -> nn.Module:
    """Replace conv layers by Tucker-2 triples (or TT-convs) and linear layers by SVD pairs (or TT layers), in
    place: :func:`choose_ranks` then :func:`factorize_` (see both for the arguments; ``method`` is the old name
    of ``rank_rule``).

    Returns:
        ``model``. One row per selected layer is appended to :func:`lowrank_table`: ``layer``, ``kind``
        (``"tucker2"``, ``"svd"``, ``"tt"`` or ``"ttconv"``), ``shape`` (of the original weight), ``method``
        (the rank rule, ``"vbmf"`` or ``"energy"``, or ``"explicit"``), ``ranks`` (``(R_out, R_in)``, ``r`` or
        the full TT ranks: pass ``{row["layer"]: row["ranks"]}`` as ``ranks=`` to rebuild the same Tucker-2/SVD
        structure), ``in_modes``/``out_modes`` (TT), ``params_before`` / ``params_after`` (weights and biases of
        the layer), ``rel_error`` (``||W - W_hat|| / ||W||``, Frobenius; 0.0 when skipped) and ``skipped`` (None,
        or the reason).

    Raises:
        LowRankError: as :func:`choose_ranks` and :func:`factorize_`; nothing is changed when it raises.

    Example:
        >>> from deepzip.techniques.lowrank import lowrank_table
        >>> m = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 4, 64))
        >>> rows = lowrank_table(decompose_(m, ranks={"0": (4, 4), "2": 8}, progress=False))
        >>> [(r["layer"], r["kind"], r["ranks"], r["params_before"], r["params_after"]) for r in rows]
        [('0', 'tucker2', (4, 4), 4640, 368), ('2', 'svd', 8, 8256, 1600)]
        >>> m = nn.Sequential(nn.Conv2d(16, 32, 3))
        >>> rows = lowrank_table(decompose_(m, "energy", energy=0.5, conv_factorization="tt"))
        >>> type(m[0]).__name__, rows[0]["kind"]
        ('TTConv2d', 'ttconv')
    """
    if isinstance(hooi_iters, bool) or not isinstance(hooi_iters, int) or hooi_iters < 0:
        raise LowRankError(f"hooi_iters={hooi_iters!r}, expected an integer >= 0")
    plan = choose_ranks(model, rank_rule, energy=energy, ranks=ranks, filter_fn=filter_fn, layers=layers,
                        skip_larger=skip_larger, conv_factorization=conv_factorization,
                        linear_factorization=linear_factorization, tt_modes=tt_modes, tt_cores=tt_cores,
                        method=method)
    return factorize_(model, plan, hooi_iters=hooi_iters, progress=progress)


def count_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of one forward pass of ``x``, per Conv2d / Linear / TTLinear module, by dotted name.

    Only these layers are counted (activations, pooling and additions are cheap beside them). A layer's total is
    the sum over the names under it: ``sum(v for k, v in macs.items() if k == "conv2" or k.startswith("conv2."))``.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
        >>> count_macs(m, torch.zeros(1, 1, 5, 5))
        {'0': 324, '2': 72}
    """
    macs: dict[str, int] = {}

    def hook(name: str) -> Any:
        def run(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                n = out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
            elif isinstance(m, nn.Linear) or (isinstance(m, TTLinear) and m.forward_mode == "dense"):
                n = out.numel() * m.in_features
            elif isinstance(m, TTConv2d):
                n = m.macs(out.shape)
            else:  # TTLinear: core k costs B * N * M * r_{k-1} * n_k * r_k (see forward)
                b = inp[0].numel() // m.in_features
                n, N, M = 0, 1, m.in_features
                for core in m.cores:
                    r0, mk, nk, r1 = core.shape
                    n += b * N * M * r0 * nk * r1
                    N, M = N * nk, M // mk
            macs[name] = macs.get(name, 0) + int(n)
        return run

    run_hooked(model, x, {name: hook(name) for name, m in model.named_modules()
                          if isinstance(m, (nn.Conv2d, nn.Linear, TTLinear, TTConv2d))})
    return macs
