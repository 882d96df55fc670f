"""eelib: early exit and rejection for efficient machine learning — the course's library.

The package is laid out as the course's two halves around one decision layer:

* the decision layer, shared by both halves: :mod:`eelib.policies` (confidence measures, the one
  exit decision rule, exit policies, calibration, the oracle), :mod:`eelib.rejection` (selective
  classification, risk-coverage, thresholds with a guarantee, exit and reject under a budget),
  :mod:`eelib.outputs` (every exit's logits, the input of both), :mod:`eelib.errors` (eelib's errors);
* :mod:`eelib.vision`, the image half (chapters 1-5): ``data``, ``resnet``, ``train``, ``zoo``
  (the shipped course models), ``exits`` (exit heads), ``cost`` (FLOPs, latency, energy per exit),
  ``dynamic`` (inference that skips the blocks after each image's exit);
* :mod:`eelib.lm`, the language half (chapters 6-9): ``model`` (load, encode, score), ``corpus`` (the text and the tokenizer), ``train``, ``model_card``
  (the course model's training, model card and command line), ``exits`` (logit lens, trained exit
  heads), ``distill`` (heads trained on the model's own text), ``decoder`` (GPT-2's blocks by hand, what a
  loop returns), ``generate`` (early-exit generation with a correct key/value cache), ``speculative``
  (self-speculative decoding, fixed exit and DSSD), ``draft_tuning`` (their settings), ``speed`` (timing
  and the speed model), ``projection`` (to real LLMs), ``confidence`` (CALM's cheap decisions), ``energy`` (energy per generated
  token), ``tokens`` (token difficulty),
  ``rejection`` and ``rejection_splits`` (chapter 9: token exits with a guarantee, a model that abstains);
* :mod:`eelib.course`, what only the notebooks use: ``plots``, ``widgets``, ``checks`` (exercise
  checks), ``quiz``, ``slides``, ``exercises``, ``grading`` and the command line (``python -m eelib.course``);
  the library never imports it;
* ``eelib._util``: device and seeding, timing and the machine's load (threads), FLOP counting, ``eval_mode``,
  the cache.

One vocabulary, followed by every room:

* result dataclasses begin with ``predictions, exits`` (`PolicyResult`, `DynamicResult`, `RejectResult`);
* a function that applies a policy takes the policy first, then what it is applied to
  (``apply_policy(policy, logits)``, ``dynamic_inference(policy, model, x)``); the language model's
  generation loops take the model and the prompt first, since their policy is optional (``None``: the
  plain loop);
* every ``evaluate*`` and ``calibrate*`` takes one *cost description*: anything with ``exit_flops``
  and ``full_flops`` (`ExitCosts`, `TokenCosts`, `CostModel`; `eelib.policies.exit_and_full_flops`);
* a calibration's figures on the data it was chosen on are ``.val`` (`Calibration`, `RejectCalibration`);
* the exit decision is `eelib.policies.Measure.passes`, wherever it is taken;
* functions returning exit indices say *exits* (``oracle_exits``, ``oracle_token_exits``), layers are
  named as layers; the language model's exit heads use Hugging Face's verbs
  (``EarlyExitLM.save_pretrained`` / ``from_pretrained``);
* errors derive from `EelibError` (`eelib.errors`).

Every public name below is importable from ``eelib`` itself (``eelib.load_trained``,
``eelib.calibrate``, ...). Names load on first use, so ``import eelib`` stays cheap: torchvision
and transformers are imported only by the code that needs them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {  # module -> the public names it gives to `eelib`
    "eelib.errors": ("DownloadError", "EelibError", "EnergyUnavailable", "ModelUnavailableError"),
    "eelib._util.device": ("get_device", "reproducible_training", "seed_everything"),
    "eelib._util.eval_mode": ("eval_mode",),
    "eelib._util.flops": ("count_flops",),
    "eelib._util.timing": ("OrderCheck", "Timings", "measure", "synchronize", "timed", "watch_load"),
    "eelib._util.load": ("MachineLoad", "ThreadChoice", "choose_threads", "machine_load"),
    "eelib.policies": ("Calibration", "ExitPolicy", "MEASURES", "PolicyEval", "PolicyResult", "apply_policy",
        "calibrate", "confidence", "evaluate_oracle", "evaluate_policy", "oracle_exits", "static_exit",
        "tradeoff_curve"),
    "eelib.rejection": ("CostModel", "GuaranteedThreshold", "RejectCalibration", "RejectEval", "RejectPolicy",
        "RejectResult", "RiskCoverage", "SelectiveEval", "apply_reject_policy", "calibrate_reject",
        "evaluate_reject_policy", "evaluate_selective", "guaranteed_threshold", "oracle_risk_coverage",
        "risk_coverage_curve"),
    "eelib.vision.data": ("DATASETS", "DataSplits", "OFFLINE_DEFAULT", "load_data"),
    "eelib.vision.resnet": ("BasicBlock", "ResNet", "ResNetConfig", "count_parameters", "plain_net", "resnet"),
    "eelib.vision.train": ("EvalResult", "ExitHistory", "History", "evaluate", "exit_loss", "gradient_norms",
        "predict", "train", "train_exits"),
    "eelib.vision.zoo": ("RECIPES", "Recipe", "TrainedModel", "load_trained"),
    "eelib.outputs": ("ExitOutputs",),
    "eelib.vision.exits": ("EarlyExitNet", "ExitConfig", "ExitHead", "exit_outputs",
        "torchvision_early_exit"),
    "eelib.vision.cost": ("ExitCosts", "energy_estimate", "exit_costs", "exit_timings", "latency_per_exit"),
    "eelib.vision.dynamic": ("DynamicResult", "Speedup", "dynamic_inference", "measure_speedup"),
    "eelib.lm.model": ("COURSE_EE_MODEL", "COURSE_MODEL", "LMEval", "LanguageModel", "evaluate_text", "load_lm",
        "token_losses"),
    "eelib.lm.exits": ("EarlyExitLM", "TokenExits", "agreement_by_layer", "course_exits", "heldout_text",
        "load_exit_heads", "oracle_layers", "oracle_token_exits", "perplexity", "threshold_for_agreement", "token_exit_outputs"),
    "eelib.lm.head_training": ("HeadTraining", "train_exit_heads"),
    "eelib.lm.decoder": ("Decoder", "Generation", "Round"),
    "eelib.lm.generate": ("ForcedEval", "TokenCosts", "early_exit_generate", "teacher_forced_eval", "token_exit_costs"),
    "eelib.lm.speculative": ("DynamicSettings", "SpeculativeSettings", "dynamic_speculative_generate",
        "self_speculative_generate"),
    "eelib.lm.speed": ("GenerationSpeed", "SpeedModel", "fit_speed_model", "measure_generation_speed",
        "measure_primitives"),
    "eelib.lm.energy": ("ENERGY_LOOPS", "TokenEnergy", "generation_energy"),
    "eelib.lm.confidence": ("StateGate", "calibrate_gate", "train_exit_classifiers"),
    "eelib.lm.tokens": ("difficulty_by_kind", "token_html", "token_kinds", "token_strings"),
    "eelib.lm.rejection": ("ConsistencyEval", "ConsistencyThreshold", "TokenScores", "abstain_threshold",
        "consistency_threshold", "evaluate_consistency", "min_calibration_tokens", "naive_consistency_threshold",
        "risk_coverage_by_exit", "token_scores"),
    "eelib.lm.rejection_splits": ("RejectSplitStudy", "SplitStudy", "abstain_split_study", "flops_margin",
        "reject_split_study", "split_study"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_SUBMODULES = ("course", "errors", "lm", "outputs", "policies", "rejection", "vision", "_util")
_MOVED = {  # the modules of the flat layout before eelib/vision, eelib/lm, eelib/course: old code keeps working
    "cache": "eelib._util.cache", "device": "eelib._util.device", "exits": "eelib.vision.exits",
    "dynamic": "eelib.vision.dynamic", "cost": "eelib.vision.cost", "data": "eelib.vision.data", "zoo": "eelib.vision.zoo", "lm_exits": "eelib.lm.exits",
    "lm_generate": "eelib.lm.generate", "lm_speculative": "eelib.lm.speculative", "lm_confidence": "eelib.lm.confidence",
    "tokens": "eelib.lm.tokens", "plots": "eelib.course.plots", "checks": "eelib.course.checks",
    "widgets": "eelib.course.widgets", "quiz": "eelib.course.quiz", "slides": "eelib.course.slides",
    "grading": "eelib.course.grading", "progress": "eelib._util.progress", "validation": "eelib._util.validation",
}


def _moved(name: str):
    import warnings

    warnings.warn(f"eelib.{name} is now {_MOVED[name]}", DeprecationWarning, stacklevel=3)
    return importlib.import_module(_MOVED[name])


class _MovedModules:
    """Serves ``import eelib.plots`` / ``from eelib.lm_exits import X`` (the flat layout's paths) with the moved module.

    The old name is an alias in ``sys.modules`` of the real module, which keeps its own name and
    spec: ``importlib.reload`` (and ``%autoreload``) of either name re-executes the real module.
    """

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        prefix, _, name = fullname.partition(".")
        if prefix == __name__ and name in _MOVED:
            return importlib.util.spec_from_loader(fullname, _MovedModules)
        return None

    @staticmethod
    def create_module(spec):
        module = _moved(spec.name.partition(".")[2])  # the module itself, under its old name too
        spec.loader_state = module.__spec__  # the import system sets the alias's spec on it: put its own back
        return module

    @staticmethod
    def exec_module(module):
        # already executed under its new name; undo what the import system wrote on it for the alias
        alias = module.__spec__
        if alias.loader is _MovedModules and alias.loader_state is not None:
            module.__spec__ = alias.loader_state


import importlib.util  # noqa: E402  (after the table it serves)
import sys  # noqa: E402

if not any(f is _MovedModules for f in sys.meta_path):
    sys.meta_path.append(_MovedModules)

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    """Load a public name (or a submodule, e.g. ``eelib.vision``) on first use."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # next time without this call
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _MOVED:  # e.g. `from eelib import plots` in a notebook written for the flat layout
        return _moved(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_SUBMODULES))
