"""``torch.save`` files read safely: the zip archive's bounds and every storage's size checked before torch maps or
allocates anything, then ``torch.load(weights_only=True)`` (a file that needs code to unpickle is refused).

Used by every reader of a state_dict file (:mod:`deepzip.io.reader`, ``deepzip compress SOURCE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = ["MAX_PICKLE_BYTES", "check_torch_zip", "read_torch_state_dict"]

MAX_PICKLE_BYTES = 100 << 20  # the most a data.pkl record may hold (safetensors' bound on its header, too)


def check_torch_zip(path: Path, max_bytes: int | None = None) -> None:
    """Bounds of a ``torch.save`` zip archive, checked before torch allocates or maps anything: every record stored
    (uncompressed, as torch writes them) and inside the file; each storage the pickle names exactly as large as its
    record (a dry run of the ``weights_only`` unpickler on meta storages: no data read, nothing allocated); the
    tensor data at most ``max_bytes`` (None: no limit).

    Raises:
        CheckpointError: not a zip archive (truncated?), a compressed or out-of-file record, a storage its record
            does not hold, too much data.
        pickle.UnpicklingError: the pickle needs code (as ``torch.load(weights_only=True)`` raises it).
    """
    import zipfile

    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size \
                        or info.header_offset + info.file_size > size:
                    raise CheckpointError(f"{path}: {info.filename}: a compressed or out-of-file record "
                                          f"({info.file_size} bytes at {info.header_offset} in a {size}-byte file); "
                                          "torch.save writes neither")
            pkl = next((i for i in infos if i.filename.endswith("data.pkl")), None)
            if pkl is None or pkl.file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path}: no data.pkl record of at most {MAX_PICKLE_BYTES} bytes; not a "
                                      "torch.save file")
            text = z.read(pkl)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable PyTorch file (a damaged or truncated zip archive: {e})") \
            from None
    prefix = pkl.filename[: -len("data.pkl")] + "data/"
    records = {i.filename[len(prefix):]: i.file_size for i in infos if i.filename.startswith(prefix)}
    claims = _storage_claims(text, str(path))
    if claims is None:  # torch's private unpickler moved: torch.load without mmap checks record sizes itself
        return
    total = 0
    for key, (nbytes, name) in claims.items():
        if records.get(key) != nbytes:
            raise CheckpointError(f"{path}: {name}: its storage {key!r} is {nbytes} bytes, its record holds "
                                  f"{records.get(key, 'no')} bytes (a damaged or crafted file)")
        total += nbytes
    if max_bytes is not None and total > max_bytes:
        raise CheckpointError(f"{path}: its tensors hold {total} bytes, more than the limit of {max_bytes} "
                              f"(max_bytes; CLI --max-bytes)")


def _storage_claims(pickle_bytes: bytes, where: str) -> dict[str, tuple[int, str]] | None:
    """Storage key -> (bytes the pickle says it holds, a tensor name using it), by torch's ``weights_only``
    unpickler run on meta storages (no data read, nothing allocated); None where that private API is missing."""
    import io

    try:
        from torch import _weights_only_unpickler as wo
        from torch._utils import _element_size
    except ImportError:
        return None
    claims: dict[str, int] = {}
    storages: dict[int, str] = {}

    def persistent_load(saved_id: Any) -> Any:
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] == "storage"):
            raise CheckpointError(f"{where}: a persistent id {str(saved_id)[:80]} that is not a storage")
        _, storage_type, key, _, numel = saved_id
        dtype = getattr(storage_type, "dtype", storage_type)
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0 or not isinstance(key, str):
            raise CheckpointError(f"{where}: storage {str(saved_id)[:80]} is malformed")
        claims[key] = numel * _element_size(dtype)
        meta = torch.UntypedStorage(claims[key], device="meta")
        storages[meta._cdata] = key
        return torch.storage.TypedStorage(wrap_storage=meta, dtype=dtype, _internal=True)

    u = wo.Unpickler(io.BytesIO(pickle_bytes), encoding="utf-8")
    u.persistent_load = persistent_load  # type: ignore[method-assign]
    try:
        obj = u.load()
    except RuntimeError as e:  # a view beyond its storage, say
        raise CheckpointError(f"{where}: not a readable PyTorch file ({str(e).splitlines()[0][:200]})") from None
    names: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                names.setdefault(storages.get(v.untyped_storage()._cdata, ""), str(k))
    return {key: (n, names.get(key, f"storage {key}")) for key, n in claims.items()}


def read_torch_state_dict(path: Path, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """A state_dict file read with ``torch.load(weights_only=True)`` (a file that needs code to unpickle is refused),
    its zip archive's bounds checked first (:func:`check_torch_zip`); only the zip format (torch >= 1.6) is read, as
    the legacy format's sizes cannot be checked before torch allocates them."""
    import pickle

    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        raise CheckpointError(f"{path}: not a readable PyTorch file (not the zip archive torch.save has written since "
                              "torch 1.6: re-save it with torch.save(torch.load(path, weights_only=True), path))")
    kw: dict[str, Any] = {"map_location": "cpu", "weights_only": True}
    try:
        check_torch_zip(path, max_bytes)
        try:
            obj = torch.load(path, mmap=True, **kw)  # mmap: tensors stay on disk until read
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, **kw)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "").split(" was not")[0]
        raise CheckpointError(
            f"{path}: needs code to unpickle, refused (deepzip loads state_dicts with weights_only=True: {first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable PyTorch file ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a state_dict (name -> tensor)")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: {k!r} holds a {type(v).__name__}, expected a tensor; "
                                  f"save model.state_dict() alone")
    return obj
