import pytest
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from eelib.vision.exits import EarlyExitNet, ExitHead, exit_outputs, torchvision_early_exit
from eelib.vision.resnet import ResNet, ResNetConfig, resnet
from eelib.vision.train import ExitHistory, exit_loss, train_exits


def small(points=("stem", "layer1", "layer2.0"), **kw):
    torch.manual_seed(0)
    return EarlyExitNet(resnet(14, width=4), points, **kw).eval()


def test_forward_returns_every_exit_and_the_last_is_the_backbone():
    model = small(("layer2.0", "stem", "layer1"))  # any order: sorted into forward order
    assert model.exit_names == ("stem", "layer1", "layer2.0", "final") and model.num_exits == 4
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        out = model(x)
        assert [tuple(z.shape) for z in out] == [(5, 10)] * 4
        assert torch.equal(out[-1], model.backbone(x))
        for k in range(4):
            assert torch.allclose(model.forward_until(x, k), out[k])


def test_heads_size_themselves_from_the_attach_point():
    model = small(pool_size=2, hidden_channels=6)
    assert [h.fc.in_features for h in model.heads] == [6 * 4] * 3
    assert small().heads[2].fc.in_features == 8  # layer2 has 2 x width channels, global pooling


def test_the_backbone_is_unchanged_and_loads_its_own_weights():
    model = small()
    plain = resnet(14, width=4)
    assert list(model.backbone.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(model.backbone.state_dict())  # strict: same keys and shapes
    assert all(k.startswith(("backbone.", "heads.")) for k in model.state_dict())


def test_torchvision_resnet18_and_50_take_exits_and_keep_their_weights():
    torch.manual_seed(0)
    model = torchvision_early_exit("resnet18", points=("layer1", "layer2.1", "layer3"), num_classes=10).eval()
    assert [h.fc.in_features for h in model.heads] == [64, 128, 256]
    reference = torchvision.models.resnet18(num_classes=10)
    reference.load_state_dict(model.backbone.state_dict())  # the checkpoint's keys, as they are
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out[-1], reference.eval()(x), atol=1e-5)
    big = torchvision_early_exit("resnet50", points=("layer1",), num_classes=10)
    assert big.heads[0].fc.in_features == 256  # Bottleneck blocks: 4 x 64 channels
    with pytest.raises(ValueError, match="arch="):
        torchvision_early_exit("vgg16")


@pytest.mark.parametrize("points, message", [
    (("layer4",), "unknown attach points"),
    (("layer3",), "end of the network"),
    (("layer3.1",), "end of the network"),
    (("layer1", "layer1.1"), "same place twice"),
    ((), "non-empty"),
    ("layer1", "non-empty"),
])
def test_bad_attach_points(points, message):
    with pytest.raises(ValueError, match=message):
        EarlyExitNet(resnet(14, width=4), points)


def test_bad_backbone_head_and_inputs():
    with pytest.raises(TypeError, match="backbone must be"):
        EarlyExitNet(torch.nn.Linear(3, 3), ("layer1",))
    with pytest.raises(ValueError, match="pool_size"):
        ExitHead(8, 10, pool_size=0)
    model = small()
    with pytest.raises(ValueError, match="3 channels but the model expects in_channels=1"):
        model(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\)"):
        model(torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match="exit 4 does not exist: the model has 4 exits"):
        model.forward_until(torch.randn(1, 1, 16, 16), 4)


def loader(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 1, 12, 12, generator=g) + y.view(-1, 1, 1, 1) / 3
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_frozen_training_changes_only_the_heads():
    model = small()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # batch-norm statistics included
    heads = [p.clone() for p in model.heads.parameters()]
    history = train_exits(model, loader(), mode="frozen", epochs=2, val_loader=loader(32, 1), progress=False)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(a, b) for a, b in zip(heads, model.heads.parameters()))
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again afterwards
    assert isinstance(history, ExitHistory) and history.mode == "frozen" and len(history.epochs) == 2
    assert len(history.epochs[-1].exit_losses) == 4 and len(history.epochs[-1].val_accuracy) == 4
    assert ExitHistory.from_dict(history.to_dict()) == history


@pytest.mark.parametrize("mode", ["joint", "distill"])
def test_joint_and_distill_train_the_backbone_too(mode):
    model = small()
    before = [p.clone() for p in model.backbone.parameters()]
    history = train_exits(model, loader(), mode=mode, epochs=1, exit_weights=(0.25, 0.5, 0.75, 1.0), progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters()))
    assert history.epochs[0].val_accuracy is None and not model.training


def test_exit_loss_modes():
    torch.manual_seed(0)
    y = torch.randint(0, 10, (8,))
    logits = [torch.randn(8, 10) for _ in range(3)]
    ces = [torch.nn.functional.cross_entropy(z, y) for z in logits]
    joint, per_exit = exit_loss(logits, y, exit_weights=(1, 2, 3))
    assert torch.allclose(joint, ces[0] + 2 * ces[1] + 3 * ces[2]) and per_exit == pytest.approx([c.item() for c in ces])
    frozen, _ = exit_loss(logits, y, mode="frozen")
    assert torch.allclose(frozen, ces[0] + ces[1])
    # distillation towards an identical teacher adds nothing beyond the labels' share
    same = [logits[2].clone(), logits[2].clone(), logits[2]]
    distill, _ = exit_loss(same, y, mode="distill", distill_alpha=0.5)
    assert torch.allclose(distill, ces[2] + 2 * 0.5 * ces[2], atol=1e-6)


def test_bad_training_arguments():
    model = small()
    with pytest.raises(ValueError, match="mode='both'"):
        train_exits(model, loader(), mode="both")
    with pytest.raises(ValueError, match="exit_weights must be 4"):
        train_exits(model, loader(), exit_weights=(1, 1))
    with pytest.raises(ValueError, match="distill_alpha"):
        train_exits(model, loader(), mode="distill", distill_alpha=2)


def test_exit_outputs_collects_every_exit():
    model = small()
    out = exit_outputs(model, loader(20), device="cpu")
    assert out.logits.shape == (4, 20, 10) and out.labels.shape == (20,)
    assert len(out.accuracy_per_exit()) == 4 and out.correct.dtype == torch.bool
    with pytest.raises(ValueError, match="empty"):
        exit_outputs(model, DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)), batch_size=4))


def test_exit_loss_refuses_bad_arguments():
    logits, y = [torch.randn(4, 10)] * 3, torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="mode='distil'"):
        exit_loss(logits, y, mode="distil")
    with pytest.raises(ValueError, match="exit_weights has 1 values but there are 3 exits"):
        exit_loss(logits, y, exit_weights=(1.0,))


def test_training_restores_the_callers_frozen_parameters():
    model = small()
    model.backbone.stem.requires_grad_(False)  # the caller froze the stem
    train_exits(model, loader(16), mode="joint", epochs=1, progress=False)
    assert not any(p.requires_grad for p in model.backbone.stem.parameters())
    assert all(p.requires_grad for p in model.backbone.layer1.parameters())


def test_importing_and_building_recipes_leaves_the_random_state_alone():
    import subprocess
    import sys

    code = ("import torch; torch.manual_seed(0); a = torch.rand(1); torch.manual_seed(0); import eelib; "
            "eelib.vision.zoo.Recipe(eelib.ResNetConfig(8, 4), exits=eelib.ExitConfig(('layer1',))); "
            "assert torch.equal(torch.rand(1), a)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_folded_head_follows_a_write_through_data():
    """Issue 26: ``weight.data`` writes do not bump the version counter the folded weight was keyed on;
    in eval under no_grad the head gave the old weights' logits."""
    from eelib.vision.exits import ExitHead

    torch.manual_seed(0)
    head = ExitHead(8, 10, pool_size=2).eval()
    x = torch.randn(4, 8, 6, 6)

    def pooled():
        return torch.nn.functional.linear(torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1),
                                          head.fc.weight, head.fc.bias)

    with torch.no_grad():
        assert torch.allclose(head(x), pooled(), atol=1e-5)  # builds the folded weight
        head.fc.weight.data.mul_(-2)
        assert torch.allclose(head(x), pooled(), atol=1e-5)
        head.fc.weight.data.copy_(torch.randn_like(head.fc.weight))
        assert torch.allclose(head(x), pooled(), atol=1e-5)
