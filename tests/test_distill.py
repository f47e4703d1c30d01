"""Distillation: the loss against brute-force formulas, its T^2 gradient scaling, caching, jitter, a tiny run."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils import parametrize

from deepzip.apps.mnist.data import synthetic_mnist
from deepzip.apps.mnist.models import MLP
from deepzip.cli import main
from deepzip.models import get_model
from deepzip.techniques.distill import (
    distill,
    distill_loss_fn,
    distillation_loss,
    jitter,
    teacher_logits,
    teacher_loss_for,
)
from deepzip.techniques.prune import prune_
from deepzip.train import TrainConfig, fit


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than several, and much faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def confident_teacher():
    """An mlp30 trained to fit 128 synthetic images, so its soft targets carry something to learn."""
    torch.manual_seed(0)
    data = synthetic_mnist(128)
    teacher = get_model("mlp30")
    cfg = TrainConfig(epochs=15, lr=0.05, batch_size=32, progress=False)
    fit(teacher, data, cfg)
    return teacher, data, cfg


def _brute(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, alpha: float) -> float:
    """The loss written out with explicit exp/log, one example at a time, in float64."""
    s, t = s.double(), t.double()
    total = 0.0
    for i in range(s.shape[0]):
        p = [math.exp(v / T) for v in t[i].tolist()]
        q = [math.exp(v / T) for v in s[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        kl = sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q))
        e = [math.exp(v) for v in s[i].tolist()]
        ce = -math.log(e[int(y[i])] / sum(e))
        total += alpha * T * T * kl + (1 - alpha) * ce
    return total / s.shape[0]


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.5, 0.9), (20.0, 0.7), (4.0, 1.0)])
def test_loss_matches_brute_force(T: float, alpha: float) -> None:
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(6, 5, generator=g), 3 * torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    assert float(distillation_loss(s, t, y, T, alpha)) == pytest.approx(_brute(s, t, y, T, alpha), rel=1e-5)


def test_alpha_zero_is_cross_entropy_and_teacher_gets_no_gradient() -> None:
    s, t = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    loss = distillation_loss(s, t, y, temperature=7.0, alpha=0.0)
    assert torch.equal(loss, torch.nn.functional.cross_entropy(s, y))
    distillation_loss(s, t, y, temperature=7.0, alpha=0.9).backward()
    assert t.grad is None and s.grad is not None


def test_gradient_scale_is_stable_across_temperature() -> None:
    g = torch.Generator().manual_seed(1)
    s0, t = 2 * torch.randn(64, 10, generator=g), 2 * torch.randn(64, 10, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    norms = []
    for T in (1.0, 2.0, 4.0, 8.0, 20.0):
        s = s0.clone().requires_grad_(True)
        distillation_loss(s, t, y, T, alpha=1.0).backward()
        norms.append(float(s.grad.norm()))
    assert max(norms) / min(norms) < 3.0, norms
    # without the T^2 factor the T=20 gradient would be ~T^2 smaller: the factor is doing the work
    s = s0.clone().requires_grad_(True)
    (distillation_loss(s, t, y, 20.0, alpha=1.0) / 400).backward()
    assert max(norms) / float(s.grad.norm()) > 100


def test_bad_inputs_raise_clear_errors() -> None:
    s, y = torch.randn(4, 10), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="student has 10 classes but the teacher has 12"):
        distillation_loss(s, torch.randn(4, 12), y, 4.0, 0.5)
    with pytest.raises(ValueError, match="temperature=0"):
        distillation_loss(s, torch.randn(4, 10), y, 0.0, 0.5)
    with pytest.raises(ValueError, match="alpha=1.5"):
        distillation_loss(s, torch.randn(4, 10), y, 4.0, 1.5)
    with pytest.raises(ValueError, match="labels=None"):
        distillation_loss(s, torch.randn(4, 10), None, 4.0, 0.5)
    with pytest.raises(ValueError, match="beyond the teacher cache"):
        distill_loss_fn(torch.randn(3, 10), 4.0, 0.5)(s, y, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="needs data="):
        distill_loss_fn(get_model("mlp30"), 4.0, 0.5)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 12))
    with pytest.raises(ValueError, match="student has 10 classes but the teacher has 12"):
        distill(get_model("mlp30"), teacher, synthetic_mnist(16), TrainConfig(epochs=1, progress=False),
                temperature=4.0, alpha=0.5)


def test_cached_logits_equal_live_teacher() -> None:
    data = synthetic_mnist(96)
    teacher = MLP((30,), dropout=0.5, input_dropout=0.2)  # dropout: both paths must run it in eval mode
    teacher.train()
    cached = distill_loss_fn(teacher_logits(teacher, data, batch_size=40), 4.0, 0.8)
    live = distill_loss_fn(teacher, 4.0, 0.8, data=data)
    idx = torch.tensor([5, 0, 77, 31])
    logits = torch.randn(4, 10)
    torch.testing.assert_close(cached(logits, data.y[idx], idx), live(logits, data.y[idx], idx))
    assert teacher.training  # left as it was


def test_teacher_loss_for_snapshots_a_pruned_model() -> None:
    data = synthetic_mnist(64)
    model = prune_(get_model("lenet300"), sparsity=0.5)
    loss_fn = teacher_loss_for(model, data, temperature=2.0, alpha=1.0)
    assert parametrize.is_parametrized(model.fc1, "weight")  # the original keeps its mask
    idx = torch.arange(10)
    with torch.no_grad():
        model.eval()
        assert float(loss_fn(model(data.x[idx]), data.y[idx], idx)) == pytest.approx(0.0, abs=1e-6)


def test_jitter_is_a_bounded_zero_filled_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 12, 12)
    y = jitter(x, g, max_shift=2)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(32):  # brute force: each output is exactly one of the 25 shifts of its input
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if torch.equal(y[i, 0], padded[i, 0, 2 - dy:14 - dy, 2 - dx:14 - dx])]
        assert len(shifts) == 1
    assert len({tuple(jitter(x, torch.Generator().manual_seed(s))[0, 0, 5].tolist()) for s in range(8)}) > 1
    assert torch.equal(jitter(x, g, max_shift=0), x)
    with pytest.raises(ValueError, match="max_shift=-1"):
        jitter(x, g, max_shift=-1)


@pytest.mark.parametrize("cache", [True, False])
def test_tiny_distillation_reduces_the_loss(confident_teacher, cache: bool) -> None:
    teacher, data, cfg = confident_teacher
    torch.manual_seed(1)
    student = get_model("mlp30")
    loss_fn = distill_loss_fn(teacher_logits(teacher, data), 4.0, 0.9)
    idx = torch.arange(len(data))
    with torch.no_grad():
        before = float(loss_fn(student(data.x), data.y, idx))
    log = distill(student, teacher, data, cfg, temperature=4.0, alpha=0.9, cache=cache)
    with torch.no_grad():
        after = float(loss_fn(student(data.x), data.y, idx))
    assert after < 0.7 * before, (before, after, log)


def test_live_teacher_on_augmented_input(confident_teacher) -> None:
    teacher, data, cfg = confident_teacher
    cfg = TrainConfig(**{**cfg.to_dict(), "epochs": 3})
    students = []
    for cache, augment in [(True, None), (False, lambda x, g: x.clone())]:
        torch.manual_seed(1)
        students.append(get_model("mlp30"))
        distill(students[-1], teacher, data, cfg, temperature=4.0, alpha=0.9, cache=cache, augment=augment)
    # with an identity augment, running the teacher per batch on the augmented input is the cached path exactly
    for p, q in zip(students[0].parameters(), students[1].parameters()):
        torch.testing.assert_close(p, q)
    torch.manual_seed(1)
    log = distill(get_model("mlp30"), teacher, data, cfg, temperature=4.0, alpha=0.9, cache=False, augment=jitter)
    assert log[-1]["train_loss"] < log[0]["train_loss"]


def test_cli_rejects_bad_alpha_and_missing_teacher(tmp_path, capsys) -> None:
    assert main(["distill", "--teacher", str(tmp_path / "t.safetensors"), "-o", str(tmp_path / "s.safetensors"),
                 "--alpha", "2", "-q"]) == 2
    assert "--alpha 2.0" in capsys.readouterr().err
    assert main(["distill", "--teacher", str(tmp_path / "t.safetensors"), "-o", str(tmp_path / "s.safetensors"),
                 "-q"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_cli_train_jitter_sets_the_config(tmp_path, monkeypatch) -> None:
    import deepzip.cli.model as cli
    import deepzip.train as train_mod

    seen = []

    def spy_fit(model, data, cfg, **kw):  # record the jitter, then train as usual
        seen.append(cfg.jitter)
        return fit(model, data, cfg, **kw)

    monkeypatch.setattr(cli, "_data", lambda a, label_with=None: (synthetic_mnist(64), synthetic_mnist(32, seed=1)))
    monkeypatch.setattr(train_mod, "fit", spy_fit)
    for flag in ([], ["--jitter"], ["--jitter", "1"], ["--jitter", "0"]):
        assert main(["train", "--model", "mlp30", "--epochs", "1", "-o", str(tmp_path / "m.safetensors"), "-q",
                     *flag]) == 0
    assert seen == [0, 2, 1, 0]  # mlp30's recipe has none; a bare --jitter is 2 pixels
    seen.clear()
    assert main(["train", "--model", "lenet300", "--epochs", "1", "-o", str(tmp_path / "m.safetensors"), "-q"]) == 0
    assert seen == [2]  # the LeNet recipes jitter by default


def test_fit_applies_the_configured_jitter(monkeypatch) -> None:
    import deepzip.train as train_mod

    calls = []

    def spy(x, generator, max_shift=2):
        calls.append(max_shift)
        return jitter(x, generator, max_shift)

    monkeypatch.setattr(train_mod, "jitter", spy)
    data = synthetic_mnist(64)
    fit(get_model("mlp30"), data, TrainConfig(epochs=1, batch_size=32, jitter=1, progress=False))
    assert calls == [1, 1]  # once per batch, with the configured shift
    calls.clear()
    fit(get_model("mlp30"), data, TrainConfig(epochs=1, batch_size=32, jitter=0, progress=False))
    assert calls == []
    with pytest.raises(ValueError, match="jitter="):
        TrainConfig(jitter=-1)


def test_mlp1200_teacher_dropout_is_light() -> None:
    m = get_model("mlp1200")  # a KD teacher must fit its training set: heavy dropout made it underfit
    assert (m.dropout, m.input_dropout) == (0.2, 0.1)
