"""CPU benchmarks (pytest-benchmark; run by `make bench`, not by `make test`).

1. Inference latency of the exported small vs full networks: ResNet-50 at alpha=4, 224 px, and CIFAR
   ResNet-18 at alpha=4, in the variants deployments use (eager NCHW, channels_last, BN folded,
   torch.compile, ONNX Runtime).
2. One adjoined training step, compact form vs the authors' masked form vs standard training,
   CIFAR ResNet-18, batch 64.
Each benchmark checks its outputs against eager PyTorch before it is timed.
"""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import adjoined_kernels as ak
from adjoined_kernels.export import export_full, fold_batchnorm
from authors import AuthorsResNet

MODELS = {"resnet50-224": (ak.models.adjoined_resnet50, dict(num_classes=1000, stem="imagenet"), 224),
          "resnet18-cifar": (ak.models.adjoined_resnet18, dict(num_classes=100, stem="cifar"), 32)}
BATCHES = {"resnet50-224": [1, 8, 32], "resnet18-cifar": [1, 32]}
VARIANTS = ["eager", "channels_last", "fold_bn", "compile", "onnxruntime"]
ROUNDS = {1: 20, 8: 10, 32: 5}  # enough for p20/p80 where a run is short; batch 8 carries the 3x target


def _model(name):
    torch.manual_seed(0)
    build, kw, hw = MODELS[name]
    m = build(alpha=4, **kw)
    m.train()
    with torch.no_grad():
        m(torch.randn(4, 3, hw, hw))  # non-trivial BN statistics
    return m.eval(), hw


def _runner(net, variant, x):
    """A callable running ``net`` on ``x`` in ``variant``."""
    if variant == "eager":
        return lambda: net(x)
    if variant == "onnxruntime":
        import onnxruntime as ort
        buf = io.BytesIO()
        torch.onnx.export(fold_batchnorm(net), (x,), buf, opset_version=17,
                          dynamo=False)
        sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        return lambda: torch.from_numpy(sess.run(None, feed)[0])
    net = net.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    if variant in ("fold_bn", "compile"):
        net = fold_batchnorm(net)
    if variant == "compile":
        net = torch.compile(net)
    return lambda: net(xc)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("which", ["full", "small"])
@pytest.mark.parametrize("name,batch", [(n, b) for n in MODELS for b in BATCHES[n]])
def test_inference_latency(benchmark, name, batch, which, variant):
    model, hw = _model(name)
    net = (ak.export_small if which == "small" else export_full)(model).eval()
    x = torch.randn(batch, 3, hw, hw)
    with torch.inference_mode():
        want = net(x)
        run = _runner(net, variant, x)
        got = run()
        assert ((got - want).norm() / want.norm()).item() < 1e-3
        benchmark.group = f"latency {name} batch {batch}"
        benchmark.extra_info.update(model=name, batch=batch, net=which, variant=variant)
        benchmark.pedantic(run, rounds=ROUNDS[batch], warmup_rounds=1)


def _step_fn(kind, model):
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 100, (64,))
    if kind == "standard":
        net = export_full(model).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        loss_fn = lambda: F.cross_entropy(net(x), y)  # noqa: E731
    else:
        net = model.train() if kind == "compact" else AuthorsResNet(model).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        loss_fn = lambda: ak.adjoined_loss(*net(x), y, 0.5)  # noqa: E731

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss
    return step


@pytest.mark.parametrize("kind", ["compact", "authors", "standard"])
def test_training_step(benchmark, kind):
    model, _ = _model("resnet18-cifar")
    step = _step_fn(kind, model)
    assert torch.isfinite(step())
    benchmark.group = "train step resnet18-cifar alpha 4 batch 64"
    benchmark.extra_info.update(model="resnet18-cifar", batch=64, kind=kind)
    benchmark.pedantic(step, rounds=10, warmup_rounds=1)
