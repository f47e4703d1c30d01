"""Why Fisher-weighted k-means loses, and why uniform grids win (issue 13 diagnostics), on all-MiniLM-L6-v2.

Three measurements, each on the same 64 calibration sentences as benchmarks/post_training.py (the drop is
``1 - mean cosine`` of the sentence embeddings against the original, with ONE tensor replaced, the others exact):

1. Reliability of the diagonal-Fisher estimate: the split-half correlation of ``log F`` between two estimates with
   different probe seeds, one Rademacher probe per *batch of 32* (the session-3 estimator, 2 probes) against one
   probe per *sample* (:func:`deepzip.techniques.posttrain.fisher_diagonal` with ``per_sample``).
2. Per-tensor drop of k-means at 3 and 4 bits (one codebook per tensor, no outliers) with weights: none (plain),
   the per-sample Fisher, Fisher + its mean (smoothed), sqrt(Fisher).
3. The word-embedding matrix (52% of the parameters): k-means against a zero-centred uniform grid (step std / r,
   Huffman-coded indices), bits per weight = the exact Huffman stream size.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/post_training_diag.py``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import post_training as pt
from _common import machine, md_table, write_results

from deepzip.techniques import posttrain
from deepzip.techniques.posttrain import PostTrainConfig
from deepzip.techniques.posttrain._allocate import _set_weights_
from deepzip.techniques.posttrain._calibration import _drop, _outputs
from deepzip.techniques.posttrain._candidates import _candidate

torch.set_num_threads(1)


def main() -> None:
    t0 = time.time()
    sents = pt.splits(False)
    model = pt.load_minilm().eval()
    cal = pt.text_batches(model, sents["calibration"])
    mods = pt.big_weights(model)
    ref = _outputs(model, cal, pt.st_forward)

    def drop() -> float:
        return _drop(_outputs(model, cal, pt.st_forward), ref)

    layer0 = [n for n in mods if ".layer.0." in n]
    sub = {n: mods[n] for n in ["0.model.embeddings.word_embeddings.weight", *layer0]}
    est = {}
    for kind, per_sample, probes in (("per batch of 32", False, 2), ("per sample", True, 1)):
        est[kind] = [posttrain.fisher_diagonal(model, cal, pt.st_forward, sub, probes=probes, seed=s,
                                               per_sample=per_sample) for s in (0, 1)]

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(np.log(a.ravel() + 1e-30), np.log(b.ravel() + 1e-30))[0, 1])

    rel_rows = [{"tensor": n.split("model.")[-1],
                 **{f"split-half corr, {k}": round(corr(e[0][n], e[1][n]), 3) for k, e in est.items()}} for n in sub]
    print(md_table(rel_rows), flush=True)

    fisher = {n: (est["per sample"][0][n] + est["per sample"][1][n]) / 2 for n in sub}
    cfg = PostTrainConfig(kmeans_iter=15)
    tests = ["0.model.embeddings.word_embeddings.weight", "0.model.encoder.layer.0.attention.self.query.weight",
             "0.model.encoder.layer.0.intermediate.dense.weight", "0.model.encoder.layer.0.output.dense.weight",
             "0.model.encoder.layer.0.attention.output.dense.weight"]
    w_rows = []
    for n in tests:
        w = mods[n].weight.detach().numpy().copy()
        f = fisher[n]
        weights = {"plain": np.ones_like(f), "Fisher": f, "Fisher + mean": f + f.mean(), "sqrt(Fisher)": np.sqrt(f)}
        for bits in (3, 4):
            row: dict = {"tensor": n.split("model.")[-1], "bits": bits}
            for k, fw in weights.items():
                c = _candidate(w, fw.astype(np.float64), bits, 0, 0.0, True, cfg, grid=0.0)
                assert c is not None
                _set_weights_(mods, {n: c.weight(w.shape)})
                row[f"drop, {k}"] = round(drop(), 6)
                _set_weights_(mods, {n: w})
            w_rows.append(row)
            print(row, flush=True)

    n = "0.model.embeddings.word_embeddings.weight"
    w = mods[n].weight.detach().numpy().copy()
    e_rows = []
    for label, bits, grid in ([(f"k-means {b} bits", b, 0.0) for b in (3, 4, 5)]
                              + [(f"grid std/{r:g}", 2, r) for r in (1.0, 1.41, 2.0, 2.83, 4.0, 5.66, 8.0)]):
        c = _candidate(w, np.ones_like(w), bits, 0, 0.0, False, cfg, grid=grid)
        assert c is not None
        _set_weights_(mods, {n: c.weight(w.shape)})
        e_rows.append({"word embeddings as": label, "bits/weight": round(c.nbytes * 8 / w.size, 3),
                       "levels": int(c.codebooks.shape[1]) if c.codebooks is not None else 0,
                       "max |error|": float(np.abs(c.weight(w.shape) - w).max()), "drop": round(drop(), 6)})
        _set_weights_(mods, {n: w})
        print(e_rows[-1], flush=True)

    cmd = "PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/post_training_diag.py"
    write_results("post_training_diag", e_rows, cmd, title="Post-training diagnostics (issue 13): Fisher weighting, "
                  "grids vs k-means", sections={
                      "Fisher estimate reliability (log F, two probe seeds)": md_table(rel_rows),
                      "Per-tensor drop: k-means weighting (one tensor replaced)": md_table(w_rows),
                      "Setup": f"64 calibration sentences (benchmarks/post_training.py splits); wall "
                               f"{time.time() - t0:.0f} s.\n"},
                  extra={"reliability": rel_rows, "weighting": w_rows, "machine": machine()})


if __name__ == "__main__":
    main()
