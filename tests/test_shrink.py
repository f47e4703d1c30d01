"""shrink_: removed neurons / filters / inputs give the same outputs (1e-5), residual connections are left alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepzip.models import get_model
from deepzip.techniques.prune import prune_
from deepzip.techniques.shrink import GatheredLinear, shrink_


def _same(model: nn.Module, x: torch.Tensor, log: list | None = None) -> nn.Module:
    model.eval()
    with torch.no_grad():
        before = model(x)
        shrink_(model, x[:1], report=log)
        after = model(x)
    assert after.shape == before.shape
    assert torch.allclose(after, before, atol=1e-5, rtol=0), (after - before).abs().max()
    return model


def test_mlp_unused_constant_and_input_units_are_removed() -> None:
    torch.manual_seed(0)
    m = get_model("lenet300")
    with torch.no_grad():
        m.fc1.bias.uniform_(-0.5, 0.5)  # constants of both signs: relu(b) > 0 must be folded, relu(b) = 0 dropped
        m.fc1.weight[:40] = 0           # 40 fc1 neurons without inputs
        m.fc2.weight[:, 280:] = 0       # 20 fc1 neurons nobody reads (disjoint from the first 40)
        m.fc1.weight[:, :56] = 0        # the top two rows of pixels
        m.fc3.weight[:, :7] = 0         # 7 fc2 neurons nobody reads
    log: list[dict] = []
    _same(m, torch.rand(16, 1, 28, 28), log)
    assert m.fc1.out_features == 240 and m.fc2.in_features == 240
    assert m.fc2.out_features == 93 and m.fc3.in_features == 93
    assert isinstance(m.fc1, GatheredLinear) and m.fc1.in_features == 784 - 56
    assert m.fc1.in_index.tolist() == list(range(56, 784))
    by = {(r["layer"], r["what"]): r for r in log}
    assert by[("fc1", "neurons")]["constant_folded"] == 40 and by[("fc1", "neurons")]["unused"] == 20
    assert by[("fc1", "inputs")]["unused"] == 56


def test_removal_cascades_and_masks_are_baked_in() -> None:
    torch.manual_seed(1)
    m = prune_(get_model("lenet300"), sparsity={"fc1": 0.95, "fc2": 0.9, "fc3": 0.5})
    with torch.no_grad():  # fc2 neuron 3 reads only fc1 neurons 0..9, which read nothing themselves
        m.fc1.parametrizations.weight.original[:10] = 0
        m.fc2.parametrizations.weight.original[3] = 0
        m.fc2.parametrizations.weight.original[3, :10] = 1.0
    _same(m, torch.rand(8, 1, 28, 28))
    assert m.fc1.out_features <= 290  # the 10 constant neurons went, then fc2's neuron 3 became constant too
    assert not any(".parametrizations." in k for k in m.state_dict())


def test_cnn_filters_through_pool_and_flatten_to_linear() -> None:
    torch.manual_seed(2)
    m = get_model("lenet5")
    with torch.no_grad():
        m.conv1.weight[:3] = 0              # 3 constant conv1 filters (max-pool of a constant is that constant)
        m.conv2.weight[:, 17:] = 0          # conv1 filters 17..19 unread
        m.conv2.weight[:10] = 0             # 10 constant conv2 filters, folded through pool + flatten into fc1
        m.fc1.weight[:, 16 * 40:] = 0       # conv2 filters 40..49 unread by fc1
        m.fc2.weight[:, :100] = 0           # fc1 neurons 0..99 unread
    _same(m, torch.rand(4, 1, 28, 28))
    assert (m.conv1.out_channels, m.conv2.in_channels) == (14, 14)
    assert (m.conv2.out_channels, m.fc1.in_features) == (30, 30 * 16)
    assert (m.fc1.out_features, m.fc2.in_features) == (400, 400)


class _BNNet(nn.Module):
    def __init__(self, pad: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 3, padding=pad)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.c1(x)))
        return self.fc(torch.flatten(F.relu(self.c2(x)), 1))


def test_batch_norm_is_sliced_and_padding_blocks_folding() -> None:
    torch.manual_seed(3)
    for pad, expect in ((0, 5), (1, 8)):
        m = _BNNet(pad)
        if pad:
            m.fc = nn.Linear(6 * 6 * 6, 5)
        with torch.no_grad():
            m.bn.running_mean.uniform_(-1, 1)
            m.bn.running_mean[:3] = 0
            m.c1.bias[:3] = 0.1
            m.bn.bias.fill_(0.5)          # relu(bn(b)) > 0 for c1's filters 0..2: non-zero constants
            m.c1.weight[:3] = 0
        log: list[dict] = []
        _same(m, torch.rand(2, 3, 8, 8), log)
        assert m.c1.out_channels == expect and m.bn.num_features == expect
        if pad:
            assert any("pads with zeros" in r.get("note", "") for r in log)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        return self.fc3(h + F.relu(self.fc2(h)))  # a skip connection around fc2


def test_residual_connections_are_left_alone_with_a_note() -> None:
    torch.manual_seed(4)
    m = _Residual()
    with torch.no_grad():
        m.fc1.weight[:4] = 0
        m.fc2.weight[:, :4] = 0
        m.fc2.weight[:5] = 0
    log: list[dict] = []
    _same(m, torch.rand(5, 20), log)
    assert (m.fc1.out_features, m.fc2.out_features) == (16, 16)  # both feed the addition
    notes = {r["layer"]: r["note"] for r in log if r.get("note")}
    assert "skip connection" in notes["fc1"] and "skip connection" in notes["fc2"]


def test_a_dense_model_is_unchanged() -> None:
    m = get_model("lenet5")
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    log: list[dict] = []
    _same(m, torch.rand(2, 1, 28, 28), log)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in sd.items())
    assert not [r for r in log if r.get("what")]
