import pytest
import torch

import eelib
from eelib.vision.resnet import BasicBlock, ResNet, ResNetConfig


@pytest.mark.parametrize("depth, in_channels, size", [(8, 1, 28), (20, 3, 32), (14, 1, 12)])
def test_output_shape_and_stages(depth, in_channels, size):
    model = ResNet(ResNetConfig(depth=depth, width=4, in_channels=in_channels, num_classes=7)).eval()
    x = torch.randn(2, in_channels, size, size)
    assert model(x).shape == (2, 7)
    n = (depth - 2) // 6
    assert [len(getattr(model, s)) for s in ("layer1", "layer2", "layer3")] == [n, n, n]
    feats = model.features_at(x)
    assert list(feats) == ["stem", "layer1", "layer2", "layer3"]
    for info in model.feature_info:  # feature_info tells the truth about every stage
        f = feats[info["module"]]
        assert f.shape[1] == info["num_chs"]
        assert f.shape[2] == -(-size // info["reduction"])
    assert torch.allclose(model.forward_head(feats["layer3"]), model(x), atol=1e-6)


def test_block_attach_points_and_order():
    model = eelib.resnet(14, width=4).eval()
    assert model.block_names == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    x = torch.randn(1, 1, 16, 16)
    feats = model.features_at(x, ["layer3.1", "layer1.1", "stem"])
    assert list(feats) == ["stem", "layer1.1", "layer3.1"]  # forward order
    for info in model.block_info:
        f = model.features_at(x, [info["module"]])[info["module"]]
        assert f.shape[1] == info["num_chs"]
    # the last block's output is the backbone's output
    assert torch.allclose(feats["layer3.1"], model.forward_features(x))


def test_unknown_attach_point():
    with pytest.raises(ValueError, match="unknown attach points.*layer4"):
        eelib.resnet(8).features_at(torch.randn(1, 1, 8, 8), ["layer4"])


def test_plain_blocks_have_no_skip_connection():
    plain, residual = eelib.plain_net(20, width=4), eelib.resnet(20, width=4)
    assert all(b.shortcut is None for s in ("layer1", "layer2", "layer3") for b in getattr(plain, s))
    assert all(b.shortcut is not None for s in ("layer1", "layer2", "layer3") for b in getattr(residual, s))
    # the same network apart from the two 1x1 projection shortcuts (conv + batch norm)
    extra = eelib.count_parameters(residual) - eelib.count_parameters(plain)
    assert extra == (4 * 8 + 2 * 8) + (8 * 16 + 2 * 16)


def test_basic_block_adds_its_input():
    torch.manual_seed(0)
    block = BasicBlock(4, 4).eval()
    x = torch.randn(2, 4, 6, 6)
    main = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    assert torch.allclose(block(x), torch.relu(main + x))
    block.residual = False
    block.shortcut = None
    assert torch.allclose(block(x), torch.relu(main))


def test_wrong_input_channels_named():
    model = eelib.resnet(8, in_channels=1)
    with pytest.raises(ValueError, match="3 channels but the model expects in_channels=1"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(1, 28, 28))
    with pytest.raises(ValueError, match="3 channels"):
        model.features_at(torch.randn(1, 3, 28, 28), ["layer1"])


def test_intermediates_stop_where_asked():
    model = eelib.resnet(20, width=4).eval()
    calls = []
    for name in model.block_names:
        model.get_submodule(name).register_forward_hook(lambda m, a, o, name=name: calls.append(name))
    model.features_at(torch.randn(1, 1, 8, 8), ["layer1.1"])
    assert calls == ["layer1.0", "layer1.1"]  # later blocks are not run
    calls.clear()
    model.features_at(torch.randn(1, 1, 8, 8), ["layer2"])
    assert calls == model.block_names[:6]


@pytest.mark.parametrize("kwargs, word", [(dict(depth=21), "depth"), (dict(depth=2), "depth"),
                                          (dict(in_channels=2), "in_channels"), (dict(width=0), "width"),
                                          (dict(num_classes=1), "num_classes")])
def test_bad_config(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ResNetConfig(**kwargs)
