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


@student_check
def check_round_speed(tokens_per_second: Callable) -> None:
    """Check ``tokens_per_second(acceptance, drafts, draft_layer, n_layers, block_us, draft_head_us, final_head_us,
    overhead_us)`` against the speed model's closed form (:func:`eelib.lm.speed.speculative_round_cost` and
    :func:`eelib.lm.speculative.expected_tokens_per_round`)."""
    from eelib.lm.speculative import expected_tokens_per_round
    from eelib.lm.speed import speculative_round_cost

    block_us = {1: 92.0, 2: 112.0, 3: 126.0, 4: 139.0, 5: 148.0, 6: 156.0, 7: 160.0, 8: 164.0, 9: 168.0}
    final_head_us = {r: 55.0 + 4.0 * (r - 1) for r in block_us}
    cases = [(0.6, 2, 2, 8, 28.0, 60.0), (0.0, 1, 1, 8, 28.0, 40.0), (0.9, 8, 2, 8, 55.0, 80.0), (1.0, 3, 4, 8, 28.0, 0.0)]
    for a, k, L, N, draft_us, over_us in cases:
        tokens = expected_tokens_per_round(a, k)
        seconds = 1e-6 * speculative_round_cost(block_us.__getitem__, draft_us, final_head_us.__getitem__, n_layers=N,
                                                draft_layer=L, drafts=k, round_overhead=over_us)
        expected = tokens / seconds
        got = _tensor("tokens_per_second", _call("tokens_per_second", tokens_per_second, a, k, L, N, dict(block_us),
                                                 draft_us, dict(final_head_us), over_us), "one number")
        assert got.numel() == 1, f"return one number (the predicted tokens per second), got {got.numel()} values"
        got = float(got.item())
        if abs(got - expected) <= 1e-6 * expected:
            continue
        close = lambda value: abs(got - value) <= 1e-6 * max(abs(value), 1e-12)  # noqa: E731
        rows_free = 1e-6 * speculative_round_cost(lambda r: block_us[1], draft_us, lambda r: final_head_us[1], n_layers=N,
                                                  draft_layer=L, drafts=k, round_overhead=over_us)
        if close((tokens - 1) / seconds):
            hint = "a round also yields the full model's token after the accepted drafts: 1 + a + ... + a^k tokens"
        elif close(expected * 1e6) or close(expected / 1e6):
            hint = "the times are in microseconds: a second is 1e6 µs"
        elif close(tokens / rows_free):
            hint = ("the verification runs k + 1 rows in each call: use block_us[k + 1] and final_head_us[k + 1], "
                    "not the one-row times")
        elif close(1 / seconds):
            hint = "divide the tokens a round yields (1 + a + ... + a^k), not one token, by the round's time"
        else:
            hint = ("a round: (k + 1) positions x L one-row block calls, k draft heads, N - L block calls of k + 1 "
                    "rows, the final head on k + 1 rows, and the overhead")
        raise AssertionError(f"acceptance {a}, {k} drafts from layer {L} of {N}: expected {expected:.1f} tokens per "
                             f"second, got {got:.1f}. Hint: {hint}.")
    print("Correct: tokens per second from the acceptance rate and the measured costs, in every case.")
