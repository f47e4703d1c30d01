"""CLI subcommands around the .dz file: compress (the whole pipeline), inspect, decompress, report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import _common, _data, args, command, existing_file, print_table

LAYER_COLUMNS = [
    ("tensor", "tensor", ""), ("weights", "weights", "d"), ("kept_pct", "kept %", ".1f"), ("k", "k", ""),
    ("bits_index_fixed", "bits/idx", ""), ("bits_index_huffman", "huff bits/idx", ".2f"),
    ("gap_width", "gap w", ""), ("bits_gap_huffman", "huff bits/gap", ".2f"), ("bytes", "bytes", "d"),
    ("ratio", "ratio", ".1f"),
]


def default_model_dir() -> Path:
    """Trained models reused by ``deepzip compress``: ``$DEEPZIP_MODELS`` or ``~/.cache/deepzip/models``."""
    from ..data import cache_dir

    return cache_dir("models", "DEEPZIP_MODELS")


def _sha(path: Path) -> str:
    from ..data import sha256_file

    return sha256_file(path)[:16]


# ---------------------------------------------------------------------------------------------------- compress
def _cfg_compress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="lenet300 (default), lenet5, or pkg.module:factory")
    p.add_argument("--checkpoint", default=None, help="trained model to compress (default: train or reuse one)")
    p.add_argument("--config", default=None, help="PipelineConfig as JSON (see deepzip.pipeline)")
    p.add_argument("-o", "--output", default=None, help="the .dz file (default MODEL.dz)")
    p.add_argument("--distill", action="store_true", help="retrain with the uncompressed model as teacher")
    p.add_argument("--workdir", default=None, help="stage checkpoints, for resuming (default in the cache)")
    p.add_argument("--fresh", action="store_true", help="ignore stage checkpoints of an earlier run")
    p.add_argument("--json", default=None, help="also write the summary as JSON here")
    _common(p)


@command("compress", "the Deep Compression pipeline: prune, share, Huffman-code into a .dz file")
@args(_cfg_compress)
def cmd_compress(a: argparse.Namespace) -> int:
    import shutil

    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..models import get_model
    from ..pipeline import PipelineConfig, run_pipeline
    from ..recipes import train_config
    from ..train import evaluate, fit

    config = PipelineConfig.load(a.config) if a.config else PipelineConfig()
    if a.model:
        config.model = a.model
    if a.distill:
        config.distill = True
    name = config.model
    model = get_model(name, seed=a.seed)  # fails early on an unknown model
    config.validate(model)
    if a.checkpoint:  # a bad checkpoint fails before any data is fetched
        ckpt = Path(a.checkpoint)
        model, _ = load_checkpoint(ckpt, model)
    train, test = _data(a)
    if not a.checkpoint:
        from ..recipes import recipe_tag

        ckpt = default_model_dir() / f"{name}-{recipe_tag(name)}-seed{a.seed}.safetensors"
        if ckpt.exists():
            model, _ = load_checkpoint(ckpt, model)
            print(f"using the trained {name} cached at {ckpt}")
        else:
            cfg = train_config(name)
            cfg.progress, cfg.seed = not a.quiet, a.seed
            print(f"training {name} on MNIST ({cfg.epochs} epochs; cached at {ckpt} for next time)")
            fit(model, train, cfg, desc=f"train {name}")
            save_checkpoint(model, ckpt, meta={"test_error_pct": evaluate(model, test).error_pct})
    out = Path(a.output or f"{name.replace(':', '_').replace('.', '_')}.dz")
    source = _sha(ckpt)
    work = Path(a.workdir) if a.workdir else default_model_dir().parent / "runs" / f"{name.replace(':', '_')}-{source}"
    if a.fresh and work.exists():
        shutil.rmtree(work)
    summary = run_pipeline(model, train, test, config, out, workdir=work, source=source, progress=not a.quiet)
    print()
    print_table(summary["layers"], LAYER_COLUMNS)
    sb = summary["stage_bytes"]
    print(f"\nratio after pruning {sb['dense_32bit'] / sb['pruned']:.1f}x, + sharing "
          f"{sb['dense_32bit'] / sb['pruned_shared_fixed_width']:.1f}x, + Huffman {summary['ratio']:.1f}x")
    print(f"{out}: {summary['bytes']:,} bytes on disk, {summary['ratio']:.1f}x smaller than 32-bit parameters "
          f"({4 * summary['params_total']:,} bytes); test error {summary['error_before_pct']:.2f}% -> "
          f"{summary['error_after_pct']:.2f}% (evaluated from the file)")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1, default=str))
    return 0


# ---------------------------------------------------------------------------------------------------- inspect
def _cfg_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--json", action="store_true")


@command("inspect", "per-layer sizes and bits of a .dz file, from its bytes")
@args(_cfg_inspect)
def cmd_inspect(a: argparse.Namespace) -> int:
    from ..fileinfo import file_report

    path = existing_file(a.file)
    rep = file_report(path)
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
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="a .safetensors file of the plain state_dict")


@command("decompress", "turn a .dz file back into a plain safetensors state_dict")
@args(_cfg_decompress)
def cmd_decompress(a: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from ..fileio import atomic_write
    from ..serialize import load_state_dict

    path = existing_file(a.file)
    sd = {k: v.contiguous() for k, v in load_state_dict(path).items()}
    atomic_write(a.output, lambda tmp: save_file(sd, tmp, metadata={"source": path.name}))
    print(f"{path} -> {a.output}: {len(sd)} tensors, {Path(a.output).stat().st_size:,} bytes")
    return 0


# ---------------------------------------------------------------------------------------------------- report
def _cfg_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--out", required=True, help="folder for report.md and its pictures")
    p.add_argument("--model", default=None, help="architecture when the file names none")


@command("report", "a Markdown report with tables and pictures of a .dz file")
@args(_cfg_report)
def cmd_report(a: argparse.Namespace) -> int:
    from ..report import write_report

    path = existing_file(a.file)
    md = write_report(path, a.out, model=a.model)
    print(f"wrote {md}")
    return 0
