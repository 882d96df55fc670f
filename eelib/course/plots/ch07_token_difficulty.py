"""Chapter 7's figures (token difficulty): the mean exit layer of each kind of token; energy per generated token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from eelib.course.plots._style import BLACK, ORANGE, SKY, VERMILLION, _styled

if TYPE_CHECKING:
    from eelib.lm.energy import TokenEnergy
    from eelib.lm.tokens import KindDifficulty


@_styled
def plot_difficulty_by_kind(rows: Sequence["KindDifficulty"], n_layers: int, *,
                            title: str = "Which tokens are easy?") -> Figure:
    """Bars: mean exit layer per kind of token (:func:`eelib.lm.tokens.difficulty_by_kind`), with the token counts."""
    if not rows:
        raise ValueError("rows is empty: no kinds of token to show")
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    x = np.arange(len(rows))
    bars = ax.bar(x, [r.mean_layers for r in rows], color=SKY)
    ax.bar_label(bars, labels=[f"{r.mean_layers:.1f}\n({r.count})" for r in rows], fontsize=8)
    ax.set_xticks(x, [r.kind for r in rows], rotation=20)
    ax.set(title=title + " (label: mean layer, number of tokens)", xlabel="kind of predicted token",
           ylabel="mean exit layer", ylim=(0, n_layers + 1.5))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


@_styled
def plot_token_energy(energy: "TokenEnergy", *, title: str = "Estimated energy per generated token") -> Figure:
    """Bars: estimated energy per generated token of each loop (µJ; :func:`eelib.lm.energy.generation_energy`),
    with its share of the loop without exits; measured energy (a power counter) beside it where there was one.
    The assumption (joules per FLOP, arithmetic only) is written on the figure."""
    values = [1e6 * j for j in energy.joules]
    base = values[energy.loops.index("no exits")] if "no exits" in energy.loops else None
    fig, ax = plt.subplots(figsize=(8, 3.6))
    y = np.arange(len(values))
    colours = [BLACK if name == "no exits" else ORANGE for name in energy.loops]
    bars = ax.barh(y, values, color=colours, alpha=0.8)
    ax.bar_label(bars, labels=[f"{v:.1f} µJ" + (f" ({100 * v / base:.0f}%)" if base else "") for v in values],
                 fontsize=8)
    measured = [(i, 1e6 * m) for i, m in enumerate(energy.measured) if m is not None]
    if measured:
        ax.scatter([m for _, m in measured], [i for i, _ in measured], marker="D", color=VERMILLION, zorder=3,
                   label="measured (power counter, whole processor)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, list(energy.loops), fontsize=9)
    ax.invert_yaxis()
    top = max(values + [m for _, m in measured])
    ax.set(xlabel="energy per generated token (µJ)", ylabel="generation loop", xlim=(0, 1.35 * top))
    ax.set_title(f"{title}\nassumption: {1e12 * energy.joules_per_flop:.1f} pJ per FLOP, arithmetic only (as in "
                 f"chapter 3); counted FLOPs, prompt excluded, {energy.tokens} tokens", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
