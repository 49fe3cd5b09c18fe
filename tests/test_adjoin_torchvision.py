"""build_torchvision (what ``adjoined-train --arch tv:NAME`` builds): small-image stems, in_channels, local
pretrained weights and their errors, default start points."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import adjoined_kernels as ak
from adjoined_kernels.adjoin import DEFAULT_START, build_torchvision
from adjoined_kernels.adjoin.torchvision_models import _vgg_small

tv = pytest.importorskip("torchvision")


pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121"])
def test_fashion_mnist_shapes_and_export(name):
    torch.manual_seed(0)
    m = build_torchvision(name, num_classes=10, in_channels=1, alpha=4, start=None, pretrained=None,
                          small_images=True, backend="reference")
    assert m.training and m.start == DEFAULT_START[name]
    x = torch.randn(3, 1, 28, 28)
    lf, ls = m(x)
    assert lf.shape == ls.shape == (3, 10)
    m.eval()
    with torch.no_grad():
        assert rel(ak.export_small(m)(x), m(x)[1]) < 1e-5
    first = next(mod for mod in ak.export_small(m).modules() if isinstance(mod, nn.Conv2d))
    assert first.in_channels == 1 and first.stride == (1, 1)
    if name == "resnet18":
        assert first.kernel_size == (3, 3) and not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())


def test_every_default_start_is_a_module_path():
    for name, start in DEFAULT_START.items():
        with torch.device("meta"):  # structure only, no initialisation cost
            model = tv.models.get_model(name, weights=None, num_classes=10)
        assert start in dict(model.named_modules()), name


def test_shufflenet_refused():
    with pytest.raises(ValueError, match="channel shuffle"):
        build_torchvision("shufflenet_v2_x0_5", 10, 1, 2, None, None, True, "auto")


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown torchvision classification model 'resnet19'"):
        build_torchvision("resnet19", 10, 3, 4, None, None, False, "auto")


def test_pretrained_missing_file_says_where(tmp_path):
    path = str(tmp_path / "resnet18.pth")
    with pytest.raises(FileNotFoundError, match=r"(?s)not found at .*resnet18\.pth.*Nothing is downloaded.*"
                                                r"resnet18-f37072fd\.pth"):
        build_torchvision("resnet18", 10, 3, 4, None, path, False, "auto")


def test_pretrained_loaded_classifier_reinitialised(tmp_path):
    torch.manual_seed(1)
    ref = tv.models.resnet18()  # 1000 classes, as torchvision's file
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    with pytest.warns(UserWarning, match=r"fc\.weight"):
        m = build_torchvision("resnet18", 10, 1, 4, None, str(path), False, "auto")
    assert torch.equal(m.net.get_submodule("layer3.0.conv1").weight, ref.layer3[0].conv1.weight)
    assert torch.equal(m.net.get_submodule("conv1").weight, ref.conv1.weight.sum(1, keepdim=True))
    torch.save({"fc.weight": ref.fc.weight}, path)
    with pytest.raises(ValueError, match="is not a state dict of torchvision's resnet18"):
        build_torchvision("resnet18", 10, 3, 4, None, str(path), False, "auto")


def test_vgg_small_classifier_is_the_same_function_on_a_1x1_map():
    torch.manual_seed(2)
    vgg = tv.models.vgg11_bn(num_classes=10).eval()
    f = torch.randn(2, 512, 1, 1)
    with torch.no_grad():
        before = vgg.classifier(torch.flatten(vgg.avgpool(f), 1))
        _vgg_small(vgg)
        after = vgg.classifier(torch.flatten(vgg.avgpool(f), 1))
    assert vgg.classifier[0].in_features == 512 and isinstance(vgg.features[3], nn.Identity)
    assert rel(after, before) < 1e-5
