"""Shared pieces of the ``deepzip`` command modules: the command registry, common arguments, tables, loaders."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _common(p: argparse.ArgumentParser, threads: str = "all cores") -> None:
    p.add_argument("--data-dir", default=None, help="MNIST folder (default $DEEPZIP_DATA or ~/.cache/deepzip/mnist)")
    p.add_argument("--data", default=None, metavar="MODULE:FUNCTION",
                   help="your data instead of MNIST: a function (module:function or path/file.py:function) returning "
                        "(train, test), each (inputs, labels) tensors or an iterable of (input, label) pairs; or "
                        "inputs only (a tensor or input batches) where a trained model can label them: prune, share, "
                        "distill, compress --checkpoint")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bars (they are drawn only when stderr is a terminal anyway)")
    p.add_argument("--seed", type=int, default=0, help="random seed of initial weights, data order and k-means "
                   "(default 0)")
    p.add_argument("--threads", type=int, default=None, help=f"torch CPU threads (default: {threads})")


def _size(text: str) -> int:
    """``--max-bytes``: bytes, or with a K/M/G/T suffix (powers of 1024), e.g. ``4G``."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        n = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected bytes, e.g. 2147483648 or 2G") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive size")
    return n


def _read_args(p: argparse.ArgumentParser, *, trust: bool = True) -> None:
    """Options of every command that reads model files: the decoded-size limit and, where a file may name its own
    architecture, ``--trust-code``. (No deepzip import here: building the parser must stay cheap.)"""
    p.add_argument("--max-bytes", dest="max_bytes", type=_size, default="1G", metavar="SIZE",
                   help="refuse .dz files whose tensors decode to more than SIZE bytes (e.g. 8G; default 1G), "
                        "checked before anything is allocated")
    if trust:
        p.add_argument("--trust-code", dest="trust_code", action="store_true",
                       help="let a file that names its architecture as package.module:factory import that module "
                            "(runs its code; default: only deepzip's own models are built from a file)")


#: What a command that reads a model takes (the one reader, :mod:`deepzip.io.checkpoint`): the tail of its help.
_SOURCES = "a checkpoint (deepzip's, any safetensors, a torch state_dict file), a .dz file or a Hugging Face folder"


def _reader_args(p: argparse.ArgumentParser, *, train: bool = False) -> None:
    """The options a command that reads a model file ends with, in this order: the read limits (``--max-bytes``,
    ``--trust-code``), with ``train`` the retraining options, then the common ones (data, seed, threads)."""
    _read_args(p)
    if train:
        _train_args(p)
    _common(p)


def _progress(a: argparse.Namespace) -> bool:
    """Progress bars: unless --quiet, and only when stderr is a terminal (logs get no carriage-return lines)."""
    return not getattr(a, "quiet", False) and sys.stderr.isatty()


def _check_output(path: str | None, *inputs: str | None, what: str = "output") -> None:
    """Before any work: ``path`` must not be one of the ``inputs`` nor a folder; its folder is created if missing
    and must be writable. One behaviour for every command that writes a file."""
    import os
    from pathlib import Path

    if not path:
        return
    p = Path(path)
    for src in inputs:
        if src and Path(src).exists() and p.exists() and p.resolve() == Path(src).resolve():
            raise ValueError(f"{what} {path} is the input file; write to another path")
    if p.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give a file name")
    folder = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"{what} {path}: cannot create its folder {folder} ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: folder {folder} is not writable")


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


def _data(a: argparse.Namespace, label_with: Any = None):
    """``(train, test)``: the user's ``--data`` or MNIST. ``label_with`` (a trained model) labels a user's inputs-only
    data with its own predictions (its top class), so retraining keeps the model's behaviour and every "test error"
    printed afterwards is the disagreement with that model; a note on stderr says so."""
    from ..apps.mnist.data import load_mnist
    from ..data import load_user_data

    if getattr(a, "data", None):
        if label_with is None:
            return load_user_data(a.data)
        import torch

        model, used = label_with, []

        def label(x: Any) -> Any:
            from ..errors import DataError

            was = model.training
            model.eval()
            try:
                with torch.no_grad():
                    out = [model(x[i : i + 256]) for i in range(0, x.shape[0], 256)]
            except (RuntimeError, ValueError, TypeError, IndexError) as e:  # as train.check_fits words it
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DataError(f"data {a.data!r}: the model does not fit the data: inputs of shape "
                                f"{tuple(x.shape[1:])} give '{msg[:200]}'") from None
            finally:
                model.train(was)
            if not isinstance(out[0], torch.Tensor) or out[0].dim() != 2:
                shape = tuple(out[0].shape) if isinstance(out[0], torch.Tensor) else type(out[0]).__name__
                raise DataError(f"data {a.data!r}: inputs only, but the model's outputs are {shape}, not "
                                f"(batch, classes) logits; give labels")
            used.append(x.shape[0])
            return torch.cat(out).argmax(1)

        data = load_user_data(a.data, label_with=label)
        if used:
            if not a.quiet:
                print(f"data {a.data!r}: inputs only; labelled with the model's own predictions ({sum(used)} inputs), "
                      f"so 'test error' below means disagreement with the model as given", file=sys.stderr)
        return data
    return load_mnist("train", a.data_dir, quiet=a.quiet), load_mnist("test", a.data_dir, quiet=a.quiet)


def _train_cfg(a: argparse.Namespace, model: str | None, *, retrain: bool = False, finetune: bool = False):
    from ..apps.mnist.recipes import train_config

    cfg = train_config(model or "", retrain=retrain, finetune=finetune)
    for key in ("epochs", "lr", "batch_size", "weight_decay", "jitter"):
        if getattr(a, key, None) is not None:
            setattr(cfg, key, getattr(a, key))
    cfg.progress = _progress(a)
    cfg.seed = a.seed
    return cfg


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the model's recipe)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the model's recipe)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                   help="images per step (default: the model's recipe)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=None,
                   help="L2 weight decay (default: the model's recipe)")
    p.add_argument("--jitter", type=int, nargs="?", const=2, default=None, metavar="PIXELS",
                   help="shift training images by up to PIXELS (2 if no number; 0 = off; default: the model's recipe)")


def _load_model(path: str, arch: str | None, trust_code: bool = False, max_bytes: int | None = 1 << 30, *,
                images: bool = True, trainable: bool = True, progress: bool = False):
    """Any checkpoint (:func:`deepzip.io.reader.load_model`: a .dz, a deepzip checkpoint, any safetensors, a
    state_dict file, a Hugging Face folder) into ``arch`` (typed by the user, so trusted) or into the architecture
    the file names (a ``package.module:factory`` there only with ``--trust-code``); ``images``: the command feeds it
    images, so another application's model (a G2P encoder-decoder, a transformers model) is refused in one line;
    ``trainable``: a .dz's masks and codebooks as parametrizations (to retrain), else the inference form
    :func:`deepzip.load` gives by default; ``progress``: loading's phases and times on stderr."""
    from ..io.reader import load_model
    from ..models import get_model

    model, meta = load_model(path, get_model(arch, trust_code=True) if arch else None, trust_code=trust_code,
                             max_bytes=max_bytes, trainable=trainable, progress=progress)
    if images:
        from ..errors import InputError
        from ..models.seq2seq import Seq2Seq

        if isinstance(model, Seq2Seq):
            raise InputError(f"{path}: holds a G2P encoder-decoder ({_arch(model)}), not an image classifier; "
                             "deepzip g2p-eval reads it")
        if type(model).__module__.split(".")[0] in ("transformers", "sentence_transformers"):
            raise InputError(f"{path}: holds a Hugging Face {type(model).__name__}, not an image classifier; "
                             "deepzip ptq --sentence-transformer and deepzip compress read it")
    return model, meta


def _arch(model) -> str | None:
    from ..models import model_name

    return model_name(model)


def _effective_params(model) -> dict:
    """Every parameter as the model uses it (parametrized weights evaluated; a runtime layer's sparse weight as
    its dense equivalent)."""
    import torch

    out = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            out[f"{mname}.{pname}" if mname else pname] = p.detach()
        if hasattr(module, "parametrizations"):
            for pname in module.parametrizations:
                out[f"{mname}.{pname}"] = getattr(module, pname).detach()
        sparse = getattr(module, "sparse", None)  # deepzip.runtime's SparseLinear / SparseConv2d: buffers only
        if sparse is not None and hasattr(sparse, "dense"):
            out[f"{mname}.weight"] = sparse.dense()
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                out[f"{mname}.bias"] = module.bias
    return {k: v for k, v in out.items() if ".parametrizations." not in k}


def _parse_layer_values(text: str, what: str) -> float | dict[str, float]:
    """``0.9`` or ``fc1=0.92,fc2=0.91``; a layer given twice is an error (not silently the last value)."""
    try:
        if "=" not in text:
            return float(text)
        out = {}
        for part in text.split(","):
            key, _, val = part.partition("=")
            if key.strip() in out:
                raise KeyError(key.strip())
            out[key.strip()] = float(val)
        return out
    except KeyError as exc:
        raise ValueError(f"--{what} {text!r}: layer {exc.args[0]} is given twice") from None
    except ValueError:
        raise ValueError(f"--{what} {text!r}: expected a number or layer=number,layer=number") from None
