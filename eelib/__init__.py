"""eelib: early exit and rejection for efficient machine learning — the course's library.

Modules, one concept each: :mod:`eelib.device` (where to compute, seeding),
:mod:`eelib.cache` (cache folders, verified downloads), :mod:`eelib.data` (named data sets
with fixed splits), :mod:`eelib.resnet` (residual and plain networks), :mod:`eelib.train`
(training loop, evaluation, gradient norms), :mod:`eelib.zoo` (trained course models, cached),
:mod:`eelib.exits` (exit heads and early-exit networks), :mod:`eelib.policies` (confidence
measures, exit policies, calibration, the oracle), :mod:`eelib.cost` (FLOPs, parameters,
latency and energy per exit), :mod:`eelib.rejection` (selective classification, risk-coverage,
thresholds with a guarantee, early exit with a reject option under a FLOPs budget),
:mod:`eelib.dynamic` (inference that skips the blocks after each
sample's exit), :mod:`eelib.lm` (the course language model: GPT-2 loading, scoring,
training), :mod:`eelib.lm_exits` (exits after GPT-2's layers: logit lens, trained exit heads),
:mod:`eelib.lm_generate` (early-exit generation with a correct key/value cache),
:mod:`eelib.lm_speculative` (self-speculative decoding: an early exit drafts, the full model verifies),
:mod:`eelib.lm_confidence` (CALM's cheap exit decisions from the hidden state),
:mod:`eelib.tokens` (token difficulty: kinds of token, coloured text), :mod:`eelib.plots` (figures), :mod:`eelib.widgets` (lecture sliders),
:mod:`eelib.checks` (exercise checks), :mod:`eelib.course` (exercise generation, headless
notebook runs), :mod:`eelib.slides` (the lectures' slide metadata, reveal.js slides),
:mod:`eelib.grading` (nbgrader metadata and course folder).
"""

from .cache import DownloadError
from .cost import ExitCosts, count_flops, energy_estimate, exit_costs, latency_per_exit
from .data import DATASETS, OFFLINE_DEFAULT, DataSplits, load_data
from .device import eval_mode, get_device, reproducible_training, seed_everything, synchronize, timed
from .dynamic import DynamicResult, Speedup, dynamic_inference, measure_speedup
from .exits import EarlyExitNet, ExitConfig, ExitHead, ExitOutputs, exit_outputs, torchvision_early_exit
from .lm import COURSE_EE_MODEL, COURSE_MODEL, LanguageModel, LMEval, ModelUnavailableError, evaluate_text, load_lm, token_losses
from .lm_exits import (EarlyExitLM, TokenExits, agreement_by_layer, course_exits, heldout_text, load_exit_heads, oracle_layers,
                       perplexity, threshold_for_agreement, token_exit_outputs, train_exit_heads)
from .lm_generate import (Decoder, ForcedEval, Generation, GenerationSpeed, Round, TokenCosts, early_exit_generate,
                          measure_generation_speed, teacher_forced_eval, token_exit_costs)
from .lm_speculative import SpeculativeSettings, self_speculative_generate
from .lm_confidence import StateGate, calibrate_gate, train_exit_classifiers
from .tokens import difficulty_by_kind, token_html, token_kinds, token_strings
from .policies import (MEASURES, Calibration, ExitPolicy, PolicyEval, PolicyResult, apply_policy, calibrate,
                       confidence, evaluate_oracle, evaluate_policy, oracle_exits, static_exit, tradeoff_curve)
from .rejection import (CostModel, GuaranteedThreshold, RejectCalibration, RejectEval, RejectPolicy, RejectResult,
                        RiskCoverage, SelectiveEval, apply_reject_policy, calibrate_reject, evaluate_reject_policy,
                        evaluate_selective, guaranteed_threshold, oracle_risk_coverage, risk_coverage_curve)
from .resnet import BasicBlock, ResNet, ResNetConfig, count_parameters, plain_net, resnet
from .train import (EvalResult, ExitHistory, History, evaluate, exit_loss, gradient_norms, predict, train,
                    train_exits)
from .zoo import RECIPES, Recipe, TrainedModel, load_trained

__version__ = "0.1.0"

__all__ = [
    # chapter 8: self-speculative decoding, CALM's cheap decisions
    "COURSE_EE_MODEL", "Round", "SpeculativeSettings", "StateGate", "agreement_by_layer", "calibrate_gate",
    "self_speculative_generate", "train_exit_classifiers",
    "Decoder", "EarlyExitLM", "ForcedEval", "Generation", "GenerationSpeed", "measure_generation_speed",
    "teacher_forced_eval", "TokenCosts", "TokenExits", "course_exits", "difficulty_by_kind",
    "early_exit_generate", "heldout_text", "load_exit_heads", "oracle_layers", "perplexity",
    "threshold_for_agreement", "token_exit_costs", "token_exit_outputs", "token_html", "token_kinds",
    "token_strings", "train_exit_heads",
    "COURSE_MODEL", "DATASETS", "MEASURES", "OFFLINE_DEFAULT", "RECIPES", "BasicBlock", "Calibration",
    "DataSplits", "DownloadError", "DynamicResult", "EarlyExitNet", "EvalResult", "ExitConfig", "ExitCosts",
    "ExitHead", "ExitHistory", "ExitOutputs", "ExitPolicy", "History", "LMEval", "LanguageModel",
    "ModelUnavailableError", "PolicyEval", "PolicyResult", "Recipe", "ResNet", "ResNetConfig", "Speedup",
    "TrainedModel", "apply_policy", "calibrate", "confidence", "count_flops", "count_parameters",
    "dynamic_inference", "energy_estimate", "evaluate", "evaluate_oracle", "evaluate_policy", "evaluate_text",
    "eval_mode", "reproducible_training", "synchronize", "timed",
    "exit_costs", "exit_loss", "exit_outputs", "get_device", "gradient_norms", "latency_per_exit", "load_data",
    "load_lm", "load_trained", "measure_speedup", "oracle_exits", "plain_net", "predict", "resnet",
    "seed_everything", "static_exit", "token_losses", "torchvision_early_exit", "tradeoff_curve", "train",
    "train_exits",
    # chapter 5: rejection
    "CostModel", "GuaranteedThreshold", "RejectCalibration", "RejectEval", "RejectPolicy", "RejectResult",
    "RiskCoverage", "SelectiveEval", "apply_reject_policy", "calibrate_reject", "evaluate_reject_policy",
    "evaluate_selective", "guaranteed_threshold", "oracle_risk_coverage", "risk_coverage_curve",
]
