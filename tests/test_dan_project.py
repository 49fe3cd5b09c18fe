"""DAN's projection at export (docs/dan.md, "Projection at export"): the exact maximum of sum_l log softmax(eta_l)
against brute force, exported networks in the FLOPs band, and clear errors."""
import itertools

import numpy as np
import pytest
import torch
from test_dan import counted

import adjoined_kernels as ak
from adjoined_kernels.models import AdjoinedResNet
from adjoined_kernels.models.flops import adjoined_flops
from adjoined_kernels.models.project import _widths

TINY = [("basic", [1, 1, 1, 1], "cifar", (13, 11), (1, 2, 4)),  # 6 gates, 729 architectures
        ("bottleneck", [1, 2, 1, 1], "imagenet", (37, 29), (1, 2))]  # 11 gates, 2048 architectures


@pytest.mark.parametrize("block,layers,stem,hw,alphas", TINY)
def test_projection_is_the_brute_force_maximum(block, layers, stem, hw, alphas):
    torch.manual_seed(0)
    net = AdjoinedResNet(block, layers, num_classes=7, stem=stem, width=4, search_alphas=alphas)
    gates = net.search.gates
    choices = np.array(list(itertools.product(*(range(len(g.widths)) for g in gates))))
    flops = np.array([adjoined_flops(net, _widths(net.search, list(c)), hw) for c in choices])
    feasible = infeasible = 0
    for trial in range(12):
        for eta in net.arch_parameters():
            eta.data.normal_(0, 2)
        logp = [torch.log_softmax(g.eta.detach().double(), 0).numpy() for g in gates]
        total = sum(lp[choices[:, i]] for i, lp in enumerate(logp))
        for frac, tol in itertools.product((0.2, 0.5, 0.8), (0.05, 0.01, 0.0)):
            budget = flops.min() + frac * (flops.max() - flops.min())
            band = (flops >= (1 - tol) * budget) & (flops <= budget)
            if not band.any():
                with pytest.raises(ValueError, match="no architecture"):
                    net.project(budget, tol, hw)
                infeasible += 1
                continue
            p = net.project(budget, tol, hw)
            assert p.log_prob == pytest.approx(total[band].max(), abs=1e-9)
            assert p.log_prob == pytest.approx(sum(lp[k] for lp, k in zip(logp, p.choice)), abs=1e-9)
            assert p.argmax_log_prob == pytest.approx(total.max(), abs=1e-9)
            assert (1 - tol) * budget <= p.flops <= budget and p.flops == adjoined_flops(net, p.widths, hw)
            feasible += 1
    assert feasible > 50 and infeasible > 5  # both branches were exercised


EXPORT = [(ak.models.adjoined_resnet18, "cifar", 16, (32, 32), (1, 2, 4, 8, 16)),
          (ak.models.adjoined_resnet50, "imagenet", 16, (64, 64), (1, 2, 4, 8))]


@pytest.mark.parametrize("ctor,stem,width,hw,alphas", EXPORT)
def test_random_eta_exports_a_network_in_the_band(ctor, stem, width, hw, alphas):
    """Counted by torch.utils.flop_counter on export_small, at budgets of the uniform alpha = 2, 4, 8 nets."""
    gen = torch.Generator().manual_seed(5)
    kw = dict(num_classes=10, in_channels=3, stem=stem, width=width)
    net = ctor(search_alphas=alphas, **kw)
    for eta in net.arch_parameters():
        eta.data.copy_(torch.randn(eta.shape, generator=gen) * 3)
    for alpha in (2, 4, 8):
        budget = ctor(alpha=alpha, **kw).small_flops(hw)
        widths = net.searched_widths(flops_budget=budget, tolerance=0.05, input_size=hw)
        found = ctor(small_widths=widths, **kw)
        got = counted(ak.export_small(found), hw, 3)
        assert 0.95 * budget <= got <= budget, (alpha, got / budget)
    assert net.searched_widths() == net.search.argmax_widths()


def test_infeasible_budget_names_the_reachable_range():
    net = ak.models.adjoined_resnet18(num_classes=10, stem="cifar", width=8, search_alphas=(2, 4))
    hw = (16, 16)
    small = adjoined_flops(net, net.search._map(lambda g: min(g.widths)), hw)
    large = adjoined_flops(net, net.search._map(lambda g: max(g.widths)), hw)
    for budget in (small - 1, large / 0.9):
        with pytest.raises(ValueError, match=f"from {small:,} .* to {large:,} "):
            net.searched_widths(flops_budget=budget, tolerance=0.05, input_size=hw)
    assert net.project(small, 0.0, hw).flops == small  # the edges are reachable
    assert net.project(large, 0.0, hw).flops == large
    for bad in (dict(flops_budget=0), dict(flops_budget=small, tolerance=1.0)):
        with pytest.raises(ValueError, match="flops_budget"):
            net.searched_widths(input_size=hw, **bad)
    with pytest.raises(RuntimeError, match="input_size"):
        net.searched_widths(flops_budget=large)


def test_eval_choice_runs_the_projected_network_through_the_super_network():
    """One-hot eval gates of the projection give the exported network's logits (running statistics included)."""
    from test_dan import sliced_copy
    torch.manual_seed(2)
    kw = dict(num_classes=6, in_channels=3, stem="cifar", width=8)
    net = ak.models.adjoined_resnet18(search_alphas=(1, 2, 4), **kw)
    for eta in net.arch_parameters():
        eta.data.normal_()
    x = torch.randn(4, 3, 12, 12)
    net.train()(x)  # running statistics move away from their initial values
    p = net.project(ak.models.adjoined_resnet18(alpha=2, **kw).small_flops((12, 12)), 0.1, (12, 12))
    found = ak.models.adjoined_resnet18(small_widths=p.widths, **kw)
    sliced_copy(found, net)
    net.search.eval_choice = p.choice
    with torch.no_grad():
        got, want = net.eval()(x)[1], found.eval()(x)[1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
