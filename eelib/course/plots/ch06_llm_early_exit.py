"""Chapter 6's figures (early exit in a language model): the transformer stack with its exits,
the logit lens, the agreement of each exit with the final layer and a token's cost."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import MaxNLocator

from eelib.course.plots._style import BLUE, GREEN, ORANGE, PURPLE, _styled

if TYPE_CHECKING:
    import torch

    from eelib.lm.generate import TokenCosts


@_styled
def draw_transformer_stack(n_layers: int, exit_layers: Sequence[int] = (), *, ax: Axes | None = None,
                           title: str | None = None) -> Figure:
    """The talk's figure 5: a token goes up a stack of transformer blocks; exits branch off after some.

    Args:
        n_layers: blocks in the stack.
        exit_layers: the layers (1..n_layers - 1) after which an exit sits; the final exit is drawn too.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be at least 1, got {n_layers}")
    bad = [l for l in exit_layers if not 1 <= l < n_layers]
    if bad:
        raise ValueError(f"exit_layers must be from 1 to {n_layers - 1}, got {bad}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 1.0 + 0.55 * (n_layers + 3)))
    else:
        fig = ax.figure
    h = 0.42

    def box(y, text, colour):
        ax.add_patch(FancyBboxPatch((0, y), 3, h, boxstyle="round,pad=0.04", fc=colour, ec="black", lw=1))
        ax.text(1.5, y + h / 2, text, ha="center", va="center", fontsize=9)

    box(0, "token + position embedding", "#dde6f5")
    for l in range(1, n_layers + 1):
        box(0.55 * l, f"block {l}: attention + MLP", "#f5e6c8")
        if l in exit_layers:
            ax.add_patch(FancyArrowPatch((3.05, 0.55 * l + h / 2), (3.8, 0.55 * l + h / 2), arrowstyle="-|>",
                                         mutation_scale=12, color=GREEN))
            ax.text(3.85, 0.55 * l + h / 2, f"exit after layer {l}", va="center", fontsize=9, color=GREEN)
    top = 0.55 * (n_layers + 1)
    box(top, "ln_f + lm_head → next token", "#d8f0d8")
    for y in np.arange(0, top, 0.55):
        ax.add_patch(FancyArrowPatch((1.5, y + h), (1.5, y + 0.55), arrowstyle="-|>", mutation_scale=10))
    ax.set(xlim=(-0.2, 6), ylim=(-0.2, top + 0.6),
           title=title or f"A GPT-2 model: {n_layers} transformer blocks on one residual stream")
    ax.axis("off")
    fig.tight_layout()
    return fig


@_styled
def plot_logit_lens(tokens: Sequence[str], predictions: Sequence[Sequence[str]], agree: "torch.Tensor",
                    exit_names: Sequence[str], *, title: str = "The logit lens: each layer's guess of the next token") -> Figure:
    """A grid: columns are the positions of a text, rows the exits; each cell shows that exit's top-1
    next token, green where it agrees with the final layer.

    Args:
        tokens: the input tokens (column labels).
        predictions: ``[exit][position]`` predicted tokens' texts.
        agree: ``(num_exits, T)`` booleans: agrees with the final exit.
    """
    if hasattr(agree, "detach"):  # a tensor, maybe on the GPU
        agree = agree.detach().cpu()
    agree = np.asarray(agree, dtype=float)
    E, T = agree.shape
    if len(tokens) != T or len(predictions) != E or len(exit_names) != E:
        raise ValueError(f"tokens ({len(tokens)}), predictions ({len(predictions)}) and exit_names "
                         f"({len(exit_names)}) must match agree's shape {agree.shape}")
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * T, 1.4 + 0.5 * E))
    # cividis (colour-blind safe): light yellow = agrees with the final layer, dark blue = differs
    ax.imshow(agree, cmap="cividis", vmin=0.0, vmax=1.0, aspect="auto")
    for e in range(E):
        for t in range(T):
            ax.text(t, e, repr(predictions[e][t])[1:-1][:8], ha="center", va="center", fontsize=9,
                    color="black" if agree[e, t] > 0.5 else "white")
    ax.set_xticks(range(T), [repr(s)[1:-1][:8] for s in tokens], rotation=60, fontsize=9)
    ax.set_yticks(range(E), list(exit_names), fontsize=9)
    ax.set(title=title + "\n(light: same as the final layer; dark: differs)",
           xlabel="input token (position in the text)", ylabel="exit")
    fig.tight_layout()
    return fig


@_styled
def plot_agreement_per_layer(agreement: Mapping[str, Sequence[float]], layers: Sequence[int], *,
                             title: str = "Agreement of each exit with the final layer") -> Figure:
    """Lines: the share (%) of tokens whose top-1 at each layer equals the final layer's, one line per kind of exit."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, values in agreement.items():
        if len(values) != len(layers):
            raise ValueError(f"{label!r} has {len(values)} values for {len(layers)} layers")
        ax.plot(list(layers), 100 * np.asarray(values), marker="o", label=label)
    ax.set(title=title, xlabel="layer the exit sits after", ylabel="top-1 agrees with the final layer (%)",
           ylim=(0, 105))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


@_styled
def plot_token_costs(costs: "TokenCosts", *, title: str = "What a token costs, by where it leaves") -> Figure:
    """Left: the FLOPs of one layer, one exit head and one copied-up key/value; right: each exit's cost
    per token as a share (%) of the model without exits (:func:`eelib.lm.generate.token_exit_costs`)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    parts = {"one layer": costs.layer_flops, "one exit head": costs.head_flops,
             "keys+values of\na skipped layer": costs.kv_flops}
    bars = a.bar(list(parts), np.asarray(list(parts.values())) / 1e6, color=[BLUE, ORANGE, "grey"])
    a.bar_label(bars, fmt="%.2f", fontsize=8)
    a.set(title=f"Pieces (context {costs.context} tokens)", xlabel="piece of work", ylabel="MFLOPs per token")
    a.grid(alpha=0.3, axis="y")
    x = np.arange(len(costs.exit_names))
    bars = b.bar(x, 100 * np.asarray(costs.relative_flops), color=PURPLE)
    b.bar_label(bars, fmt="%.0f%%", fontsize=8)
    b.axhline(100, color="black", lw=1, ls="--", label="model without exits")
    b.set_xticks(x, list(costs.exit_names), rotation=15)
    b.set(title="A token leaving at each exit", xlabel="exit", ylabel="FLOPs, % of the model without exits")
    b.legend(loc="upper left")
    b.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
