"""The course's command line: generate the exercises, run the notebooks headless.

``python -m eelib.course exercises`` writes ``exercises/`` from ``solutions/``, the single
source: in every code cell, each block between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
(nbgrader's markers) becomes nbgrader's stub ``# YOUR CODE HERE`` / ``raise NotImplementedError()``
at the same indentation, each reference answer to a discussion question becomes nbgrader's
``YOUR ANSWER HERE`` (the cell where the student answers), and outputs and nbgrader's cell
metadata are dropped: the same notebook as nbgrader's release. Cells tagged ``check`` (the assertions after an
exercise) and exercise cells whose stub raises at the top level get the tag
``raises-exception``: nbval then expects their errors, and JupyterLab's "Run All" carries on
past them, so a blank exercise notebook still runs top to bottom. ``--check`` only compares and exits 1
when ``exercises/`` is out of date. The same command first writes nbgrader's cell metadata
into ``solutions/`` (``eelib.course.grading.annotate``; ``--check`` also fails when it is stale).

``python -m eelib.course nbgrader DIR`` sets up an nbgrader course folder from ``solutions/``
(``eelib.course.grading.setup_course``: one assignment per chapter); it refuses to replace an existing
folder unless given ``--force``.

``python -m eelib.course models`` trains every course model that is not in the cache yet
(``eelib.vision.zoo.RECIPES``), e.g. before a class, so that no notebook trains during the lecture.

``python -m eelib.course run`` executes every lecture notebook (``notebooks/``; add
``--solutions`` for ``solutions/`` too) on this machine, and writes into ``build/`` the executed
notebook, an HTML handout and every figure as a PNG, with each notebook's run time in
``build/times.json`` (merged with the times already there: a partial run keeps the others'). ``--slides``
also writes each notebook as reveal.js slides into ``build/slides/`` (``eelib.course.slides``: a notebook
without slide metadata gets one slide per cell, and this says so), with a copy of reveal.js beside them,
so they open offline.

``python -m eelib.course slides --annotate`` writes the lecture notebooks' slide metadata
(``eelib.course.slides``: its rules, computed from the cells' sources); ``--check`` only compares and
exits 1 when a lecture's metadata is out of date, e.g. after its text was edited.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path

import nbformat

from eelib._util.cache import atomic_path, save_json
from eelib.course.exercises import (BEGIN, CHECK_TAG, CODE_STUB, END, GENERATED_NOTE, RAISES_TAG,  # noqa: F401 (kept here too)
                                    REFERENCE, blank_solution, is_reference_answer, make_exercise)
from eelib.course.grading import annotate, setup_course


def _dumps(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def generate_exercises(root: Path, *, check: bool = False) -> list[Path]:
    """Write (or with ``check`` only compare) nbgrader's metadata in ``solutions/``, then ``exercises/``.

    Returns:
        The solution files whose nbgrader metadata was stale and the exercise files that were out
        of date (and, unless ``check``, were rewritten).
    """
    solutions = sorted((root / "solutions").glob("*.ipynb"))
    if not solutions:
        raise FileNotFoundError(f"no notebooks in {root / 'solutions'}: run from the course's folder or pass --root")
    stale = []
    wanted = set()
    for path in solutions:
        annotated = annotate(nbformat.read(path, as_version=4), path.name)
        if path.read_text(encoding="utf-8") != _dumps(annotated):
            stale.append(path)
            if not check:
                with atomic_path(path) as tmp:  # the single source: never left half-written
                    tmp.write_text(_dumps(annotated), encoding="utf-8")
        target = root / "exercises" / path.name
        wanted.add(target.name)
        text = _dumps(make_exercise(annotated, path.name))
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            stale.append(target)
            if not check:
                target.parent.mkdir(exist_ok=True)
                with atomic_path(target) as tmp:
                    tmp.write_text(text, encoding="utf-8")
    for extra in sorted((root / "exercises").glob("*.ipynb")):
        if extra.name not in wanted:
            stale.append(extra)
            if not check:
                extra.unlink()
    return stale


def run_notebooks(paths: list[Path], out_dir: Path, *, timeout: int = 900, slides: bool = False) -> dict[str, float]:
    """Execute notebooks; write executed copies, HTML and PNG figures; return seconds per notebook.

    With ``slides``, also write each executed notebook as reveal.js slides into ``out_dir / "slides"``.
    """
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    from eelib.course import slides as slides_

    out_dir.mkdir(parents=True, exist_ok=True)
    # Kernels inherit the environment: draw figures inline (a headless MPLBACKEND=Agg shows none).
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ.setdefault("EELIB_PROGRESS", "text")  # a widget bar would be saved frozen at 0% (eelib._util.progress)
    times: dict[str, float] = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        print(f"running {path} ...", flush=True)
        start = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        times[str(path)] = round(time.perf_counter() - start, 1)
        stem = f"{path.parent.name}-{path.stem}" if path.parent.name != "notebooks" else path.stem
        nbformat.write(nb, out_dir / f"{stem}.ipynb")
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out_dir / f"{stem}.html").write_text(html, encoding="utf-8")
        figures = out_dir / "figures" / stem
        count = 0
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if "image/png" in data:
                    count += 1
                    figures.mkdir(parents=True, exist_ok=True)
                    (figures / f"figure-{count:02d}.png").write_bytes(base64.b64decode(data["image/png"]))
        print(f"  done in {times[str(path)]:.1f} s: {out_dir / (stem + '.html')}, {count} figures", flush=True)
        if slides:
            written = slides_.export_slides(nb, out_dir / "slides" / f"{stem}.slides.html")
            if written.fallback:
                print(f"  {path.name} has no slide metadata: one slide per cell "
                      f"(to annotate a lecture: {slides_.ANNOTATE_COMMAND})", flush=True)
            print(f"  slides: {written.path} ({written.slides} slides)", flush=True)
    save_json(_merged_times(out_dir / "times.json", times), out_dir / "times.json")
    return times


def _merged_times(path: Path, times: dict[str, float]) -> dict[str, float]:
    """The run times already in ``path`` (a partial run keeps the other notebooks' times), updated with ``times``."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: start afresh
        earlier = {}
    if not isinstance(earlier, dict):
        earlier = {}
    return {**earlier, **times}


def prepare_models(*, progress: bool = True) -> dict[str, str]:
    """Load every course model (shipped, else cached, else trained now); return ``{name: what happened}``."""
    from eelib.vision import zoo

    done = {}
    for name in zoo.RECIPES:
        start = time.perf_counter()
        run = zoo.load_trained(name, progress=progress)
        if run.source == "shipped":
            done[name] = f"shipped with eelib ({zoo.SHIPPED_DIR / zoo.shipped_models()[name]['file']})"
        else:
            done[name] = ("found in the cache" if run.source == "cache"
                          else f"trained in {time.perf_counter() - start:.0f} s") + f" ({zoo.cache_path(name)})"
        print(f"course model {name}: {done[name]}", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eelib.course", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the course folder (default: here)")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("exercises", help="write nbgrader's metadata into solutions/, generate exercises/ from them")
    ex.add_argument("--check", action="store_true", help="only check that exercises/ is up to date")
    nbg = sub.add_parser("nbgrader", help="set up an nbgrader course folder from solutions/")
    nbg.add_argument("folder", type=Path, help="the nbgrader course folder to create")
    nbg.add_argument("--force", action="store_true", help="replace the folder if it exists")
    sub.add_parser("models", help="load every course model: shipped, cached, or trained now")
    run = sub.add_parser("run", help="execute the notebooks; write HTML and figures into build/")
    run.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: notebooks/*.ipynb)")
    run.add_argument("--solutions", action="store_true", help="run solutions/ too")
    run.add_argument("--out", type=Path, default=None, help="output folder (default: <root>/build)")
    run.add_argument("--slides", action="store_true", help="also write reveal.js slides into <out>/slides/")
    sl = sub.add_parser("slides", help="write or check the lecture notebooks' slide metadata")
    mode = sl.add_mutually_exclusive_group(required=True)
    mode.add_argument("--annotate", action="store_true", help="write the slide metadata of notebooks/*.ipynb")
    mode.add_argument("--check", action="store_true", help="only check that it is up to date")
    sl.add_argument("--split-headings", action="store_true",
                    help="with --annotate: first split markdown cells before their inner headings (changes the cells)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not root.is_dir():
        parser.error(f"--root {args.root} is not a folder: give the course's folder (the one with notebooks/ and "
                     f"solutions/), or run from it")
    folder = {"exercises": "solutions", "nbgrader": "solutions", "slides": "notebooks"}.get(args.command)
    if folder and not any((root / folder).glob("*.ipynb")):
        parser.error(f"no notebooks in {root / folder}: run from the course's folder or pass --root")
    if args.command == "exercises":
        stale = generate_exercises(root, check=args.check)
        if args.check:
            for path in stale:
                print(f"out of date: {path.relative_to(root)}")
            if stale:
                print("run: python -m eelib.course exercises")
            return 1 if stale else 0
        print(f"wrote {len(stale)} notebook(s): " + ", ".join(str(p.relative_to(root)) for p in stale)
              if stale else "solutions/ and exercises/ are up to date")
        return 0
    if args.command == "nbgrader":
        if args.folder.exists() and not args.force:
            parser.error(f"folder {args.folder} exists: pass --force to replace it")
        assignments = setup_course(root, args.folder, force=args.force)
        print(f"nbgrader course folder {args.folder}: {len(assignments)} assignments in source/ "
              f"({', '.join(assignments)}). Next, in that folder: nbgrader generate_assignment NAME")
        return 0
    if args.command == "models":
        prepare_models()
        return 0
    if args.command == "slides":
        from eelib.course.slides import ANNOTATE_COMMAND, annotate_notebooks

        lectures = sorted((root / "notebooks").glob("*.ipynb"))
        if args.split_headings and not args.annotate:
            parser.error("--split-headings goes with --annotate")
        stale = annotate_notebooks(lectures, check=args.check, split_headings=args.split_headings)
        if args.check:
            for path in stale:
                print(f"slide metadata out of date: {path.relative_to(root)}")
            if stale:
                print(f"run: {ANNOTATE_COMMAND}")
            return 1 if stale else 0
        print(f"annotated {len(stale)} lecture notebook(s)" if stale else "the lectures' slide metadata is up to date")
        return 0
    paths = args.notebooks or sorted((root / "notebooks").glob("*.ipynb"))
    if args.solutions:
        paths += sorted((root / "solutions").glob("*.ipynb"))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        parser.error(f"notebooks not found: {', '.join(map(str, missing))}")
    if not paths:
        parser.error(f"no notebooks in {root / 'notebooks'}: run from the course's folder or pass --root, "
                     f"or name the notebooks to run")
    times = run_notebooks([p.resolve() for p in paths], args.out or root / "build", slides=args.slides)
    print(f"all {len(times)} notebook(s) ran in {sum(times.values()):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
