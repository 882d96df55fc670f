"""nbgrader, for real: the round trip with nbgrader's own apps on a temporary course folder, every chapter.

For each chapter, ``python -m eelib.course nbgrader``'s course folder goes through nbgrader's
``generate_assignment``, then ``autograde`` of three submissions: the solution (full marks), the
untouched release (0 on every check) and the solution with one plausible wrong answer planted
(it loses that check's points, no other); then ``nbgrader export`` writes the scores to a CSV.

These autogrades are also the suite's execution of ``solutions/`` and ``exercises/`` (neither is in
pytest's testpaths any more): the autograded solution must run with no error in any cell, and the
autograded release, which equals ``exercises/`` (tested here), must run every cell with errors
only in the cells tagged ``raises-exception``, each of them a ``NotImplementedError`` or an
``AssertionError`` (what nbval and the root conftest's hook asserted before). The planted
submission is the one extra run; it ends after its last check and keeps only its discussion answer
after it (a submission may drop read-only cells), which keeps it cheap. The chapters are graded in
two course folders by two processes at once, one kernel each. The closing discussion answer of each
chapter is a cell graded by hand: it counts in the maximum score, and waits for the instructor.

The same solutions are also released under nbgrader's **default** configuration (an instructor who
copies them into an existing course's ``source/``): ``generate_assignment`` must accept them and
release the same notebooks (its autograde differs only by nbgrader's default 30 s per cell).

Run alone: ``python -m pytest -n 0 tests/test_grading.py``; ``EELIB_GRADING_CHAPTERS=03,05`` grades
only those chapters (while developing).
"""

from __future__ import annotations

import copy
import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from eelib.course import cli as course

from eelib.course import grading

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb")
                  if not os.environ.get("EELIB_GRADING_CHAPTERS")
                  or p.stem[:2] in os.environ["EELIB_GRADING_CHAPTERS"].split(","))
# two course folders graded at once, balanced by the solutions' run times
GROUPS = ([c for c in CHAPTERS if c[:2] in ("01", "04", "06", "07")],
          [c for c in CHAPTERS if c[:2] not in ("01", "04", "06", "07")])
EXPECTED_ERRORS = ("NotImplementedError", "AssertionError")

# one plausible wrong answer per chapter: (the exercise's grade_id, text in its solution, the mistake)
PLANTS = {
    "01_residual_networks": ("residual_forward", "return F.relu(out)", "return out"),  # no final relu
    "02_exit_heads": ("accuracy_per_exit", ".float().mean().item()", ".float().sum().item()"),  # a count
    "03_cost_per_head": ("conv_flops", "return 2 * conv.out_channels", "return conv.out_channels"),  # MACs
    "04_exit_policies": ("entropy_measure", "return -(log_p.exp()", "return (log_p.exp()"),  # the sign
    "05_rejection": ("risk_coverage", "argsort(scores, descending=True)", "argsort(scores)"),  # least sure first
    "06_llm_early_exit": ("layer_predictions", "head(ln_f(h))", "head(h)"),  # the logit lens without ln_f
    "07_token_difficulty": ("threshold_for_agreement", "(scores >= t)", "(scores > t)"),  # off by one
    "08_self_speculative": ("accepted_tokens", "+ [verified[n]]", "+ []"),  # no bonus token
    "09_llm_rejection": ("consistency_threshold", "binomial_tail(k, n, epsilon)",
                         "binomial_tail(k, int((scores >= t).sum()), epsilon)"),  # the selective risk, not over all tokens
}
STUDENTS = ("solution", "blank", "planted")


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def submissions(release: nbformat.NotebookNode, source: nbformat.NotebookNode, assignment: str) -> dict:
    """What the three students hand in: the solution, the untouched release, one planted mistake."""
    answers = {_nbgrader(c)["grade_id"]: c.source for c in source.cells if _nbgrader(c).get("solution")}
    solved = copy.deepcopy(release)
    for cell in solved.cells:
        if _nbgrader(cell).get("solution"):
            cell.source = answers[_nbgrader(cell)["grade_id"]]
    planted = copy.deepcopy(solved)
    grade_id, right, wrong = PLANTS[assignment]
    (cell,) = [c for c in planted.cells if _nbgrader(c).get("grade_id") == grade_id]
    assert right in cell.source, f"{assignment}: the plant's text is not in {grade_id}'s solution"
    cell.source = cell.source.replace(right, wrong)
    last_check = max(i for i, c in enumerate(planted.cells) if _nbgrader(c).get("grade") and c.cell_type == "code")
    planted.cells = planted.cells[: last_check + 1] + [c for c in planted.cells[last_check + 1:]
                                                       if _nbgrader(c).get("grade")]  # the discussion answer
    return {"solution": solved, "blank": copy.deepcopy(release), "planted": planted}


def round_trip(folder: Path) -> None:
    """generate_assignment, then autograde every student's submission, for each assignment in ``folder``."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(folder)).load_config()
    config.CourseDirectory.root = str(folder)
    api = NbGraderAPI(config=config)
    for assignment in sorted(p.name for p in (folder / "source").iterdir()):
        result = api.generate_assignment(assignment)
        assert result["success"], result.get("error", "") + result.get("log", "")
        name = f"{assignment}.ipynb"
        release = nbformat.read(folder / "release" / assignment / name, as_version=4)
        source = nbformat.read(folder / "source" / assignment / name, as_version=4)
        for student, nb in submissions(release, source, assignment).items():
            path = folder / "submitted" / student / assignment / name
            path.parent.mkdir(parents=True)
            nbformat.write(nb, path)
            start = time.perf_counter()
            result = api.autograde(assignment, student)
            assert result["success"], result.get("error", "") + result.get("log", "")
            print(f"{assignment} {student}: autograded in {time.perf_counter() - start:.1f} s", flush=True)


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict[str, Path]:
    """{assignment: its course folder}, after the round trip and ``nbgrader export`` (grades.csv)."""
    base = tmp_path_factory.mktemp("nbgrader")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "EELIB_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    folders, runs = {}, []
    for i, group in enumerate(g for g in GROUPS if g):
        folder = base / f"course{i}"
        grading.setup_course(ROOT, folder, names=[f"{c}.ipynb" for c in group])
        folders.update({c: folder for c in group})
        log = open(base / f"course{i}.log", "w")  # noqa: SIM115 (closed below)
        runs.append((folder, log, subprocess.Popen([sys.executable, __file__, str(folder)], env=env,
                                                    stdout=log, stderr=subprocess.STDOUT)))
    for folder, log, run in runs:
        run.wait(timeout=1500)
        log.close()
        assert run.returncode == 0, (base / f"{folder.name}.log").read_text()[-5000:]
    exports = [subprocess.Popen([sys.executable, "-m", "nbgrader", "export", "--to", "grades.csv"], cwd=folder, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for folder, _, _ in runs]
    for export in exports:
        out, _ = export.communicate(timeout=300)
        assert export.returncode == 0, out
    return folders


def _scores(folder: Path) -> dict[tuple[str, str], dict[str, float]]:
    with open(folder / "grades.csv", newline="") as f:
        return {(row["assignment"], row["student_id"]): {k: float(row[k]) for k in ("raw_score", "score", "max_score")}
                for row in csv.DictReader(f)}


def _cell_scores(folder: Path, assignment: str, student: str) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{folder / 'gradebook.db'}") as gb:
        submission = gb.find_submission_notebook(assignment, assignment, student)
        return {g.name: g.score for g in submission.grades}


def _autograded(folder: Path, assignment: str, student: str) -> nbformat.NotebookNode:
    return nbformat.read(folder / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4)


def _errors(cell) -> list[str]:
    return [o.ename for o in cell.get("outputs", []) if o.output_type == "error"]


def _checks(assignment: str) -> list[str]:
    """The autograded check cells."""
    nb = nbformat.read(ROOT / "solutions" / f"{assignment}.ipynb", as_version=4)
    return [_nbgrader(c)["grade_id"] for c in nb.cells if _nbgrader(c).get("grade") and c.cell_type == "code"]


def _answers(assignment: str) -> list[str]:
    """The discussion answers, graded by hand."""
    nb = nbformat.read(ROOT / "solutions" / f"{assignment}.ipynb", as_version=4)
    return [_nbgrader(c)["grade_id"] for c in nb.cells if _nbgrader(c).get("grade") and c.cell_type == "markdown"]


def _max_score(assignment: str) -> int:
    return grading.POINTS * len(_checks(assignment)) + grading.DISCUSSION_POINTS * len(_answers(assignment))


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_the_release_is_the_exercise_notebook(graded, assignment):
    """nbgrader's release and ``exercises/`` agree on every cell, stubs and tags included."""
    release = nbformat.read(graded[assignment] / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    exercise = nbformat.read(ROOT / "exercises" / f"{assignment}.ipynb", as_version=4)
    note = course.GENERATED_NOTE.format(name=f"{assignment}.ipynb")
    assert exercise.cells[0].source.startswith(note)
    exercise.cells[0].source = exercise.cells[0].source[len(note):]
    # the reference answer's cell says YOUR ANSWER HERE in both, for the student's own answer
    assert [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in release.cells] == [
        (c.cell_type, c.source, c.metadata.get("tags", [])) for c in exercise.cells]
    answers = [c for c in release.cells if _nbgrader(c).get("grade") and c.cell_type == "markdown"]
    assert [c.source for c in answers] == [grading.TEXT_STUB] * len(_answers(assignment))
    assert course.BEGIN not in "".join(c.source for c in release.cells)
    assert "Reference answer" not in "".join(c.source for c in release.cells)


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_the_solution_scores_full_marks_and_runs_without_error(graded, assignment):
    folder = graded[assignment]
    total = grading.POINTS * len(_checks(assignment))  # the discussion answer waits for the instructor
    assert _scores(folder)[assignment, "solution"] == {"raw_score": total, "score": total,
                                                        "max_score": _max_score(assignment)}
    assert _cell_scores(folder, assignment, "solution") == {**{c: grading.POINTS for c in _checks(assignment)},
                                                            **{a: 0 for a in _answers(assignment)}}
    nb = _autograded(folder, assignment, "solution")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.execution_count is not None, f"cell {i} did not run"
            assert not _errors(cell), f"{assignment} cell {i} raised {_errors(cell)}:\n{cell.source}"


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_the_blank_release_scores_zero_and_fails_only_its_tagged_cells(graded, assignment):
    folder = graded[assignment]
    assert _scores(folder)[assignment, "blank"] == {"raw_score": 0, "score": 0, "max_score": _max_score(assignment)}
    assert _cell_scores(folder, assignment, "blank") == {c: 0 for c in _checks(assignment) + _answers(assignment)}
    nb = _autograded(folder, assignment, "blank")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None, f"cell {i} did not run: Run All must reach the end"
        if course.RAISES_TAG in cell.metadata.get("tags", []):
            assert set(_errors(cell)) & set(EXPECTED_ERRORS), (
                f"{assignment} cell {i}: a blank exercise must make this cell fail with one of "
                f"{EXPECTED_ERRORS}, but it gave {_errors(cell) or 'no error'}:\n{cell.source}")
        else:
            assert not _errors(cell), f"{assignment} cell {i} raised {_errors(cell)}:\n{cell.source}"


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_a_planted_wrong_answer_loses_exactly_its_checks_points(graded, assignment):
    folder = graded[assignment]
    total = grading.POINTS * len(_checks(assignment))
    wrong = f"check_{PLANTS[assignment][0]}"
    assert _scores(folder)[assignment, "planted"] == {"raw_score": total - grading.POINTS,
                                                      "score": total - grading.POINTS, "max_score": _max_score(assignment)}
    assert _cell_scores(folder, assignment, "planted") == {**{c: 0 if c == wrong else grading.POINTS
                                                              for c in _checks(assignment)},
                                                           **{a: 0 for a in _answers(assignment)}}
    (cell,) = [c for c in _autograded(folder, assignment, "planted").cells if _nbgrader(c).get("grade_id") == wrong]
    assert _errors(cell) == ["AssertionError"], "the check explains the mistake with an AssertionError"


@pytest.mark.parametrize("assignment", CHAPTERS)
def test_the_discussion_answer_is_graded_by_hand(graded, assignment):
    """The instructor grades the student's answer in formgrader: the cell waits for a manual score."""
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{graded[assignment] / 'gradebook.db'}") as gb:
        submission = gb.find_submission_notebook(assignment, assignment, "solution")
        manual = {g.name: (g.max_score, g.needs_manual_grade, g.cell.cell_type) for g in submission.grades
                  if g.name in _answers(assignment)}
    assert manual == {a: (grading.DISCUSSION_POINTS, True, "markdown") for a in _answers(assignment)}
    nb = _autograded(graded[assignment], assignment, "solution")
    answers = [c.source for c in nb.cells if _nbgrader(c).get("grade_id") in _answers(assignment)]
    assert len(answers) == len(_answers(assignment))
    assert all(a.startswith(course.REFERENCE) for a in answers)  # the student's answer reaches the instructor


def test_the_solutions_are_valid_source_under_nbgraders_default_configuration(tmp_path):
    """An instructor copies the solutions into an existing nbgrader course (default configuration):
    ``generate_assignment`` accepts every chapter and releases what the course's own folder releases."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config
    from traitlets.config.loader import PyFileConfigLoader

    releases = {}
    for folder in ("default", "course"):
        grading.setup_course(ROOT, tmp_path / folder, names=[f"{c}.ipynb" for c in CHAPTERS])
        if folder == "default":  # nbgrader's defaults, nothing set
            (tmp_path / folder / "nbgrader_config.py").write_text("c = get_config()  # noqa: F821\n")
        config = PyFileConfigLoader("nbgrader_config.py", path=str(tmp_path / folder)).load_config()
        config.CourseDirectory.root = str(tmp_path / folder)
        if folder == "default":
            assert config == Config({"CourseDirectory": {"root": str(tmp_path / folder)}})
        api = NbGraderAPI(config=config)
        for assignment in CHAPTERS:
            result = api.generate_assignment(assignment)
            assert result["success"], f"{folder}: {assignment}: " + result.get("error", "") + result.get("log", "")
            release = nbformat.read(tmp_path / folder / "release" / assignment / f"{assignment}.ipynb", as_version=4)
            releases[folder, assignment] = [(c.cell_type, c.source) for c in release.cells]
    for assignment in CHAPTERS:
        assert releases["default", assignment] == releases["course", assignment]
    assert "MARK SCHEME" not in (ROOT / "solutions" / f"{CHAPTERS[-1]}.ipynb").read_text()


# --- the metadata and the set-up command (no notebook runs) ---

@pytest.mark.parametrize("assignment", CHAPTERS)
def test_the_solutions_metadata_is_nbgraders_own_and_stable(assignment):
    from nbgrader.nbgraderformat import MetadataValidator

    solution = nbformat.read(ROOT / "solutions" / f"{assignment}.ipynb", as_version=4)
    assert grading.annotate(solution, f"{assignment}.ipynb") == solution  # annotated, and idempotent
    validator = MetadataValidator()
    validator.validate_nb(solution)
    for cell in solution.cells:
        if "nbgrader" in cell.metadata:
            assert validator.upgrade_cell_metadata(copy.deepcopy(cell)) == cell
    kinds = [(_nbgrader(c).get("solution"), _nbgrader(c).get("grade"), _nbgrader(c).get("locked"))
             for c in solution.cells if course.BEGIN in c.source or "check" in c.metadata.get("tags", [])]
    assert kinds == [(True, False, False), (False, True, True)] * (len(kinds) // 2)
    assert all(_nbgrader(c).get("locked") for c in solution.cells if c.cell_type == "code"
               and not _nbgrader(c).get("solution"))


def test_exercises_check_fails_when_the_solutions_metadata_is_stale(tmp_path):
    (tmp_path / "solutions").mkdir()
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder, dirs_exist_ok=True)
    assert course.generate_exercises(tmp_path, check=True) == []
    path = tmp_path / "solutions" / "01_residual_networks.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
    nbformat.write(nb, path)
    assert course.generate_exercises(tmp_path, check=True) == [path]
    assert course.generate_exercises(tmp_path) == [path]  # re-applied
    assert course.generate_exercises(tmp_path, check=True) == []


def test_set_up_refuses_an_existing_folder_unless_forced(tmp_path, capsys):
    target = tmp_path / "course"
    args = ["--root", str(ROOT), "nbgrader", str(target)]
    assert course.main(args) == 0
    assert sorted(p.name for p in (target / "source").iterdir()) == sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))
    assert "nbgrader generate_assignment" in capsys.readouterr().out
    (target / "gradebook.db").write_text("an instructor's grades")
    with pytest.raises(SystemExit) as refused:
        course.main(args)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "--force" in err and str(target) in err
    assert (target / "gradebook.db").read_text() == "an instructor's grades"
    with pytest.raises(FileExistsError, match="force"):
        grading.setup_course(ROOT, target)
    grading.setup_course(ROOT, target, force=True, names=["01_residual_networks.ipynb"])
    assert [p.name for p in tmp_path.iterdir()] == ["course"]  # no temporary folder left behind
    assert sorted(p.name for p in target.iterdir()) == ["nbgrader_config.py", "source"]


def test_set_up_writes_nothing_when_a_solution_is_broken(tmp_path):
    root = tmp_path / "root"
    (root / "solutions").mkdir(parents=True)
    good = nbformat.read(ROOT / "solutions" / "01_residual_networks.ipynb", as_version=4)
    nbformat.write(good, root / "solutions" / "01_a.ipynb")
    good.cells = [c for c in good.cells if "check" not in c.metadata.get("tags", [])]
    nbformat.write(good, root / "solutions" / "02_b.ipynb")  # exercises without checks
    with pytest.raises(ValueError, match="02_b.ipynb"):
        grading.setup_course(root, tmp_path / "course")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


if __name__ == "__main__":  # the fixture's worker: python tests/test_grading.py COURSE_FOLDER
    round_trip(Path(sys.argv[1]))
