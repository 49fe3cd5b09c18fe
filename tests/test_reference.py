"""The reference ops against independent formulations, in float64 (docs/maths.md, section 1)."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

import adjoined_kernels as ak

CASES = [  # (N1, N2, C_in, c_in_s, C_out, c_out_s, k, stride, padding, dilation, H1, H2)
    (2, 3, 8, 2, 12, 3, 3, 1, 1, 1, 9, 7),
    (3, 2, 6, 6, 8, 2, 1, 2, 0, 1, 8, 11),
    (2, 2, 5, 1, 7, 7, 5, 3, 2, 2, 13, 10),
]


def _inputs(case, seed, bias=True, scale=False):
    n1, n2, cin, cins, cout, couts, k, s, p, d, h1, h2 = case
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return dict(x_full=r(n1, cin, h1, h1 + 1), x_small=r(n2, cins, h2, h2 + 2), weight=r(cout, cin, k, k),
                bias=r(cout) if bias else None, stride=s, padding=p, dilation=d, small_out_channels=couts,
                small_scale=r(couts) if scale else None)


@pytest.mark.parametrize("case", CASES)
def test_conv_ref_matches_authors_masked_form(case):
    a = _inputs(case, 0)
    z_full, z_small = ak.adjoined_conv2d_ref(**a)
    w, xs = a["weight"], a["x_small"]
    cout_s, cin_s = a["small_out_channels"], xs.shape[1]
    mask = torch.zeros_like(w)
    mask[:cout_s, :cin_s] = 1
    xs_padded = F.pad(xs, (0, 0, 0, 0, 0, w.shape[1] - cin_s))
    masked = F.conv2d(xs_padded, w * mask, a["bias"], a["stride"], a["padding"], a["dilation"])[:, :cout_s]
    torch.testing.assert_close(z_small, masked, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z_full, F.conv2d(a["x_full"], w, a["bias"], a["stride"], a["padding"], a["dilation"]))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scale", [False, True])
def test_conv_ref_gradients_match_design_formulas(case, scale):
    a = _inputs(case, 1, scale=scale)
    z_full, z_small = ak.adjoined_conv2d_ref(**a)
    g = torch.Generator().manual_seed(2)
    dzf = torch.randn(z_full.shape, generator=g, dtype=torch.float64)
    dzs = torch.randn(z_small.shape, generator=g, dtype=torch.float64)
    torch.autograd.backward([z_full, z_small], [dzf, dzs])
    w, xf, xs = a["weight"].detach(), a["x_full"].detach(), a["x_small"].detach()
    cout_s, cin_s = a["small_out_channels"], xs.shape[1]
    conv = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"])
    s = a["small_scale"].detach().view(1, -1, 1, 1) if scale else 1.0
    dzs_eff = dzs * s  # the gate scales the small output, so it scales its gradient
    dx_full = conv2d_input(xf.shape, w, dzf, **conv)
    dx_small = conv2d_input(xs.shape, w[:cout_s, :cin_s], dzs_eff, **conv)
    dw = conv2d_weight(xf, w.shape, dzf, **conv)
    dw[:cout_s, :cin_s] += conv2d_weight(xs, (cout_s, cin_s, *w.shape[2:]), dzs_eff, **conv)
    db = dzf.sum((0, 2, 3))
    db[:cout_s] += dzs_eff.sum((0, 2, 3))
    torch.testing.assert_close(a["x_full"].grad, dx_full)
    torch.testing.assert_close(a["x_small"].grad, dx_small)
    torch.testing.assert_close(a["weight"].grad, dw)
    torch.testing.assert_close(a["bias"].grad, db)
    if scale:
        raw = F.conv2d(xs, w[:cout_s, :cin_s], a["bias"].detach()[:cout_s], **conv)
        torch.testing.assert_close(a["small_scale"].grad, (dzs * raw).sum((0, 2, 3)))


def test_conv_memory_format_kept():
    a = _inputs(CASES[0], 3, bias=False)
    a = {k: (v.detach().float() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    a["x_full"] = a["x_full"].contiguous(memory_format=torch.channels_last)
    a["x_small"] = a["x_small"].contiguous(memory_format=torch.channels_last)
    z_full, z_small = ak.adjoined_conv2d(**a)
    assert z_full.is_contiguous(memory_format=torch.channels_last)
    assert z_small.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kind,t,expected", [
    ("quadratic", 0.25, 0.25), ("quadratic", 0.75, 1.0), ("linear", 0.3, 0.3),
    ("cosine", 1.0, 1 - 0.5403023058681398), ("exp", 1.0, 1.718281828459045), ("constant", 0.1, 1.0),
])
def test_lambda_schedules(kind, t, expected):
    assert ak.lambda_schedule(t, kind, c=2.0) == pytest.approx(2.0 * expected)


def test_lambda_schedule_errors():
    with pytest.raises(ValueError, match="kind"):
        ak.lambda_schedule(0.5, "step")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ak.lambda_schedule(1.5)
