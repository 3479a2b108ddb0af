"""The chapters as committed (DESIGN.md section 9): valid notebooks, no stored outputs, a papermill
``parameters`` cell that takes the profile, and the parts every chapter has."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill
import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


def test_there_are_eight_chapters():
    assert [p.name[:2] for p in CHAPTERS] == [f"{i:02d}" for i in range(1, 9)]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_chapter_is_committed_valid_and_without_outputs(path):
    raw = json.loads(path.read_text())
    assert all("id" in c for c in raw["cells"]), f"{path.name}: a cell has no id (nbformat 4.5 needs one)"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)  # every field its type
    code = [c for c in nb.cells if c.cell_type == "code"]
    with_outputs = [c.id for c in code if (c.outputs or c.execution_count)
                    and "# NBVAL_CHECK_OUTPUT" not in c.source]
    assert not with_outputs, f"{path.name}: clear the outputs of cells {with_outputs} before committing"
    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and parameters[0].source.startswith("profile = None"), \
        f"{path.name}: one cell tagged 'parameters' must start with `profile = None` (papermill -p profile ...)"
    assert any("get_profile(profile)" in c.source for c in code)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for part in ("**You will learn**", "## Summary", "## Exercises"):  # the objectives box, summary, exercises
        assert part in markdown, f"{path.name} has no {part!r}"
    assert any("assert " in c.source for c in code), f"{path.name} checks nothing for nbval"
    assert raw["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path):
    """`papermill --help-notebook` and `-p name value` need each line of the parameters cell to parse."""
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    names = [line.split("=")[0].strip() for line in cell.source.splitlines() if line.strip() and not line.startswith("#")]
    assert list(papermill.inspect_notebook(str(path))) == names
