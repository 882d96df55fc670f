"""Helpers that the checks of more than one chapter use: ``_call`` (run the student's function,
turning a crash into an ``AssertionError`` that says so) and ``_tiny_exit_net`` (a small
early-exit ResNet and a batch, from a fixed seed)."""

from __future__ import annotations

from typing import Callable

import torch

from eelib.vision.resnet import ResNet, ResNetConfig


def _call(name: str, fn: Callable, *args):
    try:
        return fn(*args)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        raise AssertionError(f"{name} raised {type(err).__name__}: {err}. Hint: read the error above.") from err


def _tiny_exit_net(seed: int = 0):
    from eelib.vision.exits import EarlyExitNet

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = EarlyExitNet(ResNet(ResNetConfig(depth=8, width=4)), ("stem", "layer1", "layer2"), pool_size=2)
        x = torch.randn(40, 1, 12, 12)
    return model.eval(), x
