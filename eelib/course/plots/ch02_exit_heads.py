"""Chapter 2's figures (exit heads): the early-exit network's architecture, the accuracy of each
exit, where the samples leave, and the easiest and hardest images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from eelib.course.plots._style import PALETTE, PURPLE, VERMILLION, WRONG, _styled

if TYPE_CHECKING:
    import torch

    from eelib.vision.cost import ExitCosts
    from eelib.vision.data import DataSplits
    from eelib.outputs import ExitOutputs


@_styled
def plot_exit_architecture(model, costs: "ExitCosts | None" = None, *,
                           title: str = "An early-exit ResNet: the backbone and its exit branches") -> Figure:
    """The talk's figure 3, drawn from the model itself: the backbone's blocks left to right (one
    colour per stage, output channels in each box), an exit branch below each attach point with
    its head, and, given ``costs`` (:func:`eelib.vision.cost.exit_costs`), the cost of leaving there as a
    share of the network without exits.

    Args:
        model: an :class:`eelib.vision.exits.EarlyExitNet` on eelib's ResNet or torchvision's.
        costs: the model's exit costs (optional: without them the branches carry no cost).
    """
    from eelib.vision.exits import EarlyExitNet, backbone_units

    if not isinstance(model, EarlyExitNet):
        raise ValueError(f"model must be an EarlyExitNet, got {type(model).__name__}")
    if costs is not None and tuple(costs.exit_names) != tuple(model.exit_names):
        raise ValueError(f"costs are for exits {costs.exit_names}, the model has {model.exit_names}")
    units, channels, _ = backbone_units(model.backbone)
    names = [name for name, _ in units]
    stage_colour = {stage: PALETTE[i % 6] for i, stage in enumerate(dict.fromkeys(n.split(".")[0] for n in names))}
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.95 * (n + 2)), 4.2))
    w, h, gap = 0.8, 0.9, 1.0
    attach = {model._ends[k] - 1: k for k in range(model.num_exits - 1)}  # unit index -> early exit
    for i, name in enumerate(names):
        colour = stage_colour[name.split(".")[0]]
        ax.add_patch(FancyBboxPatch((i * gap, 2), w, h, boxstyle="round,pad=0.03", fc=colour, ec="black", alpha=0.35))
        ax.text(i * gap + w / 2, 2 + h / 2, f"{name}\n{channels.get(name, '')} ch", ha="center", va="center", fontsize=8)
        if i + 1 < n:
            ax.add_patch(FancyArrowPatch((i * gap + w, 2 + h / 2), ((i + 1) * gap, 2 + h / 2),
                                         arrowstyle="-|>", mutation_scale=9))
    ends = {**attach, n - 1: model.num_exits - 1}
    for i, k in ends.items():
        final = k == model.num_exits - 1
        x0 = i * gap + w / 2 if not final else n * gap + 0.1
        if final:
            ax.add_patch(FancyArrowPatch(((n - 1) * gap + w, 2 + h / 2), (x0, 2 + h / 2), arrowstyle="-|>",
                                         mutation_scale=9))
            y_box, label = 2, "pool + fc\n(the backbone's)"
        else:
            ax.add_patch(FancyArrowPatch((x0, 2), (x0, 1.15), arrowstyle="-|>", mutation_scale=10, color=VERMILLION))
            y_box, label = 0.35, "exit head\npool + fc"
        ax.add_patch(FancyBboxPatch((x0 - 0.42 if not final else x0, y_box), 0.84, 0.75, boxstyle="round,pad=0.03",
                                    fc="white", ec=VERMILLION, lw=1.5))
        cx = x0 if not final else x0 + 0.42
        ax.text(cx, y_box + 0.375, label, ha="center", va="center", fontsize=7)
        cost = "" if costs is None else f"\n{100 * costs.relative_flops[k]:.0f}% of the FLOPs"
        ax.text(cx, y_box - 0.1, f"exit {k}: {model.exit_names[k]}{cost}", ha="center", va="top", fontsize=7,
                color=VERMILLION)
    handles = [plt.Rectangle((0, 0), 1, 1, fc=stage_colour[st], alpha=0.35, ec="black") for st in stage_colour]
    ax.legend(handles, list(stage_colour), loc="upper left", fontsize=8, ncols=len(stage_colour), title="stage",
              title_fontsize=8, frameon=False, bbox_to_anchor=(0, 1.0))
    ax.set(xlim=(-0.3, n * gap + 1.2), ylim=(-0.9, 3.6), title=title)
    ax.axis("off")
    fig.tight_layout()
    return fig


@_styled
def plot_accuracy_per_exit(accuracies: Mapping[str, Sequence[float]], exit_names: Sequence[str], *,
                           relative_flops: Sequence[float] | None = None,
                           title: str = "Accuracy of each exit") -> Figure:
    """Accuracy (%) of each exit when every sample takes it, one line per model or training mode.

    Args:
        accuracies: ``{label: [accuracy of exit 0, 1, ...]}`` (fractions).
        exit_names: the exits' names (x tick labels).
        relative_flops: if given, the x axis is the exit's cost as % of the network without exits.
    """
    if not accuracies:
        raise ValueError("accuracies is empty: pass {label: [accuracy per exit]}")
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = np.arange(len(exit_names)) if relative_flops is None else 100 * np.asarray(relative_flops)
    for label, accs in accuracies.items():
        if len(accs) != len(exit_names):
            raise ValueError(f"accuracies[{label!r}] has {len(accs)} values for {len(exit_names)} exits")
        ax.plot(x, 100 * np.asarray(accs), marker="o", label=label)
    if relative_flops is None:
        ax.set_xticks(x, list(exit_names), rotation=20)
        ax.set_xlabel("exit (attach point)")
    else:
        ax.set_xlabel("cost of the exit (% of the FLOPs of the network without exits)")
        top = ax.secondary_xaxis("top")  # the exits' names above the plot, where they hide no point
        top.set_xticks(x, list(exit_names), rotation=30, fontsize=8)
    ax.set(title=title, ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


@_styled
def plot_exit_histogram(exit_fractions: Sequence[float], exit_names: Sequence[str], *, ax: Axes | None = None,
                        title: str = "Where the images leave", unit: str = "images") -> Figure:
    """Bar chart: the share (%) of samples that leave at each exit; ``unit`` names them ("images", "tokens")."""
    if len(exit_fractions) != len(exit_names):
        raise ValueError(f"exit_fractions has {len(exit_fractions)} values for {len(exit_names)} exits")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.6))
    else:
        fig = ax.figure
    x = np.arange(len(exit_names))
    bars = ax.bar(x, 100 * np.asarray(exit_fractions), color=PURPLE)
    ax.bar_label(bars, fmt="%.1f%%", fontsize=8)
    ax.set_xticks(x, list(exit_names), rotation=20)
    ax.set(title=title, xlabel="exit (attach point)", ylabel=f"{unit} leaving here (%)", ylim=(0, 110))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


@_styled
def plot_easy_and_hard(data: "DataSplits", easy: Sequence[int], hard: Sequence[int], outputs: "ExitOutputs",
                       exits: "torch.Tensor", *, split: str = "test",
                       title: str = "Easiest and hardest images") -> Figure:
    """The talk's figure 2: images that leave at the first exit (top) and images that need the
    whole network or stay wrong (bottom), each titled with its label, prediction and exit.

    Args:
        data: the data set; ``easy`` and ``hard`` index its ``split``.
        outputs: the exits' outputs on that split (for the predictions).
        exits: the exit each sample took (e.g. ``PolicyResult.exits``).
    """
    if not easy or not hard:
        raise ValueError("easy and hard must each hold at least one index")
    dataset = getattr(data, split)
    cols = max(len(easy), len(hard))
    fig, axes = plt.subplots(2, cols, figsize=(1.5 * cols, 4.5), squeeze=False)
    preds = outputs.predictions
    for row, (indices, label) in enumerate(((easy, "easy"), (hard, "hard"))):
        for c, ax in enumerate(axes[row]):
            ax.axis("off")
            if c >= len(indices):
                continue
            i = indices[c]
            x, y = dataset[i]
            k = int(exits[i])
            pred = int(preds[k, i])
            ax.imshow(data.to_image(x), cmap="gray")
            right = pred == int(y)  # a wrong answer: in orange (vermillion) and marked in words too
            ax.set_title(f"{data.class_names[int(y)]}→{data.class_names[pred]}{'' if right else ' wrong'}\nexit {k}",
                         fontsize=9, color="black" if right else WRONG)
        axes[row][0].text(-0.3, 0.5, label, transform=axes[row][0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=12)
    fig.suptitle(f"{title}\n(top: left at the first exit, the most confident of their class; bottom: wrong, or "
                 "needed the final exit; label→prediction, wrong answers in orange)", fontsize=10)
    fig.tight_layout()
    return fig
