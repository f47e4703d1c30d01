"""The TT-conv part of ``benchmarks/lowrank.py`` (``--parts ttconv``): tensor-train convolutions (Garipov et al.
2016, "Ultimate tensorization", arXiv 1611.03214) on MNIST, since we have no CIFAR-10 here.

The net is ``cnnbn`` (``deepzip.apps.mnist.models.CNNBN``): convs 16-32-64 with batch norm, fc 3136-512-10, the
paper's conv-fc net made narrow enough to train on one CPU core. Its variants are made by
``deepzip.techniques.lowrank.rebuild_`` from a low-rank spec (the same record ``deepzip.save`` writes), so each one
trained from scratch starts from the TT layers' own init, and all use one recipe (Adam, cosine schedule, 1-pixel
jitter, ``--ttconv-epochs`` epochs):

- dense twin;
- TT-conv + TT-FC (conv2, conv3 as ``TTConv2d``, fc1 as ``TTLinear``; conv1 and fc2 dense, as in the paper) at
  several TT ranks: whole-network parameter ratio and test error (target: >= 80x fewer parameters at <= +0.5
  points against the dense twin);
- TT-conv only (fc dense) and Tucker-2 convs (fc dense) at matched parameter counts: error and multiply-adds;
- TT-SVD of the trained dense twin (``decompose_(..., conv_factorization="tt", linear_factorization="tt")``) plus
  ``--ttconv-finetune-epochs`` of fine-tuning, beside the same TT net trained from scratch;
- every model saved to ``.dz`` and reloaded with ``deepzip.load(path)`` alone, its test error measured again;
  latency at batch 1 and 64 (one thread, models interleaved, both forward modes of the TT layers);
- Deep Compression (prune + share + Huffman, ``deepzip.pipeline.compress_`` with fixed per-layer sparsities and
  bits) of the dense twin and of the TT net (acting on the TT cores): bytes and error.

Trained models are cached under ``runs/ttconv/`` (git-ignored) keyed by variant, epochs and seed, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import _common
import torch
from _common import md_table
from torch import nn

from deepzip.data import Dataset
from deepzip.io.serialize import load, save
from deepzip.models import get_model
from deepzip.pipeline import PipelineConfig, compress_
from deepzip.techniques.lowrank import (
    TTConv2d,
    TTLinear,
    count_macs,
    decompose_,
    lowrank_spec,
    lowrank_table,
    rebuild_,
)
from deepzip.techniques.prune import prunable_tensors
from deepzip.train import TrainConfig, evaluate, fit

MODEL = "cnnbn"
MODES = {"conv2": ((2, 2, 4), (2, 4, 4)), "conv3": ((2, 4, 4), (4, 4, 4)), "fc1": ((8, 8, 7, 7), (8, 4, 4, 4))}
RECIPE = dict(lr=2e-3, optimizer="adam", weight_decay=0.0, jitter=1)


def tt_spec(conv_rank: int | None, fc_rank: int | None) -> list[dict]:
    """The low-rank record of cnnbn with TT convs at ``conv_rank`` and a TT fc1 at ``fc_rank`` (None: dense)."""
    spec = []
    if conv_rank is not None:
        for name, shape in (("conv2", [32, 16, 3, 3]), ("conv3", [64, 32, 3, 3])):
            ins, outs = MODES[name]
            spec.append({"layer": name, "kind": "ttconv", "shape": shape, "ranks": [conv_rank] * len(ins) + [1],
                         "in_modes": list(ins), "out_modes": list(outs)})
    if fc_rank is not None:
        ins, outs = MODES["fc1"]
        spec.append({"layer": "fc1", "kind": "tt", "shape": [512, 3136], "ranks": [1] + [fc_rank] * 3 + [1],
                     "in_modes": list(ins), "out_modes": list(outs)})
    return spec


def tucker_ranks(spec: list[dict]) -> dict[str, tuple[int, int]]:
    """Tucker-2 ranks (R_out, R_in) per conv whose parameter count is closest to the TT-conv's in ``spec``
    (ties: the ratio R_out / R_in closest to the layer's O / I)."""
    fresh = rebuild_(get_model(MODEL), spec)
    out = {}
    for entry in spec:
        if entry["kind"] != "ttconv":
            continue
        o, i, kh, kw = entry["shape"]
        target = sum(p.numel() for p in fresh.get_submodule(entry["layer"]).parameters())
        best = min(((ro, ri) for ro in range(1, o + 1) for ri in range(1, i + 1)),
                   key=lambda r: (abs(i * r[1] + r[0] * r[1] * kh * kw + r[0] * o - target),
                                  abs(math.log(r[0] / r[1]) - math.log(o / i))))
        out[entry["layer"]] = best
    return out


def tucker_spec(ranks: dict[str, tuple[int, int]]) -> list[dict]:
    shapes = {"conv2": [32, 16, 3, 3], "conv3": [64, 32, 3, 3]}
    return [{"layer": k, "kind": "tucker2", "shape": shapes[k], "ranks": list(v)} for k, v in ranks.items()]


def set_forward_mode(model: nn.Module, mode: str) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (TTConv2d, TTLinear)):
            m.forward_mode = mode
    return model


def default_modes(model: nn.Module) -> nn.Module:
    """The forward modes a freshly loaded model has (TTLinear: cores, TTConv2d: dense)."""
    for m in model.modules():
        if isinstance(m, TTLinear):
            m.forward_mode = "cores"
        elif isinstance(m, TTConv2d):
            m.forward_mode = "dense"
    return model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def macs(m: nn.Module, mode: str) -> int:
    m = set_forward_mode(copy.deepcopy(m).cpu().eval(), mode)
    return sum(count_macs(m, torch.zeros(1, 1, 28, 28)).values())


def train_(m: nn.Module, data: Dataset, epochs: int, seed: int = 0, lr: float | None = None) -> nn.Module:
    """One recipe for every row; TT layers train in the ``dense`` forward mode (the weight rebuilt per batch:
    measured faster on a CPU than the core-by-core chain at batch 128), the same function."""
    cfg = TrainConfig(epochs=epochs, **{**RECIPE, **({"lr": lr} if lr else {})})
    cfg.progress, cfg.seed = False, seed
    set_forward_mode(m, "dense")
    fit(m, data, cfg)
    return default_modes(m)


def error(m: nn.Module, test: Dataset) -> float:
    return evaluate(default_modes(m).eval(), test).error_pct


def cached(key: str, a: argparse.Namespace, make: Any) -> tuple[nn.Module, float]:
    """``make()`` -> a trained model, cached as ``runs/ttconv/KEY.dz`` (a deepzip file: the reload is the test)."""
    path = _common.RUNS / "ttconv" / f"{key}.dz"
    side = path.with_suffix(".json")  # the training time, beside the cached model
    if path.exists() and not a.quick:
        return load(path), json.loads(side.read_text())["train_s"] if side.exists() else float("nan")
    t0 = time.time()
    m = make()
    seconds = time.time() - t0
    if not a.quick:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(m, path)
        side.write_text(json.dumps({"train_s": seconds}) + "\n")
    return m, seconds


def latency(models: dict[str, nn.Module], reps: int) -> dict[str, dict[str, float]]:
    from lowrank import latency_ms

    out: dict[str, dict[str, float]] = {k: {} for k in models}
    for batch, n in ((1, reps), (64, max(reps // 10, 5))):
        ms = latency_ms(models, batch, n)
        for k, v in ms.items():
            out[k][f"ms_b{batch}"] = v
            out[k][f"speedup_b{batch}"] = ms["dense twin"] / v
    return out


def subset(data: Dataset, n: int | None) -> Dataset:
    """The first ``n`` images of a fixed random order (all of them for None)."""
    if n is None or n >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]
    return Dataset(data.x[idx], data.y[idx])


def pair(text: str) -> tuple[int, int]:
    """"8": conv and fc ranks 8; "12/8": conv ranks 12, fc ranks 8."""
    conv, _, fc = text.partition("/")
    return int(conv), int(fc or conv)


def rank_name(rc: int, rf: int) -> str:
    return f"{rc}" if rc == rf else f"{rc} conv / {rf} fc"


def dense_row(rows: list[dict]) -> dict:
    return next(r for r in rows if r["group"] == "dense")


def part_ttconv(train_d: Dataset, test: Dataset, a: argparse.Namespace, folder: Path) -> dict:
    epochs, ft_epochs = a.ttconv_epochs, a.ttconv_finetune_epochs
    train_d = subset(train_d, a.ttconv_subset or None)
    tag = f"e{epochs}" + (f"_n{len(train_d)}" if a.ttconv_subset else "")
    ranks = [pair(r) for r in a.ttconv_ranks.split(",")]
    rows: list[dict] = []
    models: dict[str, nn.Module] = {}

    def add(label: str, group: str, key: str, make: Any, **extra: Any) -> nn.Module:
        m, seconds = cached(f"{key}_{tag}", a, make)
        m = default_modes(m).eval()
        models[label] = m
        rows.append({"group": group, "variant": label, "params": n_params(m), "macs_cores": macs(m, "cores"),
                     "macs_dense": macs(m, "dense"), "error_pct": error(m, test),
                     "train_s": seconds if math.isnan(seconds) else round(seconds),
                     "spec": json.dumps(lowrank_spec(m)), **extra})
        print(f"ttconv {label}: {rows[-1]['params']:,} params, {rows[-1]['error_pct']:.2f}%", flush=True)
        return m

    def scratch(spec: list[dict]) -> Any:
        def make() -> nn.Module:
            torch.manual_seed(0)
            return train_(rebuild_(get_model(MODEL), spec), train_d, epochs)
        return make

    dense = add("dense twin", "dense", "dense", scratch([]))
    conv_only = tt_spec(a.ttconv_only_rank, None)
    tr = tucker_ranks(conv_only)
    for rc, rf in ranks:  # in the order given: the first ones survive a shortened run
        name = rank_name(rc, rf)
        add(f"TT-conv + TT-FC, ranks {name}", "tt-conv + tt-fc", f"ttall_r{rc}" + (f"_{rf}" if rf != rc else ""),
            scratch(tt_spec(rc, rf)), rank=name)
        if (rc, rf) == ranks[0] and not a.ttconv_no_conv_only:  # the conv-only pair early, too
            add(f"TT-conv only, ranks {a.ttconv_only_rank}", "conv only", f"ttconv_r{a.ttconv_only_rank}",
                scratch(conv_only), rank=a.ttconv_only_rank)
            add(f"Tucker-2 convs only, ranks {tr}", "conv only",
                "tucker_" + "_".join(f"{o}x{i}" for o, i in tr.values()), scratch(tucker_spec(tr)))
    if a.ttconv_train_only:
        for row in rows:
            row.update(params_ratio=dense_row(rows)["params"] / row["params"],
                       delta_error_points=row["error_pct"] - dense_row(rows)["error_pct"])
        return {"rows": rows, "recipe": {**RECIPE, "epochs": epochs, "batch_size": 128,
                                         "train_images": len(train_d)}}

    # TT-SVD of the trained dense twin, then fine-tuning, beside the same structure from scratch
    rc, rf = pair(a.ttconv_svd_rank)
    r = rank_name(rc, rf)
    svd_rows = []

    def tt_svd_of_dense() -> nn.Module:
        m = copy.deepcopy(dense)
        decompose_(m, ranks={"conv2": rc, "conv3": rc, "fc1": rf}, conv_factorization="tt", linear_factorization="tt",
                   tt_modes={k: v for k, v in MODES.items()}, skip_larger=False)
        return m

    svd0 = tt_svd_of_dense()  # deterministic: the same factors the cached fine-tuned net started from
    svd_rows.append({"variant": f"TT-SVD of the dense twin, ranks {r}, before fine-tuning", "params": n_params(svd0),
                     "error_pct": error(svd0, test),
                     "rel_error": json.dumps({x["layer"]: round(x["rel_error"], 4) for x in lowrank_table(svd0)})})

    def from_dense() -> nn.Module:
        return train_(tt_svd_of_dense(), train_d, ft_epochs, lr=RECIPE["lr"] / 4)

    add(f"TT-SVD of the dense twin + {ft_epochs} epochs fine-tuning, ranks {r}", "tt-svd",
        f"ttsvd_r{rc}_{rf}_ft{ft_epochs}", from_dense, rank=r)

    # every model, saved and reloaded from the file alone
    base = rows[0]
    for i, row in enumerate(rows):
        m = models[row["variant"]]
        path = folder / f"row{i}.dz"
        nbytes = save(m, path)
        loaded = load(path)
        row.update(file_bytes=nbytes, file_error_pct=error(loaded, test),
                   params_ratio=base["params"] / row["params"], delta_error_points=row["error_pct"] - base["error_pct"])
        row["same_error_from_file"] = row["file_error_pct"] == row["error_pct"]

    # latency: dense twin, the TT nets in both forward modes, Tucker-2
    timed: dict[str, nn.Module] = {"dense twin": dense}
    for label, m in models.items():
        if label == "dense twin":
            continue
        if any(isinstance(x, (TTConv2d, TTLinear)) for x in m.modules()):
            timed[f"{label} [as loaded]"] = default_modes(copy.deepcopy(m))
            timed[f"{label} [dense mode]"] = set_forward_mode(copy.deepcopy(m), "dense")
            timed[f"{label} [cores mode]"] = set_forward_mode(copy.deepcopy(m), "cores")
        else:
            timed[label] = m
    lat = latency(timed, a.reps)
    lat_rows = [{"variant": k, **v} for k, v in lat.items()]

    # Deep Compression on top: the dense twin alone, and the TT net's cores
    dc_rows = []
    dc_rank = rank_name(*pair(a.ttconv_dc_rank))
    tt_net = models[f"TT-conv + TT-FC, ranks {dc_rank}"]
    for arm, start, sparsity in (
            ("Deep Compression alone (dense twin)", dense,
             {"conv1": 0.5, "conv2": 0.7, "conv3": 0.8, "fc1": 0.95, "fc2": 0.8}),
            (f"TT-conv + TT-FC ranks {dc_rank}, then Deep Compression of the cores", tt_net, None)):
        m = copy.deepcopy(start)
        names = list(prunable_tensors(m))
        if sparsity is None:
            # TT cores are already compact (every entry feeds many weights): pruned lightly; the window cores
            # (9 x r_0 entries) not at all; the dense conv1 and fc2 as in the dense arm
            sparsity = {n: 0.0 if n.endswith(".cores.0") and n.startswith("conv") else 0.3 if ".cores." in n
                        else 0.5 if n == "conv1" else 0.8 for n in names}
        cfg = PipelineConfig(model=MODEL, sparsity=sparsity, prune_rounds=1, bits="8/5")

        def retrain(model: nn.Module, stage: str) -> None:
            train_(model, train_d, 1, lr=RECIPE["lr"] / 4)

        t0 = time.time()
        compress_(m, cfg, retrain, progress=False, log=lambda s: None)
        err = error(m, test)
        path = folder / f"dc_{len(dc_rows)}.dz"
        nbytes = save(m, path, config=cfg.to_dict())
        loaded = load(path)
        dc_rows.append({"arm": arm, "sparsity": json.dumps(sparsity), "bits": "8/5 (conv/other)", "bytes": nbytes,
                        "ratio_vs_dense_fp32": 4 * base["params"] / nbytes, "error_pct": err,
                        "file_error_pct": error(loaded, test), "seconds": round(time.time() - t0)})
        print(f"ttconv DC {arm}: {nbytes:,} B, {err:.2f}%", flush=True)

    target = [r for r in rows if r["group"] == "tt-conv + tt-fc" and r["params_ratio"] >= 80
              and r["delta_error_points"] <= 0.5]
    return {"rows": rows, "svd_before_finetune": svd_rows, "latency": lat_rows, "dc": dc_rows,
            "recipe": {**RECIPE, "epochs": epochs, "finetune_epochs": ft_epochs, "batch_size": 128,
                       "train_images": len(train_d)},
            "modes": {k: [list(v[0]), list(v[1])] for k, v in MODES.items()},
            "target_met": bool(target), "target_rows": [r["variant"] for r in target]}


def write_ttconv_trained(doc: dict, results: Path) -> Path:
    """``--ttconv-train-only``: the trained nets' parameters and test errors, lowrank_ttconv_train_<tag>.{json,md}."""
    r = doc["recipe"]
    tag = f"e{r['epochs']}_n{r['train_images']}"
    cols = ["variant", "params", "params_ratio", "macs_cores", "macs_dense", "error_pct", "delta_error_points",
            "train_s"]
    md = [f"# TT-conv nets trained from scratch on MNIST ({r['epochs']} epochs, {r['train_images']} images)\n",
          f"Command: `{doc['command']}`  \nCommit: `{doc['commit']}`  \nMachine: {doc['machine']}\n",
          md_table(doc["rows"], cols), f"\nRecipe (every row): {r}.\n"]
    if doc.get("note"):
        md.append("\n## Notes\n\n" + doc["note"] + "\n")
    results.mkdir(parents=True, exist_ok=True)
    (results / f"lowrank_ttconv_train_{tag}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (results / f"lowrank_ttconv_train_{tag}.md").write_text("\n".join(md))
    return results / f"lowrank_ttconv_train_{tag}.md"


def write_ttconv(doc: dict, results: Path) -> None:
    """benchmarks/results/lowrank_ttconv.{json,md}."""
    cols = ["variant", "params", "params_ratio", "macs_cores", "macs_dense", "error_pct", "delta_error_points",
            "file_error_pct", "same_error_from_file", "file_bytes", "train_s"]
    best = [r for r in doc["rows"] if r["group"] == "tt-conv + tt-fc"]
    target = (f"- Target >= 80x fewer parameters in the whole network at <= +0.5 points: "
              f"{'met by ' + ', '.join(doc['target_rows']) if doc['target_met'] else 'NOT met'} ("
              + "; ".join(f"{r['variant']}: {r['params_ratio']:.1f}x at {r['delta_error_points']:+.2f} points"
                          for r in best) + ").\n")
    md = ["# Tensor-train convolutions on MNIST (Garipov et al. 2016, on MNIST, not the paper's CIFAR-10)\n",
          "Commands: " + " ; ".join(f"`{c}`" for c in doc.get("commands", [doc["command"]]))
          + f"  \nCommit: `{doc['commit']}`  \nMachine: {doc['machine']}\n",
          "## Whole network: dense twin, TT-conv + TT-FC at several ranks, TT-conv only, Tucker-2 at matched "
          "parameters, TT-SVD + fine-tuning\n",
          md_table(doc["rows"], cols),
          "\n`macs_cores`: multiply-adds with the TT layers computed core by core (the format's own cost); "
          "`macs_dense`: with the weight rebuilt and one dense op (a dense conv's / linear's multiply-adds, the "
          "rebuild aside). `file_error_pct`: the test error of `deepzip.load(path)` of the saved file alone.\n",
          "\nTT-SVD of the trained dense twin before fine-tuning:\n", md_table(doc["svd_before_finetune"]),
          "\n## Targets\n", target,
          "\n## Latency (CPU, one thread, median; all models interleaved rep by rep)\n",
          "`[as loaded]`: the forward modes `deepzip.load` gives (TTConv2d: kernel rebuilt + one conv; TTLinear: core "
          "by core); `[dense mode]`: every TT layer rebuilds its weight and runs one dense op; `[cores mode]`: every "
          "TT layer core by core.\n\n", md_table(doc["latency"]),
          "\n## Deep Compression on top (prune + share + Huffman)\n", md_table(doc["dc"]),
          f"\nRecipe (every row): {doc['recipe']}; TT modes {doc['modes']}.\n"]
    if doc.get("note"):
        md.append("\n## Notes\n\n" + doc["note"] + "\n")
    results.mkdir(parents=True, exist_ok=True)
    (results / "lowrank_ttconv.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (results / "lowrank_ttconv.md").write_text("\n".join(md))
