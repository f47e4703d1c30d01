"""Storage candidates per tensor: uniform grids, Fisher-weighted k-means codebooks (per tensor or per group of rows,
with or without exact outliers), tiered grids for embedding tables, float16; their exact bytes and predicted
error; the lower convex hull in (bytes, error) that allocation walks down."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from ... import codec
from .. import _kmeans
from ._gptq import _nearest, gptq_factor, gptq_round
from ._sensitivity import usage_fisher
from ._types import Candidate, PostTrainConfig


# ---------------------------------------------------------------------------------------------------- candidates
def _entropy_bytes(labels: np.ndarray, k: int) -> float:
    """Exact size of the Huffman index stream the codec writes (code lengths, sync table and bits): at low rates
    a Huffman code costs more than the entropy (at least one bit per symbol)."""
    return float(codec.huffman.stream_size(np.bincount(labels.reshape(-1).astype(np.int64), minlength=k)))


def _outlier_bytes(pos: np.ndarray | None) -> float:
    """Bytes of the exact side list: float32 values + varint position deltas (about; Huffman shrinks these)."""
    if pos is None or not pos.size:
        return 0.0
    return float(4 * pos.size + codec.grouped.varint_encode(np.diff(pos, prepend=0)).size)


def _stored_bytes(labels: np.ndarray, codebooks: np.ndarray, pos: np.ndarray | None) -> float:
    """Bytes of one stored candidate: its Huffman index stream, float16 codebooks (G, k) and exact outliers."""
    return _entropy_bytes(labels, codebooks.shape[1]) + 2 * codebooks.size + _outlier_bytes(pos)


def _proxy_error(w: np.ndarray, q: np.ndarray, f: np.ndarray, gram: np.ndarray | None) -> float:
    """Predicted output damage of storing ``q`` for ``w`` (up to the per-tensor factor alpha).

    Without a Gram matrix: ``sum F (w - q)**2`` (diagonal Fisher). With one (Linear layers): the Kronecker-factored
    form ``sum_i s_i dW_i H dW_i^T`` with per-output-row sensitivity ``s_i = sum_j F_ij / trace(H)``, which keeps the
    cross terms between input features that error-compensated rounding exploits (the diagonal cannot see them).
    """
    d = (np.asarray(w, np.float64) - q).reshape(w.shape[0], -1)
    if gram is None:
        return float((f.reshape(d.shape) * d**2).sum())
    s = f.reshape(d.shape).sum(axis=1) / max(float(np.trace(gram)), 1e-300)  # (R,)
    return float((((d @ gram) * d).sum(axis=1) * s).sum())


def _candidate(w: np.ndarray, f: np.ndarray, bits: int, rpg: int, frac: float, weighted: bool,
               cfg: PostTrainConfig, grid: float = 0.0, gram: np.ndarray | None = None,
               gptq: bool = False, factor: tuple | None = None) -> Candidate | None:
    """One candidate: k-means (``bits``) or a uniform grid (``grid`` > 0), optionally GPTQ-rounded (needs ``gram``).

    Returns None for a grid that would need more than the codec's 65536 levels.
    """
    rows = w.shape[0]
    x = w.reshape(rows, -1).astype(np.float64)  # (R, C)
    fw = f.reshape(rows, -1)
    n = x.size
    pos = np.zeros(0, np.int64)
    kw = fw if weighted else np.ones_like(fw)
    if frac > 0:
        dev = np.abs(x - x.mean()).reshape(-1)
        n_out = max(1, round(frac * n))
        pos = np.sort(np.argpartition(dev, n - n_out)[n - n_out:])
        kw = kw.copy().reshape(-1)
        kw[pos] = 0.0  # outliers are stored exactly: they do not pull the centroids
        kw = kw.reshape(rows, -1)
    keep: np.ndarray | None = None
    if pos.size:
        flat_keep = np.zeros(n, bool)
        flat_keep[pos] = True
        keep = flat_keep.reshape(rows, -1)
    if grid > 0:
        # zero-centred uniform grid; the levels actually used form the codebook (Huffman codes the indices)
        rest = x if keep is None else x[~keep]
        step = float(rest.std()) / grid or 1.0
        lo, hi = math.floor(float(rest.min()) / step), math.ceil(float(rest.max()) / step)
        if hi - lo + 1 > codec.grouped.MAX_K:
            return None
        levels = (step * np.arange(lo, hi + 1)).astype(np.float16).astype(np.float64)  # (L,) sorted
        raw = gptq_round(x, gram, levels, keep, factor=factor) if gptq and gram is not None else _nearest(levels, x)
        used, inv = np.unique(raw, return_inverse=True)
        c16 = levels[used].astype(np.float16)[None, :]  # (1, k)
        labels = inv.reshape(rows, -1)
        k = c16.shape[1]
        bits = max(1, math.ceil(math.log2(k))) if k > 1 else 1
        rpg, weighted = 0, False
    else:
        g = rpg or rows
        pad = (-rows) % g
        xp = np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x
        wp = np.concatenate([kw, np.zeros((pad, kw.shape[1]))]) if pad else kw
        groups = xp.shape[0] // g
        k = 1 << bits
        c, lab = _kmeans.weighted_kmeans_rows(xp.reshape(groups, -1), wp.reshape(groups, -1), k,
                                              max_iter=cfg.kmeans_iter, fit_cap=65536 if groups == 1 else 8192,
                                              seed=cfg.seed)
        c16 = c.astype(np.float16)
        labels = lab.reshape(xp.shape)[:rows]  # (R, C)
        if gptq and gram is not None and groups == 1:
            labels = gptq_round(x, gram, c16[0].astype(np.float64), keep, factor=factor)
    labels = labels.astype(np.uint8 if k <= 256 else np.uint16)
    cand = Candidate(bits, rpg, frac, weighted, 0.0, 0.0, c16, labels,
                     pos, w.reshape(-1)[pos].astype(np.float32), grid=grid, gptq=gptq and gram is not None)
    q = cand.weight(w.shape).astype(np.float64)
    cand.error = _proxy_error(w, q, f, gram)
    cand.nbytes = _stored_bytes(labels, c16, pos)
    return cand


def _hull(cands: list[Candidate]) -> list[Candidate]:
    """The lower convex hull of (bytes, error), from the most accurate (largest) to the cheapest."""
    pts = sorted(cands, key=lambda c: (c.nbytes, c.error))
    front: list[Candidate] = []
    for c in pts:  # Pareto: keep a candidate only if it beats every cheaper one on error
        if not front or c.error < front[-1].error:
            front.append(c)
    hull: list[Candidate] = []
    for c in front:  # convexity: predicted drop per byte must grow as we go cheaper
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (b.error - a.error) * (c.nbytes - a.nbytes) >= (c.error - a.error) * (b.nbytes - a.nbytes):
                hull.pop()
            else:
                break
        hull.append(c)
    return hull[::-1]


def _allowed(c: Candidate, cfg: PostTrainConfig, gptq_able: bool = True) -> bool:
    """Whether ``cfg`` offers candidate ``c`` (to reuse one candidate set across configurations); ``gptq_able``:
    the tensor has GPTQ candidates (a Linear layer with a Gram matrix)."""
    if c.bits == 0:
        return cfg.fp16
    if c.gptq != (cfg.gptq and gptq_able):
        return False
    if c.coarse_grid:
        return c.grid in cfg.grids and c.coarse_grid in cfg.tier_grids
    if c.grid:
        return c.grid in cfg.grids and c.outlier_frac in cfg.outlier_fracs
    return (c.bits in cfg.bits and c.rows_per_group in cfg.group_rows and c.outlier_frac in cfg.outlier_fracs
            and c.weighted == (cfg.weighting == "fisher"))


def _key(c: Candidate) -> tuple:
    return (*c.setting, c.weighted if c.bits and not c.grid else False, c.coarse_grid)


def make_candidates(modules: dict[str, nn.Module], fisher: dict[str, np.ndarray],
                    configs: Sequence[PostTrainConfig], progress: bool = False,
                    grams: dict[str, np.ndarray] | None = None,
                    counts: dict[str, np.ndarray] | None = None,
                    fisher_counts: dict[str, np.ndarray] | None = None) -> dict[str, list[Candidate]]:
    """Every candidate any of ``configs`` offers, per tensor (pass to :func:`compress_to_bound_` to share them).

    With ``grams`` (:func:`input_grams`), Linear layers' errors use the Kronecker-factored proxy (see
    :func:`_proxy_error`) and configurations with ``gptq`` get GPTQ-rounded candidates. With ``counts``
    (:func:`row_counts`), embedding tables are weighted by row usage and get the tiered candidates;
    ``fisher_counts``: the row counts of the text ``fisher`` was measured on, where ``counts`` come from more text
    (see :func:`unseen_scale`).
    """
    if counts and len({c.rare_scale for c in configs}) > 1:
        raise ValueError("configs differ in rare_scale: their embedding candidates cannot be shared")
    out: dict[str, list[Candidate]] = {}
    for n in tqdm(modules, desc="candidates", disable=not progress, leave=False):
        w = modules[n].weight.detach().cpu().float().numpy()
        seen: dict[tuple, Candidate] = {}
        for cfg in configs:
            for c in _candidates(n, w, fisher[n], cfg, skip=set(seen), gram=(grams or {}).get(n),
                                 counts=(counts or {}).get(n), fisher_counts=(fisher_counts or {}).get(n)):
                seen[_key(c)] = c
        out[n] = list(seen.values())
    return out


def _candidates(name: str, w: np.ndarray, f: np.ndarray, cfg: PostTrainConfig,
                skip: set[tuple] | None = None, gram: np.ndarray | None = None,
                counts: np.ndarray | None = None, fisher_counts: np.ndarray | None = None) -> list[Candidate]:
    skip = skip or set()
    fw = f if counts is None else usage_fisher(f, counts, fisher_counts, rare_scale=cfg.rare_scale)
    out = _candidates_of(name, w, fw, cfg, skip, gram, counts)
    if counts is not None:  # what the calibration cannot measure: the damage to the rows it never uses
        unused = counts == 0
        rows = w.shape[0]
        fu = fw.reshape(rows, -1)[unused]
        wu = w.reshape(rows, -1)[unused].astype(np.float64)
        for c in out:
            c.unseen_error = float((fu * (wu - c.weight(w.shape).reshape(rows, -1)[unused]) ** 2).sum())
    return out


def _candidates_of(name: str, w: np.ndarray, f: np.ndarray, cfg: PostTrainConfig, skip: set[tuple],
                   gram: np.ndarray | None, counts: np.ndarray | None) -> list[Candidate]:
    out: list[Candidate] = []
    if cfg.fp16 and (0, 0, 0.0, 0.0, False, False, 0.0) not in skip:
        w16 = w.astype(np.float16)
        out.append(Candidate(0, 0, 0.0, False, 2.0 * w.size, _proxy_error(w, w16.astype(np.float64), f, gram),
                             fp16=w16))
    weighted = cfg.weighting == "fisher"
    gptq = cfg.gptq and gram is not None
    if cfg.gptq and gram is None:  # layers GPTQ cannot round (embeddings, convs) get the plain candidates
        cfg = dataclasses.replace(cfg, gptq=False)
    factor = gptq_factor(gram) if gptq and gram is not None else None
    for b in cfg.bits:
        for rpg in cfg.group_rows:
            if rpg and (b > cfg.row_bits_max or rpg >= w.shape[0] or gptq):
                continue
            for frac in cfg.outlier_fracs:
                if (b, rpg, frac, 0.0, gptq, weighted, 0.0) not in skip:
                    c = _candidate(w, f, b, rpg, frac, weighted, cfg, gram=gram, gptq=gptq, factor=factor)
                    if c is not None:
                        out.append(c)
    for r in cfg.grids:
        for frac in cfg.outlier_fracs:
            if (0, 0, frac, r, gptq, False, 0.0) not in skip:
                c = _candidate(w, f, 0, 0, frac, False, cfg, grid=r, gram=gram, gptq=gptq, factor=factor)
                if c is not None:
                    out.append(c)
    if counts is not None and (counts > 0).any() and not (counts > 0).all():
        for r in cfg.grids:
            for rc in cfg.tier_grids:
                if rc < r and (0, 0, 0.0, r, False, False, rc) not in skip:
                    c = _tiered_candidate(w, f, counts > 0, r, rc)
                    if c is not None:
                        out.append(c)
    return out


def _tiered_candidate(w: np.ndarray, f: np.ndarray, used: np.ndarray, fine: float, coarse: float) -> Candidate | None:
    """Rows in ``used`` on the grid of step ``std / fine``, the others on ``std / coarse`` (one std: the tensor's);
    the ``tiered`` kind stores each tier's used levels as its codebook and codes its indices apart."""
    rows = w.shape[0]
    x = w.reshape(rows, -1).astype(np.float64)
    std = float(x.std()) or 1.0
    tiers = (~used).astype(np.uint8)  # 0: used rows (fine), 1: the rest (coarse)
    labels = np.zeros(x.shape, np.int64)
    books, nbytes = [], 0.0
    for t, r in ((0, fine), (1, coarse)):
        sel = tiers == t
        step = std / r
        q = np.round(x[sel] / step)
        used_levels, inv = np.unique(q, return_inverse=True)
        if used_levels.size > codec.grouped.MAX_K:
            return None
        books.append((used_levels * step).astype(np.float16))
        labels[sel] = inv.reshape(q.shape)
        nbytes += _entropy_bytes(inv, used_levels.size)
    k = max(b.size for b in books)
    c16 = np.stack([np.concatenate([b, np.full(k - b.size, b[-1], np.float16)]) for b in books])  # (2, k)
    nbytes += 2 * c16.size + codec.huffman.stream_size(np.bincount(tiers, minlength=2))
    bits = max(1, math.ceil(math.log2(k))) if k > 1 else 1
    cand = Candidate(bits, 0, 0.0, False, nbytes, 0.0, c16, labels.astype(np.uint8 if k <= 256 else np.uint16),
                     np.zeros(0, np.int64), np.zeros(0, np.float32), grid=fine, row_tiers=tiers, coarse_grid=coarse)
    cand.error = _proxy_error(w, cand.weight(w.shape).astype(np.float64), f, None)
    return cand


