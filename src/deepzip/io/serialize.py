"""The one bridge between models and the torch-free codec: model -> encoded layers -> ``.dz`` file -> model.

What each tensor becomes:

- a weight-shared layer (:class:`deepzip.techniques.share.SharedWeight`): its codebook and indices, as
  ``codebook`` kind, or
  ``sparse`` kind (gaps + indices of the kept weights) when it was also pruned;
- a pruned, unshared layer (:class:`deepzip.techniques.prune.Mask`): ``sparse`` kind whose codebook is the
  layer's distinct
  kept values (lossless), or, with more than 2**16 of them, ``planes`` of the kept values behind the mask;
- every other tensor, of any dtype (bfloat16 included), takes the smallest exact encoding
  (:func:`deepzip.codec.encode_lossless`: raw, Huffman-coded byte planes, planes behind a zero mask, or a codebook);
- a tensor sharing storage with an earlier one (tied weights) is stored once and tied again on load.

Loading rebuilds the parametrizations (masks, trainable codebooks), so a loaded model can be fine-tuned and saved
again in its compact form. Loading never unpickles and never runs code from the file: a file naming its architecture
``"package.module:factory"`` is built only with ``trust_code=True`` (or give the model: ``load(path, model=MyNet())``),
and a file whose tensors would decode to more than ``max_bytes`` (default 1 GiB) is refused before allocating.

Example:
    >>> import os, tempfile, torch
    >>> from deepzip.models import get_model
    >>> from deepzip.techniques.prune import prune_
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

from .. import codec
from ..codec import DzFile, EncodedTensor
from ..codec.container import DEFAULT_MAX_BYTES
from ..codec.fileinfo import read_dz
from ..errors import CheckpointError, DeepzipError, DeepzipFormatError, LowRankError, UntrustedCodeError
from ..models import get_model, model_name
from ..techniques import share
from ..techniques.lowrank import lowrank_spec, rebuild_
from ..techniques.prune import Mask, get_mask, remove_parametrization_
from .checkpoint import LAYER_KINDS, layer_kind
from .foreign import TORCH_DTYPES, _as_dtype, numpy_to_tensor, tensor_to_numpy

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
    """The smallest exact encoding of any tensor (any dtype deepzip stores; see codec.encode_lossless).

    A pruned weight can be -0.0 (a negative weight times a zero mask): it is stored as a pruned zero, +0.0.
    """
    arr, dtype = tensor_to_numpy(t, name)
    return codec.encode_lossless(arr, name=name, dtype=dtype, signed_zeros=False)  # value-exact, as torch.equal


def _parametrized(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(layer name, layer, tensor name)`` of every parametrized tensor (a ``weight``, or an RNN's matrices)."""
    return [(mname, module, tname) for mname, module in model.named_modules()
            if mname and parametrize.is_parametrized(module)
            for tname in module.parametrizations]  # type: ignore[union-attr]


def _split_key(key: str, modules: Mapping[str, nn.Module]) -> tuple[nn.Module | None, str]:
    """``"enc.rnn.weight_hh_l0"`` -> (the module ``enc.rnn``, ``"weight_hh_l0"``); (None, "") when not a layer's."""
    mname, _, tname = key.rpartition(".")
    module = modules.get(mname) if mname else None
    return (module, tname) if module is not None else (None, "")


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _decoded(f: DzFile, key: str) -> torch.Tensor:
    """Tensor ``key`` (or the one it is tied to) in the dtype it was saved in (bfloat16 included)."""
    extra = f.extra if isinstance(f.extra, dict) else {}
    target = extra.get("aliases", {}).get(key, key)
    dtype = extra.get("dtypes", {}).get(target, f.tensors[target].dtype)
    return numpy_to_tensor(_as_dtype(f.decode(target), dtype), dtype)


def encode_model(
    model: nn.Module | Mapping[str, torch.Tensor], aliases: dict[str, str] | None = None
) -> tuple[dict[str, EncodedTensor], dict[str, str]]:
    """Encode every tensor of a model (or a plain state_dict). Returns (encoded tensors, layer kinds by weight name).

    Tensors sharing storage with an earlier one are not encoded again: they are put in ``aliases`` (name -> the
    name stored) when given, and dropped otherwise.
    """
    aliases = {} if aliases is None else aliases
    tensors: dict[str, EncodedTensor] = {}
    kinds: dict[str, str] = {}
    if isinstance(model, nn.Module):
        for mname, module, tname in _parametrized(model):
            key = f"{mname}.{tname}"  # "fc1.weight", or a recurrent layer's "encoder.weight_hh_l0"
            kind = layer_kind(module, key, tensor=tname)
            if kind == "shared":
                centroids, indices, mask = share.get_codebook(module, tname)
                if mask.all():
                    tensors[key] = codec.encode_codebook(centroids, indices, name=key)
                else:
                    tensors[key] = codec.encode_sparse(centroids, indices, mask, name=key)
                kinds[key] = "shared"
            else:  # masked
                mask_t = get_mask(module, tname)
                assert mask_t is not None
                w = getattr(module, tname).detach().cpu().float().numpy()
                mask = mask_t.cpu().numpy()
                enc = _lossless(key, w, mask)
                if enc is None:  # too many distinct values for a codebook: the kept values' planes behind the mask
                    enc = min(codec.encode_planes(w, name=key, mask=mask), codec.encode_dense(w, name=key),
                              key=lambda e: e.nbytes)
                tensors[key] = enc
                kinds[key] = "masked"
        state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    else:
        state = dict(model)
    aliases.clear()
    seen: dict[tuple, str] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{key}: not a tensor ({type(value).__name__})")
        skey = _storage_key(value) if value.numel() else None
        if skey is not None and skey in seen:  # tied weights (an embedding shared with an output head): store once
            aliases[key] = seen[skey]
            continue
        if skey is not None:
            seen[skey] = key
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
    made the model) and ``architecture`` (default: the name the model was built under) go into the header, and so
    does the model's low-rank structure (:func:`deepzip.techniques.lowrank.lowrank_spec`, as ``extra.lowrank``)
    when it has
    factored layers, so :func:`load` can rebuild it from the base architecture.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module  # save what is trained, not the wrapper
    aliases: dict[str, str] = {}
    tensors, kinds = encode_model(model, aliases)
    arch = architecture or (model_name(model) if isinstance(model, nn.Module) else None)
    dtypes = {k: d for k, v in _state_dtypes(model).items() if k in tensors and tensors[k].dtype != (d := v)}
    more: dict[str, object] = {"aliases": aliases, "tied": sorted(aliases)} if aliases else {}
    if dtypes:
        more["dtypes"] = dtypes
    spec = lowrank_spec(model) if isinstance(model, nn.Module) else []
    if spec:  # which layers are factored, and how: load() rebuilds that structure on the base architecture
        more["lowrank"] = spec
    return codec.write(path, tensors, config=config or {}, architecture=arch,
                       extra={**(extra or {}), "layers": kinds, **more})


def _state_dtypes(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, str]:
    state = model.state_dict() if isinstance(model, nn.Module) else model
    return {k: TORCH_DTYPES.get(v.dtype, "") for k, v in state.items() if isinstance(v, torch.Tensor)}



def _layer_kinds(f: DzFile) -> dict[str, str]:
    kinds = f.extra.get("layers", {}) if isinstance(f.extra, dict) else {}
    if not isinstance(kinds, dict) or any(v not in LAYER_KINDS for v in kinds.values()):
        raise DeepzipFormatError("header: extra.layers is not a map of layer kinds")
    return kinds


def _names(f: DzFile) -> list[str]:
    """Every tensor name of the saved state_dict: those stored plus those tied to them."""
    aliases = f.extra.get("aliases", {}) if isinstance(f.extra, dict) else {}
    if not isinstance(aliases, dict) or any(not isinstance(v, str) or v not in f.tensors for v in aliases.values()):
        raise DeepzipFormatError("header: extra.aliases must map names to stored tensors")
    return list(f.tensors) + [k for k in aliases if k not in f.tensors]


def load_state_dict(
    path: str | os.PathLike[str] | bytes, *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> dict[str, torch.Tensor]:
    """Decode every tensor of a ``.dz`` file into a plain state_dict (pruned and shared weights baked in).

    Tensors in their saved dtype (bfloat16 too); tied tensors come back as one tensor under both names; a file made
    from a checkpoint gives the checkpoint's names. ``max_bytes`` bounds what the tensors may decode to (see
    :func:`deepzip.codec.read`).
    """
    f = read_dz(path, max_bytes=max_bytes)
    if isinstance(f.extra, dict) and "checkpoint" in f.extra and not isinstance(path, (bytes, bytearray)):
        from .foreign import state_dict_from

        return state_dict_from(codec.DzReader(path, max_bytes=max_bytes))
    out: dict[str, torch.Tensor] = {}
    tied = set(f.extra.get("tied", [])) if isinstance(f.extra, dict) else set()
    aliases = f.extra.get("aliases", {}) if isinstance(f.extra, dict) else {}
    for name in _names(f):
        target = aliases.get(name, name)
        # decode returns fresh, writable arrays, which go to torch without a copy (peak = the decoded size)
        out[name] = out[target] if name in tied and target in out else _decoded(f, name)
    return out


def decode_into_(model: nn.Module, f: DzFile, where: str = "") -> nn.Module:
    """Load a read ``.dz`` file into ``model`` in place, rebuilding masks and trainable codebooks."""
    kinds = _layer_kinds(f)
    modules = dict(model.named_modules())
    for _, holder, tname in _parametrized(model):
        remove_parametrization_(holder, leave_parametrized=True, tensor=tname)
    own = {k: v for k, v in model.state_dict().items()}
    names = _names(f)
    missing, unexpected = sorted(set(own) - set(names)), sorted(set(names) - set(own))
    if missing or unexpected:
        msg = f"{where}does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise CheckpointError(msg[:500])
    plain: dict[str, torch.Tensor] = {}
    aliases = f.extra.get("aliases", {})
    for key in names:
        enc = f.tensors[aliases.get(key, key)]
        if tuple(enc.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{where}{key}: shape {tuple(enc.shape)} in the file, {tuple(own[key].shape)} in the model")
        kind = kinds.get(key, "plain")
        module, tname = _split_key(key, modules) if kind != "plain" else (None, "")
        if kind == "shared" and module is not None:
            centroids, indices, mask = f.decode_parts(key)
            share.set_codebook_(module, centroids, indices, mask, tensor=tname)
        elif kind == "masked" and module is not None:
            w = _decoded(f, key).to(own[key].dtype)
            with torch.no_grad():
                getattr(module, tname).copy_(w)
            parametrize.register_parametrization(module, tname, Mask(
                w != 0 if enc.kind in ("dense", "planes") else torch.from_numpy(f.decode_parts(key)[2])))
        else:
            plain[key] = _decoded(f, key).to(own[key].dtype)
    model.load_state_dict(plain, strict=False)
    return model


def lowrank_of(f: DzFile) -> list[dict]:
    """The file's low-rank structure record (``extra.lowrank``; empty for a file without factored layers)."""
    spec = f.extra.get("lowrank", []) if isinstance(f.extra, dict) else []
    if not isinstance(spec, list):
        raise DeepzipFormatError("header: extra.lowrank is not a list of layer entries")
    return spec


def load(
    path: str | os.PathLike[str] | bytes,
    model: nn.Module | None = None,
    *,
    trust_code: bool = False,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    runtime: str | None = None,
) -> nn.Module:
    """Load a ``.dz`` file into a working model: into ``model`` when given, else into a fresh model of the
    architecture the file names, given the factored layers the header records (``extra.lowrank``, rebuilt by
    :func:`deepzip.techniques.lowrank.rebuild_`); for a Hugging Face folder's ``.dz``, the transformers model its
    config.json
    names (:func:`deepzip.io.foreign.hf_model`). For the tensors alone (any file; factored tensors as stored),
    use :func:`load_state_dict`.

    Args:
        path: the file (or its bytes).
        model: the model to load into; then the file's architecture name is not used.
        trust_code: build an architecture the file names as ``"package.module:factory"`` by importing that module
            (runs its code); without it only deepzip's registered models are built from a name.
        max_bytes: the most bytes the tensors may decode to (default 1 GiB), checked before decoding; None: no limit.
        runtime: a model for inference instead of one to fine-tune: ``"fast"`` keeps each pruned layer sparse
            (deepzip's C kernel, or torch CSR) or dense, whichever runs faster at batch 1; ``"small"`` keeps them as
            codebook indices and 8-bit relative columns (16-bit without the C kernel) where that takes the least
            memory (see :mod:`deepzip.runtime`; no sparse layer is made
            dense on the way); ``"shrunk"``: a plain dense model without the pruned-away neurons
            (:func:`deepzip.techniques.shrink.shrink_`).

    Raises:
        DeepzipFormatError: the file is truncated, corrupted, foreign, of a newer format version, or too large.
        UntrustedCodeError: the file names ``"package.module:factory"`` and neither ``model`` nor ``trust_code``.
        CheckpointError: (a ValueError) the file's tensors do not fit ``model``, or it names an unknown model.
        DeepzipError: the file names no architecture and no ``model`` was given.
        LowRankError: the file holds factored layers that ``model`` does not have (e.g. a plain model), or a bad
            low-rank record; the message names the layer and both structures.
    """
    if runtime not in (None, "fast", "small", "shrunk"):
        raise ValueError(f"runtime={runtime!r}, expected None, 'fast', 'small' or 'shrunk'")
    f = read_dz(path, max_bytes=max_bytes)
    where = f"{path}: " if not isinstance(path, (bytes, bytearray)) else ""
    if model is None and isinstance(f.extra, dict) and isinstance(f.extra.get("checkpoint"), dict) \
            and f.extra["checkpoint"].get("kind") == "hf" and not isinstance(path, (bytes, bytearray)):
        from .foreign import hf_model  # a Hugging Face folder's .dz: the model its config.json names

        return hf_model(path, max_bytes=max_bytes)
    spec = lowrank_of(f)
    given = model is not None
    if model is None:
        arch = f.architecture
        if not arch:
            raise DeepzipError(
                f"{where}the file names no architecture, so there is no model to build: pass the model "
                "(deepzip.load(path, model=MyNet())), or get the tensors with "
                "deepzip.io.serialize.load_state_dict(path) "
                "(CLI: deepzip decompress FILE -o OUT.safetensors)")
        try:
            with torch.device("meta") if runtime in ("fast", "small") else contextlib.nullcontext():
                model = get_model(arch, trust_code=trust_code)  # on meta: no memory until the file's tensors come
        except UntrustedCodeError as exc:
            raise UntrustedCodeError(f"{where}{exc}") from None
        except ValueError as exc:
            raise CheckpointError(f"{where}{exc}; pass the model explicitly") from None
    if spec:  # the factored layers the header records, on the base architecture
        try:
            rebuild_(model, spec, swap=not given)
        except LowRankError as exc:
            raise LowRankError(f"{where}{exc}") from None
    if runtime in ("fast", "small"):
        from ..runtime import from_dz

        return from_dz(f, model, mode=runtime, where=where)
    model = decode_into_(model, f, where)
    if runtime == "shrunk":
        from ..techniques.shrink import shrink_

        shrink_(model)
    return model
