"""Rank selection: analytical empirical VBMF (Nakajima et al. 2013) and kept energy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...errors import LowRankError
from ._common import _check_energy

__all__ = ["energy_rank", "evbmf"]


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


