"""Chapter 7's exercise check (token difficulty): the lowest threshold that keeps the agreement
with the full model at a target."""

from __future__ import annotations

from typing import Callable

import torch

from eelib.course.checks._common import _call, _tensor, student_check


@student_check
def check_threshold_for_agreement(threshold_for_agreement: Callable) -> None:
    """Check ``threshold_for_agreement(scores, agrees, target)`` against :func:`eelib.lm.exits.threshold_for_agreement`."""
    from eelib.lm.exits import threshold_for_agreement as reference

    with torch.random.fork_rng():
        torch.manual_seed(11)
        scores = torch.rand(203)  # 203 tokens: (1 - target) * N is never a whole number, so rounding up is wrong
        agrees = torch.rand(203) < 0.2 + 0.8 * scores  # confident tokens agree more often
    scores[:4] = 0.5  # ties: tokens with equal scores leave together
    for target in (0.95, 0.9, 0.8):
        expected = reference(scores, agrees, target)
        got = _tensor("threshold_for_agreement", _call("threshold_for_agreement", threshold_for_agreement,
                                                       scores.clone(), agrees.clone(), target), "one number (the threshold)")
        assert got.numel() == 1, f"return one number (the threshold), got {got.numel()} values"
        got = float(got.item())
        leave = scores >= got
        agreement = (agrees | ~leave).double().mean().item()
        if agreement < target - 1e-9:
            only_leaving = agrees[leave].float().mean().item() if leave.any() else float("nan")
            raise AssertionError(f"target {target}: with threshold {got:.4f}, {int(leave.sum())} tokens leave early and "
                                 f"the agreement over all tokens is {agreement:.4f} < {target}. Hint: a token agrees "
                                 f"if it leaves and the exit agrees, or if it does not leave (the full model agrees "
                                 f"with itself); tokens with score >= threshold leave (accuracy among leaving tokens "
                                 f"only: {only_leaving:.4f}).")
        if int(leave.sum()) < int((scores >= expected).sum()):
            share = agrees[leave].double().mean().item() if leave.any() else 1.0
            if share >= target - 1e-9:
                hint = ("the target is the agreement over all N tokens, not among the tokens that leave: the others "
                        "go on to the full model and agree, so (1 - target) * N disagreements are allowed in all")
            else:
                hint = ("choose the lowest threshold (the most tokens leaving) whose overall agreement is still >= "
                        "target: try the distinct scores from the highest down and stop before it drops below")
            raise AssertionError(f"target {target}: your threshold {got:.4f} lets {int(leave.sum())} tokens leave; the "
                                 f"lowest threshold that meets the target ({expected:.4f}) lets "
                                 f"{int((scores >= expected).sum())} leave. Hint: {hint}.")
    print("Correct: the lowest threshold that keeps the agreement at the target, for targets 0.95, 0.9 and 0.8.")
