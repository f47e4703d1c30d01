"""deepzip.codec: torch-free encoding of compressed tensors into ``.dz`` files (numpy in, bytes out).

Tensors are encoded one at a time into :class:`EncodedTensor` objects of three kinds, then written
together with a JSON header; the byte-level spec is docs/FORMAT.md.

* ``encode_dense(array)``: raw little-endian values (float32/float16/... any shape, 0-d and empty too).
* ``encode_codebook(codebook, indices)``: float32 codebook + Huffman-coded index per element.
* ``encode_sparse(codebook, indices, mask, gap_width=None)``: float32 codebook + Huffman-coded indices
  of the kept entries (plus filler entries) + Huffman-coded relative positions (gaps).
* ``encode_grouped(codebooks, indices, rows_per_group, outlier_pos, outlier_val)``: one float16 codebook per
  group of rows, Huffman-coded indices, exact float32 outliers (post-training compression).
* ``encode_tiered(codebooks, tiers, indices, outlier_pos, outlier_val)`` (format 1.3): rows sorted into tiers,
  one float16 codebook and one Huffman index stream per tier (embedding tables: used rows fine, the rest coarse).
* ``encode_planes(array, mask=None)`` (format 1.1): lossless byte planes, each raw or Huffman-coded, of all
  values or of the kept ones behind a packed mask; any dtype incl. ``"bfloat16"`` (as uint16 bit patterns).
* ``encode_lossless(array)``: the smallest exact one of dense, planes, masked planes, codebook/sparse.
* ``DzWriter(path)`` / ``DzReader(path)``: the same files written and read one tensor at a time.
* ``decode(t)`` -> dense array; ``decode_parts(t)`` -> ``(codebook, indices, mask)``.
* ``write(path, tensors, config=..., architecture=..., extra=...)`` -> bytes written (atomic);
  ``to_bytes(...)`` -> bytes; ``read(path_or_bytes)`` -> :class:`DzFile` with ``.header``, ``.tensors``,
  ``.version``, ``.config``, ``.architecture``, ``.extra``, ``.decode(name)``, ``.decode_parts(name)``,
  ``.stats()``.
* ``tensor_stats(t)``: per-tensor sizes, code lengths and entropies for reports.

Malformed input raises :class:`deepzip.errors.DeepzipFormatError` naming the part at fault.

Example:
    >>> import numpy as np
    >>> from deepzip import codec
    >>> w = np.array([[0.0, 0.5], [0.0, -0.5]], np.float32)
    >>> t = codec.encode_sparse(np.array([-0.5, 0.5]), (w > 0).astype(np.int64), w != 0)
    >>> f = codec.read(codec.to_bytes({"fc.weight": t, "fc.bias": codec.encode_dense(np.zeros(2, np.float32))}))
    >>> np.array_equal(f.decode("fc.weight"), w)
    True
"""

from ..errors import DeepzipFormatError
from . import huffman, sparse
from ._tensor import (
    EncodedTensor,
    decode,
    decode_kept,
    decode_parts,
    encode_codebook,
    encode_dense,
    encode_planes,
    encode_sparse,
    tensor_stats,
)
from .choose import encode_lossless
from .container import DzFile, read, to_bytes, write
from .grouped import encode_grouped
from .stream import DzReader, DzWriter
from .tiered import encode_tiered

__all__ = [
    "DeepzipFormatError",
    "DzFile",
    "DzReader",
    "DzWriter",
    "EncodedTensor",
    "decode",
    "decode_kept",
    "decode_parts",
    "encode_codebook",
    "encode_dense",
    "encode_grouped",
    "encode_lossless",
    "encode_planes",
    "encode_sparse",
    "encode_tiered",
    "huffman",
    "read",
    "sparse",
    "tensor_stats",
    "to_bytes",
    "write",
]
