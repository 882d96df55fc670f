"""Early-exit generation in GPT-2: greedy decoding that really skips the layers above each token's exit.

:class:`Decoder` runs a ``GPT2LMHeadModel``'s own blocks one token at a time, with its own
key/value cache (batch size 1), so that the loop can stop after any layer. Each new token
goes up the stack; at each exit (:class:`~eelib.lm.exits.EarlyExitLM`) the policy's confidence
measure decides whether it leaves there.

**The key/value cache of the skipped layers.** A token that leaves after layer ``l`` has no
hidden state in the layers above, but every later token attends to its keys and values there.
Two choices (``kv=``):

* ``"lazy"`` (the default): the skipped layers run *later*, for that token, in the same block call
  as the next token that goes deeper (EE-LLM's "KV recomputation", Chen et al. 2023). The cache is
  then exactly the full model's, and the exit decisions are exactly those simulated on the full
  model's hidden states (tested): the calibrated agreement holds. The FLOPs of the skipped layers
  are paid back (unless no later token goes deeper), but the token's prediction is out after
  ``l`` layers, and on hardware where a block call costs about the same for 1 or a few tokens
  (a CPU or GPU at batch size 1), the deferred rows cost little time.
* ``"copy"`` (CALM, Schuster et al. 2022): the keys and values of every skipped layer ``j > l``
  are computed at once from the exited hidden state, ``k, v = c_attn_j(ln_1_j(h_l))`` (the key
  and value thirds of the projection only: a quarter of a layer of the course model per skipped
  layer, counted). Cheaper, but those keys and values are not what the deeper layers would have
  written, and every later token reads them: on the course model, thresholds calibrated for 95%
  agreement gave 80% under copy-up (``benchmarks/gpt2_exits.py``).

With a policy that never exits, either way the loop is exactly the model's greedy decoding
(tested against ``generate``).

Attention is written out as two matrix products (not ``scaled_dot_product_attention``), so
``FlopCounterMode`` counts it on every device: with torch 2.14 it counts **0 FLOPs** for
``scaled_dot_product_attention`` on the CPU, which transformers' GPT-2 uses by default.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from eelib._util.flops import count_flops, flop_counter
from eelib._util.timing import interleaved
from eelib.lm.model import encode
from eelib.lm.exits import EarlyExitLM
from eelib.policies import ExitPolicy, FlopsPerExit, get_measure

if TYPE_CHECKING:
    from eelib.lm.confidence import StateGate


KV_MODES = ("lazy", "copy")


class Decoder:
    """A GPT-2 model's blocks run by hand, one step at a time, with a preallocated key/value cache.

    Args:
        ee: the model and its exits; the model's weights are used as they are.
        kv: what the layers above a token's exit get in their key/value cache (module docstring):
            ``"lazy"`` (run them for that token later, when a deeper token needs them: exact) or
            ``"copy"`` (compute them from the exited hidden state at once: CALM's copy-up).
        max_length: the most positions the cache holds (default the context length).
    """

    def __init__(self, ee: EarlyExitLM, kv: str = "lazy", max_length: int | None = None):
        cfg = ee.model.config
        if getattr(cfg, "add_cross_attention", False):
            raise ValueError("Decoder supports decoder-only GPT-2 models, not ones with cross-attention")
        if kv not in KV_MODES:
            raise ValueError(f"kv must be one of {', '.join(KV_MODES)}, got {kv!r}")
        self.ee = ee
        self.kv = kv
        self.tf = ee.model.transformer
        self.n_layers = ee.lm.n_layers
        self.d = cfg.n_embd
        self.n_heads = cfg.n_head
        self.head_dim = self.d // self.n_heads
        self.max_length = ee.lm.context_length if max_length is None else max_length
        if not isinstance(self.max_length, int) or not 1 <= self.max_length <= ee.lm.context_length:
            raise ValueError(f"max_length must be an integer from 1 to the context length "
                             f"({ee.lm.context_length}), got {max_length!r}")
        dev, dtype = ee.lm.device, self.tf.wte.weight.dtype
        shape = (self.n_layers, self.n_heads, self.max_length, self.head_dim)
        self.keys = torch.zeros(shape, device=dev, dtype=dtype)
        self.values = torch.zeros(shape, device=dev, dtype=dtype)
        # additive causal mask: row p is 0 up to column p, -inf after it
        self.causal = torch.full((self.max_length, self.max_length), float("-inf"), device=dev, dtype=dtype).triu(1)
        self.positions = torch.arange(self.max_length, device=dev)  # index tensors are cut from it (_index)
        self.upcast = bool(getattr(cfg, "reorder_and_upcast_attn", False))
        self.fused_gelu = cfg.activation_function == "gelu_new"
        base = 1 / math.sqrt(self.head_dim) if cfg.scale_attn_weights else 1.0
        self.scales = [base / (l + 1) if cfg.scale_attn_by_inverse_layer_idx else base for l in range(self.n_layers)]
        self.reset()

    def reset(self) -> None:
        self.length = 0  # positions with a token
        # lazy mode: position -> [next block to run, its input hidden state (1, d)] for tokens that left early
        self.pending: dict[int, list] = {}
        self.filled_rows = 0  # block rows run for pending positions (lazy filling)

    def embed(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Token + position embeddings of ``ids`` ``(T,)`` at positions ``start ..``: ``(T, d)``."""
        pos = torch.arange(start, start + len(ids), device=ids.device)
        return self.tf.wte(ids) + self.tf.wpe(pos)

    def block(self, l: int, x: torch.Tensor, positions: int | torch.Tensor) -> torch.Tensor:
        """Block ``l`` (0-based) on hidden states ``x`` ``(T, d)`` at ``positions`` (a start, or ``(T,)``
        increasing positions); caches their keys and values at layer ``l``."""
        blk = self.tf.h[l]
        T = x.shape[0]
        q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(self.d, dim=-1)  # (T, d) each
        q = q.view(T, self.n_heads, self.head_dim).transpose(0, 1)  # (nh, T, hd)
        k = k.view(T, self.n_heads, self.head_dim).transpose(0, 1)
        v = v.view(T, self.n_heads, self.head_dim).transpose(0, 1)
        if isinstance(positions, int):  # consecutive positions: slice writes, no index tensors, no host sync
            end = positions + T
            self.keys[l, :, positions:end] = k
            self.values[l, :, positions:end] = v
        else:  # increasing positions, known on the host: an index made on the device, written by index_copy_
            end = positions[-1] + 1
            index = self._index(positions)
            self.keys[l].index_copy_(1, index, k)
            self.values[l].index_copy_(1, index, v)
        keys, values = self.keys[l, :, :end], self.values[l, :, :end]  # (nh, end, hd)
        if self.upcast:  # reorder_and_upcast_attn: scores and softmax in float32, as transformers does
            att = (q.float() @ keys.float().transpose(1, 2)) * self.scales[l]
        else:
            att = (q @ keys.transpose(1, 2)) * self.scales[l]  # (nh, T, end)
        if T > 1:  # causal: the token at position p sees keys 0 .. p
            if isinstance(positions, int):  # row i is position positions + i: a slice of the causal mask
                att = att + self.causal[positions:end, :end]
            else:  # row i is position positions[i]: those rows of the causal mask
                att = att + self.causal[:end, :end].index_select(0, index)
        y = (F.softmax(att, dim=-1).to(values.dtype) @ values).transpose(0, 1).reshape(T, self.d)  # (T, d)
        x = x + blk.attn.c_proj(y)
        return x + self.mlp(blk.mlp, blk.ln_2(x))

    def _index(self, positions: Sequence[int]) -> torch.Tensor:
        """``positions`` (host integers) as an index tensor on the cache's device, without a host-to-device
        copy: views of a resident ``arange`` joined on the device."""
        return torch.cat([self.positions[p:p + 1] for p in positions])

    def mlp(self, mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """GPT-2's MLP in eval mode; ``gelu_new`` as one fused ``F.gelu(approximate="tanh")`` call (the
        same formula; transformers spells it out in six operations, a third of a block's time at batch 1)."""
        h = mlp.c_fc(x)
        h = F.gelu(h, approximate="tanh") if self.fused_gelu else mlp.act(h)
        return mlp.c_proj(h)

    def step_block(self, l: int, x: torch.Tensor, pos: int) -> torch.Tensor:
        """Block ``l`` for the new token at ``pos`` ``(1, d)``; in lazy mode, earlier tokens that left
        below layer ``l + 1`` run it too, in the same call, so that their keys and values exist."""
        join = [p for p, (nxt, _) in self.pending.items() if nxt == l]
        if not join:
            return self.block(l, x, pos)
        states = torch.cat([self.pending[p][1] for p in join] + [x])
        out = self.block(l, states, join + [pos])
        self.filled_rows += len(join)
        for i, p in enumerate(join):
            if l + 1 == self.n_layers:
                del self.pending[p]  # complete now
            else:
                self.pending[p] = [l + 1, out[i:i + 1]]
        return out[-1:]

    def fill_kv(self, l: int, h: torch.Tensor, pos: int) -> None:
        """Copy-up: keys and values of skipped layer ``l`` at ``pos`` from the exited hidden state ``h`` ``(1, d)``."""
        blk = self.tf.h[l]
        w, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # Conv1D: (d, 3d), (3d,)
        kv = blk.ln_1(h) @ w[:, self.d:] + b[self.d:]  # (1, 2d): only the key and value thirds
        k, v = kv.split(self.d, dim=-1)
        self.keys[l, :, pos] = k.view(self.n_heads, self.head_dim)
        self.values[l, :, pos] = v.view(self.n_heads, self.head_dim)

    def leave(self, layer: int, h: torch.Tensor, pos: int) -> None:
        """The token at ``pos`` left after ``layer`` with hidden state ``h``: fill or defer the layers above."""
        if layer >= self.n_layers:
            return
        if self.kv == "copy":
            for l in range(layer, self.n_layers):
                self.fill_kv(l, h, pos)
        else:
            self.pending[pos] = [layer, h]

    def check_eval(self) -> None:
        """Raise unless the model is in eval mode: this decoder computes attention by hand (no dropout) and
        calls the MLP's modules, whose dropout would be active in training mode."""
        if self.ee.model.training:
            raise ValueError("the model is in training mode: call .eval() on it (or decode inside "
                             "`with eelib.eval_mode(model):`); decoding needs dropout off")

    def begin(self, ids: torch.Tensor) -> torch.Tensor:
        """Start decoding a prompt ``ids`` ``(T,)``: every token but the last into the cache (prefill); returns
        the last one ``(1,)``, the first input of the decoding loop."""
        self.check_eval()
        if len(ids) > 1:
            self.prefill(ids[:-1])
        else:
            self.reset()
        return ids[-1:]

    def prefill(self, ids: torch.Tensor) -> None:
        """Run every layer on ``ids`` ``(T,)`` from position 0 and cache their keys/values."""
        self.reset()
        x = self.embed(ids, 0)
        for l in range(self.n_layers):
            x = self.block(l, x, 0)
        self.length = len(ids)


@dataclass(frozen=True)
class TokenStep:
    """What happened to one generated (or teacher-forced) token."""

    token: int  # the token predicted (greedy) at its exit
    exit: int  # the exit it left at (index into EarlyExitLM.layers)
    layer: int  # the layer its prediction left after (layers run before it was out)
    confidence: float  # the policy's measure at that exit (nan without a policy)
    seconds: float  # wall-clock time of the step
    target_logprob: float  # log-probability of the forced token (teacher forcing), else nan


@dataclass(frozen=True)
class Round:
    """One draft-and-verify round of :func:`eelib.lm.speculative.self_speculative_generate`.

    Attributes:
        drafted: tokens the draft exit proposed.
        accepted: how many of them the full model confirmed (the longest equal prefix).
        tokens: tokens the round produced: ``accepted + 1`` (the full model's token after them).
        layers: block rows computed in the round: ``(drafted + 1) x L`` to draft, ``(drafted + 1) x (N - L)``
            to verify.
        seconds: wall-clock time of the round (synchronised on the model's device).
    """

    drafted: int
    accepted: int
    tokens: int
    layers: int
    seconds: float


@dataclass(frozen=True)
class Generation:
    """The result of :func:`early_exit_generate` and of :func:`eelib.lm.speculative.self_speculative_generate`.

    Attributes:
        prompt_ids: the prompt's tokens.
        steps: one :class:`TokenStep` per generated token.
        text: prompt + generated text, decoded.
        n_layers: layers of the model.
        flops: FLOPs of the decoding loop counted by ``FlopCounterMode`` (0 unless ``count_flops``).
        kv: the decoder's key/value mode (``"lazy"`` or ``"copy"``), or ``"speculative"`` (self-speculative
            decoding: every position gets every layer, drafted or verified).
        filled_layers: lazy mode: layers run later for tokens that had left early (to fill
            their keys and values), in total; speculative: the layers run beyond each token's own
            exit (the verification of accepted drafts, rejected drafts).
        rounds: self-speculative decoding: one :class:`Round` per draft-and-verify round (else empty).
    """

    prompt_ids: tuple[int, ...]
    steps: tuple[TokenStep, ...]
    text: str
    n_layers: int
    flops: int
    kv: str = "lazy"
    filled_layers: int = 0
    rounds: tuple[Round, ...] = ()

    @property
    def drafted(self) -> int:
        """Self-speculative decoding: tokens drafted, in total."""
        return sum(r.drafted for r in self.rounds)

    @property
    def accepted(self) -> int:
        """Self-speculative decoding: drafted tokens the full model confirmed, in total."""
        return sum(r.accepted for r in self.rounds)

    @property
    def acceptance(self) -> float:
        """Share of the drafted tokens that the full model confirmed (nan when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else math.nan

    @property
    def tokens_per_round(self) -> float:
        """Self-speculative decoding: tokens produced per draft-and-verify round (nan without rounds)."""
        return len(self.steps) / len(self.rounds) if self.rounds else math.nan

    @property
    def tokens(self) -> list[int]:
        """The predicted token of every step."""
        return [s.token for s in self.steps]

    @property
    def avg_exit_layer(self) -> float:
        """Mean layer after which a token's prediction left (the layers run before it was out)."""
        return sum(s.layer for s in self.steps) / max(len(self.steps), 1)

    @property
    def avg_layers_computed(self) -> float:
        """Mean layers computed per token: up to its exit, plus (lazy mode) the skipped layers run later.
        With ``kv="copy"`` the skipped layers are not run (only their keys and values are computed)."""
        return (sum(s.layer for s in self.steps) + self.filled_layers) / max(len(self.steps), 1)

    @property
    def seconds(self) -> float:
        """Time of the decoding steps (the prompt's prefill not included)."""
        return sum(s.seconds for s in self.steps)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of the decoding steps."""
        return len(self.steps) / self.seconds if self.steps else 0.0


def _prompt_ids(ee: EarlyExitLM, prompt: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty: give at least one character (or token) to continue")
        ids = encode(ee.lm, prompt)
    else:
        ids = torch.as_tensor(list(prompt) if not isinstance(prompt, torch.Tensor) else prompt, dtype=torch.long)
        ids = ids.flatten()
    if len(ids) == 0:
        raise ValueError("prompt is empty: give at least one character (or token) to continue")
    if len(ids) >= ee.lm.context_length:
        raise ValueError(f"prompt has {len(ids)} tokens but the context window holds {ee.lm.context_length}: "
                         f"shorten it to at most {ee.lm.context_length - 1} tokens, leaving room to generate")
    return ids


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
    ids = _prompt_ids(ee, prompt).to(ee.lm.device)
    vocab = ee.model.config.vocab_size
    if policy is not None:
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
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    n_new = min(max_new_tokens, ee.lm.context_length - len(ids) + 1)
    if decoder is not None and decoder.kv != kv:
        raise ValueError(f"kv={kv!r} but the decoder given uses kv={decoder.kv!r}: give the same, or no decoder")
    dec = decoder if decoder is not None else Decoder(ee, kv, max_length=len(ids) + n_new - 1)  # positions used
    layers = ee.layers
    # without a policy only the final exit is visited: the plain decoding loop
    plan = list(enumerate(layers)) if policy is not None or gate is not None else [(len(layers) - 1, layers[-1])]
    counter = flop_counter() if count_flops else None
    steps = []
    if counter is not None:
        counter.__enter__()
    try:
        token = dec.begin(ids)
        for i in range(n_new):
            t0 = time.perf_counter()
            pos = dec.length
            x = dec.embed(token, pos)
            done, prev_pred, run, score = 0, -1, 0, float("nan")
            for k, layer in plan:
                for l in range(done, layer):
                    before = x
                    x = dec.step_block(l, x, pos)
                done = layer
                if gate is not None and k == len(layers) - 1:
                    score = float("nan")  # the final exit takes every token left: no decision
                if gate is not None and k < len(layers) - 1:  # decide from the state; a head only to leave
                    score = float(gate.score(k, x, before))
                    if gate.passes(score, k):
                        logits = ee.head(k, x)
                        dec.leave(layer, x, pos)
                        break
                    continue
                logits = ee.head(k, x)
                if policy is None:
                    break  # the plain loop: the final head only, no measure
                if k == len(layers) - 1:
                    if measure.one_exit:
                        score = float(measure.fn(logits))  # reported, not needed to decide
                    break
                if measure.one_exit:
                    score = float(measure.fn(logits))
                else:  # patience: how many exits in a row predict the same token
                    pred = int(logits.argmax())
                    run = run + 1 if pred == prev_pred else 1
                    prev_pred, score = pred, float(run)
                t = policy.thresholds[k]
                if measure.passes(score, t):  # the one exit rule (eelib.policies.Measure.passes)
                    dec.leave(layer, x, pos)  # the layers above: copied up, or deferred (lazy)
                    break
            dec.length = pos + 1
            pred = int(logits.argmax())
            logprob = float("nan")
            if force is not None:
                logprob = float(F.log_softmax(logits.float(), -1)[0, force[i]])
                token = torch.tensor([force[i]], device=ids.device)
            else:
                token = logits.argmax(-1)
            # the step's time: int(logits.argmax()) above has waited for the device, so the clock reads finished work
            steps.append(TokenStep(pred, k, layer, score, time.perf_counter() - t0, logprob))
    finally:
        if counter is not None:
            counter.__exit__(None, None, None)
    new = [s.token for s in steps] if force is None else force[:len(steps)]
    text = ee.lm.tokenizer.decode(ids.tolist() + new)
    flops = int(counter.get_total_flops()) if counter is not None else 0
    return Generation(tuple(ids.tolist()), tuple(steps), text, ee.lm.n_layers, flops, dec.kv, dec.filled_rows)


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


# --- measured speed ------------------------------------------------------------------------------

LOOPS = ("early exit", "no exits", "never exit", "HF generate", "self-speculative", "HF prompt lookup")
PROMPT_LOOKUP_TOKENS = 3  # HF generate(prompt_lookup_num_tokens=...): n-gram drafts copied from the context


@dataclass(frozen=True)
class GenerationSpeed:
    """Measured generation time of several loops on the same prompts (see :func:`measure_generation_speed`).

    Attributes:
        tokens: tokens generated by each loop, in total.
        seconds: ``{loop: seconds}``, the sum over prompts of the fastest run of each loop (whole
            calls: prompt processing included).
    """

    tokens: int
    seconds: dict[str, float]

    def tokens_per_second(self, loop: str) -> float:
        """Tokens per second of ``loop``."""
        return self.tokens / self.seconds[loop]

    def speedup(self, loop: str = "early exit", baseline: str = "no exits") -> float:
        """How many times faster ``loop`` is than ``baseline``."""
        return self.seconds[baseline] / self.seconds[loop]


def measure_generation_speed(ee: EarlyExitLM, prompts: Sequence[torch.Tensor | Sequence[int] | str],
                             policy: ExitPolicy | None, *, max_new_tokens: int = 40, repeats: int = 3,
                             kv: str = "lazy", loops: Sequence[str] = LOOPS[:4],
                             speculative: dict | None = None, gate: "StateGate | None" = None) -> GenerationSpeed:
    """Time early-exit generation against the same loop without exits (and others), interleaved.

    Loops: ``"early exit"`` (``policy``), ``"no exits"`` (every layer, the final head only: the
    baseline), ``"never exit"`` (every head and decision evaluated, nobody leaves: the heads' price),
    ``"HF generate"`` (Hugging Face ``generate``, greedy, with its KV cache), ``"self-speculative"``
    (:func:`eelib.lm.speculative.self_speculative_generate` with the keyword arguments
    ``speculative``, default its calibrated settings) and ``"HF prompt lookup"`` (``generate`` with
    ``prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS``: Hugging Face's built-in speculative decoding
    that drafts by copying n-grams of the context). For each prompt every loop runs ``repeats``
    times in turn and the fastest run counts, so that a slow moment of the machine hits all loops
    alike; each run is synchronised on the model's device. Every loop generates exactly
    ``max_new_tokens`` tokens. With ``gate`` (and ``policy=None``), ``"early exit"`` decides with that
    hidden-state gate (:mod:`eelib.lm.confidence`).
    """
    from eelib.lm.speculative import resolve_settings, self_speculative_generate

    if "self-speculative" in loops:  # resolved once, outside the timed calls
        settings = resolve_settings(ee, **(speculative or {}))
        speculative = dict(draft_exit=settings.draft_exit, threshold=settings.threshold,
                           max_draft=settings.max_draft, draft_vocab=settings.draft_vocab)
    unknown = [name for name in loops if name not in LOOPS]
    if unknown or not loops:
        raise ValueError(f"loops must be some of {', '.join(LOOPS)}, got {list(loops)}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if policy is None and ("never exit" in loops or ("early exit" in loops and gate is None)):
        raise ValueError("policy is None, but the loops 'early exit' (without a gate) and 'never exit' need a policy")
    lm = ee.lm
    never = None if policy is None else ExitPolicy.never_exit(ee.num_exits, policy.measure)
    seconds = {name: 0.0 for name in loops}
    total = 0
    for prompt in prompts:
        ids = _prompt_ids(ee, prompt).to(lm.device)
        n_new = min(max_new_tokens, lm.context_length - len(ids) + 1)
        mask = torch.ones(1, len(ids), dtype=torch.long, device=ids.device)
        hf = dict(attention_mask=mask, do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                  pad_token_id=lm.tokenizer.eos_token_id)
        calls = {
            "early exit": lambda: early_exit_generate(ee, ids, policy, max_new_tokens=n_new, kv=kv, gate=gate),
            "no exits": lambda: early_exit_generate(ee, ids, None, max_new_tokens=n_new),
            "never exit": lambda: early_exit_generate(ee, ids, never, max_new_tokens=n_new, kv=kv),
            "HF generate": lambda: lm.model.generate(ids[None], **hf),
            "self-speculative": lambda: self_speculative_generate(ee, ids, max_new_tokens=n_new,
                                                                  **(speculative or {})),
            "HF prompt lookup": lambda: lm.model.generate(ids[None], prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS,
                                                          **hf),
        }
        runs = interleaved({name: calls[name] for name in loops}, repeats, ids.device)
        for name in loops:
            seconds[name] += min(runs[name])  # the fastest run counts
        total += n_new
    return GenerationSpeed(total, seconds)


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
