"""The CLI: one-line errors and non-zero exits on bad input; train -> prune -> evaluate on synthetic data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from deepzip import cli
from deepzip.io.checkpoint import save_checkpoint
from deepzip.models import get_model


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepzip.cli", *argv], capture_output=True, text=True, timeout=120)


def one_error_line(r: subprocess.CompletedProcess, command: str) -> str:
    """The run failed the way the CLI promises: exit 2, no traceback, one line on stderr naming the command."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith(f"deepzip {command}: error: "), r.stderr
    return lines[0]


def test_missing_checkpoint_is_one_line_nonzero(tmp_path):
    r = run("evaluate", str(tmp_path / "nope.safetensors"))
    assert "nope.safetensors" in one_error_line(r, "evaluate")


def test_foreign_checkpoint_is_one_line_nonzero(tmp_path):
    bad = tmp_path / "foreign.safetensors"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    for argv in (["evaluate", str(bad)], ["prune", str(bad), "-o", str(tmp_path / "o.safetensors")]):
        assert "foreign.safetensors" in one_error_line(run(*argv), argv[0])
    assert not (tmp_path / "o.safetensors").exists()


def test_checkpoint_of_another_model_is_refused(tmp_path):
    p = tmp_path / "l5.safetensors"
    save_checkpoint(get_model("lenet5"), p)
    r = run("evaluate", str(p), "--model", "lenet300")
    assert "does not fit" in one_error_line(r, "evaluate")


def test_prune_and_evaluate_in_process(tmp_path, monkeypatch):
    from deepzip.apps.mnist import data

    monkeypatch.setattr(cli.model, "_data",
                        lambda a, label_with=None: (data.synthetic_mnist(256), data.synthetic_mnist(128, seed=1)))
    monkeypatch.setattr(data, "load_mnist", lambda split, root=None, quiet=False: data.synthetic_mnist(128, seed=1))
    torch.manual_seed(0)
    src = tmp_path / "m.safetensors"
    save_checkpoint(get_model("lenet300"), src)
    out = tmp_path / "p.safetensors"
    assert cli.main(["prune", str(src), "-o", str(out), "--sparsity", "fc1=0.9,fc2=0.8,fc3=0.5",
                     "--rounds", "1", "--epochs", "1", "-q"]) == 0
    assert out.stat().st_size < src.stat().st_size
    assert cli.main(["evaluate", str(out), "--json", "-q"]) == 0


def test_bad_sparsity_value_is_reported(tmp_path, capsys, monkeypatch):
    from deepzip.apps.mnist import data

    monkeypatch.setattr(cli.model, "_data",
                        lambda a, label_with=None: (data.synthetic_mnist(64), data.synthetic_mnist(64, seed=1)))
    src = tmp_path / "m.safetensors"
    save_checkpoint(get_model("lenet300"), src)
    assert cli.main(["prune", str(src), "-o", str(tmp_path / "o.safetensors"), "--sparsity", "fc1=1.5", "-q"]) == 2
    assert "fc1.weight: sparsity=1.5" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_evaluate_json_has_required_keys(tmp_path, capsys, monkeypatch):
    from deepzip.apps.mnist import data

    monkeypatch.setattr(data, "load_mnist", lambda split, root=None, quiet=False: data.synthetic_mnist(64, seed=1))
    src = tmp_path / "m.safetensors"
    save_checkpoint(get_model("lenet300"), src)
    assert cli.main(["evaluate", str(src), "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"test_error_pct", "params_nonzero", "bytes", "ratio"} <= set(out)


@pytest.mark.parametrize("argv, error", [
    (["prune"], "deepzip prune: error: the following arguments are required: checkpoint, -o/--output"),
    (["train"], "deepzip train: error: the following arguments are required: -o/--output"),
    (["frobnicate"], "deepzip: error: argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_usage_errors_exit_2_with_one_error_line(argv, error):
    """argparse's usage summary, then one error line naming what is wrong; no traceback."""
    r = run(*argv)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines[-1].startswith(error) and [x for x in lines if "error" in x] == [lines[-1]], r.stderr
    assert lines[0].startswith("usage: deepzip") and all(x.startswith(" ") for x in lines[1:-1]), r.stderr
