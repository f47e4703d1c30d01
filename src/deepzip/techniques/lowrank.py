"""Low-rank decomposition: Tucker-2 for convolutions (Kim et al. 2016, arXiv 1511.06530), truncated SVD for linear
layers, ranks by analytical empirical VBMF (Nakajima et al. 2013) or by kept energy, and tensor-train linear layers
(Novikov et al. 2015, "Tensorizing neural networks").

Tucker-2 approximates a conv kernel ``W`` (O, I, kh, kw) by a core ``G`` (R_out, R_in, kh, kw) and two factors with
orthonormal columns, ``U_in`` (I, R_in) and ``U_out`` (O, R_out)::

    W[o, i, :, :] ~= sum_{r, s} U_out[o, r] * G[r, s, :, :] * U_in[i, s]

and the layer becomes three convolutions: a 1x1 conv projecting I channels to R_in, the kh x kw core conv (with the
original stride, padding, dilation and padding mode) from R_in to R_out channels, and a 1x1 conv back to O
channels carrying the original bias. Why the padding may move to the middle conv: a 1x1 conv without bias is a
per-pixel linear map, which commutes with zero, reflect, replicate and circular padding. Ranks of a conv are always
written ``(R_out, R_in)``, in the order of the weight's dimensions and of the core's.

A linear layer ``W`` (O, I) becomes ``Linear(I, r, bias=False)`` then ``Linear(r, O)`` from the truncated SVD, the
singular values split evenly (``sqrt(S)``) between the two factors so neither starts out much larger for
fine-tuning. A layer whose factorization would not have fewer parameters than the dense layer is left alone and
reported as skipped (unless ``skip_larger=False``).

The decomposition is computed in float64 and is exact at full ranks; it is meant to be followed by fine-tuning
(:func:`deepzip.train.fit`), as in Kim et al., where accuracy drops at first and recovers within about an epoch.

Two steps: :func:`choose_ranks` (which layers, which ranks, what it costs) then :func:`factorize_` (the module swap);
:func:`decompose_` does both. Factored layers are :class:`Tucker2Conv`, :class:`SVDLinear` and :class:`TTLinear`
modules, so :func:`lowrank_spec` reads the structure off any model and :func:`rebuild_` puts it back on the base
architecture: :func:`deepzip.save` stores the spec in the ``.dz`` header and :func:`deepzip.load` rebuilds it.

Example:
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
    >>> x = torch.randn(2, 8, 5, 5)
    >>> before = m(x)
    >>> table = lowrank_table(decompose_(m, ranks={"0": (16, 8)}, skip_larger=False, progress=False))  # exact
    >>> [type(c).__name__ for c in m[0]], table[0]["ranks"]
    (['Conv2d', 'Conv2d', 'Conv2d'], (16, 8))
    >>> bool(torch.allclose(m(x), before, atol=1e-5))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..errors import LowRankError
from .prune import resolve_layer
from .walk import prunable_layers, set_module

__all__ = [
    "METHODS",
    "SPEC_KINDS",
    "LowRankError",
    "SVDLinear",
    "TTLinear",
    "Tucker2Conv",
    "choose_ranks",
    "convs_and_linears",
    "convs_only",
    "count_macs",
    "decompose_",
    "energy_rank",
    "evbmf",
    "factorize_",
    "lowrank_spec",
    "lowrank_table",
    "rebuild_",
    "svd_factors",
    "tt_linear_",
    "tucker2",
]

#: Rank-selection methods of :func:`decompose_` (explicit per-layer ``ranks=`` override them).
METHODS: tuple[str, ...] = ("vbmf", "energy")

ConvRanks = tuple[int, int]
LayerRanks = Mapping[str, "int | tuple[int, int]"]
TTSpec = tuple[Sequence[int], Sequence[int], int]
#: ``filter_fn(module, fqn) -> bool``: which layers a transform touches (torchao's convention).
FilterFn = Callable[[nn.Module, str], bool]


# ---------------------------------------------------------------------------------------------------- rank selection
def _singular_values(matrix: torch.Tensor | np.ndarray) -> tuple[np.ndarray, int, int]:
    """Singular values (descending, L of them) and the sides L <= M of a 2-D tensor or array."""
    a = matrix.detach().double().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, float)
    if a.ndim != 2 or a.size == 0:
        raise LowRankError(f"expected a non-empty 2-D matrix, got shape {tuple(a.shape)}")
    L, M = sorted(a.shape)
    return np.linalg.svd(a, compute_uv=False), L, M


def energy_rank(matrix: torch.Tensor | np.ndarray, energy: float) -> int:
    """The smallest rank r whose leading r singular values keep ``energy`` of the sum of squared singular values.

    Args:
        matrix: a 2-D tensor or array.
        energy: the fraction in (0, 1] of ``sum(s**2)`` to keep.

    Returns:
        r in 1..min(matrix.shape) (1 for a zero matrix).

    Example:
        >>> energy_rank(torch.diag(torch.tensor([3.0, 1.0, 0.1])), 0.8), energy_rank(torch.eye(4), 1.0)
        (1, 4)
    """
    _check_energy(energy)
    cum = np.cumsum(_singular_values(matrix)[0] ** 2)
    r = int(np.searchsorted(cum, energy * cum[-1], side="left")) + 1
    return min(r, cum.size)


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """The positive root of tau**2 - (x - 1 - alpha) tau + alpha = 0 (Nakajima et al. 2013, eq. 15)."""
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _evb_objective(sigma2: float, s2: np.ndarray, L: int, M: int, xubar: float) -> float:
    """EVBMF free energy as a function of the noise variance, up to a constant, all L singular values kept.

    Nakajima et al. 2013: ``sum_h psi0(x_h) + sum_{x_h > xubar} psi1(x_h)`` with ``x_h = s_h**2 / (M sigma2)``,
    ``psi0(x) = x - log x`` and ``psi1(x) = log(tau + 1) + alpha log(tau / alpha + 1) - tau``. Why not the
    reference code's sums as written: ``-log x_h = log(M sigma2) - log(s_h**2)``, and the constant
    ``-sum log(s_h**2)`` is infinite for an exactly zero singular value (a rank-deficient weight); it does not
    depend on sigma2, so it is dropped for every h alike.
    """
    alpha = L / M
    x = s2 / (M * sigma2)
    t = _tau(x[x > xubar], alpha)
    return float(np.sum(x) + x.size * math.log(M * sigma2)
                 + np.sum(np.log(t + 1.0) + alpha * np.log(t / alpha + 1.0) - t))


def _minimize_log_scalar(f: Any, lo: float, hi: float, grid: int = 64, iters: int = 80) -> float:
    """Minimise ``f`` on [lo, hi] (lo > 0) searched in log space: a grid, then golden section around its best point.

    The grid first, because the objective need not be unimodal over the whole bracket; a bounded Brent/golden search
    alone (the reference implementation's) can settle in the wrong valley.
    """
    a, b = math.log(lo), math.log(hi)
    if b - a < 1e-12:
        return lo
    pts = np.linspace(a, b, grid)
    vals = [f(math.exp(p)) for p in pts]
    k = int(np.argmin(vals))
    a, b = pts[max(k - 1, 0)], pts[min(k + 1, grid - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(math.exp(d))
    best = min((vals[k], pts[k]), (fc, c), (fd, d))
    return math.exp(best[1])


def evbmf(matrix: torch.Tensor | np.ndarray, sigma2: float | None = None) -> int:
    """The rank that analytical empirical variational Bayesian matrix factorization keeps (Nakajima et al. 2013).

    EVBMF models ``matrix = B A^T + noise`` with Gaussian priors whose variances are estimated from the data; the
    global solution keeps exactly the singular values above ``sqrt(M sigma2 (1 + tau) (1 + alpha / tau))`` with
    ``alpha = L / M`` (L <= M the matrix's sides) and ``tau = 2.5129 sqrt(alpha)``. When ``sigma2`` (the noise
    variance) is not given it is estimated by minimising the free energy over a bracket of noise variances, as in the
    authors' code. Kim et al. (2016) choose Tucker-2 ranks this way, one unfolding of the kernel at a time.

    Args:
        matrix: a 2-D tensor or array (either orientation).
        sigma2: the noise variance per entry, if known.

    Returns:
        The number of singular values EVBMF keeps, 0..min(matrix.shape) (0: nothing distinguishable from noise;
        always 0 for a single row or column, where the noise variance cannot be estimated apart from the signal).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> low = torch.randn(30, 3, generator=g) @ torch.randn(3, 40, generator=g)
        >>> evbmf(low + 0.05 * torch.randn(30, 40, generator=g))
        3
    """
    s, L, M = _singular_values(matrix)
    s2 = s ** 2
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    xubar = (1.0 + tauubar) * (1.0 + alpha / tauubar)
    if sigma2 is None:
        upper = float(np.sum(s2)) / (L * M)
        if upper <= 0.0:
            return 0  # a zero matrix
        k = min(math.ceil(L / (1.0 + alpha)) - 1, L - 1)  # the reference code's eH_ub, 0-based
        lower = max(s2[k] / (M * xubar), float(np.mean(s2[k:])) / M)
        lower = min(max(lower, upper * 1e-12), upper)  # an exactly low-rank matrix has no noise floor
        sigma2 = _minimize_log_scalar(lambda v: _evb_objective(v, s2, L, M, xubar), lower, upper)
    elif not sigma2 > 0:
        raise LowRankError(f"sigma2={sigma2!r}, expected a positive noise variance")
    threshold = math.sqrt(M * sigma2 * (1.0 + tauubar) * (1.0 + alpha / tauubar))
    return int(np.sum(s > threshold))


def _check_energy(energy: Any) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
        raise LowRankError(f"energy={energy!r}, expected a fraction in (0, 1]")
    return float(energy)


# ---------------------------------------------------------------------------------------------------- factorizations
def _leading(a: torch.Tensor, r: int) -> torch.Tensor:
    """The r leading left singular vectors of ``a`` (n, m) -> (n, r), orthonormal even when r > min(n, m)."""
    u = torch.linalg.svd(a, full_matrices=r > min(a.shape))[0]
    return u[:, :r]


def _unfold(w: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding of a 4-D kernel: (O, I*kh*kw) for mode 0, (I, O*kh*kw) for mode 1."""
    return (w if mode == 0 else w.transpose(0, 1)).reshape(w.shape[mode], -1)


def tucker2(
    weight: torch.Tensor, ranks: tuple[int, int], hooi_iters: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 decomposition of a conv kernel on its output- and input-channel modes.

    Starts from the truncated HOSVD (the leading left singular vectors of the mode-0 and mode-1 unfoldings) and
    refines it by ``hooi_iters`` sweeps of higher-order orthogonal iteration. Each HOOI half-step picks the factor
    that maximises ``||G||`` with the other fixed, and with orthonormal factors
    ``||W - W_hat||**2 = ||W||**2 - ||G||**2``, so the reconstruction error never increases.

    Args:
        weight: (O, I, kh, kw).
        ranks: ``(R_out, R_in)``, each >= 1; values above O (resp. I) are clamped to it.
        hooi_iters: HOOI sweeps after the HOSVD (0: HOSVD only).

    Returns:
        ``(core, u_in, u_out)``: core (R_out, R_in, kh, kw), u_in (I, R_in), u_out (O, R_out), in the weight's
        dtype; ``W_hat = einsum("rshw,or,is->oihw", core, u_out, u_in)``.

    Raises:
        ValueError: a weight that is not 4-D, ranks that are not two integers >= 1, or negative ``hooi_iters``.

    Example:
        >>> w = torch.randn(6, 4, 3, 3)
        >>> core, u_in, u_out = tucker2(w, (3, 2))
        >>> tuple(core.shape), tuple(u_in.shape), tuple(u_out.shape)
        ((3, 2, 3, 3), (4, 2), (6, 3))
        >>> core, u_in, u_out = tucker2(w, (6, 4))  # full ranks: exact
        >>> bool(torch.allclose(torch.einsum("rshw,or,is->oihw", core, u_out, u_in), w, atol=1e-5))
        True
    """
    if weight.dim() != 4:
        raise LowRankError(f"tucker2: weight of shape {tuple(weight.shape)}, expected (O, I, kh, kw)")
    r_out, r_in = _check_conv_ranks("tucker2", ranks)
    if isinstance(hooi_iters, bool) or not isinstance(hooi_iters, int) or hooi_iters < 0:
        raise LowRankError(f"hooi_iters={hooi_iters!r}, expected an integer >= 0")
    n_out, n_in = weight.shape[:2]
    r_out, r_in = min(r_out, n_out), min(r_in, n_in)
    w = weight.detach().double()  # (O, I, kh, kw)
    u_out = _leading(_unfold(w, 0), r_out)  # (O, R_out)
    u_in = _leading(_unfold(w, 1), r_in)  # (I, R_in)
    for _ in range(hooi_iters):
        y = torch.einsum("oihw,is->oshw", w, u_in)  # (O, R_in, kh, kw)
        u_out = _leading(_unfold(y, 0), r_out)
        y = torch.einsum("oihw,or->rihw", w, u_out)  # (R_out, I, kh, kw)
        u_in = _leading(_unfold(y, 1), r_in)
    core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)  # (R_out, R_in, kh, kw)
    return core.to(weight.dtype), u_in.to(weight.dtype), u_out.to(weight.dtype)


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD of a linear weight into two factors, ``weight ~= second @ first``.

    Args:
        weight: (O, I).
        rank: r >= 1; clamped to min(O, I).

    Returns:
        ``(first, second)``: first (r, I) = sqrt(S) V^T, second (O, r) = U sqrt(S), in the weight's dtype.

    Example:
        >>> w = torch.randn(5, 7)
        >>> a, b = svd_factors(w, 5)
        >>> tuple(a.shape), tuple(b.shape), bool(torch.allclose(b @ a, w, atol=1e-5))
        ((5, 7), (5, 5), True)
    """
    if weight.dim() != 2:
        raise LowRankError(f"svd_factors: weight of shape {tuple(weight.shape)}, expected (O, I)")
    _check_rank("svd_factors", rank)
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (root[:, None] * vh[:r]).to(weight.dtype), (u[:, :r] * root).to(weight.dtype)


def _rel_error(w: torch.Tensor, approx: torch.Tensor) -> float:
    norm = float(torch.linalg.vector_norm(w.double()))
    return float(torch.linalg.vector_norm(w.double() - approx.double())) / norm if norm > 0 else 0.0


# ---------------------------------------------------------------------------------------------------- layers
class Tucker2Conv(nn.Sequential):
    """A conv layer as its Tucker-2 triple: 1x1 conv (I -> R_in), kh x kw core conv (R_in -> R_out), 1x1 conv
    (R_out -> O, with the bias). A :class:`nn.Sequential` (state_dict keys ``0.weight``, ``1.weight``, ``2.weight``,
    ``2.bias``) whose type tells :func:`lowrank_spec` what it is, so a saved model can be rebuilt.

    Example:
        >>> t = Tucker2Conv.like(nn.Conv2d(8, 16, 3, padding=1), (4, 2))
        >>> t.ranks, tuple(t(torch.zeros(1, 8, 5, 5)).shape)
        ((4, 2), (1, 16, 5, 5))
    """

    @classmethod
    def like(cls, conv: nn.Conv2d, ranks: ConvRanks) -> Tucker2Conv:
        """An uninitialized triple with ``conv``'s geometry, device and dtype and ranks ``(R_out, R_in)``."""
        r_out, r_in = ranks
        kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
        first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False, **kw)  # type: ignore[arg-type]
        middle = nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,  # type: ignore
                           dilation=conv.dilation, padding_mode=conv.padding_mode, bias=False, **kw)
        last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None, **kw)  # type: ignore[arg-type]
        return cls(first, middle, last).train(conv.training)

    @property
    def ranks(self) -> ConvRanks:
        """``(R_out, R_in)``."""
        return self[1].out_channels, self[1].in_channels  # type: ignore[return-value]


class SVDLinear(nn.Sequential):
    """A linear layer as two: ``Linear(I, r, bias=False)`` then ``Linear(r, O)`` (keys ``0.weight``, ``1.weight``,
    ``1.bias``); its type tells :func:`lowrank_spec` what it is.

    Example:
        >>> s = SVDLinear.like(nn.Linear(10, 6), 3)
        >>> s.rank, tuple(s(torch.zeros(2, 10)).shape)
        (3, (2, 6))
    """

    @classmethod
    def like(cls, linear: nn.Linear, rank: int) -> SVDLinear:
        """An uninitialized pair with ``linear``'s sizes, device and dtype and inner size ``rank``."""
        kw = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        first = nn.Linear(linear.in_features, rank, bias=False, **kw)  # type: ignore[arg-type]
        second = nn.Linear(rank, linear.out_features, bias=linear.bias is not None, **kw)  # type: ignore[arg-type]
        return cls(first, second).train(linear.training)

    @property
    def rank(self) -> int:
        return self[0].out_features  # type: ignore[return-value]


def _tucker2_conv(conv: nn.Conv2d, core: torch.Tensor, u_in: torch.Tensor, u_out: torch.Tensor) -> Tucker2Conv:
    new = Tucker2Conv.like(conv, (core.shape[0], core.shape[1]))
    with torch.no_grad():
        new[0].weight.copy_(u_in.t()[:, :, None, None])  # (R_in, I, 1, 1)
        new[1].weight.copy_(core)  # (R_out, R_in, kh, kw)
        new[2].weight.copy_(u_out[:, :, None, None])  # (O, R_out, 1, 1)
        if conv.bias is not None:
            new[2].bias.copy_(conv.bias)
    return new


def _svd_linear(linear: nn.Linear, first_w: torch.Tensor, second_w: torch.Tensor) -> SVDLinear:
    new = SVDLinear.like(linear, first_w.shape[0])
    with torch.no_grad():
        new[0].weight.copy_(first_w)  # (r, I)
        new[1].weight.copy_(second_w)  # (O, r)
        if linear.bias is not None:
            new[1].bias.copy_(linear.bias)
    return new


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_rank(where: str, r: Any) -> int:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise LowRankError(f"{where}: rank={r!r}, expected an integer >= 1")
    return int(r)


def _check_conv_ranks(where: str, ranks: Any) -> ConvRanks:
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2 or any(
            isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in ranks):
        raise LowRankError(f"{where}: ranks={ranks!r}, expected (R_out, R_in), two integers >= 1")
    return int(ranks[0]), int(ranks[1])


def _check_fits(name: str, module: nn.Module, r: int | ConvRanks) -> None:
    """Explicit ranks must fit the layer: never silently clamped, the message names the layer and both numbers."""
    if isinstance(module, nn.Conv2d):
        for what, value, dim in (("R_out", r[0], module.out_channels), ("R_in", r[1], module.in_channels)):  # type: ignore
            if value > dim:
                side = "output" if what == "R_out" else "input"
                raise LowRankError(f"{name}: {what}={value} exceeds the layer's {dim} {side} channels")
    else:
        limit = min(module.weight.shape)
        if r > limit:  # type: ignore[operator]
            raise LowRankError(f"{name}: rank={r} exceeds min(out, in)={limit} of the {tuple(module.weight.shape)} "
                               "weight")


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return prunable_layers(model, lambda m, name: isinstance(m, (nn.Conv2d, nn.Linear))
                           and not isinstance(_parent(model, name), (Tucker2Conv, SVDLinear)))


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    parent = name.rpartition(".")[0]
    return model.get_submodule(parent) if parent else None


def _check_plain(name: str, module: nn.Module) -> None:
    if parametrize.is_parametrized(module, "weight"):
        raise LowRankError(f"{name}.weight: pruned or weight-shared (parametrized); decompose before "
                           "pruning/sharing or strip() the model first")
    if not torch.is_floating_point(module.weight):
        raise LowRankError(f"{name}.weight: dtype {module.weight.dtype} is not floating point")


_TABLE_ATTR = "deepzip_lowrank"


def _record(model: nn.Module, rows: list[dict]) -> None:
    table = getattr(model, _TABLE_ATTR, None)
    if not isinstance(table, list):
        table = []
        object.__setattr__(model, _TABLE_ATTR, table)  # a plain attribute, not a submodule or buffer
    table.extend(rows)


def lowrank_table(model: nn.Module) -> list[dict]:
    """The rows of every :func:`decompose_` / :func:`tt_linear_` call on ``model`` so far, oldest first (a copy).

    Example:
        >>> from torch import nn
        >>> lowrank_table(nn.Linear(4, 4))
        []
    """
    return [dict(r) for r in getattr(model, _TABLE_ATTR, None) or []]


def convs_only(module: nn.Module, fqn: str) -> bool:
    """The default ``filter_fn`` of :func:`decompose_`: every ``nn.Conv2d`` (Tucker-2 is where the speed is)."""
    return isinstance(module, nn.Conv2d)


def convs_and_linears(module: nn.Module, fqn: str) -> bool:
    """A ``filter_fn`` selecting every ``nn.Conv2d`` and ``nn.Linear``."""
    return isinstance(module, (nn.Conv2d, nn.Linear))


def choose_ranks(
    model: nn.Module,
    method: str = "vbmf",
    *,
    energy: float = 0.9,
    ranks: LayerRanks | None = None,
    filter_fn: FilterFn | None = None,
    layers: Iterable[str] | None = None,
    skip_larger: bool = True,
) -> list[dict]:
    """Rank choice, the first half of :func:`decompose_`: which layers, at which ranks, and what that would cost.

    Which layers: the dotted names in ``layers`` plus those named in ``ranks``; when neither is given, every
    ``nn.Conv2d`` / ``nn.Linear`` ``module`` with ``filter_fn(module, fqn)`` true (default :func:`convs_only`).
    A dict of ``ranks`` alone leaves the layers it does not name alone (as ``prune_``'s per-layer dicts do). Names
    may carry a ``.weight`` suffix.

    Ranks: explicit ``ranks[name]`` -- ``(R_out, R_in)`` for a conv, an int for a linear layer, each at most the
    layer's dimension -- else by ``method`` on each unfolding of the kernel (the weight itself for a linear layer):
    ``"vbmf"`` (analytical empirical VBMF, :func:`evbmf`, as Kim et al.) or ``"energy"`` (:func:`energy_rank`
    keeping ``energy`` of the squared singular values); those are clamped to [1, dim].

    Args:
        model: the model (not modified).
        method: ``"vbmf"`` or ``"energy"``, for the layers without explicit ranks.
        energy: fraction in (0, 1] for ``method="energy"``.
        ranks: explicit per-layer ranks, by dotted name.
        filter_fn: ``filter_fn(module, fqn) -> bool`` (torchao's convention), used when ``layers`` and ``ranks``
            are both None.
        layers: dotted names of the layers to decompose (``nn.Conv2d`` or ``nn.Linear``).
        skip_larger: mark a layer as skipped when its factorization would not have fewer parameters.

    Returns:
        One row per selected layer, as :func:`lowrank_table`'s (``rel_error`` still 0.0): pass them to
        :func:`factorize_`.

    Raises:
        LowRankError: an unknown layer name or one that is not Conv2d/Linear, a grouped conv, a pruned or shared
            layer, ranks < 1, of the wrong form or larger than the layer, an unknown method, energy outside
            (0, 1]; the message names the layer or field.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 4, 64))
        >>> [(r["layer"], r["ranks"], r["params_after"]) for r in choose_ranks(m, ranks={"0": (4, 4), "2": 8})]
        [('0', (4, 4), 368), ('2', 8, 1600)]
    """
    if method not in METHODS:
        raise LowRankError(f"method={method!r}, expected one of {', '.join(METHODS)}")
    energy = _check_energy(energy)
    cands = _candidates(model)

    def known(key: str, what: str) -> str:
        return resolve_layer(key, cands, what, "decomposable (Conv2d or Linear)")

    explicit: dict[str, Any] = {}
    for key, given in (ranks or {}).items():
        name = known(key, "ranks")
        if isinstance(cands[name], nn.Conv2d):
            explicit[name] = _check_conv_ranks(name, given)
        else:
            explicit[name] = _check_rank(name, given)
        _check_fits(name, cands[name], explicit[name])
    if layers is not None:
        if isinstance(layers, str):
            raise LowRankError(f"layers={layers!r}: expected a list of layer names, not one string")
        names = [known(k, "layers") for k in layers]
    elif ranks is not None:
        names = []
    else:
        keep = filter_fn or convs_only
        names = [n for n, m in cands.items() if keep(m, n)]
    names = list(dict.fromkeys([*names, *explicit]))  # in order, without repeats
    rows = []
    for name in names:
        module = cands[name]
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise LowRankError(f"{name}: Conv2d with groups={module.groups}; Tucker-2 needs groups=1")
        _check_plain(name, module)
        w = module.weight.detach()
        before = _n_params(module)
        bias = 0 if module.bias is None else module.bias.numel()
        r: Any
        if isinstance(module, nn.Conv2d):
            n_out, n_in, kh, kw = w.shape
            if name in explicit:
                r = explicit[name]
            else:
                pick = evbmf if method == "vbmf" else (lambda a: energy_rank(a, energy))
                r = (min(max(pick(_unfold(w, 0)), 1), n_out), min(max(pick(_unfold(w, 1)), 1), n_in))
            kind, after = "tucker2", n_in * r[1] + r[0] * r[1] * kh * kw + r[0] * n_out + bias
        else:
            n_out, n_in = w.shape
            if name in explicit:
                r = explicit[name]
            else:
                r = min(max(evbmf(w) if method == "vbmf" else energy_rank(w, energy), 1), n_out, n_in)
            kind, after = "svd", r * (n_out + n_in) + bias
        row = {"layer": name, "kind": kind, "shape": list(w.shape),
               "method": "explicit" if name in explicit else method, "ranks": r,
               "params_before": before, "params_after": after, "rel_error": 0.0, "skipped": None}
        if skip_larger and after >= before:
            row.update(params_after=before, skipped=f"factorization has {after} params, the layer {before}")
        rows.append(row)
    return rows


def factorize_(model: nn.Module, plan: Sequence[Mapping[str, Any]], *, hooi_iters: int = 5,
               progress: bool = False) -> nn.Module:
    """The module swap, the second half of :func:`decompose_`: replace each planned layer by its factors, in place.

    Args:
        model: the model; modified in place.
        plan: rows as :func:`choose_ranks` returns (``layer``, ``kind`` ``"tucker2"``/``"svd"``, ``ranks``;
            rows with ``skipped`` set are recorded but not applied).
        hooi_iters: HOOI refinement sweeps of each Tucker-2 decomposition (see :func:`tucker2`).
        progress: show a progress bar over the layers.

    Returns:
        ``model``; the rows, with ``rel_error`` (``||W - W_hat|| / ||W||``) filled in, are appended to
        :func:`lowrank_table`.

    Raises:
        LowRankError: a row naming a layer that is not there or not of its kind, ranks too large, negative
            ``hooi_iters``. Nothing is changed when it raises.

    Example:
        >>> m = nn.Sequential(nn.Linear(20, 20))
        >>> _ = factorize_(m, [{"layer": "0", "kind": "svd", "ranks": 20}], progress=False)
        >>> type(m[0]).__name__, lowrank_table(m)[0]["rel_error"] < 1e-6
        ('SVDLinear', True)
    """
    if isinstance(hooi_iters, bool) or not isinstance(hooi_iters, int) or hooi_iters < 0:
        raise LowRankError(f"hooi_iters={hooi_iters!r}, expected an integer >= 0")
    cands = _candidates(model)
    for row in plan:
        name, kind = row.get("layer"), row.get("kind")
        want = {"tucker2": nn.Conv2d, "svd": nn.Linear}.get(kind)  # type: ignore[arg-type]
        if want is None:
            raise LowRankError(f"{name}: kind={kind!r}, expected 'tucker2' or 'svd'")
        module = cands.get(name)  # type: ignore[arg-type]
        if not isinstance(module, want):
            raise LowRankError(f"{name}: not a {want.__name__} of the model (a {type(module).__name__})")
        if not row.get("skipped"):
            r = _check_conv_ranks(name, row["ranks"]) if kind == "tucker2" else _check_rank(name, row["ranks"])
            _check_fits(name, module, r)  # type: ignore[arg-type]
            _check_plain(name, module)  # type: ignore[arg-type]
    rows = []
    for row in tqdm(plan, desc="decompose", disable=not progress, leave=False):
        row = dict(row)
        rows.append(row)
        if row.get("skipped"):
            continue
        name = row["layer"]
        module = cands[name]
        w = module.weight.detach()
        new: nn.Module
        if row["kind"] == "tucker2":
            core, u_in, u_out = tucker2(w, tuple(row["ranks"]), hooi_iters)  # type: ignore[arg-type]
            approx = torch.einsum("rshw,or,is->oihw", core.double(), u_out.double(), u_in.double())
            new = _tucker2_conv(module, core, u_in, u_out)  # type: ignore[arg-type]
        else:
            first, second = svd_factors(w, int(row["ranks"]))
            approx = second.double() @ first.double()
            new = _svd_linear(module, first, second)  # type: ignore[arg-type]
        row["rel_error"] = _rel_error(w, approx)
        set_module(model, name, new)
    _record(model, rows)
    return model


def decompose_(
    model: nn.Module,
    method: str = "vbmf",
    *,
    energy: float = 0.9,
    ranks: LayerRanks | None = None,
    filter_fn: FilterFn | None = None,
    layers: Iterable[str] | None = None,
    hooi_iters: int = 5,
    skip_larger: bool = True,
    progress: bool = False,
) -> nn.Module:
    """Replace conv layers by Tucker-2 triples and linear layers by SVD pairs, in place:
    :func:`choose_ranks` then :func:`factorize_` (see both for the arguments).

    Returns:
        ``model``. One row per selected layer is appended to :func:`lowrank_table`: ``layer``, ``kind``
        (``"tucker2"`` or ``"svd"``), ``shape`` (of the original weight), ``method`` (``"vbmf"``, ``"energy"`` or
        ``"explicit"``), ``ranks`` (``(R_out, R_in)`` or ``r``: pass ``{row["layer"]: row["ranks"]}`` as
        ``ranks=`` to rebuild the same structure), ``params_before`` / ``params_after`` (weights and biases of the
        layer), ``rel_error`` (``||W - W_hat|| / ||W||``, Frobenius; 0.0 when skipped) and ``skipped`` (None, or
        the reason).

    Raises:
        LowRankError: as :func:`choose_ranks` and :func:`factorize_`; nothing is changed when it raises.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 4, 64))
        >>> rows = lowrank_table(decompose_(m, ranks={"0": (4, 4), "2": 8}, progress=False))
        >>> [(r["layer"], r["kind"], r["ranks"], r["params_before"], r["params_after"]) for r in rows]
        [('0', 'tucker2', (4, 4), 4640, 368), ('2', 'svd', 8, 8256, 1600)]
    """
    if isinstance(hooi_iters, bool) or not isinstance(hooi_iters, int) or hooi_iters < 0:
        raise LowRankError(f"hooi_iters={hooi_iters!r}, expected an integer >= 0")
    plan = choose_ranks(model, method, energy=energy, ranks=ranks, filter_fn=filter_fn, layers=layers,
                        skip_larger=skip_larger)
    return factorize_(model, plan, hooi_iters=hooi_iters, progress=progress)

# ---------------------------------------------------------------------------------------------------- tensor train
def _check_modes(where: str, in_modes: Sequence[int], out_modes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    mods = []
    for what, modes in (("in_modes", in_modes), ("out_modes", out_modes)):
        if not isinstance(modes, (tuple, list)) or not modes or any(
                isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in modes):
            raise LowRankError(f"{where}: {what}={modes!r}, expected a non-empty list of integers >= 1")
        mods.append(tuple(int(m) for m in modes))
    if len(mods[0]) != len(mods[1]):
        raise LowRankError(f"{where}: in_modes={in_modes!r} and out_modes={out_modes!r} differ in length")
    return tuple(mods)


class TTLinear(nn.Module):
    """A linear layer whose weight is a tensor train (Novikov et al. 2015), never materialized in ``forward``.

    With ``in_features = prod(in_modes)`` and ``out_features = prod(out_modes)`` (d modes each), the weight matrix
    ``T = W^T`` (in, out), indexed by row-major multi-indices ``(i_1..i_d)`` and ``(j_1..j_d)``, is
    ``T[i, j] = G_1[:, i_1, j_1, :] @ G_2[:, i_2, j_2, :] @ ... @ G_d[:, i_d, j_d, :]`` with cores ``G_k`` of
    shape ``(r_{k-1}, m_k, n_k, r_k)`` and ``r_0 = r_d = 1``. Parameters: ``sum_k r_{k-1} m_k n_k r_k`` (+ bias).

    Args:
        in_modes: (m_1..m_d), whose product is the number of input features.
        out_modes: (n_1..n_d), whose product is the number of output features.
        ranks: the d - 1 inner TT ranks (r_1..r_{d-1}), each >= 1 (empty for d = 1).
        bias: whether to add a learnable bias.

    Example:
        >>> layer = TTLinear((4, 7), (5, 6), ranks=(3,))
        >>> tuple(layer(torch.randn(2, 28)).shape), layer.ranks, sum(c.numel() for c in layer.cores)
        ((2, 30), (1, 3, 1), 186)
    """

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int], bias: bool = True,
                 *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_modes, self.out_modes = _check_modes("TTLinear", in_modes, out_modes)
        d = len(self.in_modes)
        if not isinstance(ranks, (tuple, list)) or len(ranks) != d - 1:
            raise LowRankError(f"TTLinear: ranks={ranks!r}, expected {d - 1} inner ranks for {d} modes")
        self.ranks: tuple[int, ...] = (1, *(_check_rank("TTLinear", r) for r in ranks), 1)
        self.in_features, self.out_features = math.prod(self.in_modes), math.prod(self.out_modes)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(self.ranks[k], m, n, self.ranks[k + 1], device=device, dtype=dtype))
            for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes)))
        self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random cores whose product has the variance of ``nn.Linear``'s default init (1 / (3 in_features)).

        Each weight is a sum over ``prod(r_1..r_{d-1})`` paths of products of d core entries, so core entries get
        variance ``(1 / (3 in prod r)) ** (1 / d)``.
        """
        d = len(self.cores)
        std = (1.0 / (3.0 * self.in_features * math.prod(self.ranks[1:-1]))) ** (0.5 / d)
        with torch.no_grad():
            for core in self.cores:
                core.normal_(0.0, std)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        b = x.reshape(-1, self.in_features).shape[0]
        # t: (B, N, M, r) with N = n_1..n_{k-1} done, M = m_k..m_d still to contract, r = r_{k-1}
        t = x.reshape(b, 1, self.in_features, 1)
        for core in self.cores:
            r0, m, n, r1 = core.shape
            N, M = t.shape[1], t.shape[2]
            t = t.reshape(b, N, m, M // m, r0)
            t = torch.einsum("bNmMr,rmns->bNnMs", t, core)  # (B, N, n_k, M / m_k, r_k)
            t = t.reshape(b, N * n, M // m, r1)
        y = t.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def full_weight(self) -> torch.Tensor:
        """The dense weight (out_features, in_features) the cores represent (for tests and export)."""
        full = self.cores[0].new_ones(1, 1, 1)  # (M, N, r): in and out modes so far, open rank
        for core in self.cores:
            _, m, n, r1 = core.shape
            M, N = full.shape[:2]
            full = torch.einsum("MNr,rmns->MmNns", full, core).reshape(M * m, N * n, r1)
        return full.reshape(self.in_features, self.out_features).t()

    @classmethod
    def from_linear(cls, linear: nn.Linear, in_modes: Sequence[int], out_modes: Sequence[int],
                    max_rank: int) -> TTLinear:
        """A TTLinear approximating ``linear`` by TT-SVD (Oseledets 2011) with TT ranks at most ``max_rank``.

        The weight, transposed to (in, out) and reshaped to (m_1..m_d, n_1..n_d), is permuted to
        (m_1, n_1, ..., m_d, n_d) and split by successive truncated SVDs; with ``max_rank`` at least the ranks of
        the unfoldings the result is exact.

        Raises:
            ValueError: modes whose products are not the layer's in/out features, or ``max_rank`` < 1.

        Example:
            >>> lin = nn.Linear(12, 6)
            >>> tt = TTLinear.from_linear(lin, (3, 4), (2, 3), max_rank=6)
            >>> bool(torch.allclose(tt.full_weight(), lin.weight, atol=1e-5)), tt.ranks
            (True, (1, 6, 1))
        """
        in_modes, out_modes = _check_modes("from_linear", in_modes, out_modes)
        if math.prod(in_modes) != linear.in_features or math.prod(out_modes) != linear.out_features:
            raise LowRankError(f"from_linear: modes {in_modes} x {out_modes} give a {math.prod(in_modes)} x "
                             f"{math.prod(out_modes)} layer, the Linear is {linear.in_features} x "
                             f"{linear.out_features}")
        max_rank = _check_rank("from_linear max_rank", max_rank)
        d = len(in_modes)
        t = linear.weight.detach().double().t().reshape(*in_modes, *out_modes)  # (m_1..m_d, n_1..n_d)
        c = t.permute([i for k in range(d) for i in (k, d + k)])  # (m_1, n_1, ..., m_d, n_d)
        ranks, cores = [1], []
        for m, n in zip(in_modes[:-1], out_modes[:-1]):
            c = c.reshape(ranks[-1] * m * n, -1)
            u, s, vh = torch.linalg.svd(c, full_matrices=False)
            r = min(max_rank, s.numel())
            cores.append(u[:, :r].reshape(ranks[-1], m, n, r))
            c = s[:r, None] * vh[:r]  # (r, rest): the remainder carries the singular values
            ranks.append(r)
        cores.append(c.reshape(ranks[-1], in_modes[-1], out_modes[-1], 1))
        w = linear.weight
        layer = cls(in_modes, out_modes, ranks[1:], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for p, core in zip(layer.cores, cores):
                p.copy_(core)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)  # type: ignore[union-attr]
        return layer.train(linear.training)

    def extra_repr(self) -> str:
        return (f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, "
                f"bias={self.bias is not None}")


def tt_linear_(
    model: nn.Module, layers: Mapping[str, TTSpec], *, skip_larger: bool = True, progress: bool = False
) -> nn.Module:
    """Replace linear layers by :class:`TTLinear` layers initialized by TT-SVD, in place.

    Args:
        model: the model; modified in place.
        layers: ``{name: (in_modes, out_modes, max_rank)}`` by dotted layer name (``"fc1"`` or ``"fc1.weight"``).
        skip_larger: leave a layer dense, reported as skipped, when the tensor train would not have fewer
            parameters.
        progress: show a progress bar over the layers.

    Returns:
        ``model``. One row per layer is appended to :func:`lowrank_table`, as :func:`decompose_`'s, with
        ``kind="tt"``, ``ranks`` the full TT ranks
        ``(1, r_1, ..., 1)`` and ``in_modes`` / ``out_modes``.

    Raises:
        ValueError: an unknown layer name or one that is not ``nn.Linear``, a malformed spec, modes that do not
            multiply to the layer's features, ``max_rank`` < 1; the message names the layer.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
        >>> rows = lowrank_table(tt_linear_(m, {"0": ((4, 7, 4, 7), (3, 4, 5, 5), 8)}, progress=False))
        >>> type(m[0]).__name__, m[0].ranks, rows[0]["params_after"]
        ('TTLinear', (1, 8, 8, 8, 1), 3748)
    """
    mods = dict(model.named_modules())
    plan = {}
    linears = {n: m for n, m in mods.items() if n and isinstance(m, nn.Linear)}
    for key, spec in layers.items():
        name = resolve_layer(key, linears, "tt_linear_", "Linear")
        module = linears[name]
        if not isinstance(spec, (tuple, list)) or len(spec) != 3:
            raise LowRankError(f"{name}: spec={spec!r}, expected (in_modes, out_modes, max_rank)")
        in_modes, out_modes = _check_modes(name, spec[0], spec[1])
        if math.prod(in_modes) != module.in_features or math.prod(out_modes) != module.out_features:
            raise LowRankError(f"{name}: modes {in_modes} x {out_modes} give {math.prod(in_modes)} x "
                             f"{math.prod(out_modes)}, the layer is {module.in_features} x {module.out_features}")
        _check_rank(f"{name} max_rank", spec[2])
        _check_plain(name, module)
        plan[name] = (module, in_modes, out_modes, int(spec[2]))
    rows = []
    for name, (module, in_modes, out_modes, max_rank) in tqdm(plan.items(), desc="tt", disable=not progress,
                                                             leave=False):
        tt = TTLinear.from_linear(module, in_modes, out_modes, max_rank)
        before, after = _n_params(module), _n_params(tt)
        row = {"layer": name, "kind": "tt", "shape": list(module.weight.shape), "method": "tt-svd",
               "ranks": tt.ranks, "in_modes": in_modes, "out_modes": out_modes, "params_before": before,
               "params_after": after, "rel_error": 0.0, "skipped": None}
        if skip_larger and after >= before:
            row.update(params_after=before, skipped=f"tensor train has {after} params, the layer {before}")
        else:
            with torch.no_grad():
                row["rel_error"] = _rel_error(module.weight.detach(), tt.full_weight())
            set_module(model, name, tt)
        rows.append(row)
    _record(model, rows)
    return model


# ---------------------------------------------------------------------------------------------------- the record
#: The kinds of factored layer a model's :func:`lowrank_spec` (and a ``.dz`` header's ``extra.lowrank``) may name.
SPEC_KINDS: tuple[str, ...] = ("tucker2", "svd", "tt")


def lowrank_spec(model: nn.Module) -> list[dict]:
    """What :func:`rebuild_` needs to turn the base architecture into ``model``'s factored one, read off its modules.

    One entry per :class:`Tucker2Conv`, :class:`SVDLinear` and :class:`TTLinear`, in module order:
    ``{"layer", "kind", "shape", "ranks"}`` with ``shape`` the dense layer's weight shape, ``ranks``
    ``[R_out, R_in]`` (tucker2), ``[r]`` (svd) or the full TT ranks ``[1, r_1, ..., 1]`` (tt, which also has
    ``in_modes`` and ``out_modes``). Plain JSON: :func:`deepzip.save` stores it in the header.

    Example:
        >>> m = decompose_(nn.Sequential(nn.Conv2d(8, 16, 3)), ranks={"0": (4, 2)}, progress=False)
        >>> lowrank_spec(m)
        [{'layer': '0', 'kind': 'tucker2', 'shape': [16, 8, 3, 3], 'ranks': [4, 2]}]
    """
    out: list[dict] = []
    for name, m in model.named_modules():
        if isinstance(m, Tucker2Conv):
            first, middle, last = m[0], m[1], m[2]
            kh, kw = middle.kernel_size  # type: ignore[misc]
            out.append({"layer": name, "kind": "tucker2",
                        "shape": [last.out_channels, first.in_channels, kh, kw],
                        "ranks": list(m.ranks)})
        elif isinstance(m, SVDLinear):
            out.append({"layer": name, "kind": "svd", "shape": [m[1].out_features, m[0].in_features],
                        "ranks": [m.rank]})
        elif isinstance(m, TTLinear):
            out.append({"layer": name, "kind": "tt", "shape": [m.out_features, m.in_features],
                        "ranks": list(m.ranks), "in_modes": list(m.in_modes), "out_modes": list(m.out_modes)})
    return out


def _ints(where: str, what: str, v: Any, n: int | None = None) -> list[int]:
    if not isinstance(v, list) or (n is not None and len(v) != n) or any(
            isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v):
        count = f"{n} " if n is not None else ""
        raise LowRankError(f"{where}: {what}={v!r}, expected a list of {count}integers >= 1")
    return v


def _describe(m: nn.Module) -> str:
    if isinstance(m, Tucker2Conv):
        return f"a Tucker-2 triple with ranks {m.ranks}"
    if isinstance(m, SVDLinear):
        return f"an SVD pair with rank {m.rank}"
    if isinstance(m, TTLinear):
        return f"a TTLinear with ranks {m.ranks}, modes {m.in_modes} x {m.out_modes}"
    w = getattr(m, "weight", None)
    shape = f" {tuple(w.shape)}" if isinstance(w, torch.Tensor) else ""
    return f"a plain {type(m).__name__}{shape}"


def _spec_module(where: str, entry: Any) -> tuple[str, str, list[int], list[int], dict]:
    """Validate one record entry (it may come from a file): (layer, kind, shape, ranks, tt modes)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("layer"), str) or not entry["layer"]:
        raise LowRankError(f"{where}: expected an object with a layer name, got {entry!r}"[:200])
    name, kind = entry["layer"], entry.get("kind")
    where = f"{where} ({name})"
    if kind not in SPEC_KINDS:
        raise LowRankError(f"{where}: kind={kind!r}, expected one of {', '.join(SPEC_KINDS)}")
    shape = _ints(where, "shape", entry.get("shape"), 4 if kind == "tucker2" else 2)
    modes: dict = {}
    if kind == "tt":
        for key in ("in_modes", "out_modes"):
            modes[key] = _ints(where, key, entry.get(key))
        d = len(modes["in_modes"])
        if len(modes["out_modes"]) != d:
            raise LowRankError(f"{where}: {d} in_modes but {len(modes['out_modes'])} out_modes")
        ranks = _ints(where, "ranks", entry.get("ranks"), d + 1)
        if ranks[0] != 1 or ranks[-1] != 1:
            raise LowRankError(f"{where}: TT ranks {ranks} must start and end with 1")
        if math.prod(modes["in_modes"]) != shape[1] or math.prod(modes["out_modes"]) != shape[0]:
            raise LowRankError(f"{where}: modes {modes['in_modes']} x {modes['out_modes']} give "
                               f"{math.prod(modes['in_modes'])} x {math.prod(modes['out_modes'])} features, the "
                               f"layer is {shape[1]} x {shape[0]}")
    else:
        ranks = _ints(where, "ranks", entry.get("ranks"), 2 if kind == "tucker2" else 1)
    return name, kind, shape, ranks, modes


def _matches(m: nn.Module, kind: str, ranks: list[int], modes: dict) -> bool:
    if kind == "tucker2":
        return isinstance(m, Tucker2Conv) and list(m.ranks) == ranks
    if kind == "svd":
        return isinstance(m, SVDLinear) and [m.rank] == ranks
    return (isinstance(m, TTLinear) and list(m.ranks) == ranks and list(m.in_modes) == modes["in_modes"]
            and list(m.out_modes) == modes["out_modes"])


_KIND_NAMES = {"tucker2": "a Tucker-2 triple with ranks {r}", "svd": "an SVD pair with rank {r}",
               "tt": "a TTLinear with ranks {r}"}


def rebuild_(model: nn.Module, spec: Sequence[Mapping[str, Any]], *, swap: bool = True) -> nn.Module:
    """Give ``model`` (the base architecture) the factored layers ``spec`` describes, in place, uninitialized.

    The weights are whatever the new layers' constructors give: load a state_dict (or a ``.dz`` file) afterwards.
    Layers that already are what the entry says are left alone, so rebuilding twice is harmless.

    Args:
        model: the model; modified in place.
        spec: entries as :func:`lowrank_spec` returns (e.g. from a file's header).
        swap: False: only check that the model already has this structure, replace nothing.

    Returns:
        ``model``.

    Raises:
        LowRankError: a malformed entry, a layer the model lacks, a dense layer of another shape than the entry's,
            ranks larger than the layer, TT modes whose product is not the layer's size, a layer already factored
            differently, or (``swap=False``) a plain layer where the spec has a factored one; the message names
            the layer and both numbers. Nothing is changed when it raises.

    Example:
        >>> m = decompose_(nn.Sequential(nn.Conv2d(8, 16, 3)), ranks={"0": (4, 2)}, progress=False)
        >>> fresh = rebuild_(nn.Sequential(nn.Conv2d(8, 16, 3)), lowrank_spec(m))
        >>> _ = fresh.load_state_dict(m.state_dict())  # strict: same structure
        >>> x = torch.randn(1, 8, 5, 5); bool(torch.equal(fresh(x), m(x)))
        True
    """
    if not isinstance(spec, (list, tuple)):
        raise LowRankError(f"low-rank spec: expected a list of layer entries, got {type(spec).__name__}")
    mods = dict(model.named_modules())
    todo: list[tuple[str, nn.Module]] = []
    for i, entry in enumerate(spec):
        name, kind, shape, ranks, modes = _spec_module(f"lowrank[{i}]", entry)
        have = mods.get(name)
        shown = _KIND_NAMES[kind].format(r=tuple(ranks) if kind != "svd" else ranks[0])
        if have is None:
            raise LowRankError(f"{name}: the spec has {shown}, the model has no layer {name!r}")
        if _matches(have, kind, ranks, modes):
            continue
        if isinstance(have, (Tucker2Conv, SVDLinear, TTLinear)):
            raise LowRankError(f"{name}: the spec has {shown}, the model has {_describe(have)}")
        dense = nn.Conv2d if kind == "tucker2" else nn.Linear
        if not isinstance(have, dense):
            raise LowRankError(f"{name}: the spec has {shown} in place of a {dense.__name__}, the model has "
                               f"{_describe(have)}")
        if list(have.weight.shape) != shape:
            raise LowRankError(f"{name}: the spec's dense weight is {tuple(shape)}, the model's "
                               f"{tuple(have.weight.shape)}")
        if not swap:
            raise LowRankError(f"{name}: the file holds {shown}, the model has {_describe(have)} "
                               f"({_n_params(have):,} params); load without a model to rebuild the factored "
                               "architecture")
        new: nn.Module
        if kind == "tucker2":
            if isinstance(have, nn.Conv2d) and have.groups != 1:
                raise LowRankError(f"{name}: Conv2d with groups={have.groups}; Tucker-2 needs groups=1")
            _check_fits(name, have, (ranks[0], ranks[1]))
            new = Tucker2Conv.like(have, (ranks[0], ranks[1]))  # type: ignore[arg-type]
        elif kind == "svd":
            _check_fits(name, have, ranks[0])
            new = SVDLinear.like(have, ranks[0])  # type: ignore[arg-type]
        else:
            w = have.weight
            new = TTLinear(modes["in_modes"], modes["out_modes"], ranks[1:-1], bias=have.bias is not None,
                           device=w.device, dtype=w.dtype).train(have.training)
        todo.append((name, new))
    for name, new in todo:
        set_module(model, name, new)
    return model


def count_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of one forward pass of ``x``, per Conv2d / Linear / TTLinear module, by dotted name.

    Only these layers are counted (activations, pooling and additions are cheap beside them). A layer's total is
    the sum over the names under it: ``sum(v for k, v in macs.items() if k == "conv2" or k.startswith("conv2."))``.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
        >>> count_macs(m, torch.zeros(1, 1, 5, 5))
        {'0': 324, '2': 72}
    """
    macs: dict[str, int] = {}
    hooks = []

    def hook(name: str) -> Any:
        def run(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                n = out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
            elif isinstance(m, nn.Linear):
                n = out.numel() * m.in_features
            else:  # TTLinear: core k costs B * N * M * r_{k-1} * n_k * r_k (see forward)
                b = inp[0].numel() // m.in_features
                n, N, M = 0, 1, m.in_features
                for core in m.cores:
                    r0, mk, nk, r1 = core.shape
                    n += b * N * M * r0 * nk * r1
                    N, M = N * nk, M // mk
            macs[name] = macs.get(name, 0) + int(n)
        return run

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, TTLinear)):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return macs
