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
    >>> from deepzip.prune import prune_, get_mask
    >>> m = prune_(get_model("lenet300"), sparsity=0.9)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_checkpoint(m, path, meta={"note": "example"})
    >>> m2, meta = load_checkpoint(path)
    >>> bool((get_mask(m2.fc1) == get_mask(m.fc1)).all()), meta["note"]
    (True, 'example')
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import CheckpointError
from .models import get_model, model_name
from .prune import Mask, get_mask, remove_parametrization_

__all__ = ["CheckpointError", "atomic_write", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

FORMAT = "deepzip-checkpoint"
VERSION = 1


def atomic_write(path: str | os.PathLike[str], write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``: readers never see a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved model should get the usual permissions
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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

    from . import share  # local import: share builds on prune; checkpoint must not import it at module load

    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    compact = _compact_layers(model)
    for name, module in model.named_modules():
        other = [t for t in getattr(module, "parametrizations", {}) if t != "weight"]
        if other and parametrize.is_parametrized(module):  # a pruned/shared RNN: the .dz file stores those
            raise CheckpointError(f"{name}.{other[0]}: compressed recurrent weights go into a .dz file "
                                  "(deepzip.save), not a checkpoint")
    for name, module in compact.items():
        packed = share.pack_layer(module) if share.is_shared(module) else None
        if packed is not None:
            kind, parts = packed
            layers[name] = {"kind": kind, "shape": list(module.weight.shape)}
            tensors.update({f"{name}.weight.{k}": v for k, v in parts.items()})
            continue
        mask = get_mask(module)
        if mask is None or any(not isinstance(p, Mask) for p in module.parametrizations["weight"]):  # type: ignore
            raise CheckpointError(f"{name}.weight: unsupported parametrization; strip() it before saving")
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
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Raw tensors and metadata of a checkpoint (safetensors), with clear errors for missing or foreign files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{p}: not a deepzip/safetensors checkpoint ({str(exc).splitlines()[0]})") from None
    return tensors, metadata


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module | None = None
) -> tuple[nn.Module, dict]:
    """Load a checkpoint into ``model`` (or a fresh model of the architecture it names); returns (model, meta).

    A plain safetensors state_dict (no deepzip metadata) loads too when ``model`` is given.

    Raises:
        CheckpointError: missing, foreign or corrupted file, unknown architecture, or tensors that do not fit.
    """
    from . import share

    tensors, metadata = read_checkpoint(path)
    if metadata.get("format") not in (None, FORMAT):
        raise CheckpointError(f"{path}: format {metadata.get('format')!r} is not {FORMAT!r}")
    try:
        version = int(metadata.get("version", VERSION))
        layers = json.loads(metadata.get("layers", "{}"))
        meta = json.loads(metadata.get("meta", "{}"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad checkpoint metadata ({exc})") from None
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version} is newer than this deepzip reads ({VERSION})")
    if not isinstance(layers, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{path}: bad checkpoint metadata (layers/meta are not objects)")
    if model is None:
        arch = metadata.get("arch") or ""
        if not arch:
            raise CheckpointError(f"{path}: the checkpoint names no architecture; give the model (--model NAME)")
        try:
            model = get_model(arch)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    modules = dict(model.named_modules())
    for name, info in layers.items():
        module = modules.get(name)
        where = f"{path}: {name}.weight"
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise CheckpointError(f"{where}: the model has no such layer")
        shape = list(module.weight.shape)
        if not isinstance(info, dict) or info.get("shape") != shape:
            raise CheckpointError(f"{where}: shape {info.get('shape') if isinstance(info, dict) else info} "
                                  f"does not fit the model's {shape}")
        parts = {k[len(name) + 8:]: v for k, v in tensors.items() if k.startswith(f"{name}.weight.")}
        for k in parts:
            tensors.pop(f"{name}.weight.{k}")
        if info.get("kind") == "masked":
            if "values" not in parts or "mask_bits" not in parts:
                raise CheckpointError(f"{where}: masked layer lacks values or mask_bits")
            mask = _unpack_mask(parts["mask_bits"], shape, where)
            values = parts["values"]
            if values.numel() != int(mask.sum()):
                raise CheckpointError(f"{where}: {values.numel()} values for {int(mask.sum())} kept weights")
            with torch.no_grad():
                remove_parametrization_(module, leave_parametrized=False)
                dense = torch.zeros(shape, dtype=module.weight.dtype)
                dense[mask] = values.to(dense.dtype)
                module.weight.copy_(dense)
                parametrize.register_parametrization(module, "weight", Mask(mask))
        elif info.get("kind") in share.PACKED_KINDS:
            try:
                share.unpack_layer_(module, info["kind"], parts)
            except (ValueError, KeyError, RuntimeError) as exc:
                raise CheckpointError(f"{where}: {exc}") from None
        else:
            raise CheckpointError(f"{where}: unknown layer kind {info.get('kind')!r}")
    own = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit the model ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    for key, value in tensors.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model's is {tuple(own[key].shape)}")
    model.load_state_dict(tensors, strict=False)
    return model, meta
