"""The Deep Compression recipe as resumable stages: prune -> retrain -> share weights -> fine-tune -> encode.

One dataclass, :class:`PipelineConfig`, drives it; it round-trips through JSON and is stored in the ``.dz`` header.
Each stage writes a checkpoint to the work folder keyed by the config that produced it, so a rerun resumes after
the last finished stage and yields the same file. Per-layer settings left unset are chosen by sensitivity scans on
a fixed subset of 5,000 training images (never the test set; the model has seen them, so the scans measure
how much each layer's weights matter to the fit, not generalisation): sparsities split an overall target between
layers by how much each layer tolerates (:func:`deepzip.techniques.prune.allocate_sparsities`), bits are the fewest
per layer
that keep the subset's loss within a tolerance.

One driver, :func:`compress_`, for any ``nn.Module`` with your own training loop (you pass ``retrain(model, stage)``);
:func:`deepzip.apps.mnist.pipeline.run_pipeline` is that driver with the MNIST recipe's retraining and figures plus
the file, as ``deepzip compress`` does.

Example (your own loop):
    >>> from deepzip.models import get_model
    >>> m = get_model("lenet300")
    >>> cfg = PipelineConfig(sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.7}, bits=5)
    >>> _ = compress_(m, cfg, retrain=lambda model, stage: None)
    >>> round(float((m.fc1.weight == 0).float().mean()), 2)
    0.9
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from . import codec
from .codec.fileinfo import file_report
from .errors import CheckpointError, LowRankError
from .io.checkpoint import load_checkpoint, save_checkpoint
from .io.serialize import encode_model
from .models import model_name
from .techniques.lowrank import (
    choose_ranks,
    convs_and_linears,
    convs_only,
    factorize_,
    lowrank_spec,
    lowrank_table,
    rebuild_,
)
from .techniques.prune import (
    SCAN_SPARSITIES,
    allocate_sparsities,
    clone_model,
    get_mask,
    iterative_prune_,
    prunable_layers,
    prunable_tensors,
    prune_,
    resolve_layer,
    sensitivity_scan,
    set_mask_,
)
from .techniques.share import resolve_bits, round_centroids_, share_biases_, share_weights_, sharing_table
from .techniques.shrink import architecture_widths, resize_, shrink_

__all__ = ["STAGES", "PipelineConfig", "StageStore", "compress_", "file_report"]

STAGES = ("decompose", "vd", "prune", "share", "encode")
#: ``PipelineConfig.decompose`` values: which layers the decompose stage factors.
DECOMPOSE = ("tucker2", "svd", "tucker2+svd", "tt")
#: ``PipelineConfig.sparsifier`` values: how the prune stage chooses the weights to remove.
SPARSIFIERS = ("magnitude", "vd")
CONFIG_VERSION = 1
#: Part of every stage key: bump it when a change to deepzip makes a stage produce something else from the same
#: config and model (2: sparsity allocation stops exactly at the target), so old stage checkpoints are not resumed.
STAGE_REVISION = 2


@dataclass
class PipelineConfig:
    """Everything that decides the compressed file. ``None`` means "choose it" (by scan or per-model recipe).

    Example:
        >>> cfg = PipelineConfig(bits={"fc1": 5}, target_sparsity=0.93)
        >>> PipelineConfig.from_json(cfg.to_json()) == cfg
        True
    """

    version: int = CONFIG_VERSION
    model: str = "lenet300"
    # low-rank decomposition before pruning (None: no such stage); prune -> share -> Huffman then act on the factors
    decompose: str | None = None  # "tucker2" (convs), "svd" (linear layers), "tucker2+svd", "tt" (both, TT)
    decompose_ranks: str | dict[str, Any] = "vbmf"  # "vbmf", "energy=0.9", or {layer: r or [R_out, R_in]}
    decompose_epochs: int | None = None  # fine-tuning after it; None: the model's retraining recipe
    # pruning
    sparsity: dict[str, float] | None = None  # per layer; None: sensitivity scan split of target_sparsity
    target_sparsity: float = 0.93
    prune_rounds: int = 3
    retrain_epochs: int | None = None  # per round; None: the model's recipe
    retrain_lr: float | None = None
    # weight sharing
    bits: dict[str, int] | int | str | None = None  # None: fewest bits per layer within bits_tolerance
    bits_choices: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    bits_tolerance: float = 0.02  # relative rise of the scan loss a layer's bits may cause, before fine-tuning
    init: str = "linear"
    finetune_epochs: int | None = None
    finetune_lr: float | None = None  # None: the model's recipe (lower than retraining: centroid grads are sums)
    jitter: int | None = None  # pixels of input shift while retraining and fine-tuning; None: the model's recipe
    # distillation as the retraining loss
    distill: bool = False
    temperature: float = 4.0
    alpha: float = 0.7
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # the sparsifier of the prune stage: "magnitude" (pruning with retraining rounds, the fields above) or "vd"
    # (sparse variational dropout, deepzip.techniques.vd, then one retraining round with the masks it found).
    # The vd_* fields are written (file header, stage keys) only when sparsifier is "vd", so the files and resumed
    # stages of magnitude configs are what they were before the field existed.
    sparsifier: str = "magnitude"
    vd_epochs: int = 30
    vd_lr: float = 1e-3
    vd_kl_warmup: float = 1.0  # epochs with the KL term off, then a linear ramp to weight 1 ...
    vd_kl_ramp_end: float = 6.0  # ... reached at this epoch
    vd_kl_scale: float = 1.0  # the KL term's final weight: 1 is the variational bound; > 1 trades error for sparsity
    vd_threshold: float = 3.0  # log alpha above which a weight is pruned
    # with shrink: every this many epochs of VD training, remove the neurons and filters VD has left without inputs
    # or readers (deepzip.techniques.vd.shrink_vd_), so the rest of the training runs on a smaller model: LeNet-5's
    # epochs get ~3x faster once VD has pruned most filters. 0: train the whole model throughout. Written only when set.
    vd_shrink_every: int = 0
    # after fine-tuning, round the compressed layers' biases to float16 values (the file then stores them in 16
    # bits: at < 1% density the 32-bit biases are a large share of the file). Written only when set.
    bias_float16: bool = False
    # after fine-tuning, round the shared layers' centroids to float16 values: the file then stores each codebook in
    # 16 bits and its Huffman streams with short headers (format 1.4; ~40 B per layer). Written only when set.
    centroids_float16: bool = False
    # at the share stage, also weight-share the biases of the compressed layers (2**bias_bits k-means centroids each,
    # fine-tuned with the weights' centroids; biases of fewer than 2**(bias_bits+1) units stay plain). None: plain
    # biases. Written only when set.
    bias_bits: int | None = None
    # after the prune stage, remove the neurons and filters pruning left without inputs or readers (deepzip's
    # shrink_: constant units folded into the next layer's bias), so the file stores a smaller dense-shaped model
    # and its position codes run over the live units only; the file records the widths. Written only when set.
    shrink: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits_choices, list):
            self.bits_choices = tuple(self.bits_choices)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.sparsifier == "magnitude":
            d = {k: v for k, v in d.items() if k != "sparsifier" and not k.startswith("vd_")}
        if not self.bias_float16:
            d.pop("bias_float16")
        if not self.centroids_float16:
            d.pop("centroids_float16")
        if self.bias_bits is None:
            d.pop("bias_bits")
        if not self.shrink:
            d.pop("shrink")
        if not self.vd_shrink_every:
            d.pop("vd_shrink_every", None)
        d["bits_choices"] = list(self.bits_choices)
        return d

    def to_file_dict(self) -> dict[str, Any]:
        """What a ``.dz`` file's header records: ``version``, ``model`` and the fields that differ from their
        defaults (:meth:`from_dict` fills the rest back in, so the config round-trips). A few hundred bytes less
        than :meth:`to_dict`: at LeNet-5's 2-3 KB files that is a tenth of the file.

        Example:
            >>> PipelineConfig(model="lenet5", bits=4).to_file_dict()
            {'version': 1, 'model': 'lenet5', 'bits': 4}
        """
        defaults = asdict(PipelineConfig())
        defaults["bits_choices"] = list(PipelineConfig().bits_choices)
        return {k: v for k, v in self.to_dict().items() if k in ("version", "model") or defaults.get(k) != v}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config.{unknown[0]}: unknown field; known: {', '.join(sorted(known))}")
        version = d.get("version", CONFIG_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"config.version: {version!r}, expected an integer")
        if version > CONFIG_VERSION:
            raise ValueError(f"config.version: {version} is newer than this deepzip ({CONFIG_VERSION})")
        try:
            config = cls(**d)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config: {exc}") from None
        config.validate()  # wrong types and ranges name the field here, not as a TypeError later
        return config

    @classmethod
    def from_json(cls, text: str) -> PipelineConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"config: not valid JSON ({exc})") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PipelineConfig:
        return cls.from_json(Path(path).read_text())

    def validate(self, model: nn.Module | None = None) -> None:
        """Check every field (and layer names against ``model``) before any work; errors name the field."""
        def bad(name: str, value: Any, expect: str) -> ValueError:
            return ValueError(f"config.{name}: {value!r}, expected {expect}")

        def frac(name: str, v: Any) -> None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise bad(name, v, "a fraction in [0, 1]")

        def pos_int(name: str, v: Any, allow_none: bool = True, minimum: int = 1) -> None:
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise bad(name, v, f"an integer >= {minimum}")

        frac("target_sparsity", self.target_sparsity)
        self._validate_decompose(model)
        if self.decompose is not None:
            model = None  # layer names below refer to the factored model: checked once it exists
        frac("alpha", self.alpha)
        pos_int("prune_rounds", self.prune_rounds, False)
        pos_int("retrain_epochs", self.retrain_epochs, minimum=0)
        pos_int("finetune_epochs", self.finetune_epochs, minimum=0)
        pos_int("jitter", self.jitter, minimum=0)
        for name in ("retrain_lr", "finetune_lr", "temperature"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise bad(name, v, "a positive number")
        for name in ("bias_float16", "centroids_float16"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, getattr(self, name), "true or false")
        if not isinstance(self.shrink, bool):
            raise bad("shrink", self.shrink, "true or false")
        if self.sparsifier not in SPARSIFIERS:
            raise bad("sparsifier", self.sparsifier, " or ".join(repr(s) for s in SPARSIFIERS))
        pos_int("vd_epochs", self.vd_epochs, False)
        pos_int("vd_shrink_every", self.vd_shrink_every, False, minimum=0)
        pos_int("bias_bits", self.bias_bits)
        if self.bias_bits is not None and self.bias_bits > 16:
            raise bad("bias_bits", self.bias_bits, "an integer in 1..16")
        if self.vd_shrink_every and not self.shrink:
            raise bad("vd_shrink_every", self.vd_shrink_every, "0 unless shrink is true (it makes the model smaller)")
        for name in ("vd_lr", "vd_kl_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise bad(name, v, "a positive number")
        for name in ("vd_kl_warmup", "vd_kl_ramp_end", "vd_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, v, "a finite number")
        if not 0 <= self.vd_kl_warmup <= self.vd_kl_ramp_end:
            raise bad("vd_kl_warmup", self.vd_kl_warmup, f"0 <= vd_kl_warmup <= vd_kl_ramp_end ({self.vd_kl_ramp_end})")
        if self.init not in ("linear", "density", "random"):
            raise bad("init", self.init, "'linear', 'density' or 'random'")
        if not isinstance(self.bits_choices, (tuple, list)) or not self.bits_choices or any(
                isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16 for b in self.bits_choices):
            raise bad("bits_choices", self.bits_choices, "a list of integers in 1..16")
        # layers, and the tensors of layers with several (an RNN's matrices, a TT layer's cores "fc1.cores.0")
        layers = {**prunable_layers(model), **prunable_tensors(model)} if model is not None else None
        if self.sparsity is not None:
            if not isinstance(self.sparsity, dict):
                raise bad("sparsity", self.sparsity, "a map of layer names to fractions")
            for k, v in self.sparsity.items():
                if layers is not None:
                    _config_layer(k, layers, "sparsity")
                frac(f"sparsity.{k}", v)
        if self.bits is not None:
            items = self.bits.items() if isinstance(self.bits, dict) else [("", self.bits)]
            for k, v in items:
                path = f"bits.{k}" if k else "bits"
                if k and k != "default" and layers is not None:
                    _config_layer(k, layers, "bits")
                if isinstance(v, str):
                    parts = v.split("/")
                    ok = len(parts) == 2 and all(p.isdigit() and 1 <= int(p) <= 16 for p in parts)
                    if not ok:
                        raise bad(path, v, "bits in 1..16 or a preset like '8/5'")
                elif isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 16:
                    raise bad(path, v, "bits in 1..16")
            if model is not None:
                resolve_bits(model, self.bits)

    def decompose_settings(self) -> tuple[str, float, dict[str, Any] | None]:
        """``decompose_ranks`` as (method, energy, explicit ranks or None) for
        :func:`deepzip.techniques.lowrank.choose_ranks`.

        Example:
            >>> PipelineConfig(decompose="tucker2", decompose_ranks="energy=0.8").decompose_settings()
            ('energy', 0.8, None)
        """
        r = self.decompose_ranks
        if isinstance(r, dict):
            return "vbmf", 0.9, {k: tuple(v) if isinstance(v, list) else v for k, v in r.items()}
        if r == "vbmf":
            return "vbmf", 0.9, None
        try:
            if isinstance(r, str) and r.startswith("energy="):
                return "energy", float(r[7:]), None
        except ValueError:
            pass
        raise ValueError(f"config.decompose_ranks: {r!r}, expected 'vbmf', 'energy=F' or a map of layer ranks")

    def _validate_decompose(self, model: nn.Module | None) -> None:
        if self.decompose is None:
            return
        if self.decompose not in DECOMPOSE:
            raise ValueError(f"config.decompose: {self.decompose!r}, expected null or one of {', '.join(DECOMPOSE)}")
        v = self.decompose_epochs
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"config.decompose_epochs: {v!r}, expected an integer >= 0")
        method, energy, ranks = self.decompose_settings()
        if model is not None:  # names, kinds and sizes of explicit ranks, energy range: without computing factors
            try:
                tt = "tt" if self.decompose == "tt" else None
                choose_ranks(model, method, energy=energy, ranks=ranks, filter_fn=lambda m, fqn: False,
                             conv_factorization=tt or "tucker2", linear_factorization=tt or "svd")
            except ValueError as exc:  # LowRankError, or an unknown layer name
                raise LowRankError(f"config.decompose_ranks: {exc}") from None

    def stage_key(self, stage: str, source: str) -> str:
        """A hash of the fields that decide ``stage``'s output (and of the input model), for resuming."""
        d = self.to_dict()
        if self.decompose is None:  # keys of configs without the stage stay what they were before it existed
            d = {k: v for k, v in d.items() if not k.startswith("decompose")}
        share_fields = ("bits", "bits_choices", "bits_tolerance", "init", "finetune_epochs", "finetune_lr",
                        "centroids_float16", "bias_bits")  # none of them changes the prune stage
        if stage == "decompose":
            keep = ("version", "model", "seed", "jitter", "distill", "temperature", "alpha", "retrain_lr")
            d = {k: v for k, v in d.items() if k.startswith("decompose") or k in keep}
        elif stage == "vd":  # sparse variational dropout from the trained model: its own fields only
            own = ("version", "model", "seed", "jitter", "sparsifier")
            d = {k: v for k, v in d.items() if k.startswith("vd_") or k in own}
        elif stage == "prune":
            d = {k: v for k, v in d.items() if k not in share_fields}
        d["_source"] = source
        d["_revision"] = STAGE_REVISION
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _config_layer(key: str, layers: dict[str, nn.Module], field: str) -> str:
    try:
        return resolve_layer(key, layers, field)
    except ValueError as exc:
        raise ValueError(f"config.{field}.{exc}") from None


# ------------------------------------------------------------------------------------------------ resumable stages
class StageStore:
    """Checkpoints of finished stages in a folder, each keyed by the config fields that decide it and the input
    model (``source``), so a rerun resumes after the last finished stage and an edited config starts afresh.

    Example:
        >>> import tempfile
        >>> from deepzip.models import get_model
        >>> store = StageStore(tempfile.mkdtemp(), PipelineConfig(), source="x")
        >>> store.resume_("prune", get_model("lenet300")) is None  # nothing saved yet
        True
    """

    def __init__(self, workdir: str | os.PathLike[str], config: PipelineConfig, source: str = "") -> None:
        self.workdir, self.config, self.source = Path(workdir), config, source

    def path(self, stage: str) -> Path:
        return self.workdir / f"{stage}.safetensors"

    def save(self, stage: str, model: nn.Module, info: dict[str, Any]) -> None:
        save_checkpoint(model, self.path(stage), meta={"stage_key": self.config.stage_key(stage, self.source),
                                                       "info": info})

    def resume_(self, stage: str, model: nn.Module) -> dict[str, Any] | None:
        """Load ``stage``'s checkpoint into ``model`` in place when its key matches; returns its info, else None."""
        path = self.path(stage)
        if not path.exists():
            return None
        try:  # rebuild=True: a stage after decomposition holds factored layers the fresh model may not have yet
            # its own stage file, as large as the model: no decode limit (a large model would re-run every stage)
            loaded, meta = load_checkpoint(path, copy.deepcopy(_fresh_like(model)), rebuild=True, max_bytes=None)
        except CheckpointError:
            return None  # another structure: from another config, so not ours to resume
        if meta.get("stage_key") != self.config.stage_key(stage, self.source):
            return None
        # The checkpoint rebuilds masks/codebooks as parametrizations on a fresh model; make `model` that model,
        # so compress_ stays in place for its caller (references to its old submodules go stale).
        model.__dict__.update(loaded.__dict__)
        return dict(meta.get("info") or {})


# --------------------------------------------------------------------------------------------- the API for any model
def compress_(
    model: nn.Module,
    config: PipelineConfig,
    retrain: Callable[[nn.Module, str], Any],
    *,
    error_fn: Callable[[nn.Module], float] | None = None,
    progress: bool = False,
    stages: StageStore | None = None,
    measure: Callable[[nn.Module, str], dict[str, Any]] | None = None,
    info: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """Prune, retrain, share and fine-tune ``model`` in place with your own training loop; returns ``model``.

    ``retrain(model, stage)`` is called after each pruning round (``stage="prune"``) and after sharing
    (``stage="share"``); train as you like (even under DistributedDataParallel). Unset per-layer settings need
    ``error_fn(model) -> float`` (lower is better; a loss works better than an error rate) for the scans. Then
    ``deepzip.save(model, path)``.

    With ``config.decompose`` set, a decompose stage comes first: the layers it names are replaced by their
    low-rank factors (:func:`deepzip.techniques.lowrank.choose_ranks` then
    :func:`deepzip.techniques.lowrank.factorize_`) and
    ``retrain(model, "decompose")`` fine-tunes them; pruning, sharing and Huffman coding then act on the factors, and
    :func:`deepzip.save` records the structure so ``deepzip.load(path)`` rebuilds it.

    Optional: ``stages`` checkpoints each finished stage and resumes from it; ``measure(model, point)`` adds figures
    (e.g. a test error) to a stage's record at ``"decomposed"`` (before its fine-tuning), ``"decompose"``,
    ``"prune"`` (pruned and retrained), ``"shared"`` (before fine-tuning) and ``"share"`` (fine-tuned); ``info``
    receives each stage's record (``info["decompose"]``, ``info["prune"]``, ``info["share"]``: the settings chosen,
    the figures measured, ``seconds``, and the pruned model's encoded ``bytes``).
    """
    config.validate(model)
    info = {} if info is None else info
    measure = measure or (lambda m, point: {})

    # ---- decompose (optional) and fine-tune
    if config.decompose is not None:
        def decompose() -> dict[str, Any]:
            method, energy, ranks = config.decompose_settings()
            keep = {"tucker2": convs_only, "svd": lambda m, fqn: isinstance(m, nn.Linear),
                    "tucker2+svd": convs_and_linears, "tt": convs_and_linears}[config.decompose]
            tt = "tt" if config.decompose == "tt" else None
            plan = choose_ranks(model, method, energy=energy, ranks=ranks, filter_fn=keep,
                                conv_factorization=tt or "tucker2", linear_factorization=tt or "svd")
            n = len(lowrank_table(model))
            factorize_(model, plan, progress=progress)
            rows = lowrank_table(model)[n:]
            decomposed = measure(model, "decomposed")
            retrain(model, "decompose")
            return {"layers": [{**r, "ranks": list(r["ranks"]) if isinstance(r["ranks"], tuple) else r["ranks"]}
                               for r in rows], "spec": lowrank_spec(model), **decomposed,
                    **measure(model, "decompose")}

        info["decompose"] = _stage("decompose", model, stages, log, decompose)
        dataclasses.replace(config, decompose=None).validate(model)  # per-layer sparsity / bits name the factors

    # ---- sparse variational dropout (its own stage: hours on a CPU for a conv net, so later settings resume it)
    if config.sparsifier == "vd":
        info["vd"] = _stage("vd", model, stages, log, lambda: _train_vd(model, config, retrain, measure))

    # ---- prune
    def prune() -> dict[str, Any]:
        if config.sparsifier == "vd":
            return _prune_after_vd(model, config, retrain, measure, info["vd"])
        sparsity = config.sparsity
        if sparsity is None:
            sparsity = _scan_sparsity(model, config, _scan_error_fn(error_fn, "sparsity", "sensitivity"), progress)
        iterative_prune_(model, lambda m, r: retrain(m, "prune"), sparsity=sparsity, rounds=config.prune_rounds,
                         progress=progress)
        shrunk = _shrink_pruned_(model) if config.shrink else None  # same outputs: no retraining needed
        return {"sparsity": sparsity, **({"shrunk": shrunk} if shrunk is not None else {}),
                **measure(model, "prune")}

    prune_info = _stage("prune", model, stages, log, prune)
    info["prune"] = {**prune_info, "bytes": len(codec.to_bytes(encode_model(model)[0]))}

    # ---- share and fine-tune
    def share() -> dict[str, Any]:
        bits = config.bits
        if bits is None:
            bits = _scan_bits(model, config, _scan_error_fn(error_fn, "bits", "bits"), progress)
        requested = resolve_bits(model, bits)
        share_weights_(model, requested, init=config.init, seed=config.seed, progress=progress)
        shared = measure(model, "shared")
        retrain(model, "share")
        return {"bits": requested, "centroids": {r["layer"]: r["centroids"] for r in sharing_table(model)},
                **shared, **measure(model, "share")}

    info["share"] = _stage("share", model, stages, log, share)
    if config.bias_bits is not None:  # after the checkpointed stage: stage checkpoints hold weight codebooks only
        t0 = time.time()
        biases = share_biases_(model, config.bias_bits, prunable_layers(model), init=config.init, seed=config.seed)
        retrain(model, "share")  # every centroid fine-tuned again, the biases' too
        info["share_biases"] = {"centroids": biases, **measure(model, "share"), "seconds": time.time() - t0}
    if config.bias_float16:
        _round_biases_(model)
    if config.centroids_float16:
        round_centroids_(model)
    return model


def _stage(name: str, model: nn.Module, stages: StageStore | None, log: Callable[[str], None],
           run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One resumable stage: resume ``name`` from ``stages`` when its checkpoint matches, else ``run()`` it (timed)
    and checkpoint the model with its record; returns the record."""
    done = stages.resume_(name, model) if stages is not None else None
    if done is not None:
        log(f"{name}: resumed from {stages.path(name)}")  # type: ignore[union-attr]
        return done
    t0 = time.time()
    record = {**run(), "seconds": time.time() - t0}
    if stages is not None:
        stages.save(name, model, record)
    return record


def _scan_error_fn(error_fn: Callable[[nn.Module], float] | None, setting: str,
                   scan: str) -> Callable[[nn.Module], float]:
    """``error_fn``, which the scan that picks an unset ``config.<setting>`` needs."""
    if error_fn is None:
        raise ValueError(f"config.{setting}: unset, so the {scan} scan needs error_fn")
    return error_fn


def _round_biases_(model: nn.Module) -> None:
    """Round the biases of the compressed layers to float16 values (kept as float32 tensors, so the model runs as
    before; the codec stores a float32 tensor whose values are all float16 in 16 bits)."""
    import torch

    with torch.no_grad():
        for m in prunable_layers(model).values():
            b = getattr(m, "bias", None)
            shared = "bias" in getattr(m, "parametrizations", {})  # a codebook: centroids_float16 rounds those
            if isinstance(b, torch.Tensor) and b.is_floating_point() and not shared:
                b.copy_(b.half().to(b.dtype))


def _train_vd(model: nn.Module, config: PipelineConfig, retrain: Callable[[nn.Module, str], Any],
              measure: Callable[[nn.Module, str], dict[str, Any]]) -> dict[str, Any]:
    """The vd stage: VD layers, ``retrain(model, "vd")`` trains them on the variational bound, then the weights with
    log alpha above the threshold are masked (plain layers with pruning masks, so the stage checkpoints as any
    pruned model)."""
    from .techniques.vd import sparsify_vd_, variational_dropout_, vd_table

    variational_dropout_(model, threshold=config.vd_threshold)
    retrain(model, "vd")
    vd_measure = measure(model, "vd")
    rows = vd_table(model)
    sparsify_vd_(model)
    return {"layers": rows, **vd_measure}


def _prune_after_vd(model: nn.Module, config: PipelineConfig, retrain: Callable[[nn.Module, str], Any],
                    measure: Callable[[nn.Module, str], dict[str, Any]], vd: dict[str, Any]) -> dict[str, Any]:
    """The prune stage after the vd stage: layers VD does not handle are magnitude-pruned to
    ``config.target_sparsity`` (or ``config.sparsity``), then one ``retrain(model, "prune")`` with the masks."""
    shrunk = _shrink_pruned_(model) if config.shrink else None  # before retraining: a smaller model to train
    rest = {n: (config.sparsity or {}).get(n, config.target_sparsity) for n, m in prunable_layers(model).items()
            if get_mask(m) is None}
    if rest:
        prune_(model, rest)
    retrain(model, "prune")
    sparsity = {n: 1 - (int(get_mask(m).sum()) / m.weight.numel()) for n, m in prunable_layers(model).items()
                if get_mask(m) is not None}
    vd = {k: v for k, v in vd.items() if k != "seconds"}
    return {"sparsity": sparsity, "sparsifier": "vd", "vd": vd, "magnitude_pruned": sorted(rest),
            **({"shrunk": shrunk} if shrunk is not None else {}), **measure(model, "prune")}


def _shrink_pruned_(model: nn.Module) -> list[dict[str, Any]]:
    """Remove the units pruning left without inputs or readers (:func:`deepzip.techniques.shrink.shrink_`, the
    model's input features kept), then give the pruned layers their masks back (their zeros, so retraining and
    sharing keep them pruned); returns the shrink report's rows of changes."""
    import torch

    masked = [n for n, m in prunable_layers(model).items() if get_mask(m) is not None]
    training = model.training
    report: list[dict[str, Any]] = []
    shrink_(model, report=report, inputs=False)
    model.train(training)
    layers = prunable_layers(model)
    with torch.no_grad():
        for name in masked:
            set_mask_(layers[name], layers[name].weight.detach() != 0)
    return [r for r in report if r.get("what")]


def _scan_sparsity(model: nn.Module, config: PipelineConfig, error_fn: Callable[[nn.Module], float],
                   progress: bool) -> dict[str, float]:
    base = error_fn(model)
    scan = sensitivity_scan(model, error_fn, SCAN_SPARSITIES, progress=progress)
    weights = {n: getattr(m, t).numel() for n, (m, t) in prunable_tensors(model).items()}
    return allocate_sparsities(scan, weights, config.target_sparsity, baseline_error=base)


def _scan_bits(model: nn.Module, config: PipelineConfig, error_fn: Callable[[nn.Module], float],
               progress: bool) -> dict[str, int]:
    """Per layer alone, the fewest bits whose sharing (no fine-tuning) keeps ``error_fn`` (the scan loss) within
    ``(1 + bits_tolerance)`` of the unshared model's."""
    base = error_fn(model)
    chosen: dict[str, int] = {}
    for name in prunable_tensors(model):
        chosen[name] = max(config.bits_choices)
        for b in sorted(config.bits_choices):
            trial = clone_model(model)
            share_weights_(trial, {name: b}, init=config.init, seed=config.seed, progress=False)
            if error_fn(trial) <= base * (1.0 + config.bits_tolerance):
                chosen[name] = b
                break
    return chosen


def _fresh_like(model: nn.Module) -> nn.Module:
    """An unparametrized copy of ``model``'s architecture (for loading stage checkpoints and the file)."""
    from .models import get_model

    name = model_name(model)
    if name:
        try:  # with the same factored layers and shrunk widths, if any
            fresh = rebuild_(get_model(name), lowrank_spec(model))
            return resize_(fresh, architecture_widths(model, name)[0])
        except ValueError:
            pass
    from .techniques.prune import strip

    return strip(clone_model(model))
