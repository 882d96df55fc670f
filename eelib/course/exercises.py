"""Exercise notebooks from solution notebooks: the markers, nbgrader's stub, and ``make_exercise``.

A solution notebook (``solutions/``) marks each exercise's answer between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` (nbgrader's markers); :func:`make_exercise` writes the exercise notebook from it
(``python -m eelib.course exercises``, :mod:`eelib.course.cli`): each marked block becomes nbgrader's
stub (:data:`CODE_STUB`) at the same indentation, the reference answers (:func:`is_reference_answer`)
become the student's answer cell (:data:`TEXT_STUB`), and the cells that must raise on a blank exercise are tagged ``raises-exception``.
:mod:`eelib.course.grading` writes nbgrader's cell metadata from the same markers.
"""

from __future__ import annotations

import copy

import nbformat

BEGIN_MARK_SCHEME, END_MARK_SCHEME = "<!-- BEGIN MARK SCHEME -->", "<!-- END MARK SCHEME -->"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"  # nbgrader's ClearSolutions.code_stub
TEXT_STUB = "YOUR ANSWER HERE"  # nbgrader's ClearSolutions.text_stub: a markdown answer cell in the release
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK_TAG, RAISES_TAG = "check", "raises-exception"
GENERATED_NOTE = ("> *Exercise version, generated from `solutions/{name}` by `python -m eelib.course "
                  "exercises`: edit the solution, not this file. Replace each `raise NotImplementedError` "
                  "with your code, then run the check cell below it.*\n\n")


def blank_solution(source: str) -> tuple[str, bool]:
    """Replace each marked solution block in ``source`` with nbgrader's stub (:data:`CODE_STUB`).

    Returns:
        The new source, and whether a stub sits at the top level (the cell itself raises).

    Raises:
        ValueError: unbalanced or nested markers.
    """
    lines, out, top_level, i = source.split("\n"), [], False, 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped == END:
            raise ValueError(f"{END!r} without {BEGIN!r} on line {i + 1}")
        if stripped != BEGIN:
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() in (BEGIN, END)), None)
        if end is None or lines[end].strip() != END:
            raise ValueError(f"{BEGIN!r} on line {i + 1} has no matching {END!r}")
        out.extend(indent + line for line in CODE_STUB.split("\n"))
        top_level = top_level or indent == ""
        i = end + 1
    return "\n".join(out), top_level


REFERENCE = "**Reference answer.**"  # a markdown cell of a solution starting so is left out of its exercise


def is_reference_answer(cell: nbformat.NotebookNode) -> bool:
    """Whether a cell is a solution's reference answer (inside nbgrader's mark scheme delimiters or not)."""
    source = cell.source.lstrip()
    if source.startswith(BEGIN_MARK_SCHEME):
        source = source[len(BEGIN_MARK_SCHEME):].lstrip()
    return cell.cell_type == "markdown" and source.startswith(REFERENCE)


def make_exercise(solution: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The exercise notebook generated from a solution notebook (``name`` is its file name)."""
    nb = copy.deepcopy(solution)
    # the solutions' reference answers to the discussion questions stay out of the exercises: the
    # student answers in their place (nbgrader's release of a manually graded answer cell)
    for cell in nb.cells:
        if is_reference_answer(cell):
            cell.source = TEXT_STUB
    n_exercises, expecting_check = 0, False
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        cell.get("metadata", {}).pop("nbgrader", None)  # exercises/ is not an nbgrader release
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            if BEGIN in cell.source:
                if expecting_check:
                    raise ValueError(f"{name}: an exercise cell follows another without a '{CHECK_TAG}' cell between")
                cell.source, raises = blank_solution(cell.source)
                n_exercises += 1
                expecting_check = True
                if raises and RAISES_TAG not in tags:
                    tags.append(RAISES_TAG)
            elif CHECK_TAG in tags:
                if not expecting_check:
                    raise ValueError(f"{name}: a '{CHECK_TAG}' cell has no exercise cell before it")
                expecting_check = False
                if RAISES_TAG not in tags:
                    tags.append(RAISES_TAG)
        if tags:
            cell.setdefault("metadata", {})["tags"] = tags
    if expecting_check:
        raise ValueError(f"{name}: the last exercise has no '{CHECK_TAG}' cell after it")
    if n_exercises == 0:
        raise ValueError(f"{name}: no '{BEGIN}' markers: a solution notebook needs at least one exercise")
    first_md = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    note = GENERATED_NOTE.format(name=name)
    if first_md is None:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(note.strip()))
    else:
        first_md.source = note + first_md.source
    nb.nbformat_minor = 4  # no cell ids: they would change on every generation
    for cell in nb.cells:
        cell.pop("id", None)
    return nb
