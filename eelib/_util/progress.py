"""Progress bars: a live widget in a notebook, plain text where the notebook is executed for a handout.

``tqdm.auto`` draws an ipywidgets bar in Jupyter. A notebook executed without a browser
(``python -m eelib.course run``, nbclient) keeps only the widget's first state, a bar frozen at 0%.
With ``EELIB_PROGRESS=text`` in the environment (``eelib.course.cli run`` sets it for its kernels) the
bars are text, whose last state is what the executed notebook shows; ``EELIB_PROGRESS=off`` hides them.
"""

from __future__ import annotations

import os


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm``, or the text bar / no bar that ``EELIB_PROGRESS`` asks for."""
    mode = os.environ.get("EELIB_PROGRESS", "auto")
    if mode not in ("auto", "text", "off"):
        raise ValueError(f"EELIB_PROGRESS={mode!r}: allowed auto, text, off")
    if mode == "off":
        kwargs["disable"] = True
    if mode == "auto":
        from tqdm.auto import tqdm as bar
    else:
        from tqdm.std import tqdm as bar
        kwargs.setdefault("mininterval", 2.0)  # few updates: each is kept in the executed notebook
    return bar(*args, **kwargs)
