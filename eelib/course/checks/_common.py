"""Helpers that the checks of more than one chapter use.

* ``student_check``: the decorator every ``check_*`` wears; whatever the student's answer, the
  check ends in an ``AssertionError`` with a hint (or the exercise's own ``NotImplementedError``),
  never in a crash from inside the check;
* ``_call``: run the student's function, turning a crash into an ``AssertionError`` that says so,
  and a missing ``return`` into "your function returned None";
* ``_tensor``, ``_tolerance``, ``_close``: a returned value as a CPU tensor (any device, any
  dtype, a list of numbers or of tensors), compared within a tolerance that fits its dtype;
* ``_tiny_exit_net``: a small early-exit ResNet and a batch, from a fixed seed.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from eelib.vision.resnet import ResNet, ResNetConfig


def student_check(check: Callable) -> Callable:
    """Make ``check`` end in an ``AssertionError`` (or the exercise's ``NotImplementedError``) whatever
    the answer returns: an answer of an unexpected kind that the check's own comparisons trip over is
    reported as a wrong answer, with what to look at."""

    @functools.wraps(check)
    def run(answer: Callable) -> None:
        try:
            return check(answer)
        except (NotImplementedError, AssertionError):
            raise
        except Exception as err:
            raise AssertionError(f"{check.__name__} could not compare your answer with the reference "
                                 f"({type(err).__name__}: {err}). Hint: check the kind, shape and dtype of what "
                                 f"your function returns against the exercise's description.") from err

    return run


def _call(name: str, fn: Callable, *args):
    try:
        result = fn(*args)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:
        raise AssertionError(f"{name} raised {type(err).__name__}: {err}. Hint: read the error above.") from err
    if result is None:
        raise AssertionError(returned_none(name))
    return result


def returned_none(name: str) -> str:
    return (f"{name}: your function returned None. Hint: end it with `return ...` of the value it computes "
            f"(a function without a return statement returns None).")


def _tensor(name: str, value, what: str) -> torch.Tensor:
    """``value`` (a tensor on any device, a NumPy array, a list of numbers or of tensors) as a detached
    CPU tensor; an ``AssertionError`` naming ``what`` was expected when it is none of these."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        parts = [v.detach().cpu() for v in value]
        if len({p.shape for p in parts}) != 1:
            raise AssertionError(f"{name} returned tensors of different shapes {[tuple(p.shape) for p in parts]}; "
                                 f"expected {what}")
        return torch.stack(parts)
    try:
        return torch.as_tensor(value)
    except Exception as err:
        raise AssertionError(f"{name} returned {type(value).__name__}; expected {what}") from err


def _tolerance(dtype: torch.dtype, atol: float, scale: float = 1.0) -> float:
    """An absolute tolerance for an answer computed in ``dtype``: ``atol`` in float32 or float64, wider
    in half precision (float16, bfloat16), whose rounding alone exceeds it."""
    if not dtype.is_floating_point or torch.finfo(dtype).bits > 16:
        return atol
    return max(atol, 8 * torch.finfo(dtype).eps * max(1.0, scale))


def _close(got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float = 0.0) -> bool:
    """Same shape and values within ``atol`` (widened for a half-precision ``got``), in float64 on the CPU."""
    if got.shape != expected.shape:
        return False
    expected = expected.detach().cpu().double()
    tol = _tolerance(got.dtype, atol, expected.abs().max().item() if expected.numel() else 1.0)
    return torch.allclose(got.detach().cpu().double(), expected, atol=tol, rtol=rtol)


def _tiny_exit_net(seed: int = 0):
    from eelib.vision.exits import EarlyExitNet

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = EarlyExitNet(ResNet(ResNetConfig(depth=8, width=4)), ("stem", "layer1", "layer2"), pool_size=2)
        x = torch.randn(40, 1, 12, 12)
    return model.eval(), x
