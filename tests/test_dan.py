"""DAN search network: expected FLOPs, gate placement and gradients, Gumbel noise, the loss, width round trips."""
import itertools
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import adjoined_kernels as ak
from adjoined_kernels.dan import dan_loss, flops_penalty, tau_at, tau_at_step
from adjoined_kernels.export import export_full
from adjoined_kernels.models import AdjoinedResNet, StageWidths
from adjoined_kernels.nn import AdjoinedBatchNorm2d


def counted(net, hw, in_ch):
    net = net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.randn(1, in_ch, *hw))
    return fc.get_total_flops()


def one_hot_gates(net, gen):
    """Random well-separated eta (gaps of 100) with a tiny tau: softmax(eta) and softmax(eta / tau) are one-hot
    to float precision, and noise cannot flip the Gumbel-max sample."""
    for eta in net.arch_parameters():
        eta.data.copy_(torch.randperm(eta.numel(), generator=gen).float() * 100)
    net.tau = 1e-3


def sliced_copy(dst, src):
    """Load ``src``'s state into ``dst`` taking the leading block of every tensor (small BNs are prefixes)."""
    state = src.state_dict()
    new = {k: state[k][tuple(slice(0, d) for d in v.shape)] if v.dim() else state[k]
           for k, v in dst.state_dict().items()}
    dst.load_state_dict(new)


CASES = [("basic", [2, 2, 2, 2], "cifar", (20, 20), (1, 2, 4, 8)),
         ("bottleneck", [1, 2, 1, 1], "imagenet", (45, 38), (1, 2, 4)),
         ("basic", [1, 1, 2, 1], "imagenet", (33, 64), (2, 4))]


@pytest.mark.parametrize("block,layers,stem,hw,alphas", CASES)
def test_expected_flops_one_hot_equals_flop_counter(block, layers, stem, hw, alphas):
    gen = torch.Generator().manual_seed(1)
    net = AdjoinedResNet(block, layers, num_classes=7, in_channels=3, stem=stem, width=8, search_alphas=alphas)
    one_hot_gates(net, gen)
    net(torch.randn(2, 3, *hw))
    widths = net.searched_widths()
    assert len({w for st in widths for w in [st.out, *sum(st.inner, [])]}) > 1, "want a non-uniform architecture"
    found = AdjoinedResNet(block, layers, num_classes=7, in_channels=3, stem=stem, width=8, small_widths=widths)
    expected = net.expected_small_flops().item()
    assert abs(expected - counted(ak.export_small(found), hw, 3)) <= 1e-6 * expected
    assert net.full_flops() == counted(export_full(found), hw, 3)
    assert found.small_flops(hw) == counted(ak.export_small(found), hw, 3)


def test_expected_flops_soft_gates_equal_enumeration():
    torch.manual_seed(0)
    hw = (16, 12)
    net = AdjoinedResNet("basic", [1, 1, 1, 1], num_classes=5, in_channels=2, stem="cifar", width=4,
                         search_alphas=(1, 2))
    for eta in net.arch_parameters():
        eta.data.normal_()
    net.tau = 0.7
    gates = net.search.gates
    probs = [g.probs().detach().double() for g in gates]  # softmax(eta): tau plays no part
    total = 0.0
    for choice in itertools.product(range(2), repeat=len(gates)):
        w = [g.widths[c] for g, c in zip(gates, choice)]
        p = math.prod(float(pr[c]) for pr, c in zip(probs, choice))
        widths = [StageWidths(w[2 * i], [[w[2 * i + 1]]]) for i in range(3)]  # per stage: out, then conv1
        small = AdjoinedResNet("basic", [1, 1, 1, 1], num_classes=5, in_channels=2, stem="cifar", width=4,
                               small_widths=widths)
        total += p * counted(ak.export_small(small), hw, 2)
    got = net.expected_small_flops(hw).item()
    assert abs(got - total) <= 1e-6 * total
    net.tau = 9.0  # E[FLOPs] is over softmax(eta), the law of the Gumbel-max sample: tau plays no part
    assert net.expected_small_flops(hw).item() == got


def test_expected_flops_needs_a_size_and_a_search_net():
    net = ak.models.adjoined_resnet18(num_classes=3, width=8, stem="cifar", search_alphas=(1, 2))
    with pytest.raises(RuntimeError, match="input_size"):
        net.expected_small_flops()
    assert net.expected_small_flops((8, 8)).requires_grad
    plain = ak.models.adjoined_resnet18(num_classes=3, width=8, stem="cifar")
    with pytest.raises(RuntimeError, match="search_alphas"):
        plain.expected_small_flops((8, 8))
    with pytest.raises(RuntimeError, match="search_alphas"):
        plain.tau = 1.0
    assert plain.arch_parameters() == []


def test_one_hot_search_net_is_the_searched_network():
    """Gates after the small BNs: a one-hot gate is exactly the narrower network, batch statistics included."""
    gen = torch.Generator().manual_seed(3)
    kw = dict(num_classes=6, in_channels=3, stem="cifar", width=8)
    net = AdjoinedResNet("bottleneck", [1, 2, 1, 1], search_alphas=(1, 2, 4), **kw)
    one_hot_gates(net, gen)
    found = AdjoinedResNet("bottleneck", [1, 2, 1, 1], small_widths=net.searched_widths(), **kw)
    sliced_copy(found, net)
    x = torch.randn(4, 3, 12, 12)
    lf, ls = net.train()(x)
    rf, rs = found.train()(x)
    torch.testing.assert_close(lf, rf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ls, rs, rtol=1e-5, atol=1e-5)


def _eta_grads(net, x, y):
    net.zero_grad(set_to_none=True)
    lf, ls = net(x)
    dan_loss(lf, ls, y, 1.0, net.expected_small_flops(), net.full_flops(), flops_weight=0.0,
             backend="reference").backward()
    return torch.stack([e.grad.abs().max() for e in net.arch_parameters()])


def test_ce_kl_reach_every_gate_after_bn_but_not_before(monkeypatch):
    torch.manual_seed(0)
    net = ak.models.adjoined_resnet18(num_classes=5, in_channels=3, stem="cifar", width=8,
                                      search_alphas=(1, 2, 4), tau=1.0)
    for eta in net.arch_parameters():
        eta.data.normal_()
    for m in net.modules():  # BN's eps is the only way a scale before it can leak through: take it away
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-12
    x, y = torch.randn(6, 3, 10, 10), torch.randint(0, 5, (6,))
    torch.manual_seed(1)
    after = _eta_grads(net, x, y)
    assert (after > 1e-6).all(), after

    def gate_before_bn(self, z_full, z_small, small_scale=None):
        if small_scale is not None:
            z_small = z_small * small_scale.view(1, -1, 1, 1)
        return self.full(z_full), self.small(z_small)
    monkeypatch.setattr(AdjoinedBatchNorm2d, "forward", gate_before_bn)
    torch.manual_seed(1)
    before = _eta_grads(net, x, y)
    assert (before < 1e-6 * after).all(), (before, after)


def test_gumbel_noise_fresh_every_training_forward_and_absent_in_eval():
    torch.manual_seed(0)
    net = ak.models.adjoined_resnet18(num_classes=5, in_channels=1, stem="cifar", width=8, search_alphas=(1, 2, 4))
    for eta in net.arch_parameters():
        eta.data.normal_()
    net.tau = 0.5
    x = torch.randn(3, 1, 10, 10)
    net.train()
    s1 = net.search.block_scales(noise=True)[0][1]
    s2 = net.search.block_scales(noise=True)[0][1]
    assert not torch.equal(s1, s2)
    net.eval()
    with torch.no_grad():
        a, b = net(x)[1], net(x)[1]
    assert torch.equal(a, b)
    probs = net.search.gates[0].relaxed(net.search.tau)
    torch.testing.assert_close(net.search.block_scales(noise=False)[0][1], net.search.gates[0].scale(probs))
    calls = []
    gate_cls = type(net.search.gates[0])
    orig = gate_cls.gumbel_weights
    gate_cls.gumbel_weights = lambda self, tau: calls.append(self.name) or orig(self, tau)
    try:
        net.train()(x)
        net.train()(x)
        net.eval()(x)
    finally:
        gate_cls.gumbel_weights = orig
    assert sorted(calls) == sorted([g.name for g in net.search.gates] * 2)  # each gate once per training forward


def test_gumbel_max_frequencies_follow_softmax_eta():
    """argmax of the Gumbel weights is distributed as softmax(eta): the noise has the right law and sign."""
    torch.manual_seed(0)
    gate = ak.models.WidthGate("g", 16, (1, 2, 4, 8))
    gate.eta.data = torch.tensor([0.5, -1.0, 1.5, 0.0])
    n = 20000
    hits = torch.zeros(4)
    with torch.no_grad():
        for _ in range(n):
            hits[gate.gumbel_weights(1.0).argmax()] += 1
    torch.testing.assert_close(hits / n, torch.softmax(gate.eta.detach(), 0), atol=0.015, rtol=0)


def test_gate_scale_is_the_mixture_of_prefix_masks():
    gate = ak.models.WidthGate("g", 32, (1, 2, 8))
    g = torch.tensor([0.2, 0.5, 0.3])
    z = torch.randn(32)
    mixture = sum(gi * torch.where(torch.arange(32) < c, z, torch.zeros(())) for gi, c in zip(g, gate.widths))
    torch.testing.assert_close(gate.scale(g) * z, mixture)


def test_bad_search_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"layer2\.out width=16 is not divisible by alpha=3"):
        ak.models.adjoined_resnet18(width=8, search_alphas=(1, 3))
    with pytest.raises(ValueError, match="distinct positive ints"):
        ak.models.adjoined_resnet18(width=8, search_alphas=(2, 2))
    with pytest.raises(ValueError, match="not both"):
        ak.models.adjoined_resnet18(width=8, search_alphas=(1, 2), small_widths=[])
    net = ak.models.adjoined_resnet18(width=8, search_alphas=(1, 2))
    with pytest.raises(ValueError, match="tau"):
        net.tau = 0.0
    with pytest.raises(ValueError, match="searched_widths"):
        ak.export_small(net)


def test_dan_loss_terms_and_target_mode():
    torch.manual_seed(0)
    lf, ls, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    e = torch.tensor(30.0, requires_grad=True)
    base = ak.adjoined_loss(lf, ls, y, 0.7, backend="reference")
    got = dan_loss(lf, ls, y, 0.7, e, 100.0, 2.0, backend="reference")
    torch.testing.assert_close(got, base + 0.7 * 2.0 * 0.3)
    below = dan_loss(lf, ls, y, 0.7, e, 100.0, 2.0, flops_target=0.4, backend="reference")
    torch.testing.assert_close(below, base)
    above = dan_loss(lf, ls, y, 0.7, e, 100.0, 2.0, flops_target=0.25, backend="reference")
    torch.testing.assert_close(above, base + 0.7 * 2.0 * 0.05)
    above.backward()
    torch.testing.assert_close(e.grad, torch.tensor(0.7 * 2.0 / 100.0))
    assert flops_penalty(torch.tensor(10.0), 100.0, 0.2).item() == 0.0
    for bad in (dict(full_flops=0.0), dict(flops_weight=-1.0), dict(flops_target=1.5)):
        kw = dict(full_flops=100.0, flops_weight=1.0) | bad
        with pytest.raises(ValueError):
            dan_loss(lf, ls, y, 0.7, e, **kw)
    with pytest.raises(ValueError, match="mean"):
        dan_loss(lf, ls, y, 0.7, e, 100.0, 1.0, reduction="sum")


def test_tau_schedule():
    assert tau_at(0) == 15.0
    assert tau_at(10) == pytest.approx(15.0 * math.exp(-0.45))
    assert tau_at(3, 2.0, 0.1) == pytest.approx(2.0 * math.exp(-0.3))


def test_band_term_is_keyed_on_the_argmax_network():
    """TAS-style band: +E/full above the target, -E/full below (1 - tol) * target, 0 inside (docs/dan.md)."""
    e = torch.tensor(30.0, requires_grad=True)
    for arg, sign in ((41.0, 1.0), (40.0, 0.0), (38.5, 0.0), (37.9, -1.0)):
        got = flops_penalty(e, 100.0, 0.4, torch.tensor(arg), tolerance=0.05)
        assert got.item() == pytest.approx(sign * 0.3), arg
    torch.manual_seed(0)
    lf, ls, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    base = ak.adjoined_loss(lf, ls, y, 0.5, backend="reference")
    below = dan_loss(lf, ls, y, 0.5, e, 100.0, 2.0, 0.4, argmax_flops=10.0, backend="reference")
    torch.testing.assert_close(below, base - 0.5 * 2.0 * 0.3)
    below.backward()
    assert e.grad.item() == pytest.approx(-0.5 * 2.0 / 100.0)  # pushes E[FLOPs] up
    with pytest.raises(ValueError, match="flops_tolerance"):
        dan_loss(lf, ls, y, 0.5, e, 100.0, 2.0, 0.4, argmax_flops=10.0, flops_tolerance=1.0)


def test_argmax_small_flops_counts_the_argmax_network():
    gen = torch.Generator().manual_seed(4)
    net = ak.models.adjoined_resnet18(num_classes=5, stem="cifar", width=8, search_alphas=(1, 2, 4))
    for eta in net.arch_parameters():
        eta.data.copy_(torch.randn(3, generator=gen))
    found = ak.models.adjoined_resnet18(num_classes=5, stem="cifar", width=8, small_widths=net.searched_widths())
    assert net.argmax_small_flops((12, 12)).item() == found.small_flops((12, 12))


def test_tau_per_step_schedule():
    assert tau_at_step(0, 100, 15.0, 0.5) == 15.0
    assert tau_at_step(99, 100, 15.0, 0.5) == pytest.approx(0.5)
    assert tau_at_step(33, 100, 15.0, 0.5) == pytest.approx(15.0 * (0.5 / 15.0) ** (33 / 99))
    assert tau_at_step(0, 1, 15.0, 0.5) == 15.0


def test_trainer_tau_hooks_follow_the_chosen_schedule():
    from types import SimpleNamespace

    from adjoined_kernels.train.search import set_step_tau, start_epoch
    net = ak.models.adjoined_resnet18(num_classes=3, width=8, stem="cifar", search_alphas=(1, 2))
    per_step = SimpleNamespace(tau_schedule="step", tau0=15.0, tau_end=0.5, tau_decay=0.045)
    start_epoch(per_step, net, 3)
    assert net.tau == 15.0  # the epoch hook leaves a per-step schedule alone
    set_step_tau(per_step, net, 10, 21)
    assert net.tau == pytest.approx(tau_at_step(10, 21, 15.0, 0.5))
    per_epoch = SimpleNamespace(tau_schedule="epoch", tau0=15.0, tau_end=0.5, tau_decay=0.045)
    start_epoch(per_epoch, net, 3)
    set_step_tau(per_epoch, net, 10, 21)  # and the step hook leaves a per-epoch schedule alone
    assert net.tau == pytest.approx(tau_at(3))
