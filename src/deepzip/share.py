"""Weight sharing (placeholder until the k-means module lands)."""
from __future__ import annotations

PACKED_KINDS: tuple[str, ...] = ()


def is_shared(module) -> bool:  # noqa: ANN001
    return False


def pack_layer(module):  # noqa: ANN001, ANN201
    return None


def unpack_layer_(module, kind, parts):  # noqa: ANN001, ANN201
    raise ValueError(f"unknown kind {kind}")
