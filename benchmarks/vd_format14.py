"""Format 1.4 on the committed sparse-VD LeNet files: the same models with their centroids rounded to float16.

Rerun: OMP_NUM_THREADS=1 python benchmarks/vd_format14.py [--files benchmarks/models/vd/*.dz] [--tag _name]

Each committed ``.dz`` (format 1.0-1.3: float32 codebooks, 24-byte stream heads, a plain zlib header) is loaded as
its model, its centroids rounded to float16 (:func:`deepzip.techniques.share.round_centroids_`, what
``PipelineConfig.centroids_float16`` does after fine-tuning) and saved again with the same config (plus
``centroids_float16``): the file is then format 1.4 (float16 codebooks, short stream heads, the header's preset
dictionary). Both files are evaluated on the MNIST test set *from the file*; reported: bytes, ratio against the
architecture's 32-bit parameters, test error, and where the bytes went (header, sections, padding).
Results: benchmarks/results/vd_format14{tag}.{json,md}.
"""

from __future__ import annotations

import argparse
import shlex
import struct
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_results

from deepzip import codec
from deepzip.apps.mnist.data import load_mnist
from deepzip.codec.fileinfo import file_report
from deepzip.io.serialize import load, save
from deepzip.techniques.share import round_centroids_
from deepzip.train import evaluate


def parts(path: Path) -> dict:
    """Bytes of the file by part: preamble + stored header, sections, alignment padding."""
    blob = path.read_bytes()
    f = codec.read(blob)
    header = 24 + struct.unpack_from("<Q", blob, 16)[0]
    sections = sum(t.nbytes for t in f.tensors.values())
    return {"bytes": len(blob), "header_bytes": header, "section_bytes": sections,
            "padding_bytes": len(blob) - header - sections, "version": f"{f.version[0]}.{f.version[1]}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", nargs="*", default=sorted(str(p.relative_to(ROOT))
                                                         for p in (ROOT / "benchmarks/models/vd").glob("*.dz")))
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    test = load_mnist("test", quiet=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.files:
            src = ROOT / name
            f = codec.read(src)
            model = load(src, trainable=True)
            err = evaluate(load(src), test).error_pct
            round_centroids_(model)
            out = Path(tmp) / src.name
            save(model, out, config={**f.config, "centroids_float16": True},
                 extra={k: v for k, v in f.extra.items() if k == "summary"})
            err14 = evaluate(load(out), test).error_pct
            for variant, path, e in (("committed", src, err), ("format 1.4", out, err14)):
                rep = file_report(path)
                rows.append({"file": name, "variant": variant, **parts(path), "ratio": rep["ratio"],
                             "test_error_pct": e})
            print(f"{name}: {rows[-2]['bytes']:,} B {rows[-2]['ratio']:.1f}x {err:.2f}% -> {rows[-1]['bytes']:,} B "
                  f"{rows[-1]['ratio']:.1f}x {err14:.2f}%", flush=True)
    command = "OMP_NUM_THREADS=1 python " + shlex.join(sys.argv)
    write_results(f"vd_format14{a.tag}", rows, command,
                  title="Format 1.4 (float16 codebooks, short stream heads, preset header dictionary) on the "
                        "committed sparse-VD files",
                  sections={"Reading": "Same models: only the centroids are rounded to float16; each error is "
                                       "measured from its file. header_bytes = preamble + stored header."})


if __name__ == "__main__":
    main()
