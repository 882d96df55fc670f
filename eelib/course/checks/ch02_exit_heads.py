"""Chapter 2's exercise checks (exit heads): the accuracy of each exit and the joint loss."""

from __future__ import annotations

from typing import Callable

import torch

from eelib.course.checks._common import _call, _tensor, _tolerance, student_check


@student_check
def check_accuracy_per_exit(accuracy_per_exit: Callable[[list, torch.Tensor], list]) -> None:
    """Check ``accuracy_per_exit(logits, labels)``: a list of per-exit accuracies (fractions)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        labels = torch.randint(0, 10, (50,))
        logits = [torch.randn(50, 10) + 3 * k * torch.nn.functional.one_hot(labels, 10) for k in range(4)]
    expected = [(z.argmax(1) == labels).float().mean().item() for z in logits]
    got = _call("accuracy_per_exit", accuracy_per_exit, logits, labels)
    got = _tensor("accuracy_per_exit", got, f"a list of {len(expected)} accuracies (one per exit)").flatten()
    assert len(got) == len(expected), f"return one accuracy per exit ({len(expected)} values), got {got.tolist()!r}"
    tol = _tolerance(got.dtype, 1e-6)
    got = got.double().tolist()
    if all(abs(g - 100 * e) < 100 * tol for g, e in zip(got, expected)):
        raise AssertionError("these are percentages: return fractions between 0 and 1")
    wrong_dim = [(z.argmax(0)[:len(labels)] == labels[:z.shape[1]]).float().mean().item() for z in logits]
    for k, (g, e) in enumerate(zip(got, expected)):
        hint = ("take argmax over the classes (dim=1), not over the samples"
                if abs(g - wrong_dim[k]) < tol and abs(g - e) > tol else
                "the prediction of exit k is logits[k].argmax(dim=1); compare it with the labels and average")
        assert abs(g - e) < tol, f"exit {k}: got {g:.4f}, expected {e:.4f}. Hint: {hint}."
    print(f"Correct: accuracies of all {len(expected)} exits match.")


@student_check
def check_joint_loss(joint_loss: Callable[[list, torch.Tensor, list], torch.Tensor]) -> None:
    """Check ``joint_loss(logits, y, weights)`` = sum_k weights[k] * cross_entropy(logits[k], y)."""
    import torch.nn.functional as F

    with torch.random.fork_rng():
        torch.manual_seed(2)
        y = torch.randint(0, 10, (16,))
        logits = [torch.randn(16, 10, requires_grad=True) for _ in range(3)]
    weights = [0.3, 0.6, 1.0]
    ces = [F.cross_entropy(z, y) for z in logits]
    expected = sum(w * ce for w, ce in zip(weights, ces))
    got = _call("joint_loss", joint_loss, logits, y, weights)
    assert isinstance(got, torch.Tensor) and got.numel() == 1, (
        f"return the loss as a scalar tensor, got {type(got).__name__}"
        f"{' of shape ' + str(tuple(got.shape)) if isinstance(got, torch.Tensor) else ''}")
    assert got.requires_grad, ("the loss does not require grad: keep it a tensor built from the logits "
                               "(no .item(), no torch.no_grad()), so that backward() can train every exit")
    tol = _tolerance(got.dtype, 1e-5, expected.item())
    value = got.detach().cpu().double().item()
    if abs(value - expected.item()) > tol:
        if abs(value - sum(ces).item()) < tol:
            hint = "the weights are not applied: multiply each exit's loss by weights[k]"
        elif abs(value - expected.item() / len(ces)) < tol:
            hint = "a weighted sum, not a mean: do not divide by the number of exits"
        elif abs(value - ces[-1].item()) < tol:
            hint = "only the final exit's loss is there: add every exit's loss"
        else:
            hint = "cross-entropy of each exit's logits with the labels y, times its weight, summed"
        raise AssertionError(f"got {value:.5f}, expected {expected.item():.5f}. Hint: {hint}.")
    print("Correct: the joint loss matches sum_k w_k * CE(logits_k, y).")
