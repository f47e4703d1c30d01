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


from ...errors import LowRankError
from ._common import convs_and_linears, convs_only, lowrank_table
from .decompose import (
    CONV_FACTORIZATIONS,
    LINEAR_FACTORIZATIONS,
    METHODS,
    choose_ranks,
    count_macs,
    decompose_,
    factorize_,
)
from .ranks import energy_rank, evbmf
from .report import FACTORIZATIONS, decompose_with_report, example_input, parse_modes, parse_rank
from .spec import SPEC_KINDS, lowrank_spec, rebuild_
from .tt import FORWARD_MODES, TTConv2d, TTCores, TTLinear, tt_linear_, tt_modes, tt_svd
from .tucker import SVDLinear, Tucker2Conv, svd_factors, tucker2

__all__ = [
    "CONV_FACTORIZATIONS",
    "FACTORIZATIONS",
    "FORWARD_MODES",
    "LINEAR_FACTORIZATIONS",
    "METHODS",
    "SPEC_KINDS",
    "LowRankError",
    "SVDLinear",
    "TTConv2d",
    "TTCores",
    "TTLinear",
    "Tucker2Conv",
    "choose_ranks",
    "convs_and_linears",
    "convs_only",
    "count_macs",
    "decompose_",
    "decompose_with_report",
    "energy_rank",
    "evbmf",
    "example_input",
    "factorize_",
    "lowrank_spec",
    "lowrank_table",
    "parse_modes",
    "parse_rank",
    "rebuild_",
    "svd_factors",
    "tt_linear_",
    "tt_modes",
    "tt_svd",
    "tucker2",
]
