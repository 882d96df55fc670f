"""Trained course models: shipped with the package, or trained once and cached.

A :class:`Recipe` says everything that decides a trained model: the network's configuration,
the data set, the optimiser's settings and the seed. ``load_trained(name)`` returns the model
trained by that recipe:

1. **shipped** — the five course models (``RECIPES``) come with the package
   (``eelib/models/zoo/``: one safetensors file each, holding the weights, the recipe, the
   training history and the test accuracy, listed with their sha256 in ``MANIFEST.json``), so a
   fresh machine shows the README's figures without training. They are used when the named
   recipe still equals the one they were trained with, and their sha256 is checked on load (a
   damaged file is not used: a warning says so and the model is trained instead).
2. **cached** — ``load_trained(name, retrain=True)``, a changed recipe or a custom
   :class:`Recipe` trains now (progress bar) and saves the result in the cache folder
   (``<cache root>/models``, see :mod:`eelib._util.cache`); later calls for a recipe with no
   shipped model load it from there (``shipped=False`` prefers the cache for named recipes
   too). The cache file's name carries a hash of the recipe, so a changed recipe never loads
   stale weights. Files are written to a temporary name and renamed, so an interrupted run
   leaves nothing half-written; a lock file beside it makes concurrent callers (two notebooks,
   parallel test workers) wait for one training run instead of each training. A cache file
   that cannot be read (truncated, not safetensors, wrong tensors) is trained again, with a
   warning that says why; errors of the device (out of memory, a broken GPU) are not caught.

Training is reproducible across thread counts: :func:`eelib._util.device.reproducible_training`
(one CPU thread while a course model trains; deterministic cuDNN on a GPU) — the same recipe
gives the same weights on any machine with the same PyTorch version and CPU instruction set
(tested: two processes with 1 and 2 threads). ``benchmarks/train_zoo.py`` rebuilds the shipped
files.

Named recipes (``RECIPES``):

* ``plain20``, ``plain56``, ``resnet56``: chapter 1's degradation experiment — plain networks
  of 20 and 56 layers, and the 56-layer network with skip connections (base width 8), each
  trained for 4 epochs on ``mnist5k``.
* ``resnet20``: a 20-layer ResNet of base width 16 trained without exits (4 epochs on ``mnist5k``):
  the backbone that chapter 2 gives exits afterwards, with the backbone frozen.
* ``ee_resnet20``: the early-exit network of chapters 2-5 — a 20-layer ResNet (base width 16)
  with exit heads after blocks ``layer1.0``, ``layer1.2`` (= ``layer1``), ``layer2.1`` and
  ``layer3.0`` (4x4 average pooling + linear) and its own classifier as the fifth exit, trained
  jointly (every exit's loss, equal weights) for 4 epochs on ``mnist5k``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from eelib._util.cache import atomic_path, ensure_writable_dir, file_digest, models_dir
from eelib.vision.data import DATASETS, load_data
from eelib._util.device import reproducible_training, resolve_device, seed_everything
from eelib.vision.exits import EarlyExitNet, ExitConfig, early_exit_resnet
from eelib.vision.resnet import ResNet, ResNetConfig
from eelib.vision.train import EXIT_MODES, ExitHistory, History, _check_positive, evaluate, train, train_exits

FORMAT_VERSION = 5  # bump when training code changes what a recipe produces
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "models" / "zoo"  # the shipped course models
MANIFEST = SHIPPED_DIR / "MANIFEST.json"  # {name: {"file", "sha256", "key"}}


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a trained course model."""

    model: ResNetConfig = field(default_factory=ResNetConfig)
    data: str = "mnist5k"
    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    exits: ExitConfig | None = None  # exit heads: an early-exit network trained by eelib.vision.train.train_exits
    exit_mode: str = "joint"  # how, if there are exits: joint, frozen or distill


    def __post_init__(self) -> None:
        if self.data not in DATASETS:
            raise ValueError(f"data={self.data!r} is not a known data set; allowed: {', '.join(DATASETS)}")
        channels = 3 if self.data == "cifar10" else 1
        if self.model.in_channels != channels:
            raise ValueError(f"model.in_channels={self.model.in_channels} but {self.data} images have "
                             f"{channels} channel(s)")
        _check_positive("epochs", self.epochs)
        _check_positive("batch_size", self.batch_size)
        _check_positive("lr", self.lr, float)
        if self.exit_mode not in EXIT_MODES:
            raise ValueError(f"exit_mode={self.exit_mode!r} is not a training mode; allowed: {', '.join(EXIT_MODES)}")
        if self.exits is not None:
            with torch.random.fork_rng(devices=[]):  # building draws random weights: keep the caller's RNG
                self.build()  # unknown attach points fail here, not after training

    def build(self) -> ResNet | EarlyExitNet:
        """The untrained network of this recipe."""
        backbone = ResNet(self.model)
        return backbone if self.exits is None else early_exit_resnet(backbone, self.exits)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        exits = data.get("exits")
        exits = None if exits is None else ExitConfig(**{**exits, "points": tuple(exits["points"])})
        return cls(**{**data, "model": ResNetConfig(**data["model"]), "exits": exits})

    def key(self) -> str:
        """A short hash of the recipe (and of ``FORMAT_VERSION``), part of the cache file's name."""
        text = json.dumps({"v": FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


RECIPES: dict[str, Recipe] = {
    "plain20": Recipe(ResNetConfig(depth=20, width=8, residual=False)),
    "plain56": Recipe(ResNetConfig(depth=56, width=8, residual=False)),
    "resnet56": Recipe(ResNetConfig(depth=56, width=8, residual=True)),
    "resnet20": Recipe(ResNetConfig(depth=20, width=16)),
    "ee_resnet20": Recipe(ResNetConfig(depth=20, width=16),
                          exits=ExitConfig(points=("layer1.0", "layer1", "layer2.1", "layer3.0"), pool_size=4)),
}


@dataclass(frozen=True)
class TrainedModel:
    """A trained course model with its recipe, training history and where it came from."""

    name: str
    model: ResNet | EarlyExitNet = field(repr=False)
    recipe: Recipe
    history: History | ExitHistory = field(repr=False)
    from_cache: bool  # True when loaded (shipped or cached), False when trained by this call
    test_accuracy: float  # on the test split, measured right after training (the final exit's, with exits)
    trained_on: str  # the device type it was trained on: "cpu", "cuda" or "mps"
    source: str = "trained"  # "shipped" (package data), "cache" (the cache folder) or "trained" (now)


def _resolve(name: str | Recipe) -> tuple[str, Recipe]:
    if isinstance(name, Recipe):
        return "custom", name
    if name not in RECIPES:
        raise ValueError(f"name={name!r} is not a course model; allowed: {', '.join(RECIPES)} "
                         f"(or pass a Recipe)")
    return name, RECIPES[name]


def cache_path(name: str | Recipe) -> Path:
    """Where the trained model of ``name`` (a recipe name or a Recipe) is cached."""
    label, recipe = _resolve(name)
    return models_dir() / f"{label}-{recipe.key()}.safetensors"


def load_trained(name: str | Recipe, *, retrain: bool = False, progress: bool = True,
                 device: torch.device | str | None = None, shipped: bool = True) -> TrainedModel:
    """The model trained by a named recipe (or a :class:`Recipe`): shipped, cached, or trained now.

    Args:
        name: a key of ``RECIPES`` or a Recipe.
        retrain: ignore the shipped and cached models, train again and overwrite the cache.
        progress: show a progress bar while training.
        device: where to put (and train) the model (default :func:`eelib.get_device`).
        shipped: use the model shipped with the package when there is one for this recipe
            (default); False loads the cache folder's copy (training it if missing).

    Returns:
        A :class:`TrainedModel` (``source`` says where it came from); its model is in eval mode
        on ``device``. A cache file that cannot be read, or whose recorded recipe differs, is
        replaced by a new training run, with a warning saying why.
    """
    label, recipe = _resolve(name)
    if not isinstance(retrain, bool) or not isinstance(shipped, bool):
        raise ValueError(f"retrain and shipped must be True or False, got {retrain!r}, {shipped!r}")
    device = resolve_device(device)
    if shipped and not retrain:
        found = _load_shipped(label, recipe, device)
        if found is not None:
            return found
    path = cache_path(name)
    ensure_writable_dir(path.parent, what="model cache folder")
    # One process trains, the others (a second notebook, a parallel test worker) wait and load.
    with FileLock(str(path) + ".lock"):
        return _load_or_train(label, recipe, path, retrain, progress, device)


def shipped_models() -> dict[str, dict]:
    """The manifest of the shipped course models: ``{name: {"file", "sha256", "key"}}`` (empty if none)."""
    if not MANIFEST.is_file():
        return {}
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def shipped_metadata(name: str) -> dict:
    """What the shipped file of course model ``name`` records: recipe, history, test accuracy,
    torch version, machine and ``train_seconds`` (the training time on the machine that built it)."""
    entry = shipped_models().get(name)
    if entry is None:
        raise ValueError(f"name={name!r} is not a shipped course model; shipped: {', '.join(shipped_models()) or 'none'}")
    return _read_metadata(SHIPPED_DIR / entry["file"])


def _load_shipped(label: str, recipe: Recipe, device: torch.device) -> TrainedModel | None:
    """The shipped model of a named recipe, or None when there is none for this exact recipe."""
    entry = shipped_models().get(label)
    if entry is None or entry.get("key") != recipe.key():
        return None  # not shipped, or the recipe changed since: train (or load the cache)
    path = SHIPPED_DIR / entry["file"]
    problem = None
    if not path.is_file():
        problem = f"{path} is missing"
    elif file_digest(path, "sha256") != entry["sha256"]:
        problem = f"{path} is damaged (its sha256 is not the manifest's {entry['sha256'][:12]}...)"
    if problem is None:
        loaded, problem = _read_model(path, recipe)
        if loaded is not None:
            return _trained_model(label, recipe, *loaded, device, source="shipped")
    warnings.warn(f"the shipped {label} model cannot be used: {problem}; it will be trained instead "
                  f"(reinstall eelib to get it back)", stacklevel=3)
    return None


def _read_model(path: Path, recipe: Recipe) -> tuple[tuple | None, str | None]:
    """Read a saved model on the CPU: ``((model, meta), None)``, or ``(None, why it cannot be used)``.

    Only the file's own faults are caught (not safetensors, truncated, other tensors, other
    metadata): errors of the device come later, when the model is moved, and are not caught.
    """
    try:
        meta = _read_metadata(path)
        if meta.get("recipe") != json.loads(json.dumps(recipe.to_dict())):
            return None, "its recorded recipe differs from this one"
        model = recipe.build()
        model.load_state_dict({k: v.float() for k, v in load_file(str(path), device="cpu").items()})
        (History if recipe.exits is None else ExitHistory).from_dict(meta["history"])
        float(meta["test_accuracy"]), str(meta["trained_on"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        return None, f"{type(err).__name__}: {err}"
    except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen tensors
        return None, f"its tensors do not fit the recipe's network ({str(err).splitlines()[0]})"
    return (model, meta), None


def _trained_model(label: str, recipe: Recipe, model, meta: dict, device: torch.device, *,
                   source: str) -> TrainedModel:
    history = (History if recipe.exits is None else ExitHistory).from_dict(meta["history"])
    return TrainedModel(label, model.to(device).eval(), recipe, history, from_cache=True,
                        test_accuracy=float(meta["test_accuracy"]), trained_on=meta["trained_on"], source=source)


@contextlib.contextmanager
def _own_random_state() -> Iterator[None]:
    """Run a block with its own random state: the caller's Python, NumPy and torch RNGs are restored."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _load_or_train(label: str, recipe: Recipe, path: Path, retrain: bool, progress: bool,
                   device: torch.device) -> TrainedModel:
    if path.is_file() and not retrain:
        loaded, problem = _read_model(path, recipe)
        if loaded is not None:
            return _trained_model(label, recipe, *loaded, device, source="cache")
        warnings.warn(f"the cached {label} model {path} cannot be used: {problem}; training it again",
                      stacklevel=3)
    model, history, test_accuracy = train_recipe(recipe, device=device, progress=progress, desc=f"training {label}")
    meta = {"recipe": json.loads(json.dumps(recipe.to_dict())), "history": history.to_dict(),
            "test_accuracy": test_accuracy, "trained_on": device.type}
    save_model(model, meta, path)
    return TrainedModel(label, model.eval(), recipe, history, from_cache=False, test_accuracy=test_accuracy,
                        trained_on=device.type, source="trained")


def train_recipe(recipe: Recipe, *, device: torch.device | str | None = None, progress: bool = True,
                 desc: str = "training") -> tuple[ResNet | EarlyExitNet, History | ExitHistory, float]:
    """Train a recipe from its seed: ``(model, history, test accuracy)``; nothing is saved.

    Runs under :func:`eelib._util.device.reproducible_training` and with its own random state (the
    caller's random numbers are not disturbed).
    """
    device = resolve_device(device)
    with _own_random_state(), reproducible_training(device):
        data = load_data(recipe.data)
        seed_everything(recipe.seed)
        model = recipe.build()  # created after seeding: the initial weights depend on the seed
        loaders = data.loaders(recipe.batch_size, seed=recipe.seed)
        if recipe.exits is None:
            history = train(model, loaders.train, epochs=recipe.epochs, lr=recipe.lr, val_loader=loaders.val,
                            device=device, progress=progress, desc=desc)
            test_accuracy = evaluate(model, loaders.test, device=device).accuracy
        else:
            history = train_exits(model, loaders.train, mode=recipe.exit_mode, epochs=recipe.epochs, lr=recipe.lr,
                                  val_loader=loaders.val, device=device, progress=progress, desc=desc)
            test_accuracy = evaluate(model.backbone, loaders.test, device=device).accuracy
    return model, history, test_accuracy


def save_model(model: torch.nn.Module, meta: dict, path: str | Path) -> Path:
    """Save weights (on the CPU) and ``meta`` (under the ``eelib`` key) as one safetensors file, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp), metadata={"eelib": json.dumps(meta)})
    return path


def _read_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("eelib", "{}"))
