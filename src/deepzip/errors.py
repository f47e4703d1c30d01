"""Exceptions shared across deepzip: one root, :class:`DeepzipError`, with a subclass per kind of failure.

The CLI catches :class:`DeepzipError` (and the OS's file errors) and prints one line. Each subclass also derives from
the built-in exception it used to be (``ValueError`` / ``RuntimeError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "DataError", "DeepzipError", "DeepzipFormatError", "LowRankError", "UntrustedCodeError"]


class DeepzipError(Exception):
    """Root of every error deepzip raises on purpose: bad input, a bad file, data that cannot be had."""


class DeepzipFormatError(DeepzipError, ValueError):
    """A ``.dz`` file (or one of its sections) is truncated, corrupted, foreign or from a newer format.

    The message names the part of the file at fault, e.g. ``"fc1.weight/indices: checksum mismatch"``.
    """


class CheckpointError(DeepzipError, ValueError):
    """A checkpoint file is missing, foreign, corrupted, or does not fit the model."""


class DataError(DeepzipError, RuntimeError):
    """A data set could not be obtained or is not what it claims to be."""


class LowRankError(DeepzipError, ValueError):
    """Bad low-rank settings or structure: ranks that do not fit a layer, TT modes whose product is not the layer's
    size, a decomposed file loaded into a plain model. The message names the layer and both numbers."""


class UntrustedCodeError(DeepzipError, ValueError):
    """A file (or a name) asks deepzip to import and run code (``"package.module:factory"``) without ``trust_code``.

    Loading builds only deepzip's registered architectures unless the caller passes ``trust_code=True``
    (CLI: ``--trust-code``) or gives the model itself (``deepzip.load(path, model=MyNet())``).
    """
