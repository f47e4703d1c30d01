"""The ``.dz`` file: a preamble, a zlib-compressed JSON header, and 8-byte aligned checksummed sections.

Layout (all integers little-endian; the binding spec with a hex dump is docs/FORMAT.md)::

    0   8   magic b"\\x89DZIP\\r\\n\\x1a"
    8   2   u16 major version (1)         a reader refuses a newer major version
    10  2   u16 minor version (0)         minor versions only add optional header keys
    12  4   u32 CRC32 of the H stored header bytes
    16  8   u64 stored header length H
    24  H   header: UTF-8 JSON, zlib-compressed (RFC 1950, level 9 when written)
    ..      zero padding to D = the next multiple of 8
    D   ..  sections, each at D + offset with offset a multiple of 8, zero padding between them

Reading never unpickles, never imports and checks every claimed size against the bytes present before allocating;
the header decompresses to at most min(64 MiB, 1032 x H) bytes (1032:1 is deflate's best possible ratio) holding at
most 2**20 JSON values, and the tensors together decode to at most ``max_bytes`` (default 1 GiB).

Example:
    >>> import numpy as np
    >>> from deepzip.codec import encode_dense, read, to_bytes
    >>> blob = to_bytes({"bias": encode_dense(np.zeros(3, np.float32))}, config={"lr": 0.1})
    >>> f = read(blob)
    >>> f.decode("bias").tolist(), f.config
    ([0.0, 0.0, 0.0], {'lr': 0.1})
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeepzipFormatError
from ..fileio import atomic_write
from . import _fast
from ._tensor import (
    DEFAULT_MAX_BYTES,
    KIND_TABLE,
    EncodedTensor,
    check,
    decode,
    decode_parts,
    decoded_nbytes,
    tensor_stats,
)

__all__ = ["ALIGN", "DEFAULT_MAX_BYTES", "MAGIC", "MAX_HEADER_ITEMS", "VERSION", "DzFile", "read", "to_bytes", "write"]

MAGIC = b"\x89DZIP\r\n\x1a"
VERSION = (1, 4)  # 1.1: the planes kind and the bfloat16 dtype; 1.2: the grouped kind; 1.3: tiered;
# 1.4: codebook/sparse tensors with a float16 codebook and short Huffman streams
ALIGN = 8  # keeps every section, hence every float64/int64 array, 8-byte aligned relative to the file start
MAX_HEADER_SIZE = 64 << 20  # bytes of decompressed header JSON, at most
# JSON values in the header, at most (counted from its bytes before parsing): about 30 per tensor, so ~35k
# tensors; Python's json spends ~100 bytes per value, so parsing stays under ~150 MB and a second.
MAX_HEADER_ITEMS = 1 << 20
_MAX_RATIO = 1032  # deflate never expands more than 1032:1 (258 bytes per 2-bit match)
_PRE = struct.Struct("<8sHHIQ")  # magic, major, minor, header crc32, header length
# Format 1.4: the header's zlib stream may use this preset dictionary (RFC 1950 FDICT; docs/FORMAT.md section 1):
# JSON fragments every header repeats, the most frequent last (deflate codes near matches in fewer bits). Writers use
# it in files that are 1.4 anyway (float16 codebooks: files of a few KB, where it saves ~400 bytes of an ~800-byte
# header); a reader inflates with it whenever a stream asks for it, zlib checking its Adler-32 (the stream's DICTID).
HEADER_DICT = (
    b'{"format":"deepzip","producer":"deepzip 0.1.0","architecture":null,"config":{"version":1,"model":"",'
    b'"sparsifier":"vd","vd_epochs":30,"vd_kl_scale":1,"vd_shrink_every":5,"retrain_epochs":10,"bits":4,'
    b'"bits_tolerance":0.02,"target_sparsity":0.93,"prune_rounds":3,"finetune_epochs":3,"bias_float16":true,'
    b'"centroids_float16":true,"shrink":true},"extra":{"summary":{"error_before_pct":0.5,"error_pruned_pct":0.5,'
    b'"error_shared_pct":0.5,"pruned_bytes":1},"layers":{"conv1.weight":"shared","conv2.weight":"shared",'
    b'"fc1.weight":"shared","fc2.weight":"shared","fc3.weight":"masked","conv1.bias":"plain","conv2.bias":"plain",'
    b'"fc1.bias":"plain","fc2.bias":"plain","fc3.bias":"plain"},"dtypes":{"conv1.bias":"float32",'
    b'"fc1.bias":"float32"},"widths":{"conv1":[1,20],"fc1":[784,300]},"params_architecture":1},"data_size":1,'
    b'"tensors":[{"name":"fc1.bias","kind":"dense","shape":[1],"dtype":"float16","meta":{},"sections":{"data":'
    b'{"offset":0,"length":1,"crc32":1}}},{"name":"fc1.weight","kind":"codebook","shape":[1],"dtype":"float16",'
    b'"meta":{"k":16},"sections":{"codebook":{"offset":0,"length":32,"crc32":1},"indices":{"offset":32,'
    b'"length":1,"crc32":1}}},{"name":"fc1.weight","kind":"sparse","shape":[1],"dtype":"float16","meta":{"k":16,'
    b'"gap_width":4,"kept":1},"sections":{"codebook":{"offset":0,"length":32,"crc32":1},"indices":{"offset":32,'
    b'"length":1,"crc32":1},"gaps":{"offset":'
)
PREAMBLE_SIZE = _PRE.size  # 24


def _producer() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"deepzip {version('deepzip')}"
    except PackageNotFoundError:
        return "deepzip (not installed)"


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _json(value: Any, what: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: not JSON-serialisable ({e})") from None
    return value


def _as_list(tensors: Mapping[str, EncodedTensor] | Iterable[EncodedTensor]) -> list[EncodedTensor]:
    if isinstance(tensors, Mapping):
        out = [replace(t, name=name) for name, t in tensors.items()]
    else:
        out = list(tensors)
    seen = set()
    for t in out:
        if not isinstance(t, EncodedTensor):
            raise TypeError(f"expected EncodedTensor, got {type(t).__name__}")
        if not isinstance(t.name, str) or not t.name:
            raise ValueError(f"tensor name {t.name!r}: expected a non-empty string")
        if t.name in seen:
            raise ValueError(f"{t.name}: duplicate tensor name")
        seen.add(t.name)
    return out



def _place(t: EncodedTensor, offset: int, write: Callable[[bytes], object]) -> tuple[dict[str, Any], int]:
    """Check ``t`` and lay its sections out from data offset ``offset``, each aligned (zero padding before it),
    handing the padding and the bytes to ``write`` in file order. Returns its header entry and the offset after it.
    (One layout for :func:`to_bytes` and the streaming writer.)"""
    try:
        check(t)
    except DeepzipFormatError as e:
        raise ValueError(f"invalid tensor: {e}") from None
    _json(t.meta, f"{t.name}: meta")
    secs = {}
    for sec, data in t.sections.items():
        pad = _align(offset) - offset
        write(b"\0" * pad)
        offset += pad
        secs[sec] = {"offset": offset, "length": len(data), "crc32": _fast.crc32(data)}
        write(data)
        offset += len(data)
    entry = {"name": t.name, "kind": t.kind, "shape": list(t.shape), "dtype": t.dtype, "meta": dict(t.meta),
             "sections": secs}
    return entry, offset

def to_bytes(
    tensors: Mapping[str, EncodedTensor] | Iterable[EncodedTensor],
    *,
    config: dict | None = None,
    architecture: str | None = None,
    extra: dict | None = None,
) -> bytes:
    """The complete ``.dz`` file as bytes.

    Args:
        tensors: name -> tensor (names taken from the keys), or tensors with names set, in file order.
        config: free-form JSON-serialisable dict from the caller (e.g. the compression recipe).
        architecture: optional string naming the model (e.g. ``"lenet300"``).
        extra: free-form JSON-serialisable dict for the caller's own keys (e.g. the torch bridge).

    Raises:
        ValueError: duplicate or empty names, invalid tensors, non-JSON config/extra.
    """
    items = _as_list(tensors)
    if architecture is not None and not isinstance(architecture, str):
        raise ValueError(f"architecture: expected a string or None, got {type(architecture).__name__}")
    entries = []
    chunks: list[bytes] = []
    offset = 0
    for t in items:
        entry, offset = _place(t, offset, lambda b: chunks.append(bytes(b)))
        entries.append(entry)
    header = {
        "format": "deepzip",
        "producer": _producer(),
        "architecture": architecture,
        "config": _json(dict(config or {}), "config"),
        "extra": _json(dict(extra or {}), "extra"),
        "data_size": offset,
        "tensors": entries,
    }
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(text) > MAX_HEADER_SIZE:
        raise ValueError(f"header: {len(text)} bytes of JSON exceed the {MAX_HEADER_SIZE}-byte limit")
    if _json_items(text) > MAX_HEADER_ITEMS:
        raise ValueError(f"header: more than {MAX_HEADER_ITEMS} JSON values (too many tensors or config entries)")
    version = needed_version(items)
    return _pack(version, deflate_header(text, version), chunks)


def needed_version(tensors: Iterable[EncodedTensor]) -> tuple[int, int]:
    """The oldest format that holds ``tensors``: 1.4 for float16 codebooks (short streams), 1.3 for the tiered kind,
    1.2 for the grouped kind, 1.1 for the planes kind or bfloat16, else 1.0 (older readers keep reading what they
    can)."""
    return max((_version(t) for t in tensors), default=(1, 0))


def _version(t: EncodedTensor) -> tuple[int, int]:
    if t.kind in ("codebook", "sparse") and t.dtype == "float16":
        return (1, 4)  # float16 codebook, short streams
    return (1, 1) if t.dtype == "bfloat16" else KIND_TABLE[t.kind].version


def deflate_header(text: bytes, version: tuple[int, int]) -> bytes:
    """The stored header of JSON ``text`` for a file of ``version``: zlib level 9, with :data:`HEADER_DICT` when the
    file is 1.4 or newer anyway (float16 codebooks) and that is smaller."""
    plain = zlib.compress(text, 9)
    if version < (1, 4):
        return plain
    c = zlib.compressobj(9, zdict=HEADER_DICT)
    preset = c.compress(text) + c.flush()
    return preset if len(preset) < len(plain) else plain


def _pack(version: tuple[int, int], hbytes: bytes, data: bytes | list[bytes]) -> bytes:
    """Preamble, stored (compressed) header ``hbytes``, zero padding to a multiple of ALIGN, ``data`` (its bytes,
    or its pieces in order: joined once, with the rest, so the file's bytes are copied once)."""
    pre = _PRE.pack(MAGIC, version[0], version[1], zlib.crc32(hbytes), len(hbytes))
    start = PREAMBLE_SIZE + len(hbytes)
    return b"".join([pre, hbytes, b"\0" * (_align(start) - start), *([data] if isinstance(data, bytes) else data)])


def write(
    path: str | os.PathLike,
    tensors: Mapping[str, EncodedTensor] | Iterable[EncodedTensor],
    *,
    config: dict | None = None,
    architecture: str | None = None,
    extra: dict | None = None,
) -> int:
    """Write a ``.dz`` file atomically: to a temporary file in the same folder, then ``os.replace``.

    An interrupted or failing write leaves any existing file at ``path`` untouched.

    Args: as :func:`to_bytes`, plus ``path``.

    Returns:
        Bytes written.
    """
    blob = to_bytes(tensors, config=config, architecture=architecture, extra=extra)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))
    return len(blob)


# --- reading -------------------------------------------------------------------------------------


def _need(obj: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]`` checked to be a ``typ`` (ints are never bools), else DeepzipFormatError."""
    if not isinstance(obj, dict):
        raise DeepzipFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise DeepzipFormatError(f"{where}: missing key '{key}'")
    v = obj[key]
    types = typ if isinstance(typ, tuple) else (typ,)
    if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
        names = "/".join(x.__name__ for x in types)
        raise DeepzipFormatError(f"{where}.{key}: expected {names}, got {type(v).__name__}")
    return v


def _uint(obj: dict, key: str, where: str, limit: int = 1 << 63) -> int:
    v = _need(obj, key, int, where)
    if not 0 <= v < limit:
        raise DeepzipFormatError(f"{where}.{key}: {v} outside 0..{limit - 1}")
    return v


class HeaderView:
    """What every open ``.dz`` file offers from its JSON header (``self.header``): config, architecture, extra."""

    header: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.header["config"]

    @property
    def architecture(self) -> str | None:
        return self.header["architecture"]

    @property
    def extra(self) -> dict[str, Any]:
        return self.header["extra"]


@dataclass
class DzFile(HeaderView):
    """A parsed ``.dz`` file: every section bounds- and checksum-checked, nothing decoded yet.

    Attributes:
        header: the JSON header as a dict.
        tensors: name -> :class:`EncodedTensor`, in file order.
        version: ``(major, minor)`` of the file.
    """

    header: dict[str, Any]
    tensors: dict[str, EncodedTensor]
    version: tuple[int, int]

    def _get(self, name: str) -> EncodedTensor:
        if name not in self.tensors:
            raise KeyError(f"{name}: no such tensor (have {list(self.tensors)[:8]}...)")
        return self.tensors[name]

    def decode(self, name: str) -> np.ndarray:
        """Dense array of tensor ``name`` (see :func:`deepzip.codec.decode`)."""
        return decode(self._get(name))

    def decode_parts(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(codebook, indices, mask)`` of tensor ``name`` (see :func:`deepzip.codec.decode_parts`)."""
        return decode_parts(self._get(name))

    def stats(self, entropy: bool = True) -> list[dict[str, Any]]:
        """Per-tensor statistics (see :func:`deepzip.codec.tensor_stats`), in file order."""
        return [tensor_stats(t, entropy) for t in self.tensors.values()]


def _json_items(text: bytes) -> int:
    """An upper bound on the JSON values in ``text``: each value but the first follows a ``,`` or opens a
    container's contents after ``[``/``{`` (bytes inside strings are counted too, so this never undercounts)."""
    return text.count(b",") + text.count(b"[") + text.count(b"{") + 1


def _nonzero(buf: bytes, start: int, end: int) -> bool:
    """Whether ``buf[start:end]`` holds a non-zero byte (at C speed: a crafted file may have megabytes of gap)."""
    return end > start and buf.count(0, start, end) != end - start


def _read_bytes(src: str | os.PathLike | bytes | bytearray | memoryview) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    with open(src, "rb") as f:
        return f.read()


def _inflate_header(hbytes: bytes) -> bytes:
    """The header JSON bytes from the stored (zlib) header, never more than min(64 MiB, 1032 x stored)."""
    limit = min(MAX_HEADER_SIZE, _MAX_RATIO * len(hbytes))
    d = zlib.decompressobj(zdict=HEADER_DICT)  # used only by a stream that asks for it (format 1.4)
    try:
        text = d.decompress(hbytes, limit + 1)  # max_length >= 1 (0 would mean unbounded)
    except zlib.error as e:
        raise DeepzipFormatError(f"header: not valid zlib data ({e})") from None
    if len(text) > limit:
        raise DeepzipFormatError(
            f"header: decompresses to more than {limit} bytes (the limit is {MAX_HEADER_SIZE} bytes and "
            f"{_MAX_RATIO}x the {len(hbytes)} stored bytes)"
        )
    if not d.eof:
        raise DeepzipFormatError("header: not valid zlib data (the stream is truncated)")
    if d.unused_data:
        raise DeepzipFormatError(
            f"header: not valid zlib data ({len(d.unused_data)} bytes after the end of the stream)"
        )
    return text


def read(
    src: str | os.PathLike | bytes | bytearray | memoryview, *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> DzFile:
    """Parse and verify a ``.dz`` file (path or bytes); tensors are decoded on demand.

    Checks, in order: preamble and magic, version, header length, header checksum, header
    decompression (bounded: at most min(64 MiB, 1032 x the stored length)), the header's JSON value count
    (at most :data:`MAX_HEADER_ITEMS`), header JSON and its types, section bounds/alignment/overlap,
    zero padding, section checksums, each tensor's sizes against its sections and its decoded size against
    ``max_bytes`` (:func:`deepzip.codec._tensor.check`). Nothing is allocated for a tensor before that.

    Args:
        src: a path or the file's bytes.
        max_bytes: the most bytes all tensors together may decode to (default 1 GiB); None for no limit.

    Raises:
        DeepzipFormatError: naming the part at fault, e.g. ``"fc1.weight/indices: checksum mismatch"``.
        OSError: the file cannot be read.
    """
    buf = _read_bytes(src)
    size = len(buf)
    header, version, data_start, tables = parse_header(buf, size, max_bytes=max_bytes)
    tensors: dict[str, EncodedTensor] = {}
    spans = []
    # Sections are read-only views into the file's bytes, not copies: the file is held once, not twice, and reading
    # costs no copy of every section (bytes-like everywhere a section is used: len, slicing, numpy, struct, zlib).
    view = memoryview(buf)
    for d in tables:
        sections = {}
        for sec, (off, length, crc) in d.sections.items():
            data = view[data_start + off : data_start + off + length]
            if _fast.crc32(data) != crc:
                raise DeepzipFormatError(f"{d.name}/{sec}: checksum mismatch")
            spans.append((off, off + length, f"{d.name}/{sec}"))
            sections[sec] = data
        t = EncodedTensor(d.name, d.kind, d.shape, d.dtype, d.meta, sections)
        check(t, max_bytes)
        tensors[d.name] = t
    spans.sort()
    prev_end = 0
    for start, end, w in spans:  # bytes outside every section are zero padding
        if _nonzero(buf, data_start + prev_end, data_start + start):
            raise DeepzipFormatError(f"data: non-zero padding before {w}")
        prev_end = max(prev_end, end)
    if _nonzero(buf, data_start + prev_end, size):
        raise DeepzipFormatError("data: non-zero bytes after the last section")
    return DzFile(header, tensors, version)


@dataclass
class SectionTable:
    """One tensor's header entry, sections not yet read: ``sections`` maps name -> (offset, length, crc32)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    meta: dict[str, Any]
    sections: dict[str, tuple[int, int, int]]


def parse_header(
    buf: bytes, size: int, *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> tuple[dict[str, Any], tuple[int, int], int, list[SectionTable]]:
    """Check the preamble, header and section table of a file of ``size`` bytes whose first bytes are ``buf``.

    ``buf`` must hold at least the preamble, the stored header and its padding (the whole file will do). Section
    bounds, alignment and overlap are checked against ``size``, and the tensors' decoded sizes against
    ``max_bytes``; section checksums and contents are not (:func:`read` and :class:`deepzip.codec.DzReader` read
    the sections). Returns ``(header, version, data_start, tables)``.
    """
    if size < PREAMBLE_SIZE or len(buf) < PREAMBLE_SIZE:
        raise DeepzipFormatError(
            f"preamble: file is {size} bytes, shorter than the {PREAMBLE_SIZE}-byte preamble"
        )
    magic, major, minor, hcrc, hlen = _PRE.unpack_from(buf, 0)
    if magic != MAGIC:
        raise DeepzipFormatError(f"magic: not a deepzip file (starts with {magic!r}, expected {MAGIC!r})")
    if major > VERSION[0]:
        raise DeepzipFormatError(
            f"version: file format {major}.{minor} is newer than this reader ({VERSION[0]}.x); upgrade deepzip"
        )
    if major < 1:
        raise DeepzipFormatError(f"version: unsupported file format {major}.{minor}")
    if hlen > size - PREAMBLE_SIZE:
        raise DeepzipFormatError(f"header: length {hlen} exceeds file size {size}")
    hbytes = buf[PREAMBLE_SIZE : PREAMBLE_SIZE + hlen]
    if zlib.crc32(hbytes) != hcrc:
        raise DeepzipFormatError("header: checksum mismatch")
    text = _inflate_header(hbytes)
    if _json_items(text) > MAX_HEADER_ITEMS:
        raise DeepzipFormatError(
            f"header: {len(text)} bytes of JSON with up to {_json_items(text)} values, more than the "
            f"{MAX_HEADER_ITEMS} allowed"
        )
    gc_on = gc.isenabled()
    gc.disable()  # JSON makes no cycles; collections triggered by its many new containers cost 10x the parse
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DeepzipFormatError(f"header: invalid JSON ({exc})") from None
    finally:
        if gc_on:
            gc.enable()
    if not isinstance(header, dict):
        raise DeepzipFormatError(f"header: expected a JSON object, got {type(header).__name__}")
    if _need(header, "format", str, "header") != "deepzip":
        raise DeepzipFormatError(f"header.format: {header['format']!r}, expected 'deepzip'")
    _need(header, "producer", str, "header")
    _need(header, "architecture", (str, type(None)), "header")
    _need(header, "config", dict, "header")
    _need(header, "extra", dict, "header")
    data_start = _align(PREAMBLE_SIZE + hlen)
    if _nonzero(buf, PREAMBLE_SIZE + hlen, min(data_start, len(buf))):
        raise DeepzipFormatError(f"header: padding bytes {PREAMBLE_SIZE + hlen}..{data_start - 1} are not zero")
    data_size = _uint(header, "data_size", "header")
    if data_start + data_size != size:
        raise DeepzipFormatError(
            f"data: header says {data_size} bytes of sections from byte {data_start}, file has "
            f"{max(0, size - data_start)} (truncated or trailing bytes)"
        )
    entries = _need(header, "tensors", list, "header")
    tables: list[SectionTable] = []
    names: set[str] = set()
    spans = []
    total = 0
    for i, e in enumerate(entries):
        where = f"header.tensors[{i}]"
        name = _need(e, "name", str, where)
        if not name or name in names:
            raise DeepzipFormatError(f"{where}.name: {name!r} is empty or duplicate")
        names.add(name)
        where = name
        kind = _need(e, "kind", str, where)
        shape = _need(e, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise DeepzipFormatError(f"{where}.shape: expected a list of ints, got {shape!r}"[:200])
        dtype = _need(e, "dtype", str, where)
        meta = _need(e, "meta", dict, where)
        secs = _need(e, "sections", dict, where)
        sections = {}
        for sec, desc in secs.items():
            w = f"{name}/{sec}"
            off = _uint(desc, "offset", w)
            length = _uint(desc, "length", w)
            crc = _uint(desc, "crc32", w, 1 << 32)
            if off % ALIGN:
                raise DeepzipFormatError(f"{w}: offset {off} is not a multiple of {ALIGN}")
            if off + length > data_size:
                raise DeepzipFormatError(
                    f"{w}: section ends at byte {data_start + off + length} but the file has {size} (truncated?)"
                )
            spans.append((off, off + length, w))
            sections[sec] = (off, length, crc)
        table = SectionTable(name, kind, tuple(shape), dtype, meta, sections)
        # each tensor's own checks (check()) run when its sections are read; its decoded size and the total are
        # bounded here, before anything is read or allocated
        nbytes = max(0, decoded_nbytes(EncodedTensor(name, kind, tuple(shape), dtype, {}, {})))
        if max_bytes is not None and nbytes > max_bytes:
            raise DeepzipFormatError(
                f"{name}: shape {list(shape)} decodes to {nbytes} bytes, more than the limit of {max_bytes} "
                "(max_bytes; raise it if you trust the file)"[:400])
        total += nbytes
        if max_bytes is not None and total > max_bytes:
            raise DeepzipFormatError(
                f"{name}: the tensors up to here decode to {total} bytes, more than the limit of {max_bytes} "
                "(max_bytes; raise it if you trust the file)"
            )
        tables.append(table)
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise DeepzipFormatError(f"{b}: overlaps {a}")
    return header, (major, minor), data_start, tables


def _split(blob: bytes) -> tuple[tuple[int, int], bytes, bytes]:
    """``(version, header JSON bytes, section bytes)`` of a file, for fuzzing (see :func:`_join`).

    Checks only what it needs: the preamble, the header length and the header's zlib stream (bounded
    as in :func:`read`); raises DeepzipFormatError otherwise.
    """
    if len(blob) < PREAMBLE_SIZE:
        raise DeepzipFormatError("preamble: truncated")
    _, major, minor, _, hlen = _PRE.unpack_from(blob, 0)
    if hlen > len(blob) - PREAMBLE_SIZE:
        raise DeepzipFormatError("header: length exceeds file size")
    text = _inflate_header(blob[PREAMBLE_SIZE : PREAMBLE_SIZE + hlen])
    return (major, minor), text, blob[_align(PREAMBLE_SIZE + hlen) :]


def _join(version: tuple[int, int], text: bytes, data: bytes) -> bytes:
    """A file from header JSON bytes ``text`` and section bytes ``data``, every checksum made to match.

    For fuzzing: mutate the JSON and the sections of :func:`_split`, then join them, so mutations reach
    the header parser and the decoders behind the zlib stream and the checksums. Section checksums are
    fixed (and the JSON re-serialised) only where ``text`` parses; the header is always compressed and
    its checksum set. Work is bounded by the sizes of ``text`` and ``data``.
    """
    return _pack(version, deflate_header(_with_section_crcs(text, data), version), data)


def _with_section_crcs(text: bytes, data: bytes) -> bytes:
    """Header JSON ``text`` with every section's crc32 computed from ``data``; ``text`` if that fails."""
    try:
        header = json.loads(text)
        for t in header["tensors"]:
            for d in t["sections"].values():
                off, n = d["offset"], d["length"]
                d["crc32"] = zlib.crc32(data[off : off + n]) if 0 <= off and 0 <= n else d["crc32"]
        return json.dumps(header, separators=(",", ":")).encode()
    except Exception:
        return text


def _recompute_checksums(blob: bytes) -> bytes:
    """Best effort: ``blob`` with every section and header checksum made to match (for fuzzing).

    Returns ``blob`` unchanged when its header cannot be decompressed; see :func:`_split` and
    :func:`_join` to mutate the header JSON itself.
    """
    try:
        return _join(*_split(blob))
    except DeepzipFormatError:
        return blob
