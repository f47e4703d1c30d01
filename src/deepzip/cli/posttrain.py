"""CLI: ``deepzip ptq`` -- post-training compression of a pretrained model under a quality bound (no labels)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ._common import _SOURCES, _load_model, _read_args, _size, args, command, existing_file


def _cfg_ptq(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help=f"the model: {_SOURCES}")
    src.add_argument("--sentence-transformer", metavar="DIR", help="a sentence-transformers model folder")
    p.add_argument("--model", default=None,
                   help="architecture of --checkpoint when it names none: a registered name (e.g. lenet300) or your "
                        "own, path/file.py:factory or package.module:factory (a function returning the nn.Module)")
    p.add_argument("--calibration", required=True,
                   help="inputs: a .npy array (first axis = samples); a UTF-8 text file, one input per line, for a "
                        "model with a tokenizer (a sentence-transformers or Hugging Face folder); or module:function "
                        "(or file.py:function) returning batches")
    p.add_argument("--output-key", default=None, metavar="NAME",
                   help="which output is compared: a dict's entry or an output object's attribute NAME, or a "
                        "tuple's element (0, 1, ...); default: a tensor as returned, a tuple's first element, else "
                        "logits, else last_hidden_state, else the only tensor")
    p.add_argument("--max-input-bytes", type=_size, default=None, metavar="SIZE",
                   help="refuse a calibration file larger than SIZE (a .npy array's values as float32), checked "
                        "before it is read (default 1G)")
    p.add_argument("--max-inputs", type=int, default=None, metavar="N",
                   help="refuse more than N calibration inputs (the run's time grows with them; default 16384)")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="allowed 1 - mean cosine of the outputs against the original, on held-out calibration "
                        "inputs (see --holdout)")
    p.add_argument("--holdout", type=float, default=0.25,
                   help="fraction of the calibration inputs held out: nothing is fitted on them, and --max-drop is "
                        "met on them, an estimate of the drop on new inputs of their kind (default 0.25; 0: fit and "
                        "check on the same inputs, which understates the drop)")
    p.add_argument("--distill-seconds", type=float, default=0.0,
                   help="then fine-tune to the original's outputs for this many CPU seconds (distillation, no labels)")
    p.add_argument("--distill-data", default=None,
                   help="unlabeled inputs for distillation (default: the calibration inputs not held out; sentences "
                        "of this file that are held out are left out of it)")
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
    p.add_argument("--json", default=None,
                   help="also write the drops (calibration and held-out) and the per-tensor choices as JSON here")
    p.add_argument("--progress", action="store_true", help="progress bars while sensitivities are measured")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    _read_args(p)


def _load_inputs(spec: str, batch: int, tokenizer: Any = None, *, max_bytes: int | None = None,
                 max_inputs: int | None = None) -> list[Any]:
    """Batches of ``batch`` inputs from ``spec`` (:func:`deepzip.techniques.posttrain.load_inputs`, with its
    default limits where none is given)."""
    from ..techniques.posttrain import MAX_INPUT_BYTES, MAX_INPUTS, load_inputs

    return load_inputs(spec, batch, tokenizer, max_bytes=max_bytes or MAX_INPUT_BYTES,
                       max_inputs=max_inputs or MAX_INPUTS)


def _ptq_model(a: argparse.Namespace) -> tuple[Any, Any, str | None, Any, str | None]:
    """``(model, call, output key, tokenizer, architecture)`` of ``ptq``'s source: a sentence-transformers folder
    (called on the tokenized dict, compared on its ``sentence_embedding``), or any checkpoint the one reader takes,
    into ``--model`` where given (a Hugging Face folder brings its tokenizer, when it has one)."""
    from ..techniques.posttrain import call_model

    if a.sentence_transformer:
        from ..apps.sentence import load_sentence_transformer

        st = load_sentence_transformer(a.sentence_transformer)
        return st, lambda m, b: m(dict(b)), a.output_key or "sentence_embedding", st.tokenizer, None
    from ..io.reader import checkpoint_kind, hf_tokenizer
    from ..models import model_name

    model, _ = _load_model(a.checkpoint, a.model, a.trust_code, a.max_bytes, images=False)
    model.eval()
    tokenizer = hf_tokenizer(a.checkpoint) if checkpoint_kind(a.checkpoint) == "hf" else None
    return model, call_model, a.output_key, tokenizer, model_name(model)


def _split_calibration(a: argparse.Namespace, tokenizer: Any,
                       limits: dict[str, Any] | None = None) -> tuple[list[Any], list[Any], set[str]]:
    """The calibration inputs as (batches to fit on, held-out batches, held-out sentences): text is split by
    sentence before batching (so a distillation file can be cleared of the held-out ones), other inputs by sample
    (:func:`deepzip.techniques.posttrain.split_heldout`). ``--holdout 0``: no held-out part."""
    from ..techniques.posttrain import BoundError, heldout_mask, split_heldout, text_batches

    limits = limits or {"max_bytes": None, "max_inputs": None}
    if not 0 <= a.holdout < 1:
        raise BoundError(f"--holdout {a.holdout:g}: expected a fraction in [0, 1)")
    text = tokenizer is not None and not (":" in a.calibration and not Path(a.calibration).exists())
    if not text or not a.holdout:
        cal = _load_inputs(a.calibration, a.batch, tokenizer, **limits)
        return (*split_heldout(cal, a.holdout), set()) if a.holdout else (cal, [], set())
    from ..techniques.posttrain import MAX_INPUT_BYTES, MAX_INPUTS, read_lines

    sents = read_lines(existing_file(a.calibration), max_bytes=limits["max_bytes"] or MAX_INPUT_BYTES,
                       max_inputs=limits["max_inputs"] or MAX_INPUTS)
    mask = heldout_mask(len(sents), a.holdout)
    fit = [x for x, m in zip(sents, mask) if not m]
    held = [x for x, m in zip(sents, mask) if m]
    return (text_batches(tokenizer, fit, a.batch, max_length=256), text_batches(tokenizer, held, a.batch,
                                                                                   max_length=256), set(held))


def _distill_inputs(a: argparse.Namespace, tokenizer: Any, fit: list[Any], held: set[str],
                    limits: dict[str, Any] | None = None) -> list[Any]:
    """What distillation trains on: ``--distill-data`` without the held-out sentences, or the inputs fitted on."""
    if not a.distill_data:
        return fit
    limits = limits or {"max_bytes": None, "max_inputs": None}
    if tokenizer is None or (":" in a.distill_data and not Path(a.distill_data).exists()):
        return _load_inputs(a.distill_data, a.batch, tokenizer, **limits)
    from ..techniques.posttrain import MAX_INPUT_BYTES, MAX_INPUTS, BoundError, read_lines, text_batches

    lines = read_lines(existing_file(a.distill_data), max_bytes=limits["max_bytes"] or MAX_INPUT_BYTES,
                       max_inputs=limits["max_inputs"] or MAX_INPUTS)
    sents = [x for x in lines if x not in held]
    if not sents:
        raise BoundError(f"{a.distill_data}: no sentences that are not held out (the distillation set is empty)")
    return text_batches(tokenizer, sents, a.batch, max_length=256)


def _report(res: Any, max_drop: float, holdout: float, n_fit: int) -> list[str]:
    """Lines on the drops: on the inputs fitted on, on the held-out ones, and whether there are enough of those."""
    import math

    from ..techniques.posttrain._types import HELDOUT_REL_SE

    est = res.heldout
    if est is None:
        return [f"calibration drop {res.drop:.4g} (mean cosine {1 - res.drop:.5f}) on the {n_fit} inputs fitted on",
                "warning: --holdout 0: the drop was measured on the inputs it was fitted on; on new inputs of the "
                "same kind it is larger (hold some out to check the bound on them)"]
    lines = [f"calibration drop {res.drop:.4g} on the {n_fit} inputs fitted on; held-out drop {est.drop:.4g} "
             f"+- {est.se:.2g} (mean cosine {1 - est.drop:.5f}) on {est.n} inputs not fitted on: --max-drop "
             f"{max_drop:g} is met on these"]
    if not est.trusted(max_drop):
        need = est.inputs_needed(max_drop)
        lines.append(f"warning: too few calibration inputs for an honest estimate: {est.n} held-out inputs give a "
                     f"standard error of {est.se:.2g}, more than {HELDOUT_REL_SE:.0%} of --max-drop; about "
                     f"{need} held-out inputs are needed, i.e. about {math.ceil(need / holdout)} calibration inputs "
                     f"at --holdout {holdout:g}")
    return lines


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
        describe_output,
        distill_,
        estimate_drop,
        measure_drop,
        model_forward,
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
    if a.max_inputs is not None and a.max_inputs < 1:
        raise BoundError(f"--max-inputs {a.max_inputs}: expected >= 1")
    model, call, key, tokenizer, arch = _ptq_model(a)
    limits = {"max_bytes": a.max_input_bytes, "max_inputs": a.max_inputs}
    cal, held, held_sents = _split_calibration(a, tokenizer, limits)
    print(describe_output(model, cal[0], key, call))  # a model whose outputs are not tensors stops here
    forward = model_forward(key, call)
    n_fit = sum(_count(b) for b in cal)
    teacher = copy.deepcopy(model) if a.distill_seconds > 0 else None
    t0 = time.time()
    alloc = dataclasses.replace(cfg, max_drop=cfg.max_drop * (a.relax if teacher else 1.0))
    res = compress_to_bound_(model, cal, alloc, forward=forward, progress=a.progress, log=print,
                             heldout=held or None)
    if teacher is not None:
        dis = _distill_inputs(a, tokenizer, cal, held_sents, limits)  # never the held-out inputs
        losses = distill_(model, teacher, res, dis, forward=forward, seconds=a.distill_seconds, progress=a.progress,
                          latent_lr=a.latent_lr, schedule=a.schedule)
        res.drop = measure_drop(model, teacher, cal, forward)
        res.heldout = estimate_drop(model, teacher, held, forward) if held else None
        checked = res.heldout.drop if res.heldout else res.drop
        print(f"distillation: {len(losses)} steps, calibration drop now {res.drop:.4g}"
              + (f", held-out drop {checked:.4g}" if res.heldout else ""))
        if checked > cfg.max_drop:
            raise BoundError(f"max_drop={cfg.max_drop:g} not met after distillation: best reached {checked:.4g} "
                             f"{'on the held-out inputs ' if res.heldout else ''}at "
                             f"{res.predicted_bytes / 1e6:.2f} MB of weights; use a smaller --relax or more "
                             "--distill-seconds")
    est = res.heldout
    drops = {"max_drop": a.max_drop, "drop": est.drop if est else res.drop, "calibration_drop": res.drop,
             "heldout": None if est is None else {"drop": est.drop, "se": est.se, "n": est.n,
                                                  "trusted": est.trusted(a.max_drop),
                                                  "inputs_needed": est.inputs_needed(a.max_drop)}}
    # a model folder's files go into the .dz too, so that deepzip.load / decompress give the model / folder back
    folder = a.sentence_transformer or (a.checkpoint if a.checkpoint and Path(a.checkpoint).is_dir() else None)
    nbytes = save_posttrained(model, res, out, architecture=arch, source=folder, config={"posttrain": drops})
    total = sum(v.numel() for v in model.state_dict().values() if torch.is_floating_point(v))
    print(f"wrote {out}: {nbytes:,} bytes, {4 * total / nbytes:.2f}x smaller than fp32, in "
          f"{time.time() - t0:.0f} s")
    for line in _report(res, a.max_drop, a.holdout, n_fit):
        print(line)
    if a.json:
        from ..fileio import atomic_write

        doc = json.dumps({"bytes": nbytes, **drops, "tensors": res.table()}, indent=1)
        atomic_write(a.json, lambda tmp: Path(tmp).write_text(doc))
    return 0


def _count(batch: Any) -> int:
    """Inputs in one batch (1 for a batch whose inputs cannot be counted)."""
    from ..techniques.posttrain._calibration import _size

    return _size(batch) or 1
