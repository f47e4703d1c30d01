"""Data for the library: the in-memory :class:`Dataset`, checksummed cache folders, and a user's own data
(``--data file.py:function``). The data sets of the applications live with them (MNIST: :mod:`deepzip.apps.mnist.data`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import DataError

__all__ = ["DataError", "Dataset", "cache_dir", "load_user_data", "sha256_file"]


@dataclass(frozen=True)
class Dataset:
    """Inputs and labels held in memory: ``x`` (N, ...) float32 (MNIST: (N, 1, 28, 28) in [0, 1]), ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def cache_dir(sub: str, env_var: str) -> Path:
    """``$env_var`` if set, else ``$XDG_CACHE_HOME/deepzip/<sub>`` (``~/.cache`` when XDG_CACHE_HOME is unset)."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "deepzip" / sub


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    return _sha256(Path(path))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


Labeler = Callable[[torch.Tensor], torch.Tensor]


def _inputs_only(obj: object) -> torch.Tensor | None:
    """The inputs stacked into one tensor when ``obj`` holds inputs without labels, else None.

    Inputs only: one tensor (N inputs) or a 1-tuple of it. (An iterable of tensors is read as batches.)
    """
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, tuple) and len(obj) == 1 and isinstance(obj[0], torch.Tensor):
        return obj[0]
    return None


def _as_dataset(obj: object, where: str, label_with: Labeler | None = None) -> Dataset:
    """A :class:`Dataset` from what a user's data function returned for one split.

    Accepted: a Dataset; a pair of tensors ``(inputs, labels)``; or an iterable (a DataLoader, a list) of
    ``(input, label)`` pairs, either single examples (0-d labels) or batches (1-d labels). With ``label_with``
    also inputs only (one tensor of N inputs, or an iterable of input batches), labelled by ``label_with(inputs)``.
    """
    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        x, y = obj
        if x.shape[:1] != y.shape[:1] or y.dim() != 1:
            raise DataError(f"{where}: inputs {tuple(x.shape)} and labels {tuple(y.shape)}: expected N inputs and "
                            f"N integer labels")
        return Dataset(x, y.long())
    x_only = _inputs_only(obj)
    if x_only is None:
        try:
            items = list(obj)  # type: ignore[call-overload]
        except TypeError:
            raise DataError(f"{where}: a {type(obj).__name__}, expected a Dataset, (inputs, labels) tensors, an "
                            f"iterable of (input, label) pairs, or inputs only") from None
        if not items:
            raise DataError(f"{where}: no examples")
        if all(isinstance(t, (tuple, list)) and len(t) == 1 for t in items):  # DataLoader(TensorDataset(x))
            items = [t[0] for t in items]
        first = items[0]
        if isinstance(first, torch.Tensor):  # inputs only: batches (a DataLoader without labels), concatenated
            if not all(isinstance(t, torch.Tensor) for t in items):
                raise DataError(f"{where}: mixes input tensors with other items")
            try:
                x_only = torch.cat(items)
            except (RuntimeError, TypeError) as e:
                raise DataError(f"{where}: input batches do not concatenate ({str(e).splitlines()[0]})") from None
        elif not (isinstance(first, (tuple, list)) and len(first) == 2):
            raise DataError(f"{where}: yields {type(first).__name__} items, expected (input, label) pairs or input "
                            f"tensors")
        else:
            xs, ys = zip(*items)
            try:
                ys_t = [torch.as_tensor(y) for y in ys]
                if ys_t[0].dim() == 0:  # single examples
                    return Dataset(torch.stack([torch.as_tensor(x) for x in xs]), torch.stack(ys_t).long())
                return Dataset(torch.cat([torch.as_tensor(x) for x in xs]), torch.cat(ys_t).long())
            except (RuntimeError, TypeError, ValueError) as e:
                raise DataError(f"{where}: examples do not stack into one tensor ({str(e).splitlines()[0]})") from None
    if label_with is None:
        raise DataError(f"{where}: inputs only (no labels); this command needs labels, or a trained model to label "
                        f"the inputs with its own predictions (prune, share, compress --checkpoint, distill)")
    if x_only.shape[0] == 0:
        raise DataError(f"{where}: no examples")
    y = label_with(x_only)
    if y.shape != x_only.shape[:1]:
        raise DataError(f"{where}: labelling {x_only.shape[0]} inputs gave labels of shape {tuple(y.shape)}")
    return Dataset(x_only, y.long())


def load_user_data(spec: str, label_with: Labeler | None = None) -> tuple[Dataset, Dataset]:
    """``(train, test)`` from a user's function named ``"module:function"`` or ``"path/file.py:function"``.

    The function takes no arguments and returns ``(train, test)``, each a Dataset, ``(inputs, labels)`` tensors or
    an iterable of ``(input, label)`` pairs (examples or batches); they are gathered into memory. With
    ``label_with`` (a callable mapping inputs to class indices, e.g. the trained model's predictions) a split may
    also be inputs only: one tensor of N inputs, or an iterable of input batches (a DataLoader without labels).

    Raises:
        ValueError: the function cannot be imported or needs arguments. DataError: it returns something else.
    """
    from ._user import resolve

    out = resolve(spec, "data")()
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise DataError(f"data {spec!r}: returned a {type(out).__name__}, expected (train, test)")
    return (_as_dataset(out[0], f"data {spec!r} train", label_with),
            _as_dataset(out[1], f"data {spec!r} test", label_with))
