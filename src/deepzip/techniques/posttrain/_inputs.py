"""What post-training compression feeds a model and what it compares: calibration inputs read from a file (text
lines, a ``.npy`` array) or a function, each bounded before it is read, and the one tensor picked from whatever the
model returns.

**How a batch is passed.** A tensor: ``model(x)``; a dict (a tokenized batch): ``model(**batch)``; a tuple or list:
``model(*batch)``.

**Which output is compared** (:func:`output_tensor`). With no key: a tensor is itself; a tuple or list gives its first
element (the ``return_dict=False`` convention of Hugging Face models); a dict or an object with attributes (a Hugging
Face ``ModelOutput``) gives its ``logits``, else its ``last_hidden_state``, else its only tensor. A key (CLI:
``--output-key NAME``) picks another: a dict's entry or an object's attribute ``NAME``, or a tuple's element ``0``,
``1``, ... Token outputs ``(B, T, C)`` of a batch with an ``attention_mask`` ``(B, T)`` are zeroed at the padding, so
the agreement is not measured on positions no input has. Anything else (a string, ``None``, a dict without a tensor
to pick) raises one line naming what was returned.

**Bounds.** A file is refused before it is read when it is larger than ``max_bytes`` (a ``.npy`` array also when its
values, as float32, would be); any source is refused when it holds more than ``max_inputs`` samples (every phase of
post-training compression is linear in them, so this bounds the run's time). A file that is neither a ``.npy`` array
nor UTF-8 text (random bytes), and an empty one, are refused in one line.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class TwoHeads(nn.Module):
    ...     def forward(self, x):
    ...         return {"logits": x.sum(1, keepdim=True), "features": x}
    >>> x = torch.ones(2, 3)
    >>> tuple(model_forward()(TwoHeads(), x).shape), tuple(model_forward("features")(TwoHeads(), x).shape)
    ((2, 1), (2, 3))
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._types import BoundError, Forward

__all__ = [
    "DEFAULT_KEYS", "MAX_INPUTS", "MAX_INPUT_BYTES", "call_model", "describe_output", "is_npy", "load_inputs",
    "model_forward", "output_tensor", "read_lines", "read_npy",
]

#: The entries a model's output is compared on when no key is given, in this order (then: its only tensor).
DEFAULT_KEYS = ("logits", "last_hidden_state")
#: Default size limit of a calibration file (bytes; a ``.npy`` array's values counted as float32).
MAX_INPUT_BYTES = 1 << 30
#: Default limit on the calibration samples (the run's time is linear in them).
MAX_INPUTS = 16384
_NPY_MAGIC = b"\x93NUMPY"


# ---------------------------------------------------------------------------------------------------- outputs
def _entries(out: Any) -> dict[str, Any] | None:
    """A dict-like output's entries by name (a Mapping, or an object with a ``__dict__`` such as a dataclass)."""
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items()}
    if hasattr(out, "__dict__") and not isinstance(out, (nn.Module, type)):
        return {k: v for k, v in vars(out).items() if not k.startswith("_")}
    return None


def _what(out: Any) -> str:
    """One phrase naming a value a model returned: its type, and a tensor's shape or a container's keys."""
    if isinstance(out, torch.Tensor):
        return f"a tensor {tuple(out.shape)}"
    entries = _entries(out)
    if entries is not None:
        return f"a {type(out).__name__} with {', '.join(entries) or 'no entries'}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} ({', '.join(type(v).__name__ for v in out[:4])})"
    return f"a {type(out).__name__}"


def output_tensor(out: Any, key: str | None = None) -> torch.Tensor:
    """The tensor of a model's output ``out`` that post-training compression compares (see the module's rule).

    Args:
        out: what the model returned.
        key: a dict's entry or an object's attribute name, or a tuple's index; None: the default rule.

    Returns:
        The tensor, first dimension = samples.

    Raises:
        BoundError: ``out`` (or the entry picked) is not a tensor, or has no entry ``key``; the message names what
            was returned.

    Example:
        >>> output_tensor((torch.zeros(2, 5), torch.ones(2))).shape, output_tensor({"a": torch.ones(3)}).shape
        (torch.Size([2, 5]), torch.Size([3]))
    """
    picked: Any
    entries = None if isinstance(out, torch.Tensor) else _entries(out)
    if key is not None:
        if entries is not None and key in entries:
            picked = entries[key]
        elif isinstance(out, (tuple, list)) and key.lstrip("-").isdigit() and -len(out) <= int(key) < len(out):
            picked = out[int(key)]
        else:
            raise BoundError(f"--output-key {key}: the model returned {_what(out)}, which has no entry {key!r}")
        where = f"its entry {key!r}, "
    elif isinstance(out, torch.Tensor):
        picked, where = out, ""
    elif isinstance(out, (tuple, list)) and out:
        picked, where = out[0], "its first element, "
    elif entries is not None:
        found = [k for k in DEFAULT_KEYS if isinstance(entries.get(k), torch.Tensor)]
        tensors = [k for k, v in entries.items() if isinstance(v, torch.Tensor)]
        if found:
            return entries[found[0]]
        if len(tensors) != 1:
            raise BoundError(f"the model returned {_what(out)}: no {' or '.join(DEFAULT_KEYS)} and "
                             f"{len(tensors)} tensors to choose from; give --output-key NAME")
        picked, where = entries[tensors[0]], f"its only tensor {tensors[0]!r}, "
    else:
        picked, where = out, ""
    if not isinstance(picked, torch.Tensor) or picked.ndim < 1 or picked.shape[0] == 0:
        part = f"; {where}{_what(picked)}," if where else ","
        raise BoundError(f"the model returned {_what(out)}{part} not a non-empty tensor to compare (give "
                         "--output-key NAME to pick one)")
    return picked


def call_model(model: nn.Module, batch: Any) -> Any:
    """``model`` on ``batch``: a dict as keyword arguments, a tuple or list as positional ones, else
    ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def model_forward(key: str | None = None, call: Callable[[nn.Module, Any], Any] = call_model) -> Forward:
    """``forward(model, batch) -> Tensor`` for :func:`~deepzip.techniques.posttrain.compress_to_bound_`: the batch
    passed by ``call`` (default :func:`call_model`) and the output picked by :func:`output_tensor` (``key``: see
    there), token outputs of padded positions zeroed."""

    def forward(model: nn.Module, batch: Any) -> torch.Tensor:
        y = output_tensor(call(model, batch), key)
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if isinstance(mask, torch.Tensor) and y.ndim == 3 and mask.shape == y.shape[:2]:
            y = y * mask.unsqueeze(-1).to(y.dtype)  # (B, T, C): padding contributes nothing
        return y

    return forward


def describe_output(model: nn.Module, batch: Any, key: str | None = None,
                    call: Callable[[nn.Module, Any], Any] = call_model) -> str:
    """One line saying which output is compared, from one forward pass on ``batch`` (no gradients); raises
    :class:`BoundError` as :func:`output_tensor` does, before any long work starts."""
    with torch.no_grad():
        try:
            out = call(model, batch)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            first = _first_line(e)
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise BoundError(f"calibration batch 0 (input {shape}) does not fit the model: {first}") from None
        y = output_tensor(out, key)
    if isinstance(out, torch.Tensor):
        return f"outputs compared: the tensor the model returns, {tuple(y.shape)} on the first batch"
    if key is not None:
        how = f"its {key!r}"
    else:
        entries = _entries(out) or {}
        name = next((k for k, v in entries.items() if v is y), None)
        how = f"its {name!r}" if name else "its first element"
    return f"outputs compared: {how}, {tuple(y.shape)} on the first batch, from {_what(out)}"


# ---------------------------------------------------------------------------------------------------- inputs
def _check_size(path: Path, max_bytes: int | None) -> int:
    size = path.stat().st_size
    if size == 0:
        raise BoundError(f"{path}: an empty file (the calibration set is empty)")
    if max_bytes is not None and size > max_bytes:
        raise BoundError(f"{path}: {size:,} bytes, more than the calibration limit of {max_bytes:,} "
                         "(--max-input-bytes); give a smaller sample of your inputs")
    return size


def _check_count(n: int, max_inputs: int | None, where: str) -> None:
    if max_inputs is not None and n > max_inputs:
        raise BoundError(f"{where}: {n:,} inputs, more than the limit of {max_inputs:,} (--max-inputs; the run's "
                         "time grows with them); give a random subset")


def is_npy(path: str | Path) -> bool:
    """Whether ``path`` begins as a ``.npy`` array does."""
    with open(path, "rb") as f:
        return f.read(len(_NPY_MAGIC)) == _NPY_MAGIC


def read_npy(path: str | Path, *, max_bytes: int | None = MAX_INPUT_BYTES,
             max_inputs: int | None = MAX_INPUTS) -> np.ndarray:
    """A numeric ``.npy`` array (first axis = samples), its header checked against the limits before the values are
    read (no pickle).

    Raises:
        BoundError: not a ``.npy`` array, an object or structured array, no samples, over a limit, truncated.
    """
    p = Path(path)
    size = _check_size(p, max_bytes)
    try:  # the header alone first: its shape and dtype are checked before any value is read
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"format version {version[0]}.{version[1]}, expected 1.0 or 2.0")
            shape, _, dtype = read[version](f, max_header_size=1 << 16)
            data_at = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise BoundError(f"{p}: not a readable .npy array ({_first_line(e)})") from None
    if dtype.kind not in "biuf":
        raise BoundError(f"{p}: a .npy array of {dtype}, not numbers")
    if len(shape) < 1 or shape[0] == 0:
        raise BoundError(f"{p}: no samples, shape {tuple(shape)} (the calibration set is empty)")
    _check_count(int(shape[0]), max_inputs, str(p))
    n = int(np.prod(shape, dtype=np.float64))
    if max_bytes is not None and 4 * n > max_bytes:
        raise BoundError(f"{p}: shape {tuple(shape)} holds {4 * n:,} bytes as float32, more than the calibration "
                         f"limit of {max_bytes:,} (--max-input-bytes)")
    if data_at + n * dtype.itemsize > size:
        raise BoundError(f"{p}: truncated: its header says shape {tuple(shape)} of {dtype} ({n * dtype.itemsize:,} "
                         f"bytes), the file holds {size - data_at:,}")
    try:
        x = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BoundError(f"{p}: not a readable .npy array ({_first_line(e)})") from None
    return x.astype(np.float32) if dtype.kind == "f" and dtype.itemsize > 4 else x


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def read_lines(path: str | Path, *, max_bytes: int | None = MAX_INPUT_BYTES,
               max_inputs: int | None = MAX_INPUTS) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped, the file's size checked before it is read.

    Raises:
        BoundError: empty, over a limit, not UTF-8 text (naming the first bad byte's offset), NUL bytes, no line.
    """
    p = Path(path)
    _check_size(p, max_bytes)
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BoundError(f"{p}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); give one input "
                         "per line, or a .npy array") from None
    if "\x00" in text:
        raise BoundError(f"{p}: not text (a NUL byte at offset {raw.index(0)}); give one input per line, or a .npy "
                         "array")
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    if not lines:
        raise BoundError(f"{p}: no lines of text (the calibration set is empty)")
    _check_count(len(lines), max_inputs, str(p))
    return lines


def _samples(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        first = next(iter(batch.values()), None)
        return _samples(first) if first is not None else 0
    if isinstance(batch, (tuple, list)) and batch:
        return _samples(batch[0])
    return 1


def _function_batches(spec: str, max_inputs: int | None) -> list[Any]:
    from ..._user import resolve

    try:
        f = resolve(spec, "--calibration")
    except ValueError as e:
        raise BoundError(str(e)) from None
    out: list[Any] = []
    n = 0
    # islice: a generator that never ends is stopped one batch past the limit, not run forever
    for batch in itertools.islice(iter(f()), (max_inputs or 0) + 1 if max_inputs is not None else None):
        out.append(torch.from_numpy(np.ascontiguousarray(batch)).float() if isinstance(batch, np.ndarray) else batch)
        n += _samples(batch)
        _check_count(n, max_inputs, f"--calibration {spec}")
    if not out:
        raise BoundError(f"--calibration {spec}: returned no batches (the calibration set is empty)")
    return out


def load_inputs(spec: str, batch: int = 32, tokenizer: Any = None, *, max_bytes: int | None = MAX_INPUT_BYTES,
                max_inputs: int | None = MAX_INPUTS, max_length: int = 256) -> list[Any]:
    """Calibration batches of ``batch`` samples from ``spec``: ``module:function`` or ``path/file.py:function``
    (a function returning batches: tensors, arrays, dicts), a ``.npy`` array (first axis = samples; recognised by
    its content), or a text file of one input per line, tokenized with ``tokenizer`` (a Hugging Face tokenizer).

    Args:
        spec: the file or the function.
        batch: samples per batch (a function's batches are kept as it gives them).
        tokenizer: for text; None: the model takes no text, so a file that is not a ``.npy`` array is refused.
        max_bytes: a file larger than this (a ``.npy`` array's values as float32) is refused before it is read.
        max_inputs: more samples than this are refused.
        max_length: tokens per text input at most.

    Returns:
        The batches (float32 tensors for an array).

    Raises:
        BoundError: see :func:`read_npy`, :func:`read_lines`; a function that cannot be imported or returns nothing;
            text for a model without a tokenizer.
        FileNotFoundError: no such file.
    """
    from ._calibration import text_batches

    if batch < 1:
        raise BoundError(f"batch size {batch}: expected >= 1")
    if ":" in spec and not Path(spec).exists():
        return _function_batches(spec, max_inputs)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    _check_size(path, max_bytes)  # before anything is read
    if is_npy(path):
        x = read_npy(path, max_bytes=max_bytes, max_inputs=max_inputs)
        t = torch.from_numpy(np.ascontiguousarray(x)).float()
        return [t[i:i + batch] for i in range(0, len(t), batch)]
    if tokenizer is None:
        with open(path, "rb") as f:
            head = f.read(8)
        raise BoundError(f"{path}: not a .npy array (it begins {head!r}), and the model has no tokenizer to read "
                         "text lines with; give the inputs as a .npy array (first axis = samples)")
    lines = read_lines(path, max_bytes=max_bytes, max_inputs=max_inputs)
    return text_batches(tokenizer, lines, batch, max_length=max_length)  # similar lengths: less padding
