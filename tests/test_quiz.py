"""Concept checks: every chapter has two or three questions, and each answer is checked at once."""

import json
import re
from pathlib import Path

import pytest

from eelib.course.quiz import QUIZZES, Question

ROOT = Path(__file__).resolve().parent.parent


def test_every_chapter_has_two_or_three_questions():
    assert sorted(QUIZZES) == [f"{n:02d}" for n in range(1, 10)]
    assert all(2 <= len(questions) <= 3 for questions in QUIZZES.values())


@pytest.mark.parametrize("chapter", sorted(QUIZZES))
def test_right_and_wrong_answers_get_their_reason(chapter, capsys):
    for q in QUIZZES[chapter]:
        for key in q.choices:
            ok = q.answer(key.upper())  # case does not matter
            printed = capsys.readouterr().out
            assert ok == (key == q.right)
            assert printed.startswith("Right." if ok else f"Not quite ({key}).") and q.why[key] in printed
        assert repr(q).startswith(q.text) and all(f"({k})" in repr(q) for k in q.choices)


def test_bad_questions_and_answers_are_refused():
    with pytest.raises(ValueError, match="right='z' is not one of the choices"):
        Question("?", {"a": "x", "b": "y"}, "z", {"a": "", "b": ""})
    with pytest.raises(ValueError, match="why must give a reason for every choice"):
        Question("?", {"a": "x", "b": "y"}, "a", {"a": ""})
    with pytest.raises(ValueError, match="choice='d' is not one of a, b, c"):
        QUIZZES["01"][0].answer("d")


def test_the_widget_shows_the_feedback_of_the_button_clicked():
    q = QUIZZES["04"][1]
    box = q.widget()
    buttons = box.children[1:-1]
    out = box.children[-1]
    assert len(buttons) == len(q.choices)
    wrong = next(k for k in q.choices if k != q.right)
    buttons[list(q.choices).index(wrong)].click()
    assert out.outputs[-1]["text"].startswith(f"Not quite ({wrong}).")
    buttons[list(q.choices).index(q.right)].click()
    assert len(out.outputs) == 1 and out.outputs[0]["text"].startswith("Right.")


def _lecture_asserts(chapter: str) -> list[str]:
    """Every ``assert`` statement (with its message, over continuation lines) in lecture ``chapter``'s code."""
    (path,) = (ROOT / "notebooks").glob(f"{chapter}_*.ipynb")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return [m[0] for m in re.finditer(r"^assert .*(?:\n[ \t]+.*)*", code, flags=re.M)]


@pytest.mark.parametrize("chapter", sorted(QUIZZES))
def test_a_measured_fact_in_an_answer_is_asserted_by_its_lecture(chapter):
    """A reason that states a measurement names the lecture that asserts it, and that lecture's assert names it."""
    for k, q in enumerate(QUIZZES[chapter]):
        if not q.measured_in:
            continue
        label = f"quiz {chapter}({'abc'[k]})"
        asserts = [a for a in _lecture_asserts(q.measured_in) if label in a]
        assert asserts, f"{label} says it is measured in lecture {q.measured_in}, but no assert there names {label!r}"


def test_the_token_kinds_question_states_what_chapter_7_measures():
    """07(b): the earliest kinds are the right answer; names are not called hard (the chapter measures them mid-table)."""
    q = QUIZZES["07"][1]
    assert q.choices[q.right] == "newlines and punctuation" and q.measured_in == "07"
    assert "hard to predict" not in q.why["b"]
