"""The ``tiered`` tensor kind: rows sorted into tiers, one float16 codebook and one Huffman index stream per tier,
and an exact side list of outlier weights (post-training compression of embedding tables,
:mod:`deepzip.techniques.posttrain`).

The ``grouped`` kind shares one Huffman stream between all its rows, so rows stored at different precisions pay
for the mixture (about 0.3 bit per weight for an embedding table with 10% of its rows fine and 90% coarse).
Here each row names its tier, and each tier's indices are their own stream with their own code.

A tensor of shape ``(R, ...)`` is viewed as ``R`` rows of ``C = numel / R`` values. Row ``r`` belongs to tier
``tier[r]`` in ``0..T-1`` and its values are ``codebook[tier[r]][index]``. ``outliers`` elements are then
overwritten by exact float32 values, stored as in the ``grouped`` kind.

Sections:

- ``tiers``: Huffman stream, alphabet <= ``T``, ``R`` symbols (the tier of each row);
- ``codebooks``: ``T * k`` float16, little-endian, tier by tier (a tier using fewer than ``k`` values pads);
- ``indices``: ``T`` Huffman streams one after the other, tier 0 first; stream ``t`` holds the indices
  (alphabet <= ``k``) of the rows of tier ``t``, row-major, ``C`` per row;
- ``outlier_pos``, ``outlier_val``: as in the ``grouped`` kind.

Meta: ``k``, ``tiers`` (``T``), ``outliers``. The decoded dtype is float32.

Example:
    >>> import numpy as np
    >>> cb = np.array([[-1.0, 1.0], [0.0, 2.0]])
    >>> t = encode_tiered(cb, np.array([1, 0, 1]), np.array([[0, 1], [1, 1], [1, 0]]))
    >>> decode_tiered(t).tolist()
    [[0.0, 2.0], [1.0, 1.0], [2.0, 0.0]]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DeepzipFormatError
from . import huffman
from .grouped import (
    MAX_K,
    apply_outliers,
    check_codebooks,
    check_float_rows,
    check_outliers,
    fail,
    pack_outliers,
    stream_within,
)

if TYPE_CHECKING:
    from ._tensor import EncodedTensor

__all__ = ["MAX_TIERS", "META_KEYS", "SECTIONS", "check_tiered", "decode_tiered", "encode_tiered", "tiered_parts"]

SECTIONS = ("tiers", "codebooks", "indices", "outlier_pos", "outlier_val")
META_KEYS = ("k", "tiers", "outliers")
MAX_TIERS = 256


def encode_tiered(
    codebooks: np.ndarray,
    tiers: np.ndarray,
    indices: np.ndarray,
    outlier_pos: np.ndarray | None = None,
    outlier_val: np.ndarray | None = None,
    name: str = "",
) -> EncodedTensor:
    """Store a tensor as per-tier float16 codebooks, per-tier Huffman-coded indices and exact outliers.

    Args:
        codebooks: ``(T, k)`` floats (stored as float16).
        tiers: ``(R,)`` integers in ``0..T-1``, the tier of each row.
        indices: integers in ``0..k-1``, the tensor's shape (first dimension R = rows).
        outlier_pos: flat positions (distinct) whose value is ``outlier_val`` instead of the codebook's.
        outlier_val: float32 values of the outliers, same length.
        name: the tensor's name.

    Raises:
        ValueError: shapes that do not fit, indices or tiers out of range, bad positions.
    """
    from ._tensor import EncodedTensor

    where = name or "<tensor>"
    idx = np.asarray(indices)
    cb = np.asarray(codebooks)
    tier = np.asarray(tiers).reshape(-1)
    if idx.ndim < 1 or idx.size == 0:
        raise ValueError(f"{where}: tiered tensors need at least one row, got shape {idx.shape}")
    rows = idx.shape[0]
    if cb.ndim != 2 or not 1 <= cb.shape[0] <= MAX_TIERS or not 1 <= cb.shape[1] <= MAX_K:
        raise ValueError(f"{where}: codebooks of shape {cb.shape}, expected (T, k) with 1 <= T <= {MAX_TIERS}, "
                         f"1 <= k <= {MAX_K}")
    n_tiers, k = cb.shape
    if tier.size != rows or not np.issubdtype(tier.dtype, np.integer) or tier.min() < 0 or tier.max() >= n_tiers:
        raise ValueError(f"{where}: tiers must be {rows} integers in 0..{n_tiers - 1}")
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= k:
        raise ValueError(f"{where}: indices must be integers in 0..{k - 1}")
    pos_stream, val_bytes, nout = pack_outliers(outlier_pos, outlier_val, idx.size, where)
    flat = idx.reshape(rows, -1)
    streams = [huffman.pack_stream(flat[tier == t].reshape(-1).astype(np.int64), alphabet=k)
               for t in range(n_tiers)]
    sections = {
        "tiers": huffman.pack_stream(tier.astype(np.int64), alphabet=n_tiers),
        "codebooks": np.ascontiguousarray(cb, "<f2").tobytes(),
        "indices": b"".join(streams),
        "outlier_pos": pos_stream,
        "outlier_val": val_bytes,
    }
    meta = {"k": k, "tiers": n_tiers, "outliers": nout}
    return EncodedTensor(name, "tiered", tuple(idx.shape), "float32", meta, sections)


def _split_streams(t: EncodedTensor, n: int) -> list[bytes]:
    """The ``n`` packed streams of the ``indices`` section, cut at the sizes their headers imply."""
    data = t.sections["indices"]
    out, off = [], 0
    head = huffman.STREAM_HEADER_SIZE
    for i in range(n):
        if len(data) - off < head:
            raise fail(t, "indices", f"stream {i} of {n} starts at byte {off} of {len(data)}: no room for its "
                                      f"{head}-byte header")
        count, nbits, alphabet, sync, _ = huffman._STREAM_HEAD.unpack_from(data, off)
        if not 1 <= sync <= huffman.MAX_SYNC_INTERVAL:
            raise fail(t, "indices", f"stream {i}: sync interval {sync} outside 1..{huffman.MAX_SYNC_INTERVAL}")
        size = head + alphabet + 2 * max(0, (count + sync - 1) // sync - 1) + (nbits + 7) // 8
        if size > len(data) - off:
            raise fail(t, "indices", f"stream {i} of {n} needs {size} bytes, {len(data) - off} are left")
        out.append(bytes(data[off:off + size]))
        off += size
    if off != len(data):
        raise fail(t, "indices", f"{len(data) - off} bytes after the {n} index streams")
    return out


def check_tiered(t: EncodedTensor) -> dict[str, dict]:
    """Check a tiered tensor's sizes against its sections without decoding (see ``_tensor.check``)."""
    n = check_float_rows(t)
    k, n_tiers, nout = t.meta["k"], t.meta["tiers"], t.meta["outliers"]
    rows = t.shape[0]
    if not 1 <= n_tiers <= MAX_TIERS:
        raise fail(t, None, f"tiers={n_tiers}, expected 1..{MAX_TIERS}")
    check_codebooks(t, n_tiers)
    info = check_outliers(t, nout, n)
    info["tiers"] = stream_within(t, "tiers", t.sections["tiers"], n_tiers)
    if info["tiers"]["count"] != rows:
        raise fail(t, "tiers", f"count {info['tiers']['count']} != {rows} rows of shape {list(t.shape)}")
    total = 0
    for i, s in enumerate(_split_streams(t, n_tiers)):
        total += stream_within(t, f"indices[{i}]", s, k)["count"]
    if total != n:
        raise fail(t, "indices", f"the {n_tiers} streams hold {total} indices, shape {list(t.shape)} has {n}")
    info["indices"] = {"count": total}
    return info


def tiered_parts(t: EncodedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codebooks, indices, tiers)`` of a tiered tensor: float32 ``(T, k)``, int64 ``(R, C)`` entries in each
    row's codebook, int64 ``(R,)`` the tier of each row (outliers: :func:`deepzip.codec.grouped.outliers`).

    Raises:
        DeepzipFormatError: malformed sections, naming the tensor and section.
    """
    check_tiered(t)
    k, n_tiers = t.meta["k"], t.meta["tiers"]
    rows = t.shape[0]
    cols = math.prod(t.shape) // rows
    cb = np.frombuffer(t.sections["codebooks"], "<f2").astype(np.float32).reshape(n_tiers, k)
    try:
        tier = huffman.unpack_stream(t.sections["tiers"]).astype(np.int64)
    except DeepzipFormatError as e:
        raise fail(t, "tiers", str(e)) from None
    if tier.size and tier.max() >= n_tiers:
        raise fail(t, "tiers", f"tier {tier.max()} outside 0..{n_tiers - 1}")
    idx = np.empty((rows, cols), np.int64)
    for i, s in enumerate(_split_streams(t, n_tiers)):
        sel = np.flatnonzero(tier == i)
        count = huffman.stream_info(s)["count"]  # valid: check_tiered read it
        if count != sel.size * cols:
            raise fail(t, f"indices[{i}]", f"{count} indices for the {sel.size} rows of tier {i} "
                                           f"({sel.size * cols} needed)")
        try:
            part = huffman.unpack_stream(s).astype(np.int64)
        except DeepzipFormatError as e:
            raise fail(t, f"indices[{i}]", str(e)) from None
        if part.size and part.max() >= k:
            raise fail(t, f"indices[{i}]", f"index {part.max()} outside the codebook of {k}")
        idx[sel] = part.reshape(sel.size, cols)
    return cb, idx, tier


def decode_tiered(t: EncodedTensor) -> np.ndarray:
    """The dense float32 array of a tiered tensor.

    Raises:
        DeepzipFormatError: malformed sections, naming the tensor and section.
    """
    cb, idx, tier = tiered_parts(t)
    out = np.take_along_axis(cb[tier], idx, axis=1).reshape(-1)
    return apply_outliers(t, out).reshape(t.shape)
