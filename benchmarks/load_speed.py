"""``deepzip.load(path)``'s default (inference) form against the plain dense model, at batch 1 (issue 23, "fast by
default"): an AlexNet fc6-shaped layer and whole LeNets from their ``.dz`` files.

Rerun (LeNet files from ``deepzip compress --model lenet300 -o runs/lenet300.dz`` and ``--model lenet5``):

    OMP_NUM_THREADS=1 python benchmarks/load_speed.py --lenet300 runs/lenet300.dz --lenet5 runs/lenet5.dz

Rows (torch with one thread; each model's variants timed in interleaved rounds in the same run, one call of each
per round in shuffled order, each after an untimed call of the same model, so that a change of machine load hits
them alike; medians of wall and of thread CPU time):

- ``dense``: the same weights as plain ``nn.Linear`` / ``nn.Conv2d`` layers (``strip(deepzip.load(path,
  trainable=True))``; for fc6, the layer's dense weight in an ``nn.Linear``);
- ``load default``: ``deepzip.load(path)`` as it comes (fc6: ``deepzip.load(path, model=nn.Sequential(nn.Linear(9216,
  4096)))``):
  each pruned layer sparse or dense, whichever measured faster while loading;
- ``load trainable``: ``deepzip.load(path, trainable=True)``, the fine-tunable form (masks and codebooks as
  parametrizations; what ``deepzip.load`` gave by default before), timed in fewer rounds.

fc6: 4096 x 9216, 9% kept, 5-bit shared (benchmarks/codec.py's synthetic layer: Laplace weights, the smallest
pruned away, 32 linearly spaced centroids), stored by ``deepzip.save`` of an ``nn.Linear`` holding that codebook.

Results: benchmarks/results/load_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results
from codec import make_layer
from inference import interleaved

import deepzip
from deepzip.runtime import runtime_table
from deepzip.techniques import share
from deepzip.techniques.prune import strip

torch.set_num_threads(1)


def fc6(tmp: Path) -> tuple[Path, nn.Module, nn.Module]:
    """The fc6-shaped file, its plain dense layer, and a fresh layer to load it into."""
    rows, cols = 4096, 9216
    cb, idx, mask = make_layer(rows * cols, seed=0, prune=0.91, k=32)
    layer = nn.Sequential(nn.Linear(cols, rows))  # (a model: deepzip names the tensors "0.weight", "0.bias")
    share.set_codebook_(layer[0], cb, idx.reshape(rows, cols), mask.reshape(rows, cols))
    path = tmp / "fc6.dz"
    deepzip.save(layer, path)
    dense = strip(layer).eval().requires_grad_(False)
    return path, dense, nn.Sequential(nn.Linear(cols, rows))


def measure(name: str, path: Path, dense: nn.Module, fresh: nn.Module | None, x: torch.Tensor, repeats: int,
            slow_repeats: int) -> dict:
    twin = copy.deepcopy(fresh)  # (load fills the model it is given)
    t0 = time.perf_counter()
    fast = deepzip.load(path, model=fresh) if fresh is not None else deepzip.load(path)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = deepzip.load(path, model=twin, trainable=True)
    slow_load_s = time.perf_counter() - t0
    with torch.no_grad():
        diff = float((fast(x) - dense(x)).abs().max())
        cpu: dict[str, float] = {}
        # warm: each timed call right after an untimed one of the same model, the order shuffled in each round (a
        # fixed order favoured the second of two identical models by ~1.5%)
        ms = interleaved({"dense": lambda: dense(x), "default": lambda: fast(x)}, repeats, warm=True, cpu=cpu)
        slow_ms = interleaved({"trainable": lambda: slow(x)}, slow_repeats)["trainable"]
    row = {"model": name, "batch": x.shape[0], "dense_ms": ms["dense"], "load_default_ms": ms["default"],
           "ratio_dense_over_default": ms["dense"] / ms["default"],
           "dense_cpu_ms": cpu["dense"], "load_default_cpu_ms": cpu["default"],
           "cpu_ratio_dense_over_default": cpu["dense"] / cpu["default"],
           "load_trainable_ms": slow_ms, "trainable_slowdown_vs_dense": slow_ms / ms["dense"],
           "max_abs_diff_vs_dense": diff, "load_default_s": load_s, "load_trainable_s": slow_load_s,
           "forms": ", ".join(f"{r['layer'] or '(layer)'} {r['form']}" + (f"/{r['kernel']}" if r["form"] != "dense"
                                                                            else "") for r in runtime_table(fast)),
           "rounds": repeats}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lenet300", type=Path, default=Path("runs/lenet300.dz"))
    ap.add_argument("--lenet5", type=Path, default=Path("runs/lenet5.dz"))
    ap.add_argument("--repeats", type=int, default=2000, help="interleaved rounds per LeNet (fc6: a twentieth)")
    a = ap.parse_args()
    import tempfile

    from deepzip.apps.mnist.data import load_mnist

    rows = []
    with tempfile.TemporaryDirectory() as d:
        path, dense, fresh = fc6(Path(d))
        rows.append(measure("fc6 4096x9216, 9% kept, 5-bit", path, dense, fresh, torch.rand(1, 9216),
                            max(20, a.repeats // 20), 3))
    test = load_mnist("test", quiet=True)
    for p in (a.lenet300, a.lenet5):
        if not p.is_file():
            raise SystemExit(f"{p}: no such file (make it with `deepzip compress --model {p.stem} -o {p}`)")
        dense = strip(deepzip.load(p, trainable=True)).eval().requires_grad_(False)
        rows.append(measure(f"{p.stem} ({p.name}, {p.stat().st_size:,} B)", p, dense, None, test.x[:1].clone(),
                            a.repeats, max(20, a.repeats // 20)))
    command = "OMP_NUM_THREADS=1 python benchmarks/load_speed.py " + " ".join(sys.argv[1:])
    missed = [r["model"] for r in rows if r["ratio_dense_over_default"] < 1.0]
    same = [r["model"] for r in rows if "csr" not in r["forms"] and "codebook" not in r["forms"]]
    notes = ("Target: `deepzip.load(path)` no slower than the plain dense model at batch 1 (ratio dense / default "
             ">= 1.0, wall medians; CPU-time medians beside them): "
             + (f"missed on {', '.join(missed)}" if missed else "met on every row") + ".\n"
             + (f"Every layer dense (the same computation as the plain model, so the ratio is timing noise around "
                f"1): {', '.join(same)}.\n" if same else "")
             + f"Load average at the end: {os.getloadavg()}.\n")
    write_results("load_speed", rows, command, title="deepzip.load default vs plain dense, batch 1",
                  sections={"Result": notes},
                  columns=["model", "dense_ms", "load_default_ms", "ratio_dense_over_default",
                           "cpu_ratio_dense_over_default", "load_trainable_ms", "trainable_slowdown_vs_dense",
                           "max_abs_diff_vs_dense", "load_default_s", "forms", "rounds"])


if __name__ == "__main__":
    main()
