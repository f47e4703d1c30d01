"""Pictures for people: pruning masks, sensitivity curves, weight histograms with centroids, size per stage.

matplotlib is an optional dependency (``pip install deepzip[plot]``); every function writes a PNG atomically and
raises a clear ImportError when matplotlib is missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .codec.container import DEFAULT_MAX_BYTES
from .codec.fileinfo import file_report, read_dz

__all__ = [
    "file_report",
    "first_layer_mask_image",
    "plot_first_layer_mask",
    "plot_sensitivity",
    "plot_sharing",
    "plot_size_stages",
    "plot_weight_histograms",
    "write_report",
]


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("pictures need matplotlib: pip install 'deepzip[plot]'") from exc
    return plt


def _save(fig, path: str | os.PathLike[str]) -> None:
    from .fileio import atomic_write

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
    im = ax.imshow(img, cmap="viridis", vmin=0)  # auto upper limit: contrast where the kept connections are
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
    ax.tick_params(axis="x", labelsize=8, labelrotation=20)  # long stage names must not overlap
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.set_title(title or "size after each stage", fontsize=9)
    _save(fig, path)





def _md_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    out = ["| " + " | ".join(t for _, t in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def write_report(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, model: str | None = None,
                 max_bytes: int | None = DEFAULT_MAX_BYTES) -> Path:
    """A Markdown report of a ``.dz`` file: per-layer table, sizes per stage, bits per layer, the first layer's
    mask and each layer's weight histogram with its centroids. Returns the path of ``report.md``."""
    rep = file_report(path, max_bytes=max_bytes)
    f = read_dz(path, max_bytes=max_bytes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(path).name
    lines = [f"# deepzip report: {name}\n",
             f"{rep['bytes']:,} bytes on disk; {rep['params_total']:,} parameters ({rep['params_nonzero']:,} "
             f"non-zero); **{rep['ratio']:.1f}x** smaller than 32-bit floats. Architecture: "
             f"{rep['architecture'] or model or 'unknown'}.\n"]
    summary = f.extra.get("summary", {}) if isinstance(f.extra, dict) else {}
    if isinstance(summary, dict) and summary:
        named = (("error_before_pct", "before"), ("error_pruned_pct", "pruned"), ("error_shared_pct", "shared"))
        parts = [f"{label} {summary[k]:.2f}%" for k, label in named if isinstance(summary.get(k), (int, float))]
        if parts:
            lines.append("Test error when the file was written: " + " -> ".join(parts) + " (`deepzip evaluate` "
                         "measures the file itself).\n")
    cols = [("tensor", "tensor"), ("weights", "weights"), ("kept_pct", "kept %"), ("k", "centroids"),
            ("bits_index_fixed", "bits/index"), ("bits_index_huffman", "Huffman bits/index"),
            ("gap_width", "gap width"), ("bits_gap_huffman", "Huffman bits/gap"), ("bytes", "bytes"),
            ("size_pct", "size % of 32-bit"), ("paper_kept_pct", "paper kept %"), ("paper_size_pct", "paper size %")]
    lines += ["## Layers\n", _md_table(rep["layers"], cols)]
    stages = {"32-bit": 4.0 * rep["params_total"]}
    if isinstance(summary.get("pruned_bytes"), (int, float)):
        stages["pruned"] = float(summary["pruned_bytes"])
    stages["pruned+shared"] = float(rep["bytes_before_huffman"])
    stages["+Huffman (file)"] = float(rep["bytes"])
    try:
        plot_size_stages(stages, out / "sizes.png", title=f"{name}: size after each stage")
        lines += ["## Size after each stage\n", "![sizes](sizes.png)\n"]
        weights = [(n, st) for n, st in ((s["name"], s) for s in f.stats(entropy=False))
                   if st["kind"] in ("codebook", "sparse")]
        plt = _plt()
        if weights:
            fig, ax = plt.subplots(figsize=(6, 3))
            labels = [n for n, _ in weights]
            ax.bar(labels, [8 * st["bytes"] / max(st["kept"], 1) for _, st in weights], color="tab:purple")
            ax.set_ylabel("bits per kept weight (all streams)")
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
            _save(fig, out / "bits.png")
            lines += ["## Bits per kept weight\n", "![bits](bits.png)\n"]
        lines.append("## Weights\n")
        mask_lines: list[str] = []  # the first layer's mask, after all the histograms
        for n, _st in weights:
            cb, idx, mask = f.decode_parts(n)
            w = np.where(mask, cb[idx], 0).astype(np.float32)
            safe = n.replace("/", "_")
            plot_weight_histograms({n: w}, out / f"hist_{safe}.png", centroids=cb, title=f"{n}: shared weights")
            lines.append(f"![{n}](hist_{safe}.png)\n")
            if w.ndim == 2 and w.shape[1] == 784 and n == weights[0][0]:
                plot_first_layer_mask(mask, out / "first_layer_mask.png",
                                      title=f"{n}: kept connections per input pixel (of {mask.shape[0]})")
                mask_lines = ["## First layer: kept connections per input pixel\n", "![mask](first_layer_mask.png)\n"]
        lines += mask_lines
    except ImportError as exc:
        lines.append(f"(no pictures: {exc})\n")
    md = out / "report.md"
    from .fileio import atomic_write

    atomic_write(md, lambda tmp: Path(tmp).write_text("\n".join(lines)))
    return md


def plot_sharing(
    module: Any,
    path: str | os.PathLike[str],
    *,
    before: Any = None,
    pruned: Any = None,
    title: str | None = None,
    bins: int = 200,
) -> None:
    """The paper's weight-distribution figure for one layer, as a PNG: the weights ``before`` pruning, after pruning
    and retraining (``pruned``), and the layer's current shared weights with its centroids marked (red lines).

    Pruned (zero) weights are left out of the histograms. ``before``/``pruned`` are weight arrays (or tensors);
    either may be omitted. Needs matplotlib.
    """
    from .techniques.share import get_codebook

    centroids, _, _ = get_codebook(module)
    stages: dict[str, np.ndarray] = {}
    for label, w in (("before pruning", before), ("after pruning + retraining", pruned)):
        if w is not None:
            stages[label] = w.detach().cpu().numpy() if hasattr(w, "detach") else np.asarray(w)
    stages[f"after sharing (k={centroids.size}, red: centroids)"] = module.weight.detach().cpu().numpy()
    plot_weight_histograms(stages, path, centroids=centroids, bins=bins, title=title)
