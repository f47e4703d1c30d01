"""Canonical Huffman code: optimality, limits, and the fast decoders against brute force."""

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip.codec import huffman
from deepzip.errors import DeepzipFormatError


def huffman_cost_reference(counts):
    """Total bits of an optimal unconstrained prefix code (classic heap Huffman)."""
    heap = [int(c) for c in counts if c > 0]
    if len(heap) <= 1:
        return sum(heap)  # one symbol: 1-bit code
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def decode_reference(data, lengths, count):
    """Brute force: read one bit at a time until the bits match a code."""
    codes = huffman.canonical_codes(lengths)
    table = {(int(lengths[s]), int(codes[s])): s for s in range(len(lengths)) if lengths[s]}
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    out, pos = [], 0
    for _ in range(count):
        code, n = 0, 0
        while (n, code) not in table:
            code = code << 1 | int(bits[pos])
            pos, n = pos + 1, n + 1
        out.append(table[(n, code)])
    return out


def kraft(lengths):
    ls = np.asarray(lengths)
    return float(np.sum(2.0 ** -ls[ls > 0].astype(np.float64)))


counts_st = st.lists(st.integers(0, 1000), min_size=1, max_size=60).map(np.array)


@settings(max_examples=150, deadline=None)
@given(counts_st)
def test_unconstrained_lengths_are_optimal_and_within_entropy(counts):
    lengths = huffman.code_lengths(counts)
    assert kraft(lengths) <= 1
    assert np.all((lengths > 0) == (counts > 0)) or (counts > 0).sum() == 0
    assert int((counts * lengths).sum()) == huffman_cost_reference(counts)
    if (counts > 0).sum() >= 2:
        h = huffman.entropy_bits(counts)
        assert h <= huffman.mean_code_length(counts, lengths) < h + 1


@settings(max_examples=150, deadline=None)
@given(counts_st, st.integers(6, 12))
def test_length_limit_is_respected_and_kraft_holds(counts, limit):
    lengths = huffman.code_lengths(counts, max_length=limit)
    assert lengths.max(initial=0) <= limit
    assert kraft(lengths) <= 1
    # never better than the unconstrained optimum
    assert int((counts * lengths).sum()) >= huffman_cost_reference(counts)


def test_length_limit_binds_on_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)
    free = huffman.code_lengths(counts, 32)
    assert free.max() == 32  # limited by 32, unconstrained would be 39
    for limit in (6, 10, 24):
        lengths = huffman.code_lengths(counts, limit)
        assert lengths.max() == limit
        assert kraft(lengths) == 1.0  # a complete code


def test_too_many_symbols_for_limit_raises():
    with pytest.raises(ValueError, match="do not fit"):
        huffman.code_lengths(np.ones(17), max_length=4)


def test_single_symbol_gets_one_bit_and_empty_has_none():
    assert huffman.code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]
    assert huffman.code_lengths(np.array([0, 0])).tolist() == [0, 0]
    blob = huffman.pack_stream(np.full(100, 3))
    assert np.array_equal(huffman.unpack_stream(blob), np.full(100, 3))
    empty = huffman.pack_stream(np.zeros(0, np.int64))
    assert huffman.unpack_stream(empty).size == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(0, 400), st.integers(4, 24))
def test_decode_matches_brute_force(seed, alphabet, n, limit):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(alphabet, 0.3))
    s = rng.choice(alphabet, size=n, p=p)
    counts = np.bincount(s, minlength=alphabet)
    if (counts > 0).sum() > 2**limit:
        return
    lengths = huffman.code_lengths(counts, limit)
    data, nbits = huffman.encode(s, lengths)
    assert nbits == int((counts * lengths).sum())
    assert decode_reference(data, lengths, n) == s.tolist()
    assert huffman.decode(data, lengths, n, nbits=nbits).tolist() == s.tolist()
    assert huffman.unpack_stream(huffman.pack_stream(s, alphabet, limit)).tolist() == s.tolist()


@pytest.mark.parametrize("peak", [0.05, 0.5])  # 0.5 makes codes longer than the 16-bit table
def test_lockstep_decoder_on_long_streams(peak):
    rng = np.random.default_rng(1)
    a = np.arange(64)
    p = np.exp(-peak * a)
    p /= p.sum()
    s = rng.choice(64, size=300_000, p=p)
    s[:64] = a  # every symbol present, so rare ones get long codes
    blob = huffman.pack_stream(s)
    info = huffman.stream_info(blob)
    assert info["nbits"] > 1 << 16  # takes the lockstep path
    assert (info["lengths"].max() > 16) == (peak == 0.5)
    assert np.array_equal(huffman.unpack_stream(blob), s)
    # the pointer-doubling path on the same bits agrees
    got = huffman.decode(info["payload"], info["lengths"], info["count"], nbits=info["nbits"])
    assert np.array_equal(got, s)


def test_65536_distinct_symbols():
    rng = np.random.default_rng(2)
    s = np.concatenate([np.arange(1 << 16), rng.integers(0, 50, 100_000)])
    rng.shuffle(s)
    blob = huffman.pack_stream(s)
    out = huffman.unpack_stream(blob)
    assert out.dtype == np.uint16 and np.array_equal(out, s)
    big = huffman.pack_stream(np.array([0, 1 << 16]))  # alphabet 65537 needs int32 output
    assert huffman.unpack_stream(big).tolist() == [0, 1 << 16]


def test_stream_size_is_exact():
    rng = np.random.default_rng(3)
    for n in (0, 1, 1023, 1024, 1025, 5000):
        s = rng.integers(0, 9, n)
        counts = np.bincount(s, minlength=9)
        assert len(huffman.pack_stream(s, alphabet=9)) == huffman.stream_size(counts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=0, max_size=300), st.integers(0, 3))
def test_stream_size_bound_never_exceeds_the_exact_size(counts, zeros):
    # the entropy bound lets a codebook candidate be skipped without computing its code: it must never exceed the
    # exact size, or a candidate that would have won could be dropped (and the bytes change)
    c = np.array(counts + [0] * zeros, np.int64)
    assert huffman.stream_size_bound(c) <= huffman.stream_size(c)


def test_stream_size_bound_is_tight_on_skewed_and_flat_histograms():
    rng = np.random.default_rng(5)
    for c in (rng.geometric(0.3, 50_000), rng.integers(1, 1000, 65536), np.array([7]), np.array([1, 1])):
        c = np.asarray(c, np.int64)
        bound, exact = huffman.stream_size_bound(c), huffman.stream_size(c)
        assert bound <= exact <= bound + int(c.sum()) // 8 + 2  # Huffman spends under one bit a symbol above H


def test_claimed_count_beyond_bits_fails_fast():
    blob = bytearray(huffman.pack_stream(np.array([1, 0, 1])))
    blob[0:8] = (10**12).to_bytes(8, "little")
    with pytest.raises(DeepzipFormatError, match="count 1000000000000 exceeds"):
        huffman.unpack_stream(bytes(blob))


def test_corrupt_bits_are_detected():
    rng = np.random.default_rng(4)
    s = rng.integers(0, 5, 200_000)
    blob = bytearray(huffman.pack_stream(s))
    blob[-1000] ^= 0xFF
    try:
        out = huffman.unpack_stream(bytes(blob))
    except DeepzipFormatError as e:
        assert "expected" in str(e)
    else:  # a flip can still decode to the right number of bits; then symbols must differ
        assert not np.array_equal(out, s)


def test_encode_rejects_symbol_without_code():
    lengths = huffman.code_lengths(np.array([3, 0, 2]))
    with pytest.raises(ValueError, match="symbol 1 has no code"):
        huffman.encode(np.array([0, 1]), lengths)


# --- the short layout (format 1.4) -------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 300), st.integers(0, 4000))
def test_short_streams_round_trip_with_exact_sizes(seed, alphabet, n):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, alphabet, n) if n else np.zeros(0, np.int64)
    counts = np.bincount(s, minlength=alphabet)
    blob = huffman.pack_stream(s, alphabet=alphabet, short=True)
    assert len(blob) == huffman.stream_size(counts, short=True) >= huffman.stream_size_bound(counts, short=True)
    assert len(blob) <= len(huffman.pack_stream(s, alphabet=alphabet)) - 19  # 24-byte head, a byte per length
    assert np.array_equal(huffman.unpack_stream(blob, short=True), s)
    info = huffman.stream_info(blob, short=True)
    assert (info["count"], info["alphabet"]) == (n, alphabet)


def test_short_stream_with_codes_longer_than_15_bits_stores_a_byte_per_length():
    fib = [1, 1]
    while len(fib) < 22:
        fib.append(fib[-1] + fib[-2])
    s = np.repeat(np.arange(len(fib)), fib)
    blob = huffman.pack_stream(s, short=True)
    info = huffman.stream_info(blob, short=True)
    assert int(info["lengths"].max()) > 15 and not blob[2] & 8  # flags: lengths not nibble-packed
    assert np.array_equal(huffman.unpack_stream(blob, short=True), s)
    assert len(blob) == huffman.stream_size(np.bincount(s), short=True)


@pytest.mark.parametrize("edit, match", [
    (lambda b: b"\xff" * 12, "longer than 9 bytes"),
    (lambda b: b"\x80", "varints run past the end of the 1-byte section"),
    (lambda b: b[:2] + bytes([b[2] | 0x40]) + b[3:], "reserved bits"),
    (lambda b: b"\x05\x03\x08", "count 5 cannot fit|exceeds"),  # 5 symbols, no payload
    (lambda b: bytes([0xFF, 0xFF, 0xFF, 0x7F]) + b[1:], "count .* cannot fit"),  # a count of 2**28 in 20 bytes
    (lambda b: b[:1] + b"\xff\x7f" + b[2:], "alphabet of 16383 code lengths exceeds"),
    (lambda b: b[:-2], "count 20 exceeds the 16 bits"),  # payload cut short (the file's CRC catches any cut)
    (lambda b: b[:2] + bytes([(b[2] & ~7) | 7]) + b[3:], "exceeds the|expected|padding"),
    (lambda b: b[:3] + b"\x11\x10" + b[5:], "Kraft"),  # code lengths 1, 1, 1
])
def test_crafted_short_streams_are_refused_with_a_reason(edit, match):
    blob = huffman.pack_stream(np.array([0, 1, 2, 1, 1, 0, 2, 2, 1, 0] * 2), short=True)
    with pytest.raises(DeepzipFormatError, match=match):
        huffman.unpack_stream(edit(blob), short=True)


def test_a_stream_whose_code_runs_past_its_claimed_bits_is_refused_by_both_decoders(monkeypatch):
    """A crafted nbits with a matching section length: 16 symbols end exactly at the claimed bit 25, the other 4
    lie past it. The numpy decoder used to return them (read at its sink bit) without an error."""
    import struct

    from deepzip.codec import _fast

    s = np.array([0, 1, 2, 1, 1, 0, 2, 2, 1, 0] * 2)
    blob = bytearray(huffman.pack_stream(s))
    blob[8:16] = struct.pack("<Q", 25)  # 4 payload bytes either way, so the section length still matches
    with pytest.raises(DeepzipFormatError, match="ran past bit 25"):
        huffman.unpack_stream(bytes(blob))
    monkeypatch.setattr(_fast, "_lib", lambda: None)  # numpy alone
    with pytest.raises(DeepzipFormatError, match="ran past bit 25"):
        huffman.unpack_stream(bytes(blob))
