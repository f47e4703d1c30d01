"""Low-rank decomposition: exactness at full rank, reported errors and parameter counts against brute force,
monotone HOOI, VBMF rank recovery, tensor-train layers, state_dict round trips, and errors that name the layer."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepzip.errors import LowRankError
from deepzip.io.checkpoint import load_checkpoint, save_checkpoint
from deepzip.models import get_model
from deepzip.techniques.lowrank import (
    TTLinear,
    convs_and_linears,
    decompose_,
    energy_rank,
    evbmf,
    lowrank_table,
    svd_factors,
    tt_linear_,
    tucker2,
)
from deepzip.techniques.prune import prune_


class Tiny(nn.Module):
    """A strided, padded conv, a plain conv and two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, stride=2, padding=1)  # 8x8 -> 4x4
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 40)
        self.fc2 = nn.Linear(40, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))  # (B, 12, 4, 4)
        x = F.relu(self.conv2(x))  # (B, 16, 4, 4)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 40)
        return self.fc2(x)



def _rows(model):
    """The rows of the call just made on a fresh model (in-place transforms return the model)."""
    return lowrank_table(model)

def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def low_rank_plus_noise(L: int, M: int, r: int, sigma: float, seed: int) -> torch.Tensor:
    """Orthonormal factors, r singular values well above the noise edge sigma (sqrt(L) + sqrt(M)), plus noise."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(L, r, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(M, r, generator=g, dtype=torch.float64))[0]
    s = torch.linspace(3.0, 6.0, r, dtype=torch.float64) * sigma * (math.sqrt(L) + math.sqrt(M))
    return u @ torch.diag(s) @ v.T + sigma * torch.randn(L, M, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------- Tucker-2
@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 1), padding="same", bias=False),
    dict(kernel_size=3, dilation=2, padding=2, padding_mode="reflect"),
])
def test_tucker2_full_rank_layer_is_exact_and_keeps_geometry(kwargs: dict) -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(6, 10, **kwargs))
    conv = copy.deepcopy(m[0])
    x = torch.randn(2, 6, 9, 9)
    before = m(x)
    rows = _rows(decompose_(m, ranks={"0": (10, 6)}, skip_larger=False, progress=False))
    first, middle, last = m[0]
    assert (first.kernel_size, last.kernel_size) == ((1, 1), (1, 1))
    assert first.bias is None and middle.bias is None and (last.bias is None) == (conv.bias is None)
    for attr in ("kernel_size", "stride", "padding", "dilation", "padding_mode"):
        assert getattr(middle, attr) == getattr(conv, attr)
    after = m(x)
    assert after.shape == before.shape
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    assert rows[0]["rel_error"] < 1e-6


def test_reduced_ranks_error_params_and_outputs_match_brute_force() -> None:
    m = tiny()
    ref = copy.deepcopy(m)
    rows = {r["layer"]: r for r in _rows(decompose_(m, ranks={"conv2": (5, 4), "fc1": 6}, progress=False))}
    assert set(rows) == {"conv2", "fc1"} and isinstance(m.conv1, nn.Conv2d) and isinstance(m.fc2, nn.Linear)

    # conv2: the three convs compose to W_hat = U_out G U_in^T, whose error is the reported one
    first, middle, last = m.conv2
    w_hat = torch.einsum("rshw,or,is->oihw", middle.weight, last.weight[:, :, 0, 0], first.weight[:, :, 0, 0].T)
    assert rel(w_hat, ref.conv2.weight) == pytest.approx(rows["conv2"]["rel_error"], rel=1e-5)
    assert 0 < rows["conv2"]["rel_error"] < 1
    x = torch.randn(3, 12, 4, 4)
    brute = F.conv2d(x, w_hat, ref.conv2.bias, padding=1)
    torch.testing.assert_close(m.conv2(x), brute, atol=1e-5, rtol=0)
    assert rows["conv2"]["params_after"] == sum(p.numel() for p in m.conv2.parameters())
    assert rows["conv2"]["params_after"] == 12 * 4 + 5 * 4 * 9 + 16 * 5 + 16
    assert rows["conv2"]["params_before"] == 16 * 12 * 9 + 16

    # fc1: a rank-6 product, the best rank-6 approximation (Eckart-Young: error from the tail singular values)
    w_hat = m.fc1[1].weight @ m.fc1[0].weight
    assert torch.linalg.matrix_rank(w_hat) == 6
    s = torch.linalg.svdvals(ref.fc1.weight.detach().double())
    tail = float(s[6:].norm() / s.norm())
    assert rel(w_hat, ref.fc1.weight) == pytest.approx(tail, rel=1e-5)
    assert rows["fc1"]["rel_error"] == pytest.approx(tail, rel=1e-5)
    assert rows["fc1"]["params_after"] == sum(p.numel() for p in m.fc1.parameters()) == 6 * (256 + 40) + 40
    torch.testing.assert_close(m.fc1[1].bias, ref.fc1.bias)


def test_hooi_never_increases_the_error_and_improves_on_hosvd() -> None:
    w = torch.randn(20, 12, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for k in range(7):
        core, u_in, u_out = tucker2(w, (5, 4), hooi_iters=k)
        errors.append(rel(torch.einsum("rshw,or,is->oihw", core, u_out, u_in), w))
        assert torch.allclose(u_in.T @ u_in, torch.eye(4, dtype=torch.float64), atol=1e-10)  # orthonormal
        assert torch.allclose(u_out.T @ u_out, torch.eye(5, dtype=torch.float64), atol=1e-10)
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] - 1e-4


def test_hosvd_factors_span_the_leading_singular_vectors() -> None:
    w = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    core, u_in, u_out = tucker2(w, (3, 2), hooi_iters=0)
    u0 = torch.linalg.svd(w.reshape(7, -1))[0][:, :3]
    u1 = torch.linalg.svd(w.transpose(0, 1).reshape(5, -1))[0][:, :2]
    torch.testing.assert_close(u_out @ u_out.T, u0 @ u0.T)  # same subspace (signs may differ)
    torch.testing.assert_close(u_in @ u_in.T, u1 @ u1.T)
    torch.testing.assert_close(core, torch.einsum("oihw,or,is->rshw", w, u_out, u_in))


def test_explicit_ranks_above_the_dimensions_are_refused_and_low_level_ones_clamped() -> None:
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(LowRankError, match="conv1: R_out=100 exceeds the layer's 12 output channels"):
        decompose_(m, ranks={"conv1": (100, 2)}, progress=False)
    with pytest.raises(LowRankError, match="conv1: R_in=4 exceeds the layer's 3 input channels"):
        decompose_(m, ranks={"conv1": (12, 4)}, progress=False)
    with pytest.raises(LowRankError, match=r"fc2: rank=99 exceeds min\(out, in\)=5 of the \(5, 40\) weight"):
        decompose_(m, ranks={"fc2": 99}, progress=False)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items()) and isinstance(m.conv1, nn.Conv2d)
    rows = _rows(decompose_(m, ranks={"conv1": (12, 3), "fc2": 5}, skip_larger=False, progress=False))
    assert [r["ranks"] for r in rows] == [(12, 3), 5]
    core, u_in, u_out = tucker2(torch.randn(4, 2, 1, 1), (9, 9))
    assert tuple(core.shape) == (4, 2, 1, 1) and u_in.shape == (2, 2) and u_out.shape == (4, 4)
    a, b = svd_factors(torch.randn(3, 8), 50)
    assert a.shape == (3, 8) and b.shape == (3, 3)


# ---------------------------------------------------------------------------------------------------- rank selection
@pytest.mark.parametrize(("L", "M", "r", "sigma", "seed"), [
    (40, 60, 5, 0.1, 0), (100, 50, 10, 0.5, 1), (64, 64, 3, 1.0, 2), (20, 300, 7, 0.2, 3), (300, 20, 7, 0.2, 4),
])
def test_evbmf_recovers_the_rank_of_low_rank_plus_noise(L: int, M: int, r: int, sigma: float, seed: int) -> None:
    a = low_rank_plus_noise(L, M, r, sigma, seed)
    assert evbmf(a) == r
    assert evbmf(a.float().numpy()) == r  # arrays and float32 too
    assert evbmf(a, sigma2=sigma ** 2) == r


def test_evbmf_on_pure_noise_and_degenerate_matrices() -> None:
    g = torch.Generator().manual_seed(0)
    assert evbmf(torch.randn(50, 80, generator=g)) == 0
    assert evbmf(torch.zeros(4, 6)) == 0
    exact = torch.randn(30, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 20, generator=g, dtype=torch.float64)
    assert evbmf(exact) == 4  # no noise floor: the numerical rank
    with pytest.raises(ValueError, match="sigma2"):
        evbmf(exact, sigma2=0.0)


def test_energy_rank_matches_brute_force() -> None:
    w = torch.randn(9, 14, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s2 = torch.linalg.svdvals(w) ** 2
    for energy in (0.05, 0.3, 0.5, 0.9, 0.99, 1.0):
        brute = next(r for r in range(1, 10) if float(s2[:r].sum()) >= energy * float(s2.sum()) * (1 - 1e-12))
        assert energy_rank(w, energy) == brute
    for bad in (0.0, -0.1, 1.01, float("nan"), True):
        with pytest.raises(ValueError, match="energy"):
            energy_rank(w, bad)


def test_vbmf_method_finds_the_multilinear_ranks_of_a_noisy_kernel() -> None:
    g = torch.Generator().manual_seed(0)
    core = torch.randn(4, 3, 3, 3, generator=g)
    u_out = torch.linalg.qr(torch.randn(32, 4, generator=g))[0]
    u_in = torch.linalg.qr(torch.randn(24, 3, generator=g))[0]
    conv = nn.Conv2d(24, 32, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("rshw,or,is->oihw", core, u_out, u_in) * 10
                          + 0.01 * torch.randn(32, 24, 3, 3, generator=g))
    m = nn.Sequential(conv)
    rows = _rows(decompose_(m, "vbmf", progress=False))
    assert rows[0]["ranks"] == (4, 3) and rows[0]["method"] == "vbmf"
    assert rows[0]["rel_error"] < 0.01


def test_energy_method_uses_each_unfolding_and_full_energy_is_exact() -> None:
    m = get_model("lenet5")
    ref = copy.deepcopy(m)
    rows = _rows(decompose_(m, "energy", energy=0.8, filter_fn=convs_and_linears, skip_larger=False,
                            progress=False))
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc1", "fc2"]
    w = ref.conv2.weight
    assert rows[1]["ranks"] == (energy_rank(w.reshape(50, -1), 0.8), energy_rank(w.transpose(0, 1).reshape(20, -1),
                                                                                   0.8))
    assert rows[2]["ranks"] == energy_rank(ref.fc1.weight, 0.8)

    full = copy.deepcopy(ref)
    decompose_(full, "energy", energy=1.0, filter_fn=convs_and_linears, skip_larger=False, progress=False)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(full(x), ref(x), atol=1e-4, rtol=0)


def test_layers_not_smaller_are_skipped_and_left_alone() -> None:
    m = tiny()
    fc2 = m.fc2
    rows = _rows(decompose_(m, ranks={"fc2": 5, "conv1": (12, 3)}, progress=False))
    assert [r["skipped"] is not None for r in rows] == [True, True]
    assert m.fc2 is fc2 and isinstance(m.conv1, nn.Conv2d)
    assert all(r["params_after"] == r["params_before"] and r["rel_error"] == 0.0 for r in rows)
    # default selection: convs only; filter_fn(module, fqn) picks others
    assert [r["layer"] for r in _rows(decompose_(tiny(), progress=False))] == ["conv1", "conv2"]
    assert [r["layer"] for r in _rows(decompose_(tiny(), filter_fn=convs_and_linears, progress=False))] == [
        "conv1", "conv2", "fc1", "fc2"]
    assert [r["layer"] for r in _rows(decompose_(tiny(), filter_fn=lambda m, fqn: fqn.startswith("fc"),
                                                 progress=False))] == ["fc1", "fc2"]
    assert [r["layer"] for r in _rows(decompose_(tiny(), layers=["fc1.weight"], progress=False))] == ["fc1"]


# ---------------------------------------------------------------------------------------------------- invalid input
@pytest.mark.parametrize(("kwargs", "pattern"), [
    (dict(ranks={"conv9": (2, 2)}), "conv9: unknown layer"),
    (dict(layers=["fc7"]), "fc7: unknown layer"),
    (dict(layers="fc1"), "layers='fc1'"),
    (dict(ranks={"conv2": (0, 2)}), r"conv2: ranks=\(0, 2\)"),
    (dict(ranks={"conv2": 3}), "conv2: ranks=3, expected \\(R_out, R_in\\)"),
    (dict(ranks={"fc1": 0}), "fc1: rank=0"),
    (dict(ranks={"fc1": (2, 2)}), r"fc1: rank=\(2, 2\)"),
    (dict(method="energy", energy=0.0), "energy=0.0"),
    (dict(method="energy", energy=1.5), "energy=1.5"),
    (dict(method="svd"), "method='svd'"),
    (dict(hooi_iters=-1), "hooi_iters=-1"),
])
def test_invalid_input_names_the_field_and_changes_nothing(kwargs: dict, pattern: str) -> None:
    m = tiny()
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match=pattern):
        decompose_(m, progress=False, **kwargs)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items()) and len(before) == len(m.state_dict())


def test_grouped_and_pruned_layers_are_refused_by_name() -> None:
    m = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(ValueError, match="1: Conv2d with groups=2"):
        decompose_(m, progress=False)
    assert isinstance(m[0], nn.Conv2d)  # validated before anything was replaced
    p = prune_(tiny(), sparsity=0.5)
    with pytest.raises(ValueError, match="conv1.weight: pruned or weight-shared"):
        decompose_(p, progress=False)
    with pytest.raises(ValueError, match="tucker2: ranks"):
        tucker2(torch.randn(4, 4, 3, 3), (2, 0))
    with pytest.raises(ValueError, match="hooi_iters"):
        tucker2(torch.randn(4, 4, 3, 3), (2, 2), hooi_iters=-2)


# ---------------------------------------------------------------------------------------------------- tensor train
def test_tt_svd_with_enough_rank_is_exact() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(24, 30)
    tt = TTLinear.from_linear(lin, (2, 3, 4), (5, 3, 2), max_rank=100)
    torch.testing.assert_close(tt.full_weight(), lin.weight, atol=1e-5, rtol=0)
    x = torch.randn(7, 24)
    torch.testing.assert_close(tt(x), lin(x), atol=1e-5, rtol=0)
    assert tt.ranks == (1, 10, 8, 1)  # the ranks of the unfoldings (10 x 72 and 30 x 8)


def test_tt_small_rank_params_follow_the_formula_and_forward_matches_full_weight() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(24, 30)
    tt = TTLinear.from_linear(lin, (2, 3, 4), (5, 3, 2), max_rank=2)
    r, m, n = tt.ranks, tt.in_modes, tt.out_modes
    assert r == (1, 2, 2, 1)
    formula = sum(r[k] * m[k] * n[k] * r[k + 1] for k in range(3))
    assert formula == 1 * 2 * 5 * 2 + 2 * 3 * 3 * 2 + 2 * 4 * 2 * 1
    assert sum(p.numel() for p in tt.parameters()) == formula + 30
    assert 0 < rel(tt.full_weight(), lin.weight) < 1
    x = torch.randn(2, 3, 24)  # leading batch dims are kept
    torch.testing.assert_close(tt(x), x @ tt.full_weight().T + tt.bias, atol=1e-5, rtol=1e-5)
    tt(x).sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in tt.cores)


def test_tt_init_and_constructor_checks() -> None:
    torch.manual_seed(0)
    tt = TTLinear((4, 7, 4, 7), (3, 4, 5, 5), (4, 4, 4), bias=False)
    assert tt.bias is None and tt.full_weight().shape == (300, 784)
    std = float(tt.full_weight().detach().std())
    assert 0.5 < std / (1 / math.sqrt(3 * 784)) < 2  # about nn.Linear's init scale
    with pytest.raises(ValueError, match="3 inner ranks"):
        TTLinear((4, 7, 4, 7), (3, 4, 5, 5), (4, 4))
    with pytest.raises(ValueError, match="differ in length"):
        TTLinear((4, 7), (3, 4, 5), (2,))
    with pytest.raises(ValueError, match="rank=0"):
        TTLinear((4, 7), (3, 4), (0,))


def test_tt_linear_replaces_named_layers_and_checks_specs() -> None:
    m = get_model("lenet300")
    x = torch.randn(3, 1, 28, 28)
    ref = copy.deepcopy(m)
    rows = _rows(tt_linear_(m, {"fc1": ((4, 7, 4, 7), (3, 4, 5, 5), 6)}, progress=False))
    assert isinstance(m.fc1, TTLinear) and rows[0]["ranks"] == m.fc1.ranks == (1, 6, 6, 6, 1)
    assert rows[0]["params_after"] == sum(p.numel() for p in m.fc1.parameters())
    assert rows[0]["rel_error"] == pytest.approx(rel(m.fc1.full_weight(), ref.fc1.weight), rel=1e-5)
    assert m(x).shape == (3, 10)
    skipped = _rows(tt_linear_(get_model("lenet300"), {"fc3": ((10, 10), (2, 5), 50)}, progress=False))
    assert skipped[0]["skipped"] is not None
    bad = [({"fc9": ((4, 196), (3, 100), 2)}, "fc9: unknown layer for tt_linear_; Linear layers: fc1"),
           ({"fc1": ((4, 7, 4, 7), (3, 4, 5, 4), 2)}, "fc1: modes"),
           ({"fc1": ((4, 196), (3, 100), 0)}, "fc1 max_rank: rank=0"),
           ({"fc1": ((4, 196), (3, 100))}, "fc1: spec"),
           ({"fc1": ((4, 0, 196), (3, 100, 1), 2)}, "fc1: in_modes")]
    for spec, pattern in bad:
        with pytest.raises(ValueError, match=pattern):
            tt_linear_(get_model("lenet300"), spec, progress=False)
    with pytest.raises(ValueError, match="from_linear: modes"):
        TTLinear.from_linear(nn.Linear(6, 4), (2, 2), (2, 2), 2)


# ---------------------------------------------------------------------------------------------------- round trips
def test_state_dict_round_trip_into_a_freshly_decomposed_copy(tmp_path) -> None:
    m = get_model("lenet5")
    with torch.no_grad():  # trained-looking weights: make VBMF keep more than rank 1
        m.conv2.weight.add_(torch.einsum("or,ihw->oihw", torch.randn(50, 1), torch.randn(20, 5, 5)))
    rows = _rows(decompose_(m, "vbmf", layers=["conv1", "conv2", "fc1"], progress=False))
    tt_linear_(m, {"fc2": ((20, 25), (2, 5), 3)}, skip_larger=False, progress=False)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)  # a training step: the copy must not just repeat the init
    m(torch.randn(8, 1, 28, 28)).square().mean().backward()
    opt.step()

    fresh = get_model("lenet5", seed=1)
    ranks = {r["layer"]: r["ranks"] for r in rows if r["skipped"] is None}
    decompose_(fresh, ranks=ranks, progress=False)
    tt_linear_(fresh, {"fc2": ((20, 25), (2, 5), 3)}, skip_larger=False, progress=False)
    fresh.load_state_dict(m.state_dict())  # strict: same structure
    x = torch.randn(5, 1, 28, 28)
    assert torch.equal(fresh(x), m(x))

    path = tmp_path / "m.safetensors"
    save_checkpoint(m, path)
    again = get_model("lenet5", seed=2)
    decompose_(again, ranks=ranks, progress=False)
    tt_linear_(again, {"fc2": ((20, 25), (2, 5), 3)}, skip_larger=False, progress=False)
    load_checkpoint(path, again)
    assert torch.equal(again(x), m(x))
    assert np.isclose(sum(p.numel() for p in again.parameters()), sum(p.numel() for p in m.parameters()))


@pytest.mark.parametrize("shape", [(1, 32, 28, 28), (3, 5, 9, 8), (2, 1, 7, 7), (4, 20, 24, 24)])
def test_max_pool2_is_max_pool2d_for_inference_and_training(shape) -> None:
    """The CNNs' pooling: the same values as F.max_pool2d without autograd (the fast path), and F.max_pool2d itself
    (with its gradient) when training."""
    from deepzip.models import max_pool2

    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(max_pool2(x), F.max_pool2d(x, 2))
    x.requires_grad_(True)
    y = max_pool2(x)
    y.sum().backward()
    g = x.grad.clone()
    x.grad = None
    F.max_pool2d(x, 2).sum().backward()
    assert torch.equal(g, x.grad)
