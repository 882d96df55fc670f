"""Token difficulty: the exit layer of each token, coloured text, and which kinds of token are easy.

A token's **exit layer** — where an early-exit policy (or the oracle) lets its prediction leave —
measures how hard the token is to predict. :func:`token_html` colours a text by it;
:func:`token_kinds` sorts tokens into kinds (newlines, punctuation, names in capitals,
frequent words, other word starts, and continuations of a word split into several tokens) and
:func:`difficulty_by_kind` compares their exit layers.

Convention: row ``i`` of a text's exits predicts token ``i + 1``, so a token is coloured by the
layer at which **it was predicted**, and its kind is the kind of the predicted token.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import torch

from eelib.lm.model import LanguageModel

TOKEN_KINDS = ("newline", "punctuation", "name (capitals)", "frequent word", "word start", "word continuation")
# The most frequent words of Early Modern English plays (function words), lower case.
FREQUENT_WORDS = frozenset(
    "the and i to of a you my that in is not me it with be his your this for he but have thou as so will what "
    "thy all her no by do shall if are we our on him thee or now from at good well lord o let how".split())


def token_strings(lm: LanguageModel, ids: Sequence[int] | torch.Tensor) -> list[str]:
    """Each token's text (decoded one by one: byte-level tokens that split a character show a replacement mark)."""
    return [lm.tokenizer.decode([int(i)]) for i in torch.as_tensor(ids).flatten().tolist()]


def token_kind(token: str, previous: str = "") -> str:
    """The kind of ``token`` (one of :data:`TOKEN_KINDS`), given the token before it.

    * ``newline``: only white space;
    * ``punctuation``: no letter or digit;
    * ``name (capitals)``: a word in capitals (the speakers: ``ROMEO``), or a piece of one: 2
      capitals or more, or one capital right after a capital;
    * ``word continuation``: starts with a letter (or an apostrophe: ``'s``) right after a letter
      (no space): the second or later piece of a word the tokenizer split;
    * ``frequent word``: a word start that is one of :data:`FREQUENT_WORDS`;
    * ``word start``: any other token that begins a word.
    """
    core = token.strip()
    if not core:
        return "newline"
    letters = [c for c in core if c.isalpha()]
    if not letters and not any(c.isdigit() for c in core):
        return "punctuation"
    word = "".join(c for c in core if c.isalpha())
    if word.isupper() and (len(word) >= 2 or (token[0].isalpha() and previous[-1:].isupper())):
        return "name (capitals)"
    if (token[0].isalpha() or token[0] == "'") and previous[-1:].isalpha():
        return "word continuation"
    return "frequent word" if word.lower() in FREQUENT_WORDS else "word start"


def token_kinds(lm: LanguageModel, ids: Sequence[int] | torch.Tensor, *, previous: int | None = None) -> list[str]:
    """The kind of every token of ``ids`` (see :func:`token_kind`), with one look ahead: a single capital
    followed by more capitals (``B`` + ``APTISTA``) is the first piece of a name.

    Args:
        previous: the token before ``ids[0]``, if any (it decides whether ``ids[0]`` continues a word).
    """
    strings = token_strings(lm, ids)
    before = [token_strings(lm, [previous])[0] if previous is not None else ""] + strings[:-1]
    kinds = [token_kind(s, p) for s, p in zip(strings, before)]
    for i in range(len(strings) - 1):  # a name's first piece, one capital ("B" of "B|APTISTA"): look ahead
        after = strings[i + 1]
        if (strings[i].strip().isupper() and len(strings[i].strip()) == 1 and after[:1].isalpha()
                and after.strip().isupper()):
            kinds[i] = "name (capitals)"
    return kinds


@dataclass(frozen=True)
class KindDifficulty:
    """How early the tokens of one kind leave."""

    kind: str
    count: int
    mean_layers: float  # mean exit layer
    first_exit_share: float  # fraction that left at the first exit


def difficulty_by_kind(kinds: Sequence[str], layers: Sequence[int] | torch.Tensor) -> list[KindDifficulty]:
    """Mean exit layer and share leaving at the earliest exit, per kind of token (kinds with no token omitted)."""
    layers = [int(l) for l in torch.as_tensor(layers).flatten().tolist()]
    if len(kinds) != len(layers):
        raise ValueError(f"kinds has {len(kinds)} entries but layers has {len(layers)}: give one of each per token")
    if not layers:
        raise ValueError("no tokens: kinds and layers are empty")
    first = min(layers)
    rows = []
    for kind in TOKEN_KINDS:
        mine = [l for k, l in zip(kinds, layers) if k == kind]
        if mine:
            rows.append(KindDifficulty(kind, len(mine), sum(mine) / len(mine), sum(l == first for l in mine) / len(mine)))
    return rows


def layer_colours(n_layers: int, cmap: str = "viridis") -> list[str]:
    """A hex colour for each layer 1..n_layers on a colour-blind-safe sequential scale (viridis:
    dark blue for early layers to yellow for late ones; its lightness alone orders the layers, so
    it also reads in greyscale print)."""
    import matplotlib

    colours = matplotlib.colormaps[cmap]
    return [matplotlib.colors.to_hex(colours(0.1 + 0.85 * (l - 1) / max(n_layers - 1, 1))) for l in range(1, n_layers + 1)]


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on ``background`` (a hex colour; WCAG relative luminance)."""
    import matplotlib

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in matplotlib.colors.to_rgb(background))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "#fff"


def token_html(tokens: Sequence[str], layers: Sequence[int | None], n_layers: int, *,
               confidences: Sequence[float] | None = None, measure: str = "max_prob",
               legend: Sequence[int] | None = None, labels: bool = True,
               rejected: Sequence[bool] | None = None) -> str:
    """A text as HTML, each token's background coloured by its exit layer; hovering shows layer and confidence.

    The colours are viridis (colour-blind safe), with black or white text, whichever contrasts
    more; with ``labels`` each predicted token also carries its layer as a small subscript, so the
    text reads without colour (printed in greyscale, or by a colour-blind reader).

    Args:
        tokens: the tokens' texts (:func:`token_strings`).
        layers: the layer each token was predicted at (1..n_layers), or None for tokens that were
            not predicted (the prompt): shown uncoloured.
        confidences: the policy's measure at the exit, per token (shown on hover).
        legend: the layers to show in the legend (default: those that occur).
        rejected: per token, whether the model abstained from predicting it (chapter 9): shown
            struck through on a light grey background, with its layer and an "x" as subscript.

    Returns:
        A ``<div>`` to show with ``IPython.display.HTML``.
    """
    if len(tokens) != len(layers):
        raise ValueError(f"tokens has {len(tokens)} entries but layers has {len(layers)}")
    if confidences is not None and len(confidences) != len(tokens):
        raise ValueError(f"confidences has {len(confidences)} entries for {len(tokens)} tokens")
    if rejected is not None and len(rejected) != len(tokens):
        raise ValueError(f"rejected has {len(rejected)} entries for {len(tokens)} tokens")
    bad = [l for l in layers if l is not None and not 1 <= int(l) <= n_layers]
    if bad:
        raise ValueError(f"layers must be from 1 to n_layers={n_layers} (or None), got {bad[:5]}")
    colours = layer_colours(n_layers)
    spans = []
    for i, (tok, layer) in enumerate(zip(tokens, layers)):
        body = tok.rstrip("\n")  # a token's trailing line breaks go after its label, so "↵₂" ends the line
        breaks = len(tok) - len(body)
        text = html.escape(body).replace("\n", "&#8629;<br>") + "&#8629;" * breaks
        if layer is None:
            spans.append(f'<span title="prompt" style="color:#555">{text}</span>' + "<br>" * breaks)
            continue
        tip = f"layer {int(layer)} of {n_layers}"
        if confidences is not None:
            tip += f" | {measure} {float(confidences[i]):.3f}"
        if rejected is not None and rejected[i]:
            tip = "rejected (no prediction) at " + tip
            label = f'<sub style="font-size:60%">{int(layer)}x</sub>' if labels else ""
            spans.append(f'<span title="{html.escape(tip)}" style="background:#e6e6e6;color:#444;'
                         f'text-decoration:line-through;border-radius:3px">{text}{label}</span>')
            continue
        colour = colours[int(layer) - 1]
        label = f'<sub style="font-size:60%">{int(layer)}</sub>' if labels else ""
        spans.append(f'<span title="{html.escape(tip)}" style="background:{colour};color:{text_colour(colour)};'
                     f'border-radius:3px">{text}{label}</span>' + "<br>" * breaks)
    shown = sorted({int(l) for l in layers if l is not None}) if legend is None else list(legend)
    keys = " ".join(f'<span style="background:{colours[l - 1]};color:{text_colour(colours[l - 1])};padding:0 6px;'
                    f'border-radius:3px">layer {l}</span>' for l in shown)
    if rejected is not None and any(rejected):
        keys += (' <span style="background:#e6e6e6;color:#444;text-decoration:line-through;padding:0 6px;'
                 'border-radius:3px">rejected</span>')
    return (f'<div style="font-family:monospace;line-height:1.9;white-space:pre-wrap">{"".join(spans)}</div>'
            f'<div style="margin-top:6px;font-size:90%">exit layer: {keys} (hover over a token for details)</div>')


def rounds_html(lm: LanguageModel, generation, *, n_layers: int | None = None) -> str:
    """A speculative generation's rounds as HTML: each accepted draft coloured by the layer of the exit that
    drafted it, each rejected draft struck through in grey (it was computed, then thrown away), and each
    round's token from the full model (the bonus) in the final layer's colour; subscripts give the layers.

    Args:
        generation: from :func:`eelib.lm.speculative.self_speculative_generate` or
            :func:`~eelib.lm.speculative.dynamic_speculative_generate` (its ``rounds`` and ``steps``).
    """
    n_layers = generation.n_layers if n_layers is None else n_layers
    if not generation.rounds:
        raise ValueError("generation has no rounds: give the result of a speculative loop")
    colours = layer_colours(n_layers)
    prompt = token_strings(lm, list(generation.prompt_ids))
    spans = [f'<span title="prompt" style="color:#555">{html.escape(t)}</span>' for t in prompt]

    def span(text: str, layer: int, tip: str) -> str:
        colour = colours[layer - 1]
        text = html.escape(text).replace("\n", "&#8629;<br>")
        return (f'<span title="{html.escape(tip)}" style="background:{colour};color:{text_colour(colour)};'
                f'border-radius:3px">{text}<sub style="font-size:60%">{layer}</sub></span>')

    i = 0
    for r in generation.rounds:
        kept = generation.steps[i:i + r.tokens]
        for step in kept[:-1]:
            spans.append(span(token_strings(lm, [step.token])[0], step.layer, f"draft from layer {step.layer}, accepted"))
        for tok in r.draft_tokens[r.accepted:]:
            text = html.escape(token_strings(lm, [tok])[0]).replace("\n", "&#8629;")
            spans.append(f'<span title="draft rejected by the full model" style="color:#888;'
                         f'text-decoration:line-through">{text}</span>')
        spans.append(span(token_strings(lm, [kept[-1].token])[0], n_layers, "the full model's token (verified)"))
        i += r.tokens
    layers = sorted({s.layer for s in generation.steps})
    keys = " ".join(f'<span style="background:{colours[l - 1]};color:{text_colour(colours[l - 1])};padding:0 6px;'
                    f'border-radius:3px">layer {l}</span>' for l in layers)
    return (f'<div style="font-family:monospace;line-height:1.9;white-space:pre-wrap">{"".join(spans)}</div>'
            f'<div style="margin-top:6px;font-size:90%">accepted drafts by the layer that drafted them, the full '
            f'model\'s tokens at layer {n_layers}: {keys}; <span style="color:#888;text-decoration:line-through">'
            f'rejected drafts</span> struck through</div>')
