"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017, arXiv 1701.05369): a Bayesian sparsifier.

Each weight gets its own Gaussian multiplicative noise, ``w = theta * (1 + sqrt(alpha) * eps)``, written additively as
``w = theta + sigma * eps`` with ``sigma^2 = alpha * theta^2`` so that the gradient of ``theta`` does not carry the
noise's variance (the paper's *additive reparametrisation*; trained parameters: ``theta`` = the layer's weight and
``log sigma^2``). Training maximises the variational lower bound: the data term (cross-entropy, per sample) plus the
KL term of the log-uniform prior divided by the training-set size, with the paper's approximation

    -KL(alpha) ~= k1 * sigmoid(k2 + k3 * log alpha) - 0.5 * log(1 + 1/alpha) - k1,
    k1, k2, k3 = 0.63576, 1.87320, 1.48695,

which pushes ``alpha`` of unneeded weights to infinity. ``log alpha = log sigma^2 - log theta^2`` is clipped to
[-8, 8]. The forward pass samples pre-activations instead of weights (*local reparametrisation*): for a linear layer
the output is Gaussian with mean ``x @ theta^T`` and variance ``x^2 @ (alpha * theta^2)^T``; for a convolution the same
with ``conv2d``. At evaluation the layer is deterministic with the weights whose ``log alpha`` is above the threshold
(3, as the paper: ``alpha > e^3 ~= 20`` means the noise drowns the weight) set to zero.

Like the rest of deepzip the functions are in place and end in ``_``: :func:`variational_dropout_` turns a model's
Linear / Conv2d layers into their VD form (other layer types are left to magnitude pruning, with a warning naming
them), :func:`vd_loss_fn` is the training loss for :func:`deepzip.train.fit`, and :func:`sparsify_vd_` turns them back
into plain layers whose pruned weights are held by deepzip's :class:`~deepzip.techniques.prune.Mask`, so weight
sharing, Huffman coding and the ``.dz`` file follow as after magnitude pruning.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> _ = variational_dropout_(m)
    >>> float(kl_divergence(m).detach()) > 0
    True
    >>> with torch.no_grad():
    ...     _ = m[0].log_sigma2.fill_(4.0)  # every weight of the first layer drowned in noise
    >>> _ = sparsify_vd_(m)
    >>> isinstance(m[0], nn.Linear), int(m[0].weight.count_nonzero()), vd_table(m)[0]["kept_pct"]
    (True, 0, 0.0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .prune import FilterFn, get_mask, set_mask_
from .shrink import shrink_
from .walk import set_module

__all__ = [
    "K1", "K2", "K3", "LOG_ALPHA_THRESHOLD", "VDConv2d", "VDLinear", "kl_divergence", "log_alpha",
    "shrink_vd_", "sparsify_vd_", "variational_dropout_", "vd_loss_fn", "vd_table",
]

K1, K2, K3 = 0.63576, 1.87320, 1.48695
#: Weights with ``log alpha`` above this are pruned (the paper's value).
LOG_ALPHA_THRESHOLD = 3.0
_CLIP = 8.0


def log_alpha(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """``log sigma^2 - log theta^2``, clipped to [-8, 8] (the epsilon keeps zero weights finite)."""
    return torch.clamp(log_sigma2 - torch.log(theta * theta + 1e-8), -_CLIP, _CLIP)


def _neg_kl(la: torch.Tensor) -> torch.Tensor:
    """The paper's approximation of -KL(q || log-uniform prior) per weight, from ``log alpha``."""
    return K1 * torch.sigmoid(K2 + K3 * la) - 0.5 * F.softplus(-la) - K1


class _VD:
    """What VDLinear and VDConv2d share: the noise parameter, ``log alpha``, the KL term, the evaluation mask."""

    weight: torch.Tensor
    log_sigma2: nn.Parameter
    threshold: float

    def _init_vd(self, log_sigma2: float, threshold: float) -> None:
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, log_sigma2))
        self.threshold = threshold

    def log_alpha(self) -> torch.Tensor:
        return log_alpha(self.weight, self.log_sigma2)

    def kl(self) -> torch.Tensor:
        return -_neg_kl(self.log_alpha()).sum()

    def kept(self) -> torch.Tensor:
        """The weights that survive: ``log alpha <= threshold`` (bool, the weight's shape)."""
        return self.log_alpha() <= self.threshold

    def _eval_weight(self) -> torch.Tensor:
        return self.weight * self.kept()


class VDLinear(nn.Linear, _VD):
    """``nn.Linear`` with sparse variational dropout (local reparametrisation while training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self._eval_weight(), self.bias)
        mu = F.linear(x, self.weight, self.bias)  # (B, out)
        var = F.linear(x * x, torch.exp(self.log_alpha()) * self.weight * self.weight)  # (B, out)
        return mu + torch.sqrt(var + 1e-8) * torch.randn_like(mu)


class VDConv2d(nn.Conv2d, _VD):
    """``nn.Conv2d`` with sparse variational dropout (local reparametrisation while training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._conv_forward(x, self._eval_weight(), self.bias)
        mu = self._conv_forward(x, self.weight, self.bias)  # (B, C_out, H', W')
        var = self._conv_forward(x * x, torch.exp(self.log_alpha()) * self.weight * self.weight, None)
        return mu + torch.sqrt(var + 1e-8) * torch.randn_like(mu)


_VD_OF: dict[type, type] = {nn.Linear: VDLinear, nn.Conv2d: VDConv2d}


def _vd_layers(model: nn.Module) -> dict[str, _VD]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _VD)}


def variational_dropout_(model: nn.Module, *, filter_fn: FilterFn | None = None, log_sigma2: float = -10.0,
                         threshold: float = LOG_ALPHA_THRESHOLD) -> nn.Module:
    """Give the model's Linear and Conv2d layers sparse variational dropout, in place; returns ``model``.

    The layers keep their weights (``theta``) and bias and gain ``log_sigma2`` (initialised to ``log_sigma2``: almost
    no noise, so a trained model starts where it was). A weight already pruned by a deepzip mask starts pruned
    (its ``theta`` is zero, so its ``log alpha`` is at the clip). Layers of other types that hold weights
    (ConvTranspose, Conv1d/3d, Embedding, recurrent layers) are left as they are, with a warning naming them:
    magnitude pruning handles them.

    Args:
        model: the model (e.g. a trained LeNet).
        filter_fn: ``filter_fn(module, name)`` selects layers (default: every Linear and Conv2d).
        log_sigma2: initial ``log sigma^2`` of every weight (the paper: -10).
        threshold: ``log alpha`` above which a weight counts as pruned (the paper: 3).

    Raises:
        ValueError: a selected layer is weight-shared (apply VD before sharing), or a non-finite setting.
    """
    if not math.isfinite(log_sigma2) or not math.isfinite(threshold):
        raise ValueError(f"variational_dropout_: log_sigma2={log_sigma2}, threshold={threshold}: expected finite")
    skipped = []
    for name, module in list(model.named_modules()):
        if not name or isinstance(module, _VD):
            continue
        has_weight = isinstance(getattr(module, "weight", None), torch.Tensor)
        # a masked layer's class is generated by torch's parametrize (ParametrizedLinear, bases (nn.Linear,))
        plain = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
        vd_type = _VD_OF.get(plain)
        if vd_type is None and has_weight and not isinstance(module, (nn.LayerNorm, nn.BatchNorm2d, nn.BatchNorm1d)):
            skipped.append(f"{name} ({type(module).__name__})")
            continue
        if vd_type is None or (filter_fn is not None and not filter_fn(module, name)):
            continue
        mask = get_mask(module)
        if parametrize.is_parametrized(module) and mask is None:
            raise ValueError(f"{name}.weight: already weight-shared or parametrized; apply variational dropout first")
        with torch.no_grad():
            w = module.weight.detach().clone()  # the masked weight when pruned: zeros stay zeros
        kw: dict[str, Any] = {"bias": module.bias is not None, "device": w.device, "dtype": w.dtype}
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                skipped.append(f"{name} (Conv2d with padding_mode={module.padding_mode!r})")
                continue
            new: nn.Module = VDConv2d(module.in_channels, module.out_channels, module.kernel_size,  # type: ignore[arg-type]
                                      stride=module.stride, padding=module.padding, dilation=module.dilation,
                                      groups=module.groups, **kw)
        else:
            new = VDLinear(module.in_features, module.out_features, **kw)
        with torch.no_grad():
            new.weight.copy_(w)
            if module.bias is not None:
                new.bias.copy_(module.bias.detach())
        new._init_vd(log_sigma2, threshold)  # type: ignore[attr-defined]
        new.train(module.training)
        set_module(model, name, new)
    if skipped:
        warnings.warn("variational dropout does not handle " + ", ".join(skipped)
                      + ": left to magnitude pruning", stacklevel=2)
    return model


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """The sum over the model's VD layers of KL(q(w) || log-uniform prior) (approximated as the paper does)."""
    terms = [m.kl() for m in _vd_layers(model).values()]
    if not terms:
        raise ValueError("kl_divergence: the model has no variational dropout layers (call variational_dropout_)")
    return torch.stack(terms).sum()


@dataclass
class KLWeight:
    """The KL term's weight over training: 0 for ``warmup`` epochs, then linear to 1 by epoch ``ramp_end`` (the
    paper: 5 and 20 for the LeNets). Call :meth:`at` with the fractional epoch."""

    warmup: float = 5.0
    ramp_end: float = 20.0

    def at(self, epoch: float) -> float:
        if epoch < self.warmup:
            return 0.0
        if epoch >= self.ramp_end:
            return 1.0
        return (epoch - self.warmup) / max(self.ramp_end - self.warmup, 1e-9)


def vd_loss_fn(model: nn.Module, n_train: int, kl_weight: Callable[[], float]) -> Callable[..., torch.Tensor]:
    """The negative variational lower bound per training sample, as a :func:`deepzip.train.fit` loss:
    ``cross_entropy(logits, y) + kl_weight() * KL(model) / n_train``."""
    if n_train < 1:
        raise ValueError(f"vd_loss_fn: n_train={n_train}, expected >= 1")

    def loss(logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        data = F.cross_entropy(logits, labels)
        w = kl_weight()
        return data + w * kl_divergence(model) / n_train if w > 0 else data

    return loss


def vd_table(model: nn.Module) -> list[dict[str, Any]]:
    """Per layer: weights, kept (``log alpha`` <= threshold, or the mask after :func:`sparsify_vd_`), kept %."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, _VD):
            kept = int(m.kept().sum())
            n = m.weight.numel()
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            mask = get_mask(m)
            n = m.weight.numel()
            kept = int(mask.sum()) if mask is not None else n
        else:
            continue
        rows.append({"layer": name, "weights": n, "kept": kept, "kept_pct": round(100.0 * kept / n, 3)})
    return rows


def sparsify_vd_(model: nn.Module) -> nn.Module:
    """Turn every VD layer back into a plain ``nn.Linear`` / ``nn.Conv2d`` whose weights with ``log alpha`` above
    the threshold are pruned by a deepzip :class:`~deepzip.techniques.prune.Mask`; returns ``model``.

    The kept weights are the means ``theta`` (what the VD layer uses at evaluation), so the model's outputs in eval
    mode do not change.
    """
    for name, m in list(_vd_layers(model).items()):
        with torch.no_grad():
            keep = m.kept().detach().clone()
            w = m.weight.detach().clone()
        layer = m  # type: Any
        if isinstance(m, VDConv2d):
            new: nn.Module = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                       padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                                       bias=layer.bias is not None, device=w.device, dtype=w.dtype)
        else:
            new = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device=w.device,
                            dtype=w.dtype)
        with torch.no_grad():
            new.weight.copy_(w)
            if layer.bias is not None:
                new.bias.copy_(layer.bias.detach())
        new.train(layer.training)
        with torch.no_grad():
            set_mask_(new, keep)
        set_module(model, name, new)
    return model


def shrink_vd_(model: nn.Module, example_input: torch.Tensor | None = None, *,
               report: list[dict] | None = None) -> nn.Module:
    """Remove, in the middle of variational dropout training, the neurons and filters its pruned weights left
    without inputs or readers, so the rest of the training runs on a smaller model; returns ``model``.

    The weights with ``log alpha`` above the threshold get ``theta = 0`` (what evaluation uses already; their
    noise goes too, as the pruned weight it is), then :func:`deepzip.techniques.shrink.shrink_` removes the dead
    units (the model's input features kept), slicing each layer's ``log_sigma2`` with its weight and folding
    constant units into the next layer's bias. The model's outputs in eval mode do not change; its training mode
    is kept. The optimizer must be made again: the parameters are new tensors.

    Example:
        >>> m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
        >>> _ = variational_dropout_(m)
        >>> with torch.no_grad():
        ...     _ = m[0].log_sigma2[:2].fill_(4.0)  # two hidden neurons lose every input weight
        >>> _ = shrink_vd_(m.train())
        >>> m[0].out_features, tuple(m[2].log_sigma2.shape), m.training
        (4, (2, 4), True)
    """
    training = model.training
    with torch.no_grad():
        for m in _vd_layers(model).values():
            m.weight.mul_(m.kept())
    shrink_(model, example_input, report=report, inputs=False)
    model.train(training)
    return model
