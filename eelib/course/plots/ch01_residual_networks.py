"""Chapter 1's figures (residual networks): training curves, gradient norms per layer, the
residual block, images of a data set and feature maps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import MaxNLocator

from eelib.course.plots._style import VERMILLION, _styled
from eelib.vision.train import History

if TYPE_CHECKING:
    import torch

    from eelib.vision.data import DataSplits


@_styled
def plot_training_curves(histories: Mapping[str, History], *, title: str = "Training") -> Figure:
    """Training loss per step (left) and validation accuracy per epoch (right), one line per run."""
    if not histories:
        raise ValueError("histories is empty: pass {label: History}")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    first = next(iter(histories.values()))
    for boundary in np.cumsum([len(r.step_losses) for r in first.epochs])[:-1]:
        ax_loss.axvline(boundary + 0.5, color="grey", linestyle=":", linewidth=1)  # end of an epoch
    for label, history in histories.items():
        losses = np.asarray(history.step_losses)
        steps = np.arange(1, len(losses) + 1)
        line, = ax_loss.plot(steps, losses, alpha=0.3)
        if len(losses) >= 10:  # a moving average makes the trend readable
            k = max(len(losses) // 20, 2)
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax_loss.plot(steps[k - 1:], smooth, color=line.get_color(), label=label)
        else:
            line.set_label(label)
        acc = history.column("val_accuracy")
        if any(a is not None for a in acc):
            ax_acc.plot(history.column("epoch"), [100 * a for a in acc], marker="o", label=label)
    ax_loss.set(title=f"{title}: training loss", xlabel="training step (batch); dotted: end of an epoch",
                ylabel="cross-entropy (nats); faint: each batch", yscale="log")
    ax_acc.set(title=f"{title}: validation accuracy", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    ax_acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


@_styled
def plot_gradient_norms(norms: Mapping[str, Mapping[str, float]], *, relative_depth: bool = False,
                        title: str = "Gradient norm per layer") -> Figure:
    """Gradient norm of each layer's weights (log scale), layers in forward order, one line per model.

    Args:
        norms: ``{label: {layer: norm}}``, e.g. from :func:`eelib.vision.train.gradient_norms`.
        relative_depth: put layer ``i`` of ``n`` at ``i / n`` (0 = input, 1 = output), so that
            networks of different depths share the axis; else at ``i``.
    """
    if not norms:
        raise ValueError("norms is empty: pass {label: {layer: norm}}")
    fig, ax = plt.subplots(figsize=(11, 4))
    for label, per_layer in norms.items():
        values = list(per_layer.values())
        x = np.arange(1, len(values) + 1)
        ax.plot(x / len(values) if relative_depth else x, values, marker=".", label=label)
    xlabel = ("relative depth: layer / number of layers (0 = input, 1 = classifier)" if relative_depth
              else "layer (1 = closest to the input; the last = the classifier)")
    ax.set(title=title, xlabel=xlabel, ylabel="‖∂loss/∂W‖₂ (log scale)", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


@_styled
def draw_residual_block(ax: Axes | None = None) -> Figure:
    """Diagram of a residual block: two weight layers, and the skip connection that adds x back."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 6))
    else:
        fig = ax.figure
    ax.set(xlim=(-0.5, 13), ylim=(0, 12), title="A residual block: out = relu(F(x) + x)")
    ax.axis("off")
    boxes = [(10.2, "x"), (8.2, "3x3 conv + batch norm"), (6.6, "relu"),
             (5.0, "3x3 conv + batch norm"), (2.8, "+"), (1.2, "relu → out")]
    centres = []
    for y, text in boxes:
        width = 1.2 if text == "+" else 5.0
        ax.add_patch(FancyBboxPatch((4 - width / 2, y - 0.45), width, 0.9, boxstyle="round,pad=0.1",
                                    facecolor="#dbe9f6" if "conv" in text else "#f4f4f4", edgecolor="black"))
        ax.text(4, y, text, ha="center", va="center", fontsize=11)
        centres.append(y)
    for top, bottom in zip(centres[:-1], centres[1:]):
        ax.add_patch(FancyArrowPatch((4, top - 0.55), (4, bottom + 0.55), arrowstyle="-|>", mutation_scale=15))
    ax.add_patch(FancyArrowPatch((6.6, 10.2), (4.8, 2.8), connectionstyle="arc3,rad=-0.5", arrowstyle="-|>",
                                 mutation_scale=15, color=VERMILLION, linewidth=2))
    ax.text(8.4, 6.6, "skip connection:\nx itself, or a\n1x1 conv + batch norm\nwhen the shape changes",
            color=VERMILLION, ha="left", va="center", fontsize=10)
    ax.plot([1.1, 0.9, 0.9, 1.1], [8.75, 8.75, 4.45, 4.45], color="black", linewidth=1)  # bracket: F(x)
    ax.text(0.4, 6.6, "F(x)", fontsize=13, ha="center", va="center", style="italic")
    return fig


@_styled
def plot_image_grid(data: "DataSplits", split: str = "test", *, n: int = 16, indices: Sequence[int] | None = None,
                    title: str | None = None) -> Figure:
    """A grid of images from a :class:`eelib.vision.data.DataSplits` split, each titled with its label."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    dataset = getattr(data, split)
    indices = list(range(min(n, len(dataset)))) if indices is None else list(indices)
    cols = min(8, len(indices))
    rows = (len(indices) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        x, y = dataset[i]
        ax.imshow(data.to_image(x), cmap="gray")
        ax.set_title(data.class_names[int(y)], fontsize=10)
    fig.suptitle(title or f"{data.name}: {len(indices)} images from the {split} split")
    fig.tight_layout()
    return fig


@_styled
def plot_feature_maps(features: Mapping[str, "torch.Tensor"], *, channels: int = 4,
                      title: str = "Feature maps of one image, stage by stage") -> Figure:
    """The first ``channels`` feature maps of one image at each attach point (one row per point).

    Each panel has its own colour scale (bright = strong activation), so panels show where a
    channel responds, not how strongly compared with another panel.

    Args:
        features: ``{name: tensor (1, C, H, W) or (C, H, W)}``, e.g. from ``ResNet.features_at``.
    """
    if not features:
        raise ValueError("features is empty: pass {name: feature map}")
    fig, axes = plt.subplots(len(features), channels, figsize=(1.8 * channels, 1.9 * len(features)), squeeze=False)
    for row, (name, fmap) in zip(axes, features.items()):
        fmap = fmap.detach().cpu()
        fmap = fmap[0] if fmap.ndim == 4 else fmap
        for c, ax in enumerate(row):
            ax.axis("off")
            if c < fmap.shape[0]:
                ax.imshow(fmap[c].numpy(), cmap="viridis")
        row[0].set_title(f"{name}: {fmap.shape[0]} ch, {fmap.shape[1]}x{fmap.shape[2]} px", loc="left", fontsize=10)
    fig.suptitle(f"{title}\n(first {channels} channels of each; each panel on its own colour scale)")
    fig.tight_layout()
    return fig
