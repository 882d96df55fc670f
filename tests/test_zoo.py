import pytest
import torch

import eelib
from eelib import zoo
from eelib.resnet import ResNetConfig

TINY = zoo.Recipe(ResNetConfig(depth=8, width=4), epochs=1, batch_size=256)


def test_trains_once_then_loads_from_cache(tmp_cache):
    first = eelib.load_trained(TINY, progress=False, device="cpu")
    assert not first.from_cache and len(first.history.epochs) == 1 and 0.0 <= first.test_accuracy <= 1.0
    path = zoo.cache_path(TINY)
    assert path.is_file() and path.parent == tmp_cache / "models"
    second = eelib.load_trained(TINY, progress=False, device="cpu")
    assert second.from_cache and second.history == first.history and second.test_accuracy == first.test_accuracy
    for (k, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert not second.model.training
    # nothing but the model file and its lock in the cache
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.name + ".lock"])


def test_a_corrupted_cache_file_is_replaced(tmp_cache):
    path = zoo.cache_path(TINY)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    run = eelib.load_trained(TINY, progress=False, device="cpu")
    assert not run.from_cache
    assert eelib.load_trained(TINY, progress=False, device="cpu").from_cache


def test_mismatched_metadata_and_retrain(tmp_cache):
    import json

    from safetensors.torch import load_file, save_file

    first = eelib.load_trained(TINY, progress=False, device="cpu")
    path = zoo.cache_path(TINY)
    meta = {**zoo._read_metadata(path), "recipe": {**TINY.to_dict(), "epochs": 9}}
    save_file(load_file(str(path)), str(path), metadata={"eelib": json.dumps(meta)})
    assert not eelib.load_trained(TINY, progress=False, device="cpu").from_cache  # recorded recipe differs
    again = eelib.load_trained(TINY, retrain=True, progress=False, device="cpu")
    assert not again.from_cache and again.history.column("train_loss") == first.history.column("train_loss")
    assert again.trained_on == "cpu"


def test_training_leaves_the_callers_random_state_alone(tmp_cache):
    eelib.seed_everything(5)
    expected = torch.rand(3)
    eelib.seed_everything(5)
    eelib.load_trained(TINY, progress=False, device="cpu")  # trains: the cache is empty
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kwargs, word", [(dict(data="imagenet"), "data"), (dict(data="cifar10"), "in_channels"),
                                          (dict(epochs=0), "epochs"), (dict(lr=0.0), "lr")])
def test_bad_recipe(kwargs, word):
    with pytest.raises(ValueError, match=word):
        zoo.Recipe(ResNetConfig(depth=8, width=4), **kwargs)


def test_recipe_key_changes_with_the_recipe():
    assert TINY.key() != zoo.Recipe(ResNetConfig(depth=8, width=4), epochs=2, batch_size=256).key()
    assert TINY.key() == zoo.Recipe.from_dict(TINY.to_dict()).key()
    assert zoo.cache_path("resnet56") != zoo.cache_path("plain56")


def test_unknown_name():
    with pytest.raises(ValueError, match="resnet99.*plain20, plain56, resnet56, resnet20, ee_resnet20"):
        eelib.load_trained("resnet99")


def test_unwritable_model_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("EELIB_CACHE", str(blocker))
    with pytest.raises(PermissionError, match="model cache folder.*EELIB_CACHE"):
        eelib.load_trained(TINY, progress=False)


def test_prepare_models_trains_then_finds(tmp_cache, monkeypatch, capsys):
    from eelib import course

    monkeypatch.setattr(zoo, "RECIPES", {"tiny": TINY})
    first = course.prepare_models(progress=False)
    assert first["tiny"].startswith("trained in") and zoo.cache_path("tiny").is_file()
    assert course.prepare_models(progress=False)["tiny"].startswith("found in the cache")
    assert "course model tiny" in capsys.readouterr().out


TINY_EXITS = zoo.Recipe(ResNetConfig(depth=8, width=4), epochs=1, batch_size=256,
                        exits=eelib.exits.ExitConfig(points=("stem", "layer1"), pool_size=2))


def test_an_early_exit_recipe_trains_and_caches(tmp_cache):
    from eelib.exits import EarlyExitNet
    from eelib.train import ExitHistory

    first = eelib.load_trained(TINY_EXITS, progress=False, device="cpu")
    assert isinstance(first.model, EarlyExitNet) and first.model.exit_names == ("stem", "layer1", "final")
    assert isinstance(first.history, ExitHistory) and len(first.history.epochs[0].val_accuracy) == 3
    again = eelib.load_trained(TINY_EXITS, progress=False, device="cpu")
    assert again.from_cache and again.history == first.history
    assert zoo.Recipe.from_dict(TINY_EXITS.to_dict()) == TINY_EXITS
    assert TINY_EXITS.key() != TINY.key()


def test_bad_exit_recipes():
    with pytest.raises(ValueError, match="unknown attach points"):
        zoo.Recipe(ResNetConfig(depth=8, width=4), exits=eelib.exits.ExitConfig(points=("layer9",)))
    with pytest.raises(ValueError, match="exit_mode='all'"):
        zoo.Recipe(ResNetConfig(depth=8, width=4), exit_mode="all")
