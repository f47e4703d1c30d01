"""Issue 10: loading is safe against hostile files, and the bad-input defects a probe found stay fixed.

The hostile files are made by tests/hostile.py on the fly.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import hostile

from deepzip import cli, codec, fileio
from deepzip.codec import container
from deepzip.errors import CheckpointError, DeepzipFormatError, UntrustedCodeError
from deepzip.io.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from deepzip.io.serialize import load, load_state_dict, save
from deepzip.models import get_model

# ------------------------------------------------------------------------------------------------ 1. no code


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """An importable module ``evil_i10`` whose import writes a marker file (a visible side effect)."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_i10.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from deepzip.apps.mnist.models import LeNet300\n"
        "def make():\n    return LeNet300()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_i10", raising=False)
    return marker


@pytest.mark.parametrize("name", ["os:abort", "sys:exit", "builtins:input", "faulthandler:_sigsegv"])
def test_a_file_naming_code_imports_nothing(name):
    blob = hostile.named_architecture(name)
    with pytest.raises(UntrustedCodeError, match=r"names code to import .*trust_code=True \(CLI: --trust-code\)"):
        load(blob)
    # the model given by the caller always works, whatever the file names
    f = codec.read(blob)
    assert f.architecture == name


def test_import_side_effects_need_trust_code(evil_module, tmp_path):
    m = get_model("lenet300")
    path = tmp_path / "m.dz"
    save(m, path, architecture="evil_i10:make")
    with pytest.raises(UntrustedCodeError, match=r"m.dz: model 'evil_i10:make' names code"):
        load(path)
    assert not evil_module.exists() and "evil_i10" not in sys.modules
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(load(path, model=get_model("lenet300"))(x), m(x))  # model=... needs no trust
    assert not evil_module.exists()
    assert torch.equal(load(path, trust_code=True)(x), m(x))
    assert evil_module.read_text() == "ran"


def test_checkpoint_naming_code_needs_trust_code(evil_module, tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(get_model("lenet300"), path, arch="evil_i10:make")
    with pytest.raises(UntrustedCodeError, match="--trust-code"):
        load_checkpoint(path)
    assert not evil_module.exists()
    load_checkpoint(path, get_model("lenet300"))
    assert not evil_module.exists()
    model, _ = load_checkpoint(path, trust_code=True)
    assert evil_module.exists() and model.fc1.weight.shape == (300, 784)


def test_cli_evaluate_refuses_code_without_trust_code(tmp_path, capsys, evil_module):
    path = tmp_path / "m.dz"
    save(get_model("lenet300"), path, architecture="evil_i10:make")
    assert cli.main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "--trust-code" in err and len(err.strip().splitlines()) == 1
    assert not evil_module.exists()


# ------------------------------------------------------------------------------------------------ 2. bombs


def test_sparse_bomb_is_refused_before_allocating():
    blob = hostile.sparse_bomb(1 << 28)  # 67 KB that decode to 1 GiB of zeros
    assert len(blob) < 70_000
    tracemalloc.start()
    with pytest.raises(DeepzipFormatError, match=r"bomb.weight: shape \[268435456\] decodes to 1073741824 bytes, "
                                                 r"more than the limit of 67108864"):
        codec.read(blob, max_bytes=64 << 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000
    # 16 GiB claimed by an 80 KB-ish file: refused at the default limit
    with pytest.raises(DeepzipFormatError, match=r"decodes to 17179869184 bytes, more than the limit of 1073741824"):
        codec.read(hostile.sparse_bomb(1 << 32))


def test_decoding_memory_is_bounded_by_max_bytes():
    """What passes the limit decodes within a small multiple of it (here 16 MiB of zeros from 1 KB)."""
    blob = hostile.sparse_bomb(1 << 22)
    f = codec.read(blob, max_bytes=16 << 20)
    tracemalloc.start()
    f.decode("bomb.weight")
    f.decode_parts("bomb.weight")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.3 * (16 << 20)
    tracemalloc.start()
    sd = load_state_dict(blob, max_bytes=16 << 20)  # no copy of the decoded arrays
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.1 * (16 << 20) and sd["bomb.weight"].shape == (1 << 22,)
    for t in hostile.model_like_tensors().values():  # every kind decodes to a fresh, writable array
        assert codec.decode(t).flags.writeable


def test_total_of_all_tensors_is_bounded():
    t = {f"t{i}": codec.encode_dense(np.zeros(1000, np.float32)) for i in range(3)}
    blob = codec.to_bytes(t)
    codec.read(blob, max_bytes=12000)
    with pytest.raises(DeepzipFormatError, match=r"t2: the tensors up to here decode to 12000 bytes, more than "
                                                 r"the limit of 11999"):
        codec.read(blob, max_bytes=11999)
    assert codec.read(hostile.sparse_bomb(1 << 32), max_bytes=None).tensors  # no limit when asked


def test_header_bomb_is_refused_before_parsing():
    blob = hostile.header_bomb(3_000_000)  # 9 MB of JSON from 9 KB
    t0 = time.perf_counter()
    tracemalloc.start()
    with pytest.raises(DeepzipFormatError, match=r"header: 9000\d+ bytes of JSON with up to \d+ values, more than "
                                                 r"the 1048576 allowed"):
        codec.read(blob)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0 and peak < 40_000_000  # the JSON text, never the 3M lists


def test_cli_max_bytes_on_every_reading_command(tmp_path, capsys):
    path = tmp_path / "bomb.dz"
    path.write_bytes(hostile.sparse_bomb(1 << 24))  # 64 MiB decoded
    for argv in (["inspect", str(path)], ["decompress", str(path), "-o", str(tmp_path / "o.safetensors")],
                 ["report", str(path), "--out", str(tmp_path / "rep")], ["evaluate", str(path), "--model", "lenet5"]):
        assert cli.main([*argv, "--max-bytes", "32M"]) == 2, argv
        err = capsys.readouterr().err
        assert "decodes to 67108864 bytes, more than the limit of 33554432" in err, argv
    assert not (tmp_path / "o.safetensors").exists()
    assert cli.main(["inspect", str(path), "--max-bytes", "64M", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["params_total"] == 1 << 24


# ------------------------------------------------------------------------------------------------ 3. shapes


@pytest.mark.parametrize("shape", [(0, 2**63), (0, 2**62, 2**62), (3, 0, 2**70), (2**40, 0, 2**40)])
def test_impossible_shapes_fail_at_read(shape):
    with pytest.raises(DeepzipFormatError, match=r"e: shape \[.*\] is impossible: its dimensions multiply past"):
        codec.read(hostile.huge_shape(shape))


def test_large_empty_shape_that_numpy_accepts_still_loads():
    f = codec.read(hostile.huge_shape((0, 1 << 20)))
    assert f.decode("e").shape == (0, 1 << 20)


# ------------------------------------------------------------------------------------------------ 4-5. bad input


def test_decompress_refuses_to_overwrite_its_input(tmp_path, capsys):
    path = tmp_path / "a.dz"
    save(get_model("lenet300"), path)
    before = path.read_bytes()
    assert cli.main(["decompress", str(path), "-o", str(path)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_evaluate_plain_state_dict_dz_is_one_line(tmp_path, capsys):
    path = tmp_path / "sd.dz"
    save(get_model("lenet300").state_dict(), path)
    assert cli.main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "names no architecture; give --model NAME" in err and str(path) in err and "\n" not in err


@pytest.mark.parametrize("cfg, match", [({"version": "x"}, "config.version is 'x', expected an integer"),
                                        ({"sparsity": "lots"}, "config.sparsity: 'lots'"),
                                        ([1, 2], "expected a JSON object")])
def test_compress_bad_config_types_are_one_line(tmp_path, capsys, cfg, match):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert cli.main(["compress", "--config", str(path), "-o", str(tmp_path / "x.dz"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and "Traceback" not in err


def test_nan_centroids_name_file_and_tensor(tmp_path, capsys):
    path = tmp_path / "nan.dz"
    path.write_bytes(hostile.nan_codebook())
    with pytest.raises(DeepzipFormatError, match=r"nan.dz: w/codebook: entry 0 is nan"):
        load_state_dict(path)
    out = tmp_path / "o.safetensors"
    assert cli.main(["decompress", str(path), "-o", str(out)]) == 2
    assert "w/codebook: entry 0 is nan" in capsys.readouterr().err
    assert not out.exists()  # no NaNs written
    with pytest.raises(ValueError, match="NaN or inf"):
        codec.encode_codebook(np.array([0.0, np.inf]), np.zeros(3, np.int64))


def test_crafted_float16_codebooks_and_short_streams_are_refused(tmp_path):
    """Format 1.4 tensors with valid checksums and a lying section: an inf centroid, a codebook of the float32
    length, a short stream claiming more symbols than its bits: one error naming the tensor and section."""
    import json

    from deepzip.codec import container

    cb = np.array([0.5, -0.25], np.float32)
    t = codec.encode_sparse(cb, np.array([1, 0, 0, 1] * 4), np.array([1, 0, 0, 1] * 4, bool), name="w", half=True)
    blob = codec.to_bytes({"w": t})

    def edit(section: str, fn, meta: dict | None = None) -> bytes:
        version, text, data = container._split(blob)
        header = json.loads(text)
        header["tensors"][0]["meta"].update(meta or {})
        sec = header["tensors"][0]["sections"][section]
        new = fn(bytes(data[sec["offset"]:sec["offset"] + sec["length"]]))
        assert len(new) == sec["length"]
        sec["crc32"] = zlib.crc32(new)
        data = bytes(data[:sec["offset"]]) + new + bytes(data[sec["offset"] + sec["length"]:])
        return container._join(version, json.dumps(header), data)

    cases = [("codebook", lambda b: np.array([np.inf, 1.0], "<f2").tobytes(), None, "w/codebook: entry 0 is inf"),
             ("codebook", lambda b: b, {"k": 4}, "w/codebook: 4 bytes, k=4 float16 entries need 8"),
             ("gaps", lambda b: b"\x7f" + b[1:], None, "w/gaps: count 127")]
    for section, fn, meta, match in cases:
        with pytest.raises(DeepzipFormatError, match=match):
            codec.read(edit(section, fn, meta)).decode("w")
    assert codec.read(edit("gaps", lambda b: b)).decode("w").tolist() == [-0.25, 0, 0, -0.25] * 4


# ------------------------------------------------------------------------------------------------ 6. prune args


def test_prune_rounds_zero_and_duplicate_layers_are_refused(tmp_path, capsys):
    ck = tmp_path / "c.safetensors"
    assert cli.main(["prune", str(ck), "-o", str(tmp_path / "p.safetensors"), "--rounds", "0"]) == 2
    assert "--rounds 0: expected at least 1" in capsys.readouterr().err
    assert cli.main(["prune", str(ck), "-o", str(tmp_path / "p.safetensors"), "--sparsity", "fc1=0.5,fc1=0.9"]) == 2
    assert "layer fc1 is given twice" in capsys.readouterr().err


def test_prune_sparsity_one_prints_no_absurd_ratio(tmp_path, capsys, monkeypatch):
    import deepzip.apps.mnist.pipeline as rc
    import deepzip.cli.model as cm
    from deepzip.apps.mnist import data

    ck = tmp_path / "c.safetensors"
    save_checkpoint(get_model("lenet300"), ck)
    monkeypatch.setattr(cm, "_data", lambda a, label_with=None: (data.synthetic_mnist(8), data.synthetic_mnist(8)))
    result = {"layers": [{"layer": "fc1", "weights": 10, "kept_pct": 0.0}], "kept_pct": 0.0,
              "test_error_pct": 90.0, "error_before_pct": 10.0}
    monkeypatch.setattr(rc, "run_prune", lambda *a, **k: result)
    assert cli.main(["prune", str(ck), "-o", str(tmp_path / "p.safetensors"), "--sparsity", "1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "every weight pruned" in out and "x fewer" not in out


# ------------------------------------------------------------------------------------------------ 7-8. outputs


def test_outputs_are_checked_before_any_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    t0 = time.perf_counter()
    for argv in (["compress", "-o", str(afile / "x.dz"), "-q"],
                 ["compress", "-o", str(tmp_path), "-q"],
                 ["compress", "-o", str(tmp_path / "ok.dz"), "--json", str(afile / "s.json"), "-q"],
                 ["train", "-o", str(afile / "m.safetensors"), "-q"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - t0 < 10  # no training, no data fetch
    assert not (tmp_path / "ok.dz").exists()


def test_missing_output_folders_are_created_by_every_command(tmp_path):
    src = tmp_path / "a.dz"
    save(get_model("lenet300"), src, architecture="lenet300")
    out = tmp_path / "new" / "dir" / "a.safetensors"
    assert cli.main(["decompress", str(src), "-o", str(out)]) == 0 and out.exists()
    from deepzip.cli._common import _check_output

    _check_output(str(tmp_path / "x" / "y" / "z.dz"))
    assert (tmp_path / "x" / "y").is_dir()


def test_write_errors_name_the_users_path_not_the_temp_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OSError) as e1:
        codec.write(afile / "x.dz", {"b": codec.encode_dense(np.zeros(2, np.float32))})
    with pytest.raises(OSError) as e2:
        atomic_write(afile / "y.safetensors", lambda tmp: Path(tmp).write_text("x"))
    for e, name in ((e1, "x.dz"), (e2, "y.safetensors")):
        assert name in str(e.value) and ".tmp" not in str(e.value)

    def fail(tmp):
        raise PermissionError(13, "Permission denied", tmp)

    with pytest.raises(PermissionError) as e3:
        atomic_write(tmp_path / "z.safetensors", fail)
    assert "z.safetensors" in str(e3.value) and ".tmp" not in str(e3.value)
    assert os.listdir(tmp_path) == ["afile"]


def test_stale_temp_files_are_cleaned(tmp_path):
    target = tmp_path / "m.dz"
    old = tmp_path / ".m.dz.abcd1234.tmp"
    young = tmp_path / ".m.dz.efgh5678.tmp"
    other = tmp_path / ".n.dz.abcd1234.tmp"
    for p in (old, young, other):
        p.write_bytes(b"x" * 100)
    past = time.time() - 2 * fileio.STALE_TEMP_SECONDS
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    codec.write(target, {"b": codec.encode_dense(np.zeros(2, np.float32))})
    assert not old.exists() and young.exists() and other.exists()  # only this target's, only old ones
    os.utime(young, (past, past))
    save_checkpoint(get_model("lenet300"), tmp_path / "m.dz")  # atomic_write cleans too
    assert not young.exists()


# ------------------------------------------------------------------------------------------------ 9. padding


def test_non_zero_padding_is_refused():
    after_header, between = hostile.flipped_padding()
    with pytest.raises(DeepzipFormatError, match=r"header: padding bytes \d+\.\.\d+ are not zero"):
        codec.read(after_header)
    with pytest.raises(DeepzipFormatError, match=r"data: non-zero padding before"):
        codec.read(between)
    blob = hostile.small_file()
    with pytest.raises(DeepzipFormatError, match=r"data: header says"):  # a byte appended: trailing data
        codec.read(blob + b"\0")


def test_any_minor_version_is_read_as_the_format_says():
    _, text, data = container._split(hostile.small_file())
    f = codec.read(container._join((1, 7), text, data))
    assert f.version == (1, 7)
    with pytest.raises(DeepzipFormatError, match=r"version: file format 2.0 is newer"):
        codec.read(container._join((2, 0), text, data))


# ------------------------------------------------------------------------------------------------ 11. progress


def test_library_calls_are_silent_by_default(capfd):
    from deepzip.techniques.lowrank import convs_and_linears, decompose_
    from deepzip.techniques.prune import prune_
    from deepzip.techniques.share import share_weights_
    from deepzip.train import TrainConfig

    m = prune_(get_model("mlp30"), sparsity=0.5)
    share_weights_(m, 3)
    decompose_(get_model("mlp30"), filter_fn=convs_and_linears)
    assert TrainConfig().progress is False
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_cli_bars_only_on_a_terminal(monkeypatch):
    import argparse

    from deepzip.cli._common import _progress

    a = argparse.Namespace(quiet=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert _progress(a) is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert _progress(a) is True and _progress(argparse.Namespace(quiet=True)) is False


# ------------------------------------------------------------------------------------------------ 12. round trips


def test_decompress_keeps_the_architecture_for_evaluate(tmp_path):
    src = tmp_path / "a.dz"
    m = get_model("lenet5")
    save(m, src)
    out = tmp_path / "a.safetensors"
    assert cli.main(["decompress", str(src), "-o", str(out)]) == 0
    loaded, meta = load_checkpoint(out)  # no --model needed
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), m(x)) and meta["source"] == "a.dz"


def test_load_checkpoint_reads_a_dz_and_a_state_dict_file_as_any_reader_does(tmp_path):
    """One reader: load_checkpoint takes what deepzip.load and `deepzip compress SOURCE` take (a .dz; a torch.save
    state_dict, read with weights_only=True, which names no architecture)."""
    m = get_model("lenet300", seed=3)
    x = torch.rand(2, 1, 28, 28)
    save(m, tmp_path / "m.dz")
    assert torch.equal(load_checkpoint(tmp_path / "m.dz")[0](x), m(x))
    torch.save(m.state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"m.pt: a torch state_dict file that names no architecture; give "
                                              r"--model NAME"):
        load_checkpoint(tmp_path / "m.pt")
    assert torch.equal(load_checkpoint(tmp_path / "m.pt", get_model("lenet300"))[0](x), m(x))


# ------------------------------------------------------------------------------------------------ 12b. every reader


class _Evil:
    """Unpickling it would create a folder (a visible side effect of code run by pickle)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _plain_sd() -> dict[str, torch.Tensor]:
    return get_model("mlp30", seed=1).state_dict()


def _safetensors_with_header(path: Path, edit) -> None:
    """A safetensors file of mlp30 whose header JSON ``edit`` changes (the data left as it is)."""
    from safetensors.torch import save_file

    save_file(_plain_sd(), path)
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + blob[8 + n :])


def _make_hostile(name: str, d: Path) -> Path:
    """Crafted files for every reader; each is refused by every command in one line."""
    from safetensors.torch import save_file

    if name == "truncated.safetensors":
        save_file(_plain_sd(), d / name)
        (d / name).write_bytes((d / name).read_bytes()[:60_000])
    elif name == "truncated.pt":
        torch.save(_plain_sd(), d / name)
        (d / name).write_bytes((d / name).read_bytes()[:60_000])
    elif name == "truncated.dz":
        save(get_model("mlp30"), d / name)
        (d / name).write_bytes((d / name).read_bytes()[:20_000])
    elif name == "lying.safetensors":  # a shape larger than its data
        _safetensors_with_header(d / name, lambda h: h["layers.0.weight"].__setitem__("shape", [3000, 784]))
    elif name == "deflated.pt":  # a torch zip whose records are compressed (a zip bomb's way): never read
        import zipfile

        torch.save(_plain_sd(), d / "src.pt")
        with zipfile.ZipFile(d / "src.pt") as src, zipfile.ZipFile(d / name, "w", zipfile.ZIP_DEFLATED) as out:
            for info in src.infolist():
                out.writestr(info.filename, src.read(info))
        (d / "src.pt").unlink()
    elif name == "short_record.pt":  # the pickle claims more bytes than a tensor's record holds
        import zipfile

        torch.save(_plain_sd(), d / "src.pt")
        with zipfile.ZipFile(d / "src.pt") as src, zipfile.ZipFile(d / name, "w", zipfile.ZIP_STORED) as out:
            for info in src.infolist():
                out.writestr(info.filename, src.read(info)[:8] if info.filename.endswith("/data/0") else src.read(info))
        (d / "src.pt").unlink()
    elif name == "bomb.dz":  # valid by the format, with checksums: 2 GiB of zeros from ~130 KB
        (d / name).write_bytes(hostile.sparse_bomb(1 << 29))
    elif name == "huge_shape.dz":
        (d / name).write_bytes(hostile.huge_shape())
    elif name == "pickle.pt":
        torch.save({**_plain_sd(), "evil": _Evil(d / "pickle-ran")}, d / name)
    elif name == "legacy.pt":
        torch.save(_plain_sd(), d / name, _use_new_zipfile_serialization=False)
    elif name == "os_abort.dz":
        (d / name).write_bytes(hostile.named_architecture("os:abort"))
    elif name == "os_abort.safetensors":  # a deepzip checkpoint naming code
        save_checkpoint(get_model("mlp30"), d / name, arch="os:abort")
    elif name == "os_abort_plain.safetensors":  # any safetensors whose metadata names code
        save_file(_plain_sd(), d / name, metadata={"arch": "os:abort"})
    elif name == "random":
        (d / name).write_bytes(np.random.default_rng(0).bytes(4096))
    return d / name


HOSTILE = {  # file -> what the one line says (after the file's name)
    "truncated.safetensors": r"layers.\d.\w+: data offsets .* \(truncated\?\)",
    "truncated.pt": r"not a readable PyTorch file \(a damaged or truncated zip archive",
    "truncated.dz": r"truncated|shorter|header says",
    "lying.safetensors": r"layers.0.weight: data offsets \d+..\d+ do not fit shape \[3000, 784\]",
    "deflated.pt": r"a compressed or out-of-file record",
    "short_record.pt": r"layers.0.weight: its storage '0' is 94080 bytes, its record holds 8 bytes",
    "bomb.dz": r"decodes to 2147483648 bytes, more than the limit of 1073741824",
    "huge_shape.dz": r"is impossible",
    "pickle.pt": r"needs code to unpickle, refused",
    "legacy.pt": r"a legacy \(pre-1.6, not zip\) torch.save file",
    "os_abort.dz": r"model 'os:abort' names code to import",
    "os_abort.safetensors": r"model 'os:abort' names code to import",
    "os_abort_plain.safetensors": r"model 'os:abort' names code to import",
    "random": r"not a file deepzip reads .*; deepzip reads a .dz file, a safetensors file",
}


def _command(name: str, path: Path, d: Path, model: list[str]) -> list[str]:
    out = str(d / "out")
    return {
        "evaluate": ["evaluate", str(path), *model],
        "prune": ["prune", str(path), "-o", out, *model, "--sparsity", "0.5", "-q"],
        "share": ["share", str(path), "-o", out, *model, "--no-finetune", "-q"],
        "ptq": ["ptq", "--checkpoint", str(path), "--calibration", str(d / "cal.npy"), "-o", out, *model],
        "decompose": ["decompose", str(path), "-o", out, *model, "-q"],
        "bench": ["bench", str(path), *model, "--no-rss"],
        "distill": ["distill", "--teacher", str(path), "-o", out, "--student", "mlp30",
                    *(["--teacher-model", model[1]] if model else []), "-q"],
    }[name]


@pytest.mark.parametrize("command", ["evaluate", "prune", "share", "ptq", "decompose", "bench", "distill"])
def test_every_reading_command_refuses_every_crafted_file_in_one_line(tmp_path, capsys, command):
    """The same crafted files, through each command: exit 2, one line naming the file and the fault, no traceback,
    nothing written, no code run (os:abort would end the test run)."""
    np.save(tmp_path / "cal.npy", np.zeros((4, 1, 28, 28), np.float32))
    for name, pattern in HOSTILE.items():
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        (d / "cal.npy").write_bytes((tmp_path / "cal.npy").read_bytes())
        path = _make_hostile(name, d)
        before = sorted(p.name for p in d.iterdir())
        model = [] if name.startswith("os_abort") else ["--model", "mlp30"]  # the file's own name is what is tested
        assert cli.main(_command(command, path, d, model)) == 2, (command, name)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (command, name, err)
        assert err.startswith(f"deepzip {command}: error: {path}"), (command, name, err)
        assert __import__("re").search(pattern, err), (command, name, err)
        assert sorted(p.name for p in d.iterdir()) == before, (command, name)  # nothing written, no pickle-ran


# ------------------------------------------------------------------------------------------------ 13. texts


def test_help_texts_and_inspect_ratio_per_dtype(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for opt in ("--epochs", "--lr", "--seed"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(opt))
        assert len(line.split()) > 2, line  # option, metavar, and words of help
    path = tmp_path / "i.dz"
    codec.write(path, {"n": codec.encode_dense(np.arange(10, dtype=np.int64))})
    assert cli.main(["inspect", str(path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["layers"][0]
    assert row["ratio"] == 1.0  # stored as it is: 80 bytes for 80 bytes, not "0.5x vs float32"


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path) -> None:
    """The length prefix of a safetensors file can begin with any byte; 0x80 once sent one to the pickle refusal."""
    from safetensors.torch import save_file

    from deepzip.io.checkpoint import read_checkpoint

    for pad in range(0, 400):
        path = tmp_path / "m.safetensors"
        save_file({"w": torch.zeros(2)}, path, metadata={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.skip("no padding gave a 0x80 first byte")
    tensors, _ = read_checkpoint(path)
    assert torch.equal(tensors["w"], torch.zeros(2))
