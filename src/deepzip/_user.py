"""User code named on the command line: ``"package.module:function"`` or ``"path/to/file.py:function"``.

A file path needs no PYTHONPATH: the file is loaded as a module (its folder is on ``sys.path`` while it loads, so it
can import its neighbours). The function must be callable without arguments; otherwise one clear error says so.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["resolve"]


def resolve(spec: str, what: str) -> Callable[[], Any]:
    """The function named by ``spec``, checked to be callable without arguments.

    Raises:
        ValueError: ``spec`` without ``:``, a module or file that cannot be imported, a missing name, a function that
            needs arguments; the message starts with ``{what} {spec!r}``.
    """
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    try:
        if mod_name.endswith(".py"):
            path = os.path.abspath(mod_name)
            if not os.path.isfile(path):
                raise ImportError(f"no such file {mod_name}")
            mspec = importlib.util.spec_from_file_location(f"_deepzip_user_{abs(hash(path))}", path)
            module = importlib.util.module_from_spec(mspec)  # type: ignore[arg-type]
            sys.path.insert(0, os.path.dirname(path))
            try:
                mspec.loader.exec_module(module)  # type: ignore[union-attr]
            finally:
                sys.path.remove(os.path.dirname(path))
        else:
            module = importlib.import_module(mod_name)
        fn = getattr(module, attr)
    except (ImportError, AttributeError, SyntaxError) as exc:
        raise ValueError(f"{what} {spec!r}: cannot import ({exc})") from None
    if not callable(fn):
        raise ValueError(f"{what} {spec!r}: {attr} is a {type(fn).__name__}, not a function or class")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn
    needed = [p.name for p in sig.parameters.values()
              if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if needed:
        raise ValueError(f"{what} {spec!r}: {attr}() needs arguments ({', '.join(needed)}); give a function that "
                         f"takes none, e.g. def make(): return {attr}(...)")
    return fn
