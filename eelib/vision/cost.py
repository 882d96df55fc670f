"""What each exit costs: FLOPs and parameters (counted by PyTorch), latency (measured), energy (estimated).

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` while the model runs
on one image — no hand-written formulas. It counts 2 FLOPs per multiply-accumulate of
convolutions and matrix products (the layers that dominate a ResNet); batch norm, relu and
pooling are not counted. A sample that leaves at exit ``k`` has paid for the backbone up to
the exit's attach point **and for every head evaluated on the way** (heads ``0..k``): an exit
that rarely fires still costs everyone who passes it.

The energy functions (``energy_estimate``, ``measure_energy``, the ``JOULES_PER_FLOP`` assumption)
live in :mod:`eelib._util.energy`, shared with the language half, and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eelib._util.eval_mode import eval_mode
from eelib._util.flops import count_flops
from eelib._util.energy import (JOULES_PER_FLOP, RAPL_ROOT, energy_counter,  # noqa: F401 (chapter 3's names)
                                energy_estimate, measure_energy)
from eelib._util.timing import Timings, interleaved, measure
from eelib.vision.exits import EarlyExitNet
from eelib.vision.resnet import ResNet
from eelib.errors import EnergyUnavailable  # noqa: F401 (raised by measure_energy; its old home)
from eelib.policies import FlopsPerExit


@dataclass(frozen=True)
class ExitCosts(FlopsPerExit):
    """FLOPs and parameters per exit for one input size (per sample).

    Attributes:
        exit_names: one per exit.
        backbone_flops: FLOPs of the backbone up to each exit's attach point (cumulative).
        head_flops: FLOPs of each exit's own head (the last: the backbone's classifier).
        flops: the cost of a sample that leaves at each exit: ``backbone_flops[k] + sum(head_flops[:k+1])``.
        full_flops: the backbone with its classifier and no exits — the reference for savings.
        params: parameters a sample leaving at each exit has used (backbone up to it + heads 0..k).
        full_params: parameters of the backbone alone.
        input_shape: ``(C, H, W)`` of the image the counts are for.
    """

    exit_names: tuple[str, ...]
    backbone_flops: tuple[int, ...]
    head_flops: tuple[int, ...]
    flops: tuple[int, ...]
    full_flops: int
    params: tuple[int, ...]
    full_params: int
    input_shape: tuple[int, int, int]

    def rows(self) -> list[dict]:
        """One dict per exit, for printing a table."""
        return [dict(exit=name, backbone_mflops=b / 1e6, head_mflops=h / 1e6, mflops=f / 1e6,
                     relative=f / self.full_flops, params=p)
                for name, b, h, f, p in zip(self.exit_names, self.backbone_flops, self.head_flops, self.flops,
                                             self.params)]


def default_input_shape(model: EarlyExitNet) -> tuple[int, int, int]:
    """The course's image size for the backbone: 1x28x28 (MNIST), 3x32x32 (CIFAR-10), 3x224x224 (torchvision)."""
    if isinstance(model.backbone, ResNet):
        return (1, 28, 28) if model.in_channels == 1 else (3, 32, 32)
    return (3, 224, 224)


def _n_params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _architecture(model: EarlyExitNet) -> tuple:
    """What the counts depend on besides the input size: every module's kind, its settings (kernel,
    stride, features, a head's pooling grid) and its parameters' shapes. A replaced head of another
    shape gives another key; new weights of the same shapes do not (FLOPs do not depend on them)."""
    return tuple((name, type(m).__qualname__, m.extra_repr(), getattr(m, "pool_size", None),
                  tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
                 for name, m in model.named_modules())


def exit_costs(model: EarlyExitNet, input_shape: tuple[int, int, int] | None = None) -> ExitCosts:
    """Count the FLOPs and parameters of every exit of ``model`` for one image of ``input_shape``.

    The result depends only on the architecture and the input size; it is cached on the model, and
    counted again when the architecture changes (e.g. a head replaced by one of another shape).
    """
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
    if len(shape) != 3 or shape[0] != model.in_channels:
        raise ValueError(f"input_shape must be (C, H, W) with C = in_channels = {model.in_channels}, got {shape}")
    cache = model.__dict__.setdefault("_eelib_costs", {})
    key = (shape, _architecture(model))
    if key in cache:
        return cache[key]
    param = next(model.parameters())
    x = torch.zeros((1, *shape), dtype=param.dtype, device=param.device)
    backbone, heads, params = [], [], []
    total, start = 0, 0
    with eval_mode(model):
        for k in range(model.num_exits):
            total += count_flops(model.segment, k, x)
            with torch.no_grad():
                x_next = model.segment(k, x)
            backbone.append(total)
            heads.append(count_flops(model.head, k, x_next))
            x = x_next
            end = model._ends[k]
            head_module = model.heads[k] if k < model.num_exits - 1 else model.backbone.fc
            params.append(_n_params([u for _, u in model._units[start:end]]) + _n_params([head_module]))
            start = end
    flops = [b + sum(heads[:k + 1]) for k, b in enumerate(backbone)]
    cum_params = [sum(params[:k + 1]) for k in range(len(params))]
    costs = ExitCosts(model.exit_names, tuple(backbone), tuple(heads), tuple(flops), backbone[-1] + heads[-1],
                      tuple(cum_params), _n_params([model.backbone]), shape)
    cache[key] = costs
    return costs


def _timed_runs(fns, x, repeats: int, warmup: int) -> list[list[float]]:
    """Every repeat of every function on ``x``, interleaved (one run of each in turn), so that a
    disturbance of the machine falls on all of them alike."""
    with torch.inference_mode():
        for fn in fns:
            for _ in range(warmup):
                fn(x)
        runs = interleaved({k: (lambda fn=fn: fn(x)) for k, fn in enumerate(fns)}, repeats, x.device)
    return [runs[k] for k in range(len(fns))]


def latency_per_exit(model: EarlyExitNet, x: torch.Tensor, *, repeats: int = 20, warmup: int = 3,
                     all_runs: bool = False) -> list[float] | list[list[float]]:
    """Wall-clock seconds to compute exit ``k`` alone on batch ``x`` (backbone up to it + its head).

    Measured on ``x``'s device (:func:`eelib._util.timing.timed` synchronises it), in eval mode; the fastest of ``repeats``
    runs counts (the least disturbed by other work, as in :func:`eelib.vision.dynamic.measure_speedup`).
    The last value is the full backbone with its own classifier, no early heads. With
    ``all_runs`` every exit's ``repeats`` times are returned instead (for a figure of the spread).
    """
    model.check_input(x)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    with eval_mode(model):
        fns = [lambda inp, k=k: model.forward_until(inp, k) for k in range(model.num_exits - 1)] + [model.backbone]
        runs = _timed_runs(fns, x, repeats, warmup)
    return runs if all_runs else [min(r) for r in runs]


def exit_timings(model: EarlyExitNet, x: torch.Tensor, *, min_repeats: int = 3, max_repeats: int = 100,
                 budget: float = 5.0, tolerance: float = 0.05, warmup: int = 3) -> Timings[str]:
    """Time exit ``k`` alone on batch ``x`` (as :func:`latency_per_exit`) until the runs agree or ``budget`` is spent.

    The exits are timed in interleaved rounds by :func:`eelib._util.timing.measure`: after
    ``min_repeats`` rounds, timing stops once every exit's median run is within ``tolerance`` of its
    fastest, or after ``budget`` seconds (``max_repeats`` rounds at most). The result is keyed by exit
    name (the last: the full backbone with its own classifier); it keeps every run and the
    machine's load, checks orderings against the spread (``.order(model.exit_names)``: every
    later exit should take longer) and warns when the timings are not to be trusted.
    """
    model.check_input(x)
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    with eval_mode(model):
        fns = [lambda inp, k=k: model.forward_until(inp, k) for k in range(model.num_exits - 1)] + [model.backbone]
        with torch.inference_mode():
            for fn in fns:
                for _ in range(warmup):
                    fn(x)
            return measure({name: (lambda fn=fn: fn(x)) for name, fn in zip(model.exit_names, fns)},
                           min_repeats=min_repeats, max_repeats=max_repeats, budget=budget, tolerance=tolerance,
                           device=x.device)
