"""The ``planes`` tensor kind (format 1.1): lossless entropy coding of raw values, optionally behind a zero mask.

A float's bytes are far from uniform: the exponent of trained weights takes a handful of values (about 3 bits of
entropy in its 8), while the low mantissa bytes are nearly random. So each element is split into its byte *planes*
(plane ``i`` = byte ``i`` of the little-endian value) and every plane of every block of ``block`` elements is
stored either raw or as a Huffman stream (:mod:`deepzip.codec.huffman`, alphabet 256), whichever is smaller, or
as one byte when all its bytes are equal (the zero low bytes of float32 values held in float64, the high bytes of
small int64s; not every plane of a block may be constant, so a block's bytes bound its element count).
Floats are first rotated left by one bit, so the sign moves to bit 0 and the exponent fills the top byte exactly
(bfloat16, float32) or mostly (float16, float64).

A *masked* tensor (pruned, but with too many distinct values for a codebook) stores a keep-mask, packed 8 per
byte (numpy ``packbits``, MSB first) and coded the same way, and the planes of its kept values only.

Blocks bound the memory of encoding and decoding (a few bytes per element of one block) and let each block's
code follow its own statistics. Sizes are computed from histograms before anything is coded, so a caller can
compare candidates (:func:`planes_size`) without encoding them.

Example:
    >>> w = (np.random.default_rng(0).standard_normal(10_000) * 0.02).astype(np.float32)
    >>> meta, sections = encode_planes(w)
    >>> back = decode_planes(meta, sections, w.shape, "float32")
    >>> bool(np.array_equal(back.view(np.uint32), w.view(np.uint32))), sum(map(len, sections.values())) < w.nbytes
    (True, True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _fast, huffman

__all__ = ["BLOCK", "PLANE_DTYPES", "decode_planes", "encode_planes", "planes_size", "storage_dtype"]

# Elements per block. Each block's planes get their own code, so smaller blocks follow local statistics (rows of an
# embedding differ): on all-MiniLM-L6-v2 fp32, blocks of 4 Mi / 1 Mi / 256 Ki / 64 Ki elements gave ratios 1.2096 /
# 1.2156 / 1.2183 / 1.2190 (bf16: 1.4995 / 1.5011 / 1.5013 / 1.4981, where the 280-byte stream headers start to
# tell); 256 Ki also keeps a block's temporaries in cache.
BLOCK = 1 << 18
MAX_BLOCK = 1 << 26
# Decoded dtypes; "bfloat16" has no numpy dtype, so it travels as uint16 bit patterns.
PLANE_DTYPES = ("float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
_FLOATS = ("float32", "float16", "bfloat16", "float64")
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds ``dtype``'s values (``bfloat16`` -> ``uint16`` bit patterns)."""
    return np.dtype("<u2") if dtype == "bfloat16" else np.dtype(dtype).newbyteorder("<")


def _bits(values: np.ndarray, dtype: str) -> np.ndarray:
    """Unsigned integer view of ``values`` (1-d, a new array), rotated left by one bit for floats."""
    size = storage_dtype(dtype).itemsize
    u = np.ascontiguousarray(values).reshape(-1).view(_UINT[size])
    if dtype in _FLOATS:
        nb = 8 * size
        u = (u << _UINT[size](1)) | (u >> _UINT[size](nb - 1))
    return u


def _unrotate_(u: np.ndarray, dtype: str) -> None:
    """Undo :func:`_bits`'s rotation in place (temporaries of one block at a time)."""
    if dtype not in _FLOATS:
        return
    t = u.dtype.type
    nb = 8 * u.itemsize
    for s in range(0, u.size, BLOCK):
        blk = u[s : s + BLOCK]
        low = blk >> t(1)
        blk <<= t(nb - 1)
        blk |= low


def _plane(u: np.ndarray, i: int) -> np.ndarray:
    return u.view(np.uint8).reshape(-1, u.itemsize)[:, i] if u.itemsize > 1 else u.view(np.uint8)


def _best(plane: np.ndarray) -> tuple[bool, int]:
    """(code it?, its stored size): Huffman when that is smaller than the raw bytes."""
    if plane.size == 0:
        return False, 0
    h = huffman.stream_size(np.bincount(plane, minlength=256))
    return (True, h) if h < plane.size else (False, plane.size)


def _split(values: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    v = np.ascontiguousarray(values).reshape(-1)
    if mask is None:
        return v, None
    m = np.asarray(mask, bool).reshape(-1)
    if m.size != v.size:
        raise ValueError(f"mask of {m.size} elements for {v.size} values")
    return v[m], np.packbits(m)


def _split_block(values: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(planes, counts)`` of one block of values: planes (size, n) uint8 (plane ``i`` = byte ``i`` of the rotated
    values), counts (size, 256) their histograms. One compiled pass, or numpy (the same arrays)."""
    size = storage_dtype(dtype).itemsize
    u = np.ascontiguousarray(values).reshape(-1).view(_UINT[size])
    fast = _fast.split(u, dtype in _FLOATS)
    if fast is not None:
        return fast
    bits = _bits(u, dtype)
    planes = np.empty((size, bits.size), np.uint8)
    for i in range(size):
        planes[i] = _plane(bits, i)
    return planes, np.stack([np.bincount(p, minlength=256) for p in planes]).astype(np.int64)


def _blocks(kept: np.ndarray, dtype: str, block: int):  # type: ignore[no-untyped-def]
    """Yield (block index, planes, counts) of one block at a time (temporaries of one block only)."""
    for j, s in enumerate(range(0, kept.size, block)):
        yield j, *_split_block(kept[s : s + block], dtype)


def planes_size(values: np.ndarray, dtype: str, mask: np.ndarray | None = None, block: int = BLOCK) -> int:
    """Exact bytes of the sections :func:`encode_planes` would write (computed from histograms, nothing coded)."""
    kept, packed = _split(values, mask)
    total = _best(packed)[1] if packed is not None else 0
    for _, _, counts in _blocks(kept, dtype, block):
        total += sum(c[1] for c in _block_choices(counts, packed is not None))
    return total


def _block_choices(counts: np.ndarray, masked: bool) -> list[tuple[int, int]]:
    """Per plane of one block, from its histograms (size, 256): (0 raw | 1 Huffman | 2 constant, stored bytes).

    A constant plane (every byte equal) is stored as that one byte. Without a mask not every plane of a block may be
    constant (the block's bytes must bound its element count), so then the first plane is Huffman-coded instead;
    behind a mask, the mask's bytes bound the count (a bool tensor: the mask, and one constant byte).
    """
    out = []
    for c in counts:
        n = int(c.sum())
        if n and np.count_nonzero(c) == 1:
            out.append((2, 1))
        else:
            h = huffman.stream_size(c) if n else 0
            out.append((1, h) if n and h < n else (0, n))
    if out and not masked and all(c == 2 for c, _ in out):
        out[0] = (1, huffman.stream_size(counts[0]))
    return out


def encode_planes(
    values: np.ndarray, dtype: str | None = None, mask: np.ndarray | None = None, block: int = BLOCK
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Sections and meta of the ``planes`` kind: see the module docstring and docs/FORMAT.md.

    Args:
        values: the tensor (any shape); for ``dtype="bfloat16"`` its uint16 bit patterns.
        dtype: the decoded dtype name (default ``values.dtype``), one of :data:`PLANE_DTYPES`.
        mask: optional bools of ``values``' shape; only values where it is True are stored, the rest decode to 0.
        block: elements per block, 1..2**26.

    Returns:
        ``(meta, sections)``; wrap them with :func:`deepzip.codec.encode_planes` into an EncodedTensor.
    """
    dtype = dtype or np.asarray(values).dtype.name
    if dtype not in PLANE_DTYPES:
        raise ValueError(f"dtype {dtype} not storable as planes, expected one of {PLANE_DTYPES}")
    if not 1 <= block <= MAX_BLOCK:
        raise ValueError(f"block={block}, expected 1..{MAX_BLOCK}")
    values = np.asarray(values)
    size = storage_dtype(dtype).itemsize
    if values.dtype.itemsize != size:
        raise ValueError(f"values of dtype {values.dtype} do not hold {dtype}")
    kept, packed = _split(values, mask)
    sections: dict[str, bytes] = {}
    coded: list[int] = []
    mask_coded = False
    if packed is not None:
        mask_coded, _ = _best(packed)
        sections["mask"] = huffman.pack_stream(packed, alphabet=256) if mask_coded else packed.tobytes()
    for j, planes, counts in _blocks(kept, dtype, block):
        flags = 0
        for i, (how, _) in enumerate(_block_choices(counts, packed is not None)):
            p = planes[i]
            flags |= int(how > 0) << i
            sections[f"b{j}p{i}"] = (p.tobytes() if how == 0 else
                                     huffman.pack_stream(p, alphabet=256, counts=counts[i]) if how == 1 else
                                     bytes(p[:1]))
        coded.append(flags)
    meta = {"block": block, "kept": int(kept.size), "masked": int(packed is not None),
            "mask_coded": int(mask_coded), "coded": coded}
    return meta, sections


def section_names(meta: dict[str, Any], dtype: str) -> list[str]:
    """The sections a ``planes`` tensor must have, given its (checked) meta."""
    size = storage_dtype(dtype).itemsize
    blocks = math.ceil(meta["kept"] / meta["block"])
    return (["mask"] if meta["masked"] else []) + [f"b{j}p{i}" for j in range(blocks) for i in range(size)]


def _unplane(data: bytes, coded: bool, out: np.ndarray, where: str) -> None:
    """Decode one plane section into ``out`` (uint8, its element count), checked."""
    from ..errors import DeepzipFormatError

    count = out.size
    if coded and len(data) == 1:  # a constant plane
        out.fill(data[0])
        return
    if coded:
        try:
            info = huffman.stream_info(data, payload=False)
        except DeepzipFormatError as e:
            raise DeepzipFormatError(f"{where}: {e}") from None
        if info["count"] != count or info["alphabet"] > 256:
            raise DeepzipFormatError(f"{where}: {info['count']} symbols over {info['alphabet']}, expected "
                                     f"{count} over at most 256")
        try:
            huffman.unpack_stream(data, out=out, info=info)
        except DeepzipFormatError as e:
            raise DeepzipFormatError(f"{where}: {e}") from None
        return
    if len(data) != count:
        raise DeepzipFormatError(f"{where}: {len(data)} raw bytes, expected {count}")
    out[:] = np.frombuffer(data, np.uint8)


def decode_planes(
    meta: dict[str, Any], sections: dict[str, bytes], shape: tuple[int, ...], dtype: str, name: str = ""
) -> np.ndarray:
    """The array of a ``planes`` tensor (``bfloat16`` as uint16 bit patterns); raises DeepzipFormatError."""
    from ..errors import DeepzipFormatError

    n = math.prod(shape)
    sd = storage_dtype(dtype)
    kept, block = meta["kept"], meta["block"]
    mask = None
    if meta["masked"]:
        packed = np.empty((n + 7) // 8, np.uint8)
        _unplane(sections["mask"], bool(meta["mask_coded"]), packed, f"{name}/mask")
        mask = np.unpackbits(packed, count=n).astype(bool)
        if int(mask.sum()) != kept:
            raise DeepzipFormatError(f"{name}/mask: {int(mask.sum())} kept elements, meta says kept={kept}")
    u = np.empty(kept, _UINT[sd.itemsize])
    rotate = dtype in _FLOATS
    merged = True
    fast = _fast.available()
    temp = np.empty((sd.itemsize, min(block, kept)), np.uint8)  # one block's planes: the only temporary, reused
    for j, s in enumerate(range(0, kept, block)):
        count = min(block, kept - s)
        rows = []
        for i in range(sd.itemsize):
            data, coded = sections[f"b{j}p{i}"], bool(meta["coded"][j] >> i & 1)
            if fast and not coded and len(data) == count:  # a raw plane: merged straight from its section
                rows.append(np.frombuffer(data, np.uint8))
                continue
            _unplane(data, coded, temp[i, :count], f"{name}/b{j}p{i}")
            rows.append(temp[i, :count])
        merged = _fast.merge(rows, u[s : s + count], rotate)
        if not merged:
            ub = u[s : s + count].view(np.uint8).reshape(-1, sd.itemsize)
            for i in range(sd.itemsize):
                ub[:, i] = rows[i]
    if not merged:
        _unrotate_(u, dtype)
    if dtype == "bool" and kept and int(u.max()) > 1:
        raise DeepzipFormatError(f"{name}: bool values other than 0 and 1")
    vals = u.view(sd)
    if mask is None:
        return vals.reshape(shape)
    out = np.zeros(n, sd)
    out[mask] = vals
    return out.reshape(shape)
