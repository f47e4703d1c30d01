"""deepzip.load's two forms (inference by default, ``trainable=True`` to fine-tune) and model folders in ``.dz`` files
that come back as the model (``deepzip ptq`` of a sentence-transformers / Hugging Face folder)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import deepzip
from deepzip.errors import CheckpointError
from deepzip.io.foreign import compress_checkpoint, decompress_checkpoint
from deepzip.io.serialize import load, save, save_posttrained
from deepzip.models import get_model
from deepzip.runtime import SparseConv2d, SparseLinear, runtime_table
from deepzip.techniques.prune import prune_
from deepzip.techniques.share import share_weights_

X = torch.rand(4, 1, 28, 28)


def _parametrized(m: nn.Module) -> bool:
    return any(hasattr(mod, "parametrizations") for mod in m.modules())


# ---------------------------------------------------------------------------------------------------- the two forms
def test_default_is_for_inference_and_trainable_is_the_fine_tunable_form(tmp_path) -> None:
    m = prune_(get_model("lenet5"), sparsity=0.92)
    share_weights_(m, 5, progress=False)
    save(m, tmp_path / "m.dz")
    fast = deepzip.load(tmp_path / "m.dz")
    assert not _parametrized(fast) and not fast.training
    assert not any(p.requires_grad for p in fast.parameters())
    # every layer is a runtime layer or a plain dense one, as runtime_table lists them
    forms = {r["layer"]: r["form"] for r in runtime_table(fast)}
    assert set(forms) == {"conv1", "conv2", "fc1", "fc2"}
    for name, form in forms.items():
        layer = getattr(fast, name)
        assert isinstance(layer, SparseLinear | SparseConv2d) == (form != "dense"), name
    slow = deepzip.load(tmp_path / "m.dz", trainable=True)
    assert _parametrized(slow)
    with torch.no_grad():
        assert torch.equal(slow(X), m(X))  # the fine-tunable form: identical outputs
        assert torch.allclose(fast(X), m(X), atol=1e-5)  # the inference form: the same up to float rounding
    with pytest.raises(ValueError, match="trainable=True"):
        deepzip.load(tmp_path / "m.dz", trainable=True, runtime="fast")


def test_a_file_without_sparse_weights_loads_as_plain_dense_layers(tmp_path) -> None:
    m = get_model("lenet300")
    share_weights_(m, 4, progress=False)  # shared, not pruned: nothing a sparse kernel could skip
    save(m, tmp_path / "s.dz")
    back = load(tmp_path / "s.dz")
    assert not _parametrized(back) and all(type(getattr(back, n)) is nn.Linear for n in ("fc1", "fc2", "fc3"))
    with torch.no_grad():
        assert torch.equal(back(X), m(X))
    assert len(torch.unique(back.fc1.weight)) <= 16  # the codebook's values, baked in


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 50, bias=False)
        self.head.weight = self.emb.weight
        self.fc = nn.Linear(50, 50)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.emb(ids)))


def test_tied_weights_stay_tied_and_bfloat16_stays_bfloat16_by_default(tmp_path) -> None:
    m = _Tied()
    prune_(m.fc, sparsity=0.9)  # a sparse layer: the runtime path
    save(m, tmp_path / "t.dz")
    back = load(tmp_path / "t.dz", model=_Tied())
    assert back.head.weight.data_ptr() == back.emb.weight.data_ptr()  # one tensor in memory, as saved
    ids = torch.randint(0, 50, (3, 5))
    with torch.no_grad():
        assert torch.allclose(back(ids), m(ids), atol=1e-5)
    half = _Tied().bfloat16()  # no sparse float32 weight: plain dense weights, in the saved dtype
    save(half, tmp_path / "h.dz")
    back = load(tmp_path / "h.dz", model=_Tied().bfloat16())
    assert back.head.weight is back.emb.weight and back.emb.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(back(ids), half(ids))


def test_progress_prints_each_phase_only_when_asked(tmp_path, capsys) -> None:
    save(prune_(get_model("lenet300"), sparsity=0.9), tmp_path / "p.dz")
    load(tmp_path / "p.dz")
    assert capsys.readouterr().err == ""
    load(tmp_path / "p.dz", progress=True)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1].split(" (")[0] for line in err] == [
        "read the header", "built the architecture", "decoded the tensors",
        "chose each layer's form by timing it at batch 1"]
    assert all(line.startswith(f"load {tmp_path / 'p.dz'}: ") and line.endswith(" s") for line in err)


def test_cli_evaluate_counts_the_same_parameters_from_the_inference_form(tmp_path, capsys) -> None:
    from deepzip.cli import main
    from deepzip.cli._common import _effective_params

    m = prune_(get_model("lenet300"), sparsity=0.9)
    save(m, tmp_path / "p.dz")
    fast, slow = load(tmp_path / "p.dz"), load(tmp_path / "p.dz", trainable=True)
    a, b = _effective_params(fast), _effective_params(slow)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert sum(int((v != 0).sum()) for v in a.values()) == sum(int((v != 0).sum()) for v in b.values())
    assert main(["evaluate", str(tmp_path / "p.dz"), "--data", "tests.test_load_forms:_data", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params_total"] == 266_610 and out["params_nonzero"] == sum(int((v != 0).sum()) for v in b.values())


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 28, 28, generator=g)
    return (x, torch.zeros(32, dtype=torch.long)), (x, torch.zeros(32, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------- model folders
WORDS = "the a cat dog sat on mat ran fast slow big small red blue green house car tree sun moon".split()


def _tiny_bert(folder: Path, seed: int = 0) -> None:
    """A two-layer BERT with its own word-piece tokenizer, saved as a Hugging Face folder."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tokmodels

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(tokmodels.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                          cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)


def _tiny_sentence_transformer(tmp: Path) -> Path:
    """A sentence-transformers folder: the tiny BERT, mean pooling, a Dense module (weights in a sub-folder)."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    _tiny_bert(tmp / "bert")
    m = st.SentenceTransformer(modules=[Transformer(str(tmp / "bert")), Pooling(32), Dense(32, 16), Normalize()],
                               device="cpu")
    m.save(str(tmp / "st"))
    return tmp / "st"


SENTS = ["the cat sat on the mat", "a big red car ran fast", "sun and moon over the green tree", "dog"]


def test_ptq_file_of_a_sentence_transformer_is_the_model_and_decompresses_to_the_folder(tmp_path, monkeypatch,
                                                                                         capsys):
    st = pytest.importorskip("sentence_transformers")
    from deepzip.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = _tiny_sentence_transformer(tmp_path)
    r = random.Random(0)
    (tmp_path / "cal.txt").write_text("\n".join(" ".join(r.choice(WORDS) for _ in range(r.randint(3, 9)))
                                                for _ in range(48)))
    assert main(["ptq", "--sentence-transformer", str(src), "--calibration", str(tmp_path / "cal.txt"),
                 "--no-gptq", "--max-drop", "0.05", "-o", str(tmp_path / "st.dz")]) == 0
    model = deepzip.load(tmp_path / "st.dz")  # the file alone
    assert isinstance(model, st.SentenceTransformer)
    emb = model.encode(SENTS, convert_to_tensor=True)
    out = decompress_checkpoint(tmp_path / "st.dz", tmp_path / "back")
    for f in src.rglob("*"):  # every file but the weights comes back byte for byte
        if f.is_file() and f.suffix != ".safetensors":
            assert (out / f.relative_to(src)).read_bytes() == f.read_bytes(), f
    again = st.SentenceTransformer(str(out), device="cpu")  # the original library loads the folder
    assert torch.equal(again.encode(SENTS, convert_to_tensor=True), emb)
    original = st.SentenceTransformer(str(src), device="cpu").encode(SENTS, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(original, emb)
    assert cos.mean() > 0.9 and not torch.equal(original, emb)  # compressed, and close
    tunable = deepzip.load(tmp_path / "st.dz", trainable=True)  # the codebooks as parametrizations again
    assert _parametrized(tunable) and torch.equal(tunable.encode(SENTS, convert_to_tensor=True), emb)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "st.dz")]) == 2  # an image command: refused in one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SentenceTransformer, not an image classifier" in err[0]


def test_ptq_file_of_an_older_folder_loads_into_a_given_model(tmp_path, monkeypatch) -> None:
    """A folder whose weights carry a buffer the library no longer keeps (``position_ids``, as all-MiniLM-L6-v2's
    do): the ptq file keeps it to give the folder back, and still loads into a model the caller builds."""
    st = pytest.importorskip("sentence_transformers")
    from safetensors.torch import load_file, save_file

    from deepzip.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = _tiny_sentence_transformer(tmp_path)
    weights = load_file(str(src / "model.safetensors"))
    weights["embeddings.position_ids"] = torch.arange(64)[None]
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    r = random.Random(1)
    (tmp_path / "cal.txt").write_text("\n".join(" ".join(r.choice(WORDS) for _ in range(r.randint(3, 9)))
                                                for _ in range(48)))
    assert main(["ptq", "--sentence-transformer", str(src), "--calibration", str(tmp_path / "cal.txt"),
                 "--no-gptq", "--max-drop", "0.05", "-o", str(tmp_path / "st.dz")]) == 0
    emb = deepzip.load(tmp_path / "st.dz").encode(SENTS, convert_to_tensor=True)
    for trainable in (False, True):
        given = deepzip.load(tmp_path / "st.dz", model=st.SentenceTransformer(str(src), device="cpu"),
                             trainable=trainable)
        assert torch.equal(given.encode(SENTS, convert_to_tensor=True), emb)
    back = decompress_checkpoint(tmp_path / "st.dz", tmp_path / "back")
    assert torch.equal(load_file(str(back / "model.safetensors"))["embeddings.position_ids"], torch.arange(64)[None])


def test_ptq_file_of_a_hugging_face_folder_is_the_transformers_model(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from deepzip.techniques.posttrain import PostTrainConfig, compress_to_bound_

    _tiny_bert(tmp_path / "bert")
    model = transformers.BertModel.from_pretrained(tmp_path / "bert").eval()
    ids = [torch.randint(0, 25, (8, 7), generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def forward(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return m(batch).last_hidden_state[:, 0]

    res = compress_to_bound_(model, ids, PostTrainConfig(max_drop=0.05, min_numel=256, gptq=False), forward=forward)
    save_posttrained(model, res, tmp_path / "b.dz", source=tmp_path / "bert")
    back = deepzip.load(tmp_path / "b.dz")
    assert type(back) is transformers.BertModel
    out = decompress_checkpoint(tmp_path / "b.dz", tmp_path / "back")
    again = transformers.BertModel.from_pretrained(out).eval()
    with torch.no_grad():
        want = forward(model, ids[0])
        assert torch.equal(forward(back, ids[0]), want) and torch.equal(forward(again, ids[0]), want)


def _crafted(tmp_path: Path, edit) -> Path:
    """A copy of a tiny sentence-transformers folder changed by ``edit(folder)``, in a ``.dz`` (lossless)."""
    pytest.importorskip("sentence_transformers")
    folder = tmp_path / "crafted"
    if not folder.exists():
        shutil.copytree(_tiny_sentence_transformer(tmp_path), folder)
    edit(folder)
    compress_checkpoint(folder, tmp_path / "c.dz")
    return tmp_path / "c.dz"


def _json_edit(rel: str, change):
    def edit(folder: Path) -> None:
        doc = json.loads((folder / rel).read_text())
        change(doc)
        (folder / rel).write_text(json.dumps(doc))
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_json_edit("modules.json", lambda d: d[1].update(type="os.system")), "module type 'os.system'"),
    (_json_edit("config.json", lambda d: d.update(auto_map={"AutoModel": "evil.Model"})), "remote code"),
    (_json_edit("sentence_bert_config.json", lambda d: d.update(model_args={"trust_remote_code": True})),
     "remote code"),
    (lambda f: (f / "evil.py").write_text("import os\nos.system('touch pwned')\n"), "holds Python code"),
    (_json_edit("config.json", lambda d: d.update(hidden_size=4096, num_hidden_layers=48,
                                                  num_attention_heads=64)), "describes a model of"),
])
def test_crafted_folder_files_are_refused_in_one_line_before_anything_is_built(tmp_path, edit, message) -> None:
    path = _crafted(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        deepzip.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


@pytest.mark.parametrize(("sparse_ms", "margin", "form"), [(0.9, 0.8, "dense"), (0.9, 1.0, "sparse"),
                                                          (0.5, 0.8, "sparse")])
def test_a_sparse_form_must_beat_dense_by_the_margin(monkeypatch, sparse_ms, margin, form) -> None:
    """Timings from a fake clock: dense 1 ms, every sparse candidate ``sparse_ms``."""
    import deepzip.runtime as rt
    from deepzip.techniques.prune import strip

    def fake(fns, repeats: int) -> dict:
        return {c: 1e-3 if c == ("dense", "") else sparse_ms * 1e-3 for c in fns}

    monkeypatch.setattr(rt, "interleaved_seconds", fake)
    m = strip(prune_(get_model("lenet300"), sparsity=0.9)).eval()
    rt.sparsify_(m, margin=margin)
    assert {r["form"] != "dense" for r in runtime_table(m)} == {form == "sparse"}


@pytest.mark.parametrize(("sparse_s", "kept"), [(0.9e-3, True), (0.99e-3, False)])
def test_sparse_layers_stay_only_if_the_whole_model_is_faster(monkeypatch, sparse_s, kept) -> None:
    """Fake clock: dense 1 ms (a layer alone or the whole model), sparse ``sparse_s``; the whole model must be 5%
    faster with its sparse layers, else every layer goes back to dense."""
    import deepzip.runtime as rt
    from deepzip.techniques.prune import strip

    def fake(fns, repeats: int) -> dict:
        return {c: 1e-3 if c in (("dense", ""), "dense") else sparse_s for c in fns}

    monkeypatch.setattr(rt, "interleaved_seconds", fake)
    m = strip(prune_(get_model("lenet300"), sparsity=0.9)).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        ref = m(x)
        rt.sparsify_(m, whole=0.95)
        assert torch.allclose(m(x), ref, atol=1e-5)
    assert {r["form"] != "dense" for r in runtime_table(m)} == {kept}
