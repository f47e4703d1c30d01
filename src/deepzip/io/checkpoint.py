"""Checkpoints: a model, its masks (and codebooks) and its metadata in one safetensors file, no pickle.

A pruned layer is stored compactly: its kept values (float32) plus the keep-mask packed 8 per byte, so a pruned
checkpoint is *smaller* than the dense one (``torch.nn.utils.prune`` stores ``weight_orig`` and a float
``weight_mask``, doubling the file). Loading rebuilds the parametrizations, so masks survive a save/load round trip.

Layout: safetensors tensors named ``<layer>.weight.values`` / ``<layer>.weight.mask_bits`` for masked layers,
plain state_dict names for everything else; metadata ``format=deepzip-checkpoint``, ``version``, ``arch``,
``layers`` (JSON: per compacted layer its kind and shape) and ``meta`` (JSON, free-form: test error, config...).

Example:
    >>> import tempfile, os
    >>> from deepzip.models import get_model
    >>> from deepzip.techniques.prune import prune_, get_mask
    >>> m = prune_(get_model("lenet300"), sparsity=0.9)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_checkpoint(m, path, meta={"note": "example"})
    >>> m2, meta = load_checkpoint(path)
    >>> bool((get_mask(m2.fc1) == get_mask(m.fc1)).all()), meta["note"]
    (True, 'example')
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..codec._tensor import DEFAULT_MAX_BYTES, MAX_CODEBOOK
from ..errors import CheckpointError
from ..fileio import atomic_write
from ..models import model_name
from ..techniques import share
from ..techniques.lowrank import lowrank_spec
from ..techniques.prune import Mask, get_mask, remove_parametrization_
from ..techniques.shrink import architecture_widths
from ..techniques.walk import chain
from .serialize import LAYER_KINDS, layer_kind

__all__ = [
    "LAYER_KINDS",
    "CheckpointError",
    "atomic_write",
    "checkpoint_records",
    "is_deepzip_checkpoint",
    "layer_kind",
    "load_checkpoint",
    "pack_layer",
    "read_checkpoint",
    "save_checkpoint",
    "unpack_layer_",
    "unpack_layers_",
]

FORMAT = "deepzip-checkpoint"
VERSION = 1
MAX_K = MAX_CODEBOOK  # the largest codebook a shared layer may have (the codec's one limit)

def _index_dtype(k: int) -> torch.dtype:
    if k <= 1 << 8:
        return torch.uint8
    return torch.int16 if k <= 1 << 15 else torch.int32


def pack_layer(module: nn.Module) -> dict[str, torch.Tensor]:
    """Compact tensors of a shared layer for a checkpoint:
    ``centroids`` float32 (k,), ``indices`` (n_kept,) of the kept positions in row-major order (uint8 for
    k <= 256, int16 for k <= 32768, else int32) and ``mask_bits`` = ``np.packbits`` of the flattened mask (uint8).
    """
    centroids, indices, mask = share.get_codebook(module)
    kept = indices.reshape(-1)[mask.reshape(-1)]
    return {
        "centroids": torch.from_numpy(centroids.astype(np.float32)),
        "indices": torch.from_numpy(kept).to(_index_dtype(centroids.size)).contiguous(),
        "mask_bits": torch.from_numpy(np.packbits(mask.reshape(-1))),
    }


def unpack_layer_(module: nn.Module, parts: Mapping[str, torch.Tensor]) -> nn.Module:
    """Rebuild a shared layer from :func:`pack_layer`'s parts, in place; returns ``module``.

    Raises:
        ValueError: missing or extra parts, or sizes that do not fit the layer.
    """
    want = {"centroids", "indices", "mask_bits"}
    if set(parts) != want:
        raise ValueError(f"shared layer has parts {sorted(parts)}, expected {sorted(want)}")
    shape = tuple(module.weight.shape)
    n = math.prod(shape)
    bits, kept, centroids = parts["mask_bits"], parts["indices"], parts["centroids"]
    if bits.dtype != torch.uint8 or bits.ndim != 1 or bits.numel() != (n + 7) // 8:
        raise ValueError(f"mask_bits: {bits.numel()} bytes of {bits.dtype}, expected {(n + 7) // 8} uint8 "
                         f"for shape {list(shape)}")
    if centroids.dtype != torch.float32 or centroids.ndim != 1 or not 1 <= centroids.numel() <= MAX_K:
        raise ValueError(f"centroids: shape {tuple(centroids.shape)} {centroids.dtype}, expected float32 (k,), "
                         f"1 <= k <= {MAX_K}")
    if kept.dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64) or kept.ndim != 1:
        raise ValueError(f"indices: shape {tuple(kept.shape)} {kept.dtype}, expected a 1-D integer tensor")
    mask = np.unpackbits(bits.numpy(), count=n).astype(bool)  # (n,)
    if kept.numel() != int(mask.sum()):
        raise ValueError(f"{kept.numel()} indices for {int(mask.sum())} kept weights")
    indices = np.zeros(n, dtype=np.int64)
    indices[mask] = kept.numpy().astype(np.int64)
    return share.set_codebook_(module, centroids, indices.reshape(shape), mask.reshape(shape))


def _pack_mask(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.detach().cpu().numpy().reshape(-1)))


def _unpack_mask(bits: torch.Tensor, shape: list[int], where: str) -> torch.Tensor:
    n = int(np.prod(shape))
    if bits.dtype != torch.uint8 or bits.numel() != (n + 7) // 8:
        raise CheckpointError(f"{where}: mask has {bits.numel()} bytes, expected {(n + 7) // 8} for shape {shape}")
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool).reshape(shape))


def _compact_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and parametrize.is_parametrized(m, "weight")}


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], *, arch: str | None = None, meta: dict | None = None
) -> None:
    """Save ``model`` (with its masks and codebooks) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    compact = _compact_layers(model)
    for name, module in model.named_modules():
        other = [t for t in getattr(module, "parametrizations", {}) if t != "weight"]
        if other and parametrize.is_parametrized(module):  # a pruned/shared RNN: the .dz file stores those
            raise CheckpointError(f"{name}.{other[0]}: compressed recurrent weights go into a .dz file "
                                  "(deepzip.save), not a checkpoint")
    for name, module in compact.items():
        foreign = chain(module)[0]
        if foreign:  # its inputs are not the weight: the .dz file stores them as they are
            raise CheckpointError(f"{name}.weight: computed by {type(foreign[0]).__name__}; save it to a .dz file "
                                  "(deepzip.save), or strip() it for a checkpoint")
        kind = layer_kind(module, f"{name}.weight")
        if kind == "shared":
            layers[name] = {"kind": kind, "shape": list(module.weight.shape)}
            tensors.update({f"{name}.weight.{k}": v for k, v in pack_layer(module).items()})
            continue
        mask = get_mask(module)
        assert mask is not None  # layer_kind said "masked"
        original = module.parametrizations["weight"].original.detach()  # type: ignore[index,union-attr]
        layers[name] = {"kind": "masked", "shape": list(original.shape)}
        tensors[f"{name}.weight.values"] = original[mask].float().contiguous()
        tensors[f"{name}.weight.mask_bits"] = _pack_mask(mask)
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            continue
        tensors[key] = value.detach().contiguous().clone()
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "arch": arch or model_name(model) or "",
        "layers": json.dumps(layers),
        "meta": json.dumps(meta or {}),
    }
    spec = lowrank_spec(model)
    if spec:  # factored layers: load_checkpoint rebuilds them on the base architecture
        metadata["lowrank"] = json.dumps(spec)
    widths = architecture_widths(model, metadata["arch"])[0]
    if widths:  # a shrunk model: load_checkpoint resizes the architecture's layers first
        metadata["widths"] = json.dumps(widths)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_checkpoint(
    path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Raw tensors and metadata of any checkpoint :func:`deepzip.io.reader.read_tensors` reads (a deepzip
    checkpoint's compact parts as stored)."""
    from .reader import read_tensors

    return read_tensors(path, max_bytes=max_bytes)


def is_deepzip_checkpoint(metadata: Mapping[str, str]) -> bool:
    """Whether a safetensors file's metadata is a deepzip checkpoint's (else it is a plain state_dict)."""
    return metadata.get("format") == FORMAT or ("format" not in metadata and "layers" in metadata)


def checkpoint_records(metadata: Mapping[str, str], where: str) -> tuple[dict, dict, list]:
    """``(layers, meta, lowrank spec)`` of a deepzip checkpoint's metadata, checked.

    Raises:
        CheckpointError: bad JSON, wrong types, or a newer version than this deepzip reads; naming ``where``.
    """
    try:
        version = int(metadata.get("version", VERSION))
        layers = json.loads(metadata.get("layers", "{}"))
        meta = json.loads(metadata.get("meta", "{}"))
        spec = json.loads(metadata.get("lowrank", "[]"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: bad checkpoint metadata ({exc})") from None
    if version > VERSION:
        raise CheckpointError(f"{where}: checkpoint version {version} is newer than this deepzip reads ({VERSION})")
    if not isinstance(layers, dict) or not isinstance(meta, dict) or not isinstance(spec, list):
        raise CheckpointError(f"{where}: bad checkpoint metadata (layers/meta are not objects, lowrank not a list)")
    return layers, meta, spec


def unpack_layers_(model: nn.Module, tensors: dict[str, torch.Tensor], layers: Mapping[str, Any], where: str) -> None:
    """Rebuild the compact (masked, shared) layers a deepzip checkpoint records in ``model``, in place, taking their
    parts out of ``tensors`` (what is left are plain state_dict entries).

    Raises:
        CheckpointError: a layer the model lacks, a shape that does not fit, damaged parts; naming the layer.
    """
    modules = dict(model.named_modules())
    for name, info in layers.items():
        module = modules.get(name)
        at = f"{where}: {name}.weight"
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise CheckpointError(f"{at}: the model has no such layer")
        shape = list(module.weight.shape)
        if not isinstance(info, dict) or info.get("shape") != shape:
            raise CheckpointError(f"{at}: shape {info.get('shape') if isinstance(info, dict) else info} "
                                  f"does not fit the model's {shape}")
        parts = {k[len(name) + 8:]: v for k, v in tensors.items() if k.startswith(f"{name}.weight.")}
        for k in parts:
            tensors.pop(f"{name}.weight.{k}")
        if info.get("kind") == "masked":
            if "values" not in parts or "mask_bits" not in parts:
                raise CheckpointError(f"{at}: masked layer lacks values or mask_bits")
            mask = _unpack_mask(parts["mask_bits"], shape, at)
            values = parts["values"]
            if values.numel() != int(mask.sum()):
                raise CheckpointError(f"{at}: {values.numel()} values for {int(mask.sum())} kept weights")
            with torch.no_grad():
                remove_parametrization_(module, leave_parametrized=False)
                dense = torch.zeros(shape, dtype=module.weight.dtype)
                dense[mask] = values.to(dense.dtype)
                module.weight.copy_(dense)
                parametrize.register_parametrization(module, "weight", Mask(mask))
        elif info.get("kind") == "shared":
            try:
                unpack_layer_(module, parts)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise CheckpointError(f"{at}: {exc}") from None
        else:
            raise CheckpointError(f"{at}: unknown layer kind {info.get('kind')!r}")


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module | None = None, *, trust_code: bool = False,
    rebuild: bool = False, max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> tuple[nn.Module, dict]:
    """Load any checkpoint into ``model`` (or a fresh model of the architecture the file names); returns
    (model, meta): :func:`deepzip.io.reader.load_model`, the one reader (a deepzip checkpoint, any safetensors,
    a torch state_dict file read with ``weights_only=True``, a Hugging Face folder, a ``.dz`` file).

    Raises:
        CheckpointError: missing, foreign or corrupted file, unknown architecture, or tensors that do not fit.
        UntrustedCodeError: the file names ``"package.module:factory"`` and neither ``model`` nor ``trust_code``.
    """
    from .reader import load_model

    return load_model(path, model, trust_code=trust_code, rebuild=rebuild, max_bytes=max_bytes)
