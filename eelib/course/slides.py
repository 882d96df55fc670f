"""Lecture slides: reveal.js slide metadata for the lecture notebooks, and their export.

Every lecture cell gets ``metadata.slideshow.slide_type`` (what RISE and nbconvert's slides
exporter read), computed from the cells' sources alone by :func:`slide_types`, so that the
annotation is deterministic and idempotent: after anyone edits a lecture's text,
``python -m eelib.course slides --annotate`` writes it again, and ``--check`` (also a test)
fails when a lecture's metadata is stale. Nothing else in a notebook changes.

The rules, for each cell in order (the first that applies):

1. The first cell is the **title slide** (``"slide"``), and the cell after it starts a new
   sub-slide: the title stands alone.
2. A markdown cell that opens with a ``#`` or ``##`` heading starts a **slide** (a new column of
   reveal.js); one with a ``###`` (or deeper) heading starts a **sub-slide** (down the column).
3. A **display cell**, a code cell that shows a figure or a widget (:func:`is_display_cell`:
   it calls ``plots.<name>(`` or ``plt.<name>(``, a ``*_widget(`` function, ``.widget()``,
   ``display(`` or ``HTML(``), starts a sub-slide, and so does the cell after it: each figure
   is a slide of its own, with the code that draws it.
4. A markdown cell after a code cell starts a sub-slide: it is the *why* of the next idea.
5. A cell that would take its slide past :data:`SLIDE_LINES` source lines starts a sub-slide.
6. Otherwise the cell continues its slide (``"-"``): the code after its markdown stays with it.

A single cell longer than :data:`SLIDE_LINES` cannot be split without changing the text, so it
gets a slide of its own; the exporter turns on reveal.js scrolling for such slides. Likewise a
heading in the *middle* of a markdown cell starts no slide: :func:`split_at_headings` (``slides
--annotate --split-headings``, opt-in because it changes the cells) splits such cells before each
heading, so that rule 2 applies.

:func:`export_slides` writes a notebook as reveal.js slides with nbconvert's ``SlidesExporter``.
A notebook with no slide metadata at all falls back to one slide per cell. reveal.js, jQuery and
RequireJS are loaded from ``reveal.js/`` beside the slides, a copy of the files shipped in
``eelib/course/static/reveal.js/`` (versions and licences in its README), so the slides work offline;
nbconvert's default would load them from a CDN. (MathJax still comes from its CDN: offline, the
console says "MathJax is not defined" on every slide change, harmless; the lectures have no formulas.)
"""

from __future__ import annotations

import copy
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nbformat

from eelib._util.cache import atomic_path

SLIDE_LINES = 22  # at most this many source lines on one slide (960 x 700 at nbconvert's 19-20 px fonts)
SLIDE_TYPES = ("slide", "subslide", "fragment", "skip", "notes", "-")
REVEAL_DIR = Path(__file__).parent / "static" / "reveal.js"
ANNOTATE_COMMAND = "python -m eelib.course slides --annotate"

_HEADING = re.compile(r"(#+)\s")
_DISPLAY = re.compile(r"\b(?:plots|plt)\.\w+\(|\w_widget\(|\.widget\(\)|\bdisplay\(|\bHTML\(")


def is_display_cell(cell: nbformat.NotebookNode) -> bool:
    """Whether a code cell shows a figure or a widget (rule 3 of this module's docstring)."""
    return cell.cell_type == "code" and bool(_DISPLAY.search(cell.source))


def _heading_level(cell: nbformat.NotebookNode) -> int:
    """The level of the heading a markdown cell opens with (0: none)."""
    if cell.cell_type != "markdown":
        return 0
    match = _HEADING.match(cell.source.lstrip())
    return len(match.group(1)) if match else 0


def _lines(cell: nbformat.NotebookNode) -> int:
    return len(cell.source.splitlines())


def slide_types(nb: nbformat.NotebookNode) -> list[str]:
    """The slide type of every cell of ``nb``, by the rules of this module's docstring."""
    types: list[str] = []
    lines = 0  # source lines on the current slide so far
    for i, cell in enumerate(nb.cells):
        prev = nb.cells[i - 1] if i else None
        level = _heading_level(cell)
        if i == 0 or 1 <= level <= 2:
            kind = "slide"
        elif (level >= 3 or i == 1 or is_display_cell(cell) or is_display_cell(prev)
              or (cell.cell_type == "markdown" and prev.cell_type == "code")
              or lines + _lines(cell) > SLIDE_LINES):
            kind = "subslide"
        else:
            kind = "-"
        lines = _lines(cell) + (lines if kind == "-" else 0)
        types.append(kind)
    return types


def split_at_headings(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` in which every markdown cell is split before each heading after its first line.

    Headings inside fenced code blocks stay; the first part keeps the cell's metadata, the text is unchanged.
    """
    out = copy.deepcopy(nb)
    cells = []
    for cell in out.cells:
        if cell.cell_type != "markdown":
            cells.append(cell)
            continue
        parts, fenced = [[]], False
        for line in cell.source.split("\n"):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            if not fenced and _HEADING.match(line) and any(x.strip() for x in parts[-1]):
                parts.append([])
            parts[-1].append(line)
        for k, part in enumerate(parts):
            piece = cell if k == 0 else nbformat.v4.new_markdown_cell()
            if k and "id" not in cell:
                piece.pop("id", None)  # nbformat 4.4 notebooks have no cell ids
            piece.source = "\n".join(part).strip("\n") if len(parts) > 1 else cell.source
            cells.append(piece)
    out.cells = cells
    return out


def annotate(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose cells carry the slide types of :func:`slide_types` (other metadata kept)."""
    out = copy.deepcopy(nb)
    for cell, kind in zip(out.cells, slide_types(nb)):
        cell.setdefault("metadata", {})["slideshow"] = {"slide_type": kind}
    return out


def has_slide_metadata(nb: nbformat.NotebookNode) -> bool:
    """Whether any cell of ``nb`` has a slide type."""
    return any("slide_type" in cell.get("metadata", {}).get("slideshow", {}) for cell in nb.cells)


def _dumps(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"  # as eelib.course.cli writes notebooks


def annotate_notebooks(paths: list[Path], *, check: bool = False, split_headings: bool = False) -> list[Path]:
    """Write (or with ``check`` only compare) the slide metadata of the notebooks at ``paths``.

    With ``split_headings``, markdown cells are first split before their inner headings
    (:func:`split_at_headings`).

    Returns:
        The notebooks whose slide metadata was out of date (and, unless ``check``, were rewritten).
    """
    stale = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=4)
        wanted = _dumps(annotate(split_at_headings(nb) if split_headings else nb))
        if wanted != text:
            stale.append(path)
            if not check:
                with atomic_path(path) as tmp:  # a lecture: never left half-written
                    tmp.write_text(wanted, encoding="utf-8")
    return stale


def slides_of(nb: nbformat.NotebookNode) -> list[list[nbformat.NotebookNode]]:
    """The cells of ``nb`` grouped as reveal.js shows them: one list per slide or sub-slide.

    Cells of type ``skip`` and ``notes`` are left out, ``fragment`` and ``-`` cells join the slide
    before them, and cells before the first ``slide`` form a slide of their own, as nbconvert does.
    """
    slides: list[list[nbformat.NotebookNode]] = []
    for cell in nb.cells:
        kind = cell.get("metadata", {}).get("slideshow", {}).get("slide_type", "-")
        if kind in ("skip", "notes"):
            continue
        if kind in ("slide", "subslide") or not slides:
            slides.append([])
        slides[-1].append(cell)
    return slides


@dataclass(frozen=True)
class Slides:
    """What :func:`export_slides` wrote."""

    path: Path  # the reveal.js HTML file
    slides: int  # how many slides and sub-slides it has
    fallback: bool  # True: the notebook had no slide metadata, one slide per cell


def export_slides(nb: nbformat.NotebookNode, path: Path) -> Slides:
    """Write ``nb`` (executed or not) as reveal.js slides to ``path``, a ``.slides.html`` file.

    A notebook without slide metadata gets one slide per cell (``Slides.fallback``). reveal.js is
    copied into ``reveal.js/`` beside ``path`` unless it is there already, and the slides load it
    from there: they open offline, from the disk or from any web server.
    """
    from nbconvert import SlidesExporter

    fallback = not has_slide_metadata(nb)
    if fallback:
        nb = copy.deepcopy(nb)
        for cell in nb.cells:
            cell.setdefault("metadata", {})["slideshow"] = {"slide_type": "slide"}
    path.parent.mkdir(parents=True, exist_ok=True)
    reveal = path.parent / "reveal.js"
    for source in REVEAL_DIR.rglob("*"):
        target = reveal / source.relative_to(REVEAL_DIR)
        if source.is_file() and (not target.is_file() or target.read_bytes() != source.read_bytes()):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    exporter = SlidesExporter(reveal_url_prefix="reveal.js", jquery_url="reveal.js/jquery.min.js",
                              require_js_url="reveal.js/require.js", reveal_theme="white", reveal_scroll=True)
    html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.name.split(".")[0]}})
    path.write_text(html, encoding="utf-8")
    return Slides(path=path, slides=len(slides_of(nb)), fallback=fallback)
