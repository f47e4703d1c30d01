"""The ``deepzip`` command: parse -> API -> report. Every failure is a one-line message and a non-zero exit.

Subcommands: train, prune, evaluate (:mod:`.model`), share (:mod:`.share`), distill (:mod:`.distill`),
compress, inspect, decompress, report (:mod:`.dz`), bench (:mod:`.bench`), decompose (:mod:`.lowrank`),
ptq (:mod:`.posttrain`). Each command module is imported explicitly, so a broken one fails loudly instead of
silently losing its commands.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, distill, dz, g2p, lowrank, model, posttrain, share  # noqa: F401  (each registers its subcommands)
from ._common import _COMMANDS, print_table

__all__ = ["build_parser", "main", "print_table"]


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="deepzip", description="Make trained neural networks small.")
    parser.add_argument("--version", action="version", version=f"deepzip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (configure, run) in _COMMANDS.items():
        p = sub.add_parser(name, help=run._help, description=run._help)  # type: ignore[attr-defined]
        configure(p)
        p.set_defaults(_run=run)
    return parser




def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "_run", None):
        parser.print_help()
        return 2
    if getattr(a, "threads", None):
        import torch

        torch.set_num_threads(a.threads)
    from ..errors import DeepzipError

    try:
        return int(a._run(a) or 0)
    except KeyboardInterrupt:
        print("deepzip: interrupted", file=sys.stderr)
        return 130
    except (DeepzipError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"deepzip {a.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"deepzip {a.command}: error: {exc}", file=sys.stderr)
        return 2
