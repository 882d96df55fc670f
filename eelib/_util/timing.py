"""Wall-clock timing, synchronised on the device of the tensors being timed.

`timed` times one call; `interleaved` times several calls side by side (one run of each in turn,
``repeats`` rounds), so that a slow moment of the machine falls on all of them alike. Speed ratios
in the course come from interleaved runs, never from calls timed at different moments.

`measure` is what a lecture's timing cell uses on a laptop that is rarely idle: interleaved rounds
until every call's runs agree (the median within ``tolerance`` of the fastest) or a time budget is
spent, the machine's load measured before and after (:mod:`eelib._util.load`), and a
:class:`Timings` that says whether its numbers can be trusted, and which of the orderings a text
relies on hold beyond the spread (:meth:`Timings.order`, every pair). `watch_load` does the load
part for code that times itself.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Mapping, Sequence, TypeVar

import torch

from eelib._util.load import MachineLoad, machine_load

K = TypeVar("K", bound=Hashable)
Clock = Callable[[], float]


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


def timed(fn: Callable[[], object], device: torch.device | str | None = None, *,
          clock: Clock | None = None) -> float:
    """Seconds that ``fn()`` takes, synchronised on ``device`` before and after (see :func:`synchronize`).

    The one timing helper of eelib: every measured call and every speed ratio goes through it (the generation
    loops also stamp each token's or round's time with ``time.perf_counter`` as they go, after the step's
    one host sync, for their per-step records).
    """
    clock = clock or time.perf_counter  # looked up now: tests replace time.perf_counter
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


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


# --- timings that survive a busy laptop --------------------------------------------------------------

def _spread(runs: Sequence[float]) -> float:
    fastest, median = min(runs), statistics.median(runs)
    if fastest <= 0:
        return 0.0 if median <= 0 else float("inf")
    return median / fastest - 1


def _busier(a: MachineLoad, b: MachineLoad) -> MachineLoad:
    if a.busy is None or (b.busy is not None and b.busy > a.busy):
        return b
    return a


def load_warning(load: MachineLoad) -> str:
    """A warning for timings made under ``load`` ("" when other programs left every CPU free)."""
    if not load.loaded:
        return ""
    return (f"WARNING: other programs kept {load.busy:.2f} of {load.cpus} CPUs busy while timing: the times are "
            "slower and noisier than on an idle machine, the ratios between them can be far off, and an order can "
            "even come out reversed. Close what you can (a video call, browser tabs) and run the cell again.")


class LoadWatch:
    """``with watch_load() as watch: ...`` measures the machine's load before and after the block.

    For code that times itself; ``watch.load`` is the busier reading, ``watch.warning`` says whether
    the timings made inside can be trusted (see :func:`load_warning`).
    """

    def __init__(self, load: Callable[[], MachineLoad] | None = None):
        self._measure = load or machine_load
        self.before: MachineLoad | None = None
        self.after: MachineLoad | None = None

    def __enter__(self) -> "LoadWatch":
        self.before = self._measure()
        return self

    def __exit__(self, *exc) -> None:
        self.after = self._measure()

    @property
    def load(self) -> MachineLoad:
        if self.before is None or self.after is None:
            raise RuntimeError("the load is known once the with block has ended")
        return _busier(self.before, self.after)

    @property
    def warning(self) -> str:
        return load_warning(self.load)

    def __str__(self) -> str:
        return f"machine load while timing: {self.load}" + (f"\n{self.warning}" if self.warning else "")


def watch_load(load: Callable[[], MachineLoad] | None = None) -> LoadWatch:
    """A :class:`LoadWatch` (``load`` measures the load; tests pass a fake)."""
    return LoadWatch(load)


@dataclass(frozen=True)
class OrderCheck(Generic[K]):
    """Whether calls expected fastest first keep that order beyond their spread (every pair, see :meth:`Timings.order`).

    Attributes:
        expected: the calls, expected fastest first.
        reversed: pairs ``(a, b)`` expected ``a`` faster, where ``b`` is faster beyond the spread.
        unresolved: pairs whose spreads overlap: their order is noise.
    """

    expected: tuple[K, ...]
    reversed: tuple[tuple[K, K], ...]
    unresolved: tuple[tuple[K, K], ...]

    @property
    def holds(self) -> bool:
        return not self.reversed and not self.unresolved

    def __str__(self) -> str:
        pairs = len(self.expected) * (len(self.expected) - 1) // 2
        text = f"{pairs - len(self.reversed) - len(self.unresolved)} of {pairs} pairs in the expected order beyond the spread"
        if self.unresolved:
            text += "; order within the noise: " + ", ".join(f"{a}/{b}" for a, b in self.unresolved)
        if self.reversed:
            text += "; REVERSED beyond the noise: " + ", ".join(f"{b} faster than {a}" for a, b in self.reversed)
        return text


@dataclass(frozen=True)
class Timings(Generic[K]):
    """Interleaved timings of several calls (:func:`measure`).

    A call's time is its fastest run (the least disturbed by other work); its spread runs from the
    fastest to the median run. One call is faster than another *beyond the spread* when its median
    is below the other's fastest run.

    Attributes:
        runs: every run of each call, in seconds, in the order run.
        load: the machine's load, the busier of the readings before and after timing.
        seconds: wall-clock seconds spent timing.
        tolerance: the spread under which a call's runs count as settled.
    """

    runs: Mapping[K, tuple[float, ...]]
    load: MachineLoad
    seconds: float
    tolerance: float

    def fastest(self, key: K) -> float:
        return min(self.runs[key])

    def median(self, key: K) -> float:
        return statistics.median(self.runs[key])

    def spread(self, key: K) -> float:
        """``median / fastest - 1``: 0.03 means the typical run was 3% slower than the fastest."""
        return _spread(self.runs[key])

    @property
    def rounds(self) -> int:
        return min(len(r) for r in self.runs.values())

    @property
    def settled(self) -> bool:
        """Whether every call's spread is within the tolerance."""
        return all(self.spread(k) <= self.tolerance for k in self.runs)

    @property
    def trusted(self) -> bool:
        """Settled, and measured while other programs left every CPU free."""
        return self.settled and not self.load.loaded

    def faster(self, a: K, b: K) -> bool:
        """Whether ``a`` is faster than ``b`` beyond the spread (``a``'s median below ``b``'s fastest run)."""
        return self.median(a) < self.fastest(b)

    def order(self, expected: Sequence[K]) -> OrderCheck[K]:
        """Check every pair of ``expected`` (fastest first), not only neighbours, against the spread."""
        unknown = [k for k in expected if k not in self.runs]
        if unknown:
            raise ValueError(f"expected names calls that were not timed: {unknown}; timed: {list(self.runs)}")
        reversed_, unresolved = [], []
        for i, a in enumerate(expected):
            for b in expected[i + 1:]:
                if self.faster(b, a):
                    reversed_.append((a, b))
                elif not self.faster(a, b):
                    unresolved.append((a, b))
        return OrderCheck(tuple(expected), tuple(reversed_), tuple(unresolved))

    @property
    def warning(self) -> str:
        """What makes these timings untrustworthy, and what to do ("" when they can be trusted)."""
        parts = [load_warning(self.load)] if self.load.loaded else []
        if not self.settled:
            noisy = ", ".join(f"{k} {100 * self.spread(k):.0f}%" for k in self.runs if self.spread(k) > self.tolerance)
            parts.append(f"WARNING: after {self.rounds} rounds ({self.seconds:.1f} s) the runs still spread by more than "
                         f"{100 * self.tolerance:.0f}% (median over fastest): {noisy}. The machine was disturbed "
                         "while timing: trust only differences larger than the spread.")
        return "\n".join(parts)

    def __str__(self) -> str:
        worst = max(self.spread(k) for k in self.runs)
        text = (f"{len(self.runs)} calls timed in {self.rounds} interleaved rounds ({self.seconds:.1f} s); spread "
                f"(median over fastest run) at most {100 * worst:.1f}%, settled under {100 * self.tolerance:.0f}%: "
                f"{'yes' if self.settled else 'no'} | machine: {self.load}")
        return text + (f"\n{self.warning}" if self.warning else "")


def measure(calls: Mapping[K, Callable[[], object]], *, min_repeats: int = 3, max_repeats: int = 100,
            budget: float = 5.0, tolerance: float = 0.05, device: torch.device | str | None = None,
            clock: Clock | None = None, load: Callable[[], MachineLoad] | None = None) -> Timings[K]:
    """Time ``calls`` in interleaved rounds until their runs agree or ``budget`` seconds are spent.

    After at least ``min_repeats`` rounds, timing stops as soon as every call's spread (median run
    over fastest run, minus 1) is at most ``tolerance``; else when ``budget`` seconds have gone by
    or after ``max_repeats`` rounds. A warm-up, when wanted, is the caller's.

    Args:
        calls: name -> a function of no arguments to time.
        device: synchronised before and after each run (:func:`timed`).
        clock, load: the clock (default ``time.perf_counter``) and the load measurement (default
            :func:`eelib._util.load.machine_load`); tests pass fakes.
    """
    clock = clock or time.perf_counter
    load = load or machine_load
    for name, value in (("min_repeats", min_repeats), ("max_repeats", max_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_repeats < min_repeats:
        raise ValueError(f"max_repeats ({max_repeats}) must be >= min_repeats ({min_repeats})")
    if budget <= 0 or tolerance <= 0:
        raise ValueError(f"budget (seconds) and tolerance must be > 0, got {budget!r}, {tolerance!r}")
    if not calls:
        raise ValueError("calls is empty: nothing to time")
    before = load()
    runs: dict[K, list[float]] = {key: [] for key in calls}
    start = clock()
    for done in range(1, max_repeats + 1):
        for key, fn in calls.items():
            runs[key].append(timed(fn, device, clock=clock))
        if done < min_repeats:
            continue
        if max(_spread(r) for r in runs.values()) <= tolerance or clock() - start >= budget:
            break
    seconds = clock() - start
    return Timings({k: tuple(v) for k, v in runs.items()}, _busier(before, load()), seconds, tolerance)
