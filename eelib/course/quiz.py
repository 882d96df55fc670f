"""Concept checks: short multiple-choice questions with an immediate answer check.

In a notebook::

    from eelib.course.quiz import QUIZZES
    q = QUIZZES["04"][0]
    q                 # shows the question and its choices
    q.answer("b")     # prints right or wrong, and why

``q.widget()`` shows the same question as buttons (ipywidgets). Every question says why the
right choice is right, and why each wrong choice is tempting, so a wrong answer teaches too.

A reason that states a measured fact ("the chapter counts it: ...") is asserted against the
measurement, as the lectures' prose is: ``measured_in`` names the lecture whose code asserts it, in an
``assert`` whose message names the question (``quiz 07(b)``); ``tests/test_quiz.py`` checks that it does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: ``choices`` ``{letter: text}``, the ``right`` letter, a reason
    per choice (``why[letter]``) shown once that choice is picked, and ``measured_in``: the lecture
    (its chapter number) that asserts the measured facts the reasons state, or ``""`` if they state none."""

    text: str
    choices: dict[str, str]
    right: str
    why: dict[str, str]
    measured_in: str = ""

    def __post_init__(self) -> None:
        if self.right not in self.choices:
            raise ValueError(f"right={self.right!r} is not one of the choices {sorted(self.choices)}")
        if set(self.why) != set(self.choices):
            raise ValueError(f"why must give a reason for every choice {sorted(self.choices)}, got {sorted(self.why)}")

    def __repr__(self) -> str:
        lines = [self.text] + [f"  ({k}) {v}" for k, v in self.choices.items()]
        return "\n".join(lines + [f"answer with .answer({next(iter(self.choices))!r}) ..."])

    def feedback(self, choice: str) -> tuple[bool, str]:
        """``(right?, message)`` for ``choice`` (a letter, case-insensitive)."""
        key = str(choice).strip().lower().strip("()")
        if key not in self.choices:
            raise ValueError(f"choice={choice!r} is not one of {', '.join(self.choices)}")
        ok = key == self.right
        return ok, ("Right. " if ok else f"Not quite ({key}). ") + self.why[key]

    def answer(self, choice: str) -> bool:
        """Print the feedback for ``choice``; return whether it is right."""
        ok, message = self.feedback(choice)
        print(message)
        return ok

    def widget(self):
        """The question as buttons with the feedback below (needs ipywidgets)."""
        import ipywidgets as w

        out = w.Output()
        buttons = []
        for key, text in self.choices.items():
            button = w.Button(description=f"({key}) {text}"[:60], layout=w.Layout(width="auto"), tooltip=text)

            def pick(_, key=key):
                out.outputs = ()  # only the last answer's feedback
                out.append_stdout(self.feedback(key)[1] + "\n")
            button.on_click(pick)
            buttons.append(button)
        return w.VBox([w.HTML(f"<b>{self.text}</b>"), *buttons, out])


QUIZZES: dict[str, list[Question]] = {
    "01": [
        Question("A plain 56-layer network ends with a higher training loss than a plain 20-layer one. Why "
                 "is this not overfitting?",
                 {"a": "overfitting raises the test loss, not the training loss",
                  "b": "the 56-layer network has fewer parameters",
                  "c": "the data set is too small"},
                 "a", {"a": "A deeper network could copy the shallow one and add identity layers, so its training "
                       "loss should be no higher: the optimiser fails to find that solution (degradation).",
                       "b": "It has about three times as many (the chapter prints both).",
                       "c": "A small data set makes overfitting easier, which would lower the training loss."},
                 measured_in="01"),
        Question("What does a skip connection add to a block's output?",
                 {"a": "the block's input", "b": "the previous block's gradient", "c": "a learned bias"},
                 "a", {"a": "out = F(x) + x: the block learns a residual, and the gradient has a path around F.",
                       "b": "Gradients flow backwards through the sum; nothing adds them in the forward pass.",
                       "c": "Biases belong to layers; the skip adds x itself (or a 1x1 projection of it)."}),
    ],
    "02": [
        Question("Heads trained on a frozen backbone versus trained jointly with it: which is true?",
                 {"a": "frozen training leaves the final exit exactly as it was",
                  "b": "joint training can only lower the early exits' accuracy",
                  "c": "frozen training changes the backbone's weights a little"},
                 "a", {"a": "The backbone does not change, so the final exit's predictions are the original ones.",
                       "b": "Joint training shapes the backbone's features for the early heads too: early exits "
                            "usually gain.",
                       "c": "Frozen means no gradient step on the backbone at all."},
                 measured_in="02"),
        Question("Why can an early exit be more accurate than the final one on some inputs?",
                 {"a": "overthinking: later layers can change a right answer into a wrong one",
                  "b": "the early exit sees more pixels", "c": "it cannot"},
                 "a", {"a": "Chapter 4 measures it: some inputs are right at an early exit and wrong at the end.",
                       "b": "Every exit sees the same image; an early one has seen fewer layers of processing.",
                       "c": "It can and does, for a few inputs (overthinking)."},
                 measured_in="04"),
    ],
    "03": [
        Question("An input leaves at the third exit. Which FLOPs did it cost?",
                 {"a": "the backbone up to the third attach point plus the first three heads",
                  "b": "the third head only", "c": "the whole backbone"},
                 "a", {"a": "Every head on the way was evaluated (and said 'continue'): they are part of the cost.",
                       "b": "The backbone up to the exit had to run to produce the head's input.",
                       "c": "The blocks after its exit are skipped: that is the saving."}),
        Question("Why can measured time at batch size 1 save less than the FLOPs suggest?",
                 {"a": "each small operation has a fixed overhead that FLOPs do not count",
                  "b": "FLOPs are counted wrongly", "c": "batch size 1 uses more FLOPs per image"},
                 "a", {"a": "A head and a decision are a few tiny operations whose launch cost dominates.",
                       "b": "FlopCounterMode counts what runs; the FLOPs are right, time is just not only FLOPs.",
                       "c": "FLOPs per image do not depend on the batch size."}),
    ],
    "04": [
        Question("Raising a max-probability threshold at every exit does what?",
                 {"a": "fewer inputs leave early: accuracy up (usually), FLOPs up",
                  "b": "more inputs leave early", "c": "nothing changes at the final exit, so nothing changes"},
                 "a", {"a": "A higher bar is passed by fewer inputs, so more of them go deeper.",
                       "b": "That is what lowering it does.",
                       "c": "Where each input leaves changes, and so do cost and accuracy."}),
        Question("Why is the oracle not a policy you can deploy?",
                 {"a": "it needs the label to know which exit is right",
                  "b": "it is too slow", "c": "it uses a different network"},
                 "a", {"a": "It picks the earliest right exit, which only an input with its label reveals: a bound.",
                       "b": "Its cost is the lowest there is; the problem is the information it needs.",
                       "c": "It uses the same exits as every policy."}),
    ],
    "05": [
        Question("A rejection costs 0.1 and an error 1. Chow's rule rejects an input when...",
                 {"a": "its chance of being wrong is above 0.1", "b": "its confidence is below 0.5",
                  "c": "it reached the final exit"},
                 "a", {"a": "Rejecting costs 0.1; answering costs 1 x P(wrong): reject when P(wrong) > 0.1.",
                       "b": "0.5 would be right only if a rejection cost 0.5.",
                       "c": "Rejection can happen at any exit in the combined policy."}),
        Question("The guarantee 'selective risk <= alpha with probability >= 1 - delta' is about...",
                 {"a": "the true risk, over the draw of the calibration data",
                  "b": "the risk on every test split", "c": "each single input"},
                 "a", {"a": "A finite test split only estimates the true risk; it can exceed alpha by chance.",
                       "b": "Test splits are noisy: some will show a risk above alpha.",
                       "c": "It is a statement about rates over many inputs."}),
    ],
    "06": [
        Question("The logit lens applies which layers to an intermediate hidden state?",
                 {"a": "the model's own ln_f and lm_head", "b": "a newly trained head", "c": "the next block"},
                 "a", {"a": "No training: it reads the residual stream with the final layer's read-out.",
                       "b": "That is a trained exit head (the chapter compares both).",
                       "c": "Running the next block is just the model going on."}),
        Question("Why can an exit head cost more than a transformer layer in the course model?",
                 {"a": "its vocabulary projection (width x 4,096) is large next to a small layer",
                  "b": "heads run attention", "c": "heads use more context"},
                 "a", {"a": "The chapter counts it: one head costs about two layers of this small model.",
                       "b": "A head has no attention; it is a normalisation and a projection.",
                       "c": "A head reads one hidden state per token."},
                 measured_in="06"),
    ],
    "07": [
        Question("With a lazily filled key/value cache, why may a token's skipped layers still be computed?",
                 {"a": "a later token that goes deeper needs their keys and values",
                  "b": "the cache is copied", "c": "the threshold was too low"},
                 "a", {"a": "They run later, batched with the next deeper token: exact, but the FLOPs return.",
                       "b": "Copying (CALM) is the other choice, which never runs them.",
                       "c": "The threshold decides where a token leaves, not whether its debt is paid."}),
        Question("Which kind of token tends to leave earliest?",
                 {"a": "newlines and punctuation", "b": "names in capitals", "c": "the start of a new word"},
                 "a", {"a": "They are the most predictable: in the chapter's table by kind they leave at the lowest "
                            "mean layers.",
                       "b": "Not in the chapter's measurement: names in capitals (mostly speakers' names after a "
                            "blank line) leave at about the mean layer of frequent words and word continuations, "
                            "later than newlines and punctuation.",
                       "c": "The start of a new word leaves latest of all kinds: which word comes next is the "
                            "real question."},
                 measured_in="07"),
    ],
    "08": [
        Question("Why does self-speculative decoding give exactly the full model's greedy tokens?",
                 {"a": "every drafted token is checked by the full model, and the first disagreement is replaced",
                  "b": "the draft exit is always right", "c": "it uses sampling"},
                 "a", {"a": "Accept the longest agreeing prefix, then take the full model's token: greedy output.",
                       "b": "Drafts are often wrong; verification catches them.",
                       "c": "It is greedy; sampling would need a different acceptance rule."}),
        Question("Why does verifying k drafted tokens cost about as much as one token?",
                 {"a": "one block call on k rows costs little more than on one row at small sizes",
                  "b": "verification skips layers", "c": "the drafts are cached"},
                 "a", {"a": "At batch size 1 a block call is overhead-bound; more rows ride along almost free.",
                       "b": "Verification runs the upper layers for every drafted token.",
                       "c": "The drafts' lower layers are reused, but the upper layers must still run."}),
    ],
    "09": [
        Question("What does the consistency guarantee promise for a threshold chosen on a calibration text?",
                 {"a": "with probability at least 1 - delta over the calibration draw, new tokens like the calibration "
                       "tokens disagree with the full model at most epsilon of the time",
                  "b": "every generated sequence equals the full model's",
                  "c": "the disagreement on the calibration text is at most epsilon"},
                 "a", {"a": "Per token, on text exchangeable with the calibration text; the 100 random splits check it.",
                       "b": "One changed token changes what follows: the guarantee is per token, not per sequence.",
                       "c": "That is the naive threshold: it breaks the promise on new text in many splits."}),
        Question("Why does the abstaining model count errors against the true text, not the full model?",
                 {"a": "abstaining is about being right; agreeing with the full model is a question of consistency",
                  "b": "the full model is always right", "c": "it makes the risk lower"},
                 "a", {"a": "Two questions: may a token leave early (consistency), should the model answer (correctness).",
                       "b": "The course model predicts the true next token only about a quarter of the time.",
                       "c": "It makes the risk higher: the full model is often wrong."}),
    ],
}
