"""The papers' figures that tables print beside ours: data only, no imports (the CLI's ``inspect`` reads it
without loading torch)."""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER"]

#: Deep Compression (Han et al. 2016), Tables 1-3: per-layer kept % and bits after Huffman.
PAPER: dict[str, dict[str, Any]] = {
    "lenet300": {
        "kept_pct": {"fc1": 8.0, "fc2": 9.0, "fc3": 26.0}, "total_kept_pct": 8.0,
        "error_before_pct": 1.64, "error_after_pct": 1.58, "ratio": 40, "ratio_stages": (12, 32, 40),
        "bytes_before": 1070_000, "bytes_after": 27_000,
        "bits": {"fc1": 6, "fc2": 6, "fc3": 6}, "gap_bits": 5,
        "huffman_bits_weight": {"fc1": 4.4, "fc2": 4.4, "fc3": 4.4},
        "huffman_bits_index": {"fc1": 3.7, "fc2": 4.3, "fc3": 3.2},
        "size_pct": {"fc1": 2.32, "fc2": 3.04, "fc3": 12.70},
    },
    "lenet5": {
        "kept_pct": {"conv1": 66.0, "conv2": 12.0, "fc1": 8.0, "fc2": 19.0}, "total_kept_pct": 8.0,
        "error_before_pct": 0.80, "error_after_pct": 0.74, "ratio": 39, "ratio_stages": (12, 33, 39),
        "bytes_before": 1720_000, "bytes_after": 44_000,
        "bits": {"conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5},
        "huffman_bits_weight": {"conv1": 7.2, "conv2": 7.2, "fc1": 4.5, "fc2": 5.2},
        "huffman_bits_index": {"conv1": 1.5, "conv2": 3.9, "fc1": 4.5, "fc2": 3.7},
        "size_pct": {"conv1": 78.5, "conv2": 6.0, "fc1": 2.7, "fc2": 6.9},
    },
}
