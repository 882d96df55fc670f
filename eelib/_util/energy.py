"""Energy: an estimate from the FLOPs (both halves use the same assumption), and a measurement where
the machine has a counter (Linux's RAPL for the CPU, NVML for an NVIDIA GPU).

The estimate counts arithmetic only (:data:`JOULES_PER_FLOP`); chapter 3 uses it per image, chapter
7 per generated token (:func:`eelib.lm.energy.generation_energy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from eelib._util.timing import synchronize
from eelib.errors import EnergyUnavailable

# Energy of arithmetic only: a 32-bit float multiply (3.7 pJ) plus add (0.9 pJ) in 45 nm CMOS
# (Horowitz, ISSCC 2014) is ~4.6 pJ per multiply-accumulate = 2.3 pJ per FLOP. Memory traffic,
# which often costs more than the arithmetic, is left out: an estimate of the lower bound.
JOULES_PER_FLOP = 2.3e-12


def energy_estimate(flops: float, *, joules_per_flop: float = JOULES_PER_FLOP) -> float:
    """An **estimate** of energy in joules: ``flops * joules_per_flop``.

    The default counts arithmetic only (2.3 pJ per 32-bit FLOP, 45 nm; see ``JOULES_PER_FLOP``):
    memory access, idle power and the rest of the machine are not included, so real energy is
    higher. It is useful for comparing exits, not as a measurement.
    """
    if flops < 0 or joules_per_flop <= 0:
        raise ValueError(f"flops must be >= 0 and joules_per_flop > 0, got {flops}, {joules_per_flop}")
    return flops * joules_per_flop


# --- measured energy, where the machine has a counter ---------------------------------------------

RAPL_ROOT = Path("/sys/class/powercap")  # Linux's RAPL energy counters (Intel and AMD CPUs)


def energy_counter(device: torch.device | str | None = None) -> Callable[[], float]:
    """A function returning a running energy count in joules, for ``device``:

    * CUDA: the GPU's total energy counter through NVML (``pip install nvidia-ml-py``; NVIDIA
      GPUs from Volta on), the whole board;
    * CPU: Linux's RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``, summed
      over the packages; readable by root only on most systems), the whole CPU package, so any
      other work on the machine is counted too.

    Raises :class:`EnergyUnavailable`, naming what is missing, where neither can be read.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        try:
            import pynvml
        except ImportError:
            raise EnergyUnavailable("no NVML: pip install nvidia-ml-py to read the GPU's energy counter") from None
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except pynvml.NVMLError as err:
            raise EnergyUnavailable(f"NVML cannot read this GPU's energy counter: {err}") from None
        return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3  # millijoules
    if device.type != "cpu":
        raise EnergyUnavailable(f"no energy counter for device type {device.type!r} (only cuda and cpu)")
    zones = sorted(p for p in RAPL_ROOT.glob("intel-rapl:*") if p.name.count(":") == 1)  # packages, not subzones
    if not zones:
        raise EnergyUnavailable(f"no RAPL counters under {RAPL_ROOT} (a virtual machine, or not Linux)")
    try:
        ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]
        [int((z / "energy_uj").read_text()) for z in zones]
    except (OSError, ValueError) as err:
        raise EnergyUnavailable(f"the RAPL counters cannot be read ({err}); they are usually root-only") from None
    state = {"last": [int((z / "energy_uj").read_text()) for z in zones], "total": 0}

    def read() -> float:
        now = [int((z / "energy_uj").read_text()) for z in zones]
        for i, (before, after) in enumerate(zip(state["last"], now)):
            state["total"] += after - before if after >= before else after + ranges[i] - before  # the counter wrapped
        state["last"] = now
        return state["total"] / 1e6

    return read


def measure_energy(fn: Callable[[], object], device: torch.device | str | None = None, *,
                   repeats: int = 20) -> float:
    """Measured joules per call of ``fn`` (the average over ``repeats`` calls, after one warm-up),
    from :func:`energy_counter`: the whole CPU package or GPU board, idle power included, so
    compare runs made side by side. Raises :class:`EnergyUnavailable` where there is no counter."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    read = energy_counter(device)
    fn()
    synchronize(device)
    start = read()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (read() - start) / repeats
