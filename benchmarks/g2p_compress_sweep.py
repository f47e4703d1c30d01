"""Which compression settings keep the sequence-level KD G2P student within 1 WER point at >= 10x? A sweep on the DEV
split (the test split stays for benchmarks/seq_kd_g2p.py, which uses the chosen recipe, ``COMPRESS``).

For each setting (pruning sparsity of the GRU/linear matrices, of the embeddings, bits per shared index, retraining
epochs): the student trained by ``benchmarks/seq_kd_g2p.py`` (``benchmarks/models/g2p/student-seq.dz``) is pruned while
retraining on the teacher's beam outputs, weight-shared with centroid fine-tuning (``compress_student_``), saved as a
``.dz`` file; dev WER greedy is measured after pruning (before sharing) and from the file, so the table says which step
costs what.

    python benchmarks/g2p_compress_sweep.py --settings 0.65/0.5/4,0.5/0.5/5,0/0/3   # sparsity/emb_sparsity/bits

Writes benchmarks/results/g2p_compress_sweep.{json,md}. Settings already measured (same recipe hash) are read back
from runs/g2p/sweep-cache.json instead of being run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RUNS, write_results

import deepzip
from deepzip.apps.g2p.data import encode_word, load_g2p
from deepzip.apps.g2p.pipeline import evaluate_g2p, load_recipe_model
from deepzip.apps.g2p.recipes import STUDENT, STUDENT_TRAIN, TEACHER, TEACHER_TRAIN, G2PCompressConfig, g2p_recipe_tag
from deepzip.models.seq2seq import Seq2Seq
from deepzip.techniques.prune import prunable_tensors, prune_
from deepzip.techniques.seqdistill import fit_seq2seq, teacher_targets
from deepzip.techniques.share import share_weights_


def compress_measured(model: Seq2Seq, words: list, beam_out: list, c: G2PCompressConfig, train, dev) -> dict:
    """``g2p_pipeline.compress_student_``'s two steps, with dev WER measured between them."""
    from deepzip.techniques.prune import AGPSchedule

    final = {n: (c.embedding_sparsity if n.endswith("_emb") else c.sparsity) for n in prunable_tensors(model)}
    t0 = time.perf_counter()
    prune_(model, sparsity={n: 0.0 for n in final})
    p_cfg = dataclasses.replace(train, epochs=c.prune_epochs, lr=c.lr, warmup=50)
    steps = -(-len(words) // p_cfg.batch_size) * p_cfg.epochs
    schedule = AGPSchedule(final=final, begin=0, end=int(0.6 * steps), every=max(1, steps // 100))
    fit_seq2seq(model, words, beam_out, p_cfg, desc="prune + retrain", step_callback=schedule)
    prune_(model, sparsity=final)
    pruned = evaluate_g2p(model, dev)["wer_pct"]
    share_weights_(model, c.bits, progress=False)
    shared0 = evaluate_g2p(model, dev)["wer_pct"]
    f_cfg = dataclasses.replace(train, epochs=c.centroid_epochs, lr=c.lr / 2, warmup=50)
    fit_seq2seq(model, words, beam_out, f_cfg, desc="centroid fine-tune")
    secs = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.dz"
        deepzip.save(model, path)
        nbytes = path.stat().st_size
        back = deepzip.load(path)
    return {"dev_wer_pruned": pruned, "dev_wer_shared_before_finetune": shared0,
            "dev_wer_file": evaluate_g2p(back, dev)["wer_pct"], "bytes": nbytes, "seconds": secs}


MODELS = ROOT / "benchmarks" / "models" / "g2p"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="0.65/0.5/4,0.5/0.5/5,0/0/3",
                    help="comma-separated sparsity/embedding_sparsity/bits[/prune_epochs/centroid_epochs]")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    train, dev, _ = load_g2p()
    root = RUNS / "g2p"
    t_cfg = dataclasses.replace(TEACHER_TRAIN, device="cpu", progress=False)
    t_tag = g2p_recipe_tag(TEACHER, t_cfg, "")
    s_cfg = dataclasses.replace(STUDENT_TRAIN, device="cpu", progress=False)
    s_tag = g2p_recipe_tag(STUDENT, s_cfg, "seq", t_tag)
    t_path, s_path = MODELS / "teacher.dz", MODELS / "student-seq.dz"
    for p in (t_path, s_path):
        if not p.exists():
            sys.exit(f"{p}: missing; run `python benchmarks/seq_kd_g2p.py --train-only` first")
    teacher = load_recipe_model(t_path, t_tag)[0]
    words = [encode_word(w) for w in train.words]
    beam_out = teacher_targets(teacher, words, beam=5, cache=root / f"sweep-seqkd-{t_tag}.json", progress=False)
    student = load_recipe_model(s_path, s_tag)[0]
    dense_bytes = 4 * sum(p.numel() for p in student.parameters())
    base = evaluate_g2p(student, dev)["wer_pct"]
    cache_path = root / "sweep-cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    rows = []
    for spec in a.settings.split(","):
        v = spec.split("/")
        c = G2PCompressConfig(sparsity=float(v[0]), embedding_sparsity=float(v[1]), bits=int(v[2]),
                              **({"prune_epochs": int(v[3])} if len(v) > 3 else {}),
                              **({"centroid_epochs": int(v[4])} if len(v) > 4 else {}))
        key = g2p_recipe_tag(STUDENT, s_cfg, "sweep", c.to_dict(), s_tag)
        if key not in cache:
            m = Seq2Seq(STUDENT)
            m.load_state_dict(student.state_dict())
            cache[key] = compress_measured(m, words, beam_out, c, s_cfg, dev)
            cache_path.write_text(json.dumps(cache, indent=1))
        r = cache[key]
        rows.append({"sparsity": c.sparsity, "embedding_sparsity": c.embedding_sparsity, "bits": c.bits,
                     "prune_epochs": c.prune_epochs, "centroid_epochs": c.centroid_epochs, "bytes": r["bytes"],
                     "ratio": dense_bytes / r["bytes"], "dev_wer_uncompressed": base,
                     "dev_wer_pruned": r["dev_wer_pruned"], "dev_wer_shared_before_finetune":
                         r["dev_wer_shared_before_finetune"], "dev_wer_file": r["dev_wer_file"],
                     "delta_points": r["dev_wer_file"] - base, "seconds": r["seconds"]})
        print(rows[-1], flush=True)
    command = "python benchmarks/g2p_compress_sweep.py " + " ".join(sys.argv[1:])
    write_results("g2p_compress_sweep", rows, command,
                  title="Compression settings of the sequence-level KD G2P student, on the dev split",
                  extra={"student": str(s_path.name), "dense_32bit_bytes": dense_bytes})


if __name__ == "__main__":
    main()
