"""Hostile ``.dz`` files for the tests, made on the fly (no committed blobs): bombs, lying headers, code names.

Each function returns the file's bytes. Run ``python tests/hostile.py DIR`` to write them all into DIR (for trying
the CLI by hand: ``deepzip inspect DIR/sparse_bomb.dz``).
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np

from deepzip import codec
from deepzip.codec import container, huffman
from deepzip.codec._tensor import EncodedTensor


def sparse_bomb(elements: int = 1 << 28, width: int = 16) -> bytes:
    """One all-pruned sparse tensor of ``elements`` float32 zeros (default 1 GiB), stored as filler entries only:
    a few kilobytes. Valid by the format; only ``max_bytes`` stops it."""
    entries = -(-elements // (1 << width))
    gaps = np.full(entries, (1 << width) - 1, np.int64)
    gaps[-1] = elements - 1 - (entries - 1) * (1 << width)  # the last entry sits on the last element
    t = EncodedTensor(
        "bomb.weight", "sparse", (elements,), "float32", {"k": 1, "gap_width": width, "kept": 0},
        {"codebook": np.zeros(1, "<f4").tobytes(), "indices": huffman.pack_stream(np.ones(entries, np.int64), 2),
         "gaps": huffman.pack_stream(gaps, 1 << width)},
    )
    return codec.to_bytes({"bomb.weight": t})


def small_file(architecture: str | None = None) -> bytes:
    """A valid two-tensor file (a sparse weight and a dense bias)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 5)).astype(np.float32)
    t = {"w": codec.encode_sparse(np.array([-1.0, 1.0]), (w > 0).astype(np.int64), np.abs(w) > 0.5),
         "b": codec.encode_dense(np.arange(5, dtype=np.float32))}
    return codec.to_bytes(t, architecture=architecture)


def model_like_tensors() -> dict[str, EncodedTensor]:
    """One tensor of every kind and dense dtype, 0-d and empty ones too."""
    rng = np.random.default_rng(1)
    t = {f"d_{dt}": codec.encode_dense(rng.normal(size=(3, 2)).astype(dt)) for dt in codec._tensor.DENSE_DTYPES
         if dt != "bfloat16"}
    bf16 = (rng.normal(size=(3, 2)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    t["d_bfloat16"] = codec.encode_dense(bf16, dtype="bfloat16")
    w = rng.normal(size=(40, 30)).astype(np.float32)
    t["planes"] = codec.encode_planes(w, block=500)
    t["planes_masked"] = codec.encode_planes(w, mask=np.abs(w) > 1.0, block=300)
    t["zero_d"] = codec.encode_dense(np.float32(2.5))
    t["empty"] = codec.encode_dense(np.zeros((0, 3), np.float16))
    t["cb"] = codec.encode_codebook(np.array([-1.0, 1.0]), rng.integers(0, 2, (4, 4)))
    t["sp"] = codec.encode_sparse(np.array([-1.0, 1.0]), rng.integers(0, 2, (4, 4)), rng.random((4, 4)) < 0.3)
    return t


def with_header(blob: bytes, edit) -> bytes:
    """``blob`` with its header JSON changed by ``edit(header)`` (in place or returning a new one); checksums fixed."""
    version, text, data = container._split(blob)
    header = json.loads(text)
    header = edit(header) or header
    return container._join(version, json.dumps(header).encode(), data)


def named_architecture(name: str) -> bytes:
    """A file whose header names ``name`` as its architecture (e.g. ``"os:abort"``)."""
    return small_file(architecture=name)


def header_bomb(values: int = 3_000_000) -> bytes:
    """A header whose zlib stream inflates to ``values`` empty lists (3M: 9 MB of JSON from ~9 KB)."""
    version, text, data = container._split(small_file())
    bomb = text[:-1] + b',"z":[' + b"[]," * (values - 1) + b"[]]}"
    return container._pack(version, zlib.compress(bomb, 9), data)


def huge_shape(shape=(0, 2**63)) -> bytes:
    """An empty tensor with an impossible shape: no element, but a dimension beyond int64."""
    blob = codec.to_bytes({"e": codec.encode_dense(np.zeros(0, np.float32))})
    return with_header(blob, lambda h: h["tensors"][0].__setitem__("shape", list(shape)))


def nan_codebook() -> bytes:
    """A shared tensor whose codebook holds a NaN (checksums recomputed, so only the value check can catch it)."""
    blob = small_file()
    version, text, data = container._split(blob)
    header = json.loads(text)
    sec = header["tensors"][0]["sections"]["codebook"]
    data = bytearray(data)
    data[sec["offset"] : sec["offset"] + 4] = np.array([np.nan], "<f4").tobytes()
    return container._join(version, text, bytes(data))


def flipped_padding() -> tuple[bytes, bytes]:
    """(a file with a non-zero padding byte after the header, one with a non-zero byte between two sections)."""
    version, text, data = container._split(small_file())
    while (24 + len(zlib.compress(text, 9))) % 8 == 0:  # make sure the header is followed by padding
        text += b" "
    blob = container._pack(version, zlib.compress(text, 9), data)  # the checksums in text are still right
    hlen = int.from_bytes(blob[16:24], "little")
    start = container._align(24 + hlen)
    after_header = bytearray(blob)
    after_header[24 + hlen] = 1
    spans = sorted((d["offset"], d["offset"] + d["length"])
                   for t in json.loads(text)["tensors"] for d in t["sections"].values())
    gap = next(end for (_, end), (nxt, _) in zip(spans, spans[1:]) if nxt > end)
    between = bytearray(blob)
    between[start + gap] = 1
    return bytes(after_header), bytes(between)


ALL = {
    "sparse_bomb": lambda: sparse_bomb(),
    "header_bomb": lambda: header_bomb(),
    "huge_shape": lambda: huge_shape(),
    "nan_codebook": lambda: nan_codebook(),
    "os_abort": lambda: named_architecture("os:abort"),
    "sys_exit": lambda: named_architecture("sys:exit"),
}

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile")
    out.mkdir(parents=True, exist_ok=True)
    for name, make in ALL.items():
        (out / f"{name}.dz").write_bytes(make())
        print(out / f"{name}.dz")
