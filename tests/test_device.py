import pytest
import torch

import eelib
from eelib import device as device_mod


def test_default_is_cpu_without_accelerators(monkeypatch):
    monkeypatch.delenv("EELIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)
    assert eelib.get_device() == torch.device("cpu")


def test_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.delenv("EELIB_DEVICE", raising=False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert eelib.get_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eelib.get_device().type == "mps"


def test_environment_override(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("EELIB_DEVICE", "cpu")
    assert eelib.get_device() == torch.device("cpu")


@pytest.mark.parametrize("value, words", [("tpu", "allowed"), ("banana", "allowed"), ("meta", "allowed")])
def test_bad_override_names_the_variable(monkeypatch, value, words):
    monkeypatch.setenv("EELIB_DEVICE", value)
    with pytest.raises(ValueError, match="EELIB_DEVICE") as err:
        eelib.get_device()
    assert words in str(err.value) and "cpu" in str(err.value)


def test_unavailable_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        eelib.get_device("cuda")


def test_seed_everything_repeats_cpu_results():
    eelib.seed_everything(123)
    a = (torch.randn(5), eelib.resnet(8, width=4).fc.weight.detach().clone())
    eelib.seed_everything(123)
    b = (torch.randn(5), eelib.resnet(8, width=4).fc.weight.detach().clone())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    eelib.seed_everything(124)
    assert not torch.equal(a[0], torch.randn(5))


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_seed_must_be_a_non_negative_int(seed):
    with pytest.raises(ValueError, match="seed"):
        eelib.seed_everything(seed)
