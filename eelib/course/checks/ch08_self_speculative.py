"""Chapter 8's exercise checks (self-speculative decoding): the tokens a round accepts and the
expected tokens per round."""

from __future__ import annotations

from typing import Callable

import torch

from eelib.course.checks._common import _call, _tensor, student_check


@student_check
def check_accepted_tokens(accepted_tokens: Callable) -> None:
    """Check ``accepted_tokens(drafts, verified)`` against :func:`eelib.lm.speculative.accepted_tokens`."""
    from eelib.lm.speculative import accepted_tokens as reference

    cases = [([1, 2, 3, 4], [1, 9, 3, 4, 5]), ([5, 7, 9], [5, 7, 2, 4]), ([5, 7, 9], [5, 7, 9, 4]),
             ([5, 7, 9], [1, 7, 9, 4]), ([], [8]), ([3, 3, 3], [3, 3, 1, 3])]
    for drafts, verified in cases:
        expected = reference(drafts, verified)
        got = _tensor("accepted_tokens", _call("accepted_tokens", accepted_tokens, list(drafts), list(verified)),
                      "a list of token ids").flatten()
        got = [int(t) for t in got.tolist()]
        if got == expected:
            continue
        if got == expected[:-1]:
            hint = "the round also produces the full model's token after the accepted drafts (the bonus token)"
        elif len(got) > len(expected):
            hint = ("stop at the first draft that differs from the full model's token: the drafts after it were "
                    "conditioned on a wrong token")
        elif got and len(got) <= len(drafts) and got[-1] == drafts[len(got) - 1] and got[-1] != verified[len(got) - 1]:
            hint = "the last token is the full model's (verified), not the rejected draft"
        else:
            hint = "accepted drafts are the longest prefix of drafts equal to verified; then add verified at that position"
        raise AssertionError(f"drafts {drafts}, verified {verified}: expected {expected}, got {got}. Hint: {hint}.")
    print("Correct: the longest agreeing prefix of the drafts, then the full model's token, in every case.")


@student_check
def check_tokens_per_round(tokens_per_round: Callable) -> None:
    """Check ``tokens_per_round(acceptance, max_draft)`` against :func:`eelib.lm.speculative.expected_tokens_per_round`."""
    from eelib.lm.speculative import expected_tokens_per_round as reference

    for a, k in ((0.0, 4), (0.5, 1), (0.5, 4), (0.8, 8), (1.0, 5), (0.3, 16)):
        expected = reference(a, k)
        got = _tensor("tokens_per_round", _call("tokens_per_round", tokens_per_round, a, k), "one number")
        assert got.numel() == 1, f"return one number (the expected tokens per round), got {got.numel()} values"
        got = float(got.item())
        if abs(got - expected) <= 1e-6 * max(1, expected):
            continue
        if abs(got - (expected - 1)) <= 1e-6 * max(1, expected):
            hint = "count the bonus token: every round produces one token more than it accepts"
        elif abs(got - (1 + a * k)) <= 1e-6 * max(1, expected):
            hint = ("draft i is only used if drafts 1..i-1 were all accepted: it counts with probability a^i, "
                    "not a")
        elif a < 1 and abs(got - 1 / (1 - a)) <= 1e-6 * max(1, expected):
            hint = "the draft is at most max_draft long: sum a^i for i = 0..max_draft only"
        else:
            hint = "a round makes 1 + (number of accepted drafts); draft i is accepted only if all before it are"
        raise AssertionError(f"acceptance {a}, max_draft {k}: expected {expected:.4f} tokens per round, got {got:.4f}. "
                             f"Hint: {hint}.")
    print("Correct: expected tokens per round for every acceptance rate and draft length tried.")
