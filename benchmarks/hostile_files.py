"""The hostile files of issue 10 through the real CLI: exit code, first error line, wall time and peak memory.

Files (made by tests/hostile.py): sparse bombs that decode to 1 GiB (67 KB), 16 GiB and 3.6 TiB of zeros, a header
that inflates to 64 MiB of JSON holding 22M empty lists (65 KB), an impossible shape ``[0, 2**63]``, a NaN
centroid, and files naming ``os:abort``, ``sys:exit``, ``builtins:input`` and ``faulthandler:_sigsegv`` as their
architecture. Each command runs in its own process (``python -m deepzip.cli ...``, stdin closed, 120 s limit);
peak memory is the child's maximum resident set size.

Run: ``OMP_NUM_THREADS=1 python benchmarks/hostile_files.py``. Results: benchmarks/results/hostile_files.json, .md.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import hostile  # noqa: E402
from _common import ROOT, write_results  # noqa: E402


def run(argv: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "deepzip.cli", *argv], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        code, err = p.returncode, (p.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        code, err = "timeout", ""
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB; the max over children so far
    return {"exit": code, "wall_s": round(wall, 2), "peak_rss_mib": round(after / 1024, 1) if after > before else None,
            "stderr": err[:160]}


def main() -> None:
    files = {
        "sparse bomb 1 GiB": lambda: hostile.sparse_bomb(1 << 28),
        "sparse bomb 16 GiB": lambda: hostile.sparse_bomb(1 << 32),
        "sparse bomb 3.6 TiB": lambda: hostile.sparse_bomb(int(3.6 * 2**40) // 4),
        "header bomb 22M lists": lambda: hostile.header_bomb(22_000_000),
        "shape [0, 2**63]": lambda: hostile.huge_shape(),
        "NaN centroid": lambda: hostile.nan_codebook(),
        **{f"architecture {n}": (lambda n=n: hostile.named_architecture(n))
           for n in ("os:abort", "sys:exit", "builtins:input", "faulthandler:_sigsegv")},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in files.items():
            path = Path(tmp) / "f.dz"
            path.write_bytes(make())
            size = path.stat().st_size
            commands = {"inspect": ["inspect", str(path)],
                        "decompress": ["decompress", str(path), "-o", str(Path(tmp) / "o.safetensors")],
                        "evaluate": ["evaluate", str(path)]}
            for cmd, argv in commands.items():
                r = isolated(argv)  # peak RSS is a running max over children: one fresh parent per command
                rows.append({"file": name, "bytes": size, "command": cmd, **r})
                print(rows[-1], flush=True)
                (Path(tmp) / "o.safetensors").unlink(missing_ok=True)
    write_results("hostile_files", rows, "OMP_NUM_THREADS=1 python benchmarks/hostile_files.py",
                  title="Hostile files through the CLI (issue 10)",
                  columns=["file", "bytes", "command", "exit", "wall_s", "peak_rss_mib", "stderr"])


def isolated(argv: list[str]) -> dict:
    """Run :func:`run` in a fresh process so that RUSAGE_CHILDREN's maximum is this command's alone."""
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import hostile_files as h; "
            f"print(json.dumps(h.run({argv!r})))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    import json

    return json.loads(p.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
