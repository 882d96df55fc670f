"""Lecture slides: the lectures' slide metadata is current, every lecture exports, no slide overflows."""

from pathlib import Path

import nbformat
import pytest

from eelib.course import cli as course

from eelib.course import slides
from eelib.course.slides import SLIDE_LINES, is_display_cell, slides_of

ROOT = Path(__file__).resolve().parent.parent
LECTURES = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_CODE_LINES = 22  # a code cell longer than this does not fit a slide with its output


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    for cell in nb.cells:
        cell.pop("id", None)
    nb.nbformat_minor = 4
    return nb


def _course_folder(tmp_path, nb, name="99_demo.ipynb"):
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "notebooks" / name
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return path


def _course(tmp_path, capsys, *args):
    """``python -m eelib.course --root tmp_path *args`` in this process (a new one would import torch again)."""
    capsys.readouterr()
    code = course.main(["--root", str(tmp_path), *args])
    return code, capsys.readouterr().out


def test_the_lectures_slide_metadata_is_up_to_date():
    stale = slides.annotate_notebooks(LECTURES, check=True)
    assert not stale, f"stale slide metadata in {[p.name for p in stale]}: run {slides.ANNOTATE_COMMAND}"


@pytest.mark.parametrize("path", LECTURES, ids=lambda p: p.name)
def test_every_lecture_exports_as_slides_and_no_slide_overflows(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    assert all("slide_type" in c.metadata.get("slideshow", {}) for c in nb.cells), "every cell has a slide type"
    groups = slides_of(nb)
    assert groups[0] == nb.cells[:1], "the title cell is a slide of its own"
    for group in groups:
        head = group[0].source.splitlines()[0] if group[0].source else ""
        assert sum(is_display_cell(c) for c in group) <= 1, f"{path.name}: two figures on the slide {head!r}"
        for cell in group:
            if cell.cell_type == "code":
                assert len(cell.source.splitlines()) <= MAX_CODE_LINES, f"{path.name}: a long code cell:\n{cell.source}"
        if len(group) > 1:
            lines = sum(len(c.source.splitlines()) for c in group)
            assert lines <= SLIDE_LINES, f"{path.name}: the slide {head!r} has {lines} lines"
    written = slides.export_slides(nb, tmp_path / f"{path.stem}.slides.html")
    html = written.path.read_text(encoding="utf-8")
    assert not written.fallback and written.slides == len(groups) > 5
    # nbconvert nests sections: one per slide, and one per sub-slide inside it
    n_slides = sum(c.metadata.slideshow.slide_type == "slide" for c in nb.cells)
    assert html.count("<section") == n_slides + len(groups)
    assert 'src="reveal.js/require.js"' in html and '"reveal.js/dist/reveal.js"' in html  # offline: no CDN
    assert (tmp_path / "reveal.js" / "dist" / "reveal.js").is_file()


def test_annotation_rules():
    nb = _nb(("md", "# Title\n\nWhat this is about."), ("md", "We import."), ("code", "import eelib"),
             ("md", "## A section"), ("code", "x = 1\nprint(x)"), ("md", "Why a figure:"),
             ("code", "plots.plot_exit_histogram(f, names);"), ("code", "print(2)"),
             ("md", "### A detail"), ("code", "\n".join(["y = 1"] * (SLIDE_LINES - 1))),
             ("md", "Then more."), ("md", "And more."))
    assert slides.slide_types(nb) == ["slide", "subslide", "-", "slide", "-", "subslide",
                                      "subslide", "subslide", "subslide", "-", "subslide", "-"]
    once = slides.annotate(nb)
    assert slides.slide_types(once) == slides.slide_types(nb)  # idempotent
    assert nbformat.writes(slides.annotate(once)) == nbformat.writes(once)
    assert "slideshow" not in nb.cells[0].metadata  # the input is not changed
    assert [is_display_cell(nbformat.v4.new_code_cell(s)) for s in
            ("plt.plot(x)", "threshold_widget(val)", "display(q.widget())", "from eelib.course import widgets", "x.plot")] == \
           [True, True, True, False, False]


def test_check_finds_stale_metadata_and_annotate_fixes_only_metadata(tmp_path, capsys):
    path = _course_folder(tmp_path, _nb(("md", "# Demo"), ("md", "## Part"), ("code", "print(1)")))
    before = nbformat.read(path, as_version=4)
    code, out = _course(tmp_path, capsys, "slides", "--check")
    assert code == 1 and "out of date: notebooks/99_demo.ipynb" in out and slides.ANNOTATE_COMMAND in out
    assert _course(tmp_path, capsys, "slides", "--annotate") == (0, "annotated 1 lecture notebook(s)\n")
    assert _course(tmp_path, capsys, "slides", "--check")[0] == 0
    after = nbformat.read(path, as_version=4)
    assert [c.source for c in after.cells] == [c.source for c in before.cells]
    assert [c.metadata for c in after.cells] == [{"slideshow": {"slide_type": t}} for t in ("slide", "slide", "-")]
    text = path.read_text(encoding="utf-8")
    after.cells[1].source = "Now not a heading"  # an edit to the text makes the metadata stale
    path.write_text(nbformat.writes(after) + "\n", encoding="utf-8")
    assert _course(tmp_path, capsys, "slides", "--check")[0] == 1
    assert slides.annotate_notebooks([path]) == [path] and path.read_text(encoding="utf-8") != text


def test_run_slides_falls_back_to_one_slide_per_cell_and_says_so(tmp_path, capsys, monkeypatch):
    for name in ("MPLBACKEND", "EELIB_PROGRESS"):  # `run` sets them for its kernels; restored after the test
        monkeypatch.setenv(name, "")
    nb = _nb(("md", "# Demo"), ("code", "print(1)"), ("code", "print(2)"))
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    _course_folder(tmp_path, nb)
    code, out = _course(tmp_path, capsys, "run", "--slides", "--out", str(tmp_path / "build"))
    assert code == 0, out
    assert "99_demo.ipynb has no slide metadata: one slide per cell" in out
    html = (tmp_path / "build" / "slides" / "99_demo.slides.html").read_text(encoding="utf-8")
    assert html.count("<section") == 6  # three slides, each in its own column
    assert (tmp_path / "build" / "slides" / "reveal.js" / "require.js").is_file()
    assert not slides.has_slide_metadata(nb)  # the input is not changed


def test_split_at_headings_splits_markdown_before_inner_headings_only():
    nb = _nb(("md", "End of a section.\n\n## Next section\n\nIts text.\n```\n# a comment\n```"),
             ("code", "x = 1  # not markdown\n## neither"), ("md", "## A heading first\n\ntext"))
    split = slides.split_at_headings(nb)
    assert [c.source for c in split.cells] == ["End of a section.", "## Next section\n\nIts text.\n```\n# a comment\n```",
                                               nb.cells[1].source, nb.cells[2].source]
    assert all("id" not in c for c in split.cells) and len(nb.cells) == 3  # no ids in 4.4; the input is kept
    assert slides.slide_types(split)[:2] == ["slide", "slide"]
    assert nbformat.writes(slides.split_at_headings(split)) == nbformat.writes(split)  # idempotent
