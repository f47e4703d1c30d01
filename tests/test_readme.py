"""README's Layout names every module of the package, and names nothing the package lacks."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "deepzip"


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n"):]
    return section[section.index("```\n") + 4: section.index("\n```", section.index("```\n") + 4)]


def _package_names() -> set[str]:
    """Each module file (``x.py``, ``x.c``) and each sub-package folder (``x/``) of src/deepzip, by base name."""
    names = set()
    for p in SRC.rglob("*"):
        if "__pycache__" in p.parts or p.name.startswith("__"):
            continue
        if p.is_dir():
            names.add(p.name + "/")
        elif p.suffix in (".py", ".c"):
            names.add(p.name)
    return names


def test_layout_names_every_module() -> None:
    mentioned = set(re.findall(r"[A-Za-z_][\w]*(?:\.py|\.c|/)", _layout_block()))
    missing = sorted(_package_names() - mentioned)
    assert not missing, f"README Layout does not mention: {missing}"


def test_layout_names_nothing_absent() -> None:
    block = _layout_block()
    mentioned = {m for m in re.findall(r"(?<![\w./])([A-Za-z_]\w*(?:\.py|\.c))\b", block)}
    absent = sorted(m for m in mentioned if not any(SRC.rglob(m)))
    assert not absent, f"README Layout names files the package lacks: {absent}"
