#!/usr/bin/env python3
"""Regenerate notebooks/*.ipynb from their percent-format sources notebooks/src/*.py (jupytext).

    python scripts/sync_notebooks.py            # all
    python scripts/sync_notebooks.py quickstart # one
The parameters cell is generated from repro/profiles/<name>.yaml (one variable per parameter).
Needs `pip install jupytext` (a development tool, not a runtime dependency)."""
import subprocess
import sys
from pathlib import Path

import nbformat

root = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(root))
from repro.profiles import parameters_cell  # noqa: E402

MARK = '# %% tags=["parameters"]\n'


def write_parameters_cell(src: Path, name: str) -> None:
    """Replace the source's parameters cell by the one generated from repro/profiles/<name>.yaml."""
    text = src.read_text()
    start = text.index(MARK) + len(MARK)
    end = text.index("\n# %%", start)
    new = text[:start] + parameters_cell(name) + "\n" + text[end:]
    if new != text:
        src.write_text(new)

names = sys.argv[1:] or [p.stem for p in sorted((root / "notebooks/src").glob("*.py"))]
for name in names:
    src, dst = root / f"notebooks/src/{name}.py", root / f"notebooks/{name}.ipynb"
    write_parameters_cell(src, name)
    subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "-o", str(dst), str(src)], check=True)
    nb = nbformat.read(dst, as_version=4)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.pop("jupytext", None)
    nbformat.write(nb, dst)
    print("wrote", dst)
