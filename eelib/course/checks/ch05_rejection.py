"""Chapter 5's exercise checks (rejection): the risk–coverage curve, a threshold with a guaranteed
risk, and exit-or-reject decisions."""

from __future__ import annotations

from typing import Callable

import torch

from eelib.course.checks._common import _call, _close, _tensor, student_check


def _tensor_or_fail(name: str, value, n: int) -> torch.Tensor:
    t = _tensor(name, value, f"a tensor (or list) of {n} numbers").flatten()
    assert len(t) == n, f"{name} has {len(t)} values, expected {n} (one per sample)"
    return t


@student_check
def check_risk_coverage(risk_coverage: Callable) -> None:
    """Check ``risk_coverage(scores, correct)`` -> ``(coverage, risk)``: one point per sample, the most
    confident first, against :func:`eelib.rejection.risk_coverage_curve` (distinct scores, max probability)."""
    from eelib.rejection import risk_coverage_curve

    with torch.random.fork_rng():
        torch.manual_seed(5)
        scores = torch.rand(40) * 0.9 + 0.1
        correct = torch.rand(40) < 0.4 + 0.6 * scores
    correct[scores.argmax()] = False  # the most confident sample is wrong: the order shows
    expected = risk_coverage_curve(scores, correct)
    got = _call("risk_coverage", risk_coverage, scores.clone(), correct.clone())
    assert isinstance(got, (tuple, list)) and len(got) == 2, "return a tuple (coverage, risk)"
    cov, risk = (_tensor_or_fail(name, g, len(scores)) for name, g in zip(("coverage", "risk"), got))
    n = len(scores)
    if not _close(cov, expected.coverage, atol=1e-6):
        if _close(cov, 100 * expected.coverage, atol=1e-4):
            raise AssertionError("coverage is in percent: return fractions between 0 and 1")
        raise AssertionError(f"coverage starts {cov[:3].double().tolist()}, expected {expected.coverage[:3].tolist()}. "
                             f"Hint: point k accepts the k most confident samples: coverage = k / {n}, k = 1..{n}.")
    if not _close(risk, expected.risk, atol=1e-6):
        order = torch.argsort(scores, descending=True)
        wrong = (~correct[order]).double()
        k = torch.arange(1, n + 1, dtype=torch.float64)
        ascending = torch.cumsum((~correct[torch.argsort(scores)]).double(), 0) / k
        if _close(risk, torch.cumsum(wrong, 0) / n, atol=1e-6):
            hint = ("that is the error count over *all* samples; the selective risk divides by the number of "
                    "*accepted* samples (k)")
        elif _close(risk, 1 - torch.cumsum(wrong, 0) / k, atol=1e-6):
            hint = "that is the accuracy of the accepted samples; the risk is the fraction that is wrong"
        elif _close(risk, ascending, atol=1e-6):
            hint = "the least confident samples come first: sort the scores in descending order"
        else:
            hint = "sort by score, most confident first; risk[k-1] = errors among the first k / k"
        i = int((risk.double() - expected.risk).abs().argmax())
        raise AssertionError(f"risk at coverage {float(expected.coverage[i]):.3f}: got {float(risk[i]):.4f}, "
                             f"expected {float(expected.risk[i]):.4f}. Hint: {hint}.")
    print(f"Correct: the risk-coverage curve matches eelib's ({n} points, AURC {expected.aurc:.4f}).")


@student_check
def check_guaranteed_threshold(choose_threshold: Callable) -> None:
    """Check ``choose_threshold(scores, correct, alpha, delta)`` -> threshold against
    :func:`eelib.rejection.guaranteed_threshold` (max probability), on three calibration sets."""
    import math

    from eelib.rejection import binomial_tail, guaranteed_threshold, risk_coverage_curve

    cases = []
    with torch.random.fork_rng():
        torch.manual_seed(6)
        for n, alpha, delta in ((1000, 0.05, 0.1), (600, 0.02, 0.05), (100, 0.01, 0.1)):
            scores = torch.rand(n, dtype=torch.float64)
            correct = torch.rand(n, dtype=torch.float64) >= 0.3 * (1 - scores) ** 2
            correct[torch.argsort(scores, descending=True)[min(250, n - 1)]] = False  # an early error
            cases.append((scores, correct, alpha, delta))
    for scores, correct, alpha, delta in cases:
        expected = guaranteed_threshold(scores, correct, alpha=alpha, delta=delta)
        got = _tensor("choose_threshold", _call("choose_threshold", choose_threshold, scores.clone(), correct.clone(),
                                                 alpha, delta), "one threshold (a float)")
        assert got.numel() == 1, f"return one threshold (a float), got {got.numel()} values"
        # a threshold returned in a lower precision is compared with the expected ones rounded alike
        dtype = got.dtype if got.dtype.is_floating_point else torch.float64
        same = lambda a, b: a == torch.tensor(b, dtype=dtype).item()  # noqa: E731
        got = float(got.item())
        if same(got, expected.threshold) or (math.isinf(got) and math.isinf(expected.threshold)):
            continue
        curve = risk_coverage_curve(scores, correct)
        p = binomial_tail(curve.n_errors, curve.n_accepted, alpha)
        ok = (curve.risk <= alpha).nonzero().flatten()
        naive = curve.thresholds[ok[-1]].item() if len(ok) else math.nan
        anywhere = (p <= delta).nonzero().flatten()
        n_min = math.ceil(math.log(delta) / math.log1p(-alpha))
        if same(got, naive):
            hint = ("that threshold has an *empirical* risk <= alpha; on new data it is above alpha about half "
                    "the time. Test each candidate: p = binomial_tail(errors, accepted, alpha), certified if "
                    "p <= delta")
        elif len(anywhere) and same(got, curve.thresholds[anywhere[-1]].item()):
            hint = ("stop at the first candidate whose p-value is above delta (fixed-sequence testing): going on "
                    "past a failure loses the guarantee")
        elif any(same(got, curve.thresholds[j].item()) and j > 0 and curve.thresholds[j - 1].item() == expected.threshold
                 for j in range(len(curve.thresholds))):
            hint = ("that is the first candidate whose p-value is above delta: return the last one that passed, "
                    "the one before it")
        elif math.isinf(got):
            hint = (f"the first candidates accept too few samples to pass even with no error: start at the first "
                    f"one that accepts at least n_min = ceil(log(delta) / log(1 - alpha)) = {n_min} samples")
        else:
            hint = ("candidates are the distinct scores from the highest down; start at the first that accepts "
                    "n_min samples, keep the last one with p <= delta, stop at the first with p > delta")
        raise AssertionError(f"n={len(scores)}, alpha={alpha}, delta={delta}: got threshold {got:.4f}, expected "
                             f"{expected.threshold:.4f} (coverage {expected.coverage:.3f}). Hint: {hint}.")
    print(f"Correct: the same thresholds as eelib.guaranteed_threshold on all {len(cases)} calibration sets.")


@student_check
def check_exit_or_reject(exit_or_reject: Callable) -> None:
    """Check ``exit_or_reject(scores, exit_thresholds, reject_thresholds)`` -> ``(exits, rejected)`` for
    max-probability scores ``(E, N)`` against :class:`eelib.rejection.RejectPolicy`'s decisions."""
    from eelib.rejection import RejectPolicy, decide_all

    with torch.random.fork_rng():
        torch.manual_seed(7)
        scores = torch.rand(4, 60) * 0.9 + 0.1
    exit_t, reject_t = (0.9, 0.8, 0.7), (0.2, 0.3, 0.4, 0.5)
    scores[0, 0], scores[1, 1] = 0.9, 0.3  # scores exactly at a threshold: >= passes
    expected_exits, expected_rej = decide_all(RejectPolicy("max_prob", exit_t, reject_t), scores)
    got = _call("exit_or_reject", exit_or_reject, scores.clone(), exit_t, reject_t)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "return a tuple (exits, rejected)"
    exits = _tensor("exit_or_reject", got[0], "a tensor of exit indices").long().flatten()
    rejected = _tensor("exit_or_reject", got[1], "a tensor of booleans (rejected)").bool().flatten()
    n = scores.shape[1]
    assert len(exits) == n and len(rejected) == n, f"exits and rejected need one value per sample ({n})"
    if not (torch.equal(exits, expected_exits) and torch.equal(rejected, expected_rej)):
        i = int(((exits != expected_exits) | (rejected != expected_rej)).nonzero()[0])
        want = f"exit {int(expected_exits[i])}, {'rejected' if expected_rej[i] else 'accepted'}"
        have = f"exit {int(exits[i])}, {'rejected' if rejected[i] else 'accepted'}"
        trace = ", ".join(f"{float(s):.3f}" for s in scores[:, i])
        if i in (0, 1):
            hint = ("a score equal to a threshold passes it (>=): exactly at the exit threshold exits, at the "
                    "reject threshold continues")
        elif int(exits[i]) > scores.shape[0] - 1 or (int(expected_exits[i]) == scores.shape[0] - 1 and not rejected[i]
                                                     and expected_rej[i]):
            hint = ("at the final exit a sample cannot continue: accept it if its score >= the last reject "
                    "threshold, else reject it")
        else:
            hint = ("at each early exit k: score >= exit_thresholds[k] -> exit (accepted); else score < "
                    "reject_thresholds[k] -> rejected there; else continue")
        raise AssertionError(f"sample {i} (scores {trace}): got {have}, expected {want}. Hint: {hint}.")
    print(f"Correct: the same exits and rejections as eelib's RejectPolicy for all {n} samples "
          f"({int(expected_rej.sum())} rejected).")
