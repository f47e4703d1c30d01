"""The optional C kernel of the sparse runtime (``_spmv.c``): loading it, the layout it reads, and its input checks.

Why a hand-written kernel: at AlexNet's fc6 / fc7 shapes (9% kept) torch's sparse CSR ran 1.66x / 2.03x faster than
dense torch at batch 1, scipy.sparse 2.16x / 2.75x and a numba loop 1.36x / 1.68x, short of Deep Compression's 3x.
These layers are bound by the bytes streamed per kept weight, so the kernel reads Deep Compression's layout: an 8-bit
*relative* column index per kept weight (the step from the row's previous kept column; a longer gap is bridged by
filler entries of value zero) and a float32 value or an 8/16-bit codebook index. See ``_spmv.c``.

The kernel is built by ``setup.py`` as an optional extension; when it is missing (no compiler at install time) or
turned off (``DEEPZIP_KERNEL=torch`` in the environment), :func:`available` is False and the runtime uses torch's CSR.

Safety: the arrays may come from a hostile ``.dz`` file and the C code checks no bounds, so :func:`check` validates
them (dtypes, contiguity, row pointers, column range, codebook indices) before any call; the runtime calls it at
construction and again whenever a buffer was replaced or modified in place (torch's version counter).

Example:
    >>> import numpy as np
    >>> rowptr, step, at = encode_steps(np.array([0, 2, 2, 3]), np.array([1, 300, 0]))  # rows 0 (cols 1, 300), 2 (0)
    >>> rowptr.tolist(), step.tolist()  # the gap 1 -> 300 (299) needs one filler step of 255, then 44
    ([0, 3, 3, 4], [1, 255, 44, 0])
    >>> at.tolist()  # the entries of the three kept weights; entry 1 is a filler
    [0, 2, 3]
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeepzipFormatError

__all__ = ["VALUE_DTYPES", "absolute_columns", "available", "check", "encode_steps", "function", "isa", "library_path",
           "spmm"]

VALUE_DTYPES = {np.dtype(np.float32): "dz_spmm_f32", np.dtype(np.uint8): "dz_spmm_u8",
                np.dtype(np.uint16): "dz_spmm_u16"}
_LIB: ctypes.CDLL | None = None
_LOADED = False


def library_path() -> Path | None:
    """The built ``_spmv`` shared library beside this module, if there is one."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = here / f"_spmv{suffix}"
        if p.is_file():
            return p
    return None


def _load() -> ctypes.CDLL | None:
    global _LIB, _LOADED
    if not _LOADED:
        _LOADED = True
        path = library_path()
        if path is not None:
            try:
                lib = ctypes.CDLL(str(path))
                lib.dz_spmv_abi.restype = ctypes.c_int64
                if lib.dz_spmv_abi() == 1:
                    P, I64 = ctypes.c_void_p, ctypes.c_int64
                    for fn in VALUE_DTYPES.values():
                        getattr(lib, fn).argtypes = [I64, P, P, P, P, P, P, I64]
                        getattr(lib, fn).restype = None
                    lib.dz_spmv_isa.restype = I64
                    _LIB = lib
            except (OSError, AttributeError):
                _LIB = None
    return _LIB


def available() -> bool:
    """True when the C kernel is built, loads, and is not turned off by ``DEEPZIP_KERNEL=torch``."""
    return os.environ.get("DEEPZIP_KERNEL", "") != "torch" and _load() is not None


def function(values_dtype: np.dtype) -> Any:
    """The kernel's C function for ``values_dtype`` (float32, uint8, uint16); the kernel must be :func:`available`."""
    lib = _load()
    if lib is None:
        raise RuntimeError("the C kernel is not built")
    return getattr(lib, VALUE_DTYPES[np.dtype(values_dtype)])


def isa() -> str:
    """The instruction set the kernel's loops run with here: ``"avx2+fma"``, ``"baseline"``, or ``""`` (not built)."""
    lib = _load()
    return "" if lib is None else {2: "avx2+fma"}.get(lib.dz_spmv_isa(), "baseline")


def encode_steps(rowptr: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """CSR absolute columns (increasing within each row) as 8-bit steps with filler entries.

    Args:
        rowptr: ``(rows + 1,)`` row pointers into ``col``.
        col: ``(nnz,)`` absolute column of each kept weight, increasing within a row.

    Returns:
        ``(rowptr2, step, at)``: row pointers into the entries, each entry's step (uint8) from the previous entry's
        column (from 0 at a row's start), and the entry of each kept weight (None when there are no fillers, so
        entry i is kept weight i); the other entries are fillers, of value zero.

    Raises:
        DeepzipFormatError: the columns decrease within a row or are negative.
    """
    rowptr = np.asarray(rowptr)
    c = np.asarray(col)
    # int32 where the columns fit (the usual case): these temporaries are the peak memory of loading a big layer
    c = c.astype(np.int32 if c.size == 0 or int(c.max()) < 2**31 - 1 else np.int64, copy=False)
    gap = np.diff(c, prepend=c.dtype.type(0))  # (nnz,) column minus the previous kept column
    starts = np.asarray(rowptr[:-1])[np.diff(rowptr) > 0]  # the first entry of each non-empty row
    gap[starts] = c[starts]
    if gap.size and int(gap.min()) < 0:
        raise DeepzipFormatError("sparse weight: column indices are negative or not increasing within a row")
    if not gap.size or int(gap.max()) <= 255:  # no fillers
        return np.asarray(rowptr, np.int32), gap.astype(np.uint8), None
    fill = np.maximum(gap - 1, 0) // 255  # filler entries before each kept weight: ceil(gap / 255) - 1
    before = np.concatenate([[0], np.cumsum(fill, dtype=np.int64)])  # fillers before entry i, (nnz + 1,)
    at = np.arange(c.size) + before[1:]  # each kept weight's entry
    step = np.full(c.size + int(before[-1]), 255, np.uint8)
    step[at] = (gap - 255 * fill).astype(np.uint8)
    rowptr2 = (np.asarray(rowptr, np.int64) + before[np.asarray(rowptr, np.int64)]).astype(np.int32)
    return rowptr2, step, at


def absolute_columns(rowptr: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Each entry's absolute column (int64) from the row pointers and steps of :func:`encode_steps`."""
    cs = np.cumsum(step, dtype=np.int64)
    base = np.concatenate([[0], cs])[np.asarray(rowptr[:-1], np.int64)]  # steps before each row's first entry
    return cs - np.repeat(base, np.diff(np.asarray(rowptr, np.int64)))


def check(name: str, shape: tuple[int, int], rowptr: np.ndarray, step: np.ndarray, values: np.ndarray,
          codebook: np.ndarray | None) -> None:
    """Refuse arrays the kernel could read out of bounds with; ``name`` names the layer in the error.

    Raises:
        DeepzipFormatError: a wrong dtype / shape / layout, row pointers not from 0 to the entry count or decreasing,
            a row whose steps reach ``in_features`` or beyond, a codebook index at or past the codebook's end.
    """
    rows, cols = shape
    where = f"{name or 'sparse layer'} {tuple(shape)}"

    def bad(what: str) -> DeepzipFormatError:
        return DeepzipFormatError(f"{where}: {what}; refusing to run the C kernel on it")

    arrays = {"row pointers": (rowptr, np.int32), "steps": (step, np.uint8)}
    for what, (a, dt) in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype != dt or a.ndim != 1 or not a.flags.c_contiguous:
            raise bad(f"{what} must be a contiguous 1-D {np.dtype(dt)} array, got "
                      f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    if values.dtype not in VALUE_DTYPES or values.ndim != 1 or not values.flags.c_contiguous:
        raise bad(f"values must be a contiguous 1-D float32 / uint8 / uint16 array, got {values.dtype} {values.shape}")
    if rows < 0 or cols < 0 or rowptr.size != rows + 1:
        raise bad(f"{rowptr.size} row pointers for {rows} rows")
    n = step.size
    if values.size != n:
        raise bad(f"{values.size} values for {n} entries")
    if rowptr[0] != 0 or rowptr[-1] != n:
        raise bad(f"row pointers run from {rowptr[0]} to {rowptr[-1]}, expected 0 to {n}")
    if rows and int(np.diff(rowptr).min()) < 0:
        raise bad(f"row pointers decrease at row {int(np.argmax(np.diff(rowptr) < 0))}")
    if n:
        cs = np.cumsum(step, dtype=np.int64)
        last = cs[np.maximum(rowptr[1:].astype(np.int64) - 1, 0)]  # steps up to each row's last entry
        first = np.concatenate([[0], cs])[rowptr[:-1]]
        reach = np.where(np.diff(rowptr) > 0, last - first, -1)  # a row's last column (the steps only add)
        if int(reach.max()) >= cols:
            r = int(np.argmax(reach))
            raise bad(f"row {r} reaches column {int(reach[r])}, in_features is {cols}")
    if values.dtype != np.float32:
        if codebook is None or codebook.dtype != np.float32 or codebook.ndim != 1 or not codebook.flags.c_contiguous:
            raise bad("codebook indices without a contiguous 1-D float32 codebook")
        if n and int(values.max()) >= codebook.size:
            raise bad(f"codebook index {int(values.max())} at entry {int(values.argmax())}, the codebook has "
                      f"{codebook.size} entries")


def spmm(shape: tuple[int, int], rowptr: np.ndarray, step: np.ndarray, values: np.ndarray,
         codebook: np.ndarray | None, x: np.ndarray, y: np.ndarray) -> None:
    """``y = W @ x`` in the kernel; the arrays of ``W`` (``shape``) must have passed :func:`check`.

    ``x``: ``(in_features, B)`` float32, C-contiguous; ``y``: ``(out_features, B)`` float32, C-contiguous (written).
    """
    lib = _load()
    if lib is None:
        raise RuntimeError("the C kernel is not built")
    rows, batch = y.shape
    # the kernel reads x[0:in_features, 0:B] and writes y[0:rows, 0:B]: the shapes must be exact, not just big enough
    if not (x.dtype == np.float32 and y.dtype == np.float32 and x.flags.c_contiguous and y.flags.c_contiguous
            and x.shape == (shape[1], batch) and rows == shape[0] and rowptr.size == rows + 1):
        raise ValueError(f"spmm: x {x.dtype} {x.shape} / y {y.dtype} {y.shape} do not fit a {shape} weight")
    cb = codebook.ctypes.data if codebook is not None else None
    getattr(lib, VALUE_DTYPES[values.dtype])(rows, rowptr.ctypes.data, step.ctypes.data, values.ctypes.data, cb,
                                             x.ctypes.data, y.ctypes.data, batch)
