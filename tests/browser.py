"""Drive the course in JupyterLab in a real browser (headless Chromium through Playwright).

:class:`JupyterLab` starts ``jupyter lab`` on a free port, with a random token, on a temporary
copy of the course folder (the repository is never written to). :func:`run_notebooks` opens the
notebooks in two browser tabs at a time (one kernel each, one thread each), presses Run All in
each, waits until every cell has run, saves the notebook from the browser and reads the saved
file back: the saved ``.ipynb`` is the oracle for what ran and what it showed, the DOM is checked
against it (the same number of figures, each one decoded; the same number of tracebacks). A
notebook may ask for an ``interact`` step, run on the live page after Run All (moving a slider,
typing a prompt). One screenshot per notebook is written for the instructor.

:func:`unavailable` says why the browser tests cannot run here (turned off with
``EELIB_BROWSER_TESTS=0``, no Playwright, no Chromium), or ``None``; the root ``conftest.py`` asks it too, to decide whether the lectures run here or under
nbval. ``EELIB_CHROMIUM`` names another browser executable; ``EELIB_BROWSER_DEBUG=1`` logs every
change of a notebook's progress (cells run, kernel status).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
COURSE_FOLDERS = ("notebooks", "exercises")  # what the notebooks open; eelib comes from the environment
SETTINGS = {  # JupyterLab user settings for the run: quiet, offline, and every cell in the DOM
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "contentVisibility"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin.jupyterlab-settings": {"enabled": False},
}


def chromium_path() -> str | None:
    """The Chromium to drive: ``$EELIB_CHROMIUM``, else the first of ``CHROMIUM_CANDIDATES`` on the PATH."""
    if os.environ.get("EELIB_CHROMIUM"):
        return shutil.which(os.environ["EELIB_CHROMIUM"])
    return next((p for p in map(shutil.which, CHROMIUM_CANDIDATES) if p), None)


SWITCH = "EELIB_BROWSER_TESTS"  # 0 turns the browser tests off (the lectures then run under nbval); 1 or unset: on


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None when they can.

    They run by default where Playwright and a Chromium can be had; ``EELIB_BROWSER_TESTS=0`` turns
    them off (a quicker run: the lectures then run under nbval). Another value is reported, not run.
    """
    switch = os.environ.get(SWITCH) or "1"  # unset or empty: on, as .ci/run reads it
    if switch not in ("0", "1"):
        return f"{SWITCH}={switch!r} is not 0 (off) or 1 (on): set one of them; not run"
    if switch == "0":
        return f"turned off with {SWITCH}=0 (the lectures run under nbval instead)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return ("no Chromium found (apt-get install --no-install-recommends chromium, "
                "or set EELIB_CHROMIUM to a Chromium or Chrome executable)")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """``jupyter lab`` on a copy of the course in ``workdir``; a context manager that stops it."""

    def __init__(self, course: Path, workdir: Path, *, threads: int = 1):
        self.root = workdir / "course"
        for name in COURSE_FOLDERS:
            shutil.copytree(course / name, self.root / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        settings = workdir / "settings"
        for name, value in SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(value))
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ,
                   OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),  # each kernel computes on `threads`
                   MPLBACKEND="module://matplotlib_inline.backend_inline",  # figures inline, not Agg
                   JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(workdir / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(workdir / "runtime"), JUPYTER_CONFIG_DIR=str(workdir / "config"),
                   # the kernels import this checkout's eelib, whatever is installed
                   PYTHONPATH=os.pathsep.join(filter(None, [str(course), os.environ.get("PYTHONPATH")])))
        env.pop("PYTEST_XDIST_WORKER", None)
        self.log_path = workdir / "jupyter.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
             "--ServerApp.port_retries=0", "--allow-root", "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"jupyter lab did not answer on {self.url} within {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def workspace_url(self, name: str) -> str:
        return f"{self.url}/lab/workspaces/{name}?token={self.token}&reset"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # jupyter shuts its kernels down on SIGTERM
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> "JupyterLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- JavaScript run in the page (JupyterLab exposes its application as window.jupyterapp) -------

_OPEN_AND_RUN_ALL = """async (path) => {
  const app = window.jupyterapp;
  const nb = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await nb.context.ready;
  await nb.sessionContext.ready;
  app.shell.activateById(nb.id);
  await nb.revealed;
  window.__nb = nb;
  window.__runAll = null;
  // Run All sends every cell to the kernel at once and resolves at the first error, even in a
  // cell tagged raises-exception, while the kernel goes on with the cells after it: an empty
  // request queued behind them answers once the kernel has worked through all of them.
  app.commands.execute('notebook:run-all-cells')
    .then(() => nb.sessionContext.session.kernel.requestExecute(
      {code: '', silent: true, store_history: false, stop_on_error: false}).done)
    .then(() => { window.__runAll = 'done'; }, (e) => { window.__runAll = 'failed: ' + e; });
}"""

_PROGRESS = """() => {
  const nb = window.__nb, cells = nb.content.model.cells;
  let code = 0, executed = 0, running = 0;
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type === 'code') {
      code++;
      if (c.executionCount !== null) executed++;
      if (c.executionState === 'running') running++;
    }
  }
  return {runAll: window.__runAll, status: nb.sessionContext.kernelDisplayStatus, code, executed, running};
}"""

# per cell of the live notebook: what the browser shows (figures outside widgets, decoded or not;
# tracebacks; widget views and widgets that failed to render)
_DOM = """() => {
  const nb = window.__nb;
  return nb.content.widgets.map((cell) => {
    const imgs = [...cell.node.querySelectorAll('.jp-OutputArea-output img')]
      .filter((img) => !img.closest('.jupyter-widgets'));
    const outputs = [...cell.node.querySelectorAll('.jp-OutputArea-output')].map((o) => o.textContent);
    return {
      type: cell.model.type,
      images: imgs.length,
      decoded: imgs.filter((img) => img.complete && img.naturalWidth > 0).length,
      tracebacks: outputs.filter((t) => t.includes('Traceback (most recent call last)')).length,
      widgets: cell.node.querySelectorAll('.jp-OutputArea-output .jupyter-widgets').length,
      widgetErrors: outputs.filter((t) => t.includes('Error displaying widget')).length,
    };
  });
}"""

_SAVE = "async () => { await window.__nb.context.save(); }"

_SCROLL_TO_FIRST_FIGURE = """async () => {
  const nb = window.__nb.content;
  const i = nb.widgets.findIndex((c) => c.node.querySelector('.jp-OutputArea-output img'));
  if (i >= 0) { await nb.scrollToItem(i, 'start'); }
}"""

_CLOSE = """async () => {
  const nb = window.__nb;
  window.__nb = null;
  await nb.sessionContext.shutdown();
  nb.dispose();
}"""

# marks the cell whose source contains `text` with data-eelib-cell="<text>"; returns its index
MARK_CELL = """(text) => {
  const cells = window.__nb.content.widgets;
  const i = cells.findIndex((c) => c.model.sharedModel.getSource().includes(text));
  if (i >= 0) { cells[i].node.setAttribute('data-eelib-cell', text); }
  return i;
}"""


@dataclass
class NotebookRun:
    """What one notebook did in the browser."""
    path: str  # relative to the course folder, e.g. "notebooks/04_exit_policies.ipynb"
    seconds: float = float("nan")  # from Run All to the last cell done
    saved: dict | None = None  # the notebook as the browser saved it (nbformat JSON)
    dom: list[dict] = field(default_factory=list)  # one entry per cell, from _DOM
    progress: dict = field(default_factory=dict)  # the last _PROGRESS seen
    screenshot: Path | None = None
    interaction: dict = field(default_factory=dict)  # what the notebook's `interact` step saw
    failure: str | None = None  # why the run did not finish, if it did not


@dataclass
class _Slot:
    page: object
    run: NotebookRun | None = None
    started: float = 0.0


def run_notebooks(lab: JupyterLab, paths: list[str], shots: Path, *,
                  interact: dict[str, Callable[[object], dict]] | None = None,
                  tabs: int = 2, timeout: float = 600, log: Callable[[str], None] = print) -> dict[str, NotebookRun]:
    """Run All of each notebook in ``paths`` (in this order), ``tabs`` notebooks at a time.

    Args:
        lab: the running JupyterLab.
        paths: notebooks relative to ``lab.root``; give the slowest first.
        shots: the folder for the screenshots (``<folder>-<stem>.png``).
        interact: per path, a function called with the live Playwright page after Run All
            (the notebook is ``window.__nb``); what it returns is kept as ``interaction``.
        timeout: seconds a notebook may take from Run All to its last cell.

    Returns:
        One :class:`NotebookRun` per path.
    """
    from playwright.sync_api import sync_playwright

    interact = interact or {}
    shots.mkdir(parents=True, exist_ok=True)
    queue, runs = list(paths), {p: NotebookRun(p) for p in paths}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            slots = []
            for k in range(min(tabs, len(paths))):
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(lab.workspace_url(f"eelib-tab{k}"))
                page.wait_for_function("() => window.jupyterapp !== undefined")
                page.evaluate("() => window.jupyterapp.restored.then(() => window.jupyterapp.shell.collapseLeft())")
                slots.append(_Slot(page))
            while queue or any(s.run for s in slots):
                for slot in slots:
                    if slot.run is None and queue:
                        slot.run = runs[queue.pop(0)]
                        slot.started = time.monotonic()
                        slot.page.evaluate(_OPEN_AND_RUN_ALL, slot.run.path)
                        log(f"browser: started {slot.run.path}")
                    elif slot.run is not None:
                        _poll(slot, lab, shots, interact, timeout, log)
                time.sleep(0.5)
        finally:
            browser.close()
    return runs


def _poll(slot: _Slot, lab: JupyterLab, shots: Path, interact: dict, timeout: float, log) -> None:
    run, page = slot.run, slot.page
    progress = page.evaluate(_PROGRESS)
    if progress != run.progress and os.environ.get("EELIB_BROWSER_DEBUG"):
        log(f"browser: {run.path} {progress}")
    run.progress = progress
    elapsed = time.monotonic() - slot.started
    finished = run.progress["runAll"] is not None and run.progress["status"] == "idle"
    if not finished and elapsed < timeout:
        return
    run.seconds = round(elapsed, 1)
    if not finished:
        run.failure = f"Run All did not finish within {timeout:.0f} s: {run.progress}"
    try:
        run.dom = page.evaluate(_DOM)
        if run.path in interact and not run.failure:
            run.interaction = interact[run.path](page)
        page.evaluate(_SAVE)
        run.saved = json.loads((lab.root / run.path).read_text())
        page.evaluate(_SCROLL_TO_FIRST_FIGURE)
        run.screenshot = shots / f"{Path(run.path).parent.name}-{Path(run.path).stem}.png"
        page.screenshot(path=str(run.screenshot))
    except Exception as err:  # noqa: BLE001 - keep it for the notebook's test, run the others
        run.failure = (run.failure or "") + f" after Run All: {type(err).__name__}: {err}"
    finally:
        page.evaluate(_CLOSE)
        log(f"browser: {run.path} {'FAILED ' + run.failure if run.failure else 'done'} in {run.seconds:.1f} s "
            f"({run.progress['executed']} of {run.progress['code']} code cells run)")
        slot.run = None
