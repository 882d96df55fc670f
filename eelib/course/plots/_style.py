"""The course's figure style: a colour-blind-safe palette (``PALETTE`` and its colours by name;
``RIGHT`` and ``WRONG`` for right and wrong predictions) and ``_styled``, the decorator every figure
function draws under."""

from __future__ import annotations

import functools

import matplotlib
import matplotlib.pyplot as plt
from cycler import cycler

# Okabe & Ito's qualitative palette: its colours stay distinct with deuteranopia and protanopia
# (red-green colour blindness) and in greyscale print; sequential scales use viridis / cividis.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE, YELLOW, BLACK = PALETTE
RIGHT, WRONG = BLUE, VERMILLION  # right and wrong predictions: never green against red


def _styled(fn):
    """Draw with the course's colour-blind-safe colour cycle, leaving the caller's settings alone."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context({"axes.prop_cycle": cycler(color=PALETTE)}):
            figure = fn(*args, **kwargs)
            # The first figure of a session loads the backend, and Jupyter's inline backend then turns
            # interactive mode on; rc_context would restore it to off on exit, and every later figure
            # of the notebook would no longer be shown. Keep the mode the call ended with.
            interactive = matplotlib.is_interactive()
        matplotlib.interactive(interactive)
        return figure
    return wrapper
