"""Post-training compression under a quality bound (deepzip.techniques.posttrain), the grouped codec kind and
`deepzip ptq`."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from deepzip import codec
from deepzip.cli import main
from deepzip.codec.grouped import varint_decode, varint_encode
from deepzip.errors import DeepzipFormatError
from deepzip.io.serialize import load, save_posttrained
from deepzip.techniques._kmeans import weighted_kmeans_rows
from deepzip.techniques.posttrain import (
    BoundError,
    HeldOut,
    PostTrainConfig,
    agreement,
    compress_to_bound_,
    compress_weights_only,
    distill_,
    estimate_drop,
    fisher_diagonal,
    heldout_mask,
    measure_drop,
    split_heldout,
    target_tensors,
    text_batches,
    unseen_scale,
)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 16))


def _batches(n: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 32, generator=g) for _ in range(n)]


def _drop(a: nn.Module, b: nn.Module, batches: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(1 - agreement([a(x) for x in batches], [b(x) for x in batches]).mean())


# ---------------------------------------------------------------------------------------------------- codec
def test_varint_round_trip_and_cutoff() -> None:
    v = np.array([0, 1, 127, 128, 300, 2**31, 2**40 + 5])
    assert varint_decode(varint_encode(v)).tolist() == v.tolist()
    with pytest.raises(ValueError, match="ends inside"):
        varint_decode(np.array([200], np.uint8))


@pytest.mark.parametrize("rpg", [1, 3, 10])
def test_grouped_round_trip_bit_exact(rpg: int) -> None:
    rng = np.random.default_rng(rpg)
    idx = rng.integers(0, 16, (10, 3, 4))
    groups = -(-10 // rpg)
    cb = rng.normal(size=(groups, 16)).astype(np.float16)
    pos = np.sort(rng.choice(120, 7, replace=False))
    val = rng.normal(size=7).astype(np.float32)
    f = codec.read(codec.to_bytes({"w": codec.encode_grouped(cb, idx, rpg, pos, val)}))
    ref = cb.astype(np.float32)[np.arange(10) // rpg][np.arange(10)[:, None], idx.reshape(10, -1)].reshape(-1)
    ref[pos] = val
    out = f.decode("w")
    assert out.dtype == np.float32 and out.shape == (10, 3, 4)
    assert np.array_equal(out.reshape(-1), ref)


def test_grouped_rejects_corrupt_sections() -> None:
    t = codec.encode_grouped(np.zeros((2, 4)), np.zeros((4, 5), np.int64), 2, np.array([3]), np.array([1.0]))
    bad = copy.deepcopy(t)
    bad.sections["codebooks"] = bad.sections["codebooks"][:-2]
    with pytest.raises(DeepzipFormatError, match="codebooks"):
        codec.decode(bad)
    bad = copy.deepcopy(t)
    bad.meta["outliers"] = 2
    with pytest.raises(DeepzipFormatError, match="outlier"):
        codec.decode(bad)
    with pytest.raises(ValueError, match="rows_per_group"):
        codec.encode_grouped(np.zeros((1, 4)), np.zeros((4, 5), np.int64), 5)


# ---------------------------------------------------------------------------------------------------- k-means
def test_weighted_kmeans_rows_matches_brute_force_and_weights_matter() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 200))
    w = rng.random((3, 200)) ** 4
    c, lab = weighted_kmeans_rows(x, w, 4, max_iter=100)
    # labels are the nearest centroid of each row; each centroid is its cluster's weighted mean (a fixed point)
    near = np.abs(x[:, :, None] - c[:, None, :]).argmin(axis=2)
    assert np.array_equal(lab, near)
    for g in range(3):
        for j in range(4):
            sel = lab[g] == j
            if w[g, sel].sum() > 0:
                assert c[g, j] == pytest.approx((w[g, sel] * x[g, sel]).sum() / w[g, sel].sum(), rel=1e-6)
    # weighting lowers the weighted error against plain k-means
    cu, lu = weighted_kmeans_rows(x, np.ones_like(x), 4, max_iter=100)
    err_w = (w * (x - np.take_along_axis(c, lab.astype(int), 1)) ** 2).sum()
    err_u = (w * (x - np.take_along_axis(cu, lu.astype(int), 1)) ** 2).sum()
    assert err_w < err_u


# ---------------------------------------------------------------------------------------------------- technique
def test_fisher_is_zero_for_a_weight_the_output_ignores() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    m = Two()
    f = fisher_diagonal(m, [torch.randn(16, 8)], lambda mod, b: mod(b), target_tensors(m, 1))
    assert f["used.weight"].sum() > 0 and f["unused.weight"].sum() == 0


def test_bound_holds_file_round_trips_and_is_smaller(tmp_path) -> None:
    model, orig = _mlp(), _mlp()
    cal = _batches()
    res = compress_to_bound_(model, cal, PostTrainConfig(max_drop=0.01, min_numel=256))
    assert 0 <= res.drop <= 0.01
    assert res.drop == pytest.approx(_drop(model, orig, cal), abs=1e-6)
    assert any(c.bits for c in res.choices.values())  # something was quantised, not all float16
    path = tmp_path / "m.dz"
    n = save_posttrained(model, res, path)
    assert n < 4 * sum(p.numel() for p in orig.parameters()) / 2.5
    loaded = load(path, model=_mlp(5))
    x = torch.randn(8, 32)
    assert torch.equal(loaded(x), model(x))  # the file holds exactly the chosen weights
    # a looser bound is never larger
    m2 = _mlp()
    res2 = compress_to_bound_(m2, cal, PostTrainConfig(max_drop=0.05, min_numel=256))
    assert res2.drop <= 0.05 and res2.predicted_bytes <= res.predicted_bytes


def test_heldout_split_is_a_partition_of_the_samples_and_keeps_each_batch_whole() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(40).reshape(40, 1)
    batches = [{"input_ids": ids[:24], "mask": torch.ones(24, 7)}, {"input_ids": ids[24:], "mask": torch.ones(16, 3)}]
    fit, held = split_heldout(batches, 0.25, seed=3)
    got = lambda part: sorted(int(i) for b in part for i in b["input_ids"].reshape(-1))  # noqa: E731
    assert sorted(got(fit) + got(held)) == list(range(40)) and len(got(held)) == 10
    mask = heldout_mask(40, 0.25, seed=3)
    assert got(held) == np.flatnonzero(mask).tolist()  # the samples heldout_mask names, in order
    assert {b["mask"].shape[1] for b in held} <= {7, 3} and all(b["mask"].shape[0] == b["input_ids"].shape[0]
                                                               for b in fit + held)  # padding kept per batch
    assert split_heldout(batches, 0.25, seed=3)[1][0]["input_ids"].tolist() == held[0]["input_ids"].tolist()
    whole = ["a", "b", "c", "d"]  # batches whose samples cannot be counted are held out whole
    f2, h2 = split_heldout(whole, 0.5)
    assert sorted(f2 + h2) == whole and len(h2) == 2
    assert heldout_mask(2, 0.01).sum() == 1 and heldout_mask(2, 0.99).sum() == 1  # one to fit, one to check
    with pytest.raises(BoundError, match="at least 2"):
        split_heldout([torch.randn(1, 3, generator=g)], 0.25)


def test_heldout_estimate_matches_numpy_and_says_how_many_inputs_it_needs() -> None:
    a, b = _mlp(0), _mlp(1)
    xs = _batches(2)
    est = estimate_drop(a, b, xs)
    with torch.no_grad():
        d = np.concatenate([1 - nn.functional.cosine_similarity(a(x), b(x), dim=1).numpy() for x in xs])
    assert est.n == 128 and est.drop == pytest.approx(d.mean(), rel=1e-6)
    assert est.se == pytest.approx(d.std(ddof=1) / math.sqrt(128), rel=1e-5)
    bound = est.se / 0.1  # exactly at the trust limit
    assert est.trusted(bound * 1.01) and not est.trusted(bound * 0.99)
    need = est.inputs_needed(bound / 2)  # half the bound: four times the inputs
    assert need == pytest.approx(4 * 128, abs=1) and HeldOut(0.0, 0.0, 5).inputs_needed(0.01) == 32


def test_the_bound_is_met_on_the_heldout_inputs_and_nothing_is_fitted_on_them() -> None:
    """Few calibration inputs: the allocation fitted and checked on them alone can miss the bound on other inputs;
    checked on held-out inputs it meets it there (the result's estimate is the real drop on them), it is never
    smaller than the one checked on the calibration, and the held-out inputs do not change what is fitted."""
    cal, held = _batches(1, seed=1), _batches(2, seed=2)
    cfg = PostTrainConfig(max_drop=0.01, min_numel=256)
    fitted_only = _mlp()
    r0 = compress_to_bound_(fitted_only, cal, cfg)
    model = _mlp()
    res = compress_to_bound_(model, cal, cfg, heldout=held)
    assert res.heldout is not None and res.heldout.n == 128
    assert res.heldout.drop <= 0.01 and res.heldout.drop == pytest.approx(measure_drop(model, _mlp(), held), abs=1e-12)
    assert res.drop == pytest.approx(measure_drop(model, _mlp(), cal), abs=1e-12)  # the fit drop is reported too
    assert measure_drop(fitted_only, _mlp(), held) > 2 * 0.01  # the failure: measured here 0.030
    assert res.predicted_bytes > r0.predicted_bytes  # meeting the bound where it was not fitted costs bytes
    assert res.sensitivity == pytest.approx(r0.sensitivity)  # per-layer factors: measured on `cal` only
    assert set(res.hulls) == set(r0.hulls) and all(
        [c.nbytes for c in res.hulls[n]] == [c.nbytes for c in r0.hulls[n]] for n in res.hulls)


def test_biases_are_rounded_to_float16_measured_stored_in_two_bytes_and_restored_on_failure(tmp_path) -> None:
    cal = _batches()
    sizes = {}
    for on in (True, False):
        model = _mlp()
        res = compress_to_bound_(model, cal, PostTrainConfig(max_drop=0.02, min_numel=256, fp16_others=on))
        assert res.float16_others == (["0.bias", "2.bias", "4.bias"] if on else [])
        for n, p in model.named_parameters():
            if n.endswith("bias"):  # float16 values, still float32 tensors; the measured drop includes them
                assert p.dtype == torch.float32 and torch.equal(p, p.half().float()) == on
        assert res.drop == pytest.approx(_drop(model, _mlp(), cal), abs=1e-6)
        sizes[on] = save_posttrained(model, res, tmp_path / f"{on}.dz")
        loaded = load(tmp_path / f"{on}.dz", model=_mlp(5))
        x = torch.randn(8, 32)
        assert torch.equal(loaded(x), model(x)) and torch.equal(loaded[2].bias, model[2].bias)
    assert sizes[False] - sizes[True] >= 128 + 64 + 16  # about two bytes a bias instead of four
    # a tensor under a parametrization (pruned or shared before) is stored by its own kind: not rounded
    from torch.nn.utils import parametrize

    from deepzip.techniques.posttrain._allocate import float16_others_

    class Same(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w

    model = _mlp()
    parametrize.register_parametrization(model[0], "weight", Same())
    rounded = float16_others_(model, {"2.weight": model[2]})
    assert sorted(rounded) == ["0.bias", "2.bias", "4.bias", "4.weight"]
    assert torch.equal(model[0].parametrizations.weight.original, _mlp()[0].weight)
    # a bound that cannot be met leaves the model as it was, biases included
    model = _mlp()
    with pytest.raises(BoundError):
        compress_to_bound_(model, cal, PostTrainConfig(max_drop=1e-9, min_numel=256))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), _mlp().state_dict().values()))
    # distillation trains the biases in float32 and rounds them back to float16
    model, teacher = _mlp(), _mlp()
    res = compress_to_bound_(model, cal, PostTrainConfig(max_drop=0.05, min_numel=256))
    distill_(model, teacher, res, _batches(2, seed=7), seconds=math.inf, max_steps=5, lr=1e-3)
    assert all(torch.equal(model.get_parameter(n), model.get_parameter(n).half().float()) for n in res.float16_others)
    assert not torch.equal(model[0].bias, teacher[0].bias)


def test_distillation_recovers_agreement() -> None:
    model, teacher = _mlp(), _mlp()
    cal = _batches()
    res = compress_to_bound_(model, cal, PostTrainConfig(max_drop=0.05, min_numel=256))
    dis = _batches(4, seed=7)
    before = _drop(model, teacher, dis)
    losses = distill_(model, teacher, res, dis, seconds=math.inf, max_steps=200, lr=1e-3)
    after = _drop(model, teacher, dis)
    assert len(losses) == 200 and after < 0.9 * before
    # the stored choices follow the fine-tuned codebooks: the file decodes to the model's weights
    w = res.choices["0.weight"].weight((128, 32))
    assert np.array_equal(w, model[0].weight.detach().numpy())


def test_cosine_schedule_decays_the_learning_rate_to_zero(monkeypatch) -> None:
    import time

    model, teacher = _mlp(), _mlp()
    res = compress_to_bound_(model, _batches(), PostTrainConfig(max_drop=0.05, min_numel=256))
    seen: list[tuple[float, float]] = []
    clock = [0.0]

    def tick() -> float:  # a CPU clock that advances 0.01 s per reading: the schedule is checked exactly
        clock[0] += 0.01
        return clock[0]

    step = torch.optim.Adam.step

    def spy(self, *a, **k):  # record the rate of every step and the clock it was set at
        seen.append((self.param_groups[0]["lr"], clock[0]))
        return step(self, *a, **k)

    monkeypatch.setattr(time, "process_time", tick)
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    distill_(model, teacher, res, _batches(4, seed=7), seconds=1.0, lr=1e-3, schedule="cosine")
    start = 0.01  # the first reading: the budget starts when distill_ does
    assert len(seen) > 50
    for lr, now in seen:  # brute force: the half cosine of the budget spent when the step began
        assert lr == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (now - start))), rel=1e-9, abs=1e-15)
    assert all(a >= b for (a, _), (b, _) in zip(seen, seen[1:])) and seen[-1][0] < 0.01e-3
    with pytest.raises(BoundError, match="schedule"):
        distill_(model, teacher, res, _batches(), seconds=1.0, schedule="linear")


def test_step_cap_makes_distillation_exact_and_repeatable(tmp_path, monkeypatch) -> None:
    """With ``max_steps`` and no time budget the run does not depend on the machine: two runs give the same losses
    and the same file, bit for bit; the cosine schedule then decays over the steps."""
    runs = []
    for i in range(2):
        model, teacher = _mlp(), _mlp()
        res = compress_to_bound_(model, _batches(), PostTrainConfig(max_drop=0.05, min_numel=256))
        losses = distill_(model, teacher, res, _batches(3, seed=7), seconds=math.inf, max_steps=37, lr=1e-3)
        save_posttrained(model, res, tmp_path / f"{i}.dz")
        runs.append((losses, (tmp_path / f"{i}.dz").read_bytes()))
    assert len(runs[0][0]) == 37 and runs[0] == runs[1]
    seen: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    model, teacher = _mlp(), _mlp()
    res = compress_to_bound_(model, _batches(), PostTrainConfig(max_drop=0.05, min_numel=256))
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    distill_(model, teacher, res, _batches(), seconds=math.inf, max_steps=40, lr=1e-3, schedule="cosine")
    assert seen == [pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * i / 40)), rel=1e-12) for i in range(40)]
    for bad in (0, -3):
        with pytest.raises(BoundError, match="max_steps"):
            distill_(model, teacher, res, _batches(), max_steps=bad)


def test_hidden_state_distillation_matches_the_named_layers_too() -> None:
    teacher = _mlp()
    model = copy.deepcopy(teacher)
    res = compress_to_bound_(model, _batches(), PostTrainConfig(max_drop=0.05, min_numel=256))
    dis = _batches(4, seed=7)

    def hidden_err(m: nn.Module) -> float:
        with torch.no_grad():
            return sum(float((m[:2](x) - teacher[:2](x)).pow(2).sum() / teacher[:2](x).pow(2).sum()) for x in dis)

    before = hidden_err(model)
    losses = distill_(model, teacher, res, dis, seconds=math.inf, max_steps=100, lr=1e-3, hidden=["1"],
                      hidden_weight=1.0)
    assert len(losses) == 100 and hidden_err(model) < before
    with pytest.raises(BoundError, match="no such module"):
        distill_(model, teacher, res, dis, seconds=0.5, hidden=["nope"])


class _WordTokenizer:
    """A stand-in for a Hugging Face tokenizer: one id per word, pads with 0."""

    def __call__(self, s, padding=False, truncation=False, max_length=None, return_tensors=None):
        rows = [[1] * min(len(x.split()), max_length or 10**9) for x in s]
        if not padding:
            return {"input_ids": rows}
        n = max(map(len, rows))
        return {"input_ids": torch.tensor([r + [0] * (n - len(r)) for r in rows])}


def test_cli_text_calibration_is_split_by_sentence_and_distillation_never_sees_the_heldout_ones(tmp_path) -> None:
    import argparse

    from deepzip.cli.posttrain import _distill_inputs, _split_calibration

    sents = [" ".join(["w"] * (1 + i % 7)) + f" s{i}" for i in range(40)]
    (tmp_path / "cal.txt").write_text("\n".join(sents) + "\n")
    (tmp_path / "dis.txt").write_text("\n".join(sents[::2] + ["another one"]) + "\n")
    a = argparse.Namespace(calibration=str(tmp_path / "cal.txt"), holdout=0.25, batch=8,
                           distill_data=str(tmp_path / "dis.txt"))
    fit, held, held_sents = _split_calibration(a, _WordTokenizer())
    assert held_sents == {x for x, m in zip(sents, heldout_mask(40, 0.25)) if m} and len(held_sents) == 10
    assert sum(len(b["input_ids"]) for b in fit) == 30 and sum(len(b["input_ids"]) for b in held) == 10
    dis = _distill_inputs(a, _WordTokenizer(), fit, held_sents)
    assert sum(len(b["input_ids"]) for b in dis) == 20 + 1 - len(held_sents & set(sents[::2]))
    a.holdout = 0.0
    fit0, held0, _ = _split_calibration(a, _WordTokenizer())
    assert held0 == [] and sum(len(b["input_ids"]) for b in fit0) == 40


def test_text_batches_group_similar_lengths_and_keep_every_sentence() -> None:
    rng = np.random.default_rng(0)
    sents = [" ".join(["w"] * int(k)) for k in rng.integers(1, 60, size=203)]
    batches = text_batches(_WordTokenizer(), sents, 16, max_length=50)
    lengths = sorted(min(len(s.split()), 50) for s in sents)
    assert sorted(int(x) for b in batches for x in (b["input_ids"] > 0).sum(1)) == lengths  # nothing lost
    padded = sum(b["input_ids"].numel() for b in batches)
    # consecutive runs of the sorted lengths: the least padding any split into batches of 16 can have
    best = sum(max(lengths[i:i + 16]) * len(lengths[i:i + 16]) for i in range(0, len(lengths), 16))
    assert padded == best
    shuffled = text_batches(_WordTokenizer(), sents, 16, max_length=50, seed=1)
    assert [b["input_ids"].shape for b in shuffled] != [b["input_ids"].shape for b in batches] or len(batches) < 3
    with pytest.raises(BoundError, match="batch size"):
        text_batches(_WordTokenizer(), sents, 0)


def test_weight_only_fallback_meets_its_sqnr() -> None:
    m = _mlp()
    w0 = {n: mm.weight.detach().clone() for n, mm in target_tensors(m, 256).items()}
    res = compress_weights_only(m, min_sqnr_db=25.0, config=PostTrainConfig(weighting="none", min_numel=256))
    params = dict(m.named_parameters())
    for n, w in w0.items():
        q = params[n].detach()
        sqnr = 10 * torch.log10(w.pow(2).sum() / (w - q).pow(2).sum())
        assert float(sqnr) >= 25.0, n
    assert np.isnan(res.drop)


def test_bad_inputs_one_clear_error() -> None:
    with pytest.raises(BoundError, match="empty"):
        compress_to_bound_(_mlp(), [], PostTrainConfig(min_numel=256))
    with pytest.raises(BoundError, match="does not fit the model"):
        compress_to_bound_(_mlp(), [torch.randn(4, 31)], PostTrainConfig(min_numel=256))
    with pytest.raises(BoundError, match=r"cannot be met.*already loses"):
        compress_to_bound_(_mlp(), _batches(), PostTrainConfig(max_drop=1e-9, min_numel=256, fp16=False, bits=(2,)))
    with pytest.raises(BoundError, match="max_drop"):
        PostTrainConfig(max_drop=0.0)


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def lenet_ckpt(tmp_path):
    from deepzip.io.checkpoint import save_checkpoint
    from deepzip.models import get_model

    path = tmp_path / "l.safetensors"
    save_checkpoint(get_model("lenet300"), path)
    x = np.random.default_rng(0).random((64, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "cal.npy", x)
    return path


def test_cli_ptq_writes_a_loadable_file(tmp_path, lenet_ckpt, capsys) -> None:
    out = tmp_path / "o.dz"
    rc = main(["ptq", "--checkpoint", str(lenet_ckpt), "--calibration", str(tmp_path / "cal.npy"),
               "--max-drop", "0.02", "-o", str(out)])
    assert rc == 0 and out.is_file()
    m = load(out)
    assert m(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert "smaller than fp32" in capsys.readouterr().out


def test_cli_ptq_with_distillation_reports_the_drop_of_the_file_it_writes(tmp_path, lenet_ckpt, capsys) -> None:
    import json

    from deepzip.io.checkpoint import load_checkpoint

    out, doc = tmp_path / "d.dz", tmp_path / "d.json"
    rc = main(["ptq", "--checkpoint", str(lenet_ckpt), "--calibration", str(tmp_path / "cal.npy"), "--max-drop",
               "0.02", "--distill-seconds", "0.3", "--no-gptq", "-o", str(out), "--json", str(doc)])
    assert rc == 0 and "distillation:" in capsys.readouterr().out
    x = torch.from_numpy(np.load(tmp_path / "cal.npy"))
    fit, held = split_heldout([x[:32], x[32:]], 0.25)  # --batch 32, --holdout 0.25: the CLI's split
    original, _ = load_checkpoint(lenet_ckpt)
    d = json.loads(doc.read_text())
    assert d["heldout"]["n"] == 16 and d["drop"] == d["heldout"]["drop"] <= 0.02
    assert d["drop"] == pytest.approx(measure_drop(load(out), original, held), abs=1e-9)
    assert d["calibration_drop"] == pytest.approx(measure_drop(load(out), original, fit), abs=1e-9)


def test_cli_ptq_says_when_too_few_inputs_are_held_out_and_how_many_it_needs(tmp_path, lenet_ckpt, capsys) -> None:
    import json

    out, doc = tmp_path / "o.dz", tmp_path / "o.json"
    rc = main(["ptq", "--checkpoint", str(lenet_ckpt), "--calibration", str(tmp_path / "cal.npy"), "--max-drop",
               "0.02", "--no-gptq", "-o", str(out), "--json", str(doc)])
    text = capsys.readouterr().out
    h = json.loads(doc.read_text())["heldout"]
    assert rc == 0 and h["n"] == 16 and not h["trusted"]  # 16 < 32 held-out inputs
    need = HeldOut(h["drop"], h["se"], h["n"]).inputs_needed(0.02)
    assert need >= 32 and f"about {need} held-out inputs are needed, i.e. about {math.ceil(need / 0.25)}" in text
    rc = main(["ptq", "--checkpoint", str(lenet_ckpt), "--calibration", str(tmp_path / "cal.npy"), "--max-drop",
               "0.02", "--no-gptq", "--holdout", "0", "-o", str(out), "--json", str(doc)])
    assert rc == 0 and json.loads(doc.read_text())["heldout"] is None and "--holdout 0" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty", "shape", "bound", "latent", "holdout", "one"])
def test_cli_ptq_bad_input_writes_nothing(tmp_path, lenet_ckpt, capsys, case) -> None:
    cal = tmp_path / "cal.npy"
    extra = []
    if case == "latent":
        extra = ["--latent-lr", "-1"]
    elif case == "holdout":
        extra = ["--holdout", "1"]
    elif case == "one":
        np.save(cal, np.zeros((1, 1, 28, 28), np.float32))
    elif case == "empty":
        np.save(cal, np.zeros((0, 1, 28, 28), np.float32))
    elif case == "shape":
        np.save(cal, np.zeros((8, 3, 5), np.float32))
    else:
        extra = ["--max-drop", "1e-12"]
    out = tmp_path / "o.dz"
    rc = main(["ptq", "--checkpoint", str(lenet_ckpt), "--calibration", str(cal), "-o", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and err.startswith("deepzip ptq: error:")
    assert {"empty": "empty", "shape": "does not fit", "bound": "cannot be met", "latent": "--latent-lr",
            "holdout": "--holdout 1", "one": "at least 2"}[case] in err


def test_one_setting_for_all_tensors_is_the_cheapest_within_the_bound_brute_force() -> None:
    """The ablation applies one setting (bits, groups, outliers, grid) to every tensor: each tensor takes the
    setting's candidate when its hull has one, else its cheapest hull candidate at least as accurate (float16, a
    finer grid, more k-means bits). Brute force: every setting of every hull applied that way and measured; the
    result is the smallest one within the bound."""
    cal = _batches()
    per_layer = compress_to_bound_(_mlp(), cal, PostTrainConfig(max_drop=0.02, min_numel=256))
    m = _mlp()
    uniform = compress_to_bound_(m, cal, PostTrainConfig(max_drop=0.02, min_numel=256, per_layer=False))
    assert uniform.drop <= 0.02 and uniform.drop == pytest.approx(_drop(m, _mlp(), cal), abs=1e-6)

    def at_least_as_accurate(c, s) -> bool:  # s = (bits, rows_per_group, outlier_frac, grid)
        return c.bits == 0 or (c.grid >= s[3] if s[3] else c.bits >= s[0] and not c.grid)

    found = []
    for s in {c.setting[:4] for h in uniform.hulls.values() for c in h}:
        pick = {n: next((c for c in h if c.setting[:4] == s), None)
                or min((c for c in h if at_least_as_accurate(c, s)), key=lambda c: c.nbytes)
                for n, h in uniform.hulls.items()}
        trial = _mlp()
        params = dict(trial.named_parameters())
        with torch.no_grad():
            for n, c in pick.items():
                params[n].copy_(torch.from_numpy(c.weight(params[n].shape)))
            for n in uniform.float16_others:  # the biases, in float16 as allocation measured them
                params[n].copy_(params[n].half().float())
        drop = measure_drop(trial, _mlp(), cal)
        if drop <= 0.02:
            found.append((sum(c.nbytes for c in pick.values()), drop, {n: c.setting for n, c in pick.items()}))
    size, drop, settings = min(found, key=lambda f: f[0])
    assert uniform.predicted_bytes == size and uniform.drop == pytest.approx(drop, abs=1e-12)
    assert {n: c.setting for n, c in uniform.choices.items()} == settings
    # one setting, not one per layer: per-layer budgets find a model at least as small
    assert len(found) > 1 and per_layer.predicted_bytes <= uniform.predicted_bytes * 1.05


def test_a_file_with_a_grouped_tensor_says_format_1_2(tmp_path) -> None:
    """Older (1.0 / 1.1) readers would fail on the kind: the minor version says which reader a file needs, in the
    one-shot writer and the streaming one alike."""
    import numpy as np

    from deepzip import codec

    enc = codec.encode_grouped(np.array([[-1.0, 1.0], [0.0, 2.0]]), np.array([[0, 1, 1], [1, 0, 1]]), 1, name="w")
    assert codec.read(codec.to_bytes({"w": enc})).version == (1, 2)
    with codec.DzWriter(tmp_path / "s.dz") as w:
        w.add(enc)
    assert codec.read(tmp_path / "s.dz").version == (1, 2)


# ---------------------------------------------------------------------------------------------------- session 4
def _gptq_reference(w: np.ndarray, h: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """GPTQ written out plainly (no blocks, no column reordering): round column j, then spread its error."""
    from deepzip.techniques.posttrain._gptq import _nearest

    c = w.shape[1]
    hinv = np.linalg.cholesky(np.linalg.inv(h + 0.01 * np.mean(np.diag(h)) * np.eye(c))).T
    wq = w.astype(np.float64).copy()
    lab = np.zeros(w.shape, np.int64)
    for j in range(c):
        lab[:, j] = _nearest(cb, wq[:, j])
        e = (wq[:, j] - cb[lab[:, j]]) / hinv[j, j]
        wq[:, j:] -= np.outer(e, hinv[j, j:])
    return lab


def test_gptq_round_matches_the_plain_algorithm_and_beats_nearest_rounding() -> None:
    from deepzip.techniques.posttrain import gptq_round
    from deepzip.techniques.posttrain._gptq import _nearest

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 24)) + 0.1 * rng.normal(size=(400, 24))  # correlated
    h = x.T @ x / len(x)
    w = rng.normal(size=(10, 24))
    cb = np.linspace(-2, 2, 5)
    order = np.argsort(-np.diag(h), kind="stable")  # act-order: columns of most input energy first
    ref = _gptq_reference(w[:, order], h[np.ix_(order, order)], cb)[:, np.argsort(order)]
    for block in (1, 5, 128):  # lazy block updates change nothing
        assert np.array_equal(gptq_round(w, h, cb, block=block), ref)
    near = _nearest(cb, w)
    out_err = lambda lab: float((((w - cb[lab]) @ h) * (w - cb[lab])).sum())  # noqa: E731
    assert out_err(ref) < 0.5 * out_err(near)
    # a diagonal Gram matrix has nothing to compensate through: GPTQ is nearest rounding
    assert np.array_equal(gptq_round(w, np.diag(rng.uniform(1, 2, 24)), cb), near)
    # kept weights are rounded to themselves and pass no error on
    keep = np.zeros_like(w, bool)
    keep[:, :] = True
    assert np.array_equal(gptq_round(w, h, cb, keep), near)


def test_grid_candidate_error_is_bounded_and_file_size_is_predicted(tmp_path) -> None:
    from deepzip.techniques.posttrain._candidates import _candidate

    rng = np.random.default_rng(1)
    w = (rng.standard_t(3, size=(64, 96)) * 0.05).astype(np.float32)  # heavy tails
    cfg = PostTrainConfig()
    for r in (2.0, 8.0):
        c = _candidate(w, np.ones_like(w), 0, 0, 0.0, False, cfg, grid=r)
        assert c is not None and c.grid == r
        step = float(w.astype(np.float64).std()) / r
        err = np.abs(c.weight(w.shape) - w).max()
        assert err <= step / 2 * 1.01 + 1e-3 * np.abs(w).max()  # half a step (+ float16 rounding of levels)
        enc = c.encode("t", w.shape)
        assert np.array_equal(codec.decode(enc), c.weight(w.shape))
        size = sum(len(v) for v in enc.sections.values())
        assert abs(size - c.nbytes) < 0.03 * size + 64  # entropy estimate vs real Huffman stream


def test_split_and_per_sample_fisher_match_the_exact_gauss_newton_diagonal() -> None:
    from deepzip.techniques.posttrain._calibration import _split

    x = torch.randn(5, 3)
    assert [t.shape for t in _split(x)] == [(1, 3)] * 5
    assert [t.shape[0] for t in _split(x, 2)] == [2, 2, 1]
    d = _split({"a": torch.zeros(2, 4), "b": torch.ones(2)})
    assert len(d) == 2 and d[1]["a"].shape == (1, 4)
    assert len(_split({"a": torch.zeros(2), "b": torch.zeros(3)})) == 1  # samples cannot be told apart: kept whole
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    xs = torch.randn(6, 4)
    mods = target_tensors(m, 1)
    # exact: sum over samples and output units of (d u_k / d w)**2, u = normalised output
    exact = {n: torch.zeros_like(mm.weight) for n, mm in mods.items()}
    for i in range(len(xs)):
        y = m(xs[i:i + 1])
        u = y / y.norm()
        for k in range(3):
            gs = torch.autograd.grad(u[0, k], [mm.weight for mm in mods.values()], retain_graph=True)
            for n, g in zip(mods, gs):
                exact[n] += g**2 / len(xs)
    est = fisher_diagonal(m, [xs], lambda mod, b: mod(b), mods, probes=300)
    for n in mods:
        rel = np.abs(est[n] - exact[n].numpy()).sum() / exact[n].numpy().sum()
        assert rel < 0.15, (n, rel)


def test_quantisation_aware_distillation_moves_indices_and_the_file_follows(tmp_path) -> None:
    model, teacher = _mlp(), _mlp()
    cal = _batches()
    cfg = PostTrainConfig(max_drop=0.2, min_numel=256, bits=(2,), group_rows=(0,), outlier_fracs=(0.0,),
                          grids=(1.0, 2.0), gptq=True)
    res = compress_to_bound_(model, cal, cfg)
    assert all(c.gptq and c.codebooks.shape[0] == 1 for c in res.choices.values() if c.bits)
    labels0 = {n: c.labels.copy() for n, c in res.choices.items() if c.bits}
    dis = _batches(4, seed=7)
    before = _drop(model, teacher, dis)
    distill_(model, teacher, res, dis, seconds=math.inf, max_steps=200, lr=1e-3, latent_lr=1e-3)
    assert _drop(model, teacher, dis) < 0.7 * before  # fits the distillation inputs (held-out: see the benchmark)
    assert any((res.choices[n].labels != lab).any() for n, lab in labels0.items())  # indices moved
    path = tmp_path / "q.dz"
    save_posttrained(model, res, path)
    x = torch.randn(8, 32)
    assert torch.equal(load(path, model=_mlp(5))(x), model(x))


# ---------------------------------------------------------------------------------------------------- session 5
class _Bag(nn.Module):
    """Token ids (B, L) -> mean of their embeddings -> Linear: the shape of a sentence encoder's first and last
    steps."""

    def __init__(self, vocab: int = 2000, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids).mean(dim=1))


def _zipf_ids(n: int, seed: int, vocab: int = 300) -> torch.Tensor:
    """Ids of a text: Zipf over the first ``vocab`` rows (most rows of a real vocabulary are rare)."""
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    return torch.multinomial(p / p.sum(), n * 12, replacement=True, generator=g).reshape(n, 12)


def test_row_counts_and_usage_fisher_match_brute_force() -> None:
    from deepzip.techniques.posttrain import row_counts, unseen_scale, usage_fisher

    model = _Bag()
    cal = [_zipf_ids(32, 1), _zipf_ids(16, 2)]
    counts = row_counts(model, cal, lambda m, b: m(b), {"emb.weight": model.emb, "out.weight": model.out})
    assert list(counts) == ["emb.weight"]  # only embedding tables have rows to count
    ref = np.zeros(2000, np.int64)
    for b in cal:
        for i in b.reshape(-1).tolist():
            ref[i] += 1
    assert np.array_equal(counts["emb.weight"], ref)
    f = np.random.default_rng(0).random((2000, 16))
    u = usage_fisher(f, ref)
    used = ref > 0
    profile = f[used].mean(axis=0)
    scale = unseen_scale(f, ref)
    for r in (0, int(np.flatnonzero(used)[-1]), int(np.flatnonzero(~used)[0])):  # row by row
        c = ref[r] if ref[r] else (ref == 1).sum() / (~used).sum() * scale
        assert np.allclose(u[r], c / ref[used].mean() * profile)


def test_unseen_scale_is_the_rare_rows_sensitivity_per_occurrence_brute_force() -> None:
    """Rows seen once stand for the unseen ones: the scale is their sensitivity per occurrence over the average
    occurrence's, counted on the text the sensitivity came from; widened to rarer-than-k rows when few are seen once."""
    rng = np.random.default_rng(3)
    counts = np.concatenate([rng.integers(2, 50, 40), np.ones(20, np.int64), np.zeros(40, np.int64)])
    per_occ = np.where(counts == 1, 5.0, 1.0)  # a rare row's occurrence weighs 5x a frequent row's
    f = (per_occ * counts)[:, None] * np.full((1, 3), 1 / 3)
    assert unseen_scale(f, counts, min_rows=16) == pytest.approx(
        5.0 / ((5.0 * 20 + counts[:40].sum()) / (20 + counts[:40].sum())))
    # the sensitivity measured on a subset of the counted text: per occurrence there, rare rows chosen by `counts`
    sub = np.minimum(counts, rng.integers(0, 3, 100))
    fs = (per_occ * sub)[:, None] * np.full((1, 3), 1 / 3)
    seen = sub > 0
    rare = seen & (counts == 1)
    assert rare.sum() >= 4
    brute = (fs[rare].sum() / sub[rare].sum()) / (fs[seen].sum() / sub[seen].sum())
    assert unseen_scale(fs, counts, sub, min_rows=4) == pytest.approx(brute)
    # too few rows seen once: rows seen <= 2, <= 4, ... times join until min_rows qualify
    few = counts.copy()
    few[40:58] = 3  # only 2 rows left seen once; rows seen 2-3 times join them
    k_rows = (few > 0) & (few <= 4)
    brute = (f[k_rows].sum() / few[k_rows].sum()) / (f[few > 0].sum() / few[few > 0].sum())
    assert k_rows.sum() >= 16 and unseen_scale(f, few, min_rows=16) == pytest.approx(brute)
    assert unseen_scale(np.zeros((4, 2)), np.array([3, 1, 0, 0])) == 1.0  # no sensitivity: no change
    dull = np.where(counts == 1, 0.2, 1.0)[:, None] * counts[:, None] * np.ones((1, 3))  # rare rows less sensitive
    assert unseen_scale(dull, counts, min_rows=16) == 1.0  # a floor: never cheaper than the average occurrence


def test_heldout_search_weighs_unseen_rows_by_what_the_heldout_inputs_measure() -> None:
    """With held-out inputs, the predicted damage to embedding rows the calibration never uses is tried at several
    weights (each with its own budget search); the result is the smallest of the single-weight runs (brute force)
    and meets the bound on the held-out inputs."""
    cal, held = [_zipf_ids(32, 1)], [_zipf_ids(64, 2)]
    fwd = lambda m, b: m(b)  # noqa: E731
    size = {}
    for ks in ((1.0,), (3.0,), (10.0,), (1.0, 3.0, 10.0)):
        model = _Bag()
        res = compress_to_bound_(model, cal, PostTrainConfig(max_drop=0.01, min_numel=256, unseen_weights=ks),
                                 forward=fwd, heldout=held)
        assert res.heldout is not None and res.heldout.drop <= 0.01
        assert res.heldout.drop == pytest.approx(measure_drop(model, _Bag(), held, fwd), abs=1e-12)
        size[ks] = res.predicted_bytes
    assert size[(1.0, 3.0, 10.0)] == min(size[(1.0,)], size[(3.0,)], size[(10.0,)])
    assert len(set(size.values())) > 1  # the weight matters here


def test_tiered_embedding_rows_are_stored_apart_and_make_the_file_smaller(tmp_path) -> None:
    """Calibration text uses a fraction of the vocabulary; the tiered candidate stores those rows fine and the rest
    coarse (kind ``tiered`` in the file), within the bound, smaller than without tiers; the file holds exactly
    the chosen weights, and unused rows stay within half a coarse step of the original."""
    cal = [_zipf_ids(32, s) for s in (1, 2)]
    used = torch.zeros(2000, dtype=torch.bool)
    used[torch.cat(cal).unique()] = True
    assert 0.05 < used.float().mean() < 0.15
    sizes = {}
    for tiers in ((0.5, 1.0), ()):
        model, orig = _Bag(), _Bag()
        cfg = PostTrainConfig(max_drop=0.01, min_numel=256, tier_grids=tiers)
        res = compress_to_bound_(model, cal, cfg, forward=lambda m, b: m(b))
        assert res.drop <= 0.01
        path = tmp_path / f"t{len(tiers)}.dz"
        sizes[tiers] = save_posttrained(model, res, path)
        f = codec.read(path)
        kinds = {n: t.kind for n, t in f.tensors.items()}
        c = res.choices["emb.weight"]
        # the drop: measured on the calibration, plus the predicted damage to the rows it never uses
        unseen = sum(res.sensitivity[n] * ch.unseen_error for n, ch in res.choices.items())
        assert c.unseen_error > 0 and res.drop == pytest.approx(_drop(model, orig, cal) + unseen, abs=1e-6)
        if tiers:
            assert kinds["emb.weight"] == "tiered" and c.coarse_grid in tiers
            assert np.array_equal(c.row_tiers, (~used).numpy().astype(np.uint8))
            w0 = orig.emb.weight.detach().double()
            step = float(w0.std()) / c.coarse_grid
            err = (model.emb.weight.detach().double() - w0)[~used].abs().max()
            assert err <= step / 2 * 1.01 + 1e-3 * float(w0.abs().max())
        loaded = load(path, model=_Bag(seed=5))
        assert torch.equal(loaded.emb.weight, model.emb.weight)
        if tiers:  # distillation trains the rest; the quantised table stays as stored
            before = model.emb.weight.detach().clone()
            out_before = model.out.weight.detach().clone()
            losses = distill_(model, orig, res, cal, forward=lambda m, b: m(b), seconds=math.inf, max_steps=100,
                              lr=1e-3)
            assert len(losses) == 100 and sum(losses[-3:]) <= sum(losses[:3])
            assert torch.equal(model.emb.weight, before) and not torch.equal(model.out.weight, out_before)
            save_posttrained(model, res, path)
            back = load(path, model=_Bag(seed=5))
            assert torch.equal(back.emb.weight, model.emb.weight) and torch.equal(back.out.weight, model.out.weight)
    assert sizes[(0.5, 1.0)] < 0.9 * sizes[()]
