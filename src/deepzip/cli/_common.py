"""Shared pieces of the ``deepzip`` command modules: the command registry, common arguments, tables, loaders."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["args", "command", "existing_file", "print_table"]

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
        run._configure = configure  # type: ignore[attr-defined]
        return run

    return deco


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="MNIST folder (default $DEEPZIP_DATA or ~/.cache/deepzip/mnist)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")


def existing_file(name: str) -> Path:
    """The path of an input file the user named, or FileNotFoundError naming it (one line, exit 2)."""
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


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
    from ..data import load_mnist

    return load_mnist("train", a.data_dir, quiet=a.quiet), load_mnist("test", a.data_dir, quiet=a.quiet)


def _train_cfg(a: argparse.Namespace, model: str | None, *, retrain: bool = False, finetune: bool = False):
    from ..recipes import train_config

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


def _load_model(path: str, arch: str | None):
    from ..checkpoint import load_checkpoint
    from ..models import get_model

    return load_checkpoint(path, get_model(arch) if arch else None)


def _arch(model) -> str | None:
    from ..models import model_name

    return model_name(model)


def _fresh(name: str):
    from ..models import get_model

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
        from ..codec.container import MAGIC
    except ImportError:
        return False
    return head.startswith(MAGIC)


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
