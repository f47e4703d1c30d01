"""The post-trained model as a ``.dz`` file, and the codebook parametrization its choices are fine-tuned with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import codec
from ._types import BoundError, Candidate, PostTrainResult


class _Codebook(nn.Module):
    """Parametrization ``weight = codebooks.flatten()[flat] `` with exact outliers written over it (fine-tuning)."""

    def __init__(self, cand: Candidate, shape: Sequence[int]) -> None:
        super().__init__()
        assert cand.codebooks is not None and cand.labels is not None
        k = cand.codebooks.shape[1]
        flat = cand.row_codebook()[:, None] * k + cand.labels.astype(np.int64)  # (R, C)
        self.codebooks = nn.Parameter(torch.from_numpy(cand.codebooks.astype(np.float32)))
        self.register_buffer("flat", torch.from_numpy(flat.reshape(-1)))
        self.register_buffer("pos", torch.from_numpy(np.asarray(cand.outlier_pos, np.int64)))
        self.register_buffer("val", torch.from_numpy(np.asarray(cand.outlier_val, np.float32)))
        self.shape = tuple(shape)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        w = self.codebooks.reshape(-1)[self.flat]  # (numel,)
        if self.pos.numel():
            w = w.index_put((self.pos,), self.val)
        return w.reshape(self.shape)


# ---------------------------------------------------------------------------------------------------- file
def save_posttrained(model: nn.Module, result: PostTrainResult, path: Any, *, architecture: str | None = None,
                     config: dict | None = None) -> int:
    """Write the compressed model to a ``.dz`` file (atomically); returns the bytes written.

    Compressed tensors are stored as ``grouped`` (codebooks per row group + outliers) or float16 ``dense``; every
    other tensor as float32 ``dense``. All layers are ``plain`` for :func:`deepzip.load`, which decodes them to
    float32 weights (``deepzip.load(path, model=...)`` for a model deepzip does not name).
    """
    tensors: dict[str, codec.EncodedTensor] = {}
    state = model.state_dict()
    for key, value in state.items():
        if key in result.choices:
            tensors[key] = result.choices[key].encode(key, tuple(value.shape))
        else:
            arr = value.detach().cpu().contiguous().numpy()
            tensors[key] = codec.encode_dense(arr, name=key)
    missing = set(result.choices) - set(state)
    if missing:
        raise BoundError(f"tensors {sorted(missing)[:3]} of the result are not in the model's state_dict")
    return codec.write(path, tensors, config=config or {}, architecture=architecture,
                       extra={"layers": {k: "plain" for k in tensors}})
