"""Relative-index (gap) encoding with filler entries."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepzip.codec import encode_sparse, sparse


def gaps_reference(positions, width, size):
    """Brute force: walk the positions, emitting fillers one at a time."""
    m = (1 << width) - 1
    gaps, fill, prev = [], [], -1
    for p in list(positions) + [None]:
        target = size if p is None else p
        while target - prev - 1 > m:
            gaps.append(m)
            fill.append(True)
            prev += m + 1
        if p is not None:
            gaps.append(p - prev - 1)
            fill.append(False)
            prev = p
    return gaps, fill


@pytest.mark.parametrize("width", range(1, 17))
def test_gaps_with_fillers_round_trip_at_every_width(width):
    rng = np.random.default_rng(width)
    size = 300_000
    # clustered positions: short gaps plus a few very long ones, so every width needs fillers
    pos = np.unique(
        np.concatenate([rng.integers(0, 1000, 50), rng.integers(150_000, 151_000, 50), [299_000]])
    )
    gaps, filler = sparse.encode_gaps(pos, width, size=size)
    assert gaps.max() <= (1 << width) - 1
    assert np.array_equal(sparse.decode_gaps(gaps, filler), pos)
    if width <= 12:
        ref_g, ref_f = gaps_reference(pos, width, size)
        assert gaps.tolist() == ref_g and filler.tolist() == ref_f
    assert filler.any()  # the 149_000-zero run needs fillers at every width <= 16


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, 500), max_size=60), st.integers(1, 6), st.integers(0, 200))
def test_encode_gaps_matches_brute_force(posset, width, extra):
    pos = np.array(sorted(posset), np.int64)
    size = (int(pos[-1]) + 1 if pos.size else 0) + extra
    gaps, filler = sparse.encode_gaps(pos, width, size=size)
    ref_g, ref_f = gaps_reference(pos.tolist(), width, size)
    assert gaps.tolist() == ref_g and filler.tolist() == ref_f
    assert np.array_equal(sparse.decode_gaps(gaps, filler), pos)


def test_empty_positions():
    g, f = sparse.encode_gaps(np.zeros(0, np.int64), 3)
    assert g.size == 0 and f.size == 0
    g, f = sparse.encode_gaps(np.zeros(0, np.int64), 3, size=20)  # all pruned: only fillers
    assert f.all() and g.size == 20 // 8
    assert sparse.decode_gaps(g, f).size == 0


def test_best_width_minimises_the_real_encoded_size():
    rng = np.random.default_rng(0)
    shape = (300, 100)
    mask = rng.random(shape) < 0.08
    idx = rng.integers(0, 32, shape)
    cb = np.linspace(-1, 1, 32)
    sizes = {w: encode_sparse(cb, idx, mask, gap_width=w).nbytes for w in range(1, 17)}
    pos = np.flatnonzero(mask)
    counts = np.bincount(idx.reshape(-1)[pos], minlength=32)
    for w, nbytes in sizes.items():  # the size model is exact, not an estimate
        assert sparse.coded_size(pos, counts, w, size=mask.size) == nbytes - 4 * 32
    best = sparse.best_width(pos, counts, size=mask.size)
    assert sizes[best] == min(sizes.values())
    assert encode_sparse(cb, idx, mask).meta["gap_width"] == best


def test_bad_input_raises():
    with pytest.raises(ValueError, match="width=0"):
        sparse.encode_gaps(np.array([1]), 0)
    with pytest.raises(ValueError, match="strictly increasing"):
        sparse.encode_gaps(np.array([3, 3]), 4)
