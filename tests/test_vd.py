"""Sparse variational dropout: the KL approximation, local reparametrisation, masks, and the pipeline stage."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepzip.pipeline import PipelineConfig
from deepzip.techniques.prune import get_mask
from deepzip.techniques.vd import (
    K1,
    K2,
    K3,
    KLWeight,
    VDConv2d,
    VDLinear,
    kl_divergence,
    log_alpha,
    shrink_vd_,
    sparsify_vd_,
    variational_dropout_,
    vd_loss_fn,
    vd_table,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_kl_matches_the_papers_formula_and_falls_with_alpha() -> None:
    m = variational_dropout_(nn.Sequential(nn.Linear(3, 2)))[0]
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[0.5, -0.2, 1.0], [0.1, 0.3, -0.7]]))
    for ls2 in (-10.0, -3.0, 0.0, 2.0):
        with torch.no_grad():
            m.log_sigma2.fill_(ls2)
        la = (ls2 - torch.log(m.weight.detach() ** 2 + 1e-8)).clamp(-8, 8)
        ref = -(K1 * torch.sigmoid(K2 + K3 * la) - 0.5 * torch.log1p(torch.exp(-la)) - K1).sum()
        assert torch.allclose(m.kl(), ref, atol=1e-5)
    las = torch.linspace(-8, 8, 50)
    kl = -(K1 * torch.sigmoid(K2 + K3 * las) - 0.5 * torch.log1p(torch.exp(-las)) - K1)
    assert bool((kl[1:] < kl[:-1]).all()), "KL must fall as alpha grows (noise costs nothing under the prior)"
    assert float(kl.min()) >= 0


def test_local_reparametrisation_has_the_right_moments() -> None:
    torch.manual_seed(1)
    lin = variational_dropout_(nn.Sequential(nn.Linear(6, 3)))[0]
    with torch.no_grad():
        lin.log_sigma2.copy_(torch.log(lin.weight ** 2) + math.log(0.25))  # alpha = 0.25 everywhere
    x = torch.randn(1, 6).expand(20000, 6)
    lin.train()
    out = lin(x)
    mean = F.linear(x[:1], lin.weight, lin.bias)
    var = F.linear(x[:1] ** 2, 0.25 * lin.weight ** 2)
    tol = 4 * float(var.detach().max().sqrt()) / math.sqrt(20000) + 1e-3
    assert torch.allclose(out.mean(0, keepdim=True), mean, atol=tol)
    assert torch.allclose(out.var(0, keepdim=True), var, rtol=0.05)


def test_eval_is_deterministic_and_sparsify_keeps_outputs() -> None:
    m = _net()
    variational_dropout_(m)
    assert isinstance(m[0], VDConv2d) and isinstance(m[3], VDLinear)
    with torch.no_grad():
        for layer in (m[0], m[3]):
            noisy = torch.rand_like(layer.weight) < 0.7
            layer.log_sigma2[noisy] = 6.0  # log alpha > 3 for these: pruned
    m.eval()
    x = torch.rand(5, 1, 6, 6)
    with torch.no_grad():
        before = m(x)
        assert torch.equal(before, m(x))
    rows = {r["layer"]: r for r in vd_table(m)}
    sparsify_vd_(m)
    with torch.no_grad():
        after = m(x)
    assert torch.allclose(before, after, atol=1e-6)
    for name, layer in (("0", m[0]), ("3", m[3])):
        mask = get_mask(layer)
        assert mask is not None and int(mask.sum()) == rows[name]["kept"]
        assert bool((layer.weight[~mask] == 0).all())


def test_pruned_weights_start_pruned_and_unsupported_layers_warn() -> None:
    from deepzip.techniques.prune import prune_

    m = nn.Sequential(nn.Linear(8, 8), nn.ConvTranspose2d(2, 2, 3))
    prune_(m, {"0": 0.5})
    with pytest.warns(UserWarning, match=r"1 \(ConvTranspose2d\).*magnitude pruning"):
        variational_dropout_(m)
    assert isinstance(m[0], VDLinear) and isinstance(m[1], nn.ConvTranspose2d)
    zero = m[0].weight == 0
    assert int(zero.sum()) == 32 and bool((m[0].log_alpha()[zero] == 8).all())


def test_training_prunes_an_overparametrised_layer() -> None:
    """A few hundred steps on a task that needs 2 of 40 inputs: VD drops most of the other weights."""
    torch.manual_seed(0)
    x = torch.randn(512, 40)
    y = (x[:, 0] + x[:, 1] > 0).long()
    m = variational_dropout_(nn.Sequential(nn.Linear(40, 2)), log_sigma2=-6.0)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    loss_fn = vd_loss_fn(m, 512, lambda: 5.0)
    for _ in range(500):
        opt.zero_grad()
        loss_fn(m(x), y, torch.arange(512)).backward()
        opt.step()
    kept = m[0].kept()
    assert bool(kept[:, :2].all()), "the informative weights survive"
    assert int(kept[:, 2:].sum()) <= 25, f"{int(kept[:, 2:].sum())} of 76 useless weights kept"
    assert float(kl_divergence(m).detach()) > 0


def test_kl_ramp() -> None:
    r = KLWeight(2, 6)
    assert [r.at(e) for e in (0, 1.9, 2, 4, 6, 10)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]


def test_log_alpha_is_clipped_and_finite_at_zero_weights() -> None:
    la = log_alpha(torch.tensor([0.0, 1e-12, 1.0]), torch.tensor([-10.0, -10.0, -30.0]))
    assert la.tolist() == [8.0, 8.0, -8.0]


def test_config_fields_appear_only_for_vd() -> None:
    plain = PipelineConfig()
    assert "sparsifier" not in plain.to_dict() and not any(k.startswith("vd_") for k in plain.to_dict())
    vd = PipelineConfig(sparsifier="vd", vd_epochs=3)
    back = PipelineConfig.from_json(vd.to_json())
    assert back == vd and back.to_dict()["vd_epochs"] == 3
    for bad in ({"sparsifier": "l0"}, {"sparsifier": "vd", "vd_epochs": 0},
                {"sparsifier": "vd", "vd_kl_warmup": 9, "vd_kl_ramp_end": 3}, {"vd_lr": -1}):
        with pytest.raises(ValueError, match=f"config.{next(iter(k for k in bad if k != 'sparsifier'), 'sparsifier')}"):
            PipelineConfig.from_dict(bad)


def test_shrink_vd_removes_dead_units_keeps_outputs_and_their_noise() -> None:
    """Against a brute-force reference: the surviving units' theta and log sigma^2 are the original ones, sliced."""
    from deepzip.models import get_model

    torch.manual_seed(0)
    m = variational_dropout_(get_model("lenet5"))
    with torch.no_grad():
        for layer in (m.conv1, m.conv2, m.fc1, m.fc2):
            layer.log_sigma2.normal_(-8.0, 1.0)
        m.conv1.log_sigma2[[3, 7]] = 6.0  # two filters lose every input weight: constant, folded into conv2
        m.conv2.log_sigma2[:, 5] = 6.0  # conv1 filter 5 is read by nobody
        m.fc1.log_sigma2[10:500] = 6.0  # 490 neurons with no inputs
    orig = {n: (getattr(m, n).weight.detach().clone(), getattr(m, n).log_sigma2.detach().clone())
            for n in ("conv1", "conv2", "fc1", "fc2")}
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        before = m.eval()(x)
    rows: list[dict] = []
    shrink_vd_(m.train(), report=rows)
    assert m.training
    assert (m.conv1.out_channels, m.conv2.in_channels, m.fc1.out_features, m.fc2.in_features) == (17, 17, 10, 10)
    keep1 = [c for c in range(20) if c not in (3, 5, 7)]
    for name, idx in (("conv1", (keep1,)), ("conv2", (slice(None), keep1)), ("fc1", (slice(0, 10),)),
                      ("fc2", (slice(None), slice(0, 10)))):
        layer = getattr(m, name)
        w0, s0 = orig[name]
        assert layer.log_sigma2.shape == layer.weight.shape
        assert torch.equal(layer.log_sigma2.detach(), s0[idx])
        assert torch.equal(layer.weight.detach(), (w0 * (log_alpha(w0, s0) <= 3))[idx])
    with torch.no_grad():
        assert torch.allclose(m.eval()(x), before, atol=1e-5)
    assert {r["layer"] for r in rows if r.get("what")} >= {"conv1", "fc1"}


def test_fit_in_pieces_follows_one_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two fit() calls with schedule_span give the learning rates and step numbers of one call."""
    from deepzip import train
    from deepzip.data import Dataset

    data = Dataset(torch.randn(40, 3), torch.randint(0, 2, (40,)))
    real = train._lr_at

    def run(pieces: list[tuple[int, tuple[int, int] | None]]) -> tuple[list[float], list[int]]:
        lrs: list[float] = []
        steps: list[int] = []
        monkeypatch.setattr(train, "_lr_at", lambda cfg, s, t: lrs.append(real(cfg, s, t)) or lrs[-1])
        model = nn.Linear(3, 2)
        for epochs, span in pieces:
            cfg = train.TrainConfig(epochs=epochs, lr=0.1, batch_size=10, schedule="cosine", optimizer="adam")
            train.fit(model, data, cfg, step_callback=lambda m, s: steps.append(s), schedule_span=span)
        return lrs, steps

    whole, pieces = run([(3, None)]), run([(1, (0, 12)), (2, (4, 12))])
    assert pieces == whole and whole[1] == list(range(1, 13))
    assert whole[0][6] == pytest.approx(0.05) and whole[0][0] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule_span"):
        train.fit(nn.Linear(3, 2), data, train.TrainConfig(epochs=2, batch_size=10), schedule_span=(4, 9))


def test_vd_shrink_every_needs_shrink_and_is_written_only_when_set() -> None:
    assert "vd_shrink_every" not in PipelineConfig(sparsifier="vd").to_dict()
    cfg = PipelineConfig(sparsifier="vd", shrink=True, vd_shrink_every=5)
    assert PipelineConfig.from_json(cfg.to_json()) == cfg
    for bad in ({"sparsifier": "vd", "vd_shrink_every": 5},
                {"sparsifier": "vd", "shrink": True, "vd_shrink_every": -1}):
        with pytest.raises(ValueError, match="config.vd_shrink_every"):
            PipelineConfig.from_dict(bad)
