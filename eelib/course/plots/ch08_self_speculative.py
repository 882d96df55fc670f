"""Chapter 8's figures (self-speculative decoding): the time of one block call by its rows, and
the calibration grid of draft layer and threshold."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from eelib.course.plots._style import _styled


@_styled
def plot_block_time(rows: Sequence[int], seconds: Sequence[Sequence[float]], *,
                    title: str = "One block call, by the number of rows (tokens) it processes") -> Figure:
    """Median time (µs) of one transformer block call against its rows, with the spread of the repeats
    (:func:`eelib.lm.speculative.measure_block_time`); a dashed line: what ``rows`` separate calls would cost."""
    if len(rows) != len(seconds) or not rows:
        raise ValueError(f"rows has {len(rows)} values and seconds {len(seconds)}: give one list of times per row count")
    us = [1e6 * np.asarray(s, dtype=float) for s in seconds]
    med = np.array([np.median(u) for u in us])
    lo, hi = np.array([np.percentile(u, 10) for u in us]), np.array([np.percentile(u, 90) for u in us])
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.errorbar(list(rows), med, yerr=[med - lo, hi - med], marker="o", capsize=3, label="one call (10-90% of repeats)")
    ax.plot(list(rows), med[0] * np.asarray(rows), ls="--", color="grey", label="separate calls, one row each")
    ax.set(title=title, xlabel="rows in the call (tokens verified together)", ylabel="time per call (µs)",
           ylim=(0, max(hi.max(), med[0] * 4) * 1.1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


@_styled
def plot_speculative_grid(grid: Sequence[Mapping], *, max_draft: int | None = None, draft_vocab="all",
                          title: str = "Self-speculative decoding: draft layer and threshold") -> Figure:
    """From a calibration grid (``speculative.json``'s ``"grid"``): tokens per round (left) and measured speedup
    (right) against the draft threshold, one line per draft layer, for one ``max_draft`` and draft vocabulary."""
    rows = [r for r in grid if (max_draft is None or r["max_draft"] == max_draft)
            and (draft_vocab == "all" or r["draft_vocab"] == draft_vocab)]
    if not rows:
        raise ValueError(f"no rows of the grid have max_draft={max_draft!r} and draft_vocab={draft_vocab!r}")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = plt.get_cmap("viridis")
    layers = sorted({r["layer"] for r in rows})
    for i, layer in enumerate(layers):
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["threshold"])
        if max_draft is None or draft_vocab == "all":  # several settings per threshold: the best of them
            best = {}
            for r in mine:
                if r["threshold"] not in best or r["speedup"] > best[r["threshold"]]["speedup"]:
                    best[r["threshold"]] = r
            mine = [best[t] for t in sorted(best)]
        c = colours(i / max(len(layers) - 1, 1) * 0.85)
        t = [r["threshold"] for r in mine]
        a.plot(t, [r["tokens_per_round"] for r in mine], marker="o", color=c, label=f"draft after layer {layer}")
        b.plot(t, [r["speedup"] for r in mine], marker="o", color=c, label=f"draft after layer {layer}")
    a.set(title="Tokens per draft-and-verify round", xlabel="draft threshold (max_prob)", ylabel="tokens per round")
    b.axhline(1, color="black", lw=1, ls="--", label="plain loop")
    b.set(title="Measured speedup vs the plain loop", xlabel="draft threshold (max_prob)", ylabel="speedup (x)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    a.legend(loc="upper right", fontsize=8)
    b.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
