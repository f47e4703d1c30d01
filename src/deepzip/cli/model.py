"""``deepzip train``, ``prune`` and ``evaluate``: models on MNIST."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ._common import (
    _SOURCES,
    _arch,
    _check_output,
    _common,
    _data,
    _effective_params,
    _load_model,
    _parse_layer_values,
    _progress,
    _reader_args,
    _train_args,
    _train_cfg,
    args,
    command,
    print_table,
)


# ---------------------------------------------------------------------------------------------------- train
def _cfg_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lenet300", help="lenet300, lenet5, mlp1200, mlp800, mlp30 or pkg.mod:factory")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.safetensors)")
    _train_args(p)
    _common(p)


@command("train", "train a model on MNIST and save a checkpoint")
@args(_cfg_train)
def cmd_train(a: argparse.Namespace) -> int:
    from ..io.checkpoint import save_checkpoint
    from ..models import get_model
    from ..train import evaluate, fit

    _check_output(a.output)
    model = get_model(a.model, seed=a.seed, trust_code=True)  # the user's own --model: trusted
    train, test = _data(a)
    cfg = _train_cfg(a, a.model)
    t0 = time.time()
    fit(model, train, cfg, desc=f"train {a.model}")
    seconds = time.time() - t0
    res = evaluate(model, test)
    save_checkpoint(model, a.output, meta={"test_error_pct": res.error_pct, "train": cfg.to_dict(),
                                           "train_seconds": seconds})
    print(f"{a.model}: test error {res.error_pct:.2f}% ({res.errors}/{res.n}) after {cfg.epochs} epochs, "
          f"{time.time() - t0:.0f}s -> {a.output}")
    return 0


# ---------------------------------------------------------------------------------------------------- prune


def _cfg_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=f"the model: {_SOURCES}")
    p.add_argument("-o", "--output", required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sparsity", help="fraction pruned: 0.92, or per layer fc1=0.92,fc2=0.91,fc3=0.74")
    g.add_argument("--quality", help="threshold = quality x std per layer: 1.5, or per layer fc1=2,fc2=1.5")
    g.add_argument("--target", type=float, help="overall sparsity; per-layer values chosen by a sensitivity scan")
    p.add_argument("--rounds", type=int, default=None, help="prune -> retrain rounds, at least 1 (default 3)")
    p.add_argument("--schedule", choices=["iterative", "agp"], default="iterative")
    p.add_argument("--model", default=None, help="architecture when the checkpoint names none")
    p.add_argument("--scan-plot", default=None, help="write the sensitivity scan plot (PNG) here")
    _reader_args(p, train=True)




@command("prune", "prune a checkpoint by magnitude and retrain")
@args(_cfg_prune)
def cmd_prune(a: argparse.Namespace) -> int:
    from ..apps.mnist.pipeline import PruneSettings, run_prune
    from ..io.checkpoint import save_checkpoint

    if a.rounds is not None and a.rounds < 1:
        raise ValueError(f"--rounds {a.rounds}: expected at least 1 prune -> retrain round")
    _check_output(a.output, a.checkpoint)
    _check_output(a.scan_plot, a.checkpoint, what="--scan-plot")
    sparsity = _parse_layer_values(a.sparsity, "sparsity") if a.sparsity else None
    quality = _parse_layer_values(a.quality, "quality") if a.quality else None
    # a bad checkpoint fails before any data is fetched
    model, meta = _load_model(a.checkpoint, a.model, a.trust_code, a.max_bytes)
    train, test = _data(a, label_with=model)
    settings = PruneSettings(
        sparsity=sparsity,
        quality=quality,
        target=a.target,
        rounds=3 if a.rounds is None else a.rounds,
        schedule=a.schedule,
    )
    result = run_prune(model, train, test, settings, _train_cfg(a, _arch(model), retrain=True),
                       progress=_progress(a))
    if a.scan_plot and result["scan"]:
        from ..report import plot_sensitivity

        plot_sensitivity(result["scan"], a.scan_plot, chosen=result["sparsity"])
    save_checkpoint(model, a.output, meta={**meta, "test_error_pct": result["test_error_pct"], "prune": result})
    rows = [*result["layers"], {"layer": "total", "weights": sum(r["weights"] for r in result["layers"]),
                                "kept_pct": result["kept_pct"], "test_error_pct": result["test_error_pct"]}]
    print_table(rows, [("layer", "layer", ""), ("weights", "weights", "d"), ("kept_pct", "kept %", ".2f"),
                       ("paper_kept_pct", "paper %", ""), ("test_error_pct", "test error %", ".2f")])
    fewer = f"{100 / result['kept_pct']:.1f}x fewer" if result["kept_pct"] > 0 else "every weight pruned"
    print(f"kept {result['kept_pct']:.2f}% of weights ({fewer}); "
          f"test error {result['error_before_pct']:.2f}% -> {result['test_error_pct']:.2f}% -> {a.output}")
    return 0




# ---------------------------------------------------------------------------------------------------- evaluate
def _cfg_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the model: a .dz file, a checkpoint (deepzip's, any safetensors, a torch "
                                 "state_dict file) or a Hugging Face folder")
    p.add_argument("--model", default=None, help="architecture to load into (default: the one the file names)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the sentence")
    _reader_args(p)


@command("evaluate", "test error of a checkpoint or .dz file on MNIST (or --data)")
@args(_cfg_evaluate)
def cmd_evaluate(a: argparse.Namespace) -> int:
    from ..apps.mnist.data import load_mnist
    from ..train import evaluate

    # the model as deepzip.load gives it for inference: each pruned layer sparse or dense, whichever runs faster
    model, _ = _load_model(a.file, a.model, a.trust_code, a.max_bytes, trainable=False, progress=_progress(a))
    path = Path(a.file)
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    out: dict = {"file": str(path), "bytes": size}
    # --data: the test split of the user's data (labels needed: with inputs only there is nothing to compare with)
    test = _data(a)[1] if a.data else load_mnist("test", a.data_dir, quiet=a.quiet)
    res = evaluate(model, test)
    params = _effective_params(model)
    total = sum(t.numel() for t in params.values())
    nonzero = sum(int((t != 0).sum()) for t in params.values())
    from ..techniques.shrink import architecture_widths

    widths, full = architecture_widths(model, _arch(model))  # a shrunk model: measured against its architecture
    reference = full if widths else total
    out.update({"model": _arch(model), "test_error_pct": res.error_pct, "errors": res.errors, "n": res.n,
                "params_total": total, "params_nonzero": nonzero, "params_architecture": reference,
                "ratio": 4.0 * reference / out["bytes"]})
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{path}: test error {res.error_pct:.2f}% ({res.errors}/{res.n}); {nonzero}/{total} non-zero "
              f"parameters{f' (shrunk from {reference})' if widths else ''}; {out['bytes']} bytes "
              f"({out['ratio']:.1f}x vs 32-bit parameters)")
    return 0
