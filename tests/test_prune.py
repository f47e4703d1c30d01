"""Invariants of magnitude pruning: masked weights are zero and stay zero, gradients are masked, strip and
state_dict round trips keep everything, bad input names the layer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from deepzip.io.checkpoint import load_checkpoint, save_checkpoint
from deepzip.models import get_model
from deepzip.techniques.prune import (
    AGPSchedule,
    Mask,
    allocate_sparsities,
    choose_sparsities,
    get_mask,
    iterative_prune_,
    prune_,
    sensitivity_scan,
    sparsity_table,
    strip,
)


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def test_target_sparsity_is_exact_and_smallest_magnitudes_go():
    m = small()
    w = m[2].weight.detach().clone()
    prune_(m, sparsity=0.7)
    mask = get_mask(m[2])
    assert int((~mask).sum()) == round(0.7 * w.numel())
    # brute force: every pruned |w| <= every kept |w|
    assert w.abs()[~mask].max() <= w.abs()[mask].min()
    assert (m[2].weight[~mask] == 0).all()


def test_quality_threshold_is_quality_times_std():
    m = small()
    w = m[2].weight.detach().clone()
    prune_(m, quality={"2": 1.0})
    thr = float(w.std())
    assert torch.equal(get_mask(m[2]), w.abs() > thr)
    assert get_mask(m[0]) is None  # layers not named are left alone


def test_masked_weights_stay_zero_after_sgd_momentum_and_weight_decay():
    m = small()
    prune_(m, sparsity=0.8)
    masks = {i: get_mask(m[i]).clone() for i in (0, 2)}
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        orig = m[2].parametrizations.weight.original
        assert (orig.grad[~masks[2]] == 0).all()  # gradients of masked weights are zero
        opt.step()
    for i, mask in masks.items():
        assert (m[i].weight[~mask] == 0).all()
        assert (m[i].weight[mask] != 0).all()


def test_strip_keeps_outputs_identical():
    m = small()
    prune_(m, sparsity=0.5)
    x = torch.randn(3, 1, 8, 8)
    before = m(x)
    strip(m)
    assert not hasattr(m[2], "parametrizations")
    assert torch.equal(before, m(x))


def test_state_dict_round_trip_keeps_masks():
    m = small()
    prune_(m, sparsity=0.6)
    sd = copy.deepcopy(m.state_dict())
    assert any(k.endswith("parametrizations.weight.0.mask") for k in sd)
    m2 = small()
    prune_(m2, sparsity=0.1)  # different masks, same structure
    m2.load_state_dict(sd)
    assert torch.equal(get_mask(m2[2]), get_mask(m[2]))


def test_checkpoint_round_trip_is_compact_and_exact(tmp_path):
    m = get_model("lenet300")
    dense = tmp_path / "dense.safetensors"
    save_checkpoint(m, dense)
    prune_(m, sparsity={"fc1": 0.92, "fc2": 0.91, "fc3": 0.74})
    p = tmp_path / "pruned.safetensors"
    save_checkpoint(m, p, meta={"x": 1})
    assert p.stat().st_size < dense.stat().st_size * 0.2  # smaller, not doubled
    m2, meta = load_checkpoint(p)
    assert meta == {"x": 1}
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(m(x), m2(x))
    assert torch.equal(get_mask(m2.fc1), get_mask(m.fc1))


def test_repruning_keeps_earlier_zeros():
    m = small()
    prune_(m, sparsity=0.5)
    first = get_mask(m[2]).clone()
    with torch.no_grad():  # make pruned entries of original large: they must not come back
        m[2].parametrizations.weight.original.add_(10.0 * (~first))
    prune_(m, sparsity=0.7)
    second = get_mask(m[2])
    assert not (second & ~first).any()
    assert int((~second).sum()) == round(0.7 * second.numel())


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_bad_sparsity_names_the_layer(bad):
    with pytest.raises(ValueError, match=r"2\.weight"):
        prune_(small(), sparsity={"2": bad})


def test_unknown_layer_and_integer_weights():
    with pytest.raises(ValueError, match="fc9"):
        prune_(small(), sparsity={"fc9": 0.5})
    lin = nn.Linear(4, 4)
    lin.weight = nn.Parameter(torch.ones(4, 4, dtype=torch.int32), requires_grad=False)
    with pytest.raises(ValueError, match=r"0\.weight.*floating"):
        prune_(nn.Sequential(lin), sparsity=0.5)
    with pytest.raises(ValueError):
        prune_(small())


def test_agp_schedule_reaches_final_and_is_monotone():
    m = nn.Sequential(nn.Linear(20, 20))
    sched = AGPSchedule(final={"0": 0.9}, begin=0, end=20, every=5)
    zeros = []
    for step in range(1, 21):
        sched(m, step)
        zeros.append(int((m[0].weight == 0).sum()))
    assert zeros == sorted(zeros)
    assert zeros[-1] == 360


def test_iterative_prune_reaches_targets_and_calls_retrain():
    m = small()
    calls = []
    iterative_prune_(m, lambda model, r: calls.append(r), sparsity={"2": 0.9, "0": 0.5}, rounds=3, progress=False)
    assert calls == [1, 2, 3]
    table = {r["layer"]: r for r in sparsity_table(m)}
    assert abs(table["2"]["kept_pct"] - 10) < 0.5 and abs(table["0"]["kept_pct"] - 50) < 3


def test_sensitivity_scan_and_allocation():
    m = small()
    x = torch.randn(64, 1, 8, 8)
    ref = m(x).argmax(1)

    def err(model):
        return float((model(x).argmax(1) != ref).float().mean() * 100)

    scan = sensitivity_scan(m, err, [0.0, 0.5, 0.9], progress=False)
    assert set(scan) == {"0", "2"} and scan["0"][0] == (0.0, 0.0)
    assert get_mask(m[0]) is None  # the scan prunes copies only
    chosen = choose_sparsities(scan, 0.0, tolerance=1000)
    assert chosen == {"0": 0.9, "2": 0.9}
    weights = {"0": m[0].weight.numel(), "2": m[2].weight.numel()}
    alloc = allocate_sparsities(scan, weights, 0.5, baseline_error=0.0)
    overall = sum(alloc[k] * weights[k] for k in weights) / sum(weights.values())
    assert 0.5 - 1e-9 <= overall <= 0.5 + 1e-3  # reached, and not overshot by a whole scan step


def test_allocation_hits_the_target_not_the_next_scan_point():
    scan = {"fc1": [(0.0, 0.0), (0.9, 0.1), (0.92, 0.2), (0.94, 0.3)], "fc2": [(0.0, 0.0), (0.5, 5.0)]}
    weights = {"fc1": 235_200, "fc2": 30_000}
    for target in (0.8, 0.81, 0.825, 0.8345):
        alloc = allocate_sparsities(scan, weights, target)
        overall = sum(alloc[k] * weights[k] for k in weights) / sum(weights.values())
        assert target - 1e-9 <= overall <= target + 1e-4
        # fc1 is far cheaper per weight: fc2 moves only once fc1 is at its last scan point (0.94 = 83.4% overall)
        assert alloc["fc2"] == 0.0 if target < 0.834 else (alloc["fc1"] == 0.94 and 0 < alloc["fc2"] < 0.5)
    assert allocate_sparsities(scan, weights, 0.99) == {"fc1": 0.94, "fc2": 0.5}  # unreachable: the most on offer
    assert allocate_sparsities(scan, weights, 0.0) == {"fc1": 0.0, "fc2": 0.0}


def test_mask_is_a_parametrization_with_a_buffer():
    m = small()
    prune_(m, sparsity=0.3)
    assert isinstance(m[2].parametrizations.weight[0], Mask)
    assert m[2].parametrizations.weight[0].mask.dtype == torch.bool
