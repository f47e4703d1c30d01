"""The decompose stage of the pipeline: before pruning, prune -> share -> Huffman acting on the factors, the file
loading by itself, resumable stages, and config errors that name the field and the layer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deepzip.errors import LowRankError
from deepzip.io.serialize import load, save
from deepzip.models import get_model
from deepzip.pipeline import PipelineConfig, compress_
from deepzip.techniques.lowrank import SVDLinear, Tucker2Conv, lowrank_spec
from deepzip.techniques.share import is_shared


def test_config_round_trip_and_settings() -> None:
    cfg = PipelineConfig(model="lenet5", decompose="tucker2+svd", decompose_ranks={"conv2": [8, 6], "fc1": 16},
                         decompose_epochs=2)
    assert PipelineConfig.from_json(cfg.to_json()) == cfg
    assert cfg.decompose_settings() == ("vbmf", 0.9, {"conv2": (8, 6), "fc1": 16})
    assert PipelineConfig(decompose="svd").decompose_settings() == ("vbmf", 0.9, None)


@pytest.mark.parametrize(("fields", "pattern"), [
    (dict(decompose="cp"), "config.decompose: 'cp'"),
    (dict(decompose="tucker2", decompose_ranks="energy=x"), "config.decompose_ranks: 'energy=x'"),
    (dict(decompose="tucker2", decompose_ranks="energy=1.5"), "energy=1.5"),
    (dict(decompose="tucker2", decompose_ranks={"conv2": [60, 4]}),
     "config.decompose_ranks: conv2: R_out=60 exceeds the layer's 50 output channels"),
    (dict(decompose="tucker2", decompose_ranks={"conv2": [0, 4]}), r"conv2: ranks=\(0, 4\)"),
    (dict(decompose="svd", decompose_ranks={"fc9": 4}), "fc9: unknown layer"),
    (dict(decompose="svd", decompose_epochs=-1), "config.decompose_epochs: -1"),
])
def test_bad_decompose_settings_fail_before_any_work(fields: dict, pattern: str) -> None:
    m = get_model("lenet5")
    cfg = PipelineConfig(model="lenet5", bits=4, sparsity={"fc1": 0.5}, **fields)
    with pytest.raises(ValueError, match=pattern):
        compress_(m, cfg, retrain=lambda model, stage: None)
    assert isinstance(m.conv2, torch.nn.Conv2d) and isinstance(m.fc1, torch.nn.Linear)


def test_decompose_then_prune_share_act_on_the_factors_and_the_file_loads_alone(tmp_path) -> None:
    m = get_model("lenet5")
    stages: list[str] = []
    cfg = PipelineConfig(model="lenet5", decompose="tucker2+svd", decompose_ranks={"conv2": [8, 6], "fc1": 16},
                         sparsity={"conv2.1": 0.5, "fc1.0": 0.8, "fc1.1": 0.5}, prune_rounds=1, bits=4)
    info: dict = {}
    compress_(m, cfg, retrain=lambda model, stage: stages.append(stage), info=info)
    assert stages == ["decompose", "prune", "share"]
    assert isinstance(m.conv2, Tucker2Conv) and isinstance(m.fc1, SVDLinear)
    assert [r["layer"] for r in info["decompose"]["layers"]] == ["conv2", "fc1"]
    assert abs(float((m.fc1[0].weight == 0).float().mean()) - 0.8) < 0.01
    assert is_shared(m.conv2[1]) and is_shared(m.fc1[0])
    path = tmp_path / "m.dz"
    save(m, path)
    again = load(path, trainable=True)  # no user code: architecture + record in the header
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(again(x), m(x)) and lowrank_spec(again) == lowrank_spec(m)


def test_stage_keys() -> None:
    base = PipelineConfig()
    # without the stage, its fields do not enter any key (old stage checkpoints stay resumable)
    assert base.stage_key("prune", "s") == dataclasses.replace(base, decompose_ranks="energy=0.5").stage_key(
        "prune", "s")
    dec = dataclasses.replace(base, decompose="svd")
    assert dec.stage_key("prune", "s") != base.stage_key("prune", "s")
    other = dataclasses.replace(dec, decompose_ranks="energy=0.5")
    assert other.stage_key("decompose", "s") != dec.stage_key("decompose", "s")
    assert other.stage_key("prune", "s") != dec.stage_key("prune", "s")
    # pruning and sharing settings do not decide the decompose stage
    assert dataclasses.replace(dec, bits=3, target_sparsity=0.5).stage_key("decompose", "s") == dec.stage_key(
        "decompose", "s")


def test_lowrank_error_is_a_value_error() -> None:
    assert issubclass(LowRankError, ValueError)
