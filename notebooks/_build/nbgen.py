"""Shared helpers for the notebook generators in this folder (each `build_NN_*.py` writes one notebook).

A generator calls `md(...)` and `code(...)` in reading order, then `write_notebook("NN_topic.ipynb")`.
Notebooks are written without outputs; the test suite executes them. `NBGEN_OUT=DIR` writes to DIR
instead of `notebooks/` (to compare a regenerated notebook with the committed one).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells: list = []


def md(text: str) -> None:
    cells.append(new_markdown_cell(text.strip()))


def code(text: str) -> None:
    cells.append(new_code_cell(text.strip()))


def write_notebook(name: str) -> Path:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    out_dir = Path(os.environ.get("NBGEN_OUT") or Path(__file__).resolve().parents[1])
    out = out_dir / name
    nbformat.write(nb, out)
    print("wrote", out)
    return out
