"""What only the course's notebooks use: ``plots`` (figures), ``widgets`` (lecture sliders),
``checks`` (exercise checks), ``quiz`` (concept checks), ``slides`` (reveal.js slides), ``grading``
(nbgrader) and ``cli`` (``python -m eelib.course``: exercises, headless runs, models).

The library (:mod:`eelib.vision`, :mod:`eelib.lm`, the decision layer) never imports this package.
"""

from eelib._util import lazy_submodules

__getattr__ = lazy_submodules(__name__, ("checks", "cli", "grading", "plots", "quiz", "slides", "widgets"))
