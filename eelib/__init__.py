"""eelib: early exit and rejection for efficient machine learning — the course's library.

Modules, one concept each: :mod:`eelib.device` (where to compute, seeding),
:mod:`eelib.cache` (cache folders, verified downloads), :mod:`eelib.data` (named data sets
with fixed splits), :mod:`eelib.resnet` (residual and plain networks), :mod:`eelib.train`
(training loop, evaluation, gradient norms), :mod:`eelib.zoo` (trained course models, cached),
:mod:`eelib.lm` (the course language model: GPT-2 loading, scoring, training),
:mod:`eelib.plots` (figures), :mod:`eelib.checks` (exercise checks), :mod:`eelib.course`
(exercise generation, headless notebook runs).
"""

from .cache import DownloadError
from .data import DATASETS, OFFLINE_DEFAULT, DataSplits, load_data
from .device import get_device, seed_everything
from .lm import COURSE_MODEL, LanguageModel, LMEval, ModelUnavailableError, evaluate_text, load_lm, token_losses
from .resnet import BasicBlock, ResNet, ResNetConfig, count_parameters, plain_net, resnet
from .train import EvalResult, History, evaluate, gradient_norms, predict, train
from .zoo import RECIPES, Recipe, TrainedModel, load_trained

__version__ = "0.1.0"

__all__ = [
    "COURSE_MODEL", "LMEval", "LanguageModel", "ModelUnavailableError", "evaluate_text", "load_lm", "token_losses",
    "DATASETS", "OFFLINE_DEFAULT", "RECIPES", "BasicBlock", "DataSplits", "DownloadError", "EvalResult",
    "History", "Recipe", "ResNet", "ResNetConfig", "TrainedModel", "count_parameters", "evaluate",
    "get_device", "gradient_norms", "load_data", "load_trained", "plain_net", "predict", "resnet",
    "seed_everything", "train",
]
