"""Concept checks: every chapter has two or three questions, and each answer is checked at once."""

import pytest

from eelib.course.quiz import QUIZZES, Question


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
