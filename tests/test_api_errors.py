"""Bad inputs raise clear ValueError/TypeError naming the argument."""
import pytest
import torch
import torch.nn as nn

import adjoined_kernels as ak


def _conv_args(**over):
    a = dict(x_full=torch.randn(2, 8, 6, 6), x_small=torch.randn(2, 2, 6, 6), weight=torch.randn(4, 8, 3, 3),
             bias=torch.randn(4), small_out_channels=1, padding=1)
    a.update(over)
    return a


@pytest.mark.parametrize("over,exc,match", [
    (dict(x_small=torch.randn(2, 9, 6, 6)), ValueError, "c_in_s <= C_in"),
    (dict(x_full=torch.randn(2, 4, 6, 6)), ValueError, "groups"),
    (dict(x_small=torch.randn(2, 2, 6, 6, dtype=torch.float64)), TypeError, "x_small"),
    (dict(x_small=torch.randn(2, 2, 6, 6).half()), ValueError, "dtype"),
    (dict(x_full=torch.randint(0, 3, (2, 8, 6, 6))), TypeError, "x_full"),
    (dict(weight=torch.randn(4, 8, 3)), ValueError, "weight"),
    (dict(bias=torch.randn(5)), ValueError, "bias"),
    (dict(small_out_channels=5), ValueError, "small_out_channels"),
    (dict(small_scale=torch.randn(3)), ValueError, "small_scale"),
    (dict(stride=0), ValueError, "stride"),
    (dict(x_full=[1.0]), TypeError, "x_full"),
])
def test_conv_bad_inputs(over, exc, match):
    ak.adjoined_conv2d(**_conv_args())  # valid arguments are remembered: the bad call must still be checked
    for _ in range(2):  # and a failed check is not remembered
        with pytest.raises(exc, match=match):
            ak.adjoined_conv2d(**_conv_args(**over))


def test_conv_mixed_devices():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to mix devices")
    with pytest.raises(ValueError, match="device"):
        ak.adjoined_conv2d(**_conv_args(x_small=torch.randn(2, 2, 6, 6, device="cuda")))


def test_unknown_and_unavailable_backends():
    with pytest.raises(ValueError, match="backend"):
        ak.adjoined_conv2d(**_conv_args(), backend="cudnn")
    if "cuda" not in ak.available_backends():
        with pytest.raises(RuntimeError, match="pip install"):
            ak.adjoined_conv2d(**_conv_args(), backend="cuda")


def test_module_width_errors():
    with pytest.raises(ValueError, match="alpha"):
        ak.FusedAdjoinedConv2d(6, 8, 3, alpha=4)
    with pytest.raises(ValueError, match="groups"):
        ak.FusedAdjoinedConv2d(8, 8, 3, groups=2)
    with pytest.raises(ValueError, match="groups"):
        ak.FusedAdjoinedConv2d.from_conv2d(nn.Conv2d(8, 8, 3, groups=2))
    conv = ak.FusedAdjoinedConv2d(8, 8, 3, alpha=2)
    with pytest.raises(ValueError, match="small_in_channels=4"):
        conv(torch.randn(1, 8, 5, 5), torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="alpha"):
        ak.models.adjoined_resnet18(alpha=3)


def test_default_alpha_and_from_conv2d_shares_weight():
    conv = ak.FusedAdjoinedConv2d(8, 16, 3, padding=1)
    assert (conv.small_in_channels, conv.small_out_channels) == (2, 4)
    plain = nn.Conv2d(8, 16, 3, padding=1)
    fused = ak.FusedAdjoinedConv2d.from_conv2d(plain, alpha=2)
    assert fused.weight is plain.weight and fused.bias is plain.bias
    x = torch.randn(2, 8, 7, 7)
    z_full, z_small = fused(x, x[:, :4])
    torch.testing.assert_close(z_full, plain(x))
    assert z_small.shape == (2, 8, 7, 7)


def test_meta_tensors_trace_shapes():
    """Meta tensors (no autocast there) give the output shapes, as F.conv2d does."""
    xf, xs, w = torch.empty(2, 8, 9, 9, device="meta"), torch.empty(2, 2, 9, 9, device="meta"), \
        torch.empty(6, 8, 3, 3, device="meta")
    zf, zs = ak.adjoined_conv2d(xf, xs, w, padding=1, stride=2, small_out_channels=3, backend="reference")
    assert zf.shape == (2, 6, 5, 5) and zs.shape == (2, 3, 5, 5)
