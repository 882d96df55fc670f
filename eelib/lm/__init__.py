"""The language half of the course (chapters 6-9):

``model`` (the course GPT-2 and any Hugging Face GPT-2: load, encode, score), ``corpus`` (its training
text) and ``train`` (its training, model card and ``python -m eelib.lm train|eval``) -> ``exits`` (logit
lens, trained exit heads) -> ``head_training`` (their training on a frozen model) -> ``distill`` (heads trained on the model's own continuations) -> ``tokens``
(token difficulty, coloured text) -> ``decoder`` (GPT-2's blocks by hand, the trace of what a loop ran,
what it returns) -> ``generate`` (early-exit generation with a correct key/value cache, per-token costs)
-> ``confidence`` (CALM's cheap decisions from the hidden state) -> ``speculative`` (self-speculative
decoding: early exits draft, the full model verifies; fixed exit and DSSD, one core) -> ``speed``
(loops timed side by side; the speed model) -> ``draft_tuning`` (the drafts' settings for speed) ->
``projection`` (the speed model on real LLM shapes and a GPU-like regime); ``energy``: the energy per
generated token of each loop.
``rejection`` and ``rejection_splits`` (chapter 9: token exits with CALM's consistency guarantee, a model that
abstains from a next-token prediction, exit-or-reject under a FLOPs budget; checked over random splits).
The exit decision and its calibration are :mod:`eelib.policies`, shared with the image half.
"""

import importlib

from eelib._util import lazy_submodules

_submodule = lazy_submodules(__name__, ("confidence", "corpus", "decoder", "distill", "draft_tuning", "energy", "exits",
                                          "generate", "head_training", "model", "model_card", "projection", "rejection", "rejection_splits", "speculative", "speed",
                                          "tokens", "train"))


def __getattr__(name: str):
    """Submodules on first use; and, for code written when ``eelib.lm`` was one module (``eelib.lm.encode``),
    the names of ``eelib.lm.model`` and ``eelib.lm.train``, with a warning that says where they live now."""
    try:
        return _submodule(name)
    except AttributeError:
        pass
    for module in ("eelib.lm.model", "eelib.lm.train"):
        found = importlib.import_module(module)
        if not name.startswith("_") and hasattr(found, name):
            import warnings

            warnings.warn(f"eelib.lm.{name} is now {module}.{name}", DeprecationWarning, stacklevel=2)
            return getattr(found, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
