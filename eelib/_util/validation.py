"""Checks of the tensors and arguments users pass in: a clear error naming the argument, not a silent wrong answer.

A batch of images full of NaN would otherwise be classified as class 0 (no confidence passes a
threshold, and the argmax of NaN logits is 0); logits with NaN or infinity would give
thresholds and policies that mean nothing.
"""

from __future__ import annotations

import math
import numbers

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


def _is_number(value) -> bool:
    """A real number: Python's or numpy's, or a 0-d tensor (booleans are not numbers here)."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and value.dtype != torch.bool and not value.is_complex()
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def as_thresholds(values, name: str = "thresholds") -> tuple[float, ...]:
    """``values`` as a tuple of floats: a sequence (list, tuple, 1-D tensor or array) of real numbers, none NaN.

    A single number (a 0-d tensor too) or a string is refused with a ValueError naming ``name`` (one threshold
    per early exit is needed: ``(0.9,)`` for a model with two exits); an element that is not a number with a
    TypeError.
    """
    if _is_number(values) or getattr(values, "ndim", None) == 0:
        raise ValueError(f"{name} must be a sequence with one threshold per early exit, e.g. (0.9, 0.9), got a "
                         f"single number {values!r}: for one early exit write ({float(values):g},)")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a sequence with one threshold per early exit, e.g. (0.9, 0.9), "
                         f"got {type(values).__name__} {values!r}")
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    out = []
    for t in values:
        if not _is_number(t):
            raise TypeError(f"{name} must hold numbers, got {type(t).__name__} {t!r} in {values!r}")
        out.append(float(t))
    if any(math.isnan(t) for t in out):
        raise ValueError(f"{name} must be numbers, got {tuple(out)}")
    return tuple(out)


def check_logits(logits: torch.Tensor, name: str = "logits") -> None:
    """Raise unless ``logits`` is a floating-point tensor ``(num_exits, N, num_classes)``."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (num_exits, N, num_classes), got {type(logits).__name__}")
    if logits.ndim != 3:
        raise ValueError(f"{name} must have shape (num_exits, N, num_classes), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be floating point (the exits' raw scores before softmax), got {logits.dtype}: "
                        f"class indices or rounded values are not logits")


def check_max_candidates(max_candidates: int) -> None:
    """Raise a ValueError unless ``max_candidates`` (how many thresholds a calibration tries) is an integer >= 2."""
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, numbers.Integral) or max_candidates < 2:
        raise ValueError(f"max_candidates must be an integer >= 2 (quantiles of the scores from the lowest to the "
                         f"highest are tried as thresholds), got {max_candidates!r}")
