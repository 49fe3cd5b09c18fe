"""ak.adjoin on the torchvision coverage list (random weights, CPU, 32x32 inputs): train-mode forward and
backward, export exactness in eval (NCHW and channels_last, alpha 2 and 4), parameter counts of the
exported small net computed from the widths, FLOPs of the adjoined part, alpha=1 equality, and the
AN-50-Small check against the hand-written adjoined ResNet-50."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn

import adjoined_kernels as ak
from adjoined_kernels.adjoin import DEFAULT_START

tv = pytest.importorskip("torchvision")

MODELS = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "mobilenet_v2",
          "mobilenet_v3_small", "efficientnet_b0", "densenet121"]
CL = torch.channels_last
HW = 32


@pytest.fixture(autouse=True, scope="module")
def clear_caches(one_thread):
    """Tiny problems on one thread (conftest's one_thread); the cached models go with the module."""
    yield
    base.cache_clear()
    adjoined.cache_clear()


@functools.cache
def base(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(tv.models, name)(num_classes=10)


@functools.cache
def adjoined(name: str, alpha: int) -> ak.AdjoinedModel:
    return ak.adjoin(base(name), alpha=alpha, start=DEFAULT_START[name])


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def batch(seed: int, fmt=torch.contiguous_format, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, HW, HW, generator=g).contiguous(memory_format=fmt), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("alpha", [2, 4])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_and_export_exact(name, alpha, fmt):
    m = adjoined(name, alpha).to(memory_format=fmt).train()
    x, y = batch(1, fmt)
    with torch.no_grad():
        m(batch(2, fmt)[0] * 2 + 0.5)  # move every BN's running statistics away from (0, 1)
    m.zero_grad(set_to_none=True)
    lf, ls = m(x)
    assert lf.shape == ls.shape == (2, 10)
    if alpha == 4:  # backward on half of the matrix keeps the suite fast; alpha only changes the widths
        ak.adjoined_loss(lf, ls, y, 0.5).backward()
        for n, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        small_bn = [p.grad for n, p in m.named_parameters() if n.endswith(".small.weight")]
        assert small_bn and all(g.abs().sum() > 0 for g in small_bn)  # the small branch back-propagates
    m.eval()
    full, small = ak.export_full(m).to(memory_format=fmt), ak.export_small(m).to(memory_format=fmt)
    with torch.no_grad():
        lf, ls = m(x)
        assert rel(small(x), ls) < 1e-5 and rel(full(x), lf) < 1e-5
        if fmt == CL:  # channels_last gives what NCHW gives
            m_nchw = m.to(memory_format=torch.contiguous_format)
            lf0, ls0 = m_nchw(x.contiguous())
            assert rel(lf, lf0) < 1e-5 and rel(ls, ls0) < 1e-5
    assert not torch.allclose(lf, ls)


def _expected_small_params(name: str, alpha: int, small: nn.Module) -> int:
    """Parameters of the small network from the original model and alpha alone: layers registered before
    ``start`` are shared (full size); every later conv/linear has ``out // alpha`` outputs (the logits layer,
    the model's last Linear, keeps its outputs), grouped convs keep ``groups // alpha`` groups, BNs follow
    their input. Input widths are read off the exported net's actual inputs."""
    widths = {}
    hooks = [mod.register_forward_hook(lambda mod, i, o, p=p: widths.__setitem__(p, i[0].shape[1]))
             for p, mod in small.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    with torch.no_grad():
        small(batch(3)[0])
    for h in hooks:
        h.remove()
    model, start = base(name), DEFAULT_START[name]
    paths = [p for p, _ in model.named_modules()]
    first = paths.index(start)
    logits = [p for p, mod in model.named_modules() if isinstance(mod, nn.Linear)][-1]
    total = 0
    for i, (p, mod) in enumerate(model.named_modules()):
        if not isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            continue
        if i < first:
            total += sum(t.numel() for t in mod.parameters())
            continue
        if isinstance(mod, nn.BatchNorm2d):
            total += 2 * widths[p]
        elif isinstance(mod, nn.Linear):
            out = mod.out_features if p == logits else mod.out_features // alpha
            total += out * widths[p] + out
        else:
            out, groups = mod.out_channels // alpha, max(1, mod.groups // alpha)
            assert small.get_submodule(p).out_channels == max(1, out)
            total += max(1, out) * widths[p] // groups * mod.kernel_size[0] * mod.kernel_size[1]
            total += max(1, out) if mod.bias is not None else 0
    return total


def _flops(net: nn.Module, shared: list[str]) -> tuple[int, int]:
    """(total FLOPs, FLOPs of the shared layers) of ``net`` on one 32x32 image (torch's flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(batch(4, n=1)[0])
    counts = fc.get_flop_counts()
    mods = {k.split(".", 1)[1]: sum(v.values()) for k, v in counts.items() if "." in k}
    return sum(counts["Global"].values()), sum(mods.get(p, 0) for p in shared)


@pytest.mark.parametrize("alpha", [2, 4])
@pytest.mark.parametrize("name", MODELS)
def test_small_params_flops_and_fold(name, alpha):
    m = adjoined(name, alpha).to(memory_format=torch.contiguous_format).eval()
    small, full = ak.export_small(m), ak.export_full(m)
    assert sum(p.numel() for p in small.parameters()) == _expected_small_params(name, alpha, small)
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in base(name).parameters())
    (f_tot, f_sh), (s_tot, s_sh) = _flops(full, m.shared), _flops(small, m.shared)
    assert f_sh == s_sh > 0
    # ~1/alpha^2 in the adjoined part; more where a layer reads the full-width shared tensor, keeps its
    # logits, or is grouped/depthwise (those scale as 1/alpha): at most 1.5/alpha^2 on this list.
    ratio = (s_tot - s_sh) / (f_tot - f_sh) * alpha ** 2
    assert 1.0 <= ratio <= 1.5, ratio
    x = batch(5)[0]
    folded = ak.export_small(m, fold_bn=True)
    with torch.no_grad():
        ls = m(x)[1]
        assert rel(folded(x), ls) < 1e-5
    n_bn = sum(isinstance(mod, nn.BatchNorm2d) for mod in small.modules())
    assert sum(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules()) < n_bn


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "densenet121"])
def test_alpha_one_equals_model(name):
    model = copy.deepcopy(base(name)).eval()
    m = ak.adjoin(model, alpha=1, start=DEFAULT_START[name])
    x = batch(6)[0]
    with torch.no_grad():
        ref = model(x)
        lf, ls = m(x)
    assert torch.equal(lf, ref) and torch.equal(ls, ref)
    if name in ("resnet18", "densenet121"):  # no dropout: train mode is deterministic too
        model.train()
        m.train()
        with torch.no_grad():
            ref = model(x)
            lf, ls = m(x)
        assert torch.equal(lf, ref) and torch.equal(ls, ref)
        bn = next(p for p, mod in m.net.named_modules() if isinstance(mod, ak.AdjoinedBatchNorm2d))
        pair, orig = m.net.get_submodule(bn), model.get_submodule(bn)
        assert torch.equal(pair.full.running_mean, orig.running_mean)
        assert torch.equal(pair.small.running_mean, orig.running_mean)


def test_resnet50_matches_adjoined_resnet50():
    """AN-50-Small at alpha=4: 2.2M parameters, as the paper's Table 3 reports, from either construction."""
    from adjoined_kernels.train.report import count_flops, count_params
    m = adjoined("resnet50", 4)
    hand = ak.models.adjoined_resnet50(num_classes=10, alpha=4, stem="imagenet")
    small, hand_small = ak.export_small(m), ak.export_small(hand)
    assert count_params(small) == count_params(hand_small)
    assert count_params(ak.export_full(m)) == count_params(ak.export_full(hand))
    assert count_flops(small, (3, 64, 64)) == count_flops(hand_small, (3, 64, 64))
    assert count_flops(ak.export_full(m), (3, 64, 64)) == count_flops(ak.export_full(hand), (3, 64, 64))
    assert m.start == "layer2"


def test_resnet50_imagenet_small_params_2_2m():
    """The issue's check verbatim: torchvision's ResNet-50 (1000 classes), start defaulting to layer2."""
    from adjoined_kernels.train.report import count_params
    m = ak.adjoin(tv.models.resnet50(), alpha=4)
    n = count_params(ak.export_small(m))
    assert n == count_params(ak.export_small(ak.models.adjoined_resnet50(alpha=4, stem="imagenet")))
    assert round(n / 1e5) == 22


def test_shufflenet_refused_with_channel_shuffle_error():
    with pytest.raises(ValueError, match=r"(?s)fx node 'view'.*module 'stage2\.0'.*channel shuffle"):
        ak.adjoin(tv.models.shufflenet_v2_x0_5(num_classes=10), alpha=2, start="stage2")
