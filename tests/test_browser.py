"""The course in a real browser: JupyterLab in headless Chromium, as an instructor uses it.

Every lecture notebook's Run All finishes with no error and every figure shown; chapter 4's
threshold slider and chapter 7's prompt widget answer the mouse and the keyboard; every exercise
notebook's Run All reaches its last cell with the checks' errors shown. The notebooks run on a
temporary copy of the course, two at a time (two tabs, one kernel and one thread each); a
screenshot of each lands in ``build/browser/`` with ``times.json`` (seconds per notebook).

Skipped, with the reason, where Playwright or Chromium cannot be had, or with ``EELIB_BROWSER_TESTS=0``. Where they can, the root
``conftest.py`` leaves the lecture notebooks out of nbval: they run here instead, not twice.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from browser import MARK_CELL, JupyterLab, run_notebooks, unavailable

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "browser"
LECTURES = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("notebooks/[0-9][0-9]_*.ipynb"))
EXERCISES = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("exercises/[0-9][0-9]_*.ipynb"))
EXPECTED_IN_EXERCISES = ("NotImplementedError", "AssertionError")  # as in conftest.py
THRESHOLD_CELL, GENERATION_CELL = "threshold_widget(", "generation_widget("
FIGURE_CALL = re.compile(r"\bplots\.plot_\w+\(")  # the lectures draw every figure with eelib.course.plots

if (reason := unavailable()) is not None:
    pytest.skip(f"browser tests skipped: {reason}", allow_module_level=True)


def _widget_cell(page, text: str):
    assert page.evaluate(MARK_CELL, text) >= 0, f"no cell calls {text}"
    cell = page.locator(f'[data-eelib-cell="{text}"]')
    cell.scroll_into_view_if_needed()
    return cell


def move_threshold_slider(page) -> dict:
    """Drag chapter 4's threshold slider to the right; return the summary and figure before and after."""
    from playwright.sync_api import expect

    cell = _widget_cell(page, THRESHOLD_CELL)
    summary, readout = cell.locator(".widget-html-content").first, cell.locator(".widget-readout").first
    figure = cell.locator(".jupyter-widgets img").first
    before = {"summary": summary.inner_text(), "readout": readout.inner_text(), "figure": figure.get_attribute("src")}
    box = cell.locator(".noUi-handle").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y, steps=6)
    page.mouse.up()
    expect(summary).not_to_have_text(before["summary"], use_inner_text=True, timeout=30_000)
    expect(figure).not_to_have_attribute("src", before["figure"] or "", timeout=30_000)
    after = {"summary": summary.inner_text(), "readout": readout.inner_text(), "figure": figure.get_attribute("src")}
    return {"before": before, "after": after}


PROMPT = "JULIET:\nO Romeo, Romeo"


def type_a_prompt(page) -> dict:
    """Type a prompt into chapter 7's generation widget and press generate; return the output before and after."""
    from playwright.sync_api import expect

    cell = _widget_cell(page, GENERATION_CELL)
    out = cell.locator(".widget-html-content").last
    before = out.inner_text()
    box = cell.locator("textarea").first
    box.fill(PROMPT)
    cell.get_by_role("button", name="generate").click()
    expect(out).to_contain_text(PROMPT.split(":")[0], timeout=120_000)  # the new text starts with the prompt
    return {"before": before, "after": out.inner_text()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run All of every lecture and exercise notebook in the browser, once for the whole module."""
    from eelib.course.cli import prepare_models

    prepare_models(progress=False)  # the kernels then load the course models, none trains
    shutil.rmtree(SHOTS, ignore_errors=True)  # no screenshot from an earlier run
    order = sorted(LECTURES, reverse=True) + EXERCISES  # the language-model lectures are the slowest: first
    interact = {p: move_threshold_slider for p in LECTURES if p.startswith("notebooks/04_")}
    interact |= {p: type_a_prompt for p in LECTURES if p.startswith("notebooks/07_")}
    with JupyterLab(ROOT, tmp_path_factory.mktemp("jupyterlab")) as lab:
        result = run_notebooks(lab, order, SHOTS, interact=interact,
                               log=lambda line: print(line, file=sys.stderr, flush=True))
    (SHOTS / "times.json").write_text(json.dumps({p: r.seconds for p, r in result.items()}, indent=1) + "\n")
    return result


def _finished(run) -> None:
    assert run.failure is None, f"{run.path}: {run.failure}"
    assert run.screenshot is not None and run.screenshot.stat().st_size > 0, f"{run.path}: no screenshot"


def _code_cells(run) -> list[tuple[dict, dict]]:
    """(saved cell, DOM entry) for each code cell; the saved notebook and the page list the same cells."""
    cells = run.saved["cells"]
    assert len(cells) == len(run.dom), f"{run.path}: {len(cells)} cells saved, {len(run.dom)} in the page"
    return [(c, d) for c, d in zip(cells, run.dom) if c["cell_type"] == "code"]


def _outputs(cell: dict, kind: str) -> list[dict]:
    return [o for o in cell["outputs"] if o["output_type"] == kind]


def _images(cell: dict) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell["outputs"])


@pytest.mark.parametrize("path", LECTURES)
def test_lecture_runs_all_in_the_browser(runs, path):
    run = runs[path]
    _finished(run)
    for i, (cell, dom) in enumerate(_code_cells(run)):
        where = f"{path} code cell {i}:\n{''.join(cell['source'])[:300]}"
        assert cell["execution_count"] is not None, f"not run: {where}"
        errors = _outputs(cell, "error")
        assert not errors, f"{errors[0]['ename']}: {errors[0]['evalue']} in {where}"
        assert dom["tracebacks"] == 0, f"a traceback shown in {where}"
        if FIGURE_CALL.search("".join(cell["source"])):
            assert _images(cell) > 0, f"no figure saved from {where}"
        assert dom["images"] == _images(cell), f"{dom['images']} images shown, {_images(cell)} saved: {where}"
        assert dom["decoded"] == dom["images"], f"{dom['images'] - dom['decoded']} images not decoded: {where}"
        assert dom["widgetErrors"] == 0, f"a widget failed to render: {where}"
    assert sum(d["images"] for d in run.dom) > 0, f"{path} shows no figure"


def test_threshold_slider_changes_the_summary(runs):
    (path,) = [p for p in LECTURES if p.startswith("notebooks/04_")]
    _finished(runs[path])
    seen = runs[path].interaction
    assert seen["after"]["readout"] != seen["before"]["readout"], seen
    assert seen["after"]["summary"] != seen["before"]["summary"], seen
    assert "accuracy" in seen["after"]["summary"] and "saved" in seen["after"]["summary"], seen
    assert seen["after"]["figure"] != seen["before"]["figure"], "the exit histogram was not redrawn"


def test_generation_widget_answers_a_typed_prompt(runs):
    (path,) = [p for p in LECTURES if p.startswith("notebooks/07_")]
    _finished(runs[path])
    seen = runs[path].interaction
    assert seen["after"] != seen["before"], seen
    assert "JULIET" in seen["after"] and "speedup" in seen["after"], seen["after"][:500]


@pytest.mark.parametrize("path", EXERCISES)
def test_exercise_runs_all_to_the_last_cell(runs, path):
    run = runs[path]
    _finished(run)
    cells = _code_cells(run)
    assert cells[-1][0]["execution_count"] is not None, f"{path}: Run All stopped before the last cell"
    for i, (cell, dom) in enumerate(cells):
        where = f"{path} code cell {i}:\n{''.join(cell['source'])[:300]}"
        assert cell["execution_count"] is not None, f"not run: {where}"
        errors = _outputs(cell, "error")
        if "raises-exception" in cell["metadata"].get("tags", []):
            assert [e["ename"] for e in errors if e["ename"] in EXPECTED_IN_EXERCISES], \
                f"a blank exercise's check should fail with one of {EXPECTED_IN_EXERCISES}: {where}"
            assert dom["tracebacks"] == len(errors), f"the check's error is not shown: {where}"
        else:
            assert not errors, f"{errors[0]['ename']}: {errors[0]['evalue']} in {where}"
            assert dom["tracebacks"] == 0, f"a traceback shown in {where}"
