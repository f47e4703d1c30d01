"""Write and read ``.dz`` files one tensor at a time, so memory holds one tensor, not the whole model.

The bytes are exactly those of :func:`deepzip.codec.write` (the same format; docs/FORMAT.md). The writer spools
sections to a temporary file beside the target, then writes preamble, header and the spooled sections, and renames
the result onto the target: an interrupted write leaves no half-written file. The reader parses the header with
the same checks as :func:`deepzip.codec.read` and reads, checksums and checks a tensor's sections only when that
tensor is asked for.

Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from deepzip.codec import encode_dense
    >>> path = os.path.join(tempfile.mkdtemp(), "m.dz")
    >>> with DzWriter(path, config={"note": "x"}) as w:
    ...     w.add(encode_dense(np.arange(3, dtype=np.float32), name="a"))
    ...     w.add(encode_dense(np.ones(2, np.int64), name="b"))
    >>> r = DzReader(path)
    >>> r.names, r.decode("a").tolist()
    (['a', 'b'], [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import DeepzipFormatError
from ..fileio import atomic_write
from . import _fast
from ._tensor import DEFAULT_MAX_BYTES, EncodedTensor, check, decode, decode_parts
from .container import (
    _PRE,
    MAGIC,
    MAX_HEADER_ITEMS,
    MAX_HEADER_SIZE,
    PREAMBLE_SIZE,
    HeaderView,
    SectionTable,
    _align,
    _json,
    _json_items,
    _place,
    _producer,
    deflate_header,
    needed_version,
    parse_header,
)

__all__ = ["DzReader", "DzWriter"]

_COPY = 16 << 20  # bytes per copy chunk


class DzWriter:
    """A ``.dz`` file written tensor by tensor; use as a context manager (the file appears on a clean exit)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: dict | None = None,
        architecture: str | None = None,
        extra: dict | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.config, self.architecture, self.extra = dict(config or {}), architecture, dict(extra or {})
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, self._spool = tempfile.mkstemp(prefix="." + os.path.basename(self.path) + ".", suffix=".sections",
                                           dir=folder)
        self._f = os.fdopen(fd, "w+b")
        self._offset = 0
        self._entries: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._version = (1, 0)
        self.bytes_written = 0

    def add(self, t: EncodedTensor) -> None:
        """Append one tensor (checked like :func:`deepzip.codec.to_bytes` checks it)."""
        if not isinstance(t.name, str) or not t.name or t.name in self._names:
            raise ValueError(f"tensor name {t.name!r}: empty or duplicate")
        entry, self._offset = _place(t, self._offset, self._f.write)
        self._names.add(t.name)
        self._entries.append(entry)
        self._version = max(self._version, needed_version([t]))

    def close(self) -> int:
        """Write the file (atomically) and return its size in bytes."""
        header = {
            "format": "deepzip",
            "producer": _producer(),
            "architecture": self.architecture,
            "config": _json(self.config, "config"),
            "extra": _json(self.extra, "extra"),
            "data_size": self._offset,
            "tensors": self._entries,
        }
        text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
        if len(text) > MAX_HEADER_SIZE:
            raise ValueError(f"header: {len(text)} bytes of JSON exceed the {MAX_HEADER_SIZE}-byte limit")
        if _json_items(text) > MAX_HEADER_ITEMS:
            raise ValueError(f"header: more than {MAX_HEADER_ITEMS} JSON values (too many tensors or entries)")
        hbytes = deflate_header(text, self._version)
        pre = _PRE.pack(MAGIC, self._version[0], self._version[1], zlib.crc32(hbytes), len(hbytes))
        start = PREAMBLE_SIZE + len(hbytes)
        def write(tmp: str) -> None:
            with open(tmp, "wb") as out:
                out.write(pre + hbytes + b"\0" * (_align(start) - start))
                self._f.flush()
                self._f.seek(0)
                shutil.copyfileobj(self._f, out, _COPY)

        try:
            atomic_write(self.path, write)
        finally:
            self.abort()
        self.bytes_written = _align(start) + self._offset
        return self.bytes_written

    def abort(self) -> None:
        """Drop the spooled sections; nothing is written."""
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(OSError):
            os.unlink(self._spool)

    def __enter__(self) -> DzWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DzReader(HeaderView):
    """A ``.dz`` file opened for reading tensor by tensor (header checked now, sections when asked for).

    ``max_bytes`` bounds what all tensors together may decode to (as :func:`deepzip.codec.read`; None: no limit).

    Attributes:
        header: the JSON header; ``config``, ``architecture``, ``extra`` as in :class:`deepzip.codec.DzFile`.
        names: tensor names in file order.
        version: ``(major, minor)``.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> None:
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(PREAMBLE_SIZE)
            if len(head) == PREAMBLE_SIZE and head[:8] == MAGIC:
                hlen = _PRE.unpack_from(head, 0)[4]
                head += f.read(min(_align(PREAMBLE_SIZE + hlen) - PREAMBLE_SIZE, max(0, size - PREAMBLE_SIZE)))
        self.header, self.version, self._start, tables = parse_header(head, size, max_bytes=max_bytes)
        self._tables: dict[str, SectionTable] = {t.name: t for t in tables}
        self.names = list(self._tables)

    def entry(self, name: str) -> SectionTable:
        """What the header says of tensor ``name`` (kind, shape, dtype, meta), nothing read."""
        if name not in self._tables:
            raise KeyError(f"{name}: no such tensor (have {self.names[:8]}...)")
        return self._tables[name]

    def tensor(self, name: str) -> EncodedTensor:
        """Tensor ``name`` with its sections read, checksummed and checked."""
        d = self.entry(name)
        sections = {}
        with open(self.path, "rb") as f:
            for sec, (off, length, crc) in d.sections.items():
                f.seek(self._start + off)
                data = f.read(length)
                if len(data) != length or _fast.crc32(data) != crc:
                    raise DeepzipFormatError(f"{name}/{sec}: checksum mismatch")
                sections[sec] = data
        t = EncodedTensor(name, d.kind, d.shape, d.dtype, d.meta, sections)
        check(t)
        return t

    def decode(self, name: str) -> np.ndarray:
        """Dense array of tensor ``name`` (see :func:`deepzip.codec.decode`)."""
        return decode(self.tensor(name))

    def decode_parts(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(codebook, indices, mask)`` of a codebook or sparse tensor."""
        return decode_parts(self.tensor(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)
