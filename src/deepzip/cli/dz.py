"""CLI subcommands around the .dz file: compress (the whole pipeline), inspect, decompress, report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import _check_output, _common, _data, _progress, _read_args, args, command, existing_file, print_table
from .checkpoints import add_source_args, compress_source, decompress_source, is_checkpoint_dz

LAYER_COLUMNS = [
    ("tensor", "tensor", ""), ("weights", "weights", "d"), ("kept_pct", "kept %", ".1f"), ("k", "k", ""),
    ("bits_index_fixed", "bits/idx", ""), ("bits_index_huffman", "huff bits/idx", ".2f"),
    ("gap_width", "gap w", ""), ("bits_gap_huffman", "huff bits/gap", ".2f"), ("bytes", "bytes", "d"),
    ("ratio", "ratio", ".1f"),
]


# Float sums in torch's CPU kernels (matrix products, reductions) are split across threads, so their last bits, and
# through the scans' decisions the whole file, depend on the thread count: compress pins it (LeNets gain little
# from more threads, and nothing under load).
COMPRESS_THREADS = 1


def default_model_dir() -> Path:
    """Trained models reused by ``deepzip compress``: ``$DEEPZIP_MODELS`` or ``~/.cache/deepzip/models``."""
    from ..data import cache_dir

    return cache_dir("models", "DEEPZIP_MODELS")


def _sha(path: Path) -> str:
    from ..data import sha256_file

    return sha256_file(path)[:16]


# ---------------------------------------------------------------------------------------------------- compress
def _cfg_compress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="lenet300 (default), lenet5, or pkg.module:factory (your own code)")
    p.add_argument("--checkpoint", default=None, help="trained model to compress (default: train or reuse one)")
    p.add_argument("--config", default=None, help="PipelineConfig as JSON (see deepzip.pipeline)")
    p.add_argument("-o", "--output", default=None, help="the .dz file (default MODEL.dz)")
    p.add_argument("--distill", action="store_true", help="retrain with the uncompressed model as teacher")
    p.add_argument("--sparsifier", choices=("magnitude", "vd"), default=None,
                   help="how the prune stage finds the weights to remove: magnitude pruning with retraining "
                        "(default) or sparse variational dropout (vd: without --config, the model's VD recipe, "
                        "deepzip.apps.mnist.recipes.VD_RECIPES; with --config, its vd_* fields)")
    p.add_argument("--workdir", default=None, help="stage checkpoints, for resuming (default in the cache)")
    p.add_argument("--fresh", action="store_true", help="ignore stage checkpoints of an earlier run")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="the summary as JSON: printed on stdout instead of the table (--json), or also written to "
                        "PATH (--json PATH)")
    p.add_argument("--trust-code", dest="trust_code", action="store_true",
                   help="allow a --config file or --checkpoint that names a package.module:factory model")
    add_source_args(p)
    _common(p, threads=f"{COMPRESS_THREADS}, so that the same command writes the same file on any machine load and "
                       "core count; another N gives a file reproducible for that N")


@command("compress", "the Deep Compression pipeline: prune, share, Huffman-code into a .dz file")
@args(_cfg_compress)
def cmd_compress(a: argparse.Namespace) -> int:
    import dataclasses
    import shutil
    import sys

    if a.source:  # a checkpoint file or folder given: compress it as it is (see cli/checkpoints.py)
        return compress_source(a)

    from ..apps.mnist.pipeline import run_pipeline
    from ..apps.mnist.recipes import train_config
    from ..io.checkpoint import load_checkpoint, save_checkpoint
    from ..models import get_model
    from ..pipeline import PipelineConfig
    from ..train import evaluate, fit

    # with --json (no PATH) stdout carries only the JSON object; the progress sentences go to stderr
    def say(msg: str) -> None:
        print(msg, file=sys.stderr if a.json == "-" else sys.stdout)

    import torch

    torch.set_num_threads(a.threads or COMPRESS_THREADS)
    config = _load_config(a.config) if a.config else PipelineConfig()
    if a.model:
        config.model = a.model
    if a.distill:
        config.distill = True
    if a.sparsifier == "vd" and not a.config:  # the model's VD recipe (benchmarks/vd_lenet.py's settings)
        from ..apps.mnist.recipes import vd_recipe

        config = dataclasses.replace(config, **vd_recipe(config.model if isinstance(config.model, str) else ""))
    elif a.sparsifier:
        config.sparsifier = a.sparsifier
    name = config.model
    if not isinstance(name, str):
        raise ValueError(f"config.model: {name!r}, expected a model name")
    # a --model typed by the user is trusted; one read from a --config file needs --trust-code
    model = get_model(name, seed=a.seed, trust_code=bool(a.model) or a.trust_code)  # fails early on an unknown model
    config.validate(model)
    out = Path(a.output or f"{name.replace(':', '_').replace('.', '_')}.dz")
    _check_output(str(out), a.checkpoint, a.config)  # before minutes of work, not at the final write
    if a.json not in (None, "-"):
        _check_output(a.json, a.checkpoint, a.config, str(out), what="--json")
    if a.checkpoint:  # a bad checkpoint fails before any data is fetched
        ckpt = Path(a.checkpoint)
        model, _ = load_checkpoint(ckpt, model)
    train, test = _data(a, label_with=model if a.checkpoint else None)
    if not a.checkpoint:
        from ..apps.mnist.recipes import recipe_tag

        ckpt = default_model_dir() / f"{name}-{recipe_tag(name)}-seed{a.seed}.safetensors"
        if ckpt.exists():
            model, _ = load_checkpoint(ckpt, model)
            say(f"using the trained {name} cached at {ckpt}")
        else:
            cfg = train_config(name)
            cfg.progress, cfg.seed = _progress(a), a.seed
            say(f"training {name} on MNIST ({cfg.epochs} epochs; cached at {ckpt} for next time)")
            fit(model, train, cfg, desc=f"train {name}")
            save_checkpoint(model, ckpt, meta={"test_error_pct": evaluate(model, test).error_pct})
    source = _sha(ckpt)
    work = Path(a.workdir) if a.workdir else default_model_dir().parent / "runs" / f"{name.replace(':', '_')}-{source}"
    if a.fresh and work.exists():
        shutil.rmtree(work)
    summary = run_pipeline(model, train, test, config, out, workdir=work, source=source, progress=_progress(a),
                           log=say)
    if a.json == "-":
        print(json.dumps(summary, default=str))
        return 0
    print()
    print_table(summary["layers"], LAYER_COLUMNS)
    sb = summary["stage_bytes"]
    print(f"\nratio after pruning {sb['dense_32bit'] / sb['pruned']:.1f}x, + sharing "
          f"{sb['dense_32bit'] / sb['pruned_shared_fixed_width']:.1f}x, + Huffman {summary['ratio']:.1f}x")
    print(f"{out}: {summary['bytes']:,} bytes on disk, {summary['ratio']:.1f}x smaller than 32-bit parameters "
          f"({4 * summary['params_total']:,} bytes); test error {summary['error_before_pct']:.2f}% -> "
          f"{summary['error_after_pct']:.2f}% (evaluated from the file)")
    if a.json:
        from ..fileio import atomic_write

        atomic_write(a.json, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1, default=str)))
    return 0


def _load_config(path: str):
    """``--config``: a PipelineConfig JSON file; wrong types are one clear error naming the file."""
    from ..pipeline import PipelineConfig

    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"--config {path}: config.version is {version!r}, expected an integer")
    try:
        return PipelineConfig.from_dict(raw)
    except (TypeError, AttributeError, KeyError) as exc:
        raise ValueError(f"--config {path}: a field has the wrong type or name ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"--config {path}: {exc}") from None


# ---------------------------------------------------------------------------------------------------- inspect
def _cfg_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .dz file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    _read_args(p, trust=False)


@command("inspect", "per-layer sizes and bits of a .dz file, from its bytes")
@args(_cfg_inspect)
def cmd_inspect(a: argparse.Namespace) -> int:
    from ..codec.fileinfo import file_report

    path = existing_file(a.file)
    rep = file_report(path, max_bytes=a.max_bytes)
    if a.json:
        print(json.dumps(rep, default=str))
        return 0
    print_table(rep["layers"], LAYER_COLUMNS)
    print(f"\n{path}: {rep['bytes']:,} bytes ({rep['header_and_padding_bytes']:,} header and padding), "
          f"{rep['params_total']:,} parameters, {rep['params_nonzero']:,} non-zero; "
          f"{rep['ratio']:.1f}x vs 32-bit floats; before Huffman {rep['bytes_before_huffman']:,} bytes; "
          f"architecture {rep['architecture'] or '(unknown)'}; format version {rep['version']}")
    return 0


# ---------------------------------------------------------------------------------------------------- decompress
def _cfg_decompress(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .dz file")
    p.add_argument("-o", "--output", required=True,
                   help="a .safetensors checkpoint of the plain state_dict (keeps the architecture the file names); "
                        "for a .dz made from a checkpoint, that checkpoint again (a file, or a new folder for a "
                        "Hugging Face folder)")
    _read_args(p, trust=False)


@command("decompress", "turn a .dz file back into a plain safetensors state_dict")
@args(_cfg_decompress)
def cmd_decompress(a: argparse.Namespace) -> int:
    path = existing_file(a.file)
    _check_output(a.output, a.file)
    if is_checkpoint_dz(path):  # made from a checkpoint file or folder: give that back (see cli/checkpoints.py)
        return decompress_source(path, a.output, max_bytes=a.max_bytes)
    # a model file: torch is needed from here on (a checkpoint file above is restored without it)
    from safetensors.torch import save_file

    from ..codec.fileinfo import read_dz
    from ..fileio import atomic_write
    from ..io.checkpoint import FORMAT, VERSION
    from ..io.serialize import _decoded, _names

    f = read_dz(path, max_bytes=a.max_bytes)
    # every name of the saved state_dict in its saved dtype (bfloat16 too); a tied tensor under each of its names
    sd = {name: _decoded(f, name).contiguous() for name in _names(f)}
    # a deepzip checkpoint with no compact layers: plain tensors, plus the architecture for `deepzip evaluate`
    metadata = {"format": FORMAT, "version": str(VERSION), "arch": f.architecture or "", "layers": "{}",
                "meta": json.dumps({"source": path.name})}
    atomic_write(a.output, lambda tmp: save_file(sd, tmp, metadata=metadata))
    print(f"{path} -> {a.output}: {len(sd)} tensors, {Path(a.output).stat().st_size:,} bytes")
    return 0


# ---------------------------------------------------------------------------------------------------- report
def _cfg_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .dz file")
    p.add_argument("--out", required=True, help="folder for report.md and its pictures (created if missing)")
    p.add_argument("--model", default=None, help="architecture when the file names none")
    _read_args(p, trust=False)


@command("report", "a Markdown report with tables and pictures of a .dz file")
@args(_cfg_report)
def cmd_report(a: argparse.Namespace) -> int:
    from ..report import write_report

    path = existing_file(a.file)
    _check_output(str(Path(a.out) / "report.md"), a.file, what="--out")
    md = write_report(path, a.out, model=a.model, max_bytes=a.max_bytes)
    print(f"wrote {md}")
    return 0
