"""Exit policies: how confident an exit is, when a sample may leave, and how to choose thresholds.

A *confidence measure* turns an exit's logits into one number per sample (:data:`MEASURES`):

* ``max_prob`` — the largest softmax probability, in [1/C, 1]; higher = more confident;
* ``entropy`` — the softmax distribution's entropy in nats, in [0, ln C]; *lower* = more confident;
* ``margin`` — top-1 minus top-2 probability, in [0, 1]; higher = more confident;
* ``patience`` — how many consecutive exits, ending at this one, predict the same class
  (Zhou et al., 2020, "BERT Loses Patience"), in 1..k+1 at exit k; higher = more confident.

An :class:`ExitPolicy` is a measure and one threshold per *early* exit: a sample leaves at the
first exit whose measure passes its threshold (``>=``, or ``<=`` for entropy); the final exit
takes every sample still left, so it has no threshold. :func:`apply_policy` applies a policy to
logits that were all computed (the *simulation*); :mod:`eelib.vision.dynamic` applies the same policy
while really skipping the later blocks, with the same decisions.

:func:`oracle_exits` is the limit of any policy on these exits: every sample leaves at the
earliest exit that is right, and a sample that no exit gets right leaves at the first exit
(computing more cannot make it right). No policy is more accurate, and no policy reaching its
accuracy is cheaper (a policy can be cheaper than the oracle only by being less accurate). :func:`calibrate` chooses thresholds on the validation split (algorithm in its
docstring).
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from eelib.outputs import ExitOutputs
from eelib._util.validation import as_thresholds, check_finite, check_logits, check_max_candidates


def max_prob(logits: torch.Tensor) -> torch.Tensor:
    """Largest softmax probability of each row: ``(..., C)`` -> ``(...)``."""
    return F.softmax(logits.float(), -1).amax(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row's softmax distribution: ``-sum p log p``, ``(..., C)`` -> ``(...)``."""
    logp = F.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 softmax probability of each row: ``(..., C)`` -> ``(...)``."""
    top2 = F.softmax(logits.float(), -1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def patience(logits: torch.Tensor) -> torch.Tensor:
    """Run length of agreeing predictions: ``(E, N, C)`` -> ``(E, N)``; 1 at exit 0, +1 per agreeing exit."""
    if logits.ndim != 3:
        raise ValueError(f"patience needs the logits of every exit, shape (E, N, C), got {tuple(logits.shape)}")
    preds = logits.argmax(-1)
    runs = [torch.ones(preds.shape[1:], dtype=torch.float32, device=preds.device)]
    for k in range(1, preds.shape[0]):
        runs.append(torch.where(preds[k] == preds[k - 1], runs[-1] + 1, 1.0))
    return torch.stack(runs)


@dataclass(frozen=True)
class Measure:
    """A confidence measure: its function, its direction and its range."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    higher_is_confident: bool
    one_exit: bool  # True: computed from one exit's logits; False: needs all exits so far (patience)

    def range(self, num_classes: int, num_exits: int) -> tuple[float, float]:
        """The values the measure can take (thresholds must lie in it)."""
        return {"max_prob": (1 / num_classes, 1.0), "entropy": (0.0, math.log(num_classes)),
                "margin": (0.0, 1.0), "patience": (1.0, float(num_exits))}[self.name]

    @property
    def per_exit(self) -> bool:
        """Deprecated name of `one_exit` (``calibrate(per_exit=)`` means one threshold per exit, not this)."""
        import warnings

        warnings.warn("Measure.per_exit is now Measure.one_exit", DeprecationWarning, stacklevel=2)
        return self.one_exit

    def passes(self, score: torch.Tensor | float, threshold: float) -> torch.Tensor | bool:
        """The exit decision, the one rule of the package: is ``score`` confident enough to leave?

        ``score >= threshold`` for a higher-is-confident measure, ``score <= threshold`` for entropy;
        elementwise for a tensor, a ``bool`` for a number. Simulation (`first_exits`), routing
        (`eelib.vision.dynamic.route`), generation (`eelib.lm.generate`), speculative drafting
        (`eelib.lm.speculative`), CALM's gates (`eelib.lm.confidence`) and rejection
        (`eelib.rejection.decide`) all decide with it.
        """
        return score >= threshold if self.higher_is_confident else score <= threshold


MEASURES: dict[str, Measure] = {
    "max_prob": Measure("max_prob", max_prob, True, True),
    "entropy": Measure("entropy", entropy, False, True),
    "margin": Measure("margin", margin, True, True),
    "patience": Measure("patience", patience, True, False),
}


def get_measure(name: str) -> Measure:
    if name not in MEASURES:
        raise ValueError(f"measure={name!r} is not a confidence measure; allowed: {', '.join(MEASURES)}")
    return MEASURES[name]


def confidence(logits: torch.Tensor, measure: str = "max_prob") -> torch.Tensor:
    """The measure at every exit: logits ``(E, N, C)`` -> scores ``(E, N)``."""
    m = get_measure(measure)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (num_exits, N, num_classes), got {tuple(logits.shape)}")
    return m.fn(logits)


@dataclass(frozen=True)
class ExitPolicy:
    """A confidence measure and one threshold per early exit (the final exit takes the rest).

    Example: ``ExitPolicy("max_prob", (0.9, 0.9, 0.8))`` for a model with 4 exits.
    """

    measure: str
    thresholds: tuple[float, ...]

    def __post_init__(self) -> None:
        get_measure(self.measure)
        object.__setattr__(self, "thresholds", as_thresholds(self.thresholds, "thresholds"))

    def check(self, num_exits: int, num_classes: int) -> None:
        """Raise a ValueError unless the policy fits a model with these exits and classes."""
        if len(self.thresholds) != num_exits - 1:
            raise ValueError(f"thresholds has {len(self.thresholds)} values but the model has {num_exits} exits: "
                             f"give one per early exit ({num_exits - 1}); the final exit takes every sample left")
        lo, hi = get_measure(self.measure).range(num_classes, num_exits)
        bad = [t for t in self.thresholds if not math.isinf(t) and not lo - 1e-9 <= t <= hi + 1e-9]
        if bad:
            raise ValueError(f"thresholds {bad} are outside the range of {self.measure}: [{lo:.4g}, {hi:.4g}] "
                             f"(use inf / -inf to never / always exit)")

    @classmethod
    def never_exit(cls, num_exits: int, measure: str = "max_prob") -> "ExitPolicy":
        """The policy that sends every sample to the final exit (the full network)."""
        never = math.inf if get_measure(measure).higher_is_confident else -math.inf
        return cls(measure, (never,) * (num_exits - 1))


@dataclass(frozen=True)
class PolicyResult:
    """Where each sample left and what it predicted."""

    predictions: torch.Tensor  # (N,) the class predicted at the exit each sample took
    exits: torch.Tensor  # (N,) exit index of each sample


def first_exits(scores: torch.Tensor, thresholds: Sequence[float], measure: Measure) -> torch.Tensor:
    """The exit each sample leaves at: the first whose score passes its threshold, else the last.

    Args:
        scores: the measure at every exit, ``(E, N)``.
        thresholds: one per early exit (``E - 1``).
    """
    if len(thresholds) != scores.shape[0] - 1:
        raise ValueError(f"thresholds has {len(thresholds)} values for {scores.shape[0]} exits: give one per early exit")
    leave = [measure.passes(scores[k], t) for k, t in enumerate(thresholds)]
    leave.append(torch.ones_like(scores[-1], dtype=torch.bool))  # the final exit takes every sample left
    return torch.stack(leave).to(torch.uint8).argmax(0)  # argmax returns the first of equal maxima


def apply_policy(policy: ExitPolicy, logits: torch.Tensor) -> PolicyResult:
    """Simulate a policy on the logits of every exit ``(E, N, C)`` (all computed beforehand)."""
    if not isinstance(policy, ExitPolicy):
        raise TypeError(f"apply_policy takes the ExitPolicy first, then the logits: apply_policy(policy, logits); "
                        f"got {type(policy).__name__} as the policy")
    check_logits(logits)
    num_exits, n, num_classes = logits.shape
    policy.check(num_exits, num_classes)
    check_finite(logits, "logits")
    measure = get_measure(policy.measure)
    exits = first_exits(measure.fn(logits), policy.thresholds, measure)
    predictions = logits.argmax(-1).gather(0, exits[None]).squeeze(0)
    return PolicyResult(predictions, exits)


def oracle_exits(outputs: ExitOutputs) -> PolicyResult:
    """The oracle: each sample leaves at the earliest exit that is right (first exit if none is).

    It has the best accuracy any policy on these exits can have, at the lowest cost that reaches it.
    """
    correct = outputs.correct
    any_right = correct.any(0)
    exits = torch.where(any_right, correct.float().argmax(0), torch.zeros_like(outputs.labels))
    predictions = outputs.predictions.gather(0, exits[None]).squeeze(0)
    return PolicyResult(predictions, exits)


@dataclass(frozen=True)
class PolicyEval:
    """How a policy does on a data set: accuracy, average cost and where samples leave."""

    accuracy: float  # fraction right
    avg_flops: float  # mean FLOPs per sample (exit heads evaluated on the way included)
    full_flops: float  # FLOPs of the backbone alone (the network without exits)
    exit_fractions: tuple[float, ...]  # fraction of samples leaving at each exit

    @property
    def flops_saved(self) -> float:
        """1 - avg_flops / full_flops (a fraction; negative if the heads cost more than they save)."""
        return 1 - self.avg_flops / self.full_flops

    @property
    def ideal_speedup(self) -> float:
        return self.full_flops / self.avg_flops


class FlopsPerExit:
    """What the cost descriptions of both halves share (`eelib.vision.cost.ExitCosts`,
    `eelib.lm.generate.TokenCosts`): ``flops`` per exit and ``full_flops``, named as every
    ``evaluate*`` / ``calibrate*`` reads them."""

    flops: tuple[int, ...]
    full_flops: int

    @property
    def exit_flops(self) -> tuple[int, ...]:
        """``flops`` under the name every cost description has (`exit_and_full_flops`)."""
        return self.flops

    @property
    def relative_flops(self) -> tuple[float, ...]:
        """``flops[k] / full_flops``: each exit's cost as a fraction of the network without exits."""
        return tuple(f / self.full_flops for f in self.flops)


CostDescription = Any  # an object with ``exit_flops`` (per exit) and ``full_flops``: see exit_and_full_flops


def exit_and_full_flops(costs: CostDescription, full_flops: float | None = None) -> tuple[Sequence[float], float]:
    """``(exit_flops, full_flops)`` of a cost description: the one kind of cost every ``evaluate*`` and
    ``calibrate*`` function takes.

    A cost description is any object with ``exit_flops`` (the FLOPs of a sample that leaves at each
    exit, heads on the way included) and ``full_flops`` (the network without exits, the reference for
    savings): :func:`eelib.vision.cost.exit_costs`'s `ExitCosts`, :func:`eelib.lm.generate.token_exit_costs`'s
    `TokenCosts`, or chapter 5's `eelib.rejection.CostModel` (which adds the prices of errors and
    rejections). The two numbers may also be given as they are, ``(exit_flops, full_flops)``.
    """
    if full_flops is not None:
        return costs, full_flops
    if not (hasattr(costs, "exit_flops") and hasattr(costs, "full_flops")):
        raise TypeError(f"costs must be a cost description with exit_flops and full_flops (eelib.exit_costs(model), "
                        f"eelib.token_exit_costs(ee), eelib.CostModel), or give exit_flops and full_flops; "
                        f"got {type(costs).__name__}")
    return costs.exit_flops, costs.full_flops


def _check_costs(exit_flops: Sequence[float], num_exits: int) -> torch.Tensor:
    costs = torch.as_tensor(list(exit_flops), dtype=torch.float64)
    if costs.shape != (num_exits,):
        raise ValueError(f"exit_flops has {len(costs)} values but there are {num_exits} exits")
    return costs


def evaluate_result(result: PolicyResult, labels: torch.Tensor, costs: CostDescription,
                    full_flops: float | None = None) -> PolicyEval:
    """Accuracy, average FLOPs and exit histogram of a :class:`PolicyResult`.

    Args:
        costs: what a sample costs at each exit (a cost description, see :func:`exit_and_full_flops`).
    """
    exit_flops, full_flops = exit_and_full_flops(costs, full_flops)
    costs = torch.as_tensor(list(exit_flops), dtype=torch.float64)
    if len(result.exits) and int(result.exits.max()) >= len(costs):
        raise ValueError(f"exit_flops has {len(costs)} values but a sample left at exit {int(result.exits.max())}")
    counts = torch.bincount(result.exits, minlength=len(costs)).double()
    return PolicyEval(accuracy=(result.predictions == labels).double().mean().item(),
                      avg_flops=costs[result.exits].mean().item(), full_flops=float(full_flops),
                      exit_fractions=tuple((counts / len(labels)).tolist()))


def evaluate_policy(policy: ExitPolicy, outputs: ExitOutputs, costs: CostDescription,
                    full_flops: float | None = None) -> PolicyEval:
    """Simulate ``policy`` on ``outputs`` and measure it (see :func:`evaluate_result`)."""
    exit_flops, full_flops = exit_and_full_flops(costs, full_flops)
    _check_costs(exit_flops, outputs.num_exits)
    check_finite(outputs.logits, "outputs.logits")
    return evaluate_result(apply_policy(policy, outputs.logits), outputs.labels, exit_flops, full_flops)


def evaluate_oracle(outputs: ExitOutputs, costs: CostDescription, full_flops: float | None = None) -> PolicyEval:
    """The oracle's accuracy and cost: the best accuracy on these exits, at the least cost that reaches it."""
    exit_flops, full_flops = exit_and_full_flops(costs, full_flops)
    _check_costs(exit_flops, outputs.num_exits)
    return evaluate_result(oracle_exits(outputs), outputs.labels, exit_flops, full_flops)


def static_exit(outputs: ExitOutputs, k: int, costs: CostDescription, full_flops: float | None = None) -> PolicyEval:
    """Every sample leaves at exit ``k`` (a smaller network with no choice)."""
    exit_flops, full_flops = exit_and_full_flops(costs, full_flops)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < outputs.num_exits:
        raise ValueError(f"exit {k!r} does not exist: there are {outputs.num_exits} exits (0..{outputs.num_exits - 1})")
    _check_costs(exit_flops, outputs.num_exits)
    exits = torch.full_like(outputs.labels, k)
    return evaluate_result(PolicyResult(outputs.predictions[k], exits), outputs.labels, exit_flops, full_flops)


def candidate_thresholds(outputs: ExitOutputs, measure: str, *, max_candidates: int = 200,
                         _scores: torch.Tensor | None = None) -> list[float]:
    """Threshold values worth trying: quantiles of the early exits' scores, plus 'never exit'."""
    check_max_candidates(max_candidates)
    m = get_measure(measure)
    scores = (confidence(outputs.logits, measure) if _scores is None else _scores)[:-1].flatten().double()
    qs = torch.linspace(0, 1, max_candidates, dtype=torch.float64)
    values = sorted(set(torch.quantile(scores, qs).tolist()))
    lo, hi = m.range(outputs.logits.shape[-1], outputs.num_exits)
    values = [min(max(v, lo), hi) for v in values]
    never = math.inf if m.higher_is_confident else -math.inf
    return sorted(set(values), reverse=not m.higher_is_confident) + [never]  # from most to fewest exits


def tradeoff_curve(outputs: ExitOutputs, costs: CostDescription, full_flops: float | None = None, *,
                   measure: str = "max_prob", max_candidates: int = 60) -> list[tuple[float, PolicyEval]]:
    """Accuracy and average FLOPs of the shared-threshold policies, one per candidate threshold."""
    exit_flops, full_flops = exit_and_full_flops(costs, full_flops)
    curve = []
    for t in candidate_thresholds(outputs, measure, max_candidates=max_candidates):
        policy = ExitPolicy(measure, (t,) * (outputs.num_exits - 1))
        curve.append((t, evaluate_policy(policy, outputs, exit_flops, full_flops)))
    return curve


@dataclass(frozen=True)
class Calibration:
    """The policy chosen by :func:`calibrate` and how it did on the calibration data."""

    policy: ExitPolicy
    val: PolicyEval  # on the calibration (validation) data
    target: str  # what was asked, in words


def calibrate(outputs: ExitOutputs, costs: CostDescription, full_flops: float | None = None, *, measure: str = "max_prob",
              max_accuracy_drop: float | None = None, flops_budget: float | None = None,
              per_exit: bool = False, max_candidates: int = 200) -> Calibration:
    """Choose the thresholds of a policy on validation outputs, for one of two targets.

    Targets (give exactly one):
        max_accuracy_drop: the cheapest policy whose accuracy is at least the final exit's minus
            this (a fraction: 0.005 = half a percentage point);
        flops_budget: the most accurate policy whose average FLOPs per sample is at most this.

    Algorithm (deterministic, on the given outputs only):
        1. *Shared threshold.* Every early exit gets the same threshold; try each candidate
           (quantiles of the early exits' scores, and "never exit") and keep the best policy
           that meets the target (cheapest, or most accurate; ties go to the other figure).
        2. Only with ``per_exit=True``: *one pass per exit.* From the first early exit to the
           last, try every candidate for that exit's threshold alone, the others fixed, and keep
           the change if it is better and still meets the target. It finds cheaper policies on
           the calibration data but fits its noise: on the course model (1,000 validation
           images) the shared threshold kept its accuracy on the test split better, so it is
           the default.
        The "never exit" policy (the full network) always meets an accuracy-drop target; a FLOPs
        budget below the cheapest policy raises a ValueError.
    """
    if (max_accuracy_drop is None) == (flops_budget is None):
        raise ValueError("give exactly one target: max_accuracy_drop (fraction) or flops_budget (FLOPs per sample)")
    for name, value in (("max_accuracy_drop", max_accuracy_drop), ("flops_budget", flops_budget)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    check_max_candidates(max_candidates)
    exit_flops, full_flops = exit_and_full_flops(costs, full_flops)
    _check_costs(exit_flops, outputs.num_exits)
    check_finite(outputs.logits, "outputs.logits")
    predictions = outputs.predictions  # (E, N), computed once
    correct = (predictions == outputs.labels).double()
    if max_accuracy_drop is not None:
        if not 0 <= max_accuracy_drop < 1:  # NaN fails too
            raise ValueError(f"max_accuracy_drop must be a fraction in [0, 1), got {max_accuracy_drop!r}")
        # in float64, as every candidate's accuracy (quick, below): never exiting reaches the final exit's
        # accuracy exactly, so it meets any drop >= 0; the slack only absorbs the rounding of the subtraction
        floor = correct[-1].mean().item() - max_accuracy_drop - 1e-12
        target = f"accuracy >= final exit's - {max_accuracy_drop:.2%}"

        def ok(e: PolicyEval) -> bool:
            return e.accuracy >= floor

        def better(a: PolicyEval, b: PolicyEval) -> bool:
            return (a.avg_flops, -a.accuracy) < (b.avg_flops, -b.accuracy)
    else:
        if not flops_budget > 0:  # NaN fails too
            raise ValueError(f"flops_budget must be a positive number of FLOPs per sample, got {flops_budget!r}")
        target = f"average FLOPs <= {flops_budget:.4g}"

        def ok(e: PolicyEval) -> bool:
            return e.avg_flops <= flops_budget * (1 + 1e-12)

        def better(a: PolicyEval, b: PolicyEval) -> bool:
            return (-a.accuracy, a.avg_flops) < (-b.accuracy, b.avg_flops)

    m = get_measure(measure)
    scores = m.fn(outputs.logits)  # (E, N), computed once: for the candidates, every trial and the result
    candidates = candidate_thresholds(outputs, measure, max_candidates=max_candidates, _scores=scores)
    n_early = outputs.num_exits - 1
    ExitPolicy(measure, (candidates[0],) * n_early).check(outputs.num_exits, outputs.logits.shape[-1])
    costs = torch.as_tensor(list(exit_flops), dtype=torch.float64)

    def quick(thresholds) -> PolicyEval:  # apply_policy's decisions on the precomputed scores
        exits = first_exits(scores, thresholds, m)
        return PolicyEval(accuracy=correct.gather(0, exits[None]).mean().item(), avg_flops=costs[exits].mean().item(),
                          full_flops=float(full_flops), exit_fractions=())

    best: tuple[tuple[float, ...], PolicyEval] | None = None
    for t in candidates:
        e = quick((t,) * n_early)
        if ok(e) and (best is None or better(e, best[1])):
            best = ((t,) * n_early, e)
    if best is None:
        cheapest = min(quick((t,) * n_early).avg_flops for t in candidates)
        raise ValueError(f"no policy meets the target ({target}); the cheapest costs {cheapest:.4g} FLOPs per sample")
    for k in range(n_early if per_exit else 0):
        for t in candidates:
            thresholds = best[0][:k] + (t,) + best[0][k + 1:]
            e = quick(thresholds)
            if ok(e) and better(e, best[1]):
                best = (thresholds, e)
    policy = ExitPolicy(measure, best[0])
    exits = first_exits(scores, policy.thresholds, m)  # apply_policy's decisions, on the scores computed above
    result = PolicyResult(predictions.gather(0, exits[None]).squeeze(0), exits)
    return Calibration(policy, evaluate_result(result, outputs.labels, exit_flops, full_flops), target)


def easy_and_hard(outputs: ExitOutputs, result: PolicyResult, *, n: int = 8,
                  measure: str = "max_prob", spread_labels: bool = True) -> tuple[list[int], list[int]]:
    """Indices of the easiest and the hardest samples under a policy's decisions.

    Easiest: samples that left at the first exit, most confident first; with ``spread_labels``
    each label's most confident sample comes first, then each label's second, and so on (a short row
    shows several classes). Hardest: half (rounded up) are samples still wrong at the exit they took,
    the least confident first; the rest are samples that were right but needed the final exit, the
    least confident first (either part fills in for the other when it has too few).
    """
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    scores = confidence(outputs.logits, measure)
    sign = 1 if get_measure(measure).higher_is_confident else -1
    first = (result.exits == 0).nonzero().flatten()
    easy = first[torch.argsort(-sign * scores[0, first], stable=True)].tolist()
    if spread_labels:  # rank of each sample within its label, then confidence
        labels, seen, rank = outputs.labels.tolist(), Counter(), []
        for i in easy:
            rank.append(seen[labels[i]])
            seen[labels[i]] += 1
        easy = [i for _, _, i in sorted(zip(rank, range(len(easy)), easy))]
    easy = easy[:n]
    taken = scores.gather(0, result.exits[None]).squeeze(0)  # each sample's score at the exit it took
    wrong = (result.predictions != outputs.labels).nonzero().flatten()
    wrong = wrong[torch.argsort(sign * taken[wrong])].tolist()
    final = ((result.exits == outputs.num_exits - 1) & (result.predictions == outputs.labels)).nonzero().flatten()
    final = final[torch.argsort(sign * scores[-1, final])].tolist()
    n_wrong = max((n + 1) // 2, n - len(final))
    hard = wrong[:n_wrong]
    hard += final[:n - len(hard)]
    return easy, hard


def overthinking(outputs: ExitOutputs) -> list[float]:
    """For each early exit, the fraction of *all* samples that it gets right and the final exit gets wrong.

    Kaya et al. (2019) call this *overthinking*: computing more made the answer worse.
    """
    correct = outputs.correct
    wrong_final = ~correct[-1]
    return [(correct[k] & wrong_final).double().mean().item() for k in range(outputs.num_exits - 1)]
