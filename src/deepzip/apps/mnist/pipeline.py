"""The MNIST Deep Compression pipeline: :func:`deepzip.pipeline.compress_` driven by the MNIST recipes (retraining,
fine-tuning, the scans on held-out training images), writing the ``.dz`` file and evaluating the file; and
``run_prune``, the pruning recipe behind ``deepzip prune``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ...codec.fileinfo import file_report
from ...data import Dataset
from ...io.serialize import load, save
from ...models import model_name
from ...pipeline import PipelineConfig, StageStore, _fresh_like, compress_
from ...techniques.lowrank import (
    lowrank_spec,
)
from ...techniques.prune import (
    SCAN_SPARSITIES,
    AGPSchedule,
    allocate_sparsities,
    clone_model,
    iterative_prune_,
    prunable_layers,
    prune_,
    sensitivity_scan,
    sparsity_table,
)
from ...techniques.share import is_shared
from ...train import TrainConfig, evaluate, fit, jitter_augment
from .recipes import PAPER, train_config, validation_split

__all__ = ["PruneSettings", "run_pipeline", "run_prune"]

# ------------------------------------------------------------------------------------------ the MNIST pipeline
def _retrain_cfg(config: PipelineConfig, arch: str, epochs: int | None, progress: bool, seed: int,
                 *, finetune: bool = False) -> TrainConfig:
    cfg = train_config(arch, retrain=not finetune, finetune=finetune)
    if epochs is not None:
        cfg.epochs = epochs
    lr = config.finetune_lr if finetune else config.retrain_lr
    if lr is not None:
        cfg.lr = lr
    if config.jitter is not None:
        cfg.jitter = config.jitter
    cfg.progress = progress
    cfg.seed = seed
    return cfg


def _train_vd(model: nn.Module, train: Dataset, config: PipelineConfig, arch: str, progress: bool) -> None:
    """Sparse variational dropout training as the paper's LeNets: Adam, batch 100, no weight decay (the KL term is
    the regulariser), the KL weight off for ``vd_kl_warmup`` epochs then ramped to 1; the recipe's input jitter.
    With ``vd_shrink_every`` the epochs run in pieces of that many, the dead neurons and filters removed between
    pieces (:func:`deepzip.techniques.vd.shrink_vd_`); one learning-rate schedule and KL ramp span the pieces,
    Adam's moments start afresh in each."""
    from ...techniques.vd import KLWeight, shrink_vd_, vd_loss_fn

    jitter = _retrain_cfg(config, arch, None, False, 0).jitter
    steps_per_epoch = -(-len(train) // 100)
    total = steps_per_epoch * config.vd_epochs
    ramp, step = KLWeight(config.vd_kl_warmup, config.vd_kl_ramp_end), [0]

    def kl_weight() -> float:
        return config.vd_kl_scale * ramp.at(step[0] / steps_per_epoch)

    piece = config.vd_shrink_every or config.vd_epochs
    starts = list(range(0, config.vd_epochs, piece))
    for i, start in enumerate(starts):
        epochs = min(piece, config.vd_epochs - start)
        cfg = TrainConfig(epochs=epochs, lr=config.vd_lr, optimizer="adam", batch_size=100, schedule="cosine",
                          weight_decay=0.0, seed=config.seed + 300 + i, jitter=jitter, progress=progress)
        desc = "sparse variational dropout" + (f" (epochs {start + 1}-{start + epochs} of {config.vd_epochs})"
                                               if len(starts) > 1 else "")
        fit(model, train, cfg, loss_fn=vd_loss_fn(model, len(train), kl_weight),
            step_callback=lambda m, s: step.__setitem__(0, s), desc=desc,
            schedule_span=(start * steps_per_epoch, total))
        if i + 1 < len(starts):
            rows: list[dict] = []
            shrink_vd_(model, report=rows)
            if progress:
                for r in rows:
                    if r.get("what"):
                        print(f"  vd: {r['layer']} {r['before']} -> {r['after']} {r['what']}", flush=True)


def run_pipeline(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    config: PipelineConfig,
    output: str | os.PathLike[str],
    *,
    workdir: str | os.PathLike[str] | None = None,
    source: str = "",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """:func:`compress_` with the MNIST recipe's retraining and figures, then the ``.dz`` file; returns a summary.

    The test error quoted in the summary (``error_after_pct``) is that of a model rebuilt from the file's bytes.
    ``workdir`` keeps each stage's checkpoint; a rerun with the same config and ``source`` resumes from them.
    """
    config.validate(model)
    arch = model_name(model) or config.model
    timings: dict[str, float | None] = {}
    val = validation_split(train)
    loss_fn, augment = None, None  # None, None: cross-entropy, and the jitter of the retraining config (if any)
    t0 = time.time()
    before = evaluate(model, test)
    if config.distill:
        from ...techniques.distill import live_teacher, teacher_loss_for

        # with jitter the teacher must see the student's shifted images: run a frozen copy live (its shift, the
        # retraining one, then also serves centroid fine-tuning)
        shifted = jitter_augment(_retrain_cfg(config, arch, None, False, 0).jitter)
        if shifted is not None:
            loss_fn, augment = live_teacher(clone_model(model).eval(), shifted, config.temperature, config.alpha)
        else:
            loss_fn = teacher_loss_for(model, train, temperature=config.temperature, alpha=config.alpha)
    timings["baseline"] = time.time() - t0
    rounds: list[dict] = []

    def retrain(m: nn.Module, stage: str) -> None:
        if stage == "decompose":  # the retraining recipe (distilled from the original model with config.distill)
            cfg = _retrain_cfg(config, arch, config.decompose_epochs, progress, config.seed + 200)
            fit(m, train, cfg, loss_fn=loss_fn, augment=augment, desc="fine-tune after decomposition")
        elif stage == "prune":
            r = len(rounds) + 1
            cfg = _retrain_cfg(config, arch, config.retrain_epochs, progress, config.seed + r)
            fit(m, train, cfg, loss_fn=loss_fn, augment=augment,
                desc=f"retrain after pruning {r}/{config.prune_rounds}")
            rounds.append({"round": r, "val_error_pct": evaluate(m, val).error_pct})
        elif stage == "vd":
            _train_vd(m, train, config, arch, progress)
        else:
            cfg = _retrain_cfg(config, arch, config.finetune_epochs, progress, config.seed + 100, finetune=True)
            fit(m, train, cfg, loss_fn=loss_fn, augment=augment, desc="fine-tune centroids")

    def measure(m: nn.Module, point: str) -> dict[str, Any]:
        error = evaluate(m, test).error_pct
        if point == "prune":
            return {"rounds": rounds, "test_error_pct": error}
        if point == "vd":
            return {"test_error_pct": error}
        if point in ("decomposed", "decompose"):
            return {"test_error_before_finetune_pct" if point == "decomposed" else "test_error_pct": error}
        return {"test_error_before_finetune_pct" if point == "shared" else "test_error_pct": error}

    def val_loss(m: nn.Module) -> float:  # the scans' measure: smoother than a 0/1 error on 5,000 images
        return evaluate(m, val).loss

    info: dict[str, Any] = {}
    stages = StageStore(workdir, config, source) if workdir is not None else None
    compress_(model, config, retrain, error_fn=val_loss, progress=progress, stages=stages, measure=measure,
              info=info, log=log)
    prune_info, share_info = info["prune"], info["share"]
    timings["prune"], timings["share"] = prune_info.get("seconds"), share_info.get("seconds")
    if "vd" in info:
        timings["vd"] = info["vd"].get("seconds")
    if "share_biases" in info:
        timings["share_biases"] = info["share_biases"].get("seconds")
    pruned_bytes = prune_info.pop("bytes")

    # ---- encode, then evaluate the file, not the model in memory
    t0 = time.time()
    summary = {"error_before_pct": before.error_pct, "error_pruned_pct": prune_info["test_error_pct"],
               "error_shared_pct": share_info["test_error_pct"], "pruned_bytes": pruned_bytes}
    nbytes = save(model, output, config=config.to_file_dict(), architecture=arch, extra={"summary": summary})
    timings["encode"] = time.time() - t0
    t0 = time.time()
    from_file = load(output, _fresh_like(model), trainable=True)  # outputs identical to the saved model's
    after = evaluate(from_file, test)
    timings["evaluate_file"] = time.time() - t0
    report = file_report(output)
    total = report["params_architecture"]  # a shrunk model is measured against the architecture it came from
    return {
        "model": arch, "output": str(output), "bytes": nbytes, "params_total": total,
        "params_nonzero": report["params_nonzero"], "ratio": 4 * total / nbytes,
        "error_before_pct": before.error_pct, "error_after_pct": after.error_pct,
        "errors_after": after.errors,
        "error_pruned_pct": prune_info["test_error_pct"], "error_shared_pct": share_info["test_error_pct"],
        "error_in_memory_pct": evaluate(model, test).error_pct,
        "sparsity": prune_info["sparsity"], "bits": share_info["bits"],
        "decompose": info.get("decompose"), "lowrank": lowrank_spec(model),
        "stage_bytes": {"dense_32bit": 4 * total, "pruned": pruned_bytes,
                        "pruned_shared_fixed_width": report["bytes_before_huffman"], "huffman_file": nbytes},
        "layers": report["layers"], "seconds": timings, "config": config.to_dict(),
        "prune": prune_info, "share": share_info, **({"share_biases": info["share_biases"]}
                                                      if "share_biases" in info else {}),
    }

# ------------------------------------------------------------------------------------ pruning alone (deepzip prune)
@dataclass
class PruneSettings:
    """How to prune: explicit per-layer ``sparsity`` or ``quality``, or an overall ``target`` split by a scan.

    With none given, known models use the paper's per-layer kept fractions and others a scan at target 0.9.
    """

    sparsity: float | dict[str, float] | None = None
    quality: float | dict[str, float] | None = None
    target: float | None = None
    rounds: int = 3
    schedule: str = "iterative"  # or "agp"
    scan_points: tuple[float, ...] = SCAN_SPARSITIES
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schedule not in ("iterative", "agp"):
            raise ValueError(f"schedule={self.schedule!r}, expected 'iterative' or 'agp'")
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}, expected >= 1")
        if self.target is not None and not 0.0 <= self.target <= 1.0:
            raise ValueError(f"target={self.target}, expected a fraction in [0, 1]")


def run_prune(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    settings: PruneSettings,
    retrain_cfg: TrainConfig,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Prune ``model`` in place with retraining; returns a summary with a per-layer table and stage timings.

    The sensitivity scan (when one runs) is in the summary's ``scan``; :func:`deepzip.report.plot_sensitivity` draws it.
    """
    arch = model_name(model) or ""
    layers = prunable_layers(model)
    t0 = time.time()
    before = evaluate(model, test)
    sparsity, quality, scan = settings.sparsity, settings.quality, None
    if sparsity is None and quality is None:
        if settings.target is None and arch in PAPER:
            sparsity = {k: 1 - v / 100 for k, v in PAPER[arch]["kept_pct"].items()}
        else:
            val = validation_split(train)
            base = evaluate(model, val).error_pct
            scan = sensitivity_scan(model, lambda m: evaluate(m, val).error_pct, settings.scan_points,
                                    progress=progress)
            weights = {n: m.weight.numel() for n, m in layers.items()}
            sparsity = allocate_sparsities(scan, weights, settings.target if settings.target is not None else 0.9,
                                           baseline_error=base)
    t_scan = time.time() - t0
    # validate everything before any work (unknown layers, out-of-range values) by a dry run on a copy

    prune_(clone_model(model), sparsity=sparsity, quality=quality)
    t1 = time.time()
    rounds_log: list[dict] = []

    def retrain(m: nn.Module, r: int) -> None:
        cfg = TrainConfig(**{**asdict(retrain_cfg), "seed": retrain_cfg.seed + r})
        fit(m, train, cfg, desc=f"retrain {r}/{settings.rounds}")
        rounds_log.append({"round": r, "test_error_pct": evaluate(m, test).error_pct,
                           "kept_pct": _kept_pct(m)})

    if settings.schedule == "agp":
        if sparsity is None:
            raise ValueError("schedule='agp' needs sparsities, not quality")
        per = sparsity if isinstance(sparsity, dict) else {n: sparsity for n in layers}
        cfg = TrainConfig(**{**asdict(retrain_cfg), "epochs": retrain_cfg.epochs * settings.rounds})
        steps = cfg.epochs * -(-len(train) // cfg.batch_size)
        fit(model, train, cfg, step_callback=AGPSchedule(final=per, begin=0, end=int(0.7 * steps), every=50),
            desc="agp prune")
    else:
        per_s = sparsity if isinstance(sparsity, dict) or sparsity is None else {n: sparsity for n in layers}
        per_q = quality if isinstance(quality, dict) or quality is None else {n: quality for n in layers}
        iterative_prune_(model, retrain, sparsity=per_s, quality=per_q, rounds=settings.rounds, progress=progress)
    t_retrain = time.time() - t1
    after = evaluate(model, test)
    paper = PAPER.get(arch, {}).get("kept_pct", {})
    table = sparsity_table(model)
    for row in table:
        row["paper_kept_pct"] = paper.get(row["layer"])
    return {
        "error_before_pct": before.error_pct,
        "test_error_pct": after.error_pct,
        "kept_pct": _kept_pct(model),
        "layers": table,
        "sparsity": sparsity,
        "quality": quality,
        "scan": scan,
        "rounds": rounds_log,
        "schedule": settings.schedule,
        "seconds": {"scan": t_scan, "prune_retrain": t_retrain},
    }


def _kept_pct(model: nn.Module) -> float:
    rows = sparsity_table(model)
    return 100.0 * sum(r["kept"] for r in rows) / max(sum(r["weights"] for r in rows), 1)



def is_compressed(model: nn.Module) -> bool:
    """True when every prunable layer is weight-shared (the state a .dz file stores compactly)."""
    return all(is_shared(m) for m in prunable_layers(model).values())


__all__ += ["is_compressed"]
