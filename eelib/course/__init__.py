"""What only the course's notebooks use: ``plots`` (figures), ``widgets`` (lecture sliders),
``checks`` (exercise checks), ``quiz`` (concept checks), ``slides`` (reveal.js slides), ``exercises``
(exercise notebooks from the solutions), ``grading`` (nbgrader) and ``cli`` (``python -m eelib.course``:
exercises, headless runs, models).

The library (:mod:`eelib.vision`, :mod:`eelib.lm`, the decision layer) never imports this package.
"""

import importlib

from eelib._util import lazy_submodules

_submodule = lazy_submodules(__name__, ("checks", "cli", "exercises", "grading", "plots", "quiz", "slides", "widgets"))


def __getattr__(name: str):
    """Submodules on first use; and, for code written when ``eelib.course`` was one module
    (``from eelib.course import prepare_models``), the names of ``eelib.course.cli``, with a warning."""
    try:
        return _submodule(name)
    except AttributeError:
        pass
    cli = importlib.import_module("eelib.course.cli")
    if not name.startswith("_") and hasattr(cli, name):
        import warnings

        warnings.warn(f"eelib.course.{name} is now eelib.course.cli.{name}", DeprecationWarning, stacklevel=2)
        return getattr(cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
