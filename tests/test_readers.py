"""Issue 22: one checkpoint reader. Every command that takes a model file takes every kind ``deepzip compress SOURCE``
takes (a deepzip checkpoint, any safetensors, a torch state_dict file, a Hugging Face folder, a ``.dz``), and loads
the very weights in it (checked against the source model, not only the exit code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deepzip import cli
from deepzip.apps.mnist import data
from deepzip.errors import CheckpointError
from deepzip.io.checkpoint import load_checkpoint, save_checkpoint
from deepzip.io.reader import ACCEPTED, architecture_of, checkpoint_kind, load_model, read_tensors
from deepzip.io.serialize import load, save
from deepzip.models import get_model
from deepzip.train import evaluate

ARCH = "mlp30"  # a registered model, small enough for every command to run in a second
KINDS = ["safetensors", "state_dict", "deepzip", "dz", "hf"]


def source_model() -> torch.nn.Module:
    return get_model(ARCH, seed=1)  # not the weights get_model(ARCH) gives: a command that ignored the file would show


def write(kind: str, folder) -> str:
    """The source model in a file (or folder) of ``kind``."""
    sd = source_model().state_dict()
    if kind == "safetensors":  # as safetensors.torch.save_file of a model's state_dict writes it: {"format": "pt"}
        path = folder / "plain.safetensors"
        save_file(sd, path, metadata={"format": "pt"})
    elif kind == "state_dict":
        path = folder / "model.pt"
        torch.save(sd, path)
    elif kind == "deepzip":
        path = folder / "own.safetensors"
        save_checkpoint(source_model(), path)
    elif kind == "dz":
        path = folder / "model.dz"
        save(source_model(), path)
    else:
        path = folder / "hf"
        path.mkdir()
        (path / "config.json").write_text("{}")
        save_file(sd, path / "model.safetensors")
    return str(path)


@pytest.fixture
def synthetic(monkeypatch):
    """Tiny synthetic MNIST for every command (no download)."""
    train, test = data.synthetic_mnist(64), data.synthetic_mnist(64, seed=1)
    for mod in (cli.model, cli.share, cli.distill):
        monkeypatch.setattr(mod, "_data", lambda a, label_with=None: (train, test))
    monkeypatch.setattr(data, "load_mnist", lambda split, root=None, quiet=False: test)
    return train, test


def test_kinds_are_told_apart_by_content(tmp_path):
    for kind in KINDS:
        path = write(kind, tmp_path)
        assert checkpoint_kind(path) == kind
        tensors, _ = read_tensors(path)
        assert set(tensors) == set(source_model().state_dict())
    assert architecture_of(tmp_path / "own.safetensors") == ARCH and architecture_of(tmp_path / "model.pt") is None
    assert architecture_of(tmp_path / "model.dz") == ARCH


@pytest.mark.parametrize("kind", KINDS)
def test_load_model_gives_the_source_weights(tmp_path, kind):
    path = write(kind, tmp_path)
    model, _ = load_model(path, get_model(ARCH))
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), source_model()(x))
    if kind in ("deepzip", "dz"):  # these name their architecture
        assert torch.equal(load_model(path)[0](x), source_model()(x))
        assert torch.equal(load_checkpoint(path)[0](x), source_model()(x))
    else:
        with pytest.raises(CheckpointError, match=r"names no architecture; give --model NAME \(one of .*mlp30"):
            load_model(path)


def _run(capsys, *argv: str) -> str:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate(tmp_path, capsys, synthetic, kind):
    path = write(kind, tmp_path)
    doc = json.loads(_run(capsys, "evaluate", path, "--model", ARCH, "--json", "-q"))
    want = evaluate(source_model(), synthetic[1])
    assert doc["model"] == ARCH and doc["errors"] == want.errors and doc["test_error_pct"] == want.error_pct


@pytest.mark.parametrize("kind", KINDS)
def test_prune(tmp_path, capsys, synthetic, kind):
    path = write(kind, tmp_path)
    out = tmp_path / "pruned.safetensors"
    _run(capsys, "prune", path, "--model", ARCH, "-o", str(out), "--sparsity", "0.5", "--rounds", "1",
         "--epochs", "0", "-q")
    pruned, _ = load_checkpoint(out)
    src = source_model()
    kept = pruned.layers[0].weight != 0
    assert 0.45 < kept.float().mean() < 0.55
    # no retraining (--epochs 0): the kept weights are the file's own
    assert torch.equal(pruned.layers[0].weight[kept], src.layers[0].weight[kept])


@pytest.mark.parametrize("kind", KINDS)
def test_share(tmp_path, capsys, synthetic, kind):
    path = write(kind, tmp_path)
    out = tmp_path / "shared.safetensors"
    _run(capsys, "share", path, "--model", ARCH, "-o", str(out), "--bits", "3", "--no-finetune", "-q")
    shared, _ = load_checkpoint(out)
    src = source_model()
    assert torch.equal(shared.layers[0].bias, src.layers[0].bias)  # biases are not shared, and not fine-tuned here
    assert shared.layers[0].weight.unique().numel() <= 8
    err = (shared.layers[0].weight - src.layers[0].weight).abs().max()
    span = src.layers[0].weight.max() - src.layers[0].weight.min()
    assert err < 0.5 * span / 7  # within half a level of the source's weights


@pytest.mark.parametrize("kind", KINDS)
def test_ptq(tmp_path, capsys, kind):
    path = write(kind, tmp_path)
    cal = tmp_path / "cal.npy"
    x = torch.rand(32, 1, 28, 28)
    np.save(cal, x.numpy())
    out = tmp_path / "q.dz"
    _run(capsys, "ptq", "--checkpoint", path, "--model", ARCH, "--calibration", str(cal), "--max-drop", "0.02",
         "--no-gptq", "-o", str(out))
    with torch.no_grad():
        a, b = load(out, model=get_model(ARCH))(x), source_model()(x)
    assert float(torch.nn.functional.cosine_similarity(a, b).mean()) > 1 - 0.02 - 1e-4  # the bound, to the file's


@pytest.mark.parametrize("kind", KINDS)
def test_decompose(tmp_path, capsys, kind):
    path = write(kind, tmp_path)
    out = tmp_path / "d.dz"
    _run(capsys, "decompose", path, "--model", ARCH, "--method", "svd", "--rank", "layers.0=30", "--keep-larger",
         "-o", str(out), "-q")
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():  # full rank: the factors give the source layer back
        torch.testing.assert_close(load(out)(x), source_model()(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_bench(tmp_path, capsys, kind):
    path = write(kind, tmp_path)
    doc = json.loads(_run(capsys, "bench", path, "--model", ARCH, "--json", "--no-rss", "--repeats", "1",
                          "--batch", "1"))
    assert doc["architecture"] == ARCH and doc["file"] == path
    assert {r["layer"] for r in doc["runtime_layers"]} == {"layers.0", "layers.1", "layers.2"}


@pytest.mark.parametrize("kind", KINDS)
def test_distill_teacher(tmp_path, capsys, synthetic, kind):
    path = write(kind, tmp_path)
    out = tmp_path / "student.safetensors"
    _run(capsys, "distill", "--teacher", path, "--teacher-model", ARCH, "--student", ARCH, "-o", str(out),
         "--epochs", "1", "-q")
    _, meta = load_checkpoint(out)
    assert meta["distill"]["teacher_test_error_pct"] == evaluate(source_model(), synthetic[1]).error_pct


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kind", KINDS)
def test_max_bytes_bounds_every_kind_before_reading(tmp_path, capsys, synthetic, kind):
    path = write(kind, tmp_path)
    err = _one_line(capsys, "evaluate", path, "--model", ARCH, "--max-bytes", "10K")
    assert "more than the limit of 10240" in err and path in err
    assert cli.main(["evaluate", path, "--model", ARCH, "--max-bytes", "1M", "--json", "-q"]) == 0  # 95 KB is fine


def _one_line(capsys, *argv: str) -> str:
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name, content", [("notes.txt", b"just some text\n"),
                                           ("random.bin2", np.random.default_rng(0).bytes(1000))])
def test_a_file_of_no_kind_names_the_kinds_accepted(tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    for argv in (["evaluate", str(path)], ["decompose", str(path), "-o", str(tmp_path / "o.dz")],
                 ["bench", str(path)]):
        err = _one_line(capsys, *argv)
        assert f"{path}: not a file deepzip reads" in err and ACCEPTED in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_state_dict_that_does_not_fit_names_the_first_tensor(tmp_path, capsys):
    sd = source_model().state_dict()
    sd["layers.1.weight"] = torch.zeros(30, 31)
    save_file(sd, tmp_path / "bad.safetensors")
    torch.save({k: v for k, v in sd.items() if k != "layers.0.bias"}, tmp_path / "bad.pt")
    err = _one_line(capsys, "evaluate", str(tmp_path / "bad.safetensors"), "--model", ARCH)
    assert "does not fit the model mlp30: layers.1.weight has shape [30, 31] in the file, [30, 30] in the model" in err
    err = _one_line(capsys, "prune", str(tmp_path / "bad.pt"), "--model", ARCH, "-o", str(tmp_path / "o.safetensors"))
    assert "does not fit the model mlp30: layers.0.bias [30] is missing from the file (1 missing" in err
    err = _one_line(capsys, "evaluate", str(tmp_path / "bad.pt"), "--model", "lenet300")
    assert "does not fit the model lenet300: fc1.weight [300, 784] is missing" in err


def test_an_apps_command_given_another_apps_file(tmp_path, capsys):
    from deepzip.apps.g2p.recipes import STUDENT
    from deepzip.models.seq2seq import Seq2Seq

    g2p = tmp_path / "student.dz"
    save(Seq2Seq(STUDENT), g2p)
    err = _one_line(capsys, "evaluate", str(g2p))
    assert "holds a G2P encoder-decoder (seq2seq:" in err and "not an image classifier" in err
    lenet = tmp_path / "lenet.dz"
    save(get_model("lenet300"), lenet)
    for argv in (["g2p-eval", str(lenet)], ["g2p", str(lenet), "hello"]):
        err = _one_line(capsys, *argv)
        assert "holds a lenet300 model, not a G2P encoder-decoder" in err
    err = _one_line(capsys, "g2p", write("state_dict", tmp_path), "hello")
    assert "holds a unnamed model, not a G2P encoder-decoder" in err


def test_compress_source_tells_kinds_apart_as_the_reader_does(tmp_path, capsys):
    """`deepzip compress SOURCE` recognises files with the reader's own checks, so it refuses what every command
    refuses, with the same line."""
    (tmp_path / "notes.txt").write_text("just some text\n")
    err = _one_line(capsys, "compress", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "n.dz"))
    assert "notes.txt: not a file deepzip reads" in err and ACCEPTED in err
    torch.save(source_model().state_dict(), tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    err = _one_line(capsys, "compress", str(tmp_path / "legacy.bin"), "-o", str(tmp_path / "l.dz"))
    assert "a legacy (pre-1.6, not zip) torch.save file" in err
    dz = write("dz", tmp_path)
    err = _one_line(capsys, "compress", dz, "-o", str(tmp_path / "again.dz"))
    assert "already a .dz file" in err
    sd = write("state_dict", tmp_path)
    assert cli.main(["compress", sd, "-o", str(tmp_path / "sd.dz")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy.bin", "model.dz", "model.pt", "notes.txt", "sd.dz"]


def test_an_image_command_given_a_hugging_face_model(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    assert cli.main(["compress", str(tmp_path / "bert"), "-o", str(tmp_path / "bert.dz")]) == 0
    capsys.readouterr()
    for path in (tmp_path / "bert", tmp_path / "bert.dz"):  # the folder and its .dz: the same reader, the same line
        err = _one_line(capsys, "evaluate", str(path))
        assert f"{path}: holds a Hugging Face BertModel, not an image classifier" in err
