"""Chapter 4's figures (exit policies): accuracy against computation, overthinking and the
confidence of the right and wrong predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from eelib.course.plots._style import RIGHT, VERMILLION, WRONG, _styled

if TYPE_CHECKING:
    from eelib.outputs import ExitOutputs
    from eelib.policies import PolicyEval


@_styled
def plot_tradeoff(curve: Sequence[tuple[float, "PolicyEval"]] | Mapping[str, Sequence[tuple[float, "PolicyEval"]]],
                  *, static: Sequence["PolicyEval"] = (),
                  exit_names: Sequence[str] = (), oracle: "PolicyEval | None" = None,
                  chosen: "PolicyEval | None" = None, label: str = "early exit, one threshold for every exit",
                  title: str = "Accuracy vs computation") -> Figure:
    """Accuracy against average FLOPs (% of the network without exits) over thresholds.

    Args:
        curve: ``[(threshold, PolicyEval), ...]``, e.g. from :func:`eelib.policies.tradeoff_curve`;
            or ``{label: curve}`` for several (one per measure).
        static: one PolicyEval per exit where every sample takes that exit (smaller networks).
        exit_names: labels of the static points.
        oracle: the oracle's PolicyEval (the best accuracy, at the least cost that reaches it).
        chosen: a calibrated policy to mark.
        label: the legend entry of a single curve (name the measure).
    """
    curves = dict(curve) if isinstance(curve, Mapping) else {label: curve}
    if not curves or not all(curves.values()):
        raise ValueError("curve is empty: pass [(threshold, PolicyEval), ...] or {label: [...]}")
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, points) in enumerate(curves.items()):
        cost = [100 * e.avg_flops / e.full_flops for _, e in points]
        acc = [100 * e.accuracy for _, e in points]
        ax.plot(cost, acc, marker=".", label=name, alpha=1.0 if i == 0 else 0.6)
    if static:
        sc = [100 * e.avg_flops / e.full_flops for e in static]
        ax.plot(sc, [100 * e.accuracy for e in static], "s--", color="grey", label="every sample takes one exit")
        for name, c, e in zip(exit_names, sc, static):
            ax.annotate(name, (c, 100 * e.accuracy), textcoords="offset points", xytext=(6, -14), fontsize=8,
                        color="grey")
    if oracle is not None:
        ax.plot([100 * oracle.avg_flops / oracle.full_flops], [100 * oracle.accuracy], "*", markersize=14,
                color=VERMILLION, label="oracle: earliest exit that is right")
    if chosen is not None:
        ax.plot([100 * chosen.avg_flops / chosen.full_flops], [100 * chosen.accuracy], "o", markersize=11,
                markerfacecolor="none", markeredgecolor="black", markeredgewidth=2, label="calibrated policy")
    ax.set(title=title, xlabel="average FLOPs per image (% of the network without exits)",
           ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


@_styled
def plot_overthinking(fractions: Sequence[float], exit_names: Sequence[str], *,
                      title: str = "Overthinking: right early, wrong at the end") -> Figure:
    """Bar chart: for each early exit, the share (%) of images it gets right that the final exit gets wrong."""
    if len(fractions) != len(exit_names):
        raise ValueError(f"fractions has {len(fractions)} values for {len(exit_names)} early exits")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(exit_names))
    bars = ax.bar(x, 100 * np.asarray(fractions), color=VERMILLION)
    ax.bar_label(bars, fmt="%.2f%%", fontsize=8)
    ax.set_xticks(x, list(exit_names), rotation=20)
    ax.set(title=title, xlabel="early exit (attach point)",
           ylabel="images right here, wrong at the final exit (%)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


@_styled
def plot_confidence(outputs: "ExitOutputs", k: int = 0, *, measure: str = "max_prob",
                    threshold: float | None = None, title: str | None = None) -> Figure:
    """Histogram of a confidence measure at exit ``k``, for the images it gets right and wrong."""
    from eelib.policies import confidence, get_measure

    if not 0 <= k < outputs.num_exits:
        raise ValueError(f"exit {k!r} does not exist: there are {outputs.num_exits} exits (0..{outputs.num_exits - 1})")
    scores = confidence(outputs.logits, measure)[k].numpy()
    right = outputs.correct[k].numpy()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    bins = np.linspace(scores.min(), scores.max(), 31) if scores.max() > scores.min() else 10
    ax.hist(scores[right], bins=bins, alpha=0.6, color=RIGHT, label=f"right ({right.sum()})")
    ax.hist(scores[~right], bins=bins, alpha=0.8, color=WRONG, label=f"wrong ({(~right).sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    direction = "higher" if get_measure(measure).higher_is_confident else "lower"
    ax.set(title=title or f"{measure} at exit {k} ({outputs.exit_names[k]})",
           xlabel=f"{measure} ({direction} = more confident)", ylabel="images (log scale)", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
