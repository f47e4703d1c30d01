"""Exact 1-D k-means (Lloyd) for weight sharing, fast enough for a billion weights.

Deep Compression clusters the weights of each layer with k-means on *scalars*. In one dimension an
exact Lloyd step depends only on the sorted data: the clusters are the intervals between the midpoints
of consecutive centroids, so with the values sorted once, a step is

    thresholds = midpoints of consecutive centroids          # (k-1,)
    positions  = searchsorted(sorted, thresholds)             # O(k log n)
    sums       = prefix_sum(positions) differences            # O(k) with prefix sums
    centroids  = sums / counts

and costs microseconds instead of an O(n k) pass. Running Lloyd to its exact fixed point is then cheap.

Memory: a full float64 prefix-sum array would take 8 bytes per weight (8 GB for 1B weights). We keep
prefix sums only at block starts (every ``B`` sorted values, in extended precision) and add the few
values between a block start and a position on the fly, so the extra memory is the sorted copy
(4 bytes per float32 weight) plus ~n/B numbers.

Labels: ``searchsorted`` of every weight against the midpoints costs ~50 ns per weight (a branchy binary
search). We instead map each weight to one of 2**16 equal cells over [min, max] and look up the label of
the cell's left edge in a table, then correct by comparing against the next midpoint (a cell holds at
most a few midpoints, counted in advance). The result is exactly ``searchsorted(midpoints, x)``.

Conventions (shared by the brute-force reference in the tests):

- nearest centroid with ties going to the lower centroid: ``label(x) = #{midpoints < x}``;
- a step assigns, then re-seeds, then moves every centroid to the mean of its cluster. Re-seeding: the
  empty clusters are dropped, and while fewer than ``k`` clusters remain (empty ones, or an init with
  fewer than ``k`` distinct centroids), the cluster with the largest sum of squared errors (SSE; ties
  within a relative 1e-9 go to the leftmost) that holds at least two distinct values is split in two.
  The split is the one with the lowest SSE among ``_SPLIT_GRID - 1`` evenly spaced ranks of the
  cluster's sorted values (rank ``m*j // G`` of m values, j = 1..G-1; every rank when m <= G), each
  moved down to the start of its run of equal values, or past the run if that is the cluster's
  minimum; ties within 1e-9 of the cluster's SSE go to the leftmost split. Each split lowers the SSE
  and no Lloyd step raises it, so (in exact arithmetic) no partition repeats once a split has happened:
  re-seeding cannot cycle, and ``max_iter`` bounds the steps in any case. With at most ``k`` distinct
  values there is nothing to split and the empty clusters stay dropped;
- the last allowed step (``max_iter``) does not re-seed, so every returned centroid is the mean of a
  cluster of a nearest-centroid assignment (never a raw split);
- the iteration stops when a step that did not re-seed leaves the partition unchanged (an exact fixed
  point), when such a step moves no centroid more than ``tol * (max - min)``, or after ``max_iter``
  steps. At a fixed point there are ``min(k, #distinct values)`` centroids, none of them unused;
- data with at most ``k`` distinct values returns exactly those values (zero error).

A re-seeding step costs O(G log n) per split with the prefix sums (of the values, and of their squares
for the SSEs; that second table is built on the first re-seed only), so a step stays O(k log n).
"""

from __future__ import annotations

import heapq
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["assign", "init_centroids", "kmeans1d", "linear_quantize", "weighted_kmeans_rows"]

_INITS = ("linear", "density", "random")
_LUT_CELLS = 1 << 16  # cells of the label lookup table
_CHUNK = 1 << 16  # values per chunk in the labelling loop (temporaries stay in L2)
_SMALL = 1 << 15  # below this many values plain searchsorted is fastest
_SPLIT_GRID = 64  # a re-seeding split is the best of this many - 1 evenly spaced ranks of the cluster
_TIE_RTOL = 1e-9  # SSEs this close (relative) count as ties when re-seeding; the leftmost wins


def _threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _label_dtype(k: int) -> np.dtype[Any]:
    if k <= 1 << 8:
        return np.dtype(np.uint8)
    if k <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _as_values(values: Any, what: str = "values") -> NDArray[np.floating[Any]]:
    """Flat float32/float64 view (or copy) of ``values``; raises on empty input."""
    v = np.asarray(values)
    if v.dtype.kind not in "fiub":
        raise ValueError(f"{what}: expected a real numeric array, got dtype {v.dtype}")
    if v.size == 0:
        raise ValueError(f"{what} is empty (shape {v.shape}); nothing to cluster")
    if v.dtype != np.float32 and v.dtype != np.float64:
        # float16/bfloat-like -> float32 keeps every value exactly; integers -> float64 likewise
        v = v.astype(np.float32 if (v.dtype.kind == "f" and v.dtype.itemsize < 4) else np.float64)
    return np.ascontiguousarray(v).reshape(-1)


def _check_k(k: Any) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r}, expected an integer >= 1")
    return int(k)


def _thresholds(c: NDArray[np.float64], dtype: np.dtype[Any]) -> NDArray[np.floating[Any]]:
    """Midpoints of sorted centroids ``c`` rounded *down* to ``dtype``.

    For x of that dtype, ``x > t`` holds exactly when ``x > (c[i] + c[i+1]) / 2`` in float64,
    so comparisons can be done in the data's own dtype without copying the data to float64.
    """
    mid = (c[:-1] + c[1:]) * 0.5  # (k-1,) float64
    t = mid.astype(dtype)
    over = t.astype(np.float64) > mid
    if over.any():
        t[over] = np.nextafter(t[over], dtype.type(-np.inf))
    return t


def _label_at_edges(thr: NDArray[Any], edges: NDArray[np.float64]) -> NDArray[np.int64]:
    # #thresholds < e, for float64 edges; thr is in the data dtype (exactly representable in float64)
    return np.searchsorted(thr.astype(np.float64), edges, side="left")


def _assign_sorted(
    v: NDArray[np.floating[Any]], c: NDArray[np.float64], out_dtype: np.dtype[Any], threads: int | None = None
) -> NDArray[Any]:
    """Labels of ``v`` (1-D) for sorted, distinct float64 centroids ``c``: ``#{midpoints < x}``."""
    n = v.shape[0]
    out = np.empty(n, dtype=out_dtype)
    if c.shape[0] == 1:
        out.fill(0)
        return out
    thr = _thresholds(c, v.dtype)  # (m,) m = k-1
    if n <= _SMALL:
        out[:] = np.searchsorted(thr, v, side="left")
        return out
    lo = float(v.min())
    hi = float(v.max())
    if hi <= lo:
        out.fill(int(np.searchsorted(thr, v.dtype.type(lo), side="left")))
        return out
    g = _LUT_CELLS
    scale = (g - 1) / (hi - lo)
    # cell(x) = floor((x - lo) * scale) computed in the data dtype: rounding moves it by < 0.25 cell, so
    # every x in cell j lies in [lo + (j-1)/scale, lo + (j+2)/scale). The table holds the label of the
    # left bound (a lower bound on the label); at most `passes` midpoints lie inside that range, and each
    # correction pass `label += x > thr[label]` steps over one of them.
    edges = lo + np.arange(-1, g + 3, dtype=np.float64) / scale  # (g+4,)
    at = _label_at_edges(thr, edges)
    lut = at[: g + 1].astype(out_dtype)  # (g+1,)
    passes = int((at[3:] - at[:-3]).max())
    thr_ext = np.append(thr, np.array(np.inf, dtype=v.dtype))  # thr_ext[m] = inf: no step past the top
    lo_t = v.dtype.type(lo)
    sc_t = v.dtype.type(scale)

    def work(a: int, b: int) -> None:
        f = np.empty(_CHUNK, dtype=v.dtype)
        idx = np.empty(_CHUNK, dtype=np.int32)
        gt = np.empty(_CHUNK, dtype=bool)
        for s in range(a, b, _CHUNK):
            e = min(s + _CHUNK, b)
            x = v[s:e]
            ff, ii, gg = f[: e - s], idx[: e - s], gt[: e - s]
            np.subtract(x, lo_t, out=ff)
            np.multiply(ff, sc_t, out=ff)
            np.copyto(ii, ff, casting="unsafe")  # truncation == floor, values are >= 0
            lab = out[s:e]
            np.take(lut, ii, out=lab)
            for _ in range(passes):
                np.take(thr_ext, lab, out=ff)
                np.greater(x, ff, out=gg)
                np.add(lab, gg, out=lab, casting="unsafe")

    nt = threads or _threads()
    nt = max(1, min(nt, n // (4 * _CHUNK)))
    if nt == 1:
        work(0, n)
    else:
        bounds = [n * i // nt for i in range(nt + 1)]
        with ThreadPoolExecutor(nt) as ex:
            list(ex.map(work, bounds[:-1], bounds[1:]))
    return out


def _check_finite(lo: float, hi: float, what: str) -> None:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{what} contains NaN or inf (min={lo}, max={hi}); cannot cluster")


def assign(values: NDArray[Any], centroids: NDArray[Any]) -> NDArray[Any]:
    """Label of the nearest centroid for every value (ties go to the lower centroid).

    Args:
        values: real array of any shape.
        centroids: 1-D array of k >= 1 finite centroids, in any order (duplicates allowed: the first
            of equal centroids wins).

    Returns:
        Integer labels indexing ``centroids``, shape ``values.shape``; dtype uint8 for k <= 256,
        uint16 for k <= 65536, else int32.

    Raises:
        ValueError: empty ``values`` or ``centroids``, NaN/inf anywhere.

    Example:
        >>> assign(np.array([0.1, 0.9, 0.4]), np.array([1.0, 0.0])).tolist()
        [1, 0, 1]
    """
    shape = np.shape(values)
    v = _as_values(values)
    c = np.asarray(centroids, dtype=np.float64).reshape(-1)
    if c.size == 0:
        raise ValueError("centroids is empty; need at least one")
    if not np.isfinite(c).all():
        raise ValueError("centroids contain NaN or inf")
    _check_finite(float(v.min()), float(v.max()), "values")
    dt = _label_dtype(c.size)
    uc, first = np.unique(c, return_index=True)  # sorted distinct; first index of each
    lab = _assign_sorted(v, uc, _label_dtype(uc.size))
    if uc.size != c.size or (first != np.arange(c.size)).any():
        lab = first.astype(dt)[lab]
    return lab.astype(dt, copy=False).reshape(shape)


def _distinct_upto(s: NDArray[Any], k: int) -> NDArray[Any] | None:
    """The distinct values of sorted ``s`` if there are at most ``k`` of them, else None. O(k log n)."""
    out: list[Any] = []
    i = 0
    n = s.shape[0]
    while i < n:
        if len(out) == k:
            return None
        out.append(s[i])
        i = int(np.searchsorted(s, s[i], side="right"))
    return np.array(out, dtype=s.dtype)


def _init_sorted(s: NDArray[Any], k: int, init: str, seed: int) -> NDArray[np.float64]:
    n = s.shape[0]
    lo, hi = float(s[0]), float(s[-1])
    if init == "linear":
        c = np.linspace(lo, hi, k)
    elif init == "density":
        # Deep Compression: space the CDF evenly on its y-axis and read off x. We take the centred
        # probabilities (i + 1/2)/k (np.quantile, linear interpolation) so no centroid sits on an outlier.
        p = (np.arange(k, dtype=np.float64) + 0.5) / k
        h = p * (n - 1)
        j = np.floor(h).astype(np.int64)
        j1 = np.minimum(j + 1, n - 1)
        a = s[j].astype(np.float64)
        b = s[j1].astype(np.float64)
        c = a + (b - a) * (h - j)
    elif init == "random":
        # Forgy: k data points drawn at random (seeded). A draw that repeats an already chosen value
        # takes the next larger distinct value instead (wrapping around), so mostly-duplicate data still
        # gives k distinct centroids. With at most k distinct values, those are the centroids.
        d = _distinct_upto(s, k)
        rng = np.random.default_rng(seed)
        got: set[float] = set() if d is None else set(d.tolist())
        for p in rng.integers(0, n, size=k if d is None else 0).tolist():
            x = s[p]
            while float(x) in got:
                i = int(np.searchsorted(s, x, side="right"))
                x = s[i if i < n else 0]
            got.add(float(x))
        c = np.array(sorted(got), dtype=np.float64)
    else:
        raise ValueError(f"init={init!r}, expected one of {_INITS} or an array of centroids")
    return np.unique(c)


def init_centroids(values: NDArray[Any], k: int, init: str = "linear", seed: int = 0) -> NDArray[np.float64]:
    """The starting centroids ``kmeans1d`` uses (sorted, distinct, float64).

    Args:
        values: real array of any shape (finite, non-empty).
        k: number of clusters, >= 1.
        init: ``"linear"`` (evenly spaced over [min, max]), ``"density"`` (quantiles at (i+1/2)/k)
            or ``"random"`` (Forgy: k data points drawn with ``seed``; a repeated value is replaced by
            the next larger distinct one, so the k values are distinct).
        seed: seed of the ``"random"`` draw.

    Returns:
        float64 array of at most k sorted distinct centroids (ties in the quantiles or in the data merge).

    Raises:
        ValueError: empty or non-finite values, bad ``k`` or ``init``.

    Example:
        >>> init_centroids(np.array([0.0, 1.0, 4.0]), 3).tolist()
        [0.0, 2.0, 4.0]
    """
    k = _check_k(k)
    v = _as_values(values)
    s = np.sort(v)
    _check_finite(float(s[0]), float(s[-1]), "values")
    return _init_sorted(s, k, init, seed)


class _Prefix:
    """Sums of the first q sorted values (or of their squares) for any q, from prefix sums at block starts.

    Shapes: s (n,). ``square=True`` sums ``x**2`` (computed in float64, exact for float32 values).
    """

    def __init__(self, s: NDArray[Any], k: int, square: bool = False) -> None:
        n = s.shape[0]
        # Block length B. For few centroids the values between a block start and a position are summed
        # slice by slice (~1.5 us each, almost independent of B); for many, in one (k, B) gather, so
        # k*B is kept ~1e4. Either way the n/B block sums stay small (16 MB for 1B weights, k <= 64).
        self.loop = k <= 64
        self.B = B = 1024 if self.loop else int(np.clip((1 << 14) // k, 64, 1024))
        self.square = square
        nb = n // B
        blk = np.zeros(nb + 1, dtype=np.longdouble)  # blk[j] = sum(s[:j*B]) (of squares if square)
        # float64 sums of B float32 values are exact to ~1e-13 relative; the running total is extended
        step = max(1, _CHUNK // B) if square else 1 << 14  # squares go through a float64 buffer
        buf = np.empty(step * B if square and nb else 0, dtype=np.float64)
        for a in range(0, nb, step):  # chunked to bound the float64 temporary
            b = min(a + step, nb)
            x = s[a * B : b * B].reshape(b - a, B)
            if square:
                x64 = buf[: (b - a) * B].reshape(b - a, B)
                np.copyto(x64, x)
                np.multiply(x64, x64, out=x64)  # exact for float32 values
                bs = x64.sum(axis=1)
            else:
                bs = x.sum(axis=1, dtype=np.float64)
            blk[a + 1 : b + 1] = blk[a] + np.cumsum(bs, dtype=np.longdouble)
        self.s, self.blk, self.n = s, blk, n
        self.ar = np.arange(B, dtype=np.int64)

    def _part(self, a: int, b: int) -> float:
        """float64 sum of s[a:b] (or of its squares), b - a < B."""
        if self.square:
            x = self.s[a:b].astype(np.float64)
            return float(np.dot(x, x))
        return float(np.add.reduce(self.s[a:b], dtype=np.float64))

    def __call__(self, q: NDArray[np.int64]) -> NDArray[np.longdouble]:
        """Prefix sums at positions q (m,), 0 <= q <= n."""
        j = q // self.B
        base = j * self.B
        out = self.blk[j].copy()
        rem = q - base  # (m,) values between the block start and q, < B
        sel = np.nonzero(rem)[0]
        if self.loop:
            part = [self._part(a, b) for a, b in zip(base[sel].tolist(), q[sel].tolist())]
            out[sel] += np.array(part, dtype=np.float64)
        elif sel.size:
            # (m', B) gather; indices past the end are clipped and masked out
            idx = np.minimum(base[sel, None] + self.ar, self.n - 1)
            vals = np.where(self.ar < rem[sel, None], self.s[idx], 0)
            if self.square:
                vals = vals.astype(np.float64)
                vals *= vals
            out[sel] += vals.sum(axis=1, dtype=np.float64)
        return out


def _sse(cnt: Any, s1: Any, s2: Any) -> NDArray[np.float64]:
    """Sums of squared errors from counts, sums and sums of squares (extended precision), >= 0."""
    return np.maximum(np.asarray(s2 - s1 * s1 / cnt).astype(np.float64), 0.0)


def _best_split(s: NDArray[Any], a: int, b: int, sse: float, p1a: Any, p1b: Any, prefix: _Prefix) -> int:
    """Where to split the sorted values ``s[a:b]`` (at least two distinct) into ``s[a:p]`` and ``s[p:b]``.

    The candidate with the lowest SSE after the split (= the largest drop ``nl*nr/m * (mean_l -
    mean_r)**2``) among the ranks ``a + m*j // G`` (j = 1..G-1, m = b - a), each moved down to the start
    of its run of equal values, or past the run of the minimum if it lands there; ties within
    ``_TIE_RTOL * sse`` go to the leftmost. ``p1a``, ``p1b``: prefix sums at a and b. O(G log n).
    """
    m = b - a
    seg = s[a:b]
    r = (m * np.arange(1, _SPLIT_GRID, dtype=np.int64)) // _SPLIT_GRID  # (G-1,) ranks in the cluster
    r = r[r > 0]
    p = np.searchsorted(seg, seg[r], side="left")  # start of the run of equal values
    p[p == 0] = np.searchsorted(seg, seg[0], side="right")  # < m: there are two distinct values
    p = np.unique(p) + a
    nl = p - a
    nr = b - p
    sl = prefix(p) - p1a  # (c,) extended precision
    d = sl / nl - (p1b - p1a - sl) / nr
    drop = np.asarray(d * d * (nl * nr) / m).astype(np.float64)
    return int(p[np.flatnonzero(drop >= drop.max() - _TIE_RTOL * sse)[0]])


def _reseed(
    s: NDArray[Any], pos: NDArray[np.int64], need: int, prefix: _Prefix, prefix2: _Prefix
) -> tuple[NDArray[np.int64], int]:
    """Split clusters of the partition ``pos`` (cluster i = ``s[pos[i]:pos[i+1]]``, none empty) up to
    ``need`` times, each time the splittable cluster with the largest SSE (ties within ``_TIE_RTOL``
    to the leftmost) at :func:`_best_split`. Returns the refined partition and the number of splits."""
    ps = prefix(pos)
    ps2 = prefix2(pos)
    cnt = pos[1:] - pos[:-1]
    sse = _sse(cnt, ps[1:] - ps[:-1], ps2[1:] - ps2[:-1])
    # heap of splittable clusters: (-sse, start, end, prefix sums at start and end, same for squares)
    heap: list[tuple[float, int, int, Any, Any, Any, Any]] = []
    for i in np.flatnonzero(s[pos[:-1]] < s[pos[1:] - 1]).tolist():
        heap.append((-float(sse[i]), int(pos[i]), int(pos[i + 1]), ps[i], ps[i + 1], ps2[i], ps2[i + 1]))
    heapq.heapify(heap)
    cuts: list[int] = []
    while len(cuts) < need and heap:
        ties = [heapq.heappop(heap)]
        lim = -ties[0][0] * (1.0 - _TIE_RTOL)
        while heap and -heap[0][0] >= lim:
            ties.append(heapq.heappop(heap))
        e = min(ties, key=lambda t: t[1])  # the leftmost of the (near-)largest
        for t in ties:
            if t is not e:
                heapq.heappush(heap, t)
        _, a, b, p1a, p1b, p2a, p2b = e
        p = _best_split(s, a, b, -e[0], p1a, p1b, prefix)
        cuts.append(p)
        p1p = prefix(np.array([p], dtype=np.int64))[0]
        p2p = prefix2(np.array([p], dtype=np.int64))[0]
        for lo, hi, q1a, q1b, q2a, q2b in ((a, p, p1a, p1p, p2a, p2p), (p, b, p1p, p1b, p2p, p2b)):
            if s[lo] < s[hi - 1]:
                err = float(_sse(hi - lo, q1b - q1a, q2b - q2a))
                heapq.heappush(heap, (-err, lo, hi, q1a, q1b, q2a, q2b))
    if not cuts:
        return pos, 0
    return np.sort(np.concatenate((pos, np.array(cuts, dtype=np.int64)))), len(cuts)


def kmeans1d(
    values: NDArray[Any],
    k: int,
    init: str | NDArray[Any] = "linear",
    max_iter: int = 10_000,
    tol: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> tuple[NDArray[np.floating[Any]], NDArray[Any]]:
    """Exact 1-D k-means (Lloyd's algorithm) on the values of an array.

    Sorts once (O(n log n)), then each Lloyd step costs O(k log n) on the sorted values, so the
    iteration runs to its exact fixed point; labels come from one O(n) pass at the end. A cluster that
    becomes empty is re-seeded by splitting the cluster with the largest squared error (at its best
    split among evenly spaced ranks), so a gap in the data (pruned weights) does not cost centroids.

    Args:
        values: real array of any shape (e.g. a layer's nonzero weights); float32 is not copied to
            float64 (only a sorted float32 copy is made).
        k: number of clusters (2**bits), >= 1.
        init: ``"linear"`` (evenly spaced between min and max, Deep Compression's best),
            ``"density"`` (quantiles at (i+1/2)/k of the values), ``"random"`` (Forgy: k distinct
            values drawn with ``seed``), or an array of starting centroids.
        max_iter: most Lloyd steps (the last one does not re-seed).
        tol: stop early once no centroid moves more than ``tol * (max - min)``; 0 runs to the exact
            fixed point (the partition stops changing).
        seed: seed for ``init="random"``.
        progress: show a progress bar over the Lloyd steps.

    Returns:
        ``(centroids, labels)``: centroids sorted ascending, distinct, float64 (the exact cluster means;
        cast to the weights' dtype when storing), shape (k',); labels of the nearest centroid (ties to
        the lower), shape ``values.shape``, dtype uint8 for k <= 256, uint16 for k <= 65536, else int32.
        Empty clusters (and missing ones, if ``init`` gave fewer than k distinct centroids) are
        re-seeded, so k' = min(k, number of distinct values) when the iteration converges; data with
        at most k distinct values returns exactly those values. Only a run stopped by ``max_iter``
        (whose last step drops the clusters that become empty) can return k' < k otherwise.

    Raises:
        ValueError: empty input, NaN/inf, k < 1, unknown init, max_iter < 1 or tol < 0.

    Example:
        >>> c, lab = kmeans1d(np.array([0.0, 0.1, 0.9, 1.0, 5.0]), 2)
        >>> c.tolist(), lab.tolist()
        ([0.5, 5.0], [0, 0, 0, 0, 1])
    """
    c, lab, _ = _kmeans1d(values, k, init, max_iter, tol, seed, progress)
    return c, lab


def _kmeans1d(
    values: NDArray[Any],
    k: int,
    init: str | NDArray[Any],
    max_iter: int,
    tol: float,
    seed: int,
    progress: bool,
) -> tuple[NDArray[np.floating[Any]], NDArray[Any], dict[str, Any]]:
    """``kmeans1d`` plus run statistics: iterations, converged, splits (re-seeds), seconds per phase."""
    k = _check_k(k)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r}, expected an integer >= 1")
    if not (tol >= 0):
        raise ValueError(f"tol={tol!r}, expected a float >= 0")
    if isinstance(init, str) and init not in _INITS:  # before the sort, which can take seconds
        raise ValueError(f"init={init!r}, expected one of {_INITS} or an array of centroids")
    shape = np.shape(values)
    v = _as_values(values)
    lab_dtype = _label_dtype(k)

    info: dict[str, Any] = {"iterations": 0, "converged": True, "splits": 0}
    t0 = time.perf_counter()
    s = np.sort(v)  # (n,) the one O(n log n) step; NaN sorts last, so the ends tell finiteness
    _check_finite(float(s[0]), float(s[-1]), "values")
    distinct = _distinct_upto(s, k)
    info["sort_s"] = time.perf_counter() - t0
    if distinct is not None:
        del s
        c = distinct.astype(np.float64)
        t0 = time.perf_counter()
        lab = _assign_sorted(v, c, lab_dtype).reshape(shape)
        info.update(iterate_s=0.0, assign_s=time.perf_counter() - t0, distinct=True)
        return c, lab, info

    if isinstance(init, str):
        c = _init_sorted(s, k, init, seed)
    else:
        c = np.unique(np.asarray(init, dtype=np.float64).reshape(-1))
        if c.size == 0 or c.size > k or not np.isfinite(c).all():
            raise ValueError(f"init array: expected 1..{k} finite centroids, got {np.size(init)}")
    t0 = time.perf_counter()
    prefix = _Prefix(s, k)
    prefix2: _Prefix | None = None  # prefix sums of squares, built on the first re-seed
    n = s.shape[0]
    span = float(s[-1]) - float(s[0])

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc=f"kmeans1d k={k}", unit="step", leave=False)
    prev: NDArray[np.int64] | None = None
    info["converged"] = False
    splits = 0
    for it in range(max_iter):
        # cluster i holds sorted values s[pos[i]:pos[i+1]]: those with x <= threshold i
        pos = np.empty(c.size + 1, dtype=np.int64)
        pos[0], pos[-1] = 0, n
        pos[1:-1] = np.searchsorted(s, _thresholds(c, s.dtype), side="right")
        keep = np.flatnonzero(pos[1:] != pos[:-1]) + 1  # ends of non-empty clusters
        pos = np.concatenate(([0], pos[keep]))  # empty clusters dropped
        split = 0
        if pos.size - 1 < k and it < max_iter - 1:  # re-seed; never in the last step
            if prefix2 is None:
                prefix2 = _Prefix(s, k, square=True)
            pos, split = _reseed(s, pos, k - (pos.size - 1), prefix, prefix2)
            splits += split
        ps = prefix(pos)  # (k'+1,) extended precision
        new = (ps[1:] - ps[:-1]).astype(np.float64) / (pos[1:] - pos[:-1])
        if bar is not None:
            bar.update(1)
        if not split and prev is not None and np.array_equal(pos, prev):
            c = new  # same partition as last step: exact fixed point
            info["converged"] = True
            break
        moved = np.inf if (split or new.size != c.size) else float(np.abs(new - c).max())
        prev, c = pos, new
        if moved <= tol * span:
            info["converged"] = True
            break
    info["iterations"] = it + 1
    info["splits"] = splits
    if bar is not None:
        bar.close()
    del s, prefix, prefix2

    info["iterate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # float64 on purpose: rounding the centroids to float32 could move a value lying within one ulp of
    # a midpoint across it, and the centroids would no longer be the exact means of their clusters
    lab = _assign_sorted(v, c, lab_dtype).reshape(shape)
    info["assign_s"] = time.perf_counter() - t0
    return c, lab, info


def linear_quantize(values: NDArray[Any], bits: int) -> tuple[NDArray[np.floating[Any]], NDArray[Any]]:
    """Uniform (fixed-point) quantisation: 2**bits evenly spaced levels between min and max.

    The baseline that k-means weight sharing is compared with; same return convention as ``kmeans1d``.

    Args:
        values: real array of any shape, finite and non-empty.
        bits: bits per index, 1..16.

    Returns:
        ``(levels, labels)``: float64 levels ascending, shape (2**bits,) (one level if all values are
        equal); labels of the nearest level, shape ``values.shape``.

    Raises:
        ValueError: empty input, NaN/inf, bits outside 1..16.

    Example:
        >>> lv, lab = linear_quantize(np.array([0.0, 0.2, 1.0]), 1)
        >>> lv.tolist(), lab.tolist()
        ([0.0, 1.0], [0, 0, 1])
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise ValueError(f"bits={bits!r}, expected an integer 1..16")
    shape = np.shape(values)
    v = _as_values(values)
    lo, hi = float(v.min()), float(v.max())
    _check_finite(lo, hi, "values")
    levels = np.unique(np.linspace(lo, hi, 1 << bits))
    lab = _assign_sorted(v, levels, _label_dtype(1 << bits))
    return levels, lab.reshape(shape)


def weighted_kmeans_rows(
    values: NDArray[Any],
    weights: NDArray[Any],
    k: int,
    max_iter: int = 20,
    fit_cap: int | None = 8192,
    seed: int = 0,
) -> tuple[NDArray[np.float64], NDArray[Any]]:
    """Weighted 1-D k-means on every row of a matrix at once: one codebook per row (SqueezeLLM-style).

    Minimises ``sum_j weights[g, j] * (values[g, j] - c[g, label[g, j]])**2`` for each row ``g`` by weighted Lloyd
    steps. All rows are solved together: each row's values are shifted by ``g * span`` (span wider than any row's
    range) so that one ``searchsorted`` over the concatenated midpoints labels every value, and ``bincount``
    sums the weights per (row, cluster). Centroids start at the row's weighted quantiles ``(i + 1/2) / k``.
    A cluster that ends up with no weight keeps its centroid. With ``fit_cap``, rows longer than that are fitted on
    a seeded random subset of ``fit_cap`` columns (the same for every row) and then every value is labelled.

    Args:
        values: (G, n) finite reals.
        weights: (G, n) non-negative importances (e.g. diagonal Fisher); a row of zeros counts as uniform.
        k: centroids per row, >= 1.
        max_iter: Lloyd steps at most (stops early when no label changes).
        fit_cap: columns used to fit, or None for all.
        seed: seed of the column subset.

    Returns:
        ``(centroids (G, k) float64 sorted per row, labels (G, n))`` with ``labels[g, j]`` the nearest centroid of
        row g (ties to the lower one); dtype uint8 for k <= 256, else uint16/int32.

    Raises:
        ValueError: shapes differ, empty or non-finite input, negative weights, bad k.

    Example:
        >>> c, lab = weighted_kmeans_rows(np.array([[0.0, 0.1, 5.0, 9.0]]), np.array([[1.0, 1.0, 0.0, 1.0]]), 2)
        >>> c.round(2).tolist(), lab.tolist()
        ([[0.05, 9.0]], [[0, 0, 1, 1]])
    """
    k = _check_k(k)
    x = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if x.ndim != 2 or x.shape != w.shape or x.size == 0:
        raise ValueError(f"values {x.shape} and weights {w.shape}: expected the same non-empty (G, n) shape")
    if not (np.isfinite(x).all() and np.isfinite(w).all()) or (w < 0).any():
        raise ValueError("values and weights must be finite, weights >= 0")
    g, n = x.shape
    w = np.where(w.sum(axis=1, keepdims=True) > 0, w, 1.0)
    w = w + 1e-12 * w.max(axis=1, keepdims=True)  # every value counts a little: no all-zero clusters by accident
    fx, fw = x, w
    if fit_cap is not None and n > fit_cap:
        cols = np.sort(np.random.default_rng(seed).choice(n, fit_cap, replace=False))
        fx, fw = x[:, cols], w[:, cols]
    m = fx.shape[1]
    # init: weighted quantiles per row
    order = np.argsort(fx, axis=1, kind="stable")
    sx = np.take_along_axis(fx, order, axis=1)  # (G, m)
    cw = np.cumsum(np.take_along_axis(fw, order, axis=1), axis=1)  # (G, m)
    targets = (np.arange(k) + 0.5) / k * cw[:, -1:]  # (G, k)
    at = np.minimum(np.array([np.searchsorted(cw[i], targets[i]) for i in range(g)]), m - 1)
    c = np.take_along_axis(sx, at, axis=1)  # (G, k)
    lo, hi = x.min(axis=1), x.max(axis=1)
    span = float((hi - lo).max()) * 2 + 1.0
    shift = (np.arange(g) * span - lo)[:, None]  # (G, 1): row g lives in [g*span, g*span + range]
    rowk = (np.arange(g) * k)[:, None]

    def labels_of(v: NDArray[np.float64], cent: NDArray[np.float64]) -> NDArray[np.int64]:
        mid = ((cent[:, :-1] + cent[:, 1:]) * 0.5 + shift).reshape(-1)  # (G*(k-1),) increasing
        flat = np.searchsorted(mid, (v + shift).reshape(-1), side="left").reshape(v.shape)
        return flat - (np.arange(g) * (k - 1))[:, None]

    prev = None
    for _ in range(max_iter):
        c = np.sort(c, axis=1)
        lab = labels_of(fx, c)
        if prev is not None and np.array_equal(lab, prev):
            break
        prev = lab
        key = (rowk + lab).reshape(-1)
        sw = np.bincount(key, weights=fw.reshape(-1), minlength=g * k).reshape(g, k)
        swx = np.bincount(key, weights=(fw * fx).reshape(-1), minlength=g * k).reshape(g, k)
        c = np.where(sw > 0, swx / np.where(sw > 0, sw, 1.0), c)
    c = np.sort(c, axis=1)
    return c, labels_of(x, c).astype(_label_dtype(k))
