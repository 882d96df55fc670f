"""Chapter 4's exercise checks (exit policies): the entropy measure and routing a batch through
the exits."""

from __future__ import annotations

import math
from typing import Callable

import torch

from eelib.course.checks._common import _call, _close, _tensor, _tiny_exit_net, student_check


@student_check
def check_entropy(entropy_measure: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Check ``entropy_measure(logits)`` (nats, one value per row) against :func:`eelib.policies.entropy`.

    The answer may be in any float dtype (float64, or half precision within its rounding) and on any device.
    """
    from eelib.policies import entropy

    with torch.random.fork_rng():
        torch.manual_seed(3)
        logits = torch.randn(32, 10) * 4
    logits[0] = torch.tensor([200.0] + [0.0] * 9)  # a (numerically) certain prediction: entropy 0, no nan
    expected = entropy(logits).double()
    got = _tensor("entropy_measure", _call("entropy_measure", entropy_measure, logits.clone()),
                  f"a tensor of shape {tuple(expected.shape)} (one entropy per row)")
    if got.shape == (logits.shape[1],):
        raise AssertionError(f"got {logits.shape[1]} values, one per class, for {logits.shape[0]} rows. Hint: sum "
                             f"over the classes (dim=-1), not over the samples (dim=0): one entropy per row.")
    assert got.shape == expected.shape, (
        f"return a tensor of shape {tuple(expected.shape)} (one entropy per row), got {tuple(got.shape)}")
    if not torch.isfinite(got).all():
        raise AssertionError("some entropies are nan or inf: p * log(p) with p = 0 gives 0 * -inf. Hint: use "
                             "torch.log_softmax for log p (it is finite), and p = log_p.exp().")
    if not _close(got, expected, atol=1e-4):
        if _close(got, -expected, atol=1e-4):
            hint = "the sign is wrong: entropy is -sum p log p (it is >= 0)"
        elif _close(got, expected / math.log(2), atol=1e-4):
            hint = "these are bits (log base 2): use the natural logarithm (nats)"
        else:
            hint = "p = softmax(logits) over the classes, entropy = -sum_c p_c log p_c for each row"
        raise AssertionError(f"entropy_measure differs from eelib's by up to "
                             f"{(got.double() - expected).abs().max().item():.4f} nats. Hint: {hint}.")
    print("Correct: entropy_measure matches eelib.policies.entropy.")


@student_check
def check_route_batch(route_batch: Callable) -> None:
    """Check ``route_batch(model, x, threshold)`` -> ``(predictions, exits)`` against eelib's routing,
    and that samples that left are not processed by the later segments."""
    from eelib.vision.dynamic import route
    from eelib.policies import ExitPolicy, max_prob

    model, x = _tiny_exit_net()
    with torch.no_grad():
        scores = max_prob(torch.stack(model(x)))
    threshold = float(scores[0].quantile(0.8))  # with seed 0: 8, 11, 7 and 14 samples leave at exits 0..3
    expected_pred, expected_exits = route(ExitPolicy("max_prob", (threshold,) * (model.num_exits - 1)), model, x)
    seen = []
    hooks = [model._units[model._ends[k - 1]][1].register_forward_pre_hook(
        lambda mod, args, k=k: seen.append((k, args[0].shape[0]))) for k in range(1, model.num_exits)]
    try:
        got = _call("route_batch", route_batch, model, x.clone(), threshold)
    finally:
        for hook in hooks:
            hook.remove()
    assert isinstance(got, (tuple, list)) and len(got) == 2, "return a tuple (predictions, exits)"
    pred, exits = (_tensor("route_batch", t, "two tensors (predictions, exits)") for t in got)
    assert pred.shape == expected_pred.shape, (
        f"predictions must have shape {tuple(expected_pred.shape)}, got {tuple(pred.shape)}")
    assert exits.shape == expected_exits.shape, f"exits must have shape {tuple(expected_exits.shape)}, got {tuple(exits.shape)}"
    if not torch.equal(exits.long(), expected_exits):
        i = int((exits.long() != expected_exits).nonzero()[0])
        raise AssertionError(f"sample {i} left at exit {int(exits[i])}, expected exit {int(expected_exits[i])}. "
                             f"Hint: a sample leaves at the first exit whose max softmax probability is >= "
                             f"threshold; the final exit takes every sample still left. Keep track of which "
                             f"original index each remaining sample has.")
    if not torch.equal(pred.long(), expected_pred):
        i = int((pred.long() != expected_pred).nonzero()[0])
        raise AssertionError(f"sample {i}: predicted {int(pred[i])}, expected {int(expected_pred[i])} (the argmax of "
                             f"the exit it left at). Hint: write each prediction back at the sample's original index.")
    remaining = [(expected_exits >= k).sum().item() for k in range(1, model.num_exits)]
    for k, n in zip(range(1, model.num_exits), remaining):
        sizes = [b for j, b in seen if j == k]
        assert sizes or n == 0, f"segment {k} never ran, but {n} samples needed it"
        assert max(sizes, default=0) <= n, (f"segment {k} ran on {max(sizes)} samples, but only {n} were still in the batch: "
                                 f"remove the samples that left (h = h[keep]) so the later blocks skip them")
    print(f"Correct: the same exits and predictions as eelib's routing, and segments 1..{model.num_exits - 1} ran "
          f"on {remaining} samples only.")
