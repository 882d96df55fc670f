"""The language half of the course (chapters 6-8):

``model`` (the course GPT-2 and any Hugging Face GPT-2: load, encode, score) and ``train`` (its
training, model card and ``python -m eelib.lm train|eval``) -> ``exits`` (logit lens, trained exit
heads) -> ``tokens`` (token difficulty, coloured text) -> ``generate`` (early-exit generation with a
correct key/value cache, per-token costs) -> ``confidence`` (CALM's cheap decisions from the hidden
state) -> ``speculative`` (self-speculative decoding: an early exit drafts, the full model verifies).
The exit decision and its calibration are :mod:`eelib.policies`, shared with the image half.
"""

from eelib._util import lazy_submodules

__getattr__ = lazy_submodules(__name__, ("confidence", "exits", "generate", "model", "speculative", "tokens", "train"))
