"""The one bridge between models and the torch-free codec: model -> encoded layers -> ``.dz`` file -> model.

Used by :func:`save` / :func:`load` (``deepzip.save`` / ``deepzip.load``), post-training files
(:func:`save_posttrained`) and the inference runtime (``load(..., runtime=...)`` hands
:func:`deepzip.runtime.assemble_` arrays, never a file). Weights are found by the one walker
(:mod:`deepzip.techniques.walk`); how each is held and stored is one table, :data:`LAYER_KINDS`; whether a file fits
a model is one check, :func:`check_fits`, whose messages name the tensor.

What each tensor becomes:

- a weight-shared layer (:class:`deepzip.techniques.share.SharedWeight`): its codebook and indices, as
  ``codebook`` kind, or
  ``sparse`` kind (gaps + indices of the kept weights) when it was also pruned; post-training's codebooks per group
  or tier of rows (the same parametrization) as ``grouped`` / ``tiered``;
- a pruned, unshared layer (:class:`deepzip.techniques.prune.Mask`): ``sparse`` kind whose codebook is the
  layer's distinct
  kept values (lossless), or, with more than 2**16 of them, ``planes`` of the kept values behind the mask;
- every other tensor, of any dtype (bfloat16 included), takes the smallest exact encoding
  (:func:`deepzip.codec.encode_lossless`: raw, Huffman-coded byte planes, planes behind a zero mask, or a codebook);
- a tensor sharing storage with an earlier one (tied weights) is stored once and tied again on load;
- a weight computed by a parametrization that is not deepzip's (``weight_norm``, ``spectral_norm``, a user's): its
  inputs, as the plain tensors of the state_dict (``fc.parametrizations.weight.original0`` ...); pruned on top, the
  masked weight too (its positions rebuild the mask over the user's parametrization).

Loading gives a model for inference by default: each pruned Linear / Conv2d run sparse or dense, whichever measured
faster (:mod:`deepzip.runtime`), everything else plain tensors. With ``trainable=True`` it rebuilds the
parametrizations (masks, trainable codebooks) instead, so the model can be fine-tuned and saved again in its compact
form. Loading never unpickles and never runs code from the file: a file naming its architecture
``"package.module:factory"`` is built only with ``trust_code=True`` (or give the model: ``load(path, model=MyNet())``),
and a file whose tensors would decode to more than ``max_bytes`` (default 1 GiB) is refused before allocating.

Example:
    >>> import os, tempfile, torch
    >>> from deepzip.models import get_model
    >>> from deepzip.techniques.prune import prune_
    >>> m = prune_(get_model("lenet300"), sparsity=0.9)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.dz")
    >>> n = save(m, path)
    >>> m2 = load(path)  # the file names its architecture; for inference: sparse where that runs faster
    >>> x = torch.rand(2, 1, 28, 28)
    >>> bool(torch.allclose(m(x), m2(x), atol=1e-5))
    True
    >>> m3 = load(path, trainable=True)  # masks as parametrizations: to fine-tune and save again
    >>> bool(torch.equal(m(x), m3(x)))
    True
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import codec
from ..codec import DzFile, EncodedTensor
from ..codec._tensor import MAX_CODEBOOK
from ..codec.container import DEFAULT_MAX_BYTES
from ..codec.fileinfo import read_dz
from ..codec.grouped import grouped_parts, outliers
from ..codec.tiered import tiered_parts
from ..errors import CheckpointError, DeepzipError, DeepzipFormatError, LowRankError, UntrustedCodeError
from ..models import get_model, model_name
from ..techniques import share
from ..techniques.lowrank import lowrank_spec, rebuild_
from ..techniques.prune import Mask, clone_model, get_mask, remove_own_, remove_parametrization_, strip
from ..techniques.shrink import architecture_widths, resize_
from ..techniques.walk import chain, parametrized_tensors
from .foreign import TORCH_DTYPES, _as_dtype, numpy_to_tensor, tensor_to_numpy

__all__ = ["LAYER_KINDS", "LayerKind", "check_file_fits", "check_fits", "decode_into_", "encode_model", "fit_problem",
           "layer_kind", "load", "load_state_dict", "save", "save_posttrained"]


# ---------------------------------------------------------------------------------------------------- encodings
def _lossless(name: str, w: np.ndarray, mask: np.ndarray | None) -> EncodedTensor | None:
    """A codebook of ``w``'s distinct (kept) values, when there are at most 2**16 of them."""
    kept = w[mask] if mask is not None else w.ravel()
    if kept.size == 0:
        return codec.encode_sparse(np.zeros(1, np.float32), np.zeros(w.shape, np.int64), np.zeros(w.shape, bool),
                                   name=name)
    values, inverse = np.unique(kept, return_inverse=True)
    if values.size > MAX_CODEBOOK or not np.isfinite(values).all():  # codebooks hold finite values only
        return None
    indices = np.zeros(w.shape, np.int64)
    if mask is not None:
        indices[mask] = inverse
        return codec.encode_sparse(values.astype(np.float32), indices, mask, name=name)
    return codec.encode_codebook(values.astype(np.float32), inverse.reshape(w.shape), name=name)


def _encode_plain(name: str, t: torch.Tensor) -> EncodedTensor:
    """The smallest exact encoding of any tensor (any dtype deepzip stores; see codec.encode_lossless).

    A pruned weight can be -0.0 (a negative weight times a zero mask): it is stored as a pruned zero, +0.0. A
    float32 tensor whose values are all float16 values (post-training's float16 choice) may be stored as float16,
    ``extra.dtypes`` recording float32 (:func:`save`), when that is smaller.
    """
    arr, dtype = tensor_to_numpy(t, name)
    enc = codec.encode_lossless(arr, name=name, dtype=dtype, signed_zeros=False)  # value-exact, as torch.equal
    if dtype == "float32" and arr.size and np.array_equal(half := arr.astype(np.float16), arr):
        enc = min(enc, codec.encode_lossless(half, name=name, dtype="float16", signed_zeros=False),
                  key=lambda e: e.nbytes)
    return enc


def _encode_masked(name: str, module: nn.Module, tensor: str) -> EncodedTensor:
    """A pruned weight: the distinct kept values as a codebook behind the positions (``sparse``), or with more than
    2**16 of them the kept values' byte planes behind the mask (``planes``), or ``dense`` if smaller."""
    mask_t = get_mask(module, tensor)
    assert mask_t is not None
    w = getattr(module, tensor).detach().cpu().float().numpy()
    mask = mask_t.cpu().numpy()
    enc = _lossless(name, w, mask)
    if enc is None:  # too many distinct values for a codebook: the kept values' planes behind the mask
        enc = min(codec.encode_planes(w, name=name, mask=mask), codec.encode_dense(w, name=name),
                  key=lambda e: e.nbytes)
    return enc


def _encode_shared(name: str, module: nn.Module, tensor: str) -> EncodedTensor:
    """A codebook layer: one codebook as ``codebook`` (or ``sparse`` when pruned too); post-training's codebooks
    per group or tier of rows as ``grouped`` / ``tiered`` (float16 codebooks, exact outliers)."""
    books = share.get_codebooks(module, tensor)
    if books is None:
        centroids, indices, mask = share.get_codebook(module, tensor)
        # centroids that are all float16 values (PipelineConfig.centroids_float16) are stored in 16 bits, with the
        # short streams of format 1.4: both matter at a few KB
        half = bool(np.array_equal(centroids.astype(np.float16).astype(np.float32), centroids))
        if mask.all():
            return codec.encode_codebook(centroids, indices, name=name, half=half)
        return codec.encode_sparse(centroids, indices, mask, name=name, half=half)
    if books["layout"] == "tiered":
        return codec.encode_tiered(books["codebooks"], books["books"], books["labels"], books["outlier_pos"],
                                   books["outlier_val"], name=name)
    rows_per_group = int((books["books"] == 0).sum())  # groups of equal size, the last one possibly shorter
    return codec.encode_grouped(books["codebooks"], books["labels"], rows_per_group, books["outlier_pos"],
                                books["outlier_val"], name=name)


# ---------------------------------------------------------------------------------------------------- rebuilding
def _rebuild_masked(module: nn.Module, tensor: str, f: DzFile, key: str) -> None:
    """A :class:`~deepzip.techniques.prune.Mask` from the stored positions, over the stored values (or, under a
    foreign parametrization whose inputs the file holds, over what that computes)."""
    w = _decoded(f, key)
    mask = w != 0 if f.tensors[key].kind in ("dense", "planes") else torch.from_numpy(f.decode_parts(key)[2])
    if not chain(module, tensor)[0]:
        with torch.no_grad():
            getattr(module, tensor).copy_(w.to(getattr(module, tensor).dtype))
    parametrize.register_parametrization(module, tensor, Mask(mask))


def _rebuild_shared(module: nn.Module, tensor: str, f: DzFile, key: str) -> None:
    """A :class:`~deepzip.techniques.share.SharedWeight`: one codebook, or codebooks per group / tier of rows."""
    enc = f.tensors[key]
    if enc.kind in ("grouped", "tiered"):
        cb, labels, books = (grouped_parts if enc.kind == "grouped" else tiered_parts)(enc)
        pos, val = outliers(enc)
        share.set_codebooks_(module, cb, labels.reshape(enc.shape), books, layout=enc.kind, outlier_pos=pos,
                             outlier_val=val, tensor=tensor)
    else:
        share.set_codebook_(module, *f.decode_parts(key), tensor=tensor)


@dataclass(frozen=True)
class LayerKind:
    """One row of :data:`LAYER_KINDS`: how a weight is held in the model and how the file stores it.

    Attributes:
        parametrization: deepzip's parametrization loading rebuilds on the weight (None: a plain tensor).
        storage: the codec encodings the file may hold for it (None: any).
        encode: ``encode(name, module, tensor) -> EncodedTensor`` (None: plain, by :func:`_encode_plain`).
        rebuild: ``rebuild(module, tensor, file, name)`` puts the parametrization back (None: loaded as a tensor).
    """

    parametrization: type[nn.Module] | None
    storage: tuple[str, ...] | None
    encode: Callable[[str, nn.Module, str], EncodedTensor] | None
    rebuild: Callable[[nn.Module, str, DzFile, str], None] | None


#: The one layer-kind table: layer kind -> what loading rebuilds and how a ``.dz`` file (``extra.layers``) stores the
#: tensor. The kind strings are part of the file format, and deepzip's safetensors checkpoints
#: (:mod:`deepzip.io.checkpoint`, which store a layer their own way) use the same ones.
LAYER_KINDS: dict[str, LayerKind] = {
    "plain": LayerKind(None, None, None, None),
    "masked": LayerKind(Mask, ("sparse", "planes", "dense"), _encode_masked, _rebuild_masked),
    "shared": LayerKind(share.SharedWeight, ("codebook", "sparse", "grouped", "tiered"), _encode_shared,
                        _rebuild_shared),
}


def layer_kind(module: nn.Module, where: str = "weight", *, tensor: str = "weight") -> str:
    """Which of :data:`LAYER_KINDS` ``module``'s ``tensor`` (its weight, or an RNN matrix) is; ``where`` names it
    in the error. A weight under foreign parametrizations only (weight_norm, ...) is ``plain``: the file holds their
    inputs as they are.

    Raises:
        CheckpointError: the weight has a parametrization of deepzip's that is not saved (strip it first).
    """
    own = chain(module, tensor)[1]
    if not own:
        return "plain"
    if any(isinstance(p, share.SharedWeight) for p in own):
        return "shared"
    if all(isinstance(p, Mask) for p in own):
        return "masked"
    name = next(type(p).__name__ for p in own if not isinstance(p, Mask))
    raise CheckpointError(f"{where}: parametrization {name} is not saved; strip() it before saving")


# ---------------------------------------------------------------------------------------------------- names
def _split_key(key: str, modules: Mapping[str, nn.Module]) -> tuple[nn.Module | None, str]:
    """``"enc.rnn.weight_hh_l0"`` -> (the module ``enc.rnn``, ``"weight_hh_l0"``); (None, "") when not a layer's."""
    mname, _, tname = key.rpartition(".")
    module = modules.get(mname) if mname else None
    return (module, tname) if module is not None else (None, "")


def _own_state_keys(model: nn.Module) -> set[str]:
    """The state_dict entries deepzip's parametrizations hold (masks, codebooks, and the ``original`` they read):
    the layer kinds store them. A foreign parametrization's inputs (weight_norm's ``original0/1``) are not here."""
    keys = set()
    for mname, module, tname in parametrized_tensors(model):
        n_foreign = len(chain(module, tname)[0])
        for k in module.parametrizations[tname].state_dict():  # type: ignore[index,union-attr]
            head = k.split(".", 1)[0]
            if (head.startswith("original") and not n_foreign) or (head.isdigit() and int(head) >= n_foreign):
                keys.add(f"{mname}.parametrizations.{tname}.{k}")
    return keys


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

    Each tensor under one of deepzip's parametrizations is encoded by its :data:`LAYER_KINDS` row, every other
    state_dict entry (a foreign parametrization's inputs too) as ``plain``. Tensors sharing storage with an earlier
    one are not encoded again: they are put in ``aliases`` (name -> the name stored) when given, and dropped
    otherwise.
    """
    aliases = {} if aliases is None else aliases
    tensors: dict[str, EncodedTensor] = {}
    kinds: dict[str, str] = {}
    if isinstance(model, nn.Module):
        for mname, module, tname in parametrized_tensors(model):
            key = f"{mname}.{tname}"  # "fc1.weight", or a recurrent layer's "encoder.weight_hh_l0"
            kind = layer_kind(module, key, tensor=tname)
            encode = LAYER_KINDS[kind].encode
            assert encode is not None  # a parametrized tensor of deepzip's is never plain
            tensors[key], kinds[key] = encode(key, module, tname), kind
        drop = _own_state_keys(model)
        state = {k: v for k, v in model.state_dict().items() if k not in drop}
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
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> int:
    """Write ``model`` (or a state_dict) to a ``.dz`` file, atomically; returns the bytes written.

    A pruned and/or weight-shared model is stored in its compact form automatically. ``config`` (the recipe that
    made the model) and ``architecture`` (default: the name the model was built under) go into the header, and so
    does the model's low-rank structure (:func:`deepzip.techniques.lowrank.lowrank_spec`, as ``extra.lowrank``)
    when it has factored layers, and a shrunk model's layer widths
    (:func:`deepzip.techniques.shrink.architecture_widths`, as ``extra.widths``), so :func:`load` can rebuild it
    from the base architecture. ``tensors``: more tensors stored exactly beside the model's, under their own names
    (a folder's tensors the model does not hold, see :func:`save_posttrained`).
    """
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module  # save what is trained, not the wrapper
    aliases: dict[str, str] = {}
    beside = dict(tensors or {})
    encoded, kinds = encode_model(model, aliases)
    for name, t in beside.items():
        if name in encoded or name in aliases:
            raise ValueError(f"{name}: given in tensors= and held by the model")
        encoded[name], kinds[name] = _encode_plain(name, t), "plain"
    arch = architecture or (model_name(model) if isinstance(model, nn.Module) else None)
    state = {**_state_dtypes(model), **_state_dtypes(beside)}
    dtypes = {k: d for k, v in state.items() if k in encoded and encoded[k].dtype != (d := v)}
    more: dict[str, object] = {"aliases": aliases, "tied": sorted(aliases)} if aliases else {}
    if dtypes:
        more["dtypes"] = dtypes
    spec = lowrank_spec(model) if isinstance(model, nn.Module) else []
    if spec:  # which layers are factored, and how: load() rebuilds that structure on the base architecture
        more["lowrank"] = spec
    widths, full = architecture_widths(model, arch) if isinstance(model, nn.Module) else ({}, 0)
    if widths:  # a shrunk model (deepzip.techniques.shrink): load() resizes the architecture's layers first
        more["widths"], more["params_architecture"] = widths, full
    return codec.write(path, encoded, config=config or {}, architecture=arch,
                       extra={**(extra or {}), "layers": kinds, **more})


def save_posttrained(model: nn.Module, result: Any, path: str | os.PathLike[str], *,
                     architecture: str | None = None, config: dict | None = None,
                     source: str | os.PathLike[str] | None = None) -> int:
    """Write a model compressed by :func:`deepzip.techniques.posttrain.compress_to_bound_` (and perhaps
    :func:`~deepzip.techniques.posttrain.distill_`) to a ``.dz`` file, atomically; returns the bytes written.

    The file is what :func:`save` writes for the model with each chosen codebook in place, as the
    :class:`~deepzip.techniques.share.SharedWeight` it is (layer kind ``shared``, stored ``grouped`` or ``tiered``):
    :func:`load` gives back a model whose codebooks can be fine-tuned, and saving that model again writes the same
    bytes. Tensors chosen as float16 and every other tensor take their smallest exact encoding. ``model`` itself is
    not changed.

    Args:
        model: the compressed model.
        result: the :class:`~deepzip.techniques.posttrain.PostTrainResult` of its compression.
        path: the file to write.
        architecture: the architecture name for the header (default: the name the model was built under).
        config: the recipe, for the header.
        source: the Hugging Face or sentence-transformers folder ``model`` was loaded from: the file then carries
            what rebuilds it (config, tokenizer, module files, and which of the folder's tensors each stored one
            is: :func:`deepzip.io.foreign.folder_record`, as ``deepzip compress FOLDER`` writes), so that
            :func:`load` alone gives back the model (a ``SentenceTransformer``, or the transformers model) and
            ``deepzip decompress`` the folder, holding the compressed weights.

    Raises:
        CheckpointError: a tensor of the result that is not the weight of a layer of ``model``; ``source`` is not
            a model folder.
    """
    twin = clone_model(model)
    modules = dict(twin.named_modules())
    for key, choice in result.choices.items():
        module, tname = _split_key(key, modules)
        weight = getattr(module, tname, None) if module is not None else None
        if not isinstance(weight, torch.Tensor):
            raise CheckpointError(f"{key}: a tensor of the post-training result that the model does not have")
        if choice.bits:  # codebooks: the parametrization that load() rebuilds, so both write the same bytes
            share.set_codebooks_(module, **choice.codebook_parts(tuple(weight.shape)), tensor=tname)  # type: ignore
        else:  # float16 values, as chosen
            with torch.no_grad():
                weight.copy_(torch.from_numpy(choice.weight(tuple(weight.shape))))
    extra: dict[str, Any] | None = None
    more: dict[str, torch.Tensor] = {}
    if source is not None:
        from .foreign import folder_record

        record, more = folder_record(source, _effective_state(twin))
        extra = {"checkpoint": record}
    return save(twin, path, config=config, architecture=architecture, extra=extra, tensors=more)


def _effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor as the model uses it, by the name a ``.dz`` stores it under: a parametrized weight evaluated
    (``fc1.weight``), every other state_dict entry as it is."""
    drop = _own_state_keys(model)
    out = {k: v for k, v in model.state_dict().items() if k not in drop}
    with torch.no_grad():
        for mname, module, tname in parametrized_tensors(model):
            out[f"{mname}.{tname}" if mname else tname] = getattr(module, tname).detach()
    return out


def _state_dtypes(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, str]:
    state = model.state_dict() if isinstance(model, nn.Module) else model
    return {k: TORCH_DTYPES.get(v.dtype, "") for k, v in state.items() if isinstance(v, torch.Tensor)}



def _layer_kinds(f: DzFile) -> dict[str, str]:
    kinds = f.extra.get("layers", {}) if isinstance(f.extra, dict) else {}
    if not isinstance(kinds, dict) or any(not isinstance(v, str) or v not in LAYER_KINDS for v in kinds.values()):
        raise DeepzipFormatError("header: extra.layers is not a map of layer kinds")
    return kinds


def _names(f: DzFile) -> list[str]:
    """Every tensor name of the saved state_dict: those stored plus those tied to them."""
    aliases = f.extra.get("aliases", {}) if isinstance(f.extra, dict) else {}
    if not isinstance(aliases, dict) or any(not isinstance(v, str) or v not in f.tensors for v in aliases.values()):
        raise DeepzipFormatError("header: extra.aliases must map names to stored tensors")
    return list(f.tensors) + [k for k in aliases if k not in f.tensors]


def _model_names(f: DzFile) -> list[str]:
    """:func:`_names` less the tensors a model folder's file holds that the model does not (``"FILE:NAME"`` entries
    of the folder record, e.g. an old ``position_ids`` buffer, kept only to give the folder back): what a model is
    loaded from."""
    record = f.extra.get("checkpoint") if isinstance(f.extra, dict) else None
    files = record.get("files") if isinstance(record, dict) else None
    folder_only: set[str] = set()
    for entry in files if isinstance(files, list) else []:
        rel = entry.get("path") if isinstance(entry, dict) else None
        for pair in entry.get("tensors", []) if isinstance(rel, str) else []:
            if isinstance(pair, list) and len(pair) == 2 and pair[1] == f"{rel}:{pair[0]}":
                folder_only.add(pair[1])
    return [n for n in _names(f) if n not in folder_only]


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


def fit_problem(own: Mapping[str, tuple], theirs: Mapping[str, tuple], model: nn.Module | None = None, *,
                what: str | None = None, missing_ok: bool = False) -> str | None:
    """Why tensors named ``theirs`` (name -> shape) do not fit a model's ``own``, in one line naming the first that
    does not (in the model's order: missing or another shape; then the first the model lacks), with the counts;
    None when they fit. ``what``: the model in the line (default: ``the model NAME``, its registry name or class);
    ``missing_ok``: the model may have tensors the file lacks (tied ones, which the caller ties and checks itself).
    The words of every "does not fit" in deepzip (:func:`check_fits`, :mod:`deepzip.io.reader`).
    """
    if what is None:
        name = model_name(model) if model is not None else None
        what = f"the model {name}" if name else f"the model ({type(model).__name__})" if model is not None \
            else "the model"
    missing = [] if missing_ok else [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    counts = f"{len(missing)} missing, {len(unexpected)} not in the model"
    for k, shape in own.items():
        if k not in theirs:
            if missing_ok:
                continue
            return f"does not fit {what}: {k} {list(shape)} is missing from the file ({counts})"
        if tuple(theirs[k]) != tuple(shape):
            return f"does not fit {what}: {k} has shape {list(theirs[k])} in the file, {list(shape)} in the model"
    if unexpected:
        return f"does not fit {what}: the file's {unexpected[0]} {list(theirs[unexpected[0]])} is not in the model " \
               f"({counts})"
    return None


def check_fits(stored: Mapping[str, tuple[int, ...]], model: nn.Module, *, layers: Mapping[str, str] | None = None,
               encodings: Mapping[str, str] | None = None, where: str = "") -> None:
    """The one "does the file fit the model" check: every tensor of ``model`` is stored, nothing else is, shapes
    agree, and each layer kind is stored in an encoding its :data:`LAYER_KINDS` row lists.

    Args:
        stored: name -> shape of what the file holds.
        model: the model, as it is: the parametrizations the file replaces count as taken off (see
            :func:`decode_into_`), and nothing is changed, so a file that does not fit leaves the model as it was.
        layers: name -> layer kind of the entries that rebuild a parametrization (their name is the parametrized
            tensor's, ``"fc1.weight"``, which a layer under a foreign parametrization does not list in its
            state_dict).
        encodings: name -> codec kind of each stored tensor, checked against ``layers``.
        where: prefix of the messages (the file).

    Raises:
        CheckpointError: (a ValueError) one line naming the first tensor, in the model's order, that is missing
            or of another shape, else the first the model lacks, with the counts of each (:func:`fit_problem`).
        DeepzipFormatError: a layer kind stored in an encoding its row does not list, naming the tensor.
    """
    own = _expected_shapes(model, stored)
    modules = dict(model.named_modules())
    for name, kind in (layers or {}).items():  # a layer entry names its parametrized tensor, not a state_dict entry
        module, tname = _split_key(name, modules) if kind != "plain" and name not in own else (None, "")
        t = getattr(module, tname, None) if module is not None else None
        if isinstance(t, torch.Tensor):
            own[name] = tuple(t.shape)
    problem = fit_problem(own, stored, model)
    if problem:
        raise CheckpointError(f"{where}{problem}")
    for name, kind in (layers or {}).items():
        storage, enc = LAYER_KINDS[kind].storage, (encodings or {}).get(name)
        if storage is not None and enc is not None and enc not in storage:
            raise DeepzipFormatError(f"{where}{name}: layer kind {kind!r} stored as {enc!r}, expected one of "
                                     f"{', '.join(storage)}")


def check_file_fits(f: DzFile, model: nn.Module, where: str = "") -> None:
    """:func:`check_fits` for a read ``.dz`` file: its names (tied ones too), shapes, layer kinds and encodings."""
    aliases = f.extra.get("aliases", {}) if isinstance(f.extra, dict) else {}
    stored = {n: f.tensors[aliases.get(n, n)] for n in _model_names(f)}
    check_fits({n: tuple(t.shape) for n, t in stored.items()}, model, layers=_layer_kinds(f),
               encodings={n: t.kind for n, t in stored.items()}, where=where)


def _replaced(model: nn.Module, names: Collection[str]) -> list[tuple[str, nn.Module, str, bool]]:
    """Every parametrized tensor as ``(layer name, layer, tensor, keeps_foreign)``: a file holding ``names`` keeps
    its foreign parametrizations (weight_norm ...) when it holds their inputs (``<layer>.parametrizations.<tensor>.``
    ``original0`` ...), i.e. was saved with them; else the whole chain is replaced by the file's tensor."""
    out = []
    for mname, module in model.named_modules():
        for tname in list(getattr(module, "parametrizations", {}) or {}):
            prefix = f"{mname}.parametrizations.{tname}." if mname else f"parametrizations.{tname}."
            keeps = bool(chain(module, tname)[0]) and any(n.startswith(prefix) for n in names)
            out.append((mname, module, tname, keeps))
    return out


def _expected_shapes(model: nn.Module, names: Collection[str]) -> dict[str, tuple[int, ...]]:
    """The state_dict names and shapes ``model`` has once :func:`_prepare_` has taken off what a file holding
    ``names`` replaces, in state_dict order; ``model`` is not changed."""
    fold: dict[str, str | None] = {}  # state key -> the plain tensor it becomes (None: it goes)
    shapes: dict[str, tuple[int, ...]] = {}
    for mname, module, tname, keeps in _replaced(model, names):
        prefix = f"{mname}.parametrizations.{tname}." if mname else f"parametrizations.{tname}."
        n_foreign = len(chain(module, tname)[0])
        for k in module.parametrizations[tname].state_dict():  # type: ignore[index,union-attr]
            head = k.split(".", 1)[0]
            if not keeps:
                fold[prefix + k] = f"{mname}.{tname}" if mname else tname
            elif head.isdigit() and int(head) >= n_foreign:  # deepzip's own on top of the kept foreign chain
                fold[prefix + k] = None
        shapes[f"{mname}.{tname}" if mname else tname] = tuple(getattr(module, tname).shape)
    out: dict[str, tuple[int, ...]] = {}
    for k, v in model.state_dict().items():
        if k not in fold:
            out[k] = tuple(v.shape)
        elif (name := fold[k]) is not None:
            out.setdefault(name, shapes[name])
    return out


def _prepare_(model: nn.Module, names: Collection[str]) -> None:
    """Take off the parametrizations a file holding ``names`` replaces (see :func:`_replaced`): deepzip's always, the
    foreign ones too (baked) unless the file keeps them."""
    for _, module, tname, keeps in _replaced(model, names):
        if keeps:
            remove_own_(module, tname)
        else:
            remove_parametrization_(module, leave_parametrized=True, tensor=tname)


def decode_into_(model: nn.Module, f: DzFile, where: str = "") -> nn.Module:
    """Load a read ``.dz`` file into ``model`` in place, rebuilding masks and trainable codebooks."""
    kinds = _layer_kinds(f)
    names = _model_names(f)
    check_file_fits(f, model, where)  # before anything changes: a file that does not fit leaves the model as it was
    _prepare_(model, set(names))
    modules = dict(model.named_modules())
    plain: dict[str, torch.Tensor] = {}
    own = model.state_dict()
    for key in names:
        rebuild = LAYER_KINDS[kinds.get(key, "plain")].rebuild
        module, tname = _split_key(key, modules) if rebuild is not None else (None, "")
        if rebuild is not None and module is not None:
            try:
                rebuild(module, tname, f, key)
            except DeepzipError:
                raise
            except ValueError as exc:  # parts that do not make the parametrization (a crafted file)
                raise DeepzipFormatError(f"{where}{key}: {exc}") from None
        else:
            plain[key] = _decoded(f, key).to(own[key].dtype)
    model.load_state_dict(plain, strict=False)
    return model


def _runtime_model(f: DzFile, model: nn.Module, mode: str, where: str,
                   say: Callable[[str, str], None] = lambda phase, detail: None, margin: float = 1.0,
                   whole: float | None = None) -> nn.Module:
    """``model`` (on the meta device) built for inference by :func:`deepzip.runtime.assemble_`: a sparse Linear /
    Conv2d weight goes over as its kept entries (never a full-size tensor), every other tensor decoded."""
    from ..runtime import assemble_, runtime_table, supports

    check_file_fits(f, model, where)
    modules = dict(model.named_modules())
    own = model.state_dict()
    plain: dict[str, torch.Tensor] = {}
    kept: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    aliases = f.extra.get("aliases", {}) if isinstance(f.extra, dict) else {}
    by_target: dict[str, torch.Tensor] = {}
    for key in _model_names(f):
        target = aliases.get(key, key)
        enc = f.tensors[target]
        lname = key.removesuffix(".weight") if key.endswith(".weight") else ""
        if enc.kind == "sparse" and lname in modules and supports(modules[lname]) \
                and own[key].dtype == torch.float32 and target == key:
            cb, pos, sym = codec.decode_kept(enc)
            assert pos is not None  # the sparse kind lists its positions
            kept[lname] = (cb, pos, sym)
        else:  # tied tensors decoded once and assigned to each name: tied again
            if target not in by_target:
                by_target[target] = _decoded(f, key).to(own[key].dtype)
            plain[key] = by_target[target]
    say("decoded the tensors", f"{len(kept)} sparse layers kept sparse, {len(plain)} tensors dense")
    model = assemble_(model, plain, kept, mode=mode, where=where, margin=margin, whole=whole)
    forms = [r for r in runtime_table(model) if r["form"] != "dense"]
    say("chose each layer's form" + (" by timing it at batch 1" if mode == "fast" else " by its bytes"),
        ", ".join(f"{r['layer']} {r['form']}/{r['kernel']}" for r in forms) or "every layer dense")
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
    trainable: bool = False,
    progress: bool = False,
) -> nn.Module:
    """Load a ``.dz`` file into a working model: into ``model`` when given, else into a fresh model of the
    architecture the file names, given the factored layers the header records (``extra.lowrank``, rebuilt by
    :func:`deepzip.techniques.lowrank.rebuild_`); for a Hugging Face folder's ``.dz`` (``deepzip compress FOLDER``,
    or ``deepzip ptq`` of a folder), the model the folder held: a ``SentenceTransformer`` for a sentence-transformers
    folder, else the transformers model its config.json names (:func:`deepzip.io.foreign.hf_model`). For the tensors
    alone (any file; factored tensors as stored), use :func:`load_state_dict`.

    Two forms of the same weights (outputs equal up to float rounding):

    - for inference (the default): the ``"fast"`` runtime, each pruned Linear / Conv2d run by the sparse kernel or
      as a plain dense weight, whichever measured faster at batch 1 while loading (:func:`deepzip.runtime.sparsify_`;
      a layer the sparse kernel does not beat by 20% stays dense, and for a registered architecture (an input is
      known) the sparse layers stay only if the whole model then runs 5% faster; so the model is never slower than
      the plain dense one),
      every other weight (weight-shared, post-training codebooks, low-rank factors) decoded into a plain tensor; no
      parametrizations, in eval mode, parameters without gradients;
    - ``trainable=True``: the form to fine-tune and save again: masks and codebooks as parametrizations
      (:class:`~deepzip.techniques.prune.Mask`, :class:`~deepzip.techniques.share.SharedWeight`), outputs identical
      to the saved model's, and :func:`save` of it writes the same compact form. It runs the parametrizations at each
      call: far slower (a 4096x9216 layer, 9% kept, 5-bit shared: 30-50x slower than plain dense at batch 1,
      benchmarks/results/load_speed.md).

    Args:
        path: the file (or its bytes).
        model: the model to load into; then the file's architecture name is not used.
        trust_code: build an architecture the file names as ``"package.module:factory"`` by importing that module
            (runs its code); without it only deepzip's registered models are built from a name.
        max_bytes: the most bytes the tensors may decode to (default 1 GiB), checked before decoding; None: no limit.
        runtime: which inference form (None: the default above, i.e. ``"fast"`` with its margins, or plain dense
            weights where the file holds no sparse weight): ``"fast"`` keeps each pruned layer sparse (deepzip's C
            kernel, or torch CSR) or dense, whichever runs faster at batch 1; ``"small"`` keeps them as codebook
            indices and 8-bit relative columns (16-bit without the C kernel) where that takes the least
            memory (see :mod:`deepzip.runtime`; no sparse layer is made
            dense on the way); ``"shrunk"``: a plain dense model without the pruned-away neurons
            (:func:`deepzip.techniques.shrink.shrink_`).
        trainable: the fine-tunable form (see above) instead of one for inference; not with ``runtime``.
        progress: print each phase of loading (reading, decoding, choosing each layer's form) and its time on
            stderr; nothing is printed otherwise.

    Returns:
        The model, in eval mode (``trainable``: as built, train mode).

    Raises:
        ValueError: an unknown ``runtime``, or ``runtime`` with ``trainable=True``.
        DeepzipFormatError: the file is truncated, corrupted, foreign, of a newer format version, or too large.
        UntrustedCodeError: the file names ``"package.module:factory"`` and neither ``model`` nor ``trust_code``.
        CheckpointError: (a ValueError) the file's tensors do not fit ``model``, or it names an unknown model.
        DeepzipError: the file names no architecture and no ``model`` was given.
        LowRankError: the file holds factored layers that ``model`` does not have (e.g. a plain model), or a bad
            low-rank record; the message names the layer and both structures.
    """
    if runtime not in (None, "fast", "small", "shrunk"):
        raise ValueError(f"runtime={runtime!r}, expected None, 'fast', 'small' or 'shrunk'")
    if trainable and runtime is not None:
        raise ValueError(f"runtime={runtime!r} with trainable=True: the runtimes are for inference; choose one")
    say = _Phases(str(path) if not isinstance(path, (bytes, bytearray)) else "(bytes)", progress)
    f = read_dz(path, max_bytes=max_bytes)
    say("read the header", f"{len(f.tensors)} tensors")
    auto = runtime is None and not trainable
    if auto and _sparse_weights(f):  # else plain dense weights: nothing would run faster
        runtime = "fast"
    where = f"{path}: " if not isinstance(path, (bytes, bytearray)) else ""
    if model is None and isinstance(f.extra, dict) and isinstance(f.extra.get("checkpoint"), dict) \
            and f.extra["checkpoint"].get("kind") == "hf" and not isinstance(path, (bytes, bytearray)):
        from .foreign import folder_model  # a Hugging Face folder's .dz: the model the folder held

        model = folder_model(path, max_bytes=max_bytes)
        if trainable:  # the codebooks (deepzip ptq) as parametrizations again, over the plain model
            _rebuild_layers_(model, f, where)
        say("built the model", type(model).__name__)
        return model
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
    widths = f.extra.get("widths") if isinstance(f.extra, dict) else None
    if widths is not None:  # a shrunk model: its layers' widths, checked (a width may only shrink)
        try:
            resize_(model, widths, where)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    say("built the architecture", f.architecture if not given else type(model).__name__)
    if runtime in ("fast", "small"):
        with warnings.catch_warnings():
            if auto:  # not asked for a runtime: a layer it does not run simply stays as it is
                warnings.filterwarnings("ignore", message=".*not supported by the sparse runtime")
            # by default a sparse layer must beat dense by 20%: a win within timing noise stays dense
            return _runtime_model(f, model, runtime, where, say, margin=DEFAULT_MARGIN if auto else 1.0,
                                  whole=DEFAULT_WHOLE if auto else None)
    model = decode_into_(model, f, where)
    if not trainable and runtime is None:  # no pruned layer the sparse kernel could run: plain dense weights
        strip(model).eval().requires_grad_(False)
    say("decoded the tensors", "masks and codebooks as parametrizations" if trainable else
        "plain dense weights" if runtime is None else "")
    if runtime == "shrunk":
        from ..techniques.shrink import shrink_

        shrink_(model)
        say("shrunk", "")
    return model


#: :func:`load`'s default: a pruned layer runs sparse when that measured at most this fraction of its dense time.
DEFAULT_MARGIN = 0.8
#: ... and the whole model (when deepzip knows an input for it: the registry's models) must then run in at most this
#: fraction of its all-dense time, else every layer stays dense.
DEFAULT_WHOLE = 0.95


def _sparse_weights(f: DzFile) -> bool:
    """Whether the file holds a float32 weight stored sparse (kept entries + positions): one the runtime may run
    sparse, which :func:`load` then times against dense."""
    dtypes = f.extra.get("dtypes", {}) if isinstance(f.extra, dict) else {}
    return any(e.kind == "sparse" and k.endswith(".weight") and dtypes.get(k, e.dtype) == "float32"
               for k, e in f.tensors.items())


class _Phases:
    """Prints ``deepzip.load FILE: PHASE (DETAIL) in S s`` on stderr for each phase of loading, when asked."""

    def __init__(self, name: str, on: bool) -> None:
        self.name, self.on = name, on
        self.t = time.perf_counter()

    def __call__(self, phase: str, detail: str = "") -> None:
        now = time.perf_counter()
        if self.on:
            more = f" ({detail})" if detail else ""
            print(f"load {self.name}: {phase}{more} in {now - self.t:.2f} s", file=sys.stderr, flush=True)
        self.t = now


def _rebuild_layers_(model: nn.Module, f: DzFile, where: str) -> None:
    """Put the parametrizations the file records (``extra.layers``) back on ``model``'s layers, whose tensors are
    already the file's (a folder's model, built by its own library): each rebuilt from the stored parts."""
    modules = dict(model.named_modules())
    for key, kind in _layer_kinds(f).items():
        rebuild = LAYER_KINDS[kind].rebuild
        if rebuild is None:
            continue
        module, tname = _split_key(key, modules)
        if module is None or not isinstance(getattr(module, tname, None), torch.Tensor):
            raise CheckpointError(f"{where}{key}: a {kind} layer of the file that the model does not have")
        try:
            rebuild(module, tname, f, key)
        except ValueError as exc:
            raise DeepzipFormatError(f"{where}{key}: {exc}") from None
