"""Dynamic inference: samples that leave at an early exit are not processed by the later blocks.

:func:`dynamic_inference` runs a batch through an :class:`~eelib.vision.exits.EarlyExitNet` segment
by segment. After each early exit it evaluates the policy on the samples still in the batch;
those that pass leave (their prediction and exit are recorded) and are **removed from the
batch**, so the next segment runs on fewer samples — per-sample routing, not "compute every
exit, then pick". Its decisions are the same as :func:`eelib.policies.apply_policy` on the
logits of every exit (tested sample by sample). Like every function that applies a policy, it
takes the policy first, then what it is applied to: ``dynamic_inference(policy, model, x)``, as
``apply_policy(policy, logits)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eelib._util.validation import check_finite
from eelib.vision.cost import exit_costs
from eelib._util.eval_mode import eval_mode
from eelib._util.timing import Timings, measure
from eelib.vision.exits import EarlyExitNet
from eelib.policies import ExitPolicy, get_measure


def _check_policy_first(policy, where: str) -> None:
    if not isinstance(policy, ExitPolicy):
        raise TypeError(f"{where}: the first argument must be the ExitPolicy (the policy comes first, as in "
                        f"apply_policy(policy, logits): {where}(policy, model, x)), got {type(policy).__name__}")


@dataclass(frozen=True)
class DynamicResult:
    """What dynamic inference did for each sample of a batch."""

    predictions: torch.Tensor  # (B,) predicted classes
    exits: torch.Tensor  # (B,) the exit each sample left at
    flops: int  # FLOPs spent on the whole batch (sum of each sample's exit cost, heads included)


@torch.inference_mode()
def route(policy: ExitPolicy, model: EarlyExitNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing loop alone: ``(predictions, exits)`` of a batch, nothing else computed.

    Written for little overhead per exit (at batch size 1 the decision must cost much less than
    a block): exactly one device-to-host sync per early exit (how many samples leave: the host
    must know it to choose the next batch), no other sync (the samples that stay are picked by a
    stable sort of the decisions and ``index_select``, never by a boolean mask, whose size the
    host would have to wait for), no bookkeeping while every sample is still in the batch, and
    the results written once at the end with ``index_copy_``.
    """
    _check_policy_first(policy, "route")
    if model.training:
        raise ValueError("model is in training mode: call model.eval() first (batch norm must use its running statistics)")
    model.check_input(x)
    policy.check(model.num_exits, model.num_classes)
    measure = get_measure(policy.measure)
    thresholds = policy.thresholds
    last = model.num_exits - 1
    n = x.shape[0]
    done: list[tuple[torch.Tensor | None, torch.Tensor, int]] = []  # (batch indices or None = all, predictions, exit)
    active: torch.Tensor | None = None  # batch indices of the samples still running; None: all of them, in order
    h, run, previous = x, None, None
    for k, (units, head) in enumerate(model.plan()):
        for unit in units:
            h = unit(h)  # (b, C, H, W) for the b samples still in the batch
        logits = head(h)
        if k == last:
            done.append((active, logits.argmax(1), k))
            break
        pred = None if measure.one_exit else logits.argmax(1)  # computed only when needed
        if pred is None:
            score = measure.fn(logits)
        else:  # patience: consecutive exits that agree, this one included
            run = torch.ones_like(pred, dtype=torch.float32) if run is None else torch.where(pred == previous, run + 1, 1.0)
            score = run
        leave = measure.passes(score, thresholds[k])
        b = leave.shape[0]
        n_leave = int(leave.item()) if b == 1 else int(leave.sum())  # the one sync of this exit
        if n_leave == 0:
            previous = pred
            continue
        if pred is None:
            pred = logits.argmax(1)
        if n_leave == b:
            done.append((active, pred, k))  # everyone left: the rest of the network is skipped
            break
        order = torch.argsort(leave.to(torch.uint8), stable=True)  # staying samples first, each group in order
        keep, gone = order[:b - n_leave], order[b - n_leave:]
        done.append((gone if active is None else active.index_select(0, gone), pred.index_select(0, gone), k))
        active = keep if active is None else active.index_select(0, keep)
        h, previous = h.index_select(0, keep), pred.index_select(0, keep)
        if run is not None:
            run = run.index_select(0, keep)
    if len(done) == 1 and done[0][0] is None:  # the whole batch left at one exit
        _, pred, k = done[0]
        return pred, torch.full_like(pred, k)
    predictions = torch.empty(n, dtype=torch.long, device=x.device)
    exits = torch.empty(n, dtype=torch.long, device=x.device)
    for index, pred, k in done:  # several groups: each has its batch indices (None only when alone, above)
        predictions.index_copy_(0, index, pred)
        exits.index_fill_(0, index, k)
    return predictions, exits


def dynamic_inference(policy: ExitPolicy, model: EarlyExitNet, x: torch.Tensor) -> DynamicResult:
    """Classify a batch with early exits, really skipping the blocks after each sample's exit.

    Args:
        policy: the measure and thresholds; must fit the model's number of exits.
        model: the early-exit network (run in eval mode: batch norm uses its running statistics;
            its training flag is restored afterwards).
        x: images ``(B, C, H, W)`` on the model's device.

    Returns:
        A :class:`DynamicResult`. ``flops`` is the sum over samples of the cost of the exit each
        took (:func:`eelib.vision.cost.exit_costs`), which equals what ``FlopCounterMode`` counts
        while the routing runs (tested).
    """
    _check_policy_first(policy, "dynamic_inference")
    model.check_input(x)
    check_finite(x, "x")
    with eval_mode(model):
        costs = exit_costs(model, tuple(x.shape[1:]))
        predictions, exits = route(policy, model, x)
    counts = torch.bincount(exits, minlength=model.num_exits).cpu()  # one transfer of num_exits numbers
    flops = int(sum(c * f for c, f in zip(counts.tolist(), costs.flops)))
    return DynamicResult(predictions, exits, flops)


@dataclass(frozen=True)
class Speedup:
    """Measured wall-clock time of dynamic inference against the full network on the same images."""

    batch_size: int
    n_images: int
    full_seconds: float  # the backbone alone (no exit heads), every image through every block
    dynamic_seconds: float  # route(): heads, decisions and routing included
    never_exit_seconds: float  # route() with a policy that never exits: every head and decision, no saving
    ideal_speedup: float  # full FLOPs / FLOPs spent by the policy on these images
    timings: Timings | None = None  # every timed pass ("full", "dynamic", "never"), their spread, the machine's load

    @property
    def speedup(self) -> float:
        return self.full_seconds / self.dynamic_seconds

    @property
    def overhead(self) -> float:
        """Measured cost of the heads and decisions: time of never-exit routing / full network - 1."""
        return self.never_exit_seconds / self.full_seconds - 1


def measure_speedup(policy: ExitPolicy, model: EarlyExitNet, images: torch.Tensor, *, batch_size: int,
                    repeats: int = 3, budget: float | None = None, max_repeats: int = 100,
                    tolerance: float = 0.05) -> Speedup:
    """Time the full network and dynamic inference over ``images`` in batches of ``batch_size``.

    Both run in inference mode on ``images``' device (timed by :func:`eelib._util.timing.timed`, which
    synchronises that device), over the same
    batches; each is timed ``repeats`` times (interleaved) after a warm-up and the fastest pass counts
    (the least disturbed by other work on the machine). The ideal speedup comes from the FLOPs
    the policy spends on exactly these images. ``never_exit_seconds`` times the same routing
    with a policy that lets no image leave early: every head and decision is paid, nothing is
    skipped — what the heads and decisions cost in time.

    With ``budget`` (seconds), the passes go on after ``repeats`` rounds until every one's runs agree
    within ``tolerance`` (median over fastest) or the budget is spent (at most ``max_repeats`` rounds:
    :func:`eelib._util.timing.measure`); without, exactly ``repeats`` rounds. Either way
    ``timings`` keeps every pass and the machine's load, and says when the figures are not to be trusted.
    """
    _check_policy_first(policy, "measure_speedup")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    model.check_input(images)
    if len(images) == 0:
        raise ValueError("images is empty: give at least one image to time")
    check_finite(images, "images")
    batches = list(torch.split(images, batch_size))

    never = ExitPolicy.never_exit(model.num_exits, policy.measure)
    runs = {"full": model.backbone, "dynamic": lambda b: route(policy, model, b),
            "never": lambda b: route(never, model, b)}
    with eval_mode(model):
        with torch.inference_mode():
            for fn in runs.values():
                for b in batches[:2]:
                    fn(b)  # warm-up
            # interleaved, so that a slow spell of the machine hits all three alike; one pass = every batch
            timings = measure({name: (lambda fn=fn: [fn(b) for b in batches]) for name, fn in runs.items()},
                              min_repeats=repeats, max_repeats=repeats if budget is None else max(repeats, max_repeats),
                              budget=budget or 1.0, tolerance=tolerance, device=images.device)
        full, dynamic, never_exit = (timings.fastest(name) for name in ("full", "dynamic", "never"))
        costs = exit_costs(model, tuple(images.shape[1:]))
        spent = sum(dynamic_inference(policy, model, b).flops for b in batches)
    return Speedup(batch_size, len(images), full, dynamic, never_exit, costs.full_flops * len(images) / spent, timings)
