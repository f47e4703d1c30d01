"""The pipeline on a small model and synthetic data: the file is what we quote, configs round-trip, stages resume."""

from __future__ import annotations

import json

import pytest
import torch

from deepzip import codec
from deepzip.apps.mnist.data import synthetic_mnist
from deepzip.apps.mnist.pipeline import run_pipeline
from deepzip.io.serialize import load
from deepzip.models import get_model
from deepzip.pipeline import PipelineConfig, compress_
from deepzip.techniques.prune import clone_model
from deepzip.train import TrainConfig, fit, predict

TRAIN, TEST = synthetic_mnist(256, seed=0), synthetic_mnist(128, seed=1)
FAST = dict(retrain_epochs=1, finetune_epochs=1, prune_rounds=2, bits_choices=(3, 5))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    m = get_model("lenet300")
    fit(m, TRAIN, TrainConfig(epochs=2, lr=0.05, progress=False))
    return m


def test_file_evaluates_like_the_in_memory_model(trained, tmp_path):
    m = clone_model(trained)
    cfg = PipelineConfig(sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.7}, bits={"default": 4, "fc3": 5}, **FAST)
    out = tmp_path / "m.dz"
    s = run_pipeline(m, TRAIN, TEST, cfg, out, progress=False, log=lambda _: None)
    assert s["bytes"] == out.stat().st_size and s["ratio"] == pytest.approx(4 * 266_610 / s["bytes"])
    assert torch.equal(predict(load(out, trainable=True), TEST.x), predict(m, TEST.x))
    assert s["error_after_pct"] == s["error_in_memory_pct"]
    assert s["bits"] == {"fc1": 4, "fc2": 4, "fc3": 5}
    assert PipelineConfig.from_dict(load_config(out)) == cfg  # the config that made the file is in it


@pytest.mark.parametrize("shift", [0, 2])
def test_distilling_with_and_without_jitter(trained, tmp_path, shift):
    """Distillation as the retraining loss: a logit cache without jitter, a live frozen teacher with it."""
    m = clone_model(trained)
    teacher_before = predict(trained, TEST.x)
    cfg = PipelineConfig(sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.7}, bits=4, distill=True, jitter=shift, **FAST)
    out = tmp_path / "m.dz"
    s = run_pipeline(m, TRAIN, TEST, cfg, out, progress=False, log=lambda _: None)
    assert torch.equal(predict(load(out, trainable=True), TEST.x), predict(m, TEST.x))
    assert s["error_after_pct"] == s["error_in_memory_pct"]
    assert torch.equal(predict(trained, TEST.x), teacher_before)  # the fixture model was never touched


def load_config(path):
    from deepzip import codec

    return codec.read(path).config


def test_scans_choose_settings_when_unset(trained, tmp_path):
    m = clone_model(trained)
    cfg = PipelineConfig(target_sparsity=0.8, bits=None, bits_tolerance=100.0, **FAST)
    s = run_pipeline(m, TRAIN, TEST, cfg, tmp_path / "m.dz", progress=False, log=lambda _: None)
    kept = s["params_nonzero"] - 410  # biases are dense
    assert kept <= 0.2 * 266_200 + 1
    assert set(s["sparsity"]) == {"fc1", "fc2", "fc3"}
    assert s["bits"] == {"fc1": 3, "fc2": 3, "fc3": 3}  # any error allowed: the fewest bits on offer


def test_config_json_round_trip():
    cfg = PipelineConfig(sparsity={"fc1": 0.95}, bits="8/5", distill=True, temperature=3.0, bits_choices=(4, 6))
    again = PipelineConfig.from_json(cfg.to_json())
    assert again == cfg and json.loads(again.to_json()) == json.loads(cfg.to_json())


def test_resuming_after_a_stage_gives_the_same_file(trained, tmp_path):
    cfg = PipelineConfig(sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.7}, bits=4, **FAST)
    work = tmp_path / "work"
    logs: list[str] = []
    run_pipeline(clone_model(trained), TRAIN, TEST, cfg, tmp_path / "a.dz", workdir=work, source="x",
                 progress=False, log=logs.append)
    assert (work / "prune.safetensors").exists() and (work / "share.safetensors").exists()
    (work / "share.safetensors").unlink()  # as if interrupted during sharing
    run_pipeline(clone_model(trained), TRAIN, TEST, cfg, tmp_path / "b.dz", workdir=work, source="x",
                 progress=False, log=logs.append)
    assert any("prune: resumed" in line for line in logs)
    assert (tmp_path / "a.dz").read_bytes() == (tmp_path / "b.dz").read_bytes()
    # a different config does not reuse the stage checkpoints
    logs.clear()
    cfg2 = PipelineConfig(sparsity={"fc1": 0.8, "fc2": 0.9, "fc3": 0.7}, bits=4, **FAST)
    run_pipeline(clone_model(trained), TRAIN, TEST, cfg2, tmp_path / "c.dz", workdir=work, source="x",
                 progress=False, log=logs.append)
    assert not any("resumed" in line for line in logs)


@pytest.mark.parametrize("bad, field", [
    (dict(sparsity={"fc9": 0.5}), "config.sparsity.fc9"),
    (dict(bits=0), "config.bits"),
    (dict(bits={"fc1": 0}), "config.bits.fc1"),
    (dict(sparsity={"fc1": 1.2}), "config.sparsity.fc1"),
    (dict(target_sparsity=-0.1), "config.target_sparsity"),
    (dict(init="kmeans++"), "config.init"),
    (dict(jitter=-1), "config.jitter"),
])
def test_bad_config_fails_before_any_work(bad, field, tmp_path, trained):
    m = clone_model(trained)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        run_pipeline(m, TRAIN, TEST, PipelineConfig(**bad), tmp_path / "m.dz", workdir=tmp_path / "w",
                     progress=False)
    assert not (tmp_path / "m.dz").exists() and not (tmp_path / "w").exists()
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_unknown_config_field_is_named():
    with pytest.raises(ValueError, match="config.spasity"):
        PipelineConfig.from_json('{"spasity": {"fc1": 0.9}}')


def test_compress_with_your_own_training_loop(trained):
    m = clone_model(trained)
    stages = []

    def retrain(model, stage):
        stages.append(stage)
        fit(model, TRAIN, TrainConfig(epochs=1, lr=0.01, progress=False))

    compress_(m, PipelineConfig(sparsity={"fc1": 0.9, "fc2": 0.8, "fc3": 0.5}, bits=3, prune_rounds=2), retrain,
              progress=False)
    assert stages == ["prune", "prune", "share"]
    assert len(torch.unique(m.fc1.weight)) <= 9  # 8 centroids + the pruned zeros


@pytest.mark.parametrize("text, field", [('{"version": "x"}', "config.version"), ('{"bits_choices": 5}', "config")])
def test_wrong_types_in_a_config_are_value_errors_for_api_callers(text, field):
    with pytest.raises(ValueError, match=field):
        PipelineConfig.from_json(text)


def test_shrink_stores_a_smaller_model_that_loads_alone_and_resumes(trained, tmp_path):
    """config.shrink: the units pruning killed are removed (the file records the widths; deepzip.load rebuilds
    them from the architecture alone) and a resumed run writes the same file."""
    def source():
        m = clone_model(trained)
        with torch.no_grad():
            m.fc2.weight[:40] = 0  # 40 hidden neurons of fc2 without inputs: pruned away, then removed
        return m

    m = source()
    cfg = PipelineConfig(sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.7}, bits=4, shrink=True, **FAST)
    work = tmp_path / "work"
    logs: list[str] = []
    s = run_pipeline(m, TRAIN, TEST, cfg, tmp_path / "a.dz", workdir=work, source="x", progress=False,
                     log=logs.append)
    assert m.fc2.out_features < 100 and m.fc3.in_features == m.fc2.out_features
    assert s["prune"]["shrunk"] and s["prune"]["shrunk"][0]["layer"] in ("fc1", "fc2")
    alone = load(tmp_path / "a.dz")  # no model given: the widths come from the file
    assert alone.fc2.out_features == m.fc2.out_features
    assert torch.equal(predict(alone, TEST.x), predict(m, TEST.x))
    assert s["error_after_pct"] == s["error_in_memory_pct"]
    (work / "share.safetensors").unlink()
    run_pipeline(source(), TRAIN, TEST, cfg, tmp_path / "b.dz", workdir=work, source="x",
                 progress=False, log=logs.append)
    assert any("prune: resumed" in line for line in logs)
    assert (tmp_path / "a.dz").read_bytes() == (tmp_path / "b.dz").read_bytes()
    assert "shrink" not in PipelineConfig().to_dict()  # files of configs without it are unchanged


def test_centroids_float16_writes_format_1_4_and_the_file_is_the_model(trained, tmp_path):
    m = clone_model(trained)
    cfg = PipelineConfig(sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.7}, bits=4, centroids_float16=True,
                         bias_float16=True, **FAST)
    s = run_pipeline(m, TRAIN, TEST, cfg, tmp_path / "h.dz", progress=False, log=lambda _: None)
    f = codec.read(tmp_path / "h.dz")
    assert f.version == (1, 4) and {f.tensors[n].dtype for n in ("fc1.weight", "fc2.weight", "fc3.weight")} == {
        "float16"}
    assert s["error_after_pct"] == s["error_in_memory_pct"]
    assert torch.equal(predict(load(tmp_path / "h.dz"), TEST.x), predict(m, TEST.x))
    assert PipelineConfig.from_dict(load_config(tmp_path / "h.dz")) == cfg
    assert "centroids_float16" not in PipelineConfig().to_dict()


def test_bias_bits_shares_the_biases_and_the_share_stage_resumes_them(trained, tmp_path):
    cfg = PipelineConfig(sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.7}, bits=4, bias_bits=3, centroids_float16=True,
                         **FAST)
    work = tmp_path / "work"
    logs: list[str] = []
    m = clone_model(trained)
    s = run_pipeline(m, TRAIN, TEST, cfg, tmp_path / "a.dz", workdir=work, source="x", progress=False,
                     log=logs.append)
    f = codec.read(tmp_path / "a.dz")
    assert s["share_biases"]["centroids"] == {"fc1": 8, "fc2": 8}  # fc3's 10 biases stay plain (< 2**4)
    assert f.tensors["fc1.bias"].kind == "codebook" and f.tensors["fc3.bias"].kind == "dense"
    assert len({float(v) for v in f.decode("fc1.bias")}) <= 8
    assert s["error_after_pct"] == s["error_in_memory_pct"]
    assert torch.equal(predict(load(tmp_path / "a.dz"), TEST.x), predict(m, TEST.x))
    run_pipeline(clone_model(trained), TRAIN, TEST, cfg, tmp_path / "b.dz", workdir=work, source="x",
                 progress=False, log=logs.append)
    assert any("share: resumed" in line for line in logs)
    assert (tmp_path / "a.dz").read_bytes() == (tmp_path / "b.dz").read_bytes()
    with pytest.raises(ValueError, match="config.bias_bits"):
        PipelineConfig.from_dict({"bias_bits": 0})


def test_vd_stage_resumes_and_shrinks_a_conv_net(tmp_path):
    """sparsifier="vd" on LeNet-5: the vd stage is checkpointed on its own (later settings resume it), and with
    shrink the dead filters and neurons leave the file."""
    torch.manual_seed(0)
    m = get_model("lenet5")
    cfg = PipelineConfig(model="lenet5", sparsifier="vd", vd_epochs=1, vd_kl_warmup=0.0, vd_kl_ramp_end=0.0,
                         vd_kl_scale=50.0, bits=4, shrink=True, **FAST)
    work = tmp_path / "work"
    logs: list[str] = []
    s = run_pipeline(clone_model(m), TRAIN, TEST, cfg, tmp_path / "a.dz", workdir=work, source="x",
                     progress=False, log=logs.append)
    assert (work / "vd.safetensors").exists() and s["seconds"]["vd"] is not None
    model = load(tmp_path / "a.dz")  # the file alone: LeNet-5 with the file's widths
    from deepzip.train import evaluate

    assert evaluate(model, TEST).error_pct == s["error_after_pct"]
    assert s["vd"]["layers"] if "vd" in s else s["prune"]["vd"]["layers"]
    cfg2 = PipelineConfig(**{**cfg.__dict__, "retrain_epochs": 2})  # another retraining: the vd stage is reused
    logs.clear()
    run_pipeline(clone_model(m), TRAIN, TEST, cfg2, tmp_path / "b.dz", workdir=work, source="x",
                 progress=False, log=logs.append)
    assert any("vd: resumed" in line for line in logs) and not any("prune: resumed" in line for line in logs)


def test_vd_shrinks_between_pieces_of_training_and_resumes(tmp_path):
    """vd_shrink_every: the dead filters leave the model during VD training (the stage's checkpoint is already
    small), the file alone rebuilds it, and the stage resumes into a fresh full-width model."""
    torch.manual_seed(0)
    m = get_model("lenet5")
    with torch.no_grad():
        m.fc1.weight[100:] = 0  # VD starts them pruned: 400 neurons without inputs to remove after the 1st epoch
    cfg = PipelineConfig(model="lenet5", sparsifier="vd", vd_epochs=2, vd_shrink_every=1, vd_kl_warmup=0.0,
                         vd_kl_ramp_end=0.0, vd_kl_scale=50.0, bits=4, shrink=True, **FAST)
    work = tmp_path / "work"
    logs: list[str] = []
    s = run_pipeline(clone_model(m), TRAIN, TEST, cfg, tmp_path / "a.dz", workdir=work, source="x",
                     progress=False, log=logs.append)
    vd_rows = {r["layer"]: r for r in (s["vd"] if "vd" in s else s["prune"]["vd"])["layers"]}
    assert vd_rows["fc1"]["weights"] <= 100 * 800  # shrunk before the 2nd piece
    model = load(tmp_path / "a.dz")
    from deepzip.train import evaluate

    assert evaluate(model, TEST).error_pct == s["error_after_pct"]
    logs.clear()
    cfg2 = PipelineConfig(**{**cfg.__dict__, "retrain_epochs": 2})
    run_pipeline(clone_model(m), TRAIN, TEST, cfg2, tmp_path / "b.dz", workdir=work, source="x",
                 progress=False, log=logs.append)
    assert any("vd: resumed" in line for line in logs)


@pytest.mark.parametrize("widths, what", [
    ({"fc1": [784, 400]}, "must lie within"),
    ({"fc9": [10, 10]}, "no Linear"),
    ({"fc1": "big"}, "expected 2 integers"),
    ([1, 2], "expected an object"),
])
def test_a_file_with_lying_widths_is_refused(trained, tmp_path, widths, what):
    from deepzip import codec
    from deepzip.errors import CheckpointError
    from deepzip.io.serialize import save

    path = tmp_path / "m.dz"
    save(clone_model(trained), path)
    f = codec.read(path.read_bytes())
    codec.write(tmp_path / "bad.dz", f.tensors, config=f.config, architecture=f.architecture,
                extra={**f.extra, "widths": widths})
    with pytest.raises(CheckpointError, match=what):
        load(tmp_path / "bad.dz")
