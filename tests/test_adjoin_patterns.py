"""ak.adjoin on small hand-written models: every supported pattern against a small network written out by
hand with explicit weight slices, the refused patterns and their messages, small_widths, the Triton
backend against the reference on one training step, fold_bn and ONNX."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adjoined_kernels as ak

from bounds import GradTolerances, eps


pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


class Body(nn.Module):
    """Concatenation, BN and a conv over it (gathered), a channel chunk of a concatenation, a depthwise conv,
    an SE gate built from Linears and a view, a spatial gate broadcast over channels, a per-channel
    parameter [C, 1, 1], a channel slice, a reflect-padded conv and a max over space."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(8, 8, 1)
        self.bn_c = nn.BatchNorm2d(24)
        self.conv_d = nn.Conv2d(24, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc1, self.fc2 = nn.Linear(16, 8), nn.Linear(8, 16)
        self.conv_sp = nn.Conv2d(16, 1, 3, padding=1)
        self.conv_r = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.scale = nn.Parameter(torch.rand(16, 1, 1) + 0.5)

    def forward(self, x):
        a = F.relu(self.bn_a(self.conv_a(x)))
        c = self.bn_c(torch.cat([a, self.conv_b(x)], 1))
        d = self.conv_d(c)
        d1, d2 = torch.cat([d, torch.tanh(d)], 1).chunk(2, dim=1)
        g = self.dw(d1 + d2)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(torch.flatten(F.adaptive_avg_pool2d(g, 1), 1)))))
        g = g * s.view(s.shape[0], 16, 1, 1)
        g = g * torch.sigmoid(self.conv_sp(g)) * self.scale
        return self.conv_r(g[:, 2:10]).amax((2, 3))


class Sink(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.body = Body()
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(F.relu(self.body(self.stem(x))))


def _bn(x, bn, idx):
    return F.batch_norm(x, bn.running_mean[idx], bn.running_var[idx], bn.weight[idx], bn.bias[idx], False, 0.0,
                        bn.eps)


def small_reference(model: Sink, a: int, x):
    """The small network of ``Sink`` at alpha ``a``, written out by hand (eval mode)."""
    b, n16, n8, h = model.body, 16 // a, 8 // a, 8 // a
    s = model.stem(x)
    ha = F.relu(_bn(F.conv2d(s, b.conv_a.weight[:n16], b.conv_a.bias[:n16], padding=1), b.bn_a, list(range(n16))))
    idx = list(range(n16)) + [16 + i for i in range(n8)]
    c = _bn(torch.cat([ha, F.conv2d(s, b.conv_b.weight[:n8], b.conv_b.bias[:n8])], 1), b.bn_c, idx)
    d = F.conv2d(c, b.conv_d.weight[:n16][:, idx], b.conv_d.bias[:n16])
    g = F.conv2d(d + torch.tanh(d), b.dw.weight[:n16], b.dw.bias[:n16], padding=1, groups=n16)
    se = F.relu(F.linear(g.mean((2, 3)), b.fc1.weight[:h, :n16], b.fc1.bias[:h]))
    g = g * torch.sigmoid(F.linear(se, b.fc2.weight[:n16, :h], b.fc2.bias[:n16]))[:, :, None, None]
    g = g * torch.sigmoid(F.conv2d(g, b.conv_sp.weight[:, :n16], b.conv_sp.bias, padding=1)) * b.scale[:n16]
    k = min(10, n16) - 2  # g[:, 2:10] holds channels 2.. of the small prefix
    r = F.conv2d(F.pad(g[:, 2:2 + k], (1, 1, 1, 1), mode="reflect"), b.conv_r.weight[:n8, :k], b.conv_r.bias[:n8])
    return F.linear(F.relu(r.amax((2, 3))), model.fc.weight[:, :n8], model.fc.bias)


def trained_sink(seed=0):
    torch.manual_seed(seed)
    model = Sink()
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 8, 8) * 3 + 1)  # non-trivial BN statistics
        model.fc.bias.zero_()  # outputs that depend on the input only, so that errors show
    return model.eval()


@pytest.mark.parametrize("alpha", [2, 4])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_patterns_match_hand_written_small_network(alpha, fmt):
    model = trained_sink()
    m = ak.adjoin(model, alpha=alpha, start="body", input_shape=(3, 8, 8)).eval().to(memory_format=fmt)
    x = torch.randn(3, 3, 8, 8).contiguous(memory_format=fmt)
    with torch.no_grad():
        lf, ls = m(x)
        assert rel(lf, model(x)) < 1e-6
        assert rel(ls, small_reference(model, alpha, x)) < 1e-5
        assert rel(ak.export_small(m)(x), ls) < 1e-5 and rel(ak.export_full(m)(x), lf) < 1e-5
        assert rel(ak.export_small(m, fold_bn=True)(x), ls) < 1e-5
    assert m.widths["body.conv_d"] == (16, 16 // alpha) and m.widths["fc"] == (5, 5)
    assert m.shared == ["stem.0", "stem.1", "stem.2"]
    kinds = {p: type(mod).__name__ for p, mod in m.net.named_modules()}
    assert kinds["body.conv_a"] == "FusedAdjoinedConv2d" and kinds["body.dw"] == "SplitAdjoinedConv2d"
    assert kinds["body.conv_d"] == "SplitAdjoinedConv2d" and kinds["body.bn_c"] == "AdjoinedBatchNorm2d"


def test_alpha_one_and_training_step():
    model = trained_sink().train()
    m = ak.adjoin(model, alpha=1, start="body", input_shape=(3, 8, 8))
    x = torch.randn(3, 3, 8, 8)
    lf, ls = m(x)
    ref = model(x)
    assert torch.equal(lf, ref) and torch.equal(ls, ref)
    m2 = ak.adjoin(trained_sink().train(), alpha=2, start="body", input_shape=(3, 8, 8))
    lf, ls = m2(x)
    ak.adjoined_loss(lf, ls, torch.tensor([0, 1, 2]), 1.0).backward()
    g = m2.net.get_submodule("body.conv_d").weight.grad
    assert g is not None and g[8:].abs().sum() > 0 and g[:8].abs().sum() > 0
    assert all(p.grad is not None for p in m2.parameters())


def test_deepcopy_and_state_dict_round_trip():
    m = ak.adjoin(trained_sink(), alpha=2, start="body", input_shape=(3, 8, 8)).eval()
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(0.1)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(m(x), m2(x)))
    # one weight per layer: the adjoined model holds the full network's parameters plus the small BNs only
    small_bn = sum(p.numel() for n, p in m.named_parameters() if ".small." in n)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in ak.export_full(m).parameters()) + small_bn


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer2 = nn.ModuleDict({"c1": nn.Conv2d(8, 16, 3, padding=1), "c2": nn.Conv2d(16, 16, 3, padding=1),
                                     "c3": nn.Conv2d(16, 16, 3, padding=1)})
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = self.layer2["c1"](self.stem(x))
        h = h + F.relu(self.layer2["c2"](h))
        h = self.layer2["c3"](h) + h
        return self.fc(h.mean((2, 3)))


def test_small_widths_override_and_residual_slicing():
    torch.manual_seed(0)
    model = Residual().eval()
    widths = {"layer2.c1": 6, "layer2.c2": 3}
    m = ak.adjoin(model, alpha=4, small_widths=widths, input_shape=(3, 8, 8)).eval()
    assert m.start == "layer2"
    small = ak.export_small(m)
    assert small.get_submodule("layer2.c1").out_channels == 6 and small.get_submodule("layer2.c2").out_channels == 3
    assert small.get_submodule("layer2.c3").in_channels == 3 and small.get_submodule("fc").in_features == 3
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        h = F.conv2d(model.stem(x), model.layer2["c1"].weight[:6], model.layer2["c1"].bias[:6], padding=1)
        c2 = model.layer2["c2"]
        h = h[:, :3] + F.relu(F.conv2d(h, c2.weight[:3, :6], c2.bias[:3], padding=1))
        c3 = model.layer2["c3"]
        h = F.conv2d(h, c3.weight[:4, :3], c3.bias[:4], padding=1)[:, :3] + h
        ref = F.linear(h.mean((2, 3)), model.fc.weight[:, :3], model.fc.bias)
        assert rel(m(x)[1], ref) < 1e-5 and rel(small(x), ref) < 1e-5
    with pytest.raises(ValueError, match="not adjoined convs or linears"):
        ak.adjoin(model, alpha=4, small_widths={"stem": 2}, input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"small_widths\['layer2.c1'\] must be an int in \[1, 16\]"):
        ak.adjoin(model, alpha=4, small_widths={"layer2.c1": 17}, input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="'fc', the logits layer, which keeps its 4 outputs"):
        ak.adjoin(model, alpha=4, small_widths={"fc": 2}, input_shape=(3, 8, 8))


class Wrap(nn.Module):
    """stem conv, then ``body`` (a Sequential of a conv and the op under test), then a classifier."""

    def __init__(self, op: nn.Module, conv_out=16, groups=1):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(16, conv_out, 3, padding=1, groups=groups), op)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class StdConv(nn.Conv2d):
    def forward(self, x):
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True))
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def _shuffle(x):
    n, c, h, w = x.shape
    return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


REFUSED = {
    "channel shuffle": (Wrap(Fn(_shuffle)), "view", "body.1", "as a channel shuffle does"),
    "ChannelShuffle": (Wrap(nn.ChannelShuffle(2)), "body_1", "body.1", "a channel shuffle interleaves"),
    "space mix": (Wrap(Fn(lambda x: x.reshape(x.shape[0], 4, 16, 16).repeat(1, 4, 1, 1)[..., :8, :8])),
                  "reshape", "body.1", "mixes the channel dim with others"),
    "strided slice": (Wrap(Fn(lambda x: x[:, ::2].repeat(1, 2, 1, 1))), "getitem", "body.1",
                      "a strided slice of the channel dim"),
    "Linear over W": (Wrap(nn.Linear(8, 8)), "body_1", "body.1", "nn.Linear in the middle of the network"),
    "LayerNorm": (Wrap(nn.LayerNorm([16, 8, 8])), "body_1", "body.1", "LayerNorm over the channel dim"),
    "channel sum": (Wrap(Fn(lambda x: x * x.sum(1, keepdim=True))), "sum_1", "body.1", r"reduction over dims \[1\]"),
    "roll": (Wrap(Fn(lambda x: torch.roll(x, 1, 1))), "roll", "body.1", "'roll' has no adjoining rule"),
    "groups": (Wrap(nn.Conv2d(16, 16, 3, padding=1, groups=2)), "body_1", "body.1",
               r"needs 8, but the small branch holds 4 of its 16 input channels.*small_widths="),
    "custom conv": (Wrap(nn.Identity()), "conv2d", "body.1", None),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_patterns_name_node_and_module(case):
    model, node, path, why = REFUSED[case]
    if case == "custom conv":
        model.body[1] = StdConv(16, 16, 3, padding=1)
        why = "'conv2d' has no adjoining rule"  # fx traces into the subclass: its F.conv2d is refused
    pattern = rf"(?s)fx node '{node}' .* in module '{path}' \(\w+\): .*{why}"
    with pytest.raises(ValueError, match=pattern):
        ak.adjoin(model, alpha=4, start="body", input_shape=(3, 8, 8))


class Reuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.c(self.body(self.c(x))).mean((2, 3)))


def test_inplace_ops_on_the_shared_tensor_run_once_per_branch():
    """The branches start with an in-place, non-idempotent activation on the shared tensor: each branch must
    apply it to the shared tensor once (run out of place), not twice to one tensor."""
    torch.manual_seed(0)
    model = Wrap(nn.Identity())
    model.body = nn.Sequential(nn.Hardswish(inplace=True), nn.Conv2d(16, 16, 3, padding=1), Fn(lambda x: x.relu_()))
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        lf, ls = ak.adjoin(model, alpha=1, start="body", input_shape=(3, 8, 8))(x)
    assert torch.equal(lf, ref) and torch.equal(ls, ref)
    assert model.body[0].inplace  # the caller's model is untouched


def test_module_shared_and_adjoined_is_refused():
    with pytest.raises(ValueError, match=r"fx node 'c' .*runs both before the branches split and after"):
        ak.adjoin(Reuse(), alpha=2, start="body", input_shape=(4, 8, 8))


def test_each_layer_keeps_its_train_eval_mode():
    model = trained_sink().train()
    model.body.bn_a.eval()  # a frozen BN, as in fine-tuning
    m = ak.adjoin(model, alpha=2, start="body", input_shape=(3, 8, 8))
    bn_a, bn_c = m.net.get_submodule("body.bn_a"), m.net.get_submodule("body.bn_c")
    assert m.training and m.net.training and bn_c.full.training and bn_c.small.training
    assert not bn_a.full.training and not bn_a.small.training


def test_start_errors_list_candidates():
    model = Wrap(nn.Identity())
    with pytest.raises(ValueError, match=r"needs start=.*Candidates: stem, body, body\.0, body\.1, head"):
        ak.adjoin(model)
    with pytest.raises(ValueError, match=r"start='nope' is not a module path.*body\.0"):
        ak.adjoin(model, start="nope")
    with pytest.raises(ValueError, match="alpha must be a positive int"):
        ak.adjoin(model, alpha=0, start="body")
    with pytest.raises(ValueError, match="could not run the model"):
        ak.adjoin(model, start="body", input_shape=(5, 8, 8))


def tiny_resnet():
    torch.manual_seed(0)
    return Wrap(nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2),
                              nn.BatchNorm2d(16), nn.ReLU()), conv_out=16)


@pytest.mark.skipif("triton" not in ak.available_backends(),
                    reason="backend='triton' needs a CUDA GPU or TRITON_INTERPRET=1")
def test_triton_training_step_matches_reference(device):
    """One SGD step of a tiny adjoined CNN (~1e5 MACs) with the Triton backend (the interpreter on CPU)
    and with the reference: outputs, loss, every gradient and the updated weights agree to fp32 rounding.
    Each gradient's bound is its worst-case fp32 rounding (tests/bounds.py), twice (both backends round): a
    conv bias before a BN has a true gradient of 0, so its two values are round-off alone."""
    base = tiny_resnet()
    x = torch.randn(2, 3, 8, 8, device=device)
    y = torch.tensor([0, 2], device=device)
    lr, results = 0.1, []
    for backend in ("reference", "triton"):
        m = ak.adjoin(copy.deepcopy(base), alpha=2, start="body", backend=backend, input_shape=(3, 8, 8))
        m = m.to(device).train()
        assert sum(isinstance(mod, ak.FusedAdjoinedConv2d) and mod.backend == backend for mod in m.modules()) == 2
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        tol = GradTolerances(m)
        lf, ls = m(x)
        loss = ak.adjoined_loss(lf, ls, y, 0.7)
        loss.backward()
        tol.close()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        opt.step()
        params = {n: p.detach() for n, p in m.named_parameters()}
        results.append((lf.detach(), ls.detach(), loss.detach(), grads, params, tol))
    (lf0, ls0, l0, g0, p0, t0), (lf1, ls1, l1, g1, p1, t1) = results
    assert rel(lf1, lf0) < 1e-5 and rel(ls1, ls0) < 1e-5 and abs(float(l1 - l0)) < 1e-5 * float(l0)
    for n in g0:
        bound = t0.bound(n) + t1.bound(n)
        if n.endswith("weight"):  # the bound is not vacuous (the conv biases sit before BNs: round-off only)
            assert 0 < bound < 0.1 * float(g0[n].abs().max()), (n, bound)
        assert float((g1[n] - g0[n]).abs().max()) <= bound, (n, bound)
        step = lr * bound + 2 * eps(torch.float32) * float(p0[n].abs().max())  # p - lr * g, rounded once
        assert float((p1[n] - p0[n]).abs().max()) <= step, n


def test_onnx_export_and_pickle_of_small_network(tmp_path):
    pytest.importorskip("onnxruntime")
    from adjoined_kernels.train.report import export_onnx
    m = ak.adjoin(trained_sink(), alpha=2, start="body", input_shape=(3, 8, 8)).eval()
    for fold in (False, True):
        err = export_onnx(ak.export_small(m, fold_bn=fold), (3, 8, 8), str(tmp_path / f"small{fold}.onnx"))
        assert err is not None and err < 1e-5
    small, x = ak.export_small(m), torch.randn(2, 3, 8, 8)
    torch.save(small, tmp_path / "small.pt")  # what adjoined-train writes
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "small.pt", weights_only=False)(x), small(x))
