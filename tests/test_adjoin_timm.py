"""ak.adjoin on timm CNNs and on layers that read ``self.training``: mode-following after adjoining, one
small model per timm family (exports exact, alpha=1 identity, a training step), the rules timm needs
(per-segment prefixes for channel splits, per-branch LayerNorm2d, depthwise after a concatenation, grouped
widths) and build_timm."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adjoined_kernels as ak

timm = pytest.importorskip("timm", reason="the timm extra is not installed (pip install .[timm])")

pytestmark = pytest.mark.usefixtures("one_thread")

# fp32 outputs of a few hundred multiply-adds per value: relative error well under 1e-5
TOL = 1e-5


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def make(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kw)


class Mixed(nn.Module):
    """nn.Dropout, F.dropout(training=self.training), torchvision StochasticDepth and timm DropPath."""

    def __init__(self):
        super().__init__()
        from torchvision.ops import StochasticDepth
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.sd, self.dp, self.drop = StochasticDepth(0.5, "row"), timm.layers.DropPath(0.5), nn.Dropout(0.3)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.sd(self.conv(x)) + self.dp(self.conv(x))
        x = F.dropout(self.drop(x), 0.4, training=self.training)
        return self.fc(x.mean((2, 3)))


class Functional(Mixed):
    """F.dropout(training=self.training) only: torch.fx would freeze its flag."""

    def forward(self, x):
        x = self.conv(self.stem(x))
        return self.fc(F.dropout(x, 0.4, training=self.training).mean((2, 3)))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("which", ["mixed", "functional", "resnet"])
def test_stochastic_layers_follow_train_and_eval_after_adjoining(mode, which):
    model = {"mixed": Mixed, "functional": Functional}[which]() if which != "resnet" else \
        make("resnet18", drop_path_rate=0.5, drop_rate=0.3)
    model.train(mode == "train")
    m = ak.adjoin(model, alpha=2, start="layer2" if which == "resnet" else "conv", input_shape=(3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():  # eval first: a train-mode forward updates the BN statistics
        m.eval()
        model.eval()
        (f1, s1), (f2, s2) = m(x), m(x)
        assert torch.equal(f1, f2) and torch.equal(s1, s2)
        assert rel(f1, model(x)) < TOL
        assert rel(ak.export_small(m)(x), s1) < TOL
        m.train()
        (f1, s1), (f2, s2) = m(x), m(x)
        assert rel(f1, f2) > 1e-2 and rel(s1, s2) > 1e-2  # a fresh mask per call, in both branches


# one small model per family; start: timm_start (the stage after the 1/4-resolution feature)
FAMILIES = ["resnet10t", "seresnext26t_32x4d", "regnetx_002", "regnety_002", "efficientnet_lite0",
            "tf_efficientnet_lite0", "mobilenetv3_small_050", "densenet121", "convnext_atto", "dla34",
            "repvgg_a0", "res2net50_14w_8s", "cspresnet50", "mixnet_s", "rexnet_100", "dpn68", "ghostnet_050"]


@pytest.mark.parametrize("name", FAMILIES)
def test_family_exports_exact_alpha_one_and_training_step(name):
    model = make(name).eval()
    x = torch.randn(2, 3, 32, 32)
    m = ak.adjoin(model, alpha=4, input_shape=(3, 32, 32)).eval()
    with torch.no_grad():
        lf, ls = m(x)
        assert rel(ak.export_full(m)(x), lf) < TOL and rel(ak.export_small(m)(x), ls) < TOL
        assert rel(lf, model(x)) < TOL
        one = ak.adjoin(model, alpha=1, input_shape=(3, 32, 32)).eval()
        f1, s1 = one(x)
        assert rel(s1, model(x)) < TOL and rel(f1, model(x)) < TOL
    m.train()
    lf, ls = m(torch.randn(2, 3, 32, 32))
    (lf.logsumexp(1).sum() + ls.logsumexp(1).sum()).backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_split_pieces_keep_a_prefix_each():
    """A chunk of a conv's output: the conv keeps a prefix of each piece (per-segment prefixes), so both
    pieces hold channels in the small branch; the small net equals the hand-written one."""
    class Swap(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 1), nn.Linear(16, 3)

        def forward(self, x):
            a, b = self.conv(self.stem(x)).chunk(2, 1)
            return self.fc(torch.cat([b, a.relu()], 1).mean((2, 3)))

    model = Swap().eval()
    m = ak.adjoin(model, alpha=4, start="conv", input_shape=(3, 8, 8)).eval()
    x = torch.randn(3, 3, 8, 8)
    rows = [0, 1, 8, 9]  # a prefix of 2 of each 8-channel piece
    with torch.no_grad():
        z = F.conv2d(model.stem(x), model.conv.weight[rows], model.conv.bias[rows])
        feat = torch.cat([z[:, 2:], z[:, :2].relu()], 1).mean((2, 3))
        ref = F.linear(feat, model.fc.weight[:, [0, 1, 8, 9]], model.fc.bias)  # b comes first in the cat
        assert rel(m(x)[1], ref) < TOL
    assert m.widths["conv"] == (16, 4)


def test_layernorm2d_per_branch():
    model = make("convnext_atto").eval()
    m = ak.adjoin(model, alpha=2, input_shape=(3, 32, 32))
    pair = m.net.get_submodule("stages.1.blocks.0.norm")
    assert pair.small.normalized_shape == (pair.full.normalized_shape[0] // 2,)
    assert torch.equal(pair.small.weight, pair.full.weight[: pair.small.normalized_shape[0]])


def test_grouped_conv_takes_nearest_whole_groups():
    model = make("regnetx_002").eval()  # group width 8: 56 channels are 7 groups
    m = ak.adjoin(model, alpha=2, input_shape=(3, 32, 32))
    full, small = m.widths["s2.b1.conv2.conv"]
    assert full == 56 and small % 8 == 0 and small in (24, 32)


def test_refusal_names_module_type_and_pattern():
    class Shuffle(nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    model = make("resnet10t")
    model.layer3[0].act1 = nn.Sequential(model.layer3[0].act1, Shuffle())
    with pytest.raises(ValueError, match=r"in module 'layer3\.0\.act1\.1' \(Shuffle\): a view .* channel shuffle"):
        ak.adjoin(model, alpha=2, input_shape=(3, 32, 32))


def test_build_timm_fashion_mnist_and_pretrained(tmp_path):
    from adjoined_kernels.adjoin import build_timm
    m = build_timm("mobilenetv3_small_050", 10, 1, 4, None, None, True, "reference")
    assert m.training and m.start == "blocks.1"  # after blocks.0, its 1/4-resolution feature
    x = torch.randn(2, 1, 28, 28)
    lf, ls = m(x)
    assert lf.shape == ls.shape == (2, 10)
    path = tmp_path / "w.pth"
    ref = make("mobilenetv3_small_050")
    torch.save(ref.state_dict(), path)
    m2 = build_timm("mobilenetv3_small_050", 10, 3, 4, None, str(path), False, "reference")
    assert torch.equal(m2.net.get_submodule("blocks.3.0.conv_pw").weight, ref.blocks[3][0].conv_pw.weight)
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        build_timm("mobilenetv3_small_050", 10, 3, 4, None, str(tmp_path / "none.pth"), False, "auto")


def test_cli_accepts_timm_arch():
    from adjoined_kernels.train.cli import build_parser
    args = build_parser().parse_args(["--arch", "timm:mobilenetv3_large_100", "--stem", "cifar"])
    assert args.arch == "timm:mobilenetv3_large_100"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--arch", "timm:"])
