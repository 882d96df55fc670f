"""Self-speculative decoding: an early exit drafts the easy tokens, the rest of the model checks them at once.

Plain early exit (:mod:`eelib.lm.generate`) leaves a debt: the layers a token skipped still owe
keys and values to every later token. Self-speculative decoding (Draft & Verify, Zhang et al.
2023; LayerSkip, Elhoushi et al. 2024) settles it exactly, in rounds:

1. **draft**: run the new token through layers ``1 .. L`` (the draft exit's layer) and the exit's
   head; while the head is confident (``max_prob >= threshold``) and fewer than ``max_draft``
   tokens are drafted, feed the drafted token back and draft the next one. A token the head is
   unsure of ends the draft (a *dynamic* draft length).
2. **verify**: the drafted positions go through layers ``L + 1 .. N`` together, one block call
   per layer, starting from the hidden states and reusing the lower layers' keys and values that
   drafting already wrote: nothing is computed twice. The final head gives the full model's
   greedy token at every drafted position.
3. **accept** the longest prefix of drafts equal to the full model's tokens, plus the full model's
   token after it (the "bonus": a round always makes at least one token). Cached keys and values
   beyond it are simply overwritten by the next round.

The output is the full model's greedy decoding, token for token (tested against Hugging Face
``generate`` in float32 on the CPU; as with any batched computation, a near-tie between two tokens
could in principle round the other way in half precision), whatever the draft exit, threshold or length: the draft only decides how many
tokens one verification pass produces. It pays because at batch size 1 a block call costs
about the same for 1 or a few rows (it is bound by the calls and by reading the weights, not by
arithmetic): a round of ``k`` drafts costs ``(k + 1) L`` small calls + up to ``k + 1`` draft heads +
``N - L`` calls of ``k + 1`` rows, and yields ``accepted + 1`` tokens.

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

from eelib.lm.model import _SHIPPED, LanguageModel, course_model_path, encode
from eelib.lm.exits import HEADS_FOLDER, EarlyExitLM
from eelib._util.flops import flop_counter
from eelib._util.timing import synchronize as _sync, timed
from eelib.lm.generate import Decoder, Generation, Round, TokenStep, _prompt_ids
from eelib.policies import MEASURES

SETTINGS_FILE = "speculative.json"  # beside the exit heads of a shipped course model: the calibrated defaults
DRAFT_MEASURE = MEASURES["max_prob"]  # the draft goes on while its exit is this confident
FALLBACK = dict(threshold=0.5, max_draft=8, draft_vocab=None)  # for an exit (or a model) without calibrated settings


@dataclass(frozen=True)
class SpeculativeSettings:
    """The draft's settings: exit (index into ``EarlyExitLM.layers``), threshold, most drafts per round,
    and the draft's vocabulary (token ids, or None for the whole vocabulary)."""

    draft_exit: int
    threshold: float
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
    ``python -m eelib.lm.speculative calibrate``: the fastest settings for each draft layer, ``by_layer``),
    or an empty dict for other models (then `FALLBACK` applies)."""
    if ee.lm.name in _SHIPPED:
        file = course_model_path(ee.lm.name) / HEADS_FOLDER / SETTINGS_FILE
        if file.is_file():
            return json.loads(file.read_text(encoding="utf-8"))
    return {}


def resolve_settings(ee: EarlyExitLM, draft_exit: int | None = None, threshold: float | None = None,
                     max_draft: int | None = None, draft_vocab: Sequence[int] | int | None | str = "default"
                     ) -> SpeculativeSettings:
    """Fill in the defaults and check the draft's settings (errors name the argument).

    Defaults come from :func:`shipped_settings`: the draft exit is the one at the calibrated layer if
    ``ee`` has an exit there (else exit 0); ``draft_vocab="default"`` takes the calibrated size of a
    trimmed vocabulary (most frequent tokens of the calibration half), ``None`` the whole vocabulary,
    an int that many most frequent tokens, a sequence those token ids.
    """
    from eelib.lm.exits import heldout_text

    saved = shipped_settings(ee) if ee.adapters is not None else {}  # calibrated for the trained heads only
    by_layer = {int(layer): values for layer, values in saved.get("by_layer", {}).items()}
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
    max_draft = saved["max_draft"] if max_draft is None else max_draft
    if isinstance(max_draft, bool) or not isinstance(max_draft, int) or max_draft < 1:
        raise ValueError(f"max_draft must be an integer >= 1 (the most tokens drafted per round), got {max_draft!r}")
    vocab = ee.model.config.vocab_size
    if isinstance(draft_vocab, str):
        if draft_vocab != "default":
            raise ValueError(f"draft_vocab must be 'default', None, a number of tokens or token ids, got {draft_vocab!r}")
        draft_vocab = saved.get("draft_vocab")
    if isinstance(draft_vocab, int) and not isinstance(draft_vocab, bool):
        if not 1 <= draft_vocab <= vocab:
            raise ValueError(f"draft_vocab must be a number of tokens from 1 to {vocab} (or token ids, or None), "
                             f"got {draft_vocab}")
        key = (id(ee.lm.tokenizer), draft_vocab)  # tokenising the text takes longer than a short generation
        if key not in _FREQUENT:
            _FREQUENT[key] = frequent_tokens(ee.lm, heldout_text("calibration"), draft_vocab)
        draft_vocab = None if draft_vocab == vocab else _FREQUENT[key]
    if draft_vocab is not None:
        ids = tuple(int(t) for t in torch.as_tensor(draft_vocab).flatten().tolist())
        if not ids or any(not 0 <= t < vocab for t in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"draft_vocab must hold distinct token ids from 0 to {vocab - 1}, got {len(ids)} ids")
        draft_vocab = ids
    return SpeculativeSettings(draft_exit, float(threshold), max_draft, draft_vocab)


class DraftHead:
    """Exit ``k``'s head for drafting: its adapter (or ``ln_f``) and ``lm_head``, on ``vocab`` token ids only
    when given. ``__call__(h)`` returns ``(confidence, token)`` as 0-d tensors (max_prob over its vocabulary)."""

    def __init__(self, ee: EarlyExitLM, k: int, vocab: Sequence[int] | None = None):
        tf = ee.model.transformer
        self.norm = tf.ln_f if ee.adapters is None else ee.adapters[ee.layers[k] - 1]
        weight = ee.model.lm_head.weight  # (vocab, d), tied to the token embedding
        if vocab is None:
            self.ids = None
        else:
            self.ids = torch.tensor(vocab, dtype=torch.long, device=weight.device)
            weight = weight[self.ids]  # (V', d)
        self.weight_t = weight.float().T.contiguous()  # (d, V'), converted once, not at every draft step

    def __call__(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (1, d) -> (), ()
        probs = torch.softmax(self.norm(h)[0].float() @ self.weight_t, -1)  # renormalised over its vocabulary
        conf, idx = probs.max(-1)
        return conf, (idx if self.ids is None else self.ids[idx])


@torch.inference_mode()
def self_speculative_generate(ee: EarlyExitLM, prompt: str | Sequence[int] | torch.Tensor, *,
                              max_new_tokens: int = 40, draft_exit: int | None = None,
                              threshold: float | None = None, max_draft: int | None = None,
                              draft_vocab: Sequence[int] | int | None | str = "default",
                              count_flops: bool = False) -> Generation:
    """Greedy decoding at batch size 1, drafted by an early exit and verified by the rest of the model (module docstring).

    The tokens are the full model's greedy tokens, always. Like ``generate`` with ``min_new_tokens``,
    it does not stop at the end-of-text token.

    Returns:
        A :class:`~eelib.lm.generate.Generation`: ``tokens``, ``text``, one step per token (an accepted
        draft leaves at the draft exit with its confidence, a verified token at the final exit), its
        ``rounds`` (drafted, accepted, tokens, layers, seconds) and ``acceptance``, ``tokens_per_round``.

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
    ids = _prompt_ids(ee, prompt).to(ee.lm.device)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    settings = resolve_settings(ee, draft_exit, threshold, max_draft, draft_vocab)
    n_new = min(max_new_tokens, ee.lm.context_length - len(ids) + 1)
    dec = Decoder(ee, max_length=len(ids) + n_new - 1)  # the last token produced is never fed back
    head = DraftHead(ee, settings.draft_exit, settings.draft_vocab)
    L, N = ee.layers[settings.draft_exit], ee.lm.n_layers
    tf, device = ee.model.transformer, ids.device
    final_layer = ee.num_exits - 1
    counter = flop_counter() if count_flops else None
    produced: list[int] = []
    steps: list[TokenStep] = []
    rounds: list[Round] = []
    if counter is not None:
        counter.__enter__()
    try:
        token = dec.begin(ids)  # (1,): the next input, not yet in the cache
        _sync(device)
        while len(produced) < n_new:
            t0 = time.perf_counter()
            start = dec.length
            most = min(settings.max_draft, n_new - len(produced) - 1)  # a round makes drafts + 1 tokens
            states, drafts, confs = [], [], []
            while True:  # draft: layers 1..L for each new position, the exit's head while it is confident
                x = dec.embed(token, start + len(states))
                for l in range(L):
                    x = dec.block(l, x, start + len(states))
                states.append(x)
                if len(drafts) == most:
                    break
                conf, tok = head(x)
                c = float(conf)  # the one host sync of a draft step: it decides whether to go on
                if not DRAFT_MEASURE.passes(c, settings.threshold):  # the one exit rule: max_prob >= threshold
                    break
                drafts.append(tok)
                confs.append(c)
                token = tok.view(1)
            h = torch.cat(states)  # (k + 1, d): the layer-L states of the positions start .. start + k
            for l in range(L, N):  # verify: one call per upper layer for all the drafted positions
                h = dec.block(l, h, start)
            full = ee.model.lm_head(tf.ln_f(h)).argmax(-1)  # (k + 1,) the full model's greedy tokens
            k = len(drafts)
            accepted = accepted_length(torch.stack(drafts), full) if k else 0  # one host sync per round
            new = full[: accepted + 1].tolist()  # the accepted drafts equal these; the last is the bonus token
            token = full[accepted:accepted + 1]
            dec.length = start + accepted + 1  # positions beyond are stale and will be overwritten
            _sync(device)
            seconds = time.perf_counter() - t0
            rounds.append(Round(k, accepted, accepted + 1, (k + 1) * N, seconds))
            per_token = seconds / (accepted + 1)
            for i, t in enumerate(new):
                drafted = i < accepted
                steps.append(TokenStep(t, settings.draft_exit if drafted else final_layer, L if drafted else N,
                                       confs[i] if drafted else math.nan, per_token, math.nan))
            produced += new
    finally:
        if counter is not None:
            counter.__exit__(None, None, None)
    text = ee.lm.tokenizer.decode(ids.tolist() + produced)
    flops = int(counter.get_total_flops()) if counter is not None else 0
    computed = sum(r.layers for r in rounds)
    return Generation(tuple(ids.tolist()), tuple(steps), text, N, flops, "speculative",
                      computed - sum(s.layer for s in steps), tuple(rounds))


def accepted_length(drafts: torch.Tensor, verified: torch.Tensor) -> int:
    """How many drafts the full model confirms: the length of the longest prefix of ``drafts`` ``(k,)`` equal
    to ``verified[:k]`` (``verified``: the full model's greedy token at each of the ``k + 1`` positions)."""
    if len(drafts) == 0:
        return 0
    return int((drafts == verified[: len(drafts)]).int().cumprod(0).sum())


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
    if not 0 <= acceptance <= 1:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance!r}")
    return float(sum(acceptance ** i for i in range(max_draft + 1)))


def measure_block_time(ee: EarlyExitLM, rows: Sequence[int] = (1, 2, 4, 8, 16), *, context: int = 64,
                       repeats: int = 200, layer: int = 0) -> list[list[float]]:
    """Seconds of one :meth:`Decoder.block` call on ``rows`` new positions after ``context`` cached ones,
    ``repeats`` times for each row count (interleaved, synchronised on the model's device)."""
    if any(not isinstance(r, int) or r < 1 for r in rows) or context + max(rows) > ee.lm.context_length:
        raise ValueError(f"rows must be positive integers with context + rows <= {ee.lm.context_length}, got "
                         f"{list(rows)} with context {context}")
    dec = Decoder(ee)
    device = ee.lm.device
    xs = {r: torch.randn(r, dec.d, device=device, dtype=dec.keys.dtype) for r in rows}
    times: dict[int, list[float]] = {r: [] for r in rows}
    with torch.inference_mode():
        for i in range(repeats + 5):  # 5 warm-up rounds
            for r in rows:
                seconds = timed(lambda: dec.block(layer, xs[r], context), device)
                if i >= 5:
                    times[r].append(seconds)
    return [times[r] for r in rows]


# --- calibration of the defaults -----------------------------------------------------------------

def calibrate_speculative(ee: EarlyExitLM, prompts: Sequence[torch.Tensor], *, thresholds: Sequence[float] = (
        0.0, 0.2, 0.4, 0.6, 0.8), max_drafts: Sequence[int] = (4, 8), draft_vocabs: Sequence[int | None] = (None, 1024),
        max_new_tokens: int = 64, repeats: int = 2, progress: bool = True) -> dict:
    """Measure self-speculative decoding for every early exit of ``ee`` and every setting of the grid, and
    keep the fastest per exit layer: the defaults of :func:`self_speculative_generate`.

    Speed is measured with :func:`eelib.lm.generate.measure_generation_speed`: each setting's loop and
    the plain loop (``"no exits"``) run in turn on the same prompts, the fastest of ``repeats`` runs
    counting, so a speedup is a ratio measured side by side. The course calibrates on prompts from
    the calibration half of the held-out text (``python -m eelib.lm.speculative calibrate``); chapter
    8 and the benchmark measure on the test half.

    Returns:
        ``{"by_layer": {layer: {threshold, max_draft, draft_vocab, speedup, tokens_per_round, acceptance}},
        "grid": [one row per setting measured]}``.
    """
    from eelib._util.progress import tqdm

    from eelib.lm.generate import measure_generation_speed

    rows = []
    grid = [(k, t, m, v) for k in range(len(ee.exit_layers)) for t in thresholds for m in max_drafts
            for v in draft_vocabs]
    for k, t, m, v in tqdm(grid, desc="self-speculative settings", disable=not progress):
        settings = dict(draft_exit=k, threshold=t, max_draft=m, draft_vocab=v)
        speed = measure_generation_speed(ee, prompts, None, max_new_tokens=max_new_tokens, repeats=repeats,
                                         loops=("no exits", "self-speculative"), speculative=settings)
        runs = [self_speculative_generate(ee, p, max_new_tokens=max_new_tokens, **settings) for p in prompts]
        drafted = sum(g.drafted for g in runs)
        rows.append(dict(layer=ee.exit_layers[k], threshold=t, max_draft=m, draft_vocab=v,
                         speedup=round(speed.speedup("self-speculative"), 4),
                         tokens_per_round=round(sum(len(g.steps) for g in runs) / sum(len(g.rounds) for g in runs), 4),
                         acceptance=round(sum(g.accepted for g in runs) / drafted, 4) if drafted else None))
    by_layer = {}
    for row in rows:
        best = by_layer.get(row["layer"])
        if best is None or row["speedup"] > best["speedup"]:
            by_layer[row["layer"]] = {key: row[key] for key in ("threshold", "max_draft", "draft_vocab", "speedup",
                                                               "tokens_per_round", "acceptance")}
    return dict(by_layer=by_layer, grid=rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eelib.lm.speculative calibrate --model course-ee``: choose and save the draft's defaults."""
    import argparse

    from eelib._util.cache import atomic_path
    from eelib.lm.model import load_lm
    from eelib.lm.exits import course_exits

    parser = argparse.ArgumentParser(prog="python -m eelib.lm.speculative", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="measure the draft settings on the calibration half and save the fastest")
    cal.add_argument("--model", default="course-ee", choices=sorted(_SHIPPED))
    cal.add_argument("--prompts", type=int, default=6, help="prompts of 32 tokens from the calibration half")
    cal.add_argument("--new-tokens", type=int, default=64)
    cal.add_argument("--repeats", type=int, default=2)
    cal.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the benchmark)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_lm(args.model, device="cpu")
    ee = course_exits(lm, list(range(1, lm.n_layers // 2 + 1)))  # draft exits up to half the depth
    prompts = calibration_prompts(lm, args.prompts)
    result = calibrate_speculative(ee, prompts, max_new_tokens=args.new_tokens, repeats=args.repeats)
    result.update(prompts=args.prompts, prompt_tokens=PROMPT_TOKENS, new_tokens=args.new_tokens,
                  repeats=args.repeats, threads=args.threads,
                  note="speedup: tokens per second against eelib's plain greedy loop, measured side by side "
                       "(interleaved, fastest of the repeats) on prompts from the calibration half of the held-out text")
    file = course_model_path(args.model) / HEADS_FOLDER / SETTINGS_FILE
    with atomic_path(file) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for layer, best in result["by_layer"].items():
        print(f"layer {layer}: {best}")
    print(f"written to {file}")
    return 0


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


if __name__ == "__main__":
    raise SystemExit(main())
