"""nbgrader for the course: the solutions' cell metadata, and a course folder set up from ``solutions/``.

``solutions/`` stays the single source. :func:`annotate` writes nbgrader's cell metadata into a
solution notebook (``python -m eelib.course exercises`` runs it; ``--check`` fails when it is
missing or stale), so that ``nbgrader generate_assignment`` releases the same student notebooks
as ``exercises/``:

* an exercise cell (``### BEGIN SOLUTION`` ... ``### END SOLUTION``) is a solution cell with
  ``grade_id`` the name of the function it defines (``residual_forward``);
* the check cell after it (tag ``check``) is a locked autograded test cell worth
  :data:`POINTS` point(s), ``grade_id`` ``check_`` + that name;
* every other cell is read-only (``locked``), ``grade_id`` ``locked_`` + its position;
* the reference answer to a closing discussion question (a markdown cell starting ``**Reference
  answer.**``) is a manually graded answer cell worth :data:`DISCUSSION_POINTS` point(s),
  ``grade_id`` ``discussion`` (``discussion_2``, ... when there are several): the reference answer
  is its solution, which the release replaces with nbgrader's ``YOUR ANSWER HERE`` (as
  ``exercises/`` does), the student writes an answer there, and the instructor grades it by hand
  (``nbgrader formgrader``). No mark scheme regions: the solutions are valid nbgrader source under
  nbgrader's default configuration, as they are;
* the check cells, and exercise cells whose stub raises at the top level, are tagged
  ``raises-exception`` as in ``exercises/``, so that JupyterLab's Run All carries on past them.

``python -m eelib.course nbgrader DIR`` (:func:`setup_course`) writes an nbgrader course folder:
``nbgrader_config.py`` and ``source/NN_name/NN_name.ipynb``, one assignment per chapter.
"""

from __future__ import annotations

import copy
import re
import shutil
import tempfile
from pathlib import Path

import nbformat

from eelib.course.exercises import (BEGIN, BEGIN_MARK_SCHEME, CHECK_TAG, CODE_STUB, END_MARK_SCHEME,  # noqa: F401
                                    RAISES_TAG, TEXT_STUB, blank_solution, is_reference_answer, make_exercise)

POINTS = 1  # each check cell is worth one point
DISCUSSION_POINTS = 1  # each closing discussion answer, graded by hand
SCHEMA_VERSION = 3  # nbgrader's cell metadata schema

NBGRADER_CONFIG = '''\
"""nbgrader configuration of the eelib course, written by `python -m eelib.course nbgrader`."""

c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "eelib"
# Nothing else differs from nbgrader's defaults: the solutions are valid nbgrader source as they are.
# The course's cells train or evaluate models: allow more than nbgrader's default 30 s per cell.
c.Execute.timeout = 600
'''


def _metadata(grade_id: str, *, solution: bool = False, grade: bool = False, locked: bool = False,
              points: int = POINTS) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": SCHEMA_VERSION,
            "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def _function_name(source: str) -> str | None:
    match = re.search(r"^\s*def\s+(\w+)\s*\(", source, re.M)
    return match.group(1) if match else None


def unwrap_reference_answer(source: str) -> str:
    """A reference answer's markdown without the mark scheme delimiters that earlier versions put around it."""
    body = source.strip()
    if body.startswith(BEGIN_MARK_SCHEME):
        body = body[len(BEGIN_MARK_SCHEME):]
    if body.endswith(END_MARK_SCHEME):
        body = body[: -len(END_MARK_SCHEME)]
    return body.strip()


def annotate(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """A copy of a solution notebook with nbgrader's cell metadata (see the module docstring).

    Idempotent: annotating an annotated notebook changes nothing.

    Raises:
        ValueError: exercise and check cells that do not pair up (``eelib.course.exercises.make_exercise``),
            or two exercises defining the same function.
    """
    make_exercise(solution, name)  # validates the pairing of exercise and check cells
    nb = copy.deepcopy(solution)
    ids: set[str] = set()
    exercise = None
    n_answers = sum(is_reference_answer(c) for c in nb.cells)
    answers = 0
    for index, cell in enumerate(nb.cells):
        meta = cell.setdefault("metadata", {})
        tags = list(meta.get("tags", []))
        meta.pop("nbgrader", None)
        if cell.cell_type == "markdown" and is_reference_answer(cell):
            answers += 1
            cell.source = unwrap_reference_answer(cell.source)
            meta["nbgrader"] = _metadata("discussion" if n_answers == 1 else f"discussion_{answers}",
                                         solution=True, grade=True, points=DISCUSSION_POINTS)
        elif cell.cell_type == "code" and BEGIN in cell.source:
            exercise = _function_name(cell.source) or f"exercise_{index:02d}"
            meta["nbgrader"] = _metadata(exercise, solution=True)
            if blank_solution(cell.source)[1] and RAISES_TAG not in tags:
                tags.append(RAISES_TAG)
        elif cell.cell_type == "code" and CHECK_TAG in tags:
            meta["nbgrader"] = _metadata(f"check_{exercise}", grade=True, locked=True)
            if RAISES_TAG not in tags:
                tags.append(RAISES_TAG)
        else:
            meta["nbgrader"] = _metadata(f"locked_{index:02d}", locked=True)
        grade_id = meta["nbgrader"]["grade_id"]
        if grade_id in ids:
            raise ValueError(f"{name}: two cells would have the grade_id {grade_id!r}: give each exercise "
                             "its own function name")
        ids.add(grade_id)
        if tags:
            meta["tags"] = tags
    return nb


def setup_course(root: Path, target: Path, *, force: bool = False, names: list[str] | None = None) -> list[str]:
    """Write an nbgrader course folder at ``target`` from ``root/solutions``: one assignment per chapter.

    The folder is built next to ``target`` and renamed into place, so an error leaves nothing
    half-written.

    Args:
        root: the course folder (holding ``solutions/``).
        target: the nbgrader course folder to create.
        force: replace ``target`` if it exists.
        names: only these solution notebooks (file names; default: all).

    Returns:
        The assignment names (``01_residual_networks``, ...).

    Raises:
        FileExistsError: ``target`` exists and ``force`` is not set.
        FileNotFoundError: no solution notebooks (or one of ``names`` is missing).
    """
    target = Path(target).resolve()
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists: pass force=True (--force on the command line) to replace it")
    solutions = sorted((root / "solutions").glob("*.ipynb"))
    if names is not None:
        missing = sorted(set(names) - {p.name for p in solutions})
        if missing:
            raise FileNotFoundError(f"names has notebooks that are not in {root / 'solutions'}: {missing}")
        solutions = [p for p in solutions if p.name in names]
    if not solutions:
        raise FileNotFoundError(f"no notebooks in {root / 'solutions'}: run from the course's folder or pass --root")
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        assignments = []
        for path in solutions:
            nb = annotate(nbformat.read(path, as_version=4), path.name)
            (build / "source" / path.stem).mkdir(parents=True)
            nbformat.write(nb, build / "source" / path.stem / path.name)
            assignments.append(path.stem)
        (build / "nbgrader_config.py").write_text(NBGRADER_CONFIG, encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            target.rename(old / target.name)
            build.rename(target)
            shutil.rmtree(old)
        else:
            build.rename(target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return assignments
