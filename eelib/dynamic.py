"""Dynamic inference: samples that leave at an early exit are not processed by the later blocks.

:func:`dynamic_inference` runs a batch through an :class:`~eelib.exits.EarlyExitNet` segment
by segment. After each early exit it evaluates the policy on the samples still in the batch;
those that pass leave (their prediction and exit are recorded) and are **removed from the
batch**, so the next segment runs on fewer samples — per-sample routing, not "compute every
exit, then pick". Its decisions are the same as :func:`eelib.policies.apply_policy` on the
logits of every exit (tested sample by sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cost import exit_costs
from .exits import EarlyExitNet
from .policies import ExitPolicy, get_measure


@dataclass(frozen=True)
class DynamicResult:
    """What dynamic inference did for each sample of a batch."""

    predictions: torch.Tensor  # (B,) predicted classes
    exits: torch.Tensor  # (B,) the exit each sample left at
    flops: int  # FLOPs spent on the whole batch (sum of each sample's exit cost, heads included)


@torch.inference_mode()
def route(model: EarlyExitNet, x: torch.Tensor, policy: ExitPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing loop alone: ``(predictions, exits)`` of a batch, nothing else computed."""
    model.check_input(x)
    policy.check(model.num_exits, model.num_classes)
    measure = get_measure(policy.measure)
    last = model.num_exits - 1
    n = x.shape[0]
    predictions = torch.empty(n, dtype=torch.long, device=x.device)
    exits = torch.full((n,), last, dtype=torch.long, device=x.device)
    active = torch.arange(n, device=x.device)  # indices (into the batch) of the samples still running
    h, run, previous = x, None, None
    for k in range(model.num_exits):
        h = model.segment(k, h)  # (b, C, H, W) for the b samples still in the batch
        logits = model.head(k, h)
        pred = logits.argmax(1)
        if k == last:
            predictions[active] = pred
            break
        if measure.per_exit:
            score = measure.fn(logits)
        else:  # patience: consecutive exits that agree, this one included
            run = torch.ones_like(pred, dtype=torch.float32) if run is None else torch.where(pred == previous, run + 1, 1.0)
            score = run
        leave = measure.passes(score, policy.thresholds[k])
        n_leave = int(leave.sum())
        if n_leave == 0:
            previous = pred
            continue
        predictions[active[leave]] = pred[leave]
        exits[active[leave]] = k
        if n_leave == len(active):
            break  # everyone left: the rest of the network is skipped
        keep = ~leave
        active, h, previous = active[keep], h[keep], pred[keep]
        if run is not None:
            run = run[keep]
    return predictions, exits


def dynamic_inference(model: EarlyExitNet, x: torch.Tensor, policy: ExitPolicy) -> DynamicResult:
    """Classify a batch with early exits, really skipping the blocks after each sample's exit.

    Args:
        model: the early-exit network (put in eval mode here: batch norm uses its running statistics).
        x: images ``(B, C, H, W)`` on the model's device.
        policy: the measure and thresholds; must fit the model's number of exits.

    Returns:
        A :class:`DynamicResult`. ``flops`` is the sum over samples of the cost of the exit each
        took (:func:`eelib.cost.exit_costs`), which equals what ``FlopCounterMode`` counts
        while the routing runs (tested).
    """
    model.check_input(x)
    model.eval()
    costs = exit_costs(model, tuple(x.shape[1:]))
    predictions, exits = route(model, x, policy)
    flops = int(torch.as_tensor(costs.flops, dtype=torch.float64)[exits.cpu()].sum().item())
    return DynamicResult(predictions, exits, flops)
