"""Chapter 3's figures (cost per head): the FLOPs of each exit, the estimated energy per image
and the measured latency per exit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from eelib.course.plots._style import BLACK, BLUE, GREEN, ORANGE, VERMILLION, _styled

if TYPE_CHECKING:
    from eelib.vision.cost import ExitCosts
    from eelib.policies import PolicyEval


@_styled
def plot_cost_per_head(costs: "ExitCosts", *, title: str = "Computation cost per exit") -> Figure:
    """The talk's figure 4: cumulative FLOPs per exit (left) and what each exit adds (right).

    Left: the cost of a sample that leaves at each exit, split into the backbone up to the exit
    and the heads evaluated on the way. Right: the difference from the previous exit.
    """
    names = list(costs.exit_names)
    x = np.arange(len(names))
    backbone = np.asarray(costs.backbone_flops, dtype=float) / 1e6
    heads = np.cumsum(costs.head_flops) / 1e6
    total = np.asarray(costs.flops, dtype=float) / 1e6
    full = costs.full_flops / 1e6
    fig, (ax_cum, ax_diff) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax_cum.bar(x, backbone, color=BLUE, label="backbone up to the exit")
    ax_cum.bar(x, heads, bottom=backbone, color=ORANGE, label="exit heads evaluated on the way")
    ax_cum.axhline(full, color="black", linestyle="--", linewidth=1, label=f"network without exits: {full:.1f} MFLOPs")
    for xi, t in zip(x, total):  # each exit's share of the network without exits, inside its bar
        ax_cum.text(xi, t / 2, f"{100 * t / full:.0f}%", ha="center", va="center", fontsize=9, color="white")
    ax_cum.set(title=f"{title}: cumulative", xlabel="exit (attach point)", ylabel="MFLOPs per image")
    diff = np.diff(np.concatenate([[0.0], total]))
    ax_diff.bar(x, diff, color=GREEN)
    ax_diff.set(title="Difference of computation cost per head", xlabel="exit (attach point)",
                ylabel="MFLOPs added since the previous exit")
    for ax in (ax_cum, ax_diff):
        ax.set_xticks(x, names, rotation=20)
        ax.grid(alpha=0.3, axis="y")
    ax_cum.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


@_styled
def plot_energy(costs: "ExitCosts", policies: Mapping[str, "PolicyEval"] | None = None, *,
                joules_per_flop: float | None = None, measured: Mapping[str, float] | None = None,
                title: str = "Estimated energy per image") -> Figure:
    """Estimated energy per image (µJ) of leaving at each exit (left) and of each policy (right).

    The estimate is arithmetic only (:func:`eelib.vision.cost.energy_estimate`: FLOPs x joules per FLOP,
    the assumption written on the figure); ``measured`` (``{label: joules per image}``, e.g. from
    :func:`eelib.vision.cost.measure_energy` where the machine has a power counter) is drawn beside it.

    Args:
        costs: the exits' costs (:func:`eelib.vision.cost.exit_costs`).
        policies: ``{label: PolicyEval}`` (e.g. calibrated policies, the oracle), by their average FLOPs.
        joules_per_flop: the assumption (default: ``eelib.vision.cost.JOULES_PER_FLOP``).
    """
    from eelib.vision.cost import JOULES_PER_FLOP, energy_estimate

    jpf = JOULES_PER_FLOP if joules_per_flop is None else joules_per_flop
    per_exit = [1e6 * energy_estimate(f, joules_per_flop=jpf) for f in costs.flops]
    full = 1e6 * energy_estimate(costs.full_flops, joules_per_flop=jpf)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(per_exit))
    bars = a.bar(x, per_exit, color=BLUE)
    a.bar_label(bars, fmt="%.0f", fontsize=8)
    a.axhline(full, color="black", ls="--", lw=1, label=f"network without exits: {full:.0f} µJ")
    a.set_xticks(x, list(costs.exit_names), rotation=20)
    a.set(title="Leaving at each exit", xlabel="exit (attach point)", ylabel="estimated energy per image (µJ)",
          ylim=(0, 1.25 * max(per_exit + [full])))
    a.legend(loc="upper left", fontsize=8)
    labels = ["no exits"] + list(policies or {})
    values = [full] + [1e6 * energy_estimate(e.avg_flops, joules_per_flop=jpf) for e in (policies or {}).values()]
    y = np.arange(len(labels))
    bars = b.barh(y, values, color=[BLACK] + [ORANGE] * (len(labels) - 1), alpha=0.8)
    b.bar_label(bars, labels=[f"{v:.0f} µJ ({100 * v / full:.0f}%)" for v in values], fontsize=8)
    if measured:
        m_labels = [l for l in labels if l in measured]
        b.scatter([1e6 * measured[l] for l in m_labels], [labels.index(l) for l in m_labels], marker="D",
                  color=VERMILLION, zorder=3, label="measured (power counter)")
    b.set_yticks(y, labels, fontsize=8)
    b.invert_yaxis()
    b.set(title="Policies (average per image)", xlabel="energy per image (µJ)", ylabel="policy",
          xlim=(0, 1.45 * max(values)))
    if measured:
        b.legend(loc="lower right", fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3, axis="y" if ax is a else "x")
    fig.suptitle(f"{title} — assumption: {1e12 * jpf:.1f} pJ per FLOP, arithmetic only "
                 "(memory, idle power and the rest of the machine not counted)", fontsize=10)
    fig.tight_layout()
    return fig


@_styled
def plot_latency(costs: "ExitCosts", seconds: Sequence[float] | Sequence[Sequence[float]], *, batch_size: int,
                 title: str = "Measured latency per exit") -> Figure:
    """Measured time to reach each exit (bars, ms) beside its share of the FLOPs (line, %).

    ``seconds``: one time per exit, or (e.g. ``latency_per_exit(..., all_runs=True)``) every
    repeat per exit: then the bar is the median and the error bar the spread (min to max), so
    timing noise shows as noise (two exits whose spreads overlap are not told apart).
    """
    if len(seconds) != len(costs.exit_names):
        raise ValueError(f"seconds has {len(seconds)} values for {len(costs.exit_names)} exits")
    runs = [np.atleast_1d(np.asarray(s, dtype=float)) * 1000 for s in seconds]
    ms = np.array([np.median(r) for r in runs])
    lo, hi = np.array([r.min() for r in runs]), np.array([r.max() for r in runs])
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(seconds))
    spread = max(len(r) for r in runs) > 1
    ax.bar(x, ms, color=BLUE, yerr=[ms - lo, hi - ms] if spread else None, capsize=4 if spread else 0,
           label="measured time (median; bars: min-max of the repeats)" if spread else "measured time")
    ax.set_xticks(x, list(costs.exit_names), rotation=20)
    ax.set(title=f"{title} (batch of {batch_size})", xlabel="exit (attach point)", ylabel="milliseconds per batch")
    ax.set_ylim(0, 1.3 * hi.max())  # room above the bars for the legend
    ax2 = ax.twinx()
    ax2.plot(x, 100 * ms / ms[-1], "o-", color=ORANGE, label="time, % of the full network")
    alone = [(b + h) / costs.full_flops for b, h in zip(costs.backbone_flops, costs.head_flops)]  # what was timed
    ax2.plot(x, [100 * r for r in alone], "s--", color=GREEN, label="FLOPs, % of the full network")
    ax2.set(ylabel="% of the full network", ylim=(0, 130))
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8, ncols=2)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
