"""The image half of the course (chapters 1-5), in the order a slide's data takes through it:

``data`` (named data sets with fixed splits) -> ``resnet`` (residual and plain networks) and
``train`` (training loop, evaluation, gradient norms) -> ``zoo`` (the trained course models, shipped)
-> ``exits`` (exit heads, early-exit networks, every exit's outputs) -> ``cost`` (FLOPs, parameters,
latency and energy per exit) -> ``dynamic`` (inference that really skips the blocks after each
image's exit). The decisions themselves live in :mod:`eelib.policies` and :mod:`eelib.rejection`,
shared with the language half.
"""

from eelib._util import lazy_submodules

__getattr__ = lazy_submodules(__name__, ("cost", "data", "dynamic", "exits", "resnet", "train", "zoo"))
