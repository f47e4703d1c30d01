"""Start-up time and memory of the CLI: `deepzip --help` and `deepzip inspect FILE`, this tree vs another source tree.

    python benchmarks/cli_startup.py --file runs/lenet300.dz [--baseline-src /path/to/old/checkout/src] [--runs 5]

Each command runs ``--runs`` times in a fresh process (median wall time) and once more under ``/usr/bin/time`` for
the peak resident set. With ``--baseline-src`` the same commands run against that source tree (e.g. a ``git
worktree`` of an older commit) in the same session, interleaved, so the two columns share the machine's load.
Writes benchmarks/results/cli_startup.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_results

SRC = Path(__file__).resolve().parents[1] / "src"


def _env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def _wall(cmd: list[str], src: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=_env(src), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def _rss_mb(cmd: list[str], src: Path) -> float | None:
    if not Path("/usr/bin/time").exists():
        return None
    out = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=_env(src), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, check=False)
    try:
        return int(out.stderr.strip().splitlines()[-1]) / 1024
    except (ValueError, IndexError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True, help="a .dz file for `inspect`")
    ap.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src/ to compare with")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    trees = {"this tree": SRC} | ({"baseline": a.baseline_src} if a.baseline_src else {})
    commands = {"deepzip --help": ["--help"], "deepzip inspect FILE": ["inspect", a.file]}
    rows = []
    for label, args in commands.items():
        cmd = [sys.executable, "-m", "deepzip.cli", *args]
        times: dict[str, list[float]] = {t: [] for t in trees}
        for _ in range(a.runs):  # interleaved: both trees see the same load
            for t, src in trees.items():
                times[t].append(_wall(cmd, src))
        for t, src in trees.items():
            rows.append({"command": label, "tree": t, "median_s": statistics.median(times[t]),
                         "peak_rss_mb": _rss_mb(cmd, src)})
    columns = ["command", "tree", "median_s", "peak_rss_mb"]
    write_results("cli_startup", rows, " ".join(["python", "benchmarks/cli_startup.py", *sys.argv[1:]]),
                  title="CLI start-up", columns=columns,
                  extra={"runs": a.runs, "baseline_src": str(a.baseline_src or "")})
    print(md_table(rows, columns))


if __name__ == "__main__":
    main()
