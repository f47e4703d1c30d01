"""Allocation to the bound: per-layer sensitivities measured once, a greedy walk down every tensor's hull by
predicted drop per byte, and a search of the budget for the smallest model whose measured drop -- on held-out
inputs when there are some -- is within the bound; the one-setting ablation and the no-data fallback."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._calibration import _batches, _default_forward, _drop, _estimate, _outputs, target_tensors
from ._candidates import _allowed, _candidates, _hull
from ._sensitivity import fisher_diagonal, input_grams, row_counts
from ._types import BoundError, Candidate, Forward, HeldOut, PostTrainConfig, PostTrainResult


# ---------------------------------------------------------------------------------------------------- allocation
def _set_weights_(modules: dict[str, nn.Module], weights: dict[str, np.ndarray | torch.Tensor]) -> None:
    with torch.no_grad():
        for n, w in weights.items():
            p = modules[n].weight
            p.copy_(torch.as_tensor(w, dtype=p.dtype))


def float16_others_(model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Round every float32 parameter of ``model`` that is not the weight of one of ``modules`` (biases, norms, small
    tensors) to float16 values, in place (still float32, so the model runs as before; a ``.dz`` file stores a
    float32 tensor whose values are all float16 values in float16). A tensor with a value float16 cannot hold (out
    of its range) and the inputs of parametrizations are left alone. Returns the rounded parameters' original values
    by name."""
    skip = {id(m.weight) for m in modules.values()}
    before: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            # a parametrized tensor (pruned, shared before) is stored by its own kind: left as it is
            if id(p) in skip or p.dtype != torch.float32 or "parametrizations." in name:
                continue
            half = p.detach().to(torch.float16)
            if not bool(torch.isfinite(half).all()) or not bool(torch.isfinite(p).all()):
                continue
            before[name] = p.detach().clone()
            p.copy_(half.to(torch.float32))
    return before


def _greedy(hulls: dict[str, list[Candidate]], alpha: dict[str, float], budget: float) -> dict[str, int]:
    """Index into each hull: steps cheapest-drop-per-byte first while the predicted total drop stays <= budget."""
    steps = []
    for n, h in hulls.items():
        for i in range(1, len(h)):
            dd = alpha[n] * (h[i].error - h[i - 1].error)
            db = h[i - 1].nbytes - h[i].nbytes
            steps.append((dd / max(db, 1e-9), n, i, dd))
    steps.sort(key=lambda s: (s[0], s[1], s[2]))
    pick = {n: 0 for n in hulls}
    total = sum(alpha[n] * h[0].error for n, h in hulls.items())
    for _, n, i, dd in steps:
        if pick[n] != i - 1:  # hull steps of one tensor come in order (convex): a skipped one blocks the rest
            continue
        if total + dd > budget:
            continue
        total += dd
        pick[n] = i
    return pick


def compress_to_bound_(
    model: nn.Module,
    calibration: Iterable[Any] | Callable[[], Iterable[Any]],
    config: PostTrainConfig | None = None,
    *,
    forward: Forward | None = None,
    modules: dict[str, nn.Module] | None = None,
    fisher: dict[str, np.ndarray] | None = None,
    candidates: dict[str, list[Candidate]] | None = None,
    sensitivity: dict[str, float] | None = None,
    grams: dict[str, np.ndarray] | None = None,
    counts: dict[str, np.ndarray] | None = None,
    fisher_counts: dict[str, np.ndarray] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    heldout: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
) -> PostTrainResult:
    """Store every large weight tensor as cheaply as the quality bound allows; changes ``model``'s weights in place.

    Args:
        model: the pretrained model (eval mode is set during measurements and restored).
        calibration: batches of inputs (a list, an iterable, or a callable returning one); ``forward(model, batch)``
            must give the outputs, first dimension = samples.
        config: the options (:class:`PostTrainConfig`; default: ``max_drop=0.01``).
        forward: ``forward(model, batch) -> Tensor``; default ``model(batch)``.
        modules: the tensors to compress (default :func:`target_tensors`).
        fisher: precomputed :func:`fisher_diagonal` (reused across ablations).
        candidates: precomputed :func:`make_candidates` (reused across ablations; those ``config`` offers are used).
        sensitivity: per-tensor drop per unit of weighted error from an earlier result (``result.sensitivity``),
            to skip measuring them again.
        grams: precomputed :func:`input_grams` (computed when ``config.gptq`` and no candidates are given).
        counts: precomputed :func:`row_counts` of the embedding tables (computed from the calibration batches when
            no candidates are given).
        fisher_counts: the row counts of the text ``fisher`` was measured on, where ``counts`` come from more text
            (default: the calibration batches' counts when ``fisher`` is computed here, else ``counts``).
        progress: progress bars while sensitivities are measured.
        log: called with one line per phase.
        heldout: calibration batches nothing is fitted on (see :func:`split_heldout`): the budget search then
            takes the cheapest allocation whose drop *on these* is within ``config.max_drop`` (an estimate of the
            drop on more inputs of their kind; on the inputs fitted on, the drop is smaller: measured on MiniLM,
            benchmarks/post_training_heldout.py), and the result carries it (``result.heldout``). None: the bound is
            checked on ``calibration`` itself.

    Returns:
        :class:`PostTrainResult`; the model's weights are the chosen stored values.

    Raises:
        BoundError: an empty calibration set, inputs the model cannot take, or a bound that even the most
            accurate choice for every tensor misses (the message gives the best reachable drop and size).
    """
    cfg = config or PostTrainConfig()
    fwd = forward or _default_forward
    say = log or (lambda s: None)
    batches = _batches(calibration)
    held = _batches(heldout) if heldout is not None else None
    mods = modules if modules is not None else target_tensors(model, cfg.min_numel)
    if not mods:
        raise BoundError(f"no weight tensor of >= {cfg.min_numel} elements to compress")
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    secs: dict[str, float] = {}
    try:
        ref = _outputs(model, batches, fwd)
        ref_held = _outputs(model, held, fwd) if held else []
        orig = {n: m.weight.detach().cpu().float().numpy().copy() for n, m in mods.items()}
        fisher_computed = fisher is None
        if fisher is None:
            fisher = fisher_diagonal(model, batches, fwd, mods, cfg.probes, cfg.seed, progress)
        if grams is None and cfg.gptq and candidates is None:
            grams = input_grams(model, batches, fwd, mods)
        embeddings = candidates is None and any(isinstance(m, nn.Embedding) for m in mods.values())
        if counts is None and embeddings:
            counts = row_counts(model, batches, fwd, mods)
        elif fisher_counts is None and embeddings and fisher_computed:  # counts of other text: the Fisher's own
            fisher_counts = row_counts(model, batches, fwd, mods)
        secs["sensitivity"] = time.perf_counter() - t0

        def drop_now() -> float:
            return _drop(_outputs(model, batches, fwd), ref)

        def held_now() -> HeldOut | None:
            return _estimate(_outputs(model, held, fwd), ref_held) if held else None

        def bound_drop() -> float:
            """What the bound is checked on: the held-out inputs when there are some, else the calibration."""
            h = held_now()
            return h.drop if h is not None else drop_now()

        hulls, unseen = _hulls(mods, orig, fisher, cfg, candidates, grams, counts, fisher_counts, progress)
        secs["candidates"] = time.perf_counter() - t0 - secs["sensitivity"]
        # biases and norms in float16 from here on: every drop measured below, and the bound, includes their
        # rounding (undone when the bound cannot be met)
        others = float16_others_(model, mods) if cfg.fp16_others else {}
        if not cfg.per_layer:
            try:
                res = _uniform(model, mods, hulls, orig, cfg, bound_drop, secs, say)
            except BoundError:
                _restore_(model, others)
                raise
            res.drop, res.heldout, res.float16_others = drop_now(), held_now(), sorted(others)
            return res
        alpha = _layer_sensitivities(mods, hulls, orig, drop_now, dict(sensitivity or {}), progress)
        secs["layer_sensitivity"] = time.perf_counter() - t0 - secs["sensitivity"] - secs["candidates"]
        say(f"sensitivities of {len(mods)} tensors measured in {time.perf_counter() - t0:.0f} s")

        def fit_drop(pick: dict[str, int]) -> float:
            """Measured drop on the calibration inputs, plus the predicted drop on embedding rows they never use."""
            return drop_now() + sum(alpha.get(n, 0.0) * hulls[n][i].unseen_error for n, i in pick.items())

        def apply(pick: dict[str, int]) -> float:
            _set_weights_(mods, {n: hulls[n][i].weight(orig[n].shape) for n, i in pick.items()})
            # held out: the drop on inputs nothing was fitted on, rows they use that the calibration does not
            # included, so nothing is predicted
            return bound_drop() if held else fit_drop(pick)

        where = "held-out" if held else "calibration"
        try:
            if held and unseen:
                # the damage to embedding rows the calibration never uses is predicted (Good-Turing), and a
                # prediction can be off: the held-out inputs use such rows, so the weight of that prediction is
                # chosen on them too (for each weight, the budget search; the smallest result wins)
                base, best = hulls, None
                for k in cfg.unseen_weights or (1.0,):
                    hulls = base if k == 1 else {**base, **{n: _hull([_reweighted(c, k) for c in cs])
                                                            for n, cs in unseen.items()}}
                    say(f"unseen embedding rows weighted x{k:g}")
                    pk, _ = _search_budget(hulls, alpha, cfg.max_drop, apply, say, where)
                    size = sum(hulls[n][i].nbytes for n, i in pk.items())
                    if best is None or size < best[0]:
                        best = (size, k, hulls, pk)
                assert best is not None
                _, k, hulls, pick = best
                say(f"unseen embedding rows weighted x{k:g}: the smallest within the bound")
            else:
                pick, _ = _search_budget(hulls, alpha, cfg.max_drop, apply, say, where)
        except BoundError:
            _set_weights_(mods, orig)
            _restore_(model, others)
            raise
        apply(pick)
        drop, estimate = fit_drop(pick), held_now()
        if estimate is not None:
            say(f"calibration drop {drop:.4g} on the inputs fitted on; held-out drop {estimate.drop:.4g} "
                f"+- {estimate.se:.2g} on {estimate.n} inputs not fitted on")
        secs["allocation"] = time.perf_counter() - t0 - sum(secs.values())
        choices = {n: hulls[n][i] for n, i in pick.items()}
        return PostTrainResult(choices, drop, sum(c.nbytes for c in choices.values()), alpha, hulls, secs,
                               estimate, sorted(others))
    finally:
        model.train(was_training)


def _restore_(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Undo :func:`float16_others_` (a bound that cannot be met leaves the model as it was)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in before.items():
            params[name].copy_(value)


def _hulls(mods: dict[str, nn.Module], orig: dict[str, np.ndarray], fisher: dict[str, np.ndarray],
           cfg: PostTrainConfig, candidates: dict[str, list[Candidate]] | None, grams: dict[str, np.ndarray] | None,
           counts: dict[str, np.ndarray] | None, fisher_counts: dict[str, np.ndarray] | None,
           progress: bool) -> tuple[dict[str, list[Candidate]], dict[str, list[Candidate]]]:
    """Per tensor, the lower convex hull of the candidates ``cfg`` offers (from ``candidates`` when given); and,
    for the tensors with rows the calibration never uses (embedding tables), every candidate (the hull changes
    when that damage is weighed differently)."""
    hulls: dict[str, list[Candidate]] = {}
    unseen: dict[str, list[Candidate]] = {}
    for n in tqdm(mods, desc="candidates", disable=not progress, leave=False):
        if candidates is not None:
            able = any(c.gptq for c in candidates[n])
            mine = [c for c in candidates[n] if _allowed(c, cfg, able)]
        else:
            mine = _candidates(n, orig[n], fisher[n], cfg, gram=(grams or {}).get(n),
                               counts=(counts or {}).get(n), fisher_counts=(fisher_counts or {}).get(n))
        if not mine:
            raise BoundError(f"{n}: no storage option left by the configuration")
        hulls[n] = _hull(mine)
        if any(c.unseen_error > 0 for c in mine):
            unseen[n] = mine
    return hulls, unseen


def _reweighted(c: Candidate, k: float) -> Candidate:
    """``c`` with its predicted damage to the rows the calibration never uses weighed ``k`` times (arrays shared)."""
    return dataclasses.replace(c, error=c.error + (k - 1) * c.unseen_error, unseen_error=k * c.unseen_error)


def _layer_sensitivities(mods: dict[str, nn.Module], hulls: dict[str, list[Candidate]], orig: dict[str, np.ndarray],
                         drop_now: Callable[[], float], known: dict[str, float], progress: bool) -> dict[str, float]:
    """Per tensor, measured drop per unit of predicted error (alpha): the candidate nearest 3 bits per weight
    applied alone and measured for real; tensors in ``known`` keep their value."""
    alpha = dict(known)
    for n in tqdm([n for n in mods if n not in alpha], desc="layer sensitivity", disable=not progress, leave=False):
        h = hulls[n]
        probe = min(h[1:] or h, key=lambda c: abs(c.nbytes * 8 / orig[n].size - 3.0))
        _set_weights_(mods, {n: probe.weight(orig[n].shape)})
        d = max(drop_now(), 0.0)
        _set_weights_(mods, {n: orig[n]})
        seen = probe.error - probe.unseen_error  # the calibration measures the damage to the rows it uses
        alpha[n] = d / seen if seen > 0 else 0.0
    return alpha


def _search_budget(hulls: dict[str, list[Candidate]], alpha: dict[str, float], max_drop: float,
                   apply: Callable[[dict[str, int]], float], say: Callable[[str], None],
                   where: str = "calibration") -> tuple[dict[str, int], float]:
    """The cheapest hull indices whose measured drop (``apply``) is within ``max_drop``, and that drop: the
    predicted budget of :func:`_greedy` is doubled until the bound is missed, then bisected (9 measurements at most).

    Raises:
        BoundError: the most accurate choice for every tensor already misses the bound.
    """
    best = {n: 0 for n in hulls}
    d0 = apply(best)
    if d0 > max_drop:
        size = sum(h[0].nbytes for h in hulls.values())
        raise BoundError(f"max_drop={max_drop:g} cannot be met: the most accurate choice for every tensor "
                         f"({size / 1e6:.2f} MB) already loses {d0:.4g} (mean cosine {1 - d0:.5f}) on the {where} "
                         "inputs")
    lo, lo_pick, lo_drop = 0.0, best, d0
    hi = None
    budget = max_drop
    for _ in range(9):
        pick = _greedy(hulls, alpha, budget)
        d = apply(pick)
        say(f"budget {budget:.4g}: measured {where} drop {d:.4g}, "
            f"{sum(hulls[n][i].nbytes for n, i in pick.items()) / 1e6:.3f} MB")
        if d <= max_drop:
            lo, lo_pick, lo_drop = budget, pick, d
        else:
            hi = budget
        budget = budget * 2 if hi is None else (lo + hi) / 2
        if hi is not None and hi - lo < 0.05 * hi:
            break
    return lo_pick, lo_drop


def _uniform(model: nn.Module, mods: dict[str, nn.Module], hulls: dict[str, list[Candidate]],
             orig: dict[str, np.ndarray], cfg: PostTrainConfig, drop_now: Callable[[], float],
             secs: dict[str, float], say: Callable[[str], None]) -> PostTrainResult:
    """One setting for every tensor (ablation of per-layer budgets): the cheapest setting within the bound
    (``drop_now``: the drop the bound is checked on)."""
    # GPTQ or not is fixed by the configuration and the layer type: settings differ in bits, groups, outliers, grid
    settings = sorted({c.setting[:4] for h in hulls.values() for c in h},
                      key=lambda s: (s[0] == 0 and not s[3], s[3], s[0], -s[1] if s[1] else 0, s[2]))
    best = None
    for s in settings:
        pick = {}
        for n, h in hulls.items():
            # the setting's candidate when it is on the hull, else the tensor's closest more accurate one
            same = [c for c in h if c.setting[:4] == s]
            richer = [c for c in h if c.bits == 0 or (c.grid >= s[3] if s[3] else c.bits >= s[0] and not c.grid)]
            pick[n] = same[0] if same else min(richer or h, key=lambda c: c.nbytes)
        _set_weights_(mods, {n: c.weight(orig[n].shape) for n, c in pick.items()})
        d = drop_now()
        size = sum(c.nbytes for c in pick.values())
        say(f"uniform {s}: drop {d:.4g}, {size / 1e6:.3f} MB")
        if d <= cfg.max_drop and (best is None or size < best[1]):
            best = (pick, size, d)
    if best is None:
        _set_weights_(mods, orig)
        raise BoundError(f"max_drop={cfg.max_drop:g} cannot be met with one setting for every tensor")
    _set_weights_(mods, {n: c.weight(orig[n].shape) for n, c in best[0].items()})
    return PostTrainResult(best[0], best[2], best[1], {}, hulls, secs)


def compress_weights_only(model: nn.Module, min_sqnr_db: float = 30.0, config: PostTrainConfig | None = None,
                          modules: dict[str, nn.Module] | None = None) -> PostTrainResult:
    """The no-data fallback: per tensor, the cheapest candidate with weight SQNR >= ``min_sqnr_db`` (unweighted).

    Weaker than :func:`compress_to_bound_`: weight error says nothing about which layers the outputs need.
    ``drop`` in the result is NaN (nothing measured).
    """
    cfg = config or PostTrainConfig(weighting="none")
    mods = modules if modules is not None else target_tensors(model, cfg.min_numel)
    choices = {}
    for n, m in mods.items():
        w = m.weight.detach().cpu().float().numpy()
        cands = _candidates(n, w, np.ones_like(w), cfg)
        power = float((w.astype(np.float64) ** 2).sum())
        ok = [c for c in cands if c.error == 0 or 10 * math.log10(power / c.error) >= min_sqnr_db]
        choices[n] = min(ok or cands, key=lambda c: (c.nbytes if ok else c.error))
        _set_weights_(mods, {n: choices[n].weight(w.shape)})
    return PostTrainResult(choices, float("nan"), sum(c.nbytes for c in choices.values()))

