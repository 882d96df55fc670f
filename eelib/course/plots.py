"""Figures for the course (matplotlib): every one has a title, labelled axes and units.

Each function draws a new figure (``draw_residual_block`` can also draw into a given ``ax``) and
returns it, so a notebook shows it and ``eelib.course.cli run`` saves it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import functools

import matplotlib
import matplotlib.pyplot as plt
from cycler import cycler
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import MaxNLocator

from eelib.vision.train import History

# Okabe & Ito's qualitative palette: its colours stay distinct with deuteranopia and protanopia
# (red-green colour blindness) and in greyscale print; sequential scales use viridis / cividis.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE, YELLOW, BLACK = PALETTE
RIGHT, WRONG = BLUE, VERMILLION  # right and wrong predictions: never green against red

if TYPE_CHECKING:
    import torch

    from eelib.vision.cost import ExitCosts
    from eelib.vision.data import DataSplits
    from eelib.outputs import ExitOutputs
    from eelib.lm.generate import TokenCosts
    from eelib.policies import PolicyEval
    from eelib.lm.tokens import KindDifficulty
    from eelib.rejection import RejectEval, RejectPolicy, RiskCoverage


def _styled(fn):
    """Draw with the course's colour-blind-safe colour cycle, leaving the caller's settings alone."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context({"axes.prop_cycle": cycler(color=PALETTE)}):
            figure = fn(*args, **kwargs)
            # The first figure of a session loads the backend, and Jupyter's inline backend then turns
            # interactive mode on; rc_context would restore it to off on exit, and every later figure
            # of the notebook would no longer be shown. Keep the mode the call ended with.
            interactive = matplotlib.is_interactive()
        matplotlib.interactive(interactive)
        return figure
    return wrapper


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
        features: ``{name: tensor (1, C, H, W) or (C, H, W)}``, e.g. from ``ResNet.forward_intermediates``.
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


# --- early exits (chapters 2-4) -------------------------------------------------------------

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
def plot_tradeoff(curve: Sequence[tuple[float, "PolicyEval"]] | Mapping[str, Sequence[tuple[float, "PolicyEval"]]],
                  *, static: Sequence["PolicyEval"] = (),
                  exit_names: Sequence[str] = (), oracle: "PolicyEval | None" = None,
                  chosen: "PolicyEval | None" = None, label: str = "early exit, one threshold for every exit",
                  title: str = "Accuracy vs computation") -> Figure:
    """Accuracy against average FLOPs (% of the network without exits) over thresholds.

    Args:
        curve: ``[(threshold, PolicyEval), ...]``, e.g. from :func:`eelib.policies.tradeoff_curve`;
            or ``{label: curve}`` for several (one per measure).
        static: one PolicyEval per exit where every sample takes that exit (smaller networks).
        exit_names: labels of the static points.
        oracle: the oracle's PolicyEval (the best accuracy, at the least cost that reaches it).
        chosen: a calibrated policy to mark.
        label: the legend entry of a single curve (name the measure).
    """
    curves = dict(curve) if isinstance(curve, Mapping) else {label: curve}
    if not curves or not all(curves.values()):
        raise ValueError("curve is empty: pass [(threshold, PolicyEval), ...] or {label: [...]}")
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, points) in enumerate(curves.items()):
        cost = [100 * e.avg_flops / e.full_flops for _, e in points]
        acc = [100 * e.accuracy for _, e in points]
        ax.plot(cost, acc, marker=".", label=name, alpha=1.0 if i == 0 else 0.6)
    if static:
        sc = [100 * e.avg_flops / e.full_flops for e in static]
        ax.plot(sc, [100 * e.accuracy for e in static], "s--", color="grey", label="every sample takes one exit")
        for name, c, e in zip(exit_names, sc, static):
            ax.annotate(name, (c, 100 * e.accuracy), textcoords="offset points", xytext=(6, -14), fontsize=8,
                        color="grey")
    if oracle is not None:
        ax.plot([100 * oracle.avg_flops / oracle.full_flops], [100 * oracle.accuracy], "*", markersize=14,
                color=VERMILLION, label="oracle: earliest exit that is right")
    if chosen is not None:
        ax.plot([100 * chosen.avg_flops / chosen.full_flops], [100 * chosen.accuracy], "o", markersize=11,
                markerfacecolor="none", markeredgecolor="black", markeredgewidth=2, label="calibrated policy")
    ax.set(title=title, xlabel="average FLOPs per image (% of the network without exits)",
           ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
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
            ax.set_title(f"{data.class_names[int(y)]}→{data.class_names[pred]}\nexit {k}", fontsize=9,
                         color="black" if pred == int(y) else VERMILLION)
        axes[row][0].text(-0.3, 0.5, label, transform=axes[row][0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=12)
    fig.suptitle(f"{title}\n(top: left at the first exit, most confident; bottom: wrong, or needed the "
                 "final exit; title: label→prediction, red = wrong)", fontsize=10)
    fig.tight_layout()
    return fig


@_styled
def plot_overthinking(fractions: Sequence[float], exit_names: Sequence[str], *,
                      title: str = "Overthinking: right early, wrong at the end") -> Figure:
    """Bar chart: for each early exit, the share (%) of images it gets right that the final exit gets wrong."""
    if len(fractions) != len(exit_names):
        raise ValueError(f"fractions has {len(fractions)} values for {len(exit_names)} early exits")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(exit_names))
    bars = ax.bar(x, 100 * np.asarray(fractions), color=VERMILLION)
    ax.bar_label(bars, fmt="%.2f%%", fontsize=8)
    ax.set_xticks(x, list(exit_names), rotation=20)
    ax.set(title=title, xlabel="early exit (attach point)",
           ylabel="images right here, wrong at the final exit (%)")
    ax.grid(alpha=0.3, axis="y")
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


@_styled
def plot_confidence(outputs: "ExitOutputs", k: int = 0, *, measure: str = "max_prob",
                    threshold: float | None = None, title: str | None = None) -> Figure:
    """Histogram of a confidence measure at exit ``k``, for the images it gets right and wrong."""
    from eelib.policies import confidence, get_measure

    if not 0 <= k < outputs.num_exits:
        raise ValueError(f"exit {k!r} does not exist: there are {outputs.num_exits} exits (0..{outputs.num_exits - 1})")
    scores = confidence(outputs.logits, measure)[k].numpy()
    right = outputs.correct[k].numpy()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    bins = np.linspace(scores.min(), scores.max(), 31) if scores.max() > scores.min() else 10
    ax.hist(scores[right], bins=bins, alpha=0.6, color=RIGHT, label=f"right ({right.sum()})")
    ax.hist(scores[~right], bins=bins, alpha=0.8, color=WRONG, label=f"wrong ({(~right).sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    direction = "higher" if get_measure(measure).higher_is_confident else "lower"
    ax.set(title=title or f"{measure} at exit {k} ({outputs.exit_names[k]})",
           xlabel=f"{measure} ({direction} = more confident)", ylabel="images (log scale)", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


# --- chapter 5: rejection -----------------------------------------------------------------------

@_styled
def plot_risk_coverage(curves: Mapping[str, "RiskCoverage"], *, oracle: "RiskCoverage | None" = None,
                       alpha: float | None = None, chosen: tuple[float, float] | None = None,
                       min_coverage: float = 0.0, title: str = "Risk–coverage") -> Figure:
    """Selective risk (%) against coverage (%), one step curve per score (AURC in the legend).

    Args:
        curves: ``{label: RiskCoverage}``, e.g. one per exit (:func:`eelib.rejection.risk_coverage_curve`).
        oracle: the oracle's curve (:func:`eelib.rejection.oracle_risk_coverage`), drawn dashed.
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
                label=f"oracle: reject the errors first (AURC {100 * oracle.aurc:.2f}%)")
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
    from eelib.rejection import _route

    if outputs.num_exits != policy.num_exits:
        raise ValueError(f"the policy has {policy.num_exits} exits but outputs has {outputs.num_exits}")
    policy.check(outputs.num_exits, outputs.logits.shape[-1])
    m = get_measure(policy.measure)
    scores = confidence(outputs.logits, policy.measure)
    exits, _ = _route(scores, policy)
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


# --- language models (chapters 6 and 7) ----------------------------------------------------------

@_styled
def draw_transformer_stack(n_layers: int, exit_layers: Sequence[int] = (), *, ax: Axes | None = None,
                           title: str | None = None) -> Figure:
    """The talk's figure 5: a token goes up a stack of transformer blocks; exits branch off after some.

    Args:
        n_layers: blocks in the stack.
        exit_layers: the layers (1..n_layers - 1) after which an exit sits; the final exit is drawn too.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be at least 1, got {n_layers}")
    bad = [l for l in exit_layers if not 1 <= l < n_layers]
    if bad:
        raise ValueError(f"exit_layers must be from 1 to {n_layers - 1}, got {bad}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 1.0 + 0.55 * (n_layers + 3)))
    else:
        fig = ax.figure
    h = 0.42

    def box(y, text, colour):
        ax.add_patch(FancyBboxPatch((0, y), 3, h, boxstyle="round,pad=0.04", fc=colour, ec="black", lw=1))
        ax.text(1.5, y + h / 2, text, ha="center", va="center", fontsize=9)

    box(0, "token + position embedding", "#dde6f5")
    for l in range(1, n_layers + 1):
        box(0.55 * l, f"block {l}: attention + MLP", "#f5e6c8")
        if l in exit_layers:
            ax.add_patch(FancyArrowPatch((3.05, 0.55 * l + h / 2), (3.8, 0.55 * l + h / 2), arrowstyle="-|>",
                                         mutation_scale=12, color=GREEN))
            ax.text(3.85, 0.55 * l + h / 2, f"exit after layer {l}", va="center", fontsize=9, color=GREEN)
    top = 0.55 * (n_layers + 1)
    box(top, "ln_f + lm_head → next token", "#d8f0d8")
    for y in np.arange(0, top, 0.55):
        ax.add_patch(FancyArrowPatch((1.5, y + h), (1.5, y + 0.55), arrowstyle="-|>", mutation_scale=10))
    ax.set(xlim=(-0.2, 6), ylim=(-0.2, top + 0.6),
           title=title or f"A GPT-2 model: {n_layers} transformer blocks on one residual stream")
    ax.axis("off")
    fig.tight_layout()
    return fig


@_styled
def plot_logit_lens(tokens: Sequence[str], predictions: Sequence[Sequence[str]], agree: "torch.Tensor",
                    exit_names: Sequence[str], *, title: str = "The logit lens: each layer's guess of the next token") -> Figure:
    """A grid: columns are the positions of a text, rows the exits; each cell shows that exit's top-1
    next token, green where it agrees with the final layer.

    Args:
        tokens: the input tokens (column labels).
        predictions: ``[exit][position]`` predicted tokens' texts.
        agree: ``(num_exits, T)`` booleans: agrees with the final exit.
    """
    if hasattr(agree, "detach"):  # a tensor, maybe on the GPU
        agree = agree.detach().cpu()
    agree = np.asarray(agree, dtype=float)
    E, T = agree.shape
    if len(tokens) != T or len(predictions) != E or len(exit_names) != E:
        raise ValueError(f"tokens ({len(tokens)}), predictions ({len(predictions)}) and exit_names "
                         f"({len(exit_names)}) must match agree's shape {agree.shape}")
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * T, 1.4 + 0.5 * E))
    # cividis (colour-blind safe): light yellow = agrees with the final layer, dark blue = differs
    ax.imshow(agree, cmap="cividis", vmin=0.0, vmax=1.0, aspect="auto")
    for e in range(E):
        for t in range(T):
            ax.text(t, e, repr(predictions[e][t])[1:-1][:8], ha="center", va="center", fontsize=9,
                    color="black" if agree[e, t] > 0.5 else "white")
    ax.set_xticks(range(T), [repr(s)[1:-1][:8] for s in tokens], rotation=60, fontsize=9)
    ax.set_yticks(range(E), list(exit_names), fontsize=9)
    ax.set(title=title + "\n(light: same as the final layer; dark: differs)",
           xlabel="input token (position in the text)", ylabel="exit")
    fig.tight_layout()
    return fig


@_styled
def plot_agreement_per_layer(agreement: Mapping[str, Sequence[float]], layers: Sequence[int], *,
                             title: str = "Agreement of each exit with the final layer") -> Figure:
    """Lines: the share (%) of tokens whose top-1 at each layer equals the final layer's, one line per kind of exit."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, values in agreement.items():
        if len(values) != len(layers):
            raise ValueError(f"{label!r} has {len(values)} values for {len(layers)} layers")
        ax.plot(list(layers), 100 * np.asarray(values), marker="o", label=label)
    ax.set(title=title, xlabel="layer the exit sits after", ylabel="top-1 agrees with the final layer (%)",
           ylim=(0, 105))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


@_styled
def plot_token_costs(costs: "TokenCosts", *, title: str = "What a token costs, by where it leaves") -> Figure:
    """Left: the FLOPs of one layer, one exit head and one copied-up key/value; right: each exit's cost
    per token as a share (%) of the model without exits (:func:`eelib.lm.generate.token_exit_costs`)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    parts = {"one layer": costs.layer_flops, "one exit head": costs.head_flops,
             "keys+values of\na skipped layer": costs.kv_flops}
    bars = a.bar(list(parts), np.asarray(list(parts.values())) / 1e6, color=[BLUE, ORANGE, "grey"])
    a.bar_label(bars, fmt="%.2f", fontsize=8)
    a.set(title=f"Pieces (context {costs.context} tokens)", xlabel="piece of work", ylabel="MFLOPs per token")
    a.grid(alpha=0.3, axis="y")
    x = np.arange(len(costs.exit_names))
    bars = b.bar(x, 100 * np.asarray(costs.relative_flops), color=PURPLE)
    b.bar_label(bars, fmt="%.0f%%", fontsize=8)
    b.axhline(100, color="black", lw=1, ls="--", label="model without exits")
    b.set_xticks(x, list(costs.exit_names), rotation=15)
    b.set(title="A token leaving at each exit", xlabel="exit", ylabel="FLOPs, % of the model without exits")
    b.legend(loc="upper left")
    b.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@_styled
def plot_difficulty_by_kind(rows: Sequence["KindDifficulty"], n_layers: int, *,
                            title: str = "Which tokens are easy?") -> Figure:
    """Bars: mean exit layer per kind of token (:func:`eelib.lm.tokens.difficulty_by_kind`), with the token counts."""
    if not rows:
        raise ValueError("rows is empty: no kinds of token to show")
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    x = np.arange(len(rows))
    bars = ax.bar(x, [r.mean_layers for r in rows], color=SKY)
    ax.bar_label(bars, labels=[f"{r.mean_layers:.1f}\n({r.count})" for r in rows], fontsize=8)
    ax.set_xticks(x, [r.kind for r in rows], rotation=20)
    ax.set(title=title + " (label: mean layer, number of tokens)", xlabel="kind of predicted token",
           ylabel="mean exit layer", ylim=(0, n_layers + 1.5))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


@_styled
def plot_block_time(rows: Sequence[int], seconds: Sequence[Sequence[float]], *,
                    title: str = "One block call, by the number of rows (tokens) it processes") -> Figure:
    """Median time (µs) of one transformer block call against its rows, with the spread of the repeats
    (:func:`eelib.lm.speculative.measure_block_time`); a dashed line: what ``rows`` separate calls would cost."""
    if len(rows) != len(seconds) or not rows:
        raise ValueError(f"rows has {len(rows)} values and seconds {len(seconds)}: give one list of times per row count")
    us = [1e6 * np.asarray(s, dtype=float) for s in seconds]
    med = np.array([np.median(u) for u in us])
    lo, hi = np.array([np.percentile(u, 10) for u in us]), np.array([np.percentile(u, 90) for u in us])
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.errorbar(list(rows), med, yerr=[med - lo, hi - med], marker="o", capsize=3, label="one call (10-90% of repeats)")
    ax.plot(list(rows), med[0] * np.asarray(rows), ls="--", color="grey", label="separate calls, one row each")
    ax.set(title=title, xlabel="rows in the call (tokens verified together)", ylabel="time per call (µs)",
           ylim=(0, max(hi.max(), med[0] * 4) * 1.1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


@_styled
def plot_speculative_grid(grid: Sequence[Mapping], *, max_draft: int | None = None, draft_vocab="all",
                          title: str = "Self-speculative decoding: draft layer and threshold") -> Figure:
    """From a calibration grid (``speculative.json``'s ``"grid"``): tokens per round (left) and measured speedup
    (right) against the draft threshold, one line per draft layer, for one ``max_draft`` and draft vocabulary."""
    rows = [r for r in grid if (max_draft is None or r["max_draft"] == max_draft)
            and (draft_vocab == "all" or r["draft_vocab"] == draft_vocab)]
    if not rows:
        raise ValueError(f"no rows of the grid have max_draft={max_draft!r} and draft_vocab={draft_vocab!r}")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = plt.get_cmap("viridis")
    layers = sorted({r["layer"] for r in rows})
    for i, layer in enumerate(layers):
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["threshold"])
        if max_draft is None or draft_vocab == "all":  # several settings per threshold: the best of them
            best = {}
            for r in mine:
                if r["threshold"] not in best or r["speedup"] > best[r["threshold"]]["speedup"]:
                    best[r["threshold"]] = r
            mine = [best[t] for t in sorted(best)]
        c = colours(i / max(len(layers) - 1, 1) * 0.85)
        t = [r["threshold"] for r in mine]
        a.plot(t, [r["tokens_per_round"] for r in mine], marker="o", color=c, label=f"draft after layer {layer}")
        b.plot(t, [r["speedup"] for r in mine], marker="o", color=c, label=f"draft after layer {layer}")
    a.set(title="Tokens per draft-and-verify round", xlabel="draft threshold (max_prob)", ylabel="tokens per round")
    b.axhline(1, color="black", lw=1, ls="--", label="plain loop")
    b.set(title="Measured speedup vs the plain loop", xlabel="draft threshold (max_prob)", ylabel="speedup (x)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    a.legend(loc="upper right", fontsize=8)
    b.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
