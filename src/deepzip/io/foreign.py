"""Foreign checkpoints in and out: safetensors files, PyTorch state_dict files and Hugging Face model folders.

``compress_checkpoint(src, "m.dz")`` reads a checkpoint tensor by tensor and writes a ``.dz`` file;
``decompress_checkpoint("m.dz", out)`` gives back the same kind of thing:

- a ``.safetensors`` file (any producer) -> the same file, byte for byte (its header is kept in the ``.dz``);
- a state_dict file (``.bin``/``.pt``/``.pth``, read with ``torch.load(weights_only=True)``, so a file whose
  unpickling needs code is refused) -> a state_dict file, tensors that shared storage sharing it again;
- a Hugging Face folder (``config.json`` plus safetensors or ``.bin`` weights, one file or shards with an index) ->
  the same folder, every other file (config, tokenizer, sentence-transformers modules) copied.

Every tensor is stored exactly (bfloat16, float16/32/64, integers, bool), taking the smallest of its lossless
encodings (:func:`deepzip.codec.encode_lossless`: raw, byte planes with Huffman coding, pruned-only values behind
a mask, or a codebook); tensors with identical contents (tied embeddings, say) are stored once. With
``share_bits`` the weight matrices are weight-shared instead (k-means, lossy): the ``.dz`` holds codebooks, and the
decompressed checkpoint holds the shared weights in the original dtype.

Only one tensor (plus its encoding) is in memory at a time when compressing, and one tensor when decompressing
to safetensors; a state_dict file is written with ``torch.save``, which needs all its tensors at once.

Example:
    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file, load_file
    >>> d = tempfile.mkdtemp()
    >>> save_file({"w": torch.randn(64, 64).bfloat16(), "b": torch.zeros(64)}, os.path.join(d, "m.safetensors"))
    >>> info = compress_checkpoint(os.path.join(d, "m.safetensors"), os.path.join(d, "m.dz"))
    >>> out = decompress_checkpoint(os.path.join(d, "m.dz"), os.path.join(d, "back.safetensors"))
    >>> open(out, "rb").read() == open(os.path.join(d, "m.safetensors"), "rb").read()
    True
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import codec
from ..codec import DzReader, DzWriter, EncodedTensor
from ..codec._tensor import DEFAULT_MAX_BYTES
from ..errors import CheckpointError, DeepzipError
from ..fileio import atomic_write

if TYPE_CHECKING:  # torch is imported where a tensor is made or read: `deepzip compress` of a safetensors
    import torch  # checkpoint never needs it (its import is most of a small command's time)

__all__ = [
    "SourceCheckpoint",
    "compress_checkpoint",
    "decompress_checkpoint",
    "folder_model",
    "folder_record",
    "hf_model",
    "numpy_to_tensor",
    "open_source",
    "tensor_to_numpy",
]

# safetensors dtype codes deepzip stores; the others (F8_*, C64, U16/32/64, ...) are refused by name.
ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_TORCH_DTYPES: dict[Any, str] = {}
TORCH_DTYPES: dict[Any, str]  # declared for type checkers; served by __getattr__ below


def _torch_dtypes() -> dict[Any, str]:
    """torch dtype -> deepzip's dtype name (``TORCH_DTYPES``), made at first use (it imports torch)."""
    if not _TORCH_DTYPES:
        import torch

        _TORCH_DTYPES.update({torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
                              torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32",
                              torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"})
    return _TORCH_DTYPES


def __getattr__(name: str) -> Any:  # PEP 562: TORCH_DTYPES without importing torch at module import
    if name == "TORCH_DTYPES":
        return _torch_dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
_MAX_ST_HEADER = 100 << 20  # safetensors' own bound on the header JSON
MAX_AUX_BYTES = 32 << 20  # other files of a folder (tokenizer, config) ride in the .dz header, xz-compressed


# ---------------------------------------------------------------------------------------------------- tensors
def tensor_to_numpy(t: torch.Tensor, where: str = "") -> tuple[np.ndarray, str]:
    """``(array, dtype name)`` of a CPU tensor, sharing memory where possible; bfloat16 as uint16 bit patterns.

    Raises:
        CheckpointError: a dtype deepzip does not store (complex, float8, ...), naming ``where``.
    """
    import torch

    name = _torch_dtypes().get(t.dtype)
    if name is None:
        raise CheckpointError(f"{where}: dtype {str(t.dtype).replace('torch.', '')} is not supported "
                              f"(deepzip stores {', '.join(sorted(set(_torch_dtypes().values())))})")
    t = t.detach().cpu().contiguous()
    if name == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16), name
    return t.numpy(), name


def numpy_to_tensor(a: np.ndarray, dtype: str) -> torch.Tensor:
    """The tensor of ``dtype`` holding ``a`` (bit patterns for bfloat16; values cast exactly otherwise)."""
    import torch

    a = np.array(a, copy=not a.flags.c_contiguous or not a.flags.writeable)  # keeps 0-d arrays 0-d
    if dtype == "bfloat16":
        if a.dtype == np.uint16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(a).to({v: k for k, v in _torch_dtypes().items()}[dtype])


def _as_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    """A decoded array in the storage dtype of ``dtype`` (a codebook decodes to float32: cast back, exactly)."""
    if dtype == "bfloat16":
        if a.dtype == np.uint16:
            return a
        return (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return a if a.dtype == np.dtype(dtype) else a.astype(dtype)


def _raw(a: np.ndarray) -> np.ndarray:
    """The bytes of an array as a flat uint8 array (no copy when contiguous), for hashing and writing."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


# ---------------------------------------------------------------------------------------------------- safetensors
def read_safetensors_header(path: Path) -> tuple[str, dict[str, Any], int]:
    """``(header JSON text, parsed header, byte where the data starts)`` of a safetensors file, bounds checked."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes, not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_ST_HEADER, size - 8):
            raise CheckpointError(f"{path}: header length {n} exceeds the file ({size} bytes); not safetensors")
        raw = f.read(n)
    try:
        text = raw.decode("utf-8")
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: header is not JSON ({e}); not a safetensors file") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    start = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise CheckpointError(f"{path}: {name}: malformed header entry")
        if info["dtype"] not in ST_DTYPES:
            raise CheckpointError(f"{path}: {name}: dtype {info['dtype']} is not supported "
                                  f"(deepzip stores {', '.join(ST_DTYPES)})")
        try:
            begin, end = info["data_offsets"]
            shape = [int(d) for d in info["shape"]]
            need = int(np.prod(shape, dtype=np.int64)) * codec._planes.storage_dtype(ST_DTYPES[info["dtype"]]).itemsize
            ok = isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end and start + end <= size
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: {name}: malformed shape or data offsets") from None
        if not ok or end - begin != need:
            raise CheckpointError(f"{path}: {name}: data offsets {begin}..{end} do not fit shape {info['shape']} "
                                  f"{info['dtype']} in a {size}-byte file (truncated?)")
    return text, header, start


def _st_entries(header: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Tensor entries in data order."""
    return sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"])


def _iter_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray, str, Any]]:
    _, header, start = read_safetensors_header(path)
    with open(path, "rb") as f:
        for name, info in _st_entries(header):
            dtype = ST_DTYPES[info["dtype"]]
            b, e = info["data_offsets"]
            buf = np.empty(e - b, np.uint8)
            f.seek(start + b)
            if f.readinto(memoryview(buf)) != e - b:
                raise CheckpointError(f"{path}: {name}: truncated")
            arr = buf.view(codec._planes.storage_dtype(dtype)).reshape(info["shape"])
            yield name, arr, dtype, None


# ---------------------------------------------------------------------------------------------------- state_dict
def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _iter_state_dict(path: Path) -> Iterator[tuple[str, np.ndarray, str, Any]]:
    from .torchfile import read_torch_state_dict

    sd = read_torch_state_dict(path)
    for name, t in sd.items():
        arr, dtype = tensor_to_numpy(t, f"{path}: {name}")
        yield name, arr, dtype, _storage_key(t) if t.numel() else None


# ---------------------------------------------------------------------------------------------------- sources
@dataclass
class SourceCheckpoint:
    """A checkpoint found at a path.

    Attributes:
        kind: ``"safetensors"`` (one file), ``"state_dict"`` (one torch file) or ``"hf"`` (a folder).
        root: the file, or the folder.
        weights: weight files relative to the folder (the file's own name for single files).
        aux: every other file of a folder, relative paths.
    """

    kind: str
    root: Path
    weights: list[str]
    aux: list[str] = field(default_factory=list)

    def path(self, rel: str) -> Path:
        return self.root if self.kind != "hf" else self.root / rel


def _file_format(name: str) -> str:
    return "safetensors" if name.endswith(".safetensors") else "torch"


def open_source(path: str | os.PathLike[str]) -> SourceCheckpoint:
    """Recognise a checkpoint: a safetensors file, a state_dict file, or a Hugging Face folder.

    Raises:
        CheckpointError: no such path; a folder without config.json or without weights; a shard named by the
            index but missing.
    """
    p = Path(path)
    if p.is_file():
        from .reader import checkpoint_kind  # one way of telling kinds apart, for every reader

        kind = checkpoint_kind(p)
        if kind == "dz":
            raise CheckpointError(f"{p}: already a .dz file (deepzip inspect shows it; deepzip decompress gives back "
                                  "the checkpoint it was made from)")
        return SourceCheckpoint("state_dict" if kind == "state_dict" else "safetensors", p, [p.name])
    if not p.is_dir():
        raise CheckpointError(f"{p}: no such file or folder")
    if not (p / "config.json").is_file():
        raise CheckpointError(f"{p}: folder has no config.json (a Hugging Face model folder needs one)")
    files = sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file() and ".git" not in f.parts)
    weights: list[str] = []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (p / index).is_file():
            try:
                wmap = json.loads((p / index).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{p / index}: not a shard index ({e})") from None
            for shard in sorted(set(wmap.values())):
                if not (p / shard).is_file():
                    some = next(k for k, v in wmap.items() if v == shard)
                    raise CheckpointError(f"{p / shard}: shard missing (named by {index} for {some} and others)")
            weights = sorted(set(wmap.values()))
            break
    safetensors = [f for f in files if f.endswith(".safetensors")]
    if not weights:
        top = [f for f in safetensors if "/" not in f] or [f for f in files if "/" not in f and f.endswith(".bin")
                                                            and f.startswith("pytorch_model")]
        weights = top
    # Weight files in sub-folders (a sentence-transformers Dense module, say) are compressed too.
    weights = sorted(set(weights) | {f for f in safetensors if "/" in f})
    if not weights:
        raise CheckpointError(f"{p}: folder has no weights (*.safetensors or pytorch_model*.bin)")
    aux = [f for f in files if f not in weights]
    return SourceCheckpoint("hf", p, weights, aux)


def _iter_file(src: SourceCheckpoint, rel: str) -> Iterator[tuple[str, np.ndarray, str, Any]]:
    path = src.path(rel)
    return _iter_safetensors(path) if _file_format(rel) == "safetensors" else _iter_state_dict(path)


# ---------------------------------------------------------------------------------------------------- compress
def _share(arr: np.ndarray, dtype: str, bits: int, name: str) -> EncodedTensor:
    """k-means weight sharing of one matrix: a codebook whose centroids are exact in ``dtype``."""
    from ..techniques._kmeans import assign, kmeans1d

    f = (arr.astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" else arr
    values = f.reshape(-1)
    centroids, _ = kmeans1d(values, 1 << bits)
    exact = _as_dtype(centroids.astype(np.float32), dtype)  # round to what the checkpoint can hold
    cb = (exact.astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" else exact.astype(np.float32)
    cb = np.unique(cb)
    labels = assign(values, cb.astype(np.float64))
    return codec.encode_codebook(cb, labels.reshape(arr.shape), name=name)


def _shareable(arr: np.ndarray, dtype: str, min_size: int) -> bool:
    return dtype in ("float32", "float16", "bfloat16", "float64") and arr.ndim >= 2 and arr.size >= min_size


def compress_checkpoint(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    share_bits: int | None = None,
    share_min_size: int = 4096,
    block: int = codec._planes.BLOCK,
) -> dict[str, Any]:
    """Compress a checkpoint (see :func:`open_source`) into a ``.dz`` file, one tensor at a time.

    Args:
        src: a safetensors file, a state_dict file or a Hugging Face folder.
        out: the ``.dz`` file to write (atomically).
        share_bits: None for lossless; else weight-share every float matrix of at least ``share_min_size``
            values with a ``2**share_bits``-entry codebook (lossy).
        share_min_size: smallest matrix to share.
        block: elements per planes block.

    Returns:
        A summary: ``bytes`` (the .dz), ``source_bytes`` (weight files), ``params``, ``tensors`` (per tensor:
        name, dtype, shape, kind, bytes, raw bytes), ``seconds``.

    Raises:
        CheckpointError: see :func:`open_source`; an unsupported dtype or a file needing code, naming the file.
    """
    if share_bits is not None and not 1 <= share_bits <= 16:
        raise ValueError(f"share_bits={share_bits}, expected 1..16")
    t0 = time.perf_counter()
    source = open_source(src)
    files: list[dict[str, Any]] = []
    aliases: dict[str, str] = {}
    tied: list[str] = []
    dtypes: dict[str, str] = {}
    seen_content: dict[tuple, str] = {}
    seen_storage: dict[tuple, str] = {}
    rows: list[dict[str, Any]] = []
    names: set[str] = set()
    params = 0
    writer = DzWriter(out, config={"share_bits": share_bits}, architecture=None)
    try:
        for rel in source.weights:
            path = source.path(rel)
            entry: dict[str, Any] = {"path": rel, "format": _file_format(rel), "tensors": []}
            if entry["format"] == "safetensors":
                entry["header"] = read_safetensors_header(path)[0]
            for key, arr, dtype, storage in _iter_file(source, rel):
                name = key if key not in names else f"{rel}:{key}"
                names.add(name)
                entry["tensors"].append([key, name])
                params += arr.size
                row = {"name": name, "file": rel, "dtype": dtype, "shape": list(arr.shape),
                       "raw_bytes": int(arr.nbytes)}
                if storage is not None and storage in seen_storage:
                    aliases[name], row["kind"], row["bytes"] = seen_storage[storage], "tied", 0
                    tied.append(name)
                    rows.append(row)
                    continue
                digest = (dtype, arr.shape, hashlib.sha1(_raw(arr)).digest())
                if storage is not None:
                    seen_storage[storage] = name
                if arr.size and digest in seen_content:
                    aliases[name], row["kind"], row["bytes"] = seen_content[digest], "duplicate", 0
                    rows.append(row)
                    continue
                seen_content[digest] = name
                if share_bits is not None and _shareable(arr, dtype, share_min_size):
                    enc = _share(arr, dtype, share_bits, name)
                else:
                    enc = codec.encode_lossless(arr, name=name, dtype=dtype, block=block)
                if enc.dtype != dtype:
                    dtypes[name] = dtype
                writer.add(enc)
                row["kind"] = enc.kind + ("+mask" if enc.kind == "planes" and enc.meta["masked"] else "")
                row["bytes"] = enc.nbytes
                rows.append(row)
                del arr, enc
            files.append(entry)
        writer.extra = {"checkpoint": {"kind": source.kind, "files": files, "aux": _aux_record(source),
                                       "name": source.root.name},
                        "aliases": aliases, "tied": tied, "dtypes": dtypes}
        size = writer.close()
    except BaseException:
        writer.abort()
        raise
    source_bytes = sum(source.path(r).stat().st_size for r in source.weights)
    return {"bytes": size, "source_bytes": source_bytes, "params": params, "tensors": rows,
            "seconds": time.perf_counter() - t0, "kind": source.kind}


def _aux_record(source: SourceCheckpoint) -> dict[str, str]:
    """A folder's files other than weights (config, tokenizer, module files), xz-compressed, base64: relative path ->
    text, as ``extra.checkpoint.aux`` holds them.

    Raises:
        CheckpointError: a file larger than :data:`MAX_AUX_BYTES`.
    """
    aux = {}
    for rel in source.aux:
        data = (source.root / rel).read_bytes()
        if len(data) > MAX_AUX_BYTES:
            raise CheckpointError(f"{source.root / rel}: {len(data)} bytes; files other than weights are "
                                  f"kept in the .dz header, up to {MAX_AUX_BYTES} bytes each")
        aux[rel] = base64.b64encode(_xz(data)).decode("ascii")
    return aux


def _module_prefixes(source: SourceCheckpoint) -> dict[str, str]:
    """Sub-folder -> the state_dict prefix of the sentence-transformers module saved there (``{"": "0.",
    "2_Dense": "2."}``, from modules.json); ``{"": ""}`` for a plain Hugging Face folder."""
    if "modules.json" not in source.aux:
        return {"": ""}
    try:
        modules = json.loads((source.root / "modules.json").read_text())
        return {str(m.get("path", "")).strip("/"): f"{m['name']}." for m in modules}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{source.root / 'modules.json'}: not a list of modules ({e})") from None


def _match(key: str, shape: tuple[int, ...], prefix: str, state: dict[str, torch.Tensor], used: set[str]) -> str | None:
    """The model's tensor that a folder file's tensor ``key`` became: the same name under the module's ``prefix``
    (sentence-transformers keeps the transformer as ``0.model.``), or the shortest name ending in it (the file's own
    base-model prefix, ``bert.``, dropped if need be), of the same shape and not taken yet."""
    for k in (key, key.split(".", 1)[-1]):
        exact = prefix + k
        names = [exact] if exact in state else [n for n in state if n.startswith(prefix) and n.endswith("." + k)]
        names = [n for n in names if n not in used and tuple(state[n].shape) == tuple(shape)]
        if names:
            return min(names, key=len)
    return None


def folder_record(
    folder: str | os.PathLike[str], state: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What a ``.dz`` of a model loaded from a Hugging Face or sentence-transformers ``folder`` and then changed
    (``deepzip ptq``) needs to give the folder back: its ``extra.checkpoint`` record, as :func:`compress_checkpoint`
    writes it (every other file of the folder; per weight file, which stored tensor each of its tensors is), with
    the model's tensors in place of the folder's.

    Args:
        folder: the folder the model was loaded from.
        state: the model's tensors by state_dict name (the names the ``.dz`` stores them under).

    Returns:
        ``(record, more)``: ``more`` holds the folder's tensors the model does not (a buffer the library no longer
        keeps, e.g. ``position_ids``), as they are, under ``"FILE:NAME"``: store them beside the model's.

    Raises:
        CheckpointError: see :func:`open_source`; not a folder.
    """
    source = open_source(folder)
    if source.kind != "hf":
        raise CheckpointError(f"{folder}: not a Hugging Face or sentence-transformers model folder")
    prefixes = _module_prefixes(source)
    codes = {v: k for k, v in ST_DTYPES.items()}
    files: list[dict[str, Any]] = []
    more: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for rel in source.weights:
        prefix = prefixes.get(os.path.dirname(rel))
        entry: dict[str, Any] = {"path": rel, "format": _file_format(rel), "tensors": []}
        header: dict[str, Any] = {}
        if entry["format"] == "safetensors":
            _, header, _ = read_safetensors_header(source.path(rel))
            shapes = {k: tuple(v["shape"]) for k, v in _st_entries(header)}
        else:
            from .torchfile import read_torch_state_dict

            shapes = {k: tuple(t.shape) for k, t in read_torch_state_dict(source.path(rel)).items()}
        own: dict[str, str] = {}
        for key, shape in shapes.items():
            name = _match(key, shape, prefix, state, used) if prefix is not None else None
            if name is not None:
                used.add(name)
                own[key] = name
        if len(own) < len(shapes):  # the folder's tensors the model does not hold: stored as they are
            for key, arr, dtype, _ in _iter_file(source, rel):
                if key not in own:
                    more[f"{rel}:{key}"] = numpy_to_tensor(arr, dtype)
        entry["tensors"] = [[k, own.get(k, f"{rel}:{k}")] for k in shapes]
        if entry["format"] == "safetensors":  # the header again, each tensor in the dtype the model holds it in
            out: dict[str, Any] = {"__metadata__": header["__metadata__"]} if "__metadata__" in header else {}
            at = 0
            for key, _ in _st_entries(header):
                t = state[own[key]] if key in own else more[f"{rel}:{key}"]
                dname = _torch_dtypes().get(t.dtype)
                if dname is None:
                    raise CheckpointError(f"{own.get(key, key)}: dtype {t.dtype} is not stored")
                n = t.numel() * codec._planes.storage_dtype(dname).itemsize
                out[key] = {"dtype": codes[dname], "shape": list(t.shape), "data_offsets": [at, at + n]}
                at += n
            entry["header"] = json.dumps(out, separators=(",", ":"))
        files.append(entry)
    return {"kind": "hf", "files": files, "aux": _aux_record(source), "name": source.root.name}, more


def _xz(data: bytes) -> bytes:
    """xz preset 9 with the dictionary cut to the data (>= 4 KiB): the same ratio as plain preset 9 on a folder's
    small files, without initialising a 64 MiB dictionary per file (that was ~0.1 s each, a third of compressing
    all-MiniLM-L6-v2's folder). Any xz reader decodes it."""
    return lzma.compress(data, format=lzma.FORMAT_XZ,
                         filters=[{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": max(4096, len(data))}])


# ---------------------------------------------------------------------------------------------------- decompress
def _checkpoint_record(reader: DzReader) -> dict[str, Any]:
    rec = reader.extra.get("checkpoint") if isinstance(reader.extra, dict) else None
    if not isinstance(rec, dict) or rec.get("kind") not in ("safetensors", "state_dict", "hf"):
        raise CheckpointError(f"{reader.path}: not made from a checkpoint file or folder (no extra.checkpoint)")
    files = rec.get("files")
    if not isinstance(files, list) or not isinstance(rec.get("aux", {}), dict):
        raise CheckpointError(f"{reader.path}: extra.checkpoint is malformed")
    for f in files:
        rel = f.get("path") if isinstance(f, dict) else None
        if not isinstance(rel, str) or not _safe_rel(rel):
            raise CheckpointError(f"{reader.path}: extra.checkpoint names an unsafe path {rel!r}")
    for rel in rec.get("aux", {}):
        if not _safe_rel(rel):
            raise CheckpointError(f"{reader.path}: extra.checkpoint names an unsafe path {rel!r}")
    aliases = reader.extra.get("aliases", {})
    if not isinstance(aliases, dict) or any(v not in reader.names for v in aliases.values()):
        raise CheckpointError(f"{reader.path}: extra.aliases names tensors the file does not have")
    for f in files:
        for pair in f.get("tensors", []):
            if not (isinstance(pair, list) and len(pair) == 2 and (pair[1] in reader.names or pair[1] in aliases)):
                raise CheckpointError(f"{reader.path}: {f['path']}: tensor entry {pair!r} names no stored tensor")
    return rec


def _aux_bytes(reader: DzReader, rec: dict[str, Any], rel: str) -> bytes:
    """One stored non-weight file of a folder, decompressed with a bound (never more than MAX_AUX_BYTES)."""
    try:
        d = lzma.LZMADecompressor()
        data = d.decompress(base64.b64decode(rec["aux"][rel], validate=True), MAX_AUX_BYTES + 1)
    except (ValueError, lzma.LZMAError, TypeError) as e:
        raise CheckpointError(f"{reader.path}: extra.checkpoint.aux[{rel!r}] is damaged ({e})") from None
    if len(data) > MAX_AUX_BYTES or not d.eof:
        raise CheckpointError(f"{reader.path}: extra.checkpoint.aux[{rel!r}] is larger than {MAX_AUX_BYTES} bytes "
                              f"or truncated")
    return data


def _safe_rel(rel: str) -> bool:
    """A relative path that stays inside the output folder (no absolute paths, no ``..``)."""
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def _decoded(reader: DzReader, name: str) -> tuple[np.ndarray, str]:
    """A tensor's array in its original dtype's storage (bfloat16 as uint16) and that dtype's name."""
    extra = reader.extra
    target = extra.get("aliases", {}).get(name, name)
    arr = reader.decode(target)
    dtype = extra.get("dtypes", {}).get(target, reader.entry(target).dtype)
    return _as_dtype(arr, dtype), dtype


def _write_safetensors(reader: DzReader, entry: dict[str, Any], path: Path) -> None:
    text = entry.get("header")
    try:
        header = json.loads(text)  # type: ignore[arg-type]
        entries = _st_entries(header)
        end = 0
        for key, info in entries:  # the data must tile [0, end) without holes, as safetensors requires
            b, e = info["data_offsets"]
            n = int(np.prod(info["shape"], dtype=np.int64)) * codec._planes.storage_dtype(
                ST_DTYPES[info["dtype"]]).itemsize
            if b != end or e - b != n:
                raise ValueError(f"{key}: data offsets {b}..{e} for {n} bytes after byte {end}")
            end = e
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{reader.path}: {entry.get('path')}: stored safetensors header is damaged ({e})") \
            from None
    raw = text.encode("utf-8")
    by_key = dict((k, n) for k, n in entry["tensors"])
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        start = 8 + len(raw)
        for key, info in entries:
            if key not in by_key:
                raise CheckpointError(f"{reader.path}: {key}: in the safetensors header but not in the file")
            arr, dtype = _decoded(reader, by_key[key])
            if ST_DTYPES[info["dtype"]] != dtype or list(arr.shape) != list(info["shape"]):
                raise CheckpointError(f"{reader.path}: {key}: {dtype} {list(arr.shape)} does not match the "
                                      f"header's {info['dtype']} {info['shape']}")
            f.seek(start + info["data_offsets"][0])
            f.write(_raw(arr))
            del arr


def _write_state_dict(reader: DzReader, entry: dict[str, Any], path: Path) -> None:
    import torch

    tied = set(reader.extra.get("tied", []))
    aliases = reader.extra.get("aliases", {})
    made: dict[str, torch.Tensor] = {}
    sd: dict[str, torch.Tensor] = {}
    for key, name in entry["tensors"]:
        target = aliases.get(name, name)
        if name in tied and target in made:
            sd[key] = made[target]  # shared storage again, as torch.save found it
            continue
        arr, dtype = _decoded(reader, name)
        t = numpy_to_tensor(arr, dtype)
        made.setdefault(name, t)
        sd[key] = t
    torch.save(sd, path)


def decompress_checkpoint(
    dz: str | os.PathLike[str], out: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> Path:
    """Write the checkpoint a ``.dz`` file was made from (:func:`compress_checkpoint`): the same kind of thing.

    A folder is built beside ``out`` and renamed onto it at the end; an existing folder is never overwritten. A
    file replaces ``out`` atomically. ``max_bytes`` bounds what the tensors may decode to (None: no limit; memory
    holds one tensor at a time, so this guards the disk rather than memory).

    Returns:
        The path written.

    Raises:
        CheckpointError: the ``.dz`` was not made from a checkpoint, or ``out`` is an existing folder.
        DeepzipFormatError: a damaged file.
    """
    reader = DzReader(dz, max_bytes=max_bytes)
    rec = _checkpoint_record(reader)
    out = Path(out)
    if rec["kind"] != "hf":
        entry = rec["files"][0]
        if out.is_dir():
            raise CheckpointError(f"{out}: is a folder; give a file name for the {rec['kind']} checkpoint")
        write = _write_safetensors if entry["format"] == "safetensors" else _write_state_dict
        atomic_write(out, lambda tmp: write(reader, entry, Path(tmp)))
        return out
    if out.exists():
        raise CheckpointError(f"{out}: already exists; remove it or choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel in rec.get("aux", {}):
            target = tmpdir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_aux_bytes(reader, rec, rel))
        for entry in rec["files"]:
            target = tmpdir / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            (_write_safetensors if entry["format"] == "safetensors" else _write_state_dict)(reader, entry, target)
        os.chmod(tmpdir, 0o755)
        os.replace(tmpdir, out)
    finally:
        if tmpdir.exists():
            shutil.rmtree(tmpdir, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------- load
def state_dict_from(reader: DzReader) -> dict[str, torch.Tensor]:
    """All tensors of a ``.dz`` made from a checkpoint, by their names in the checkpoint, tied ones tied again."""
    rec = _checkpoint_record(reader)
    tied = set(reader.extra.get("tied", []))
    aliases = reader.extra.get("aliases", {})
    sd: dict[str, torch.Tensor] = {}
    made: dict[str, torch.Tensor] = {}
    for entry in rec["files"]:
        for key, name in entry["tensors"]:
            target = aliases.get(name, name)
            if name in tied and target in made:
                sd[key] = made[target]
                continue
            arr, dtype = _decoded(reader, name)
            made[name] = sd[key] = numpy_to_tensor(arr, dtype)
    return sd


def hf_model(path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> torch.nn.Module:
    """The Hugging Face model a ``.dz`` of an HF folder holds, built from its config.json by ``transformers``
    (:func:`deepzip.io.reader.hf_build`).

    Raises:
        CheckpointError: not an HF folder's ``.dz``; see :func:`deepzip.io.reader.hf_build`.
    """
    reader = DzReader(path, max_bytes=max_bytes)
    rec = _checkpoint_record(reader)
    if rec["kind"] != "hf" or "config.json" not in rec.get("aux", {}):
        raise CheckpointError(f"{path}: not made from a Hugging Face folder with a config.json")
    try:
        config = json.loads(_aux_bytes(reader, rec, "config.json"))
    except ValueError as e:
        raise CheckpointError(f"{path}: config.json is not JSON ({e})") from None
    from .reader import hf_build

    return hf_build(config, lambda: state_dict_from(reader), where=str(path))


def _refuse_code(reader: DzReader, rec: dict[str, Any]) -> None:
    """A folder whose files would make its library run code (a ``.py`` module, ``auto_map``, ``trust_remote_code``,
    a module type outside sentence-transformers) is refused before anything is built from it."""
    where = reader.path
    for rel in rec.get("aux", {}):
        if rel.endswith(".py"):
            raise CheckpointError(f"{where}: the folder holds Python code ({rel}); deepzip never runs code from a "
                                  "file (deepzip decompress gives the folder, to load yourself if you trust it)")

    def flagged(obj: Any) -> bool:
        if isinstance(obj, dict):
            return any((k in ("trust_remote_code", "auto_map") and bool(v)) or flagged(v) for k, v in obj.items())
        return isinstance(obj, list) and any(flagged(v) for v in obj)

    for rel in rec.get("aux", {}):
        if rel.endswith(".json") and rel not in ("tokenizer.json", "vocab.json"):
            try:
                doc = json.loads(_aux_bytes(reader, rec, rel))
            except ValueError as e:
                raise CheckpointError(f"{where}: {rel} is not JSON ({e})") from None
            if flagged(doc):
                raise CheckpointError(f"{where}: {rel} asks for remote code (auto_map / trust_remote_code); deepzip "
                                      "never runs code from a file")
    if "modules.json" in rec.get("aux", {}):
        try:
            modules = json.loads(_aux_bytes(reader, rec, "modules.json"))
        except ValueError as e:
            raise CheckpointError(f"{where}: modules.json is not JSON ({e})") from None
        for m in modules if isinstance(modules, list) else [modules]:
            kind = m.get("type") if isinstance(m, dict) else None
            if not (isinstance(kind, str) and kind.startswith("sentence_transformers.")):
                raise CheckpointError(f"{where}: modules.json names module type {kind!r}, not one of "
                                      "sentence-transformers' own; deepzip never imports code a file names")


def _check_size(reader: DzReader, rec: dict[str, Any], where: str) -> None:
    """The transformer config.json describes, built on the meta device (no memory), may not have more parameters
    than the file holds values: a crafted config cannot make the library allocate what the file does not bound."""
    import torch
    import transformers

    from .reader import hf_config_class

    try:
        config = json.loads(_aux_bytes(reader, rec, "config.json"))
    except ValueError as e:
        raise CheckpointError(f"{where}: config.json is not JSON ({e})") from None
    cfg = hf_config_class(config, where)
    try:
        with torch.device("meta"):
            model = transformers.AutoModel.from_config(cfg)
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{where}: config.json does not describe a model transformers builds ({e})") from None
    have = sum(int(np.prod(reader.entry(n).shape, dtype=np.int64)) for n in reader.names)
    need = sum(p.numel() for p in model.parameters())
    if need > have:
        raise CheckpointError(f"{where}: config.json describes a model of {need:,} parameters, the file holds "
                              f"{have:,} values")


def folder_model(path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> torch.nn.Module:
    """The model a ``.dz`` of a model folder holds (``deepzip compress FOLDER``, ``deepzip ptq``): a
    ``SentenceTransformer`` for a sentence-transformers folder (one with modules.json), else the transformers model
    (:func:`hf_model`; also where sentence-transformers is not installed). The folder is written to a temporary
    folder (:func:`decompress_checkpoint`, within ``max_bytes``) and loaded by sentence-transformers from there,
    offline, without remote code; a folder asking for code (a ``.py`` file, ``trust_remote_code``, ``auto_map``, a
    module type outside sentence-transformers) or whose config describes a larger model than the file holds is
    refused first.

    Raises:
        CheckpointError: not a folder's ``.dz``; a folder as above; a folder sentence-transformers does not load
            (its message, in one line).
    """
    reader = DzReader(path, max_bytes=max_bytes)
    rec = _checkpoint_record(reader)
    if rec["kind"] != "hf" or "modules.json" not in rec.get("aux", {}):
        return hf_model(path, max_bytes=max_bytes)
    where = str(path)
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError:  # without sentence-transformers: its transformer, as transformers builds it
        return hf_model(path, max_bytes=max_bytes)
    _refuse_code(reader, rec)
    if "config.json" in rec.get("aux", {}):
        _check_size(reader, rec, where)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a library call prints nothing
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = decompress_checkpoint(path, Path(tmp) / "model", max_bytes=max_bytes)
            model = SentenceTransformer(str(folder), device="cpu", local_files_only=True, trust_remote_code=False)
    except DeepzipError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: sentence-transformers does not load the folder ({msg[:300]})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()
