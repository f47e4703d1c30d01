"""Foreign checkpoints on the command line: ``deepzip compress SOURCE`` and ``deepzip decompress`` back.

``SOURCE`` is a safetensors file, a PyTorch state_dict file or a Hugging Face model folder (see
:mod:`deepzip.io.foreign`); the ``compress`` and ``decompress`` commands of :mod:`.dz` hand over to these
functions when given one, so there are no new command names to learn.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The arguments ``deepzip compress`` takes for a foreign checkpoint."""
    p.add_argument("source", nargs="?", default=None,
                   help="a checkpoint to compress instead of training: a .safetensors file, a state_dict "
                        "(.bin/.pt) file or a Hugging Face model folder")
    p.add_argument("--share-bits", type=int, default=None,
                   help="with SOURCE: weight-share every weight matrix with 2**BITS values (lossy); "
                        "default lossless")


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def compress_source(a: argparse.Namespace) -> int:
    """``deepzip compress SOURCE [-o OUT.dz] [--share-bits B]``."""
    from ..io.foreign import compress_checkpoint

    src = Path(a.source)
    out = Path(a.output) if a.output else Path(f"{src.name.removesuffix('.safetensors')}.dz")
    if a.share_bits is not None and not 1 <= a.share_bits <= 16:
        raise ValueError(f"--share-bits {a.share_bits}: expected 1..16")
    s = compress_checkpoint(src, out, share_bits=a.share_bits)
    if getattr(a, "json", None) == "-":  # the summary as JSON only, as `deepzip compress --json` prints
        import json

        print(json.dumps(s))
        return 0
    kinds: dict[str, int] = {}
    for r in s["tensors"]:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    how = "lossless" if a.share_bits is None else f"weight-shared, {a.share_bits} bits"
    print(f"{src} ({s['kind']}, {len(s['tensors'])} tensors, {_fmt(s['params'])} values, "
          f"{_fmt(s['source_bytes'])} bytes of weights) -> {out}: {_fmt(s['bytes'])} bytes, "
          f"{s['source_bytes'] / s['bytes']:.2f}x smaller ({how}); encodings "
          + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + f"; {s['seconds']:.1f} s")
    if getattr(a, "json", None):
        import json

        if a.json == "-":
            print(json.dumps(s))
            return 0
        Path(a.json).write_text(json.dumps(s, indent=1))
    return 0


def is_checkpoint_dz(path: Path) -> bool:
    """Whether a ``.dz`` file was made from a checkpoint (so decompress gives that checkpoint back)."""
    from ..codec import DzReader

    try:
        # only the header is read here: no decode limit (a checkpoint larger than the 1 GiB default must still be
        # recognised as one; decompress_source applies --max-bytes)
        extra = DzReader(path, max_bytes=None).extra
    except Exception:  # a damaged file: let the usual path report it
        return False
    return isinstance(extra, dict) and isinstance(extra.get("checkpoint"), dict)


def decompress_source(path: Path, output: str, *, max_bytes: int | None) -> int:
    """``deepzip decompress FILE.dz -o OUT`` for a ``.dz`` made from a checkpoint (``--max-bytes`` bounds the total
    the tensors decode to)."""
    from ..io.foreign import decompress_checkpoint

    out = decompress_checkpoint(path, output, max_bytes=max_bytes)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else out.stat().st_size
    print(f"{path} -> {out}: {_fmt(size)} bytes")
    return 0
