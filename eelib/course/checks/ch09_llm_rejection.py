"""Chapter 9's exercise check (rejection for language models): the threshold of one token exit with
CALM's consistency guarantee (the binomial test and fixed-sequence testing of chapter 5)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from eelib.course.checks._common import _call, _tensor, student_check


def _reference(scores: torch.Tensor, agrees: torch.Tensor, epsilon: float, delta: float) -> float:
    """eelib's :func:`eelib.lm.rejection.consistency_threshold` on one early exit, the distinct scores as candidates."""
    from eelib.lm.rejection import TokenScores, consistency_threshold

    n = len(scores)
    data = TokenScores(torch.stack([scores, torch.ones(n)]), torch.stack([(~agrees).long(), torch.zeros(n, dtype=torch.long)]),
                       torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), ("exit", "final"), (1, 2), 2)
    return consistency_threshold(data, epsilon=epsilon, delta=delta, candidates=torch.unique(scores).flip(0).tolist()).threshold


@student_check
def check_consistency_threshold(consistency_threshold: Callable) -> None:
    """Check ``consistency_threshold(scores, agrees, epsilon, delta)`` against :func:`eelib.lm.rejection.consistency_threshold`."""
    from eelib.rejection import binomial_tail

    with torch.random.fork_rng():
        torch.manual_seed(9)
        scores = torch.rand(600)
        agrees = torch.rand(600) < 0.3 + 0.7 * scores ** 0.5  # confident tokens agree more often
    scores[:5] = 0.97  # ties: tokens with equal scores leave together
    for epsilon, delta in ((0.05, 0.1), (0.1, 0.1), (0.05, 0.01)):
        expected = _reference(scores, agrees, epsilon, delta)
        got = _tensor("consistency_threshold", _call("consistency_threshold", consistency_threshold, scores.clone(),
                                                     agrees.clone(), epsilon, delta), "one number")
        assert got.numel() == 1, f"return one number (the threshold), got {got.numel()} values"
        got = float(got.item())
        if got == expected or (math.isinf(got) and math.isinf(expected)):
            continue
        leave = scores >= got
        k, n = int((leave & ~agrees).sum()), len(scores)
        p = float(binomial_tail(k, n, epsilon))
        if got < expected:
            hint = (f"with your threshold {k} of the {n} tokens leave and disagree, and the p-value "
                    f"P(Binomial({n}, {epsilon}) <= {k}) = {p:.3f} is above delta: not certified. Count the "
                    f"disagreements over all N tokens (the others go on to the full model and agree), and stop "
                    f"at the first candidate that fails") if p > delta else (
                    "a lower threshold than the fixed sequence reaches: walk from the highest score down and stop at "
                    "the first candidate whose p-value is above delta")
        else:
            hint = ("too strict: keep walking down while P(Binomial(N, epsilon) <= k) <= delta, with N all the tokens "
                    "(not only those that leave) and k the leaving tokens that disagree; return the last certified "
                    "score")
        raise AssertionError(f"epsilon {epsilon}, delta {delta}: your threshold {got:.4f} lets {int(leave.sum())} tokens "
                             f"leave; the guaranteed one ({expected:.4f}) lets {int((scores >= expected).sum())} leave. "
                             f"Hint: {hint}.")
    print("Correct: the consistency threshold with its guarantee, for (epsilon, delta) = (0.05, 0.1), (0.1, 0.1), "
          "(0.05, 0.01).")
