"""Test configuration shared by the unit tests and the notebook runs (nbval).

* Notebooks run headless on the CPU: ``MPLBACKEND=Agg`` and ``EELIB_DEVICE=cpu`` are set here,
  before nbval starts a kernel, so each kernel inherits them (set ``EELIB_DEVICE=cuda`` to run
  the notebooks on a GPU instead).
* Under pytest-xdist, each worker and the kernels it starts compute on one thread.
* Before any notebook runs, the course models (``eelib.vision.zoo.RECIPES``) are loaded once in the main
  process (``prepare_models``): they ship with eelib, so nothing is trained; a recipe changed
  since its shipped model would be trained here, once, into ``$EELIB_CACHE``. Runs that collect
  no notebook skip this.
* In ``exercises/``, every cell that nbval lets raise (tag ``raises-exception``) must actually
  raise — a ``NotImplementedError`` from a blank exercise or an ``AssertionError`` from its check.
  nbval alone accepts a tagged cell that passes; this hook turns that into a failure
  (``python -m pytest exercises``). The default suite no longer runs ``solutions/`` and
  ``exercises/`` with nbval: ``tests/test_grading.py`` executes them through nbgrader's
  autograde and asserts the same (every check fails on the blank exercise, passes on the solution).
* The lectures run in the browser where one can be had, else under nbval: when this run
  includes ``tests/test_browser.py``, Playwright and Chromium are there and
  ``EELIB_BROWSER_TESTS`` is not ``0``, that module runs
  every ``notebooks/*.ipynb`` in JupyterLab, so nbval leaves them out (``pytest_ignore_collect``)
  instead of executing them a second time. ``pytest notebooks/`` on its own still runs them here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("EELIB_DEVICE", "cpu")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per parallel worker (and its notebook kernels): -n auto starts one worker per
    # core, and several multi-threaded workers on the same cores slow each other down
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent  # this file sits at the root of the course
EXPECTED_IN_EXERCISES = ("NotImplementedError", "AssertionError")


NOTEBOOK_FOLDERS = ("notebooks", "solutions", "exercises")


def _runs_notebooks(config) -> bool:
    for arg in config.args:
        path = (Path(config.invocation_params.dir) / arg.split("::")[0]).resolve()
        if path.suffix == ".ipynb" or path == ROOT or (path.is_dir() and path.name in NOTEBOOK_FOLDERS):
            return True
    return False


def _lectures_in_browser(config) -> bool:
    """True when tests/test_browser.py is part of this run and can run (it then runs the lectures)."""
    if not hasattr(config, "_eelib_lectures_in_browser"):
        browser_test = ROOT / "tests" / "test_browser.py"
        paths = [(Path(config.invocation_params.dir) / arg.split("::")[0]).resolve() for arg in config.args]
        included = any(p == browser_test or p in browser_test.parents for p in paths)
        config._eelib_lectures_in_browser = included and _browser_helper().unavailable() is None
    return config._eelib_lectures_in_browser


def _browser_helper():
    """tests/browser.py, imported as ``browser`` (the name tests/test_browser.py imports it by)."""
    if "browser" not in sys.modules:
        spec = importlib.util.spec_from_file_location("browser", ROOT / "tests" / "browser.py")
        sys.modules["browser"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["browser"]


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".ipynb" and collection_path.resolve().parent == ROOT / "notebooks" and _lectures_in_browser(config):
        return True  # tests/test_browser.py runs it in JupyterLab
    return None


def pytest_configure(config):
    if hasattr(config, "workerinput") or not _runs_notebooks(config):
        return  # an xdist worker (the main process did it), or no notebook in this run
    from eelib.course.cli import prepare_models

    prepare_models(progress=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    cell = getattr(item, "cell", None)
    if cell is None or outcome.excinfo is not None:
        return
    path = Path(str(item.fspath)).resolve()
    if path.parent != ROOT / "exercises" or "raises-exception" not in cell.get("metadata", {}).get("tags", []):
        return
    errors = [o for o in getattr(item, "test_outputs", []) if o.get("output_type") == "error"]
    if not any(e.get("ename") in EXPECTED_IN_EXERCISES for e in errors):
        got = ", ".join(e.get("ename", "?") for e in errors) or "no error"
        outcome.force_exception(AssertionError(
            f"{path.name} cell {item.cell_num}: a blank exercise must make this cell fail with one of "
            f"{EXPECTED_IN_EXERCISES}, but it gave {got}:\n{cell.source}"))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty eelib cache folder (models and data) for one test."""
    monkeypatch.setenv("EELIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EELIB_DATA", raising=False)
    return tmp_path / "cache"
