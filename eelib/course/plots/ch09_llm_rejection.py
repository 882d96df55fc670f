"""Chapter 9's figure (rejection for language models): a guarantee checked over random splits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from eelib.course.plots._style import BLUE, ORANGE, VERMILLION, _styled

if TYPE_CHECKING:
    from eelib.lm.rejection_splits import SplitStudy


@_styled
def plot_split_violations(study: "SplitStudy", *, risk: str = "disagreement with the full model",
                          title: str = "The guarantee over random splits") -> Figure:
    """Histogram of each method's risk on the test tokens over the splits, the target as a vertical line,
    and each method's violation rate (share of the splits above the target) in the legend.

    Args:
        study: from :func:`eelib.lm.rejection_splits.split_study` (or ``abstain_split_study``).
        risk: what the risk is, for the x axis.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5))
    values = 100 * study.test_risk.numpy()
    bins = np.linspace(min(values.min(), 100 * study.target) * 0.98, max(values.max(), 100 * study.target) * 1.02, 40)
    for i, (method, colour) in enumerate(zip(study.methods, (ORANGE, BLUE))):
        ax.hist(values[i], bins=bins, color=colour, alpha=0.6,
                label=f"{method}: above the target in {100 * study.violation_rate(method):.0f}% of the splits")
    ax.axvline(100 * study.target, color=VERMILLION, linestyle="--",
               label=f"target {100 * study.target:.3g}% (allowed: {100 * study.delta:.0f}% of the splits above)")
    ax.set(title=title, xlabel=f"{risk} on the test tokens (%)",
           ylabel=f"splits (count, of {study.splits})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.18), fontsize=8, ncol=1, frameon=False)
    fig.tight_layout()
    return fig
