"""Sparse variational dropout (Molchanov et al. 2017) as deepzip's sparsifier on the LeNets, beside magnitude pruning.

Rerun: OMP_NUM_THREADS=1 python benchmarks/vd_lenet.py [--models lenet300,lenet5] [--skip-magnitude]
       [--config 'lenet5={"vd_kl_scale": 2}'] [--tag _name] [--progress]

For each model: the trained base (cached in runs/, as benchmarks/deep_compression_lenet.py), then in one run
(1) the Deep Compression pipeline of today (magnitude pruning, scan-chosen sparsities at target 0.93) and
(2) the same pipeline with the model's VD recipe (``deepzip.apps.mnist.recipes.VD_RECIPES``, what
``deepzip compress --model NAME --sparsifier vd`` runs; ``--config`` overrides fields): VD from the trained model,
weights with log alpha > 3 masked, the neurons and filters left without inputs or readers removed (``shrink``), one
retraining round with the masks, then the bits scan, weight sharing with fine-tuning and the Huffman-coded ``.dz``.
Both files are evaluated from the file. Reported: bytes on disk, ratio against the 32-bit parameters, test error,
per layer the kept %, bits, index bits, the position bits per kept weight against the mask's empirical entropy
(``n * H(kept/n) / kept``, the least any position code of an i.i.d. mask can spend), the ratio after each stage and
the wall time of each stage; the literature's figures as anchors (their counting rules differ: see the table).
Results: benchmarks/results/vd_lenet.{json,md}.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RUNS, md_table, trained, write_results

from deepzip import codec
from deepzip.apps.mnist.data import load_mnist
from deepzip.apps.mnist.pipeline import run_pipeline
from deepzip.apps.mnist.recipes import vd_recipe
from deepzip.codec._tensor import tensor_stats
from deepzip.io.checkpoint import load_checkpoint
from deepzip.pipeline import PipelineConfig

MAGNITUDE = {"target_sparsity": 0.93, "prune_rounds": 3, "bits": None, "bits_tolerance": 0.02}
ANCHORS = [
    # model, method, ratio, error %, what is counted
    ("lenet5", "Deep Compression (Han et al. 2016)", 39, 0.74, "real storage"),
    ("lenet5", "Soft weight-sharing (Ullrich et al. 2017)", 162, 0.97, "bits, Han's storage scheme"),
    ("lenet5", "Sparse VD (Molchanov et al. 2017)", 280, 0.75, "non-zeros only"),
    ("lenet5", "Weightless (Reagen et al. 2018)", 382, 1.0, "encoded bits"),
    ("lenet5", "MIRACLE (Havasi et al. 2019)", 555, 0.69, "real coded bits"),
    ("lenet5", "MIRACLE (Havasi et al. 2019)", 1110, 0.96, "real coded bits"),
    ("lenet5", "Bayesian compression (Louizos et al. 2017)", 771, 1.0, "bits"),
    ("lenet300", "Deep Compression (Han et al. 2016)", 40, 1.58, "real storage"),
    ("lenet300", "Sparse VD (Molchanov et al. 2017)", 68, 1.92, "non-zeros only"),
    ("lenet300", "Soft weight-sharing (Ullrich et al. 2017)", 64, 1.94, "bits"),
]
TARGETS = {"lenet5": (600.0, 0.75), "lenet300": (120.0, 1.60)}


def _h(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def layer_rows(path: Path, model: str, variant: str) -> list[dict]:
    f = codec.read(path.read_bytes())
    rows = []
    for name, enc in f.tensors.items():
        st = tensor_stats(enc)
        n, kept = st["count"], st["kept"]
        row = {"model": model, "variant": variant, "tensor": name, "kind": st["kind"], "weights": n, "kept": kept,
               "kept_pct": 100.0 * kept / n if n else 0.0, "k": st["k"], "bytes": st["bytes"],
               "bits_per_kept_weight": 8 * st["bytes"] / kept if kept else None,
               "index_bits_per_entry": st["index_bits_per_entry"], "position_bits_per_kept": None,
               "mask_entropy_bits_per_kept": None}
        if st["kind"] == "sparse" and kept:
            pos_bits = st["gap_bits"] + st["fillers"] * (st["index_bits_per_entry"] or 0)
            row["position_bits_per_kept"] = pos_bits / kept
            row["mask_entropy_bits_per_kept"] = n * _h(kept / n) / kept
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--vd-epochs", type=int, default=None, help="default: the model's VD recipe")
    ap.add_argument("--config", action="append", default=[], help="MODEL=JSON overrides of the vd config")
    ap.add_argument("--skip-magnitude", action="store_true", help="only the vd pipeline")
    ap.add_argument("--tag", default="")
    ap.add_argument("--progress", action="store_true", help="progress bars and the VD shrink steps on stderr/stdout")
    a = ap.parse_args()
    import json

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.config)}
    train, test = load_mnist("train", quiet=True), load_mnist("test", quiet=True)
    rows, layers, stages = [], [], []
    for name in a.models.split(","):
        ckpt = trained(name)
        variants = {} if a.skip_magnitude else {"magnitude (deepzip today)": {**MAGNITUDE}}
        recipe = vd_recipe(name)  # what `deepzip compress --model NAME --sparsifier vd` runs
        if a.vd_epochs is not None:
            recipe["vd_epochs"] = a.vd_epochs
        variants["sparse VD"] = {"bits": None, "bits_tolerance": 0.02, **recipe, **overrides.get(name, {})}
        for variant, fields in variants.items():
            model, _ = load_checkpoint(ckpt)
            cfg = PipelineConfig(model=name, **fields)
            tag = "vd" if fields.get("sparsifier") == "vd" else "magnitude"
            work = RUNS / f"pipeline_{name}_{tag}{a.tag}"
            out = RUNS / f"{name}_{tag}{a.tag}.dz"
            t0 = time.time()
            s = run_pipeline(model, train, test, cfg, out, workdir=work, source=ckpt.name,
                             progress=a.progress)
            wall = time.time() - t0
            ratio_target, err_target = TARGETS[name]
            sb = s["stage_bytes"]
            rows.append({"model": name, "variant": variant, "bytes": s["bytes"], "ratio": s["ratio"],
                         "error_before_pct": s["error_before_pct"], "test_error_pct": s["error_after_pct"],
                         "params_nonzero": s["params_nonzero"],
                         "nonzero_ratio": s["params_total"] / max(s["params_nonzero"], 1),
                         "target": f">= {ratio_target:g}x at <= {err_target}%" if tag == "vd" else "",
                         "met": (s["ratio"] >= ratio_target and s["error_after_pct"] <= err_target)
                         if tag == "vd" else None})
            stages.append({"model": name, "variant": variant,
                           "ratio_pruned": sb["dense_32bit"] / sb["pruned"],
                           "ratio_pruned_shared": sb["dense_32bit"] / sb["pruned_shared_fixed_width"],
                           "ratio_file": s["ratio"], "error_pruned_pct": s["error_pruned_pct"],
                           "error_shared_pct": s["error_shared_pct"],
                           "vd_error_pct": (s["prune"].get("vd") or {}).get("test_error_pct"),
                           **{f"s_{k}": v for k, v in s["seconds"].items()}, "s_total": wall})
            layers += layer_rows(out, name, variant)
            print(f"{name} {variant}: {s['bytes']:,} B, {s['ratio']:.1f}x, {s['error_before_pct']:.2f}% -> "
                  f"{s['error_after_pct']:.2f}% ({wall:.0f} s)", flush=True)
    anchors = [{"model": m, "method": meth, "ratio": r, "error_pct": e, "counted": c} for m, meth, r, e, c in ANCHORS]
    command = "OMP_NUM_THREADS=1 python " + shlex.join(sys.argv)
    write_results(f"vd_lenet{a.tag}", rows, command, title="Sparse variational dropout as deepzip's sparsifier",
                  sections={"Ratio after each stage and wall time per stage (s, this 2-core CPU, 1 thread)":
                            md_table(stages),
                            "Per tensor: kept, bits, position bits per kept weight vs the mask's entropy":
                            md_table(layers),
                            "Anchors from the literature (their counting differs)": md_table(anchors)},
                  extra={"stages": stages, "layers": layers, "anchors": anchors})


if __name__ == "__main__":
    main()
