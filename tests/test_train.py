import pytest
import torch
from torch.utils.data import DataLoader, Subset

import eelib
from eelib.vision.train import History


@pytest.fixture(scope="module")
def small_data():
    data = eelib.load_data("mnist5k")
    return Subset(data.train, range(512)), Subset(data.val, range(256))


def test_short_training_lowers_the_loss(small_data):
    train_set, val_set = small_data
    eelib.seed_everything(0)
    model = eelib.resnet(8, width=8)
    loader = DataLoader(train_set, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(val_set, batch_size=256)
    before = eelib.evaluate(model, val_loader, device="cpu")
    history = eelib.train(model, loader, epochs=6, lr=0.1, val_loader=val_loader, device="cpu", progress=False)
    after = eelib.evaluate(model, val_loader, device="cpu")
    assert len(history.epochs) == 6 and len(history.step_losses) == 6 * len(loader)
    assert history.column("train_loss")[-1] < history.column("train_loss")[0] - 0.5
    assert after.loss < before.loss - 0.5 and after.accuracy > before.accuracy + 0.3
    assert history.column("val_accuracy")[-1] == pytest.approx(after.accuracy)
    assert History.from_dict(history.to_dict()) == history


def test_momentum_is_the_one_given(small_data, monkeypatch):
    train_set, _ = small_data
    seen = []
    original_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["momentum"])
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    loader = DataLoader(Subset(train_set, range(160)), batch_size=32)
    eelib.train(eelib.resnet(8, width=4), loader, epochs=2, momentum=0.5, device="cpu", progress=False)
    assert seen == [0.5] * 10  # the learning rate follows the one-cycle schedule; the momentum does not


def test_training_is_repeatable_on_cpu(small_data):
    train_set, _ = small_data
    weights = []
    for _ in range(2):
        eelib.seed_everything(1)
        model = eelib.resnet(8, width=4)
        loader = DataLoader(Subset(train_set, range(128)), batch_size=32, shuffle=True,
                            generator=torch.Generator().manual_seed(1))
        eelib.train(model, loader, epochs=1, device="cpu", progress=False)
        weights.append(model.fc.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_predict_matches_evaluate(small_data):
    _, val_set = small_data
    model = eelib.resnet(8, width=4)
    loader = DataLoader(val_set, batch_size=100)
    logits, labels = eelib.predict(model, loader, device="cpu")
    assert logits.shape == (256, 10) and labels.shape == (256,)
    assert eelib.evaluate(model, loader, device="cpu").accuracy == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_gradient_norms_per_layer_and_side_effect_free():
    torch.manual_seed(0)
    model = eelib.plain_net(14, width=4)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    norms = eelib.gradient_norms(model, x, y)
    assert list(norms)[0] == "stem.0.weight" and list(norms)[-1] == "fc.weight"
    assert len(norms) == 1 + 12 + 1  # stem, 12 block convs, classifier
    assert all(v > 0 for v in norms.values())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # batch norm statistics kept
    # a residual network of the same depth has the same layers; its shortcuts only on request
    residual = eelib.resnet(14, width=4)
    assert list(eelib.gradient_norms(residual, x, y)) == list(norms)
    with_shortcuts = eelib.gradient_norms(residual, x, y, shortcuts=True)
    assert len(with_shortcuts) == len(norms) + 2 and "layer2.0.shortcut.0.weight" in with_shortcuts
    # matches a manual backward pass
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert norms["fc.weight"] == pytest.approx(model.fc.weight.grad.norm().item(), rel=1e-5)


def test_bad_arguments():
    model = eelib.resnet(8, width=4)
    loader = DataLoader(eelib.load_data().val, batch_size=10)
    with pytest.raises(ValueError, match="epochs"):
        eelib.train(model, loader, epochs=0, progress=False)
    with pytest.raises(ValueError, match="lr"):
        eelib.train(model, loader, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        eelib.predict(model, DataLoader(Subset(eelib.load_data().val, []), batch_size=4))
    with pytest.raises(ValueError, match="column|name"):
        History(()).column("accuracy")
    with pytest.raises(ValueError, match="samples"):
        eelib.gradient_norms(model, torch.randn(2, 1, 8, 8), torch.zeros(3, dtype=torch.long))
