import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import eelib
from eelib import plots
from eelib.train import EpochRecord, History


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
        features = model.forward_intermediates(data.test[0][0][None])
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
