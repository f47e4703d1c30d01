"""The ``grouped`` tensor kind: one float16 codebook per group of rows, Huffman-coded indices, and an
exact side list of outlier weights (post-training compression, :mod:`deepzip.techniques.posttrain`).

A tensor of shape ``(R, ...)`` is viewed as ``R`` rows of ``C = numel / R`` values. Rows
``g*rows_per_group .. (g+1)*rows_per_group - 1`` share codebook ``g`` of ``k`` float16 centroids, so there are
``G = ceil(R / rows_per_group)`` codebooks; ``rows_per_group = R`` is one codebook for the whole tensor.
Every element has an index in ``0..k-1`` (one Huffman stream over all of them, row-major). ``outliers``
elements are then overwritten by exact float32 values: their flat positions, as increasing positions
delta-coded (first delta = first position) in LEB128 varint bytes, Huffman-coded as bytes.

Sections:

- ``codebooks``: ``G * k`` float16, little-endian, codebook by codebook;
- ``indices``: Huffman stream, alphabet ``k``, ``numel`` symbols;
- ``outlier_pos``: Huffman stream, alphabet 256, the varint bytes of the position deltas;
- ``outlier_val``: ``outliers`` float32, little-endian, in position order.

Meta: ``k``, ``rows_per_group``, ``outliers``. The decoded dtype is float32.

Example:
    >>> import numpy as np
    >>> cb = np.array([[-1.0, 1.0], [0.0, 2.0]])
    >>> t = encode_grouped(cb, np.array([[0, 1], [1, 1]]), 1, np.array([3]), np.array([7.5]))
    >>> decode_grouped(t).tolist()
    [[-1.0, 1.0], [2.0, 7.5]]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DeepzipFormatError
from . import huffman
from ._varint import varint_decode, varint_encode

if TYPE_CHECKING:
    from ._tensor import EncodedTensor

__all__ = [
    "META_KEYS",
    "SECTIONS",
    "apply_outliers",
    "check_codebooks",
    "check_float_rows",
    "check_grouped",
    "check_outliers",
    "decode_grouped",
    "encode_grouped",
    "fail",
    "grouped_parts",
    "outliers",
    "pack_outliers",
    "stream_within",
    "varint_decode",
    "varint_encode",
]

SECTIONS = ("codebooks", "indices", "outlier_pos", "outlier_val")
META_KEYS = ("k", "rows_per_group", "outliers")
MAX_K = huffman.MAX_CODEBOOK  # the codec's one codebook limit


def pack_outliers(outlier_pos: np.ndarray | None, outlier_val: np.ndarray | None, numel: int,
                  where: str) -> tuple[bytes, bytes, int]:
    """The ``outlier_pos`` and ``outlier_val`` sections of exact outliers (shared with the ``tiered`` kind):
    positions sorted, delta-coded as LEB128 varints, Huffman-coded as bytes; values float32. Returns
    ``(outlier_pos, outlier_val, count)``; raises ValueError on repeated or out-of-range positions."""
    pos = np.zeros(0, np.int64) if outlier_pos is None else np.asarray(outlier_pos, np.int64).reshape(-1)
    val = np.zeros(0, np.float32) if outlier_val is None else np.asarray(outlier_val, np.float32).reshape(-1)
    if pos.size != val.size:
        raise ValueError(f"{where}: {pos.size} outlier positions but {val.size} values")
    order = np.argsort(pos, kind="stable")
    pos, val = pos[order], val[order]
    if pos.size and (pos[0] < 0 or pos[-1] >= numel or (np.diff(pos) == 0).any()):
        raise ValueError(f"{where}: outlier positions must be distinct and within 0..{numel - 1}")
    deltas = np.diff(pos, prepend=0) if pos.size else pos
    return (huffman.pack_stream(varint_encode(deltas).astype(np.int64)), np.ascontiguousarray(val, "<f4").tobytes(),
            int(pos.size))


def check_outliers(t: EncodedTensor, nout: int, numel: int) -> dict:
    """Check the outlier sections' sizes against ``nout`` (``{"outlier_pos": stream info}``)."""
    if not 0 <= nout <= numel:
        raise fail(t, None, f"outliers={nout}, expected 0..{numel}")
    if len(t.sections["outlier_val"]) != 4 * nout:
        raise fail(t, "outlier_val", f"{len(t.sections['outlier_val'])} bytes, {nout} float32 need {4 * nout}")
    info = stream_within(t, "outlier_pos", t.sections["outlier_pos"], 256)
    if not nout <= info["count"] <= 10 * nout:
        raise fail(t, "outlier_pos", f"{info['count']} varint bytes for {nout} outliers")
    return {"outlier_pos": info}


def outliers(t: EncodedTensor) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, values)`` of the exact outliers of ``t``: int64 flat positions, increasing; float32 values."""
    nout, numel = t.meta["outliers"], math.prod(t.shape)
    try:
        deltas = varint_decode(huffman.unpack_stream(t.sections["outlier_pos"]))
    except (DeepzipFormatError, ValueError) as e:
        raise fail(t, "outlier_pos", str(e)) from None
    pos = np.cumsum(deltas)
    if pos.size != nout or (pos.size and (pos[-1] >= numel or (np.diff(pos) <= 0).any())):
        raise fail(t, "outlier_pos", f"{pos.size} positions (header says {nout}) not increasing inside "
                                     f"{numel} elements")
    return pos, np.frombuffer(t.sections["outlier_val"], "<f4").astype(np.float32)


def apply_outliers(t: EncodedTensor, out: np.ndarray) -> np.ndarray:
    """Write the exact outliers of ``t`` over the flat decoded array ``out`` (in place; returned)."""
    pos, val = outliers(t)
    out[pos] = val
    return out


def encode_grouped(
    codebooks: np.ndarray,
    indices: np.ndarray,
    rows_per_group: int,
    outlier_pos: np.ndarray | None = None,
    outlier_val: np.ndarray | None = None,
    name: str = "",
) -> EncodedTensor:
    """Store a tensor as per-group float16 codebooks, Huffman-coded indices and exact outliers.

    Args:
        codebooks: ``(G, k)`` floats (stored as float16), ``G = ceil(R / rows_per_group)``.
        indices: integers in ``0..k-1``, the tensor's shape (first dimension R = rows).
        rows_per_group: rows sharing one codebook, 1..R.
        outlier_pos: flat positions (distinct) whose value is ``outlier_val`` instead of the codebook's.
        outlier_val: float32 values of the outliers, same length.
        name: the tensor's name.

    Raises:
        ValueError: shapes that do not fit, indices out of range, bad positions.
    """
    from ._tensor import EncodedTensor

    where = name or "<tensor>"
    idx = np.asarray(indices)
    cb = np.asarray(codebooks)
    if idx.ndim < 1 or idx.size == 0:
        raise ValueError(f"{where}: grouped tensors need at least one row, got shape {idx.shape}")
    rows = idx.shape[0]
    if not 1 <= rows_per_group <= rows:
        raise ValueError(f"{where}: rows_per_group={rows_per_group}, expected 1..{rows}")
    groups = -(-rows // rows_per_group)
    if cb.ndim != 2 or cb.shape[0] != groups or not 1 <= cb.shape[1] <= MAX_K:
        raise ValueError(f"{where}: codebooks of shape {cb.shape}, expected ({groups}, k) with 1 <= k <= {MAX_K}")
    k = cb.shape[1]
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= k:
        raise ValueError(f"{where}: indices must be integers in 0..{k - 1}")
    pos_stream, val_bytes, nout = pack_outliers(outlier_pos, outlier_val, idx.size, where)
    sections = {
        "codebooks": np.ascontiguousarray(cb, "<f2").tobytes(),
        "indices": huffman.pack_stream(idx.reshape(-1).astype(np.int64), alphabet=k),
        "outlier_pos": pos_stream,
        "outlier_val": val_bytes,
    }
    meta = {"k": k, "rows_per_group": int(rows_per_group), "outliers": nout}
    return EncodedTensor(name, "grouped", tuple(idx.shape), "float32", meta, sections)


def fail(t: EncodedTensor, section: str | None, msg: str) -> DeepzipFormatError:
    """The error for tensor ``t`` (and ``section``): ``name/section: msg``."""
    return DeepzipFormatError(f"{t.name or '<tensor>'}{'/' + section if section else ''}: {msg}")


def check_float_rows(t: EncodedTensor) -> int:
    """Checks shared by the codebook-per-rows kinds (grouped, tiered): float32, at least one element, ``k`` in
    range. Returns the element count."""
    n = math.prod(t.shape)
    if t.dtype != "float32":
        raise fail(t, None, f"dtype {t.dtype!r}, expected 'float32' for kind {t.kind}")
    if len(t.shape) < 1 or n == 0:
        raise fail(t, None, f"shape {list(t.shape)}: a {t.kind} tensor has at least one element")
    if not 1 <= t.meta["k"] <= MAX_K:
        raise fail(t, None, f"codebook size k={t.meta['k']}, expected 1..{MAX_K}")
    return n


def check_codebooks(t: EncodedTensor, books: int) -> None:
    """The ``codebooks`` section holds ``books`` x ``k`` float16."""
    k = t.meta["k"]
    if len(t.sections["codebooks"]) != 2 * books * k:
        raise fail(t, "codebooks", f"{len(t.sections['codebooks'])} bytes, {books} x {k} float16 need "
                                   f"{2 * books * k}")


def stream_within(t: EncodedTensor, section: str, data: bytes, alphabet: int) -> dict:
    """``huffman.stream_info`` of ``data`` (a stream of ``section``), its alphabet at most ``alphabet``."""
    try:
        info = huffman.stream_info(data)
    except DeepzipFormatError as e:
        raise fail(t, section, str(e)) from None
    if info["alphabet"] > alphabet:
        raise fail(t, section, f"alphabet {info['alphabet']} exceeds {alphabet}")
    return info


def check_grouped(t: EncodedTensor) -> dict[str, dict]:
    """Check a grouped tensor's sizes against its sections without decoding (see ``_tensor.check``)."""
    n = check_float_rows(t)
    k, rpg, nout = t.meta["k"], t.meta["rows_per_group"], t.meta["outliers"]
    rows = t.shape[0]
    if not 1 <= rpg <= rows:
        raise fail(t, None, f"rows_per_group={rpg}, expected 1..{rows}")
    check_codebooks(t, -(-rows // rpg))
    info = check_outliers(t, nout, n)
    info["indices"] = stream_within(t, "indices", t.sections["indices"], k)
    if info["indices"]["count"] != n:
        raise fail(t, "indices", f"count {info['indices']['count']} != {n} elements of shape {list(t.shape)}")
    return info


def grouped_parts(t: EncodedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codebooks, indices, books)`` of a grouped tensor: float32 ``(G, k)``, int64 ``(R, C)`` entries in each
    row's codebook, int64 ``(R,)`` the codebook of each row (outliers: :func:`outliers`).

    Raises:
        DeepzipFormatError: malformed sections, naming the tensor and section.
    """
    check_grouped(t)
    k, rpg = t.meta["k"], t.meta["rows_per_group"]
    rows = t.shape[0]
    cb = np.frombuffer(t.sections["codebooks"], "<f2").astype(np.float32).reshape(-1, k)  # (G, k)
    try:
        idx = huffman.unpack_stream(t.sections["indices"]).astype(np.int64).reshape(rows, -1)  # (R, C)
    except DeepzipFormatError as e:
        raise fail(t, "indices", str(e)) from None
    if idx.size and idx.max() >= k:
        raise fail(t, "indices", f"index {idx.max()} outside the codebook of {k}")
    return cb, idx, np.arange(rows) // rpg


def decode_grouped(t: EncodedTensor) -> np.ndarray:
    """The dense float32 array of a grouped tensor.

    Raises:
        DeepzipFormatError: malformed sections, naming the tensor and section.
    """
    cb, idx, group = grouped_parts(t)
    out = np.take_along_axis(cb[group], idx, axis=1).reshape(-1)  # (R*C,)
    return apply_outliers(t, out).reshape(t.shape)
