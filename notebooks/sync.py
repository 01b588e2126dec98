"""Write the teaching notebooks (``notebooks/0*.ipynb``) from their sources, the jupytext percent
scripts beside them (``notebooks/0*.py``), outputs stripped.

The ``.py`` files are the sources a reviewer reads and a linter checks: plain Python, one
``# %%`` line per code cell and ``# %% [markdown]`` per text cell (jupytext's percent format).
Edit a ``.py``, then:

    python notebooks/sync.py          # rewrites notebooks/0*.ipynb from notebooks/0*.py
    python notebooks/sync.py --check  # exit 1 if a notebook differs from its source

jupytext parses the scripts; this file only fixes what makes the output reproducible (cell ids
``cell-00``, ``cell-01``..., the python3 kernelspec, no outputs, no jupytext timestamp metadata),
so syncing twice gives the same bytes and a diff shows only what changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def sources() -> list[Path]:
    """The notebook sources: ``NN_name.py`` (this script and helpers start with a letter or ``_``)."""
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def build(source: Path) -> nbformat.NotebookNode:
    """The outputs-free notebook of one percent script."""
    parsed = jupytext.read(source, fmt="py:percent")
    nb = new_notebook()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    for i, cell in enumerate(parsed.cells):
        if cell.cell_type == "markdown":
            new = new_markdown_cell(cell.source)
        elif cell.cell_type == "code":
            new = new_code_cell(cell.source)
        else:
            raise SystemExit(f"{source.name}: cell {i} is a {cell.cell_type} cell; use code or markdown cells")
        new["id"] = f"cell-{i:02d}"  # stable ids: syncing again gives the same bytes
        nb.cells.append(new)
    nbformat.validate(nb)
    return nb


def render(source: Path) -> str:
    return nbformat.writes(build(source)) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    srcs = sources()
    orphans = sorted({p.stem for p in HERE.glob("*.ipynb")} - {p.stem for p in srcs})
    if orphans:
        print("notebooks without a .py source:", ", ".join(f"{o}.ipynb" for o in orphans))
        return 1
    for src in srcs:
        target = src.with_suffix(".ipynb")
        text = render(src)
        if check:
            if not target.exists() or target.read_text(encoding="utf-8") != text:
                stale.append(target.name)
        else:
            target.write_text(text, encoding="utf-8")
            print("wrote", target.relative_to(HERE.parent))
    if stale:
        print("out of date (edit the .py, then run python notebooks/sync.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
