"""Why sequence-level KD does not beat labels on CMUdict G2P: the teacher's outputs as targets in other forms, and a
smaller student (issue 25's diagnosis; the main comparison is ``benchmarks/seq_kd_g2p.py``).

With the committed teacher (``benchmarks/models/g2p/teacher.dz``), on one CPU thread, every student trained with the
recipe's budget (``STUDENT_TRAIN``: 10 epochs, batch 256, seed 0) and evaluated greedy and beam 5 on the dev and test
splits:

- the committed students of the main benchmark (labels only, word-level KD, sequence-level KD), evaluated again;
- **seq-inter** (Kim & Rush 2016, section 3.2): for each training word, of the teacher's final beam-5 candidates
  (:func:`deepzip.models.seq2seq.beam_candidates`) the one closest to a reference (edit distance; ties: the teacher's
  order) -- the reference itself when the beam holds it;
- **seq-KD + extra words**: the teacher's beam-5 output on the training words plus as many English words that are not
  in CMUdict (the ``web2`` list of PyPI ``english-words==2.0.2``: letters only, 2-20 long, shuffled with seed 0), with
  the epochs halved so that the student takes the same number of steps;
- a smaller student (emb 16, encoder 2x32, decoder 64; 46k parameters) on labels and on the teacher's beam outputs;
- with ``--only labels seq --epochs N``: the recipe's student on labels and on the beam outputs, trained here.

It also reports how far the teacher's beam-5 output is from the references on its own training words (the
sequence-level KD targets differ from the labels on that fraction of words).

    OMP_NUM_THREADS=1 python benchmarks/seq_kd_g2p_variants.py              # 1,071 s measured, one thread
    OMP_NUM_THREADS=1 python benchmarks/seq_kd_g2p_variants.py --only inter # one variant
    OMP_NUM_THREADS=1 python benchmarks/seq_kd_g2p_variants.py --only small-labels small-seq --epochs 30

Teacher outputs are cached in runs/g2p-variants/ (keyed by the teacher's digest); students are not kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RUNS, write_results

from deepzip.apps.g2p.data import (
    LETTERS,
    decode_phonemes,
    encode_phonemes,
    encode_word,
    load_g2p,
    phoneme_error_rate,
    word_error_rate,
)
from deepzip.apps.g2p.pipeline import evaluate_g2p, load_recipe_model
from deepzip.apps.g2p.recipes import STUDENT, STUDENT_TRAIN, TEACHER, TEACHER_TRAIN, g2p_recipe_tag
from deepzip.models.seq2seq import Seq2Seq, beam_candidates, pad_batch
from deepzip.techniques.seqdistill import _model_digest, fit_seq2seq, teacher_targets

MODELS = ROOT / "benchmarks" / "models" / "g2p"
SMALL = {"emb": 16, "enc": 32, "dec": 64}
VARIANTS = ["committed", "inter", "extra", "small-labels", "small-seq", "labels", "seq"]
DEFAULT = VARIANTS[:5]  # "labels" and "seq": the recipe's student trained here (for --epochs)
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:6.0f} s] {msg}", flush=True)


def edit_distance(a: list[int], b: list[int]) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def cached(name: str, key: str, compute: Any) -> Any:
    path = RUNS / "g2p-variants" / f"{name}.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "value": value}))
    os.replace(tmp, path)
    return value


def nbest(teacher: torch.nn.Module, words: list[list[int]], beam: int = 5, batch: int = 256) -> list[list[list[int]]]:
    order = sorted(range(len(words)), key=lambda i: len(words[i]))
    out: list[list[list[int]]] = [[] for _ in words]
    with torch.no_grad():
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            src, n = pad_batch([words[i] for i in idx])
            for i, cands in zip(idx, beam_candidates(teacher, src, n, beam=beam)):
                out[i] = cands
    return out


def scores(model: torch.nn.Module, dev: Any, test: Any) -> dict[str, float]:
    g, b = evaluate_g2p(model, test), evaluate_g2p(model, test, beam=5)
    return {"dev_wer_greedy": evaluate_g2p(model, dev)["wer_pct"], "test_wer_greedy": g["wer_pct"],
            "test_per_greedy": g["per_pct"], "test_wer_beam5": b["wer_pct"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=VARIANTS, default=DEFAULT)
    ap.add_argument("--epochs", type=int, default=None, help="students' epochs (default: the recipe's); results "
                    "then go to seq_kd_g2p_variants_eN")
    ap.add_argument("--name", default=None, help="results file name (default: seq_kd_g2p_variants[_eN])")
    a = ap.parse_args()
    torch.set_num_threads(1)
    train, dev, test = load_g2p()
    t_cfg = dataclasses.replace(TEACHER_TRAIN, progress=False)
    t_tag = g2p_recipe_tag(TEACHER, t_cfg, "")
    teacher, _ = load_recipe_model(MODELS / "teacher.dz", t_tag)
    digest = _model_digest(teacher)
    words = [encode_word(w) for w in train.words]
    refs = [[encode_phonemes(r) for r in rs] for rs in train.refs]
    s_cfg = dataclasses.replace(STUDENT_TRAIN, progress=False)
    if a.epochs is not None:
        s_cfg = dataclasses.replace(s_cfg, epochs=a.epochs)
    pairs = train.pairs()
    label_src, label_tgt = [encode_word(w) for w, _ in pairs], [encode_phonemes(p) for _, p in pairs]
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"teacher": str((MODELS / "teacher.dz").relative_to(ROOT)), "teacher_recipe": t_tag}

    def beam_targets() -> list[list[int]]:
        t = time.perf_counter()
        out = cached("beam5", digest, lambda: teacher_targets(teacher, words, beam=5, progress=False))
        log(f"teacher beam 5 on {len(words)} training words ({time.perf_counter() - t:.0f} s)")
        return out

    def train_one(name: str, cfg: Any, src: list, tgt: list, student: dict | None = None, note: str = "") -> None:
        model = Seq2Seq(dataclasses.replace(STUDENT, **(student or {})))
        t, c = time.perf_counter(), time.process_time()
        fit_seq2seq(model, src, tgt, cfg, desc=name)
        secs, cpu = time.perf_counter() - t, time.process_time() - c
        row = {"student": name, "params": sum(p.numel() for p in model.parameters()), "targets": len(tgt),
               "epochs": cfg.epochs, **scores(model, dev, test), "train_s": secs, "train_cpu_s": cpu, "note": note}
        rows.append(row)
        log(json.dumps(row))

    beam = beam_targets()
    hyps = [decode_phonemes(h) for h in beam]
    info["teacher_beam5_on_training_words"] = {"wer_pct": word_error_rate(hyps, train.refs),
                                               "per_pct": phoneme_error_rate(hyps, train.refs)}
    log(f"teacher's beam-5 output vs the references on its training words: {info['teacher_beam5_on_training_words']}")
    if "committed" in a.only and a.epochs in (None, STUDENT_TRAIN.epochs):
        for mode in ("labels", "word", "seq"):
            tag = g2p_recipe_tag(STUDENT, s_cfg, mode, t_tag)
            path = MODELS / f"student-{mode}.dz"
            model, _ = load_recipe_model(path, tag)
            rows.append({"student": f"{mode} (committed, {path.name})",
                         "params": sum(p.numel() for p in model.parameters()), "epochs": s_cfg.epochs,
                         **scores(model, dev, test), "note": "benchmarks/seq_kd_g2p.py's model"})
            log(json.dumps(rows[-1]))
    if "inter" in a.only:
        t = time.perf_counter()
        cands = cached("nbest5", digest, lambda: nbest(teacher, words))
        log(f"teacher's beam-5 candidates ({time.perf_counter() - t:.0f} s)")
        inter = [min(c, key=lambda h: min(edit_distance(h, r) for r in rs)) for c, rs in zip(cands, refs)]
        info["seq_inter"] = {"equal_to_teacher_top1": sum(x == b for x, b in zip(inter, beam)),
                             "a_reference": sum(x in rs for x, rs in zip(inter, refs)), "words": len(inter)}
        train_one("seq-inter", s_cfg, words, inter, note=f"{info['seq_inter']}")
    if "extra" in a.only:
        try:
            from english_words import get_english_words_set  # type: ignore[import-not-found]
        except ImportError:
            log("extra: pip install english-words==2.0.2 (left out)")
        else:
            known = set(train.words) | set(dev.words) | set(test.words)
            letters = set(LETTERS)
            extra = sorted(w for w in get_english_words_set(["web2"], lower=True, alpha=True)
                           if w not in known and set(w) <= letters and 2 <= len(w) <= 20)
            random.Random(0).shuffle(extra)
            extra = extra[:len(words)]
            enc = [encode_word(w) for w in extra]
            key = f"{digest}-{hashlib.sha256(json.dumps(extra).encode()).hexdigest()[:16]}"
            t = time.perf_counter()
            extra_tgt = cached("extra-beam5", key, lambda: teacher_targets(teacher, enc, beam=5, progress=False))
            log(f"teacher beam 5 on {len(extra)} extra words ({time.perf_counter() - t:.0f} s)")
            cfg = dataclasses.replace(s_cfg, epochs=max(1, round(s_cfg.epochs * len(words) / (len(words) + len(enc)))))
            info["extra_words"] = len(extra)
            train_one("seq-KD + extra words", cfg, words + enc, beam + extra_tgt,
                      note=f"{len(extra)} web2 words not in CMUdict; same steps as the others")
    if "labels" in a.only:
        train_one("labels only", s_cfg, label_src, label_tgt)
    if "seq" in a.only:
        train_one("sequence-level KD", s_cfg, words, beam)
    if "small-labels" in a.only:
        train_one("small, labels only", s_cfg, label_src, label_tgt, SMALL, note=f"{SMALL}")
    if "small-seq" in a.only:
        train_one("small, sequence-level KD", s_cfg, words, beam, SMALL, note=f"{SMALL}")
    command = "OMP_NUM_THREADS=1 python benchmarks/seq_kd_g2p_variants.py" + \
        (f" --only {' '.join(a.only)}" if a.only != DEFAULT else "") + \
        (f" --epochs {a.epochs}" if a.epochs else "") + (f" --name {a.name}" if a.name else "")
    name = a.name or "seq_kd_g2p_variants" + (f"_e{a.epochs}" if a.epochs else "")
    write_results(name, rows, command,
                  title="Sequence-level KD on G2P: target variants and a smaller student (diagnosis)",
                  sections={"Setup": f"Teacher {info['teacher']} (recipe {t_tag}); its beam-5 output on its own "
                                     f"training words vs the references: {info['teacher_beam5_on_training_words']}. "
                                     f"Students: {dataclasses.asdict(STUDENT)} unless noted, {s_cfg.to_dict()}.\n"},
                  extra={"info": info})
    return 0


if __name__ == "__main__":
    sys.exit(main())
