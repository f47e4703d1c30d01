"""File I/O shared by every writer in deepzip (the codec, checkpoints, reports): one atomic write.

Torch-free and at the bottom of the package, so the codec can use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["STALE_TEMP_SECONDS", "atomic_write", "remove_stale_temps"]

# Temporary files of atomic writes: ``.<name>.<8 random chars>.tmp`` beside the target. A run killed before its
# rename leaves one behind; the next write to the same target deletes those older than STALE_TEMP_SECONDS.
TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 3600


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, flush it to disk, then rename it onto ``path``.

    Readers never see a half-written file, and an interrupted or failing write leaves any existing file at ``path``
    untouched (the temporary file is removed). The new file keeps the mode of the file it replaces, else gets the
    usual permissions (``0o666`` less the umask; ``mkstemp`` alone would make it ``0o600``). Missing parent
    folders are created. Errors name ``path``, not the hidden temporary file, and temporary files that killed runs
    left for the same ``path`` (older than an hour) are deleted first (:func:`remove_stale_temps`).

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "a", "x.bin")
        >>> atomic_write(p, lambda tmp: open(tmp, "wb").write(b"abc"))
        >>> open(p, "rb").read()
        b'abc'
    """
    target = Path(path)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = target.stat().st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        remove_stale_temps(target)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target), suffix=TEMP_SUFFIX)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:  # the writer may have closed its own handle: sync what it wrote
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:  # name the user's path, not the hidden temporary file
        raise _os_error_for(exc, target) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _os_error_for(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` (raised on a temporary file) re-worded to name ``path``, the file the user asked for."""
    reason = exc.strerror or str(exc)
    msg = f"cannot write {os.fspath(path)}: {reason}"
    return type(exc)(exc.errno, msg) if exc.errno else type(exc)(msg)


def _temp_prefix(path: str | os.PathLike[str]) -> str:
    return "." + os.path.basename(os.fspath(path)) + "."


def remove_stale_temps(path: str | os.PathLike[str], max_age: float = STALE_TEMP_SECONDS) -> list[str]:
    """Delete leftover temporary files of earlier atomic writes to ``path`` (older than ``max_age`` seconds).

    Only names made by :func:`atomic_write` match (``.<name>.XXXXXXXX.tmp``, 8 characters from
    :func:`tempfile.mkstemp`); younger ones may belong to a write in progress and are kept.

    Returns:
        the paths deleted.
    """
    import re
    import time

    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    pattern = re.compile(re.escape(_temp_prefix(path)) + r"[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if pattern.match(name):
            p = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if now - os.lstat(p).st_mtime > max_age and os.path.isfile(p) and not os.path.islink(p):
                    os.unlink(p)
                    removed.append(p)
    return removed
