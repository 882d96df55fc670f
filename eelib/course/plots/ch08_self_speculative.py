"""Chapter 8's figures (self-speculative decoding): the time of one block call by its rows, the
calibration grid of draft layer and threshold, measured against predicted speed, and the projection to
real LLMs."""

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
    (:func:`eelib.lm.speed.measure_block_time`); a dashed line: what ``rows`` separate calls would cost."""
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
    b.set(title="Speedup vs the plain loop", xlabel="draft threshold (max_prob)", ylabel="speedup (x)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    a.legend(loc="upper right", fontsize=8)
    b.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@_styled
def plot_measured_vs_predicted(rows: Sequence[Mapping], *,
                               title: str = "The speed model against the clock") -> Figure:
    """Measured tokens per second (x) against the speed model's prediction (y), one point per loop, with the
    diagonal and the +-10% band. ``rows``: dicts with ``loop``, ``tokens_per_second``,
    ``predicted_tokens_per_second`` (and optionally ``model``)."""
    rows = [r for r in rows if r.get("predicted_tokens_per_second") is not None]
    if not rows:
        raise ValueError("rows has no loop with a predicted speed")
    fig, ax = plt.subplots(figsize=(6.5, 5))
    measured = np.array([r["tokens_per_second"] for r in rows])
    predicted = np.array([r["predicted_tokens_per_second"] for r in rows])
    lo, hi = 0.9 * min(measured.min(), predicted.min()), 1.1 * max(measured.max(), predicted.max())
    line = np.linspace(lo, hi, 10)
    ax.plot(line, line, color="black", lw=1, label="prediction = measurement")
    ax.fill_between(line, 0.9 * line, 1.1 * line, color="grey", alpha=0.2, label="within 10%")
    markers = "osD^vP*X"
    for i, loop in enumerate(dict.fromkeys(r["loop"] for r in rows)):
        mine = [r for r in rows if r["loop"] == loop]
        ax.scatter([r["tokens_per_second"] for r in mine], [r["predicted_tokens_per_second"] for r in mine],
                   marker=markers[i % len(markers)], s=45, label=loop, zorder=3)
    ax.set(title=title, xlabel="measured tokens per second", ylabel="predicted tokens per second", xlim=(lo, hi),
           ylim=(lo, hi))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


@_styled
def plot_projection(projection: Mapping, *, title: str = "Self-speculative decoding, projected: speedup against "
                    "the acceptance rate") -> Figure:
    """The projection (``benchmarks/results/self_speculative.json``'s ``"projection"`` or
    :func:`eelib.lm.projection` curves in that form): one panel per regime (this CPU, a GPU-like one), one
    line per model (darker = deeper), the course's measured loops on the CPU panel and the published
    speedups as bands on the GPU panel."""
    acc = np.asarray(projection["acceptance"])
    models = projection["models"]
    regimes = [r for r in ("cpu", "gpu") if all(r in m for m in models.values())]
    if not regimes:
        raise ValueError("projection has no 'cpu' or 'gpu' curves")
    fig, axes = plt.subplots(1, len(regimes), figsize=(6 * len(regimes), 4.4), sharey=True, squeeze=False)
    depth = sorted(m["n_layers"] for m in models.values())
    cmap = plt.get_cmap("viridis")
    titles = {"cpu": "this CPU's regime (k + 1 rows cost more than 1)",
              "gpu": "GPU-like regime (weights' bytes / bandwidth; a few rows free)"}
    for ax, regime in zip(axes[0], regimes):
        for name, m in models.items():
            shade = 0.85 * (1 - depth.index(m["n_layers"]) / max(len(depth) - 1, 1))
            ax.plot(acc, m[regime], color=cmap(shade), label=f"{name} ({m['n_layers']} layers)")
        ax.axhline(1, color="black", lw=1, ls="--")
        if regime == "cpu":
            for point in projection.get("measured", []):
                ax.scatter(point["acceptance"], point["speedup"], marker="D" if "dynamic" in point["loop"] else "o",
                           color="#D55E00" if point["model"] == "course-ee" else "#0072B2", zorder=3, s=30)
            ax.scatter([], [], marker="o", color="#D55E00", label="measured here: course-ee (o fixed, D dynamic)")
            ax.scatter([], [], marker="o", color="#0072B2", label="measured here: course")
        else:
            for i, pub in enumerate(projection.get("published", [])):
                ax.axhspan(pub["low"], pub["high"], color=("#CC79A7", "#009E73")[i % 2], alpha=0.18,
                           label=f"published: {pub['method']}, {pub['models']}")
        ax.set(title=titles[regime], xlabel="acceptance rate (a judged draft is accepted)", ylabel="speedup (x)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title} (draft exit at {projection.get('draft_fraction', 0.25):.0%} of the depth)")
    fig.tight_layout()
    return fig
