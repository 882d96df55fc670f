import math

import pytest
import torch

from eelib.outputs import ExitOutputs
from eelib.policies import (ExitPolicy, apply_policy, calibrate, confidence, easy_and_hard, entropy, evaluate_oracle,
                            evaluate_policy, margin, max_prob, oracle_exits, overthinking, patience, static_exit,
                            tradeoff_curve)
from eelib.course.widgets import policy_summary, threshold_widget


def test_measures_on_hand_made_cases():
    uniform = torch.zeros(1, 4)
    certain = torch.tensor([[100.0, 0, 0, 0]])
    two_way = torch.log(torch.tensor([[0.5, 0.5, 1e-9, 1e-9]]))
    assert max_prob(uniform).item() == pytest.approx(0.25) and max_prob(certain).item() == pytest.approx(1.0)
    assert entropy(uniform).item() == pytest.approx(math.log(4)) and entropy(certain).item() == pytest.approx(0, abs=1e-6)
    assert entropy(two_way).item() == pytest.approx(math.log(2), abs=1e-6)
    assert margin(two_way).item() == pytest.approx(0, abs=1e-6) and margin(certain).item() == pytest.approx(1.0)
    # predictions 0, 0, 1, 1, 1 at exits 0..4: runs 1, 2, 1, 2, 3
    logits = torch.stack([torch.tensor([[5.0, 0]])] * 2 + [torch.tensor([[0, 5.0]])] * 3)
    assert patience(logits)[:, 0].tolist() == [1, 2, 1, 2, 3]
    with pytest.raises(ValueError, match="not a confidence measure"):
        confidence(logits, "variance")


def outputs_for(logits, labels):
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return ExitOutputs(logits, torch.as_tensor(labels), tuple(f"e{k}" for k in range(len(logits) - 1)) + ("final",))


def hand_made():
    """3 exits, 4 samples, 2 classes; confidences at exit 0: 0.95, 0.6, 0.95, 0.55."""
    p = lambda a: [math.log(a), math.log(1 - a)]  # noqa: E731 - class 0 with probability a
    q = lambda a: [math.log(1 - a), math.log(a)]  # noqa: E731 - class 1 with probability a
    logits = [[p(0.95), q(0.6), q(0.95), p(0.55)],
              [p(0.97), q(0.9), q(0.97), q(0.6)],
              [p(0.99), q(0.99), p(0.99), q(0.99)]]
    return outputs_for(logits, [0, 1, 1, 0])


def test_apply_policy_takes_the_first_exit_that_passes():
    out = hand_made()
    r = apply_policy(ExitPolicy("max_prob", (0.9, 0.85)), out.logits)
    assert r.exits.tolist() == [0, 1, 0, 2] and r.predictions.tolist() == [0, 1, 1, 1]
    never = apply_policy(ExitPolicy.never_exit(3), out.logits)
    assert never.exits.tolist() == [2, 2, 2, 2]
    ent = apply_policy(ExitPolicy("entropy", (0.35, 0.35)), out.logits)  # lower entropy = more confident
    assert ent.exits.tolist() == [0, 1, 0, 2]


def test_policy_costs_and_oracle():
    out = hand_made()
    costs, full = [10, 30, 101], 100
    e = evaluate_policy(ExitPolicy("max_prob", (0.9, 0.85)), out, costs, full)
    assert e.accuracy == pytest.approx(0.75) and e.avg_flops == pytest.approx((10 + 30 + 10 + 101) / 4)
    assert e.exit_fractions == (0.5, 0.25, 0.25) and e.flops_saved == pytest.approx(1 - 151 / 400)
    # oracle: every sample is right at exit 0 already
    assert oracle_exits(out).exits.tolist() == [0, 0, 0, 0]
    oracle = evaluate_oracle(out, costs, full)
    assert oracle.accuracy == 1.0 and oracle.avg_flops == 10
    assert static_exit(out, 2, costs, full).accuracy == pytest.approx(0.5)
    assert overthinking(out) == [0.5, 0.25]  # samples 2 and 3 are right early, wrong at the end
    easy, hard = easy_and_hard(out, apply_policy(ExitPolicy("max_prob", (0.9, 0.85)), out.logits), n=2)
    assert sorted(easy) == [0, 2] and hard == [3]  # sample 3 is wrong (at the final exit); no other reached it
    # a sample no exit gets right leaves at the first exit; one right only at the end leaves there
    two = outputs_for([[[2.0, 0], [2.0, 0]], [[2.0, 0], [2.0, 0]], [[2.0, 0], [0, 2.0]]], [1, 1])
    assert oracle_exits(two).exits.tolist() == [0, 2] and evaluate_oracle(two, costs, full).accuracy == 0.5


@pytest.mark.parametrize("thresholds, message", [
    ((0.9,), "thresholds has 1 values but the model has 3 exits"),
    ((0.9, 0.9, 0.9), "thresholds has 3 values"),
    ((0.9, 1.5), r"outside the range of max_prob: \[0.5, 1\]"),
    ((0.2, 0.9), "outside the range"),
])
def test_bad_thresholds(thresholds, message):
    with pytest.raises(ValueError, match=message):
        apply_policy(ExitPolicy("max_prob", thresholds), hand_made().logits)


def test_bad_policies():
    with pytest.raises(ValueError, match="not a confidence measure"):
        ExitPolicy("confidence", (0.5,))
    with pytest.raises(ValueError, match="single number"):
        ExitPolicy("max_prob", 0.5)
    with pytest.raises(ValueError, match="outside the range of patience"):
        apply_policy(ExitPolicy("patience", (1, 4)), hand_made().logits)
    with pytest.raises(ValueError, match="exit_flops has 2 values but there are 3 exits"):
        evaluate_policy(ExitPolicy("max_prob", (0.9, 0.9)), hand_made(), [1, 2], 3)
    with pytest.raises(ValueError, match="exit 3 does not exist"):
        static_exit(hand_made(), 3, [1, 2, 3], 3)


def random_outputs(n=400, exits=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(labels, 10).float()
    logits = torch.stack([torch.randn(n, 10, generator=g) * 2 + (1 + k) * onehot for k in range(exits)])
    return outputs_for(logits, labels)


@pytest.mark.parametrize("measure", ["max_prob", "entropy", "margin", "patience"])
def test_calibration_meets_its_target_and_saves(measure):
    out = random_outputs()
    costs, full = [20, 45, 70, 101], 100
    final = out.accuracy_per_exit()[-1]
    cal = calibrate(out, costs, full, measure=measure, max_accuracy_drop=0.02)
    assert cal.val.accuracy >= final - 0.02 and cal.val.avg_flops < 101
    assert evaluate_policy(cal.policy, out, costs, full) == cal.val
    strict = calibrate(out, costs, full, measure=measure, max_accuracy_drop=0.0)
    assert strict.val.accuracy >= final
    refined = calibrate(out, costs, full, measure=measure, max_accuracy_drop=0.02, per_exit=True)
    assert refined.val.accuracy >= final - 0.02 and refined.val.avg_flops <= cal.val.avg_flops
    budget = calibrate(out, costs, full, measure=measure, flops_budget=50)
    assert budget.val.avg_flops <= 50
    # the oracle is the lower bound of cost: no calibrated policy is cheaper at the oracle's accuracy
    assert evaluate_oracle(out, costs, full).avg_flops <= cal.val.avg_flops


def test_calibration_bad_targets():
    out = random_outputs()
    with pytest.raises(ValueError, match="exactly one target"):
        calibrate(out, [1, 2, 3, 4], 4)
    with pytest.raises(ValueError, match="exactly one target"):
        calibrate(out, [1, 2, 3, 4], 4, max_accuracy_drop=0.1, flops_budget=2)
    with pytest.raises(ValueError, match="max_accuracy_drop must be a fraction"):
        calibrate(out, [1, 2, 3, 4], 4, max_accuracy_drop=5)
    with pytest.raises(ValueError, match="no policy meets the target"):
        calibrate(out, [10, 20, 30, 40], 40, flops_budget=5)


def test_tradeoff_curve_spans_cheap_to_full():
    out = random_outputs()
    curve = tradeoff_curve(out, [20, 45, 70, 101], 100)
    costs = [e.avg_flops for _, e in curve]
    assert costs[-1] == 101 and min(costs) < 40  # from (almost) everyone at exit 0 to the full network
    assert costs == sorted(costs)  # thresholds from the least to the most demanding


def test_widget_logic_and_widget():
    out = random_outputs()
    e, text = policy_summary(ExitPolicy("max_prob", (0.5, 0.5, 0.5)), out, [20, 45, 70, 101], 100)
    assert e == evaluate_policy(ExitPolicy("max_prob", (0.5, 0.5, 0.5)), out, [20, 45, 70, 101], 100)
    assert f"{100 * e.accuracy:.2f}%" in text and "oracle" in text and f"{100 * e.flops_saved:.1f}% saved" in text
    box = threshold_widget(out, [20, 45, 70, 101], 100, shared=False, initial=0.6)
    sliders = box.children[:3]
    assert [s.description for s in sliders] == ["e0", "e1", "e2"]
    sliders[0].value = 0.99  # moving a slider recomputes the summary
    expected = policy_summary(ExitPolicy("max_prob", (0.99, 0.6, 0.6)), out, [20, 45, 70, 101], 100)[1]
    assert expected in box.children[3].value


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_are_refused_by_name(bad):
    from eelib.policies import calibrate, evaluate_policy

    outputs = random_outputs(n=50, exits=3)
    logits = outputs.logits.clone()
    logits[1, 7, 2] = bad
    with pytest.raises(ValueError, match=r"logits holds 1 non-finite value\(s\)"):
        apply_policy(ExitPolicy("max_prob", (0.5, 0.5)), logits)
    broken = ExitOutputs(logits, outputs.labels, outputs.exit_names)
    with pytest.raises(ValueError, match=r"outputs.logits holds 1 non-finite"):
        calibrate(broken, [1.0, 2.0, 3.0], 3.0, max_accuracy_drop=0.01)
    with pytest.raises(ValueError, match=r"outputs.logits holds 1 non-finite"):
        evaluate_policy(ExitPolicy("max_prob", (0.5, 0.5)), broken, [1.0, 2.0, 3.0], 3.0)


def test_patience_and_first_exits_keep_their_inputs_device_and_dtype():
    from eelib.policies import MEASURES, first_exits, patience

    logits = torch.tensor([[[0.0, 1.0]], [[0.0, 2.0]], [[3.0, 0.0]], [[4.0, 0.0]]])  # one sample, 4 exits
    assert patience(logits).tolist() == [[1.0], [2.0], [1.0], [2.0]]
    meta = torch.zeros(4, 5, 3, device="meta")  # a device that is not the CPU: nothing may be made on the CPU
    assert patience(meta).device.type == "meta"
    assert first_exits(torch.zeros(3, 5, device="meta"), (0.5, 0.5), MEASURES["max_prob"]).device.type == "meta"
    with pytest.raises(ValueError, match="one per early exit"):
        first_exits(torch.zeros(3, 5), (0.5,), MEASURES["max_prob"])


def test_an_accuracy_drop_target_is_met_exactly_at_its_floor():
    """The floor is the final exit's accuracy minus the drop, in float64 like every policy's accuracy:
    never exiting meets max_accuracy_drop=0 (issue 26: the float32 floor of 0.975 = 975/1000 was above
    it), and a policy exactly at the floor meets its target."""
    n = 1000
    labels = torch.arange(n) % 10
    right = torch.arange(n) < 975  # the final exit: 97.5% right
    final = torch.nn.functional.one_hot(torch.where(right, labels, (labels + 1) % 10), 10) * 5.0
    early = final.clone()
    early[:5] = torch.nn.functional.one_hot((labels[:5] + 1) % 10, 10) * 5.0  # 970 right, all confident
    out = outputs_for(torch.stack([early, final]), labels)
    assert out.correct[-1].double().mean().item() == 0.975
    strict = calibrate(out, [1, 2], 2, max_accuracy_drop=0)
    assert strict.val.accuracy == 0.975 and strict.val.avg_flops == 2  # never exits
    at_floor = calibrate(out, [1, 2], 2, max_accuracy_drop=0.005)
    assert at_floor.val.accuracy == 0.970 and at_floor.val.avg_flops == 1  # every sample leaves at the first exit


def test_easy_images_spread_over_the_labels():
    """The easy row shows each label's most confident sample before any label's second (talk's figure 2)."""
    p = lambda a: [math.log(a), math.log((1 - a) / 2), math.log((1 - a) / 2)]  # noqa: E731 - class 0 with probability a
    q = lambda a, c: [math.log((1 - a) / 2)] * c + [math.log(a)] + [math.log((1 - a) / 2)] * (2 - c)  # noqa: E731
    # five samples leave at the first exit: three 0s (the most confident), a 1 and a 2
    first = [p(0.999), p(0.998), p(0.997), q(0.95, 1), q(0.9, 2)]
    out = outputs_for([first, first], [0, 0, 0, 1, 2])
    result = apply_policy(ExitPolicy("max_prob", (0.5,)), out.logits)
    easy, _ = easy_and_hard(out, result, n=4)
    assert easy == [0, 3, 4, 1]  # one of each label by confidence, then the second 0
    by_confidence, _ = easy_and_hard(out, result, n=4, spread_labels=False)
    assert by_confidence == [0, 1, 2, 3]
