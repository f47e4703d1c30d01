"""Low-rank decomposition end to end on MNIST: speed, FLOPs and error of Tucker-2 (EVBMF ranks), tensor-train layers
trained from scratch, and low-rank composed with Deep Compression (prune -> share -> Huffman) into one .dz file.

Parts (``--parts``, default all four):

- ``cnn``: LeNet-5 and a wider CNN (``cnn4``: 3x3 convs of 32, 64, 128, 128 channels), trained here, then
  decomposed (Tucker-2 of the convs, EVBMF ranks as Kim et al. 2016; also SVD of LeNet-5's fc1, and kept-energy
  ranks) and fine-tuned. Reported: parameters, multiply-adds (``deepzip.techniques.lowrank.count_macs``), CPU latency
  at batch
  1 and 64 with one thread (every variant of a model timed interleaved in the same run, median of repeats, ratio to
  the original), test error right after decomposition, after one fine-tuning epoch and after all of them (the last
  epoch's, not the best; the per-epoch curve is in the JSON), and a per-layer table.
- ``tt``: an MLP 784-1024-10 whose first layer is a ``TTLinear`` (in modes 4x7x4x7, out modes 4x8x4x8) trained
  from random init (Novikov et al. 2015), beside its dense twin and a dense 784-h-10 MLP whose first layer has
  the TT layer's parameter count; all with the same recipe.
- ``combined``: trained LeNet-5 -> Deep Compression alone (``deepzip.pipeline.compress_``: sensitivity-scan
  pruning, bits scan, the recipes' retraining and centroid fine-tuning) against LeNet-5 decomposed (Tucker-2
  conv2 + SVD fc1, EVBMF, fine-tuned) then the same compression acting on the factors, at a few overall
  sparsities each; bytes of each ``.dz`` file side by side, and the smallest of each under 0.80% test error.
  Every file is loaded back with ``deepzip.load(path)`` alone (no user code rebuilds the factored model) and its
  test error measured again.
- ``ttconv``: tensor-train convolutions (Garipov et al. 2016) in a CNN trained from scratch with TT-conv + TT-FC
  layers vs its dense twin, TT-conv only vs Tucker-2 at matched parameters, TT-SVD + fine-tuning vs from scratch,
  reloads, latency and Deep Compression on top (``benchmarks/lowrank_ttconv.py``); its own results files,
  ``benchmarks/results/lowrank_ttconv.{json,md}``.

Training runs on ``--device`` (cuda if you have one); latency is always measured on the CPU with
``torch.set_num_threads(1)``. Runs: ``python benchmarks/lowrank.py --device cuda`` writes
``benchmarks/results/lowrank.{json,md}``; ``--partial DIR`` writes only this run's parts to DIR (one JSON per part)
and ``--merge DIR [DIR ...]`` turns such parts into the results files. ``--quick``: a smoke run on synthetic data,
tiny epochs, results in a temporary folder; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from _common import md_table

from deepzip.apps.mnist.data import load_mnist, synthetic_mnist
from deepzip.apps.mnist.recipes import train_config, validation_split
from deepzip.data import Dataset
from deepzip.io.serialize import load, save
from deepzip.models import get_model
from deepzip.pipeline import PipelineConfig, compress_
from deepzip.techniques.distill import live_teacher
from deepzip.techniques.lowrank import (
    TTLinear,
    convs_and_linears,
    count_macs,
    decompose_,
    lowrank_spec,
    lowrank_table,
)
from deepzip.train import TrainConfig, evaluate, fit, jitter_augment

PARTS = ("cnn", "tt", "combined", "ttconv")
TT_IN, TT_OUT = (4, 7, 4, 7), (4, 8, 4, 8)  # 784 in, 1024 out
TRAIN = {"lenet5": dict(epochs=20, lr=0.02, weight_decay=5e-4, jitter=2),
         "cnn4": dict(epochs=12, lr=0.02, weight_decay=5e-4, jitter=2)}
FINETUNE = dict(lr=0.01, weight_decay=5e-4, jitter=2)  # the LeNets' retraining recipe (recipes._RETRAIN), longer


# ---------------------------------------------------------------------------------------------------- helpers
def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def macs(m: nn.Module) -> int:
    return sum(count_macs(m.cpu().eval(), torch.zeros(1, 1, 28, 28)).values())


def layer_macs(m: nn.Module, name: str) -> int:
    d = count_macs(m.cpu().eval(), torch.zeros(1, 1, 28, 28))
    return sum(v for k, v in d.items() if k == name or k.startswith(name + "."))


def to(data: Dataset, device: str) -> Dataset:
    return Dataset(data.x.to(device), data.y.to(device))


def subset(data: Dataset, n: int | None) -> Dataset:
    """The first ``n`` images of a fixed random order (all of them for None)."""
    if n is None or n >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n].to(data.x.device)
    return Dataset(data.x[idx], data.y[idx])


def trained_base(name: str, train_d: Dataset, a: argparse.Namespace, n: int | None = None) -> nn.Module:
    """``name`` trained with TRAIN[name] (``--epochs`` overrides), cached in runs/ (git-ignored) for the next part."""
    from deepzip.io.checkpoint import load_checkpoint, save_checkpoint

    epochs = (a.cnn4_epochs if name == "cnn4" and a.cnn4_epochs else None) or a.epochs or TRAIN[name]["epochs"]
    data = subset(train_d, n)
    # v2: cnn4 pools after conv1/conv2 since this commit (same parameter shapes as before: a stale cache must not load)
    path = _common.RUNS / f"lowrank_{name}_v2_e{epochs}_n{len(data)}.safetensors"
    if path.exists() and not a.quick:
        return load_checkpoint(path)[0]
    m = get_model(name)
    t0 = time.time()
    train(m, data, None, a.device, **{**TRAIN[name], "epochs": epochs})
    print(f"{name}: trained {epochs} epochs on {len(data)} images in {time.time() - t0:.0f}s", flush=True)
    if not a.quick:
        save_checkpoint(m, path)
    return m


def train(m: nn.Module, data: Dataset, test: Dataset | None, device: str, seed: int = 0,
          teacher: nn.Module | None = None, **kw: Any) -> list[dict]:
    """``deepzip.train.fit`` on ``device`` (the model comes back on the CPU); per-epoch test error with ``test``.

    With ``teacher``: distilled from it (T=4, alpha=0.5; the teacher sees the same jittered images, run live)."""
    cfg = TrainConfig(**kw)
    cfg.progress, cfg.seed = False, seed
    m.to(device)
    loss_fn = augment = None
    if teacher is not None:
        shifted = jitter_augment(cfg.jitter)
        assert shifted is not None, "distilled fine-tuning expects a jittering recipe"
        loss_fn, augment = live_teacher(copy.deepcopy(teacher).to(device).eval(), shifted, 4.0, 0.5)
    log = fit(m, data, cfg, eval_data=test, loss_fn=loss_fn, augment=augment)
    m.cpu()
    return log


def test_error(m: nn.Module, test: Dataset) -> float:
    dev = test.x.device
    err = evaluate(m.to(dev), test).error_pct
    m.cpu()
    return err


def latency_ms(models: dict[str, nn.Module], batch: int, reps: int, *, traced: bool = False) -> dict[str, float]:
    """Median CPU wall time (ms) of one forward pass at ``batch``, one thread, models interleaved rep by rep so
    that a change in machine load hits all of them alike. ``traced``: time each model's TorchScript trace
    (``torch.jit.trace``, not frozen: the same aten kernels as eager, without Python between the ops; TorchScript is
    deprecated in favour of ``torch.export`` / ``torch.compile``, whose CPU code was slower here at batch 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.rand(batch, 1, 28, 28)
    times: dict[str, list[float]] = {k: [] for k in models}
    try:
        with torch.no_grad():
            run: dict[str, Any] = {}
            for k, m in models.items():
                m.cpu().eval()
                run[k] = torch.jit.trace(m, x, check_trace=False) if traced else m
                if traced:  # the trace computes what the model computes
                    torch.testing.assert_close(run[k](x), m(x), rtol=1e-4, atol=1e-5)
                for _ in range(3):  # warm-up (a trace profiles its first runs)
                    run[k](x)
            for _ in range(reps):
                for k, f in run.items():
                    t0 = time.perf_counter()
                    f(x)
                    times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return {k: 1000.0 * statistics.median(v) for k, v in times.items()}


def timings(models: dict[str, nn.Module], reps: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Latency columns of every model (``"original"`` among them): batch 1 and 64, eager and TorchScript-traced,
    ``rounds`` times (rounds alternate between the forms); ms = median over rounds of each round's median, speedup
    = median over rounds of the round's ratio to the original, and ``*_spread`` the smallest and largest ratio."""
    per: dict[str, dict[str, list[float]]] = {k: {} for k in models}
    for _ in range(rounds):
        for col, batch, n, traced in (("b1", 1, reps, False), ("b1_ts", 1, reps, True),
                                      ("b64", 64, max(reps // 10, 5), False),
                                      ("b64_ts", 64, max(reps // 10, 5), True)):
            ms = latency_ms(models, batch, n, traced=traced)
            for k in models:
                per[k].setdefault(f"ms_{col}", []).append(ms[k])
                per[k].setdefault(f"speedup_{col}", []).append(ms["original"] / ms[k])
    out: dict[str, dict[str, Any]] = {}
    for k, cols in per.items():
        out[k] = {c: statistics.median(v) for c, v in cols.items()}
        if rounds > 1:
            out[k].update({f"{c}_spread": f"{min(v):.2f}-{max(v):.2f}" for c, v in cols.items()
                           if c.startswith("speedup")})
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------------------------- part: cnn
def wide_convs(module: nn.Module, fqn: str) -> bool:
    """Convs with more than 3 input channels (the ``filter_fn`` of the Tucker-2 variants)."""
    return isinstance(module, nn.Conv2d) and module.in_channels > 3


def wide_convs_and_linears(module: nn.Module, fqn: str) -> bool:
    return wide_convs(module, fqn) or isinstance(module, nn.Linear)


def cnn_variants(name: str) -> dict[str, tuple[str, dict]]:
    """The decomposed variants of ``name``: label -> (rank method, decompose_ keywords + ``distill``)."""
    # conv1 (one input channel) stays: a Tucker-2 factor on a 1-channel input mode is an extra op for nothing
    # (Kim et al. leave the first layer's input mode alone too); at batch 1 every op counts
    convs = {"filter_fn": wide_convs}
    variants: dict[str, tuple[str, dict]] = {"Tucker-2 convs, EVBMF": ("vbmf", convs)}
    if name == "lenet5":
        variants["Tucker-2 convs + SVD fc, EVBMF"] = ("vbmf", {"filter_fn": wide_convs_and_linears})
    else:
        # the same EVBMF factors fine-tuned by distillation from the original (the natural teacher)
        variants["Tucker-2 convs, EVBMF, distilled from the original"] = ("vbmf", {**convs, "distill": True})
        variants["Tucker-2 convs, energy 0.8"] = ("energy", {**convs, "energy": 0.8})
    return variants


def retime_cnn(train_d: Dataset, a: argparse.Namespace, command: str) -> None:
    """``--retime DIR``: time the cnn part's models again (same bases from runs/, same factorisations; the
    fine-tuned weights were not kept, and the values of dense weights do not change a forward pass's time) and
    write the new latency columns into DIR/lowrank_cnn.json."""
    path = Path(a.retime) / "lowrank_cnn.json"
    doc = json.loads(path.read_text())
    for name in a.cnn_models.split(","):
        base = trained_base(name, train_d, a, a.cnn4_subset if name == "cnn4" else None)
        models: dict[str, nn.Module] = {"original": base}
        for label, (method, kw) in cnn_variants(name).items():
            m = copy.deepcopy(base)
            decompose_(m, method, progress=False, **{k: v for k, v in kw.items() if k != "distill"})
            models[label] = m
        t = timings(models, a.reps, a.rounds)
        for r in doc["rows"]:
            if r["model"] == name and r["variant"] in models:
                r.update(t[r["variant"]])
        print(name, {k: (round(v["speedup_b1"], 2), round(v["speedup_b1_ts"], 2)) for k, v in t.items()}, flush=True)
    doc["command"] += f" ; {command}"
    doc["retimed"] = {"commit": _common.git_sha(), "command": command}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def part_cnn(train_d: Dataset, test: Dataset, a: argparse.Namespace, trained: dict) -> dict:
    rows, layers, curves = [], [], []
    for name in a.cnn_models.split(","):
        n = a.cnn4_subset if name == "cnn4" else None
        data = subset(train_d, n)
        base = trained_base(name, train_d, a, n)
        trained[name] = base
        base_err = test_error(base, test)
        print(f"{name}: {base_err:.2f}%", flush=True)
        variants = cnn_variants(name)
        models = {"original": base}
        info: dict[str, dict] = {"original": {"error_decomposed_pct": base_err, "error_1_epoch_pct": base_err,
                                              "error_finetuned_pct": base_err, "decompose_s": 0.0}}
        for label, (method, kw) in variants.items():
            m = copy.deepcopy(base)
            kw = dict(kw)
            teacher = base if kw.pop("distill", False) else None
            t1 = time.time()
            decompose_(m, method, progress=False, **kw)
            dt = time.time() - t1
            err0 = test_error(m, test)
            log = train(m, data, test, a.device, epochs=a.finetune_epochs, teacher=teacher, **FINETUNE)
            models[label] = m
            info[label] = {"error_decomposed_pct": err0, "error_1_epoch_pct": log[0]["test_error_pct"],
                           "error_finetuned_pct": log[-1]["test_error_pct"], "decompose_s": dt}
            curves.append({"model": name, "variant": label, "test_error_pct_by_epoch":
                           [e["test_error_pct"] for e in log]})
            for r in lowrank_table(m):
                orig = base.get_submodule(r["layer"])
                layers.append({"model": name, "variant": label, "layer": r["layer"], "kind": r["kind"],
                               "ranks": str(tuple(r["ranks"]) if isinstance(r["ranks"], tuple) else r["ranks"]),
                               "params_before": r["params_before"], "params_after": r["params_after"],
                               "macs_before": layer_macs(base, r["layer"]),
                               "macs_after": layer_macs(m, r["layer"]) if not r["skipped"] else
                               layer_macs(base, r["layer"]),
                               "rel_error": r["rel_error"], "skipped": r["skipped"] or ""})
                del orig
            print(f"{name} {label}: {err0:.2f}% -> {info[label]['error_1_epoch_pct']:.2f}% (1 epoch) -> "
                  f"{info[label]['error_finetuned_pct']:.2f}% ({a.finetune_epochs} epochs)", flush=True)
        t = timings(models, a.reps, a.rounds)
        p0, f0 = n_params(base), macs(base)
        for label, m in models.items():
            p, f = n_params(m), macs(m)
            rows.append({"model": name, "variant": label, "params": p, "params_ratio": p0 / p, "macs": f,
                         "macs_ratio": f0 / f, **t[label], **info[label],
                         "delta_error_points": info[label]["error_finetuned_pct"] - base_err,
                         "train_images": len(data)})
    return {"rows": rows, "layers": layers, "curves": curves}


# ---------------------------------------------------------------------------------------------------- part: tt
class TTMLP(nn.Module):
    """784 -> TTLinear(4x7x4x7 -> 4x8x4x8, TT ranks r) -> ReLU -> 1024 -> 10."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.fc1 = TTLinear(TT_IN, TT_OUT, ranks=(rank,) * (len(TT_IN) - 1))
        self.fc2 = nn.Linear(1024, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def dense_mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def part_tt(train_d: Dataset, test: Dataset, a: argparse.Namespace) -> dict:
    recipe = dict(epochs=a.tt_epochs, lr=2e-3, weight_decay=0.0, optimizer="adam", jitter=1)
    ranks = [int(r) for r in a.tt_ranks.split(",")]
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"dense twin 784-1024-10": dense_mlp(1024)}
    for r in ranks:
        torch.manual_seed(0)
        models[f"TT-MLP, TT ranks {r}"] = TTMLP(r)
    first = {k: (n_params(m.fc1) if isinstance(m, TTMLP) else n_params(m[1])) for k, m in models.items()}
    # a dense first layer with the parameter count of the middle TT layer: 785 h = TT params
    mid = f"TT-MLP, TT ranks {ranks[len(ranks) // 2]}"
    h = max(1, round(first[mid] / 785))
    torch.manual_seed(0)
    models[f"dense 784-{h}-10 (first layer ~ {mid.split(', ')[1]})"] = dense_mlp(h)
    first[list(models)[-1]] = 785 * h
    rows, curves = [], []
    twin_err = None
    for label, m in models.items():
        t0 = time.time()
        log = train(m, train_d, test, a.device, **recipe)
        err = log[-1]["test_error_pct"]
        twin_err = err if twin_err is None else twin_err
        curves.append({"model": "mlp", "variant": label, "test_error_pct_by_epoch":
                       [e["test_error_pct"] for e in log]})
        rows.append({"variant": label, "first_layer_params": first[label],
                     "first_layer_ratio": first["dense twin 784-1024-10"] / first[label], "params": n_params(m),
                     "macs": macs(m), "error_pct": err, "delta_error_vs_twin_points": err - twin_err,
                     "train_s": time.time() - t0})
        print(f"tt {label}: {first[label]:,} first-layer params, {err:.2f}%", flush=True)
    b1 = latency_ms(models, 1, a.reps)
    b64 = latency_ms(models, 64, max(a.reps // 10, 5))
    for row in rows:
        row["ms_b1"], row["ms_b64"] = b1[row["variant"]], b64[row["variant"]]
    return {"rows": rows, "curves": curves, "recipe": recipe, "modes": [TT_IN, TT_OUT]}


# ---------------------------------------------------------------------------------------------------- part: combined
def part_combined(train_d: Dataset, test: Dataset, a: argparse.Namespace, trained: dict, folder: Path) -> dict:
    base = trained["lenet5"] if "lenet5" in trained else trained_base("lenet5", train_d, a)
    base_err = test_error(base, test)
    val = to(validation_split(Dataset(train_d.x.cpu(), train_d.y.cpu())), "cpu")

    def val_loss(m: nn.Module) -> float:
        return evaluate(m, val).loss

    dec = copy.deepcopy(base)
    decompose_(dec, "vbmf", filter_fn=convs_and_linears, layers=["conv2", "fc1"], progress=False)
    dec_ranks = {r["layer"]: r["ranks"] for r in lowrank_table(dec) if not r["skipped"]}
    dec_err0 = test_error(dec, test)
    train(dec, train_d, None, a.device, epochs=a.finetune_epochs, **FINETUNE)
    dec_err = test_error(dec, test)
    print(f"combined: base {base_err:.2f}%, decomposed {dec_ranks} {dec_err0:.2f}% -> {dec_err:.2f}%", flush=True)
    rows = []
    arms = [("Deep Compression alone", base, a.dc_targets), ("decomposed, then Deep Compression", dec, a.lr_targets)]
    for arm, start, targets in arms:
        for t in [float(v) for v in targets.split(",")]:
            m = copy.deepcopy(start)
            cfg = PipelineConfig(model="lenet5", target_sparsity=t, prune_rounds=a.prune_rounds)
            retrain_cfg = train_config("lenet5", retrain=True)
            fine_cfg = train_config("lenet5", finetune=True)
            if a.retrain_epochs is not None:
                retrain_cfg.epochs = a.retrain_epochs
            if a.share_epochs is not None:
                fine_cfg.epochs = a.share_epochs
            if a.quick:
                retrain_cfg.epochs, fine_cfg.epochs = 1, 1

            def retrain(model: nn.Module, stage: str, r=retrain_cfg, f=fine_cfg) -> None:
                c = f if stage == "share" else r
                train(model, train_d, None, a.device, epochs=c.epochs, lr=c.lr, weight_decay=c.weight_decay,
                      jitter=c.jitter)

            t0 = time.time()
            compress_(m, cfg, retrain, error_fn=val_loss, progress=False)
            err = test_error(m, test)
            path = folder / f"lenet5_{'lowrank_' if start is dec else ''}dc_{t}.dz"
            nbytes = save(m, path, config=cfg.to_dict())
            loaded = load(path)  # the file alone: architecture name + low-rank record in its header
            file_err = test_error(loaded, test)
            rows.append({"arm": arm, "target_sparsity": t, "bytes": nbytes, "ratio": 1724080 / nbytes,
                         "error_pct": err, "file_error_pct": file_err, "same_error_from_file": file_err == err,
                         "low_rank_record": json.dumps(lowrank_spec(loaded)) if lowrank_spec(loaded) else "",
                         "seconds": time.time() - t0, "file": path.name})
            print(f"combined {arm} @ {t}: {nbytes:,} B, {err:.2f}% (file {file_err:.2f}%)", flush=True)
    best = {}
    for arm, *_ in arms:
        ok = [r for r in rows if r["arm"] == arm and r["file_error_pct"] <= a.max_error]
        best[arm] = min(ok, key=lambda r: r["bytes"]) if ok else None
    return {"rows": rows, "best": best, "base_error_pct": base_err, "decomposed_ranks": {k: str(v) for k, v in
            dec_ranks.items()}, "decomposed_error_before_ft_pct": dec_err0, "decomposed_error_pct": dec_err,
            "decomposed_params": n_params(dec), "max_error_pct": a.max_error}


# ---------------------------------------------------------------------------------------------------- results
def write(parts: dict[str, dict], commands: list[str], results: Path, note: str | None = None) -> None:
    _common.RESULTS = results
    rows = parts.get("cnn", {}).get("rows", [])
    sections: dict[str, str] = {"Notes": note + "\n"} if note else {}
    extra = {"parts": parts, "commands": commands}
    if "cnn" in parts:
        cnn = parts["cnn"]
        cols = ["model", "variant", "params", "params_ratio", "macs", "macs_ratio", "ms_b1", "speedup_b1",
                "speedup_b1_spread", "ms_b1_ts", "speedup_b1_ts", "speedup_b1_ts_spread", "ms_b64", "speedup_b64",
                "ms_b64_ts", "speedup_b64_ts", "error_decomposed_pct", "error_1_epoch_pct", "error_finetuned_pct",
                "delta_error_points"]
        cols = [c for c in cols if any(c in r for r in cnn["rows"])]
        sections["Per layer (ranks, parameters and multiply-adds before/after, relative error of the weight)"] = \
            md_table(cnn["layers"])
        verdict = []
        for r in cnn["rows"]:
            if r["model"] == "cnn4" and r["variant"] == "Tucker-2 convs, EVBMF":
                def speed(col: str, r: dict = r) -> str:
                    spread = r.get(f"{col}_spread")
                    lo = float(spread.split("-")[0]) if spread else r[col]
                    return (f"{r[col]:.2f}x" + (f" (rounds {spread})" if spread else "") +
                            f" (>= 2x: {'met' if lo >= 2 else 'NOT met' if r[col] < 2 else 'not in every round'})")

                b1 = f"eager {speed('speedup_b1')}" + (
                    f", TorchScript-traced {speed('speedup_b1_ts')}" if "speedup_b1_ts" in r else "")
                verdict.append(
                    f"- cnn4, Tucker-2 with EVBMF ranks: faster at batch 1: {b1}; {r['speedup_b64']:.2f}x at batch 64, "
                    f"{r['macs_ratio']:.2f}x fewer multiply-adds (target >= 3x: "
                    f"{'met' if r['macs_ratio'] >= 3 else 'NOT met'}), {r['delta_error_points']:+.2f} points of "
                    f"test error after fine-tuning (target <= +0.1: "
                    f"{'met' if r['delta_error_points'] <= 0.1 else 'NOT met'}).")
        sections["Targets"] = "\n".join(verdict) + "\n" if verdict else ""
    else:
        cols = None
    if "tt" in parts:
        tt = parts["tt"]
        body = md_table(tt["rows"]) + f"\nRecipe (all rows): {tt['recipe']}; TT modes {tt['modes']}.\n"
        ok = [r for r in tt["rows"] if r["variant"].startswith("TT") and r["first_layer_ratio"] >= 50]
        for r in ok:
            body += (f"- {r['variant']}: {r['first_layer_ratio']:.0f}x fewer first-layer parameters than the twin, "
                     f"{r['delta_error_vs_twin_points']:+.2f} points (target >= 50x at <= +0.3: "
                     f"{'met' if r['delta_error_vs_twin_points'] <= 0.3 else 'NOT met'}).\n")
        sections["Tensor-train MLP trained from scratch (first layer TTLinear) vs dense"] = body
    if "combined" in parts:
        c = parts["combined"]
        body = (f"Trained LeNet-5: {c['base_error_pct']:.2f}%. Decomposed (EVBMF ranks {c['decomposed_ranks']}, "
                f"{c['decomposed_params']:,} params): {c['decomposed_error_before_ft_pct']:.2f}% right after, "
                f"{c['decomposed_error_pct']:.2f}% fine-tuned. ratio = 1,724,080 B (LeNet-5 float32) / bytes; "
                "file_error_pct: the test error of `deepzip.load(path)` with no model given.\n\n"
                + md_table([{k: v for k, v in r.items() if k != "low_rank_record"} for r in c["rows"]]))
        best = c["best"]
        a_, b_ = best.get("Deep Compression alone"), best.get("decomposed, then Deep Compression")
        if a_ and b_:
            win = "decomposed + Deep Compression" if b_["bytes"] < a_["bytes"] else "Deep Compression alone"
            body += (f"\nSmallest file at <= {c['max_error_pct']:.2f}% test error: Deep Compression alone "
                     f"{a_['bytes']:,} B ({a_['file_error_pct']:.2f}%), decomposed then Deep Compression "
                     f"{b_['bytes']:,} B ({b_['file_error_pct']:.2f}%): {win} wins by "
                     f"{max(a_['bytes'], b_['bytes']) / min(a_['bytes'], b_['bytes']):.2f}x.\n")
        else:
            body += f"\nNot every arm reached <= {c['max_error_pct']:.2f}% test error (target not met). "
            arms = sorted({r["arm"] for r in c["rows"]})
            level = max(min(r["file_error_pct"] for r in c["rows"] if r["arm"] == arm) for arm in arms)
            near = {arm: min((r for r in c["rows"] if r["arm"] == arm and r["file_error_pct"] <= level + 0.05),
                             key=lambda r: r["bytes"]) for arm in arms}
            body += (f"At the error both arms reach (<= {level + 0.05:.2f}%): " + "; ".join(
                f"{arm} {r['bytes']:,} B ({r['file_error_pct']:.2f}%)" for arm, r in near.items()) + ".\n")
        sections["Low-rank + Deep Compression vs Deep Compression alone (LeNet-5)"] = body
    curves = [c for p in parts.values() for c in p.get("curves", [])]
    sections["Fine-tuning / training curves (test error % after each epoch)"] = md_table(
        [{"model": c["model"], "variant": c["variant"], "by_epoch": ", ".join(f"{e:.2f}" for e in
                                                                               c["test_error_pct_by_epoch"])}
         for c in curves])
    machines = {k: p.get("machine") for k, p in parts.items()}
    sections["Machines"] = "".join(f"- {k}: {v}\n" for k, v in machines.items())
    _common.write_results("lowrank", rows, " ; ".join(commands),
                          title="Low-rank decomposition: speed, FLOPs, error; TT from scratch; with Deep Compression",
                          sections=sections, extra=extra, columns=cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: cnn, tt, combined, ttconv")
    ap.add_argument("--device", default="cpu", help="where to train (cpu, cuda); latency is always CPU")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs of the CNNs (default per model)")
    ap.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs after decomposition")
    ap.add_argument("--tt-epochs", type=int, default=20)
    ap.add_argument("--tt-ranks", default="4,8,12")
    ap.add_argument("--dc-targets", default="0.95,0.97", help="overall sparsities of Deep Compression alone")
    ap.add_argument("--lr-targets", default="0.6,0.8", help="overall sparsities after decomposition")
    ap.add_argument("--prune-rounds", type=int, default=3)
    ap.add_argument("--retrain-epochs", type=int, default=None, help="per pruning round (default: the recipe's)")
    ap.add_argument("--share-epochs", type=int, default=None, help="centroid fine-tuning (default: the recipe's)")
    ap.add_argument("--cnn-models", default="lenet5,cnn4")
    ap.add_argument("--cnn4-subset", type=int, default=None, help="train/fine-tune cnn4 on this many images")
    ap.add_argument("--cnn4-epochs", type=int, default=None, help="training epochs of cnn4 (overrides --epochs)")
    ap.add_argument("--max-error", type=float, default=0.80, help="test error (%%) the combined files must meet")
    ap.add_argument("--reps", type=int, default=200, help="latency repeats at batch 1 (batch 64: a tenth)")
    ap.add_argument("--rounds", type=int, default=3, help="cnn part: timing rounds (each eager and traced, "
                    "batch 1 and 64); medians over rounds, and the spread of the ratios")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for training/scans (default all)")
    ap.add_argument("--partial", default=None, help="write this run's parts as DIR/lowrank_PART.json only")
    ap.add_argument("--merge", nargs="+", default=None, help="merge DIR/lowrank_*.json into the results files")
    ap.add_argument("--retime", default=None, help="time the cnn part of DIR/lowrank_cnn.json again (latency only)")
    ap.add_argument("--note", default=None, help="with --merge: a Notes section (how the run was shortened, ...)")
    ap.add_argument("--ttconv-epochs", type=int, default=4, help="ttconv: training epochs of every net")
    ap.add_argument("--ttconv-finetune-epochs", type=int, default=1, help="ttconv: fine-tuning after TT-SVD")
    ap.add_argument("--ttconv-ranks", default="8,12/8,4,16", help="ttconv: TT ranks of the TT-conv + TT-FC nets "
                    "(8: conv and fc; 12/8: conv 12, fc 8)")
    ap.add_argument("--ttconv-only-rank", type=int, default=8, help="ttconv: rank of the TT-conv-only net")
    ap.add_argument("--ttconv-svd-rank", default="12/8", help="ttconv: ranks (conv/fc) of the TT-SVD of the dense twin")
    ap.add_argument("--ttconv-dc-rank", default="12/8", help="ttconv: ranks (conv/fc) of the TT net that Deep "
                    "Compression acts on (one of --ttconv-ranks)")
    ap.add_argument("--ttconv-subset", type=int, default=30000,
                    help="ttconv: train on this many images of a fixed random order (0: all 60,000)")
    ap.add_argument("--ttconv-no-conv-only", action="store_true", help="ttconv: skip the conv-only pair")
    ap.add_argument("--ttconv-render", default=None, metavar="JSON",
                    help="ttconv: write the Markdown of a results JSON again (with --note), nothing run")
    ap.add_argument("--ttconv-train-only", action="store_true", help="ttconv: train (and cache) the nets, no more")
    ap.add_argument("--quick", action="store_true", help="smoke run: synthetic data, tiny epochs, temp folder")
    a = ap.parse_args()
    argv = ["'(the Notes section)'" if i and sys.argv[i - 1] == "--note" else v for i, v in enumerate(sys.argv)]
    command = "python benchmarks/lowrank.py " + " ".join(argv[1:])
    if a.ttconv_render:
        from lowrank_ttconv import write_ttconv, write_ttconv_trained

        doc = json.loads(Path(a.ttconv_render).read_text())
        doc["note"] = a.note
        doc.setdefault("commands", [doc["command"]])
        if command not in doc["commands"]:
            doc["commands"].append(command)
        (write_ttconv if "dc" in doc else write_ttconv_trained)(doc, Path(a.ttconv_render).parent)
        return
    if a.merge:
        parts, commands = {}, []
        for d in a.merge:
            for f in sorted(Path(d).glob("lowrank_*.json")):
                doc = json.loads(f.read_text())
                parts[doc["part"]] = doc
                if doc["command"] not in commands:
                    commands.append(doc["command"])
        write({k: parts[k] for k in PARTS if k in parts}, commands + [command], _common.RESULTS, a.note)
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    folder = Path(tempfile.mkdtemp(prefix="lowrank_"))
    if a.quick:
        train_d, test = synthetic_mnist(512, seed=0), synthetic_mnist(256, seed=1)
        a.epochs, a.finetune_epochs, a.tt_epochs, a.reps, a.prune_rounds = 1, 1, 1, 5, 1
        a.ttconv_epochs = 1
    else:
        train_d, test = load_mnist("train", quiet=True), load_mnist("test", quiet=True)
    train_d, test = to(train_d, a.device), to(test, a.device)
    if a.retime:
        retime_cnn(train_d, a, command)
        return
    trained: dict[str, nn.Module] = {}
    parts: dict[str, dict] = {}
    machine = {"device": a.device, "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
               "cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__, "latency_threads": 1}
    for part in a.parts.split(","):
        t0 = time.time()
        if part == "cnn":
            parts[part] = part_cnn(train_d, test, a, trained)
        elif part == "tt":
            parts[part] = part_tt(train_d, test, a)
        elif part == "combined":
            parts[part] = part_combined(train_d, test, a, trained, folder)
        elif part == "ttconv":  # its own results files: lowrank_ttconv.{json,md}
            from lowrank_ttconv import part_ttconv, write_ttconv, write_ttconv_trained

            doc = part_ttconv(train_d, test, a, folder)
            doc.update(part=part, command=command, machine=machine, commit=_common.git_sha(),
                       seconds=time.time() - t0, note=a.note)
            (write_ttconv_trained if a.ttconv_train_only else write_ttconv)(doc, folder if a.quick else
                                                                          _common.RESULTS)
            print(f"part {part}: {time.time() - t0:.0f}s", flush=True)
            continue
        else:
            raise SystemExit(f"unknown part {part!r}; known: {', '.join(PARTS)}")
        parts[part].update(part=part, command=command, machine=machine, commit=_common.git_sha(),
                           seconds=time.time() - t0)
        print(f"part {part}: {time.time() - t0:.0f}s", flush=True)
        if a.partial:
            out = Path(a.partial)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"lowrank_{part}.json").write_text(json.dumps(parts[part], indent=1, default=str) + "\n")
    if not a.partial and parts:
        write(parts, [command], folder if a.quick else _common.RESULTS)


if __name__ == "__main__":
    main()
