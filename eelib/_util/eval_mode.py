"""``with eval_mode(model):`` — evaluation mode for a block, every submodule's own mode restored afterwards.

The one way eelib switches a model to evaluation: never ``was_training = model.training`` ...
``model.train(was_training)`` by hand (which skips the restore on an error, and loses a submodule
that was kept in eval mode on purpose, such as a frozen backbone).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def _mode(modules: tuple[torch.nn.Module, ...], training: bool, name: str) -> Iterator[None]:
    for m in modules:
        if not isinstance(m, torch.nn.Module):
            raise TypeError(f"{name} takes torch.nn.Module objects, got {type(m).__name__}")
    flags = [[(sub, sub.training) for sub in m.modules()] for m in modules]
    try:
        for m in modules:
            m.train(training)
        yield
    finally:
        for saved in flags:
            for sub, flag in saved:
                sub.training = flag


def eval_mode(*modules: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
    """Run a block with ``modules`` in eval mode; restore every submodule's own mode afterwards.

    Restores on error too, and restores each submodule's flag (a frozen backbone kept in eval
    mode inside a training model stays so). Nothing is moved to another device.

    Example::

        with eval_mode(model):
            logits = model(x)
    """
    return _mode(modules, False, "eval_mode")


def train_mode(*modules: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
    """Like `eval_mode`, in training mode (e.g. gradients measured as training sees them, batch norm included)."""
    return _mode(modules, True, "train_mode")
