"""Residual networks for small images: the block with its skip connection, and without it.

A CIFAR-style ResNet (He et al., 2016, "Deep Residual Learning for Image Recognition", section
4.2): a 3x3 stem, three stages of ``n`` basic blocks with 1x, 2x and 4x the base width (the
second and third halve the resolution), global average pooling and a linear classifier, for a
depth of ``6n + 2`` layers (20, 32, 44, 56, 110, ...). With ``residual=False`` every block
loses its skip connection: the "plain" network of the same depth, for the degradation
experiment of chapter 1.

Attach points (for the exit heads of later chapters) have stable names that do not change the
backbone: ``stem``, the stages ``layer1..layer3`` and every block ``layer{s}.{i}``.
``model.feature_info`` lists the stages and ``model.block_info`` every block as
``dict(num_chs=..., reduction=..., module=...)``, so a head sizes itself from the point it is
attached to; ``model.features_at(x, names)`` returns the features at those points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; with ``residual=True`` the input is added back.

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, where ``shortcut`` is the
    identity, or a 1x1 convolution + batch norm when the block changes the resolution or the
    number of channels (He et al.'s option B). With ``residual=False`` the sum is dropped:
    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))))``.
    """

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if residual and (stride != 1 or in_channels != out_channels):
            self.shortcut: nn.Module | None = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        elif residual:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = None  # a plain block has no skip connection at all

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H/stride, W/stride)
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)  # the skip connection
        return F.relu(out)


@dataclass(frozen=True)
class ResNetConfig:
    """The shape of a CIFAR-style ResNet."""

    depth: int = 20  # 6n + 2 layers with weights: the stem, 3 stages of n blocks of 2 convs, the classifier
    width: int = 16  # channels of the first stage; the second and third have 2x and 4x
    in_channels: int = 1  # 1 for grey images (MNIST), 3 for colour (CIFAR-10)
    num_classes: int = 10
    residual: bool = True  # False: the plain network, no skip connections

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, ...), got {self.depth!r}")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width must be a positive integer, got {self.width!r}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (colour), got {self.in_channels!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    def to_dict(self) -> dict:
        return asdict(self)


class ResNet(nn.Module):
    """A CIFAR-style ResNet (or plain network) built from a :class:`ResNetConfig`.

    Modules, in the order ``forward`` calls them: ``stem``, ``layer1``, ``layer2``, ``layer3``
    (``nn.Sequential`` of :class:`BasicBlock`), ``pool``, ``fc``.
    """

    def __init__(self, config: ResNetConfig | None = None):
        super().__init__()
        self.config = config = config or ResNetConfig()
        w, n = config.width, config.blocks_per_stage
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        )
        self.layer1 = self._make_layer(w, w, n, stride=1)
        self.layer2 = self._make_layer(w, 2 * w, n, stride=2)
        self.layer3 = self._make_layer(2 * w, 4 * w, n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, config.num_classes)
        self.stage_names = ("layer1", "layer2", "layer3")
        self.feature_info = [dict(num_chs=w, reduction=1, module="stem")] + [
            dict(num_chs=w * 2**s, reduction=2**s, module=name) for s, name in enumerate(self.stage_names)
        ]
        self.block_info = [
            dict(num_chs=w * 2**s, reduction=2**s, module=f"{name}.{i}")
            for s, name in enumerate(self.stage_names) for i in range(n)
        ]
        self._init_weights()

    def _make_layer(self, in_channels: int, out_channels: int, n: int, stride: int) -> nn.Sequential:
        residual = self.config.residual
        blocks = [BasicBlock(in_channels, out_channels, stride, residual=residual)]
        blocks += [BasicBlock(out_channels, out_channels, 1, residual=residual) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def block_names(self) -> list[str]:
        """Names of every block in forward order: ``layer1.0``, ``layer1.1``, ..."""
        return [info["module"] for info in self.block_info]

    @property
    def attach_points(self) -> list[str]:
        """Every name ``features_at`` accepts: the stem, the stages and the blocks."""
        return ["stem", *self.stage_names, *self.block_names]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError if ``x`` is not a batch ``(B, in_channels, H, W)`` for this model."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a batch of images of shape (B, C, H, W), got {shape}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels but the model expects "
                             f"in_channels={self.config.in_channels}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone without the classifier: ``(B, 4 * width, H/4, W/4)``."""
        self.check_input(x)
        x = self.stem(x)
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooling and the classifier: features ``(B, 4w, h, w)`` -> logits ``(B, num_classes)``."""
        return self.fc(torch.flatten(self.pool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Deprecated name of :meth:`features_at` (timm's ``forward_intermediates`` has another contract)."""
        import warnings

        warnings.warn("ResNet.forward_intermediates is now ResNet.features_at", DeprecationWarning, stacklevel=2)
        return self.features_at(x, names)

    def features_at(self, x: torch.Tensor, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Features after the named attach points, running the backbone only as far as needed.

        (Named for what it returns, not timm's ``forward_intermediates``: no ``indices``, no final output.)

        Args:
            x: images ``(B, in_channels, H, W)``.
            names: attach points (see ``attach_points``); None means every stage
                (``stem``, ``layer1``, ``layer2``, ``layer3``).

        Returns:
            A dict from name to feature map, in forward order.
        """
        names = [info["module"] for info in self.feature_info] if names is None else list(names)
        unknown = [n for n in names if n not in self.attach_points]
        if unknown:
            raise ValueError(f"names has unknown attach points {unknown}; allowed: stem, "
                             f"{', '.join(self.stage_names)}, or a block {self.block_names[0]}..{self.block_names[-1]}")
        self.check_input(x)
        wanted, out = set(names), {}
        x = self.stem(x)
        if "stem" in wanted:
            out["stem"] = x
        for stage in self.stage_names:
            for i, block in enumerate(getattr(self, stage)):
                if len(out) == len(wanted):
                    return out  # everything asked for is computed: the rest of the network is skipped
                x = block(x)
                if f"{stage}.{i}" in wanted:
                    out[f"{stage}.{i}"] = x
            if stage in wanted:
                out[stage] = x
        return out


def resnet(depth: int = 20, *, width: int = 16, in_channels: int = 1, num_classes: int = 10) -> ResNet:
    """A residual network of ``depth`` layers (6n + 2)."""
    return ResNet(ResNetConfig(depth, width, in_channels, num_classes, residual=True))


def plain_net(depth: int = 20, *, width: int = 16, in_channels: int = 1, num_classes: int = 10) -> ResNet:
    """The same network without skip connections (He et al.'s "plain" baseline)."""
    return ResNet(ResNetConfig(depth, width, in_channels, num_classes, residual=False))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
