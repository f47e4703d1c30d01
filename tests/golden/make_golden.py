"""Make tests/golden/tiny.dz and tiny.expected.json (run once; both are committed).

    python tests/golden/make_golden.py

The test test_container.py::test_golden_file_loads_bit_exactly decodes tiny.dz and compares with the
JSON, so a change to the format or the decoder that breaks old files fails the tests. Do not
regenerate these files to make that test pass; bump the format version instead.
"""

import json
from pathlib import Path

import numpy as np

from deepzip import codec

HERE = Path(__file__).parent


def arrays() -> dict:
    cb = np.array([-0.75, -0.25, 0.0, 0.5], np.float32)
    idx = np.array([[3, 0, 1, 1, 3, 2], [1, 1, 1, 0, 3, 1]])
    mask = np.array([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1]], bool)
    return {
        "fc.weight": codec.encode_sparse(cb, idx, mask, gap_width=2),
        "fc.bias": codec.encode_dense(np.array([0.125, -1.5], np.float32)),
        "emb.weight": codec.encode_codebook(cb[:3], np.array([[0, 2, 2], [1, 2, 2]])),
        "scale": codec.encode_dense(np.float16(2.0)),
    }


def main() -> None:
    tensors = arrays()
    codec.write(
        HERE / "tiny.dz", tensors, config={"prune": {"fc.weight": 0.75}, "bits": 2}, architecture="tiny"
    )
    f = codec.read(HERE / "tiny.dz")
    expected = {}
    for name in tensors:
        t = f.tensors[name]
        entry = {"kind": t.kind, "dtype": t.dtype, "shape": list(t.shape), "values": f.decode(name).tolist()}
        if t.kind != "dense":
            cb, idx, mask = f.decode_parts(name)
            entry.update(codebook=cb.tolist(), indices=idx.tolist(), mask=mask.tolist())
        expected[name] = entry
    (HERE / "tiny.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
