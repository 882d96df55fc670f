"""The decoder of the language half: a GPT-2 model's blocks run by hand, one step at a time, and what a loop returns.

:class:`Decoder` runs a ``GPT2LMHeadModel``'s own blocks with its own key/value cache (batch size 1), so
that a generation loop can stop after any layer; :class:`Generation` (with one :class:`TokenStep` per
token and, for speculative loops, one :class:`Round` per round) is what every loop returns. The loops
are :mod:`eelib.lm.generate` (early exit) and :mod:`eelib.lm.speculative` (draft and verify); their
speed is measured and modelled by :mod:`eelib.lm.speed`.

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

Every loop counts what it runs in :attr:`Decoder.ops` (block calls by their number of rows, heads,
decisions, copied keys and values): the trace that :mod:`eelib.lm.speed` prices.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from eelib.lm.exits import EarlyExitLM
from eelib.lm.model import encode


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
        # each block's parameters, looked up once: block() calls the functions, not the modules (a module call
        # costs a few microseconds of Python, a tenth of a block's time at batch 1); the same operations
        self.weights = [(b.ln_1.weight, b.ln_1.bias, b.ln_1.eps, b.attn.c_attn.weight, b.attn.c_attn.bias,
                         b.attn.c_proj.weight, b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.ln_2.eps,
                         b.mlp.c_fc.weight, b.mlp.c_fc.bias, b.mlp.c_proj.weight, b.mlp.c_proj.bias) for b in self.tf.h]
        self.reset()

    def reset(self) -> None:
        """Empty the cache (and the pending positions); :attr:`ops` counts on until :meth:`new_ops`."""
        self.length = 0  # positions with a token
        # lazy mode: position -> [next block to run, its input hidden state (1, d)] for tokens that left early
        self.pending: dict[int, list] = {}
        self.filled_rows = 0  # block rows run for pending positions (lazy filling)
        if not hasattr(self, "ops"):
            self.new_ops()

    def new_ops(self) -> Counter:
        """Start counting afresh: :attr:`ops` maps ``(operation, size)`` to how often it ran. Operations:
        ``"block"`` and ``"embed"`` (size: rows), ``"exit_head"`` (an early exit's logits), ``"final_head"``
        (size: rows), ``"measure:NAME"`` (a confidence measure on an exit's logits, read on the host),
        ``"gate:NAME"`` (CALM's hidden-state gate), ``"draft:NAME"`` (a draft head with its measure; size: its
        vocabulary), ``"kv_copy"`` (one skipped layer's keys and values), and the overhead counters ``"step"``
        (a token position run by a loop) and ``"round"`` (a speculative verification)."""
        self.ops: Counter = Counter()
        return self.ops

    def embed(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Token + position embeddings of ``ids`` ``(T,)`` at positions ``start ..``: ``(T, d)``."""
        self.ops["embed", len(ids)] += 1
        return self.tf.wte(ids) + self.tf.wpe.weight[start:start + len(ids)]  # a slice: no position tensor made

    def embed_token(self, token: int, pos: int) -> torch.Tensor:
        """The embedding ``(1, d)`` of one token given as a host integer at ``pos``: two slices added, no index
        tensor made (the loops know each token on the host: they read it to decide)."""
        self.ops["embed", 1] += 1
        return self.tf.wte.weight[token:token + 1] + self.tf.wpe.weight[pos:pos + 1]

    def block(self, l: int, x: torch.Tensor, positions: int | torch.Tensor) -> torch.Tensor:
        """Block ``l`` (0-based) on hidden states ``x`` ``(T, d)`` at ``positions`` (a start, or ``(T,)``
        increasing positions); caches their keys and values at layer ``l``."""
        T, d = x.shape
        self.ops["block", T] += 1
        ln1_w, ln1_b, eps1, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, eps2, fc_w, fc_b, out_w, out_b = self.weights[l]
        qkv = torch.addmm(attn_b, F.layer_norm(x, (d,), ln1_w, ln1_b, eps1), attn_w)  # (T, 3d), as Conv1D computes it
        q, k, v = qkv.view(T, 3, self.n_heads, self.head_dim).permute(1, 2, 0, 3).unbind(0)  # (nh, T, hd) each
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
        y = (F.softmax(att, dim=-1).to(values.dtype) @ values).transpose(0, 1).reshape(T, d)  # (T, d)
        x = x + torch.addmm(proj_b, y, proj_w)
        h = torch.addmm(fc_b, F.layer_norm(x, (d,), ln2_w, ln2_b, eps2), fc_w)
        h = F.gelu(h, approximate="tanh") if self.fused_gelu else self.tf.h[l].mlp.act(h)
        return x + torch.addmm(out_b, h, out_w)

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

    def step_block(self, l: int, x: torch.Tensor, pos: int, all_rows: bool = False) -> torch.Tensor:
        """Block ``l`` for the new token at ``pos`` ``(1, d)``; in lazy mode, earlier tokens that left
        below layer ``l + 1`` run it too, in the same call, so that their keys and values exist.

        Returns the new token's output ``(1, d)``, or with ``all_rows`` every row of the call in position
        order (the pending positions that joined, then ``pos``): a speculative verification needs them all.
        """
        join = [p for p, (nxt, _) in self.pending.items() if nxt == l]
        if not join:
            return self.block(l, x, pos)
        states = torch.cat([self.pending[p][1] for p in join] + [x])
        consecutive = join[-1] == pos - 1 and join[0] == pos - len(join)  # increasing: a slice, no index
        out = self.block(l, states, join[0] if consecutive else join + [pos])
        self.filled_rows += len(join)
        last = l + 1 == self.n_layers
        for i, p in enumerate(join):
            if last:
                del self.pending[p]  # complete now
            else:
                self.pending[p] = [l + 1, out[i:i + 1]]
        return out if all_rows else out[-1:]

    def fill_kv(self, l: int, h: torch.Tensor, pos: int) -> None:
        """Copy-up: keys and values of skipped layer ``l`` at ``pos`` from the exited hidden state ``h`` ``(1, d)``."""
        blk = self.tf.h[l]
        self.ops["kv_copy", 1] += 1
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
    """One draft-and-verify round of a speculative loop (:mod:`eelib.lm.speculative`).

    Attributes:
        drafted: tokens the draft exits proposed.
        accepted: how many of them the full model confirmed (the longest equal prefix).
        tokens: tokens the round produced: ``accepted + 1`` (the full model's token after them).
        layers: block rows computed in the round (every drafted position runs every layer: its own
            layers while drafting, the rest with the verification).
        seconds: wall-clock time of the round (synchronised on the model's device).
        draft_tokens: the drafted tokens, in order (the first ``accepted`` were kept).
        draft_exits: the exit (index into ``EarlyExitLM.layers``) that drafted each of them.
    """

    drafted: int
    accepted: int
    tokens: int
    layers: int
    seconds: float
    draft_tokens: tuple[int, ...] = ()
    draft_exits: tuple[int, ...] = ()

    @property
    def compared(self) -> int:
        """Drafts the full model had to judge: the accepted ones and the first rejected one (those after it
        were never in question: the round ends at the first disagreement)."""
        return self.accepted + (self.accepted < self.drafted)


@dataclass(frozen=True)
class Generation:
    """The result of every generation loop: :func:`eelib.lm.generate.early_exit_generate` and the speculative
    loops of :mod:`eelib.lm.speculative`.

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
        ops: what the loop ran, ``((operation, rows, count), ...)`` (:attr:`Decoder.ops`, the prompt's
            prefill included): the trace that :class:`eelib.lm.speed.SpeedModel` prices.
    """

    prompt_ids: tuple[int, ...]
    steps: tuple[TokenStep, ...]
    text: str
    n_layers: int
    flops: int
    kv: str = "lazy"
    filled_layers: int = 0
    rounds: tuple[Round, ...] = ()
    ops: tuple[tuple[str, int, int], ...] = ()

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
        """The **acceptance rate**: the probability that a draft is confirmed, given that the drafts before it in
        its round were (accepted drafts / drafts judged, :attr:`Round.compared`; nan when nothing was judged).

        The course's one meaning of "acceptance": each judged draft is a trial that passes with this
        probability, the ``a`` of :func:`eelib.lm.speculative.expected_tokens_per_round`. Drafts after a
        round's first rejection are never judged, so this is not :attr:`kept_share`.
        """
        judged = sum(r.compared for r in self.rounds)
        return self.accepted / judged if judged else math.nan

    @property
    def kept_share(self) -> float:
        """Share of the drafted tokens that were kept (accepted / drafted; nan when nothing was drafted)."""
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


def prompt_ids(ee: EarlyExitLM, prompt: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """A prompt (text, or token ids: a sequence or a ``(T,)`` / ``(1, T)`` integer tensor) as a ``(T,)`` LongTensor.

    Raises:
        ValueError: an empty prompt or one that fills the context window, a batch of several prompts (the
            loops decode one at batch size 1), ids that are not integers or not in the vocabulary.
    """
    vocab, context = ee.model.config.vocab_size, ee.lm.context_length
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty: give at least one character (or token) to continue")
        ids = encode(ee.lm, prompt)
    elif prompt is None or not isinstance(prompt, (torch.Tensor, Sequence)) and not hasattr(prompt, "__array__"):
        raise ValueError(f"prompt must be text or token ids (a sequence of ints or an integer tensor), "
                         f"got {type(prompt).__name__}")
    else:
        ids = torch.as_tensor(prompt if isinstance(prompt, torch.Tensor) else list(prompt))
        if ids.numel() == 0:
            raise ValueError("prompt is empty: give at least one character (or token) to continue")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"prompt must hold integer token ids, got dtype {ids.dtype}")
        if ids.ndim == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.ndim != 1:
            raise ValueError(f"prompt must be one prompt: (T,) or (1, T) token ids, got shape {tuple(ids.shape)} "
                             f"(the loops decode at batch size 1: call them once per prompt)")
        ids = ids.long()
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"prompt must hold token ids from 0 to {vocab - 1} (the vocabulary), got "
                             f"{int(ids.min())} .. {int(ids.max())}")
    if len(ids) == 0:
        raise ValueError("prompt is empty: give at least one character (or token) to continue")
    if len(ids) >= context:
        raise ValueError(f"prompt has {len(ids)} tokens but the context window holds {context}: "
                         f"shorten it to at most {context - 1} tokens, leaving room to generate")
    return ids


_prompt_ids = prompt_ids  # the name older modules import


def ops_tuple(ops: Counter) -> tuple[tuple[str, int, int], ...]:
    """:attr:`Decoder.ops` as the sorted tuple a :class:`Generation` keeps."""
    return tuple(sorted((op, rows, count) for (op, rows), count in ops.items()))
