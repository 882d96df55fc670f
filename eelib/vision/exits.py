"""Early exits: auxiliary classifiers (exit heads) attached to a ResNet from the outside.

An :class:`EarlyExitNet` wraps a backbone — eelib's CIFAR-style :class:`~eelib.vision.resnet.ResNet`
or torchvision's ResNet-18/34/50/... — and attaches an :class:`ExitHead` after some of its
blocks or stages (Teerapittayanon et al., 2016, "BranchyNet"; Kaya et al., 2019, "Shallow-Deep
Networks"). The backbone is not changed: its modules keep their names, so its own state dict
(torchvision's pretrained weights included) loads as it is, and its own classifier is the last
exit. ``forward`` returns the logits of every exit, first to last.

For routing (:mod:`eelib.vision.dynamic`) and for counting the cost of each exit (:mod:`eelib.vision.cost`),
the backbone is seen as a list of *units* run one after the other — the stem, then every block —
followed by its classifier; ``model.segment(k)`` runs the units between exit ``k - 1`` and
exit ``k``.

Attach points: ``stem``, a stage (``layer1`` = after its last block) or a block (``layer2.3``),
as in :attr:`eelib.vision.resnet.ResNet.attach_points`; torchvision's ResNets have ``layer1..layer4``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from eelib._util.device import resolve_device
from eelib._util.eval_mode import eval_mode
from eelib.outputs import ExitOutputs
from eelib.vision.resnet import ResNet


class ExitHead(nn.Module):
    """An auxiliary classifier: (optionally a 3x3 conv) -> average pooling -> linear.

    Args:
        in_channels: channels of the feature map it reads (from the attach point's ``num_chs``).
        num_classes: outputs.
        pool_size: the feature map is average-pooled to ``pool_size x pool_size`` and flattened;
            1 is global pooling (like the backbone's own classifier), larger keeps where things
            are in the image, which shallow features need (SDN's heads keep a small grid too).
        hidden_channels: if given, a 3x3 convolution + batch norm + relu to this many channels
            comes first — a little more capacity for heads attached early.
    """

    def __init__(self, in_channels: int, num_classes: int, *, pool_size: int = 1,
                 hidden_channels: int | None = None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("pool_size", pool_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if hidden_channels is not None and (not isinstance(hidden_channels, int) or hidden_channels < 1):
            raise ValueError(f"hidden_channels must be None or a positive integer, got {hidden_channels!r}")
        self.conv: nn.Module | None = None
        if hidden_channels:
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden_channels), nn.ReLU(inplace=True))
            in_channels = hidden_channels
        self.pool_size = pool_size
        self.fc = nn.Linear(in_channels * pool_size * pool_size, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # functional calls, not modules: at batch size 1 a head's time is mostly per-call overhead
        x = features if self.conv is None else self.conv(features)
        if not self.training and not torch.is_grad_enabled():
            folded = self.folded_weight(tuple(x.shape[1:]))
            if folded is not None:  # inference: the pooling folded into the linear layer
                return F.linear(x.flatten(1), folded, self.fc.bias)
        x = F.adaptive_avg_pool2d(x, self.pool_size)  # (B, C, pool_size, pool_size)
        return F.linear(torch.flatten(x, 1), self.fc.weight, self.fc.bias)  # (B, num_classes)

    FOLD_MAX_ELEMENTS = 1 << 22  # the largest folded weight (classes x C x H x W) worth building: 16 MB in float32
    FOLD_MAX_CLASSES = 32  # beyond this, pooling first is cheaper than one product over the whole map

    def folded_weight(self, shape: tuple[int, int, int]) -> torch.Tensor | None:
        """The linear layer with the average pooling folded in, for feature maps of ``shape`` (C, H, W).

        Average pooling and the linear layer are both linear, so ``fc(pool(x)) = W_f x.flatten() + b``
        with ``W_f = fc.weight · P`` (``P``: the pooling as a matrix). At inference (eval mode, no
        gradients) the head computes that one product: more multiply-adds than pooling first (it
        reads every feature once per class), but one pass over the feature map instead of
        adaptive pooling's slow windows: measured on the course network (1 CPU thread), a head
        at batch 256 is 5-18x faster, at batch 1 about 2.5x. ``FlopCounterMode`` counts what runs,
        so :func:`eelib.vision.cost.exit_costs` reports the folded heads' FLOPs. The result is the same up
        to float rounding; training and eval with gradients use the pooling. Built once per shape,
        device and dtype, rebuilt whenever the weights change (a copy of the weights it was built
        from is compared, so a write through ``.data`` counts too); None (pooling used) when the folded
        weight would be large (``FOLD_MAX_ELEMENTS``) or the classes many (``FOLD_MAX_CLASSES``).
        """
        weight = self.fc.weight
        classes = weight.shape[0]
        if classes > self.FOLD_MAX_CLASSES or classes * math.prod(shape) > self.FOLD_MAX_ELEMENTS:
            return None
        key = (shape, weight.device, weight.dtype, weight.data_ptr(), weight._version)
        cached = self.__dict__.get("_folded")
        # the weights it was built from are compared too: a write through ``weight.data`` (or under
        # ``torch.no_grad`` on a detached alias) changes them without changing ``_version``
        if cached is not None and cached[0] == key and torch.equal(cached[2], weight):
            return cached[1]
        c, h, w = shape
        with torch.inference_mode(False), torch.no_grad():
            # W_f = the pooling's adjoint applied to each class's weights: adaptive pooling's backward, which
            # spreads each pooled cell's weight evenly over its window (no matrix product: a FlopCounterMode
            # around the first call counts the head, not this one-time build)
            grid = weight.view(classes, c, self.pool_size, self.pool_size)
            template = torch.empty(classes, c, h, w, device=weight.device, dtype=weight.dtype)
            folded = torch.ops.aten._adaptive_avg_pool2d_backward(grid, template).reshape(classes, c * h * w)
        self.__dict__["_folded"] = (key, folded, weight.detach().clone())
        return folded


@dataclass(frozen=True)
class ExitConfig:
    """Where the exit heads go and what they look like (for recipes and for building models)."""

    points: tuple[str, ...] = ("layer1", "layer2")
    pool_size: int = 1
    hidden_channels: int | None = None


class _TorchvisionStem(nn.Module):
    """torchvision ResNet's stem, reusing (not copying) its modules: conv1, bn1, relu, maxpool."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        # the backbone's own modules (this wrapper is not registered in EarlyExitNet, so nothing is saved twice)
        self.parts = nn.ModuleList([backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


def _is_torchvision_resnet(backbone: nn.Module) -> bool:
    try:
        from torchvision.models import ResNet as TVResNet
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(backbone, TVResNet)


def _block_channels(block: nn.Module) -> int:
    for name in ("bn3", "bn2"):  # torchvision's Bottleneck ends with bn3, BasicBlock with bn2
        bn = getattr(block, name, None)
        if isinstance(bn, nn.BatchNorm2d):
            return bn.num_features
    raise TypeError(f"cannot tell the output channels of block {type(block).__name__}")


def backbone_units(backbone: nn.Module) -> tuple[list[tuple[str, nn.Module]], dict[str, int], dict[str, str]]:
    """The backbone as units run in order, their output channels, and the stage names.

    Returns:
        ``units``: ``[(name, module), ...]`` — ``stem``, then every block (``layer1.0``, ...);
        ``channels``: ``{attach point: channels}`` for the stem, every block and every stage;
        ``stage_end``: ``{stage: name of its last block}``.
    """
    if isinstance(backbone, ResNet):
        stem, stages = backbone.stem, backbone.stage_names
    elif _is_torchvision_resnet(backbone):
        stem, stages = _TorchvisionStem(backbone), ("layer1", "layer2", "layer3", "layer4")
    else:
        raise TypeError(f"backbone must be an eelib.vision.resnet.ResNet or a torchvision ResNet, got {type(backbone).__name__}")
    units: list[tuple[str, nn.Module]] = [("stem", stem)]
    channels = {"stem": _stem_channels(backbone)}
    stage_end = {}
    for stage in stages:
        for i, block in enumerate(getattr(backbone, stage)):
            units.append((f"{stage}.{i}", block))
            channels[f"{stage}.{i}"] = _block_channels(block)
        stage_end[stage] = units[-1][0]
        channels[stage] = channels[units[-1][0]]
    return units, channels, stage_end


def _stem_channels(backbone: nn.Module) -> int:
    if isinstance(backbone, ResNet):
        return backbone.feature_info[0]["num_chs"]
    return backbone.bn1.num_features


class EarlyExitNet(nn.Module):
    """A backbone with exit heads attached after some of its blocks or stages.

    Args:
        backbone: an eelib :class:`~eelib.vision.resnet.ResNet` or a torchvision ResNet; stored as
            ``self.backbone`` unchanged.
        points: attach points of the early exits (any order; they are sorted into forward
            order): ``stem``, ``layer1``, ``layer2.3``, ... The backbone's own classifier is
            always the last exit, so the end of the last stage cannot carry an early exit.
        pool_size, hidden_channels: the heads' shape (see :class:`ExitHead`).

    Attributes:
        exit_names: one name per exit: the attach points, then ``"final"``.
        heads: the early exits' heads (``nn.ModuleList``, one per attach point).
        min_image_size: the smallest image side the backbone takes (its total stride; 32 for torchvision's).
    """

    def __init__(self, backbone: nn.Module, points: Sequence[str] = ("layer1", "layer2"), *,
                 pool_size: int = 1, hidden_channels: int | None = None):
        super().__init__()
        units, channels, stage_end = backbone_units(backbone)
        if isinstance(points, str) or not len(points):
            raise ValueError(f"points must be a non-empty list of attach points, got {points!r}")
        unknown = [p for p in points if p not in channels]
        if unknown:
            raise ValueError(f"points has unknown attach points {unknown}; allowed: stem, "
                             f"{', '.join(stage_end)}, or a block {units[1][0]}..{units[-1][0]}")
        unit_index = {name: i for i, (name, _) in enumerate(units)}
        position = {p: unit_index[stage_end.get(p, p)] for p in points}
        if len(set(position.values())) != len(points):
            raise ValueError(f"points {list(points)} name the same place twice (a stage is its last block)")
        if max(position.values()) == len(units) - 1:
            raise ValueError(f"points cannot include the end of the network ({units[-1][0]} = the last stage): "
                             "the backbone's own classifier is the last exit there")
        self.backbone = backbone
        self.points = tuple(sorted(points, key=position.get))
        self.exit_names = (*self.points, "final")
        self._units = units  # plain list: the modules are registered once, inside the backbone
        self._ends = [position[p] + 1 for p in self.points] + [len(units)]  # units run before each exit
        self.num_classes = _num_classes(backbone)
        self.in_channels = _in_channels(backbone)
        # the backbone's total stride: a smaller image leaves the last stage a 1x1 map of padding
        self.min_image_size = backbone.feature_info[-1]["reduction"] if isinstance(backbone, ResNet) else 32
        self.heads = nn.ModuleList(
            ExitHead(channels[p], self.num_classes, pool_size=pool_size, hidden_channels=hidden_channels)
            for p in self.points)

    @property
    def num_exits(self) -> int:
        """Early exits plus the final one."""
        return len(self.exit_names)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise unless ``x`` is a batch ``(B, in_channels, H, W)`` for this model: a ValueError for its shape
        (images smaller than ``min_image_size`` included), a TypeError for its dtype (that of the weights)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a batch of images of shape (B, C, H, W), got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels but the model expects in_channels={self.in_channels}")
        if min(x.shape[2:]) < self.min_image_size:
            raise ValueError(f"x holds {x.shape[2]}x{x.shape[3]} images, smaller than the network's total stride: "
                             f"images must be at least {self.min_image_size}x{self.min_image_size} pixels (the course "
                             f"models take 28x28 MNIST or 32x32 CIFAR-10 images)")
        weight = next(self.parameters())
        if not x.is_floating_point():
            raise TypeError(f"x is {x.dtype}: images must be floating point and normalised as the data set's "
                            f"(eelib.load_data gives them so); raw pixels need x.float() and the data set's "
                            f"normalisation (data.mean, data.std)")
        if x.dtype != weight.dtype:
            raise TypeError(f"x is {x.dtype} but the model's weights are {weight.dtype}: pass x.to({weight.dtype}), "
                            f"or convert the model with model.to({x.dtype})")

    def check_exit(self, k: int) -> int:
        """Return ``k`` as an exit index, or raise a ValueError naming the allowed range."""
        if isinstance(k, bool) or not isinstance(k, int) or not -self.num_exits <= k < self.num_exits:
            raise ValueError(f"exit {k!r} does not exist: the model has {self.num_exits} exits "
                             f"(0..{self.num_exits - 1}: {', '.join(self.exit_names)})")
        return k % self.num_exits

    def segment(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Run the backbone units between exit ``k - 1`` and exit ``k`` (from the input when k = 0)."""
        k = self.check_exit(k)
        start = 0 if k == 0 else self._ends[k - 1]
        for _, unit in self._units[start:self._ends[k]]:
            x = unit(x)
        return x

    def head(self, k: int, features: torch.Tensor) -> torch.Tensor:
        """Logits of exit ``k`` from the features at its attach point."""
        k = self.check_exit(k)
        if k == self.num_exits - 1:
            return self.final_head(features)
        return self.heads[k](features)

    def final_head(self, features: torch.Tensor) -> torch.Tensor:
        """The backbone's own classifier: pooling, flatten, linear."""
        if isinstance(self.backbone, ResNet):
            return self.backbone.forward_head(features)
        return self.backbone.fc(torch.flatten(self.backbone.avgpool(features), 1))

    def plan(self) -> list[tuple[list[nn.Module], Callable[[torch.Tensor], torch.Tensor]]]:
        """For every exit, the units of its segment and its head: what routing runs, without the
        per-call checks of :meth:`segment` and :meth:`head`. Built once, and again whenever a head
        is replaced (``model.heads[0] = ...``); moving the model between devices keeps its modules."""
        heads = tuple(self.heads)
        cached = self.__dict__.get("_plan")
        if cached is None or len(cached[0]) != len(heads) or any(a is not b for a, b in zip(cached[0], heads)):
            steps, start = [], 0
            for k, end in enumerate(self._ends):
                head = heads[k] if k < self.num_exits - 1 else self.final_head
                steps.append(([unit for _, unit in self._units[start:end]], head))
                start = end
            self.__dict__["_plan"] = cached = (heads, steps)  # the heads it was built with: compared by identity
        return cached[1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits ``(B, num_classes)`` of every exit, first to last (the last is the backbone's own)."""
        self.check_input(x)
        outputs = []
        for k in range(self.num_exits):
            x = self.segment(k, x)
            outputs.append(self.head(k, x))
        return outputs

    def forward_until(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Logits of exit ``k`` only, running the backbone no further than its attach point."""
        k = self.check_exit(k)
        self.check_input(x)
        for j in range(k + 1):
            x = self.segment(j, x)
        return self.head(k, x)


def _num_classes(backbone: nn.Module) -> int:
    return backbone.fc.out_features


def _in_channels(backbone: nn.Module) -> int:
    if isinstance(backbone, ResNet):
        return backbone.config.in_channels
    return backbone.conv1.in_channels


def early_exit_resnet(backbone: ResNet, config: ExitConfig) -> EarlyExitNet:
    """An :class:`EarlyExitNet` on ``backbone`` shaped by an :class:`ExitConfig`."""
    return EarlyExitNet(backbone, config.points, pool_size=config.pool_size, hidden_channels=config.hidden_channels)


def torchvision_early_exit(arch: str = "resnet18", *, weights=None, points: Sequence[str] = ("layer1", "layer2", "layer3"),
                           num_classes: int | None = None, pool_size: int = 1,
                           hidden_channels: int | None = None) -> EarlyExitNet:
    """Exit heads on torchvision's ``resnet18``/``resnet34``/``resnet50``/..., its weights untouched.

    Args:
        arch: a torchvision ResNet builder name.
        weights: torchvision's weights argument (e.g. ``"DEFAULT"`` or
            ``ResNet18_Weights.IMAGENET1K_V1``), downloaded by torchvision into its cache when
            the machine is online; ``None`` for random weights.
        points: attach points among ``stem``, ``layer1..layer3`` and blocks such as ``layer2.1``.
        num_classes: classes of a randomly initialised model (with ``weights`` it comes from them).
    """
    import torchvision.models as tvm

    allowed = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
    if arch not in allowed:
        raise ValueError(f"arch={arch!r} is not supported; allowed: {', '.join(allowed)}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    backbone = getattr(tvm, arch)(weights=weights, **kwargs)
    return EarlyExitNet(backbone, points, pool_size=pool_size, hidden_channels=hidden_channels)


@torch.no_grad()
def exit_outputs(model: EarlyExitNet, loader: DataLoader, *, device: torch.device | str | None = None) -> ExitOutputs:
    """Logits of every exit for every sample of ``loader`` (eval mode), gathered on the CPU."""
    device = resolve_device(device)
    logits, labels = [], []
    with eval_mode(model):
        model.to(device)
        for x, y in loader:
            logits.append(torch.stack(model(x.to(device))).cpu())
            labels.append(y)
    if not logits:
        raise ValueError("loader is empty: nothing to predict")
    return ExitOutputs(torch.cat(logits, 1), torch.cat(labels), model.exit_names)
