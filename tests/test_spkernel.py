"""The C kernel of the sparse runtime: outputs equal a float64 brute force; hostile arrays are refused before C runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepzip.errors import DeepzipFormatError
from deepzip.runtime import SparseLinear, _SparseWeight, _spkernel, kernels_available, runtime_table, sparsify_

C = pytest.mark.skipif(not _spkernel.available(), reason="the C kernel is not built (pip install -e . builds it)")
ALL = ["deepzip-c", "torch-csr"]


def _weight(rows: int, cols: int, keep: float, seed: int, k: int = 16) -> torch.Tensor:
    """A pruned, weight-shared (rows, cols) weight: k centroids, ``keep`` of the weights non-zero."""
    g = torch.Generator().manual_seed(seed)
    cb = torch.linspace(-1.5, 1.5, k)
    cb[cb == 0] = 0.25  # no zero centroid: the C layout's fillers then need one appended
    w = cb[torch.randint(0, k, (rows, cols), generator=g)]
    return torch.where(torch.rand(rows, cols, generator=g) < keep, w, torch.zeros(()))


def _check_close(out: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> None:
    """``out`` == ``x @ w.T`` to 1e-5 of the magnitude of the terms, against a float64 brute force."""
    ref = x.double() @ w.double().t()
    scale = x.double().abs() @ w.double().abs().t()
    assert out.shape == ref.shape
    assert bool(((out.double() - ref).abs() <= 1e-5 * scale + 1e-30).all()), float((out.double() - ref).abs().max())


SHAPES = [  # (rows, cols, kept fraction, what it tests)
    (37, 53, 0.3, "odd sizes"),
    (64, 300, 0.05, "empty rows"),
    (20, 1, 0.5, "one column"),
    (16, 16, 0.0, "empty matrix"),
    (8, 2000, 0.003, "column gaps over 255: filler entries"),
    (3, 70_000, 0.002, "in_features > 65535 (over uint16)"),
    (5, 9, 1.0, "dense"),
]


@pytest.mark.parametrize("kernel", ALL)
@pytest.mark.parametrize("form", ["csr", "codebook"])
@pytest.mark.parametrize("rows,cols,keep,what", SHAPES)
def test_outputs_equal_the_dense_product(kernel: str, form: str, rows: int, cols: int, keep: float,
                                         what: str) -> None:
    if kernel not in kernels_available():
        pytest.skip("the C kernel is not built")
    w = _weight(rows, cols, keep, seed=rows * cols)
    layer = SparseLinear(_SparseWeight.from_dense(w, form, kernel=kernel, name="t"), None)
    assert layer.sparse.kernel == kernel and layer.sparse.nnz == int((w != 0).sum())
    for batch in (1, 7, 64):
        x = torch.randn(batch, cols)
        with torch.no_grad():
            _check_close(layer(x), w, x)
    for x in (torch.randn(cols, 6).t(), torch.randn(2, 3, cols)[:, 1]):  # non-contiguous inputs
        with torch.no_grad():
            _check_close(layer(x), w, x)
    assert torch.equal(layer.sparse.dense(), w)


@C
def test_fillers_and_conversions_keep_the_weight() -> None:
    w = _weight(6, 1500, 0.004, seed=1)
    w[0, 0], w[0, 1499] = 1.0, -1.0  # a gap of 1499 columns: five fillers in row 0
    sw = _SparseWeight.from_dense(w, "codebook", kernel="deepzip-c")
    assert sw.entries > sw.nnz and float(sw.codebook[-1]) == 0.0  # fillers point at an appended zero centroid
    for form in ("csr", "codebook"):
        for kernel in ALL:
            assert torch.equal(sw.converted(form, kernel).dense(), w)
    w = torch.zeros(2, 600)
    w[0, :256] = torch.arange(1, 257) / 64  # 256 distinct non-zero values and a gap of 343: the zero is the 257th
    w[0, 599] = 1.0
    sw = _SparseWeight.from_dense(w, "codebook", kernel="deepzip-c")
    assert sw.codebook.numel() == 257 and sw.indices.dtype == torch.uint16 and torch.equal(sw.dense(), w)
    x = torch.randn(3, 600)
    _check_close(SparseLinear(sw, None)(x), w, x)
    rowptr, step, at = _spkernel.encode_steps(np.array([0, 1]), np.array([510]))
    assert step.tolist() == [255, 255] and at.tolist() == [1]  # 510 = 255 (a filler) + 255
    assert _spkernel.absolute_columns(rowptr, step)[-1] == 510


@C
def test_fast_mode_times_both_kernels_and_the_fallback_when_forced_off(monkeypatch) -> None:
    lin = torch.nn.Linear(400, 300, bias=True)
    with torch.no_grad():
        lin.weight.copy_(_weight(300, 400, 0.1, seed=3))
    model = torch.nn.Sequential(lin).eval()
    x = torch.randn(4, 400)
    ref = model(x).detach()
    rows: list[dict] = []
    sparsify_(model, x[:1], forms=["csr", "codebook"], report=rows, repeats=2)
    assert set(rows[0]["ms"]) == {f"{k}:{e}" for k in ("csr", "codebook") for e in ALL}
    assert runtime_table(model)[0]["kernel"] == rows[0]["kernel"]
    assert model.apply(lambda m: None) is model  # nn.Module.apply still works through the runtime layers
    _check_close(model(x).detach() - lin.bias.detach(), lin.weight.detach(), x)
    monkeypatch.setenv("DEEPZIP_KERNEL", "torch")  # as without a compiler: torch's CSR, silently
    assert kernels_available() == ["torch-csr"]
    model = torch.nn.Sequential(lin).eval()
    sparsify_(model, x[:1], forms=["csr"], repeats=1)
    assert runtime_table(model)[0]["kernel"] == "torch-csr"
    assert torch.allclose(model(x), ref, atol=1e-5)
    assert _SparseWeight.from_dense(lin.weight, "csr").kernel == "torch-csr"


# ------------------------------------------------------------------------------------------------ hostile arrays
def _c_layer(form: str = "codebook") -> SparseLinear:
    return SparseLinear(_SparseWeight.from_dense(_weight(12, 40, 0.3, seed=5), form, kernel="deepzip-c",
                                                 name="evil.fc"), None)


@C
@pytest.mark.parametrize("attack", ["step", "codebook_index", "rowptr_end", "rowptr_decreasing", "dtype", "replaced",
                                    "shape"])
def test_a_crafted_bad_index_is_refused_before_the_c_code_runs(attack: str, monkeypatch) -> None:
    layer = _c_layer()
    sw = layer.sparse
    x = torch.randn(1, 40)
    layer(x)  # checked once and run
    calls = []
    real = _spkernel.function(sw._arrays[2].dtype)
    spy = lambda *a: calls.append(1) or real(*a)  # noqa: E731
    monkeypatch.setattr(_spkernel, "function", lambda dtype: spy)  # a re-check that passes would fetch this
    sw._call = (spy, *sw._call[1:])  # a modification that goes unnoticed would call this
    layer(x)
    assert calls == [1]
    with torch.no_grad():
        if attack == "step":  # row 0 walks to column 255 * n of a 40-column matrix
            sw.step[: int(sw.crow[1])] = 255
        elif attack == "codebook_index":
            sw.indices[3] = 200
        elif attack == "rowptr_end":
            sw.crow[-1] += 1000
        elif attack == "rowptr_decreasing":
            sw.crow[5] = sw.crow[6] + 1
        elif attack == "dtype":
            sw.step = sw.step.to(torch.int16)
        elif attack == "replaced":  # a new buffer (as load_state_dict(assign=True) makes), out of range
            sw.indices = torch.full_like(sw.indices, 99)
        elif attack == "shape":  # a narrower declared input than the columns the rows reach
            sw.shape = (12, 3)
            layer.in_features = 3
            x = torch.randn(1, 3)
    with pytest.raises(DeepzipFormatError, match=r"evil\.fc \(12, (40|3)\)"):
        layer(x)
    assert calls == [1]  # the C code did not run on the bad arrays


def test_bad_csr_arrays_are_refused_at_construction() -> None:
    crow, cb = np.array([0, 1, 2], np.int32), np.array([0.5, 1.0], np.float32)
    for kernel in kernels_available():
        with pytest.raises(DeepzipFormatError, match="column index 9 outside 0..7"):
            _SparseWeight((2, 8), crow, np.array([1, 9]), None, cb, np.array([0, 1]), kernel=kernel, name="l")
        with pytest.raises(DeepzipFormatError, match="codebook index 2 with 2 codebook entries"):
            _SparseWeight((2, 8), crow, np.array([1, 2]), None, cb, np.array([0, 2]), kernel=kernel, name="l")
        with pytest.raises(DeepzipFormatError, match="row pointers"):
            _SparseWeight((2, 8), np.array([0, 3, 2]), np.array([1, 2]), np.ones(2), kernel=kernel, name="l")
        with pytest.raises(DeepzipFormatError, match="kept positions"):
            _SparseWeight.from_positions((2, 8), np.array([3, 16]), "csr", cb, np.array([0, 1]), kernel=kernel)
        with pytest.raises(DeepzipFormatError, match="kept positions"):
            _SparseWeight.from_positions((2, 8), np.array([5, 3]), "csr", cb, np.array([0, 1]), kernel=kernel)
    if "deepzip-c" in kernels_available():
        with pytest.raises(DeepzipFormatError, match=r"l \(1, 8\): .*not increasing"):
            _SparseWeight((1, 8), np.array([0, 2]), np.array([5, 3]), np.ones(2), kernel="deepzip-c", name="l")


@C
def test_spmm_refuses_an_input_of_the_wrong_shape() -> None:
    sw = _c_layer("csr").sparse
    arrays = sw._c_arrays()
    with pytest.raises(ValueError, match="do not fit"):
        _spkernel.spmm(sw.shape, *arrays, np.zeros((39, 1), np.float32), np.zeros((12, 1), np.float32))


@C
def test_sixteen_bit_codebook_indices() -> None:
    w = _weight(40, 700, 0.2, seed=7, k=1000)  # ~1000 distinct values: uint16 indices
    layer = SparseLinear(_SparseWeight.from_dense(w, "codebook", kernel="deepzip-c"), None)
    assert layer.sparse.indices.dtype == torch.uint16
    for batch in (1, 7, 64):
        x = torch.randn(batch, 700)
        with torch.no_grad():
            _check_close(layer(x), w, x)


@C
def test_random_corruptions_are_refused_or_computed_exactly() -> None:
    """300 random in-place corruptions of a layer's arrays: each is refused, or the kernel computes exactly what the
    (then valid) arrays say, against a numpy brute force; never a read past the arrays (that would crash here)."""
    rng = np.random.default_rng(0)
    refused = 0
    for trial in range(300):
        form = ("csr", "codebook")[trial % 2]
        layer = SparseLinear(_SparseWeight.from_dense(_weight(9, 30, 0.4, seed=trial), form, kernel="deepzip-c",
                                                      name="fuzz"), None)
        sw = layer.sparse
        target = (sw.crow, sw.step, sw.indices if form == "codebook" else sw.step)[rng.integers(3)]
        with torch.no_grad():
            for _ in range(rng.integers(1, 4)):
                i = int(rng.integers(target.numel()))
                top = {torch.uint8: 256, torch.uint16: 65536}.get(target.dtype, 200)
                target[i] = int(rng.integers(top)) if target.dtype != torch.int32 else int(rng.integers(-5, 200))
        x = torch.randn(2, 30)
        try:
            out = layer(x)
        except DeepzipFormatError:
            refused += 1
            continue
        crow, step = sw.crow.numpy(), sw.step.numpy()
        cols = _spkernel.absolute_columns(crow, step)
        vals = sw.values.numpy() if form == "csr" else sw.codebook.numpy()[sw.indices.numpy()]
        w = np.zeros((9, 30), np.float64)
        np.add.at(w, (np.repeat(np.arange(9), np.diff(crow)), cols), vals)
        _check_close(out, torch.from_numpy(w), x)
    assert 50 < refused < 300  # both outcomes happen


@C
def test_a_layer_big_enough_for_the_prefetching_loop() -> None:
    w = _weight(1100, 2000, 0.97, seed=11)  # > 2**21 kept weights: the float32 batch-1 loop prefetches
    layer = SparseLinear(_SparseWeight.from_dense(w, "csr", kernel="deepzip-c"), None)
    assert layer.sparse.entries >= 1 << 21
    x = torch.randn(1, 2000)
    with torch.no_grad():
        _check_close(layer(x), w, x)
