"""The talk the course is built on: cited, and each of its pictures mapped to the lecture cell that draws it.

The README's section "The talk and the course" has a table, one row per picture of the talk:
``| picture | NN, "section heading" | drawn by |``. Each heading must exist in chapter NN's lecture,
and the function the row names must be called in a code cell of that section, so that a renamed
heading or a moved figure fails here instead of sending an instructor to a cell that is not there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CITATION = ('Florian Valade, "Leveraging Early Exit and Rejection in ML for Efficiency", '
            "Gustave Eiffel University, 18 September 2024")
# The talk's pictures, in its order (the first words of each row's first column).
PICTURES = ("layers one after the other", "figure 1", "figure 2", "figure 3", "figure 4", '"power savings"',
            "figure 5", "the table of block counts", "token difficulty", '"early exit **and rejection**"')
CELL = re.compile(r'^(?P<chapter>\d\d), "(?P<heading>[^"]+)"$')
CALLED_IN = re.compile(r'in "(?P<heading>[^"]+)", `(?P<name>[\w.]+)`')


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _map_rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## The talk and the course", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| the talk's picture |"), "the map's table has moved or lost its header"
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def _section(chapter: str, heading: str) -> list[dict]:
    """The cells of lecture ``chapter`` from the markdown heading ``heading`` to the next heading of its level or above."""
    (path,) = (ROOT / "notebooks").glob(f"{chapter}_*.ipynb")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    level = start = None
    for k, cell in enumerate(cells):
        source = "".join(cell["source"])
        if cell["cell_type"] != "markdown":
            continue
        for line in source.splitlines():
            found = re.match(r"^(#+) (.*)$", line)
            if not found:
                continue
            if start is None and found[2].strip() == heading:
                level, start = len(found[1]), k
            elif start is not None and k > start and len(found[1]) <= level:
                return cells[start:k]
    assert start is not None, f"{path.name} has no heading {heading!r} (the README's map of the talk names it)"
    return cells[start:]


def _calls(cells: list[dict], name: str) -> bool:
    return any(cell["cell_type"] == "code" and re.search(rf"\b{re.escape(name)}\(", "".join(cell["source"]))
               for cell in cells)


def test_the_talk_is_cited_in_the_readme_and_at_the_top_of_chapter_1():
    assert CITATION in _one_line(README.read_text(encoding="utf-8"))
    first = json.loads((ROOT / "notebooks" / "01_residual_networks.ipynb").read_text(encoding="utf-8"))["cells"][0]
    assert CITATION in _one_line("".join(first["source"]))


def test_every_picture_of_the_talk_is_mapped_in_order():
    rows = _map_rows()
    assert len(rows) == len(PICTURES) and all(row[0].startswith(p) for row, p in zip(rows, PICTURES)), \
        f"the map's rows should be the talk's pictures in order: {PICTURES}"


@pytest.mark.parametrize("row", _map_rows(), ids=lambda row: row[0][:30])
def test_each_mapped_cell_exists_and_draws_its_picture(row):
    picture, where, drawn_by = row
    cell = CELL.match(where)
    assert cell, f"{picture}: the second column should read NN, \"section heading\", not {where!r}"
    cells = _section(cell["chapter"], cell["heading"])
    named = re.match(r"^`([\w.]+)`", drawn_by)
    if named:
        assert _calls(cells, named[1]), f"{picture}: chapter {cell['chapter']}, {cell['heading']!r} calls no {named[1]}"
    else:  # a table in the lecture's text: it names what the picture's row names in brackets
        models = re.search(r"\(([^)]*)\)", picture)[1].split(", ")
        tables = [c for c in cells if c["cell_type"] == "markdown" and "\n|" in "".join(c["source"])]
        assert any(all(m in "".join(t["source"]) for m in models) for t in tables), \
            f"{picture}: no table of {models} in chapter {cell['chapter']}, {cell['heading']!r}"
    for also in CALLED_IN.finditer(drawn_by):
        assert _calls(_section(cell["chapter"], also["heading"]), also["name"]), \
            f"{picture}: chapter {cell['chapter']}, {also['heading']!r} calls no {also['name']}"


def test_a_missing_heading_fails():
    with pytest.raises(AssertionError, match="has no heading 'No such section'"):
        _section("01", "No such section")
    assert not _calls(_section("01", "The residual block"), "plots.plot_feature_maps")
