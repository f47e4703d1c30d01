"""Make tests/golden/tiny11.dz and tiny11.expected.json: format 1.1 (planes kind, bfloat16). Run once; committed.

    PYTHONPATH=src python tests/golden/make_golden_11.py

test_checkpoints_io.py::test_golden_11_file_loads_bit_exactly decodes tiny11.dz and compares the bytes of every
tensor with the JSON (sha256), so a change that breaks 1.1 files fails the tests. Never regenerate to make it pass.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from deepzip import codec

HERE = Path(__file__).parent


def arrays() -> dict:
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((32, 128)) * 0.05).astype(np.float32)
    w[:, ::3] = 0.0  # a third pruned: planes behind a mask
    bf = (w.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 bit patterns
    return {
        "w.masked": codec.encode_planes(w, mask=w != 0, block=1024),
        "w.bf16": codec.encode_planes(bf, dtype="bfloat16", block=3000),
        "w.bf16.dense": codec.encode_dense(bf[:2, :3], dtype="bfloat16"),
        "ids": codec.encode_planes(np.arange(3000, dtype=np.int64)),
        "flags": codec.encode_planes(rng.random(3000) < 0.2),
    }


def main() -> None:
    tensors = arrays()
    codec.write(HERE / "tiny11.dz", tensors, config={"golden": "1.1"}, architecture=None)
    f = codec.read(HERE / "tiny11.dz")
    expected = {name: {"kind": f.tensors[name].kind, "dtype": f.tensors[name].dtype,
                       "shape": list(f.tensors[name].shape),
                       "sha256": hashlib.sha256(f.decode(name).tobytes()).hexdigest()}
                for name in tensors}
    (HERE / "tiny11.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
