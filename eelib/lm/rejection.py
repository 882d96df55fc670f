"""Rejection for language models: token exits with a guarantee (CALM), and a model that abstains when unsure.

Chapter 9 asks two questions about every next-token prediction, with chapter 5's tools:

1. **May this token leave early?** *Consistency* with the full model (CALM, Schuster et al. 2022):
   a shared max-probability threshold for the early exits such that the share of tokens whose
   early prediction differs from the full model's is at most ``epsilon``, with probability at
   least ``1 - delta`` over the draw of the calibration tokens (:func:`consistency_threshold`:
   an exact binomial test per candidate threshold and fixed-sequence testing, as
   :func:`eelib.rejection.guaranteed_threshold`; :func:`naive_consistency_threshold` is chapter 7's
   way, the lowest threshold that meets the target on the calibration tokens, without a guarantee).
2. **Should the model answer at all?** *Selective next-token prediction*: the model predicts the
   next token only when its confidence passes a threshold and abstains otherwise; its errors are
   counted against the **true** text, not the full model (:func:`abstain_threshold` is
   :func:`eelib.rejection.guaranteed_threshold` on tokens; :meth:`TokenScores.outputs` feeds
   :func:`eelib.rejection.calibrate_reject` for exit-or-reject under a FLOPs budget).

What is guaranteed, precisely: for tokens *exchangeable* with the calibration tokens (drawn from
the same text distribution; here random splits of the held-out text), the probability, over a
new token, that its early prediction differs from the full model's is at most ``epsilon`` — except
with probability at most ``delta`` over the calibration draw. It is per token and under teacher
forcing (each prediction reads the true text before it, with the full model's keys and values):
it says nothing about a whole generated sequence, where one changed token changes what follows,
nor about a text unlike the calibration text.

Data: :func:`token_scores` runs the exits once over a text (through
:func:`eelib.lm.exits.token_exit_outputs`) and keeps, per token, each exit's max probability and
top-1 token, the full model's token and the true next token (a few bytes per token, not the
logits), cached in eelib's cache folder. :mod:`eelib.lm.rejection_splits` repeats the calibrations over
random calibration / test splits of those tokens.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from eelib.outputs import ExitOutputs
from eelib.policies import ExitPolicy, exit_and_full_flops, get_measure
from eelib.rejection import (GuaranteedThreshold, binomial_tail, binomial_upper_bound, decide_all, guaranteed_threshold,
                             risk_coverage_curve)
from eelib.lm.exits import EarlyExitLM, token_exit_outputs

MEASURE = "max_prob"  # the chapter's confidence measure (the candidates below are max-probability thresholds)
# Fixed before any data is seen (Learn-then-Test's candidates): thresholds from the strictest (0.9999) down to 0,
# evenly spaced in log(1 - threshold), so that the region near 1, where consistent tokens leave, is fine-grained.
CANDIDATES: tuple[float, ...] = tuple((1 - torch.logspace(-4, 0, 801, dtype=torch.float64)).tolist())
HEADS = ("trained", "any")


def _fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def min_calibration_tokens(target: float, delta: float) -> int:
    """The fewest calibration tokens with which a risk of at most ``target`` can be certified at level ``delta``.

    Even with no error at all, ``n`` tokens give the p-value ``(1 - target) ** n``; it is at most
    ``delta`` from ``n = ceil(log(delta) / log(1 - target))`` (45 tokens for 0.05 and 0.1).
    """
    target, delta = _fraction("target", target), _fraction("delta", delta)
    return math.ceil(math.log(delta) / math.log1p(-target) - 1e-12)


def _check_length(n: int, name: str, target: float, delta: float) -> None:
    need = min_calibration_tokens(target, delta)
    if n < need:
        raise ValueError(f"the calibration text has {n} tokens, too short for the requested guarantee: {name} "
                         f"{target:g} with delta {delta:g} needs at least {need} tokens (even with no error, "
                         f"(1 - {name}) ** n must be <= delta); give a longer calibration text or a larger {name}")


# --- the data: every exit's confidence and top-1 token, per token ---------------------------------

@dataclass(frozen=True)
class TokenScores:
    """What chapter 9 needs of every exit on a text, one column per predicted position.

    Attributes:
        scores: ``(E, N)`` each exit's max probability.
        predictions: ``(E, N)`` each exit's top-1 token; the last row is the full model's.
        targets: ``(N,)`` the true next token (the text's own).
        input_ids: ``(N,)`` the token read at each position.
        exit_names: one per exit; ``layers``: the layer of each exit; ``n_layers``: the model's depth.
    """

    scores: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor
    input_ids: torch.Tensor
    exit_names: tuple[str, ...]
    layers: tuple[int, ...]
    n_layers: int

    def __post_init__(self) -> None:
        e, n = self.scores.shape
        if self.predictions.shape != (e, n) or self.targets.shape != (n,) or self.input_ids.shape != (n,):
            raise ValueError(f"scores {tuple(self.scores.shape)}, predictions {tuple(self.predictions.shape)}, "
                             f"targets {tuple(self.targets.shape)} and input_ids {tuple(self.input_ids.shape)} must "
                             f"be (E, N), (E, N), (N,) and (N,)")
        if len(self.exit_names) != e or len(self.layers) != e:
            raise ValueError(f"exit_names and layers need one entry per exit ({e})")
        if e < 2:
            raise ValueError("a TokenScores needs at least one early exit and the final exit")

    def __len__(self) -> int:
        return self.scores.shape[1]

    @property
    def num_exits(self) -> int:
        return self.scores.shape[0]

    @property
    def agrees(self) -> torch.Tensor:
        """``(E, N)`` booleans: does exit k's token equal the full model's (the consistency labels)."""
        return self.predictions == self.predictions[-1]

    @property
    def correct(self) -> torch.Tensor:
        """``(E, N)`` booleans: is exit k's token the true next token (the abstaining model's labels)."""
        return self.predictions == self.targets

    def select(self, index: torch.Tensor | slice) -> "TokenScores":
        """The tokens at ``index`` (a slice, indices or a boolean mask)."""
        return TokenScores(self.scores[:, index], self.predictions[:, index], self.targets[index],
                           self.input_ids[index], self.exit_names, self.layers, self.n_layers)

    @classmethod
    def join(cls, parts: Sequence["TokenScores"]) -> "TokenScores":
        """The tokens of several texts of the same model, one after the other (e.g. the two held-out halves)."""
        if not parts or any((p.exit_names, p.layers, p.n_layers) != (parts[0].exit_names, parts[0].layers,
                                                                     parts[0].n_layers) for p in parts):
            raise ValueError("parts must be a non-empty list of TokenScores of the same exits")
        return cls(torch.cat([p.scores for p in parts], 1), torch.cat([p.predictions for p in parts], 1),
                   torch.cat([p.targets for p in parts]), torch.cat([p.input_ids for p in parts]),
                   parts[0].exit_names, parts[0].layers, parts[0].n_layers)

    def outputs(self) -> ExitOutputs:
        """An :class:`~eelib.outputs.ExitOutputs` for :func:`eelib.rejection.calibrate_reject` and its evaluation,
        labelled with the **true** next tokens, over a reduced class set that keeps what a max-probability
        policy reads.

        Class 0 stands for the true token and class 1 for a wrong one; exit k's row puts its max
        probability ``p`` on class 0 if its token is right (else on class 1) and spreads ``1 - p`` evenly
        over the other ``C - 1`` classes, with ``C > 1 / p`` for every row so that ``p`` stays the largest.
        So each row's max probability is ``p`` (up to rounding) and its prediction is right exactly when
        the model's is: every max-probability policy decides and scores as on the full logits, at a
        fraction of their size (tested against the full logits).
        """
        p = self.scores.double().clamp(max=1.0)
        c = max(3, int(1 / float(p.min())) + 2)
        rest = ((1 - p) / (c - 1)).clamp(min=1e-30).log()  # (E, N)
        logits = rest[..., None].expand(*p.shape, c).clone()
        top = torch.where(self.correct, 0, 1)
        logits.scatter_(-1, top[..., None], p.log()[..., None])
        return ExitOutputs(logits.float(), torch.zeros(len(self), dtype=torch.long), self.exit_names)


def _digest(ee: EarlyExitLM, text: str, max_tokens: int | None) -> str:
    h = hashlib.sha256()
    h.update(f"{ee.lm.name}|{ee.layers}|{ee.kind}|{max_tokens}|".encode())
    h.update(text.encode("utf-8"))
    for name, tensor in sorted(ee.state_dict().items()):  # the weights: a retrained model gets a new key
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def _pieces(text: str, size: int = 8000) -> list[str]:
    """``text`` cut at blank lines (a new speech) into pieces of about ``size`` characters."""
    pieces, start = [], 0
    while start < len(text):
        cut = text.find("\n\n", start + size)
        end = len(text) if cut < 0 else cut + 2
        pieces.append(text[start:end])
        start = end
    return pieces


def token_scores(ee: EarlyExitLM, text: str, *, max_tokens: int | None = None, heads: str = "trained",
                 cache: bool = True) -> TokenScores:
    """Every exit's max probability and top-1 token on ``text``, the full model's token and the true next token.

    The text is run through :func:`eelib.lm.exits.token_exit_outputs` in pieces of about 8,000
    characters cut at blank lines (so the logits of one piece at a time are in memory), and only
    the scores and tokens are kept. The result is cached in ``<eelib cache>/lm_rejection/``, keyed by
    the text, the exits and the weights (a retrained model is computed afresh).

    Args:
        ee: the model with its exits (:func:`eelib.lm.exits.course_exits`).
        text: e.g. ``heldout_text("all")``.
        max_tokens: keep at most this many tokens (default all).
        heads: ``"trained"`` (default): the exits must have trained heads — the chapter's guarantees and
            figures are for them; a logit-lens ``ee`` raises a ValueError. ``"any"``: the logit lens too.
        cache: read and write the cache.
    """
    import eelib._util.cache as cache_mod

    if heads not in HEADS:
        raise ValueError(f"heads must be one of {', '.join(HEADS)}, got {heads!r}")
    if heads == "trained" and ee.adapters is None:
        raise ValueError(f"ee's exits after layers {list(ee.exit_layers)} use the logit lens (no trained heads), and "
                         f"heads='trained' needs trained exit heads: use eelib.course_exits(lm) (its shipped heads) or "
                         f"EarlyExitLM.from_pretrained, or pass heads='any' to study the logit lens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    path = cache_mod.cache_root() / "lm_rejection" / f"{ee.lm.name}-{_digest(ee, text, max_tokens)}.pt"
    fields = ("scores", "predictions", "targets", "input_ids")
    if cache and path.is_file():
        saved = torch.load(path, weights_only=True)
        return TokenScores(*(saved[f] for f in fields), ee.exit_names, ee.layers, ee.lm.n_layers)
    parts = {f: [] for f in fields}
    n = 0
    for piece in _pieces(text):
        if max_tokens is not None and n >= max_tokens:
            break
        try:
            out = token_exit_outputs(ee, piece, max_tokens=max_tokens - n if max_tokens else 10 ** 9)
        except ValueError:  # a piece of fewer than 2 tokens: nothing to predict
            continue
        logits = out.outputs.logits  # (E, T, V)
        predictions = logits.argmax(-1)
        predictions[-1] = out.outputs.labels  # the full model's top-1 at full precision
        parts["scores"].append(get_measure(MEASURE).fn(logits))
        parts["predictions"].append(predictions)
        parts["targets"].append(out.targets)
        parts["input_ids"].append(out.input_ids)
        n += logits.shape[1]
    if not parts["scores"]:
        raise ValueError("text must have at least 2 tokens: one to read and one to predict")
    data = {f: torch.cat(parts[f], -1).cpu() for f in fields}
    if cache:
        cache_mod.ensure_writable_dir(path.parent, what="eelib cache folder")
        with cache_mod.atomic_path(path) as tmp:
            torch.save(data, tmp)
    return TokenScores(*(data[f] for f in fields), ee.exit_names, ee.layers, ee.lm.n_layers)


# --- 1. token exits with a guarantee (CALM's consistency) ------------------------------------

def _candidates(candidates: Sequence[float] | None, ordered: bool = True) -> torch.Tensor:
    values = torch.as_tensor(CANDIDATES if candidates is None else list(candidates), dtype=torch.float64)
    if values.ndim != 1 or len(values) == 0 or torch.isnan(values).any():
        raise ValueError("candidates must be a non-empty sequence of thresholds")
    if ordered and (torch.diff(values) > 0).any():
        raise ValueError("candidates must run from the strictest threshold (highest) to the loosest, "
                         "fixed before the data are seen")
    return values


def exits_by_candidate(data: TokenScores, candidates: Sequence[float] | None = None) -> torch.Tensor:
    """``(G, N)`` uint8: the exit each token takes with each candidate threshold shared by the early exits.

    The rule of :func:`eelib.policies.first_exits` (the first early exit whose score passes, by
    :meth:`eelib.policies.Measure.passes`, else the final exit), for every candidate at once.
    """
    values, e = _candidates(candidates, ordered=False), data.num_exits
    measure = get_measure(MEASURE)
    exits = torch.full((len(values), len(data)), e - 1, dtype=torch.uint8)
    for k in reversed(range(e - 1)):  # the earliest passing exit is written last
        exits[measure.passes(data.scores[k].double()[None], values[:, None])] = k
    return exits


def _inconsistent(data: TokenScores, exits: torch.Tensor) -> torch.Tensor:
    """``(G, N)`` booleans: the token's prediction at its exit differs from the full model's."""
    return ~data.agrees.gather(0, exits.long())


@dataclass(frozen=True)
class ConsistencyThreshold:
    """A threshold shared by the early exits, chosen for consistency with the full model, and its calibration figures."""

    threshold: float  # tokens whose max probability at an early exit is >= it leave there (inf: none leaves)
    method: str  # "guaranteed" or "naive"
    epsilon: float  # the disagreement with the full model asked for
    delta: float  # the allowed probability of a disagreement above epsilon (nan for "naive")
    disagreement: float  # on the calibration tokens
    disagreement_bound: float  # Clopper-Pearson (1 - delta) upper bound of the true disagreement (nan for "naive")
    early: float  # share of the calibration tokens that leave before the final exit
    n_calibration: int
    n_disagree: int
    n_tested: int  # hypotheses tested before the sequence stopped (the naive rule tests none)
    num_exits: int

    @property
    def policy(self) -> ExitPolicy:
        """The chapter 4 / 7 policy (usable with :func:`eelib.early_exit_generate` and :func:`eelib.evaluate_policy`)."""
        return ExitPolicy(MEASURE, (self.threshold,) * (self.num_exits - 1))


def _choose(values: torch.Tensor, counts: torch.Tensor, exits: torch.Tensor, num_exits: int, *, method: str,
            epsilon: float, delta: float, bound: bool = True) -> ConsistencyThreshold:
    """The last candidate of the fixed sequence that passes; ``counts``: disagreements per candidate on the
    calibration tokens, ``exits``: ``(G, n)`` their exits."""
    n = exits.shape[1]
    if method == "naive":  # chapter 7: the calibration disagreement itself must be <= epsilon
        passes = (counts <= math.floor(epsilon * n + 1e-9)).tolist()
    else:  # the exact binomial test: P(Binomial(n, epsilon) <= k_j) <= delta
        # a count at or above the binomial's median has a p-value >= 1/2 > delta: the sequence stops there at the
        # latest, so the tests after it are never looked at (and not computed: the tail's cost grows with the count)
        stop = (counts >= math.ceil(epsilon * n)).nonzero()
        end = int(stop[0]) + 1 if delta < 0.5 and len(stop) else len(counts)
        head = counts[:end]
        passes = (binomial_tail(head, torch.full_like(head, n), epsilon) <= delta).tolist()
    chosen, tested = None, 0
    for j, ok in enumerate(passes):  # fixed sequence: strictest first, stop at the first failure
        tested += 1
        if not ok:
            break
        chosen = j
    guaranteed = method == "guaranteed"
    if chosen is None:
        return ConsistencyThreshold(math.inf, method, epsilon, delta if guaranteed else math.nan, 0.0,
                                    0.0 if guaranteed else math.nan, 0.0, n, 0, tested, num_exits)
    k = int(counts[chosen])
    upper = binomial_upper_bound(k, n, delta) if guaranteed and bound else math.nan
    early = float((exits[chosen] < num_exits - 1).double().mean())
    return ConsistencyThreshold(float(values[chosen]), method, epsilon, delta if guaranteed else math.nan,
                                k / n, upper, early, n, k, tested, num_exits)


def consistency_threshold(data: TokenScores, *, epsilon: float, delta: float,
                          candidates: Sequence[float] | None = None) -> ConsistencyThreshold:
    """The loosest shared threshold whose disagreement with the full model is ``<= epsilon`` with probability ``>= 1 - delta``.

    CALM's consistency guarantee (Schuster et al. 2022) with Learn-then-Test's fixed-sequence testing:
        1. Candidates: fixed before the data (default :data:`CANDIDATES`), strictest first.
        2. Candidate ``j`` sends each calibration token to its first early exit whose max probability
           passes it (else to the final exit); ``k_j`` of the ``n`` tokens then predict another token than
           the full model. The null hypothesis "its disagreement is above epsilon" has the exact binomial
           p-value ``P(Binomial(n, epsilon) <= k_j)`` (:func:`eelib.rejection.binomial_tail`, the test of
           :func:`eelib.rejection.guaranteed_threshold`; here the risk is over all ``n`` tokens, since
           a token that goes on to the full model agrees with it).
        3. Walk down the candidates while ``p_j <= delta`` and stop at the first failure; the threshold
           is the last certified one (``inf``: no token leaves early).

    Raises:
        ValueError: epsilon or delta outside (0, 1); a calibration text too short to certify even with
            no disagreement (the message says how many tokens are needed).
    """
    epsilon, delta = _fraction("epsilon", epsilon), _fraction("delta", delta)
    _check_length(len(data), "epsilon", epsilon, delta)
    values = _candidates(candidates)
    exits = exits_by_candidate(data, values.tolist())
    counts = _inconsistent(data, exits).sum(1)
    return _choose(values, counts, exits, data.num_exits, method="guaranteed", epsilon=epsilon, delta=delta)


def naive_consistency_threshold(data: TokenScores, *, epsilon: float,
                                candidates: Sequence[float] | None = None) -> ConsistencyThreshold:
    """Chapter 7's way, on the same candidates: the loosest threshold whose disagreement *on the calibration
    tokens* is at most ``epsilon`` (walking down from the strictest; no guarantee on new tokens)."""
    epsilon = _fraction("epsilon", epsilon)
    values = _candidates(candidates)
    exits = exits_by_candidate(data, values.tolist())
    counts = _inconsistent(data, exits).sum(1)
    return _choose(values, counts, exits, data.num_exits, method="naive", epsilon=epsilon, delta=math.nan)


@dataclass(frozen=True)
class ConsistencyEval:
    """A shared threshold on a set of tokens."""

    disagreement: float  # share of the tokens whose prediction differs from the full model's
    exit_fractions: tuple[float, ...]  # share of the tokens leaving at each exit
    mean_exit_layer: float  # the layer at which a token's prediction is out, on average
    relative_flops: float  # mean FLOPs per token / the full model's (nan without costs)


def evaluate_consistency(data: TokenScores, threshold: float, costs=None) -> ConsistencyEval:
    """Disagreement, where tokens leave and (with a cost description, e.g. ``token_exit_costs(ee, kv="copy")``)
    the FLOPs of a shared threshold on ``data``."""
    exits = exits_by_candidate(data, [threshold]).long()
    wrong = _inconsistent(data, exits)[0]
    fractions = torch.bincount(exits[0], minlength=data.num_exits).double() / len(data)
    layers = torch.tensor(data.layers, dtype=torch.float64)[exits[0]]
    flops = math.nan
    if costs is not None:
        exit_flops, full = exit_and_full_flops(costs)
        flops = float(torch.tensor(exit_flops, dtype=torch.float64)[exits[0]].mean()) / full
    return ConsistencyEval(float(wrong.double().mean()), tuple(fractions.tolist()), float(layers.mean()), flops)


# --- 2. a model that abstains --------------------------------------------------------------------

def abstain_threshold(data: TokenScores, *, alpha: float, delta: float, exit: int = -1) -> GuaranteedThreshold:
    """Selective next-token prediction with a guarantee: :func:`eelib.rejection.guaranteed_threshold` on the
    max probability of exit ``exit`` (default the full model), errors counted against the **true** next token.

    With probability at least ``1 - delta``, the share of wrong tokens among those the model answers
    (its selective risk, on tokens exchangeable with the calibration tokens) is at most ``alpha``.

    Raises:
        ValueError: alpha or delta outside (0, 1); an exit that does not exist; a calibration text too
            short to certify even with no error (the message says how many tokens are needed).
    """
    alpha, delta = _fraction("alpha", alpha), _fraction("delta", delta)
    if isinstance(exit, bool) or not isinstance(exit, int) or not -data.num_exits <= exit < data.num_exits:
        raise ValueError(f"exit must be an exit index from 0 to {data.num_exits - 1} (or -1 for the full model), "
                         f"got {exit!r}")
    _check_length(len(data), "alpha", alpha, delta)
    return guaranteed_threshold(data.scores[exit], data.correct[exit], alpha=alpha, delta=delta, measure=MEASURE)


def risk_coverage_by_exit(data: TokenScores) -> dict:
    """Each exit's risk-coverage curve against the true next token (:func:`eelib.rejection.risk_coverage_curve`)."""
    return {name: risk_coverage_curve(data.scores[k], data.correct[k], MEASURE) for k, name in enumerate(data.exit_names)}


def decisions(policy, data: TokenScores) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's exit and whether it is rejected under a :class:`~eelib.rejection.RejectPolicy`
    (:func:`eelib.rejection.decide_all` on the max probabilities)."""
    if policy.num_exits != data.num_exits:
        raise ValueError(f"policy has {policy.num_exits} exits but data has {data.num_exits}")
    return decide_all(policy, data.scores)

