"""Early-exit generation in GPT-2: greedy decoding that really skips the layers above each token's exit.

Each new token goes up the stack of a :class:`~eelib.lm.decoder.Decoder`; at each exit
(:class:`~eelib.lm.exits.EarlyExitLM`) the policy's confidence measure decides whether it leaves there.
The layers a token skipped owe keys and values to every later token: ``kv="lazy"`` runs them later,
batched with the next deeper token (exact), ``kv="copy"`` computes them from the exited state (CALM's
copy-up: cheaper, changes later tokens); the decoder's docstring says more. Also here: what a token
costs at each exit (:func:`token_exit_costs`) and the agreement of early-exit decoding with the full
model under teacher forcing (:func:`teacher_forced_eval`). Speed is measured and modelled in
:mod:`eelib.lm.speed`; self-speculative decoding is :mod:`eelib.lm.speculative`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from eelib._util.flops import count_flops, flop_counter
from eelib.lm.decoder import KV_MODES, Decoder, Generation, Round, TokenStep, _prompt_ids, ops_tuple, prompt_ids
from eelib.lm.exits import EarlyExitLM
from eelib.policies import ExitPolicy, FlopsPerExit, get_measure

__all__ = ["Decoder", "ForcedEval", "Generation", "KV_MODES", "Round", "TokenCosts", "TokenStep",
           "early_exit_generate", "prompt_ids", "teacher_forced_eval", "token_exit_costs"]

if TYPE_CHECKING:
    from eelib.lm.confidence import StateGate


@torch.inference_mode()
def early_exit_generate(ee: EarlyExitLM, prompt: str | Sequence[int] | torch.Tensor,
                        policy: ExitPolicy | None = None, *, max_new_tokens: int = 40,
                        force: Sequence[int] | torch.Tensor | None = None, kv: str = "lazy",
                        count_flops: bool = False, decoder: Decoder | None = None,
                        gate: "StateGate | None" = None) -> Generation:
    """Greedy decoding at batch size 1 in which each token leaves at its policy's first confident exit.

    Each new token runs the layers up to an exit, evaluates that exit's head and the policy's
    measure (``policy.thresholds`` holds one threshold per early exit, as in
    :class:`~eelib.policies.ExitPolicy`; ``patience`` with threshold 2 means "two consecutive
    exits agree"), and leaves at the first exit that passes, the final one otherwise. The
    layers above are not run for it then: with ``kv="lazy"`` they run later (deferred, batched
    with the next token that goes deeper: exact, but no FLOPs saved), with ``kv="copy"`` only
    their keys and values are computed from the exited hidden state (see the module docstring).
    The prompt (but its last token) is run through every layer first. Like ``generate`` with
    ``min_new_tokens``, the loop does not stop at the end-of-text token.

    Args:
        policy: ``None`` runs the same loop **without exits** (every layer, the final head
            only): the baseline for speedups.
        max_new_tokens: tokens to generate; fewer if the context window fills up.
        force: teacher forcing: feed these tokens instead of the model's own predictions (the
            predictions are still recorded, with the log-probability of each forced token).
        kv: ``"lazy"`` (default: the layers a token skipped run later, batched with the next token
            that goes deeper; exact) or ``"copy"`` (CALM's copy-up; cheaper, changes later tokens).
        count_flops: count the loop's FLOPs with ``FlopCounterMode`` (slower; do not time it).
        decoder: a :class:`Decoder` to use (and inspect afterwards); default a new one sized for
            this call. Its own ``kv`` mode is used; giving a different ``kv`` is an error.
        gate: instead of ``policy``, a :class:`~eelib.lm.confidence.StateGate` (CALM's hidden-state
            saturation or a learned exit classifier): the decision is made from the hidden state,
            and an exit's head is computed only for a token that leaves there.

    Raises:
        ValueError: an empty prompt, a prompt that fills the context window, thresholds of
            the wrong length or range.
    """
    ids = prompt_ids(ee, prompt).to(ee.lm.device)
    vocab = ee.model.config.vocab_size
    if policy is not None:
        if not isinstance(policy, ExitPolicy):
            raise ValueError(f"policy must be an ExitPolicy (e.g. ExitPolicy('max_prob', thresholds)) or None (the "
                             f"plain loop), got {type(policy).__name__} {policy!r}")
        if gate is not None:
            raise ValueError("give a policy (logit measure) or a gate (hidden-state measure), not both")
        policy.check(ee.num_exits, vocab)
        measure = get_measure(policy.measure)
    if gate is not None and len(gate.thresholds) != ee.num_exits - 1:
        raise ValueError(f"gate has {len(gate.thresholds)} thresholds but the model has {ee.num_exits - 1} early exits")
    if force is not None:
        force = [int(t) for t in torch.as_tensor(force).flatten().tolist()]
        if not force:
            raise ValueError("force is empty: give the tokens to feed (teacher forcing), or force=None")
        max_new_tokens = len(force)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    n_new = min(max_new_tokens, ee.lm.context_length - len(ids) + 1)
    if decoder is not None:
        check_decoder(decoder, ee, kv, len(ids) + n_new - 1)
    dec = decoder if decoder is not None else Decoder(ee, kv, max_length=len(ids) + n_new - 1)  # positions used
    dec.new_ops()
    ops = dec.ops
    layers = ee.layers
    final = len(layers) - 1
    plain = policy is None and gate is None
    plan = list(enumerate(layers))
    counter = flop_counter() if count_flops else None
    steps = []
    if counter is not None:
        counter.__enter__()
    try:
        token = int(dec.begin(ids))  # the next input, as a host integer
        for i in range(n_new):
            t0 = time.perf_counter()
            pos = dec.length
            x = dec.embed_token(token, pos)
            ops["step", 1] += 1
            if plain:  # the plain loop: every layer, the final head only, no measure
                for l in range(dec.n_layers):
                    x = dec.block(l, x, pos)
                logits = ee.head(final, x)
                ops["final_head", 1] += 1
                k, layer, score = final, layers[final], float("nan")
            else:
                done, prev_pred, run, score = 0, -1, 0, float("nan")
                for k, layer in plan:
                    for l in range(done, layer):
                        before = x
                        x = dec.step_block(l, x, pos)
                    done = layer
                    if k == final:
                        logits = ee.head(k, x)
                        ops["final_head", 1] += 1
                        if gate is not None:
                            score = float("nan")  # the final exit takes every token left: no decision
                        elif measure.one_exit:
                            score = float(measure.fn(logits))  # reported, not needed to decide
                            ops["measure:" + measure.name, 1] += 1
                        break
                    if gate is not None:  # decide from the state; a head only to leave
                        score = float(gate.score(k, x, before))
                        ops["gate:" + gate.measure, 1] += 1
                        if gate.passes(score, k):
                            logits = ee.head(k, x)
                            ops["exit_head", 1] += 1
                            dec.leave(layer, x, pos)
                            break
                        continue
                    logits = ee.head(k, x)
                    ops["exit_head", 1] += 1
                    ops["measure:" + measure.name, 1] += 1
                    if measure.one_exit:
                        score = float(measure.fn(logits))
                    else:  # patience: how many exits in a row predict the same token
                        pred = int(logits.argmax())
                        run = run + 1 if pred == prev_pred else 1
                        prev_pred, score = pred, float(run)
                    if measure.passes(score, policy.thresholds[k]):  # the one exit rule (Measure.passes)
                        dec.leave(layer, x, pos)  # the layers above: copied up, or deferred (lazy)
                        break
            dec.length = pos + 1
            token = pred = int(logits.argmax())  # the step's one host sync: the clock below reads finished work
            logprob = float("nan")
            if force is not None:
                logprob = float(F.log_softmax(logits.float(), -1)[0, force[i]])
                token = force[i]
            steps.append(TokenStep(pred, k, layer, score, time.perf_counter() - t0, logprob))
    finally:
        if counter is not None:
            counter.__exit__(None, None, None)
    new = [s.token for s in steps] if force is None else force[:len(steps)]
    text = ee.lm.tokenizer.decode(ids.tolist() + new)
    flops = int(counter.get_total_flops()) if counter is not None else 0
    return Generation(tuple(ids.tolist()), tuple(steps), text, ee.lm.n_layers, flops, dec.kv, dec.filled_rows,
                      ops=ops_tuple(ops))


def check_decoder(decoder: Decoder, ee: EarlyExitLM, kv: str, positions: int) -> None:
    """Raise unless ``decoder`` runs ``ee``'s model in mode ``kv`` and holds ``positions`` positions."""
    if not isinstance(decoder, Decoder):
        raise ValueError(f"decoder must be a Decoder (or None), got {type(decoder).__name__}")
    if decoder.ee.model is not ee.model:
        raise ValueError(f"decoder was built on another model ({decoder.ee.lm.name!r}) than ee's "
                         f"({ee.lm.name!r}): build it with Decoder(ee), or give no decoder")
    if decoder.kv != kv:
        raise ValueError(f"kv={kv!r} but the decoder given uses kv={decoder.kv!r}: give the same, or no decoder")
    if decoder.max_length < positions:
        raise ValueError(f"decoder holds {decoder.max_length} positions but this call needs {positions} (prompt "
                         f"+ new tokens - 1): build it with Decoder(ee, max_length={positions}) or larger, or give "
                         f"no decoder")


# --- costs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenCosts(FlopsPerExit):
    """FLOPs of one generated token by where it leaves, at a given context length (``FlopCounterMode``).

    Attributes:
        exit_names: one per exit.
        layer_flops: one transformer layer for one token attending to ``context`` positions
            (attention included: ``4 x context x d``).
        head_flops: one exit head (adapter if any + ``d x vocab`` product).
        kv_flops: the keys and values of one skipped layer (copy-up).
        flops: a token that leaves at exit ``k``: its layers, heads ``0..k``, and what its skipped
            layers cost (``kv``: their keys and values copied up, or the layers run later).
        full_flops: the model without exits: every layer and the final head.
        context: the context length the counts are for.
        kv: the key/value mode the costs are for.
    """

    exit_names: tuple[str, ...]
    layer_flops: int
    head_flops: int
    kv_flops: int
    flops: tuple[int, ...]
    full_flops: int
    context: int
    kv: str = "lazy"


def token_exit_costs(ee: EarlyExitLM, context: int = 128, kv: str = "lazy") -> TokenCosts:
    """Count what a token costs at each exit of ``ee``, by running the decoder's own pieces.

    Args:
        context: the position of the token (it attends to ``context`` positions, itself included).
        kv: ``"copy"``: each skipped layer costs its keys and values (``kv_flops``); ``"lazy"``: each
            skipped layer costs a whole layer, run later (if a later token goes deeper, which is
            almost always; the last tokens' deferred layers may never run, so this is an upper bound).
    """
    if kv not in KV_MODES:
        raise ValueError(f"kv must be one of {', '.join(KV_MODES)}, got {kv!r}")
    if not isinstance(context, int) or not 1 <= context <= ee.lm.context_length:
        raise ValueError(f"context must be an integer from 1 to {ee.lm.context_length}, got {context!r}")
    dec = Decoder(ee)
    x = torch.zeros(1, dec.d, device=ee.lm.device, dtype=dec.keys.dtype)
    layer = count_flops(lambda: dec.block(0, x, context - 1))
    head = count_flops(lambda: ee.head(0, x))
    final_head = count_flops(lambda: ee.head(ee.num_exits - 1, x))
    kv_flops = count_flops(lambda: dec.fill_kv(0, x, context - 1))
    n = ee.lm.n_layers
    skipped = kv_flops if kv == "copy" else layer
    flops = [l * layer + (k + 1) * head + (n - l) * skipped for k, l in enumerate(ee.exit_layers)]
    flops.append(n * layer + len(ee.exit_layers) * head + final_head)
    return TokenCosts(ee.exit_names, layer, head, kv_flops, tuple(flops), n * layer + final_head, context, kv)


# --- quality under teacher forcing ----------------------------------------------------------------

@dataclass(frozen=True)
class ForcedEval:
    """Early-exit decoding teacher-forced on the full model's greedy continuations (:func:`teacher_forced_eval`).

    Attributes:
        tokens: positions compared.
        agreement: share of positions where the early-exit prediction equals the full model's token.
        avg_exit_layer: mean layer after which a prediction left.
        avg_layers_computed: mean layers computed per token (lazy mode: the deferred layers too).
        oracle_avg_layers: the oracle on the same exits and tokens (each token's earliest exit from
            which every later exit agrees with the full model, :func:`eelib.lm.exits.oracle_token_exits`).
        exit_shares: share of the tokens leaving at each exit.
    """

    tokens: int
    agreement: float
    avg_exit_layer: float
    avg_layers_computed: float
    oracle_avg_layers: float
    exit_shares: tuple[float, ...]


def teacher_forced_eval(ee: EarlyExitLM, prompts: Sequence[torch.Tensor | Sequence[int] | str],
                        policy: ExitPolicy | None, *, max_new_tokens: int = 48, kv: str = "lazy",
                        gate: "StateGate | None" = None) -> ForcedEval:
    """Agreement and layers of early-exit decoding, compared position by position with the full model.

    For each prompt, the full model's greedy continuation (our loop without exits, equal to
    ``generate``) is fed to early-exit decoding (teacher forcing), so that every position is
    compared in the same context; a free-running comparison would stop meaning anything after
    the first different token. ``gate`` (with ``policy=None``): a hidden-state gate decides instead.
    """
    if policy is None and gate is None:
        raise ValueError("give a policy or a gate: teacher_forced_eval measures early exits")
    from eelib.outputs import ExitOutputs
    from eelib.lm.exits import oracle_token_exits

    layer_of = torch.tensor(ee.layers, dtype=torch.float64)
    n = same = exit_layers = computed = oracle = 0.0
    counts = torch.zeros(ee.num_exits, dtype=torch.float64)
    for prompt in prompts:
        ids = _prompt_ids(ee, prompt)
        target = early_exit_generate(ee, ids, None, max_new_tokens=max_new_tokens).tokens
        forced = early_exit_generate(ee, ids, policy, force=target, kv=kv, gate=gate)
        same += sum(a == b for a, b in zip(forced.tokens, target))
        exit_layers += forced.avg_exit_layer * len(target)
        computed += forced.avg_layers_computed * len(target)
        counts += torch.bincount(torch.tensor([s.exit for s in forced.steps]), minlength=ee.num_exits).double()
        with torch.no_grad():  # every exit's prediction at every position, in one pass of the full model
            logits = ee.exit_logits(torch.cat([ids, torch.tensor(target[:-1], dtype=torch.long, device=ids.device)]))[:, len(ids) - 1:]
        outputs = ExitOutputs(logits.float().cpu(), torch.tensor(target), ee.exit_names)
        oracle += float(layer_of[oracle_token_exits(outputs)].sum())
        n += len(target)
    if n == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    return ForcedEval(int(n), same / n, exit_layers / n, computed / n, oracle / n,
                      tuple(round(float(c), 6) for c in counts / n))
