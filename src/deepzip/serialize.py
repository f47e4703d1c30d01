"""The one bridge between models and the torch-free codec: model -> encoded layers -> ``.dz`` file -> model.

What each tensor becomes:

- a weight-shared layer (:class:`deepzip.share.SharedWeight`): its codebook and indices, as ``codebook`` kind, or
  ``sparse`` kind (gaps + indices of the kept weights) when it was also pruned;
- a pruned, unshared layer (:class:`deepzip.prune.Mask`): ``sparse`` kind whose codebook is the layer's distinct
  kept values (lossless), or dense when it has more than 2**16 of them;
- any other floating tensor with few distinct values (a stripped shared model, say) gets the same lossless
  codebook treatment automatically when that is smaller; everything else is stored ``dense`` as it is.

Loading rebuilds the parametrizations (masks, trainable codebooks), so a loaded model can be fine-tuned and saved
again in its compact form. Loading never unpickles and never runs code from the file: a file naming its architecture
``"package.module:factory"`` is built only with ``trust_code=True`` (or give the model: ``load(path, model=MyNet())``),
and a file whose tensors would decode to more than ``max_bytes`` (default 1 GiB) is refused before allocating.

Example:
    >>> import os, tempfile, torch
    >>> from deepzip.models import get_model
    >>> from deepzip.prune import prune_
    >>> m = prune_(get_model("lenet300"), sparsity=0.9)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.dz")
    >>> n = save(m, path)
    >>> m2 = load(path)  # the file names its architecture
    >>> x = torch.rand(2, 1, 28, 28)
    >>> bool(torch.equal(m(x), m2(x)))
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import codec, share
from .checkpoint import LAYER_KINDS, layer_kind
from .codec import DzFile, EncodedTensor
from .codec.container import DEFAULT_MAX_BYTES
from .errors import CheckpointError, DeepzipError, DeepzipFormatError, UntrustedCodeError
from .fileinfo import read_dz
from .models import get_model, model_name
from .prune import Mask, get_mask, remove_parametrization_

__all__ = ["decode_into_", "encode_model", "load", "load_state_dict", "save"]

_MAX_CODEBOOK = 1 << 16


def _lossless(name: str, w: np.ndarray, mask: np.ndarray | None) -> EncodedTensor | None:
    """A codebook of ``w``'s distinct (kept) values, when there are at most 2**16 of them."""
    kept = w[mask] if mask is not None else w.ravel()
    if kept.size == 0:
        return codec.encode_sparse(np.zeros(1, np.float32), np.zeros(w.shape, np.int64), np.zeros(w.shape, bool),
                                   name=name)
    values, inverse = np.unique(kept, return_inverse=True)
    if values.size > _MAX_CODEBOOK or not np.isfinite(values).all():  # codebooks hold finite values only
        return None
    indices = np.zeros(w.shape, np.int64)
    if mask is not None:
        indices[mask] = inverse
        return codec.encode_sparse(values.astype(np.float32), indices, mask, name=name)
    return codec.encode_codebook(values.astype(np.float32), inverse.reshape(w.shape), name=name)


def _encode_plain(name: str, t: torch.Tensor) -> EncodedTensor:
    arr = t.detach().cpu().contiguous().numpy()
    dense = codec.encode_dense(arr, name=name)
    if arr.dtype != np.float32 or arr.ndim < 2 or arr.size < 64:
        return dense
    zeros = arr == 0
    candidates = [dense]
    if zeros.mean() > 0.05:
        enc = _lossless(name, arr, ~zeros)
        if enc is not None:
            candidates.append(enc)
    if np.unique(arr[: min(arr.size, 1 << 20)]).size <= 4096:  # cheap look before a full unique
        enc = _lossless(name, arr, None)
        if enc is not None:
            candidates.append(enc)
    return min(candidates, key=lambda e: e.nbytes)


def encode_model(model: nn.Module | Mapping[str, torch.Tensor]) -> tuple[dict[str, EncodedTensor], dict[str, str]]:
    """Encode every tensor of a model (or a plain state_dict). Returns (encoded tensors, layer kinds by weight name)."""
    tensors: dict[str, EncodedTensor] = {}
    kinds: dict[str, str] = {}
    if isinstance(model, nn.Module):
        for mname, module in model.named_modules():
            if not mname or not parametrize.is_parametrized(module, "weight"):
                continue
            key = f"{mname}.weight"
            kind = layer_kind(module, key)
            if kind == "shared":
                centroids, indices, mask = share.get_codebook(module)
                if mask.all():
                    tensors[key] = codec.encode_codebook(centroids, indices, name=key)
                else:
                    tensors[key] = codec.encode_sparse(centroids, indices, mask, name=key)
                kinds[key] = "shared"
            else:  # masked
                mask_t = get_mask(module)
                assert mask_t is not None
                w = module.weight.detach().cpu().float().numpy()
                mask = mask_t.cpu().numpy()
                enc = _lossless(key, w, mask)
                tensors[key] = enc if enc is not None else codec.encode_dense(w, name=key)
                kinds[key] = "masked"
        state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    else:
        state = dict(model)
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{key}: not a tensor ({type(value).__name__})")
        tensors[key] = _encode_plain(key, value)
        kinds[key] = "plain"
    return tensors, kinds


def save(
    model: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    config: dict | None = None,
    architecture: str | None = None,
    extra: dict | None = None,
) -> int:
    """Write ``model`` (or a state_dict) to a ``.dz`` file, atomically; returns the bytes written.

    A pruned and/or weight-shared model is stored in its compact form automatically. ``config`` (the recipe that
    made the model) and ``architecture`` (default: the name the model was built under) go into the header.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module  # save what is trained, not the wrapper
    tensors, kinds = encode_model(model)
    arch = architecture or (model_name(model) if isinstance(model, nn.Module) else None)
    return codec.write(path, tensors, config=config or {}, architecture=arch,
                       extra={**(extra or {}), "layers": kinds})



def _layer_kinds(f: DzFile) -> dict[str, str]:
    kinds = f.extra.get("layers", {}) if isinstance(f.extra, dict) else {}
    if not isinstance(kinds, dict) or any(v not in LAYER_KINDS for v in kinds.values()):
        raise DeepzipFormatError("header: extra.layers is not a map of layer kinds")
    return kinds


def load_state_dict(
    path: str | os.PathLike[str] | bytes, *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> dict[str, torch.Tensor]:
    """Decode every tensor of a ``.dz`` file into a plain state_dict (pruned and shared weights baked in).

    ``max_bytes`` bounds what the tensors may decode to (see :func:`deepzip.codec.read`).
    """
    f = read_dz(path, max_bytes=max_bytes)
    # decode returns fresh, writable arrays: no copy, so decoding peaks at the decoded size (not twice it)
    return {name: torch.from_numpy(f.decode(name)) for name in f.tensors}


def decode_into_(model: nn.Module, f: DzFile, where: str = "") -> nn.Module:
    """Load a read ``.dz`` file into ``model`` in place, rebuilding masks and trainable codebooks."""
    kinds = _layer_kinds(f)
    modules = dict(model.named_modules())
    own = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    for key in own:
        if key.endswith(".weight") and key[:-7] in modules and parametrize.is_parametrized(modules[key[:-7]], "weight"):
            remove_parametrization_(modules[key[:-7]], leave_parametrized=True)
    own = {k: v for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(own) - set(f.tensors)), sorted(set(f.tensors) - set(own))
    if missing or unexpected:
        msg = f"{where}does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise CheckpointError(msg[:500])
    plain: dict[str, torch.Tensor] = {}
    for key, enc in f.tensors.items():
        if tuple(enc.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{where}{key}: shape {tuple(enc.shape)} in the file, {tuple(own[key].shape)} in the model")
        kind = kinds.get(key, "plain")
        module = modules.get(key[:-7]) if key.endswith(".weight") else None
        if kind == "shared" and module is not None:
            centroids, indices, mask = f.decode_parts(key)
            share.set_codebook_(module, centroids, indices, mask)
        elif kind == "masked" and module is not None:
            w = torch.from_numpy(f.decode(key)).to(own[key].dtype)
            with torch.no_grad():
                module.weight.copy_(w)
            parametrize.register_parametrization(module, "weight", Mask(w != 0 if enc.kind == "dense" else
                                                                        torch.from_numpy(f.decode_parts(key)[2])))
        else:
            plain[key] = torch.from_numpy(f.decode(key)).to(own[key].dtype)
    model.load_state_dict(plain, strict=False)
    return model


def load(
    path: str | os.PathLike[str] | bytes,
    model: nn.Module | None = None,
    *,
    trust_code: bool = False,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    runtime: str | None = None,
) -> nn.Module:
    """Load a ``.dz`` file into a working model: into ``model`` when given, else into a fresh model of the
    architecture the file names. For the tensors alone (any file), use :func:`load_state_dict`.

    Args:
        path: the file (or its bytes).
        model: the model to load into; then the file's architecture name is not used.
        trust_code: build an architecture the file names as ``"package.module:factory"`` by importing that module
            (runs its code); without it only deepzip's registered models are built from a name.
        max_bytes: the most bytes the tensors may decode to (default 1 GiB), checked before decoding; None: no limit.
        runtime: a model for inference instead of one to fine-tune: ``"fast"`` keeps each pruned layer sparse
            (torch CSR) or dense, whichever runs faster at batch 1; ``"small"`` keeps them as codebook indices and
            16-bit columns where that takes the least memory (see :mod:`deepzip.runtime`; no sparse layer is made
            dense on the way); ``"shrunk"``: a plain dense model without the pruned-away neurons
            (:func:`deepzip.shrink.shrink_`).

    Raises:
        DeepzipFormatError: the file is truncated, corrupted, foreign, of a newer format version, or too large.
        UntrustedCodeError: the file names ``"package.module:factory"`` and neither ``model`` nor ``trust_code``.
        CheckpointError: (a ValueError) the file's tensors do not fit ``model``, or it names an unknown model.
        DeepzipError: the file names no architecture and no ``model`` was given.
    """
    if runtime not in (None, "fast", "small", "shrunk"):
        raise ValueError(f"runtime={runtime!r}, expected None, 'fast', 'small' or 'shrunk'")
    f = read_dz(path, max_bytes=max_bytes)
    where = f"{path}: " if not isinstance(path, (bytes, bytearray)) else ""
    if model is None:
        arch = f.architecture
        if not arch:
            raise DeepzipError(
                f"{where}the file names no architecture, so there is no model to build: pass the model "
                "(deepzip.load(path, model=MyNet())), or get the tensors with deepzip.serialize.load_state_dict(path) "
                "(CLI: deepzip decompress FILE -o OUT.safetensors)")
        try:
            with torch.device("meta") if runtime in ("fast", "small") else contextlib.nullcontext():
                model = get_model(arch, trust_code=trust_code)  # on meta: no memory until the file's tensors come
        except UntrustedCodeError as exc:
            raise UntrustedCodeError(f"{where}{exc}") from None
        except ValueError as exc:
            raise CheckpointError(f"{where}{exc}; pass the model explicitly") from None
    if runtime in ("fast", "small"):
        from .runtime import from_dz

        return from_dz(f, model, mode=runtime, where=where)
    model = decode_into_(model, f, where)
    if runtime == "shrunk":
        from .shrink import shrink_

        shrink_(model)
    return model
