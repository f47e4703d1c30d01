"""``deepzip decompose``: the per-layer table and JSON agree with the file written, the file loads by itself, and
bad ranks / modes / files give one line naming the layer and a non-zero exit, writing nothing."""

from __future__ import annotations

import json

import pytest
import torch

from deepzip import cli
from deepzip.io.checkpoint import save_checkpoint
from deepzip.io.serialize import load, load_state_dict
from deepzip.models import get_model
from deepzip.techniques.lowrank import TTConv2d, TTLinear, Tucker2Conv, lowrank_spec, parse_rank, tt_modes


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "lenet5.safetensors"
    save_checkpoint(get_model("lenet5"), path)
    return path


def test_tucker2_explicit_ranks_table_json_and_file(ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "d.dz"
    assert cli.main(["decompose", str(ckpt), "-o", str(out), "-q", "--rank", "conv2=8x6", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["layers"]
    assert (row["layer"], row["kind"], row["ranks"]) == ("conv2", "tucker2", "8x6")
    assert row["params_before"] == 25050 and row["params_after"] == 20 * 6 + 8 * 6 * 25 + 8 * 50 + 50
    assert row["macs_before"] == 8 * 8 * 50 * 20 * 25
    assert row["macs_after"] == 12 * 12 * 6 * 20 + 8 * 8 * 8 * 6 * 25 + 8 * 8 * 50 * 8
    assert doc["total"]["macs_before"] - doc["total"]["macs_after"] == row["macs_before"] - row["macs_after"]
    m = load(out)  # the file alone
    assert isinstance(m.conv2, Tucker2Conv) and lowrank_spec(m)[0]["ranks"] == [8, 6]
    assert doc["bytes"] == out.stat().st_size
    assert cli.main(["decompose", str(ckpt), "-o", str(tmp_path / "e.dz"), "-q", "--rank", "conv2=4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["ranks"] == "4x4"  # one number: R_out = R_in


def test_svd_energy_and_tt_print_a_table(ckpt, tmp_path, capsys) -> None:
    assert cli.main(["decompose", str(ckpt), "-o", str(tmp_path / "s.dz"), "-q", "--method", "svd",
                     "--rank", "energy=0.5", "--layers", "fc1"]) == 0
    text = capsys.readouterr().out
    assert "fc1" in text and "svd" in text and "fc2" not in text.split("params ")[0]
    assert cli.main(["decompose", str(ckpt), "-o", str(tmp_path / "t.safetensors"), "-q", "--method", "tt",
                     "--rank", "fc1=4", "--modes", "fc1=8x10x10:5x10x10"]) == 0
    assert "1x4x4x1" in capsys.readouterr().out


def test_tt_convs_and_linears_by_energy_reload_from_the_file(ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "tt.dz"
    assert cli.main(["decompose", str(ckpt), "-o", str(out), "-q", "--factorization", "tt", "--rank", "energy=0.9",
                     "--modes", "conv2=4x5:5x10", "--tt-cores", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    kinds = {r["layer"]: (r["kind"], r["skipped"]) for r in doc["layers"]}
    assert kinds["conv2"] == ("ttconv", "") and kinds["fc1"] == ("tt", "")
    m = load(out)  # the file alone rebuilds both kinds
    assert isinstance(m.conv2, TTConv2d) and m.conv2.in_modes == (4, 5) and isinstance(m.fc1, TTLinear)
    assert doc["total"]["params_after"] == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(("argv", "pattern"), [
    (["--rank", "conv2=60x4"], "conv2: R_out=60 exceeds the layer's 50 output channels"),
    (["--rank", "conv2=0x4"], r"conv2: ranks=\(0, 4\)"),
    (["--rank", "conv2=-3"], r"conv2: ranks=\(-3, -3\)"),
    (["--method", "svd", "--rank", "fc1=600"], r"fc1: rank=600 exceeds min\(out, in\)=500"),
    (["--method", "svd", "--rank", "conv2=4"], "conv2: a Conv2d, not a Linear"),
    (["--method", "tt", "--rank", "fc1=4", "--modes", "fc1=8x10x10:5x10x11"],
     r"fc1: modes \(8, 10, 10\) x \(5, 10, 11\) give 800 x 550 features, the layer has 800 in, 500 out"),
    (["--factorization", "tt", "--rank", "conv2=4", "--modes", "conv2=4x5:5x5"],
     r"conv2: modes \(4, 5\) x \(5, 5\) give 20 x 25 channels, the layer has 20 in, 50 out"),
    (["--factorization", "tt", "--rank", "conv2=4x4"], "conv2: rank 4x4, expected one largest TT rank"),
    (["--factorization", "tt", "--rank", "conv2=4", "--modes", "fc1=8x10x10:5x10x10"], "--modes fc1: that layer"),
    (["--rank", "energy=2"], "energy=2.0"),
    (["--rank", "fc1"], "expected vbmf, energy=F"),
    (["--rank", "conv9=4x4"], "conv9: unknown layer"),
])
def test_bad_input_one_line_exit_2_nothing_written(ckpt, tmp_path, capsys, argv, pattern) -> None:
    out = tmp_path / "x.dz"
    assert cli.main(["decompose", str(ckpt), "-o", str(out), "-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("deepzip decompose: error:")
    assert __import__("re").search(pattern, err), err
    assert not out.exists()


def test_missing_file_and_overwriting_the_input(ckpt, tmp_path, capsys) -> None:
    assert cli.main(["decompose", str(tmp_path / "none.dz"), "-o", str(tmp_path / "o.dz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["decompose", str(ckpt), "-o", str(ckpt), "-q"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err


def test_parsers() -> None:
    assert parse_rank("vbmf") == ("vbmf", 0.9, None)
    assert parse_rank("fc1=3,conv2=4X5") == ("vbmf", 0.9, {"fc1": 3, "conv2": (4, 5)})
    for n, d in [(784, 4), (1024, 3), (97, 2), (1, 3)]:
        modes = tt_modes(n, d)
        assert len(modes) == d and torch.tensor(modes).prod().item() == n


def test_decompose_a_hugging_face_model_folder_and_its_dz(tmp_path, capsys) -> None:
    """A text model takes token ids: its MACs are counted on (1, T) integer ids, not on an image; an input shape it
    does not take gives one line naming the shape (it used to end in "too many values to unpack")."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    assert cli.main(["compress", str(tmp_path / "bert"), "-o", str(tmp_path / "bert.dz"), "-q"]) == 0
    capsys.readouterr()
    for src in (tmp_path / "bert", tmp_path / "bert.dz"):
        out = tmp_path / f"{src.name}.svd.dz"
        assert cli.main(["decompose", str(src), "-o", str(out), "-q", "--factorization", "svd", "--rank",
                         "pooler.dense=4", "--input-shape", "6", "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)["layers"]
        assert (row["layer"], row["kind"], row["ranks"]) == ("pooler.dense", "svd", 4)
        assert row["macs_before"] == 16 * 16 and row["macs_after"] == 16 * 4 + 4 * 16  # the pooler sees one token
        sd = load_state_dict(out)  # the file holds the rank-4 factors of the pooler and the other layers as they were
        assert sorted(v.shape for k, v in sd.items() if k.startswith("pooler.dense.") and v.dim() == 2) == [(4, 16),
                                                                                                          (16, 4)]
        assert sd["encoder.layer.0.output.dense.weight"].shape == (16, 32)
        bad = tmp_path / f"{src.name}.bad.dz"
        assert cli.main(["decompose", str(src), "-o", str(bad), "-q", "--factorization", "svd",
                         "--input-shape", "4,4"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "input of shape (1, 4, 4): the model does not accept it" in err
        assert not bad.exists()
