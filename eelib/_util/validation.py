"""Checks of the tensors users pass in: a clear error naming the argument, not a silent wrong answer.

A batch of images full of NaN would otherwise be classified as class 0 (no confidence passes a
threshold, and the argmax of NaN logits is 0); logits with NaN or infinity would give
thresholds and policies that mean nothing.
"""

from __future__ import annotations

import torch


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise a ValueError naming ``name`` if ``tensor`` holds NaN or infinite values.

    One reduction on the tensor's device and one host sync; integer tensors pass at once.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        nan = int(torch.isnan(tensor).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) of {tensor.numel()} ({nan} NaN, {bad - nan} "
                         f"infinite): only finite numbers are allowed (check the data or the model that made them)")
