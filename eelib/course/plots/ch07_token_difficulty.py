"""Chapter 7's figure (token difficulty): the mean exit layer of each kind of token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from eelib.course.plots._style import SKY, _styled

if TYPE_CHECKING:
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
