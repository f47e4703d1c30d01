"""The package's layering holds: each module imports only modules of its own layer or below, with no cycles, and the
codec imports without torch (see STYLE.md, "Who may import whom")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "deepzip"

# Bottom to top. A module may import from its own layer or any layer below it, never above.
LAYERS: list[tuple[str, set[str]]] = [
    ("errors, file I/O", {"errors", "fileio", "papers", "_user"}),
    ("codec", {"codec"}),  # torch-free: bytes in, arrays and tables out
    ("foundation", {"data", "models", "train"}),  # Dataset, the model registry (+ seq2seq family), fit/evaluate
    ("techniques", {"techniques"}),  # model -> model
    ("runtime", {"runtime"}),  # layers that run the compressed form, the C kernel
    ("io", {"io"}),  # the bridge: models and checkpoints <-> files
    ("pipeline", {"pipeline"}),
    ("report", {"report"}),
    ("apps", {"apps"}),  # mnist, g2p, sentence: nothing below imports them
    ("cli", {"cli"}),
]
RANK = {top: i for i, (_, names) in enumerate(LAYERS) for top in names}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every deepzip module ``path`` imports, at the top or inside a function, as dotted names."""
    me = _module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "deepzip"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "deepzip":
                continue
            if node.module is None or mod == "deepzip":  # `from . import share` names submodules
                found |= {f"{mod}.{a.name}" for a in node.names}
            else:
                found.add(mod)
    return found


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package itself (deepzip/__init__.py)


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_module_has_a_layer() -> None:
    missing = sorted({t for m in _graph() if (t := _top(m)) and t not in RANK})
    assert not missing, f"modules with no layer in tests/test_layers.py LAYERS: {missing}"


def test_imports_only_go_down() -> None:
    bad = []
    for mod, imports in _graph().items():
        me = _top(mod)
        if me is None:
            continue  # deepzip/__init__.py re-exports the public API lazily
        for imp in imports:
            other = _top(imp)
            if other is not None and other in RANK and RANK[other] > RANK[me]:
                bad.append(f"{mod} -> {imp} ({LAYERS[RANK[me]][0]} may not import {LAYERS[RANK[other]][0]})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules() -> None:
    graph = {m: {i for i in imps if _top(i) != _top(m)} for m, imps in _graph().items()}
    tops: dict[str, set[str]] = {}
    for m, imps in graph.items():
        if (t := _top(m)) is not None:
            tops.setdefault(t, set()).update(x for i in imps if (x := _top(i)) is not None)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(tops.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if not state.get(nxt):
                visit(nxt, [*path, nxt])
        state[node] = 2

    for t in sorted(tops):
        if not state.get(t):
            visit(t, [t])


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch) -> None:
    """The walker sees a lazy upward import inside a function (as share.py once had for its plots)."""
    fake = tmp_path / "deepzip"
    (fake / "techniques").mkdir(parents=True)
    (fake / "techniques" / "share.py").write_text("def plot():\n    from ..report import plot_weight_histograms\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert _imports(fake / "techniques" / "share.py") == {"deepzip.report"}
    with pytest.raises(AssertionError, match="techniques may not import report"):
        test_imports_only_go_down()


BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "safetensors", "tqdm", "matplotlib"}:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _Block())
"""


def test_codec_imports_and_works_without_torch() -> None:
    code = BLOCK_TORCH + """
import numpy as np
import deepzip.codec as codec
from deepzip.codec.fileinfo import file_report
enc = codec.encode_codebook(np.array([-1.0, 0.5], np.float32), np.array([[0, 1], [1, 1]]), name="w")
f = codec.read(codec.to_bytes({"w": enc}))
assert np.array_equal(f.decode("w"), np.array([[-1.0, 0.5], [0.5, 0.5]], np.float32))
assert file_report(codec.to_bytes({"w": enc}))["params_total"] == 4
assert "torch" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_library_never_imports_an_app() -> None:
    """Below the apps layer nothing names an app, not even lazily inside a function."""
    bad = [f"{mod} -> {imp}" for mod, imps in _graph().items() if _top(mod) not in ("apps", "cli")
           for imp in imps if _top(imp) == "apps"]
    assert not bad, "library modules importing an app:\n" + "\n".join(bad)


def test_public_api_is_the_librarys() -> None:
    """``deepzip.__all__`` names no application's data or models (those live in deepzip.apps)."""
    import deepzip

    for name in deepzip.__all__:
        if name == "__version__":
            continue
        module = getattr(deepzip, name).__module__
        assert not module.startswith("deepzip.apps"), f"deepzip.{name} comes from the app module {module}"


def test_top_level_import_is_lazy() -> None:
    code = "import sys, deepzip; assert 'torch' not in sys.modules; deepzip.prune_; assert 'torch' in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
