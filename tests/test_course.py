"""The notebook pipeline: clean notebooks, exercises generated from solutions, honest checks."""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import eelib
from eelib.course import checks
from eelib.course import cli as course
from eelib.course import grading

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("notebooks", "solutions", "exercises")
ALL_NOTEBOOKS = sorted(p for f in FOLDERS for p in (ROOT / f).glob("*.ipynb"))


def test_there_are_notebooks_in_every_folder():
    for folder in FOLDERS:
        assert list((ROOT / folder).glob("[0-9][0-9]_*.ipynb")), folder
    names = {f: sorted(p.name for p in (ROOT / f).glob("*.ipynb")) for f in FOLDERS}
    assert names["solutions"] == names["exercises"]
    assert set(names["solutions"]) <= set(names["notebooks"])  # each chapter has a lecture


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_without_outputs_and_clean_metadata(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, f"extra notebook metadata: {set(nb.metadata)}"
    allowed = {"notebooks": {"tags", "slideshow"}, "solutions": {"tags", "nbgrader"}}.get(path.parent.name, {"tags"})
    for i, cell in enumerate(nb.cells):  # lectures: slides (eelib.course.slides); solutions: nbgrader's (eelib.course.grading)
        assert set(cell.get("metadata", {})) <= allowed, f"cell {i} has metadata {dict(cell.metadata)}"
        if "slideshow" in cell.metadata:
            assert set(cell.metadata.slideshow) == {"slide_type"}, f"cell {i} has slideshow {dict(cell.metadata.slideshow)}"
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i} has outputs: clear them"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_lecture_notebooks_define_no_helpers(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not re.search(r"^\s*(def|class)\s", cell.source, re.M), (
                f"{path.name} defines a helper; put it in eelib:\n{cell.source}")


@pytest.mark.parametrize("path", sorted(p for f in ("notebooks", "solutions") for p in (ROOT / f).glob("*.ipynb")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_code_cell_is_introduced_by_markdown(path):
    nb = nbformat.read(path, as_version=4)
    for prev, cell in zip(nb.cells, nb.cells[1:]):
        if cell.cell_type == "code":
            assert prev.cell_type == "markdown", f"{path.name}: say why before this cell:\n{cell.source}"
    assert nb.cells[0].cell_type == "markdown"


@pytest.mark.parametrize("path", sorted(p for f in ("notebooks", "solutions") for p in (ROOT / f).glob("*.ipynb")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_figures_are_shown_once(path):
    """A cell ending in ``plots.f(...)`` shows the figure twice (the inline backend and the returned value)
    unless the call ends with a semicolon."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.strip():
            last = re.split(r"\n(?=\S)", cell.source.rstrip())[-1]  # the last top-level statement
            assert not last.startswith("plots.") or last.endswith(";"), (
                f"{path.name}: end the figure call with ';' so that it is shown once:\n{last}")


def test_exercise_hook_fails_a_check_that_passes_on_a_blank_exercise(tmp_path):
    """The root conftest's hook: a tagged cell in exercises/ that does not raise is a failure."""
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text(encoding="utf-8"), encoding="utf-8")
    nb = _nb(("md", "# Demo", None),
             ("code", "def f():\n    raise NotImplementedError('Exercise: implement f')", None),
             ("code", "f()", ["check", "raises-exception"]),
             ("code", "print('a check that cannot fail')", ["check", "raises-exception"]))
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    (tmp_path / "exercises").mkdir()
    nbformat.write(nb, tmp_path / "exercises" / "00_demo.ipynb")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-o",
                             "addopts=", "--nbval-lax", "--nbval-current-env", "exercises"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "1 failed, 2 passed" in result.stdout, result.stdout[-3000:]
    assert "cell 2: a blank exercise must make this cell fail" in result.stdout


def test_exercises_are_up_to_date():
    stale = course.generate_exercises(ROOT, check=True)
    assert stale == [], f"out of date: {stale}; run python -m eelib.course exercises"
    result = subprocess.run([sys.executable, "-m", "eelib.course", "--root", str(ROOT), "exercises", "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_exercise_is_blank_and_checked(path):
    solution = nbformat.read(path, as_version=4)
    exercise = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    solved = [c for c in solution.cells if course.BEGIN in c.source]
    assert solved, "a solution notebook needs at least one exercise"
    blank = "\n".join(c.source for c in exercise.cells)
    assert course.BEGIN not in blank and course.END not in blank
    assert blank.count(course.CODE_STUB.split("\n")[-1]) == sum(c.source.count(course.BEGIN) for c in solved)
    for cell in solved:  # no line of a solution survives in the exercise
        for block in re.findall(rf"{course.BEGIN}\n(.*?){course.END}", cell.source, re.S):
            for line in block.strip().splitlines():
                if len(line.strip()) > 12:
                    assert line.strip() not in blank, f"solution line leaked into the exercise: {line.strip()}"
    check_cells = [c for c in exercise.cells if "check" in c.metadata.get("tags", [])]
    assert len(check_cells) == len(solved)
    assert all("raises-exception" in c.metadata["tags"] for c in check_cells)
    # the solutions carry the same tags (nbgrader's release keeps them); tests/test_grading.py runs the
    # autograded solution and asserts that no cell raises
    made = course.make_exercise(solution, path.name)
    assert [c.metadata.get("tags") for c in made.cells] == [c.metadata.get("tags") for c in exercise.cells]
    assert not any("nbgrader" in c.metadata for c in exercise.cells)


def test_blank_solution_keeps_indentation():
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\nprint(f)"
    out, top = course.blank_solution(src)
    assert out == "def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nprint(f)"
    assert top is False
    out, top = course.blank_solution("a = 1\n### BEGIN SOLUTION\nb = 2\n### END SOLUTION")
    assert out == "a = 1\n# YOUR CODE HERE\nraise NotImplementedError()" and top is True


@pytest.mark.parametrize("src, word", [("### BEGIN SOLUTION\nx = 1", "no matching"),
                                       ("x = 1\n### END SOLUTION", "without"),
                                       ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "no matching")])
def test_unbalanced_markers(src, word):
    with pytest.raises(ValueError, match=word):
        course.blank_solution(src)


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, src, tags in cells:
        cell = nbformat.v4.new_code_cell(src) if kind == "code" else nbformat.v4.new_markdown_cell(src)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


def test_make_exercise_tags_and_pairs():
    nb = _nb(("md", "# Title", None),
             ("code", "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION", None),
             ("code", "assert answer == 42", ["check"]))
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="x")]
    ex = course.make_exercise(nb, "00_demo.ipynb")
    assert ex.cells[0].source.startswith("> *Exercise version, generated from `solutions/00_demo.ipynb`")
    assert ex.cells[1].metadata["tags"] == ["raises-exception"] and ex.cells[1].outputs == []
    assert ex.cells[2].metadata["tags"] == ["check", "raises-exception"]
    assert nb.cells[2].metadata["tags"] == ["check"]  # the solution is not modified
    with pytest.raises(ValueError, match="no 'check' cell"):
        course.make_exercise(_nb(("code", "### BEGIN SOLUTION\na = 1\n### END SOLUTION", None)), "x.ipynb")
    with pytest.raises(ValueError, match="no exercise cell before"):
        course.make_exercise(_nb(("code", "assert True", ["check"])), "x.ipynb")
    with pytest.raises(ValueError, match="no '### BEGIN SOLUTION'"):
        course.make_exercise(_nb(("code", "a = 1", None)), "x.ipynb")


# --- the checks themselves: pass on the reference, fail with a helpful message on wrong answers ---

def _forward(block, x, *, skip=True, relu_last=True, add_x=False):
    out = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
    if skip and block.shortcut is not None:
        out = out + (x if add_x else block.shortcut(x))
    return F.relu(out) if relu_last else out


def test_check_residual_forward(capsys):
    checks.check_residual_forward(_forward)
    assert "Correct" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="called block"):
        checks.check_residual_forward(lambda block, x: block(x))
    with pytest.raises(AssertionError, match="skip connection is missing"):
        checks.check_residual_forward(lambda b, x: _forward(b, x, skip=False))
    with pytest.raises(AssertionError, match="final relu is missing"):
        checks.check_residual_forward(lambda b, x: _forward(b, x, relu_last=False))
    with pytest.raises(AssertionError, match="raised RuntimeError.*add block.shortcut"):
        checks.check_residual_forward(lambda b, x: _forward(b, x, add_x=True))
    with pytest.raises(AssertionError, match="relu between bn1 and conv2 is missing"):
        checks.check_residual_forward(lambda b, x: F.relu(b.bn2(b.conv2(b.bn1(b.conv1(x))))
                                                          + (b.shortcut(x) if b.shortcut is not None else 0)))
    with pytest.raises(AssertionError, match="after adding the shortcut"):
        checks.check_residual_forward(lambda b, x: F.relu(_forward(b, x, skip=False, relu_last=True))
                                      + (b.shortcut(x) if b.shortcut is not None else 0))
    with pytest.raises(AssertionError, match="differs from block"):
        checks.check_residual_forward(lambda b, x: x)
    with pytest.raises(AssertionError, match="output shape"):
        checks.check_residual_forward(lambda b, x: _forward(b, x)[..., :-1])
    with pytest.raises(NotImplementedError):
        checks.check_residual_forward(lambda b, x: (_ for _ in ()).throw(NotImplementedError("Exercise")))


def _norms_of(model, x, y, grads_of):
    names = list(eelib.gradient_norms(copy.deepcopy(model), x, y))
    params = dict(model.named_parameters())
    return {n: g.norm().item() for n, g in zip(names, grads_of([params[n] for n in names]))}


def _with_bn_weight(model, x, y):
    return {**eelib.gradient_norms(model, x, y), "stem.1.weight": 1.0}


def _no_train_mode(model, x, y):  # forgets model.train(): batch norm uses its running statistics
    return _norms_of(model, x, y, lambda weights: torch.autograd.grad(F.cross_entropy(model(x), y), weights))


def _accumulates(model, x, y):  # backward() into .grad without clearing it first
    model.train()
    F.cross_entropy(model(x), y).backward()
    return _norms_of(model, x, y, lambda weights: [w.grad for w in weights])


def _takes_a_step(model, x, y):
    norms = eelib.gradient_norms(model, x, y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    return norms


def _under_no_grad(model, x, y):
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y)
    loss.backward()


@pytest.mark.parametrize("answer, message", [
    (_with_bn_weight, "unexpected.*stem.1.weight"),
    (lambda m, x, y: eelib.gradient_norms(m, x, y, shortcuts=True), "unexpected.*shortcut"),
    (_no_train_mode, "train mode"),
    (_accumulates, "zero_grad"),
    (_takes_a_step, "must not update"),
    (_under_no_grad, "torch.no_grad"),
    (lambda m, x, y: [1.0], "dict"),
    (lambda m, x, y: dict(reversed(eelib.gradient_norms(m, x, y).items())), "order"),
])
def test_check_gradient_norms_explains_wrong_answers(answer, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_gradient_norms(answer)


def test_check_gradient_norms_accepts_the_reference(capsys):
    checks.check_gradient_norms(eelib.gradient_norms)
    assert "Correct" in capsys.readouterr().out


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", readme, re.S)
    test_lines = [line.strip() for b in blocks for line in b.splitlines() if "pytest" in line]
    assert len(test_lines) == 1, test_lines
    assert test_lines[0] in (ROOT / ".ci" / "run").read_text()


def test_course_run_writes_html_figures_and_times(tmp_path):
    # the first figure of the kernel comes from eelib.course.plots (its style context must not switch the
    # inline backend's interactive mode off: every later figure would then be missing)
    nb = _nb(("md", "# Demo", None),
             ("code", "from eelib.course import plots\nplots.plot_exit_histogram([0.5, 0.5], ['a', 'b'], title='t');", None),
             ("code", "plots.plot_exit_histogram([0.2, 0.8], ['a', 'b'], title='t');", None),
             ("code", "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4])\nplt.title('t')\nplt.show()", None))
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    src = tmp_path / "notebooks" / "99_demo.ipynb"
    src.parent.mkdir()
    nbformat.write(nb, src)
    result = subprocess.run([sys.executable, "-m", "eelib.course", "--root", str(tmp_path), "run",
                             "--out", str(tmp_path / "build")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    build = tmp_path / "build"
    assert (build / "99_demo.html").read_text().count("<html") == 1
    figures = sorted((build / "figures" / "99_demo").glob("*.png"))
    assert [f.name for f in figures] == ["figure-01.png", "figure-02.png", "figure-03.png"], result.stdout
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in figures)
    assert set(json.loads((build / "times.json").read_text())) == {str(src)}


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.stem)
def test_a_closing_question_has_a_reference_answer_only_in_the_solution(path):
    solution = nbformat.read(path, as_version=4)
    exercise = nbformat.read(ROOT / "exercises" / path.name, as_version=4)
    answers = [c for c in solution.cells if course.is_reference_answer(c)]
    questions = [c for c in solution.cells if c.cell_type == "markdown" and "?" in c.source.splitlines()[0]
                 and not course.is_reference_answer(c)]
    if questions and solution.cells.index(questions[-1]) > len(solution.cells) - 3:  # it ends with a question
        assert len(answers) == 1 and solution.cells[-1] is answers[0], "the closing question's reference answer"
    assert not any(course.REFERENCE in c.source for c in exercise.cells)
    made = course.make_exercise(solution, path.name)
    assert len(made.cells) == len(solution.cells)  # the answer's cell stays, for the student's answer
    stubs = [c for c in made.cells if c.source == grading.TEXT_STUB]
    assert len(stubs) == len(answers) and all(c.cell_type == "markdown" for c in stubs)
    assert [made.cells.index(c) for c in stubs] == [solution.cells.index(c) for c in answers]


@pytest.mark.parametrize("command", [["run"], ["exercises"], ["exercises", "--check"], ["nbgrader", "NBG"],
                                     ["slides", "--check"]])
def test_course_commands_without_the_course_folder_say_so_and_write_nothing(tmp_path, capsys, command):
    command = [str(tmp_path / "nbgrader") if c == "NBG" else c for c in command]
    missing = tmp_path / "nonexistent"
    with pytest.raises(SystemExit) as exit_:
        course.main(["--root", str(missing)] + command)
    assert exit_.value.code == 2 and "is not a folder" in capsys.readouterr().err
    assert not missing.exists()
    empty = tmp_path / "empty"  # a folder without notebooks/ or solutions/
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_:
        course.main(["--root", str(empty)] + command)
    folder = "notebooks" if command[0] in ("run", "slides") else "solutions"
    assert exit_.value.code == 2 and f"no notebooks in {empty / folder}" in capsys.readouterr().err
    assert list(tmp_path.rglob("*")) == [missing.parent / "empty"]  # no build/, no times.json, no nbgrader folder


def test_a_partial_run_keeps_the_other_notebooks_times(tmp_path, monkeypatch):
    import nbclient

    class Instant:  # executes nothing: this test is about times.json
        def __init__(self, nb, **kwargs):
            pass

        def execute(self):
            pass

    monkeypatch.setattr(nbclient, "NotebookClient", Instant)
    build = tmp_path / "build"
    paths = []
    for name in ("01_a", "02_b"):
        paths.append(tmp_path / "notebooks" / f"{name}.ipynb")
        paths[-1].parent.mkdir(exist_ok=True)
        nbformat.write(_nb(("md", f"# {name}", None)), paths[-1])
    course.run_notebooks(paths, build)
    first = json.loads((build / "times.json").read_text())
    assert set(first) == {str(p) for p in paths}
    (build / "times.json").write_text(json.dumps({**first, str(paths[0]): 99.0}))
    course.run_notebooks(paths[1:], build)  # only the second notebook
    again = json.loads((build / "times.json").read_text())
    assert set(again) == set(first) and again[str(paths[0])] == 99.0  # the first one's time is kept
    (build / "times.json").write_text("not json")
    course.run_notebooks(paths[:1], build)  # an unreadable file is replaced
    assert set(json.loads((build / "times.json").read_text())) == {str(paths[0])}
