"""Adjoined ResNets: shapes, parameter counts by formula, width plans, alpha=1, export exactness."""
import pytest
import torch

import adjoined_kernels as ak
from adjoined_kernels.export import export_full
from adjoined_kernels.models import StageWidths

SPECS = {"adjoined_resnet18": ("basic", [2, 2, 2, 2]), "adjoined_resnet34": ("basic", [3, 4, 6, 3]),
         "adjoined_resnet50": ("bottleneck", [3, 4, 6, 3]), "adjoined_resnet100": ("bottleneck", [6, 8, 12, 6]),
         "adjoined_resnet101": ("bottleneck", [3, 4, 23, 3])}


def _count(block, layers, width, div, in_ch, classes, stem):
    """Parameters of a plain ResNet whose stages 2-4 are divided by ``div`` (1 = full network)."""
    exp, ks = (4, [1, 3, 1]) if block == "bottleneck" else (1, [3, 3])
    conv = lambda ci, co, k: ci * co * k * k + 2 * co  # noqa: E731  conv + its BN
    total = conv(in_ch, width, 7 if stem == "imagenet" else 3)
    cin = width
    for i, n in enumerate(layers):
        d = div if i > 0 else 1
        mid, out = width * 2 ** i // d, width * 2 ** i * exp // d
        for b in range(n):
            ws = [cin] + [mid] * (len(ks) - 1) + [out]
            total += sum(conv(ws[j], ws[j + 1], k) for j, k in enumerate(ks))
            if b == 0 and (i > 0 or exp > 1):  # stride 2, or a channel change in stage 1
                total += conv(cin, out, 1)
            cin = out
    return total + cin * classes + classes


@pytest.mark.parametrize("name", list(SPECS))
def test_param_counts_by_formula(name):
    block, layers = SPECS[name]
    width = 8 if name != "adjoined_resnet18" else 16
    m = getattr(ak.models, name)(num_classes=7, alpha=4, in_channels=2, stem="imagenet", width=width)
    full = sum(p.numel() for p in export_full(m).parameters())
    small = sum(p.numel() for p in ak.export_small(m).parameters())
    assert full == _count(block, layers, width, 1, 2, 7, "imagenet")
    assert small == _count(block, layers, width, 4, 2, 7, "imagenet")
    small_bn = sum(p.numel() for n, p in m.named_parameters() if ".small." in n)
    assert sum(p.numel() for p in m.parameters()) == full + small_bn


@pytest.mark.parametrize("name,stem,hw", [("adjoined_resnet18", "cifar", 20), ("adjoined_resnet50", "imagenet", 40)])
def test_output_shapes_and_export_exact(name, stem, hw):
    torch.manual_seed(0)
    m = getattr(ak.models, name)(num_classes=5, alpha=2, in_channels=3, stem=stem, width=8)
    x = torch.randn(3, 3, hw, hw + 3)
    m.train()
    for _ in range(2):  # move the BN running stats away from their init
        m(x)
    m.eval()
    with torch.no_grad():
        lf, ls = m(x)
        small, full = ak.export_small(m).eval()(x), export_full(m).eval()(x)
        folded = ak.export_small(m, fold_bn=True)(x)
    assert lf.shape == ls.shape == (3, 5)
    assert (small - ls).norm() / ls.norm() < 1e-5
    assert (full - lf).norm() / lf.norm() < 1e-5
    assert (folded - ls).norm() / ls.norm() < 1e-5
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in ak.export_small(m, fold_bn=True).modules())


def test_export_uses_plain_layers_only():
    m = ak.models.adjoined_resnet18(num_classes=3, alpha=4, in_channels=1, stem="cifar", width=8)
    plain_types = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear, torch.nn.ReLU, torch.nn.MaxPool2d,
                   torch.nn.Identity)
    leaves = [mod for mod in ak.export_small(m).modules() if not list(mod.children())]
    assert leaves and all(isinstance(mod, plain_types) for mod in leaves)
    convs = [mod for mod in ak.export_small(m).modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs[-1].out_channels == 64 // 4  # last stage is physically sliced


def test_alpha_one_small_equals_full():
    torch.manual_seed(1)
    m = ak.models.adjoined_resnet18(num_classes=4, alpha=1, in_channels=1, stem="cifar", width=8)
    lf, ls = m(torch.randn(2, 1, 12, 12))  # train mode: both BNs see the same batch
    torch.testing.assert_close(lf, ls)


def test_small_widths_plan_sets_per_layer_widths():
    plan = [StageWidths(12, [[5], [7]]), StageWidths(20, [[3], [9]]), StageWidths(33, [[17], [1]])]
    m = ak.models.adjoined_resnet18(num_classes=3, in_channels=1, stem="cifar", width=16, small_widths=plan)
    assert m.small_widths == plan
    small = ak.export_small(m)
    widths = [mod.out_channels for mod in small.stages[1].modules() if isinstance(mod, torch.nn.Conv2d)]
    assert widths == [5, 12, 12, 7, 12, 3, 20, 20, 9, 20, 17, 33, 33, 1, 33]
    m.eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), m(x)[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="stage"):
        ak.models.adjoined_resnet18(small_widths=plan[:2])
