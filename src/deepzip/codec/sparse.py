"""Relative-index (gap) encoding of sparse positions, as in Deep Compression.

The kept entries of a flattened tensor are stored as *entries*, each with a gap: the number of
zero (pruned) positions skipped since the previous entry. With a gap width of ``w`` bits the largest
gap is ``M = 2**w - 1``; a longer run of zeros is broken by *filler* entries, each placed ``M + 1``
positions after the previous entry (gap ``M``) on a position that is really zero. In the weight-index
stream a filler carries a reserved symbol (the codebook size ``k``). With ``size`` given, fillers are
also appended so that the trailing zero run after the last entry is at most ``M`` long: a reader can
then bound a tensor's size by ``(entries + 1) * 2**w`` before allocating it.

Both streams are then Huffman coded, so ``w`` does not fix the bits per gap; it trades fillers
(more entries in both streams) against a larger gap alphabet. :func:`best_width` picks the ``w`` in
1..16 with the smallest exact coded size, computed from histograms without encoding.

Example:
    >>> import numpy as np
    >>> gaps, filler = encode_gaps(np.array([1, 2, 9]), width=2)
    >>> gaps.tolist(), filler.tolist()
    ([1, 0, 3, 2], [False, False, True, False])
    >>> decode_gaps(gaps, filler).tolist()
    [1, 2, 9]
"""

from __future__ import annotations

import numpy as np

from . import huffman

__all__ = ["MAX_WIDTH", "best_width", "coded_size", "decode_gaps", "encode_gaps", "run_lengths"]

MAX_WIDTH = 16


def _check_width(width: int) -> None:
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"gap width={width}, expected 1..{MAX_WIDTH}")


def run_lengths(positions: np.ndarray) -> np.ndarray:
    """Zero runs before each position: ``positions[i] - positions[i-1] - 1`` (with ``positions[-1] = -1``).

    Raises:
        ValueError: positions not strictly increasing or negative.
    """
    pos = np.asarray(positions, np.int64).reshape(-1)
    d = np.diff(pos, prepend=-1) - 1
    if d.size and d.min() < 0:
        raise ValueError("positions must be non-negative and strictly increasing")
    return d


def encode_gaps(positions: np.ndarray, width: int, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gaps between sorted kept positions, with filler entries where a gap exceeds ``2**width - 1``.

    Args:
        positions: strictly increasing flat indices of the kept entries.
        width: gap width in bits, 1..16.
        size: the tensor's element count; when given, trailing fillers keep the zero run after the
            last entry at most ``2**width - 1`` long (the ``.dz`` format requires this).

    Returns:
        ``(gaps, is_filler)``: int64 gaps in ``0..2**width - 1`` and a bool array, one per entry.

    Raises:
        ValueError: bad width, positions not increasing, or positions outside ``size``.
    """
    _check_width(width)
    d = run_lengths(positions)
    period = 1 << width
    if size is not None:
        last = int(positions[-1]) if d.size else -1
        if last >= size:
            raise ValueError(f"position {last} outside a tensor of {size} elements")
        # Trailing run as one more "entry" whose only job is to contribute its fillers.
        tail = size - 1 - last
        nfill_tail = tail // period
    else:
        nfill_tail = 0
    nfill = d // period  # fillers before each kept entry
    rest = d % period
    real_at = np.cumsum(nfill + 1) - 1  # index of each kept entry among all entries
    total = (int(real_at[-1]) + 1 if d.size else 0) + nfill_tail
    gaps = np.full(total, period - 1, np.int64)
    gaps[real_at] = rest
    is_filler = np.ones(total, bool)
    is_filler[real_at] = False
    return gaps, is_filler


def decode_gaps(gaps: np.ndarray, filler_mask: np.ndarray) -> np.ndarray:
    """Positions of the kept (non-filler) entries: the inverse of :func:`encode_gaps`.

    Args:
        gaps: one gap per entry.
        filler_mask: True where the entry is a filler.

    Returns:
        int64 array of kept positions, increasing.
    """
    gaps = np.asarray(gaps, np.int64).reshape(-1)
    filler_mask = np.asarray(filler_mask, bool).reshape(-1)
    if gaps.shape != filler_mask.shape:
        raise ValueError(f"{gaps.size} gaps but {filler_mask.size} filler flags")
    pos = np.cumsum(gaps + 1) - 1  # position of every entry, fillers included
    return pos[~filler_mask]


def _histograms(
    d: np.ndarray, index_counts: np.ndarray, width: int, size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Gap and index histograms the streams would have at ``width``, without building the streams."""
    period = 1 << width
    nfill = int((d // period).sum())
    if size is not None:
        last = int(np.cumsum(d + 1)[-1]) - 1 if d.size else -1
        nfill += (size - 1 - last) // period
    rest = d % period
    gap_counts = np.bincount(rest) if rest.size else np.zeros(0, np.int64)
    if nfill:
        gap_counts = np.bincount(rest, minlength=period)
        gap_counts[period - 1] += nfill
    idx_counts = np.append(index_counts, nfill)  # filler symbol = len(index_counts)
    return gap_counts, idx_counts


def coded_size(positions: np.ndarray, index_counts: np.ndarray, width: int, size: int | None = None,
               short: bool = False) -> int:
    """Exact bytes of the gap stream plus the index stream (with fillers) at ``width``.

    Args:
        positions: kept positions, increasing.
        index_counts: histogram of the kept entries' codebook indices (length k).
        width: gap width in bits.
        size: the tensor's element count (counts trailing fillers), or None.
        short: the streams' short layout (format 1.4).
    """
    _check_width(width)
    g, i = _histograms(run_lengths(positions), np.asarray(index_counts), width, size)
    return huffman.stream_size(g, short=short) + huffman.stream_size(i, short=short)


def best_width(
    positions: np.ndarray, index_counts: np.ndarray, size: int | None = None, widths: range = range(1, 17),
    short: bool = False,
) -> int:
    """The gap width with the smallest :func:`coded_size` (the narrowest on ties).

    Example:
        >>> best_width(np.arange(0, 1000, 3), np.array([334]), size=1000)
        2
    """
    d = run_lengths(positions)
    counts = np.asarray(index_counts)
    best, best_bytes = None, None
    for w in widths:
        _check_width(w)
        g, i = _histograms(d, counts, w, size)
        nbytes = huffman.stream_size(g, short=short) + huffman.stream_size(i, short=short)
        if best_bytes is None or nbytes < best_bytes:
            best, best_bytes = w, nbytes
    if best is None:
        raise ValueError("widths is empty")
    return best
