"""Lecture widgets (ipywidgets): thin wrappers around plain eelib functions.

:func:`threshold_widget` shows one slider per early exit (or one shared slider); moving it
re-evaluates the policy with :func:`eelib.policies.evaluate_policy` on exits computed once, and
redraws the accuracy, the average cost and the histogram of exits. The text it shows comes from
:func:`policy_summary`, which the tests call directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt

from eelib.outputs import ExitOutputs
from eelib.policies import ExitPolicy, PolicyEval, evaluate_oracle, evaluate_policy, get_measure

if TYPE_CHECKING:
    from eelib.lm.exits import EarlyExitLM
    from eelib.lm.generate import Generation


def policy_summary(policy: ExitPolicy, outputs: ExitOutputs, costs, full_flops: float | None = None
                   ) -> tuple[PolicyEval, str]:
    """Evaluate ``policy`` on ``outputs`` at ``costs`` (a cost description, `eelib.policies.exit_and_full_flops`);
    return the result and a one-paragraph summary."""
    if not isinstance(policy, ExitPolicy):
        raise TypeError(f"policy_summary: the first argument must be the ExitPolicy (the policy comes first), "
                        f"got {type(policy).__name__}")
    e = evaluate_policy(policy, outputs, costs, full_flops)
    oracle = evaluate_oracle(outputs, costs, full_flops)
    final = outputs.accuracy_per_exit()[-1]
    text = (f"accuracy {100 * e.accuracy:.2f}% (final exit alone: {100 * final:.2f}%, "
            f"{100 * (e.accuracy - final):+.2f} pp) | average cost {100 * e.avg_flops / e.full_flops:.1f}% of the "
            f"full network ({100 * e.flops_saved:.1f}% saved, ideal speedup {e.ideal_speedup:.2f}x) | "
            f"oracle: {100 * oracle.flops_saved:.1f}% saved at {100 * oracle.accuracy:.2f}%")
    return e, text


def threshold_widget(outputs: ExitOutputs, costs, full_flops: float | None = None, *,
                     measure: str = "max_prob", shared: bool = True, initial: float | None = None):
    """Sliders for the thresholds -> live accuracy, average cost and exit histogram.

    Args:
        outputs: every exit's logits on a data set (e.g. the validation split).
        costs: what a sample costs at each exit and without exits, e.g. :func:`eelib.exit_costs`'s result
            (any cost description, `eelib.policies.exit_and_full_flops`).
        measure: the confidence measure.
        shared: one slider for every exit (True) or one per early exit.
        initial: the sliders' starting value (default: the middle of the measure's range).

    Returns:
        An ``ipywidgets.VBox`` (display it as the last line of a cell).
    """
    import ipywidgets as widgets
    from IPython.display import display

    from eelib.course.plots import plot_exit_histogram

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
        e, summary = policy_summary(policy, outputs, costs, full_flops)
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


def generation_summary(ee: "EarlyExitLM", prompt: str, calibration: ExitOutputs, *, target_agreement: float = 0.95,
                       measure: str = "max_prob", max_new_tokens: int = 40,
                       context: int = 128) -> tuple["Generation", "Generation", str]:
    """Calibrate ``ee`` for ``target_agreement``, generate from ``prompt`` with and without early exit, and
    describe the result: the coloured text (HTML), the layers saved and the measured speedup.

    Args:
        ee: an :class:`~eelib.lm.exits.EarlyExitLM`.
        calibration: ``ExitOutputs`` of ``ee`` on held-out text (``token_exit_outputs(...).outputs``).
        target_agreement: the fraction of calibration tokens whose early prediction must equal the
            full model's top-1 (0 < target <= 1).
        context: the context length at which exits are costed for the calibration.

    Returns:
        ``(early, full, html)``: the early-exit :class:`~eelib.lm.generate.Generation`, the one
        without exits, and an HTML report.
    """
    import html as _html

    from eelib._util.timing import watch_load
    from eelib.lm.generate import early_exit_generate, token_exit_costs
    from eelib.policies import calibrate
    from eelib.lm.tokens import token_html, token_strings

    if not 0 < target_agreement <= 1:
        raise ValueError(f"target_agreement must be in (0, 1], got {target_agreement!r}")
    costs = token_exit_costs(ee, context)
    policy = calibrate(calibration, costs, measure=measure,
                       max_accuracy_drop=1 - target_agreement).policy
    runs = []
    with watch_load() as watch:  # the machine's load before and after: a warning when the speedup is not to be trusted
        for _ in range(2):  # the faster of two runs each, interleaved
            runs.append((early_exit_generate(ee, prompt, policy, max_new_tokens=max_new_tokens),
                         early_exit_generate(ee, prompt, None, max_new_tokens=max_new_tokens)))
    early = min((r[0] for r in runs), key=lambda g: g.seconds)
    full = min((r[1] for r in runs), key=lambda g: g.seconds)
    same = sum(a == b for a, b in zip(early.tokens, full.tokens))
    n = ee.lm.n_layers
    body = token_html(token_strings(ee.lm, list(early.prompt_ids) + early.tokens),
                      [None] * len(early.prompt_ids) + [s.layer for s in early.steps], n,
                      confidences=[float("nan")] * len(early.prompt_ids) + [s.confidence for s in early.steps],
                      measure=measure, legend=ee.layers)
    thresholds = ", ".join(f"{t:.3f}" for t in policy.thresholds)
    report = (f"<p><b>{measure} thresholds</b> ({thresholds}) calibrated for {target_agreement:.0%} agreement | "
              f"predictions out after {early.avg_exit_layer:.2f} of {n} layers on average; layers computed per "
              f"token {early.avg_layers_computed:.2f} (the skipped ones run later, batched: kv={early.kv!r}) | "
              f"measured speedup {full.seconds / early.seconds:.2f}x ({early.tokens_per_second:.0f} vs "
              f"{full.tokens_per_second:.0f} tokens/s) | {same} of {len(full.tokens)} tokens equal the full model's "
              f"at the same position</p>")
    if watch.warning:
        report += f"<p style='color:#b00'>{_html.escape(watch.warning)}</p>"
    plain = _html.escape(full.text).replace("\n", "<br>")
    return early, full, f"{report}{body}<p><b>without early exit:</b><br>{plain}</p>"


def generation_widget(ee: "EarlyExitLM", calibration: ExitOutputs, *, prompt: str = "ROMEO:\n",
                      measure: str = "max_prob", max_new_tokens: int = 40):
    """A prompt box and an agreement slider -> generated text coloured by exit layer, layers saved, speedup.

    A thin wrapper around :func:`generation_summary` (see it for the arguments).
    """
    import ipywidgets as widgets

    box = widgets.Textarea(value=prompt, description="prompt", layout=widgets.Layout(width="95%", height="70px"))
    slider = widgets.FloatSlider(value=0.95, min=0.5, max=1.0, step=0.01, description="target agreement",
                                 continuous_update=False, style={"description_width": "initial"})
    button = widgets.Button(description="generate")
    out = widgets.HTML()

    def update(_=None) -> None:
        try:
            out.value = generation_summary(ee, box.value, calibration, target_agreement=slider.value,
                                           measure=measure, max_new_tokens=max_new_tokens)[2]
        except ValueError as err:  # an empty or too long prompt: say so in the widget
            out.value = f"<p style='color:#b00'>{err}</p>"

    button.on_click(update)
    slider.observe(update, names="value")
    update()
    return widgets.VBox([box, widgets.HBox([slider, button]), out])
