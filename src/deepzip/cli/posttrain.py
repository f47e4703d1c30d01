"""CLI: ``deepzip ptq`` -- post-training compression of a pretrained model under a quality bound (no labels)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ._common import _SOURCES, _load_model, _read_args, args, command, existing_file


def _cfg_ptq(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help=f"the model: {_SOURCES}")
    src.add_argument("--sentence-transformer", metavar="DIR", help="a sentence-transformers model folder")
    p.add_argument("--model", default=None, help="architecture of --checkpoint when it names none (e.g. lenet300)")
    p.add_argument("--calibration", required=True,
                   help="inputs: a text file of sentences (one per line) for a sentence-transformer; a .npy array "
                        "(first axis = samples) for a checkpoint; or module:function returning batches")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="allowed 1 - mean cosine of the outputs against the original on the calibration inputs")
    p.add_argument("--distill-seconds", type=float, default=0.0,
                   help="then fine-tune to the original's outputs for this many CPU seconds (distillation, no labels)")
    p.add_argument("--distill-data", default=None, help="unlabeled inputs for distillation (default: calibration)")
    p.add_argument("--relax", type=float, default=1.0,
                   help="with distillation: allocate for RELAX * max-drop, then distil back (default 1)")
    p.add_argument("--latent-lr", type=float, default=0.0,
                   help="with distillation: > 0 also moves the weights between codebook values (straight-through "
                        "rounding at this Adam rate); 0 (default) tunes codebooks, biases and norms only")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="cosine",
                   help="with distillation: the learning rate, constant or decaying along a half cosine of the "
                        "CPU budget (default cosine)")
    p.add_argument("--no-gptq", action="store_true",
                   help="round every weight to its nearest level (no GPTQ error compensation; faster, larger)")
    p.add_argument("--batch", type=int, default=32, help="calibration batch size")
    p.add_argument("-o", "--output", required=True, help="the .dz file to write")
    p.add_argument("--json", default=None, help="also write the per-tensor choices as JSON here")
    p.add_argument("--progress", action="store_true", help="progress bars while sensitivities are measured")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    _read_args(p)


def _callable_batches(spec: str) -> list[Any]:
    import importlib

    from ..techniques.posttrain import BoundError

    mod, _, fn = spec.partition(":")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise BoundError(f"--calibration {spec}: cannot import it ({e})") from None
    return list(f())


def _load_inputs(spec: str, batch: int, tokenizer: Any = None) -> list[Any]:
    """Batches of ``batch`` inputs from ``spec``: ``module:function``, a text file of sentences (with a
    sentence-transformer's ``tokenizer``), or a ``.npy`` array (first axis = samples)."""
    import numpy as np
    import torch

    from ..techniques.posttrain import BoundError, text_batches

    if ":" in spec and not Path(spec).exists():
        return _callable_batches(spec)
    path = existing_file(spec)
    if tokenizer is not None:
        from ..apps.sentence import read_sentences

        sents = read_sentences(path)
        if not sents:
            raise BoundError(f"{path}: no sentences (the calibration set is empty)")
        return text_batches(tokenizer, sents, batch, max_length=256)  # similar lengths: less padding
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise BoundError(f"{path}: not a .npy array ({e})") from None
    if x.ndim < 1 or x.shape[0] == 0:
        raise BoundError(f"{path}: no samples (the calibration set is empty)")
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    return [t[i:i + batch] for i in range(0, len(t), batch)]


@command("ptq", "post-training compression to a quality bound: sensitivities, per-tensor bits, codebooks, .dz")
@args(_cfg_ptq)
def cmd_ptq(a: argparse.Namespace) -> int:
    import copy
    import dataclasses

    import torch

    from ..io.serialize import save_posttrained
    from ..techniques.posttrain import (
        BoundError,
        PostTrainConfig,
        compress_to_bound_,
        distill_,
        measure_drop,
    )

    cfg = PostTrainConfig(max_drop=a.max_drop, gptq=not a.no_gptq)  # a bad bound fails before anything is loaded
    if a.latent_lr < 0:
        raise BoundError(f"--latent-lr {a.latent_lr}: expected >= 0")
    if a.relax < 1:
        raise BoundError(f"--relax {a.relax}: expected >= 1")
    if a.batch < 1:
        raise BoundError(f"--batch {a.batch}: expected >= 1")
    out = Path(a.output)
    if out.is_dir():
        raise IsADirectoryError(f"{out}: is a directory")
    forward: Any = None
    arch = None
    if a.sentence_transformer:
        from ..apps.sentence import embed, load_sentence_transformer

        model: Any = load_sentence_transformer(a.sentence_transformer)
        forward = embed
    else:
        from ..models import model_name

        model, _ = _load_model(a.checkpoint, a.model, a.trust_code, a.max_bytes, images=False)
        model.eval()
        arch = model_name(model)
    tokenizer = model.tokenizer if a.sentence_transformer else None
    cal = _load_inputs(a.calibration, a.batch, tokenizer)
    teacher = copy.deepcopy(model) if a.distill_seconds > 0 else None
    t0 = time.time()
    alloc = dataclasses.replace(cfg, max_drop=cfg.max_drop * (a.relax if teacher else 1.0))
    res = compress_to_bound_(model, cal, alloc,
                             forward=forward, progress=a.progress, log=print)
    if teacher is not None:
        dis = _load_inputs(a.distill_data, a.batch, tokenizer) if a.distill_data else cal
        losses = distill_(model, teacher, res, dis, forward=forward, seconds=a.distill_seconds, progress=a.progress,
                          latent_lr=a.latent_lr, schedule=a.schedule)
        res.drop = measure_drop(model, teacher, cal, forward)
        print(f"distillation: {len(losses)} steps, calibration drop now {res.drop:.4g}")
        if res.drop > cfg.max_drop:
            raise BoundError(f"max_drop={cfg.max_drop:g} not met after distillation: best reached {res.drop:.4g} "
                             f"at {res.predicted_bytes / 1e6:.2f} MB of weights; use a smaller --relax or more "
                             "--distill-seconds")
    # a model folder's files go into the .dz too, so that deepzip.load / decompress give the model / folder back
    folder = a.sentence_transformer or (a.checkpoint if a.checkpoint and Path(a.checkpoint).is_dir() else None)
    nbytes = save_posttrained(model, res, out, architecture=arch, source=folder,
                              config={"posttrain": {"max_drop": a.max_drop, "drop": res.drop}})
    total = sum(v.numel() for v in model.state_dict().values() if torch.is_floating_point(v))
    print(f"wrote {out}: {nbytes:,} bytes, {4 * total / nbytes:.2f}x smaller than fp32; calibration drop "
          f"{res.drop:.4g} (mean cosine {1 - res.drop:.5f}) in {time.time() - t0:.0f} s")
    if a.json:
        from ..fileio import atomic_write

        doc = json.dumps({"bytes": nbytes, "drop": res.drop, "tensors": res.table()}, indent=1)
        atomic_write(a.json, lambda tmp: Path(tmp).write_text(doc))
    return 0
