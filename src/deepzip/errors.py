"""Exceptions shared across deepzip."""

from __future__ import annotations

__all__ = ["DeepzipFormatError"]


class DeepzipFormatError(ValueError):
    """A ``.dz`` file (or one of its sections) is truncated, corrupted, foreign or from a newer format.

    The message names the part of the file at fault, e.g. ``"fc1.weight/indices: checksum mismatch"``.
    """
