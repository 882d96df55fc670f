"""Trained course models, trained once and cached: no chapter retrains what another trained.

A :class:`Recipe` says everything that decides a trained model: the network's configuration,
the data set, the optimiser's settings and the seed. ``load_trained(name)`` returns the model
trained by that recipe: from the cache folder (``<cache root>/models``, see
:mod:`eelib.cache`) when it was trained before, else by training it now (progress bar) and
saving it. The cached file is one safetensors file holding the weights, the recipe and the
training history; its name carries a hash of the recipe, so a changed recipe never loads stale
weights. Files are written to a temporary name and renamed, so an interrupted run leaves
nothing half-written; a lock file beside it makes concurrent callers (two notebooks, parallel
test workers) wait for one training run instead of each training.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from .cache import atomic_path, ensure_writable_dir, models_dir
from .data import DATASETS, load_data
from .device import get_device, seed_everything
from .exits import EarlyExitNet, ExitConfig, early_exit_resnet
from .resnet import ResNet, ResNetConfig
from .train import EXIT_MODES, ExitHistory, History, _check_positive, evaluate, train, train_exits

FORMAT_VERSION = 4  # bump when training code changes what a recipe produces


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a trained course model."""

    model: ResNetConfig = field(default_factory=ResNetConfig)
    data: str = "mnist5k"
    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 0
    exits: ExitConfig | None = None  # exit heads: an early-exit network trained by eelib.train.train_exits
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
    from_cache: bool
    test_accuracy: float  # on the test split, measured right after training (the final exit's, with exits)
    trained_on: str  # the device type it was trained on: "cpu", "cuda" or "mps"


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
                 device: torch.device | str | None = None) -> TrainedModel:
    """The model trained by a named recipe (or a :class:`Recipe`): cached, or trained now and cached.

    Args:
        name: a key of ``RECIPES`` or a Recipe.
        retrain: ignore the cache, train again and overwrite it.
        progress: show a progress bar while training.
        device: where to put (and train) the model (default :func:`eelib.get_device`).

    Returns:
        A :class:`TrainedModel`; its model is in eval mode on ``device``. A cache file that
        cannot be read, or whose recorded recipe differs, is replaced by a new training run.
    """
    label, recipe = _resolve(name)
    device = torch.device(device) if device is not None else get_device()
    path = cache_path(name)
    ensure_writable_dir(path.parent, what="model cache folder")
    # One process trains, the others (a second notebook, a parallel test worker) wait and load.
    with FileLock(str(path) + ".lock"):
        return _load_or_train(label, recipe, path, retrain, progress, device)


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
        try:
            meta = _read_metadata(path)
            if meta["recipe"] == json.loads(json.dumps(recipe.to_dict())):
                model = recipe.build()
                model.load_state_dict(load_file(str(path)))
                history = (History if recipe.exits is None else ExitHistory).from_dict(meta["history"])
                return TrainedModel(label, model.to(device).eval(), recipe, history,
                                    from_cache=True, test_accuracy=meta["test_accuracy"],
                                    trained_on=meta["trained_on"])
        except Exception:  # an unreadable or mismatched cache file is never used: train again, replace it
            pass
    with _own_random_state():  # training does not disturb the caller's random numbers
        data = load_data(recipe.data)
        seed_everything(recipe.seed)
        model = recipe.build()  # created after seeding: the initial weights depend on the seed
        loaders = data.loaders(recipe.batch_size, seed=recipe.seed)
        if recipe.exits is None:
            history = train(model, loaders.train, epochs=recipe.epochs, lr=recipe.lr, val_loader=loaders.val,
                            device=device, progress=progress, desc=f"training {label}")
            test_accuracy = evaluate(model, loaders.test, device=device).accuracy
        else:
            history = train_exits(model, loaders.train, mode=recipe.exit_mode, epochs=recipe.epochs, lr=recipe.lr,
                                  val_loader=loaders.val, device=device, progress=progress,
                                  desc=f"training {label}")
            test_accuracy = evaluate(model.backbone, loaders.test, device=device).accuracy
    meta = {"recipe": json.loads(json.dumps(recipe.to_dict())), "history": history.to_dict(), "test_accuracy": test_accuracy,
            "trained_on": device.type}
    with atomic_path(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp), metadata={"eelib": json.dumps(meta)})
    return TrainedModel(label, model.eval(), recipe, history, from_cache=False, test_accuracy=test_accuracy,
                        trained_on=device.type)


def _read_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("eelib", "{}"))
