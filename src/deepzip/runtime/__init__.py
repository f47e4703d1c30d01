"""Runtime layers that execute pruned and weight-shared layers without densifying them, chosen per layer by speed.

Three forms in which a Linear or Conv2d weight is held while the model runs (:data:`FORMS`; "form", not "kind": the
codec's kinds are how a tensor is encoded in a file, the layer kinds of :mod:`deepzip.io.serialize` which
parametrization a weight has):

- ``dense``: the ordinary float32 weight (what a layer that is faster dense keeps);
- ``csr``: the kept weights as float32 values in compressed rows;
- ``codebook``: the kept weights as uint8 (or 16-bit) indices into the layer's codebook.

and two kernels for the sparse forms (:data:`KERNELS`):

- ``deepzip-c``: deepzip's own C kernel (:mod:`deepzip.runtime._spkernel`, built at install time when a C compiler is
there),
  on Deep Compression's layout: an 8-bit relative column index per kept weight, so ``csr`` takes 5 bytes and
  ``codebook`` 2 bytes per kept weight, and the indices are read directly (no float values are gathered). Torch's
  sparse CSR and scipy.sparse missed the paper's 3x at AlexNet's fc6 / fc7 shapes, which is why it exists;
- ``torch-csr``: torch's sparse CSR kernel (``torch.sparse.mm``) on int32 columns (8 bytes per kept weight for
  ``csr``); for ``codebook``, narrow columns + indices gathered into float values at each call (3-4 bytes).

A Conv2d runs its sparse weight on ``F.unfold``'s columns. Where the C kernel is missing, everything runs on torch's
CSR and :func:`runtime_table` says ``kernel: torch-csr``.

:func:`sparsify_` converts a model in place, timing each layer's candidates on an input of the shape it actually sees
(medians of repeats) and keeping the fastest (``mode="fast"``) or the smallest (``mode="small"``).
:func:`assemble_` builds such a model from the arrays :func:`deepzip.load` reads off a ``.dz`` file: the kept
positions and indices go from the codec into CSR arrays, and no tensor of the full weight's size is ever made for a
sparse layer.
A layer type the runtime does not support stays dense, with a warning naming it.

Example:
    >>> import torch
    >>> from deepzip.models import get_model
    >>> from deepzip.techniques.prune import prune_, strip
    >>> m = strip(prune_(get_model("lenet300"), sparsity=0.9)).eval()
    >>> x = torch.rand(4, 1, 28, 28)
    >>> y = m(x)
    >>> _ = sparsify_(m, torch.rand(1, 1, 28, 28), mode="small")
    >>> type(m.fc1).__name__, bool(torch.allclose(m(x), y, atol=1e-5))
    ('SparseLinear', True)
"""

from __future__ import annotations

import functools
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DeepzipFormatError
from ..techniques.walk import run_hooked, set_module
from . import _spkernel

__all__ = [
    "FORMS",
    "KERNELS",
    "SparseConv2d",
    "SparseLinear",
    "assemble_",
    "interleaved_seconds",
    "kernels_available",
    "layer_bytes",
    "layer_inputs",
    "median_seconds",
    "runtime_table",
    "sparsify_",
    "supports",
]

FORMS = ("dense", "csr", "codebook")
KERNELS = ("deepzip-c", "torch-csr")


def kernels_available() -> list[str]:
    """The sparse kernels that can run here: ``["deepzip-c", "torch-csr"]`` when deepzip's C kernel is built (and
    not turned off by ``DEEPZIP_KERNEL=torch``), else ``["torch-csr"]``."""
    return list(KERNELS) if _spkernel.available() else ["torch-csr"]


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # Sparse CSR tensors are "beta" in torch and say so once per process; we use the stable part (CSR @ dense).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _narrow(a: np.ndarray, limit: int, widths: Sequence[Any] = (np.uint8, np.int16, np.int32)) -> np.ndarray:
    """``a`` as the first of ``widths`` (integer dtypes, narrowest first) that holds values below ``limit``."""
    for dt in widths:
        if limit <= int(np.iinfo(dt).max) + 1:
            return a.astype(dt)
    raise ValueError(f"{limit} values do not fit {np.dtype(widths[-1])}")


def _check_csr(name: str, shape: tuple[int, int], crow: np.ndarray, col: np.ndarray, n_values: int,
               codebook: np.ndarray | None, indices: np.ndarray | None) -> None:
    """Refuse CSR arrays (absolute columns) that do not describe a ``shape`` matrix: both kernels index with them."""
    rows, cols = shape
    where = f"{name or 'sparse layer'} {tuple(shape)}"
    n = col.size
    if crow.ndim != 1 or crow.size != rows + 1 or crow[0] != 0 or crow[-1] != n or n_values != n:
        raise DeepzipFormatError(f"{where}: {crow.size} row pointers from {crow[:1]} to {crow[-1:]} and {n_values} "
                                 f"values for {rows} rows and {n} column indices")
    if rows and int(np.diff(crow.astype(np.int64)).min()) < 0:
        raise DeepzipFormatError(f"{where}: row pointers decrease")
    if n and (int(col.min()) < 0 or int(col.max()) >= cols):
        raise DeepzipFormatError(f"{where}: column index {int(col.min()) if col.min() < 0 else int(col.max())} "
                                 f"outside 0..{cols - 1}")
    if indices is not None and n and (codebook is None or int(indices.min()) < 0
                                      or int(indices.max()) >= codebook.size):
        raise DeepzipFormatError(f"{where}: codebook index {int(indices.max())} with "
                                 f"{0 if codebook is None else codebook.size} codebook entries")


class _SparseWeight(nn.Module):
    """A 2-D ``(rows, cols)`` weight in CSR form, as float values (``csr``) or codebook indices (``codebook``), run
    by one of two kernels (:data:`KERNELS`):

    - ``deepzip-c`` (when built, see :mod:`deepzip.runtime._spkernel`): 8-bit relative column steps (with zero
    fillers for
      gaps over 255) + float32 values (5 bytes per kept weight) or uint8 / uint16 codebook indices (2-3 bytes);
    - ``torch-csr``: int32 columns + float32 values (8 bytes), or narrow columns + indices gathered into float values
      at each call (3-4 bytes), for ``torch.sparse.mm``.
    """

    def __init__(self, shape: tuple[int, int], crow: np.ndarray, col: np.ndarray, values: np.ndarray | None,
                 codebook: np.ndarray | None = None, indices: np.ndarray | None = None, *,
                 kernel: str | None = None, name: str = "") -> None:
        super().__init__()
        self.shape = (int(shape[0]), int(shape[1]))
        self.name = name
        self.form = "csr" if values is not None else "codebook"
        if values is None:
            assert codebook is not None and indices is not None
            codebook = np.ascontiguousarray(codebook, np.float32).reshape(-1)
        crow, col = np.asarray(crow).reshape(-1), np.asarray(col).reshape(-1)
        _check_csr(name, self.shape, crow, col, col.size if values is None else np.asarray(values).size,
                   codebook, None if indices is None else np.asarray(indices).reshape(-1))
        self.nnz = int(col.size)
        if kernel is None:
            kernel = "deepzip-c" if _spkernel.available() else "torch-csr"
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}, expected one of {KERNELS}")
        if kernel == "deepzip-c" and values is None and codebook is not None and codebook.size >= 1 << 16:
            kernel = "torch-csr"  # the C kernel takes 8- and 16-bit codebook indices
        self.kernel = kernel
        if kernel == "torch-csr":
            self.register_buffer("crow", torch.from_numpy(crow.astype(np.int32)))
            if values is not None:
                self.register_buffer("col", torch.from_numpy(col.astype(np.int32)))
                self.register_buffer("values", torch.from_numpy(np.ascontiguousarray(values, np.float32)))
            else:
                self.register_buffer("col", torch.from_numpy(_narrow(col, self.shape[1])))
                self.register_buffer("indices", torch.from_numpy(_narrow(indices, codebook.size)))
                self.register_buffer("codebook", torch.from_numpy(codebook))
        else:  # the C kernel's layout: entries = kept weights + fillers (value 0) where a column gap exceeds 255
            try:
                rowptr, step, at = _spkernel.encode_steps(crow, col)
            except DeepzipFormatError as exc:
                raise DeepzipFormatError(f"{name or 'sparse layer'} {self.shape}: {exc}") from None
            self.register_buffer("crow", torch.from_numpy(rowptr))
            self.register_buffer("step", torch.from_numpy(step))
            if values is not None:
                if at is None:
                    v = np.ascontiguousarray(values, np.float32)
                else:
                    v = np.zeros(step.size, np.float32)
                    v[at] = values
                self.register_buffer("values", torch.from_numpy(v))
            else:
                idx_all = np.asarray(indices)
                if at is not None:
                    zero = np.flatnonzero(codebook == 0)
                    if not zero.size:  # fillers need a zero centroid to point at
                        codebook = np.append(codebook, np.float32(0))
                        zero = np.array([codebook.size - 1])
                    idx_all = np.full(step.size, zero[0], np.int64)
                    idx_all[at] = np.asarray(indices)
                idx_all = _narrow(idx_all, codebook.size, (np.uint8, np.uint16))
                self.register_buffer("indices", torch.from_numpy(idx_all))
                self.register_buffer("codebook", torch.from_numpy(codebook))
        self._csr: torch.Tensor | None = None
        self._seen: tuple | None = None  # (buffer identities and versions) when the C kernel's arrays were checked
        self._arrays: tuple = ()
        self._call: tuple = ()
        if kernel == "deepzip-c":
            self._c_arrays()  # validate now, at construction

    @property
    def entries(self) -> int:
        """Stored entries (kept weights, plus the C layout's fillers)."""
        return int((self.col if self.kernel == "torch-csr" else self.step).numel())

    def _c_arrays(self) -> tuple:
        """The C kernel's numpy views, checked by :func:`deepzip.runtime._spkernel.check` whenever a buffer is new or
        was
        modified in place since the last check (a hostile or edited buffer never reaches the C code unchecked)."""
        b = self._buffers  # (not self.crow etc.: nn.Module.__getattr__ costs microseconds per call on small layers)
        ts = (b["crow"], b["step"], b["values"] if self.form == "csr" else b["indices"], b.get("codebook"))
        # the views in self._arrays keep the checked tensors alive, so an id here is never a reused one
        seen = (self.shape, *((id(t), t._version, t.data_ptr()) for t in ts if t is not None))
        if seen != self._seen:
            self._seen = None
            for t in ts:
                if t is not None and (t.device.type != "cpu" or t.layout != torch.strided):
                    raise DeepzipFormatError(f"{self.name or 'sparse layer'}: buffers must be CPU tensors for the C "
                                             "kernel")
            arrays = tuple(None if t is None else t.numpy() for t in ts)
            _spkernel.check(self.name, self.shape, *arrays)
            fn = _spkernel.function(arrays[2].dtype)
            cb = None if arrays[3] is None else arrays[3].ctypes.data
            self._arrays = arrays
            self._call = (fn, self.shape[0], arrays[0].ctypes.data, arrays[1].ctypes.data, arrays[2].ctypes.data, cb)
            self._seen = seen
        return self._arrays

    def csr_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """``(crow, col, values, codebook, indices)`` with absolute columns, without the C layout's fillers."""
        crow = self.crow.numpy().astype(np.int64)
        if self.kernel == "torch-csr":
            col = self.col.numpy().astype(np.int64)
            keep = None
        else:
            col = _spkernel.absolute_columns(crow, self.step.numpy())
            v = self.values.numpy() if self.form == "csr" else self.codebook.numpy()[self.indices.numpy()]
            keep = v != 0  # fillers (and kept weights whose value is 0, which change nothing)
            rid = np.repeat(np.arange(self.shape[0]), np.diff(crow))[keep]  # each kept entry's row
            crow = np.searchsorted(rid, np.arange(self.shape[0] + 1))
            col = col[keep]
        if self.form == "csr":
            values = self.values.numpy()
            return crow, col, values if keep is None else values[keep], None, None
        idx = self.indices.numpy().astype(np.int64)
        return crow, col, None, self.codebook.numpy(), idx if keep is None else idx[keep]

    def matrix(self) -> torch.Tensor:
        """The weight as a torch sparse CSR tensor (``codebook`` or the C layout: built for this call)."""
        if self.form == "csr" and self.kernel == "torch-csr":
            if self._csr is None:  # shares the buffers' memory
                self._csr = _csr(self.crow, self.col, self.values, self.shape)
            return self._csr
        if self.kernel == "torch-csr":
            values = self.codebook.index_select(0, self.indices.to(torch.int32))  # (nnz,) gathered per call
            col32 = self.col if self.col.dtype == torch.int32 else self.col.to(torch.int32)
            return _csr(self.crow, col32, values, self.shape)
        crow, col, values, cb, idx = self.csr_arrays()
        v = values if values is not None else cb[idx]  # type: ignore[index]
        return _csr(torch.from_numpy(crow.astype(np.int32)), torch.from_numpy(col.astype(np.int32)),
                    torch.from_numpy(np.ascontiguousarray(v, np.float32)), self.shape)

    def matmul(self, xt: torch.Tensor) -> torch.Tensor:
        """``W @ xt`` for ``xt`` of shape ``(cols, N)``; returns ``(rows, N)``."""
        if self.kernel == "deepzip-c" and xt.dtype == torch.float32 and xt.is_cpu:
            self._c_arrays()
            x = xt.contiguous()
            if x.dim() != 2 or x.shape[0] != self.shape[1]:  # the kernel reads x[0:cols, 0:N]: the shape must be exact
                raise ValueError(f"{self.name or 'sparse layer'} {self.shape}: input of shape {tuple(xt.shape)}")
            fn, rows, *addrs = self._call
            y = torch.empty(rows, x.shape[1])
            fn(rows, *addrs, x.data_ptr(), y.data_ptr(), x.shape[1])  # ctypes releases the GIL for the call
            return y
        return torch.sparse.mm(self.matrix(), xt)

    def dense(self) -> torch.Tensor:
        return self.matrix().to_dense()

    def extra_repr(self) -> str:
        return f"{self.form}, {self.kernel}, shape={self.shape}, nnz={self.nnz}"

    @classmethod
    def from_positions(cls, shape: tuple[int, int], positions: np.ndarray, form: str,
                       codebook: np.ndarray, indices: np.ndarray, *, kernel: str | None = None,
                       name: str = "") -> _SparseWeight:
        """From flat kept positions (increasing) and their codebook indices; O(kept) memory."""
        positions = np.asarray(positions, np.int64)
        if positions.size and (positions[0] < 0 or positions[-1] >= shape[0] * shape[1]
                               or int(np.diff(positions).min(initial=1)) <= 0):
            raise DeepzipFormatError(f"{name or 'sparse layer'} {tuple(shape)}: kept positions not increasing "
                                     f"within 0..{shape[0] * shape[1] - 1}")
        rows = positions // shape[1]
        crow = np.searchsorted(rows, np.arange(shape[0] + 1)).astype(np.int32)  # (rows + 1,)
        col = (positions - rows * shape[1]).astype(np.int32)
        if form == "csr":
            return cls(shape, crow, col, codebook.astype(np.float32)[indices], kernel=kernel, name=name)
        return cls(shape, crow, col, None, codebook, indices, kernel=kernel, name=name)

    @classmethod
    def from_dense(cls, w: torch.Tensor, form: str, *, kernel: str | None = None, name: str = "") -> _SparseWeight:
        """From a dense 2-D weight (``codebook``: its distinct non-zero values become the codebook)."""
        a = w.detach().cpu().float().numpy()
        pos = np.flatnonzero(a)
        vals = a.reshape(-1)[pos]
        if form == "csr":
            return cls.from_positions(a.shape, pos, "csr", vals, np.arange(vals.size), kernel=kernel, name=name)
        cb, idx = np.unique(vals, return_inverse=True)
        return cls.from_positions(a.shape, pos, "codebook", cb, idx, kernel=kernel, name=name)

    def converted(self, form: str, kernel: str | None) -> _SparseWeight:
        """This weight as ``form`` run by ``kernel``, from its kept weights (never through a dense matrix)."""
        crow, col, values, cb, idx = self.csr_arrays()
        if form == "csr":
            v = values if values is not None else cb[idx]  # type: ignore[index]
            return _SparseWeight(self.shape, crow, col, v, kernel=kernel, name=self.name)
        if values is not None:
            cb, idx = np.unique(values, return_inverse=True)
        return _SparseWeight(self.shape, crow, col, None, cb, idx, kernel=kernel, name=self.name)


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` as a :class:`_SparseWeight` (torch's CSR @ dense kernel).

    ``in_index`` (optional) selects the input features first, as :class:`deepzip.techniques.shrink.GatheredLinear` does.
    """

    def __init__(self, weight: _SparseWeight, bias: torch.Tensor | None,
                 in_index: torch.Tensor | None = None, original_in_features: int | None = None) -> None:
        super().__init__()
        self.sparse = weight
        self.original_in_features = original_in_features
        self.out_features, self.in_features = weight.shape
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("in_index", in_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (buffers read from _buffers and no needless reshape: at batch 1 on a small layer each costs ~1 us of ~10)
        b = self._buffers
        if b["in_index"] is not None:
            x = x.index_select(-1, b["in_index"])
        lead = x.shape[:-1]
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # (B, in)
        y = self.sparse.matmul(x2.t())  # (out, in) @ (in, B) -> (out, B)
        y = y.view(1, -1) if y.shape[1] == 1 and y.is_contiguous() else y.t()  # (B, out)
        if b["bias"] is not None:
            y = y + b["bias"]
        return y if len(lead) == 1 else y.reshape(*lead, self.out_features)


class SparseConv2d(nn.Module):
    """A Conv2d (groups 1, zero padding) as the sparse ``(out, in * kh * kw)`` weight times ``F.unfold``'s columns."""

    def __init__(self, conv: nn.Conv2d, weight: _SparseWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.sparse = weight
        self.out_channels, self.in_channels = conv.out_channels, conv.in_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C*kh*kw, L)
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        flat = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (C*kh*kw, B*L)
        y = self.sparse.matmul(flat)  # (O, B*L)
        y = y.reshape(self.out_channels, b, ho * wo).transpose(0, 1)  # (B, O, L)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.reshape(b, self.out_channels, ho, wo)


def _supported_conv(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))


def supports(m: nn.Module) -> bool:
    """Whether the runtime runs layer ``m``'s weight sparse: a Linear, or a Conv2d with one group, zero padding."""
    return isinstance(m, nn.Linear) or _supported_conv(m)


def _build(m: Any, form: str, kernel: str | None = None, name: str = "") -> nn.Module:
    """``m`` (a Linear/Conv2d or one of ours) as a layer of ``form`` run by ``kernel`` (default: the best built)."""
    weight = None
    if isinstance(m, SparseLinear | SparseConv2d):
        if form == m.sparse.form and kernel in (None, m.sparse.kernel):
            return m
        if form != "dense":
            weight = m.sparse.converted(form, kernel)
        dense_w = m.sparse.dense() if form == "dense" else None
    else:
        dense_w = m.weight.detach()
    bias = m.bias.detach() if m.bias is not None else None
    in_index = getattr(m, "in_index", None)
    conv = isinstance(m, nn.Conv2d | SparseConv2d)
    if form == "dense":
        if conv:
            out: nn.Module = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                                       m.dilation, bias=bias is not None, device="meta")
            dense_w = dense_w.reshape(m.out_channels, m.in_channels, *m.kernel_size)
        elif in_index is not None:
            from ..techniques.shrink import GatheredLinear

            out = GatheredLinear(in_index, dense_w.shape[0], bias is not None, m.original_in_features)
        else:
            out = nn.Linear(dense_w.shape[1], dense_w.shape[0], bias is not None, device="meta")
        out.weight = nn.Parameter(dense_w.clone(), requires_grad=False)
        if bias is not None:
            out.bias = nn.Parameter(bias.clone(), requires_grad=False)
        return out
    if weight is None:
        weight = _SparseWeight.from_dense(dense_w.reshape(dense_w.shape[0], -1), form, kernel=kernel, name=name)
    if conv:
        return SparseConv2d(m, weight, bias)  # type: ignore[arg-type]
    return SparseLinear(weight, bias, in_index, getattr(m, "original_in_features", None))


def _predicted_bytes(m: nn.Module, form: str, kernel: str | None) -> int:
    """Bytes ``m``'s weight would take as ``form`` run by ``kernel``, from its shape and counts (nothing is built;
    the C layout's rare filler entries are not counted)."""
    if isinstance(m, SparseLinear | SparseConv2d):
        (rows, cols), nnz = m.sparse.shape, m.sparse.nnz
        k = (m.sparse.codebook.numel() if m.sparse.form == "codebook"
             else int(torch.unique(m.sparse.values).numel()))
    else:
        w = m.weight.detach()
        rows, cols = w.shape[0], w[0].numel()
        nz = w[w != 0]
        nnz, k = int(nz.numel()), int(torch.unique(nz).numel())
    if form == "dense":
        return 4 * rows * cols
    width = lambda n: 1 if n <= 1 << 8 else 2 if n <= 1 << 15 else 4  # noqa: E731 - _narrow's choice
    col_bytes = 1 if kernel == "deepzip-c" else 4 if form == "csr" else width(cols)  # a step, or a column index
    if form == "csr":
        return 4 * (rows + 1) + (col_bytes + 4) * nnz
    idx_bytes = (1 if k <= 1 << 8 else 2) if kernel == "deepzip-c" and k < 1 << 16 else width(k)
    return 4 * (rows + 1) + nnz * (col_bytes + idx_bytes) + 4 * k


def layer_bytes(m: nn.Module) -> int:
    """Bytes of a layer's parameters and buffers (what it holds in memory while it runs)."""
    ts = list(m.parameters()) + [b for b in m.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in ts)


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()  # warm-up: first-call allocations, lazily built CSR tensors
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_seconds(fns: dict[Any, Callable[[], Any]], repeats: int) -> dict[Any, float]:
    """Median wall time of each ``fn()`` over ``repeats`` rounds that call each once, in turn: a burst of load from
    elsewhere hits every candidate alike, as timing one after the other does not. Each timed call follows an untimed
    call of the same ``fn``, so that it finds its weights in the caches as a layer called again and again does (the
    other candidates evict them otherwise, which made a dense weight of ~1 MB look slower than it runs in a model)."""
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def layer_inputs(model: nn.Module, example_input: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The input each submodule sees on ``example_input``, by dotted name (empty when there is none)."""
    if example_input is None:
        return {}
    shapes: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: Any) -> None:
            shapes.setdefault(name, inp[0].detach())
        return hook

    run_hooked(model, example_input, {n: record(n) for n, _ in model.named_modules() if n})
    return shapes


def _in_model(model: nn.Module, name: str, layer: nn.Module, x: torch.Tensor) -> Any:
    """``model(x)`` with ``layer`` in place of the layer ``name`` (it stays there)."""
    set_module(model, name, layer)
    return model(x)


def _unsupported(name: str, m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Linear | SparseLinear | SparseConv2d) or _supported_conv(m):
        return False
    return isinstance(w, torch.Tensor) and w.dim() >= 2 and bool((w == 0).any())


def sparsify_(model: nn.Module, example_input: torch.Tensor | None = None, *, mode: str = "fast",
              batch: int = 1, forms: Sequence[str] = FORMS, kernels: Sequence[str] | None = None,
              repeats: int = 7, report: list[dict] | None = None, margin: float = 1.0,
              whole: float | None = None) -> nn.Module:
    """Run each Linear / Conv2d layer in the fastest (or smallest) of ``forms``, in place; returns ``model``.

    Args:
        model: a model with plain weights (parametrizations baked in, e.g. by :func:`deepzip.techniques.prune.strip`)
        or with
            runtime layers already.
        example_input: one input (default: an MNIST image for the registry's models), its batch size set to
            ``batch``: each layer's candidates are timed in the model, by the whole model's latency on it. Without
            one, Linear layers are timed alone on ``(batch, in_features)`` and Conv2d layers stay as they are (their
            spatial size is unknown).
        mode: ``"fast"`` (the lowest median latency) or ``"small"`` (the fewest bytes, from the counts: only the
            chosen form is built, so a sparse layer is never made dense on the way).
        batch: the batch size to choose for (sparse layers win at batch 1 and often lose at large batches).
        forms: candidates, from :data:`FORMS`.
        kernels: the kernels a sparse form may run on, from :data:`KERNELS` (default: those built, see
            :func:`kernels_available`); ``"fast"`` times each (form, kernel) pair, ``"small"`` counts bytes.
        repeats: timed rounds, each calling every candidate once (the median counts); more, up to 100, where
            the calls are fast (until each candidate has run ~50 ms).
        report: if given, one row per layer is appended: ``layer``, ``form``, ``kernel`` (``""`` for dense),
            ``bytes``, ``ms`` (per candidate, keyed ``"dense"`` or ``"form:kernel"``).
        margin: ``"fast"``: a sparse form replaces a dense layer only when it saves at least ``1 - margin`` of the
            layer's dense time (e.g. 0.8: 20%; measured in the model when there is an example input), so that a
            tie within timing noise keeps the plain layer.
        whole: ``"fast"`` with an example input: then the whole model is timed with the chosen sparse layers and
            with every layer dense (interleaved), and the sparse layers stay only if the model takes at most
            ``whole`` times as long (e.g. 0.95: 5% faster); else every layer goes back to dense.

    Returns:
        ``model``, in eval mode.

    Raises:
        ValueError: an unknown mode or form.
    """
    if mode not in ("fast", "small"):
        raise ValueError(f"mode={mode!r}, expected 'fast' or 'small'")
    bad = [k for k in forms if k not in FORMS]
    if bad or not forms:
        raise ValueError(f"forms={list(forms)}, expected a non-empty subset of {FORMS}")
    built = kernels_available()
    kernels = built if kernels is None else [k for k in kernels if k in built]
    if not kernels:
        raise ValueError(f"kernels: none of them is available here (available: {built})")
    cands_of = [("dense", "")] * ("dense" in forms) + [(k, e) for k in forms if k != "dense" for e in kernels]
    from ..techniques.shrink import default_example_input

    model.eval()
    if example_input is None:
        example_input = default_example_input(model)
    if example_input is not None:
        example_input = example_input[:1].expand(batch, *example_input.shape[1:]).contiguous()
    shapes = {k: tuple(v.shape) for k, v in layer_inputs(model, example_input).items()}
    for name, m in list(model.named_modules()):
        if not name:
            continue
        if _unsupported(name, m):
            warnings.warn(f"{name}: {type(m).__name__} is not supported by the sparse runtime; it stays dense",
                          stacklevel=2)
            continue
        if not isinstance(m, nn.Linear | SparseLinear | SparseConv2d) and not _supported_conv(m):
            continue
        if isinstance(m, nn.Linear | nn.Conv2d) and m.weight.dtype != torch.float32:
            continue  # the sparse forms hold float32: a bfloat16 / float16 layer stays as it is
        conv = isinstance(m, nn.Conv2d | SparseConv2d)
        shape = shapes.get(name)
        if shape is None and not conv:
            width = getattr(m, "original_in_features", None) if hasattr(m, "in_index") else None
            shape = (batch, int(width or m.in_features))
        if shape is None:
            if report is not None:
                sp = getattr(m, "sparse", None)
                report.append({"layer": name, "form": getattr(sp, "form", "dense"), "kernel": getattr(sp, "kernel", ""),
                               "bytes": layer_bytes(m), "ms": {}, "note": "not timed: input shape unknown"})
            continue
        if mode == "small":  # sizes follow from the counts: build only the smallest candidate, time nothing
            size = {c: _predicted_bytes(m, *c) for c in cands_of}
            form, kernel = min(cands_of, key=lambda c: size[c])
            new = _build(m, form, kernel or None, name)
            if new is not m:
                set_module(model, name, new)
            if report is not None:
                report.append({"layer": name, "form": form, "kernel": kernel, "bytes": layer_bytes(new), "ms": {}})
            continue
        x = torch.rand(shape)
        cands = {c: _build(m, c[0], c[1] or None, name) for c in cands_of}
        with torch.no_grad():
            # with an input for the whole model, each candidate is timed in its place in the model (the objective,
            # with the other layers' traffic through the caches); else the layer alone, on its input's shape
            alone = {c: functools.partial(layer, x) for c, layer in cands.items()}
            fns = ({c: functools.partial(_in_model, model, name, layer, example_input) for c, layer in cands.items()}
                   if example_input is not None else alone)
            ms = {c: 1e3 * t for c, t in interleaved_seconds(fns, repeats).items()}
            more = min(100, int(50 / max(max(ms.values()), 1e-3)))  # fast calls: rounds up to ~50 ms a candidate
            if more > repeats:  # (differences of a few us in a ~50 us model need many rounds to stand out)
                ms = {c: 1e3 * t for c, t in interleaved_seconds(fns, more).items()}
            dense = ("dense", "")
            # the layer's own dense time, against which a sparse form's saving (in the model) is weighed
            own = ms.get(dense, 0.0) if fns is alone or dense not in ms else \
                1e3 * interleaved_seconds({dense: alone[dense]}, repeats)[dense]
        best = min(cands, key=lambda c: ms[c])
        if dense in ms and best != dense and ms[dense] - ms[best] < (1 - margin) * own:
            best = dense  # the layer not faster by the margin: the plain layer
        set_module(model, name, cands[best])
        if report is not None:
            report.append({"layer": name, "form": best[0], "kernel": best[1], "bytes": layer_bytes(cands[best]),
                           "ms": {":".join(filter(None, c)): t for c, t in ms.items()}})
        del cands  # the losers (a dense copy of a big layer, say) go now, not after the next layer's are built
    if mode == "fast" and whole is not None and example_input is not None and not _whole_model_faster_(
            model, example_input, whole, repeats) and report is not None:
        for row in report:
            row.update(form="dense", kernel="", note="the whole model was not faster with sparse layers")
    return model


def _swap_run(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor) -> Any:
    for name, layer in layers.items():
        set_module(model, name, layer)
    return model(x)


def _whole_model_faster_(model: nn.Module, x: torch.Tensor, whole: float, repeats: int) -> bool:
    """Whether ``model`` with its sparse layers runs at most ``whole`` times as long as with them dense (timed in
    interleaved rounds); if not, every sparse layer is replaced by its dense form, in place."""
    sparse = {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear | SparseConv2d)}
    if not sparse:
        return True
    dense = {n: _build(m, "dense", None, n) for n, m in sparse.items()}
    fns = {"sparse": functools.partial(_swap_run, model, sparse, x),
           "dense": functools.partial(_swap_run, model, dense, x)}
    with torch.no_grad():
        t = interleaved_seconds(fns, repeats)
        rounds = min(200, int(0.1 / max(max(t.values()), 1e-6)))  # fast models: up to ~0.1 s a side
        if rounds > repeats:
            t = interleaved_seconds(fns, rounds)
    keep = t["sparse"] <= whole * t["dense"]
    _swap_run(model, sparse if keep else dense, x)
    return keep


def runtime_table(model: nn.Module) -> list[dict]:
    """Per Linear / Conv2d / runtime layer: ``layer``, ``form``, ``kernel`` (``deepzip-c``, ``torch-csr``, or
    ``torch-dense``), ``shape``, ``kept`` (non-zeros), ``bytes``."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, SparseLinear | SparseConv2d):
            rows.append({"layer": name, "form": m.sparse.form, "kernel": m.sparse.kernel,
                         "shape": list(m.sparse.shape), "kept": m.sparse.nnz, "bytes": layer_bytes(m)})
        elif isinstance(m, nn.Linear | nn.Conv2d):
            rows.append({"layer": name, "form": "dense", "kernel": "torch-dense", "shape": list(m.weight.shape),
                         "kept": int((m.weight != 0).sum()), "bytes": layer_bytes(m)})
    return rows


def assemble_(model: nn.Module, plain: dict[str, torch.Tensor],
              kept: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *, mode: str = "fast",
              example_input: torch.Tensor | None = None, batch: int = 1, where: str = "",
              margin: float = 1.0, whole: float | None = None) -> nn.Module:
    """Build ``model``'s layers from arrays (what :func:`deepzip.load` hands over from a ``.dz`` file); returns it.

    ``model`` may live on the ``meta`` device (no memory): every tensor is replaced. The weight of each layer named
    in ``kept`` (a Linear or a Conv2d that :func:`supports`) goes from its kept entries straight into CSR arrays,
    without a full-size intermediate; every other tensor is taken from ``plain`` (state_dict names). Then
    :func:`sparsify_` picks each layer's form by ``mode``.

    Args:
        model: the model, its tensors' shapes already checked against the arrays'.
        plain: state_dict name -> tensor.
        kept: layer name -> ``(codebook (k,), flat positions of the kept weights (increasing), their indices)``.
        mode, example_input, batch, margin, whole: as for :func:`sparsify_`.
        where: prefix of error messages (the file's name).

    Raises:
        DeepzipFormatError: a malformed sparse weight. ValueError: a tensor of the model not given.
    """
    modules = dict(model.named_modules())
    form = "codebook" if mode == "small" else "csr"
    for lname, (cb, pos, sym) in kept.items():
        layer = modules[lname]
        rows = layer.weight.shape[0]
        sw = _SparseWeight.from_positions((rows, layer.weight[0].numel()), pos, form, cb, sym,
                                          name=f"{where}{lname}")
        bias = plain.pop(f"{lname}.bias", None)
        set_module(model, lname, SparseConv2d(layer, sw, bias) if isinstance(layer, nn.Conv2d)  # type: ignore
                   else SparseLinear(sw, bias))
    model.load_state_dict(plain, strict=False, assign=True)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise ValueError(f"{where}{name}: not set from the file")
    for p in model.parameters():
        p.requires_grad_(False)
    return sparsify_(model, example_input, mode=mode, batch=batch, margin=margin, whole=whole)
