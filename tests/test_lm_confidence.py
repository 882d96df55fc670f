"""CALM's cheap exit decisions: hidden-state saturation and learned exit classifiers, in generation."""

import math

import pytest
import torch

from eelib.lm import model as lmlib
from eelib.lm.confidence import (StateGate, calibrate_gate, saturation, state_scores, train_exit_classifiers)
from eelib.lm.exits import course_exits, heldout_text
from eelib.lm.generate import early_exit_generate, teacher_forced_eval
from eelib.lm.speculative import calibration_prompts
from eelib.policies import ExitPolicy


@pytest.fixture(scope="module")
def ee():
    return course_exits(lmlib.load_lm(lmlib.COURSE_MODEL, device="cpu"), (2, 4))


@pytest.fixture(scope="module")
def classifiers(ee):
    return train_exit_classifiers(ee, heldout_text("calibration"), max_tokens=2000, steps=150)


def test_saturation_by_hand():
    h = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    before = torch.tensor([[2.0, 0.0], [-1.0, -1.0]])
    assert saturation(h, before).tolist() == pytest.approx([1.0, -1.0])


def test_a_token_that_goes_on_pays_no_head(ee, monkeypatch):
    heads = []
    original = type(ee).head
    monkeypatch.setattr(type(ee), "head", lambda self, k, h: heads.append(k) or original(self, k, h))
    never = StateGate("saturation", (math.inf, math.inf))
    g = early_exit_generate(ee, "ROMEO:", max_new_tokens=12, gate=never)
    assert heads == [2] * 12  # the final head only
    assert g.tokens == early_exit_generate(ee, "ROMEO:", None, max_new_tokens=12).tokens
    heads.clear()
    always = StateGate("saturation", (-1.0, -1.0))
    g = early_exit_generate(ee, "ROMEO:", max_new_tokens=12, gate=always)
    assert heads == [0] * 12 and {s.layer for s in g.steps} == {2}


def test_classifiers_predict_agreement(ee, classifiers):
    scores, correct = state_scores(ee, heldout_text("test"), "classifier", classifiers, max_tokens=2000)
    for k in range(2):
        accuracy = ((scores[k] >= 0.5) == correct[k]).double().mean().item()
        majority = max(correct[k].double().mean().item(), 1 - correct[k].double().mean().item())
        assert accuracy > majority  # better than always guessing the commoner answer, on held-out tokens


@pytest.mark.parametrize("measure", ["saturation", "classifier"])
def test_calibrated_gate_meets_its_target(ee, classifiers, measure):
    cal = calibrate_gate(ee, heldout_text("calibration"), measure, target=0.9, classifiers=classifiers,
                         max_tokens=2000)
    scores, correct = state_scores(ee, heldout_text("calibration"), measure, classifiers, max_tokens=2000)
    leaves = scores[0] >= cal.gate.thresholds[0]
    assert leaves.any()  # some tokens leave at layer 2 at this target
    # what the gate does, counted here: each token's exit, its agreement and its layer
    exit_k = torch.where(leaves, 0, torch.where(scores[1] >= cal.gate.thresholds[1], 1, 2))
    agrees = correct[exit_k, torch.arange(len(exit_k))]
    assert cal.agreement == pytest.approx(agrees.double().mean().item())
    layer = torch.tensor(ee.layers, dtype=torch.float64)[exit_k].mean().item()
    assert cal.avg_exit_layer == pytest.approx(layer) and layer < 8
    forced = teacher_forced_eval(ee, calibration_prompts(ee.lm, 2, "test"), None, gate=cal.gate, max_new_tokens=16)
    assert forced.tokens == 32 and forced.avg_exit_layer < 8


def test_bad_gates(ee, classifiers):
    with pytest.raises(ValueError, match="measure"):
        StateGate("max_prob", (0.5, 0.5))
    with pytest.raises(ValueError, match="classifiers"):
        StateGate("classifier", (0.5, 0.5))
    with pytest.raises(ValueError, match="thresholds"):
        early_exit_generate(ee, "ROMEO:", max_new_tokens=2, gate=StateGate("saturation", (0.5,)))
    with pytest.raises(ValueError, match="not both"):
        early_exit_generate(ee, "ROMEO:", ExitPolicy("max_prob", (0.5, 0.5)), max_new_tokens=2,
                            gate=StateGate("saturation", (0.5, 0.5)))
    with pytest.raises(ValueError, match="policy or a gate"):
        teacher_forced_eval(ee, ["ROMEO:"], None)


def test_gates_evaluate_in_eval_mode_and_give_the_callers_mode_back(ee, classifiers):
    text = heldout_text("test")[:3000]
    reference = state_scores(ee, text, "classifier", classifiers, max_tokens=300)
    cal = calibrate_gate(ee, text, "saturation", target=0.9, max_tokens=300)
    ee.model.train()  # dropout 0.1 in the course model's config
    try:
        for _ in range(2):
            scores, correct = state_scores(ee, text, "classifier", classifiers, max_tokens=300)
            assert torch.equal(scores, reference[0]) and torch.equal(correct, reference[1])
            assert calibrate_gate(ee, text, "saturation", target=0.9, max_tokens=300) == cal
        assert ee.model.training and all(m.training for m in ee.model.modules())  # the caller's mode, given back
    finally:
        ee.model.eval()


def test_training_the_classifiers_leaves_the_callers_random_numbers_alone(ee):
    text = heldout_text("test")[:2000]
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    first = train_exit_classifiers(ee, text, max_tokens=200, steps=3, seed=5)
    assert torch.equal(torch.rand(4), expected)  # the caller's stream goes on as if nothing had happened
    second = train_exit_classifiers(ee, text, max_tokens=200, steps=3, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other = train_exit_classifiers(ee, text, max_tokens=200, steps=3, seed=6)
    assert not torch.equal(other.linears[0].weight, first.linears[0].weight)  # the seed decides the start


def test_calibrated_gate_by_hand(ee, monkeypatch):
    """Ten tokens with known scores: the loosest threshold that keeps 90% agreement lets tokens 0-5 leave at layer 2."""
    from eelib.lm import confidence

    at_exit0 = torch.tensor([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    right0 = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)  # token 3 disagrees, and 6..9
    scores = torch.stack([at_exit0, torch.full((10,), 0.1)])  # nobody passes exit 1 unless the threshold is <= 0.1
    correct = torch.stack([right0, torch.zeros(10, dtype=torch.bool), torch.ones(10, dtype=torch.bool)])
    monkeypatch.setattr(confidence, "state_scores", lambda *args, **kwargs: (scores, correct))
    cal = calibrate_gate(ee, "unused", "saturation", target=0.9)
    # thresholds in (0.5, 0.6]: tokens 0-5 leave at layer 2 (one of them, token 3, disagrees), 6-9 go to layer 8
    assert 0.5 < cal.gate.thresholds[0] <= 0.6 and cal.gate.thresholds[0] == cal.gate.thresholds[1]
    assert cal.agreement == pytest.approx(0.9) and cal.avg_exit_layer == pytest.approx((6 * 2 + 4 * 8) / 10)
    strict = calibrate_gate(ee, "unused", "saturation", target=1.0)  # no disagreement allowed: tokens 0-2 only
    assert 0.8 < strict.gate.thresholds[0] <= 0.9 and strict.agreement == 1.0
    assert strict.avg_exit_layer == pytest.approx((3 * 2 + 7 * 8) / 10)
