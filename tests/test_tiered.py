"""The ``tiered`` codec kind (format 1.3): per-tier codebooks and index streams, checked against a brute-force
reference, and crafted files (valid sizes, lying counts) refused by name."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip import codec
from deepzip.codec import huffman
from deepzip.errors import DeepzipFormatError


def _reference(cb: np.ndarray, tiers: np.ndarray, idx: np.ndarray, pos: np.ndarray, val: np.ndarray) -> np.ndarray:
    out = np.zeros(idx.size, np.float32)
    flat = idx.reshape(idx.shape[0], -1)
    c = flat.shape[1]
    for r in range(idx.shape[0]):  # element by element
        for j in range(c):
            out[r * c + j] = np.float32(np.float16(cb[tiers[r], flat[r, j]]))
    out[pos] = val
    return out.reshape(idx.shape)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), st.integers(1, 4), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_round_trip_matches_brute_force(rows: int, cols: int, n_tiers: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cb = rng.normal(size=(n_tiers, k))
    tiers = rng.integers(0, n_tiers, rows)
    idx = rng.integers(0, k, (rows, cols))
    n_out = int(rng.integers(0, rows * cols + 1))
    pos = rng.choice(rows * cols, n_out, replace=False)
    val = rng.normal(size=n_out).astype(np.float32)
    f = codec.read(codec.to_bytes({"e": codec.encode_tiered(cb, tiers, idx, pos, val, name="e")}))
    assert f.version == (1, 3)
    out = f.decode("e")
    assert out.dtype == np.float32 and np.array_equal(out, _reference(cb, tiers, idx, pos, val))


def test_separate_streams_beat_one_stream_on_mixed_precision_rows() -> None:
    """The reason for the kind: fine rows and coarse rows coded apart cost less than the grouped kind's one stream
    over the same indices (one shared codebook holding both tiers' values)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2000, 64))
    fine = rng.random(2000) < 0.1
    idx = np.where(fine[:, None], np.round(w * 8), 16 * np.round(w / 2)).astype(np.int64)
    idx -= idx.min()
    k = int(idx.max()) + 1
    levels = np.arange(k, dtype=np.float64)
    tiered = codec.encode_tiered(np.stack([levels, levels]), fine.astype(np.int64), idx)
    grouped = codec.encode_grouped(levels[None], idx, 2000)
    assert np.array_equal(codec.decode(tiered), codec.decode(grouped))
    assert tiered.nbytes < 0.9 * grouped.nbytes
    apart = len(huffman.pack_stream(idx[fine])) + len(huffman.pack_stream(idx[~fine]))
    assert tiered.sections["indices"].__len__() <= apart + 2 * k  # each stream stores k code lengths


def _t() -> codec.EncodedTensor:
    return codec.encode_tiered(np.array([[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]]), np.array([0, 1, 1, 0]),
                               np.array([[0, 1, 2], [2, 2, 1], [0, 0, 0], [1, 1, 1]]), np.array([4]), np.array([9.0]),
                               name="emb")


def _swap_tiers(t: codec.EncodedTensor, tiers: list[int]) -> codec.EncodedTensor:
    bad = copy.deepcopy(t)
    bad.sections["tiers"] = huffman.pack_stream(np.array(tiers), alphabet=t.meta["tiers"])
    return bad


def test_crafted_sections_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    t = _t()
    assert codec.decode(t)[1].tolist() == [7.0, 9.0, 6.0]
    cases = []
    bad = copy.deepcopy(t)
    bad.sections["codebooks"] = bad.sections["codebooks"][:-2]
    cases.append((bad, "emb/codebooks"))
    bad = copy.deepcopy(t)
    bad.meta["tiers"] = 3  # codebook bytes no longer fit
    cases.append((bad, "emb/codebooks"))
    bad = copy.deepcopy(t)
    bad.meta["tiers"] = 0
    cases.append((bad, "tiers=0"))
    bad = copy.deepcopy(t)
    bad.sections["indices"] += b"\0"
    cases.append((bad, "bytes after"))
    bad = copy.deepcopy(t)
    bad.sections["indices"] = bad.sections["indices"][:-1]
    cases.append((bad, "emb/indices"))
    # valid streams, lying split: the same 12 indices, but tier 0 claims 3 rows and tier 1 one
    cases.append((_swap_tiers(t, [0, 0, 1, 0]), "tier 0"))
    cases.append((_swap_tiers(t, [0, 1, 1]), "emb/tiers: count 3 != 4 rows"))
    bad = copy.deepcopy(t)
    bad.meta["outliers"] = 2
    cases.append((bad, "emb/outlier"))
    for bad, msg in cases:
        with pytest.raises(DeepzipFormatError, match=msg):
            codec.decode(bad)
    from deepzip.codec import container

    with monkeypatch.context() as m:  # a writer that does not check: files with valid checksums
        m.setattr(container, "check", lambda t, *a: {})
        blobs = [codec.to_bytes({"emb": bad}) for bad, _ in cases]
    for blob, (_, msg) in zip(blobs, cases):  # the same through a whole file, refused when it is read
        with pytest.raises(DeepzipFormatError, match=msg):
            codec.read(blob).decode("emb")


def test_encoder_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="tiers must be 2 integers"):
        codec.encode_tiered(np.zeros((2, 3)), np.array([0, 2]), np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="indices must be integers in 0..2"):
        codec.encode_tiered(np.zeros((2, 3)), np.array([0, 1]), np.full((2, 4), 3))
    with pytest.raises(ValueError, match="codebooks of shape"):
        codec.encode_tiered(np.zeros((0, 3)), np.array([0, 1]), np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="outlier positions"):
        codec.encode_tiered(np.zeros((1, 3)), np.array([0, 0]), np.zeros((2, 4), np.int64), np.array([8]),
                            np.array([1.0]))


def test_golden_13_file_loads_bit_exactly() -> None:
    import hashlib
    import json
    from pathlib import Path

    golden = Path(__file__).parent / "golden"
    f = codec.read(golden / "tiny13.dz")
    expected = json.loads((golden / "tiny13.expected.json").read_text())
    assert f.version == (1, 3) and list(f.tensors) == list(expected)
    for name, e in expected.items():
        t = f.tensors[name]
        assert (t.kind, t.dtype, list(t.shape)) == (e["kind"], e["dtype"], e["shape"])
        assert hashlib.sha256(f.decode(name).tobytes()).hexdigest() == e["sha256"]
