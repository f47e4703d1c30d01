"""The codec's optional compiled entropy stage (``_huffc.c``): loading it and calling it on numpy arrays.

Every function here returns None when the compiled code is not there, is turned off, or is not sure about its input;
the caller then runs its numpy code on the same input. The two paths write the same bytes and decode to the same
arrays (tests/test_fastcodec.py checks it on random inputs), and every error message comes from the numpy code: the
compiled decoder only ever answers "here is exactly what numpy would return" or "ask numpy" (see ``_huffc.c``).

``DEEPZIP_CODEC=numpy`` in the environment turns the compiled code off (read at every call, so tests can flip it).
The library is built by ``setup.py`` (``python setup.py build_ext --inplace``) and loaded with ctypes, which
releases the GIL during each call: blocks coded from several threads run in parallel.

Example:
    >>> import numpy as np
    >>> counts = count(np.array([0, 2, 2], np.uint8), 3)
    >>> counts is None or counts.tolist() == [1, 0, 2]
    True
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["available", "code_lengths", "count", "crc32", "decode", "encode", "merge", "sparse_fill", "split"]

_LIB: ctypes.CDLL | None = None
_LOADED = False
_P, _I64, _I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "dz_count": (_P, _I64, _I, _I64, _P),
    "dz_encode": (_P, _I64, _I, _P, _P, _I64, _I64, _P, _I64, _P),
    "dz_decode": (_P, _I64, _I64, _P, _I64, _I64, _P, _I64, _I64, _P, _I),
    "dz_split": (_P, _I64, _I, _I, _P, _P),
    "dz_merge": (_P, _I64, _I, _I, _P),
    "dz_sparse_fill": (_P, _I64, _P, _I64, _P, _I, _P, _I, _I64, _I64),
    "dz_code_lengths": (_P, _I64, _I, _P),
    "dz_crc32": (_P, _I64, ctypes.c_uint32),
}


def _load() -> ctypes.CDLL | None:
    global _LIB, _LOADED
    if not _LOADED:
        _LOADED = True
        here = Path(__file__).resolve().parent
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            p = here / f"_huffc{suffix}"
            if p.is_file():
                try:
                    lib = ctypes.CDLL(str(p))
                except OSError:
                    break
                for name, args in _SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.argtypes = list(args)
                    fn.restype = ctypes.c_int64 if name != "dz_merge" else None
                _LIB = lib
                break
    return _LIB


def _lib() -> ctypes.CDLL | None:
    return None if os.environ.get("DEEPZIP_CODEC", "").lower() == "numpy" else _load()


def available() -> bool:
    """Whether the compiled stage is built and turned on (``DEEPZIP_CODEC=numpy`` turns it off)."""
    return _lib() is not None


def _int_symbols(s: np.ndarray) -> np.ndarray | None:
    """``s`` as a contiguous array of 1-, 2-byte unsigned or 4-, 8-byte signed integers, or None."""
    if s.dtype.kind not in "ui" or s.dtype.byteorder == ">":
        return None
    if s.dtype.kind == "u" and s.itemsize > 2:  # read as signed below: large values fail and numpy decides
        s = s.view(s.dtype.str.replace("u", "i"))
    if s.dtype.kind == "i" and s.itemsize < 4:
        return None
    return np.ascontiguousarray(s)


def crc32(data: bytes | bytearray | memoryview) -> int:
    """``zlib.crc32(data)``, the same value, by the compiled carry-less-multiply fold where the CPU has it (about ten
    times faster on the megabytes of a checkpoint's sections); zlib for the short tail and everywhere else."""
    n = len(data)
    lib = _lib() if n >= 4096 else None
    if lib is None:
        return zlib.crc32(data)
    buf = np.frombuffer(data, np.uint8)
    head = n & ~15
    crc = lib.dz_crc32(buf.ctypes.data, head, 0)
    if crc < 0:
        return zlib.crc32(data)
    return zlib.crc32(buf[head:], crc) if head < n else int(crc)


def count(symbols: np.ndarray, alphabet: int) -> np.ndarray | None:
    """int64 histogram of ``symbols`` over ``alphabet``; None when a symbol lies outside it (or no library)."""
    lib = _lib()
    s = _int_symbols(np.asarray(symbols).reshape(-1))
    if lib is None or s is None:
        return None
    counts = np.zeros(max(alphabet, 1), np.int64)
    if lib.dz_count(s.ctypes.data, s.size, s.itemsize, alphabet, counts.ctypes.data) != 0:
        return None
    return counts[:alphabet]


def code_lengths(counts: np.ndarray, max_length: int) -> np.ndarray | None:
    """``huffman.code_lengths(counts, max_length)`` (the same lengths), or None: ask numpy."""
    lib = _lib()
    if lib is None:
        return None
    c = np.ascontiguousarray(counts, np.int64)
    lengths = np.zeros(c.size, np.uint8)
    if c.ndim != 1 or lib.dz_code_lengths(c.ctypes.data, c.size, max_length, lengths.ctypes.data) != 0:
        return None
    return lengths


def encode(
    symbols: np.ndarray, codes: np.ndarray, lengths: np.ndarray, sync: int, nbits: int
) -> tuple[bytes, int, np.ndarray] | None:
    """``huffman._encode``'s ``(data, nbits, offsets)``, given the canonical codes and the total ``nbits``."""
    lib = _lib()
    s = _int_symbols(np.asarray(symbols).reshape(-1))
    if lib is None or s is None:
        return None
    codes = np.ascontiguousarray(codes, np.uint64)
    lens = np.ascontiguousarray(lengths, np.uint8)
    out = np.empty((nbits + 7) // 8 + 3 * max(sync, 1024) + 16, np.uint8)
    offsets = np.zeros(max(0, (s.size - 1) // sync) if sync else 0, np.int64)
    got = lib.dz_encode(s.ctypes.data, s.size, s.itemsize, codes.ctypes.data, lens.ctypes.data, lens.size, sync,
                        out.ctypes.data, out.size, offsets.ctypes.data)
    if got != nbits:
        return None
    return out[: (nbits + 7) // 8].tobytes(), nbits, offsets


def decode(
    data: bytes | memoryview, offset: int, nbits: int, lengths: np.ndarray, count: int, offsets: np.ndarray | None,
    sync: int, dtype: type, out: np.ndarray | None = None,
) -> np.ndarray | None:
    """``count`` symbols (``dtype``: uint8, uint16 or int32) decoded from ``data[offset:]``, or None: ask numpy.

    ``offsets`` are the recorded bit offsets of symbols ``sync, 2*sync, ...`` (None: one chunk of ``count``);
    ``out``, a contiguous array of ``count`` ``dtype``, receives them (it may be partly written on None).
    """
    lib = _lib()
    if lib is None or count <= 0:
        return None
    buf = np.frombuffer(data, np.uint8)
    nbytes = (nbits + 7) // 8
    if offset + nbytes > buf.size:
        return None
    if offsets is None:
        starts, sync = np.zeros(1, np.int64), count
    else:
        starts = np.concatenate(([0], np.asarray(offsets, np.int64)))
    lens = np.ascontiguousarray(lengths, np.uint8)
    if out is None:
        out = np.empty(count, dtype)
    elif out.dtype != dtype or out.size != count or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a contiguous array of {count} {np.dtype(dtype).name}")
    if lib.dz_decode(buf.ctypes.data + offset, nbytes, nbits, lens.ctypes.data, lens.size, count, starts.ctypes.data,
                     starts.size, sync, out.ctypes.data, out.itemsize) != 0:
        return None
    return out


def split(u: np.ndarray, rotate: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """``(planes, counts)`` of contiguous unsigned values ``u`` (n,): planes (itemsize, n) uint8, counts (itemsize,
    256) int64, the values rotated left by one bit first when ``rotate``."""
    lib = _lib()
    if lib is None:
        return None
    u = np.ascontiguousarray(u)
    planes = np.empty((u.itemsize, u.size), np.uint8)
    counts = np.zeros((u.itemsize, 256), np.int64)
    if lib.dz_split(u.ctypes.data, u.size, u.itemsize, int(rotate), planes.ctypes.data, counts.ctypes.data) != 0:
        return None
    return planes, counts


def merge(planes: list[np.ndarray], out: np.ndarray, rotate: bool) -> bool:
    """Fill contiguous ``out`` (n,) from its byte planes (``out.itemsize`` contiguous uint8 arrays of n bytes each,
    e.g. rows of a block, or a raw plane's section as it lies in the file), rotated back when ``rotate``; False: no
    library."""
    lib = _lib()
    if lib is None or not out.flags.c_contiguous:
        return False
    if len(planes) != out.itemsize or any(p.dtype != np.uint8 or p.shape != (out.size,) or not p.flags.c_contiguous
                                          for p in planes):
        raise ValueError(f"{len(planes)} planes for {out.size} values of {out.itemsize} bytes")
    ptrs = np.array([p.ctypes.data for p in planes], np.uint64)
    lib.dz_merge(ptrs.ctypes.data, out.size, out.itemsize, int(rotate), out.ctypes.data)
    return True


def sparse_fill(
    out: np.ndarray, codebook: np.ndarray, symbols: np.ndarray, gaps: np.ndarray, width: int
) -> int | None:
    """Write the kept entries of a sparse tensor into zeroed float32 ``out``; their number, or None: ask numpy."""
    lib = _lib()
    sym, gp = _int_symbols(symbols), _int_symbols(gaps)
    if lib is None or sym is None or gp is None or sym.size != gp.size or not out.flags.c_contiguous:
        return None
    cb = np.ascontiguousarray(codebook, np.float32)
    kept = lib.dz_sparse_fill(out.ctypes.data, out.size, cb.ctypes.data, cb.size, sym.ctypes.data, sym.itemsize,
                              gp.ctypes.data, gp.itemsize, sym.size, width)
    return None if kept < 0 else int(kept)
