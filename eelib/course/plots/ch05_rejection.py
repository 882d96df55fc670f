"""Chapter 5's figures (rejection): risk–coverage curves, the exit / continue / reject regions of
a policy, and cost, accuracy and coverage together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from eelib.course.plots._style import GREEN, RIGHT, VERMILLION, WRONG, _styled

if TYPE_CHECKING:
    from eelib.outputs import ExitOutputs
    from eelib.rejection import RejectEval, RejectPolicy, RiskCoverage


@_styled
def plot_risk_coverage(curves: Mapping[str, "RiskCoverage"], *, oracle: "RiskCoverage | None" = None,
                       alpha: float | None = None, chosen: tuple[float, float] | None = None,
                       min_coverage: float = 0.0, oracle_of: str = "final exit", title: str = "Risk–coverage") -> Figure:
    """Selective risk (%) against coverage (%), one step curve per score (AURC in the legend).

    Args:
        curves: ``{label: RiskCoverage}``, e.g. one per exit (:func:`eelib.rejection.risk_coverage_curve`).
        oracle: the oracle's curve (:func:`eelib.rejection.oracle_risk_coverage`), drawn dashed.
        oracle_of: whose answers the oracle ranks (named in the legend): an oracle is the lowest curve
            for *those* answers; another exit with fewer errors has a lower oracle of its own.
        alpha: a target risk, drawn as a horizontal line.
        chosen: ``(coverage, risk)`` of a chosen threshold (fractions), marked with a circle.
        min_coverage: the left end of the x axis (a fraction), to zoom on high coverage.
    """
    if not 0 <= min_coverage < 1:
        raise ValueError(f"min_coverage must be in [0, 1), got {min_coverage!r}")
    if not curves:
        raise ValueError("curves is empty: pass {label: RiskCoverage}")
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, c in curves.items():
        ax.step(100 * c.coverage.numpy(), 100 * c.risk.numpy(), where="post",
                label=f"{label} (AURC {100 * c.aurc:.2f}%)")
    if oracle is not None:
        ax.step(100 * oracle.coverage.numpy(), 100 * oracle.risk.numpy(), where="post", color="black", linestyle="--",
                label=f"oracle of the {oracle_of}: its errors rejected first (AURC {100 * oracle.aurc:.2f}%)")
    if alpha is not None:
        ax.axhline(100 * alpha, color=VERMILLION, linestyle=":", label=f"target risk α = {100 * alpha:.3g}%")
    if chosen is not None:
        ax.plot([100 * chosen[0]], [100 * chosen[1]], "o", markersize=11, markerfacecolor="none",
                markeredgecolor="black", markeredgewidth=2, label="chosen threshold")
    ax.set(title=title, xlabel="coverage: samples accepted (%)", ylabel="selective risk: accepted samples wrong (%)",
           xlim=(100 * min_coverage, 101))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


@_styled
def plot_reject_regions(policy: "RejectPolicy", outputs: "ExitOutputs", *, n: int = 300, seed: int = 0,
                        title: str = "Exit, continue or reject") -> Figure:
    """The accept / continue / reject regions of a :class:`~eelib.rejection.RejectPolicy`, exit by exit.

    Each column is an exit, the y axis the confidence measure; the shaded bands are the decision
    for a score there (exit with the prediction, continue, reject). Dots: ``n`` samples of
    ``outputs`` at the exits they reach, green if the exit is right, red if wrong (jittered).
    """
    from eelib.policies import confidence, get_measure
    from eelib.rejection import decide_all

    if outputs.num_exits != policy.num_exits:
        raise ValueError(f"the policy has {policy.num_exits} exits but outputs has {outputs.num_exits}")
    policy.check(outputs.num_exits, outputs.logits.shape[-1])
    m = get_measure(policy.measure)
    scores = confidence(outputs.logits, policy.measure)
    exits, _ = decide_all(policy, scores)
    lo, hi = m.range(outputs.logits.shape[-1], outputs.num_exits)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(exits), size=min(n, len(exits)), replace=False)
    fig, ax = plt.subplots(figsize=(11, 5))
    colours = {"exit": GREEN, "continue": "lightgrey", "reject": VERMILLION}
    for k in range(policy.num_exits):
        final = k == policy.num_exits - 1
        r = min(max(policy.reject_thresholds[k], lo), hi)
        e = hi if final else min(max(policy.exit_thresholds[k], lo), hi)
        e = max(e, r) if m.higher_is_confident else min(e, r)
        if m.higher_is_confident:
            bands = [("reject", lo, r), ("continue", r, e), ("exit", e, hi)]
        else:
            bands = [("exit", lo, e), ("continue", e, r), ("reject", r, hi)]
        if final:
            bands = [(("exit" if b == "continue" else b), a, c) for b, a, c in bands]
        for name, a, b in bands:
            if b > a:
                ax.fill_between([k - 0.4, k + 0.4], a, b, color=colours[name], alpha=0.25, linewidth=0)
        reach = [i for i in idx if exits[i] >= k]
        right = outputs.correct[k, reach].numpy()
        x = k + rng.uniform(-0.3, 0.3, size=len(reach))
        y = scores[k, reach].numpy()
        ax.scatter(x[right], y[right], s=6, color=RIGHT, alpha=0.6)
        ax.scatter(x[~right], y[~right], s=14, color=WRONG, marker="x")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c], alpha=0.4) for c in ("exit", "continue", "reject")]
    handles += [plt.Line2D([], [], marker="o", linestyle="", color=RIGHT, markersize=4),
                plt.Line2D([], [], marker="x", linestyle="", color=WRONG)]
    ax.legend(handles, ["exit with the prediction (accept)", "continue to the next exit", "reject (stop, abstain)",
                        "a sample, right at this exit", "a sample, wrong at this exit"], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the plot: no band or sample hidden
    ax.set_xticks(range(outputs.num_exits), list(outputs.exit_names))
    direction = "higher" if m.higher_is_confident else "lower"
    ax.set(title=f"{title} ({len(idx)} samples at the exits they reach)", xlabel="exit (attach point)",
           ylabel=f"{policy.measure} ({direction} = more confident)")
    fig.tight_layout()
    return fig


@_styled
def plot_reject_tradeoff(results: Mapping[str, Sequence["RejectEval"]], *, budget: float | None = None,
                         title: str = "Cost, accuracy and coverage") -> Figure:
    """Accuracy of the accepted samples (left) and coverage (right) against average FLOPs.

    Args:
        results: ``{label: [RejectEval, ...]}``: a line per policy family (e.g. one point per
            budget), or a single point.
        budget: a FLOPs budget (FLOPs per sample), drawn as a vertical line.
    """
    if not results or not all(results.values()):
        raise ValueError("results is empty: pass {label: [RejectEval, ...]}")
    fig, (ax_acc, ax_cov) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, evals in results.items():
        x = [100 * e.relative_flops for e in evals]
        style = "o-" if len(evals) > 1 else "*"
        size = 6 if len(evals) > 1 else 14
        line, = ax_acc.plot(x, [100 * e.accuracy for e in evals], style, markersize=size, label=label)
        ax_cov.plot(x, [100 * e.coverage for e in evals], style, markersize=size, color=line.get_color(), label=label)
    for ax in (ax_acc, ax_cov):
        if budget is not None:
            full = next(iter(results.values()))[0].full_flops
            ax.axvline(100 * budget / full, color="grey", linestyle=":", label="budget")
        ax.grid(alpha=0.3)
        ax.set_xlabel("average FLOPs per sample (% of the network without exits)")
    ax_acc.set(title=f"{title}: accuracy of the accepted samples", ylabel="accuracy of accepted samples (%)")
    ax_cov.set(title=f"{title}: coverage", ylabel="coverage: samples accepted (%)")
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
