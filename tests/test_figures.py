"""Every figure of the course, rendered from the shipped models: titled, axes labelled with units,
no legend over the data, no layout warning, the colour-blind-safe palette."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import eelib  # noqa: E402
from eelib.course import plots  # noqa: E402

# A label names its unit (in parentheses, or a %), or is a category axis (what the ticks are).
UNIT = re.compile(r"\(.+\)|%|\bper\b|\b(epoch|exit|layer|kind|piece|policy|input token|rows in the call|loop)\b")


@pytest.fixture(scope="module")
def course_figures():
    """Every public figure function, called on real inputs: ``{name: figure}``."""
    from eelib.policies import easy_and_hard, overthinking, static_exit, tradeoff_curve
    from eelib.rejection import (CostModel, calibrate_reject, evaluate_reject_policy, oracle_risk_coverage,
                                 risk_coverage_curve)
    from eelib.lm.rejection_splits import SplitStudy
    from eelib.lm.tokens import KindDifficulty

    torch.manual_seed(0)
    data = eelib.load_data()
    ee = eelib.load_trained("ee_resnet20", device="cpu", progress=False).model.eval()
    images = torch.stack([data.test[i][0] for i in range(300)])
    labels = torch.tensor([data.test[i][1] for i in range(300)])
    with torch.no_grad():
        outputs = eelib.ExitOutputs(torch.stack(ee(images)), labels, ee.exit_names)
    costs = eelib.exit_costs(ee)
    policy = eelib.calibrate(outputs, costs, max_accuracy_drop=0.005).policy
    chosen = eelib.evaluate_policy(policy, outputs, costs)
    oracle = eelib.evaluate_oracle(outputs, costs)
    result = eelib.apply_policy(policy, outputs.logits)
    easy, hard = easy_and_hard(outputs, result, n=4)
    scores = torch.softmax(outputs.logits, -1).amax(-1)
    model = CostModel(tuple(float(f) for f in costs.flops), float(costs.full_flops))
    reject = calibrate_reject(outputs, model, flops_budget=0.4 * costs.full_flops).policy
    reject_eval = evaluate_reject_policy(reject, outputs, model)
    lm = eelib.load_lm("course", device="cpu")
    token_costs = eelib.token_exit_costs(eelib.course_exits(lm, (2, 4)), context=128, kv="copy")
    grid = json.loads((Path(eelib.__file__).parent / "models" / "shakespeare-gpt2" / "exit_heads" /
                       "speculative.json").read_text(encoding="utf-8"))["grid"]
    resnet = eelib.load_trained("resnet56", device="cpu", progress=False).model.eval()
    with torch.no_grad():
        features = resnet.features_at(images[:1])
    history = eelib.load_trained("plain20", device="cpu", progress=False).history
    x, y = next(iter(data.loaders(64, seed=0).train))
    calls = {
        "plot_training_curves": lambda: plots.plot_training_curves({"plain, 20 layers": history}),
        "plot_gradient_norms": lambda: plots.plot_gradient_norms({"resnet56": eelib.gradient_norms(resnet, x, y)}),
        "draw_residual_block": lambda: plots.draw_residual_block(),
        "plot_image_grid": lambda: plots.plot_image_grid(data, "test", n=8),
        "plot_feature_maps": lambda: plots.plot_feature_maps(features),
        "plot_cost_per_head": lambda: plots.plot_cost_per_head(costs),
        "plot_exit_architecture": lambda: plots.plot_exit_architecture(ee, costs),
        "plot_energy": lambda: plots.plot_energy(costs, {"max_prob": chosen, "oracle": oracle}),
        "plot_accuracy_per_exit": lambda: plots.plot_accuracy_per_exit(
            {"joint training": outputs.accuracy_per_exit()}, ee.exit_names, relative_flops=costs.relative_flops),
        "plot_tradeoff": lambda: plots.plot_tradeoff(
            {"max_prob": tradeoff_curve(outputs, costs)}, exit_names=ee.exit_names,
            static=[static_exit(outputs, k, costs) for k in range(ee.num_exits)],
            oracle=oracle, chosen=chosen),
        "plot_exit_histogram": lambda: plots.plot_exit_histogram(chosen.exit_fractions, ee.exit_names),
        "plot_easy_and_hard": lambda: plots.plot_easy_and_hard(data, easy, hard, outputs, result.exits),
        "plot_overthinking": lambda: plots.plot_overthinking(overthinking(outputs), ee.exit_names[:-1]),
        "plot_latency": lambda: plots.plot_latency(
            costs, [[0.001 * (k + 1) * (1 + 0.1 * r) for r in range(5)] for k in range(ee.num_exits)], batch_size=1),
        "plot_confidence": lambda: plots.plot_confidence(outputs, 0, threshold=0.9),
        "plot_risk_coverage": lambda: plots.plot_risk_coverage(
            {n: risk_coverage_curve(scores[k], outputs.correct[k]) for k, n in enumerate(ee.exit_names)},
            oracle=oracle_risk_coverage(outputs.correct[-1]), alpha=0.01),
        "plot_reject_regions": lambda: plots.plot_reject_regions(reject, outputs, n=200),
        "plot_reject_tradeoff": lambda: plots.plot_reject_tradeoff({"combined": [reject_eval]},
                                                                   budget=0.4 * costs.full_flops),
        "draw_transformer_stack": lambda: plots.draw_transformer_stack(8, (2, 4)),
        "plot_logit_lens": lambda: plots.plot_logit_lens(["a", "b", "c"], [["x", "b", "c"], ["a", "b", "c"]],
                                                         torch.tensor([[0, 1, 1], [1, 1, 1]]), ["layer 1", "final"]),
        "plot_agreement_per_layer": lambda: plots.plot_agreement_per_layer(
            {"logit lens": [0.35, 0.4, 1.0], "trained heads": [0.48, 0.6, 1.0]}, [1, 2, 3]),
        "plot_token_costs": lambda: plots.plot_token_costs(token_costs),
        "plot_difficulty_by_kind": lambda: plots.plot_difficulty_by_kind(
            [KindDifficulty("newline", 200, 3.2, 0.6), KindDifficulty("word start", 700, 7.3, 0.05)], 8),
        "plot_token_energy": lambda: plots.plot_token_energy(eelib.TokenEnergy(
            ("no exits", "early exit"), 40, (6.4e6, 8.5e6), (1.5e-5, 1.9e-5), (4.1e-5, None), 2.3e-12, "measured")),
        "plot_block_time": lambda: plots.plot_block_time([1, 2, 4, 8], [[1e-4, 1.1e-4]] * 4),
        "plot_speculative_grid": lambda: plots.plot_speculative_grid(grid, max_draft=4, draft_vocab=1024),
        "plot_measured_vs_predicted": lambda: plots.plot_measured_vs_predicted(
            [dict(loop="plain", tokens_per_second=500.0, predicted_tokens_per_second=480.0),
             dict(loop="self-speculative", tokens_per_second=520.0, predicted_tokens_per_second=560.0),
             dict(loop="HF generate", tokens_per_second=170.0, predicted_tokens_per_second=None)]),
        "plot_projection": lambda: plots.plot_projection(
            {"acceptance": [0.0, 0.5, 0.9], "draft_fraction": 0.25,
             "models": {"gpt2-124m": {"n_layers": 12, "cpu": [0.8, 0.95, 1.1], "gpu": [0.8, 1.2, 1.6]},
                        "llama-2-7b": {"n_layers": 32, "cpu": [0.9, 1.05, 1.3], "gpu": [0.9, 1.3, 1.9]}},
             "measured": [dict(model="course-ee", loop="self-speculative", acceptance=0.64, speedup=1.01)],
             "published": [dict(method="LayerSkip", models="Llama-2 7B", low=1.8, high=2.2)]}),
        "plot_split_violations": lambda: plots.plot_split_violations(SplitStudy(
            ("naive", "guaranteed"), 0.05, 0.1, 2000, 36000, torch.full((2, 100), 0.3),
            torch.stack([0.049 + 0.002 * torch.randn(100), 0.042 + 0.002 * torch.randn(100)]).double(),
            torch.zeros(2, 100, dtype=torch.float64), torch.full((2, 100), 0.25), torch.ones(2, 100))),
    }
    figures = {}
    for name, call in calls.items():
        with warnings.catch_warnings(), plt.rc_context({"figure.max_open_warning": 0}):
            warnings.simplefilter("error")  # a layout that does not fit (tight_layout) warns: a defect
            figures[name] = call()
        figures[name].canvas.draw()
    yield figures
    plt.close("all")


def _public_figure_functions() -> set[str]:
    return {n for n, f in inspect.getmembers(plots, inspect.isfunction)
            if f.__module__.startswith(plots.__name__ + ".") and n.startswith(("plot_", "draw_"))}


def test_every_figure_function_is_rendered(course_figures):
    assert set(course_figures) == _public_figure_functions()


def test_every_figure_is_titled_and_its_axes_labelled_with_units(course_figures):
    bad = []
    for name, fig in course_figures.items():
        axes = [ax for ax in fig.axes if ax.axison]
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
        titled = {ax.bbox.bounds for ax in fig.axes if ax.get_title()}  # a twin axis shares its partner's title
        assert suptitle or all(ax.bbox.bounds in titled for ax in fig.axes), f"{name}: an axes has no title"
        for ax in axes:
            if ax.get_images() and name in ("plot_image_grid", "plot_feature_maps", "plot_easy_and_hard"):
                continue  # pictures: no axes to label
            labels = [ax.get_xlabel(), ax.get_ylabel()]
            if ax.get_xlabel() == "" and len(ax.get_shared_x_axes().get_siblings(ax)) > 1:
                labels = labels[1:]  # a twin axis (twinx): its partner carries the x label
            for label in labels:
                if not label or not UNIT.search(label):
                    bad.append(f"{name}: axis label {label!r} ({ax.get_title()!r})")
    assert not bad, "labels without a unit: " + "; ".join(bad)


def _data_points(ax) -> np.ndarray:
    """The display coordinates of the data drawn on ``ax``: line vertices, scatter points, bar tops."""
    points = []
    for line in ax.get_lines():
        if isinstance(line, Line2D) and len(line.get_xydata()) and line.get_visible():
            xy = line.get_xydata()
            if len(xy) == 2 and (xy[0, 0] == xy[1, 0] or xy[0, 1] == xy[1, 1]) and line.get_linestyle() != "None":
                continue  # a reference line (axhline / axvline): a legend may cross it
            points.append(line.get_transform().transform(xy))
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and len(coll.get_offsets()):
            points.append(coll.get_offset_transform().transform(coll.get_offsets()))
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_height() != 0 and patch.get_visible():
            box = patch.get_window_extent()
            points.append(np.array([[box.x0, box.y1], [box.x1, box.y1], [(box.x0 + box.x1) / 2, box.y1]]))
    return np.concatenate(points) if points else np.zeros((0, 2))


def test_no_legend_covers_the_data(course_figures):
    bad = []
    for name, fig in course_figures.items():
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            box = legend.get_window_extent(renderer)
            inside = []
            for other in fig.axes:  # a twin axis draws over the same area
                if other.bbox.overlaps(ax.bbox):
                    pts = _data_points(other)
                    inside += [p for p in pts if box.x0 < p[0] < box.x1 and box.y0 < p[1] < box.y1]
            if inside:
                bad.append(f"{name}: the legend ({ax.get_title()!r}) covers {len(inside)} data points")
    assert not bad, "; ".join(bad)


def test_figures_use_the_colour_blind_safe_palette(course_figures):
    palette = {matplotlib.colors.to_hex(c) for c in plots.PALETTE}
    red, green = "#d62728", "#2ca02c"  # matplotlib's default red and green, told apart by hue alone
    for name, fig in course_figures.items():
        colours = set()
        for ax in fig.axes:
            colours |= {matplotlib.colors.to_hex(line.get_color()) for line in ax.get_lines()}
            colours |= {matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches if isinstance(p, Rectangle)}
        assert not ({red, green} <= colours), f"{name} uses red against green"
    tradeoff = course_figures["plot_tradeoff"].axes[0]
    assert matplotlib.colors.to_hex(tradeoff.get_lines()[0].get_color()) in palette
    default = matplotlib.rcParamsDefault["axes.prop_cycle"].by_key()["color"]
    assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] == default  # the caller's settings untouched


def test_the_legend_check_can_fail():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(range(5), [10] * 5, label="tall bars")
    ax.plot(range(5), [5] * 5, "o-", label="a line through them")
    ax.legend(loc="center")
    fig.canvas.draw()
    box = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    inside = [p for p in _data_points(ax) if box.x0 < p[0] < box.x1 and box.y0 < p[1] < box.y1]
    assert inside  # a legend in the middle of the data is seen
    plt.close(fig)
