"""Pictures for people: pruning masks, sensitivity curves, weight histograms with centroids, size per stage.

matplotlib is an optional dependency (``pip install deepzip[plot]``); every function writes a PNG atomically and
raises a clear ImportError when matplotlib is missing.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "first_layer_mask_image",
    "plot_first_layer_mask",
    "plot_sensitivity",
    "plot_size_stages",
    "plot_weight_histograms",
]


def _plt():  # noqa: ANN202
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("pictures need matplotlib: pip install 'deepzip[plot]'") from exc
    return plt


def _save(fig, path: str | os.PathLike[str]) -> None:  # noqa: ANN001
    from .checkpoint import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    _plt().close(fig)


def first_layer_mask_image(mask: np.ndarray, side: int = 28) -> np.ndarray:
    """Kept connections of a first FC layer (out, side*side) summed over its neurons, as a (side, side) image."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[1] != side * side:
        raise ValueError(f"first-layer mask of shape {mask.shape}, expected (neurons, {side * side})")
    return mask.astype(np.int64).sum(0).reshape(side, side)


def plot_first_layer_mask(mask: np.ndarray, path: str | os.PathLike[str], *, title: str | None = None) -> np.ndarray:
    """The paper's picture: per input pixel, how many of the first layer's neurons still connect to it."""
    img = first_layer_mask_image(mask)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    im = ax.imshow(img, cmap="viridis", vmin=0, vmax=mask.shape[0])
    ax.set_title(title or f"kept connections per input pixel (of {mask.shape[0]})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)
    return img


def plot_sensitivity(
    scan: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike[str],
    *, chosen: Mapping[str, float] | None = None,
) -> None:
    """Error vs sparsity per layer (each pruned alone, no retraining), chosen sparsities marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in scan.items():
        s, e = zip(*points)
        line, = ax.plot(np.array(s) * 100, e, marker="o", ms=3, label=name)
        if chosen and name in chosen:
            ax.axvline(chosen[name] * 100, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("weights pruned in this layer alone (%)")
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    ax.set_title("pruning sensitivity (dotted: chosen)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_weight_histograms(
    stages: Mapping[str, np.ndarray], path: str | os.PathLike[str], *,
    centroids: np.ndarray | None = None, bins: int = 200, title: str | None = None,
) -> None:
    """Weight distributions of one layer at several stages (zeros of pruned weights left out), one panel each;
    the last panel marks ``centroids`` (the shared values) when given."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3), squeeze=False)
    for i, (ax, (label, w)) in enumerate(zip(axes[0], stages.items())):
        w = np.asarray(w, dtype=np.float64).ravel()
        nz = w[w != 0]
        ax.hist(nz, bins=bins, color="tab:blue", alpha=0.8)
        if centroids is not None and i == len(stages) - 1:
            for c in np.asarray(centroids).ravel():
                ax.axvline(c, color="tab:red", lw=0.6, alpha=0.7)
        ax.set_title(f"{label} ({nz.size} non-zero)", fontsize=9)
        ax.set_xlabel("weight value")
    axes[0][0].set_ylabel("count")
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_size_stages(stages: Mapping[str, float], path: str | os.PathLike[str], *, title: str = "") -> None:
    """Bytes after each stage, as a bar chart with the compression ratio against the first bar."""
    plt = _plt()
    names, sizes = list(stages), np.array(list(stages.values()), dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.bar(names, sizes / 1024, color="tab:green")
    for b, s in zip(bars, sizes):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{sizes[0] / s:.1f}x", ha="center", va="bottom",
                fontsize=8)
    ax.set_ylabel("KiB")
    ax.set_yscale("log")
    ax.set_title(title or "size after each stage", fontsize=9)
    _save(fig, path)
