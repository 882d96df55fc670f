"""Chapter 9's library: token exits with a guarantee (CALM), a model that abstains, exit or reject for tokens."""

from __future__ import annotations

import math

import pytest
import torch

import eelib
from eelib.lm.rejection import (TokenScores, abstain_threshold, consistency_threshold, decisions,
                                evaluate_consistency, exits_by_candidate, min_calibration_tokens,
                                naive_consistency_threshold, token_scores)
from eelib.lm.rejection_splits import abstain_split_study, flops_margin, reject_split_study, split_study
from eelib.rejection import CostModel, binomial_tail, calibrate_reject, evaluate_reject_policy, guaranteed_threshold


def synthetic(n: int = 3000, seed: int = 0, agree_floor: float = 0.3) -> TokenScores:
    """Two early exits and the final one; a token's exit agrees with the full model more often when confident,
    and the full model is right on the true token more often when confident."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(3, n, generator=g) * 0.99 + 0.01
    scores[1] = (scores[1] + scores[0]) / 2  # a deeper exit is related to the shallower one
    full = torch.randint(10, 4000, (n,), generator=g)
    agrees = torch.rand(2, n, generator=g) < agree_floor + (1 - agree_floor) * scores[:2] ** 0.5
    early = torch.where(agrees, full, full + 1)
    right = torch.rand(n, generator=g) < scores[2] ** 1.5
    targets = torch.where(right, full, full + 2)
    return TokenScores(scores, torch.cat([early, full[None]]), targets, torch.zeros(n, dtype=torch.long),
                       ("layer 2", "layer 4", "final (layer 8)"), (2, 4, 8), 8)


def true_disagreement(pool: TokenScores, threshold: float) -> float:
    return evaluate_consistency(pool, threshold).disagreement


def test_the_exit_rule_is_the_first_passing_early_exit():
    data = synthetic(200)
    exits = exits_by_candidate(data, [0.5, 2.0, 0.0]).long()
    expected = eelib.apply_policy(eelib.ExitPolicy("max_prob", (0.5, 0.5)), data.outputs().logits).exits
    assert torch.equal(exits[0], expected)  # eelib.policies' own rule on the same scores
    assert (exits[1] == 2).all() and (exits[2] == 0).all()  # none passes / every score passes at exit 0


def test_the_guaranteed_threshold_is_the_last_certified_candidate_of_the_fixed_sequence():
    data = synthetic(2000)
    c = consistency_threshold(data, epsilon=0.05, delta=0.1)
    exits = exits_by_candidate(data, [c.threshold]).long()[0]
    k = int((data.predictions.gather(0, exits[None])[0] != data.predictions[-1]).sum())
    assert k == c.n_disagree and float(binomial_tail(k, 2000, 0.05)) <= 0.1  # certified
    # the next candidate of the grid fails the test (the sequence stopped there)
    grid = eelib.lm.rejection.CANDIDATES
    nxt = grid[grid.index(c.threshold) + 1]
    exits = exits_by_candidate(data, [nxt]).long()[0]
    k2 = int((data.predictions.gather(0, exits[None])[0] != data.predictions[-1]).sum())
    assert float(binomial_tail(k2, 2000, 0.05)) > 0.1
    assert c.disagreement <= c.disagreement_bound <= 0.05 + 1e-12
    assert c.policy == eelib.ExitPolicy("max_prob", (c.threshold, c.threshold))
    naive = naive_consistency_threshold(data, epsilon=0.05)
    assert naive.threshold <= c.threshold and naive.disagreement <= 0.05 < naive.disagreement + 0.01


def test_the_guarantee_holds_over_random_splits_and_the_naive_threshold_breaks_it():
    pool = synthetic(20000, seed=1)
    study = split_study(pool, epsilon=0.05, delta=0.1, calibration=1000, splits=100, seed=3)
    # the pool is the population: its disagreement is the threshold's true risk
    assert study.violation_rate("guaranteed", "pool") <= 0.1 + 2 * math.sqrt(0.1 * 0.9 / 100)
    assert study.violation_rate("naive", "pool") >= 0.25
    assert study.mean("coverage", "guaranteed") < study.mean("coverage", "naive")
    assert torch.isnan(study.relative_flops).all()  # no costs given
    with pytest.raises(ValueError, match="where must be"):
        study.violation_rate("guaranteed", "train")
    with pytest.raises(ValueError, match="method must be one of"):
        study.violation_rate("oracle")


def test_a_split_study_reports_flops_of_the_exits_taken():
    pool = synthetic(3000, seed=2)
    costs = CostModel((1.0, 2.0, 4.0), 3.0)
    study = split_study(pool, epsilon=0.1, delta=0.1, calibration=500, splits=5, costs=costs)
    t = float(study.thresholds[1, 0])
    expected = evaluate_consistency(pool, t, costs).relative_flops
    assert 1 / 3 <= float(study.relative_flops[1, 0]) <= 4 / 3
    assert abs(float(study.relative_flops[1, 0]) - expected) < 0.05  # the test tokens are most of the pool


def test_too_short_a_calibration_text_says_how_many_tokens_are_needed():
    assert min_calibration_tokens(0.05, 0.1) == 45  # (0.95) ** 45 <= 0.1 < (0.95) ** 44
    assert 0.95 ** 45 <= 0.1 < 0.95 ** 44
    data = synthetic(40)
    with pytest.raises(ValueError, match="has 40 tokens.*needs at least 45 tokens"):
        consistency_threshold(data, epsilon=0.05, delta=0.1)
    with pytest.raises(ValueError, match="alpha 0.1 with delta 0.1 needs at least 22 tokens"):
        abstain_threshold(synthetic(10), alpha=0.1, delta=0.1)
    with pytest.raises(ValueError, match="needs at least 45 tokens"):
        split_study(synthetic(500), epsilon=0.05, delta=0.1, calibration=30, splits=2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(epsilon=0.0, delta=0.1), "epsilon must be a number in \\(0, 1\\)"),
    (dict(epsilon=1.0, delta=0.1), "epsilon must be"),
    (dict(epsilon=0.05, delta=1.5), "delta must be a number in \\(0, 1\\)"),
    (dict(epsilon=True, delta=0.1), "epsilon must be"),
])
def test_epsilon_and_delta_outside_0_1_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        consistency_threshold(synthetic(100), **kwargs)


def test_other_bad_inputs_are_refused_with_the_argument_named():
    data = synthetic(100)
    with pytest.raises(ValueError, match="alpha must be"):
        abstain_threshold(data, alpha=-0.1, delta=0.1)
    with pytest.raises(ValueError, match="exit must be an exit index from 0 to 2"):
        abstain_threshold(data, alpha=0.5, delta=0.1, exit=3)
    with pytest.raises(ValueError, match="candidates must run from the strictest"):
        consistency_threshold(data, epsilon=0.1, delta=0.1, candidates=[0.1, 0.5])
    with pytest.raises(ValueError, match="calibration must be a number of tokens from 1 to 99"):
        split_study(data, epsilon=0.5, delta=0.5, calibration=100)
    with pytest.raises(ValueError, match="modes must be among"):
        reject_split_study(data, CostModel((1.0, 2.0, 3.0), 3.0), flops_budget=2.0, calibration=50, modes=["oracle"])
    with pytest.raises(ValueError, match="predictions"):
        TokenScores(data.scores, data.predictions[:, :5], data.targets, data.input_ids, data.exit_names, data.layers, 8)


def test_exits_without_trained_heads_are_refused_where_the_chapter_needs_them():
    lm = eelib.load_lm("course")
    lens = eelib.course_exits(lm, (2, 4), trained=False)
    with pytest.raises(ValueError, match="logit lens \\(no trained heads\\).*heads='any'"):
        token_scores(lens, "ROMEO:\nWhat say you?\n", cache=False)
    with pytest.raises(ValueError, match="heads must be one of trained, any"):
        token_scores(lens, "ROMEO:\n", heads="some", cache=False)


def test_token_scores_match_token_exit_outputs_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EELIB_CACHE", str(tmp_path))
    ee = eelib.course_exits(eelib.load_lm("course"), (2, 4))
    text = eelib.heldout_text("test")[:3000]
    data = token_scores(ee, text)
    ref = eelib.token_exit_outputs(ee, text)
    assert torch.equal(data.targets, ref.targets) and torch.equal(data.predictions[-1], ref.outputs.labels)
    assert torch.equal(data.predictions[:-1], ref.outputs.predictions[:-1])
    assert torch.allclose(data.scores, eelib.confidence(ref.outputs.logits, "max_prob"))
    files = list((tmp_path / "lm_rejection").glob("*.pt"))
    assert len(files) == 1
    again = token_scores(ee, text)  # read from the cache
    assert torch.equal(again.scores, data.scores) and again.exit_names == ee.exit_names
    token_scores(ee, text[:2000])
    assert len(list((tmp_path / "lm_rejection").glob("*.pt"))) == 2  # another text, another entry
    assert len(token_scores(ee, text, max_tokens=50, cache=False)) == 50


def test_the_compact_outputs_decide_and_score_as_the_full_logits():
    ee = eelib.course_exits(eelib.load_lm("course"), (2, 4))
    text = eelib.heldout_text("calibration")[:4000]
    full = eelib.token_exit_outputs(ee, text)
    data = token_scores(ee, text, cache=False)
    labelled = eelib.ExitOutputs(full.outputs.logits, full.targets, full.outputs.exit_names)  # the true tokens
    compact = data.outputs()
    assert compact.logits.shape[-1] < 200 < labelled.logits.shape[-1]
    assert torch.equal(compact.correct, labelled.correct)
    assert torch.allclose(eelib.confidence(compact.logits), eelib.confidence(labelled.logits), atol=1e-5)
    costs = eelib.token_exit_costs(ee, 128, kv="copy")
    model = CostModel(costs.flops, costs.full_flops, error_cost=1.0, reject_cost=0.5)
    for mode in ("combined", "exit_only"):
        a = calibrate_reject(compact, model, flops_budget=0.8 * costs.full_flops, mode=mode)
        b = calibrate_reject(labelled, model, flops_budget=0.8 * costs.full_flops, mode=mode)
        ea, eb = evaluate_reject_policy(a.policy, compact, model), evaluate_reject_policy(b.policy, labelled, model)
        assert abs(ea.cost - eb.cost) < 2 / len(data) and abs(ea.coverage - eb.coverage) < 2 / len(data)


def test_the_abstaining_model_is_chapter_5_s_guaranteed_threshold_on_the_true_tokens():
    data = synthetic(2000, seed=4)
    g = abstain_threshold(data, alpha=0.3, delta=0.1)
    assert g == guaranteed_threshold(data.scores[-1], data.targets == data.predictions[-1], alpha=0.3, delta=0.1)
    assert g.risk_bound <= 0.3 and 0 < g.coverage < 1
    study = abstain_split_study(synthetic(20000, seed=5), alpha=0.3, delta=0.1, calibration=1000, splits=30)
    assert study.violation_rate("guaranteed", "pool") <= 0.1 + 2 * math.sqrt(0.1 * 0.9 / 30)
    assert study.violation_rate("naive", "pool") > study.violation_rate("guaranteed", "pool")


def test_exit_or_reject_stays_within_its_budget_and_beats_exit_only_on_risk():
    data = synthetic(6000, seed=6)
    model = CostModel((1.0, 2.0, 3.5), 3.0, error_cost=1.0, reject_cost=0.5)
    study = reject_split_study(data, model, flops_budget=2.0, calibration=2000, splits=8)
    assert study.margin == pytest.approx(flops_margin(model, 2000, 0.05)) and study.margin == pytest.approx(
        2.5 * math.sqrt(math.log(20) / 4000))
    assert study.over_budget_rate("combined") == 0 and study.over_budget_rate("reject_only") == 1
    assert study.lower_risk_rate("combined", "exit_only") == 1
    assert study.mean("coverage", "exit_only") == 1
    with pytest.raises(ValueError, match="delta must be"):
        flops_margin(model, 100, 1.0)


def test_decisions_follow_the_reject_policy():
    data = synthetic(500)
    policy = eelib.RejectPolicy("max_prob", (0.9, 0.9), (0.1, 0.1, 0.3))
    exits, rejected = decisions(policy, data)
    first = (data.scores[0] >= 0.9)
    assert (exits[first] == 0).all() and not rejected[first].any()
    low = (data.scores[0] < 0.1)
    assert (exits[low] == 0).all() and rejected[low].all()
    with pytest.raises(ValueError, match="policy has 2 exits but data has 3"):
        decisions(eelib.RejectPolicy("max_prob", (0.9,), (0.1, 0.3)), data)


def test_token_html_marks_rejected_tokens():
    html = eelib.token_html(["a", "b"], [2, 8], 8, rejected=[False, True])
    assert html.count("line-through") == 2 and "rejected (no prediction) at layer 8" in html  # token + legend
    with pytest.raises(ValueError, match="rejected has 1 entries for 2 tokens"):
        eelib.token_html(["a", "b"], [2, 8], 8, rejected=[True])
