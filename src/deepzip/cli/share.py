"""``deepzip share``: k-means weight sharing of a (pruned) checkpoint, with centroid fine-tuning.

Registers itself with :mod:`deepzip.cli` when the parser is built (``cli._load_plugins``).
"""

from __future__ import annotations

import argparse
import time

from ._common import (
    _SOURCES,
    _check_output,
    _data,
    _load_model,
    _progress,
    _reader_args,
    _train_cfg,
    args,
    command,
    print_table,
)

__all__ = ["cmd_share", "parse_bits"]


def parse_bits(text: str) -> int | str | dict[str, int | str]:
    """``--bits``: ``6``, a conv/fc preset ``8/5``, per layer ``fc1=6,fc2=5``, or both ``8/5,fc3=6``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"--bits {text!r}: expected e.g. 8/5, 6, fc1=6,fc2=5 or 8/5,fc3=6")
    out: dict[str, int | str] = {}
    for part in parts:
        key, eq, val = part.rpartition("=")
        try:
            value: int | str = val if "/" in val else int(val)
        except ValueError:
            raise ValueError(f"--bits {text!r}: {val!r} is not an integer or a conv/fc preset such as 8/5") from None
        out[key.strip() if eq else "default"] = value
    if list(out) == ["default"]:
        return out["default"]
    return out


def _cfg_share(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=f"a (pruned) model: {_SOURCES}")
    p.add_argument("-o", "--output", required=True, help="shared checkpoint to write (.safetensors)")
    p.add_argument("--bits", default="8/5",
                   help="bits per index: 8/5 (conv/fc, the paper's), 8/4, 4/2, 6, fc1=6,fc2=5, or 8/5,fc3=6")
    p.add_argument("--init", choices=["linear", "density", "random"], default="linear",
                   help="k-means centroid initialisation (default linear, the paper's best)")
    p.add_argument("--method", choices=["kmeans", "linear"], default="kmeans",
                   help="kmeans (weight sharing) or linear (uniform fixed-point levels)")
    p.add_argument("--no-finetune", dest="finetune", action="store_false", help="do not retrain the centroids")
    p.add_argument("--model", default=None, help="architecture when the checkpoint names none")
    p.add_argument("--plot", default=None, metavar="DIR",
                   help="write per-layer weight histograms with the centroids marked (PNG) into DIR")
    _reader_args(p, train=True)


@command("share", "k-means weight sharing with centroid fine-tuning")
@args(_cfg_share)
def cmd_share(a: argparse.Namespace) -> int:
    from pathlib import Path

    from ..io.checkpoint import save_checkpoint
    from ..techniques.prune import get_mask, prunable_layers
    from ..techniques.share import resolve_bits, share_weights_, sharing_table
    from ..train import evaluate, fit
    from ._common import _arch

    bits = parse_bits(a.bits)
    _check_output(a.output, a.checkpoint)
    model, meta = _load_model(a.checkpoint, a.model, a.trust_code, a.max_bytes)
    resolve_bits(model, bits)  # bad bits or layer names fail here, before the data loads
    train, test = _data(a, label_with=model)
    arch = _arch(model)
    layers = prunable_layers(model)
    before_w = {n: m.weight.detach().clone() for n, m in layers.items()}
    was_pruned = {n: get_mask(m) is not None for n, m in layers.items()}
    t0 = time.time()
    before = evaluate(model, test)
    share_weights_(model, bits, init=a.init, method=a.method, seed=a.seed, progress=_progress(a))
    shared = evaluate(model, test)
    cfg = _train_cfg(a, arch, finetune=True)
    log: list[dict] = []
    if a.finetune and cfg.epochs > 0:
        log = fit(model, train, cfg, desc="fine-tune centroids")
    after = evaluate(model, test) if log else shared
    seconds = time.time() - t0
    table = sharing_table(model)
    result = {
        "bits": bits, "init": a.init, "method": a.method, "finetune": bool(log),
        "error_before_pct": before.error_pct, "error_shared_pct": shared.error_pct, "test_error_pct": after.error_pct,
        "layers": table, "train": cfg.to_dict() if log else None, "seconds": seconds,
    }
    save_checkpoint(model, a.output, meta={**meta, "test_error_pct": after.error_pct, "share": result})
    if a.plot:
        for row in table:
            if row["centroids"] is None:
                continue
            name = row["layer"]
            stage = "pruned" if was_pruned[name] else "before"  # which panel the input weights go in
            from ..report import plot_sharing

            plot_sharing(layers[name], Path(a.plot) / f"share_{name}_hist.png", **{stage: before_w[name]},
                         title=f"{arch or 'model'} {name}: {row['centroids']} shared values")
    print_table(table, [("layer", "layer", ""), ("weights", "weights", "d"), ("kept_pct", "kept %", ".2f"),
                        ("bits", "bits", ""), ("centroids", "centroids", ""), ("distinct", "distinct values", "")])
    tuned = f" -> {after.error_pct:.2f}% (fine-tuned {cfg.epochs} epochs)" if log else " (no fine-tuning)"
    print(f"test error {before.error_pct:.2f}% -> {shared.error_pct:.2f}% (shared){tuned}, "
          f"{seconds:.0f}s -> {a.output}")
    return 0
