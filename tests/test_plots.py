import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import eelib
from eelib.course import plots
from eelib.vision.train import EpochRecord, History


def _labelled(fig):
    for ax in fig.axes:
        if ax.axison:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax


def test_training_curves_and_gradient_norms_are_labelled():
    history = History(tuple(EpochRecord(e, 1.0 / e, 0.5, 1.0, 0.5 + e / 10, 1.0, tuple([2.0 / e] * 12))
                            for e in (1, 2, 3)))
    fig = plots.plot_training_curves({"a": history, "b": history})
    _labelled(fig)
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["a", "b"]
    fig = plots.plot_gradient_norms({"net": {"l1": 1.0, "l2": 0.1}}, relative_depth=True)
    _labelled(fig)
    assert list(fig.axes[0].lines[0].get_xdata()) == [0.5, 1.0]


def test_pictures():
    data = eelib.load_data()
    fig = plots.plot_image_grid(data, "val", n=10)
    assert sum(len(ax.images) > 0 for ax in fig.axes) == 10 and fig._suptitle.get_text()
    model = eelib.resnet(8, width=4).eval()
    with torch.no_grad():
        features = model.features_at(data.test[0][0][None])
    fig = plots.plot_feature_maps(features, channels=3)
    assert len(fig.axes) == 4 * 3 and "first 3 channels" in fig._suptitle.get_text()
    assert plots.draw_residual_block().axes[0].get_title().startswith("A residual block")


def test_bad_input():
    with pytest.raises(ValueError, match="histories"):
        plots.plot_training_curves({})
    with pytest.raises(ValueError, match="norms"):
        plots.plot_gradient_norms({})
    with pytest.raises(ValueError, match="split"):
        plots.plot_image_grid(eelib.load_data(), "training")
    with pytest.raises(ValueError, match="features"):
        plots.plot_feature_maps({})


def test_early_exit_figures_are_labelled():
    from eelib.vision.cost import exit_costs
    from eelib.outputs import ExitOutputs
    from eelib.vision.exits import EarlyExitNet
    from eelib.policies import ExitPolicy, apply_policy, evaluate_oracle, static_exit, tradeoff_curve

    torch.manual_seed(0)
    model = EarlyExitNet(eelib.resnet(8, width=4), ("stem", "layer1"))
    costs = exit_costs(model, (1, 12, 12))
    labels = torch.randint(0, 10, (30,))
    outputs = ExitOutputs(torch.randn(3, 30, 10) + 2 * torch.nn.functional.one_hot(labels, 10), labels,
                          model.exit_names)
    curve = tradeoff_curve(outputs, costs)
    static = [static_exit(outputs, k, costs) for k in range(3)]
    result = apply_policy(ExitPolicy("max_prob", (0.5, 0.5)), outputs.logits)
    data = eelib.load_data()
    figs = [plots.plot_cost_per_head(costs),
            plots.plot_accuracy_per_exit({"joint": [0.5, 0.6, 0.7]}, model.exit_names),
            plots.plot_accuracy_per_exit({"joint": [0.5, 0.6, 0.7]}, model.exit_names,
                                         relative_flops=costs.relative_flops),
            plots.plot_tradeoff(curve, static=static, exit_names=model.exit_names,
                                oracle=evaluate_oracle(outputs, costs), chosen=curve[3][1]),
            plots.plot_exit_histogram([0.5, 0.3, 0.2], model.exit_names),
            plots.plot_overthinking([0.01, 0.02], model.exit_names[:-1]),
            plots.plot_latency(costs, [0.001, 0.002, 0.003], batch_size=8)]
    for fig in figs[:-1]:
        _labelled(fig)
    latency, twin = figs[-1].axes  # bars on the left axis, % of the full network on the right
    assert latency.get_title() and latency.get_xlabel() and latency.get_ylabel() and twin.get_ylabel()
    fig = plots.plot_easy_and_hard(data, [0, 1], [2], outputs, result.exits)
    assert "Easiest and hardest" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="exit_fractions has 2 values for 3 exits"):
        plots.plot_exit_histogram([0.5, 0.5], model.exit_names)
    with pytest.raises(ValueError, match="accuracies"):
        plots.plot_accuracy_per_exit({"a": [0.5]}, model.exit_names)
    with pytest.raises(ValueError, match="curve is empty"):
        plots.plot_tradeoff([])
    two = plots.plot_tradeoff({"max_prob": curve, "entropy": tradeoff_curve(outputs, costs,
                                                                              measure="entropy")}, oracle=None)
    assert [t.get_text() for t in two.axes[0].get_legend().get_texts()] == ["max_prob", "entropy"]
