"""Device choice, seeding and reproducible training: one place that decides where tensors live.

`get_device()` prefers CUDA, then Apple's MPS, then the CPU; the environment variable
``EELIB_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) overrides the choice, e.g. to run a
notebook on the CPU of a machine that has a GPU.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch

from eelib._util.eval_mode import eval_mode  # noqa: F401  (here before the split: old code imports them from here)
from eelib._util.timing import synchronize, timed  # noqa: F401

ENV_DEVICE = "EELIB_DEVICE"
_KINDS = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(preferred: str | None = None) -> torch.device:
    """Return the device the course computes on.

    Args:
        preferred: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``. When None, the environment
            variable ``EELIB_DEVICE`` is used if set, else CUDA, else MPS, else the CPU.

    Returns:
        The chosen ``torch.device``.

    Raises:
        ValueError: the requested device is not a known kind, or is not available here.
    """
    choice = preferred if preferred is not None else os.environ.get(ENV_DEVICE, "").strip()
    if isinstance(choice, str) and not choice:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    return _checked(choice, "preferred" if preferred is not None else ENV_DEVICE)


def resolve_device(device: str | torch.device | None, *, name: str = "device") -> torch.device:
    """The device a function's ``device=`` argument asks for, checked: None is `get_device()`'s choice.

    Every eelib function that takes ``device=`` resolves it here, so that ``"gpu"``, or ``"cuda"`` on a
    machine without one, gets one clear ValueError naming the argument and what is allowed.
    """
    return get_device() if device is None else _checked(device, name)


def _checked(choice: str | torch.device, source: str) -> torch.device:
    if not isinstance(choice, (str, torch.device)):
        raise TypeError(f"{source} must be a device name such as 'cpu' or 'cuda', or a torch.device; "
                        f"got {type(choice).__name__} {choice!r}")
    instead = "use 'cpu'" + (f" or unset {ENV_DEVICE}" if source == ENV_DEVICE else " or leave it out")
    try:
        device = torch.device(choice)
    except RuntimeError as err:
        raise ValueError(f"{source}={choice!r} is not a device; allowed: {', '.join(_KINDS)} "
                         f"(cuda may carry an index, e.g. 'cuda:0')") from err
    if device.type not in _KINDS:
        raise ValueError(f"{source}={choice!r} is not supported; allowed: {', '.join(_KINDS)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{source}={str(choice)!r} asks for CUDA, but no CUDA GPU is available here; {instead}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{source}={str(choice)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"{source}={str(choice)!r} asks for Apple MPS, which is not available here; {instead}")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices) so that a run can be repeated.

    On the CPU, the same seed gives the same results. On a GPU some kernels are not
    deterministic, so results may differ in the last digits.

    Args:
        seed: a non-negative integer.

    Returns:
        A ``torch.Generator`` seeded with ``seed``, for data loaders and sampling.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


TRAINING_THREADS = 1  # CPU threads for the course models' training (see reproducible_training)


@contextlib.contextmanager
def reproducible_training(device: torch.device | str | None = None) -> Iterator[None]:
    """Settings under which training gives the same weights on every machine of the same kind.

    On the CPU, PyTorch splits reductions (batch norm's statistics and gradients, the sums in
    a convolution's weight gradient) between its threads, so the result depends on the number
    of threads: the same seed trained with 1 and with 2 threads gave weights that differ by up
    to 0.2 after one epoch. Inside this block the CPU uses ``TRAINING_THREADS`` (1) threads, so
    the thread count of the machine no longer matters. On CUDA, cuDNN is asked for deterministic
    kernels and no benchmarking (same GPU model and software, same weights). The previous
    settings are restored afterwards.

    What still differs: another PyTorch version, another CPU instruction set (oneDNN picks
    AVX2, AVX-512 or ARM kernels, which round differently), and a GPU against a CPU.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    threads = torch.get_num_threads()
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark)
    try:
        if device.type == "cpu":
            torch.set_num_threads(TRAINING_THREADS)
        cudnn.deterministic, cudnn.benchmark = True, False
        yield
    finally:
        torch.set_num_threads(threads)
        cudnn.deterministic, cudnn.benchmark = saved
