"""How busy the machine is, and how many CPU threads PyTorch should use on it.

A lecture laptop is rarely idle: a browser, a video call, the slides. PyTorch starts one thread
per core and splits every operation between them; when another program holds one of the cores,
the threads wait for each other on it, and a notebook runs several times slower (chapter 3 took
11 s on an idle 2-core machine, 70 s with one other busy process, 18 s with one thread).

:func:`machine_load` measures the CPU time that *other* programs use over a short window (Linux:
``/proc/stat`` for the CPUs this process may run on, minus this process's own CPU time; elsewhere
the 1-minute load average; unknown on Windows). :func:`choose_threads` then gives PyTorch one
thread per CPU that other work leaves free, at least one and at most PyTorch's own default;
``EELIB_THREADS`` (or an explicit ``OMP_NUM_THREADS``) sets the number instead.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ENV_THREADS = "EELIB_THREADS"
PROC_STAT = Path("/proc/stat")
BUSY_CPU = 0.5  # a CPU counts as taken when other work uses more than half of it
WINDOW = 0.25  # seconds over which /proc/stat is sampled


@dataclass(frozen=True)
class MachineLoad:
    """CPU use by other work, measured while this process waited.

    Attributes:
        cpus: the logical CPUs this process may run on.
        busy: how many of them other work kept busy (0.98 = one CPU almost fully); None when
            this system has no way to tell.
        source: how it was measured.
    """

    cpus: int
    busy: float | None
    source: str

    @property
    def free(self) -> int:
        """CPUs that other work leaves free (a CPU used up to ``BUSY_CPU`` counts as free); all when unknown."""
        if self.busy is None:
            return self.cpus
        taken = max(0, math.ceil(round(self.busy - BUSY_CPU, 6)))
        return max(0, self.cpus - taken)

    @property
    def loaded(self) -> bool:
        """Whether other work takes a CPU (timings made now are slower and noisier than on an idle machine)."""
        return self.free < self.cpus

    def __str__(self) -> str:
        if self.busy is None:
            return f"{self.cpus} CPUs, load unknown ({self.source})"
        return f"{self.cpus} CPUs, {self.busy:.2f} kept busy by other programs ({self.source})"


def _affinity() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def read_proc_stat(text: str, cpus: list[int] | None) -> tuple[float, float]:
    """(busy, total) jiffies of the given CPUs (all when None) from the text of ``/proc/stat``."""
    busy = total = 0.0
    for line in text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu"):
            continue
        if (cpus is None) != (name == "cpu") or (cpus is not None and int(name[3:]) not in cpus):
            continue
        values = [float(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        values += [0.0] * (8 - len(values))
        idle = values[3] + values[4]
        busy += sum(values) - idle
        total += sum(values)
    return busy, total


def machine_load(window: float = WINDOW, *, read: Callable[[], str] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 own_cpu: Callable[[], float] = time.process_time) -> MachineLoad:
    """Measure how many CPUs other programs keep busy (see the module docstring).

    Args:
        window: seconds to sample ``/proc/stat`` over (this process sleeps meanwhile).
        read: returns the text of ``/proc/stat`` (tests pass a fake); default: the file, where it exists.
        sleep, own_cpu: the wait and this process's CPU seconds (tests pass fakes).
    """
    if window <= 0:
        raise ValueError(f"window must be > 0 seconds, got {window!r}")
    affinity = _affinity()
    cpus = len(affinity) if affinity else (os.cpu_count() or 1)
    if read is None and PROC_STAT.is_file():
        read = PROC_STAT.read_text
    if read is not None:
        (busy0, total0), own0 = read_proc_stat(read(), affinity), own_cpu()
        sleep(window)
        (busy1, total1), own1 = read_proc_stat(read(), affinity), own_cpu()
        if total1 > total0:
            share = (busy1 - busy0) / (total1 - total0)  # of all the CPUs' time in the window
            # our own threads (PyTorch's pool may spin for a moment after an operation) are not other work
            busy = max(0.0, share * cpus - (own1 - own0) / window)
            return MachineLoad(cpus, round(min(busy, cpus), 2), f"/proc/stat over {window:.2f} s")
    if hasattr(os, "getloadavg"):
        return MachineLoad(cpus, round(min(os.getloadavg()[0], cpus), 2), "1-minute load average")
    return MachineLoad(cpus, None, f"no load measurement on {sys.platform}")


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`choose_threads` decided, and why."""

    threads: int
    default: int
    load: MachineLoad
    reason: str

    def __str__(self) -> str:
        return f"PyTorch uses {self.threads} CPU thread(s) (its default here: {self.default}): {self.reason}"


_DEFAULT_THREADS: list[int] = []  # PyTorch's own thread count, read at the first choice


def default_threads() -> int:
    """PyTorch's thread count before eelib first changed it."""
    if not _DEFAULT_THREADS:
        _DEFAULT_THREADS.append(torch.get_num_threads())
    return _DEFAULT_THREADS[0]


def choose_threads(*, load: MachineLoad | None = None, apply: bool = True) -> ThreadChoice:
    """Give PyTorch one CPU thread per CPU that other work leaves free (at least 1, at most its default).

    Call it again when the machine's load changes (a video call started). ``EELIB_THREADS=N`` sets
    the number instead; an explicit ``OMP_NUM_THREADS`` is left as it is (the user chose).

    Args:
        load: the measured load (default: :func:`machine_load` now).
        apply: set ``torch.set_num_threads`` (False: only say what would be chosen).
    """
    default = default_threads()
    wanted = os.environ.get(ENV_THREADS, "").strip()
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise ValueError(f"{ENV_THREADS}={wanted!r}: a positive number of threads is needed, e.g. {ENV_THREADS}=1")
        threads, reason = int(wanted), f"{ENV_THREADS}={wanted}"
        load = load or MachineLoad(os.cpu_count() or 1, None, f"not measured ({ENV_THREADS} is set)")
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        threads = torch.get_num_threads()
        reason = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS'].strip()} is set, left as it is"
        load = load or MachineLoad(os.cpu_count() or 1, None, "not measured (OMP_NUM_THREADS is set)")
    else:
        load = load or machine_load()
        threads = max(1, min(default, load.free))
        if load.busy is None:
            reason = f"the machine's load cannot be measured here ({load.source})"
        elif threads < default:
            reason = (f"other programs keep {load.busy:.2f} of {load.cpus} CPUs busy; more threads than free "
                      "CPUs would wait for each other and slow every cell down")
        else:
            reason = f"other programs keep {load.busy:.2f} of {load.cpus} CPUs busy"
    if apply:
        torch.set_num_threads(threads)
    return ThreadChoice(threads, default, load, reason)
