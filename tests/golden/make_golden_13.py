"""Make tests/golden/tiny13.dz and tiny13.expected.json: format 1.3 (the tiered kind) beside a 1.2 grouped tensor.
Run once; committed.

    PYTHONPATH=src python tests/golden/make_golden_13.py

test_tiered.py::test_golden_13_file_loads_bit_exactly decodes tiny13.dz and compares the bytes of every tensor
with the JSON (sha256), so a change that breaks 1.3 files fails the tests. Never regenerate to make it pass.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from deepzip import codec

HERE = Path(__file__).parent


def arrays() -> dict:
    rng = np.random.default_rng(13)
    w = rng.standard_normal((300, 24))
    tiers = (rng.random(300) < 0.8).astype(np.int64)  # 1: coarse
    fine, coarse = np.round(w * 4), 2 * np.round(w / 2)
    idx = np.where(tiers[:, None] == 0, fine, coarse)
    levels = np.unique(idx)
    cb = np.stack([levels / 4, levels / 4])
    pos = np.array([0, 17, 7199])
    return {
        "emb.tiered": codec.encode_tiered(cb, tiers, np.searchsorted(levels, idx), pos, np.array([9.0, -9.0, 0.5])),
        "lin.grouped": codec.encode_grouped(rng.standard_normal((3, 8)), rng.integers(0, 8, (12, 10)), 4,
                                            np.array([5]), np.array([2.5])),
    }


def main() -> None:
    tensors = arrays()
    codec.write(HERE / "tiny13.dz", tensors, config={"golden": "1.3"}, architecture=None)
    f = codec.read(HERE / "tiny13.dz")
    expected = {name: {"kind": f.tensors[name].kind, "dtype": f.tensors[name].dtype,
                       "shape": list(f.tensors[name].shape),
                       "sha256": hashlib.sha256(f.decode(name).tobytes()).hexdigest()}
                for name in tensors}
    (HERE / "tiny13.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
