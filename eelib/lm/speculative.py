"""Self-speculative decoding: early exits draft the easy tokens, the rest of the model checks them at once.

Plain early exit (:mod:`eelib.lm.generate`) leaves a debt: the layers a token skipped still owe
keys and values to every later token. Self-speculative decoding (Draft & Verify, Zhang et al.
2023; LayerSkip, Elhoushi et al. 2024) settles it exactly, in rounds:

1. **draft**: each new token runs up the model; at a draft exit whose head is confident enough it
   leaves: its token is a *draft*, fed back as the next input, and the next token starts. Two
   loops, one core (:func:`speculate`):

   * **fixed exit** (:func:`self_speculative_generate`): one draft exit after layer ``L``; drafting
     goes on while its max_prob passes the threshold (a *dynamic* draft length);
   * **dynamic exits** (:func:`dynamic_speculative_generate`, the talk author's DSSD: Valade 2024,
     arXiv 2407.21082): several draft exits (e.g. after layers 1, 2 and 4), each with its own
     calibrated threshold on a confidence measure (entropy, the paper's choice, or max_prob); a token
     leaves at the **first** exit that passes.

2. **verify**: a token that passes no exit (or the round's last, at ``max_draft`` drafts) runs to the
   last layer, and every pending draft runs its skipped layers *in the same block calls*
   (:meth:`~eelib.lm.decoder.Decoder.step_block`, chapter 7's lazy filling): nothing is computed twice.
   The final head gives the full model's greedy token at every position of the round.
3. **accept** the longest prefix of drafts equal to the full model's tokens, plus the full model's
   token after it (the "bonus": a round always makes at least one token). The cache is rolled back
   past it: later positions are overwritten by the next round.

The output is the full model's greedy decoding, token for token (tested against Hugging Face
``generate`` in float32 on the CPU; as with any batched computation, a near-tie between two tokens
could in principle round the other way in half precision), whatever the exits, thresholds or draft
length: the drafts only decide how many tokens one verification produces. Whether it is faster is
a matter of measured costs (a block's time against its rows, the heads, the overhead of a round) and
of the **acceptance rate** (:attr:`~eelib.lm.decoder.Generation.acceptance`): :mod:`eelib.lm.speed`
measures the costs and predicts the speed.

**A cheaper draft head.** The exit head is a ``d x vocab`` product, about two blocks' FLOPs on the
course model. ``draft_vocab`` lets the draft score only the most frequent tokens (a slice of ``lm_head``):
a draft outside them cannot be proposed, and the verification still makes the output exact.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch

from eelib._util.flops import flop_counter
from eelib._util.timing import synchronize as _sync
from eelib.lm.decoder import Decoder, Generation, Round, TokenStep, ops_tuple, prompt_ids
from eelib.lm.exits import HEADS_FOLDER, EarlyExitLM
from eelib.lm.model import _SHIPPED, LanguageModel, course_model_path, encode
from eelib.policies import MEASURES, Measure

SETTINGS_FILE = "speculative.json"  # beside the exit heads of a shipped course model: the calibrated defaults
DRAFT_MEASURE = MEASURES["max_prob"]  # the fixed-exit draft goes on while its exit is this confident
DYNAMIC_MEASURES = ("entropy", "max_prob")  # what the dynamic draft may decide with
FALLBACK = dict(threshold=0.5, max_draft=8, draft_vocab=None)  # for an exit (or a model) without calibrated settings
DYNAMIC_FALLBACK = dict(exit_layers=None, measure="entropy", thresholds=None, max_draft=6, draft_vocab=None)


@dataclass(frozen=True)
class SpeculativeSettings:
    """The draft's settings: exit (index into ``EarlyExitLM.layers``), threshold, most drafts per round,
    and the draft's vocabulary (token ids, or None for the whole vocabulary)."""

    draft_exit: int
    threshold: float
    max_draft: int
    draft_vocab: tuple[int, ...] | None


@dataclass(frozen=True)
class DynamicSettings:
    """The dynamic draft's settings: its exits (indices into ``EarlyExitLM.layers``, increasing), one threshold
    per exit on ``measure``, most drafts per round, and the draft heads' vocabulary (token ids or None)."""

    draft_exits: tuple[int, ...]
    measure: str
    thresholds: tuple[float, ...]
    max_draft: int
    draft_vocab: tuple[int, ...] | None


_FREQUENT: dict[tuple[int, int], tuple[int, ...]] = {}  # (tokenizer, k) -> the k most frequent of the calibration half


def frequent_tokens(lm: LanguageModel, text: str, k: int) -> tuple[int, ...]:
    """The ``k`` most frequent token ids of ``text`` (ties by id), for a trimmed draft head."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= lm.model.config.vocab_size:
        raise ValueError(f"k must be an integer from 1 to the vocabulary size ({lm.model.config.vocab_size}), got {k!r}")
    counts = Counter(encode(lm, text).tolist())
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    rest = [t for t in range(lm.model.config.vocab_size) if t not in counts]  # unseen ones last, by id
    return tuple(sorted((ranked + rest)[:k]))


def shipped_settings(ee: EarlyExitLM) -> dict:
    """The calibration saved beside a shipped course model's exit heads (``speculative.json``, written by
    ``python -m eelib.lm.draft_tuning``: the fastest fixed-exit settings for each draft layer, ``by_layer``,
    and the dynamic draft's, ``dynamic``), or an empty dict for other models (then `FALLBACK` applies)."""
    if ee.lm.name in _SHIPPED and ee.adapters is not None:  # calibrated for the trained heads only
        file = course_model_path(ee.lm.name) / HEADS_FOLDER / SETTINGS_FILE
        if file.is_file():
            return json.loads(file.read_text(encoding="utf-8"))
    return {}


def _draft_vocab(ee: EarlyExitLM, draft_vocab, default) -> tuple[int, ...] | None:
    from eelib.lm.exits import heldout_text

    vocab = ee.model.config.vocab_size
    if isinstance(draft_vocab, str):
        if draft_vocab != "default":
            raise ValueError(f"draft_vocab must be 'default', None, a number of tokens or token ids, got {draft_vocab!r}")
        draft_vocab = default
    if isinstance(draft_vocab, int) and not isinstance(draft_vocab, bool):
        if not 1 <= draft_vocab <= vocab:
            raise ValueError(f"draft_vocab must be a number of tokens from 1 to {vocab} (or token ids, or None), "
                             f"got {draft_vocab}")
        key = (id(ee.lm.tokenizer), draft_vocab)  # tokenising the text takes longer than a short generation
        if key not in _FREQUENT:
            _FREQUENT[key] = frequent_tokens(ee.lm, heldout_text("calibration"), draft_vocab)
        return None if draft_vocab == vocab else _FREQUENT[key]
    if draft_vocab is None:
        return None
    ids = torch.as_tensor(draft_vocab).flatten()
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"draft_vocab must hold integer token ids, got dtype {ids.dtype}")
    ids = tuple(int(t) for t in ids.tolist())
    if not ids or any(not 0 <= t < vocab for t in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"draft_vocab must hold distinct token ids from 0 to {vocab - 1}, got {len(ids)} ids")
    return ids


def _check_max_draft(max_draft) -> int:
    if isinstance(max_draft, bool) or not isinstance(max_draft, int) or max_draft < 1:
        raise ValueError(f"max_draft must be an integer >= 1 (the most tokens drafted per round), got {max_draft!r}")
    return max_draft


def resolve_settings(ee: EarlyExitLM, draft_exit: int | None = None, threshold: float | None = None,
                     max_draft: int | None = None, draft_vocab: Sequence[int] | int | None | str = "default"
                     ) -> SpeculativeSettings:
    """Fill in the fixed-exit draft's defaults and check its settings (errors name the argument).

    Defaults come from :func:`shipped_settings`: the draft exit is the one at the calibrated layer if
    ``ee`` has an exit there (else exit 0); ``draft_vocab="default"`` takes the calibrated size of a
    trimmed vocabulary (most frequent tokens of the calibration half), ``None`` the whole vocabulary,
    an int that many most frequent tokens, a sequence those token ids.
    """
    by_layer = {int(layer): values for layer, values in shipped_settings(ee).get("by_layer", {}).items()}
    if draft_exit is None:  # the fastest calibrated exit that ee has, else its first
        have = [l for l in sorted(by_layer, key=lambda l: -by_layer[l]["speedup"]) if l in ee.exit_layers]
        draft_exit = ee.exit_layers.index(have[0]) if have else 0
    early = range(len(ee.exit_layers))
    if isinstance(draft_exit, bool) or not isinstance(draft_exit, int) or draft_exit not in early:
        raise ValueError(f"draft_exit must be an early exit of the model, 0..{len(ee.exit_layers) - 1} (after layers "
                         f"{list(ee.exit_layers)}; the final exit cannot draft), got {draft_exit!r}")
    saved = by_layer.get(ee.exit_layers[draft_exit], FALLBACK)  # the settings calibrated for that exit's layer
    threshold = saved["threshold"] if threshold is None else threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number in [0, 1] (the draft's max_prob: 0 drafts every token, "
                         f"1 almost none), got {threshold!r}")
    max_draft = _check_max_draft(saved["max_draft"] if max_draft is None else max_draft)
    return SpeculativeSettings(draft_exit, float(threshold), max_draft,
                               _draft_vocab(ee, draft_vocab, saved.get("draft_vocab")))


def resolve_dynamic(ee: EarlyExitLM, exit_layers: Sequence[int] | None = None, *, measure: str | None = None,
                    thresholds: Sequence[float] | None = None, max_draft: int | None = None,
                    draft_vocab: Sequence[int] | int | None | str = "default") -> DynamicSettings:
    """Fill in the dynamic draft's defaults (the shipped calibration's ``dynamic`` entry, for the exits of ``ee``
    after those layers) and check its settings: ``exit_layers`` increasing early exits of ``ee``, one threshold
    per exit inside the measure's range (errors name the argument)."""
    saved = shipped_settings(ee).get("dynamic", DYNAMIC_FALLBACK)
    if exit_layers is None:
        exit_layers = [l for l in (saved["exit_layers"] or ee.exit_layers) if l in ee.exit_layers] or ee.exit_layers
    layers = list(exit_layers)
    if (not layers or any(isinstance(l, bool) or l not in ee.exit_layers for l in layers)
            or layers != sorted(set(layers))):
        raise ValueError(f"exit_layers must be increasing early-exit layers of the model (some of "
                         f"{list(ee.exit_layers)}), got {list(exit_layers)}")
    measure = saved["measure"] if measure is None else measure
    if measure not in DYNAMIC_MEASURES:
        raise ValueError(f"measure must be one of {', '.join(DYNAMIC_MEASURES)}, got {measure!r}")
    vocab = _draft_vocab(ee, draft_vocab, saved.get("draft_vocab"))
    n_classes = len(vocab) if vocab is not None else ee.model.config.vocab_size
    lo, hi = (0.0, 1.0) if measure == "max_prob" else (0.0, math.log(n_classes))
    if thresholds is None:
        by_layer = dict(zip(saved["exit_layers"] or (), saved["thresholds"] or ())) if saved.get("measure") == measure else {}
        thresholds = [by_layer.get(l, 0.5 if measure == "max_prob" else 1.0) for l in layers]
    thresholds = list(thresholds)
    if len(thresholds) != len(layers):
        raise ValueError(f"thresholds has {len(thresholds)} values but there are {len(layers)} draft exits "
                         f"(after layers {layers}): give one per exit")
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not lo <= t <= hi:
            raise ValueError(f"thresholds must be numbers in [{lo:g}, {hi:.4g}] (the range of {measure} over "
                             f"{n_classes} tokens), got {thresholds}")
    max_draft = _check_max_draft(saved["max_draft"] if max_draft is None else max_draft)
    return DynamicSettings(tuple(ee.exit_layers.index(l) for l in layers), measure,
                           tuple(float(t) for t in thresholds), max_draft, vocab)


class DraftHead:
    """Exit ``k``'s head for drafting: its adapter (or ``ln_f``) and ``lm_head``, on ``vocab`` token ids only
    when given. ``__call__(h)`` returns ``(score, token)`` as 0-d tensors: the ``measure`` (max_prob or
    entropy, over its vocabulary) and the most likely token."""

    def __init__(self, ee: EarlyExitLM, k: int, vocab: Sequence[int] | None = None, measure: str = "max_prob"):
        if measure not in DYNAMIC_MEASURES:
            raise ValueError(f"measure must be one of {', '.join(DYNAMIC_MEASURES)}, got {measure!r}")
        tf = ee.model.transformer
        self.norm = tf.ln_f if ee.adapters is None else ee.adapters[ee.layers[k] - 1]
        self.entropy = measure == "entropy"
        weight = ee.model.lm_head.weight  # (vocab, d), tied to the token embedding
        if vocab is None:
            self.ids = None
        else:
            self.ids = torch.tensor(vocab, dtype=torch.long, device=weight.device)
            weight = weight[self.ids]  # (V', d)
        self.weight_t = weight.float().T.contiguous()  # (d, V'), converted once, not at every draft step
        self.vocab_size = self.weight_t.shape[1]
        self.op = "draft:" + measure  # its name in a loop's trace (Decoder.ops)

    def __call__(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (1, d) -> (), ()
        z = self.norm(h)[0].float() @ self.weight_t  # renormalised over its vocabulary
        if self.entropy:
            logp = torch.log_softmax(z, -1)
            score, idx = -(logp.exp() * logp).sum(), z.argmax()
        else:
            score, idx = torch.softmax(z, -1).max(-1)
        return score, (idx if self.ids is None else self.ids[idx])


def speculate(ee: EarlyExitLM, ids: torch.Tensor, n_new: int, drafts: Sequence[tuple[int, DraftHead, float]],
              measure: Measure, max_draft: int, *, count_flops: bool = False) -> Generation:
    """The one draft / verify / accept loop of both speculative decoders (module docstring).

    Args:
        ids: the prompt ``(T,)`` on the model's device; ``n_new`` tokens are generated.
        drafts: ``(exit, head, threshold)`` per draft exit, by increasing layer: a token leaves at the first
            whose head's score passes its threshold (:meth:`~eelib.policies.Measure.passes`).
    """
    dec = Decoder(ee, "lazy", max_length=len(ids) + n_new - 1)  # the last token produced is never fed back
    ops = dec.new_ops()
    plan = [(k, ee.layers[k], head, t) for k, head, t in drafts]
    N, final, device = ee.lm.n_layers, ee.num_exits - 1, ids.device
    final_head = lambda h: ee.model.lm_head(ee.model.transformer.ln_f(h))  # noqa: E731
    counter = flop_counter() if count_flops else None
    produced: list[int] = []
    steps: list[TokenStep] = []
    rounds: list[Round] = []
    if counter is not None:
        counter.__enter__()
    try:
        token = int(dec.begin(ids))  # the next input (a host integer), not yet in the cache
        _sync(device)
        while len(produced) < n_new:
            t0 = time.perf_counter()
            start = pos = dec.length
            most = min(max_draft, n_new - len(produced) - 1)  # a round makes drafts + 1 tokens
            tokens, exits, confs = [], [], []
            while True:  # one position: up to its first confident exit (a draft), or to the top (verify)
                x = dec.embed_token(token, pos)
                ops["step", 1] += 1
                done, left = 0, False
                if len(tokens) < most:
                    for k, layer, head, threshold in plan:
                        for l in range(done, layer):
                            x = dec.step_block(l, x, pos)
                        done = layer
                        score, tok = head(x)
                        c = float(score)  # the host sync of a decision: it decides whether the token leaves

                        ops[head.op, head.vocab_size] += 1
                        if measure.passes(c, threshold):  # the one exit rule
                            dec.leave(layer, x, pos)  # its layers above run with the verification
                            token = int(tok)
                            tokens.append(token)
                            exits.append(k)
                            confs.append(c)
                            pos, left = pos + 1, True
                            break
                if not left:
                    break
            for l in range(done, N):  # verify: every pending draft joins the block calls at its next layer
                x = dec.step_block(l, x, pos, all_rows=l == N - 1)  # the last call: every position of the round
            full = final_head(x).argmax(-1).tolist()  # the full model's greedy tokens at start .. pos: one sync
            ops["final_head", len(x)] += 1
            ops["round", 1] += 1
            k = len(tokens)
            accepted = accepted_length(tokens, full)  # the accept rule, on host integers
            new = full[: accepted + 1]  # the accepted drafts equal these; the last is the bonus token
            token = new[-1]
            dec.length = start + accepted + 1  # positions beyond are stale and will be overwritten
            dec.pending.clear()
            _sync(device)
            seconds = time.perf_counter() - t0
            rounds.append(Round(k, accepted, accepted + 1, (k + 1) * N, seconds, tuple(tokens), tuple(exits)))
            per_token = seconds / (accepted + 1)
            for i, t in enumerate(new):
                drafted = i < accepted
                steps.append(TokenStep(t, exits[i] if drafted else final, ee.layers[exits[i]] if drafted else N,
                                       confs[i] if drafted else math.nan, per_token, math.nan))
            produced += new
    finally:
        if counter is not None:
            counter.__exit__(None, None, None)
    text = ee.lm.tokenizer.decode(ids.tolist() + produced)
    flops = int(counter.get_total_flops()) if counter is not None else 0
    computed = sum(r.layers for r in rounds)
    return Generation(tuple(ids.tolist()), tuple(steps), text, N, flops, "speculative",
                      computed - sum(s.layer for s in steps), tuple(rounds), ops_tuple(ops))


def _new_tokens(ee: EarlyExitLM, ids: torch.Tensor, max_new_tokens) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    return min(max_new_tokens, ee.lm.context_length - len(ids) + 1)


@torch.inference_mode()
def self_speculative_generate(ee: EarlyExitLM, prompt: str | Sequence[int] | torch.Tensor, *,
                              max_new_tokens: int = 40, draft_exit: int | None = None,
                              threshold: float | None = None, max_draft: int | None = None,
                              draft_vocab: Sequence[int] | int | None | str = "default",
                              count_flops: bool = False) -> Generation:
    """Greedy decoding at batch size 1, drafted by one early exit and verified by the rest of the model.

    The tokens are the full model's greedy tokens, always. Like ``generate`` with ``min_new_tokens``,
    it does not stop at the end-of-text token.

    Returns:
        A :class:`~eelib.lm.decoder.Generation`: ``tokens``, ``text``, one step per token (an accepted
        draft leaves at the draft exit with its confidence, a verified token at the final exit), its
        ``rounds`` and ``acceptance``, ``tokens_per_round``, and the ``ops`` it ran.

    Args:
        ee: the model and its exits (trained heads draft better than the logit lens).
        prompt: text or token ids; not empty, shorter than the context window.
        max_new_tokens: tokens to generate; fewer if the context window fills up.
        draft_exit: the early exit that drafts (index into ``ee.layers``, not the final one); default
            the calibrated one (:func:`resolve_settings`).
        threshold: draft while the exit's max_prob is at least this, in [0, 1]; default calibrated.
        max_draft: the most tokens drafted per round, >= 1; default calibrated.
        draft_vocab: the draft head's vocabulary: ``"default"`` (calibrated), ``None`` (all tokens), a
            number of most frequent tokens, or token ids.
        count_flops: count the loop's FLOPs with ``FlopCounterMode`` (slower; do not time it).

    Raises:
        ValueError: an empty prompt, one that fills the context window, ``max_new_tokens`` < 1, a
            ``draft_exit`` that is not an early exit, a ``threshold`` outside [0, 1], ``max_draft`` < 1.
    """
    ids = prompt_ids(ee, prompt).to(ee.lm.device)
    n_new = _new_tokens(ee, ids, max_new_tokens)
    s = resolve_settings(ee, draft_exit, threshold, max_draft, draft_vocab)
    head = DraftHead(ee, s.draft_exit, s.draft_vocab)
    return speculate(ee, ids, n_new, [(s.draft_exit, head, s.threshold)], DRAFT_MEASURE, s.max_draft,
                     count_flops=count_flops)


@torch.inference_mode()
def dynamic_speculative_generate(ee: EarlyExitLM, prompt: str | Sequence[int] | torch.Tensor, *,
                                 max_new_tokens: int = 40, exit_layers: Sequence[int] | None = None,
                                 measure: str | None = None, thresholds: Sequence[float] | None = None,
                                 max_draft: int | None = None, draft_vocab: Sequence[int] | int | None | str = "default",
                                 count_flops: bool = False) -> Generation:
    """Dynamic self-speculative decoding (DSSD): each token drafts at its first confident exit, exactly.

    Each new token runs up the model and leaves at the first of the draft exits (after ``exit_layers``)
    whose ``measure`` passes that exit's threshold: it is a draft and the next token starts. A token that
    passes none (or the ``max_draft``-th of a round) runs to the last layer and verifies every pending draft,
    whose skipped layers join its block calls. The tokens are the full model's greedy tokens, always.

    Args:
        exit_layers: the draft exits' layers, increasing, each an early exit of ``ee``; default calibrated.
        measure: ``"entropy"`` (leave when the entropy is at most the threshold) or ``"max_prob"``.
        thresholds: one per draft exit, in the measure's range; default calibrated for speed
            (:mod:`eelib.lm.draft_tuning`).
        max_draft, draft_vocab, max_new_tokens, count_flops: as :func:`self_speculative_generate`.

    Raises:
        ValueError: as :func:`self_speculative_generate`; exits not increasing or not early exits of ``ee``,
            a threshold per exit of the wrong length or outside the measure's range, an unknown measure.
    """
    ids = prompt_ids(ee, prompt).to(ee.lm.device)
    n_new = _new_tokens(ee, ids, max_new_tokens)
    s = resolve_dynamic(ee, exit_layers, measure=measure, thresholds=thresholds, max_draft=max_draft,
                        draft_vocab=draft_vocab)
    drafts = [(k, DraftHead(ee, k, s.draft_vocab, s.measure), t) for k, t in zip(s.draft_exits, s.thresholds)]
    return speculate(ee, ids, n_new, drafts, MEASURES[s.measure], s.max_draft, count_flops=count_flops)


def accepted_length(drafts: Sequence[int] | torch.Tensor, verified: Sequence[int] | torch.Tensor) -> int:
    """How many drafts the full model confirms: the length of the longest prefix of ``drafts`` (``k`` tokens)
    equal to ``verified[:k]`` (``verified``: the full model's greedy token at each of the ``k + 1`` positions).
    The accept rule of every speculative loop; host integers or tensors."""
    drafts = drafts.tolist() if isinstance(drafts, torch.Tensor) else drafts
    verified = verified.tolist() if isinstance(verified, torch.Tensor) else verified
    for i, t in enumerate(drafts):
        if t != verified[i]:
            return i
    return len(drafts)


def accepted_tokens(drafts: Sequence[int], verified: Sequence[int]) -> list[int]:
    """The tokens a round produces: the accepted drafts, then the full model's token after them (the bonus).

    Example: drafts ``[5, 7, 9]``, verified ``[5, 7, 2, 4]`` -> ``[5, 7, 2]``.
    """
    drafts, verified = torch.as_tensor(list(drafts), dtype=torch.long), torch.as_tensor(list(verified), dtype=torch.long)
    if len(verified) != len(drafts) + 1:
        raise ValueError(f"verified must hold one token more than drafts ({len(drafts) + 1}), got {len(verified)}")
    return verified[: accepted_length(drafts, verified) + 1].tolist()


def expected_tokens_per_round(acceptance: float, max_draft: int) -> float:
    """Tokens per round when each draft is accepted with probability ``acceptance``, independently, and
    ``max_draft`` are drafted: ``sum_{i=0..k} a^i = (1 - a^(k+1)) / (1 - a)`` (the bonus token included)."""
    if isinstance(acceptance, bool) or not isinstance(acceptance, (int, float)) or not 0 <= acceptance <= 1:
        raise ValueError(f"acceptance must be a number in [0, 1] (the acceptance rate), got {acceptance!r}")
    if isinstance(max_draft, bool) or not isinstance(max_draft, int) or max_draft < 0:
        raise ValueError(f"max_draft must be an integer >= 0 (drafts per round), got {max_draft!r}")
    return float(sum(acceptance ** i for i in range(max_draft + 1)))


PROMPT_TOKENS = 32


def calibration_prompts(lm: LanguageModel, n: int, part: str = "calibration") -> list[torch.Tensor]:
    """``n`` prompts of ``PROMPT_TOKENS`` tokens at evenly spaced places of a half of the held-out text
    (``"calibration"`` or ``"test"``), as the benchmarks take them."""
    from eelib.lm.exits import heldout_text

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    ids = encode(lm, heldout_text(part))
    starts = torch.linspace(0, len(ids) - PROMPT_TOKENS - 1, n).long().tolist()
    return [ids[s:s + PROMPT_TOKENS] for s in starts]


