"""The ``deepzip`` command: parse -> API -> report. Every failure is a one-line message and a non-zero exit.

Subcommands: train, prune, share, evaluate, compress, inspect, decompress, report, distill.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str) -> Callable:
    """Register ``configure(parser)`` for subcommand ``name``; the decorated function runs it."""

    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        configure = getattr(run, "_configure", lambda p: None)
        _COMMANDS[name] = (configure, run)
        run._help = help  # type: ignore[attr-defined]
        return run

    return deco


def args(configure: Callable[[argparse.ArgumentParser], None]) -> Callable:
    def deco(run: Callable) -> Callable:
        run._configure = configure
        return run

    return deco


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="MNIST folder (default $DEEPZIP_DATA or ~/.cache/deepzip/mnist)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")


def print_table(rows: list[dict], columns: list[tuple[str, str, str]], file=None) -> None:
    """Print rows as an aligned text table; columns are (key, title, format spec)."""
    file = file or sys.stdout
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        cells.append([
            "" if row.get(key) is None else (format(row[key], spec) if spec else str(row[key]))
            for key, _, spec in columns
        ])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, r in enumerate(cells):
        print("  ".join(c.rjust(w) if n and i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))), file=file)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=file)


def _data(a: argparse.Namespace):
    from .data import load_mnist

    return load_mnist("train", a.data_dir, quiet=a.quiet), load_mnist("test", a.data_dir, quiet=a.quiet)


def _train_cfg(a: argparse.Namespace, model: str | None, *, retrain: bool = False, finetune: bool = False):
    from .recipes import train_config

    cfg = train_config(model or "", retrain=retrain, finetune=finetune)
    for key in ("epochs", "lr", "batch_size", "weight_decay", "jitter"):
        if getattr(a, key, None) is not None:
            setattr(cfg, key, getattr(a, key))
    cfg.progress = not a.quiet
    cfg.seed = a.seed
    return cfg


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=None)
    p.add_argument("--jitter", type=int, nargs="?", const=2, default=None, metavar="PIXELS",
                   help="shift training images by up to PIXELS (2 if no number; 0 = off; default: the model's recipe)")


# ---------------------------------------------------------------------------------------------------- train
def _cfg_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lenet300", help="lenet300, lenet5, mlp1200, mlp800, mlp30 or pkg.mod:factory")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.safetensors)")
    _train_args(p)
    _common(p)


@command("train", "train a model on MNIST and save a checkpoint")
@args(_cfg_train)
def cmd_train(a: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .models import get_model
    from .train import evaluate, fit

    train, test = _data(a)
    model = get_model(a.model, seed=a.seed)
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
def _parse_layer_values(text: str, what: str) -> float | dict[str, float]:
    """``0.9`` or ``fc1=0.92,fc2=0.91``."""
    try:
        if "=" not in text:
            return float(text)
        out = {}
        for part in text.split(","):
            key, _, val = part.partition("=")
            out[key.strip()] = float(val)
        return out
    except ValueError:
        raise ValueError(f"--{what} {text!r}: expected a number or layer=number,layer=number") from None


def _cfg_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sparsity", help="fraction pruned: 0.92, or per layer fc1=0.92,fc2=0.91,fc3=0.74")
    g.add_argument("--quality", help="threshold = quality x std per layer: 1.5, or per layer fc1=2,fc2=1.5")
    g.add_argument("--target", type=float, help="overall sparsity; per-layer values chosen by a sensitivity scan")
    p.add_argument("--rounds", type=int, default=None, help="prune -> retrain rounds (default 3)")
    p.add_argument("--schedule", choices=["iterative", "agp"], default="iterative")
    p.add_argument("--model", default=None, help="architecture when the checkpoint names none")
    p.add_argument("--scan-plot", default=None, help="write the sensitivity scan plot (PNG) here")
    _train_args(p)
    _common(p)


def _load_model(path: str, arch: str | None):
    from .checkpoint import load_checkpoint
    from .models import get_model

    return load_checkpoint(path, get_model(arch) if arch else None)


@command("prune", "prune a checkpoint by magnitude and retrain")
@args(_cfg_prune)
def cmd_prune(a: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .recipes import PruneSettings, run_prune

    model, meta = _load_model(a.checkpoint, a.model)  # a bad checkpoint fails before any data is fetched
    train, test = _data(a)
    settings = PruneSettings(
        sparsity=_parse_layer_values(a.sparsity, "sparsity") if a.sparsity else None,
        quality=_parse_layer_values(a.quality, "quality") if a.quality else None,
        target=a.target,
        rounds=a.rounds or 3,
        schedule=a.schedule,
    )
    result = run_prune(model, train, test, settings, _train_cfg(a, _arch(model), retrain=True),
                       progress=not a.quiet, scan_plot=a.scan_plot)
    save_checkpoint(model, a.output, meta={**meta, "test_error_pct": result["test_error_pct"], "prune": result})
    rows = [*result["layers"], {"layer": "total", "weights": sum(r["weights"] for r in result["layers"]),
                                "kept_pct": result["kept_pct"], "test_error_pct": result["test_error_pct"]}]
    print_table(rows, [("layer", "layer", ""), ("weights", "weights", "d"), ("kept_pct", "kept %", ".2f"),
                       ("paper_kept_pct", "paper %", ""), ("test_error_pct", "test error %", ".2f")])
    print(f"kept {result['kept_pct']:.2f}% of weights ({100 / max(result['kept_pct'], 1e-9):.1f}x fewer); "
          f"test error {result['error_before_pct']:.2f}% -> {result['test_error_pct']:.2f}% -> {a.output}")
    return 0


def _arch(model) -> str | None:
    from .models import model_name

    return model_name(model)


# ---------------------------------------------------------------------------------------------------- evaluate
def _cfg_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a checkpoint (.safetensors) or a compressed file (.dz)")
    p.add_argument("--model", default=None, help="architecture when the file names none")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _common(p)


@command("evaluate", "test error of a checkpoint or .dz file on MNIST")
@args(_cfg_evaluate)
def cmd_evaluate(a: argparse.Namespace) -> int:
    from .data import load_mnist
    from .train import evaluate

    path = Path(a.file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    out: dict = {"file": str(path), "bytes": path.stat().st_size}
    if _is_dz(head):
        from .serialize import load as dz_load

        model = dz_load(path, model=None if a.model is None else _fresh(a.model))
    else:
        model, _ = _load_model(str(path), a.model)
    test = load_mnist("test", a.data_dir, quiet=a.quiet)
    res = evaluate(model, test)
    params = _effective_params(model)
    total = sum(t.numel() for t in params.values())
    nonzero = sum(int((t != 0).sum()) for t in params.values())
    out.update({"model": _arch(model), "test_error_pct": res.error_pct, "errors": res.errors, "n": res.n,
                "params_total": total, "params_nonzero": nonzero,
                "ratio": 4.0 * total / out["bytes"]})
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{path}: test error {res.error_pct:.2f}% ({res.errors}/{res.n}); {nonzero}/{total} non-zero "
              f"parameters; {out['bytes']} bytes ({out['ratio']:.1f}x vs 32-bit parameters)")
    return 0


def _fresh(name: str):
    from .models import get_model

    return get_model(name)


def _effective_params(model) -> dict:
    """Every parameter as the model uses it (parametrized weights evaluated)."""
    out = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            out[f"{mname}.{pname}" if mname else pname] = p.detach()
        if hasattr(module, "parametrizations"):
            for pname in module.parametrizations:
                out[f"{mname}.{pname}"] = getattr(module, pname).detach()
    return {k: v for k, v in out.items() if ".parametrizations." not in k}


def _is_dz(head: bytes) -> bool:
    try:
        from .codec.container import MAGIC
    except ImportError:
        return False
    return head.startswith(MAGIC)


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="deepzip", description="Make trained neural networks small.")
    parser.add_argument("--version", action="version", version=f"deepzip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _load_plugins()
    for name, (configure, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=run._help, description=run._help)  # type: ignore[attr-defined]
        configure(p)
        p.set_defaults(_run=run)
    return parser


def _load_plugins() -> None:
    """Subcommands defined next to the technique they drive (pipeline, distill, report) register themselves."""
    import importlib

    for mod in ("deepzip._cli_share", "deepzip._cli_distill", "deepzip._cli_dz"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "_run", None):
        parser.print_help()
        return 2
    if getattr(a, "threads", None):
        import torch

        torch.set_num_threads(a.threads)
    from .checkpoint import CheckpointError
    from .data import DataError

    try:
        return int(a._run(a) or 0)
    except KeyboardInterrupt:
        print("deepzip: interrupted", file=sys.stderr)
        return 130
    except (ValueError, CheckpointError, DataError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"deepzip {a.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"deepzip {a.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    # `python -m deepzip.cli` runs this file as __main__; plugins register into the imported deepzip.cli, so use its
    # main (else plugin subcommands such as `share` are missing).
    from deepzip.cli import main as _main

    sys.exit(_main())
