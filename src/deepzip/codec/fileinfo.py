"""What a ``.dz`` file holds, from its bytes alone: per-layer sizes and bits (the paper's Tables 2 and 3 for our
file). Torch-free, so ``deepzip inspect`` starts fast and works where torch is absent.

Example:
    >>> import numpy as np
    >>> from deepzip import codec
    >>> enc = codec.encode_codebook(np.array([-1.0, 1.0], np.float32), np.zeros((4, 4), np.int64), name="w")
    >>> rep = file_report(codec.to_bytes({"w": enc}))
    >>> rep["params_total"], rep["layers"][0]["k"]
    (16, 2)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import codec
from ..errors import DeepzipFormatError
from ..papers import PAPER
from .container import DEFAULT_MAX_BYTES

__all__ = ["file_report", "read_dz"]


def read_dz(path: str | os.PathLike[str] | bytes, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> codec.DzFile:
    """:func:`deepzip.codec.read` (``max_bytes``: the most the tensors may decode to), with the file's name in front
    of any format error."""
    try:
        return codec.read(path, max_bytes=max_bytes)
    except DeepzipFormatError as exc:
        if isinstance(path, (bytes, bytearray)):
            raise
        raise DeepzipFormatError(f"{os.fspath(path)}: {exc}") from None


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def file_report(path: str | os.PathLike[str] | bytes, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Per-layer sizes computed from a ``.dz`` file's actual bytes (the paper's Tables 2 and 3, for our file).

    Per tensor: weights, kept %, bits per index before (fixed width) and after Huffman, gap width and gap bits
    after Huffman, bytes, and the ratio against the tensor's uncompressed size (32-bit floats for weights, its own
    dtype for dense tensors); plus totals and the size before Huffman. Decodes no tensor (only the Huffman streams,
    whose size the file bounds); ``max_bytes`` as in :func:`deepzip.codec.read`.
    """
    f = read_dz(path, max_bytes=max_bytes)
    file_bytes = len(path) if isinstance(path, (bytes, bytearray)) else Path(path).stat().st_size
    layers = []
    total = nonzero = 0
    before_huffman = 0.0
    arch = f.architecture or ""
    paper = PAPER.get(arch, {})
    for st in f.stats():
        count = st["count"]
        if not st["name"].endswith(_BUFFERS):  # parameters only: BatchNorm running statistics are not weights
            total += count
            nonzero += st["kept"]
        row = {"tensor": st["name"], "kind": st["kind"], "weights": count,
               "kept_pct": 100.0 * st["kept"] / count if count else 0.0, "bytes": st["bytes"],
               "ratio": st["decoded_bytes"] / st["bytes"] if st["bytes"] else None, "k": st["k"],
               "bits_index_fixed": st["raw_bits_per_index"], "bits_index_huffman": st["index_bits_per_entry"],
               "gap_width": st["gap_width"], "bits_gap_huffman": st["gap_bits_per_entry"],
               "index_entropy": st.get("index_entropy_bits"), "gap_entropy": st.get("gap_entropy_bits")}
        if st["kind"] == "dense":
            before_huffman += st["bytes"]
        elif st["kind"] == "planes":  # the raw kept values (and a packed mask) before the planes' Huffman codes
            masked = "mask" in st["section_bytes"]
            itemsize = codec._planes.storage_dtype(st["dtype"]).itemsize
            before_huffman += st["kept"] * itemsize + (-(-count // 8) if masked else 0)
        else:
            entries = st["index_entries"] or 0
            fixed_bits = entries * (st["raw_bits_per_index"] + (st["gap_width"] or 0))
            before_huffman += fixed_bits / 8 + 4 * st["k"]
        layer = st["name"][:-7] if st["name"].endswith(".weight") else None
        if layer and paper:
            row["paper_kept_pct"] = paper["kept_pct"].get(layer)
            row["paper_bits_weight"] = paper["huffman_bits_weight"].get(layer)
            row["paper_bits_index"] = paper["huffman_bits_index"].get(layer)
            row["paper_size_pct"] = paper["size_pct"].get(layer)
        row["size_pct"] = 100.0 * st["bytes"] / (4.0 * count) if count else None
        layers.append(row)
    overhead = file_bytes - sum(r["bytes"] for r in layers)
    # a shrunk model (dead neurons and filters removed) is compared with its architecture's parameters, which the
    # writer records; informative only, so a bad value is ignored
    full = f.extra.get("params_architecture") if isinstance(f.extra, dict) else None
    reference = full if isinstance(full, int) and not isinstance(full, bool) and full >= total else total
    return {"file": None if isinstance(path, (bytes, bytearray)) else str(path), "architecture": arch,
            "bytes": file_bytes, "params_total": total, "params_nonzero": nonzero,
            "params_architecture": reference,
            "ratio": 4.0 * reference / file_bytes if file_bytes else None,
            "bytes_before_huffman": int(before_huffman + overhead), "header_and_padding_bytes": overhead,
            "layers": layers, "config": f.config, "version": f.version}
