"""The one module walker and the one model <-> file bridge on the layers users have: Conv1d/3d, ConvTranspose,
weight-normalised layers, recurrent matrices; and post-training files that reload as what they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from deepzip import codec
from deepzip.errors import CheckpointError, DeepzipFormatError
from deepzip.io.serialize import LAYER_KINDS, load, save, save_posttrained
from deepzip.techniques.posttrain import PostTrainConfig, compress_to_bound_
from deepzip.techniques.prune import get_mask, prune_, strip
from deepzip.techniques.share import SharedWeight, get_codebook, is_shared, share_weights_
from deepzip.techniques.walk import chain, prunable_tensors, set_module


class _Zoo(nn.Module):
    """One of each: Conv1d, Conv3d, ConvTranspose2d, a weight-normalised Linear."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv1d(2, 6, 3)
        self.c3 = nn.Conv3d(1, 4, 2)
        self.deconv = nn.ConvTranspose2d(4, 6, 3, stride=2)
        self.wn = weight_norm(nn.Linear(24, 10))

    def forward(self, x1: torch.Tensor, x3: torch.Tensor, x2: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.c1(x1).flatten(1), self.c3(x3).flatten(1), self.deconv(x2).flatten(1),
                          self.wn(xl)], dim=1)


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    return (torch.randn(2, 2, 9, generator=g), torch.randn(2, 1, 4, 4, 4, generator=g),
            torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 24, generator=g))


LAYERS = ["c1", "c3", "deconv", "wn"]


def test_the_walker_lists_every_layer_kind_users_have() -> None:
    m = nn.Sequential(_Zoo(), nn.LSTM(3, 2, bidirectional=True), nn.Embedding(5, 3))
    assert list(prunable_tensors(m)) == ["0.c1", "0.c3", "0.deconv", "0.wn", "1.weight_ih_l0", "1.weight_hh_l0",
                                         "1.weight_ih_l0_reverse", "1.weight_hh_l0_reverse", "2"]
    set_module(m, "0.deconv", nn.Identity())
    assert isinstance(m[0].deconv, nn.Identity)


@pytest.mark.parametrize("layer", LAYERS)
def test_prune_keeps_masked_weights_at_zero_through_training(layer: str) -> None:
    m = _Zoo()
    prune_(m, sparsity={layer: 0.6})
    mod = getattr(m, layer)
    mask = get_mask(mod)
    assert mask is not None and abs(1 - float(mask.float().mean()) - 0.6) < 0.05
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        m(*_inputs()).square().sum().backward()
        opt.step()
    assert torch.all(mod.weight[~mask] == 0)
    assert (mod.weight[mask] != 0).all()
    if layer == "wn":  # the mask sits on top of weight_norm, whose inputs still train
        foreign, own = chain(mod)
        assert [type(p).__name__ for p in foreign] == ["_WeightNorm"] and len(own) == 1


@pytest.mark.parametrize("layer", LAYERS)
def test_share_then_save_and_load_round_trip(layer: str, tmp_path) -> None:
    m = _Zoo()
    prune_(m, sparsity={layer: 0.5})
    share_weights_(m, {layer: 2})
    mod = getattr(m, layer)
    assert is_shared(mod) and not chain(mod)[0]  # the codebook is the whole weight: weight_norm was baked
    kept = mod.weight[get_mask(mod)]
    assert torch.unique(kept).numel() <= 2 ** 2
    path = tmp_path / "m.dz"
    save(m, path)
    assert codec.read(path).extra["layers"][f"{layer}.weight"] == "shared"
    # a fresh model (weight-normalised again) takes the file's form
    back = load(path, model=_Zoo(seed=3), trainable=True)
    assert is_shared(getattr(back, layer))
    for a, b in zip(get_codebook(mod), get_codebook(getattr(back, layer))):
        assert (a == b).all()
    assert torch.equal(back(*_inputs()), m(*_inputs()))


def test_pruned_weight_norm_layer_reloads_weight_normalised(tmp_path) -> None:
    m = _Zoo()
    prune_(m, sparsity=0.5)
    path = tmp_path / "m.dz"
    save(m, path)
    back = load(path, model=_Zoo(seed=3), trainable=True)
    foreign, own = chain(back.wn)
    assert [type(p).__name__ for p in foreign] == ["_WeightNorm"] and len(own) == 1
    for name in LAYERS:
        assert torch.equal(get_mask(getattr(back, name)), get_mask(getattr(m, name))), name
    assert torch.equal(back(*_inputs()), m(*_inputs()))
    # into a model that is pruned already: its masks are replaced, weight_norm kept
    again = load(path, model=back, trainable=True)
    assert len(chain(again.wn)[0]) == 1 and len(chain(again.wn)[1]) == 1
    assert torch.equal(again(*_inputs()), m(*_inputs()))
    # a plain weight_norm layer is stored as its inputs (g, v) and comes back as one
    plain = _Zoo()
    save(plain, path)
    again = load(path, model=_Zoo(seed=3), trainable=True)
    assert chain(again.wn)[0] and torch.equal(again(*_inputs()), plain(*_inputs()))


def test_errors_name_the_layer_and_the_real_cause(tmp_path) -> None:
    m = _Zoo()
    share_weights_(m, {"wn": 2})
    with pytest.raises(ValueError, match=r"wn.weight: already weight-shared \(SharedWeight\)"):
        prune_(m, sparsity={"wn": 0.5})
    save(strip(_Zoo()), tmp_path / "m.dz")
    other = _Zoo()
    other.deconv = nn.ConvTranspose2d(4, 5, 3)
    with pytest.raises(CheckpointError, match=r"m.dz: does not fit the model \(_Zoo\): deconv.weight has shape "
                                              r"\[4, 6, 3, 3\] in the file, \[4, 5, 3, 3\] in the model"):
        load(tmp_path / "m.dz", model=other)
    prune_(other, sparsity=0.5)
    with pytest.raises(CheckpointError, match=r"does not fit the model \(_Zoo\): deconv.bias has shape \[6\]"):
        load(tmp_path / "m.dz", model=other)  # (a pruned layer lists its bias first)
    assert all(get_mask(getattr(other, n)) is not None for n in LAYERS)  # checked before anything changed
    assert len(chain(other.wn)[0]) == 1


def test_layer_kind_table_names_what_is_rebuilt_and_how_it_is_stored(tmp_path) -> None:
    assert set(LAYER_KINDS) == {"plain", "masked", "shared"}  # file-format strings
    assert LAYER_KINDS["shared"].parametrization is SharedWeight and LAYER_KINDS["plain"].rebuild is None
    assert {"grouped", "tiered"} <= set(LAYER_KINDS["shared"].storage or ())
    # a file whose layer kind does not match the tensor's encoding: one error naming the tensor
    tensors = {"0.weight": codec.encode_dense(np.zeros((4, 8), np.float32)), "0.bias": codec.encode_dense(
        np.zeros(4, np.float32))}
    codec.write(tmp_path / "bad.dz", tensors, extra={"layers": {"0.weight": "shared", "0.bias": "plain"}})
    with pytest.raises(DeepzipFormatError, match="0.weight: layer kind 'shared' stored as 'dense', expected one of"):
        load(tmp_path / "bad.dz", model=nn.Sequential(nn.Linear(8, 4)))


class _Bag(nn.Module):
    """Token ids -> mean embedding -> two Linear layers."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(400, 32)
        self.fc = nn.Linear(32, 48)
        self.out = nn.Linear(48, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.emb(ids).mean(1))))


@pytest.mark.parametrize("config", [  # k-means rows/16 + outliers, and float16 (measured choices); tiered grids
    PostTrainConfig(max_drop=0.02, min_numel=256, group_rows=(16,), outlier_fracs=(0.003,), row_bits_max=4, grids=(),
                    tier_grids=()),
    PostTrainConfig(max_drop=0.01, min_numel=256, tier_grids=(0.5, 1.0)),
])
def test_post_training_file_reloads_with_its_codebooks_and_resaves_the_same_bytes(config, tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    cal = [torch.randint(0, 40, (32, 6), generator=g) for _ in range(2)]  # rows >= 40 never used: tiers
    model = _Bag()
    res = compress_to_bound_(model, cal, config, forward=lambda m, b: m(b))
    path, again = tmp_path / "p.dz", tmp_path / "again.dz"
    save_posttrained(model, res, path)
    f = codec.read(path)
    coded = [n for n, c in res.choices.items() if c.bits]
    assert coded and all(f.extra["layers"][n] == "shared" for n in coded)
    assert {f.tensors[n].kind for n in coded} <= {"grouped", "tiered"}
    for n, c in res.choices.items():  # float16 choices take no more than float16 (2 bytes a value), load as float32
        if not c.bits:
            assert f.tensors[n].nbytes <= 2 * c.fp16.size and f.extra["dtypes"][n] == "float32"
    back = load(path, model=_Bag(seed=5), trainable=True)
    x = torch.randint(0, 400, (8, 6), generator=g)
    assert torch.equal(back(x), model(x))
    for n in coded:
        p = getattr(back, n.removesuffix(".weight")).parametrizations.weight[0]
        assert isinstance(p, SharedWeight) and p.layout == f.tensors[n].kind and p.centroids.requires_grad
    save(back, again)
    assert again.read_bytes() == path.read_bytes()
    # fine-tunable: a step moves the codebooks, not the indices
    before = {n: getattr(back, n.removesuffix(".weight")).parametrizations.weight[0].indices.clone() for n in coded}
    opt = torch.optim.SGD(back.parameters(), lr=0.1)
    back(x).square().sum().backward()
    opt.step()
    assert not torch.equal(back(x), model(x))
    for n, idx in before.items():
        assert torch.equal(getattr(back, n.removesuffix(".weight")).parametrizations.weight[0].indices, idx)


def test_other_parametrizations_stay_below_the_mask_and_round_trip(tmp_path) -> None:
    """spectral_norm (with its power-iteration buffers) and orthogonal: their inputs are stored as they are."""
    from torch.nn.utils.parametrizations import orthogonal, spectral_norm

    def make(seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(spectral_norm(nn.Linear(8, 6)), nn.ReLU(), orthogonal(nn.Linear(6, 6))).eval()

    m = prune_(make(), sparsity=0.5)
    x = torch.randn(3, 8)
    save(m, tmp_path / "m.dz")
    back = load(tmp_path / "m.dz", model=make(3), trainable=True).eval()
    assert [type(p).__name__ for p in chain(back[0])[0]] == ["_SpectralNorm"] and len(chain(back[0])[1]) == 1
    assert torch.equal(back[0].parametrizations.weight[0]._u, m[0].parametrizations.weight[0]._u)
    assert torch.equal(back(x), m(x)) and torch.all(back[2].weight[~get_mask(back[2])] == 0)
