"""From this laptop to real LLMs: the speed model's algebra on published model shapes, in two regimes.

A round of fixed-exit self-speculative decoding with ``k`` drafts from layer ``L`` of ``N`` costs
``(k + 1) L`` single-row block calls, ``k`` draft heads, ``N - L`` block calls of ``k + 1`` rows and the
final head on ``k + 1`` rows (:func:`eelib.lm.speed.speculative_round_cost`), and yields
``1 + a + ... + a^k`` tokens when each judged draft is accepted with probability ``a`` (the acceptance
rate). The plain loop costs ``N`` single-row block calls and a head per token. Whether drafting pays is
then a matter of three ratios: what ``k + 1`` rows cost against one, what a head costs against a block,
and the acceptance. This module computes them for real shapes:

* **shapes** (:func:`model_shape`): the published configurations of GPT-2 124M / 355M / 774M / 1.5B
  and LLaMA-2 7B / 70B (layers, width, heads, MLP width, vocabulary, as in their Hugging Face
  ``config.json``), built as Hugging Face models on the ``meta`` device (no weights) and one block and
  the head counted with ``FlopCounterMode`` (one token; attention over ``c`` cached positions adds
  ``4 c d`` FLOPs, written out since the one-token count has no context);
* **regimes** (:class:`Regime`): ``"cpu"``, this laptop's: a block call's time against its rows as
  measured on the course model (relative: ``k + 1`` rows are *not* free), times in proportion to FLOPs;
  ``"gpu"``, a GPU-like regime: a block's time is its weight bytes (and its keys and values) over the
  memory bandwidth plus a launch overhead, with a few extra rows free (their FLOPs at peak throughput).
  Python overheads are left out of both (they shrink against the blocks of real models).

:func:`projected_speedup` chooses the best number of drafts for an acceptance rate and a draft depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

CONFIGS = {  # published configurations (Hugging Face config.json of each model); GPT-2: n_inner = 4 d
    "gpt2-124m": dict(family="gpt2", n_layer=12, n_embd=768, n_head=12, vocab_size=50257),
    "gpt2-355m": dict(family="gpt2", n_layer=24, n_embd=1024, n_head=16, vocab_size=50257),
    "gpt2-774m": dict(family="gpt2", n_layer=36, n_embd=1280, n_head=20, vocab_size=50257),
    "gpt2-1.5b": dict(family="gpt2", n_layer=48, n_embd=1600, n_head=25, vocab_size=50257),
    "llama-2-7b": dict(family="llama", num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                       num_key_value_heads=32, intermediate_size=11008, vocab_size=32000),
    "llama-2-70b": dict(family="llama", num_hidden_layers=80, hidden_size=8192, num_attention_heads=64,
                        num_key_value_heads=8, intermediate_size=28672, vocab_size=32000),
}
PUBLISHED = (  # speedups reported for self-speculative decoding on real models (the regime: GPUs)
    dict(method="LayerSkip", models="Llama-2 7B / 13B", low=1.8, high=2.2,
         source="Elhoushi et al. 2024, LayerSkip (arXiv 2404.16710)"),
    dict(method="SWIFT (layer skipping, no training)", models="LLaMA-2 / CodeLLaMA", low=1.3, high=1.6,
         source="Xia et al. 2024, SWIFT (arXiv 2410.06916)"),
)


@dataclass(frozen=True)
class ModelShape:
    """What the projection needs of a model: its depth, and per token one block's and the head's FLOPs
    (counted) and weight bytes, and one layer's keys and values per cached position."""

    name: str
    n_layers: int
    d: int
    block_flops: int  # one token, no context (FlopCounterMode on the meta device)
    head_flops: int
    block_params: int
    head_params: int
    kv_per_position: int  # numbers stored per layer and position (keys + values)

    def block_flops_at(self, context: int) -> int:
        """One token's block FLOPs attending to ``context`` positions: ``block_flops + 4 context d``."""
        return self.block_flops + 4 * context * self.d


def _hf_model(name: str):
    from transformers import GPT2Config, LlamaConfig, AutoModelForCausalLM
    import torch

    spec = dict(CONFIGS[name])
    family = spec.pop("family")
    config = GPT2Config(**spec) if family == "gpt2" else LlamaConfig(**spec)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config), config


@lru_cache(maxsize=None)
def model_shape(name: str) -> ModelShape:
    """The shape of a published model (:data:`CONFIGS`), counted on the ``meta`` device (no weights)."""
    if name not in CONFIGS:
        raise ValueError(f"name must be one of {', '.join(CONFIGS)}, got {name!r}")
    import torch

    from eelib._util.flops import count_flops

    model, config = _hf_model(name)
    base = model.base_model
    block = (base.layers if hasattr(base, "layers") else base.h)[0]
    d = config.hidden_size
    x = torch.zeros(1, 1, d, device="meta")
    kwargs = {}
    if hasattr(base, "rotary_emb"):  # LLaMA's blocks take the rotary embedding from the model
        kwargs["position_embeddings"] = base.rotary_emb(x, torch.zeros(1, 1, dtype=torch.long, device="meta"))
    block_flops = count_flops(lambda: block(x, **kwargs))
    head_flops = count_flops(lambda: model.lm_head(x))
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return ModelShape(name, config.num_hidden_layers, d, int(block_flops), int(head_flops),
                      sum(p.numel() for p in block.parameters()), model.lm_head.weight.numel(),
                      2 * kv_heads * (d // heads))


@dataclass(frozen=True)
class Regime:
    """How a block's time depends on its rows.

    ``row_scale``: for ``"cpu"``, a block call's time for 1, 2, ... rows relative to one row (measured on
    the course model); ``bandwidth`` (bytes/s), ``peak`` (FLOP/s), ``launch`` (s per block call),
    ``bytes_per_number``: for ``"gpu"``.
    """

    name: str
    row_scale: tuple[float, ...] = ()
    bandwidth: float = 3.35e12  # H100 SXM HBM3, bytes/s
    peak: float = 4.0e14  # dense half-precision FLOP/s a kernel reaches
    launch: float = 2.0e-5  # per block call: its kernels' launches
    bytes_per_number: int = 2  # float16 weights and cache

    def block_time(self, shape: ModelShape, rows: int, context: int) -> float:
        """Seconds of one block call on ``rows`` rows (``"cpu"``: in units of one row's FLOP time)."""
        if self.name == "cpu":
            scale = self.row_scale
            r = min(rows, len(scale))
            extra = (rows - r) * (scale[-1] - scale[-2]) if rows > len(scale) and len(scale) > 1 else 0.0
            return shape.block_flops_at(context) * (scale[r - 1] + extra)
        memory = (shape.block_params + shape.kv_per_position * context) * self.bytes_per_number / self.bandwidth
        return max(memory, rows * shape.block_flops_at(context) / self.peak) + self.launch

    def head_time(self, shape: ModelShape, rows: int) -> float:
        """Seconds of the head on ``rows`` rows (``"cpu"``: FLOP time, rows scaled as a block's)."""
        if self.name == "cpu":
            return shape.head_flops * self.block_time(shape, rows, 0) / shape.block_flops
        memory = shape.head_params * self.bytes_per_number / self.bandwidth
        return max(memory, rows * shape.head_flops / self.peak) + self.launch


def cpu_regime(row_scale: Sequence[float]) -> Regime:
    """This machine's regime from a block call's measured time against its rows (1, 2, ... rows), e.g.
    ``[primitives.block_time(r, 64) for r in range(1, 9)]``; it is made relative to one row, and
    non-decreasing (a call of more rows never costs less than one of fewer: a measured dip is a busy moment
    of the machine during the shorter call's timing, not a property of the block)."""
    scale = [float(s) for s in row_scale]
    if not scale or any(not s > 0 or math.isinf(s) for s in scale):
        raise ValueError(f"row_scale must be positive times for 1, 2, ... rows, got {list(row_scale)}")
    relative, most = [], 1.0
    for s in scale:
        most = max(most, s / scale[0])
        relative.append(most)
    return Regime("cpu", tuple(relative))


GPU = Regime("gpu")


def projected_speedup(shape: ModelShape, regime: Regime, acceptance: float, *, draft_fraction: float = 0.25,
                      max_draft: int = 8, context: int = 512) -> tuple[float, int]:
    """Fixed-exit self-speculative decoding against the plain loop, projected: ``(speedup, drafts)`` for the
    best number of drafts per round (1 .. ``max_draft``), the draft exit at ``draft_fraction`` of the depth
    (at least layer 1), every judged draft accepted with probability ``acceptance``."""
    from eelib.lm.speed import speculative_round_cost
    from eelib.lm.speculative import expected_tokens_per_round

    if isinstance(acceptance, bool) or not isinstance(acceptance, (int, float)) or not 0 <= acceptance <= 1:
        raise ValueError(f"acceptance must be a number in [0, 1] (the acceptance rate), got {acceptance!r}")
    if not 0 < draft_fraction < 1:
        raise ValueError(f"draft_fraction must be in (0, 1), got {draft_fraction!r}")
    N = shape.n_layers
    L = max(1, min(N - 1, round(draft_fraction * N)))
    block = lambda r: regime.block_time(shape, r, context)  # noqa: E731
    head = lambda r: regime.head_time(shape, r)  # noqa: E731
    plain = N * block(1) + head(1)
    best = max((expected_tokens_per_round(acceptance, k) * plain
                / speculative_round_cost(block, head(1), head, n_layers=N, draft_layer=L, drafts=k), k)
               for k in range(1, max_draft + 1))
    return best
