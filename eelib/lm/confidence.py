"""Cheaper exit decisions for tokens (CALM, Schuster et al. 2022): decide from the hidden state, pay a head only to leave.

max_prob, entropy and margin (:mod:`eelib.policies`) need the exit's logits: a ``d x vocab``
product at every exit a token passes, about two blocks' FLOPs on the course model. CALM's two cheap
measures look at the hidden state instead, so a token that goes on pays no head at all:

* **saturation** — the cosine between the hidden state after the exit's layer and the one before
  it (no parameters): when a layer hardly changes the state, the prediction has settled;
* **classifier** — a learned exit classifier: a linear layer on the (normalised) hidden state,
  trained on the frozen model to predict "this exit's top-1 token equals the final layer's"
  (logistic regression, :func:`train_exit_classifiers`); its output is that probability.

Both are higher-is-confident; a :class:`StateGate` holds one of them and one threshold per early
exit, and :func:`eelib.lm.generate.early_exit_generate` (``gate=``) applies it while generating;
:func:`calibrate_gate` chooses a shared threshold for an agreement target, as
:func:`eelib.policies.calibrate` does for the logit measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eelib._util.eval_mode import eval_mode
from eelib.lm.model import encode
from eelib.lm.exits import EarlyExitLM, _check_max_tokens, check_exits
from eelib.policies import Measure, first_exits
from eelib._util.validation import as_thresholds, check_max_candidates

STATE_MEASURES = ("saturation", "classifier")
_STATE_SCORE = Measure("state", lambda s: s, higher_is_confident=True, one_exit=True)  # both: higher is confident


def saturation(h: torch.Tensor, h_before: torch.Tensor) -> torch.Tensor:
    """Cosine between each row of the state after a layer and before it: ``(..., d)`` x 2 -> ``(...)``, in [-1, 1]."""
    return F.cosine_similarity(h.float(), h_before.float(), dim=-1)


class ExitClassifiers(nn.Module):
    """One logistic regression per early exit on the layer-normalised hidden state: P(exit agrees with the final)."""

    def __init__(self, num_early: int, d: int):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(d, 1) for _ in range(num_early))

    def forward(self, k: int, h: torch.Tensor) -> torch.Tensor:  # (..., d) -> (...)
        return torch.sigmoid(self.linears[k](F.layer_norm(h.float(), h.shape[-1:])).squeeze(-1))


@dataclass(frozen=True)
class StateGate:
    """A hidden-state confidence measure (``"saturation"`` or ``"classifier"``) and one threshold per early exit.

    A token leaves at the first early exit whose score is at least its threshold; only then is that
    exit's head computed.
    """

    measure: str
    thresholds: tuple[float, ...]
    classifiers: ExitClassifiers | None = None

    def __post_init__(self) -> None:
        if self.measure not in STATE_MEASURES:
            raise ValueError(f"measure must be one of {', '.join(STATE_MEASURES)}, got {self.measure!r}")
        if self.measure == "classifier" and self.classifiers is None:
            raise ValueError("measure='classifier' needs classifiers= (train them with train_exit_classifiers)")
        object.__setattr__(self, "thresholds", as_thresholds(self.thresholds, "thresholds"))

    def score(self, k: int, h: torch.Tensor, h_before: torch.Tensor) -> torch.Tensor:
        """Exit ``k``'s score for states ``h`` (after the exit's layer) and ``h_before`` (before that layer)."""
        if self.measure == "saturation":
            return saturation(h, h_before)
        return self.classifiers(k, h)

    def passes(self, score: torch.Tensor | float, k: int) -> torch.Tensor | bool:
        """The exit decision at early exit ``k`` (`eelib.policies.Measure.passes`: score >= threshold)."""
        return _STATE_SCORE.passes(score, self.thresholds[k])


def _states(ee: EarlyExitLM, text: str, max_tokens: int):
    """Per early exit: the states after and before its layer ``(N, d)``; and ``correct`` ``(E, N)``
    (in eval mode: no dropout; the caller's mode is restored)."""
    _check_max_tokens(max_tokens)
    ids = encode(ee.lm, text)[: max_tokens]
    after = [[] for _ in ee.exit_layers]
    before = [[] for _ in ee.exit_layers]
    correct = []
    window = ee.lm.context_length
    with torch.no_grad(), eval_mode(ee):
        for start in range(0, len(ids), window):
            chunk = ids[start:start + window].to(ee.lm.device)[None]
            hs = ee.model(chunk, output_hidden_states=True).hidden_states
            for k, layer in enumerate(ee.exit_layers):
                after[k].append(hs[layer][0].cpu())
                before[k].append(hs[layer - 1][0].cpu())
            logits = [ee.head(k, hs[l]) for k, l in enumerate(ee.exit_layers)] + [ee.model.lm_head(hs[-1])]
            top = torch.stack(logits)[:, 0].argmax(-1)
            correct.append((top == top[-1]).cpu())
    return [torch.cat(a) for a in after], [torch.cat(b) for b in before], torch.cat(correct, 1)


def train_exit_classifiers(ee: EarlyExitLM, text: str, *, max_tokens: int = 8000, steps: int = 300,
                           lr: float = 0.05, seed: int = 0) -> ExitClassifiers:
    """Train the exit classifiers on the frozen model: one logistic regression per early exit, full batch (Adam),
    on every token of ``text`` (up to ``max_tokens``); the label is "this exit's top-1 equals the final's".

    ``seed`` fixes the classifiers' initialisation; the caller's random number generator is left as it was."""
    check_exits(ee, "train_exit_classifiers")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    after, _, correct = _states(ee, text, max_tokens)
    with torch.random.fork_rng():  # seeded here (torch.manual_seed seeds every device), the caller's streams untouched
        torch.manual_seed(seed)
        clf = ExitClassifiers(len(ee.exit_layers), ee.model.config.n_embd)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    for _ in range(steps):
        loss = sum(F.binary_cross_entropy(clf(k, after[k]), correct[k].float()) for k in range(len(after)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.to(ee.lm.device).eval().requires_grad_(False)


@dataclass(frozen=True)
class GateCalibration:
    """The gate chosen by :func:`calibrate_gate`, its agreement and mean exit layer on the calibration text."""

    gate: StateGate
    agreement: float
    avg_exit_layer: float


def state_scores(ee: EarlyExitLM, text: str, measure: str, classifiers: ExitClassifiers | None = None, *,
                 max_tokens: int = 8000) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``(E - 1, N)`` of a hidden-state measure at every early exit on ``text``, and ``correct`` ``(E, N)``
    (each exit's top-1 equals the final exit's)."""
    check_exits(ee, "state_scores")
    gate = StateGate(measure, (0.0,) * len(ee.exit_layers), classifiers)
    after, before, correct = _states(ee, text, max_tokens)
    with torch.no_grad():
        scores = torch.stack([gate.score(k, a.to(ee.lm.device), b.to(ee.lm.device)).cpu()
                              for k, (a, b) in enumerate(zip(after, before))])
    return scores, correct


def calibrate_gate(ee: EarlyExitLM, text: str, measure: str, *, target: float = 0.95,
                   classifiers: ExitClassifiers | None = None, max_tokens: int = 8000,
                   max_candidates: int = 200) -> GateCalibration:
    """The lowest shared threshold (most tokens leaving early) whose agreement with the full model on ``text`` is
    at least ``target``; candidates are quantiles of the early exits' scores, and "never exit" (inf)."""
    check_exits(ee, "calibrate_gate")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target!r}")
    check_max_candidates(max_candidates)
    scores, correct = state_scores(ee, text, measure, classifiers, max_tokens=max_tokens)
    full = torch.cat([scores, torch.zeros(1, scores.shape[1])])  # the final exit takes the rest
    layers = torch.tensor(ee.layers, dtype=torch.float64)
    qs = torch.linspace(0, 1, max_candidates, dtype=torch.float64)
    candidates = sorted(set(torch.quantile(scores.flatten().double(), qs).tolist())) + [math.inf]
    for t in candidates:  # from the loosest to the strictest: the first that meets the target
        exits = first_exits(full, (t,) * len(ee.exit_layers), _STATE_SCORE)
        agreement = correct.double().gather(0, exits[None]).mean().item()
        if agreement >= target - 1e-12:
            return GateCalibration(StateGate(measure, (t,) * len(ee.exit_layers), classifiers), agreement,
                                   layers[exits].mean().item())
    raise AssertionError("never exiting agrees with the full model everywhere")  # unreachable: t = inf
