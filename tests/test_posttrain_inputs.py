"""Issue 23, "any model in": `deepzip ptq` takes a user's architecture (``--model file.py:factory``) with its own
checkpoint, a Hugging Face folder of any kind with text lines, ``.npy`` arrays and functions as inputs; it compares
the output the documented rule picks (or ``--output-key``), and refuses bad input in one line, writing nothing."""

from __future__ import annotations

import dataclasses
import random
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from deepzip.cli import main
from deepzip.io.serialize import load
from deepzip.techniques.posttrain import (
    BoundError,
    describe_output,
    load_inputs,
    measure_drop,
    model_forward,
    output_tensor,
)

FACTORY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden=96):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 8 * 8, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):  # (B, 3, 8, 8) -> a dict, as many user models return
        h = torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1)))
        return {"logits": self.fc2(h), "features": h}


def make():
    return Net()


def narrow():
    return Net(hidden=80)


class Words(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return "a label"


def words():
    return Words()
"""


@pytest.fixture
def user(tmp_path):
    """A user's architecture file, its weights as a torch.save state_dict, and .npy inputs."""
    (tmp_path / "net.py").write_text(FACTORY)
    ns: dict = {}
    exec(compile(FACTORY, "net.py", "exec"), ns)
    torch.manual_seed(0)
    model = ns["make"]()
    torch.save(model.state_dict(), tmp_path / "net.pt")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).standard_normal((48, 3, 8, 8)).astype(np.float32))
    return tmp_path, model, ns


def _ptq(folder, *extra: str) -> list[str]:
    return ["ptq", "--model", str(folder / "net.py") + ":make", "--checkpoint", str(folder / "net.pt"),
            "--calibration", str(folder / "cal.npy"), "--max-drop", "0.02", "--no-gptq", "--holdout", "0", "-o",
            str(folder / "out.dz"), *extra]


def _one_line_error(capsys, argv: list[str], out) -> str:
    before = sorted(p.name for p in out.parent.iterdir())
    capsys.readouterr()  # what the test's own setup printed (transformers' progress bars)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("deepzip ptq: error:") and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == before  # nothing written
    return err


# ---------------------------------------------------------------------------------------------------- outputs
def test_output_rule_and_key() -> None:
    t = torch.ones(2, 3)
    assert output_tensor(t) is t
    assert output_tensor((t, torch.zeros(2))) is t  # return_dict=False: the first element
    assert output_tensor({"logits": t, "hidden": torch.zeros(2, 5)}) is t
    assert output_tensor({"last_hidden_state": t, "pooler_output": torch.zeros(2, 5)}) is t
    assert output_tensor({"emb": t, "n": 3}) is t  # the only tensor

    @dataclasses.dataclass
    class Out:
        last_hidden_state: torch.Tensor
        pooler_output: torch.Tensor

    o = Out(t, torch.zeros(2, 4))
    assert output_tensor(o) is t and output_tensor(o, "pooler_output") is o.pooler_output
    assert output_tensor((t, o.pooler_output), "1") is o.pooler_output
    for bad, key, words in [("text", None, "returned a str"), (None, None, "returned a NoneType"),
                            ({"a": t, "b": t}, None, "2 tensors to choose from"), ({"a": t}, "b", "no entry 'b'"),
                            ((t,), "3", "no entry '3'"), ({"a": "x"}, "a", "its entry 'a', a str,"),
                            (torch.zeros(0, 3), None, "not a non-empty tensor")]:
        with pytest.raises(BoundError, match=words):
            output_tensor(bad, key)


def test_token_outputs_are_compared_without_padding() -> None:
    class Tokens(nn.Module):
        def forward(self, input_ids, attention_mask):
            return {"last_hidden_state": torch.ones(*input_ids.shape, 4) * input_ids[..., None]}

    batch = {"input_ids": torch.tensor([[1, 2, 3], [4, 5, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    y = model_forward()(Tokens(), batch)
    assert y.shape == (2, 3, 4) and torch.all(y[1, 2] == 0) and torch.all(y[0, 2] == 3)
    assert "its 'last_hidden_state', (2, 3, 4)" in describe_output(Tokens(), batch)


# ---------------------------------------------------------------------------------------------------- a user's model
def test_ptq_takes_a_factory_file_with_its_state_dict(user, capsys) -> None:
    folder, original, ns = user
    assert main(_ptq(folder)) == 0
    out = capsys.readouterr().out
    assert "outputs compared: its 'logits', (32, 10)" in out
    compressed = load(folder / "out.dz", model=ns["make"]())
    x = [torch.from_numpy(np.load(folder / "cal.npy"))]
    drop = measure_drop(compressed, original, x, model_forward())
    assert 0 < drop <= 0.02 + 1e-9  # the bound, on the logits, of the file written
    assert (folder / "out.dz").stat().st_size < 4 * sum(p.numel() for p in original.parameters()) / 2


def test_output_key_picks_what_is_bounded(user, capsys) -> None:
    folder, original, ns = user
    assert main(_ptq(folder, "--output-key", "features")) == 0
    assert "outputs compared: its 'features', (32, 96)" in capsys.readouterr().out
    compressed = load(folder / "out.dz", model=ns["make"]())
    x = [torch.from_numpy(np.load(folder / "cal.npy"))]
    assert measure_drop(compressed, original, x, model_forward("features")) <= 0.02 + 1e-9


def test_calibration_from_a_function_in_a_file(user, capsys) -> None:
    folder, _, _ = user
    (folder / "data.py").write_text("import numpy as np\n\ndef batches():\n    rng = np.random.default_rng(1)\n"
                                    "    return [rng.standard_normal((16, 3, 8, 8)).astype(np.float32)\n"
                                    "            for _ in range(3)]\n")
    argv = _ptq(folder)
    argv[argv.index("--calibration") + 1] = f"{folder / 'data.py'}:batches"
    assert main(argv) == 0 and (folder / "out.dz").is_file()


def _tiny_hf(folder, cls_name: str):
    transformers = pytest.importorskip("transformers")
    words = "the a cat dog sat on mat and ran to house big small red blue".split()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    cfg = transformers.BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    path = folder / cls_name
    getattr(transformers, cls_name)(cfg).save_pretrained(path)
    transformers.BertTokenizer(str(vocab)).save_pretrained(path)
    r = random.Random(0)
    (folder / "cal.txt").write_text("\n".join(" ".join(r.choice(words) for _ in range(r.randint(2, 12)))
                                              for _ in range(40)) + "\n")
    return path


@pytest.mark.parametrize("cls_name,key", [("BertForSequenceClassification", "logits"),
                                          ("BertModel", "last_hidden_state")])
def test_ptq_takes_a_hugging_face_folder_with_text_lines(tmp_path, capsys, cls_name, key) -> None:
    transformers = pytest.importorskip("transformers")
    path = _tiny_hf(tmp_path, cls_name)
    out = tmp_path / "hf.dz"
    assert main(["ptq", "--checkpoint", str(path), "--calibration", str(tmp_path / "cal.txt"), "--max-drop", "0.02",
                 "--no-gptq", "-o", str(out)]) == 0
    assert f"outputs compared: its '{key}'" in capsys.readouterr().out
    original = getattr(transformers, cls_name).from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    cal = load_inputs(str(tmp_path / "cal.txt"), 32, tok)
    drop = measure_drop(load(out, model=getattr(transformers, cls_name).from_pretrained(path)), original, cal,
                        model_forward())
    assert drop <= 0.02 + 1e-9


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["random", "random_npy", "empty", "multi_gb", "huge_header", "over_cap",
                                  "too_many", "endless", "mismatch", "not_tensors", "no_class", "text_random",
                                  "text_nul"])
def test_bad_input_one_line_exit_2_nothing_written(user, capsys, case) -> None:
    folder, _, ns = user
    argv = _ptq(folder)
    cal = folder / "bad_cal"
    words = {
        "random": "not a .npy array (it begins", "random_npy": "not a readable .npy array",
        "empty": "an empty file", "multi_gb": "more than the calibration limit of 1,073,741,824",
        "huge_header": "as float32, more than the calibration limit", "over_cap": "--max-input-bytes",
        "too_many": "more than the limit of 10 (--max-inputs", "endless": "more than the limit of 16,384",
        "mismatch": "fc1.weight has shape [96, 1024] in the file, [80, 1024] in the model",
        "not_tensors": "the model returned a str, not a non-empty tensor",
        "no_class": "names the model class BertForTimeTravel, which the installed transformers",
        "text_random": "not UTF-8 text", "text_nul": "not text (a NUL byte at offset 3)",
    }[case]
    rng = np.random.default_rng(5)
    if case in ("random", "random_npy", "text_random"):
        data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
        cal = cal.with_suffix(".npy" if case == "random_npy" else ".bin")
        cal.write_bytes((b"\x93NUMPY" if case == "random_npy" else b"\xff") + data)
    elif case == "empty":
        cal.write_bytes(b"")
    elif case == "multi_gb":  # a sparse file: 3 GiB long, no disk used; refused before a byte is read
        with open(cal, "wb") as f:
            f.truncate(3 << 30)
    elif case == "huge_header":  # a small file whose header claims 4000 images of 224 x 224: 2.4 GB
        header = {"descr": "<f4", "fortran_order": False, "shape": (4000, 3, 224, 224)}
        with open(cal, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 64)
    elif case == "over_cap":
        cal = folder / "cal.npy"
        argv += ["--max-input-bytes", "1K"]
    elif case == "too_many":
        cal = folder / "cal.npy"
        argv += ["--max-inputs", "10"]
    elif case == "endless":
        (folder / "gen.py").write_text("import torch\n\ndef forever():\n    while True:\n"
                                       "        yield torch.zeros(8, 3, 8, 8)\n")
        cal = f"{folder / 'gen.py'}:forever"
    elif case == "mismatch":
        cal = folder / "cal.npy"
        argv[argv.index("--model") + 1] = f"{folder / 'net.py'}:narrow"
    elif case == "not_tensors":
        cal = folder / "cal.npy"
        argv[argv.index("--model") + 1] = f"{folder / 'net.py'}:words"
        torch.save(ns["words"]().state_dict(), folder / "net.pt")
    elif case == "no_class":
        path = _tiny_hf(folder, "BertModel")
        cfg = (path / "config.json").read_text().replace('"BertModel"', '"BertForTimeTravel"')
        (path / "config.json").write_text(cfg)
        argv = ["ptq", "--checkpoint", str(path), "--calibration", str(folder / "cal.txt"), "-o",
                str(folder / "out.dz")]
    if case.startswith("text_"):
        path = _tiny_hf(folder, "BertModel")
        if case == "text_nul":
            cal.write_bytes(b"the\0cat\n")
        argv = ["ptq", "--checkpoint", str(path), "--calibration", str(cal), "-o", str(folder / "out.dz")]
    elif case != "no_class":
        argv[argv.index("--calibration") + 1] = str(cal)
    err = _one_line_error(capsys, argv, folder / "out.dz")
    assert words in err, err


def test_the_npy_reader_checks_the_header_before_reading(tmp_path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BoundError, match="a .npy array of object, not numbers"):
        load_inputs(str(tmp_path / "obj.npy"))
    np.save(tmp_path / "cut.npy", np.zeros((10, 4), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-8])
    with pytest.raises(BoundError, match=r"truncated: its header says shape \(10, 4\) of float32 \(160 bytes\), "
                                         "the file holds 152"):
        load_inputs(str(tmp_path / "cut.npy"))
    np.save(tmp_path / "s.npy", np.array(["ab", "cd"]))
    with pytest.raises(BoundError, match="a .npy array of <U2, not numbers"):
        load_inputs(str(tmp_path / "s.npy"))
    np.save(tmp_path / "f64.npy", np.arange(12.0).reshape(3, 4))
    batches = load_inputs(str(tmp_path / "f64.npy"), 2)
    assert [b.dtype for b in batches] == [torch.float32] * 2 and torch.equal(torch.cat(batches), torch.arange(12.0)
                                                                               .reshape(3, 4))


def test_a_file_that_is_not_python_code_is_refused_in_one_line(user, capsys) -> None:
    folder, _, _ = user
    (folder / "broken.py").write_text(textwrap.dedent("def make(:\n"))
    argv = _ptq(folder)
    argv[argv.index("--model") + 1] = f"{folder / 'broken.py'}:make"
    err = _one_line_error(capsys, argv, folder / "out.dz")
    assert "cannot import" in err


def test_ptq_of_a_sentence_transformer_compares_its_embedding_or_the_key(tmp_path, capsys) -> None:
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.models import Pooling, Transformer

    base = _tiny_hf(tmp_path, "BertModel")
    t = Transformer(str(base))
    st.SentenceTransformer(modules=[t, Pooling(t.get_word_embedding_dimension())]).save(str(tmp_path / "st"))
    for key, shown in [(None, "its 'sentence_embedding', (32, 32)"), ("token_embeddings", "its 'token_embeddings'")]:
        out = tmp_path / f"{key}.dz"
        argv = ["ptq", "--sentence-transformer", str(tmp_path / "st"), "--calibration", str(tmp_path / "cal.txt"),
                "--max-drop", "0.02", "--no-gptq", "--holdout", "0", "-o", str(out),
                *(["--output-key", key] if key else [])]
        capsys.readouterr()
        assert main(argv) == 0 and out.is_file()
        assert f"outputs compared: {shown}" in capsys.readouterr().out
