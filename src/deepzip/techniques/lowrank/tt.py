"""Tensor-train layers: :class:`TTLinear` (Novikov et al. 2015, "Tensorizing neural networks") and :class:`TTConv2d`
(Garipov et al. 2016, "Ultimate tensorization: compressing convolutional and FC layers alike", arXiv 1611.03214),
with the TT-SVD that initialises them from trained weights (Oseledets 2011).

Both hold a TT-matrix: a matrix ``T`` (M x N) with ``M = m_1..m_d`` and ``N = n_1..n_d``, row and column indices
read as row-major multi-indices, is ``T[i, j] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]`` with cores ``G_k``
of shape ``(r_{k-1}, m_k, n_k, r_k)`` and ``r_0 = r_d = 1``. The pure functions :func:`tt_svd` (matrix -> cores),
``_tt_full`` (cores -> matrix) and ``_tt_apply`` (vectors times the matrix, core by core) do the maths; the layers
are the module plumbing around them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...errors import LowRankError
from ..prune import resolve_layer
from ..walk import set_module
from ._common import TTSpec, _check_modes, _check_plain, _check_rank, _n_params, _record, _rel_error

__all__ = ["FORWARD_MODES", "TTConv2d", "TTLinear", "tt_linear_", "tt_modes", "tt_svd"]

#: How a TT layer computes its output (its ``forward_mode``, not saved): ``"dense"`` rebuilds the dense weight or
#: kernel from the cores and calls one ``F.linear`` / ``F.conv2d`` (for a conv, the authors' ``tt_conv_full``);
#: ``"cores"`` applies the cores one by one, never forming the weight (TTLinear as Novikov et al.; for a conv, each
#: input channel convolved with the window core first, as the authors' ``tt_conv``). Same function, different speed.
FORWARD_MODES: tuple[str, ...] = ("dense", "cores")


def _check_forward_mode(layer: nn.Module) -> str:
    mode = getattr(layer, "forward_mode", None)
    if mode not in FORWARD_MODES:
        raise LowRankError(f"{type(layer).__name__}: forward_mode={mode!r}, expected one of {', '.join(FORWARD_MODES)}")
    return mode  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------- TT maths
def tt_modes(n: int, d: int) -> tuple[int, ...]:
    """Split ``n`` into ``d`` factors as even as its prime factors allow (largest first), for TT modes.

    Example:
        >>> tt_modes(784, 4), tt_modes(300, 4), tt_modes(10, 3)
        ((7, 7, 4, 4), (5, 5, 4, 3), (5, 2, 1))
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise LowRankError(f"tt_modes: n={n!r}, d={d!r}, expected integers >= 1")
    primes, k, m = [], 2, n
    while k * k <= m:
        while m % k == 0:
            primes.append(k)
            m //= k
        k += 1
    if m > 1:
        primes.append(m)
    modes = [1] * d
    for p in sorted(primes, reverse=True):  # greedy: the biggest prime onto the smallest mode
        modes[modes.index(min(modes))] *= p
    return tuple(sorted(modes, reverse=True))


def _full_ranks(in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """The largest useful inner TT ranks: ``r_k <= min(prod_{j<=k} m_j n_j, prod_{j>k} m_j n_j)``."""
    sizes = [m * n for m, n in zip(in_modes, out_modes)]
    return [min(math.prod(sizes[:k + 1]), math.prod(sizes[k + 1:])) for k in range(len(sizes) - 1)]


def tt_svd(
    matrix: torch.Tensor,
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    ranks: int | Sequence[int],
    *,
    rank_fn: Callable[[torch.Tensor], int] | None = None,
) -> list[torch.Tensor]:
    """TT-SVD (Oseledets 2011) of a matrix into TT-matrix cores, in float64, exact when no rank truncates.

    The matrix (M x N), reshaped to (m_1..m_d, n_1..n_d) and permuted to (m_1, n_1, ..., m_d, n_d), is split by
    successive truncated SVDs; each core is the leading left singular vectors, the remainder carries the singular
    values forward.

    Args:
        matrix: (prod(in_modes), prod(out_modes)).
        in_modes, out_modes: d modes each.
        ranks: the d - 1 inner ranks, or one int: the largest inner rank (each clamped to the full TT rank).
            An explicit rank above what the SVD at that step can give is padded with zero singular vectors.
        rank_fn: picks each inner rank from the step's unfolding (e.g. EVBMF or kept energy) instead; ``ranks``
            (an int) then caps it.

    Returns:
        d cores ``(r_{k-1}, m_k, n_k, r_k)`` (float64); :func:`_tt_full` of them is the matrix at full ranks.

    Example:
        >>> a = torch.randn(12, 6, dtype=torch.float64)
        >>> cores = tt_svd(a, (3, 4), (2, 3), 6)
        >>> [tuple(c.shape) for c in cores], bool(torch.allclose(_tt_full(cores), a))
        ([(1, 3, 2, 6), (6, 4, 3, 1)], True)
    """
    d = len(in_modes)
    full = _full_ranks(in_modes, out_modes)
    if isinstance(ranks, int):
        want: list[int | None] = [min(ranks, f) for f in full]
    else:
        want = list(ranks)
        if len(want) != d - 1:
            raise LowRankError(f"tt_svd: {len(want)} ranks for {d} modes, expected {d - 1}")
    t = matrix.detach().double().reshape(*in_modes, *out_modes)
    c = t.permute([i for k in range(d) for i in (k, d + k)])  # (m_1, n_1, ..., m_d, n_d)
    r_prev, cores = 1, []
    for k, (m, n) in enumerate(zip(in_modes[:-1], out_modes[:-1])):
        c = c.reshape(r_prev * m * n, -1)  # (r_{k-1} m_k n_k, rest)
        u, s, vh = torch.linalg.svd(c, full_matrices=False)
        r = want[k]
        if rank_fn is not None:
            r = min(max(rank_fn(c), 1), r if r is not None else s.numel(), s.numel())
        assert r is not None
        have = min(r, s.numel())
        core = c.new_zeros(r_prev * m * n, r)
        core[:, :have] = u[:, :have]
        rest = c.new_zeros(r, c.shape[1])
        rest[:have] = s[:have, None] * vh[:have]  # (r_k, rest): the remainder carries the singular values
        cores.append(core.reshape(r_prev, m, n, r))
        c, r_prev = rest, r
    cores.append(c.reshape(r_prev, in_modes[-1], out_modes[-1], 1))
    return cores


def _tt_full(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The matrix (prod m_k, prod n_k) of TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)``, r_0 = r_d = 1."""
    full = cores[0].new_ones(1, 1, 1)  # (M so far, N so far, open rank)
    for core in cores:
        _, m, n, r1 = core.shape
        M, N = full.shape[:2]
        full = torch.einsum("MNr,rmns->MmNns", full, core).reshape(M * m, N * n, r1)
    return full[..., 0]


def _tt_apply(t: torch.Tensor, cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rows times a TT-matrix, core by core, never building the matrix.

    Args:
        t: (B, M, r_0): B rows of M = prod m_k inputs, each with an open left rank r_0 (1 for a plain matrix).
        cores: ``(r_{k-1}, m_k, n_k, r_k)``, the last r_d = 1.

    Returns:
        (B, N), N = prod n_k: ``sum_{i, a} t[b, i, a] T_a[i, j]`` with ``T_a`` the matrix of the cores whose first
        rank index is fixed to a.
    """
    b = t.shape[0]
    t = t.reshape(b, 1, t.shape[1], t.shape[2])  # (B, N done, M to go, r)
    for core in cores:
        r0, m, n, r1 = core.shape
        N, M = t.shape[1], t.shape[2]
        t = t.reshape(b, N, m, M // m, r0)
        t = torch.einsum("bNmMr,rmns->bNnMs", t, core)  # (B, N, n_k, M / m_k, r_k)
        t = t.reshape(b, N * n, M // m, r1)
    return t.reshape(b, -1)


def _init_cores(cores: Sequence[torch.Tensor], fan_in: int, inner: Sequence[int]) -> None:
    """Random cores whose product has the variance of ``nn.Linear``'s / ``nn.Conv2d``'s default init,
    1 / (3 fan_in): each entry of the matrix is a sum over ``prod(inner)`` paths of products of ``len(cores)`` core
    entries, so core entries get variance ``(1 / (3 fan_in prod inner)) ** (1 / len(cores))``."""
    std = (1.0 / (3.0 * fan_in * math.prod(inner))) ** (0.5 / len(cores))
    with torch.no_grad():
        for core in cores:
            core.normal_(0.0, std)


class TTCores(nn.ParameterList):
    """A TT layer's cores (state_dict keys ``cores.0``, ``cores.1``, ...) that pruning and weight sharing see as
    weights: ``compressible_tensors`` names them, so ``prune_`` / ``share_weights_`` / ``deepzip.save`` act on
    ``"fc1.cores.0"`` as on ``"fc1"`` (a mask or codebook parametrization per core)."""

    @property
    def compressible_tensors(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(len(self)))


def _check_ranks(where: str, ranks: object, n: int) -> tuple[int, ...]:
    if not isinstance(ranks, (tuple, list)) or len(ranks) != n:
        raise LowRankError(f"{where}: ranks={ranks!r}, expected {n} inner ranks (integers >= 1)")
    return tuple(_check_rank(where, r) for r in ranks)


# ---------------------------------------------------------------------------------------------------- layers
_T = TypeVar("_T", bound=nn.Module)


def _filled(layer: _T, cores: Sequence[torch.Tensor], src: nn.Module) -> _T:
    """``layer`` (a TTLinear or TTConv2d) given the TT ``cores`` and ``src``'s bias, in ``src``'s train/eval mode."""
    with torch.no_grad():
        for p, core in zip(layer.cores, cores):
            p.copy_(core)
        if src.bias is not None:
            layer.bias.copy_(src.bias)
    return layer.train(src.training)


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
        self.ranks: tuple[int, ...] = (1, *_check_ranks("TTLinear", ranks, d - 1), 1)
        self.in_features, self.out_features = math.prod(self.in_modes), math.prod(self.out_modes)
        self.cores = TTCores(
            nn.Parameter(torch.empty(self.ranks[k], m, n, self.ranks[k + 1], device=device, dtype=dtype))
            for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes)))
        self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype)) if bias else None
        #: ``"cores"`` (default: a linear weight is as large as the work at batch 1, so rebuilding it per call costs
        #: more than the chain) or ``"dense"`` (the weight rebuilt each call: faster at large batches and in training
        #: on a CPU); measured in ``benchmarks/results/lowrank_ttconv.md``
        self.forward_mode = "cores"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random cores whose product has the variance of ``nn.Linear``'s default init (1 / (3 in_features))."""
        _init_cores(list(self.cores), self.in_features, self.ranks[1:-1])
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _check_forward_mode(self) == "dense":
            return F.linear(x, self.full_weight(), self.bias)
        lead = x.shape[:-1]
        y = _tt_apply(x.reshape(-1, self.in_features, 1), list(self.cores))  # (B, out)
        y = y.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def full_weight(self) -> torch.Tensor:
        """The dense weight (out_features, in_features) the cores represent (for tests and export)."""
        return _tt_full(list(self.cores)).t()

    @classmethod
    def from_linear(cls, linear: nn.Linear, in_modes: Sequence[int], out_modes: Sequence[int],
                    max_rank: int | Sequence[int]) -> TTLinear:
        """A TTLinear approximating ``linear`` by TT-SVD (:func:`tt_svd`) with TT ranks at most ``max_rank`` (or
        exactly the d - 1 inner ranks given as a list); with ranks at least those of the unfoldings it is exact.

        Raises:
            LowRankError: modes whose products are not the layer's in/out features, or a rank < 1.

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
        if isinstance(max_rank, (list, tuple)):
            max_rank = list(_check_ranks("from_linear", max_rank, len(in_modes) - 1))
        else:
            max_rank = _check_rank("from_linear max_rank", max_rank)
        cores = tt_svd(linear.weight.t(), in_modes, out_modes, max_rank)
        w = linear.weight
        inner = [c.shape[-1] for c in cores[:-1]]
        layer = cls(in_modes, out_modes, inner, bias=linear.bias is not None, device=w.device, dtype=w.dtype)
        return _filled(layer, cores, linear)

    def extra_repr(self) -> str:
        return (f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, "
                f"bias={self.bias is not None}")


class TTConv2d(nn.Module):
    """A convolution whose kernel is a TT-matrix with a window core (Garipov et al. 2016, "Ultimate tensorization").

    The conv is the matrix product of the im2col patches (l*l*C) with the kernel ``K`` (kh*kw*C x S). ``K`` is a
    TT-matrix with the input channels factored as ``C = c_1..c_d``, the output channels as ``S = s_1..s_d``, and one
    extra core for the kh x kw window::

        K[(p, c_1..c_d), (s_1..s_d)] = W[p, :] @ G_1[:, c_1, s_1, :] @ ... @ G_d[:, c_d, s_d, :]

    with the window core ``W`` (kh*kw, r_0), cores ``G_k`` (r_{k-1}, c_k, s_k, r_k) and r_d = 1. The paper writes
    the cores as c_k x s_k x r_{k-1} x r_k; they are stored here in :class:`TTLinear`'s order (same entries,
    permuted), and the window core as ``cores[0]`` of shape (1, kh*kw, 1, r_0) so that ``cores`` is one TT-matrix
    of ``K``: ``cores[0][0, :, 0, :]`` is ``W``. ``ranks`` is ``(r_0, ..., r_{d-1}, 1)``, as the authors' code's
    ``ranks`` argument (TensorNet-TF ``tensornet/layers/tt_conv_full.py``: window ``filters`` [kh, kw, 1, r_0],
    ``core_i`` holding s_i r_{i+1} x r_i c_i, the kernel rebuilt by successive matrix products and transposed to
    [kh, kw, C, S]; their CIFAR-10 nets ``nets/TT-conv-TT-fc.py``: first conv dense, modes [4, 4, 4] / [4, 8, 4],
    ranks [16, 16, 16, 1], batch norm after each layer, the last FC dense). This is not the "naive" TT of the
    4-D kernel (tensorly-torch's ``FactorizedConv`` 'tt'), which the paper found worse.

    Parameters: ``kh kw r_0 + sum_k r_{k-1} c_k s_k r_k`` (+ S for the bias).

    Forward (``forward_mode``, not saved): ``"dense"`` (default) rebuilds the (S, C, kh, kw) kernel from the cores
    and calls one ``F.conv2d``; ``"cores"`` convolves each input channel with the window core (r_0 outputs per
    channel) and then multiplies by the channel cores one at a time, never forming the kernel (fewer multiply-adds
    only at small ranks). Both compute the same function. The default is the measured faster one: the kernel has
    only kh*kw*C*S entries, so rebuilding it is cheap, and one oneDNN convolution beats the chain of small einsums
    and transposes at batch 1 and 64 alike (``benchmarks/results/lowrank_ttconv.md``, latency: the TT-conv-only
    MNIST net about 4x faster in this mode than core by core).

    Args:
        in_channels, out_channels: C and S.
        kernel_size, stride, padding, dilation, padding_mode: as :class:`nn.Conv2d` (``groups`` must be 1).
        in_modes: (c_1..c_d), product C. out_modes: (s_1..s_d), product S.
        ranks: the d ranks ``(r_0, ..., r_{d-1})`` (r_0: between the window core and the first channel core).
        bias: whether to add a learnable bias.

    Raises:
        LowRankError: groups != 1, modes that do not multiply to the channel counts or differ in length, ranks
            that are not d integers >= 1, a bad kernel/stride/padding (``where`` names the layer).

    Example:
        >>> conv = TTConv2d(16, 32, 3, in_modes=(4, 4), out_modes=(4, 8), ranks=(6, 5), padding=1)
        >>> tuple(conv(torch.randn(2, 16, 8, 8)).shape), conv.ranks, conv.n_params
        ((2, 32, 8, 8), (6, 5, 1), 726)
        >>> conv.forward_mode = "cores"; tuple(conv(torch.randn(1, 16, 8, 8)).shape)
        (1, 32, 8, 8)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int], stride: int | tuple = 1,
                 padding: int | tuple | str = 0, dilation: int | tuple = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", *, where: str = "TTConv2d",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if groups != 1:
            raise LowRankError(f"{where}: groups={groups!r}; a TT-conv needs groups=1")
        self.in_modes, self.out_modes = _check_modes(where, in_modes, out_modes)
        if math.prod(self.in_modes) != in_channels or math.prod(self.out_modes) != out_channels:
            raise LowRankError(f"{where}: modes {self.in_modes} x {self.out_modes} give {math.prod(self.in_modes)} "
                               f"x {math.prod(self.out_modes)} channels, the conv has {in_channels} in, "
                               f"{out_channels} out")
        d = len(self.in_modes)
        self.ranks: tuple[int, ...] = (*_check_ranks(where, ranks, d), 1)
        try:  # nn.Conv2d checks and normalises the geometry (a meta conv: no memory; its init may warn on size 0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                geom = nn.Conv2d(1, 1, kernel_size, stride, padding, dilation, padding_mode=padding_mode,
                                 device="meta")
        except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
            raise LowRankError(f"{where}: bad geometry ({exc})") from None
        if min(geom.kernel_size) < 1 or min(geom.stride) < 1 or min(geom.dilation) < 1:
            raise LowRankError(f"{where}: kernel_size={geom.kernel_size}, stride={geom.stride}, "
                               f"dilation={geom.dilation}: expected integers >= 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size: tuple[int, int] = geom.kernel_size  # type: ignore[assignment]
        self.stride, self.padding, self.dilation = geom.stride, geom.padding, geom.dilation
        self.padding_mode, self.groups = padding_mode, 1
        self._reversed_padding_repeated_twice = geom._reversed_padding_repeated_twice
        self.forward_mode = "dense"
        window = self.kernel_size[0] * self.kernel_size[1]
        shapes = [(1, window, 1, self.ranks[0])] + [(self.ranks[k], c, s, self.ranks[k + 1])
                                                     for k, (c, s) in enumerate(zip(self.in_modes, self.out_modes))]
        self.cores = TTCores(nn.Parameter(torch.empty(*s, device=device, dtype=dtype)) for s in shapes)
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    @property
    def n_params(self) -> int:
        return _n_params(self)

    @property
    def window_core(self) -> torch.Tensor:
        """The window core (kh*kw, r_0), a view of ``cores[0]``."""
        return self.cores[0][0, :, 0, :]

    def reset_parameters(self) -> None:
        """Random cores whose kernel has the variance of ``nn.Conv2d``'s default init, 1 / (3 C kh kw)."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        _init_cores(list(self.cores), fan_in, self.ranks[:-1])
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)

    def kernel(self) -> torch.Tensor:
        """The dense kernel (S, C, kh, kw) the cores represent, as ``nn.Conv2d.weight``."""
        kh, kw = self.kernel_size
        k = _tt_full(list(self.cores))  # (kh*kw*C, S), rows (p, c_1..c_d)
        return k.reshape(kh, kw, self.in_channels, self.out_channels).permute(3, 2, 0, 1)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":  # as nn.Conv2d._conv_forward
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _check_forward_mode(self) == "dense":
            return self._conv(x, self.kernel(), self.bias)
        b, c, h, w = x.shape
        kh, kw = self.kernel_size
        r0 = self.ranks[0]
        window = self.window_core.t().reshape(r0, 1, kh, kw)  # (r_0, 1, kh, kw)
        t = self._conv(x.reshape(b * c, 1, h, w), window, None)  # (B*C, r_0, H', W')
        ho, wo = t.shape[-2:]
        t = t.reshape(b, c, r0, ho, wo).permute(0, 3, 4, 1, 2).reshape(b * ho * wo, c, r0)  # (B H' W', C, r_0)
        y = _tt_apply(t, list(self.cores)[1:])  # (B H' W', S)
        y = y.reshape(b, ho, wo, self.out_channels).permute(0, 3, 1, 2)
        return y + self.bias[:, None, None] if self.bias is not None else y

    def macs(self, out_shape: Sequence[int]) -> int:
        """Multiply-adds of one forward pass giving ``out_shape`` (B, S, H', W') in the current ``forward_mode``
        (``"dense"``: a dense conv's, the kernel rebuild aside; ``"cores"``: the window conv and the chain)."""
        b, s, ho, wo = out_shape
        kh, kw = self.kernel_size
        if self.forward_mode == "dense":
            return b * s * ho * wo * self.in_channels * kh * kw
        n = b * self.in_channels * self.ranks[0] * ho * wo * kh * kw  # the window conv
        rows, N, M = b * ho * wo, 1, self.in_channels
        for core in list(self.cores)[1:]:  # as _tt_apply: rows * N * M * r_{k-1} * n_k * r_k per core
            r0, mk, nk, r1 = core.shape
            n += rows * N * M * r0 * nk * r1
            N, M = N * nk, M // mk
        return int(n)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, in_modes: Sequence[int], out_modes: Sequence[int],
                  ranks: int | Sequence[int], *, rank_fn: Callable[[torch.Tensor], int] | None = None,
                  where: str = "from_conv") -> TTConv2d:
        """A TTConv2d approximating a trained ``conv`` by TT-SVD of its reshaped kernel (kh*kw*C x S).

        Args:
            conv: the conv (groups 1).
            in_modes, out_modes: channel modes.
            ranks: the d ranks (r_0..r_{d-1}) exactly, or one int: the largest rank (each clamped to the full TT
                rank; then exact at a large enough int).
            rank_fn: picks each rank from the step's unfolding (:func:`deepzip.techniques.lowrank.energy_rank` or
                EVBMF), capped by an int ``ranks``.

        Example:
            >>> conv = nn.Conv2d(8, 6, 3, padding=1)
            >>> tt = TTConv2d.from_conv(conv, (2, 4), (2, 3), ranks=1000)  # full ranks: exact
            >>> bool(torch.allclose(tt.kernel(), conv.weight, atol=1e-5)), tt.ranks
            (True, (9, 12, 1))
        """
        in_modes, out_modes = _check_modes(where, in_modes, out_modes)
        d = len(in_modes)
        if isinstance(ranks, (list, tuple)):
            ranks = list(_check_ranks(where, ranks, d))
        else:
            ranks = _check_rank(where, ranks)
        w = conv.weight
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, in_modes, out_modes,  # type: ignore
                  [1] * d, conv.stride, conv.padding, conv.dilation, conv.groups,  # type: ignore[arg-type]
                  conv.bias is not None, conv.padding_mode, where=where, device=w.device, dtype=w.dtype)
        kh, kw = new.kernel_size
        k = w.detach().permute(2, 3, 1, 0).reshape(kh * kw * conv.in_channels, conv.out_channels)  # rows (p, c)
        cores = tt_svd(k, (kh * kw, *in_modes), (1, *out_modes), ranks, rank_fn=rank_fn)
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, in_modes, out_modes,  # type: ignore
                  [c.shape[-1] for c in cores[:-1]], conv.stride, conv.padding, conv.dilation,  # type: ignore
                  1, conv.bias is not None, conv.padding_mode, where=where, device=w.device, dtype=w.dtype)
        return _filled(new, cores, conv)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, "
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
        >>> from deepzip.techniques.lowrank import lowrank_table
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

