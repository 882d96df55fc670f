"""Chapter 9's guarantees checked by simulation: calibrations repeated over random calibration / test splits.

A guarantee "at most epsilon with probability at least 1 - delta over the calibration draw" is a
statement about many calibration draws; one split proves nothing. Each study here draws ``splits``
random subsets of ``calibration`` tokens from a pool (:class:`eelib.lm.rejection.TokenScores` of the
held-out text), calibrates on them, and measures on the other tokens (the **test** tokens) and on the
whole pool (taken as the population the calibration tokens are drawn from, without replacement: its
risk is the threshold's true risk, what the guarantee bounds; the binomial test stays valid without
replacement, where the count of errors is hypergeometric, more concentrated than the binomial):

* :func:`split_study`: consistency with the full model, the naive and the guaranteed threshold
  (:mod:`eelib.lm.rejection`);
* :func:`abstain_split_study`: the abstaining model's selective risk against the true text, the naive
  threshold and :func:`eelib.rejection.guaranteed_threshold`;
* :func:`reject_split_study`: exit-or-reject under a FLOPs budget (:func:`eelib.rejection.calibrate_reject`),
  against exit-only and reject-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from eelib.outputs import ExitOutputs
from eelib.policies import exit_and_full_flops
from eelib.rejection import CostModel, calibrate_reject, evaluate_reject_policy, guaranteed_threshold, risk_coverage_curve
from eelib.lm.rejection import (MEASURE, TokenScores, _candidates, _check_length, _choose, _fraction, _inconsistent,
                                exits_by_candidate)


def random_splits(n: int, calibration: int, splits: int, seed: int = 0):
    """``splits`` random (calibration, test) index pairs of ``n`` tokens, ``calibration`` of them to calibrate."""
    if isinstance(calibration, bool) or not isinstance(calibration, int) or not 1 <= calibration < n:
        raise ValueError(f"calibration must be a number of tokens from 1 to {n - 1}, got {calibration!r}")
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    generator = torch.Generator().manual_seed(seed)
    for _ in range(splits):
        perm = torch.randperm(n, generator=generator)
        yield perm[:calibration], perm[calibration:]


@dataclass(frozen=True)
class SplitStudy:
    """A calibration repeated over random splits of a pool of tokens, one row per method, one column per split.

    ``risk`` is the disagreement with the full model (consistency) or the selective risk against the
    true text (abstention); on the **test** tokens (what a user sees) and on the whole **pool** (taken as
    the population the calibration tokens are drawn from: its risk is the threshold's true risk, what
    the guarantee bounds). ``coverage``: the share of test tokens that leave early (consistency) or
    that the model answers (abstention).
    """

    methods: tuple[str, ...]
    target: float  # epsilon or alpha
    delta: float
    n_calibration: int
    n_test: int
    thresholds: torch.Tensor  # (M, S)
    test_risk: torch.Tensor  # (M, S)
    pool_risk: torch.Tensor  # (M, S)
    coverage: torch.Tensor  # (M, S) on the test tokens
    relative_flops: torch.Tensor  # (M, S) on the test tokens, nan without costs

    def _row(self, method: str) -> int:
        if method not in self.methods:
            raise ValueError(f"method must be one of {', '.join(self.methods)}, got {method!r}")
        return self.methods.index(method)

    def violation_rate(self, method: str, where: str = "test") -> float:
        """Share of the splits whose risk (on the test tokens, or the pool) is above the target."""
        if where not in ("test", "pool"):
            raise ValueError(f"where must be 'test' or 'pool', got {where!r}")
        risk = (self.test_risk if where == "test" else self.pool_risk)[self._row(method)]
        return float((risk > self.target + 1e-12).double().mean())

    def mean(self, field: str, method: str) -> float:
        """The mean over the splits of ``test_risk``, ``pool_risk``, ``coverage`` or ``relative_flops``."""
        return float(getattr(self, field)[self._row(method)].double().mean())

    @property
    def splits(self) -> int:
        return self.thresholds.shape[1]


def split_study(data: TokenScores, *, epsilon: float, delta: float, calibration: int, splits: int = 100,
                seed: int = 0, costs=None, candidates: Sequence[float] | None = None) -> SplitStudy:
    """The consistency guarantee checked by simulation: the naive and the guaranteed threshold, each chosen on
    ``calibration`` random tokens of ``data`` and measured on the others and on the whole pool, ``splits`` times."""
    epsilon, delta = _fraction("epsilon", epsilon), _fraction("delta", delta)
    _check_length(calibration, "epsilon", epsilon, delta)
    values = _candidates(candidates)
    exits = exits_by_candidate(data, values.tolist())  # (G, N), once for the pool
    wrong = _inconsistent(data, exits)
    exit_flops, full = exit_and_full_flops(costs) if costs is not None else ((math.nan,) * data.num_exits, 1.0)
    exit_flops = torch.tensor(exit_flops, dtype=torch.float64) / full
    early = exits < data.num_exits - 1
    # the pool's sums per candidate, once: a test set's sum is the pool's minus its calibration set's
    pool_sums = {"wrong": wrong.sum(1).double(), "early": early.sum(1).double(),
                 "flops": sum(f * (exits == k).sum(1).double() for k, f in enumerate(exit_flops.tolist()))}
    wrong_t, exits_t = wrong.T.contiguous(), exits.T.contiguous()  # (N, G): a split's tokens are rows, gathered fast
    n, n_test = len(data), len(data) - calibration
    methods = ("naive", "guaranteed")
    rows = {f: torch.full((2, splits), math.nan, dtype=torch.float64)
            for f in ("thresholds", "test_risk", "pool_risk", "coverage", "relative_flops")}
    for s, (cal, _) in enumerate(random_splits(len(data), calibration, splits, seed)):
        counts, cal_exits = wrong_t[cal].sum(0), exits_t[cal].T
        for m, method in enumerate(methods):
            chosen = _choose(values, counts, cal_exits, data.num_exits, method=method, epsilon=epsilon,
                             delta=delta, bound=False)
            rows["thresholds"][m, s] = chosen.threshold
            if math.isinf(chosen.threshold):  # nothing leaves: the full model, which agrees with itself
                rows["test_risk"][m, s], rows["pool_risk"][m, s], rows["coverage"][m, s] = 0.0, 0.0, 0.0
                rows["relative_flops"][m, s] = exit_flops[-1]
                continue
            j = int((values == chosen.threshold).nonzero()[0])
            taken = cal_exits[j].long()
            rows["test_risk"][m, s] = (pool_sums["wrong"][j] - chosen.n_disagree) / n_test
            rows["pool_risk"][m, s] = pool_sums["wrong"][j] / n
            rows["coverage"][m, s] = (pool_sums["early"][j] - (taken < data.num_exits - 1).sum()) / n_test
            rows["relative_flops"][m, s] = (pool_sums["flops"][j] - exit_flops[taken].sum()) / n_test
    return SplitStudy(methods, epsilon, delta, calibration, len(data) - calibration, **rows)


def abstain_split_study(data: TokenScores, *, alpha: float, delta: float, calibration: int, splits: int = 100,
                        seed: int = 0) -> SplitStudy:
    """The abstaining model's guarantee checked the same way (the full model's max probability): the naive
    threshold (the lowest whose calibration selective risk is <= alpha) and :func:`abstain_threshold`."""
    alpha, delta = _fraction("alpha", alpha), _fraction("delta", delta)
    _check_length(calibration, "alpha", alpha, delta)
    scores, right = data.scores[-1].double(), data.correct[-1]
    methods = ("naive", "guaranteed")
    rows = {f: torch.full((2, splits), math.nan, dtype=torch.float64)
            for f in ("thresholds", "test_risk", "pool_risk", "coverage", "relative_flops")}

    def risk_and_coverage(index, t):
        kept = scores[index] >= t
        n_acc = int(kept.sum())
        return (int((kept & ~right[index]).sum()) / n_acc if n_acc else 0.0), n_acc / len(kept)

    everything = torch.arange(len(data))
    for s, (cal, test) in enumerate(random_splits(len(data), calibration, splits, seed)):
        curve = risk_coverage_curve(scores[cal], right[cal], MEASURE)
        meets = (curve.risk <= alpha).nonzero()
        naive = float(curve.thresholds[meets.max()]) if len(meets) else math.inf
        guaranteed = guaranteed_threshold(scores[cal], right[cal], alpha=alpha, delta=delta, measure=MEASURE).threshold
        for m, t in enumerate((naive, guaranteed)):
            rows["thresholds"][m, s] = t
            rows["test_risk"][m, s], rows["coverage"][m, s] = risk_and_coverage(test, t)
            rows["pool_risk"][m, s] = risk_and_coverage(everything, t)[0]
    return SplitStudy(methods, alpha, delta, calibration, len(data) - calibration, **rows)


# --- exit or reject under a FLOPs budget -----------------------------------------------------------

REJECT_MODES = ("combined", "exit_only", "reject_only")


@dataclass(frozen=True)
class RejectSplitStudy:
    """Exit-or-reject for tokens (:func:`eelib.rejection.calibrate_reject`) over random splits, per mode."""

    modes: tuple[str, ...]
    flops_budget: float  # FLOPs per token (reject_only is not held to it)
    margin: float  # calibrated for flops_budget - margin (flops_margin)
    full_flops: float
    n_calibration: int
    n_test: int
    test: dict  # mode -> tuple of eelib.rejection.RejectEval, one per split, on the test tokens

    def over_budget_rate(self, mode: str) -> float:
        """Share of the splits whose mean FLOPs per test token is above the budget."""
        return sum(e.avg_flops > self.flops_budget * (1 + 1e-9) for e in self.test[mode]) / len(self.test[mode])

    def mean(self, field: str, mode: str) -> float:
        """Mean over the splits of a :class:`~eelib.rejection.RejectEval` field, or ``"risk"`` (1 - accuracy)."""
        values = [(1 - e.accuracy) if field == "risk" else getattr(e, field) for e in self.test[mode]]
        return sum(values) / len(values)

    def lower_risk_rate(self, mode: str = "combined", than: str = "exit_only") -> float:
        """Share of the splits in which ``mode``'s selective risk on the test tokens is below ``than``'s."""
        pairs = zip(self.test[mode], self.test[than])
        return sum(a.accuracy > b.accuracy for a, b in pairs) / len(self.test[mode])


def flops_margin(cost_model: CostModel, n: int, delta: float) -> float:
    """How far below a FLOPs budget to calibrate on ``n`` tokens so that the mean FLOPs per token of a *fixed*
    policy on new tokens stays within the budget with probability at least ``1 - delta`` (Hoeffding: each
    token costs between the cheapest and the dearest exit, so the mean moves by at most
    ``(max - min) * sqrt(log(1 / delta) / (2 n))``). A calibrated policy is chosen on the same tokens, so
    this is a safety margin, not a proof: :func:`reject_split_study` measures how often it holds."""
    delta = _fraction("delta", delta)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of tokens, got {n!r}")
    spread = max(cost_model.exit_flops) - min(cost_model.exit_flops)
    return spread * math.sqrt(math.log(1 / delta) / (2 * n))


def reject_split_study(data: TokenScores, cost_model: CostModel, *, flops_budget: float, calibration: int,
                       splits: int = 100, seed: int = 0, budget_delta: float | None = 0.05,
                       modes: Sequence[str] = REJECT_MODES) -> RejectSplitStudy:
    """Exit-or-reject for tokens under a FLOPs budget, against exit-only and reject-only, over random splits.

    Each split calibrates every mode with :func:`eelib.rejection.calibrate_reject` on ``calibration``
    random tokens (labels: the true next tokens; :meth:`TokenScores.outputs`) and evaluates it on the
    others. ``combined`` and ``exit_only`` are calibrated for the budget less :func:`flops_margin`
    (``budget_delta``; ``None``: for the budget itself, which a policy at the edge then exceeds on about
    half of the test sets); ``reject_only`` (the full network and Chow's rule) has no budget.
    """
    bad = [m for m in modes if m not in REJECT_MODES]
    if bad or not modes:
        raise ValueError(f"modes must be among {', '.join(REJECT_MODES)}, got {list(modes)}")
    if len(cost_model.exit_flops) != data.num_exits:
        raise ValueError(f"cost_model has {len(cost_model.exit_flops)} exit costs but data has {data.num_exits} exits")
    margin = 0.0 if budget_delta is None else flops_margin(cost_model, calibration, budget_delta)
    outputs = data.outputs()
    test = {m: [] for m in modes}
    for cal, rest in random_splits(len(data), calibration, splits, seed):
        cal_out = ExitOutputs(outputs.logits[:, cal], outputs.labels[cal], outputs.exit_names)
        test_out = ExitOutputs(outputs.logits[:, rest], outputs.labels[rest], outputs.exit_names)
        for mode in modes:
            budget = None if mode == "reject_only" else flops_budget - margin
            chosen = calibrate_reject(cal_out, cost_model, flops_budget=budget, mode=mode, measure=MEASURE)
            test[mode].append(evaluate_reject_policy(chosen.policy, test_out, cost_model))
    return RejectSplitStudy(tuple(modes), float(flops_budget), margin, float(cost_model.full_flops), calibration,
                            len(data) - calibration, {m: tuple(v) for m, v in test.items()})
