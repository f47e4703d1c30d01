"""CLI around .dz files: inspect, decompress, report, evaluate; bad files give one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from deepzip import cli
from deepzip.io.serialize import save
from deepzip.models import get_model
from deepzip.techniques.prune import prune_
from deepzip.techniques.share import share_weights_


@pytest.fixture(scope="module")
def dz(tmp_path_factory):
    torch.manual_seed(0)
    m = get_model("lenet300")
    with torch.no_grad():  # bell-shaped like trained weights, so the codes are not uniform
        for p in m.parameters():
            p.normal_(0, 0.05)
    m = prune_(m, sparsity={"fc1": 0.92, "fc2": 0.91, "fc3": 0.74})
    share_weights_(m, 5, progress=False)
    path = tmp_path_factory.mktemp("dz") / "m.dz"
    save(m, path)
    return path, m


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepzip.cli", *argv], capture_output=True, text=True, timeout=120)


def test_inspect_json_matches_the_file(dz, capsys):
    path, _ = dz
    assert cli.main(["inspect", str(path), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["bytes"] == path.stat().st_size
    assert rep["params_total"] == 266_610
    layers = {r["tensor"]: r for r in rep["layers"]}
    assert layers["fc1.weight"]["kept_pct"] == pytest.approx(8.0, abs=0.01)
    assert layers["fc1.weight"]["bits_index_fixed"] <= 5
    assert layers["fc1.weight"]["bits_index_huffman"] < layers["fc1.weight"]["bits_index_fixed"]
    assert sum(r["bytes"] for r in rep["layers"]) + rep["header_and_padding_bytes"] == rep["bytes"]


def test_decompress_gives_the_same_weights(dz, tmp_path):
    path, m = dz
    out = tmp_path / "plain.safetensors"
    assert cli.main(["decompress", str(path), "-o", str(out)]) == 0
    sd = load_file(out)
    assert torch.equal(sd["fc1.weight"], m.fc1.weight.detach())
    assert torch.equal(sd["fc3.bias"], m.fc3.bias.detach())


def test_report_writes_markdown_and_pictures(dz, tmp_path):
    path, _ = dz
    assert cli.main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "fc1.weight" in md and "first_layer_mask.png" in md
    assert (tmp_path / "rep" / "first_layer_mask.png").stat().st_size > 1000
    assert (tmp_path / "rep" / "sizes.png").exists()


def test_evaluate_rebuilds_from_the_file(dz, capsys, monkeypatch):
    from deepzip.apps.mnist import data

    path, m = dz
    test = data.synthetic_mnist(64, seed=1)
    monkeypatch.setattr(data, "load_mnist", lambda split, root=None, quiet=False: test)
    assert cli.main(["evaluate", str(path), "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    expect = float((m(test.x).argmax(1) != test.y).float().mean() * 100)
    assert out["test_error_pct"] == pytest.approx(expect)
    assert out["bytes"] == path.stat().st_size and out["ratio"] == pytest.approx(4 * 266_610 / out["bytes"])


@pytest.mark.parametrize("cut", [0, 10, 100, -1])
def test_truncated_or_foreign_file_is_one_line(dz, tmp_path, cut, capsys):
    path, _ = dz
    blob = path.read_bytes()
    bad = tmp_path / "bad.dz"
    bad.write_bytes(blob[:cut] if cut >= 0 else b"GIF89a" + blob[6:])
    for argv in (["inspect", str(bad)], ["evaluate", str(bad)], ["decompress", str(bad), "-o", str(tmp_path / "o")]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "bad.dz" in err, err
    assert not (tmp_path / "o").exists()


def test_bad_file_in_a_real_process(dz, tmp_path):
    bad = tmp_path / "bad.dz"
    bad.write_bytes(dz[0].read_bytes()[:-7])
    r = run("inspect", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compress_a_users_own_model(tmp_path, monkeypatch, capsys):
    """--model package.module:factory with --checkpoint, the whole pipeline, then evaluate the file."""
    import deepzip.cli.dz as cdz
    from deepzip.apps.mnist import data
    from deepzip.io.checkpoint import save_checkpoint

    train, test = data.synthetic_mnist(256), data.synthetic_mnist(128, seed=1)
    monkeypatch.setattr(cdz, "_data", lambda a, label_with=None: (train, test))
    torch.manual_seed(0)
    ckpt = tmp_path / "mine.safetensors"
    save_checkpoint(get_model("deepzip.apps.mnist.models:LeNet300", trust_code=True), ckpt)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"sparsity": {"fc1": 0.9, "fc2": 0.9, "fc3": 0.5}, "bits": 4, "prune_rounds": 1,
                               "retrain_epochs": 1, "finetune_epochs": 1}))
    out = tmp_path / "mine.dz"
    argv = ["compress", "--model", "deepzip.apps.mnist.models:LeNet300", "--checkpoint", str(ckpt), "--config",
    str(cfg),
            "-o", str(out), "--workdir", str(tmp_path / "w"), "-q"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{out.stat().st_size:,} bytes on disk" in printed
    from deepzip import codec

    assert codec.read(out).architecture == "deepzip.apps.mnist.models:LeNet300"
    # --json alone: stdout is one JSON object (the run resumes from the stages in w/), as evaluate/inspect --json
    assert cli.main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bytes"] == out.stat().st_size
    # the file names the user's factory: building it from the file needs --trust-code
    from deepzip.errors import UntrustedCodeError
    from deepzip.io.serialize import load

    with pytest.raises(UntrustedCodeError):
        load(out)
    assert load(out, trust_code=True, trainable=True).fc1.weight.shape == (300, 784)
    assert cli.main(["compress", "--model", "nosuchpkg.mod:f", "-q"]) == 2
    assert "nosuchpkg" in capsys.readouterr().err
