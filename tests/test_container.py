"""The .dz container: round trips, the golden file, and a clear error for each kind of damage."""

import json
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepzip import codec
from deepzip.codec import container
from deepzip.errors import DeepzipFormatError

GOLDEN = Path(__file__).parent / "golden"


def model_tensors(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.laplace(size=(40, 30)).astype(np.float32)
    mask = np.abs(w) > 1.5
    cb = np.linspace(-4, 4, 32).astype(np.float32)
    idx = rng.integers(0, 32, w.shape)
    return {
        "fc1.weight": codec.encode_sparse(cb, idx, mask),
        "fc1.bias": codec.encode_dense(rng.normal(size=30).astype(np.float32)),
        "fc2.weight": codec.encode_codebook(cb[:5], rng.integers(0, 5, (7, 3, 2))),
        "bn.num_batches_tracked": codec.encode_dense(np.int64(12)),
        "half": codec.encode_dense(rng.normal(size=(3, 0, 2)).astype(np.float16)),
    }


def test_round_trip_every_kind_bit_exact():
    rng = np.random.default_rng(1)
    cases = []
    for shape in [(), (0,), (3, 0), (5,), (17, 9), (2, 3, 4)]:
        n = int(np.prod(shape))
        for dtype in (np.float32, np.float16, np.int64, bool):
            cases.append(("dense", rng.normal(size=shape).astype(dtype)))
        cb = rng.normal(size=7).astype(np.float32)
        idx = rng.integers(0, 7, shape)
        mask = rng.random(shape) < 0.3
        cases.append(("codebook", (cb, idx)))
        cases.append(("sparse", (cb, idx, mask)))
        cases.append(("sparse", (cb, idx, np.ones(shape, bool))))
        cases.append(("sparse", (cb, idx, np.zeros(shape, bool))))
        del n
    tensors = {}
    for i, (kind, arg) in enumerate(cases):
        enc = {"dense": codec.encode_dense, "codebook": codec.encode_codebook, "sparse": codec.encode_sparse}[
            kind
        ]
        tensors[f"t{i}"] = enc(arg) if kind == "dense" else enc(*arg)
    f = codec.read(codec.to_bytes(tensors, config={"a": [1, 2]}, architecture="x", extra={"e": None}))
    assert f.version == (1, 0) and f.config == {"a": [1, 2]} and f.architecture == "x"
    for i, (kind, arg) in enumerate(cases):
        got = f.decode(f"t{i}")
        if kind == "dense":
            assert got.dtype == arg.dtype and got.shape == arg.shape
            assert got.tobytes() == arg.tobytes()
            continue
        cb, idx = arg[0], arg[1]
        mask = arg[2] if kind == "sparse" else np.ones(idx.shape, bool)
        want = np.where(mask, cb[idx], np.float32(0))
        assert got.dtype == np.float32 and got.shape == idx.shape
        assert got.tobytes() == want.tobytes()
        pcb, pidx, pmask = f.decode_parts(f"t{i}")
        assert np.array_equal(pcb, cb) and np.array_equal(pmask, mask)
        assert np.array_equal(pidx[mask], idx[mask]) and not pidx[~mask].any()


def test_write_and_read_a_path(tmp_path):
    path = tmp_path / "m.dz"
    n = codec.write(path, model_tensors())
    assert n == path.stat().st_size
    f = codec.read(path)
    assert list(f.tensors) == list(model_tensors())
    assert [p.name for p in tmp_path.iterdir()] == ["m.dz"]  # no temp file left


def test_stats_report_sizes_and_code_lengths():
    f = codec.read(codec.to_bytes(model_tensors()))
    stats = {s["name"]: s for s in f.stats()}
    s = stats["fc1.weight"]
    _, _, mask = f.decode_parts("fc1.weight")
    assert s["count"] == 1200 and s["kept"] == int(mask.sum()) and s["k"] == 32
    assert s["raw_bits_per_index"] == 5 and s["gap_width"] >= 1
    assert s["index_entries"] == s["kept"] + s["fillers"]
    assert s["index_entropy_bits"] <= s["index_bits_per_entry"] < s["index_entropy_bits"] + 1
    assert s["gap_entropy_bits"] <= s["gap_bits_per_entry"] < s["gap_entropy_bits"] + 1
    assert s["bytes"] == sum(s["section_bytes"].values()) == f.tensors["fc1.weight"].nbytes
    assert stats["fc1.bias"]["section_bytes"] == {"data": 120}


def test_golden_file_loads_bit_exactly():
    f = codec.read(GOLDEN / "tiny.dz")
    expected = json.loads((GOLDEN / "tiny.expected.json").read_text())
    assert list(f.tensors) == list(expected)
    assert f.config == {"prune": {"fc.weight": 0.75}, "bits": 2} and f.architecture == "tiny"
    for name, e in expected.items():
        t = f.tensors[name]
        assert (t.kind, t.dtype, list(t.shape)) == (e["kind"], e["dtype"], e["shape"])
        got = f.decode(name)
        assert got.tobytes() == np.array(e["values"], dtype=e["dtype"]).tobytes()
        if t.kind != "dense":
            cb, idx, mask = f.decode_parts(name)
            assert (
                cb.tolist() == e["codebook"] and idx.tolist() == e["indices"] and mask.tolist() == e["mask"]
            )


# --- damage -------------------------------------------------------------------------------------


def data_start(hlen):
    """D: the first multiple of container.ALIGN (8) at or after the end of an hlen-byte stored header."""
    return -(-(24 + hlen) // 8) * 8


def blob_and_layout():
    blob = codec.to_bytes(model_tensors())
    _, _, _, _, hlen = container._PRE.unpack_from(blob, 0)
    header = json.loads(zlib.decompress(blob[24 : 24 + hlen]))
    return blob, header, data_start(hlen)


def with_raw_header(h, data=b""):
    """A file whose stored header is the bytes `h` (correct checksum and padding), then `data`."""
    pre = container._PRE.pack(container.MAGIC, 1, 0, zlib.crc32(h), len(h))
    return pre + h + b"\0" * (data_start(len(h)) - 24 - len(h)) + data


def with_header(header, blob=None):
    """A file with a replaced header (compressed, correct checksum), keeping the sections of `blob`."""
    blob = blob or blob_and_layout()[0]
    _, _, _, _, hlen = container._PRE.unpack_from(blob, 0)
    return with_raw_header(zlib.compress(json.dumps(header).encode(), 9), blob[data_start(hlen) :])


def section_span(header, data_start, name, sec):
    t = next(t for t in header["tensors"] if t["name"] == name)
    d = t["sections"][sec]
    return data_start + d["offset"], d["length"]


def assert_error(blob, match):
    with pytest.raises(DeepzipFormatError, match=match):
        f = codec.read(blob)
        for name in f.tensors:
            f.decode(name)


def test_bad_magic():
    blob, _, _ = blob_and_layout()
    assert_error(b"PK\x03\x04" + blob[4:], r"magic: not a deepzip file")


def test_newer_major_version_raises_newer_minor_loads():
    blob, _, _ = blob_and_layout()
    assert_error(blob[:8] + struct.pack("<H", 2) + blob[10:], r"version: file format 2.0 is newer")
    codec.read(blob[:10] + struct.pack("<H", 7) + blob[12:])


def test_truncated_preamble_and_header():
    blob, _, _ = blob_and_layout()
    assert_error(blob[:10], r"preamble: file is 10 bytes")
    assert_error(blob[:100], r"header: length \d+ exceeds file size 100")
    assert_error(blob[:16] + struct.pack("<Q", 2**32 - 1) + blob[24:], r"header: length 4294967295 exceeds")


def test_flipped_header_byte():
    blob, _, _ = blob_and_layout()
    assert_error(blob[:40] + bytes([blob[40] ^ 1]) + blob[41:], r"header: checksum mismatch")


def test_truncated_section():
    blob, header, _start = blob_and_layout()
    assert_error(blob[:-5], r"data: header says \d+ bytes .* \(truncated or trailing bytes\)")
    header["data_size"] -= 5  # a consistent header cannot hide the missing tail of the last section
    # ("half" is empty and sits at the very end; the 8-byte int64 before it loses its last 5 bytes)
    assert_error(
        with_header(header, blob[:-5]),
        r"bn.num_batches_tracked/data: section ends at byte \d+ but the file has",
    )


def test_flipped_section_byte():
    blob, header, start = blob_and_layout()
    off, n = section_span(header, start, "fc1.weight", "indices")
    bad = blob[: off + n // 2] + bytes([blob[off + n // 2] ^ 0x10]) + blob[off + n // 2 + 1 :]
    assert_error(bad, r"fc1.weight/indices: checksum mismatch")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: h.update(tensors={"a": 1}), r"header.tensors: expected list, got dict"),
        (lambda h: h["tensors"][0].update(shape="12"), r"fc1.weight.shape: expected list, got str"),
        (lambda h: h["tensors"][0].update(shape=[1.5]), r"fc1.weight.shape: expected a list of ints"),
        (
            lambda h: h["tensors"][0]["sections"]["gaps"].update(offset="0"),
            r"fc1.weight/gaps.offset: expected int",
        ),
        (lambda h: h["tensors"][0]["meta"].update(k=True), r"fc1.weight: meta.k is True, expected an int"),
        (lambda h: h["tensors"][1].update(kind="lzma"), r"fc1.bias: unknown kind 'lzma'"),
        (lambda h: h.update(config=[]), r"header.config: expected dict, got list"),
        (lambda h: h["tensors"].append(7), r"header.tensors\[5\]: expected a JSON object, got int"),
        (
            lambda h: h["tensors"][1].update(name="fc1.weight"),
            r"header.tensors\[1\].name: 'fc1.weight' is empty or dup",
        ),
        (
            lambda h: h["tensors"][1]["sections"]["data"].update(offset=3),
            r"fc1.bias/data: offset 3 is not a multiple",
        ),
        (
            lambda h: h["tensors"][1].update(shape=[31]),
            r"fc1.bias/data: 120 bytes, shape \[31\] of float32 needs 124",
        ),
    ],
)
def test_header_with_wrong_types_or_values(edit, match):
    _, header, _ = blob_and_layout()
    edit(header)
    assert_error(with_header(header), match)


def test_header_not_json_or_not_an_object():
    for text, match in [
        (b"{nope", r"header: invalid JSON"),
        (b"\xff{}", r"header: invalid JSON"),
        (b"[1, 2]", r"header: expected a JSON object, got list"),
    ]:
        assert_error(with_raw_header(zlib.compress(text, 9)), match)


def test_header_not_zlib():
    blob, header, _ = blob_and_layout()
    z = zlib.compress(json.dumps(header).encode(), 9)
    for h, match in [
        (json.dumps(header).encode(), r"header: not valid zlib data \(Error -3 .*incorrect header check"),
        (b"", r"header: not valid zlib data \(the stream is truncated\)"),
        (z[:-10], r"header: not valid zlib data \(the stream is truncated\)"),
        (z[:-1], r"header: not valid zlib data \(the stream is truncated\)"),
        (z[:-1] + bytes([z[-1] ^ 1]), r"header: not valid zlib data \(Error -3 .*incorrect data check"),
        (z + b"\0" * 3, r"header: not valid zlib data \(3 bytes after the end of the stream\)"),
    ]:
        assert_error(with_raw_header(h, blob[-int(header["data_size"]) :]), match)


def test_header_zip_bomb_fails_before_allocating(monkeypatch):
    monkeypatch.setattr(container, "MAX_HEADER_SIZE", 1 << 20)
    bomb = zlib.compress(b'{"format":"' + b" " * (8 << 20) + b'"}', 9)  # ~8 KiB stored, 8 MiB of JSON
    tracemalloc.start()
    assert_error(with_raw_header(bomb), r"header: decompresses to more than 1048576 bytes")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 << 20
    # the output is also bounded by a multiple of the stored length (1032:1, deflate's best ratio)
    monkeypatch.setattr(container, "_MAX_RATIO", 10)
    assert_error(with_raw_header(bomb), rf"header: decompresses to more than {10 * len(bomb)} bytes")


def test_writer_rejects_a_header_over_the_limit(monkeypatch):
    monkeypatch.setattr(container, "MAX_HEADER_SIZE", 1000)
    with pytest.raises(ValueError, match=r"header: \d+ bytes of JSON exceed the 1000-byte limit"):
        codec.to_bytes(model_tensors(), config={"note": "x" * 1000})


def test_layout_is_compact_and_8_byte_aligned():
    blob, header, start = blob_and_layout()
    _, _, _, _, hlen = container._PRE.unpack_from(blob, 0)
    assert container.ALIGN == 8 and start % 8 == 0 and start - (24 + hlen) < 8
    assert hlen < len(json.dumps(header, separators=(",", ":"))) / 2  # compressed
    ends = 0
    for t in header["tensors"]:
        for d in t["sections"].values():
            assert d["offset"] % 8 == 0 and d["offset"] - ends < 8  # less than 8 bytes of padding between
            ends = d["offset"] + d["length"]
    assert ends == header["data_size"] and len(blob) == start + ends
    assert not any(blob[24 + hlen : start])  # zero padding


def test_absurd_claimed_counts_fail_fast():
    blob, header, start = blob_and_layout()
    # a huge shape for a codebook tensor: count must match, and the count is bounded by the bits
    header["tensors"][2]["shape"] = [10**6, 10**6]
    assert_error(with_header(header), r"fc2.weight: shape \[1000000, 1000000\] decodes to 4000000000000 bytes, "
                                      r"more than the limit of 1073741824")
    with pytest.raises(DeepzipFormatError, match=r"fc2.weight/indices: count 42 != 1000000000000 elements"):
        codec.read(with_header(header), max_bytes=None)
    # a huge all-pruned sparse tensor: the gaps can only address (entries + 1) * 2**width positions
    _, header, _ = blob_and_layout()
    header["tensors"][0]["shape"] = [10**12]
    with pytest.raises(DeepzipFormatError, match=r"fc1.weight/gaps: \d+ entries for 1000000000000 elements|"
                                                 r"fc1.weight: 1000000000000 elements .* exceed the \d+ entries"):
        codec.read(with_header(header), max_bytes=None)
    # a stream claiming 10**12 symbols in a few bytes (checksum fixed up, so only the size check can catch it)
    _, header, _ = blob_and_layout()
    off, n = section_span(header, start, "fc2.weight", "indices")
    sec = bytearray(blob[off : off + n])
    sec[0:8] = (10**12).to_bytes(8, "little")
    header["tensors"][2]["sections"]["indices"]["crc32"] = zlib.crc32(bytes(sec))
    bad = with_header(header, blob[:off] + bytes(sec) + blob[off + n :])
    tracemalloc.start()
    assert_error(bad, r"fc2.weight/indices: count 1000000000000 exceeds the \d+ bits of the stream")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * len(bad) + 1_000_000


def test_failed_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.dz"
    codec.write(path, model_tensors(0))
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        codec.write(path, model_tensors(1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.dz"]  # the temp file is gone


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="config: not JSON-serialisable"):
        codec.write(tmp_path / "x.dz", model_tensors(), config={"f": object()})
    with pytest.raises(ValueError, match="expected 0..4"):
        codec.encode_codebook(np.zeros(5), np.array([5]))
    assert not (tmp_path / "x.dz").exists()


# --- fuzz (a short version of benchmarks/codec.py --fuzz) ---------------------------------------

SMALL = codec.to_bytes(model_tensors(3))


SMALL_VERSION, SMALL_JSON, SMALL_DATA = container._split(SMALL)


def test_split_and_join_round_trip_and_fix_checksums():
    assert container._join(SMALL_VERSION, SMALL_JSON, SMALL_DATA) == SMALL
    assert container._recompute_checksums(SMALL) == SMALL
    header = json.loads(SMALL_JSON)
    off = header["tensors"][1]["sections"]["data"]["offset"]
    data = bytearray(SMALL_DATA)
    data[off + 3] ^= 0x80  # the sign of fc1.bias[0]
    text = SMALL_JSON.replace(b'"architecture":null', b'"architecture":"x"')
    f = codec.read(container._join(SMALL_VERSION, text, bytes(data)))
    assert f.architecture == "x" and f.decode("fc1.bias")[0] == -codec.read(SMALL).decode("fc1.bias")[0]
    for bad in [b"\x89DZIP", SMALL[:30], SMALL[:24] + b"x" + SMALL[25:]]:
        assert container._recompute_checksums(bad) == bad


def _small14() -> bytes:
    """A format 1.4 file: float16 codebooks with short streams (sparse and codebook kinds), the header dictionary."""
    rng = np.random.default_rng(7)
    cb = rng.normal(size=8).astype(np.float16).astype(np.float32)
    mask = rng.random((12, 30)) < 0.2
    return codec.to_bytes({"w": codec.encode_sparse(cb, rng.integers(0, 8, (12, 30)), mask, half=True),
                           "v": codec.encode_codebook(cb[:4], rng.integers(0, 4, 40), half=True),
                           "b": codec.encode_dense(np.arange(3, dtype=np.float16))}, config={"bits": 3})


SMALL14 = _small14()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_and_truncated_files_only_raise_format_errors(data):
    _fuzz(SMALL, SMALL_VERSION, SMALL_JSON, SMALL_DATA, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_format_1_4_files_only_raise_format_errors(data):
    assert codec.read(SMALL14).version == (1, 4)
    _fuzz(SMALL14, *container._split(SMALL14), data)


def _fuzz(seed: bytes, version: tuple[int, int], text: bytes, sections: bytes, data) -> None:
    blob = bytearray(seed)
    op = data.draw(st.sampled_from(["truncate", "flip", "splice", "flip+crc", "flip+crc"]))
    if op == "flip+crc":  # mutate the header JSON and the sections, then recompress and fix every checksum
        blob = bytearray(text + sections)
    if op == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif op.startswith("flip"):
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(max_size=16))
    if op == "flip+crc":  # reach the header parser and the decoders behind zlib and the checksums
        n = len(text)
        blob = container._join(version, bytes(blob[:n]), bytes(blob[n:]))
    try:
        f = codec.read(bytes(blob))
        for name in f.tensors:
            f.decode(name)
    except DeepzipFormatError:
        pass


def test_format_1_4_files_use_the_preset_header_dictionary_and_others_do_not(tmp_path):
    cb = np.array([0.5, -0.25], np.float32)
    idx, mask = np.array([1, 0, 0, 1] * 8), np.array([1, 0, 0, 1] * 8, bool)
    old = codec.to_bytes({"w": codec.encode_sparse(cb, idx, mask)}, config={"bits": 4})
    new = codec.to_bytes({"w": codec.encode_sparse(cb, idx, mask, half=True)}, config={"bits": 4})
    flag = lambda blob: bool(blob[25] & 0x20)  # noqa: E731 - RFC 1950 FLG.FDICT of the header's zlib stream
    assert codec.read(old).version == (1, 0) and not flag(old)
    assert codec.read(new).version == (1, 4) and flag(new)
    assert codec.read(new).config == {"bits": 4} and codec.read(new).decode("w").tolist() == [-0.25, 0, 0, -0.25] * 8
    hlen = lambda blob: struct.unpack_from("<Q", blob, 16)[0]  # noqa: E731
    assert hlen(new) < hlen(old)
    with codec.DzWriter(tmp_path / "s.dz", config={"bits": 4}) as w:  # the streaming writer makes the same bytes
        w.add(codec.encode_sparse(cb, idx, mask, half=True, name="w"))
    assert (tmp_path / "s.dz").read_bytes() == new


def test_a_header_with_another_preset_dictionary_is_refused():
    text = json.dumps({"format": "deepzip", "data_size": 0, "tensors": []}).encode()
    c = zlib.compressobj(9, zdict=b'{"format":"something else"}')
    hbytes = c.compress(text) + c.flush()
    blob = container._pack((1, 4), hbytes, b"")
    with pytest.raises(DeepzipFormatError, match="header: not valid zlib data"):
        codec.read(blob)
