"""The Deep Compression pipeline on LeNet-300-100 and LeNet-5 (real MNIST), beside the paper's Tables 1-3.

Rerun: python benchmarks/deep_compression_lenet.py [--models lenet300,lenet5] [--distill] [--fresh]

Trains each model (cached in runs/), runs deepzip.apps.mnist.pipeline.run_pipeline with the config below, writes
runs/MODEL.dz, and reports the file's bytes on disk, the ratio against 32-bit parameters, the test error
before and after (after = a model rebuilt from the file), the ratio after each stage, per-layer tables, and the wall
time of each stage. Results: benchmarks/results/deep_compression_lenet.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, RUNS, md_table, trained, write_results

from deepzip.apps.mnist.data import load_mnist
from deepzip.apps.mnist.pipeline import run_pipeline
from deepzip.apps.mnist.recipes import PAPER
from deepzip.io.checkpoint import load_checkpoint
from deepzip.pipeline import PipelineConfig

# What it took (see the Markdown notes): scan-chosen per-layer sparsities at an overall target, scan-chosen bits.
CONFIGS = {
    "lenet300": dict(model="lenet300", target_sparsity=0.93, prune_rounds=3, bits=None, bits_tolerance=0.02),
    "lenet5": dict(model="lenet5", target_sparsity=0.93, prune_rounds=3, bits=None, bits_tolerance=0.02),
}
TARGETS = {"lenet300": (40.0, 1.65), "lenet5": (39.0, 0.85)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lenet300,lenet5")
    ap.add_argument("--distill", action="store_true", help="retrain with the uncompressed model as teacher")
    ap.add_argument("--config", action="append", default=[], help="MODEL=JSON overrides, e.g. lenet300='{...}'")
    ap.add_argument("--fresh", default="", help="comma-separated models whose stage checkpoints in runs/ to ignore")
    ap.add_argument("--tag", default="", help="suffix of the results name (e.g. _distill)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1, as `deepzip compress`: the same file at any machine load)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the `deepzip train` subprocess trains with as many too
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.config)}
    train, test = load_mnist("train", quiet=True), load_mnist("test", quiet=True)
    rows, layer_rows, summaries = [], [], {}
    for name in a.models.split(","):
        t0 = time.time()
        ckpt = trained(name)
        model, meta = load_checkpoint(ckpt)
        train_seconds = float(meta.get("train_seconds", time.time() - t0))
        cfg = PipelineConfig(**{**CONFIGS[name], **overrides.get(name, {}), "distill": a.distill})
        work = RUNS / f"pipeline_{name}{a.tag}"
        if name in a.fresh.split(",") and work.exists():
            import shutil

            shutil.rmtree(work)
        out = RUNS / f"{name}{a.tag}.dz"
        s = run_pipeline(model, train, test, cfg, out, workdir=work, source=ckpt.name, progress=False)
        s["seconds"]["train"] = train_seconds
        summaries[name] = s
        paper = PAPER[name]
        sb = s["stage_bytes"]
        ratio_target, err_target = TARGETS[name]
        rows.append({"model": name, "variant": "paper (Han et al. 2016)", "params_total": s["params_total"],
                     "params_nonzero": None, "bytes": paper["bytes_after"], "ratio": paper["ratio"],
                     "test_error_pct": paper["error_after_pct"], "error_before_pct": paper["error_before_pct"],
                     "ratio_pruned": paper["ratio_stages"][0], "ratio_pruned_shared": paper["ratio_stages"][1],
                     "ratio_huffman": paper["ratio_stages"][2], "seconds": None})
        rows.append({"model": name, "variant": "deepzip" + (" + distillation" if a.distill else ""),
                     "params_total": s["params_total"], "params_nonzero": s["params_nonzero"], "bytes": s["bytes"],
                     "ratio": s["ratio"], "test_error_pct": s["error_after_pct"],
                     "error_before_pct": s["error_before_pct"],
                     "ratio_pruned": sb["dense_32bit"] / sb["pruned"],
                     "ratio_pruned_shared": sb["dense_32bit"] / sb["pruned_shared_fixed_width"],
                     "ratio_huffman": s["ratio"],
                     "seconds": None if None in s["seconds"].values() else sum(s["seconds"].values()),
                     "meets_target": s["ratio"] >= ratio_target and s["error_after_pct"] <= err_target,
                     "target": f">= {ratio_target}x at <= {err_target}%"})
        for r in s["layers"]:
            if r["kind"] == "dense":
                continue
            layer = r["tensor"][:-7]
            layer_rows.append({
                "model": name, "layer": layer, "weights": r["weights"],
                "kept_pct": round(r["kept_pct"], 2), "paper_kept_pct": paper["kept_pct"].get(layer),
                "bits_index_fixed": r["bits_index_fixed"], "paper_bits": paper["bits"].get(layer),
                "bits_weight_huffman": r["bits_index_huffman"],
                "paper_bits_weight": paper["huffman_bits_weight"].get(layer),
                "gap_width": r["gap_width"], "bits_gap_huffman": r["bits_gap_huffman"],
                "paper_bits_index": paper["huffman_bits_index"].get(layer),
                "size_pct": r["size_pct"], "paper_size_pct": paper["size_pct"].get(layer)})
    sections = {}
    sections["Per layer beside the paper's Tables 2 and 3"] = (
        "bits_weight_huffman: Huffman bits per stored weight index; bits_gap_huffman: Huffman bits per relative "
        "position (the paper's 'index'); size_pct: the layer's bytes in the file / its 32-bit size.\n\n"
        + md_table(layer_rows))
    timing_rows = [{"model": n, **{k: None if v is None else round(v, 1) for k, v in s["seconds"].items()}}
                   for n, s in summaries.items()]
    sections["Wall time of each stage (seconds, this machine)"] = md_table(timing_rows)
    settings = [{"model": n, "sparsity": json.dumps({k: round(v, 3) for k, v in s["sparsity"].items()}),
                 "bits": json.dumps(s["bits"]), "error_pruned_pct": s["error_pruned_pct"],
                 "error_shared_before_finetune_pct": s["share"].get("test_error_before_finetune_pct"),
                 "error_shared_pct": s["error_shared_pct"], "file_error_pct": s["error_after_pct"]}
                for n, s in summaries.items()]
    sections["What it took (settings chosen by the scans)"] = md_table(settings) + (
        "\nSparsities: split of the overall target by the sensitivity scan on a fixed subset of 5,000 training "
        "images; bits: the fewest per layer whose codebook (before fine-tuning) keeps that subset's loss within the "
        "tolerance. Retraining and centroid fine-tuning per the model's recipe "
        "(deepzip.apps.mnist.recipes), inputs jittered by "
        "up to 2 pixels as in training.\n")
    cmd = "python benchmarks/deep_compression_lenet.py" + (" --distill" if a.distill else "") + \
        "".join(f" --config {k}='{json.dumps(v)}'" for k, v in overrides.items()) + \
        (f" --tag {a.tag}" if a.tag else "")
    write_results(f"deep_compression_lenet{a.tag}", rows, cmd, title="Deep Compression on LeNets (MNIST)",
                  sections=sections, extra={"layers": layer_rows, "summaries": summaries},
                  columns=["model", "variant", "bytes", "ratio", "error_before_pct", "test_error_pct", "ratio_pruned",
                           "ratio_pruned_shared", "ratio_huffman", "seconds"])
    _ = RESULTS


if __name__ == "__main__":
    main()
