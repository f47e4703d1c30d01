"""The one checkpoint reader: every command and function that takes a model file reads it here.

What it reads (recognised by content; where the content is not recognised, by the name's suffix, so that the reader
of that kind names the fault):

- ``dz``: a ``.dz`` file (:func:`deepzip.save`, ``deepzip compress``), loaded by :func:`deepzip.io.serialize.load`;
- ``deepzip``: a deepzip checkpoint (safetensors whose metadata says ``format=deepzip-checkpoint``: masks, codebooks,
  factored layers and the architecture's name, :mod:`deepzip.io.checkpoint`);
- ``safetensors``: any other safetensors file, a state_dict (e.g. ``safetensors.torch.save_file(model.state_dict(),
  path)``, metadata ``{"format": "pt"}``);
- ``state_dict``: a ``torch.save(model.state_dict(), path)`` file, read with ``torch.load(weights_only=True)``;
- ``hf``: a Hugging Face model folder (config.json and weights).

Every kind gets the same checks: sizes bounded before anything is allocated (``max_bytes``, the file's own length),
no pickle beyond ``weights_only``, no code imported unless ``trust_code`` (a file naming ``package.module:factory``),
and the tensors checked against the model, the first one that does not fit named in one line. A plain state_dict
names no architecture: the caller gives the model (CLI: ``--model NAME``).

Example:
    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from deepzip.models import get_model
    >>> path = os.path.join(tempfile.mkdtemp(), "plain.safetensors")
    >>> save_file(get_model("lenet300").state_dict(), path, metadata={"format": "pt"})
    >>> checkpoint_kind(path)
    'safetensors'
    >>> model, meta = load_model(path, get_model("lenet300", seed=1))
    >>> bool(torch.equal(model.fc1.weight, get_model("lenet300").fc1.weight)), meta
    (True, {})
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..codec import DzFile
from ..codec._tensor import DEFAULT_MAX_BYTES
from ..codec.container import MAGIC
from ..codec.fileinfo import read_dz
from ..errors import CheckpointError, LowRankError, UntrustedCodeError
from ..models import MODELS, get_model, load_apps
from ..techniques.lowrank import rebuild_
from ..techniques.prune import remove_parametrization_
from ..techniques.shrink import resize_
from . import foreign
from .checkpoint import checkpoint_records, is_deepzip_checkpoint, unpack_layers_
from .serialize import check_file_fits, fit_problem  # the one "does not fit" check and wording
from .torchfile import read_torch_state_dict

__all__ = [
    "ACCEPTED", "KINDS", "architecture_of", "checkpoint_kind", "fit_problem", "fit_tensors_", "hf_build",
    "hf_config_class", "hf_tokenizer", "load_model",
    "read_hf_folder", "read_safetensors", "read_tensors", "safetensors_metadata",
]

#: The kinds of file :func:`load_model` reads, and how each is called in messages.
KINDS: dict[str, str] = {
    "dz": "a .dz file",
    "deepzip": "a deepzip checkpoint",
    "safetensors": "a safetensors state_dict",
    "state_dict": "a torch state_dict file",
    "hf": "a Hugging Face model folder",
}
#: What a file of no known kind is told.
ACCEPTED = ("a .dz file, a safetensors file (a deepzip checkpoint or any state_dict), a torch.save(state_dict) file "
            "(read with weights_only=True) or a Hugging Face model folder (config.json and weights)")

_SUFFIXES = {".dz": "dz", ".safetensors": "safetensors", ".pt": "state_dict", ".pth": "state_dict",
             ".bin": "state_dict"}


def checkpoint_kind(path: str | os.PathLike[str]) -> str:
    """Which of :data:`KINDS` ``path`` is (``deepzip`` and ``safetensors`` told apart by the metadata).

    Raises:
        CheckpointError: no such file or folder; a folder without config.json; a file of no kind deepzip reads (the
            message lists those it reads); a legacy (pre-1.6, not zip) torch file.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise CheckpointError(f"{p}: a folder without config.json; deepzip reads {ACCEPTED}")
        return "hf"
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint (no such file or folder)")
    try:
        with open(p, "rb") as f:
            head = f.read(9)
        size = p.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if head.startswith(MAGIC):
        return "dz"
    # A safetensors file opens with its header's length (u64, little-endian) and the header's "{": any first byte
    # is possible there (0x80, "P" included), so recognise it before guessing at other formats.
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "deepzip" if is_deepzip_checkpoint(safetensors_metadata(p)) else "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "state_dict"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(f"{p}: a legacy (pre-1.6, not zip) torch.save file, whose sizes cannot be checked "
                              "before torch allocates them; re-save it with torch.save(torch.load(path, "
                              "weights_only=True), path)")
    kind = _SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise CheckpointError(f"{p}: not a file deepzip reads (it begins {head[:8]!r}); deepzip reads {ACCEPTED}")
    if kind == "safetensors":  # not recognised as one: its reader says what is wrong with it
        foreign.read_safetensors_header(p)
    return kind


def read_tensors(
    path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of any kind of checkpoint, nothing built: a deepzip checkpoint's compact parts as
    stored, a ``.dz`` file's tensors decoded (metadata: its ``arch``), a folder's weights (metadata: its
    ``architectures[0]`` as ``hf_arch``).

    Raises:
        CheckpointError / DeepzipFormatError: as :func:`checkpoint_kind`, or a damaged, truncated or too large file.
    """
    p = Path(path)
    kind = checkpoint_kind(p)
    if kind == "dz":
        from .serialize import load_state_dict

        arch = _dz_header(p, max_bytes).architecture
        return load_state_dict(p, max_bytes=max_bytes), {"arch": arch} if arch else {}
    if kind in ("deepzip", "safetensors"):
        return read_safetensors(p, max_bytes)
    if kind == "state_dict":
        return read_torch_state_dict(p, max_bytes), {}
    sd, config = read_hf_folder(p, max_bytes=max_bytes)
    archs = config.get("architectures") or []
    return sd, {"hf_arch": str(archs[0])} if archs else {}


def architecture_of(path: str | os.PathLike[str]) -> str | None:
    """The architecture a file names (``.dz`` header, deepzip checkpoint metadata, a folder's config.json
    ``architectures[0]`` as ``"hf:Name"``), read without building or decoding anything; None for a plain state_dict.
    """
    p = Path(path)
    kind = checkpoint_kind(p)
    if kind == "dz":
        return _dz_header(p, None).architecture or None
    if kind == "deepzip":
        return safetensors_metadata(p).get("arch") or None
    if kind == "hf":
        archs = _hf_config(p).get("architectures") or []
        return f"hf:{archs[0]}" if archs else None
    return None


def load_model(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    trust_code: bool = False,
    rebuild: bool = False,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    trainable: bool = True,
    progress: bool = False,
) -> tuple[nn.Module, dict]:
    """Load any checkpoint (see :data:`KINDS`) into ``model``, or into a fresh model of the architecture the file
    names; returns ``(model, meta)`` (``meta``: a deepzip checkpoint's free-form record, else ``{}``).

    Args:
        path: the file or folder.
        model: the model to load into (a plain state_dict names no architecture: then it is needed).
        trust_code: build an architecture the file names as ``"package.module:factory"`` (runs that module's code).
        rebuild: a deepzip checkpoint's factored layers replace ``model``'s dense ones (else ``model`` must already
            have them); a model built here always gets them.
        max_bytes: the most bytes the file's tensors may take (default 1 GiB), checked before any is allocated;
            None: no limit.
        trainable: a ``.dz`` file's masks and codebooks as parametrizations, to retrain and save again (default,
            what the commands that change a model need); False: the form :func:`deepzip.load` gives for inference
            (each pruned layer sparse or dense, whichever runs faster). Other kinds hold plain tensors either way.
        progress: a ``.dz`` file's loading phases and their times on stderr (see :func:`deepzip.load`).

    Raises:
        CheckpointError: a missing, foreign, damaged or too large file; a file of no kind deepzip reads; a file
            naming no architecture without ``model``; tensors that do not fit (the first one named).
        DeepzipFormatError: a damaged ``.dz`` file.
        UntrustedCodeError: the file names ``"package.module:factory"`` and neither ``model`` nor ``trust_code``.
        LowRankError: a ``.dz`` holds factored layers the given model lacks.
    """
    p = Path(path)
    kind = checkpoint_kind(p)
    where = str(p)
    if kind == "dz":
        return _load_dz(p, model, trust_code=trust_code, max_bytes=max_bytes, trainable=trainable,
                        progress=progress), {}
    if kind == "hf":
        sd, config = read_hf_folder(p, max_bytes=max_bytes)
        if model is None:
            if not config.get("architectures") and not config.get("model_type"):
                _build("", kind, trust_code, where)  # says: give the model
            return hf_build(config, lambda: sd, where=where), {}
        return fit_tensors_(model, sd, where), {}
    metadata: dict[str, str] = {}
    if kind == "state_dict":
        tensors = read_torch_state_dict(p, max_bytes)
    else:
        tensors, metadata = read_safetensors(p, max_bytes)
    layers: dict = {}
    meta: dict = {}
    spec: list = []
    if kind == "deepzip":
        layers, meta, spec = checkpoint_records(metadata, where)
    given = model is not None
    if model is None:
        model = _build(metadata.get("arch") or "", kind, trust_code, where)
    if spec:
        try:
            rebuild_(model, spec, swap=rebuild or not given)
        except LowRankError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
    if kind == "deepzip" and "widths" in metadata:  # a shrunk model: the layers' widths (a width may only shrink)
        try:
            resize_(model, json.loads(metadata["widths"]), f"{where}: ")
        except ValueError as exc:
            raise CheckpointError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    unpack_layers_(model, tensors, layers, where)
    return fit_tensors_(model, tensors, where), meta


def fit_tensors_(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str = "") -> nn.Module:
    """Load a plain state_dict into ``model`` in place after checking that every name and shape fits; returns it.

    A layer whose weight is parametrized (a mask, a codebook) and which the state_dict holds as a plain tensor
    becomes a plain layer with that tensor.

    Raises:
        CheckpointError: one line naming the first tensor (in the model's order) that is missing or of another shape,
            else the first the model does not have, with the counts of each.
    """
    for mname, module in model.named_modules():
        for tname in list(getattr(module, "parametrizations", {}) or {}):
            if f"{mname}.{tname}" in tensors or (not mname and tname in tensors):
                remove_parametrization_(module, leave_parametrized=True, tensor=tname)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if ".parametrizations." not in k}
    theirs = {k: tuple(v.shape) for k, v in tensors.items()}
    problem = fit_problem(own, theirs, model)
    if problem:
        raise CheckpointError(f"{where}: {problem}" if where else problem)
    model.load_state_dict(dict(tensors), strict=False)
    return model


# ---------------------------------------------------------------------------------------------------- files
def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (strings to strings; ``{}`` without), its header bounds checked."""
    _, header, _ = foreign.read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path}: __metadata__ is not a map of strings to strings")
    return meta


def read_safetensors(path: Path, max_bytes: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file (any producer) and its metadata, with the bounds of
    :func:`deepzip.io.foreign.read_safetensors_header` and at most ``max_bytes`` of tensor data (None: no limit)
    checked before anything is allocated.

    Raises:
        CheckpointError: not safetensors, truncated, an unsupported dtype, or more data than ``max_bytes``.
    """
    _, header, _ = foreign.read_safetensors_header(path)
    meta = safetensors_metadata(path)
    data = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    if max_bytes is not None and data > max_bytes:
        raise CheckpointError(f"{path}: its tensors hold {data} bytes, more than the limit of {max_bytes} "
                              f"(max_bytes; CLI --max-bytes)")
    tensors = {name: foreign.numpy_to_tensor(arr, dtype) for name, arr, dtype, _ in foreign._iter_safetensors(path)}
    order = [k for k in header if k != "__metadata__"]  # the header's order, not the data's
    return {k: tensors[k] for k in order}, meta


def read_hf_folder(
    path: str | os.PathLike[str], *, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, config)`` of a Hugging Face model folder: every weight file's tensors (read as
    :func:`read_safetensors` and :func:`deepzip.io.torchfile.read_torch_state_dict` read them, ``max_bytes``
    bounding them all together) and its config.json.

    Raises:
        CheckpointError: see :func:`deepzip.io.foreign.open_source`; a bad config.json; a weight file as those
            readers refuse it.
    """
    source = foreign.open_source(path)
    if source.kind != "hf":
        raise CheckpointError(f"{path}: not a Hugging Face model folder")
    config = _hf_config(source.root)
    sd: dict[str, torch.Tensor] = {}
    left = max_bytes
    for rel in source.weights:
        if "/" in rel:  # a sentence-transformers module's weights (Dense, ...): not the transformer's own
            continue
        wpath = source.path(rel)
        part = (read_safetensors(wpath, left)[0] if rel.endswith(".safetensors")
                else read_torch_state_dict(wpath, left))
        if left is not None:
            left -= sum(t.numel() * t.element_size() for t in part.values())
        sd.update(part)
    return sd, config


def hf_config_class(config: dict[str, Any], where: str = "") -> Any:
    """The transformers config object of a config.json's contents (``AutoConfig``, never remote code).

    Raises:
        CheckpointError: transformers missing, or a config it does not read (one line).
    """
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{where}: rebuilding a Hugging Face model needs transformers "
                              f"(pip install 'deepzip[hf]')") from None
    try:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "config.json").write_text(json.dumps(config))
            return transformers.AutoConfig.from_pretrained(d, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{where}: config.json is not a config transformers reads ({msg[:200]})") from None


def hf_build(
    config: dict[str, Any], state_dict: Any, *, where: str = ""
) -> torch.nn.Module:
    """The transformers model ``config`` names (``architectures[0]``, looked up in the installed ``transformers``,
    never code from a file; ``trust_remote_code`` is never set; a config naming none gives the base model of its
    ``model_type``, as ``transformers.AutoModel`` builds it), loaded with ``state_dict()`` (a callable, called once
    the class is known).

    Raises:
        CheckpointError: transformers missing; a model class or model type the installed transformers lacks (naming
            it and the installed version); tensors that do not fit the model (naming the first of them).
    """
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{where}: rebuilding a Hugging Face model needs transformers "
                              f"(pip install 'deepzip[hf]')") from None
    archs = config.get("architectures") or []
    if archs and not isinstance(archs[0], str):
        raise CheckpointError(f"{where}: config.json architectures[0] is {archs[0]!r}, not a class name")
    cls = getattr(transformers, archs[0], None) if archs else None
    if archs and not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise CheckpointError(f"{where}: config.json names the model class {archs[0]}, which the installed "
                              f"transformers {transformers.__version__} does not have; upgrade transformers, or give "
                              "the architecture as --model file.py:factory")
    cfg = hf_config_class(config, where)

    def build() -> torch.nn.Module:  # no architectures: the base model of its model_type, as AutoModel builds it
        return cls(cfg) if cls is not None else transformers.AutoModel.from_config(cfg)

    sd = state_dict()
    with torch.device("meta"):  # no memory: a config describing more than the file holds is refused unbuilt
        skeleton = build()
    name = archs[0] if archs else type(skeleton).__name__
    need = sum(p.numel() for p in skeleton.parameters())
    have = sum(t.numel() for t in sd.values())
    if need > have:
        raise CheckpointError(f"{where}: config.json describes a {name} of {need:,} parameters, the file holds "
                              f"{have:,} values")
    model = build()
    own = model.state_dict()
    buffers = dict(model.named_buffers())  # non-persistent buffers (position_ids) that older files still carry
    for k in [k for k in sd if k not in own and k in buffers]:
        del sd[k]
    # the file may lack tensors the model ties to others (an output head): those are checked after tie_weights
    problem = fit_problem({k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in sd.items()},
                          what=name, missing_ok=True)
    if problem:
        raise CheckpointError(f"{where}: {problem}")
    model.load_state_dict(sd, strict=False)
    with contextlib.suppress(AttributeError):
        model.tie_weights()
    now = model.state_dict()
    loaded = {now[k].data_ptr() for k in sd if k in now and now[k].numel()}
    missing = sorted(k for k in set(own) - set(sd) if now[k].numel() and now[k].data_ptr() not in loaded)
    if missing:
        raise CheckpointError(f"{where}: does not fit {name}: {missing[0]} is missing from the file "
                              f"({len(missing)} such tensors)")
    dtype = {v.dtype for v in sd.values() if v.is_floating_point()}
    if len(dtype) == 1:
        model.to(dtype.pop())
    return model.eval()


def hf_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer of a Hugging Face model folder (``transformers.AutoTokenizer``, local files only, no code from
    the folder), or None when the folder has none (no tokenizer files, or none the installed transformers reads)."""
    p = Path(path)
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                                            "spiece.model", "sentencepiece.bpe.model")):
        return None
    try:
        import transformers
    except ImportError:
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(str(p), local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError, KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------------- helpers
def _build(arch: str, kind: str, trust_code: bool, where: str) -> nn.Module:
    """A fresh model of the architecture a file names (``package.module:factory`` only with ``trust_code``)."""
    if not arch:
        load_apps()
        raise CheckpointError(f"{where}: {KINDS[kind]} that names no architecture; give --model NAME (one of "
                              f"{', '.join(MODELS)}, or package.module:factory) or, in Python, model=")
    try:
        return get_model(arch, trust_code=trust_code)
    except UntrustedCodeError as exc:
        raise UntrustedCodeError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def _dz_header(p: Path, max_bytes: int | None) -> DzFile:
    """A ``.dz`` file read and checked as :func:`deepzip.io.serialize.load` reads it (nothing decoded yet)."""
    return read_dz(p, max_bytes=max_bytes)


def _hf_config(p: Path) -> dict:
    """A folder's config.json, a JSON object."""
    try:
        config = json.loads((p / "config.json").read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{p / 'config.json'}: not JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{p / 'config.json'}: not a JSON object")
    return config


def _load_dz(p: Path, model: nn.Module | None, *, trust_code: bool, max_bytes: int | None,
             trainable: bool = True, progress: bool = False) -> nn.Module:
    from .serialize import load

    r = _dz_header(p, max_bytes)
    extra = r.extra if isinstance(r.extra, dict) else {}
    rec = extra.get("checkpoint")
    hf = isinstance(rec, dict) and rec.get("kind") == "hf"
    if model is None and not r.architecture and not hf:
        _build("", "dz", trust_code, str(p))
    if model is not None and not extra.get("lowrank") and "widths" not in extra:
        # (factored or shrunk files: load() checks the structure, by layer, after rebuilding it)
        check_file_fits(r, model, f"{p}: ")  # the bridge's check, before anything is decoded
    return load(p, model, trust_code=trust_code, max_bytes=max_bytes, trainable=trainable, progress=progress)
