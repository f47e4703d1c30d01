"""Canonical, length-limited Huffman coding of integer symbol streams, vectorised with numpy.

Code lengths come from the package-merge algorithm (optimal under a maximum length, default 24 bits;
with a non-binding limit it is an ordinary optimal Huffman code). Codes are canonical: sorted by
(length, symbol), each code is the previous one plus one, shifted left when the length grows, so a
stream only has to store the code length of every symbol.

Bits are packed MSB first. A symbol stream as stored in a ``.dz`` section (:func:`pack_stream`) also
records the bit offset of every ``sync``-th symbol, so that :func:`decode` can walk all chunks of
the stream in lockstep: one numpy step decodes one symbol in every chunk, so the Python loop runs
``sync`` times (1024), not once per symbol.

A single distinct symbol gets a 1-bit code (``0``); an empty stream has no bits at all. Every symbol
therefore costs at least one bit, which lets a reader bound a claimed symbol count by the payload size.

Example:
    >>> import numpy as np
    >>> counts = np.array([5, 1, 1, 3])
    >>> lengths = code_lengths(counts)
    >>> data, nbits = encode(np.array([0, 3, 0, 1]), lengths)
    >>> decode(data, lengths, 4).tolist()
    [0, 3, 0, 1]
"""

from __future__ import annotations

import math
import struct
import sys

import numpy as np

from ..errors import DeepzipFormatError
from . import _fast
from ._varint import varint_decode, varint_encode

__all__ = [
    "MAX_CODEBOOK",
    "MAX_CODE_LENGTH",
    "SYNC_INTERVAL",
    "canonical_codes",
    "code_lengths",
    "decode",
    "encode",
    "entropy_bits",
    "mean_code_length",
    "pack_stream",
    "stream_info",
    "stream_size",
    "stream_size_bound",
    "unpack_stream",
]

MAX_CODE_LENGTH = 24
"""Longest code a stream may use: a 24-bit window always fits in 32 bits read at any bit offset."""

MAX_CODEBOOK = 1 << 16
"""The largest codebook of every weight-shared kind (codebook, sparse, grouped, tiered): indices fit in uint16. The
codec's one definition of the limit; choose, grouped, tiered and the layers above import it."""

SYNC_INTERVAL = 1024
"""Symbols between two recorded bit offsets; 1024 * 24 bits < 2**16, so offsets are stored as u16 deltas."""

MAX_SYNC_INTERVAL = 2048
_STREAM_HEAD = struct.Struct("<QQIHH")  # count, nbits, alphabet, sync interval, reserved
STREAM_HEADER_SIZE = _STREAM_HEAD.size  # 24
_TABLE_BITS = 16  # codes up to this long decode through one flat lookup table
_ENCODE_CHUNK = 1 << 20  # a multiple of SYNC_INTERVAL
_SMALL_STREAM_BITS = 1 << 16  # below this, decode by pointer doubling over all bit positions


_RECENT: dict[tuple[bytes, int], np.ndarray] = {}  # the last code lengths computed by the compiled stage


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code lengths for symbol counts, no longer than ``max_length`` (package-merge).

    Args:
        counts: 1-d array of non-negative symbol counts; index = symbol.
        max_length: longest allowed code, 1..32.

    Returns:
        uint8 array like ``counts``: 0 for unused symbols, 1 for the only used symbol when there is one.

    Raises:
        ValueError: negative counts, or more used symbols than ``2**max_length``.

    Example:
        >>> code_lengths(np.array([8, 4, 2, 1, 1])).tolist()
        [1, 2, 3, 4, 4]
    """
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(f"counts: expected a 1-d array, got shape {counts.shape}")
    if not 1 <= max_length <= 32:
        raise ValueError(f"max_length={max_length}, expected 1..32")
    if counts.size and counts.min() < 0:
        raise ValueError("counts: negative count")
    if counts.dtype.kind in "iu" and counts.size and counts.max() < 1 << 62:
        if counts.size <= 4096:  # planes ask twice for the same histogram (to size, then to code): remember it
            key = (counts.astype(np.int64).tobytes(), max_length)
            hit = _RECENT.get(key)
            if hit is not None:
                return hit.copy()
        fast = _fast.code_lengths(counts, max_length)
        if fast is not None:
            if counts.size <= 4096:
                if len(_RECENT) >= 64:
                    _RECENT.pop(next(iter(_RECENT)))  # the oldest
                _RECENT[key] = fast.copy()
            return fast
    lengths = np.zeros(counts.size, np.uint8)
    used = np.flatnonzero(counts)
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used] = 1
        return lengths
    if n > 1 << max_length:
        raise ValueError(f"{n} symbols do not fit in codes of at most {max_length} bits")
    order = used[np.argsort(counts[used], kind="stable")]
    w = counts[order].astype(np.int64)  # (n,) ascending
    levels = min(max_length, n - 1)  # deeper levels than n-1 can never be used
    # Package-merge: level `levels` holds the leaves; each shallower level merges the leaves with
    # the pairwise sums ("packages") of the level below. Both inputs are sorted, so the merge is
    # two searchsorted calls; leaves go before packages of equal weight.
    leaf_pos: list[np.ndarray] = [np.arange(n)]
    prev = w
    for _ in range(levels - 1):
        m = prev.size // 2 * 2
        pk = prev[0:m:2] + prev[1:m:2]
        pos_leaf = np.arange(n) + np.searchsorted(pk, w, side="left")
        pos_pk = np.arange(pk.size) + np.searchsorted(w, pk, side="right")
        merged = np.empty(n + pk.size, np.int64)
        merged[pos_leaf] = w
        merged[pos_pk] = pk
        leaf_pos.append(pos_leaf)
        prev = merged
    # Select the first 2n-2 items of the top level; a selected package selects its two children
    # one level down. A leaf's code length is the number of levels in which it is selected, and the
    # selected leaves of a level are always the lightest ones (a prefix of `w`).
    depth = np.zeros(n + 1, np.int64)
    take = 2 * n - 2
    for pos in reversed(leaf_pos):
        nleaf = int(np.searchsorted(pos, take, side="left"))  # leaves among the first `take` items
        depth[0] += 1
        depth[nleaf] -= 1
        take = 2 * (take - nleaf)
    lengths[order] = np.cumsum(depth[:n])
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes (uint64, right-aligned) for code lengths; 0 where the length is 0.

    Raises:
        ValueError: lengths over 32 bits or violating Kraft's inequality.
    """
    lengths = np.asarray(lengths).astype(np.int64)
    codes = np.zeros(lengths.size, np.uint64)
    order, ls, left = _sorted_codes(lengths)
    if order.size:
        lmax = int(ls[-1])
        codes[order] = (left >> (lmax - ls)).astype(np.uint64)
    return codes


def _sorted_codes(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Used symbols sorted by (length, symbol), their lengths, and their codes left-aligned to the max length."""
    used = np.flatnonzero(lengths)
    if used.size == 0:
        return used, used.astype(np.int64), used.astype(np.int64)
    ls = lengths[used]
    if ls.max() > 32 or ls.min() < 0:
        raise ValueError("code lengths must be in 0..32")
    order = used[np.argsort(ls, kind="stable")]  # stable: ties stay in symbol order
    ls = lengths[order]
    lmax = int(ls[-1])
    step = np.int64(1) << (lmax - ls)  # width of each code's interval at depth lmax
    if int(step.sum()) > 1 << lmax:
        raise ValueError("code lengths violate Kraft's inequality")
    left = np.concatenate(([0], np.cumsum(step)[:-1]))
    return order, ls, left


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Huffman-code ``symbols`` with the canonical code of ``lengths``, MSB first.

    Args:
        symbols: integer array (any shape, read flat); every symbol needs a non-zero length.
        lengths: code lengths per symbol, e.g. from :func:`code_lengths`.

    Returns:
        ``(data, nbits)``: the packed bits (zero-padded to whole bytes) and their number.

    Raises:
        ValueError: a symbol outside the alphabet or without a code.
    """
    data, nbits, _ = _encode(symbols, lengths, 0)
    return data, nbits


def _encode(
    symbols: np.ndarray, lengths: np.ndarray, sync: int, counts: np.ndarray | None = None
) -> tuple[bytes, int, np.ndarray]:
    """:func:`encode`, plus the bit offsets of symbols ``sync, 2*sync, ...`` when ``sync`` > 0.

    ``counts`` (the symbols' histogram, when the caller has it) sizes the output of the compiled coder; both coders
    write the same bytes, and bad symbols always raise from the numpy code.
    """
    lengths = np.asarray(lengths)
    codes = canonical_codes(lengths)
    lens = lengths.astype(np.int64)
    s = np.asarray(symbols).reshape(-1)
    if _fast.available() and s.size:
        c = counts if counts is not None and len(counts) == lens.size else _fast.count(s, lens.size)
        if c is not None:
            fast = _fast.encode(s, codes, lens, sync, int((np.asarray(c, np.int64) * lens).sum()))
            if fast is not None:
                return fast
    if s.size and (s.min() < 0 or s.max() >= lens.size):
        raise ValueError(f"symbols outside the alphabet 0..{lens.size - 1}")
    # Checks and the total length a chunk at a time: no int64 temporary of the stream's full length.
    total = 0
    for i in range(0, s.size, _ENCODE_CHUNK):
        ln = lens[s[i : i + _ENCODE_CHUNK]]
        if not ln.all():
            bad = int(s[i : i + _ENCODE_CHUNK][ln == 0][0])
            raise ValueError(f"symbol {bad} has no code (count 0 when the code was built)")
        total += int(ln.sum())
    words = np.zeros((total + 63) // 64 + 1, np.uint64)
    offsets = []
    base = 0
    for i in range(0, s.size, _ENCODE_CHUNK):
        sl = s[i : i + _ENCODE_CHUNK]
        ln = lens[sl]
        c = codes[sl]
        ends = np.cumsum(ln) + base
        starts = ends - ln
        if sync:
            first = (-i) % sync  # chunk-local index of the first multiple of `sync`
            offsets.append(starts[first::sync])
        base = int(ends[-1])
        word = starts >> 6
        room = 64 - (starts & 63)
        fits = ln <= room
        sh_left = np.where(fits, room - ln, 0).astype(np.uint64)
        sh_right = np.where(fits, 0, ln - room).astype(np.uint64)
        part = np.where(fits, c << sh_left, c >> sh_right)
        # Codes never overlap, so summing the parts of one word equals OR-ing them.
        head = np.flatnonzero(np.diff(word, prepend=-1))
        words[word[head]] |= np.add.reduceat(part, head)
        k = np.flatnonzero(~fits)  # codes running into the next word: at most one per word
        words[word[k] + 1] |= c[k] << (np.uint64(64) - sh_right[k])
    if sys.byteorder == "little":  # MSB first: big-endian words, swapped in place (one copy of the output less)
        words.byteswap(inplace=True)
    data = words.view(np.uint8)[: (total + 7) // 8].tobytes()
    off = np.concatenate(offsets) if offsets else np.zeros(1, np.int64)
    return data, total, off[1:]  # the offset of symbol 0 is always 0


def decode(
    data: bytes,
    lengths: np.ndarray,
    count: int,
    *,
    nbits: int | None = None,
    sync_offsets: np.ndarray | None = None,
    sync: int = SYNC_INTERVAL,
) -> np.ndarray:
    """Decode ``count`` symbols of the canonical code of ``lengths`` from ``data``.

    Two vectorised strategies, chosen by size. Short streams, or streams without recorded offsets:
    decode a symbol at *every* bit position at once, then follow the chain of symbol starts from
    bit 0 by pointer doubling (O(nbits log count) numpy work). Long streams with the offsets that
    :func:`pack_stream` records: walk all chunks of ``sync`` symbols in lockstep, one numpy step
    per symbol of a chunk.

    Args:
        data: packed bits, MSB first.
        lengths: code lengths per symbol (at most 24 bits).
        count: number of symbols to decode.
        nbits: number of valid bits; the code must end exactly there (default: in the last byte).
        sync_offsets: bit offsets of symbols ``sync, 2*sync, ...`` (see :func:`pack_stream`).
        sync: the interval those offsets were recorded at.

    Returns:
        1-d array of ``count`` symbols (uint16 when the alphabet fits, else int32).

    Raises:
        DeepzipFormatError: the bits do not decode into exactly ``count`` symbols ending at ``nbits``.
    """
    lengths = np.asarray(lengths).astype(np.int64)
    if lengths.size and lengths.max() > MAX_CODE_LENGTH:
        raise DeepzipFormatError(f"code length {int(lengths.max())} exceeds {MAX_CODE_LENGTH}")
    out_dtype = np.uint16 if lengths.size <= 1 << 16 else np.int32
    avail = 8 * len(data)
    exact = nbits is not None
    nbits = avail if nbits is None else nbits
    if count == 0:
        if nbits > 7:
            raise DeepzipFormatError(f"0 symbols but {nbits} bits")
        return np.zeros(0, out_dtype)
    if nbits > avail:
        raise DeepzipFormatError(f"{nbits} bits claimed but only {avail} present")
    if count > nbits:
        raise DeepzipFormatError(f"{count} symbols cannot fit in {nbits} bits")
    if exact:  # the compiled decoder answers only when its result is exactly this function's; else numpy decides
        fast = _fast.decode(data, 0, nbits, lengths, count, sync_offsets, sync, out_dtype)
        if fast is not None:
            return fast
    try:
        order, ls, left = _sorted_codes(lengths)
    except ValueError as e:
        raise DeepzipFormatError(str(e)) from None
    if order.size == 0:
        raise DeepzipFormatError(f"{count} symbols but no symbol has a code")
    lookup = _Lookup(order, ls, left)
    if sync_offsets is not None and not exact:
        raise ValueError("decode: sync_offsets need nbits")
    if sync_offsets is None or nbits <= _SMALL_STREAM_BITS:
        sym, end = _decode_jump(data, nbits, count, lookup)
        if end != nbits and (exact or end <= nbits - 8):  # without nbits: end in the last byte
            where = f"ended at bit {end}" if end >= 0 else f"ran past bit {nbits}"
            raise DeepzipFormatError(
                f"decoding {count} symbols {where}, expected {nbits} (corrupt bits or invalid code)"
            )
        return sym.astype(out_dtype)
    return _decode_lockstep(data, nbits, count, lookup, np.asarray(sync_offsets, np.int64), sync).astype(
        out_dtype, copy=False
    )


class _Lookup:
    """Maps the 32-bit window at a bit position (left-aligned) to (symbol, code length); length 0 = no code.

    Codes up to ``_TABLE_BITS`` long decode through one flat table indexed by the window's first bits; windows that
    start a longer code (rare: long codes belong to rare symbols; their table entry has length 0) fall back to a
    binary search over the code intervals, for those windows only.
    """

    def __init__(self, order: np.ndarray, ls: np.ndarray, left: np.ndarray) -> None:
        self.lmax = lmax = int(ls[-1])
        self.max_symbol = int(order.max())
        self.tbits = t = min(lmax, _TABLE_BITS)
        short = ls <= t
        reps = np.int64(1) << (t - ls[short])
        used = int(reps.sum())
        # Flat table over all t-bit prefixes; prefixes of longer codes, and windows past the last code, get 0.
        self.tsym = np.zeros(1 << t, np.int32)
        self.tlen = np.zeros(1 << t, np.uint8)
        self.tsym[:used] = np.repeat(order[short], reps)
        self.tlen[:used] = np.repeat(ls[short], reps)
        if lmax > t:
            total = int((np.int64(1) << (lmax - ls)).sum())
            self.left = np.append(left, total)
            self.sym = np.append(order, 0).astype(np.int32)
            self.len = np.append(ls, 0).astype(np.uint8)

    def __call__(self, win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top = win >> (32 - self.tbits)
        sym, ln = self.tsym[top], self.tlen[top]
        if self.lmax > self.tbits and not ln.all():
            miss = np.flatnonzero(ln == 0)
            if miss.size:
                j = np.searchsorted(self.left, (win[miss] >> (32 - self.lmax)).astype(np.int64), side="right") - 1
                sym[miss], ln[miss] = self.sym[j], self.len[j]
        return sym, ln


def _words(data: bytes, nbits: int, pad: int) -> np.ndarray:
    """uint32 array: the 32-bit big-endian word starting at every byte, with ``pad`` zero bytes appended."""
    n = (nbits + 7) // 8
    b = np.zeros(n + pad + 3, np.uint8)
    b[:n] = np.frombuffer(data, np.uint8, count=n)
    out = np.empty(n + pad, np.uint32)
    for s in range(0, out.size, _ENCODE_CHUNK):  # by chunks: temporaries of one chunk, not 4 of the stream's size
        c = b[s : s + _ENCODE_CHUNK + 3].astype(np.uint32)
        out[s : s + _ENCODE_CHUNK] = (c[:-3] << 24) | (c[1:-2] << 16) | (c[2:-1] << 8) | c[3:]
    return out


def _windows(w32: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The 32 bits from each bit position ``pos`` on (uint32, left-aligned; bits past the word are 0).

    ``pos`` is uint32, so the shift stays in 32 bits and drops the bits before ``pos``; a code of at most 24 bits at
    bit ``pos`` always lies inside the word of its first byte, ``w32[pos >> 3]``.
    """
    return w32[pos >> 3] << (pos & 7)


def _decode_jump(data: bytes, nbits: int, count: int, lookup: _Lookup) -> tuple[np.ndarray, int]:
    """Decode at every bit position, then find the chain of starts from bit 0 by pointer doubling."""
    w32 = _words(data, nbits, 1)
    pos = np.arange(nbits + 1, dtype=np.uint32)
    sym, ln = lookup(_windows(w32, pos))  # (nbits+1,) symbol and length of a code starting at each bit
    jump = np.minimum(pos.astype(np.int64) + ln, nbits)  # bit nbits is a sink; length 0 (no code) stalls in place
    jump[nbits] = nbits
    # starts[i] = jump^i(0); doubling: starts ++ jump^(2^k)[starts] gives the next 2^k starts in order.
    starts = np.zeros(1, np.int64)
    while starts.size <= count:
        starts = np.concatenate((starts, jump[starts]))
        if starts.size <= count:
            jump = jump[jump]
    # the sink hides a chain that reached nbits early (later "symbols" decoded at bit nbits) or whose last code runs
    # past it: the end is where the last symbol's own code ends, -1 if the chain reached the sink before it
    last = int(starts[count - 1])
    return sym[starts[:count]], last + int(ln[last]) if last < nbits else -1


def _decode_lockstep(
    data: bytes, nbits: int, count: int, lookup: _Lookup, offsets: np.ndarray, sync: int
) -> np.ndarray:
    """Decode chunks of ``sync`` symbols, all chunks in lockstep, from recorded chunk start offsets.

    One step decodes one symbol of every chunk with a handful of numpy operations on uint32 positions (the Python
    loop runs ``sync`` times, however long the stream).
    """
    starts = np.concatenate(([0], offsets))
    nchunks = starts.size
    if nchunks != (count + sync - 1) // sync:
        raise DeepzipFormatError(f"{nchunks - 1} sync offsets for {count} symbols at interval {sync}")
    if (nchunks > 1 and np.diff(starts).min() <= 0) or starts[-1] >= nbits:
        raise DeepzipFormatError("sync offsets are not increasing within the stream")
    if nbits + sync * MAX_CODE_LENGTH >= 1 << 32:
        raise DeepzipFormatError(f"stream of {nbits} bits: more than 32-bit positions can address")
    # The zero padding lets a walker on corrupt bits run past the end (by at most sync * 24 bits)
    # without an index error; the end check below then catches it.
    w32 = _words(data, nbits, sync * MAX_CODE_LENGTH // 8 + 8)
    # (step, chunk): row j holds symbol j of every chunk; 2 bytes a symbol when the alphabet allows
    out = np.empty((sync, nchunks), np.uint16 if lookup.max_symbol < 1 << 16 else np.int32)
    last_len = count - (nchunks - 1) * sync
    pos = starts.astype(np.uint32)
    for j in range(sync):
        live = nchunks if j < last_len else nchunks - 1
        if live == 0:
            break
        p = pos if live == nchunks else pos[:live]
        sym, ln = lookup(_windows(w32, p))
        out[j, :live] = sym
        p += ln  # in place (a view of pos); no code: length 0, the walker stalls and fails the end check
    expect = np.append(starts[1:], nbits)
    if not np.array_equal(pos, expect):
        bad = int(np.flatnonzero(pos != expect)[0])
        raise DeepzipFormatError(
            f"chunk {bad}: decoding ended at bit {int(pos[bad])}, expected {int(expect[bad])} "
            "(corrupt bits or invalid code)"
        )
    return out.T.reshape(-1)[:count]


def entropy_bits(counts: np.ndarray) -> float:
    """Empirical entropy in bits per symbol of a count histogram (0 for an empty histogram)."""
    c = np.asarray(counts, np.float64)
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def mean_code_length(counts: np.ndarray, lengths: np.ndarray) -> float:
    """Mean code length in bits per symbol of ``lengths`` under the histogram ``counts``."""
    c = np.asarray(counts, np.float64)
    total = c.sum()
    if total == 0:
        return 0.0
    return float((c * np.asarray(lengths, np.float64)[: c.size]).sum() / total)


# --- the stream as stored in a section -------------------------------------------------------------


def pack_stream(
    symbols: np.ndarray, alphabet: int | None = None, max_length: int = MAX_CODE_LENGTH,
    counts: np.ndarray | None = None, short: bool = False,
) -> bytes:
    """Huffman-code a symbol array into a self-describing section (layout in docs/FORMAT.md).

    Layout (little-endian): u64 count, u64 nbits, u32 alphabet A, u16 sync interval, u16 0,
    u8[A] code lengths, u16[S] sync deltas (S = ceil(count / sync) - 1), then ceil(nbits / 8) bytes.
    With ``short`` (format 1.4, for files of a few KB where the 24-byte head and a byte per code length are a
    tenth of the file): varint count, varint A, one flags byte (bits 0-2: the payload's padding bits; bit 3: code
    lengths packed two per byte), the code lengths, the u16 sync deltas (sync 1024), then the payload.

    Args:
        symbols: non-negative integers (read flat).
        alphabet: number of code lengths to store (default: max symbol + 1); must exceed every symbol.
        max_length: code length limit, at most 24.
        counts: the symbols' histogram over ``alphabet`` when the caller has it (it must be right: it sets the code).

    Example:
        >>> unpack_stream(pack_stream(np.array([2, 2, 0]))).tolist()
        [2, 2, 0]
    """
    s = np.asarray(symbols).reshape(-1)
    if s.size and s.min() < 0:
        raise ValueError("symbols must be non-negative")
    if alphabet is None:
        alphabet = int(s.max()) + 1 if s.size else 0
    if s.size and int(s.max()) >= alphabet:
        raise ValueError(f"symbol {int(s.max())} outside alphabet of {alphabet}")
    if max_length > MAX_CODE_LENGTH:
        raise ValueError(f"max_length={max_length}, expected at most {MAX_CODE_LENGTH}")
    if counts is None or len(counts) != alphabet:
        counts = _fast.count(s, alphabet) if s.size else None
    if counts is None:
        counts = np.zeros(alphabet, np.int64)
        for i in range(0, s.size, _ENCODE_CHUNK):  # by chunks: bincount makes an intp copy of its input
            counts += np.bincount(s[i : i + _ENCODE_CHUNK], minlength=alphabet)
    lengths = code_lengths(counts, max_length)
    data, nbits, offs = _encode(s, lengths, SYNC_INTERVAL, counts)
    deltas = np.diff(np.concatenate(([0], offs))).astype("<u2")
    if short:
        return _short_head(s.size, nbits, lengths) + deltas.tobytes() + data
    head = _STREAM_HEAD.pack(s.size, nbits, alphabet, SYNC_INTERVAL, 0)
    return head + lengths.tobytes() + deltas.tobytes() + data


def _nibbles(lengths: np.ndarray) -> bool:
    return not lengths.size or int(lengths.max()) <= 15


def _short_head(count: int, nbits: int, lengths: np.ndarray) -> bytes:
    nib = _nibbles(lengths)
    flags = ((-nbits) % 8) | (8 if nib else 0)
    if nib:
        pairs = np.zeros(2 * ((lengths.size + 1) // 2), np.uint8)
        pairs[: lengths.size] = lengths
        table = (pairs[0::2] << 4 | pairs[1::2]).astype(np.uint8).tobytes()
    else:
        table = lengths.astype(np.uint8).tobytes()
    return varint_encode(np.array([count, lengths.size])).tobytes() + bytes([flags]) + table


def _short_head_size(count: int, alphabet: int, nib: bool) -> int:
    return varint_encode(np.array([count, alphabet])).size + 1 + ((alphabet + 1) // 2 if nib else alphabet)


def stream_size(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH, short: bool = False) -> int:
    """Exact byte size :func:`pack_stream` gives for symbols with this histogram (alphabet = len(counts))."""
    counts = np.asarray(counts)
    n = int(counts.sum())
    lengths = code_lengths(counts, max_length)
    nbits = int((counts.astype(np.int64) * lengths).sum())
    nsync = max(0, (n + SYNC_INTERVAL - 1) // SYNC_INTERVAL - 1)
    head = _short_head_size(n, counts.size, _nibbles(lengths)) if short else STREAM_HEADER_SIZE + counts.size
    return head + 2 * nsync + (nbits + 7) // 8


def stream_size_bound(counts: np.ndarray, short: bool = False) -> int:
    """A lower bound of :func:`stream_size` from the histogram's entropy alone (no code lengths computed).

    Any prefix code spends at least the empirical entropy, ``n * H`` bits, on ``n`` symbols (Kraft's inequality), so
    a candidate whose bound already loses needs no code (a 2**16-symbol codebook's lengths cost ~1 ms). The bound is
    lowered by a bit and a relative 1e-9 against rounding: it must never exceed the exact size.
    """
    c = np.asarray(counts)
    used = c[c > 0].astype(np.float64)
    n = int(c.sum())
    bits = 0.0
    if used.size > 1:
        bits = float(n * np.log2(n) - (used * np.log2(used)).sum()) * (1 - 1e-9) - 1
    nsync = max(0, (n + SYNC_INTERVAL - 1) // SYNC_INTERVAL - 1)
    head = _short_head_size(n, c.size, True) if short else STREAM_HEADER_SIZE + c.size
    return head + 2 * nsync + max(0, math.ceil(bits / 8))


def stream_info(data: bytes, payload: bool = True, short: bool = False) -> dict:
    """Validate a packed stream's layout without decoding it.

    Args:
        data: the section.
        payload: include the payload (a copy of the coded bits).
        short: the section has the short layout (format 1.4; :func:`pack_stream`).

    Returns:
        dict with ``count``, ``nbits``, ``alphabet``, ``sync``, ``lengths`` (np.uint8 array),
        ``sync_offsets`` (int64 array) and ``payload`` (bytes; absent with ``payload=False``).

    Raises:
        DeepzipFormatError: sizes that disagree with the section length, lengths over 24 bits, etc.
    """
    size = len(data)
    if short:
        count, nbits, alphabet, sync, lengths, o = _short_info(data)
    else:
        if size < STREAM_HEADER_SIZE:
            raise DeepzipFormatError(
                f"stream of {size} bytes is shorter than its {STREAM_HEADER_SIZE}-byte header"
            )
        count, nbits, alphabet, sync, reserved = _STREAM_HEAD.unpack_from(data, 0)
        if reserved != 0:
            raise DeepzipFormatError(f"reserved stream field is {reserved}, expected 0")
        if not 1 <= sync <= MAX_SYNC_INTERVAL:
            raise DeepzipFormatError(f"sync interval {sync} outside 1..{MAX_SYNC_INTERVAL}")
        if alphabet > size - STREAM_HEADER_SIZE:
            raise DeepzipFormatError(f"alphabet of {alphabet} code lengths exceeds stream size {size}")
        # Every symbol takes at least one bit, so a count is bounded by the bits present.
        if nbits > 8 * size:
            raise DeepzipFormatError(f"{nbits} bits claimed in a stream of {size} bytes")
        if count > nbits:
            raise DeepzipFormatError(f"count {count} exceeds the {nbits} bits of the stream")
        nsync = max(0, (count + sync - 1) // sync - 1)
        expect = STREAM_HEADER_SIZE + alphabet + 2 * nsync + (nbits + 7) // 8
        if expect != size:
            raise DeepzipFormatError(
                f"stream is {size} bytes but count {count}, nbits {nbits}, alphabet {alphabet} imply {expect}"
            )
        lengths = np.frombuffer(data, np.uint8, alphabet, STREAM_HEADER_SIZE)
        o = STREAM_HEADER_SIZE + alphabet
    nsync = max(0, (count + sync - 1) // sync - 1)
    if alphabet and int(lengths.max()) > MAX_CODE_LENGTH:
        raise DeepzipFormatError(f"code length {int(lengths.max())} exceeds {MAX_CODE_LENGTH}")
    ls = lengths[lengths > 0].astype(np.int64)
    if int((np.int64(1) << (MAX_CODE_LENGTH - ls)).sum()) > 1 << MAX_CODE_LENGTH:
        raise DeepzipFormatError("code lengths violate Kraft's inequality")
    if count and ls.size == 0:
        raise DeepzipFormatError(f"{count} symbols but no symbol has a code")
    deltas = np.frombuffer(data, "<u2", nsync, o).astype(np.int64)
    offsets = np.cumsum(deltas)
    if nsync and (deltas.min() == 0 or offsets[-1] >= nbits):
        raise DeepzipFormatError("sync offsets are not increasing within the stream")
    info = {"count": count, "nbits": nbits, "alphabet": alphabet, "sync": sync, "lengths": lengths,
            "sync_offsets": offsets, "payload_at": o + 2 * nsync}
    if payload:
        info["payload"] = bytes(data[o + 2 * nsync :])
    return info


def _short_info(data: bytes) -> tuple[int, int, int, int, np.ndarray, int]:
    """The short layout's count, nbits, alphabet, sync, code lengths and the offset of the sync deltas; every
    size checked against the section's length (the payload is what the rest leaves, so nbits needs no field)."""
    size = len(data)
    seen = min(size, 18)  # count and alphabet: two varints of at most 9 bytes each
    ends = np.flatnonzero(np.frombuffer(data, np.uint8, seen) < 128)
    if ends.size < 2:
        long = seen - (int(ends[0]) + 1 if ends.size else 0) >= 9
        raise DeepzipFormatError("short stream: " + ("a varint is longer than 9 bytes" if long else
                                                     f"the varints run past the end of the {size}-byte section"))
    o = int(ends[1]) + 1
    try:
        count, alphabet = (int(v) for v in varint_decode(np.frombuffer(data, np.uint8, o)))
    except ValueError as e:
        raise DeepzipFormatError(f"short stream: {e}") from None
    if o >= size:
        raise DeepzipFormatError(f"short stream of {size} bytes ends before its flags byte")
    flags = data[o]
    o += 1
    if flags & ~0x0F:
        raise DeepzipFormatError(f"short stream flags 0x{flags:02x}: reserved bits set")
    pad, nib = flags & 7, bool(flags & 8)
    table = (alphabet + 1) // 2 if nib else alphabet
    if table > size - o:
        raise DeepzipFormatError(f"alphabet of {alphabet} code lengths exceeds stream size {size}")
    raw = np.frombuffer(data, np.uint8, table, o)
    if nib:
        lengths = np.empty(2 * table, np.uint8)
        lengths[0::2], lengths[1::2] = raw >> 4, raw & 15
        if alphabet % 2 and lengths[-1]:
            raise DeepzipFormatError("short stream: the unused last code-length nibble is not 0")
        lengths = lengths[:alphabet]
    else:
        lengths = raw.copy()
    o += table
    if count > 8 * size:  # every symbol costs a bit: checked before S is computed from it
        raise DeepzipFormatError(f"count {count} cannot fit in a stream of {size} bytes")
    nsync = max(0, (count + SYNC_INTERVAL - 1) // SYNC_INTERVAL - 1)
    rest = size - o - 2 * nsync
    if rest < 0:
        raise DeepzipFormatError(f"count {count} cannot fit in a stream of {size} bytes")
    nbits = 8 * rest - pad
    if nbits < 0 or (rest == 0 and pad):
        raise DeepzipFormatError(f"short stream: {pad} padding bits of a {rest}-byte payload")
    if count > nbits:
        raise DeepzipFormatError(f"count {count} exceeds the {nbits} bits of the stream")
    return count, nbits, alphabet, SYNC_INTERVAL, lengths, o


def _payload_at(info: dict) -> int:
    """Where a checked stream's payload starts in its section."""
    return int(info["payload_at"])


def unpack_stream(data: bytes, out: np.ndarray | None = None, info: dict | None = None,
                  short: bool = False) -> np.ndarray:
    """Decode a section written by :func:`pack_stream`.

    Args:
        data: the section.
        out: optional contiguous 1-d array of the stream's count (uint8, uint16 or int32, wide enough for the
            alphabet) to decode into; returned.
        info: ``stream_info(data)`` when the caller has it already.
        short: the short layout (format 1.4).

    Raises:
        DeepzipFormatError: the section is malformed; messages say what is wrong.
    """
    info = stream_info(data, payload=False, short=short) if info is None else info
    if out is not None and (out.ndim != 1 or out.size != info["count"] or not out.flags.c_contiguous
                            or out.dtype not in (np.uint8, np.uint16, np.int32)):
        raise ValueError(f"out: expected a contiguous 1-d uint8/uint16/int32 array of {info['count']} symbols")
    if info["count"]:
        dtype = out.dtype.type if out is not None else np.uint16 if info["alphabet"] <= 1 << 16 else np.int32
        fast = _fast.decode(data, _payload_at(info), info["nbits"], info["lengths"], info["count"],
                            info["sync_offsets"], info["sync"], dtype, out)
        if fast is not None:
            return fast
    sym = decode(
        bytes(data[_payload_at(info) :]),
        info["lengths"],
        info["count"],
        nbits=info["nbits"],
        sync_offsets=info["sync_offsets"],
        sync=info["sync"],
    )
    if out is None:
        return sym
    if sym.size and int(sym.max()) > np.iinfo(out.dtype).max:
        raise DeepzipFormatError(f"symbol {int(sym.max())} does not fit in {out.dtype}")
    out[:] = sym
    return out
