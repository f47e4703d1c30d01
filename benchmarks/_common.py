"""Shared helpers of the benchmark scripts: cached trained/pruned LeNets and the results convention.

Results convention: ``benchmarks/results/NAME.json`` =
``{"benchmark": NAME, "commit": sha, "command": how-to-rerun, "rows": [...], ...}`` and ``NAME.md`` with the same
numbers as a table. Trained and pruned checkpoints are cached in ``runs/`` (git-ignored) so scripts can share them;
delete ``runs/`` to retrain from scratch.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = Path(os.environ.get("DEEPZIP_RUNS", ROOT / "runs"))


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "loadavg_at_end": os.getloadavg()}


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def md_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def write_results(name: str, rows: list[dict], command: str, *, title: str, sections: dict[str, str] | None = None,
                  extra: dict | None = None, columns: Sequence[str] | None = None) -> None:
    """Write NAME.json and NAME.md; ``sections`` are extra Markdown blocks (heading -> body)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "commit": git_sha(), "command": command, "machine": machine(), "rows": rows,
           **(extra or {})}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    md = [f"# {title}\n", f"Command: `{command}`  \nCommit: `{doc['commit']}`  \n"
          f"Machine: {doc['machine']}\n", md_table(rows, columns)]
    for heading, body in (sections or {}).items():
        md.append(f"\n## {heading}\n\n{body}")
    (RESULTS / f"{name}.md").write_text("\n".join(md))
    print(f"wrote {RESULTS / name}.json and .md")


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def trained(model: str, *, quiet: bool = True) -> Path:
    """A trained checkpoint of ``model`` (trained with the default recipe on first use, then cached in runs/ under
    a name that carries the recipe's hash, so a changed recipe retrains)."""
    from deepzip.apps.mnist.recipes import recipe_tag

    path = RUNS / f"{model}-{recipe_tag(model)}.safetensors"
    if not path.exists():
        RUNS.mkdir(parents=True, exist_ok=True)
        threads = os.environ.get("OMP_NUM_THREADS")
        cmd = [sys.executable, "-m", "deepzip.cli", "train", "--model", model, "-o", str(path),
               *(["--threads", threads] if threads else [])]
        _run(cmd + (["-q"] if quiet else []))
    return path


def pruned(model: str, *, quiet: bool = True) -> Path:
    """A pruned + retrained checkpoint of ``model`` (paper's per-layer sparsities), cached in runs/."""
    src = trained(model, quiet=quiet)
    path = src.with_suffix(".pruned.safetensors")
    if not path.exists():
        _run([sys.executable, "-m", "deepzip.cli", "prune", str(src), "-o", str(path)] + (["-q"] if quiet else []))
    return path


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
