"""Neuron, filter and input-feature removal: a pruned model made *smaller and dense*, with the same outputs.

Pruning leaves units whose every outgoing weight is zero (nobody reads them) and units whose every incoming weight is
zero (they output a constant: their bias, through the activation). :func:`shrink_` removes both kinds: the unused
ones outright, the constant ones after folding what they contribute into the next layer's bias. It also drops the
input features that the first fully-connected layer never reads (the border pixels of MNIST, for LeNet-300-100),
with a :class:`GatheredLinear` that picks the kept inputs. This is Deep Compression's "getting rid of some neurons".

The model's data flow is read with ``torch.fx``. A layer is shrunk only where its output reaches exactly one
Linear/Conv2d through per-channel operations (ReLU and other element-wise activations, max pooling, dropout,
batch norm, flatten); a unit whose output also feeds an addition, a concatenation or anything else (a residual or
skip connection) is left alone, and the report says so. The result is meant for inference: the model is put in eval
mode (dropout and batch norm statistics are what make a constant unit constant).

Example:
    >>> import torch
    >>> from deepzip.models import get_model
    >>> m = get_model("lenet300").eval()
    >>> with torch.no_grad():
    ...     m.fc2.weight[:50] = 0          # 50 hidden neurons of fc2 without inputs: constant outputs
    ...     m.fc1.weight[:, :28] = 0       # the first row of pixels is never read
    >>> x = torch.rand(3, 1, 28, 28)
    >>> before = m(x)
    >>> log = []
    >>> _ = shrink_(m, report=log)
    >>> (m.fc1.in_features, m.fc2.out_features, m.fc3.in_features)
    (756, 50, 50)
    >>> bool(torch.allclose(m(x), before, atol=1e-5))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..models import max_pool2
from .prune import strip

__all__ = ["GatheredLinear", "architecture_widths", "default_example_input", "resize_", "shrink_", "widths_spec"]

# Operations a unit's value passes through unchanged in *which* unit it is (per channel, or element-wise): a
# constant channel stays constant and a removed channel can be dropped from both sides.
_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh,
    nn.MaxPool1d, nn.MaxPool2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Flatten,
    nn.BatchNorm1d, nn.BatchNorm2d,
)
_CHANNEL_FUNCS: set[Callable[..., Any]] = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid,
    F.max_pool1d, F.max_pool2d, F.dropout, F.dropout1d, F.dropout2d, torch.flatten, max_pool2,
}
_CHANNEL_METHODS = {"relu", "tanh", "sigmoid", "flatten", "view", "reshape"}


def default_example_input(model: nn.Module) -> torch.Tensor | None:
    """An input for a registered model (its registered shape); None for a model of unknown origin."""
    from ..models import example_input

    return example_input(model)


class GatheredLinear(nn.Linear):
    """A Linear layer that reads only the input features listed in ``in_index`` (the rest had all-zero weights).

    ``weight`` is ``(out_features, len(in_index))``; ``in_index`` holds positions in the original input.
    """

    def __init__(self, in_index: torch.Tensor, out_features: int, bias: bool = True,
                 original_in_features: int | None = None) -> None:
        super().__init__(int(in_index.numel()), out_features, bias)
        self.register_buffer("in_index", in_index.to(torch.int64))
        self.original_in_features = original_in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.index_select(-1, self.in_index), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reads {self.in_features} of {self.original_in_features} inputs"


class _Tracer(fx.Tracer):
    """Keeps Linear / Conv layers (ours included) as single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Linear | nn.Conv2d) or super().is_leaf_module(m, qualname)


def _layer(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    m = gm.get_submodule(str(node.target))
    if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
        return m
    return None


def _is_channel_op(gm: fx.GraphModule, node: fx.Node, src: fx.Node) -> bool:
    """Whether ``node`` maps channel j of ``src`` to channel j (or block j after a flatten) and reads nothing else."""
    others = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node) and a is not src]
    if others or not node.args or node.args[0] is not src:
        return False
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _CHANNEL_MODULES)
    if node.op == "call_function":
        if node.target in (torch.flatten,):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return bool(start == 1)
        return node.target in _CHANNEL_FUNCS
    if node.op == "call_method" and node.target in _CHANNEL_METHODS:
        if node.target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return bool(start == 1)
        if node.target in ("view", "reshape"):
            a, b = _shape(src), _shape(node)
            # (B, C, ...) -> (B, C * ...): channel j becomes the block j of the flattened features
            return a is not None and b is not None and len(b) == 2 and a[0] == b[0] and math.prod(a[1:]) == b[1]
        return True
    return False


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _chain(gm: fx.GraphModule, node: fx.Node) -> tuple[list[fx.Node], fx.Node | None, str]:
    """Follow ``node``'s output through channel ops to the one layer that reads it.

    Returns (the channel ops, the consumer node or None, why not when None).
    """
    ops: list[fx.Node] = []
    cur = node
    while True:
        users = list(cur.users)
        if len(users) != 1:
            what = ", ".join(sorted({str(u.target) for u in users}))
            return ops, None, f"output read by {len(users)} operations ({what}): a residual or skip connection"
        u = users[0]
        if _layer(gm, u) is not None and u.args and u.args[0] is cur and len(u.args) == 1 and not u.kwargs:
            if isinstance(gm.get_submodule(str(u.target)), GatheredLinear):
                return ops, None, f"feeds {u.target}, which reads a subset of its inputs"
            return ops, u, ""
        if u.op == "output":
            return ops, None, "model output"
        if not _is_channel_op(gm, u, cur):
            return ops, None, f"output feeds {u.target} (not per-channel: a residual or skip connection?)"
        ops.append(u)
        cur = u


def _run_ops(gm: fx.GraphModule, ops: list[fx.Node], x: torch.Tensor) -> torch.Tensor:
    """Evaluate the channel ops of a chain on ``x`` (the producer's output)."""
    for node in ops:
        args = [x] + [a for a in node.args[1:]]
        if node.op == "call_module":
            x = gm.get_submodule(str(node.target))(x)
        elif node.op == "call_function":
            x = node.target(*args, **node.kwargs)  # type: ignore[operator]
        elif node.target in ("view", "reshape"):
            x = x.reshape(x.shape[0], -1)
        else:
            x = getattr(x, str(node.target))(*args[1:], **node.kwargs)
    return x


def _set(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    old = getattr(module, name)
    if old is None and value is None:
        return
    if isinstance(old, nn.Parameter) or old is None:
        grad = bool(old.requires_grad) if old is not None else False
        setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=grad) if value is not None else None)
    else:
        setattr(module, name, value.detach().clone())


def _per_weight(m: nn.Module) -> list[str]:
    """The module's own parameters shaped like its weight, other than the weight (e.g. variational dropout's
    ``log_sigma2``): a unit removed from the weight is removed from them too."""
    shape = m.weight.shape  # type: ignore[union-attr]
    return [n for n, p in m.named_parameters(recurse=False) if n != "weight" and p.shape == shape]


def _slice_out_(m: Any, keep: torch.Tensor) -> None:
    for name in _per_weight(m):
        _set(m, name, getattr(m, name)[keep])
    _set(m, "weight", m.weight[keep])
    if m.bias is not None:
        _set(m, "bias", m.bias[keep])
    if isinstance(m, nn.Linear):
        m.out_features = int(keep.numel())
    else:
        m.out_channels = int(keep.numel())


def _slice_bn_(m: Any, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(m, name, None) is not None:
            _set(m, name, getattr(m, name)[keep])
    m.num_features = int(keep.numel())


def _in_view(c: nn.Module, n: int) -> torch.Tensor:
    """The consumer's weight as (out, n, rest): the weights that read producer unit j are ``[:, j]``."""
    w = c.weight.detach()
    return w.reshape(w.shape[0], n, -1)


def _slice_in_(c: Any, n: int, keep: torch.Tensor) -> None:
    for name in _per_weight(c):
        t = getattr(c, name).detach()
        t = t.reshape(t.shape[0], n, -1)[:, keep]
        _set(c, name, t.reshape(t.shape[0], -1) if isinstance(c, nn.Linear)
             else t.reshape(t.shape[0], keep.numel(), *c.weight.shape[2:]))
    w = _in_view(c, n)[:, keep]
    if isinstance(c, nn.Linear):
        _set(c, "weight", w.reshape(w.shape[0], -1))
        c.in_features = int(c.weight.shape[1])
    else:
        _set(c, "weight", w.reshape(w.shape[0], keep.numel(), *c.weight.shape[2:]))
        c.in_channels = int(keep.numel())


def _shrink_pair(gm: fx.GraphModule, pname: str, p: nn.Module, ops: list[fx.Node], c: nn.Module,
                 cname: str, out_shape: tuple[int, ...]) -> dict | None:
    """Remove the unused and the constant units between producer ``p`` and consumer ``c``; a report row or None."""
    w = p.weight.detach()
    n = w.shape[0]
    dead_out = (_in_view(c, n) == 0).all(dim=2).all(dim=0)  # (n,) nobody reads unit j
    dead_in = (w.reshape(n, -1) == 0).all(dim=1) & ~dead_out  # (n,) unit j outputs its bias, a constant
    fold = torch.zeros(n, dtype=torch.bool)
    note = ""
    if dead_in.any():
        # The value each constant unit hands the consumer: the bias through the channel ops, e.g. relu(b_j).
        b = p.bias.detach() if p.bias is not None else torch.zeros(n)
        spatial = out_shape[2:]
        x = b.reshape(1, n, *([1] * len(spatial))).expand(1, n, *spatial).contiguous()
        z = _run_ops(gm, ops, x)  # (1, n * S) or (1, n, H', W'): the consumer's input
        zj = z.reshape(n, -1) if z.dim() == 2 else z[0].reshape(n, -1)  # (n, S)
        zero = (zj == 0).all(dim=1)
        padded = isinstance(c, nn.Conv2d) and any(int(q) != 0 for q in c.padding)
        if padded and bool((dead_in & ~zero).any()):
            note = (f"{int((dead_in & ~zero).sum())} constant units kept: {cname} pads with zeros, so their "
                    "contribution is not constant")
        fold = dead_in & (zero | torch.tensor(not padded))
        foldable = fold & ~zero
        if foldable.any():
            cw = _in_view(c, n)  # (out, n, S) for linear, (out, n, kh*kw) for conv
            zsel = torch.where(foldable[:, None], zj, torch.zeros_like(zj))  # (n, S)
            if isinstance(c, nn.Linear):
                extra = torch.einsum("ojs,js->o", cw, zsel)
            else:  # no padding: every output position sees the constant map through the whole kernel
                extra = torch.einsum("ojs,j->o", cw, zsel[:, 0])
            _set(c, "bias", (c.bias.detach() if c.bias is not None else torch.zeros(cw.shape[0])) + extra)
    remove = dead_out | fold
    if not remove.any():
        return {"layer": pname, "what": "", "note": note} if note else None
    if bool(remove.all()):  # keep one unit: layers of width 0 are not worth the trouble
        remove[0] = False
    keep = torch.nonzero(~remove).flatten()
    _slice_out_(p, keep)
    for node in ops:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.BatchNorm1d | nn.BatchNorm2d):
            _slice_bn_(gm.get_submodule(str(node.target)), keep)
    _slice_in_(c, n, keep)
    unit = "neurons" if isinstance(p, nn.Linear) else "filters"
    return {"layer": pname, "what": unit, "before": n, "after": int(keep.numel()),
            "unused": int((dead_out & remove).sum()), "constant_folded": int((fold & ~dead_out & remove).sum()),
            "into": cname, "note": note}


def _reads_input(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s input is the model input, through per-feature ops (flatten, dropout) only."""
    cur = node.args[0] if node.args else None
    while isinstance(cur, fx.Node):
        if cur.op == "placeholder":
            return True
        src = cur.args[0] if cur.args else None
        if not isinstance(src, fx.Node) or not _is_channel_op(gm, cur, src):
            return False
        cur = src
    return False


def _gather_inputs_(model: nn.Module, name: str, m: nn.Linear) -> dict | None:
    """Replace ``m`` by a :class:`GatheredLinear` over its non-zero input columns."""
    used = (m.weight.detach() != 0).any(dim=0)  # (in,)
    if bool(used.all()):
        return None
    if not bool(used.any()):
        used[0] = True
    if isinstance(m, GatheredLinear):
        index, original = m.in_index[used], m.original_in_features
    else:
        index, original = torch.nonzero(used).flatten(), m.in_features
    g = GatheredLinear(index, m.out_features, m.bias is not None, original)
    g.weight = nn.Parameter(m.weight.detach()[:, used].clone(), requires_grad=False)
    if m.bias is not None:
        g.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=False)
    g.to(m.weight.device)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, g)
    return {"layer": name, "what": "inputs", "before": m.in_features, "after": int(used.sum()),
            "unused": int((~used).sum()), "constant_folded": 0, "into": "", "note": ""}


def shrink_(model: nn.Module, example_input: torch.Tensor | None = None, *,
            report: list[dict] | None = None, inputs: bool = True) -> nn.Module:
    """Remove pruned-away neurons, conv filters and input features, in place; returns ``model`` (in eval mode).

    A unit is removed when nothing reads it (its outgoing weights are all zero), or when it reads nothing (its
    incoming weights are all zero): then it outputs a constant, whose contribution is folded into the next layer's
    bias. Repeats until nothing changes, since a removal can leave another unit without inputs or readers. Weight
    parametrizations (masks, codebooks) are baked in first. Outputs are unchanged up to float rounding.

    Args:
        model: the model; traced with ``torch.fx`` (a model that cannot be traced is left as it is, with a note).
        example_input: an input of the right shape, to learn the spatial sizes at conv -> flatten -> linear
            boundaries (default: an MNIST image for the registry's models, else only what needs no shapes).
        report: if given, one row per change is appended: ``layer``, ``what`` (neurons / filters / inputs),
            ``before``, ``after``, ``unused``, ``constant_folded``, ``into``, ``note``; and one row per layer left
            alone with the reason in ``note``.
        inputs: also drop the model's input features that the first Linear layers never read.

    Returns:
        ``model``, smaller.

    Example:
        >>> from deepzip.models import get_model
        >>> m = get_model("lenet5")
        >>> with torch.no_grad():
        ...     m.conv2.weight[:10] = 0; m.fc1.weight[:, 160:240] = 0  # 10 filters idle, 5 unread
        >>> x = torch.rand(2, 1, 28, 28); y = m.eval()(x)
        >>> shrink_(m).conv2.out_channels, m.conv1.out_channels
        (35, 20)
        >>> bool(torch.allclose(m(x), y, atol=1e-5))
        True
    """
    model.eval()
    rows: list[dict] = [] if report is None else report
    strip(model)  # masks and codebooks baked into plain weights (deep-copy safe)
    if example_input is None:
        example_input = default_example_input(model)
    notes: dict[str, str] = {}
    with torch.no_grad():
        for _ in range(32):  # each round removes something; a handful of rounds is typical
            try:
                gm = fx.GraphModule(model, _Tracer().trace(model))
            except Exception as exc:  # any tracing failure means: leave the model alone
                rows.append({"layer": "", "what": "", "note": f"not shrunk: torch.fx cannot trace it ({exc})"})
                return model
            if example_input is not None:
                from torch.fx.passes.shape_prop import ShapeProp

                ShapeProp(gm).propagate(example_input.to(next(model.parameters()).device))
            changed = False
            for node in list(gm.graph.nodes):
                p = _layer(gm, node)
                if p is None:
                    continue
                ops, cnode, why = _chain(gm, node)
                if cnode is None:
                    if why != "model output":
                        notes[str(node.target)] = why
                    continue
                out_shape = _shape(node) or ((1, p.weight.shape[0]) if isinstance(p, nn.Linear) else None)
                if out_shape is None:
                    notes[str(node.target)] = "no example_input: spatial sizes unknown"
                    continue
                row = _shrink_pair(gm, str(node.target), p, ops, gm.get_submodule(str(cnode.target)),
                                   str(cnode.target), out_shape)
                if row is not None and not row["what"]:
                    notes[row["layer"]] = row["note"]
                elif row is not None:
                    rows.append(row)
                    changed = True
                    break  # shapes changed: trace again
            if not changed:
                break
        if inputs:
            gm = fx.GraphModule(model, _Tracer().trace(model))
            for node in gm.graph.nodes:
                m = _layer(gm, node)
                if isinstance(m, nn.Linear) and _reads_input(gm, node):
                    row = _gather_inputs_(model, str(node.target), m)
                    if row is not None:
                        rows.append(row)
    rows.extend({"layer": k, "what": "", "note": f"left alone: {v}"} for k, v in notes.items())
    return model


# ------------------------------------------------------------------------------ a shrunk model's widths, for files
_RESIZABLE = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def _widths(m: nn.Module) -> list[int]:
    if isinstance(m, nn.Linear):
        return [int(m.in_features), int(m.out_features)]
    if isinstance(m, nn.Conv2d):
        return [int(m.in_channels), int(m.out_channels)]
    return [int(m.num_features)]  # type: ignore[arg-type]


def _kind(m: nn.Module | None) -> type | None:
    """The resizable layer class ``m`` is (a parametrized layer is its own generated subclass)."""
    return next((k for k in _RESIZABLE if isinstance(m, k)), None)


def widths_spec(model: nn.Module, reference: nn.Module) -> dict[str, list[int]]:
    """The layers of ``model`` whose widths differ from the same-named layers of ``reference`` (its architecture,
    fresh), as ``{name: [in, out]}`` (``[features]`` for batch norm): what :func:`resize_` needs to give a fresh
    model the shape of a :func:`shrink_`-ed one. Empty when nothing was shrunk.

    Example:
        >>> from deepzip.models import get_model
        >>> m = get_model("lenet5")
        >>> with torch.no_grad():
        ...     m.conv2.weight[:10] = 0
        >>> widths_spec(shrink_(m), get_model("lenet5"))
        {'conv2': [20, 40], 'fc1': [640, 500]}
    """
    ref = dict(reference.named_modules())
    spec: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        r = ref.get(name)
        if isinstance(m, _RESIZABLE) and _kind(r) is _kind(m) and _widths(m) != _widths(r):  # type: ignore[arg-type]
            spec[name] = _widths(m)
    return spec


def architecture_widths(model: nn.Module, architecture: str | None) -> tuple[dict[str, list[int]], int]:
    """:func:`widths_spec` of ``model`` against a fresh model of the registered ``architecture`` (built on the meta
    device: no memory), and that fresh model's parameter count (what a shrunk model's ratio is measured against);
    ``({}, 0)`` for an architecture that is not registered (then the model must be given to load)."""
    from ..models import get_model

    if not architecture:
        return {}, 0
    try:
        with torch.device("meta"):
            reference = get_model(architecture)
    except ValueError:  # unknown or untrusted names (UntrustedCodeError is one): nothing to compare with
        return {}, 0
    return widths_spec(model, reference), sum(p.numel() for p in reference.parameters())


def resize_(model: nn.Module, spec: Any, where: str = "") -> nn.Module:
    """Give ``model``'s layers the widths ``spec`` records (:func:`widths_spec`), in place, with uninitialised
    weights (a file's tensors fill them); returns ``model``. A width may only shrink: ``spec`` comes from files, so
    it is checked before anything is allocated.

    Raises:
        ValueError: ``spec`` is not ``{name: [int, ...]}``, names a layer the model lacks or of another kind, or
            grows a layer; the message starts with ``where`` and names the layer.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"{where}widths: expected an object, got {type(spec).__name__}")
    modules = dict(model.named_modules())
    plan = []
    for name, widths in spec.items():
        m = modules.get(name) if isinstance(name, str) else None
        if not isinstance(m, _RESIZABLE):
            raise ValueError(f"{where}widths.{name}: the model has no Linear, Conv2d or BatchNorm layer of that name")
        old = _widths(m)
        if (not isinstance(widths, list) or len(widths) != len(old)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in widths)):
            raise ValueError(f"{where}widths.{name}: {widths!r}, expected {len(old)} integers like {old}")
        if not all(1 <= v <= o for v, o in zip(widths, old, strict=True)):
            raise ValueError(f"{where}widths.{name}: {widths} must lie within 1..{old} (a shrunk layer)")
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise ValueError(f"{where}widths.{name}: a grouped convolution (groups={m.groups}) is never shrunk")
        plan.append((m, widths))
    for m, widths in plan:
        w = m.weight if m.weight is not None else m.running_mean  # a batch norm without affine parameters
        device, dtype = w.device, w.dtype
        if isinstance(m, nn.Linear):
            m.in_features, m.out_features = widths
            shape: tuple[int, ...] = (widths[1], widths[0])
        elif isinstance(m, nn.Conv2d):
            m.in_channels, m.out_channels = widths
            shape = (widths[1], widths[0], *m.kernel_size)
        else:
            m.num_features = widths[0]
            shape = (widths[0],)
            for buf in ("running_mean", "running_var"):
                if getattr(m, buf, None) is not None:
                    setattr(m, buf, torch.empty(shape, device=device, dtype=dtype))
        if isinstance(m.weight, nn.Parameter):
            grad = m.weight.requires_grad
            m.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype), requires_grad=grad)
        if getattr(m, "bias", None) is not None:
            grad = m.bias.requires_grad
            m.bias = nn.Parameter(torch.empty(shape[:1], device=device, dtype=dtype), requires_grad=grad)
    return model
