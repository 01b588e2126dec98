"""The package's shape, asserted: layering, no import circles, file sizes.

Walks every module of ``dala`` by parsing its imports (no code runs), so a new import that points
back up (``dala`` -> Streamlit or ``pages``) or closes a circle fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dala"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in ``path``; relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, bool]] = []
    top_level = {id(n) for n in tree.body}
    # imports under `if TYPE_CHECKING:` never run
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                top_level.discard(id(sub))
                setattr(sub, "_dala_type_checking", True)
    for node in ast.walk(tree):
        if getattr(node, "_dala_type_checking", False):
            continue
        at_top = id(node) in top_level
        if isinstance(node, ast.Import):
            out += [(a.name, at_top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((name, at_top))
            for a in node.names:  # `from dala.hub import pull` may import the submodule dala.hub.pull
                out.append((f"{name}.{a.name}", at_top))
    return out


def test_dala_never_imports_streamlit_or_pages():
    bad = []
    for mod, path in _modules().items():
        for name, _ in _imports(path, mod):
            if name.split(".")[0] in {"streamlit", "pages", "app"}:
                bad.append(f"{mod} imports {name}")
    assert not bad, "dala must stay UI-free:\n" + "\n".join(bad)


def test_no_import_circle_at_module_level():
    """Module-level imports inside dala form a DAG (imports inside functions are lazy on purpose)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for name, at_top in _imports(path, mod):
            if at_top and name in mods and name != mod:
                graph[mod].add(name)
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_file_in_dala_over_the_limit():
    big = [(p.relative_to(ROOT), n) for p in PKG.rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not big, f"files over {MAX_LINES} lines: {big}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_module_says_what_it_owns(module):
    tree = ast.parse(_modules()[module].read_text(encoding="utf-8"))
    assert ast.get_docstring(tree) or _modules()[module].name == "__init__.py" or module.endswith("__main__"), \
        f"{module} has no module docstring saying what it owns"


def test_importing_dala_pulls_neither_streamlit_nor_ray():
    import subprocess
    import sys

    code = ("import sys, importlib, pkgutil, dala\n"
            "names = [m.name for m in pkgutil.walk_packages(dala.__path__, 'dala.')]\n"
            "skip = {'dala.__main__'}\n"
            "[importlib.import_module(n) for n in names if n not in skip]\n"
            "bad = [m for m in ('streamlit', 'ray') if m in sys.modules]\n"
            "print('BAD', bad) if bad else print('OK')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("OK"), out.stdout + out.stderr[-2000:]
