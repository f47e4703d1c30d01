"""Tucker-2 of conv kernels (Kim et al. 2016, arXiv 1511.06530) and truncated SVD of linear weights, with the
layers that run them (:class:`Tucker2Conv`, :class:`SVDLinear`)."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import LowRankError
from ._common import ConvRanks, _check_conv_ranks, _check_rank

__all__ = ["SVDLinear", "Tucker2Conv", "svd_factors", "tucker2"]


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


