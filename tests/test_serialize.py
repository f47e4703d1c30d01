"""The bridge model <-> .dz: compact forms chosen automatically, exact round trips, rebuilt parametrizations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deepzip
from deepzip import codec
from deepzip.errors import DeepzipFormatError
from deepzip.io.serialize import encode_model, load, load_state_dict, save
from deepzip.models import get_model
from deepzip.techniques.prune import get_mask, prune_, strip
from deepzip.techniques.share import get_codebook, is_shared, share_weights_


def lenet300(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return get_model("lenet300")


X = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_pruned_and_shared_model_round_trips_exactly(tmp_path):
    m = prune_(lenet300(), sparsity={"fc1": 0.92, "fc2": 0.91, "fc3": 0.74})
    share_weights_(m, 5, progress=False)
    path = tmp_path / "m.dz"
    n = save(m, path, config={"bits": 5})
    assert n == path.stat().st_size
    assert n < 4 * 266_610 / 30  # really compressed: > 30x against 32-bit floats
    m2 = load(path, trainable=True)  # architecture named in the file; codebooks as parametrizations
    assert torch.equal(m(X), m2(X))
    for name in ("fc1", "fc2", "fc3"):
        assert is_shared(getattr(m2, name))
        c1, i1, k1 = get_codebook(getattr(m, name))
        c2, i2, k2 = get_codebook(getattr(m2, name))
        assert (k1 == k2).all() and (c1 == c2).all() and (i1[k1] == i2[k2]).all()
    assert codec.read(path).config == {"bits": 5}


def test_float16_centroids_are_stored_in_format_1_4_and_load_back_exactly(tmp_path):
    from deepzip.codec.container import PREAMBLE_SIZE
    from deepzip.techniques.share import round_centroids_

    m = prune_(lenet300(), sparsity={"fc1": 0.92, "fc2": 0.91, "fc3": 0.74})
    share_weights_(m, {"fc1": 4, "fc2": 4}, progress=False)  # fc3: pruned, not shared (its own values, float32)
    full = save(m, tmp_path / "a.dz")
    round_centroids_(m)
    half = save(m, tmp_path / "b.dz")
    blob = (tmp_path / "b.dz").read_bytes()
    f = codec.read(blob)
    assert int.from_bytes(blob[10:12], "little") == 4 and PREAMBLE_SIZE == 24
    assert f.tensors["fc1.weight"].dtype == "float16" and f.tensors["fc3.weight"].dtype == "float32"
    assert len(f.tensors["fc1.weight"].sections["codebook"]) == 2 * 16
    assert full - half >= 2 * (32 + 2 * 19)  # two layers: half the codebook, two short stream heads each
    m2 = load(tmp_path / "b.dz", trainable=True)
    assert torch.equal(m(X), m2(X))
    c1, _, _ = get_codebook(m.fc1)
    c2, _, _ = get_codebook(m2.fc1)
    assert c2.dtype == c1.dtype and (c1 == c2).all()


def test_kinds_are_chosen_automatically():
    m = prune_(lenet300(), sparsity={"fc1": 0.9})
    share_weights_(m, {"fc2": 4}, progress=False)
    tensors, kinds = encode_model(m)
    assert kinds["fc1.weight"] == "masked" and tensors["fc1.weight"].kind == "sparse"
    assert kinds["fc2.weight"] == "shared" and tensors["fc2.weight"].kind == "codebook"
    # a dense float layer gets the entropy-coded byte planes: smaller than its raw 4 bytes a weight
    assert tensors["fc3.weight"].kind == "planes" and tensors["fc3.weight"].nbytes < 4 * 100 * 10


def test_pruned_only_model_is_lossless_and_keeps_masks(tmp_path):
    m = prune_(lenet300(), sparsity=0.8)
    save(m, tmp_path / "p.dz")
    m2 = load(tmp_path / "p.dz", trainable=True)
    assert torch.equal(m(X), m2(X))
    assert torch.equal(get_mask(m2.fc1), get_mask(m.fc1))


def test_stripped_shared_model_is_still_stored_compactly(tmp_path):
    m = prune_(lenet300(), sparsity=0.9)
    share_weights_(m, 4, progress=False)
    shared_bytes = save(m, tmp_path / "a.dz")
    strip(m)
    plain_bytes = save(m.state_dict(), tmp_path / "b.dz")
    assert plain_bytes < 1.3 * shared_bytes
    sd = load_state_dict(tmp_path / "b.dz")
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())


def test_state_dict_without_architecture_loads_as_state_dict(tmp_path):
    sd = {"a": torch.randn(3, 4), "n": torch.tensor(7), "e": torch.zeros(0)}
    save(sd, tmp_path / "s.dz")
    out = load_state_dict(tmp_path / "s.dz")
    assert set(out) == set(sd) and all(torch.equal(out[k], sd[k]) for k in sd)


def test_loaded_model_can_be_fine_tuned_and_saved_again(tmp_path):
    m = prune_(lenet300(), sparsity=0.9)
    share_weights_(m, 4, progress=False)
    save(m, tmp_path / "a.dz")
    m2 = load(tmp_path / "a.dz", trainable=True)
    opt = torch.optim.SGD([p for p in m2.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        m2(X).square().mean().backward()
        opt.step()
    assert (m2.fc1.weight[~get_mask(m2.fc1)] == 0).all()
    assert len(torch.unique(m2.fc1.weight[get_mask(m2.fc1)])) <= 16
    save(m2, tmp_path / "b.dz")
    assert torch.equal(load(tmp_path / "b.dz", trainable=True)(X), m2(X))


def test_wrong_model_and_bad_files(tmp_path):
    save(lenet300(), tmp_path / "a.dz")
    with pytest.raises(ValueError, match="does not fit"):
        load(tmp_path / "a.dz", get_model("lenet5"))
    (tmp_path / "bad.dz").write_bytes(b"PK\x03\x04 definitely not a dz file")
    with pytest.raises(DeepzipFormatError):
        load(tmp_path / "bad.dz")
    blob = (tmp_path / "a.dz").read_bytes()
    (tmp_path / "trunc.dz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DeepzipFormatError):
        load(tmp_path / "trunc.dz")


def test_public_api_save_load(tmp_path):
    m = prune_(lenet300(), sparsity=0.5)
    deepzip.save(m, tmp_path / "x.dz")
    assert torch.equal(deepzip.load(tmp_path / "x.dz")(X), m(X))


def test_interrupted_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.dz"
    save(lenet300(), path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        save(lenet300(seed=3), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.dz"]


def test_load_of_a_file_without_architecture_says_how_to_get_the_tensors(tmp_path) -> None:
    from deepzip.errors import DeepzipError
    from deepzip.io.serialize import load_state_dict

    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    save(sd, tmp_path / "sd.dz")
    with pytest.raises(DeepzipError, match="names no architecture.*load_state_dict"):
        load(tmp_path / "sd.dz")
    assert torch.equal(load_state_dict(tmp_path / "sd.dz")["w"], sd["w"])
