"""Chapters 6-7 around the model: token kinds and coloured text, the LM figures, the prompt widget's
function, and the exercise checks (they accept the reference and explain the usual mistakes)."""

import re

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import eelib
from eelib.course import checks, plots
from eelib.lm.exits import course_exits, heldout_text, oracle_token_exits, threshold_for_agreement, token_exit_outputs
from eelib.lm.generate import token_exit_costs
from eelib.lm.tokens import TOKEN_KINDS, difficulty_by_kind, token_html, token_kind, token_kinds, token_strings


@pytest.fixture(scope="module")
def course():
    return eelib.load_lm("course", device="cpu")


@pytest.mark.parametrize("token, previous, kind", [
    ("\n", "thee", "newline"), ("\n\n", ",", "newline"), (",", "lord", "punctuation"), ("?!", "", "punctuation"),
    (" ROMEO", "\n", "name (capitals)"), ("IO", "LUCENT", "name (capitals)"), ("N", "GLOUCESTE", "name (capitals)"),
    ("io", " Lucent", "word continuation"), ("'s", " father", "word continuation"), (" the", " of", "frequent word"),
    ("Tell", "\n", "word start"), (" Verona", " in", "word start"), (" I", ",", "frequent word"),
])
def test_token_kinds(token, previous, kind):
    assert token_kind(token, previous) == kind


def test_token_kinds_of_a_text(course):
    ids = eelib.lm.model.encode(course, "ROMEO:\nI love thee, Lucentio.")
    strings = token_strings(course, ids)
    kinds = token_kinds(course, ids)
    assert "".join(strings) == "ROMEO:\nI love thee, Lucentio."
    assert set(kinds) <= set(TOKEN_KINDS) and len(kinds) == len(ids)
    assert kinds[strings.index(":")] == "punctuation" and kinds[strings.index("\n")] == "newline"
    assert kinds[strings.index("io")] == "word continuation"
    assert token_kinds(course, ids[1:], previous=int(ids[0]))[0] == kinds[1]


def test_difficulty_by_kind():
    rows = difficulty_by_kind(["newline", "word start", "newline", "word start", "punctuation"], [2, 8, 4, 8, 2])
    by = {r.kind: r for r in rows}
    assert [r.kind for r in rows] == ["newline", "punctuation", "word start"]  # in TOKEN_KINDS order, empty ones left out
    assert by["newline"].mean_layers == 3 and by["newline"].first_exit_share == 0.5 and by["word start"].count == 2
    with pytest.raises(ValueError, match="kinds has 1 entries but layers has 2"):
        difficulty_by_kind(["newline"], [1, 2])
    with pytest.raises(ValueError, match="no tokens"):
        difficulty_by_kind([], [])


def test_token_html():
    html = token_html(["ROMEO", ":", "\n", "<b>"], [None, 2, 8, 4], 8, confidences=[0, 0.9, 0.2, 0.5],
                      measure="max_prob")
    assert 'title="prompt"' in html and "layer 2 of 8 | max_prob 0.900" in html and "layer 8 of 8" in html
    assert "&lt;b&gt;" in html and "<b>" not in html  # token text is escaped
    assert "&#8629;<sub" in html and "</span><br>" in html  # a newline is shown and breaks the line
    assert html.count("background:") == 3 + 3  # three coloured tokens and a legend of three layers
    assert html.count("<sub") == 3  # each predicted token labelled with its layer, readable without colour
    assert "<sub" not in token_html(["a"], [2], 8, labels=False)


def test_a_line_break_comes_after_the_layer_label():
    """A newline token's label stays on its line: "↵₂" then the break, never "₂Not" on the next line."""
    html = token_html(["me", ",\n", "\n\n", "Not"], [None, 2, 4, 8], 8)
    assert '&#8629;<sub style="font-size:60%">2</sub></span><br>' in html
    assert '&#8629;&#8629;<sub style="font-size:60%">4</sub></span><br><br><span' in html
    assert html.count("<br>") == 3 and not re.search(r"<br>[^<]*<sub", html)  # no label opens a line
    assert '\n</span>' not in html and '&#8629;</span><br>' in token_html(["\n"], [None], 8)  # the prompt's too


def test_layer_colours_are_ordered_by_lightness_and_text_contrasts():
    import matplotlib

    from eelib.lm.tokens import layer_colours, text_colour

    colours = layer_colours(8)
    grey = [0.299 * r + 0.587 * g + 0.114 * b for r, g, b in map(matplotlib.colors.to_rgb, colours)]
    assert grey == sorted(grey) and len(set(colours)) == 8  # readable as a lightness scale in greyscale
    assert text_colour(colours[0]) == "#fff" and text_colour(colours[-1]) == "#000"  # dark blue, yellow
    assert text_colour("#000000") == "#fff" and text_colour("#ffffff") == "#000"
    with pytest.raises(ValueError, match="layers must be from 1 to n_layers=8"):
        token_html(["a"], [9], 8)
    with pytest.raises(ValueError, match="tokens has 2 entries but layers has 1"):
        token_html(["a", "b"], [1], 8)


def test_language_model_figures_are_labelled(course):
    def labelled(fig):
        for ax in fig.axes:
            if ax.axison:
                assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax

    fig = plots.draw_transformer_stack(8, (2, 4))
    assert fig.axes[0].get_title() and sum("exit after layer" in t.get_text() for t in fig.axes[0].texts) == 2
    with pytest.raises(ValueError, match="exit_layers must be from 1 to 7"):
        plots.draw_transformer_stack(8, (8,))
    preds = [["a", "b"], ["c", "b"]]
    labelled(plots.plot_logit_lens(["x", "y"], preds, torch.tensor([[0, 1], [1, 1]]), ["layer 1", "final"]))
    labelled(plots.plot_agreement_per_layer({"lens": [0.3, 1.0], "heads": [0.5, 1.0]}, [1, 2]))
    ee = course_exits(course, (2, 4))
    fig = plots.plot_token_costs(token_exit_costs(ee, 64))
    labelled(fig)
    assert len(fig.axes[1].patches) == 3
    rows = difficulty_by_kind(["newline", "word start"], [2, 8])
    labelled(plots.plot_difficulty_by_kind(rows, 8))


def test_generation_summary(course, monkeypatch):
    from eelib.course.widgets import generation_summary

    ee = course_exits(course, (2, 4))
    calibration = token_exit_outputs(ee, heldout_text("calibration"), max_tokens=600).outputs
    early, full, html = generation_summary(ee, "ROMEO:\n", calibration, target_agreement=0.8, max_new_tokens=12)
    assert len(early.tokens) == len(full.tokens) == 12 and full.avg_exit_layer == 8
    assert "calibrated for 80% agreement" in html and "measured speedup" in html and "layer 2" in html
    assert "layers computed per token" in html
    import eelib._util.timing as timing
    from eelib._util.load import MachineLoad

    for busy, warned in ((0.1, False), (1.0, True)):  # the machine's load, faked: a warning only when busy
        monkeypatch.setattr(timing, "machine_load", lambda busy=busy: MachineLoad(2, busy, "fake"))
        html = generation_summary(ee, "ROMEO:\n", calibration, target_agreement=0.8, max_new_tokens=4)[2]
        assert ("WARNING: other programs kept 1.00 of 2 CPUs busy" in html) == warned
    with pytest.raises(ValueError, match="target_agreement"):
        generation_summary(ee, "ROMEO:", calibration, target_agreement=1.5)
    with pytest.raises(ValueError, match="prompt is empty"):
        generation_summary(ee, "", calibration)


# --- exercise checks ------------------------------------------------------------------------------

def ref_layer_predictions(model, hs):
    tf = model.transformer
    return torch.stack([model.lm_head(tf.ln_f(h)) for h in hs[1:-1]] + [model.lm_head(hs[-1])])[:, 0].argmax(-1)


def ref_oracle_exit(preds, final):
    from eelib.outputs import ExitOutputs

    return oracle_token_exits(ExitOutputs(torch.nn.functional.one_hot(preds, int(preds.max()) + 1).float(), final,
                                     tuple(str(i) for i in range(len(preds)))))


@pytest.mark.parametrize("check, answer", [
    (checks.check_layer_predictions, ref_layer_predictions),
    (checks.check_oracle_exit, ref_oracle_exit),
    (checks.check_threshold_for_agreement, threshold_for_agreement),
])
def test_lm_checks_accept_the_reference(check, answer, capsys):
    check(answer)
    assert capsys.readouterr().out.startswith("Correct")


def _twice(model, hs):
    tf = model.transformer
    return torch.stack([model.lm_head(tf.ln_f(h)) for h in hs[1:]])[:, 0].argmax(-1)


def _no_ln(model, hs):
    return torch.stack([model.lm_head(h) for h in hs[1:]])[:, 0].argmax(-1)


def _with_embeddings(model, hs):
    tf = model.transformer
    return torch.stack([model.lm_head(tf.ln_f(h)) for h in hs]).squeeze(1).argmax(-1)


def _first_agreeing(preds, final):
    return (preds == final).float().argmax(0)


def _share_of_leaving(scores, agrees, target):
    for t in sorted(set(scores.tolist())):
        if agrees[scores >= t].float().mean() >= target:
            return t
    return float("inf")


def _only_disagreements_counted_wrongly(scores, agrees, target):
    return threshold_for_agreement(scores, agrees, target) - 0.2  # too low: the target is missed


@pytest.mark.parametrize("check, answer, message", [
    (checks.check_layer_predictions, _twice, "already has ln_f applied"),
    (checks.check_layer_predictions, _no_ln, "apply the final layer norm"),
    (checks.check_layer_predictions, _with_embeddings, "hidden_states[0] is the embeddings"),
    (checks.check_oracle_exit, _first_agreeing, "every later exit must agree too"),
    (checks.check_oracle_exit, lambda p, f: ref_oracle_exit(p, f) + 1, "off by one"),
    (checks.check_threshold_for_agreement, _share_of_leaving, "not among the tokens that leave"),
    (checks.check_threshold_for_agreement, _only_disagreements_counted_wrongly, "agreement over all tokens is"),
    (checks.check_threshold_for_agreement, lambda s, a, t: (s, a), "return one number"),
])
def test_lm_checks_explain_wrong_answers(check, answer, message):
    with pytest.raises(AssertionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check(answer)


@pytest.mark.parametrize("check", [checks.check_layer_predictions, checks.check_oracle_exit,
                                   checks.check_threshold_for_agreement])
def test_unfinished_lm_exercises_pass_through(check):
    def blank(*args):
        raise NotImplementedError("Exercise: implement it")

    with pytest.raises(NotImplementedError):
        check(blank)
