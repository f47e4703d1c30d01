"""Low-rank decomposition of the LeNets on MNIST: Tucker-2 + VBMF (Kim et al. 2016) and tensor-train layers
(Novikov et al. 2015), each fine-tuned afterwards.

1. LeNet-5 (trained checkpoint from runs/, see ``_common.trained``): Tucker-2 on conv2 and a truncated SVD of fc1,
   ranks chosen by analytical VBMF on the unfoldings (as Kim et al.) and by kept energy; a layer whose factorization
   would not be smaller stays dense and is listed as skipped.
2. LeNet-300-100: fc1 (784 -> 300) as a TTLinear with in modes 4x7x4x7 and out modes 3x4x5x5, TT-SVD at a few
   maximal ranks; and, for comparison, a truncated SVD of fc1 with VBMF rank.

Every variant is then fine-tuned for ``--epochs`` epochs with the model's retraining recipe
(``recipes.train_config(model, retrain=True)``, jittered inputs), the whole network trainable. Reported: parameters,
bytes of the saved safetensors checkpoint (``deepzip.io.checkpoint.save_checkpoint``), ratio to the dense checkpoint,
test error right after decomposition and after fine-tuning, seconds (decomposition, fine-tuning) and the median
forward latency at batch 1 and 256 (TT layers are often slower than dense on CPU: measured, not assumed).

Run: ``python benchmarks/lowrank_lenet.py [--models lenet5,lenet300] [--epochs 2]``. Writes
``benchmarks/results/lowrank_lenet.{json,md}``. ``--quick`` is a smoke run of the script on synthetic data
(``deepzip.data.synthetic_mnist``) with models trained for one epoch from scratch; it writes to a temporary folder,
never to benchmarks/results, and its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from _common import Timer, md_table, trained, write_results

from deepzip.apps.mnist.data import load_mnist, synthetic_mnist
from deepzip.apps.mnist.recipes import train_config
from deepzip.data import Dataset
from deepzip.io.checkpoint import load_checkpoint, save_checkpoint
from deepzip.models import get_model
from deepzip.techniques.lowrank import decompose_, lowrank_table, tt_linear_
from deepzip.train import evaluate, fit

LENET5_LAYERS = ["conv2", "fc1"]
TT_MODES = ((4, 7, 4, 7), (3, 4, 5, 5))  # 784 = 4*7*4*7 in, 300 = 3*4*5*5 out


def checkpoint_bytes(model: nn.Module, folder: Path, meta: dict | None = None) -> int:
    path = folder / "_lowrank_tmp.safetensors"
    save_checkpoint(model, path, meta=meta)
    size = path.stat().st_size
    path.unlink()
    return size


def latency_ms(model: nn.Module, x: torch.Tensor, reps: int) -> float:
    """Median wall time of one forward pass, in milliseconds (eval mode, no autograd)."""
    model.eval()
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def base_model(name: str, train: Dataset, quick: bool) -> nn.Module:
    if not quick:
        model, _ = load_checkpoint(trained(name))
        return model
    model = get_model(name)
    cfg = train_config(name)
    cfg.epochs, cfg.progress = 1, False
    fit(model, train, cfg, desc=f"train {name}")
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="lenet5,lenet300", help="comma-separated: lenet5, lenet300")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs after each decomposition (default 2)")
    ap.add_argument("--energies", default="0.9,0.7", help="kept-energy fractions for LeNet-5's energy ranks")
    ap.add_argument("--tt-ranks", default="2,4,8,16", help="maximal TT ranks for LeNet-300-100's fc1")
    ap.add_argument("--hooi-iters", type=int, default=5, help="HOOI sweeps after the HOSVD (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run on synthetic data, results in a temporary folder (not benchmarks/results)")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lowrank_lenet_"))
    if a.quick:
        _common.RESULTS = tmp  # write_results() reads the module global
        train, test = synthetic_mnist(512, seed=0), synthetic_mnist(256, seed=1)
    else:
        train, test = load_mnist("train", quiet=True), load_mnist("test", quiet=True)
    epochs = 1 if a.quick else a.epochs
    reps = 5 if a.quick else 50
    x1, x256 = test.x[:1], test.x[:256]
    rows: list[dict] = []
    layer_rows: list[dict] = []

    def finish(name: str, variant: str, model: nn.Module, decompose_s: float, dense_bytes: int,
               table: list[dict]) -> None:
        err0 = evaluate(model, test).error_pct
        cfg = train_config(name, retrain=True)
        cfg.epochs, cfg.progress = epochs, False
        with Timer() as t:
            if epochs > 0:
                fit(model, train, cfg, desc=f"fine-tune {variant}")
        b = checkpoint_bytes(model, tmp, meta={"lowrank": table})
        rows.append({"model": name, "variant": variant, "params": n_params(model), "bytes": b,
                     "ratio": dense_bytes / b, "error_decomposed_pct": err0,
                     "error_finetuned_pct": evaluate(model, test).error_pct, "decompose_s": decompose_s,
                     "finetune_s": t.seconds, "ms_b1": latency_ms(model, x1, reps),
                     "ms_b256": latency_ms(model, x256, max(reps // 5, 3))})
        for r in table:
            layer_rows.append({"model": name, "variant": variant, "layer": r["layer"], "kind": r["kind"],
                               "ranks": str(r["ranks"]), "params_before": r["params_before"],
                               "params_after": r["params_after"], "rel_error": r["rel_error"],
                               "skipped": r["skipped"] or ""})
        print(f"{name} {variant}: {rows[-1]['params']:,} params, {err0:.2f}% -> "
              f"{rows[-1]['error_finetuned_pct']:.2f}%", flush=True)

    for name in a.models.split(","):
        base = base_model(name, train, a.quick)
        dense_bytes = checkpoint_bytes(base, tmp)
        err = evaluate(base, test).error_pct
        rows.append({"model": name, "variant": "dense (trained)", "params": n_params(base), "bytes": dense_bytes,
                     "ratio": 1.0, "error_decomposed_pct": err, "error_finetuned_pct": err,
                     "ms_b1": latency_ms(base, x1, reps), "ms_b256": latency_ms(base, x256, max(reps // 5, 3))})
        if name == "lenet5":
            settings = [("vbmf", {"method": "vbmf"})]
            settings += [(f"energy {e}", {"method": "energy", "energy": float(e)}) for e in a.energies.split(",")]
            for label, kw in settings:
                model = copy.deepcopy(base)
                with Timer() as t:
                    decompose_(model, layers=LENET5_LAYERS, hooi_iters=a.hooi_iters, progress=False, **kw)
                    table = lowrank_table(model)
                finish(name, f"Tucker-2 conv2 + SVD fc1, {label} ranks", model, t.seconds, dense_bytes, table)
        elif name == "lenet300":
            model = copy.deepcopy(base)
            with Timer() as t:
                table = lowrank_table(decompose_(model, "vbmf", layers=["fc1"], progress=False))
            finish(name, "SVD fc1, vbmf rank", model, t.seconds, dense_bytes, table)
            for r in (int(v) for v in a.tt_ranks.split(",")):
                model = copy.deepcopy(base)
                with Timer() as t:
                    table = lowrank_table(tt_linear_(model, {"fc1": (*TT_MODES, r)}, progress=False))
                finish(name, f"TT fc1, max rank {r}", model, t.seconds, dense_bytes, table)
        else:
            raise SystemExit(f"unknown model {name!r}; expected lenet5 or lenet300")

    sections = {
        "Per layer": md_table(layer_rows),
        "Notes": (
            "params: all parameters of the model. bytes: the saved safetensors checkpoint; ratio = dense bytes / "
            "bytes. error_decomposed_pct: test error right after decomposition; error_finetuned_pct: after "
            f"{epochs} epoch(s) of the retraining recipe. rel_error: ||W - W_hat|| / ||W|| of the layer's weight. "
            "ms_b1 / ms_b256: median forward time at batch 1 / 256 on this machine (shared CPU; see loadavg). "
            f"TT modes of LeNet-300-100's fc1: in {TT_MODES[0]}, out {TT_MODES[1]}.\n"),
    }
    name = "lowrank_lenet_quick" if a.quick else "lowrank_lenet"
    cmd = "python benchmarks/lowrank_lenet.py" + (" --quick" if a.quick else f" --models {a.models} --epochs {epochs}")
    write_results(name, rows, cmd, title="Low-rank decomposition of the LeNets (Tucker-2 + VBMF, tensor train)",
                  sections=sections, extra={"layers": layer_rows},
                  columns=["model", "variant", "params", "bytes", "ratio", "error_decomposed_pct",
                           "error_finetuned_pct", "decompose_s", "finetune_s", "ms_b1", "ms_b256"])
    if a.quick:
        print(f"(quick: results in {tmp}, not in benchmarks/results)")


if __name__ == "__main__":
    main()
