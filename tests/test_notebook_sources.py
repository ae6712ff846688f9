"""The committed notebooks are exactly their py:percent sources (jupytext), so what ruff lints and
what people edit (notebooks/NN_topic.py) is what runs (notebooks/NN_topic.ipynb).

A failure here means someone edited one side only: edit the .py source and run `make notebooks`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
SOURCES = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def test_every_notebook_has_a_source_and_back():
    assert SOURCES, "no notebook sources found"
    assert {p.stem for p in SOURCES} == {p.stem for p in NOTEBOOKS}, (
        "each notebooks/NN_topic.ipynb needs its notebooks/NN_topic.py source and vice versa")


@pytest.mark.parametrize("src", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_matches_its_source(src: Path):
    import jupytext
    import nbformat

    committed = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
    expected = jupytext.read(src)
    got, want = _cells(committed), _cells(expected)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"{src.with_suffix('.ipynb').name} cell {i} differs from {src.name}; run `make notebooks`"
    assert len(got) == len(want), f"{src.with_suffix('.ipynb').name} has {len(got)} cells, {src.name} {len(want)}"
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code"), (
        "notebooks are committed without outputs (the tests and `make site` execute them)")
