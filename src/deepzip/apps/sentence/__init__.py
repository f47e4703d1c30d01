"""sentence-transformers models for post-training compression (``deepzip ptq --sentence-transformer DIR``):
loading a model folder offline, its forward pass to the sentence embedding, and calibration text files.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "cal.txt"
    >>> _ = p.write_text("  one sentence\\n\\nanother one \\n")
    >>> read_sentences(p)
    ['one sentence', 'another one']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import InputError

__all__ = ["embed", "load_sentence_transformer", "read_sentences"]


def read_sentences(path: str | os.PathLike[str]) -> list[str]:
    """The non-empty lines of a text file, stripped (undecodable bytes replaced)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return [s.strip() for s in text.splitlines() if s.strip()]


def load_sentence_transformer(folder: str | os.PathLike[str]) -> Any:
    """A sentence-transformers model from a local folder, on the CPU, in eval mode, never reaching a hub.

    Raises:
        InputError: the folder is not a sentence-transformers folder (no ``modules.json``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(folder)
    if not (folder / "modules.json").is_file():
        raise InputError(f"{folder}: not a sentence-transformers folder (no modules.json)")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").eval()


def embed(model: Any, batch: Any) -> Any:
    """The forward pass post-training compression compares: a tokenized batch -> sentence embeddings (B, D)."""
    return model(dict(batch))["sentence_embedding"]
