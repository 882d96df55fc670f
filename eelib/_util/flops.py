"""The one FLOP counter of eelib: :class:`torch.utils.flop_counter.FlopCounterMode`, no gradients.

`count_flops` counts one call; `flop_counter` gives the counter itself, for a loop that counts
while it runs (early-exit and self-speculative generation with ``count_flops=True``). What it
counts: a multiply-add is 2 FLOPs, in the matrix products and convolutions (element-wise work,
softmax and normalisation are not counted).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def flop_counter() -> FlopCounterMode:
    """A FLOP counter that prints nothing: ``with flop_counter() as c: ...; c.get_total_flops()``."""
    return FlopCounterMode(display=False)


def count_flops(fn: Callable[..., object], *args) -> int:
    """FLOPs that ``fn(*args)`` performs, counted by ``FlopCounterMode`` under ``torch.no_grad()``."""
    with torch.no_grad(), flop_counter() as counter:
        fn(*args)
    return int(counter.get_total_flops())
