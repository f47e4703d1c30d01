"""The CLI beyond MNIST: a user's model file and data function, with one-line errors when they do not fit."""

from __future__ import annotations

import textwrap

import torch

from deepzip.data import load_user_data
from deepzip.models import get_model

USER = textwrap.dedent('''
    import torch
    from torch import nn

    def make():
        return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def needs_args(width):
        return nn.Linear(8, width)

    def data():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(300, 8, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
        loader = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)]  # batches, as a DataLoader yields
        return loader, (x[200:], y[200:])

    def inputs_only():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(300, 8, generator=g)
        loader = [(x[i:i + 50],) for i in range(0, 200, 50)]  # as DataLoader(TensorDataset(x)) yields: no labels
        return loader, x[200:]

    def narrow_inputs_only():
        return torch.randn(20, 5), torch.randn(10, 5)

    def narrow_data():
        return (torch.randn(20, 5), torch.zeros(20).long()), (torch.randn(10, 5), torch.zeros(10).long())
''')


def run_here(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in this process (faster than a subprocess): exit code, stdout, stderr."""
    from deepzip import cli

    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_model_file_and_data_function_without_pythonpath(tmp_path, capsys):
    (tmp_path / "user.py").write_text(USER)
    m = get_model(f"{tmp_path}/user.py:make", trust_code=True)
    train, test = load_user_data(f"{tmp_path}/user.py:data")
    assert len(train) == 200 and len(test) == 100 and m(train.x[:4]).shape == (4, 3)
    rc, out, err = run_here(capsys, "train", "--model", f"{tmp_path}/user.py:make", "--data",
                            f"{tmp_path}/user.py:data", "--epochs", "2", "-q", "-o", str(tmp_path / "m.safetensors"))
    assert rc == 0, err
    assert "test error" in out and (tmp_path / "m.safetensors").exists()


def test_factory_with_arguments_and_model_not_fitting_data_are_one_line(tmp_path, capsys):
    (tmp_path / "user.py").write_text(USER)
    rc, _, err = run_here(capsys, "train", "--model", f"{tmp_path}/user.py:needs_args", "--data",
                          f"{tmp_path}/user.py:data", "-o", str(tmp_path / "x.safetensors"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "needs_args() needs arguments (width)" in err
    rc, _, err = run_here(capsys, "train", "--model", f"{tmp_path}/user.py:make", "--data",
                          f"{tmp_path}/user.py:narrow_data", "-o", str(tmp_path / "x.safetensors"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "does not fit the data: inputs of shape (5,)" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_ratio_counts_parameters_not_batchnorm_statistics(tmp_path):
    from deepzip.io.serialize import save
    from deepzip.report import file_report

    (tmp_path / "user.py").write_text(USER)
    m = get_model(f"{tmp_path}/user.py:make", trust_code=True)
    save(m, tmp_path / "m.dz")
    params = sum(p.numel() for p in m.parameters())
    assert file_report(tmp_path / "m.dz")["params_total"] == params < sum(v.numel() for v in m.state_dict().values())
    assert torch.is_tensor(m.state_dict()["1.running_mean"])


def test_inputs_only_data_is_labelled_by_the_model_where_there_is_one(tmp_path, capsys):
    """Inputs without labels: train refuses in one line; prune labels them with the given model's predictions, so
    its 'test error' is disagreement with that model (0% before pruning, by construction); evaluate --data uses the
    user's test split, not MNIST."""
    (tmp_path / "user.py").write_text(USER)
    user, ckpt = f"{tmp_path}/user.py", str(tmp_path / "m.safetensors")
    rc, _, err = run_here(capsys, "train", "--model", f"{user}:make", "--data", f"{user}:inputs_only", "-o", ckpt)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "inputs only (no labels)" in err
    assert not (tmp_path / "m.safetensors").exists()
    rc, _, err = run_here(capsys, "train", "--model", f"{user}:make", "--data", f"{user}:data", "--epochs", "2",
                          "-q", "-o", ckpt)
    assert rc == 0, err
    rc, out, err = run_here(capsys, "prune", ckpt, "--model", f"{user}:make", "--data", f"{user}:inputs_only",
                            "--sparsity", "0=0.5,3=0.3", "--epochs", "1", "--rounds", "1",
                            "-o", str(tmp_path / "p.safetensors"))
    assert rc == 0, err
    assert "labelled with the model's own predictions (300 inputs)" in err
    assert "test error 0.00% ->" in out  # the unpruned model agrees with itself
    rc, out, err = run_here(capsys, "evaluate", ckpt, "--model", f"{user}:make", "--data", f"{user}:data", "--json")
    assert rc == 0, err
    import json

    assert json.loads(out)["n"] == 100  # the user's test split
    rc, _, err = run_here(capsys, "evaluate", ckpt, "--model", f"{user}:make", "--data", f"{user}:inputs_only")
    assert rc == 2 and "inputs only (no labels)" in err
    rc, _, err = run_here(capsys, "prune", ckpt, "--model", f"{user}:make", "--data", f"{user}:narrow_inputs_only",
                          "--sparsity", "0=0.5", "-o", str(tmp_path / "q.safetensors"))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "does not fit the data: inputs of shape (5,)" in err
    assert not (tmp_path / "q.safetensors").exists()
