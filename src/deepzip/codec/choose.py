"""Pick the smallest lossless encoding of one array: dense, byte planes (with or without a zero mask), or a codebook.

Candidates, each exact:

- ``dense``: the raw values;
- ``planes``: the values' byte planes, each raw or Huffman-coded (:mod:`deepzip.codec._planes`);
- ``planes`` behind a mask: the nonzero values' planes plus the packed keep-mask (tried when at least 1/16 of the
  values are zero: a pruned layer with many distinct values);
- ``codebook`` / ``sparse``: a float32 table of the distinct (nonzero) values and Huffman-coded indices (tried when
  a float array has at most 2**16 distinct values, all exact in float32: a stripped weight-shared layer).

Sizes of the plane candidates come from histograms, so only the winner is coded.

Example:
    >>> w = np.zeros((256, 256), np.float32); w[:, ::4] = np.random.default_rng(0).standard_normal((256, 64))
    >>> t = encode_lossless(w)
    >>> from deepzip.codec import decode
    >>> t.kind, t.meta["masked"], bool(np.array_equal(decode(t), w))
    ('planes', 1, True)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import _fast, _planes, huffman
from ._tensor import EncodedTensor, encode_codebook, encode_dense, encode_planes, encode_sparse

__all__ = ["encode_lossless"]

_FEW = 4096  # distinct values in a sample below which a full np.unique is worth it
_LARGE_FEW = 256  # the same above _WHOLE elements (see _codebook)
_WHOLE = 1 << 22  # elements up to which a tensor's codebook candidate is worked on at once


def _codebook(
    a: np.ndarray, dtype: str, name: str, mask: np.ndarray | None, signed_zeros: bool, block: int, beat: int
) -> EncodedTensor | None:
    """The lossless codebook (or sparse, behind ``mask``) encoding, when the values allow one.

    Up to ``_WHOLE`` elements the whole tensor is worked on at once. Above it (a checkpoint's large tensors) the
    memory stays near one byte per element: the sparse candidate is not tried, and the codebook one only when a
    sample shows at most ``_LARGE_FEW`` distinct values (a weight-shared tensor, where it wins by far; for a trained
    float tensor it gains under 1% over byte planes, measured on bf16 weights, at 5x the time).
    """
    if dtype not in ("float32", "float16", "bfloat16", "float64") or a.size == 0:
        return None
    large = a.size > _WHOLE
    if large and mask is not None:
        return None
    flat = a.reshape(-1)

    def as_float(x: np.ndarray) -> np.ndarray:  # bfloat16 bit patterns -> the float32 they stand for
        return (x.astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" else x

    few = _LARGE_FEW if large else _FEW
    # A small sample first: its distinct values are a subset of the larger sample's, so when it already has too many,
    # so would the larger one (the decision is the same, at a fraction of the sort).
    whole: np.ndarray | None = None  # the 16-bit histogram of the whole tensor, when a sample was all of it
    for sample in (1 << 14, 1 << 20):
        if sample > 1 << 14 and flat.size <= 1 << 14:
            break
        head = flat[:sample]
        if mask is not None:
            head = head[mask.reshape(-1)[:sample]]
        distinct, hist = _distinct(head, dtype, as_float)
        if distinct > few or (mask is None and 4 * distinct >= beat):  # a codebook stores 4 bytes a distinct value
            return None
        if mask is None and head.size == flat.size:
            whole = hist
    if large:
        return _codebook_by_blocks(flat, a.shape, dtype, name, signed_zeros, block, as_float)
    inverse: np.ndarray | None = None  # the 16-bit path builds it once the codebook is known to win
    if dtype in ("bfloat16", "float16"):  # 2**16 possible patterns: count them instead of sorting (same result)
        b16 = (flat if mask is None else flat[mask.reshape(-1)]).view(np.uint16)
        if b16.size == 0:
            return None
        if not signed_zeros:
            b16 = np.where(b16 == 0x8000, np.uint16(0), b16)  # -0.0 -> +0.0: one zero
        if whole is not None:  # the sample was the whole tensor: its histogram is _hist16(b16), zeros merged
            counts = whole.copy()
            if not signed_zeros:
                counts[0] += counts[0x8000]
                counts[0x8000] = 0
        else:
            counts = _hist16(b16)
        present = counts > 0
        bits16 = np.flatnonzero(present).astype(np.uint16)
        if dtype == "bfloat16":
            values = _exact_float32(bits16.astype(np.uint32) << 16, np.dtype(np.float32), np.uint32)
        else:
            values = _exact_float32(bits16, np.dtype(np.float16), np.uint16)
        if values is None:
            return None
        idx_counts = counts[present]
    else:
        kept = flat if mask is None else flat[mask.reshape(-1)]
        if kept.size == 0:
            return None
        if not signed_zeros:
            kept = kept + kept.dtype.type(0)  # -0.0 + 0.0 = +0.0: one zero
        u = _planes._UINT[kept.itemsize]
        bits, inverse = np.unique(kept.view(u), return_inverse=True)  # by bit pattern: -0.0 and NaNs stay exact
        values = _exact_float32(bits, kept.dtype, u)
        if values is None:
            return None
        idx_counts = np.bincount(inverse, minlength=values.size)
    # its exact size first (float32 entries + the index stream, from the index histogram): coded only if it wins;
    # the entropy bound first, which settles most trained tensors without computing 2**16 code lengths
    if mask is None and (4 * values.size + huffman.stream_size_bound(idx_counts) >= beat
                         or 4 * values.size + huffman.stream_size(idx_counts) >= beat):
        return None
    if inverse is None:
        rank = (np.cumsum(present) - 1).astype(np.uint16)
        inverse = rank[b16]
    if mask is None:
        return encode_codebook(values, inverse.reshape(a.shape), name=name)
    indices = np.zeros(a.shape, np.int64)
    indices[mask] = inverse
    return encode_sparse(values, indices, mask, name=name)


# NaN bit patterns of the 16-bit floats (exponent all ones, mantissa not 0, either sign): two ranges each
_NANS16 = {"bfloat16": ((0x7F81, 0x8000), (0xFF81, 0x10000)), "float16": ((0x7C01, 0x8000), (0xFC01, 0x10000))}


def _hist16(b16: np.ndarray) -> np.ndarray:
    """Histogram of uint16 patterns (65536 counts)."""
    counts = _fast.count(b16, 1 << 16)
    return counts if counts is not None else np.bincount(b16, minlength=1 << 16)


def _distinct(
    head: np.ndarray, dtype: str, as_float: Callable[[np.ndarray], np.ndarray]
) -> tuple[int, np.ndarray | None]:
    """``np.unique(as_float(head)).size``: distinct values, +0.0 and -0.0 as one, all NaNs as one; and for 16-bit
    dtypes the histogram of ``head``'s bit patterns it was counted from (else None)."""
    if dtype not in ("bfloat16", "float16"):
        return int(np.unique(as_float(head)).size), None
    hist = _hist16(head.view(np.uint16))
    nans = sum(int(np.count_nonzero(hist[a:b])) for a, b in _NANS16[dtype])
    both_zeros = int(hist[0] > 0 and hist[0x8000] > 0)
    return int(np.count_nonzero(hist)) - both_zeros - max(nans - 1, 0), hist


def _exact_float32(bits: np.ndarray, dtype: np.dtype, u: type) -> np.ndarray | None:
    """The distinct values of these bit patterns, if they can be a codebook: at most 2**16, finite, float32-exact."""
    values = bits.view(dtype)
    if bits.size > huffman.MAX_CODEBOOK or not np.isfinite(values).all():  # codebooks hold finite values only
        return None
    if not np.array_equal(values.astype(np.float32).astype(values.dtype).view(u), bits):
        return None
    return values


def _codebook_by_blocks(
    flat: np.ndarray, shape: tuple[int, ...], dtype: str, name: str, signed_zeros: bool, block: int,
    as_float: Callable[[np.ndarray], np.ndarray],
) -> EncodedTensor | None:
    """:func:`_codebook` for a large tensor, ``block`` elements at a time: the distinct values, then uint8/uint16
    indices."""
    def bits_of(s: int) -> np.ndarray:
        f = as_float(flat[s : s + block])
        if not signed_zeros:
            f = f + f.dtype.type(0)
        return f.view(_planes._UINT[f.itemsize])

    distinct: np.ndarray | None = None
    for s in range(0, flat.size, block):
        b = np.unique(bits_of(s))
        distinct = b if distinct is None else np.union1d(distinct, b)
        if distinct.size > huffman.MAX_CODEBOOK:
            return None
    assert distinct is not None
    values = _exact_float32(distinct, np.dtype(np.float32 if dtype == "bfloat16" else dtype), distinct.dtype.type)
    if values is None:
        return None
    indices = np.empty(flat.size, np.uint8 if distinct.size <= 256 else np.uint16)
    for s in range(0, flat.size, block):
        indices[s : s + block] = np.searchsorted(distinct, bits_of(s))
    return encode_codebook(values, indices.reshape(shape), name=name)


def encode_lossless(
    array: np.ndarray, name: str = "", dtype: str | None = None, block: int = _planes.BLOCK,
    signed_zeros: bool = True,
) -> EncodedTensor:
    """The smallest exact encoding of ``array`` among dense, planes, masked planes and codebook/sparse.

    Args:
        array: any shape; for ``dtype="bfloat16"`` its uint16 bit patterns.
        name: the tensor's name.
        dtype: the dtype to record (default ``array.dtype``), one of ``_planes.PLANE_DTYPES``.
        block: elements per planes block.
        signed_zeros: keep -0.0 apart from +0.0 (bit-exact, the default); False stores -0.0 as a pruned zero,
            so the decoded tensor is equal in value (``torch.equal``) but its -0.0 become +0.0.

    Returns:
        The winning :class:`EncodedTensor`. A codebook or sparse winner decodes to float32 holding exactly the
        original values (the caller casts back to ``dtype``, e.g. bfloat16, without loss).

    Raises:
        ValueError: unsupported dtype.
    """
    a = np.asarray(array)
    dtype = dtype or a.dtype.name
    if a.size < 64:
        return encode_dense(a, name=name, dtype=dtype)
    if dtype not in _planes.PLANE_DTYPES:
        raise ValueError(f"{name or '<tensor>'}: dtype {dtype} not storable, expected one of {_planes.PLANE_DTYPES}")
    # The unmasked planes are coded at once (they win for nearly every float tensor; their size is the one
    # planes_size would compute); the masked candidate is only sized, and coded if it wins.
    planes = encode_planes(a, name=name, dtype=dtype, block=block)
    best: tuple[int, str, np.ndarray | None] = (a.nbytes, "dense", None)
    if planes.nbytes < best[0]:
        best = (planes.nbytes, "planes", None)
    # Count zeros a block at a time, so no full-size copy is made unless a mask is worth trying: +0.0 and integer 0
    # are all-zero bits; without signed zeros -0.0 (the sign bit alone) counts too.
    floats = dtype in ("float32", "float16", "bfloat16", "float64")
    flat = a.reshape(-1).view(_planes._UINT[_planes.storage_dtype(dtype).itemsize])
    drop_sign = flat.dtype.type((1 << (8 * flat.itemsize - 1)) - 1)

    def is_zero(x: np.ndarray) -> np.ndarray:
        return (x & drop_sign) == 0 if floats and not signed_zeros else x == 0

    if floats and not signed_zeros:
        nzero = sum(int(np.count_nonzero(is_zero(flat[s : s + block]))) for s in range(0, flat.size, block))
    else:  # zeros are the all-zero patterns: counted without a temporary
        nzero = flat.size - int(np.count_nonzero(flat))
    mask = None
    if nzero * 16 >= a.size:
        mask = ~is_zero(flat).reshape(a.shape)
        size = _planes.planes_size(a, dtype, mask, block)
        if size < best[0]:
            best = (size, "masked", mask)
    winner = (encode_dense(a, name=name, dtype=dtype) if best[1] == "dense" else planes if best[1] == "planes"
              else encode_planes(a, name=name, dtype=dtype, mask=best[2], block=block))
    cb = _codebook(a, dtype, name, mask if mask is not None and nzero * 4 >= a.size else None, signed_zeros, block,
                   winner.nbytes)
    if cb is not None and cb.nbytes < winner.nbytes:
        return cb
    return winner

