"""Tensor-train convolutions (TTConv2d, Garipov et al. 2016) and the TT paths of the decomposition API: the forward
pass against a brute-force im2col reference, TT-SVD exact at full rank, files that reload with identical outputs,
pruning and sharing acting on the cores, and bad input giving one error that names the layer."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepzip.errors import LowRankError
from deepzip.io.serialize import load, save
from deepzip.models import get_model
from deepzip.pipeline import PipelineConfig, compress_
from deepzip.techniques.lowrank import (
    TTConv2d,
    TTLinear,
    choose_ranks,
    count_macs,
    decompose_,
    energy_rank,
    lowrank_spec,
    lowrank_table,
    rebuild_,
    tt_svd,
)
from deepzip.techniques.prune import prunable_tensors, prune_
from deepzip.techniques.share import share_weights_


def brute_kernel(layer: TTConv2d) -> torch.Tensor:
    """K[(p, c), s] by the defining product, one entry at a time: window[p] @ G_1[:, c_1, s_1, :] @ ... (float64)."""
    cores = [c.detach().double() for c in layer.cores]
    window = cores[0][0, :, 0, :]  # (P, r_0)
    P, C, S = window.shape[0], layer.in_channels, layer.out_channels
    K = torch.zeros(P, C, S, dtype=torch.float64)
    for c_idx in itertools.product(*[range(m) for m in layer.in_modes]):
        for s_idx in itertools.product(*[range(m) for m in layer.out_modes]):
            chain = window  # (P, r)
            for core, ci, si in zip(cores[1:], c_idx, s_idx):
                chain = chain @ core[:, ci, si, :]
            c = int(sum(i * math.prod(layer.in_modes[k + 1:]) for k, i in enumerate(c_idx)))
            s = int(sum(i * math.prod(layer.out_modes[k + 1:]) for k, i in enumerate(s_idx)))
            K[:, c, s] = chain[:, 0]
    return K


def brute_conv(layer: TTConv2d, x: torch.Tensor) -> torch.Tensor:
    """im2col patches times K: the conv as the paper writes it (no F.conv2d)."""
    kh, kw = layer.kernel_size
    K = brute_kernel(layer)  # (P, C, S), p = h * kw + w
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        pad = (0, 0)
    else:
        pad = layer.padding
    cols = F.unfold(x, (kh, kw), dilation=layer.dilation, padding=pad, stride=layer.stride)  # (B, C*P, L), (c, p)
    B, _, L = cols.shape
    cols = cols.reshape(B, layer.in_channels, kh * kw, L)
    y = torch.einsum("bcpl,pcs->bsl", cols, K)
    h = (x.shape[2] + 2 * pad[0] - layer.dilation[0] * (kh - 1) - 1) // layer.stride[0] + 1
    w = (x.shape[3] + 2 * pad[1] - layer.dilation[1] * (kw - 1) - 1) // layer.stride[1] + 1
    y = y.reshape(B, layer.out_channels, h, w)
    return y + layer.bias.detach()[:, None, None] if layer.bias is not None else y


@pytest.mark.parametrize("geometry", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(3, 2), stride=2),
    dict(kernel_size=3, padding=2, dilation=2, padding_mode="reflect", bias=False),
    dict(kernel_size=1, stride=(1, 2)),
    dict(kernel_size=3, padding=1, padding_mode="circular"),
])
@pytest.mark.parametrize("mode", ["dense", "cores"])
def test_forward_equals_the_im2col_reference(geometry: dict, mode: str) -> None:
    torch.manual_seed(0)
    layer = TTConv2d(6, 8, in_modes=(2, 3), out_modes=(4, 2), ranks=(3, 2), **geometry).double()
    layer.forward_mode = mode
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), brute_conv(layer, x), rtol=0, atol=1e-12)
    # the kernel, read as nn.Conv2d's weight, is the same K
    torch.testing.assert_close(layer.kernel().permute(2, 3, 1, 0).reshape(-1, 6, 8),
                               brute_kernel(layer), rtol=0, atol=1e-12)


def test_three_cores_and_gradients_flow_in_both_modes() -> None:
    torch.manual_seed(1)
    layer = TTConv2d(8, 8, 3, (2, 2, 2), (2, 2, 2), (4, 3, 2), padding=1).double()
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), brute_conv(layer, x), rtol=0, atol=1e-12)
    grads = []
    for mode in ("dense", "cores"):
        layer.forward_mode = mode
        layer.zero_grad()
        layer(x).square().sum().backward()
        grads.append([c.grad.clone() for c in layer.cores])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_tt_svd_at_full_rank_reproduces_the_kernel_and_the_outputs() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1).double()
    tt = TTConv2d.from_conv(conv, (2, 4), (3, 4), ranks=10_000)
    assert tt.ranks == (9, 16, 1)  # the full TT ranks: min(9, 2*3 * 4*4), min(9 * 2*3, 4*4)
    torch.testing.assert_close(tt.kernel(), conv.weight, rtol=0, atol=1e-12)
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(tt(x), conv(x), rtol=0, atol=1e-12)
    # truncation: fewer parameters, an error that shrinks as the ranks grow, exact again at the full ranks
    errors = []
    for r in (1, 2, 4, 8, 16):
        w = TTConv2d.from_conv(conv, (2, 4), (3, 4), ranks=r).kernel().detach()
        errors.append(float((w - conv.weight.detach()).norm() / conv.weight.detach().norm()))
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])) and errors[0] > 0.1


def test_tt_svd_rank_rule_and_explicit_rank_lists() -> None:
    torch.manual_seed(3)
    a = torch.randn(24, 10, dtype=torch.float64)
    cores = tt_svd(a, (2, 3, 4), (2, 5, 1), [3, 2])
    assert [tuple(c.shape) for c in cores] == [(1, 2, 2, 3), (3, 3, 5, 2), (2, 4, 1, 1)]
    exact = tt_svd(a, (2, 3, 4), (2, 5, 1), 1000, rank_fn=lambda m: energy_rank(m, 1.0))
    full = exact[0].new_ones(1, 1, 1)
    for core in exact:  # contract by hand: (M, N, r)
        M, N = full.shape[:2]
        full = torch.einsum("MNr,rmns->MmNns", full, core).reshape(M * core.shape[1], N * core.shape[2], -1)
    torch.testing.assert_close(full[..., 0], a, rtol=0, atol=1e-12)
    with pytest.raises(LowRankError, match="1 ranks for 3 modes, expected 2"):
        tt_svd(a, (2, 3, 4), (2, 5, 1), [3])


def test_init_has_conv_scale_and_params_count() -> None:
    torch.manual_seed(4)
    layer = TTConv2d(64, 64, 3, (4, 4, 4), (4, 4, 4), (8, 8, 8))
    std = float(layer.kernel().detach().std())
    assert 0.5 < std / (1 / math.sqrt(3 * 64 * 9)) < 2  # about nn.Conv2d's default scale
    assert layer.n_params == 9 * 8 + 8 * 4 * 4 * 8 + 8 * 4 * 4 * 8 + 8 * 4 * 4 * 1 + 64
    assert layer.window_core.shape == (9, 8)


def test_count_macs_in_both_modes() -> None:
    layer = TTConv2d(16, 32, 3, (4, 4), (4, 8), (4, 2), padding=1, bias=False)
    x = torch.zeros(2, 16, 6, 6)
    dense = count_macs(layer, x)[""]
    assert dense == 2 * 32 * 36 * 16 * 9
    layer.forward_mode = "cores"
    # window conv: B C r_0 H W P; core 1: rows * 1 * 16 * 4 * 4 * 2; core 2: rows * 4 * 4 * 2 * 8 * 1
    rows = 2 * 36
    assert count_macs(layer, x)[""] == 2 * 16 * 4 * 36 * 9 + rows * 16 * 4 * 4 * 2 + rows * 4 * 4 * 2 * 8


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.fc1 = nn.Linear(8 * 7 * 7, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def test_decompose_tt_convs_and_linears_rows_and_exactness() -> None:
    torch.manual_seed(5)
    m = Net().double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    before = m(x)
    decompose_(m, ranks={"conv2": 1000, "fc1": 1000}, conv_factorization="tt", linear_factorization="tt",
               tt_modes={"conv2": ((2, 2), (2, 4)), "fc1": ((8, 49), (4, 6))}, skip_larger=False)
    assert isinstance(m.conv2, TTConv2d) and isinstance(m.fc1, TTLinear)
    rows = {r["layer"]: r for r in lowrank_table(m)}
    assert rows["conv2"]["kind"] == "ttconv" and rows["conv2"]["in_modes"] == (2, 2)
    assert rows["conv2"]["params_after"] == m.conv2.n_params and rows["fc1"]["ranks"] == (1, 32, 1)
    assert max(r["rel_error"] for r in rows.values()) < 1e-12
    torch.testing.assert_close(m(x), before, rtol=0, atol=1e-10)


def test_old_keyword_method_and_energy_rule_for_tt() -> None:
    m = Net()
    rows = choose_ranks(m, method="energy", energy=0.5, layers=["conv2"], conv_factorization="tt", tt_cores=2)
    (row,) = rows
    assert row["method"] == "energy" and row["kind"] == "ttconv" and len(row["ranks"]) == 3
    assert choose_ranks(m, "energy", energy=0.5, layers=["conv2"], conv_factorization="tt", tt_cores=2) == rows


def test_save_load_round_trip_with_pruned_and_shared_cores(tmp_path) -> None:
    torch.manual_seed(6)
    spec = [{"layer": "conv2", "kind": "ttconv", "shape": [50, 20, 5, 5], "ranks": [3, 2, 1], "in_modes": [4, 5],
             "out_modes": [5, 10]},
            {"layer": "fc1", "kind": "tt", "shape": [500, 800], "ranks": [1, 3, 1], "in_modes": [20, 40],
             "out_modes": [20, 25]}]
    m = rebuild_(get_model("lenet5"), spec).eval()
    assert lowrank_spec(m) == spec
    names = list(prunable_tensors(m))
    assert {"conv2.cores.0", "conv2.cores.1", "conv2.cores.2", "fc1.cores.0", "fc1.cores.1"} <= set(names)
    prune_(m, {"conv2.cores.1": 0.5, "fc1.cores.1": 0.7})
    share_weights_(m, {"conv2.cores.1": 3, "fc1.cores.1": 4, "conv2.cores.0": 2})
    assert float((m.fc1.cores[1] == 0).float().mean()) >= 0.69
    assert len(torch.unique(m.conv2.cores[0])) <= 4
    x = torch.rand(3, 1, 28, 28)
    path = tmp_path / "tt.dz"
    save(m, path)
    again = load(path, trainable=True).eval()  # the file alone: architecture name + the header's record
    assert torch.equal(again(x), m(x)) and lowrank_spec(again) == spec
    for mode in ("dense", "cores"):  # the same function in either forward mode
        for layer in again.modules():
            if isinstance(layer, (TTConv2d, TTLinear)):
                layer.forward_mode = mode
        torch.testing.assert_close(again(x), m(x), rtol=1e-5, atol=1e-5)


def test_masked_cores_stay_zero_after_optimizer_steps() -> None:
    torch.manual_seed(7)
    layer = TTConv2d(4, 8, 3, (2, 2), (2, 4), (3, 2), padding=1)
    prune_(layer, {"cores.1": 0.5})
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(2, 4, 5, 5)).square().mean().backward()
        opt.step()
    assert float((layer.cores[1] == 0).float().mean()) >= 0.5


def test_pipeline_decompose_stage_takes_tt(tmp_path) -> None:
    m = get_model("lenet5")
    cfg = PipelineConfig(model="lenet5", decompose="tt", decompose_ranks={"conv2": 4, "fc1": 4},
                         sparsity={"fc1.cores.1": 0.5}, prune_rounds=1, bits=4)
    info: dict = {}
    compress_(m, cfg, retrain=lambda model, stage: None, info=info)
    assert isinstance(m.conv2, TTConv2d) and isinstance(m.fc1, TTLinear)
    assert [r["kind"] for r in info["decompose"]["layers"]] == ["ttconv", "tt"]
    path = tmp_path / "p.dz"
    save(m, path)
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(load(path, trainable=True).eval()(x), m.eval()(x))


@pytest.mark.parametrize(("make", "pattern"), [
    (lambda: TTConv2d(6, 8, 3, (2, 3), (2, 4), (2, 2), groups=2, where="conv9"),
     "conv9: groups=2; a TT-conv needs groups=1"),
    (lambda: TTConv2d(6, 8, 3, (2, 2), (2, 4), (2, 2)), r"modes \(2, 2\) x \(2, 4\) give 4 x 8 channels"),
    (lambda: TTConv2d(6, 8, 3, (2, 3), (2, 4), (2,)), r"ranks=\(2,\), expected 2 inner ranks"),
    (lambda: TTConv2d(6, 8, 3, (2, 3), (2, 4), (2, 0)), "rank=0, expected an integer >= 1"),
    (lambda: TTConv2d(6, 8, 3, (2, 3), (2, 4, 1), (2, 2)), "differ in length"),
    (lambda: TTConv2d(6, 8, 0, (2, 3), (2, 4), (2, 2)), "TTConv2d: "),
    (lambda: decompose_(nn.Sequential(nn.Conv2d(4, 8, 3, groups=2)), conv_factorization="tt"),
     "0: Conv2d with groups=2; a TT-conv needs groups=1"),
    (lambda: decompose_(Net(), ranks={"conv2": 2}, conv_factorization="tt", tt_modes={"conv2": ((3, 2), (2, 4))}),
     r"conv2: modes \(3, 2\) x \(2, 4\) give 6 x 8 channels, the layer has 4 in, 8 out"),
    (lambda: decompose_(Net(), ranks={"conv2": [2, 99]}, conv_factorization="tt",
                        tt_modes={"conv2": ((2, 2), (2, 4))}), "conv2: TT rank 1=99 exceeds the full TT rank"),
    (lambda: decompose_(Net(), ranks={"conv2": [2]}, conv_factorization="tt", tt_modes={"conv2": ((2, 2), (2, 4))}),
     r"conv2: ranks=\[2\], expected 2 inner ranks"),
    (lambda: decompose_(Net(), conv_factorization="cp"), "conv_factorization='cp', expected one of tucker2, tt"),
    (lambda: rebuild_(Net(), [{"layer": "conv2", "kind": "ttconv", "shape": [8, 4, 3, 3], "ranks": [3, 2, 2],
                               "in_modes": [2, 2], "out_modes": [2, 4]}]), r"ranks \[3, 2, 2\] must end with 1"),
    (lambda: rebuild_(Net(), [{"layer": "conv2", "kind": "ttconv", "shape": [8, 4, 3, 3], "ranks": [3, 2, 1],
                               "in_modes": [4, 2], "out_modes": [2, 4]}]), "give 8 x 8 channels, the layer is 4 x 8"),
    (lambda: rebuild_(Net(), [{"layer": "fc1", "kind": "ttconv", "shape": [24, 392, 1, 1], "ranks": [3, 1],
                               "in_modes": [392], "out_modes": [24]}]), "fc1: the spec has a TTConv2d"),
])
def test_bad_input_is_one_error_naming_the_layer(make, pattern: str) -> None:
    with pytest.raises(LowRankError, match=pattern) as info:
        make()
    assert "\n" not in str(info.value)
