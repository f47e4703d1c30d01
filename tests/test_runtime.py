"""Runtime layers: sparse / codebook execution gives the dense model's outputs; loading never densifies."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import deepzip
from deepzip.models import get_model
from deepzip.runtime import FORMS, SparseConv2d, SparseLinear, runtime_table, sparsify_
from deepzip.techniques.prune import prune_, strip
from deepzip.techniques.share import share_weights_


def _compressed(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = prune_(get_model(name), sparsity=0.8)
    return share_weights_(m, 4, progress=False).eval()


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("form", FORMS)
def test_each_form_gives_the_dense_outputs(name: str, form: str) -> None:
    m = strip(_compressed(name))
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        ref = m(x)
        sparsify_(m, forms=[form], repeats=1)
        out = m(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    forms = {r["form"] for r in runtime_table(m)}
    assert forms == {form}
    if form == "codebook":  # 4-bit codebooks: uint8 indices; uint8 column steps (C kernel) or int16 columns (torch)
        layer = m.fc1 if name == "lenet300" else m.conv2
        cols = layer.sparse.step if layer.sparse.kernel == "deepzip-c" else layer.sparse.col
        assert layer.sparse.indices.dtype == torch.uint8
        assert cols.dtype == (torch.uint8 if layer.sparse.kernel == "deepzip-c" else torch.int16)


def test_load_runtimes_from_a_file(tmp_path) -> None:
    m = _compressed("lenet5")
    path = tmp_path / "m.dz"
    deepzip.save(m, path)
    x = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        ref = deepzip.load(path)(x)
        for runtime in ("fast", "small", "shrunk"):
            r = deepzip.load(path, runtime=runtime)
            assert torch.allclose(r(x), ref, atol=1e-5, rtol=0), runtime
    small = deepzip.load(path, runtime="small")
    assert isinstance(small.conv2, SparseConv2d) and isinstance(small.fc1, SparseLinear)
    dense_bytes = 4 * 431_080  # 20% kept at 4 bits: ~3 bytes (uint8 index, int16 column) per kept weight
    assert sum(r["bytes"] for r in runtime_table(small)) < 0.2 * dense_bytes
    with pytest.raises(ValueError, match="runtime="):
        deepzip.load(path, runtime="turbo")


def test_loading_sparse_layers_never_builds_a_dense_weight(tmp_path, monkeypatch) -> None:
    m = _compressed("lenet300")
    path = tmp_path / "m.dz"
    deepzip.save(m, path)
    from deepzip import codec

    calls = []
    real = codec.decode
    monkeypatch.setattr(codec, "decode", lambda t: calls.append(t.name) or real(t))
    from deepzip.codec import container

    monkeypatch.setattr(container, "decode", lambda t: calls.append(t.name) or real(t))
    r = deepzip.load(path, runtime="small")
    assert not [c for c in calls if c.endswith(".weight")], calls  # only the biases were decoded densely
    assert isinstance(r.fc1, SparseLinear) and r.fc1.sparse.nnz == int((strip(m).fc1.weight != 0).sum())


class _WithConv1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(2, 4, 3)
        self.fc = nn.Linear(4 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c(x).flatten(1))


def test_unsupported_layer_stays_dense_with_a_warning() -> None:
    m = _WithConv1d().eval()
    with torch.no_grad():
        m.c.weight[:, 0] = 0
        m.fc.weight[:, ::2] = 0
    x = torch.rand(3, 2, 8)
    ref = m(x)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        sparsify_(m, x[:1], forms=["csr"], repeats=1)
    assert any("c: Conv1d is not supported" in str(x.message) for x in w)
    assert isinstance(m.c, nn.Conv1d) and isinstance(m.fc, SparseLinear)
    assert torch.allclose(m(x), ref, atol=1e-5, rtol=0)


def test_fast_mode_installs_the_fastest_candidate_of_each_layer(monkeypatch) -> None:
    """Timings come from a fake clock that makes a different (form, kernel) the fastest in each layer: the layers
    the model then runs (read off the modules, not the report) are those, and the outputs stay the dense ones."""
    import deepzip.runtime as rt

    m = strip(_compressed("lenet300"))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        ref = m(x)
    tags = ["dense"] + [f"{k}:{e}" for k in FORMS if k != "dense" for e in rt.kernels_available()]
    layer_no = {300: 0, 100: 1, 10: 2}  # lenet300's fc1, fc2, fc3 by output width
    fastest = {f"fc{i + 1}": tags[(i + 1) % len(tags)] for i in range(3)}  # a different winner per layer

    def fake_seconds(fn, repeats: int) -> float:
        layer = fn.args[2] if fn.func is rt._in_model else fn.func  # timed in the model, or alone
        fn()  # each candidate still runs
        sp = getattr(layer, "sparse", None)
        tag = f"{sp.form}:{sp.kernel}" if sp is not None else "dense"
        i = layer_no[sp.shape[0] if sp is not None else layer.weight.shape[0]]
        return 1e-3 if tag == fastest[f"fc{i + 1}"] else 2e-3 + 1e-4 * tags.index(tag)

    def fake_interleaved(fns, repeats: int) -> dict:
        return {c: fake_seconds(fn, repeats) for c, fn in fns.items()}

    monkeypatch.setattr(rt, "interleaved_seconds", fake_interleaved)
    rows: list[dict] = []
    sparsify_(m, repeats=3, report=rows)
    runs = {r["layer"]: r["form"] if r["form"] == "dense" else f"{r['form']}:{r['kernel']}" for r in runtime_table(m)}
    assert runs == fastest
    assert all(r["ms"][fastest[r["layer"]]] == 1.0 and len(r["ms"]) == len(tags) for r in rows)
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-5, rtol=0)


def test_cli_bench_json_and_bad_input(tmp_path, capsys) -> None:
    import json

    from deepzip import cli

    path = tmp_path / "m.dz"
    deepzip.save(_compressed("lenet300"), path)
    assert cli.main(["bench", str(path), "--batch", "1,4", "--repeats", "2", "--runtime", "small", "--no-rss",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {(r["batch"], r["layer"]) for r in out["layers"]} == {(b, f"fc{i}") for b in (1, 4) for i in (1, 2, 3)}
    assert all(r["dense_ms"] > 0 and r["runtime_ms"] > 0 for r in out["layers"] + out["model"])
    assert out["resident_memory"]["runtime_tensor_bytes"] < out["resident_memory"]["dense_tensor_bytes"]
    assert cli.main(["bench", str(path), "--batch", "x"]) == 2
    assert cli.main(["bench", str(tmp_path / "missing.dz")]) == 2
    (tmp_path / "bad.dz").write_bytes(b"not a dz file")
    assert cli.main(["bench", str(tmp_path / "bad.dz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("deepzip bench: error:") for e in err)
