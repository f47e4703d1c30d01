"""File I/O shared by every writer in deepzip (the codec, checkpoints, reports): one atomic write.

Torch-free and at the bottom of the package, so the codec can use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, flush it to disk, then rename it onto ``path``.

    Readers never see a half-written file, and an interrupted or failing write leaves any existing file at ``path``
    untouched (the temporary file is removed). The new file keeps the mode of the file it replaces, else gets the
    usual permissions (``0o666`` less the umask; ``mkstemp`` alone would make it ``0o600``). Missing parent
    folders are created.

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "a", "x.bin")
        >>> atomic_write(p, lambda tmp: open(tmp, "wb").write(b"abc"))
        >>> open(p, "rb").read()
        b'abc'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the writer may have closed its own handle: sync what it wrote
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
