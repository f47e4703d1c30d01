"""CLI: ``deepzip decompose`` -- low-rank factorization of a checkpoint's layers (Tucker-2, SVD, tensor train)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._common import _common, _load_model, _progress, _read_args, args, command, print_table

DECOMPOSE_COLUMNS = [
    ("layer", "layer", ""), ("kind", "kind", ""), ("ranks", "ranks", ""), ("params_before", "params", "d"),
    ("params_after", "params after", "d"), ("macs_before", "MACs", "d"), ("macs_after", "MACs after", "d"),
    ("rel_error", "rel. error", ".4f"), ("skipped", "skipped", ""),
]


def parse_rank(text: str) -> tuple[str, float, dict[str, Any] | None]:
    """``vbmf`` | ``energy=0.9`` | ``fc1=32,conv2=16x8`` (a conv's ``R_outxR_in``, or one number for both) ->
    (method, energy, explicit ranks or None).

    Example:
        >>> parse_rank("energy=0.8"), parse_rank("fc1=32,conv2=16x8")
        (('energy', 0.8, None), ('vbmf', 0.9, {'fc1': 32, 'conv2': (16, 8)}))
    """
    from ..errors import LowRankError

    text = text.strip()
    if text == "vbmf":
        return "vbmf", 0.9, None
    if text.startswith("energy="):
        try:
            return "energy", float(text[7:]), None
        except ValueError:
            raise LowRankError(f"--rank {text!r}: energy must be a number in (0, 1]") from None
    ranks: dict[str, Any] = {}
    for part in text.split(","):
        key, eq, val = part.partition("=")
        try:
            if not eq or not key.strip():
                raise ValueError
            nums = [int(v) for v in val.lower().split("x")]
            if len(nums) not in (1, 2):
                raise ValueError
        except ValueError:
            raise LowRankError(f"--rank {text!r}: expected vbmf, energy=F, or layer=R[,layer=RoutxRin...]") from None
        ranks[key.strip()] = nums[0] if len(nums) == 1 else tuple(nums)
    return "vbmf", 0.9, ranks


def tt_modes(n: int, d: int) -> tuple[int, ...]:
    """Split ``n`` into ``d`` factors as even as its prime factors allow (largest first), for TT modes.

    Example:
        >>> tt_modes(784, 4), tt_modes(300, 4), tt_modes(10, 3)
        ((7, 7, 4, 4), (5, 5, 4, 3), (5, 2, 1))
    """
    primes, k, m = [], 2, n
    while k * k <= m:
        while m % k == 0:
            primes.append(k)
            m //= k
        k += 1
    if m > 1:
        primes.append(m)
    modes = [1] * d
    for p in sorted(primes, reverse=True):  # greedy: the biggest prime onto the smallest mode
        modes[modes.index(min(modes))] *= p
    return tuple(sorted(modes, reverse=True))


def _parse_modes(text: str | None) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    from ..errors import LowRankError

    out: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, _, val = part.partition("=")
        ins, _, outs = val.partition(":")
        try:
            out[key.strip()] = (tuple(int(v) for v in ins.split("x")), tuple(int(v) for v in outs.split("x")))
        except ValueError:
            raise LowRankError(f"--modes {part!r}: expected layer=4x7x4x7:3x4x5x5 (in modes : out modes)") from None
    return out


def _cfg_decompose(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="the model: a checkpoint (deepzip's, any safetensors, a torch state_dict file), "
                                      "a .dz file or a Hugging Face folder")
    p.add_argument("-o", "--output", required=True,
                   help="the decomposed model: a .dz file (a .safetensors name writes a checkpoint)")
    p.add_argument("--method", choices=["tucker2", "svd", "tt"], default="tucker2",
                   help="tucker2: conv layers (default); svd: linear layers; tt: linear layers as tensor trains")
    p.add_argument("--rank", default="vbmf",
                   help="vbmf (EVBMF, default), energy=0.9 (kept energy), or per layer fc1=32,conv2=16x8 "
                        "(tt: the maximal TT rank per layer)")
    p.add_argument("--layers", default=None, help="only these layers (comma-separated dotted names)")
    p.add_argument("--modes", default=None, help="tt: per layer in:out modes, fc1=4x7x4x7:3x4x5x5 "
                                                 "(default: even factors, --tt-cores of them)")
    p.add_argument("--tt-cores", type=int, default=4, help="tt: cores when modes are chosen automatically")
    p.add_argument("--keep-larger", action="store_true", help="factor a layer even when that adds parameters")
    p.add_argument("--input-shape", default="1,28,28", help="one input's shape, for counting MACs (C,H,W)")
    p.add_argument("--model", default=None, help="architecture when the file names none")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write the per-layer rows as JSON (to stdout without PATH, instead of the table)")
    _read_args(p)
    _common(p)


@command("decompose", "low-rank factorization of a model's layers: Tucker-2, SVD or tensor train")
@args(_cfg_decompose)
def cmd_decompose(a: argparse.Namespace) -> int:
    import torch

    from ..errors import LowRankError
    from ..io.checkpoint import save_checkpoint
    from ..io.serialize import save as dz_save
    from ..techniques.lowrank import count_macs, decompose_, lowrank_table, tt_linear_

    src = Path(a.checkpoint)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    out = Path(a.output)
    if out.exists() and out.resolve() == src.resolve():
        raise LowRankError(f"-o {out}: the output would overwrite the input; write to another file")
    try:
        shape = tuple(int(v) for v in a.input_shape.split(","))
    except ValueError:
        raise LowRankError(f"--input-shape {a.input_shape!r}: expected C,H,W integers") from None
    model, _ = _load_model(a.checkpoint, a.model, a.trust_code, a.max_bytes, images=False)
    x = torch.zeros(1, *shape)
    try:
        before = count_macs(model, x)
    except RuntimeError as exc:
        raise LowRankError(f"--input-shape {a.input_shape}: the model does not accept it "
                           f"({str(exc).splitlines()[0]})") from None
    params_before = sum(p.numel() for p in model.parameters())
    method, energy, ranks = parse_rank(a.rank)
    layers = [s.strip() for s in a.layers.split(",")] if a.layers else None
    n_before = len(lowrank_table(model))
    if a.method == "tt":
        if ranks is None:
            raise LowRankError(f"--method tt --rank {a.rank}: TT ranks are not chosen by VBMF or energy; give the "
                               "maximal TT rank per layer, e.g. --rank fc1=8")
        modes = _parse_modes(a.modes)
        mods = dict(model.named_modules())
        spec = {}
        for name, r in ranks.items():
            if layers is not None and name not in layers:
                continue
            m = mods.get(name)
            if not isinstance(m, torch.nn.Linear):
                raise LowRankError(f"{name}: not a Linear layer of the model (tt factors linear layers)")
            if isinstance(r, tuple):
                raise LowRankError(f"{name}: --rank {name}={'x'.join(map(str, r))}, expected one maximal TT rank")
            ins, outs = modes.get(name) or (tt_modes(m.in_features, a.tt_cores), tt_modes(m.out_features,
                                                                                        a.tt_cores))
            spec[name] = (ins, outs, r)
        unknown = sorted(set(modes) - set(spec))
        if unknown:
            raise LowRankError(f"--modes {unknown[0]}: no --rank given for that layer")
        tt_linear_(model, spec, skip_larger=not a.keep_larger, progress=_progress(a))
    else:
        from ..techniques.lowrank import convs_only

        def linears(m: torch.nn.Module, fqn: str) -> bool:
            return isinstance(m, torch.nn.Linear)

        want = torch.nn.Conv2d if a.method == "tucker2" else torch.nn.Linear
        if ranks is not None:
            mods = dict(model.named_modules())
            for name in list(ranks):
                if a.method == "tucker2" and isinstance(ranks[name], int):
                    ranks[name] = (ranks[name], ranks[name])  # one number: R_out = R_in
                if name in mods and not isinstance(mods[name], want):
                    raise LowRankError(f"{name}: a {type(mods[name]).__name__}, not a {want.__name__}; --method "
                                       f"{a.method} factors {want.__name__} layers")
        decompose_(model, method, energy=energy, ranks=ranks, layers=layers,
                   filter_fn=convs_only if a.method == "tucker2" else linears,
                   skip_larger=not a.keep_larger, progress=_progress(a))
    rows = lowrank_table(model)[n_before:]
    after = count_macs(model, x)
    for r in rows:
        name = r["layer"]
        r["macs_before"] = sum(v for k, v in before.items() if k == name or k.startswith(name + "."))
        r["macs_after"] = (r["macs_before"] if r["skipped"] else
                           sum(v for k, v in after.items() if k == name or k.startswith(name + ".")))
        r["ranks"] = "x".join(map(str, r["ranks"])) if isinstance(r["ranks"], (tuple, list)) else r["ranks"]
        r["skipped"] = r["skipped"] or ""
    if out.suffix == ".safetensors":
        save_checkpoint(model, out)
        nbytes = out.stat().st_size
    else:
        nbytes = dz_save(model, out)
    total = {"params_before": params_before,
             "params_after": sum(p.numel() for p in model.parameters()),
             "macs_before": sum(before.values()), "macs_after": sum(after.values())}
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


__all__ = ["cmd_decompose", "parse_rank", "tt_modes"]
