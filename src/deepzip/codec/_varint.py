"""LEB128 varints (7 bits per byte, least significant group first, high bit = more follows), vectorised: the
outlier positions of the ``grouped`` and ``tiered`` kinds and the heads of short Huffman streams (format 1.4)."""

from __future__ import annotations

import numpy as np

__all__ = ["varint_decode", "varint_encode"]


def varint_encode(values: np.ndarray) -> np.ndarray:
    """LEB128 bytes (7 bits per byte, high bit = more follows) of non-negative integers < 2**63, as uint8.

    Example:
        >>> varint_encode(np.array([1, 300])).tolist()
        [1, 172, 2]
    """
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size == 0:
        return np.zeros(0, np.uint8)
    nbytes = np.ones(v.size, np.int64)
    for j in range(1, 10):
        nbytes += v >= np.uint64(1) << np.uint64(7 * j)
    starts = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
    out = np.zeros(int(nbytes.sum()), np.uint8)
    for j in range(int(nbytes.max())):
        sel = nbytes > j
        byte = (v[sel] >> np.uint64(7 * j)) & np.uint64(127)
        more = (nbytes[sel] > j + 1).astype(np.uint8) << 7
        out[starts[sel] + j] = byte.astype(np.uint8) | more
    return out


def varint_decode(data: np.ndarray) -> np.ndarray:
    """The integers of LEB128 bytes (inverse of :func:`varint_encode`); raises ValueError on a cut-off value.

    Example:
        >>> varint_decode(np.array([1, 172, 2], np.uint8)).tolist()
        [1, 300]
    """
    b = np.asarray(data, dtype=np.uint8).reshape(-1)
    if b.size == 0:
        return np.zeros(0, np.int64)
    ends = b < 128
    if not ends[-1]:
        raise ValueError("varint stream ends inside a value")
    group = np.concatenate([[0], np.cumsum(ends)[:-1]])  # value number of every byte
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    shift = np.arange(b.size) - starts[group]
    if shift.max() > 8:
        raise ValueError("varint value longer than 9 bytes")
    parts = (b & 127).astype(np.uint64) << (7 * shift).astype(np.uint64)
    return np.add.reduceat(parts, starts).astype(np.int64)
