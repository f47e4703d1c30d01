"""Foreign checkpoints in and out, the planes kind, streaming files: exact round trips and one-line errors."""

from __future__ import annotations

import hashlib
import json
import lzma
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import deepzip
from deepzip import codec
from deepzip.codec import _planes
from deepzip.errors import CheckpointError, DeepzipFormatError
from deepzip.io.foreign import compress_checkpoint, decompress_checkpoint, open_source
from deepzip.io.serialize import load, load_state_dict, save

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).parents[1]


def every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 40, generator=g) * 0.05
    w[w.abs() < 0.02] = 0.0  # pruned-only: planes behind a mask
    special = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -1e-40, 3.0])
    return {
        "f32": w, "f32.special": special, "f16": w.half(), "bf16": w.bfloat16(), "f64": w.double(),
        "i8": torch.randint(-128, 127, (50,), generator=g, dtype=torch.int8), "i16": torch.arange(-70, 70).short(),
        "i32": torch.arange(1000, dtype=torch.int32), "i64": torch.tensor(7), "u8": torch.arange(256).byte(),
        "bool": torch.rand(333, generator=g) < 0.3, "empty": torch.zeros(0, 3),
        "bf16.scalar": torch.tensor(1.5).bfloat16(),
        "shared": torch.tensor([-0.5, 0.25, 0.0, 0.75])[torch.randint(0, 4, (64, 64), generator=g)],
    }


def test_safetensors_of_every_dtype_round_trips_byte_for_byte(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file(every_dtype(), src, metadata={"producer": "test"})
    info = compress_checkpoint(src, tmp_path / "m.dz")
    kinds = {r["name"]: r["kind"] for r in info["tensors"]}
    assert kinds["f32"] == "planes+mask" and kinds["shared"] in ("codebook", "sparse")
    out = decompress_checkpoint(tmp_path / "m.dz", tmp_path / "back.safetensors")
    assert out.read_bytes() == src.read_bytes()
    sd = load_state_dict(tmp_path / "m.dz")  # decoded in the saved dtypes
    for k, v in every_dtype().items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape
        assert torch.equal(sd[k].view(-1).view(torch.uint8), v.contiguous().view(-1).view(torch.uint8))


def test_state_dict_file_with_tied_tensors_stores_them_once_and_reties(tmp_path):
    emb = torch.randn(500, 64)
    sd = {"emb.weight": emb, "head.weight": emb, "head.bias": torch.zeros(500), "ln": torch.ones(64).bfloat16()}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    info = compress_checkpoint(tmp_path / "pytorch_model.bin", tmp_path / "m.dz")
    assert info["bytes"] < 1.1 * emb.numel() * 4  # once, not twice
    decompress_checkpoint(tmp_path / "m.dz", tmp_path / "back.bin")
    back = torch.load(tmp_path / "back.bin", weights_only=True)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)
    assert back["emb.weight"].data_ptr() == back["head.weight"].data_ptr()


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(400, 32)
        self.head = nn.Linear(32, 400, bias=False)
        self.head.weight = self.emb.weight


def test_deepzip_save_of_tied_bf16_model_stores_once_and_reties(tmp_path):
    m = Tied().bfloat16()
    n = save(m, tmp_path / "t.dz")
    assert n < 400 * 32 * 2  # one bf16 copy, entropy-coded: below its raw bytes
    sd = load_state_dict(tmp_path / "t.dz")
    assert sd["emb.weight"] is sd["head.weight"] and sd["emb.weight"].dtype == torch.bfloat16
    m2 = load(tmp_path / "t.dz", Tied().bfloat16())
    assert torch.equal(m2.emb.weight, m.emb.weight) and m2.head.weight is m2.emb.weight


def test_pruned_only_tensor_is_mask_plus_values_and_beats_xz():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(256, 512, generator=g) * 0.05
    w[torch.rand(w.shape, generator=g) < 0.5] = 0  # 50% pruned, every kept value distinct
    a = w.numpy()
    t = codec.encode_lossless(a)
    assert t.kind == "planes" and t.meta["masked"] == 1
    assert np.array_equal(codec.decode(t).view(np.uint32), a.view(np.uint32))
    assert t.nbytes < len(lzma.compress(a.tobytes(), preset=6))


def test_encode_lossless_takes_the_smallest_candidate():
    rng = np.random.default_rng(2)
    cases = [(rng.standard_normal((64, 64)) * 0.1).astype(np.float32), rng.integers(0, 2**31, 4096).astype(np.int32),
             np.where(rng.random(4096) < 0.9, 0, rng.standard_normal(4096)).astype(np.float16)]
    for a in cases:
        got = codec.encode_lossless(a)
        sizes = [codec.encode_dense(a).nbytes, codec.encode_planes(a).nbytes,
                 codec.encode_planes(a, mask=a != 0).nbytes]
        assert got.nbytes == min(sizes)
        assert np.array_equal(codec.decode(got).view(np.uint8), a.view(np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_encode_lossless_above_one_block_codebook_only_for_few_values(dtype):
    """Tensors larger than a block: a weight-shared one (few values) still gets the codebook, built a block at a time
    with the same bytes as the whole-tensor path; one with many distinct values takes byte planes (no whole-tensor
    sort), exact either way."""
    rng = np.random.default_rng(5)

    def cast(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return (x.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bfloat16" else x.astype(dtype)

    shared = cast(rng.choice(rng.standard_normal(16), size=(50, 100)) * 0.1)
    many = cast(rng.standard_normal((50, 100)) * 0.1)
    for a, kind in ((shared, "codebook"), (many, "planes")):
        big = codec.encode_lossless(a, dtype=dtype, block=1024)  # 5000 elements: 5 blocks
        assert big.kind == kind
        got = codec.decode(big)  # bfloat16: planes give the bit patterns, a codebook the float32 values
        if dtype == "bfloat16" and got.dtype == np.float32:
            got = (got.view(np.uint32) >> 16).astype(np.uint16)
        assert got.astype(a.dtype).tobytes() == a.tobytes()
    whole = codec.encode_lossless(shared, dtype=dtype)  # one block: the whole-tensor path
    blocks = codec.encode_lossless(shared, dtype=dtype, block=1024)
    assert whole.kind == "codebook" and whole.sections == blocks.sections


def test_huffman_streams_across_encode_chunks_round_trip(monkeypatch):
    """The chunked counting/encoding/word building gives the same stream as one chunk, and decodes back."""
    from deepzip.codec import huffman

    rng = np.random.default_rng(6)
    s = np.minimum(rng.geometric(0.2, 20_000) - 1, 299).astype(np.uint16)
    one = huffman.pack_stream(s, alphabet=300)
    monkeypatch.setattr(huffman, "_ENCODE_CHUNK", 2 * huffman.SYNC_INTERVAL)
    many = huffman.pack_stream(s, alphabet=300)
    assert many == one
    got = huffman.unpack_stream(many)
    assert got.dtype == np.uint16 and np.array_equal(got, s)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int64", "bool"])
def test_planes_round_trip_in_several_blocks(dtype):
    rng = np.random.default_rng(3)
    if dtype == "bool":
        a = rng.random(5000) < 0.1
    elif dtype == "int64":
        a = rng.integers(-5, 5, 5000)
    else:
        a = (rng.standard_normal(5000) * 0.02).astype(np.float32)
        a = (a.view(np.uint32) >> 16).astype(np.uint16) if dtype == "bfloat16" else a.astype(dtype)
    for mask in (None, rng.random(5000) < 0.4):
        t = codec.encode_planes(a, dtype=dtype, mask=mask, block=1000)
        f = codec.read(codec.to_bytes({"x": t}))
        want = a if mask is None else np.where(mask, a, 0).astype(a.dtype)
        assert f.version == (1, 1) and f.decode("x").tobytes() == want.tobytes()


def test_damaged_planes_are_refused_by_name():
    t = codec.encode_planes((np.random.default_rng(4).standard_normal(3000) * 0.1).astype(np.float32), block=1000)
    bad = codec.EncodedTensor("w", "planes", t.shape, "float32", dict(t.meta, kept=2000), t.sections)
    with pytest.raises(DeepzipFormatError, match="w: meta.kept=2000"):
        codec.decode(bad)
    secs = dict(t.sections, b0p0=t.sections["b0p0"][:-1])
    with pytest.raises(DeepzipFormatError, match="w/b0p0"):
        codec.decode(codec.EncodedTensor("w", "planes", t.shape, "float32", t.meta, secs))
    # every plane constant (one byte each): 10**12 elements from 4 bytes would be a bomb, refused before allocating
    bomb = codec.EncodedTensor("z", "planes", (10**12,), "float32",
                               {"block": 1 << 26, "kept": 10**12, "masked": 0, "mask_coded": 0,
                                "coded": [15] * (-(-10**12 // (1 << 26)))},
                               {f"b{j}p{i}": b"\0" for j in range(-(-10**12 // (1 << 26))) for i in range(4)})
    with pytest.raises(DeepzipFormatError, match="z/b0p0: every plane of block 0 is constant"):
        codec.decode(bomb)


def test_golden_11_file_loads_bit_exactly():
    f = codec.read(GOLDEN / "tiny11.dz")
    expected = json.loads((GOLDEN / "tiny11.expected.json").read_text())
    assert f.version == (1, 1) and list(f.tensors) == list(expected)
    for name, e in expected.items():
        t = f.tensors[name]
        assert (t.kind, t.dtype, list(t.shape)) == (e["kind"], e["dtype"], e["shape"])
        assert hashlib.sha256(f.decode(name).tobytes()).hexdigest() == e["sha256"]


def test_streaming_writer_gives_the_bytes_of_to_bytes_and_reader_decodes_lazily(tmp_path):
    tensors = {k: codec.encode_lossless(v.numpy() if v.dtype != torch.bfloat16 else
                                        v.view(torch.int16).numpy().view(np.uint16),
                                        dtype="bfloat16" if v.dtype == torch.bfloat16 else None)
               for k, v in every_dtype().items()}
    with codec.DzWriter(tmp_path / "s.dz", config={"a": 1}, extra={"b": 2}) as w:
        for k, t in tensors.items():
            w.add(codec.EncodedTensor(k, t.kind, t.shape, t.dtype, t.meta, t.sections))
    assert (tmp_path / "s.dz").read_bytes() == codec.to_bytes(tensors, config={"a": 1}, extra={"b": 2})
    r = codec.DzReader(tmp_path / "s.dz")
    assert r.names == list(tensors) and r.decode("i32").tolist() == list(range(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["s.dz"]  # no spool left behind


def test_hf_folder_with_shards_round_trips_and_loads_from_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    src = tmp_path / "bert"
    model.save_pretrained(src, max_shard_size="60KB")
    (src / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    assert (src / "model.safetensors.index.json").exists()
    compress_checkpoint(src, tmp_path / "bert.dz")
    out = decompress_checkpoint(tmp_path / "bert.dz", tmp_path / "back")
    for f in src.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(src)).read_bytes() == f.read_bytes(), f
    m2 = deepzip.load(tmp_path / "bert.dz")  # rebuilt from config.json, no user code
    ids = torch.randint(0, 200, (2, 9))
    with torch.no_grad():
        assert torch.equal(m2(ids).last_hidden_state, model(ids).last_hidden_state)
    with pytest.raises(CheckpointError, match="already exists"):
        decompress_checkpoint(tmp_path / "bert.dz", out)
    shard = sorted(src.glob("model-0000*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}: shard missing"):
        compress_checkpoint(src, tmp_path / "x.dz")


def test_bad_inputs_give_one_line_naming_file_and_tensor(tmp_path):
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(CheckpointError, match="noconfig: folder has no config.json"):
        open_source(tmp_path / "noconfig")
    torch.save({"layer": nn.Linear(2, 2)}, tmp_path / "code.bin")
    with pytest.raises(CheckpointError, match="code.bin: needs code to unpickle.*Linear"):
        compress_checkpoint(tmp_path / "code.bin", tmp_path / "x.dz")
    torch.save({"z": torch.zeros(3, dtype=torch.complex64)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="c.pt: z: dtype complex64 is not supported"):
        compress_checkpoint(tmp_path / "c.pt", tmp_path / "x.dz")
    save_file({"f8": torch.zeros(4, dtype=torch.float8_e4m3fn)}, tmp_path / "f8.safetensors")
    with pytest.raises(CheckpointError, match="f8.safetensors: f8: dtype F8_E4M3 is not supported"):
        compress_checkpoint(tmp_path / "f8.safetensors", tmp_path / "x.dz")
    save_file({"w": torch.zeros(100)}, tmp_path / "t.safetensors")
    blob = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(blob[:-8])
    with pytest.raises(CheckpointError, match="t.safetensors: w: data offsets"):
        compress_checkpoint(tmp_path / "t.safetensors", tmp_path / "x.dz")
    assert not (tmp_path / "x.dz").exists()
    save(Tied(), tmp_path / "tied.dz")
    with pytest.raises(ValueError, match="does not fit the model"):
        load(tmp_path / "tied.dz", nn.Linear(3, 3))


def test_cli_compress_and_decompress_a_checkpoint(tmp_path):
    save_file({"w": torch.randn(64, 64), "b": torch.zeros(64)}, tmp_path / "m.safetensors")
    run = [sys.executable, "-m", "deepzip.cli"]
    env = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([*run, "compress", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.dz")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "lossless" in r.stdout, r.stderr
    r = subprocess.run([*run, "decompress", str(tmp_path / "m.dz"), "-o", str(tmp_path / "b.safetensors")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and (tmp_path / "b.safetensors").read_bytes() == (tmp_path / "m.safetensors").read_bytes()
    torch.save({"l": nn.Linear(2, 2)}, tmp_path / "code.bin")
    r = subprocess.run([*run, "compress", str(tmp_path / "code.bin")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "needs code" in r.stderr


def test_checkpoint_dz_above_the_default_decode_limit_still_decompresses_as_a_checkpoint(tmp_path, monkeypatch, capsys):
    """A checkpoint .dz decoding to more than the default max_bytes (1 GiB; here lowered to 100 bytes) is still
    recognised as a checkpoint: with --max-bytes large enough it comes back as the same file (it used to fall back to
    the generic path, holding every tensor in memory and writing a different file), and with a too-small
    --max-bytes it is refused in one line."""
    from deepzip import cli
    from deepzip.codec.stream import DzReader

    save_file({"w": torch.randn(64, 64), "b": torch.zeros(64)}, tmp_path / "m.safetensors")
    assert cli.main(["compress", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "m.dz")]) == 0
    monkeypatch.setitem(DzReader.__init__.__kwdefaults__, "max_bytes", 100)
    assert cli.main(["decompress", str(tmp_path / "m.dz"), "-o", str(tmp_path / "small.safetensors"),
                     "--max-bytes", "1000"]) == 2
    assert "max" in capsys.readouterr().err and not (tmp_path / "small.safetensors").exists()
    assert cli.main(["decompress", str(tmp_path / "m.dz"), "-o", str(tmp_path / "b.safetensors"),
                     "--max-bytes", "1M"]) == 0
    assert (tmp_path / "b.safetensors").read_bytes() == (tmp_path / "m.safetensors").read_bytes()


def test_plane_bits_rotation_is_an_involution():
    u = np.random.default_rng(5).integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    r = _planes._bits(u.view(np.float32), "float32").copy()
    _planes._unrotate_(r, "float32")
    assert np.array_equal(r, u)


def test_decompress_of_a_checkpoint_file_runs_without_torch(tmp_path):
    """``deepzip decompress`` of a compressed checkpoint gives the file back without importing torch (a fast, light
    restore: the codec is NumPy)."""
    src = tmp_path / "x.safetensors"
    save_file({"a": torch.randn(32, 16), "n": torch.arange(5)}, str(src))
    compress_checkpoint(src, tmp_path / "x.dz")
    code = ("import sys; from deepzip.cli import main; rc = main(['decompress', sys.argv[1], '-o', sys.argv[2]]); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.dz"), str(tmp_path / "y.safetensors")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
    assert (tmp_path / "y.safetensors").read_bytes() == src.read_bytes()
