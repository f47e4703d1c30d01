"""Post-training compression of a pretrained model under a quality bound, without labels or training data.

The user states how much output agreement may be lost (``max_drop``: ``1 - mean cosine`` between the compressed
and the original model's outputs on calibration inputs); this package picks, per weight tensor, how it is stored:

1. **Sensitivity weights.** The diagonal of the Gauss-Newton matrix of the output-agreement loss at the original
   weights, ``F = E_x diag(J^T J)`` with ``J`` the Jacobian of the (L2-normalised) output with respect to the
   weights, estimated with Rademacher probes: ``g = grad <v, u(x)>``, ``F += g**2`` (``E[g**2] = diag(J^T J)``).
   For unit outputs ``1 - cos(u, u0) = |u - u0|**2 / 2``, so ``drop ~= sum F * dw**2 / (2 N)``: the squared
   gradients of the output-agreement loss play the part the task-loss Fisher plays in SqueezeLLM
   (Kim et al. 2023, arXiv 2306.07629). Embedding tables are weighted by how often the calibration inputs use
   each row (:func:`row_counts`, :func:`usage_fisher`); rows never used get the Good-Turing estimate of the
   unseen mass (else they would look free to destroy, and evaluation text uses other tokens). Their damage is
   invisible to the calibration: it is predicted (the layer's sensitivity, measured on the rows the
   calibration uses, times their weighted error) and added to every measured drop.
2. **Candidates per tensor.** Uniform grids (zero-centred, step ``std / r``; the used levels are the codebook and
   Huffman codes the indices: entropy-coded scalar quantisation, every weight within half a step, so large weights
   are not sacrificed to the bulk as a k-means codebook does), and Fisher-weighted k-means
   (:func:`deepzip.techniques._kmeans.weighted_kmeans_rows`) at 2..8 bits with one codebook per tensor or per group
   of rows,
   with or without an exact side list of the largest-magnitude weights (outliers); plus float16 as a near-lossless
   top option. Embedding tables also get *tiered* grids: the rows the calibration uses on a fine grid, the others
   on a coarse one, each tier with its own codebook and Huffman stream (the ``tiered`` codec kind). Linear layers
   are rounded onto each per-tensor codebook or grid with GPTQ (:func:`gptq_round`,
   error compensation through the Gram matrix ``H`` of the layer's calibration inputs, :func:`input_grams`), and
   their errors use the Kronecker-factored proxy ``sum_i s_i dW_i H dW_i^T`` (see :func:`_proxy_error`), which
   sees the cross terms GPTQ exploits. Each candidate's bytes (exact Huffman stream + float16 codebooks +
   outliers) and error are computed; only the lower convex hull in (bytes, error) is kept, so per-row codebooks
   or outliers survive exactly where they pay for themselves. The other parameters (biases, norms, tensors under
   ``min_numel``) are rounded to float16 values before anything is measured (``fp16_others``): the file stores
   them in 2 bytes (MiniLM: 127 KB of float32 biases and norms, 1.5% of its file at 11x, for no measurable drop).
   Measured on MiniLM (benchmarks/post_training.py): the grid beats k-means by far at equal bytes (embedding
   matrix at ~3 bits/weight: drop 0.002 vs 0.010), and Fisher-*weighted* k-means loses to plain k-means even with
   a reliable Fisher estimate, so the grids are unweighted; the Fisher still sets the per-row sensitivity ``s``.
3. **Per-layer sensitivities, measured once.** For every tensor one candidate is applied alone and the real drop
   on the calibration inputs is measured: ``alpha = drop / E`` turns the proxy into that layer's predicted drop.
4. **Budget split.** Steps down each tensor's hull, all tensors together, are taken greedily by predicted drop
   per byte saved until the predicted total reaches a budget; the budget is then searched (a few full
   measurements) for the smallest model whose *measured* drop is within ``max_drop``. Given held-out calibration
   inputs (:func:`split_heldout`; ``deepzip ptq`` holds out a quarter), steps 1-3 fit on the rest and the drop the
   bound is checked on is measured on the held-out inputs (:class:`HeldOut`, with its standard error): on the
   inputs fitted on, the drop understates the drop on new inputs of the same kind (MiniLM, 512 calibration
   sentences, bound 0.01, as reported in issue 23: 0.006 on them, 0.019 on 300 other sentences of the same source;
   the comparison is benchmarks/post_training_heldout.py).
5. **Distillation from the original** (:func:`distill_`): centroids, float16 tensors, biases and norms are
   fine-tuned to match the original model's outputs on unlabeled inputs (``1 - cos`` loss; quantised embedding
   tables stay as stored), then stored again;
   optionally (``latent_lr``) the indices move too (straight-through rounding of a float copy).

Without data (:func:`compress_weights_only`), each tensor gets the cheapest candidate whose weight SQNR reaches a
floor: weaker, since it cannot tell which layers the outputs depend on.

The steps live in private modules, re-exported here: ``_types`` (:class:`PostTrainConfig`, :class:`Candidate`,
:class:`PostTrainResult`, :class:`BoundError`), ``_calibration`` (batches, the held-out split, outputs,
:func:`agreement`, :func:`measure_drop`, :func:`text_batches`), ``_inputs`` (calibration files and functions read
within stated limits, :func:`load_inputs`; which of a model's outputs is compared, :func:`output_tensor`),
``_sensitivity`` (1, and the row usage of embedding tables), ``_gptq``
and ``_candidates`` (2), ``_allocate`` (3 and 4, :func:`compress_to_bound_`), ``_distill`` (5, :func:`distill_`). The
file is written by the model <-> file bridge, :func:`deepzip.io.serialize.save_posttrained` (a technique knows no
bytes), with each codebook choice as the :class:`deepzip.techniques.share.SharedWeight` it is fine-tuned and reloaded
as.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    >>> batches = [torch.randn(64, 32) for _ in range(2)]
    >>> res = compress_to_bound_(model, batches, PostTrainConfig(max_drop=0.01, min_numel=64))
    >>> res.drop <= 0.01, sorted(res.choices)
    (True, ['0.weight', '2.weight'])
"""

from ._allocate import compress_to_bound_, compress_weights_only
from ._calibration import (
    agreement,
    estimate_drop,
    heldout_mask,
    measure_drop,
    split_heldout,
    target_tensors,
    text_batches,
)
from ._candidates import make_candidates
from ._distill import distill_
from ._gptq import gptq_factor, gptq_round
from ._inputs import (
    MAX_INPUT_BYTES,
    MAX_INPUTS,
    call_model,
    describe_output,
    load_inputs,
    model_forward,
    output_tensor,
    read_lines,
    read_npy,
)
from ._sensitivity import fisher_diagonal, input_grams, row_counts, unseen_scale, usage_fisher
from ._types import BoundError, Candidate, Forward, HeldOut, PostTrainConfig, PostTrainResult

__all__ = [
    "MAX_INPUTS",
    "MAX_INPUT_BYTES",
    "BoundError",
    "Candidate",
    "Forward",
    "HeldOut",
    "PostTrainConfig",
    "PostTrainResult",
    "agreement",
    "call_model",
    "compress_to_bound_",
    "compress_weights_only",
    "describe_output",
    "distill_",
    "estimate_drop",
    "fisher_diagonal",
    "gptq_factor",
    "gptq_round",
    "heldout_mask",
    "input_grams",
    "load_inputs",
    "make_candidates",
    "measure_drop",
    "model_forward",
    "output_tensor",
    "read_lines",
    "read_npy",
    "row_counts",
    "split_heldout",
    "target_tensors",
    "text_batches",
    "unseen_scale",
    "usage_fisher",
]
