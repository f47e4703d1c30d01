"""The low-rank structure in files: a factored model saved to .dz (or a checkpoint) comes back from the file alone,
old and new golden files load, and a mismatched model or a bad record fails with a message naming the layer."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepzip import codec
from deepzip.errors import CheckpointError, LowRankError
from deepzip.io.checkpoint import load_checkpoint, save_checkpoint
from deepzip.io.serialize import load, load_state_dict, save
from deepzip.models import get_model
from deepzip.techniques.lowrank import (
    SVDLinear,
    TTLinear,
    Tucker2Conv,
    choose_ranks,
    count_macs,
    decompose_,
    factorize_,
    lowrank_spec,
    lowrank_table,
    rebuild_,
    tt_linear_,
)
from deepzip.techniques.prune import prune_
from deepzip.techniques.share import share_weights_

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_golden_lowrank import golden_input  # noqa: E402


def factored(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = get_model("lenet5", seed=seed)
    decompose_(m, ranks={"conv2": (8, 6), "fc1": 16}, progress=False)
    tt_linear_(m, {"fc2": ((20, 25), (2, 5), 3)}, skip_larger=False, progress=False)
    return m


def test_lowrank_golden_file_loads_from_the_file_alone() -> None:
    expected = json.loads((GOLDEN / "lowrank.expected.json").read_text())
    m = load(GOLDEN / "lowrank.dz", trainable=True)
    assert lowrank_spec(m) == expected["lowrank"]
    assert sorted(m.state_dict()) == expected["keys"]
    assert isinstance(m.conv2, Tucker2Conv) and isinstance(m.fc1, SVDLinear) and isinstance(m.fc2, TTLinear)
    with torch.no_grad():
        np.testing.assert_allclose(m(golden_input()).numpy(), np.array(expected["logits"]), rtol=0, atol=1e-6)
    sd = load_state_dict(GOLDEN / "lowrank.dz")  # decompress: the factored state_dict
    assert set(sd) == set(codec.read(GOLDEN / "lowrank.dz").tensors)
    assert {"conv2.0.weight", "conv2.1.weight", "conv2.2.weight", "fc1.0.weight", "fc2.cores.0"} <= set(sd)


def test_old_golden_file_still_loads_without_a_record() -> None:
    f = codec.read(GOLDEN / "tiny.dz")
    assert "lowrank" not in f.extra
    sd = load_state_dict(GOLDEN / "tiny.dz")
    assert sd["fc.bias"].tolist() == [0.125, -1.5]


def test_pruned_shared_factored_model_round_trips_bit_exactly(tmp_path: Path) -> None:
    m = factored()
    prune_(m, sparsity=0.6)
    share_weights_(m, 4, progress=False)
    path = tmp_path / "m.dz"
    save(m, path)
    assert codec.read(path).extra["lowrank"] == lowrank_spec(m)
    again = load(path, trainable=True)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(again(x), m(x))
    assert lowrank_spec(again) == lowrank_spec(m)
    path2 = tmp_path / "again.dz"
    save(again, path2)  # saved again in its compact form, record included
    assert path2.read_bytes() == path.read_bytes()


def test_checkpoint_records_and_rebuilds_the_structure(tmp_path: Path) -> None:
    m = factored()
    path = tmp_path / "m.safetensors"
    save_checkpoint(m, path)
    again, _ = load_checkpoint(path)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(again(x), m(x))
    with pytest.raises(CheckpointError, match=r"conv2: the file holds a Tucker-2 triple with ranks \(8, 6\), the "
                                              r"model has a plain Conv2d \(50, 20, 5, 5\)"):
        load_checkpoint(path, get_model("lenet5"))


def test_decomposed_file_into_a_plain_or_differently_factored_model_names_layer_and_both_numbers(
        tmp_path: Path) -> None:
    path = tmp_path / "m.dz"
    save(factored(), path)
    with pytest.raises(LowRankError, match=r"m.dz: conv2: the file holds a Tucker-2 triple with ranks \(8, 6\), "
                                           r"the model has a plain Conv2d \(50, 20, 5, 5\) \(25,050 params\)"):
        load(path, get_model("lenet5"))
    other = get_model("lenet5")
    decompose_(other, ranks={"conv2": (8, 5), "fc1": 16}, progress=False)
    with pytest.raises(LowRankError, match=r"conv2: the spec has a Tucker-2 triple with ranks \(8, 6\), the model "
                                           r"has a Tucker-2 triple with ranks \(8, 5\)"):
        load(path, other)
    same = factored(seed=3)  # the same structure, other weights: loads
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(load(path, same, trainable=True)(x), load(path, trainable=True)(x))


def _write_with_record(tmp_path: Path, record: list) -> Path:
    m = get_model("lenet5")
    path = tmp_path / "bad.dz"
    save(m, path, extra={"lowrank": record})  # a plain model: save() adds no record of its own
    return path


@pytest.mark.parametrize(("record", "pattern"), [
    ([{"layer": "conv2", "kind": "cp", "shape": [50, 20, 5, 5], "ranks": [2, 2]}], r"kind='cp'"),
    ([{"layer": "conv2", "kind": "tucker2", "shape": [50, 20, 5, 5], "ranks": [0, 2]}], r"ranks=\[0, 2\]"),
    ([{"layer": "conv2", "kind": "tucker2", "shape": [50, 20, 5, 5], "ranks": [60, 2]}],
     r"conv2: R_out=60 exceeds the layer's 50 output channels"),
    ([{"layer": "fc1", "kind": "svd", "shape": [500, 800], "ranks": [900]}],
     r"fc1: rank=900 exceeds min\(out, in\)=500"),
    ([{"layer": "fc1", "kind": "svd", "shape": [500, 700], "ranks": [9]}],
     r"fc1: the spec's dense weight is \(500, 700\), the model's \(500, 800\)"),
    ([{"layer": "fc2", "kind": "tt", "shape": [10, 500], "ranks": [1, 3, 1], "in_modes": [20, 24],
       "out_modes": [2, 5]}], r"fc2\): modes \[20, 24\] x \[2, 5\] give 480 x 10 features, the layer is 500 x 10"),
    ([{"layer": "fc9", "kind": "svd", "shape": [10, 500], "ranks": [3]}], r"the model has no layer 'fc9'"),
    ([{"layer": "fc1", "kind": "tucker2", "shape": [500, 800, 1, 1], "ranks": [3, 3]}],
     r"fc1: the spec has a Tucker-2 triple with ranks \(3, 3\) in place of a Conv2d, the model has a plain Linear"),
    ("conv2", "extra.lowrank is not a list"),
])
def test_bad_record_in_a_file_fails_by_name_and_changes_nothing(tmp_path: Path, record, pattern: str) -> None:
    path = _write_with_record(tmp_path, record)
    with pytest.raises(ValueError, match=pattern):
        load(path)


def test_rebuild_is_idempotent_and_atomic() -> None:
    m = factored()
    spec = lowrank_spec(m)
    fresh = rebuild_(get_model("lenet5"), spec)
    rebuild_(fresh, spec)
    fresh.load_state_dict(m.state_dict())
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(fresh(x), m(x))
    plain = get_model("lenet5")
    bad = [*spec[:2], {**spec[2], "in_modes": [25, 25]}]  # the last entry is wrong: nothing may change
    with pytest.raises(LowRankError, match="fc2"):
        rebuild_(plain, bad)
    assert isinstance(plain.conv2, nn.Conv2d) and isinstance(plain.fc1, nn.Linear)


def test_choose_then_factorize_equals_decompose_and_plan_errors() -> None:
    a, b = get_model("lenet5"), get_model("lenet5")
    plan = choose_ranks(a, "energy", energy=0.8, filter_fn=lambda m, fqn: fqn in ("conv2", "fc1"))
    factorize_(a, plan, progress=False)
    decompose_(b, "energy", energy=0.8, layers=["conv2", "fc1"], progress=False)
    assert lowrank_spec(a) == lowrank_spec(b)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(a(x), b(x))
    with pytest.raises(LowRankError, match="fc1: not a Conv2d of the model"):
        factorize_(get_model("lenet5"), [{"layer": "fc1", "kind": "tucker2", "ranks": (2, 2)}], progress=False)


def test_macs_match_the_formulas() -> None:
    m = get_model("lenet5")
    x = torch.zeros(1, 1, 28, 28)
    macs = count_macs(m, x)
    assert macs == {"conv1": 24 * 24 * 20 * 25, "conv2": 8 * 8 * 50 * 20 * 25, "fc1": 800 * 500, "fc2": 5000}
    decompose_(m, ranks={"conv2": (8, 6)}, progress=False)
    after = count_macs(m, x)
    assert after["conv2.0"] == 12 * 12 * 6 * 20 and after["conv2.1"] == 8 * 8 * 8 * 6 * 25
    assert after["conv2.2"] == 8 * 8 * 50 * 8
    tt = TTLinear((784,), (300,), ranks=())  # one core: exactly a dense layer's work
    assert count_macs(tt, torch.zeros(3, 784)) == {"": 3 * 784 * 300}
    tt = TTLinear((4, 7), (5, 6), ranks=(3,))  # core 1: 28 * 5 * 3, core 2: 5 * 7 * 3 * 6 per row
    assert count_macs(tt, torch.zeros(2, 28))[""] == 2 * (28 * 5 * 3 + 5 * 7 * 3 * 6)


def test_decompose_leaves_already_factored_layers_alone() -> None:
    m = factored()
    snapshot = copy.deepcopy(m.state_dict())
    rows = lowrank_table(decompose_(m, progress=False))  # every conv: only conv1 is left to decompose
    assert [r["layer"] for r in rows if r["method"] == "vbmf"] == ["conv1"]
    assert isinstance(m.conv2, Tucker2Conv) and all(type(c) is nn.Conv2d for c in m.conv2)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in snapshot.items() if k.startswith("conv2."))
