"""What both halves of eelib share and no slide is about: ``device`` (where to compute, seeding),
``timing`` (synchronised wall-clock timing), ``load`` (the machine's load, PyTorch's thread count),
``flops`` (the one FLOP counter), ``energy`` (energy estimated from FLOPs, or measured), ``eval_mode``
(evaluation mode, restored on the way out), ``cache`` (cache folders, atomic writes, verified downloads),
``validation`` (argument checks), ``progress`` (progress bars)."""

import importlib


def lazy_submodules(package: str, names: tuple[str, ...]):
    """A module ``__getattr__`` that imports ``package.<name>`` on first use, for the names given."""

    def __getattr__(name: str):
        if name in names:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_submodules(__name__, ("cache", "device", "energy", "eval_mode", "flops", "load", "progress", "timing",
                                                "validation"))
