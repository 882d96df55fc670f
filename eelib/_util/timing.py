"""Wall-clock timing, synchronised on the device of the tensors being timed.

`timed` times one call; `interleaved` times several calls side by side (one run of each in turn,
``repeats`` rounds), so that a slow moment of the machine falls on all of them alike. Speed ratios
in the course come from `interleaved` runs, never from calls timed at different moments.
"""

from __future__ import annotations

import time
from typing import Callable, Hashable, Mapping, TypeVar

import torch

K = TypeVar("K", bound=Hashable)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait until every kernel queued on ``device`` has finished (nothing to wait for on the CPU).

    Timings call this before reading the clock: GPU work is queued, so without it a timer
    measures how fast work is *queued*, not done. ``device`` is the device of the tensors being
    timed (``cuda:1`` waits for GPU 1, not for the current GPU).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], object], device: torch.device | str | None = None) -> float:
    """Seconds that ``fn()`` takes, synchronised on ``device`` before and after (see :func:`synchronize`).

    The one timing helper of eelib: every measured call and every speed ratio goes through it (the generation
    loops also stamp each token's or round's time with ``time.perf_counter`` as they go, after the step's
    one host sync, for their per-step records).
    """
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(calls: Mapping[K, Callable[[], object]], repeats: int,
                device: torch.device | str | None = None) -> dict[K, list[float]]:
    """Every call timed ``repeats`` times by `timed`, interleaved: round after round, one run of each in turn.

    Returns each call's ``repeats`` times, in seconds (callers usually keep the fastest, the least
    disturbed by other work). A warm-up, when wanted, is the caller's: it is not timed.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    runs: dict[K, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            runs[key].append(timed(fn, device))
    return runs
