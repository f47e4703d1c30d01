"""Make tests/golden/lowrank.dz and lowrank.expected.json (run once; both are committed).

    PYTHONPATH=src python tests/golden/make_golden_lowrank.py

A LeNet-5 with all three kinds of factored layer (conv2 a Tucker-2 triple, fc1 an SVD pair, fc2 a TTLinear),
pruned and weight-shared, saved with its ``extra.lowrank`` record. test_serialize.py::test_lowrank_golden_file
loads it with ``deepzip.load(path)`` alone and compares the logits of a fixed input with the JSON, so a change that
breaks reading such files fails the tests. Do not regenerate these files to make that test pass.
"""

import json
from pathlib import Path

import torch

from deepzip.io.serialize import load, save
from deepzip.models import get_model
from deepzip.techniques.lowrank import decompose_, lowrank_spec, tt_linear_
from deepzip.techniques.prune import prune_
from deepzip.techniques.share import share_weights_

HERE = Path(__file__).parent


def golden_input() -> torch.Tensor:
    """A fixed (2, 1, 28, 28) input that needs no random generator."""
    return torch.linspace(0.0, 1.0, 2 * 28 * 28).reshape(2, 1, 28, 28).sin().abs()


def main() -> None:
    torch.manual_seed(0)
    m = get_model("lenet5")
    decompose_(m, ranks={"conv2": (6, 4), "fc1": 8}, progress=False)
    tt_linear_(m, {"fc2": ((20, 25), (2, 5), 3)}, skip_larger=False, progress=False)
    prune_(m, sparsity={"fc1.0": 0.5, "conv2.1": 0.3})
    share_weights_(m, 3, progress=False)
    save(m, HERE / "lowrank.dz", config={"golden": "lowrank"})
    again = load(HERE / "lowrank.dz")
    with torch.no_grad():
        logits = again(golden_input())
    expected = {"lowrank": lowrank_spec(again), "logits": logits.tolist(),
                "keys": sorted(again.state_dict())}
    (HERE / "lowrank.expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
