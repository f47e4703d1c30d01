"""CLI: ``deepzip decompose`` -- low-rank factorization of a checkpoint's layers (Tucker-2, SVD, tensor train)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import _SOURCES, _load_model, _progress, _reader_args, args, command, print_table

DECOMPOSE_COLUMNS = [
    ("layer", "layer", ""), ("kind", "kind", ""), ("ranks", "ranks", ""), ("params_before", "params", "d"),
    ("params_after", "params after", "d"), ("macs_before", "MACs", "d"), ("macs_after", "MACs after", "d"),
    ("rel_error", "rel. error", ".4f"), ("skipped", "skipped", ""),
]


def _cfg_decompose(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=f"the model: {_SOURCES}")
    p.add_argument("-o", "--output", required=True,
                   help="the decomposed model: a .dz file (a .safetensors name writes a checkpoint)")
    p.add_argument("--factorization", "--method", dest="factorization", choices=["tucker2", "svd", "tt"],
                   default="tucker2", help="how to factor (--method: its old name): tucker2: conv layers (default); "
                   "svd: linear layers; tt: conv and linear layers as tensor trains (TTConv2d, TTLinear)")
    p.add_argument("--rank", default="vbmf",
                   help="the rank rule, vbmf (EVBMF, default) or energy=0.9 (kept energy), or per layer "
                        "fc1=32,conv2=16x8 (tt: the largest TT rank per layer)")
    p.add_argument("--layers", default=None, help="only these layers (comma-separated dotted names)")
    p.add_argument("--modes", default=None, help="tt: per layer in:out modes, fc1=4x7x4x7:3x4x5x5 (channel "
                   "modes for a conv, conv2=2x4x4:4x4x4; default: even factors, --tt-cores of them)")
    p.add_argument("--tt-cores", type=int, default=4, help="tt: cores when modes are chosen automatically")
    p.add_argument("--keep-larger", action="store_true", help="factor a layer even when that adds parameters")
    p.add_argument("--input-shape", default=None, help="one input's shape, for counting MACs (C,H,W; default "
                   "1,28,28; a text model: the number of tokens, default 8)")
    p.add_argument("--model", default=None, help="architecture when the file names none")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write the per-layer rows as JSON (to stdout without PATH, instead of the table)")
    _reader_args(p)


@command("decompose", "low-rank factorization of a model's layers: Tucker-2, SVD or tensor train")
@args(_cfg_decompose)
def cmd_decompose(a: argparse.Namespace) -> int:

    from ..errors import LowRankError
    from ..io.checkpoint import save_checkpoint
    from ..io.serialize import save as dz_save
    from ..techniques.lowrank import decompose_with_report, example_input

    src = Path(a.checkpoint)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    out = Path(a.output)
    if out.exists() and out.resolve() == src.resolve():
        raise LowRankError(f"-o {out}: the output would overwrite the input; write to another file")
    try:
        shape = None if a.input_shape is None else tuple(int(v) for v in a.input_shape.split(","))
    except ValueError:
        raise LowRankError(f"--input-shape {a.input_shape!r}: expected C,H,W integers") from None
    model, _ = _load_model(a.checkpoint, a.model, a.trust_code, a.max_bytes, images=False)
    report = decompose_with_report(
        model, example_input(model, shape), factorization=a.factorization, rank=a.rank,
        layers=[s.strip() for s in a.layers.split(",")] if a.layers else None, modes=a.modes,
        tt_cores=a.tt_cores, keep_larger=a.keep_larger, progress=_progress(a))
    if out.suffix == ".safetensors":
        save_checkpoint(model, out)
        nbytes = out.stat().st_size
    else:
        nbytes = dz_save(model, out)
    rows, total = report["layers"], report["total"]
    for r in rows:
        r["ranks"] = "x".join(map(str, r["ranks"])) if isinstance(r["ranks"], (tuple, list)) else r["ranks"]
        r["skipped"] = r["skipped"] or ""
    if a.json is not None:
        doc = json.dumps({"layers": rows, "total": total, "output": str(out), "bytes": nbytes}, default=str)
        if a.json == "-":
            print(doc)
            return 0
        from ..io.checkpoint import atomic_write

        atomic_write(a.json, lambda tmp: Path(tmp).write_text(doc + "\n"))
    print_table(rows, DECOMPOSE_COLUMNS)
    ratio = total["macs_before"] / max(total["macs_after"], 1)
    print(f"params {total['params_before']:,} -> {total['params_after']:,}, MACs {total['macs_before']:,} -> "
          f"{total['macs_after']:,} ({ratio:.2f}x fewer) -> {out} ({nbytes:,} bytes); fine-tune before use "
          "(deepzip compress with a decompose stage does)", file=sys.stdout)
    return 0


__all__ = ["cmd_decompose"]
