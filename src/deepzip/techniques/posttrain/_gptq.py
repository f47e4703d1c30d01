"""GPTQ: error-compensated rounding of a Linear layer's weights onto a codebook, through the Gram matrix of the
layer's calibration inputs (Frantar et al. 2022, arXiv 2210.17323)."""

from __future__ import annotations

import numpy as np


def _nearest(cb: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest value of the sorted codebook ``cb`` (k,) for every value of ``x``."""
    if cb.size == 1:
        return np.zeros(x.shape, np.int64)
    return np.searchsorted((cb[1:] + cb[:-1]) / 2, x).astype(np.int64)


def gptq_factor(gram: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`gptq_round` needs from a Gram matrix, computed once per layer: (column order, upper Cholesky
    factor of the damped inverse in that order, dead-input mask)."""
    c = gram.shape[0]
    h = np.array(gram, dtype=np.float64, copy=True)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(c)] += damp * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h), kind="stable")
    hp = h[np.ix_(order, order)]
    return order, np.linalg.cholesky(np.linalg.inv(hp)).T, dead  # upper: hinv.T @ hinv = inverse of hp


def gptq_round(w: np.ndarray, gram: np.ndarray, codebook: np.ndarray, keep: np.ndarray | None = None,
               damp: float = 0.01, block: int = 128,
               factor: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Error-compensated rounding of a Linear weight onto one codebook (GPTQ with a non-uniform grid).

    Columns are rounded in order of decreasing input energy (``diag(H)``, "act-order"); after each column the
    rounding error, scaled by the inverse-Hessian Cholesky factor, is subtracted from the columns not yet rounded,
    which minimises ``sum_i dW_i H dW_i^T`` greedily (Frantar et al. 2022).

    Args:
        w: (R, C) weights of a Linear layer (out, in).
        gram: (C, C) input Gram matrix (:func:`input_grams`).
        codebook: (k,) sorted values every weight is rounded to.
        keep: (R, C) bool, weights stored exactly (outliers): rounded to themselves.
        damp: added to the diagonal, as a fraction of its mean (keeps the inverse stable).
        block: columns per lazy update.
        factor: :func:`gptq_factor` of ``gram`` (to share it between codebooks of one layer).

    Returns:
        (R, C) int64 labels into ``codebook``.
    """
    r, c = w.shape
    order, hinv, dead = factor if factor is not None else gptq_factor(gram, damp)
    inv_order = np.argsort(order)
    wq = np.array(w, dtype=np.float64)[:, order]  # (R, C) being rounded
    wq[:, dead[order]] = 0.0
    kp = None if keep is None else keep[:, order]
    labels = np.zeros((r, c), np.int64)
    cb = np.asarray(codebook, np.float64)
    for i1 in range(0, c, block):
        i2 = min(i1 + block, c)
        err = np.zeros((r, i2 - i1))
        for j in range(i1, i2):
            col = wq[:, j]
            lab = _nearest(cb, col)
            q = cb[lab]
            if kp is not None:
                q = np.where(kp[:, j], col, q)
            labels[:, j] = lab
            e = (col - q) / hinv[j, j]
            wq[:, j:i2] -= np.outer(e, hinv[j, j:i2])
            err[:, j - i1] = e
        wq[:, i2:] -= err @ hinv[i1:i2, i2:]
    return labels[:, inv_order]

