"""Rejection (chapter 5): risk-coverage and AURC, guaranteed thresholds, early exit with a reject option."""

import math

import pytest
import torch

from eelib.course import checks
from eelib.outputs import ExitOutputs
from eelib.rejection import (CONTINUE, EXIT, REJECT, CostModel, RejectPolicy, apply_reject_policy, binomial_tail,
                             binomial_upper_bound, calibrate_reject, decide, evaluate_reject_policy,
                             evaluate_selective, guaranteed_threshold, oracle_risk_coverage, risk_coverage_curve)

# --- risk-coverage and AURC on hand-made cases ---------------------------------------------------


def test_aurc_without_ties():
    # sorted by confidence: right, right, wrong, right -> risks 0, 0, 1/3, 1/4 at coverage 1/4 .. 1
    curve = risk_coverage_curve([0.9, 0.8, 0.7, 0.6], [True, True, False, True])
    assert curve.coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert curve.risk.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 4])
    assert curve.aurc == pytest.approx((1 / 3 + 1 / 4) / 4)  # = 7/48


def test_aurc_order_of_samples_does_not_matter_and_entropy_is_reversed():
    a = risk_coverage_curve([0.6, 0.9, 0.7, 0.8], [True, True, False, True]).aurc
    assert a == pytest.approx(7 / 48)
    # entropy: lower is more confident, so the same order is given by the negated scores
    assert risk_coverage_curve([-0.6, -0.9, -0.7, -0.8], [True, True, False, True], "entropy").aurc == pytest.approx(a)


def test_aurc_with_ties_accepts_equal_scores_together():
    curve = risk_coverage_curve([0.9, 0.9, 0.5], [True, False, True])
    assert curve.coverage.tolist() == pytest.approx([2 / 3, 1.0])
    assert curve.risk.tolist() == pytest.approx([0.5, 1 / 3])
    assert curve.aurc == pytest.approx(0.5 * 2 / 3 + 1 / 3 * 1 / 3)  # 4/9


def test_aurc_extremes_and_the_oracle():
    assert risk_coverage_curve([0.3, 0.2], [True, True]).aurc == 0.0
    assert risk_coverage_curve([0.3, 0.2], [False, False]).aurc == 1.0
    worst = risk_coverage_curve([0.9, 0.1], [False, True])  # the error is the most confident
    assert worst.aurc == pytest.approx((1 + 0.5) / 2)
    oracle = oracle_risk_coverage([False, True])
    assert oracle.aurc == pytest.approx((0 + 0.5) / 2)
    # the oracle of 2 errors in 5: risks 0, 0, 0, 1/4, 2/5
    assert oracle_risk_coverage([True, False, True, False, True]).aurc == pytest.approx((1 / 4 + 2 / 5) / 5)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        correct = torch.rand(200) < 0.8
        scores = torch.rand(200) + 0.3 * correct
    assert oracle_risk_coverage(correct).aurc <= risk_coverage_curve(scores, correct).aurc


def test_evaluate_selective_and_risk_at():
    e = evaluate_selective([0.9, 0.8, 0.7, 0.6], [True, False, True, True], 0.75)
    assert (e.coverage, e.risk, e.n_accepted, e.n_errors, e.accuracy) == (0.5, 0.5, 2, 1, 0.5)
    assert evaluate_selective([0.1], [False], 0.5).risk == 0.0  # nothing accepted: no risk
    curve = risk_coverage_curve([0.9, 0.8, 0.7, 0.6], [True, True, False, True])
    assert curve.risk_at(0.75) == pytest.approx(1 / 3) and curve.risk_at(0.3) == 0


# --- the binomial test and the guaranteed threshold ----------------------------------------------


def test_binomial_tail_and_upper_bound():
    assert float(binomial_tail(0, 10, 0.1)) == pytest.approx(0.9 ** 10)
    assert float(binomial_tail(1, 10, 0.1)) == pytest.approx(0.9 ** 10 + 10 * 0.1 * 0.9 ** 9)
    assert float(binomial_tail(10, 10, 0.3)) == pytest.approx(1.0)
    # Clopper-Pearson with 0 errors: (1 - u)^n = delta
    assert binomial_upper_bound(0, 50, 0.1) == pytest.approx(1 - 0.1 ** (1 / 50), abs=1e-9)
    u = binomial_upper_bound(3, 100, 0.05)
    assert float(binomial_tail(3, 100, u)) == pytest.approx(0.05, abs=1e-6)


def test_guaranteed_threshold_on_easy_data():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        scores = torch.rand(2000)
    correct = ~((scores < 0.2) & (torch.arange(2000) % 2 == 0))  # errors only among the least confident
    g = guaranteed_threshold(scores, correct, alpha=0.05, delta=0.1)
    assert g.risk_bound <= 0.05 and g.coverage > 0.7
    assert g.n_errors / g.n_accepted == pytest.approx(g.risk)
    e = evaluate_selective(scores, correct, g.threshold)
    assert (e.n_accepted, e.n_errors) == (g.n_accepted, g.n_errors)


def test_guaranteed_threshold_rejects_everything_with_too_few_samples():
    g = guaranteed_threshold(torch.rand(50), torch.ones(50, dtype=torch.bool), alpha=0.01, delta=0.1)
    assert g.coverage == 0 and g.threshold == math.inf  # 50 samples cannot certify 1% (needs 230)


def _synthetic(n, generator):
    """Scores uniform in [0, 1]; P(error | score s) = 0.3 * (1 - s)^3: the selective risk is known."""
    s = torch.rand(n, generator=generator, dtype=torch.float64)
    wrong = torch.rand(n, generator=generator, dtype=torch.float64) < 0.3 * (1 - s) ** 3
    return s, ~wrong


def _true_risk(t):
    """Selective risk of accepting s >= t: mean of 0.3 (1 - s)^3 over [t, 1] = 0.3 (1 - t)^3 / 4."""
    return 0.3 * (1 - t) ** 3 / 4


def test_guarantee_holds_over_many_calibration_sets():
    """What guaranteed_threshold promises, checked where the true risk is known: over 1,000 calibration
    sets drawn from one distribution, the chosen threshold's selective risk on that distribution is above
    alpha in at most a share delta of them, within the binomial error of 1,000 draws (3 standard
    errors: a true rate of delta passes with probability 0.999). The candidates are the calibration
    scores themselves, which Learn-then-Test's proof (fixed candidates) does not cover: this is the check."""
    alpha, delta, runs = 0.03, 0.2, 1000
    generator = torch.Generator().manual_seed(0)
    violations, coverages = 0, []
    for _ in range(runs):
        s, c = _synthetic(1000, generator)
        g = guaranteed_threshold(s, c, alpha=alpha, delta=delta)
        t = min(max(g.threshold, 0.0), 1.0)
        violations += _true_risk(t) > alpha
        coverages.append(1 - t)
    assert violations / runs <= delta + 3 * math.sqrt(delta * (1 - delta) / runs), violations / runs  # 0.135 seen
    assert sum(coverages) / runs > 0.5  # not by rejecting everything (the best threshold covers 74%)


def test_the_naive_threshold_violates_the_guarantee():
    """Without the binomial bound (empirical risk <= alpha), the risk is above alpha about half the time."""
    alpha, runs = 0.02, 200
    generator = torch.Generator().manual_seed(1)
    violations = 0
    for _ in range(runs):
        s, c = _synthetic(500, generator)
        curve = risk_coverage_curve(s, c)
        ok = (curve.risk <= alpha).nonzero().flatten()
        violations += _true_risk(float(curve.thresholds[ok[-1]])) > alpha
    assert violations / runs > 0.2


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=1.5, delta=0.1), r"alpha must be in \(0, 1\), got 1.5"),
    (dict(alpha=0.0, delta=0.1), r"alpha must be in \(0, 1\), got 0.0"),
    (dict(alpha=0.1, delta=1), r"delta must be in \(0, 1\), got 1"),
    (dict(alpha=0.1, delta=-0.2), r"delta must be in \(0, 1\), got -0.2"),
])
def test_alpha_and_delta_outside_0_1(kwargs, message):
    with pytest.raises(ValueError, match=message):
        guaranteed_threshold(torch.rand(10), torch.ones(10, dtype=torch.bool), **kwargs)


def test_bad_calibration_sets():
    with pytest.raises(ValueError, match="calibration set is empty"):
        guaranteed_threshold(torch.tensor([]), torch.tensor([], dtype=torch.bool), alpha=0.1, delta=0.1)
    with pytest.raises(ValueError, match="scores has 3 values but correct has 2"):
        guaranteed_threshold(torch.rand(3), torch.ones(2, dtype=torch.bool), alpha=0.1, delta=0.1)
    with pytest.raises(ValueError, match="scores has 3 values but correct has 4"):
        risk_coverage_curve([0.1, 0.2, 0.3], [1, 0, 1, 1])
    with pytest.raises(ValueError, match="correct must hold booleans"):
        risk_coverage_curve([0.1, 0.2], [2, 0])
    with pytest.raises(ValueError, match="measure='confidence' is not a confidence measure"):
        risk_coverage_curve([0.1, 0.2], [1, 0], "confidence")


# --- early exit with a reject option -------------------------------------------------------------


def test_decide_exit_continue_reject():
    scores = torch.tensor([0.95, 0.7, 0.3, 0.9])
    assert decide(scores, 0.9, 0.5).tolist() == [EXIT, CONTINUE, REJECT, EXIT]
    assert decide(scores, 0.9, 0.5, final=True).tolist() == [EXIT, EXIT, REJECT, EXIT]
    # entropy: lower is more confident
    assert decide(torch.tensor([0.1, 1.0, 2.0]), 0.2, 1.5, "entropy").tolist() == [EXIT, CONTINUE, REJECT]


def _outputs(n=400, exits=4, seed=0):
    """Exits that get better with depth; the confidence says something about being right."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        labels = torch.randint(0, 10, (n,))
        signal = torch.nn.functional.one_hot(labels, 10).float()
        easy = torch.rand(n)[None, :, None]
        logits = torch.stack([torch.randn(n, 10) + (0.5 + 0.7 * k + 2 * easy[0]) * signal for k in range(exits)])
    return ExitOutputs(logits, labels, tuple(f"e{k}" for k in range(exits)))


def test_apply_reject_policy_by_hand():
    logits = torch.tensor([[[5.0, 0.0], [0.0, 0.1], [0.1, 0.0]],  # exit 0: confident, unsure, unsure
                           [[0.0, 5.0], [0.0, 0.2], [3.0, 0.0]]])  # final
    policy = RejectPolicy("max_prob", (0.9,), (0.51, 0.9))
    r = apply_reject_policy(policy, logits)
    # exit 0: sample 0 exits (p = 0.99); samples 1 and 2 (p = 0.525) pass the reject threshold 0.51: continue
    assert r.exits.tolist() == [0, 1, 1]
    assert r.rejected.tolist() == [False, True, False]  # final: 0.55 < 0.9 rejected; 0.95 accepted
    assert r.predictions.tolist() == [0, 1, 0]
    policy = RejectPolicy("max_prob", (0.9,), (0.53, 0.9))  # now sample 1 and 2 are rejected at exit 0
    r = apply_reject_policy(policy, logits)
    assert r.exits.tolist() == [0, 0, 0] and r.rejected.tolist() == [False, True, True]


def test_reject_policy_thresholds_must_lie_in_the_range_of_the_measure():
    logits = torch.zeros(3, 4, 10)  # 3 exits, 10 classes: max_prob in [0.1, 1], entropy in [0, log 10]
    with pytest.raises(ValueError, match=r"reject_thresholds \[1.5\] are outside the range of max_prob with 10 "
                                         r"classes: allowed \[0.1, 1\], or inf / -inf"):
        apply_reject_policy(RejectPolicy("max_prob", (0.9, 0.9), (0.5, 0.5, 1.5)), logits)
    with pytest.raises(ValueError, match=r"exit_thresholds \[0.05\] are outside the range of max_prob"):
        apply_reject_policy(RejectPolicy("max_prob", (0.05, 0.9), (0.5, 0.5, 0.5)), logits)
    with pytest.raises(ValueError, match=r"reject_thresholds \[3.0\] are outside the range of entropy with 10 "
                                         r"classes: allowed \[0, 2.303\]"):
        apply_reject_policy(RejectPolicy("entropy", (0.1, 0.1), (math.inf, 3.0, 1.0)), logits)
    with pytest.raises(ValueError, match="reject_thresholds has 3 values but the model has 4 exits"):
        apply_reject_policy(RejectPolicy("max_prob", (0.9, 0.9), (0.5, 0.5, 0.5)), torch.zeros(4, 2, 10))
    # inf / -inf and the ends of the range are allowed
    apply_reject_policy(RejectPolicy("max_prob", (math.inf, 1.0), (-math.inf, 0.1, 0.5)), logits)
    with pytest.raises(ValueError, match="outside the range of max_prob"):
        evaluate_reject_policy(RejectPolicy("max_prob", (0.9, 0.9, 0.9), (0.5, 0.5, 0.5, 2.0)), _outputs(),
                               CostModel((1.0, 2.0, 3.0, 4.0), 4.0))


def test_evaluate_reject_policy_counts():
    out = _outputs()
    costs = CostModel((1.0, 2.0, 3.0, 4.0), 4.0, error_cost=1.0, reject_cost=0.25)
    e = evaluate_reject_policy(RejectPolicy.exit_only((math.inf,) * 3), out, costs)
    assert e.coverage == 1 and e.avg_flops == 4.0 and e.accuracy == pytest.approx(out.accuracy_per_exit()[-1])
    e = evaluate_reject_policy(RejectPolicy.reject_only(4, 0.6), out, costs)
    p = torch.softmax(out.logits[-1], -1).amax(-1)
    assert e.coverage == pytest.approx((p >= 0.6).double().mean().item())
    assert e.cost == pytest.approx(e.error_rate + 0.25 * (1 - e.coverage))
    assert sum(e.exit_fractions) == pytest.approx(1.0)


@pytest.mark.parametrize("budget", [1.0, 1.3, 1.8, 2.5, 3.2])
@pytest.mark.parametrize("seed", [0, 1])
def test_combined_policy_is_never_above_its_budget_on_the_calibration_split(budget, seed):
    out = _outputs(seed=seed)
    costs = CostModel((1.0, 2.0, 3.0, 4.0), 4.0, error_cost=1.0, reject_cost=0.2)
    for mode in ("combined", "exit_only"):
        cal = calibrate_reject(out, costs, flops_budget=budget, mode=mode)
        again = evaluate_reject_policy(cal.policy, out, costs)
        assert again.avg_flops <= budget + 1e-9 and cal.val == again
    combined = calibrate_reject(out, costs, flops_budget=budget).val
    exit_only = calibrate_reject(out, costs, flops_budget=budget, mode="exit_only").val
    assert combined.cost <= exit_only.cost + 1e-12  # exit-only is one of the combined policies


def test_reject_only_and_no_budget():
    out = _outputs()
    costs = CostModel((1.0, 2.0, 3.0, 4.0), 4.0, error_cost=1.0, reject_cost=0.2)
    r = calibrate_reject(out, costs, mode="reject_only")
    assert r.val.avg_flops == 4.0 and r.val.coverage < 1 and r.val.accuracy > out.accuracy_per_exit()[-1]
    free = calibrate_reject(out, costs)  # no budget: at least as good as reject-only
    assert free.val.cost <= r.val.cost + 1e-12
    with pytest.raises(ValueError, match=r"flops_budget=2 is below the cheapest reject_only policy"):
        calibrate_reject(out, costs, flops_budget=2.0, mode="reject_only")


def test_calibrate_reject_bad_input():
    out = _outputs()
    costs = CostModel((1.0, 2.0, 3.0, 4.0), 4.0)
    with pytest.raises(ValueError, match=r"flops_budget=0.5 is below .* allowed: flops_budget >= 1"):
        calibrate_reject(out, costs, flops_budget=0.5)
    with pytest.raises(ValueError, match="flops_budget must be a positive number"):
        calibrate_reject(out, costs, flops_budget=-1.0)
    with pytest.raises(ValueError, match="mode='both' is not allowed; allowed: combined, exit_only, reject_only"):
        calibrate_reject(out, costs, mode="both")
    with pytest.raises(ValueError, match="exit_flops has 3 values but there are 4 exits"):
        calibrate_reject(out, CostModel((1.0, 2.0, 3.0), 3.0))
    with pytest.raises(ValueError, match="reject_cost .* must be at most error_cost"):
        CostModel((1.0,), 1.0, error_cost=0.1, reject_cost=0.5)
    with pytest.raises(ValueError, match="give one reject threshold per exit"):
        RejectPolicy("max_prob", (0.9, 0.9), (0.5, 0.5))


# --- the exercise checks: pass on the reference, explain the usual mistakes -----------------------


def ref_risk_coverage(scores, correct):
    c = risk_coverage_curve(scores, correct)
    return c.coverage, c.risk


def _sorted_wrong(scores, correct, *, descending=True, over_all=False, accuracy=False):
    order = torch.argsort(scores, descending=descending)
    wrong = (~correct[order]).double().cumsum(0)
    k = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    risk = wrong / (len(scores) if over_all else k)
    return k / len(scores), 1 - risk if accuracy else risk


def test_check_risk_coverage(capsys):
    checks.check_risk_coverage(ref_risk_coverage)
    assert "Correct" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"\*all\* samples"):
        checks.check_risk_coverage(lambda s, c: _sorted_wrong(s, c, over_all=True))
    with pytest.raises(AssertionError, match="accuracy of the accepted"):
        checks.check_risk_coverage(lambda s, c: _sorted_wrong(s, c, accuracy=True))
    with pytest.raises(AssertionError, match="descending order"):
        checks.check_risk_coverage(lambda s, c: _sorted_wrong(s, c, descending=False))
    with pytest.raises(AssertionError, match="percent"):
        checks.check_risk_coverage(lambda s, c: (100 * ref_risk_coverage(s, c)[0], ref_risk_coverage(s, c)[1]))
    with pytest.raises(AssertionError, match="tuple"):
        checks.check_risk_coverage(lambda s, c: ref_risk_coverage(s, c)[1])
    with pytest.raises(NotImplementedError):
        checks.check_risk_coverage(lambda s, c: (_ for _ in ()).throw(NotImplementedError("Exercise")))


def _choose(scores, correct, alpha, delta, *, naive=False, no_stop=False, no_start=False, first_failure=False):
    curve = risk_coverage_curve(scores, correct)
    if naive:
        return float(curve.thresholds[(curve.risk <= alpha).nonzero().flatten()[-1]])
    p = binomial_tail(curve.n_errors, curve.n_accepted, alpha)
    n_min = 1 if no_start else math.ceil(math.log(delta) / math.log(1 - alpha))
    chosen = math.inf
    for j in range(len(p)):
        if curve.n_accepted[j] < n_min:
            continue
        if p[j] > delta:
            if no_stop:
                continue
            if first_failure:
                chosen = float(curve.thresholds[j])
            break
        chosen = float(curve.thresholds[j])
    return chosen


def test_check_guaranteed_threshold(capsys):
    checks.check_guaranteed_threshold(_choose)
    assert "Correct" in capsys.readouterr().out
    checks.check_guaranteed_threshold(lambda s, c, a, d: guaranteed_threshold(s, c, alpha=a, delta=d).threshold)
    with pytest.raises(AssertionError, match="empirical"):
        checks.check_guaranteed_threshold(lambda *a: _choose(*a, naive=True))
    with pytest.raises(AssertionError, match="stop at the first"):
        checks.check_guaranteed_threshold(lambda *a: _choose(*a, no_stop=True))
    with pytest.raises(AssertionError, match="n_min"):
        checks.check_guaranteed_threshold(lambda *a: _choose(*a, no_start=True))
    with pytest.raises(AssertionError, match="return the last one that passed"):
        checks.check_guaranteed_threshold(lambda *a: _choose(*a, first_failure=True))


def _exit_or_reject(scores, exit_t, reject_t, *, strict=False, final_continues=False):
    n = scores.shape[1]
    exits = torch.full((n,), scores.shape[0] - 1)
    rejected = torch.zeros(n, dtype=torch.bool)
    done = torch.zeros(n, dtype=torch.bool)
    for k in range(scores.shape[0]):
        s = scores[k]
        if k < scores.shape[0] - 1:
            leave = (s > exit_t[k]) if strict else (s >= exit_t[k])
            rej = ~leave & ((s <= reject_t[k]) if strict else (s < reject_t[k]))
        else:
            leave = torch.ones(n, dtype=torch.bool) if final_continues else s >= reject_t[k]
            rej = ~leave
        new = ~done & (leave | rej)
        exits[new] = k
        rejected[new] = rej[new]
        done |= new
    return exits, rejected


def test_check_exit_or_reject(capsys):
    checks.check_exit_or_reject(_exit_or_reject)
    assert "Correct" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=">="):
        checks.check_exit_or_reject(lambda *a: _exit_or_reject(*a, strict=True))
    with pytest.raises(AssertionError, match="final exit a sample cannot continue"):
        checks.check_exit_or_reject(lambda *a: _exit_or_reject(*a, final_continues=True))
    with pytest.raises(AssertionError, match="one value per sample"):
        checks.check_exit_or_reject(lambda s, e, r: (torch.zeros(3), torch.zeros(3)))


def test_empty_calibration_outputs():
    empty = ExitOutputs(torch.zeros(4, 0, 10), torch.zeros(0, dtype=torch.long), ("a", "b", "c", "d"))
    with pytest.raises(ValueError, match="calibration set is empty"):
        calibrate_reject(empty, CostModel((1.0, 2.0, 3.0, 4.0), 4.0))


# --- the figures ---------------------------------------------------------------------------------


def test_rejection_figures_are_labelled():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eelib.course import plots

    out = _outputs()
    scores = torch.softmax(out.logits, -1).amax(-1)
    curves = {n: risk_coverage_curve(scores[k], out.correct[k]) for k, n in enumerate(out.exit_names)}
    costs = CostModel((1.0, 2.0, 3.0, 4.0), 4.0)
    policy = calibrate_reject(out, costs, flops_budget=2.5).policy
    evals = [evaluate_reject_policy(policy, out, costs)]
    oracle = oracle_risk_coverage(out.correct[-1])
    figs = [plots.plot_risk_coverage(curves, oracle=oracle, alpha=0.05, chosen=(0.5, 0.01), min_coverage=0.3),
            plots.plot_reject_regions(policy, out, n=50),
            plots.plot_reject_tradeoff({"combined": evals * 2, "reject only": evals}, budget=2.5)]
    for fig in figs:
        for ax in fig.axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        plt.close(fig)
    legend = [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()]
    assert legend[0] == f"e0 (AURC {100 * curves['e0'].aurc:.2f}%)"
    assert any(t.startswith("oracle of the final exit: ") for t in legend)  # whose answers the oracle ranks
    assert figs[0].axes[0].get_xlim()[0] == pytest.approx(30)
    with pytest.raises(ValueError, match=r"min_coverage must be in \[0, 1\), got 1.5"):
        plots.plot_risk_coverage(curves, min_coverage=1.5)
    with pytest.raises(ValueError, match="curves is empty"):
        plots.plot_risk_coverage({})
    with pytest.raises(ValueError, match="the policy has 4 exits but outputs has 3"):
        plots.plot_reject_regions(policy, _outputs(exits=3))


def _true_risk_dip(t):
    """P(error | s) = 0.2 on [0.5, 0.8), else 0, s uniform: the selective risk of s >= t is 0 above 0.8,
    rises to 0.12 at 0.5 and falls to 0.06 at 0 — not monotone in the threshold."""
    wrong_mass = 0.2 * max(0.0, 0.8 - max(t, 0.5))
    return wrong_mass / (1 - t) if t < 1 else 0.0


def test_guarantee_holds_when_the_risk_is_not_monotone():
    alpha, delta, runs = 0.05, 0.1, 200
    generator = torch.Generator().manual_seed(2)
    violations, accepted_some = 0, 0
    for _ in range(runs):
        s = torch.rand(600, generator=generator, dtype=torch.float64)
        wrong = (s >= 0.5) & (s < 0.8) & (torch.rand(600, generator=generator, dtype=torch.float64) < 0.2)
        g = guaranteed_threshold(s, ~wrong, alpha=alpha, delta=delta)
        violations += _true_risk_dip(min(max(g.threshold, 0.0), 1.0)) > alpha
        accepted_some += g.n_accepted > 0
        assert g.n_accepted == int((s >= g.threshold).sum())
    # the low-risk region at the bottom (t near 0: 0.06 > alpha) must never be reached by skipping the bump
    assert violations / runs <= delta
    assert accepted_some / runs > 0.9  # the safe top region (s >= 0.73) is found, not everything rejected


def test_guarantee_holds_with_heavily_tied_scores():
    """Patience-like scores (1..4, hundreds of samples per value): a threshold cannot split a tie."""
    from eelib.rejection import binomial_upper_bound

    alpha, delta, runs = 0.1, 0.1, 200
    error_rate = {1: 0.4, 2: 0.15, 3: 0.06, 4: 0.02}
    generator = torch.Generator().manual_seed(3)
    violations = 0
    for _ in range(runs):
        s = torch.randint(1, 5, (800,), generator=generator).double()
        p = torch.tensor([error_rate[int(v)] for v in range(1, 5)], dtype=torch.float64)[s.long() - 1]
        wrong = torch.rand(800, generator=generator, dtype=torch.float64) < p
        g = guaranteed_threshold(s, ~wrong, alpha=alpha, delta=delta, measure="patience")
        assert g.threshold in (1.0, 2.0, 3.0, 4.0, math.inf)
        accepted = s >= g.threshold
        assert g.n_accepted == int(accepted.sum()) and g.n_errors == int((wrong & accepted).sum())  # ties together
        if g.n_accepted:
            assert g.risk_bound == binomial_upper_bound(g.n_errors, g.n_accepted, delta) <= alpha
        # true risk of accepting the scores >= threshold (each value is a quarter of the samples)
        values = [v for v in range(1, 5) if v >= g.threshold]
        true = sum(error_rate[v] for v in values) / len(values) if values else 0.0
        violations += true > alpha
    assert violations / runs <= delta


# --- guaranteed_threshold in O(N) memory: the same thresholds as the O(N^2) implementation ----------


def _guaranteed_threshold_quadratic(scores, correct, *, alpha, delta, measure="max_prob"):
    """guaranteed_threshold as it was before issue 26 (every candidate's exact tail at once: a
    (candidates x errors) table, O(N^2) memory), kept as the reference of the O(N) one."""
    from eelib.policies import get_measure
    from eelib.rejection import GuaranteedThreshold, binomial_upper_bound

    curve = risk_coverage_curve(scores, correct, measure)
    n = len(torch.as_tensor(scores))
    p_values = binomial_tail(curve.n_errors, curve.n_accepted, alpha).tolist()
    n_min = math.ceil(math.log(delta) / math.log1p(-alpha))
    start = int(torch.searchsorted(curve.n_accepted, torch.tensor([n_min])))
    chosen, tested = None, 0
    for j in range(start, len(p_values)):
        tested += 1
        if p_values[j] > delta:
            break
        chosen = j
    if chosen is None:
        none = math.inf if get_measure(measure).higher_is_confident else -math.inf
        return GuaranteedThreshold(none, measure, alpha, delta, 0.0, 0.0, 1.0, n, 0, 0, tested)
    n_acc, n_err = int(curve.n_accepted[chosen]), int(curve.n_errors[chosen])
    return GuaranteedThreshold(float(curve.thresholds[chosen]), measure, alpha, delta, n_acc / n, n_err / n_acc,
                               binomial_upper_bound(n_err, n_acc, delta), n, n_acc, n_err, tested)


def test_guaranteed_threshold_equals_the_quadratic_reference():
    g = torch.Generator().manual_seed(0)
    cases = 0
    for n in (1, 2, 7, 60, 300, 1500):
        for alpha, delta in ((0.05, 0.1), (0.2, 0.05), (0.01, 0.2), (0.3, 0.01)):
            for ties, measure, error_rate in ((False, "max_prob", 0.1), (True, "max_prob", 0.05), (True, "entropy", 0.2)):
                scores = torch.rand(n, dtype=torch.float64, generator=g)
                if ties:
                    scores = (scores * 20).round() / 20  # about 20 distinct values: groups of equal scores
                confident = scores if measure == "max_prob" else -scores
                correct = torch.rand(n, dtype=torch.float64, generator=g) >= error_rate * (1 - confident.sigmoid())
                got = guaranteed_threshold(scores, correct, alpha=alpha, delta=delta, measure=measure)
                assert got == _guaranteed_threshold_quadratic(scores, correct, alpha=alpha, delta=delta,
                                                              measure=measure), (n, alpha, delta, ties, measure)
                cases += got.n_accepted > 0
    assert cases >= 12  # 14 of the 72 certify a threshold: the comparison is not only of "none"


def test_guaranteed_threshold_decides_a_p_value_equal_to_delta_as_the_exact_tail_does():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(800, dtype=torch.float64, generator=g)
    correct = torch.rand(800, dtype=torch.float64, generator=g) >= 0.15 * (1 - scores)
    curve = risk_coverage_curve(scores, correct)
    p = binomial_tail(curve.n_errors, curve.n_accepted, 0.05)
    for j in (400, 500, 600):  # delta exactly at a candidate's p-value: it passes (p <= delta)
        delta = float(p[j])
        if 0 < delta < 1:
            got = guaranteed_threshold(scores, correct, alpha=0.05, delta=delta)
            assert got == _guaranteed_threshold_quadratic(scores, correct, alpha=0.05, delta=delta)


def test_guaranteed_threshold_never_builds_the_candidates_by_errors_table(monkeypatch):
    """O(N) memory: the exact tail is computed for single candidates only (those whose running-sum
    p-value is too close to delta to call), never for all candidates at once, whose table of
    log-gamma terms has (candidates x errors) entries: 2.3 GB at N = 20,000 (issue 26)."""
    from eelib import rejection

    sizes = []

    def recording_tail(errors, n, p):
        sizes.append(torch.as_tensor(n).numel())
        return binomial_tail(errors, n, p)

    monkeypatch.setattr(rejection, "binomial_tail", recording_tail)
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(20_000, dtype=torch.float64, generator=g)
    correct = torch.rand(20_000, dtype=torch.float64, generator=g) >= 0.3 * (1 - scores) ** 2
    got = rejection.guaranteed_threshold(scores, correct, alpha=0.05, delta=0.1)
    assert got.n_tested > 10_000 and got.coverage > 0.6
    assert max(sizes, default=1) == 1  # at most a few close calls, each for one candidate


def test_reject_functions_take_any_cost_description_priced_by_keywords():
    """An ExitCosts (exit_costs(model)) with the prices as keyword arguments gives what the same CostModel gives."""
    import eelib

    outputs = _outputs(exits=4)
    costs = eelib.exit_costs(eelib.EarlyExitNet(eelib.resnet(8, width=4), ("stem", "layer1", "layer2")))
    assert len(costs.exit_flops) == 4
    model = CostModel(costs.exit_flops, costs.full_flops, error_cost=1.0, reject_cost=0.1, compute_cost=0.3)
    budget = sum(costs.exit_flops[:2]) / 2
    priced = dict(error_cost=1.0, reject_cost=0.1, compute_cost=0.3)
    assert calibrate_reject(outputs, costs, flops_budget=budget, **priced) == calibrate_reject(outputs, model, flops_budget=budget)
    policy = RejectPolicy("max_prob", (0.7, 0.8, 0.9), (0.3, 0.3, 0.3, 0.5))
    assert evaluate_reject_policy(policy, outputs, costs, **priced) == evaluate_reject_policy(policy, outputs, model)
    defaults = evaluate_reject_policy(policy, outputs, costs)  # CostModel's default prices
    assert defaults == evaluate_reject_policy(policy, outputs, CostModel(costs.exit_flops, costs.full_flops))
