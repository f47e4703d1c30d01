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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .prune import resolve_layer

__all__ = [
    "METHODS",
    "TTLinear",
    "decompose_",
    "energy_rank",
    "evbmf",
    "lowrank_table",
    "svd_factors",
    "tt_linear_",
    "tucker2",
]

#: Rank-selection methods of :func:`decompose_` (explicit per-layer ``ranks=`` override them).
METHODS: tuple[str, ...] = ("vbmf", "energy")

ConvRanks = tuple[int, int]
LayerRanks = Mapping[str, "int | tuple[int, int]"]
TTSpec = tuple[Sequence[int], Sequence[int], int]


# ---------------------------------------------------------------------------------------------------- rank selection
def _singular_values(matrix: torch.Tensor | np.ndarray) -> tuple[np.ndarray, int, int]:
    """Singular values (descending, L of them) and the sides L <= M of a 2-D tensor or array."""
    a = matrix.detach().double().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, float)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {tuple(a.shape)}")
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
        raise ValueError(f"sigma2={sigma2!r}, expected a positive noise variance")
    threshold = math.sqrt(M * sigma2 * (1.0 + tauubar) * (1.0 + alpha / tauubar))
    return int(np.sum(s > threshold))


def _check_energy(energy: Any) -> float:
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 < energy <= 1.0:
        raise ValueError(f"energy={energy!r}, expected a fraction in (0, 1]")
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
        raise ValueError(f"tucker2: weight of shape {tuple(weight.shape)}, expected (O, I, kh, kw)")
    r_out, r_in = _check_conv_ranks("tucker2", ranks)
    if isinstance(hooi_iters, bool) or not isinstance(hooi_iters, int) or hooi_iters < 0:
        raise ValueError(f"hooi_iters={hooi_iters!r}, expected an integer >= 0")
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
        raise ValueError(f"svd_factors: weight of shape {tuple(weight.shape)}, expected (O, I)")
    _check_rank("svd_factors", rank)
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (root[:, None] * vh[:r]).to(weight.dtype), (u[:, :r] * root).to(weight.dtype)


def _rel_error(w: torch.Tensor, approx: torch.Tensor) -> float:
    norm = float(torch.linalg.vector_norm(w.double()))
    return float(torch.linalg.vector_norm(w.double() - approx.double())) / norm if norm > 0 else 0.0


# ---------------------------------------------------------------------------------------------------- layers
def _tucker2_conv(conv: nn.Conv2d, core: torch.Tensor, u_in: torch.Tensor, u_out: torch.Tensor) -> nn.Sequential:
    r_out, r_in = core.shape[:2]
    kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False, **kw)
    middle = nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,  # type: ignore
                       dilation=conv.dilation, padding_mode=conv.padding_mode, bias=False, **kw)
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None, **kw)
    with torch.no_grad():
        first.weight.copy_(u_in.t()[:, :, None, None])  # (R_in, I, 1, 1)
        middle.weight.copy_(core)  # (R_out, R_in, kh, kw)
        last.weight.copy_(u_out[:, :, None, None])  # (O, R_out, 1, 1)
        if conv.bias is not None:
            last.bias.copy_(conv.bias)  # type: ignore[union-attr]
    return nn.Sequential(first, middle, last).train(conv.training)


def _svd_linear(linear: nn.Linear, first_w: torch.Tensor, second_w: torch.Tensor) -> nn.Sequential:
    kw = dict(device=linear.weight.device, dtype=linear.weight.dtype)
    first = nn.Linear(linear.in_features, first_w.shape[0], bias=False, **kw)  # type: ignore[arg-type]
    second = nn.Linear(first_w.shape[0], linear.out_features, bias=linear.bias is not None, **kw)  # type: ignore
    with torch.no_grad():
        first.weight.copy_(first_w)  # (r, I)
        second.weight.copy_(second_w)  # (O, r)
        if linear.bias is not None:
            second.bias.copy_(linear.bias)  # type: ignore[union-attr]
    return nn.Sequential(first, second).train(linear.training)


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _check_rank(where: str, r: Any) -> int:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
        raise ValueError(f"{where}: rank={r!r}, expected an integer >= 1")
    return int(r)


def _check_conv_ranks(where: str, ranks: Any) -> ConvRanks:
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2 or any(
            isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in ranks):
        raise ValueError(f"{where}: ranks={ranks!r}, expected (R_out, R_in), two integers >= 1")
    return int(ranks[0]), int(ranks[1])


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name and isinstance(m, (nn.Conv2d, nn.Linear))}


def _check_plain(name: str, module: nn.Module) -> None:
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"{name}.weight: pruned or weight-shared (parametrized); decompose before pruning/sharing "
                         "or strip() the model first")
    if not torch.is_floating_point(module.weight):
        raise ValueError(f"{name}.weight: dtype {module.weight.dtype} is not floating point")


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


def decompose_(
    model: nn.Module,
    method: str = "vbmf",
    *,
    energy: float = 0.9,
    ranks: LayerRanks | None = None,
    layers: Iterable[str] | None = None,
    include_linear: bool = False,
    hooi_iters: int = 5,
    skip_larger: bool = True,
    progress: bool = False,
) -> nn.Module:
    """Replace conv layers by Tucker-2 triples and (optionally) linear layers by SVD pairs, in place.

    Which layers: the dotted names in ``layers`` plus those named in ``ranks``; when neither is given, every
    ``nn.Conv2d`` (and every ``nn.Linear`` with ``include_linear=True``). Only when ``layers`` is None does
    ``include_linear`` matter; a dict of ``ranks`` alone leaves the layers it does not name alone (as ``prune_``'s
    per-layer dicts do). Names may carry a ``.weight`` suffix.

    Ranks: explicit ``ranks[name]`` -- ``(R_out, R_in)`` for a conv, an int for a linear layer -- else by ``method``
    on each unfolding of the kernel (the weight itself for a linear layer): ``"vbmf"`` (analytical empirical VBMF,
    :func:`evbmf`, as Kim et al.) or ``"energy"`` (:func:`energy_rank` keeping ``energy`` of the squared singular
    values). Ranks are clamped to [1, dim].

    Args:
        model: the model; modified in place.
        method: ``"vbmf"`` or ``"energy"``, for the layers without explicit ranks.
        energy: fraction in (0, 1] for ``method="energy"``.
        ranks: explicit per-layer ranks, by dotted name.
        layers: dotted names of the layers to decompose (``nn.Conv2d`` or ``nn.Linear``).
        include_linear: with ``layers=None`` and no ``ranks``, also decompose every ``nn.Linear``.
        hooi_iters: HOOI refinement sweeps of each Tucker-2 decomposition (see :func:`tucker2`).
        skip_larger: leave a layer dense, reported as skipped, when its factorization would not have fewer
            parameters than the layer.
        progress: show a progress bar over the layers.

    Returns:
        ``model``. One row per selected layer is appended to :func:`lowrank_table`: ``layer``, ``kind``
        (``"tucker2"`` or ``"svd"``), ``shape`` (of the original weight), ``method`` (``"vbmf"``, ``"energy"`` or
        ``"explicit"``), ``ranks`` (``(R_out, R_in)`` or ``r``, after clamping: pass
        ``{row["layer"]: row["ranks"]}`` as ``ranks=`` to rebuild the same structure), ``params_before`` /
        ``params_after`` (weights and biases of the layer), ``rel_error`` (``||W - W_hat|| / ||W||``, Frobenius;
        0.0 when skipped) and ``skipped`` (None, or the reason).

    Raises:
        ValueError: an unknown layer name or one that is not Conv2d/Linear, a grouped conv, a pruned or shared
            layer, ranks < 1 or of the wrong form, an unknown method, energy outside (0, 1], negative hooi_iters;
            the message names the layer or field. Nothing is changed when it raises.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Flatten(), nn.Linear(32 * 4, 64))
        >>> rows = lowrank_table(decompose_(m, ranks={"0": (4, 4), "2": 8}, progress=False))
        >>> [(r["layer"], r["kind"], r["ranks"], r["params_before"], r["params_after"]) for r in rows]
        [('0', 'tucker2', (4, 4), 4640, 368), ('2', 'svd', 8, 8256, 1600)]
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}, expected one of {', '.join(METHODS)}")
    energy = _check_energy(energy)
    if isinstance(hooi_iters, bool) or not isinstance(hooi_iters, int) or hooi_iters < 0:
        raise ValueError(f"hooi_iters={hooi_iters!r}, expected an integer >= 0")
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
    if layers is not None:
        if isinstance(layers, str):
            raise ValueError(f"layers={layers!r}: expected a list of layer names, not one string")
        names = [known(k, "layers") for k in layers]
    elif ranks is not None:
        names = []
    else:
        names = [n for n, m in cands.items() if isinstance(m, nn.Conv2d) or include_linear]
    names = list(dict.fromkeys([*names, *explicit]))  # in order, without repeats
    for name in names:
        module = cands[name]
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"{name}: Conv2d with groups={module.groups}; Tucker-2 needs groups=1")
        _check_plain(name, module)

    rows = []
    for name in tqdm(names, desc="decompose", disable=not progress, leave=False):
        module = cands[name]
        w = module.weight.detach()
        chosen = "explicit" if name in explicit else method
        before = _n_params(module)
        bias = 0 if module.bias is None else module.bias.numel()
        new: nn.Module
        if isinstance(module, nn.Conv2d):
            n_out, n_in, kh, kw = w.shape
            if name in explicit:
                r_out, r_in = explicit[name]
            else:
                pick = evbmf if method == "vbmf" else (lambda a: energy_rank(a, energy))
                r_out, r_in = pick(_unfold(w, 0)), pick(_unfold(w, 1))
            r: Any = (min(max(r_out, 1), n_out), min(max(r_in, 1), n_in))
            kind, after = "tucker2", n_in * r[1] + r[0] * r[1] * kh * kw + r[0] * n_out + bias
        else:
            n_out, n_in = w.shape
            if name in explicit:
                r = explicit[name]
            else:
                r = evbmf(w) if method == "vbmf" else energy_rank(w, energy)
            r = min(max(r, 1), n_out, n_in)
            kind, after = "svd", r * (n_out + n_in) + bias
        row = {"layer": name, "kind": kind, "shape": list(w.shape), "method": chosen, "ranks": r,
               "params_before": before, "params_after": after, "rel_error": 0.0, "skipped": None}
        if skip_larger and after >= before:
            row.update(params_after=before, skipped=f"factorization has {after} params, the layer {before}")
            rows.append(row)
            continue
        if kind == "tucker2":
            core, u_in, u_out = tucker2(w, r, hooi_iters)
            approx = torch.einsum("rshw,or,is->oihw", core.double(), u_out.double(), u_in.double())
            new = _tucker2_conv(module, core, u_in, u_out)  # type: ignore[arg-type]
        else:
            first, second = svd_factors(w, r)
            approx = second.double() @ first.double()
            new = _svd_linear(module, first, second)  # type: ignore[arg-type]
        row["rel_error"] = _rel_error(w, approx)
        _set_module(model, name, new)
        rows.append(row)
    _record(model, rows)
    return model


# ---------------------------------------------------------------------------------------------------- tensor train
def _check_modes(where: str, in_modes: Sequence[int], out_modes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    mods = []
    for what, modes in (("in_modes", in_modes), ("out_modes", out_modes)):
        if not isinstance(modes, (tuple, list)) or not modes or any(
                isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in modes):
            raise ValueError(f"{where}: {what}={modes!r}, expected a non-empty list of integers >= 1")
        mods.append(tuple(int(m) for m in modes))
    if len(mods[0]) != len(mods[1]):
        raise ValueError(f"{where}: in_modes={in_modes!r} and out_modes={out_modes!r} differ in length")
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
            raise ValueError(f"TTLinear: ranks={ranks!r}, expected {d - 1} inner ranks for {d} modes")
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
            raise ValueError(f"from_linear: modes {in_modes} x {out_modes} give a {math.prod(in_modes)} x "
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
            raise ValueError(f"{name}: spec={spec!r}, expected (in_modes, out_modes, max_rank)")
        in_modes, out_modes = _check_modes(name, spec[0], spec[1])
        if math.prod(in_modes) != module.in_features or math.prod(out_modes) != module.out_features:
            raise ValueError(f"{name}: modes {in_modes} x {out_modes} give {math.prod(in_modes)} x "
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
            _set_module(model, name, tt)
        rows.append(row)
    _record(model, rows)
    return model
