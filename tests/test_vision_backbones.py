"""ResNet / MobileNetV3 backbones: feature dims, small-input stem, channels, local pretrained weights."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from metaemb.core.errors import ConfigError
from metaemb.plugins.vision.backbones.mobilenet import MobileNetV3Large, MobileNetV3Small
from metaemb.plugins.vision.backbones.resnet import ResNet18, ResNet34, ResNet50


@pytest.mark.parametrize(
    ("cls", "dim"),
    [
        (ResNet18, 512),
        (ResNet34, 512),
        (ResNet50, 2048),
        (MobileNetV3Small, 576),
        (MobileNetV3Large, 960),
    ],
)
def test_pooled_feature_dims(cls, dim):
    # On the meta device: shapes propagate without allocating or initialising weights (fast).
    with torch.device("meta"):
        net = cls().eval()
        for small_input in (False, True):
            out = cls(small_input=small_input).eval()(torch.empty(2, 3, 48, 48))
            assert out.shape == (2, dim)
    assert net.feature_dim == dim
    assert net.trunk() is net.net


def test_small_input_stem_keeps_a_spatial_map_on_32px_inputs():
    torch.manual_seed(0)
    small = ResNet18(small_input=True).eval()
    assert small.net.conv1.kernel_size == (3, 3) and small.net.conv1.stride == (1, 1)
    assert isinstance(small.net.maxpool, torch.nn.Identity)
    seen = {}

    def keep_shape(module, inputs, output):
        seen["map"] = output.shape

    small.net.layer4.register_forward_hook(keep_shape)
    with torch.no_grad():
        out = small(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 512)
    assert seen["map"][-2:] == (4, 4)  # 32 / 8 instead of 32 / 32 = 1
    mobile = MobileNetV3Small(small_input=True).eval()
    with torch.no_grad():
        assert mobile(torch.randn(2, 3, 32, 32)).shape == (2, 576)


def test_matches_torchvision_forward_without_classifier():
    torch.manual_seed(0)
    ours = ResNet18().eval()
    ref = models.resnet18(weights=None).eval()
    ref.fc = torch.nn.Identity()
    ref.load_state_dict(ours.net.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_channels_last_and_other_in_channels():
    torch.manual_seed(0)
    net = ResNet18(in_channels=1, small_input=True).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a = net(x)
        b = net.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert torch.allclose(a, b, atol=1e-4)
    assert MobileNetV3Small(in_channels=1).eval()(torch.randn(2, 1, 64, 64)).shape == (2, 576)


def test_pretrained_from_local_file(tmp_path):
    torch.manual_seed(1)
    ref = models.resnet18(weights=None)  # stands in for torchvision's ImageNet file (with fc)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    net = ResNet18(pretrained=str(path))
    assert torch.equal(net.net.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert torch.equal(net.net.conv1.weight, ref.conv1.weight)
    # Grey input: the RGB stem is averaged (sum preserved), not dropped.
    grey = ResNet18(in_channels=1, pretrained=str(path))
    assert torch.allclose(grey.net.conv1.weight[:, 0], ref.conv1.weight.sum(1), atol=1e-6)
    # The small-input stem has another kernel: it keeps its init, the rest loads.
    with pytest.warns(UserWarning, match=r"conv1.weight \(small_input=True makes a 3×3 stem\): "
                      r"it keeps its random initialisation"):  # fmt: skip
        small = ResNet18(small_input=True, pretrained=str(path))
    assert small.reinitialised == ["conv1.weight"]
    assert torch.equal(small.net.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    mref = models.mobilenet_v3_small(weights=None)
    mpath = tmp_path / "mnv3s.pth"
    torch.save(mref.state_dict(), mpath)
    mob = MobileNetV3Small(pretrained=str(mpath))
    assert torch.equal(mob.net.features[3].block[0][0].weight, mref.features[3].block[0][0].weight)


def test_pretrained_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"backbone\.pretrained.*does not exist.*never downloads"):
        ResNet18(pretrained=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "mobilenet.pth"
    torch.save(models.mobilenet_v3_small(weights=None).state_dict(), wrong)
    with pytest.raises(ConfigError, match="does not hold resnet18 weights"):
        ResNet18(pretrained=str(wrong))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weights file"):
        ResNet18(pretrained=str(junk))
    whole = tmp_path / "whole_module.pth"  # torch.save(model), common in face repositories
    torch.save(models.resnet18(weights=None), whole)
    with pytest.raises(ConfigError, match=r"holds a whole model \(torchvision.models.resnet."
                       r"ResNet, saved with torch.save\(model\)\)") as e:  # fmt: skip
        ResNet18(pretrained=str(whole))
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)  # torch's page-long advice
    import argparse

    other = tmp_path / "checkpoint.pth"  # another toolkit's checkpoint: weights and its args
    torch.save({"state_dict": models.resnet18(weights=None).state_dict(),
                "args": argparse.Namespace(lr=0.1)}, other)  # fmt: skip
    with pytest.raises(ConfigError, match=r"holds a pickled argparse.Namespace \(a whole model .*"
                       r"or a checkpoint .*'state_dict' entry"):  # fmt: skip
        ResNet18(pretrained=str(other))


def test_registered_through_the_vision_plugin():
    from metaemb.core.plugin.manager import registry

    names = registry("backbones").names()
    for name in ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large"):
        assert name in names
    assert registry("backbones").get("resnet50") is ResNet50
    assert registry("backbones").get("mobilenet_v3_large") is MobileNetV3Large


def test_image_features_say_when_the_centre_crop_drops_much_of_a_picture():
    """A 128×64 person crop lost its head and feet to the square crop, without a word (P16 F3);
    a nearly square picture is cropped quietly, and the warning comes once."""
    import warnings

    from metaemb.core.plugin.components import build_part

    features = build_part("features", {"name": "image", "image_size": 32})
    tall = torch.zeros(3, 128, 64, dtype=torch.uint8)
    with pytest.warns(UserWarning, match=r"features 'image' \(plugin 'vision'\) centre-crops .* "
                      r"a 128×64 picture loses 50% of it \(its top and bottom\)"):  # fmt: skip
        assert features.prepare(tall, False).shape == (3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features.prepare(tall, False)  # said once
        build_part("features", {"name": "image", "image_size": 32}).prepare(
            torch.zeros(3, 100, 90, dtype=torch.uint8), False
        )
