"""The compiled entropy stage (codec/_huffc.c) against the numpy code it replaces: the same bytes, the same arrays,
the same errors. ``DEEPZIP_CODEC=numpy`` turns the compiled stage off (run the codec tests that way too)."""

from __future__ import annotations

import numpy as np
import pytest

from deepzip import codec
from deepzip.codec import _fast, huffman
from deepzip.codec._tensor import KIND_TABLE, KINDS
from deepzip.errors import DeepzipFormatError

pytestmark = pytest.mark.skipif(not _fast.available(), reason="compiled codec stage not built")


def both(monkeypatch: pytest.MonkeyPatch, fn):  # type: ignore[no-untyped-def]
    """(compiled result, numpy result) of fn(), each an outcome: the value or ('error', type, message)."""

    def outcome():  # type: ignore[no-untyped-def]
        try:
            return fn()
        except (DeepzipFormatError, ValueError) as e:
            return ("error", type(e).__name__, str(e))

    fast = outcome()
    with monkeypatch.context() as m:
        m.setenv("DEEPZIP_CODEC", "numpy")
        assert not _fast.available()
        slow = outcome()
    return fast, slow


def same(a, b) -> bool:  # type: ignore[no-untyped-def]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return type(a) is type(b) and a == b


def random_symbols(rng: np.random.Generator, n: int, alphabet: int, dtype: type) -> np.ndarray:
    p = rng.uniform(0.01, 0.9)
    return np.minimum(rng.geometric(p, n) - 1, alphabet - 1).astype(dtype)


@pytest.mark.parametrize("seed", range(6))
def test_streams_same_bytes_and_decodes(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n, alphabet in ((1, 1), (7, 3), (1000, 17), (70_000, 256), (300_000, 300), (5000, 70_000)):
        for dtype in (np.uint8, np.uint16, np.int32, np.int64):
            if alphabet > np.iinfo(dtype).max + 1:
                continue
            s = random_symbols(rng, n, alphabet, dtype)
            fast, slow = both(monkeypatch, lambda s=s, a=alphabet: huffman.pack_stream(s, alphabet=a))
            assert fast == slow
            back_fast, back_slow = both(monkeypatch, lambda b=fast: huffman.unpack_stream(b))
            assert same(back_fast, back_slow) and np.array_equal(back_fast, s)


def test_code_lengths_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    for t in range(300):
        n = int(rng.integers(1, 600))
        counts = np.round(1.7 ** rng.integers(0, 38, n)).astype(np.int64) if t % 2 else rng.integers(0, 9, n)
        limit = int(rng.integers(1, 25))
        fast, slow = both(monkeypatch, lambda c=counts, m=limit: huffman.code_lengths(c, m))
        assert same(fast, slow)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "float64", "int8", "int64", "bool"])
def test_planes_same_bytes_and_decodes(monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((300, 77)) * 0.05).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = 0
    make = {"bfloat16": lambda: (w.view(np.uint32) >> 16).astype(np.uint16), "bool": lambda: w > 0,
            "int8": lambda: (w * 1000).astype(np.int8), "int64": lambda: (w * 1e6).astype(np.int64)}
    a = make.get(dtype, lambda: w.astype(dtype))()
    for mask in (None, w != 0):
        for block in (1000, 1 << 18):
            fast, slow = both(monkeypatch, lambda m=mask, b=block: codec.encode_planes(a, dtype=dtype, mask=m, block=b))
            assert fast.sections == slow.sections and fast.meta == slow.meta
            d_fast, d_slow = both(monkeypatch, lambda t=fast: codec.decode(t))
            assert same(d_fast, d_slow)
    lossless_fast, lossless_slow = both(monkeypatch, lambda: codec.encode_lossless(a, dtype=dtype))
    assert lossless_fast.kind == lossless_slow.kind and lossless_fast.sections == lossless_slow.sections


def test_sparse_and_codebook_decode_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((400, 300)) < 0.09
    idx = rng.integers(0, 32, mask.shape)
    cb = np.linspace(-1, 1, 32)
    for t in (codec.encode_sparse(cb, idx, mask), codec.encode_codebook(cb, idx)):
        fast, slow = both(monkeypatch, lambda t=t: codec.decode(t))
        assert same(fast, slow)
        assert np.array_equal(fast, np.where(mask, cb[idx], 0).astype(np.float32) if t.kind == "sparse"
                              else cb[idx].astype(np.float32))


def test_corrupt_streams_same_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flipped bytes anywhere in a stream or a planes section: both paths accept the same and refuse the same, with
    the same message."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal(5000) * 0.02).astype(np.float32)
    streams = [huffman.pack_stream(random_symbols(rng, 20_000, 40, np.int64), alphabet=40)]
    planes = codec.encode_planes(w, block=2048)
    sparse_t = codec.encode_sparse(np.linspace(-1, 1, 8), rng.integers(0, 8, 3000), rng.random(3000) < 0.2)
    for trial in range(400):
        b = bytearray(streams[0])
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        fast, slow = both(monkeypatch, lambda b=bytes(b): huffman.unpack_stream(b))
        assert same(fast, slow), trial
        for t in (planes, sparse_t):
            name = list(t.sections)[int(rng.integers(0, len(t.sections)))]
            sec = bytearray(t.sections[name])
            sec[int(rng.integers(0, len(sec)))] ^= 1 << int(rng.integers(0, 8))
            bad = codec.EncodedTensor(t.name, t.kind, t.shape, t.dtype, t.meta, {**t.sections, name: bytes(sec)})
            fast, slow = both(monkeypatch, lambda bad=bad: codec.decode(bad))
            assert same(fast, slow), (trial, name)


def test_one_kind_table() -> None:
    """Every kind has its encoder, checker and decoder in one place, and the codebook limit is defined once."""
    assert set(KINDS) == set(KIND_TABLE)
    for name, kind in KIND_TABLE.items():
        assert callable(kind.encode) and callable(kind.check) and callable(kind.decode), name
    assert codec.grouped.MAX_K == huffman.MAX_CODEBOOK == 1 << 16
    with pytest.raises(ValueError, match="65536"):
        codec.encode_codebook(np.zeros((1 << 16) + 1), np.zeros(3, np.int64))


def test_crc32_is_zlibs(monkeypatch: pytest.MonkeyPatch) -> None:
    # section checksums: the compiled fold must give zlib.crc32's value on every length, alignment and buffer type
    import zlib

    rng = np.random.default_rng(7)
    for n in (0, 1, 63, 4095, 4096, 4097, 4111, 4112, 65_536 + 13, 1 << 20):
        b = rng.integers(0, 256, n + 3, dtype=np.uint8).tobytes()
        for data in (b[:n], memoryview(b)[3:], bytearray(b[1 : n + 1])):
            fast, slow = both(monkeypatch, lambda d=data: _fast.crc32(d))
            assert fast == slow == zlib.crc32(data)


def test_sparse_narrow_streams_decode_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # index and gap alphabets of at most 256 symbols decode as uint8 (the multi-symbol table); wider ones as before
    rng = np.random.default_rng(8)
    for k, n in ((32, 200_000), (300, 50_000)):
        cb = rng.standard_normal(k).astype(np.float32)
        idx = rng.integers(0, k, n)
        mask = rng.random(n) < 0.1
        t = codec.encode_sparse(cb, idx, mask)
        fast, slow = both(monkeypatch, lambda t=t: codec.decode(t))
        assert same(fast, slow) and np.array_equal(fast, np.where(mask, cb[idx], np.float32(0)))
