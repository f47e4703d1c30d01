"""One tensor of a ``.dz`` file: encode arrays into sections, validate sections, decode them back."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DeepzipFormatError
from . import _fast, _planes, grouped, huffman, sparse, tiered

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DENSE_DTYPES",
    "KINDS",
    "KIND_TABLE",
    "EncodedTensor",
    "Kind",
    "check",
    "decode",
    "decode_kept",
    "decode_parts",
    "decoded_nbytes",
    "encode_codebook",
    "encode_dense",
    "encode_planes",
    "encode_sparse",
    "tensor_stats",
]

# "bfloat16" (format 1.1) has no numpy dtype: its arrays are uint16 bit patterns (see _planes.storage_dtype).
DENSE_DTYPES = ("float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "bool", "bfloat16")
MAX_CODEBOOK = huffman.MAX_CODEBOOK
MAX_NDIM = 64
#: Default bound on the bytes a read file may decode to (all tensors together): 1 GiB, i.e. 256M float32 weights
#: (VGG-16 has 138M). The header's shapes are checked against it before anything is allocated; callers raise it
#: with ``max_bytes`` (CLI ``--max-bytes``).
DEFAULT_MAX_BYTES = 1 << 30
_INT64_MAX = (1 << 63) - 1


@dataclass
class EncodedTensor:
    """A tensor as stored in a ``.dz`` file: what the header says about it plus its section bytes.

    Attributes:
        name: dotted name, e.g. ``"fc1.weight"`` (set by :func:`deepzip.codec.write` from its dict key).
        kind: ``"dense"``, ``"codebook"`` or ``"sparse"``.
        shape: the decoded array's shape.
        dtype: the decoded array's dtype name; for the codebook and sparse kinds, which decode to float32, the
            codebook's storage: ``"float32"``, or ``"float16"`` (format 1.4: float16 centroids, short streams).
        meta: kind-specific integers: ``k`` (codebook size), ``gap_width`` and ``kept`` (sparse).
        sections: section name -> bytes (for a file read by :func:`deepzip.codec.read`, read-only memoryviews
            of the file's bytes); see docs/FORMAT.md for each kind's sections.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, bytes] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of all sections (the file adds the header and alignment padding)."""
        return sum(len(b) for b in self.sections.values())


def _where(name: str) -> str:
    return name or "<tensor>"


def decoded_nbytes(t: EncodedTensor) -> int:
    """Bytes of the array :func:`decode` returns: elements x the stored dtype's size (float32 for shared kinds)."""
    plain = t.kind in ("dense", "planes") and t.dtype in _planes.PLANE_DTYPES
    size = _planes.storage_dtype(t.dtype).itemsize if plain else 4
    return t.numel * size


def encode_dense(array: np.ndarray, name: str = "", dtype: str | None = None) -> EncodedTensor:
    """Store an array as raw little-endian values (biases, norms, layers left uncompressed).

    Args:
        array: any shape including 0-d and empty; dtype one of :data:`DENSE_DTYPES`.
        name: the tensor's name.
        dtype: the dtype to record, default ``array.dtype``; ``"bfloat16"`` for uint16 bit patterns.

    Raises:
        ValueError: unsupported dtype.

    Example:
        >>> decode(encode_dense(np.float32(1.5))).item()
        1.5
    """
    a = np.asarray(array)
    dtype = dtype or a.dtype.name
    if dtype not in DENSE_DTYPES:
        raise ValueError(f"{_where(name)}: dtype {dtype} not storable, expected one of {DENSE_DTYPES}")
    if dtype != a.dtype.name and not (dtype == "bfloat16" and a.dtype.itemsize == 2):
        raise ValueError(f"{_where(name)}: array of dtype {a.dtype} does not hold {dtype}")
    data = np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()
    return EncodedTensor(name, "dense", tuple(a.shape), dtype, {}, {"data": data})


def encode_planes(
    array: np.ndarray, name: str = "", dtype: str | None = None, mask: np.ndarray | None = None,
    block: int = _planes.BLOCK,
) -> EncodedTensor:
    """Store an array losslessly as byte planes, each raw or Huffman-coded (format 1.1; see ``_planes``).

    Args:
        array: any shape; for ``dtype="bfloat16"`` the uint16 bit patterns.
        name: the tensor's name.
        dtype: the dtype to record, default ``array.dtype``.
        mask: optional bools of the array's shape: store only the values where True (the rest decode to 0).
        block: elements per independently coded block.

    Raises:
        ValueError: unsupported dtype, mask of another shape.

    Example:
        >>> w = np.zeros((64, 64), np.float32); w[::3] = np.arange(64) / 64
        >>> t = encode_planes(w, mask=w != 0)
        >>> bool(np.array_equal(decode(t), w)), t.nbytes < w.nbytes // 4
        (True, True)
    """
    a = np.asarray(array)
    dtype = dtype or a.dtype.name
    if mask is not None and np.shape(mask) != a.shape:
        raise ValueError(f"{_where(name)}: mask shape {np.shape(mask)} != array shape {a.shape}")
    try:
        meta, sections = _planes.encode_planes(a, dtype, mask, block)
    except ValueError as e:
        raise ValueError(f"{_where(name)}: {e}") from None
    return EncodedTensor(name, "planes", tuple(a.shape), dtype, meta, sections)


def _check_codebook(codebook: np.ndarray, name: str) -> np.ndarray:
    cb = np.asarray(codebook)
    if cb.ndim != 1 or not 1 <= cb.size <= MAX_CODEBOOK:
        raise ValueError(
            f"{_where(name)}: codebook of shape {cb.shape}, expected 1-d with 1..{MAX_CODEBOOK} entries"
        )
    if not np.issubdtype(cb.dtype, np.floating):
        raise ValueError(f"{_where(name)}: codebook dtype {cb.dtype}, expected floating point")
    cb = cb.astype("<f4")
    if not np.isfinite(cb).all():
        first = int(np.flatnonzero(~np.isfinite(cb))[0])
        raise ValueError(f"{_where(name)}: codebook holds NaN or inf (entry {first})")
    return cb


def _check_indices(indices: np.ndarray, k: int, name: str) -> np.ndarray:
    idx = np.asarray(indices)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{_where(name)}: indices dtype {idx.dtype}, expected integers")
    if idx.size and (idx.min() < 0 or idx.max() >= k):
        raise ValueError(f"{_where(name)}: indices span {idx.min()}..{idx.max()}, expected 0..{k - 1}")
    return idx


def _half_codebook(cb: np.ndarray, name: str) -> np.ndarray:
    """``cb`` (float32) as float16, refused unless every centroid is a float16 value (storing it must lose nothing)."""
    half = cb.astype(np.float16)
    if not np.array_equal(half.astype(np.float32), cb):
        bad = int(np.flatnonzero(half.astype(np.float32) != cb)[0])
        raise ValueError(f"{_where(name)}: half=True but centroid {bad} ({float(cb[bad])!r}) is not a float16 value "
                         "(round the centroids to float16 first)")
    return half


def encode_codebook(codebook: np.ndarray, indices: np.ndarray, name: str = "", half: bool = False) -> EncodedTensor:
    """Store a weight-shared tensor: a float32 codebook and one Huffman-coded index per element.

    Args:
        codebook: 1-d floats, 1..65536 entries (stored as float32).
        indices: integers in ``0..k-1`` with the tensor's shape.
        name: the tensor's name.
        half: store the codebook as float16 (every centroid must be a float16 value) and the stream in the short
            layout (format 1.4: for files of a few KB); the tensor's dtype is then ``"float16"``.

    Raises:
        ValueError: bad codebook size or index out of range.

    Example:
        >>> t = encode_codebook(np.array([-1.0, 0.5]), np.array([[0, 1], [1, 1]]))
        >>> decode(t).tolist()
        [[-1.0, 0.5], [0.5, 0.5]]
    """
    cb = _check_codebook(codebook, name)
    idx = _check_indices(indices, cb.size, name)
    book = _half_codebook(cb, name).astype("<f2") if half else cb
    sections = {"codebook": book.tobytes(), "indices": huffman.pack_stream(idx, alphabet=cb.size, short=half)}
    return EncodedTensor(name, "codebook", tuple(idx.shape), "float16" if half else "float32", {"k": cb.size},
                         sections)


def encode_sparse(
    codebook: np.ndarray,
    indices: np.ndarray,
    mask: np.ndarray,
    gap_width: int | None = None,
    name: str = "",
    half: bool = False,
) -> EncodedTensor:
    """Store a pruned, weight-shared tensor: codebook, Huffman-coded indices of kept entries and gaps.

    Args:
        codebook: 1-d floats, 1..65536 entries (stored as float32).
        indices: integers in ``0..k-1`` with the tensor's shape; ignored where ``mask`` is False.
        mask: bools with the tensor's shape, True for kept entries.
        gap_width: gap width in bits 1..16, or None to pick the smallest file (:func:`sparse.best_width`).
        name: the tensor's name.
        half: float16 codebook and short streams (format 1.4), as :func:`encode_codebook`.

    Raises:
        ValueError: shapes differ, bad codebook, kept index out of range, bad width.

    Example:
        >>> t = encode_sparse(np.array([0.25, -2.0]), np.array([1, 0, 0, 1]), np.array([1, 0, 0, 1], bool))
        >>> decode(t).tolist()
        [-2.0, 0.0, 0.0, -2.0]
    """
    cb = _check_codebook(codebook, name)
    k = cb.size
    idx = np.asarray(indices)
    m = np.asarray(mask)
    if idx.shape != m.shape:
        raise ValueError(f"{_where(name)}: indices shape {idx.shape} != mask shape {m.shape}")
    if m.dtype != bool:
        raise ValueError(f"{_where(name)}: mask dtype {m.dtype}, expected bool")
    size = idx.size
    positions = np.flatnonzero(m)
    kept = _check_indices(idx.reshape(-1)[positions], k, name).astype(np.int64)
    book = _half_codebook(cb, name).astype("<f2") if half else cb
    if gap_width is None:
        gap_width = sparse.best_width(positions, np.bincount(kept, minlength=k), size=size, short=half)
    gaps, filler = sparse.encode_gaps(positions, gap_width, size=size)
    symbols = np.full(gaps.size, k, np.int64)  # symbol k = filler
    symbols[~filler] = kept
    sections = {
        "codebook": book.tobytes(),
        "indices": huffman.pack_stream(symbols, alphabet=k + 1, short=half),
        "gaps": huffman.pack_stream(gaps, short=half),
    }
    meta = {"k": k, "gap_width": gap_width, "kept": int(positions.size)}
    return EncodedTensor(name, "sparse", tuple(idx.shape), "float16" if half else "float32", meta, sections)


# --- validation and decoding ---------------------------------------------------------------------


def _fail(t: EncodedTensor, section: str | None, msg: str) -> DeepzipFormatError:
    where = _where(t.name) + (f"/{section}" if section else "")
    return DeepzipFormatError(f"{where}: {msg}")


def _short(t: EncodedTensor) -> bool:
    """Format 1.4: a codebook or sparse tensor with a float16 codebook has its streams in the short layout."""
    return t.dtype == "float16" and t.kind in ("codebook", "sparse")


def _stream(t: EncodedTensor, section: str) -> dict:
    try:
        return huffman.stream_info(t.sections[section], short=_short(t))
    except DeepzipFormatError as e:
        raise _fail(t, section, str(e)) from None


def check(t: EncodedTensor, max_bytes: int | None = None) -> dict[str, dict]:
    """Check a tensor's structure against its sections without decoding them (cheap, run on read).

    Every size the header or a stream header claims is checked against the bytes present, so that
    decoding never allocates more than the file justifies; shapes whose dimensions (zeros aside)
    multiply past int64 are refused, and with ``max_bytes`` so is a tensor decoding to more bytes.

    Returns:
        section name -> :func:`huffman.stream_info` for the Huffman-coded sections.

    Raises:
        DeepzipFormatError: naming the tensor and section.
    """
    if t.kind not in KIND_TABLE:
        raise _fail(t, None, f"unknown kind {t.kind!r}, expected one of {KINDS}")
    if (
        not isinstance(t.shape, tuple)
        or len(t.shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in t.shape)
    ):
        raise _fail(t, None, f"shape {t.shape!r} is not a tuple of at most {MAX_NDIM} non-negative ints"[:300])
    # An empty tensor may still name a huge dimension ([0, 2**63]) that numpy and torch refuse: bound the
    # product of the non-zero dimensions (in bytes of float64, the widest dtype) by int64.
    span = 1
    for d in t.shape:
        span *= max(d, 1)
        if span > _INT64_MAX // 8:
            raise _fail(t, None, f"shape {list(t.shape)} is impossible: its dimensions multiply past int64"[:300])
    if max_bytes is not None and decoded_nbytes(t) > max_bytes:
        raise _fail(
            t,
            None,
            f"shape {list(t.shape)} decodes to {decoded_nbytes(t)} bytes, more than the limit of {max_bytes} "
            "(max_bytes; raise it if you trust the file)",
        )
    return KIND_TABLE[t.kind].check(t)


def _check_fixed(t: EncodedTensor) -> None:
    """A kind with fixed sections and int meta keys: both as its table entry says."""
    kind = KIND_TABLE[t.kind]
    if set(t.sections) != set(kind.sections):
        raise _fail(t, None, f"sections {sorted(t.sections)}, expected {sorted(kind.sections)} for kind {t.kind}")
    _check_meta_ints(t)


def _check_meta_ints(t: EncodedTensor) -> None:
    for key in KIND_TABLE[t.kind].meta_keys:
        v = t.meta.get(key) if isinstance(t.meta, dict) else None
        if not isinstance(v, int) or isinstance(v, bool):
            raise _fail(t, None, f"meta.{key} is {v!r}, expected an int")


def _check_dense(t: EncodedTensor) -> dict[str, dict]:
    _check_fixed(t)
    if t.dtype not in DENSE_DTYPES:
        raise _fail(t, None, f"dtype {t.dtype!r}, expected one of {DENSE_DTYPES}")
    want = t.numel * _planes.storage_dtype(t.dtype).itemsize
    if len(t.sections["data"]) != want:
        raise _fail(t, "data", f"{len(t.sections['data'])} bytes, shape {list(t.shape)} of {t.dtype} needs {want}")
    return {}


def _check_grouped(t: EncodedTensor) -> dict[str, dict]:
    _check_fixed(t)
    return grouped.check_grouped(t)


def _check_tiered(t: EncodedTensor) -> dict[str, dict]:
    _check_fixed(t)
    return tiered.check_tiered(t)


def _check_shared(t: EncodedTensor) -> dict[str, dict]:
    """The codebook and sparse kinds: a float32 codebook, an index stream, and (sparse) a gap stream."""
    _check_fixed(t)
    n = t.numel
    if t.dtype not in ("float32", "float16"):
        raise _fail(t, None, f"dtype {t.dtype!r}, expected 'float32' or 'float16' for kind {t.kind}")
    k = t.meta["k"]
    if not 1 <= k <= MAX_CODEBOOK:
        raise _fail(t, None, f"codebook size k={k}, expected 1..{MAX_CODEBOOK}")
    size = 2 if t.dtype == "float16" else 4
    if len(t.sections["codebook"]) != size * k:
        raise _fail(t, "codebook", f"{len(t.sections['codebook'])} bytes, k={k} {t.dtype} entries need {size * k}")
    book = _codebook(t)
    bad = np.flatnonzero(~np.isfinite(book))
    if bad.size:
        raise _fail(t, "codebook", f"entry {int(bad[0])} is {float(book[bad[0]])} ({bad.size} non-finite centroids)")
    info = {"indices": _stream(t, "indices")}
    idx = info["indices"]
    if t.kind == "codebook":
        if idx["alphabet"] != k:
            raise _fail(t, "indices", f"alphabet {idx['alphabet']} != codebook size {k}")
        # count <= nbits <= 8 * section bytes was checked, so n is bounded by the file size.
        if idx["count"] != n:
            raise _fail(t, "indices", f"count {idx['count']} != {n} elements of shape {list(t.shape)}")
        return info
    info["gaps"] = gaps = _stream(t, "gaps")
    width, kept = t.meta["gap_width"], t.meta["kept"]
    if not 1 <= width <= sparse.MAX_WIDTH:
        raise _fail(t, None, f"gap_width={width}, expected 1..{sparse.MAX_WIDTH}")
    if idx["alphabet"] != k + 1:
        raise _fail(t, "indices", f"alphabet {idx['alphabet']} != codebook size {k} + 1 filler")
    if gaps["alphabet"] > 1 << width:
        raise _fail(t, "gaps", f"alphabet {gaps['alphabet']} exceeds 2**gap_width = {1 << width}")
    entries = gaps["count"]
    if idx["count"] != entries:
        raise _fail(t, "indices", f"count {idx['count']} != {entries} gap entries")
    if entries > n:  # every entry sits at its own position p_j < n
        raise _fail(t, "gaps", f"{entries} entries for {n} elements of shape {list(t.shape)}")
    if not 0 <= kept <= min(entries, n):
        raise _fail(t, None, f"kept={kept} outside 0..min({entries} entries, {n} elements)")
    # Every gap is < 2**width and the trailing zero run too, so the element count is bounded by the
    # entries actually present: this is what stops a tiny file from claiming a huge tensor.
    if n > (entries + 1) << width:
        raise _fail(
            t,
            None,
            f"{n} elements of shape {list(t.shape)} exceed the {entries} entries "
            f"* 2**{width} positions the gaps can address",
        )
    return info


def _check_planes(t: EncodedTensor) -> dict[str, dict]:
    meta = t.meta if isinstance(t.meta, dict) else {}
    _check_meta_ints(t)
    if t.dtype not in _planes.PLANE_DTYPES:
        raise _fail(t, None, f"dtype {t.dtype!r}, expected one of {_planes.PLANE_DTYPES}")
    n, kept, block = t.numel, meta["kept"], meta["block"]
    if not 1 <= block <= _planes.MAX_BLOCK:
        raise _fail(t, None, f"meta.block={block}, expected 1..{_planes.MAX_BLOCK}")
    if meta["masked"] not in (0, 1) or meta["mask_coded"] not in (0, 1) or meta["mask_coded"] > meta["masked"]:
        raise _fail(t, None, f"meta.masked={meta['masked']}, mask_coded={meta['mask_coded']}, expected 0/1")
    if not 0 <= kept <= n or (not meta["masked"] and kept != n):
        raise _fail(t, None, f"meta.kept={kept} for {n} elements (masked={meta['masked']})")
    coded = meta.get("coded")
    size = _planes.storage_dtype(t.dtype).itemsize
    blocks = -(-kept // block)
    if (not isinstance(coded, list) or len(coded) != blocks
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << size for c in coded)):
        raise _fail(t, None, f"meta.coded must list {blocks} plane bitmasks below {1 << size}")
    want = _planes.section_names(meta, t.dtype)
    if set(t.sections) != set(want):
        raise _fail(t, None, f"sections {sorted(t.sections)[:6]}..., expected {want[:6]}... for kind planes")
    # Size bounds before anything is allocated: a raw plane holds exactly its count, a coded one at most
    # 8 symbols per byte (every symbol costs at least one bit), so the file bounds the elements.
    if meta["masked"]:
        need = (n + 7) // 8
        got = len(t.sections["mask"])
        if (not meta["mask_coded"] and got != need) or (meta["mask_coded"] and need > 8 * got):
            raise _fail(t, "mask", f"{got} bytes cannot hold the {need}-byte mask of {n} elements")
    for j in range(blocks):
        count = min(block, kept - j * block)
        lengths = [len(t.sections[f"b{j}p{i}"]) for i in range(size)]
        for i, got in enumerate(lengths):
            if (not coded[j] >> i & 1 and got != count) or (coded[j] >> i & 1 and got != 1 and count > 8 * got):
                raise _fail(t, f"b{j}p{i}", f"{got} bytes cannot hold {count} plane bytes")
        # A one-byte coded section is a constant plane; without a mask (whose bytes bound the count) at least one
        # plane per block must be more, so that the element count stays bounded by the bytes present.
        if count > 1 and not meta["masked"] and all(coded[j] >> i & 1 and n == 1 for i, n in enumerate(lengths)):
            raise _fail(t, f"b{j}p0", f"every plane of block {j} is constant: {count} elements from {size} bytes")
    return {}


def _decode_stream(t: EncodedTensor, section: str, narrow: bool = False) -> np.ndarray:
    """The symbols of a stream section; with ``narrow``, as uint8 when its alphabet allows (the compiled decoder then
    takes several symbols per table lookup), else uint16 or int32. Errors name the tensor and section."""
    try:
        data = t.sections[section]
        if narrow:
            info = huffman.stream_info(data, payload=False, short=_short(t))
            if info["alphabet"] <= 256:
                return huffman.unpack_stream(data, out=np.empty(info["count"], np.uint8), info=info)
        return huffman.unpack_stream(data, short=_short(t))
    except DeepzipFormatError as e:
        raise _fail(t, section, str(e)) from None


def decode_parts(t: EncodedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weight-sharing parts of a codebook or sparse tensor, to rebuild a shared model exactly.

    Returns:
        ``(codebook, indices, mask)``: float32 ``(k,)``, int32 of the tensor's shape (0 where pruned),
        bool of the tensor's shape (all True for the codebook kind).

    Raises:
        DeepzipFormatError: malformed sections. ValueError: a dense tensor.
    """
    check(t)
    if not KIND_TABLE[t.kind].shared:
        raise ValueError(f"{_where(t.name)}: {t.kind} tensors have no single codebook")
    cb, pos, sym = _kept(t)
    if t.kind == "codebook":
        return cb, sym.astype(np.int32).reshape(t.shape), np.ones(t.shape, bool)
    indices = np.zeros(t.numel, np.int32)
    indices[pos] = sym
    mask = np.zeros(t.numel, bool)
    mask[pos] = True
    return cb, indices.reshape(t.shape), mask.reshape(t.shape)


def decode_kept(t: EncodedTensor) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The kept entries of a codebook or sparse tensor without building anything of the tensor's full size.

    Returns:
        ``(codebook, positions, indices)``: float32 ``(k,)``; int64 flat positions of the kept entries, increasing
        (None for the codebook kind: every position); their codebook indices, one per kept entry.

    Raises:
        DeepzipFormatError: malformed sections. ValueError: a dense tensor.
    """
    check(t)
    if not KIND_TABLE[t.kind].shared:
        raise ValueError(f"{_where(t.name)}: {t.kind} tensors have no single codebook")
    return _kept(t)


def _codebook(t: EncodedTensor) -> np.ndarray:
    """A codebook or sparse tensor's centroids as float32 (stored as float32, or as float16 in format 1.4)."""
    return np.frombuffer(t.sections["codebook"], "<f2" if t.dtype == "float16" else "<f4").astype(np.float32)


def _kept(t: EncodedTensor) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Codebook, flat kept positions (None for the codebook kind: all) and their indices."""
    cb = _codebook(t)
    k = cb.size
    symbols = _decode_stream(t, "indices")
    if t.kind == "codebook":
        return cb, None, symbols
    gaps = _decode_stream(t, "gaps")
    n, width = t.numel, t.meta["gap_width"]
    filler = symbols == k
    pos_all = np.cumsum(gaps.astype(np.int64) + 1) - 1
    last = int(pos_all[-1]) if pos_all.size else -1
    if last >= n:
        raise _fail(t, "gaps", f"entry at position {last} outside {n} elements")
    if n - 1 - last >= 1 << width:
        raise _fail(
            t, "gaps", f"trailing run of {n - 1 - last} zeros exceeds 2**gap_width - 1 without fillers"
        )
    pos = pos_all[~filler]
    if pos.size != t.meta["kept"]:
        raise _fail(t, "indices", f"{pos.size} kept entries, header says kept={t.meta['kept']}")
    return cb, pos, symbols[~filler]


def decode(t: EncodedTensor) -> np.ndarray:
    """Rebuild the dense array: the stored dtype for dense tensors, float32 otherwise (0 where pruned).

    Raises:
        DeepzipFormatError: malformed sections, naming the tensor and section.
    """
    check(t)
    return KIND_TABLE[t.kind].decode(t)


def _decode_dense(t: EncodedTensor) -> np.ndarray:
    sd = _planes.storage_dtype(t.dtype)
    return np.frombuffer(t.sections["data"], sd).astype(sd.newbyteorder("=")).reshape(t.shape)


def _decode_planes(t: EncodedTensor) -> np.ndarray:
    return _planes.decode_planes(t.meta, t.sections, t.shape, t.dtype, _where(t.name))


def _decode_shared(t: EncodedTensor) -> np.ndarray:
    if t.kind == "sparse" and _fast.available():  # compiled: the kept entries written straight into the output
        cb = _codebook(t)
        symbols, gaps = _decode_stream(t, "indices", narrow=True), _decode_stream(t, "gaps", narrow=True)
        out = np.zeros(t.numel, np.float32)
        kept = _fast.sparse_fill(out, cb, symbols, gaps, t.meta["gap_width"])
        if kept is not None and kept == t.meta["kept"]:
            return out.reshape(t.shape)
        del out, symbols, gaps  # numpy below finds (and names) what is wrong, in its own memory
    cb, pos, sym = _kept(t)
    if pos is None:
        return cb[sym].reshape(t.shape)
    out = np.zeros(t.numel, np.float32)
    out[pos] = cb[sym]
    return out.reshape(t.shape)


def tensor_stats(t: EncodedTensor, entropy: bool = True) -> dict[str, Any]:
    """Sizes and code statistics of one tensor, for reports and ``deepzip inspect``.

    Keys: ``name, kind, shape, dtype, count`` (elements), ``decoded_bytes`` (of the decoded array), ``kept``, ``k``,
    ``raw_bits_per_index``
    (``ceil(log2 k)``), ``index_entries`` (kept + fillers), ``fillers``, ``index_bits`` (Huffman),
    ``index_bits_per_entry``, ``gap_width``, ``gap_bits``, ``gap_bits_per_entry``, ``section_bytes``
    (dict), ``bytes`` (all sections), ``bits_per_weight`` (section bits / count); with ``entropy``, also
    ``index_entropy_bits`` and ``gap_entropy_bits`` (empirical bits per symbol; decodes the streams).
    Keys that do not apply to a kind are None.
    """
    info = check(t)
    n = t.numel
    s: dict[str, Any] = {
        "name": t.name,
        "kind": t.kind,
        "shape": list(t.shape),
        "dtype": t.dtype,
        "count": n,
        "decoded_bytes": decoded_nbytes(t),
        "kept": n,
        "k": None,
        "raw_bits_per_index": None,
        "index_entries": None,
        "fillers": None,
        "index_bits": None,
        "index_bits_per_entry": None,
        "gap_width": None,
        "gap_bits": None,
        "gap_bits_per_entry": None,
        "section_bytes": {name: len(b) for name, b in t.sections.items()},
        "bytes": t.nbytes,
        "bits_per_weight": 8 * t.nbytes / n if n else None,
    }
    if entropy:
        s["index_entropy_bits"] = s["gap_entropy_bits"] = None
    if t.kind in ("dense", "planes"):
        if t.kind == "planes":
            s["kept"] = t.meta["kept"]
        return s
    if t.kind == "grouped":
        idx = info["indices"]
        s.update(k=t.meta["k"], raw_bits_per_index=math.ceil(math.log2(max(t.meta["k"], 2))),
                 index_entries=idx["count"], index_bits=idx["nbits"], fillers=0,
                 index_bits_per_entry=idx["nbits"] / idx["count"] if idx["count"] else None)
        if entropy:
            sym = _decode_stream(t, "indices")
            s["index_entropy_bits"] = huffman.entropy_bits(np.bincount(sym)) if sym.size else 0.0
        return s
    if t.kind == "tiered":  # per-tier streams: the index bits are the section's (headers included)
        count = info["indices"]["count"]
        s.update(k=t.meta["k"], tiers=t.meta["tiers"], raw_bits_per_index=math.ceil(math.log2(max(t.meta["k"], 2))),
                 index_entries=count, index_bits=8 * len(t.sections["indices"]), fillers=0,
                 index_bits_per_entry=8 * len(t.sections["indices"]) / count if count else None)
        return s
    k = t.meta["k"]
    idx = info["indices"]
    s.update(
        k=k,
        raw_bits_per_index=math.ceil(math.log2(k)),
        index_entries=idx["count"],
        index_bits=idx["nbits"],
        index_bits_per_entry=idx["nbits"] / idx["count"] if idx["count"] else None,
    )
    if t.kind == "sparse":
        g = info["gaps"]
        s.update(
            kept=t.meta["kept"],
            fillers=idx["count"] - t.meta["kept"],
            gap_width=t.meta["gap_width"],
            gap_bits=g["nbits"],
            gap_bits_per_entry=g["nbits"] / g["count"] if g["count"] else None,
        )
    else:
        s["fillers"] = 0
    if entropy:
        sym = _decode_stream(t, "indices")
        s["index_entropy_bits"] = huffman.entropy_bits(np.bincount(sym)) if sym.size else 0.0
        if t.kind == "sparse":
            gaps = _decode_stream(t, "gaps")
            s["gap_entropy_bits"] = huffman.entropy_bits(np.bincount(gaps)) if gaps.size else 0.0
    return s


@dataclass(frozen=True)
class Kind:
    """What the codec does with one tensor kind: the one table every dispatch reads (:data:`KIND_TABLE`).

    Attributes:
        encode: the public encoder that makes this kind.
        check: validates an :class:`EncodedTensor` of the kind (after the shape checks common to all kinds).
        decode: its dense array (after ``check``).
        sections: the fixed section names (None: computed from the meta, as for ``planes``).
        meta_keys: the int meta entries it must have.
        shared: one codebook plus indices (``decode_parts`` / ``decode_kept`` apply).
        version: the format version that introduced it.
    """

    encode: Callable[..., EncodedTensor]
    check: Callable[[EncodedTensor], dict[str, dict]]
    decode: Callable[[EncodedTensor], np.ndarray]
    sections: tuple[str, ...] | None
    meta_keys: tuple[str, ...]
    shared: bool
    version: tuple[int, int]


KIND_TABLE: dict[str, Kind] = {
    "dense": Kind(encode_dense, _check_dense, _decode_dense, ("data",), (), False, (1, 0)),
    "codebook": Kind(encode_codebook, _check_shared, _decode_shared, ("codebook", "indices"), ("k",), True, (1, 0)),
    "sparse": Kind(encode_sparse, _check_shared, _decode_shared, ("codebook", "indices", "gaps"),
                   ("k", "gap_width", "kept"), True, (1, 0)),  # dtype float16: 1.4 (see _short)
    "planes": Kind(encode_planes, _check_planes, _decode_planes, None, ("block", "kept", "masked", "mask_coded"),
                   False, (1, 1)),
    "grouped": Kind(grouped.encode_grouped, _check_grouped, grouped.decode_grouped, grouped.SECTIONS,
                    grouped.META_KEYS, False, (1, 2)),
    "tiered": Kind(tiered.encode_tiered, _check_tiered, tiered.decode_tiered, tiered.SECTIONS, tiered.META_KEYS,
                   False, (1, 3)),
}
KINDS = tuple(KIND_TABLE)
SECTIONS = {k: v.sections for k, v in KIND_TABLE.items() if v.sections is not None}
META_KEYS = {k: v.meta_keys for k, v in KIND_TABLE.items()}
