"""Rejection: a classifier that may abstain, thresholds with a guarantee, and early exit with a reject option.

*Selective classification* (Chow, 1970; Geifman & El-Yaniv, 2017): a sample is **accepted** when
its confidence score passes a threshold (:func:`accept`, with the measures of
:mod:`eelib.policies`) and **rejected** otherwise. Two figures describe a threshold:

* **coverage** — the fraction of samples accepted;
* **selective risk** — the fraction of *accepted* samples that are wrong (0 when none is accepted).

Sweeping the threshold traces the **risk–coverage curve** (:func:`risk_coverage_curve`); its area,
the **AURC**, sums up a confidence score (lower is better). The **oracle** (:func:`oracle_risk_coverage`)
rejects exactly the errors first: the lowest curve any score can reach.

:func:`guaranteed_threshold` chooses a threshold on a calibration split so that the selective
risk on new data is at most ``alpha`` with probability at least ``1 - delta`` (an exact binomial
test and fixed-sequence testing, as in Learn-then-Test; algorithm in its docstring).

*Early exit with a reject option*: a :class:`RejectPolicy` decides at each exit to **exit** with
the prediction (confident), to **reject** (hopeless: stop computing and abstain), or to
**continue**; at the final exit, to accept or reject. A :class:`CostModel` prices compute, errors
and rejections; :func:`calibrate_reject` chooses the thresholds on a calibration split for a
budget on the average FLOPs (algorithm in its docstring), and also gives the exit-only and
reject-only baselines.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from eelib.outputs import ExitOutputs
from eelib.policies import CostDescription, candidate_thresholds, get_measure
from eelib._util.validation import as_thresholds, check_finite, check_max_candidates

EXIT, CONTINUE, REJECT = 0, 1, 2  # the three decisions at an exit (see decide)
DECISIONS = ("exit", "continue", "reject")


# --- inputs ------------------------------------------------------------------------------------

def _check_fraction(name: str, value: float) -> float:
    """``value`` as a float in (0, 1): Python's and numpy's numbers and 0-d tensors are taken, anything else refused."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def _scores_and_correct(scores, correct) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D float64 scores and boolean correctness, one per sample, checked (a list of Python floats is read
    in float64, not rounded to float32 first)."""
    if not isinstance(scores, torch.Tensor):
        try:
            scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"scores must be numbers, one per sample (a tensor, array or list), got "
                            f"{type(scores).__name__}: {err}") from None
    scores = scores.detach().cpu().double()
    correct = torch.as_tensor(correct).detach().cpu()
    if scores.ndim != 1 or correct.ndim != 1:
        raise ValueError(f"scores and correct must be 1-D (one value per sample), got shapes "
                         f"{tuple(scores.shape)} and {tuple(correct.shape)}")
    if len(scores) != len(correct):
        raise ValueError(f"scores has {len(scores)} values but correct has {len(correct)}: give one of each per sample")
    if len(scores) == 0:
        raise ValueError("the calibration set is empty: scores and correct need at least one sample")
    if torch.isnan(scores).any():
        raise ValueError("scores contains nan: every sample needs a confidence score")
    if correct.dtype != torch.bool:
        if not ((correct == 0) | (correct == 1)).all():
            raise ValueError("correct must hold booleans (or 0 / 1): is the prediction right on each sample")
        correct = correct.bool()
    return scores, correct


def _confidence_order(scores: torch.Tensor, measure: str) -> torch.Tensor:
    """Scores turned so that higher is more confident (entropy is negated)."""
    return scores if get_measure(measure).higher_is_confident else -scores


# --- selective classification --------------------------------------------------------------

def accept(scores: torch.Tensor, threshold: float, measure: str = "max_prob") -> torch.Tensor:
    """Chow's rule: booleans, ``True`` where the score passes the threshold (the sample is accepted)."""
    return get_measure(measure).passes(torch.as_tensor(scores), threshold)


@dataclass(frozen=True)
class SelectiveEval:
    """A threshold's coverage and selective risk on a data set."""

    coverage: float  # fraction of samples accepted
    risk: float  # fraction of the accepted samples that are wrong (0 if none is accepted)
    n: int  # samples
    n_accepted: int
    n_errors: int  # wrong accepted samples

    @property
    def accuracy(self) -> float:
        """Accuracy of the accepted samples: 1 - risk."""
        return 1 - self.risk


def evaluate_selective(scores, correct, threshold: float, measure: str = "max_prob") -> SelectiveEval:
    """Coverage and selective risk of accepting the samples whose score passes ``threshold``."""
    scores, correct = _scores_and_correct(scores, correct)
    kept = accept(scores, threshold, measure)
    n_acc, n_err = int(kept.sum()), int((kept & ~correct).sum())
    return SelectiveEval(n_acc / len(scores), n_err / n_acc if n_acc else 0.0, len(scores), n_acc, n_err)


@dataclass(frozen=True)
class RiskCoverage:
    """A risk–coverage curve: one point per distinct score, from the most confident to all accepted.

    Point ``i`` accepts every sample whose score passes ``thresholds[i]``; samples with equal scores
    are accepted together.
    """

    thresholds: torch.Tensor  # (P,) float64
    coverage: torch.Tensor  # (P,) increasing, the last is 1
    risk: torch.Tensor  # (P,) selective risk at each point
    n_accepted: torch.Tensor  # (P,) int64
    n_errors: torch.Tensor  # (P,) int64

    @property
    def aurc(self) -> float:
        """Area under the curve, as a step function: ``sum_i risk[i] * (coverage[i] - coverage[i-1])``.

        Without ties it is the mean over ``k = 1..N`` of the risk of the ``k`` most confident samples.
        """
        widths = torch.diff(self.coverage, prepend=self.coverage.new_zeros(1))
        return float((self.risk * widths).sum())

    def risk_at(self, coverage: float) -> float:
        """Selective risk of the first point whose coverage reaches ``coverage`` (in (0, 1])."""
        if not 0 < coverage <= 1:
            raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
        i = int(torch.searchsorted(self.coverage, torch.tensor([coverage - 1e-12], dtype=self.coverage.dtype, device=self.coverage.device)))
        return float(self.risk[min(i, len(self.risk) - 1)])


def risk_coverage_curve(scores, correct, measure: str = "max_prob") -> RiskCoverage:
    """The risk–coverage curve of a confidence score.

    Args:
        scores: the measure of each sample ``(N,)`` (e.g. ``confidence(logits, "max_prob")[k]``).
        correct: ``(N,)`` booleans, is the prediction right.
        measure: the measure's name (its direction: entropy's lower scores are more confident).
    """
    scores, correct = _scores_and_correct(scores, correct)
    conf = _confidence_order(scores, measure)
    order = torch.argsort(conf, descending=True, stable=True)
    conf_sorted = conf[order]
    errors = torch.cumsum((~correct[order]).long(), 0)
    # the last position of each group of equal scores: a threshold cannot split a tie
    last = torch.ones(len(conf_sorted), dtype=torch.bool, device=conf_sorted.device)
    last[:-1] = conf_sorted[1:] != conf_sorted[:-1]
    n_acc = torch.arange(1, len(conf_sorted) + 1, device=conf_sorted.device)[last]
    n_err = errors[last]
    thresholds = scores[order][last]
    return RiskCoverage(thresholds, n_acc.double() / len(scores), n_err.double() / n_acc.double(), n_acc, n_err)


def oracle_risk_coverage(correct) -> RiskCoverage:
    """The oracle's curve: the right samples are accepted first, one by one, then the errors.

    Its risk is 0 up to coverage = accuracy; no confidence score has a lower curve or AURC.
    """
    correct = torch.as_tensor(correct).bool()
    n = len(correct)
    rank = torch.empty(n, dtype=torch.float64, device=correct.device)
    rank[torch.argsort(correct.long(), descending=True, stable=True)] = torch.arange(n, 0, -1, dtype=torch.float64,
                                                                                     device=correct.device)
    return risk_coverage_curve(rank, correct, "max_prob")  # distinct scores, right samples highest


# --- a threshold with a finite-sample guarantee ------------------------------------------------

def binomial_tail(errors, n, p: float) -> torch.Tensor:
    """``P(Binomial(n, p) <= errors)``, exactly (a sum of log-gamma terms), element-wise.

    With ``p = alpha`` it is the p-value of the hypothesis "the error rate is above alpha" when
    ``errors`` of ``n`` samples were wrong: small values say the rate is below alpha.
    """
    errors = torch.as_tensor(errors, dtype=torch.float64)
    n = torch.as_tensor(n, dtype=torch.float64)
    errors, n = torch.broadcast_tensors(errors, n)
    if (errors < 0).any() or (errors > n).any():
        raise ValueError("errors must be between 0 and n")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if p == 0 or p == 1:
        return (errors >= n).double() if p == 1 else torch.ones_like(n)
    i = torch.arange(int(errors.max()) + 1 if errors.numel() else 1, dtype=torch.float64, device=errors.device)  # (K,)
    nn_, ii = n[..., None], i
    log_terms = (torch.lgamma(nn_ + 1) - torch.lgamma(ii + 1) - torch.lgamma((nn_ - ii).clamp(min=0) + 1)
                 + ii * math.log(p) + (nn_ - ii) * math.log1p(-p))
    log_terms = log_terms.masked_fill(ii > errors[..., None], -math.inf)
    return torch.logsumexp(log_terms, -1).exp().clamp(max=1.0)


def binomial_upper_bound(errors: int, n: int, delta: float) -> float:
    """Clopper–Pearson upper bound: the largest error rate ``p`` with ``P(Binomial(n, p) <= errors) >= delta``.

    The true error rate is below it with probability at least ``1 - delta``. ``n = 0`` gives 1.
    """
    delta = _check_fraction("delta", delta)
    if n == 0 or errors >= n:
        return 1.0
    i = torch.arange(int(errors) + 1, dtype=torch.float64)
    log_choose = math.lgamma(n + 1) - torch.lgamma(i + 1) - torch.lgamma(n - i + 1)  # the tail's terms, but p

    def tail(p: float) -> float:  # binomial_tail(errors, n, p), its coefficients computed once
        return float(torch.logsumexp(log_choose + i * math.log(p) + (n - i) * math.log1p(-p), 0).exp().clamp(max=1.0))

    lo, hi = errors / n, 1.0
    for _ in range(60):  # bisection: the tail decreases as p grows
        mid = (lo + hi) / 2
        if tail(mid) >= delta:
            lo = mid
        else:
            hi = mid
    return lo


def _tails_along_the_candidates(n_accepted: torch.Tensor, n_errors: torch.Tensor,
                                alpha: float) -> tuple[torch.Tensor, float]:
    """``P(Binomial(n_j, alpha) <= k_j)`` for every candidate ``j`` in O(N) time and memory, and a bound
    on the rounding error of each value.

    The candidates lie on one path that adds the samples one at a time (the errors of a group of equal
    scores first: the tail at the group's end does not depend on the order inside it). With
    ``X_n ~ Binomial(n, alpha)``, each sample changes the tail by one term:
    a right sample ``P(X_{n+1} <= k) = P(X_n <= k) - alpha P(X_n = k)``, a wrong one
    ``P(X_{n+1} <= k + 1) = P(X_n <= k) + (1 - alpha) P(X_n = k + 1)``; the terms come from log-gamma
    (as in :func:`binomial_tail`), and the tails are 1 plus their running sum. :func:`binomial_tail`
    itself sums ``k_j + 1`` terms for each candidate: ``O(N^2)`` for them all.
    """
    total = int(n_accepted[-1])
    sizes = torch.diff(n_accepted, prepend=n_accepted.new_zeros(1))
    group_errors = torch.diff(n_errors, prepend=n_errors.new_zeros(1))
    place = torch.arange(total) - torch.repeat_interleave(n_accepted - sizes, sizes)  # position inside its group
    wrong = place < torch.repeat_interleave(group_errors, sizes)  # (N,) in the order of the path
    n = torch.arange(total, dtype=torch.float64)  # samples before this one
    k = (torch.cumsum(wrong, 0) - wrong.long()).double()  # errors among them
    i = torch.where(wrong, k + 1, k)  # the term P(X_n = i) this sample adds (wrong) or removes (right)
    log_term = (torch.lgamma(n + 1) - torch.lgamma(i + 1) - torch.lgamma((n - i).clamp(min=0) + 1)
                + i * math.log(alpha) + (n - i) * math.log1p(-alpha))
    term = log_term.exp().masked_fill(i > n, 0.0)  # P(X_n = n + 1) = 0
    step = torch.where(wrong, (1 - alpha) * term, -alpha * term)
    tails = (1 + torch.cumsum(step, 0))[n_accepted - 1].clamp(0.0, 1.0)
    # each term is off by a few units of rounding times the log-gamma magnitudes, the sum by one per step
    eps = torch.finfo(torch.float64).eps
    tolerance = 1e-12 + 16 * eps * (total + float(step.abs().sum()) * (1 + math.lgamma(total + 1)))
    return tails, tolerance


@dataclass(frozen=True)
class GuaranteedThreshold:
    """A threshold chosen by :func:`guaranteed_threshold` and how it did on the calibration data."""

    threshold: float  # accept samples whose score passes it (inf / -inf: accept none)
    measure: str
    alpha: float  # the selective risk asked for
    delta: float  # the allowed probability (over calibration sets) that the true risk is above alpha
    coverage: float  # on the calibration data
    risk: float  # selective risk on the calibration data
    risk_bound: float  # Clopper-Pearson (1 - delta) upper bound of the selective risk
    n_calibration: int
    n_accepted: int
    n_errors: int
    n_tested: int  # hypotheses tested before the sequence stopped


def guaranteed_threshold(scores, correct, *, alpha: float, delta: float,
                         measure: str = "max_prob") -> GuaranteedThreshold:
    """Choose a threshold whose selective risk on new data is ``<= alpha`` with probability ``>= 1 - delta``.

    Algorithm (Learn-then-Test, Angelopoulos et al. 2021, with fixed-sequence testing):
        1. Candidates: the distinct calibration scores, from the most to the least confident;
           candidate ``j`` accepts ``n_j`` calibration samples, ``k_j`` of them wrong.
        2. For each candidate, the null hypothesis "its selective risk is above alpha" has the
           exact binomial p-value ``p_j = P(Binomial(n_j, alpha) <= k_j)`` (given ``n_j``
           accepted samples, their errors are binomial with the selective risk as rate, and the
           tail only grows as the rate drops to alpha, the edge of the null); ``p_j <= delta`` is
           the same as the one-sided Clopper-Pearson ``1 - delta`` upper bound being ``<= alpha``.
        3. Fixed-sequence testing: the candidates that accept fewer than
           ``n_min = ceil(log(delta) / log(1 - alpha))`` samples cannot pass even with no error
           (a choice made from the counts alone, never the errors), so the sequence starts at the
           first one that accepts ``n_min``; it walks towards lower thresholds while ``p_j <= delta``
           and stops at the first failure. Testing in a fixed order, each at level ``delta``, keeps
           the chance of certifying any candidate whose risk is above alpha at most ``delta``
           (no correction for the number of candidates is needed).
        4. The threshold is the last certified candidate (the largest coverage); if none is,
           every sample is rejected (threshold +inf, or -inf for entropy).

    What it guarantees, precisely: if the ``N`` calibration samples are drawn independently from a
    distribution ``D`` and the new data come from ``D`` too, the returned threshold ``T`` satisfies

        ``P(R(T) > alpha) <= delta``,  with ``R(t) = P_D(wrong | accepted by t)``,

    the *true* selective risk of ``t`` on ``D`` (``R = 0`` when nothing is accepted, threshold
    ``inf``). The probability is over the draw of the calibration set: in at most a share ``delta``
    of calibration sets is the threshold too low. ``R(T)`` is a property of ``D``: the empirical risk
    of a finite test set scatters around it, and is above ``alpha`` more often than ``delta`` when
    ``R(T)`` is just below ``alpha``. Nothing is promised for data from another distribution.

    What is proven and what is checked: each candidate's binomial test is exact (given the number of
    samples it accepts, their errors are binomial with rate ``R``), and with a list of candidates fixed
    before the data are seen, fixed-sequence testing proves the inequality (Learn-then-Test). Here, as
    in Geifman & El-Yaniv (2017), the candidates are the calibration scores themselves, and the start
    depends on how many samples they accept (never on which are wrong): a list that depends on the
    data, which that proof does not cover. The inequality is checked instead: ``tests/test_rejection.py``
    draws 1,000 calibration sets from a distribution whose risk curve is known (and sets with ties and
    with a non-monotone risk), ``benchmarks/rejection.py`` random splits of the course network's outputs.

    Args:
        scores: each calibration sample's confidence measure ``(N,)``.
        correct: ``(N,)`` booleans, is the prediction right.
        alpha: the selective risk to stay below, in (0, 1).
        delta: the allowed probability of being above it, in (0, 1).
    """
    alpha, delta = _check_fraction("alpha", alpha), _check_fraction("delta", delta)
    curve = risk_coverage_curve(scores, correct, measure)
    n = len(torch.as_tensor(scores))
    approx, tolerance = _tails_along_the_candidates(curve.n_accepted, curve.n_errors, alpha)
    p_values = approx.tolist()  # one transfer: the test runs on the host
    n_min = math.ceil(math.log(delta) / math.log1p(-alpha))
    start = int(torch.searchsorted(curve.n_accepted, torch.tensor([n_min], device=curve.n_accepted.device)))  # first candidate with n_j >= n_min
    chosen, tested = None, 0
    for j in range(start, len(p_values)):
        tested += 1
        p = p_values[j]
        if abs(p - delta) <= tolerance:  # too close to call from the running sum: the exact tail decides
            p = float(binomial_tail(curve.n_errors[j], curve.n_accepted[j], alpha))
        if p > delta:
            break
        chosen = j
    if chosen is None:
        none = math.inf if get_measure(measure).higher_is_confident else -math.inf
        return GuaranteedThreshold(none, measure, alpha, delta, 0.0, 0.0, 1.0, n, 0, 0, tested)
    n_acc, n_err = int(curve.n_accepted[chosen]), int(curve.n_errors[chosen])
    return GuaranteedThreshold(float(curve.thresholds[chosen]), measure, alpha, delta, n_acc / n, n_err / n_acc,
                               binomial_upper_bound(n_err, n_acc, delta), n, n_acc, n_err, tested)


# --- early exit with a reject option ---------------------------------------------------------

def _never(measure: str, *, passes: bool) -> float:
    """The threshold that every score passes (``passes=True``) or that none passes."""
    higher = get_measure(measure).higher_is_confident
    return (-math.inf if higher else math.inf) if passes else (math.inf if higher else -math.inf)


@dataclass(frozen=True)
class RejectPolicy:
    """Early exit with a reject option: at exit ``k`` a sample whose score passes ``exit_thresholds[k]``
    leaves with its prediction; else, one whose score does not pass ``reject_thresholds[k]`` is rejected
    (no more compute); else it continues. At the final exit it is accepted if its score passes
    ``reject_thresholds[-1]``, else rejected.

    ``exit_thresholds`` has one value per early exit, ``reject_thresholds`` one per exit (the final
    included); ``-inf`` as a reject threshold (``inf`` for entropy) never rejects.
    """

    measure: str
    exit_thresholds: tuple[float, ...]
    reject_thresholds: tuple[float, ...]

    def __post_init__(self) -> None:
        get_measure(self.measure)
        for name in ("exit_thresholds", "reject_thresholds"):
            object.__setattr__(self, name, as_thresholds(getattr(self, name), name))
        if len(self.reject_thresholds) != len(self.exit_thresholds) + 1:
            raise ValueError(f"reject_thresholds has {len(self.reject_thresholds)} values and exit_thresholds "
                             f"{len(self.exit_thresholds)}: give one reject threshold per exit (the final "
                             f"included), one exit threshold per early exit")

    @property
    def num_exits(self) -> int:
        return len(self.reject_thresholds)

    def check(self, num_exits: int, num_classes: int) -> None:
        """Raise a ValueError unless the policy fits a model with these exits and classes: one reject
        threshold per exit, and every finite threshold in the range of the measure."""
        if self.num_exits != num_exits:
            raise ValueError(f"reject_thresholds has {self.num_exits} values but the model has {num_exits} exits: "
                             f"give one per exit (the final included) and {num_exits - 1} exit_thresholds")
        lo, hi = get_measure(self.measure).range(num_classes, num_exits)
        for name in ("exit_thresholds", "reject_thresholds"):
            bad = [t for t in getattr(self, name) if not math.isinf(t) and not lo - 1e-9 <= t <= hi + 1e-9]
            if bad:
                raise ValueError(f"{name} {bad} are outside the range of {self.measure} with {num_classes} "
                                 f"classes: allowed [{lo:.4g}, {hi:.4g}], or inf / -inf")

    @classmethod
    def exit_only(cls, exit_thresholds: Sequence[float], measure: str = "max_prob") -> "RejectPolicy":
        """A chapter 4 policy: no sample is ever rejected."""
        return cls(measure, tuple(exit_thresholds), (_never(measure, passes=True),) * (len(exit_thresholds) + 1))

    @classmethod
    def reject_only(cls, num_exits: int, reject_threshold: float, measure: str = "max_prob") -> "RejectPolicy":
        """No early exit: the full network, then Chow's rule at the final exit."""
        return cls(measure, (_never(measure, passes=False),) * (num_exits - 1),
                   (_never(measure, passes=True),) * (num_exits - 1) + (float(reject_threshold),))


def decide(scores: torch.Tensor, exit_threshold: float, reject_threshold: float, measure: str = "max_prob", *,
           final: bool = False) -> torch.Tensor:
    """The decision at one exit for a batch: ``EXIT`` (0), ``CONTINUE`` (1) or ``REJECT`` (2) per sample.

    A score that passes ``exit_threshold`` exits (this is checked first); else one that does not pass
    ``reject_threshold`` is rejected; else the sample continues. At the final exit (``final=True``)
    there is no continuing: a sample exits if its score passes ``reject_threshold``, else it is
    rejected (``exit_threshold`` is not used).
    """
    m = get_measure(measure)
    scores = torch.as_tensor(scores)
    keep = m.passes(scores, reject_threshold)
    if final:
        return torch.where(keep, EXIT, REJECT)
    out = torch.where(keep, CONTINUE, REJECT)
    return torch.where(m.passes(scores, exit_threshold), EXIT, out)


@dataclass(frozen=True)
class RejectResult:
    """Where each sample stopped, what it predicted there, and whether it was rejected."""

    predictions: torch.Tensor  # (N,) the prediction of the exit where the sample stopped (not given if rejected)
    exits: torch.Tensor  # (N,) exit index where the sample stopped (exited or was rejected)
    rejected: torch.Tensor  # (N,) booleans


def decide_all(policy: RejectPolicy, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit index and rejection of each sample from the scores of every exit ``(E, N)``."""
    num_exits, n = scores.shape
    decisions = torch.stack([decide(scores[k], policy.exit_thresholds[k] if k < num_exits - 1 else 0.0,
                                    policy.reject_thresholds[k], policy.measure, final=k == num_exits - 1)
                             for k in range(num_exits)])  # (E, N)
    exits = (decisions != CONTINUE).to(torch.uint8).argmax(0)  # the final exit never continues
    rejected = decisions.gather(0, exits[None])[0] == REJECT
    return exits, rejected


def apply_reject_policy(policy: RejectPolicy, logits: torch.Tensor) -> RejectResult:
    """Simulate a reject policy on the logits of every exit ``(E, N, C)`` (all computed beforehand)."""
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (num_exits, N, num_classes), got {tuple(logits.shape)}")
    policy.check(logits.shape[0], logits.shape[-1])
    exits, rejected = decide_all(policy, get_measure(policy.measure).fn(logits))
    return RejectResult(logits.argmax(-1).gather(0, exits[None])[0], exits, rejected)


@dataclass(frozen=True)
class CostModel:
    """What a sample costs: its compute, plus ``error_cost`` if it is accepted and wrong, plus
    ``reject_cost`` if it is rejected (errors and rejections in the same unit, e.g. error_cost = 1).

    Attributes:
        exit_flops: FLOPs of a sample that stops at each exit (see :func:`eelib.vision.cost.exit_costs`);
            a rejected sample pays the compute up to the exit where it was rejected.
        full_flops: the network without exits, the reference for compute.
        compute_cost: the cost of one full-network pass (a sample pays ``flops / full_flops`` of it).
    """

    exit_flops: tuple[float, ...]
    full_flops: float
    error_cost: float = 1.0
    reject_cost: float = 0.2
    compute_cost: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.exit_flops, (str, bytes)) or not hasattr(self.exit_flops, "__iter__"):
            raise TypeError(f"exit_flops must be a sequence with one FLOP count per exit, got {self.exit_flops!r}")
        object.__setattr__(self, "exit_flops", tuple(_real("exit_flops", f) for f in self.exit_flops))
        object.__setattr__(self, "full_flops", _real("full_flops", self.full_flops))
        flops = self.exit_flops + (self.full_flops,)
        if not self.exit_flops or not all(math.isfinite(f) and f > 0 for f in flops):
            raise ValueError(f"exit_flops and full_flops must be positive finite FLOPs, got {self.exit_flops}, "
                             f"{self.full_flops}")
        for name in ("error_cost", "reject_cost", "compute_cost"):
            value = _real(name, getattr(self, name))
            object.__setattr__(self, name, value)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.reject_cost > self.error_cost:
            raise ValueError(f"reject_cost ({self.reject_cost}) must be at most error_cost ({self.error_cost}): "
                             f"otherwise rejecting is never worth it")


def _real(name: str, value) -> float:
    """``value`` as a float if it is a real number (numpy's and 0-d tensors included), else a TypeError naming it."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


PRICES = ("error_cost", "reject_cost", "compute_cost")  # what a CostModel adds to a cost description


def as_cost_model(costs: CostModel | CostDescription, **prices: float | None) -> CostModel:
    """The `CostModel` that chapter 5's functions price samples with.

    ``costs`` is a `CostModel` (used as it is), or any cost description with ``exit_flops`` and
    ``full_flops`` (`eelib.vision.cost.exit_costs`'s `ExitCosts`, `eelib.lm.generate.token_exit_costs`'s
    `TokenCosts`), priced by the keyword arguments ``error_cost``, ``reject_cost`` and ``compute_cost``
    (`CostModel`'s defaults for those not given).
    """
    unknown = set(prices) - set(PRICES)
    if unknown:
        raise TypeError(f"unknown price(s) {sorted(unknown)}; allowed: {', '.join(PRICES)}")
    given = {k: v for k, v in prices.items() if v is not None}
    if isinstance(costs, CostModel):
        if given:
            raise ValueError(f"costs is a CostModel, which has its own prices: leave out "
                             f"{', '.join(f'{k}=' for k in given)} or give them to the CostModel "
                             f"(dataclasses.replace(costs, {', '.join(f'{k}=...' for k in given)}))")
        return costs
    if not (hasattr(costs, "exit_flops") and hasattr(costs, "full_flops")):
        raise TypeError(f"costs must be a CostModel, or a cost description with exit_flops and full_flops "
                        f"(eelib.exit_costs(model), eelib.token_exit_costs(ee)) with the prices as keyword "
                        f"arguments ({', '.join(f'{k}=' for k in PRICES)}); got {type(costs).__name__}")
    return CostModel(tuple(costs.exit_flops), costs.full_flops, **given)


@dataclass(frozen=True)
class RejectEval:
    """How a reject policy does on a data set."""

    accuracy: float  # accuracy of the accepted samples (1 if none is accepted)
    coverage: float  # fraction of samples accepted
    error_rate: float  # accepted and wrong, as a fraction of all samples
    avg_flops: float  # mean FLOPs per sample
    full_flops: float
    cost: float  # mean cost per sample under the cost model
    exit_fractions: tuple[float, ...]  # fraction of samples stopping (exiting or rejected) at each exit
    reject_fractions: tuple[float, ...]  # fraction of samples rejected at each exit

    @property
    def relative_flops(self) -> float:
        """avg_flops / full_flops."""
        return self.avg_flops / self.full_flops


def _evaluate(exits: torch.Tensor, rejected: torch.Tensor, correct_at_exit: torch.Tensor,
              costs: CostModel) -> RejectEval:
    n = len(exits)
    flops = torch.as_tensor(costs.exit_flops, dtype=torch.float64)
    accepted = ~rejected
    n_acc = int(accepted.sum())
    n_err = int((accepted & ~correct_at_exit).sum())
    avg = float(flops[exits].mean())
    cost = (costs.error_cost * n_err + costs.reject_cost * int(rejected.sum())) / n \
        + costs.compute_cost * avg / costs.full_flops
    e = len(flops)
    return RejectEval(1 - n_err / n_acc if n_acc else 1.0, n_acc / n, n_err / n, avg, float(costs.full_flops), cost,
                      tuple((torch.bincount(exits, minlength=e).double() / n).tolist()),
                      tuple((torch.bincount(exits[rejected], minlength=e).double() / n).tolist()))


def evaluate_reject_policy(policy: RejectPolicy, outputs: ExitOutputs, costs: CostModel | CostDescription, *,
                           error_cost: float | None = None, reject_cost: float | None = None,
                           compute_cost: float | None = None) -> RejectEval:
    """Simulate ``policy`` on ``outputs`` and measure accuracy, coverage, FLOPs and cost.

    ``costs``: a `CostModel`, or a cost description (``exit_costs(model)``) priced by ``error_cost``,
    ``reject_cost`` and ``compute_cost`` (see :func:`as_cost_model`).
    """
    costs = as_cost_model(costs, error_cost=error_cost, reject_cost=reject_cost, compute_cost=compute_cost)
    if len(costs.exit_flops) != outputs.num_exits:
        raise ValueError(f"exit_flops has {len(costs.exit_flops)} values but there are {outputs.num_exits} exits")
    r = apply_reject_policy(policy, outputs.logits)
    return _evaluate(r.exits, r.rejected, r.predictions == outputs.labels, costs)


@dataclass(frozen=True)
class RejectCalibration:
    """The policy chosen by :func:`calibrate_reject` and how it did on the calibration data."""

    policy: RejectPolicy
    val: RejectEval  # on the calibration data (the validation split), as Calibration.val
    mode: str
    target: str  # what was asked, in words

    @property
    def cal(self) -> RejectEval:
        """Deprecated name of `val` (the name `Calibration` uses too)."""
        import warnings

        warnings.warn("RejectCalibration.cal is now RejectCalibration.val", DeprecationWarning, stacklevel=2)
        return self.val


MODES = ("combined", "exit_only", "reject_only")


def calibrate_reject(outputs: ExitOutputs, costs: CostModel | CostDescription, *, flops_budget: float | None = None,
                     mode: str = "combined", measure: str = "max_prob", max_candidates: int = 100,
                     error_cost: float | None = None, reject_cost: float | None = None,
                     compute_cost: float | None = None) -> RejectCalibration:
    """Choose a reject policy on calibration outputs: the lowest mean cost within a FLOPs budget.

    The cost of a sample is the cost model's (compute, error, rejection); ``flops_budget`` bounds
    the average FLOPs per sample on the calibration data (``None`` or ``inf``: no budget).
    ``costs`` is a `CostModel`, or a cost description (``exit_costs(model)``) priced by
    ``error_cost``, ``reject_cost`` and ``compute_cost`` (see :func:`as_cost_model`).

    Modes and algorithm (deterministic, on the given outputs only):
        ``exit_only``: one exit threshold shared by the early exits (chapter 4's candidates),
            nothing rejected; the cheapest within the budget.
        ``reject_only``: no early exit (the full network) and Chow's rule at the final exit; every
            reject threshold between two final-exit scores is tried. The budget must allow the
            full network.
        ``combined``:
            1. for each shared exit threshold within the budget, every reject threshold at the
               final exit (for the samples that reach it) is tried; the cheapest pair is kept;
            2. one pass over the early exits, first to last: for exit ``k`` alone, reject
               thresholds (quantiles of its scores below its exit threshold) are tried — a sample
               rejected early stops paying compute — and a change is kept if it lowers the cost and
               stays within the budget;
            3. step 1 again for the exit threshold and the final reject threshold, with the early
               reject thresholds of step 2 fixed (early rejection may have freed some budget).
        Ties go to the fewer FLOPs. The chosen policy is within the budget on the calibration data
        by construction; a budget below the first exit's FLOPs raises a ValueError.
    """
    costs = as_cost_model(costs, error_cost=error_cost, reject_cost=reject_cost, compute_cost=compute_cost)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; allowed: {', '.join(MODES)}")
    check_max_candidates(max_candidates)
    if len(costs.exit_flops) != outputs.num_exits:
        raise ValueError(f"exit_flops has {len(costs.exit_flops)} values but there are {outputs.num_exits} exits")
    if len(outputs.labels) == 0:
        raise ValueError("the calibration set is empty: outputs needs at least one sample")
    check_finite(outputs.logits, "outputs.logits")
    flops = torch.as_tensor(costs.exit_flops, dtype=torch.float64)
    if flops_budget is not None:
        if isinstance(flops_budget, bool) or not isinstance(flops_budget, numbers.Real) or not flops_budget > 0:
            raise ValueError(f"flops_budget must be a positive number of FLOPs per sample (None or inf: no budget), "
                             f"got {flops_budget!r}")
        lowest = float(flops[-1] if mode == "reject_only" else flops[0])
        if flops_budget < lowest * (1 - 1e-12):
            raise ValueError(f"flops_budget={flops_budget:.4g} is below the cheapest {mode} policy "
                             f"({lowest:.4g} FLOPs per sample); allowed: flops_budget >= {lowest:.4g}")
    budget = math.inf if flops_budget is None else flops_budget * (1 + 1e-12)
    target = "lowest cost" + ("" if flops_budget is None else f", average FLOPs <= {flops_budget:.4g}")
    m = get_measure(measure)
    scores = m.fn(outputs.logits).double()  # (E, N)
    conf = scores if m.higher_is_confident else -scores  # higher = more confident
    correct = outputs.correct
    num_exits, n = scores.shape
    keep_all = _never(measure, passes=True)

    def best_final_reject(exits: torch.Tensor, early_rejected: torch.Tensor) -> tuple[float, float, float]:
        """For fixed routing: the final reject threshold of lowest cost -> (cost, avg FLOPs, threshold)."""
        at_final = (exits == num_exits - 1) & ~early_rejected
        avg = float(flops[exits].mean())
        base_err = int((~early_rejected & ~correct.gather(0, exits[None])[0]).sum())
        base_rej = int(early_rejected.sum())
        c = conf[-1, at_final]
        order = torch.argsort(c, stable=True)  # least confident first: the ones to reject first
        c_sorted, wrong = c[order], ~correct[-1, at_final][order]
        # rejecting the r least confident: r = 0, or the end of a group of equal scores
        group_end = torch.ones(len(c_sorted), dtype=torch.bool, device=c_sorted.device)
        group_end[:-1] = c_sorted[1:] != c_sorted[:-1]
        r = torch.cat([group_end.new_zeros(1, dtype=torch.long), group_end.nonzero()[:, 0] + 1])  # one sync, not one per row
        ends = r.tolist()
        cum_wrong = torch.cat([wrong.new_zeros(1, dtype=torch.long), torch.cumsum(wrong.long(), 0)])
        cost = (costs.error_cost * (base_err - cum_wrong[r]) + costs.reject_cost * (base_rej + r)) / n \
            + costs.compute_cost * avg / costs.full_flops
        i = int(torch.argmin(cost))  # the first minimum: the fewest rejections
        if ends[i] == 0:
            threshold = keep_all
        elif ends[i] == len(c_sorted):
            threshold = _never(measure, passes=False)
        else:
            nxt = float(c_sorted[ends[i]])  # the least confident score still accepted
            threshold = nxt if m.higher_is_confident else -nxt
        return float(cost[i]), avg, threshold

    def search_exit(early_reject: tuple[float, ...]):
        """Step 1/3: the best (exit threshold, final reject threshold) with early rejects fixed."""
        best = None
        exit_candidates = [_never(measure, passes=False)] if mode == "reject_only" else \
            candidate_thresholds(outputs, measure, max_candidates=max_candidates)
        for t in exit_candidates:
            policy = RejectPolicy(measure, (t,) * (num_exits - 1), early_reject + (keep_all,))
            exits, rejected = decide_all(policy, scores)
            if float(flops[exits].mean()) > budget:
                continue
            if mode == "exit_only":
                e = _evaluate(exits, rejected, correct.gather(0, exits[None])[0], costs)
                key, final_t = (e.cost, e.avg_flops), keep_all
            else:
                cost, avg, final_t = best_final_reject(exits, rejected)
                key = (cost, avg)
            if best is None or key < best[0]:
                best = (key, RejectPolicy(measure, (t,) * (num_exits - 1), early_reject + (final_t,)))
        return best

    early = (keep_all,) * (num_exits - 1)
    best = search_exit(early)
    if best is None:
        raise ValueError(f"no {mode} policy meets flops_budget={flops_budget:.4g}")
    if mode == "combined":
        def key_of(policy: RejectPolicy) -> tuple[float, float]:
            exits, rejected = decide_all(policy, scores)
            e = _evaluate(exits, rejected, correct.gather(0, exits[None])[0], costs)
            return (e.cost, e.avg_flops)

        qs = torch.linspace(0, 0.5, 26, dtype=torch.float64)
        for k in range(num_exits - 1):
            policy = best[1]
            below = scores[k][~m.passes(scores[k], policy.exit_thresholds[k])]
            if len(below) == 0:
                continue
            tries = sorted(set(torch.quantile(below, qs if m.higher_is_confident else 1 - qs).tolist()))
            for t in tries:
                rejects = policy.reject_thresholds[:k] + (t,) + policy.reject_thresholds[k + 1:]
                candidate = RejectPolicy(measure, policy.exit_thresholds, rejects)
                key = key_of(candidate)
                exits, _ = decide_all(candidate, scores)
                if float(flops[exits].mean()) <= budget and key < best[0]:
                    best = (key, candidate)
        again = search_exit(best[1].reject_thresholds[:-1])
        if again is not None and again[0] < best[0]:
            best = again
    policy = best[1]
    return RejectCalibration(policy, evaluate_reject_policy(policy, outputs, costs), mode, target)
