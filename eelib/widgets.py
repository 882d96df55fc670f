"""Lecture widgets (ipywidgets): thin wrappers around plain eelib functions.

:func:`threshold_widget` shows one slider per early exit (or one shared slider); moving it
re-evaluates the policy with :func:`eelib.policies.evaluate_policy` on exits computed once, and
redraws the accuracy, the average cost and the histogram of exits. The text it shows comes from
:func:`policy_summary`, which the tests call directly.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt

from .exits import ExitOutputs
from .policies import ExitPolicy, PolicyEval, evaluate_oracle, evaluate_policy, get_measure


def policy_summary(outputs: ExitOutputs, exit_flops: Sequence[float], full_flops: float,
                   policy: ExitPolicy) -> tuple[PolicyEval, str]:
    """Evaluate ``policy`` on ``outputs``; return the result and a one-paragraph summary."""
    e = evaluate_policy(policy, outputs, exit_flops, full_flops)
    oracle = evaluate_oracle(outputs, exit_flops, full_flops)
    final = outputs.accuracy_per_exit()[-1]
    text = (f"accuracy {100 * e.accuracy:.2f}% (final exit alone: {100 * final:.2f}%, "
            f"{100 * (e.accuracy - final):+.2f} pp) | average cost {100 * e.avg_flops / e.full_flops:.1f}% of the "
            f"full network ({100 * e.flops_saved:.1f}% saved, ideal speedup {e.ideal_speedup:.2f}x) | "
            f"oracle: {100 * oracle.flops_saved:.1f}% saved at {100 * oracle.accuracy:.2f}%")
    return e, text


def threshold_widget(outputs: ExitOutputs, exit_flops: Sequence[float], full_flops: float, *,
                     measure: str = "max_prob", shared: bool = True, initial: float | None = None):
    """Sliders for the thresholds -> live accuracy, average cost and exit histogram.

    Args:
        outputs: every exit's logits on a data set (e.g. the validation split).
        exit_flops, full_flops: costs per exit and of the network without exits (:func:`eelib.cost.exit_costs`).
        measure: the confidence measure.
        shared: one slider for every exit (True) or one per early exit.
        initial: the sliders' starting value (default: the middle of the measure's range).

    Returns:
        An ``ipywidgets.VBox`` (display it as the last line of a cell).
    """
    import ipywidgets as widgets
    from IPython.display import display

    from .plots import plot_exit_histogram

    m = get_measure(measure)
    lo, hi = m.range(outputs.logits.shape[-1], outputs.num_exits)
    step = 1.0 if measure == "patience" else (hi - lo) / 200
    start = initial if initial is not None else (lo + hi) / 2
    n_early = outputs.num_exits - 1
    labels = ["all exits"] if shared else list(outputs.exit_names[:-1])
    sliders = [widgets.FloatSlider(value=start, min=lo, max=hi, step=step, description=label,
                                   continuous_update=False, readout_format=".3f",
                                   style={"description_width": "initial"}) for label in labels]
    text = widgets.HTML()
    plot = widgets.Output()

    def update(_=None) -> None:
        values = [s.value for s in sliders]
        policy = ExitPolicy(measure, tuple(values * n_early if shared else values))
        e, summary = policy_summary(outputs, exit_flops, full_flops, policy)
        direction = ">=" if m.higher_is_confident else "<="
        text.value = f"<b>leave when {measure} {direction} threshold</b><br>{summary}"
        with plot:
            plot.clear_output(wait=True)
            fig = plot_exit_histogram(e.exit_fractions, outputs.exit_names)
            display(fig)
            plt.close(fig)

    for s in sliders:
        s.observe(update, names="value")
    update()
    return widgets.VBox([*sliders, text, plot])
