import pytest
import torch

import eelib
from eelib._util import device as device_mod


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


def test_timed_synchronises_the_device_it_is_given(monkeypatch):
    import eelib._util.timing as dev

    calls = []
    monkeypatch.setattr(dev.torch.cuda, "synchronize", lambda device=None: calls.append(("sync", str(device))))
    ticks = iter([10.0, 12.5])
    monkeypatch.setattr(dev.time, "perf_counter", lambda: next(ticks))
    seconds = dev.timed(lambda: calls.append(("work", None)), "cuda:1")
    assert seconds == 2.5
    assert calls == [("sync", "cuda:1"), ("work", None), ("sync", "cuda:1")]  # before and after, on GPU 1
    calls.clear()
    dev.synchronize("cpu")
    dev.synchronize(None)
    assert calls == []  # nothing to wait for on the CPU


def test_eval_mode_restores_every_submodule_even_on_error():
    import torch

    from eelib._util.eval_mode import eval_mode

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(2))
    net.train()
    net[2].eval()  # a frozen batch norm inside a training model
    param = net[0].weight
    try:
        with eval_mode(net):
            assert not any(m.training for m in net.modules())
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert [m.training for m in net.modules()] == [True, True, True, False]
    assert net[0].weight is param  # nothing moved or copied
    with pytest.raises(TypeError, match="nn.Module"):
        with eval_mode("model"):
            pass


def test_reproducible_training_pins_the_threads_and_restores_them():
    import torch

    from eelib._util.device import TRAINING_THREADS, reproducible_training

    before = torch.get_num_threads()
    with reproducible_training("cpu"):
        assert torch.get_num_threads() == TRAINING_THREADS and torch.backends.cudnn.deterministic
    assert torch.get_num_threads() == before


def test_train_mode_restores_every_submodule():
    import torch

    from eelib._util.eval_mode import train_mode

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    net.eval()
    with train_mode(net):
        assert all(m.training for m in net.modules())
    assert not any(m.training for m in net.modules())


def test_interleaved_runs_every_call_in_turn(monkeypatch):
    import eelib._util.timing as timing

    order = []
    runs = timing.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3)
    assert order == ["a", "b"] * 3  # one run of each in turn, not all of a then all of b
    assert set(runs) == {"a", "b"} and all(len(r) == 3 and min(r) >= 0 for r in runs.values())
    with pytest.raises(ValueError, match="repeats"):
        timing.interleaved({"a": lambda: None}, 0)
