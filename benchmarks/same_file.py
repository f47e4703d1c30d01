"""Same command, same file? Run the README's ``deepzip compress`` several times with different thread settings.

Each run starts from the same cached trained LeNet-300-100 (the first run trains it) with a fresh stage folder
(``--fresh --workdir``), so every run does all of pruning, sharing and coding. The table gives each run's
settings, wall time, file size, test error from the file and the SHA-256 of the ``.dz`` it wrote.

Run: ``OMP_NUM_THREADS=1 python benchmarks/same_file.py [--runs default,omp2,t1,default] [--cache DIR]``
Settings: ``default`` = the README's command as it is (no ``--threads``, OMP_NUM_THREADS unset); ``ompN`` = the
same with OMP_NUM_THREADS=N in the environment; ``tN`` = ``--threads N`` (and OMP_NUM_THREADS=N). The cache folder
(XDG_CACHE_HOME for the runs, default ``runs/same_file_cache``) holds MNIST and the trained model; the machine's
load from other processes is whatever it is (its 1-minute average is recorded per run). With ``--train`` every
run gets a cache of its own (MNIST copied in), so it also trains the model, as the README's first run does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RUNS, write_results


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensors_sha256(path: Path) -> str:
    """SHA-256 of a safetensors file's tensors (names, shapes, bytes in name order), not of the file: safetensors
    writes its metadata map in hash order, so two saves of the same model can differ in their header bytes."""
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), "np") as f:
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            h.update(f"{k}{t.dtype}{t.shape}".encode())
            h.update(t.tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="default,omp2,t1,default", help="settings of the runs: default, ompN, tN")
    ap.add_argument("--cache", default=str(RUNS / "same_file_cache"))
    ap.add_argument("--name", default="same_file")
    ap.add_argument("--train", action="store_true",
                    help="each run trains its own model (a private cache per run, MNIST copied in)")
    a = ap.parse_args()
    out_dir = Path(a.cache) / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, setting in enumerate(a.runs.split(",")):
        cache = Path(a.cache).resolve()
        if a.train:  # a cache of its own: MNIST (copied) but no trained model, so the run trains one
            import shutil

            own = cache / f"train{i}"
            shutil.rmtree(own, ignore_errors=True)
            shutil.copytree(cache / "deepzip" / "mnist", own / "deepzip" / "mnist")
            cache = own
        env = dict(os.environ, XDG_CACHE_HOME=str(cache))
        env.pop("DEEPZIP_MODELS", None)
        env.pop("DEEPZIP_DATA", None)
        out = out_dir / f"run{i}.dz"
        summary = out_dir / f"run{i}.json"
        cmd = [sys.executable, "-m", "deepzip.cli", "compress", "-q", "--fresh", "--workdir",
               str(out_dir / f"work{i}"), "-o", str(out), "--json", str(summary)]
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
        if setting.startswith("omp"):
            env["OMP_NUM_THREADS"] = setting[3:]
        elif setting.startswith("t"):
            env["OMP_NUM_THREADS"] = setting[1:]
            cmd += ["--threads", setting[1:]]
        elif setting != "default":
            raise SystemExit(f"unknown setting {setting!r}")
        print("+", setting, " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            raise SystemExit(f"run {i} failed")
        s = json.loads(summary.read_text())
        trained = sorted((cache / "deepzip" / "models").glob("*.safetensors"))
        rows.append({"run": i, "setting": setting, "trains": a.train, "loadavg_1min": round(os.getloadavg()[0], 2),
                     "wall_s": round(wall, 1), "bytes": out.stat().st_size,
                     "error_pct": s.get("error_after_pct"), "sha256": sha256(out)[:16],
                     "trained_tensors_sha256": tensors_sha256(trained[0])[:16] if trained else None})
        print(rows[-1], flush=True)
    distinct = sorted({r["sha256"] for r in rows})
    sizes = [r["bytes"] for r in rows]
    errs = [r["error_pct"] for r in rows]
    verdict = (f"{len(rows)} runs, {len(distinct)} distinct file(s); sizes {min(sizes):,}..{max(sizes):,} bytes, "
               f"test errors {min(errs):.2f}..{max(errs):.2f}%")
    print(verdict)
    write_results(a.name, rows, f"python benchmarks/same_file.py --runs {a.runs}" + (" --train" if a.train else ""),
                  title="Same command, same file: `deepzip compress` under different thread settings",
                  sections={"Verdict": verdict + "\n"}, extra={"distinct_files": distinct})


if __name__ == "__main__":
    main()
