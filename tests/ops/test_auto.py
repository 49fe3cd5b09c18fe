"""``backend="auto"``: per layer geometry the fastest available backend, reference included, timed once and
cached (docs/kernels.md, "auto"). On the CPU with fake timings: the machine pretends its tensors are CUDA
tensors for the choice (``tunable``), and the timer returns each candidate's planted time after running it."""
import pytest
import torch

import adjoined_kernels as ak
from adjoined_kernels import _autotune
from adjoined_kernels.ops import conv, loss

pytest.importorskip("triton", reason="triton is not installed")
pytestmark = [pytest.mark.skipif("triton" not in ak.available_backends(), reason="needs the triton backend"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


@pytest.fixture
def tuning(monkeypatch):
    """Pretend-CUDA timing with planted times: ``tuning.ms[name]``; ``tuning.timed`` lists the candidates timed.
    The CUDA backend is out (its kernels cannot run on CPU tensors); the choices stay in memory."""
    monkeypatch.setenv("ADJOINED_AUTOTUNE_CACHE", "")
    monkeypatch.setattr(ak._backend, "_cuda_status", lambda: "not in these tests")
    for mod in (conv, loss):
        monkeypatch.setattr(mod, "tunable", lambda device: _autotune.enabled())
    state = type("Tuning", (), {})()
    state.ms, state.timed = {"reference": 2.0, "triton": 1.0}, []

    def fake_time(fn):
        fn()  # the candidate must run on the real inputs
        state.timed.append(fn.backend)
        return state.ms[fn.backend]

    monkeypatch.setattr(_autotune, "time_cuda", fake_time)
    _autotune.clear()
    yield state
    _autotune.clear()


def _conv_args(dtype=torch.float32, cl=False, c_out_s=4, grad=True):
    g = torch.Generator().manual_seed(0)
    xf, xs, w = torch.randn(2, 6, 5, 5, generator=g), torch.randn(1, 3, 4, 6, generator=g), torch.randn(8, 6, 3, 3)
    if cl:
        xf, xs = xf.contiguous(memory_format=torch.channels_last), xs.contiguous(memory_format=torch.channels_last)
    return [t.to(dtype).requires_grad_(grad) for t in (xf, xs, w)], dict(padding=1, small_out_channels=c_out_s)


def _launches(monkeypatch):
    """Counts the Triton fprop launches."""
    from adjoined_kernels.ops.conv.triton import fprop
    calls = []
    bind = fprop._fprop_launcher.bind
    monkeypatch.setattr(fprop._fprop_launcher, "bind", lambda *a: calls.append(1) or bind(*a))
    return calls


@pytest.mark.parametrize("fastest", ["triton", "reference"])
def test_conv_auto_takes_the_fastest_backend_reference_included(tuning, monkeypatch, fastest):
    tuning.ms = {"reference": 1.0 if fastest == "reference" else 3.0, "triton": 2.0}
    launches = _launches(monkeypatch)
    (xf, xs, w), kw = _conv_args()
    zf, zs = ak.adjoined_conv2d(xf, xs, w, **kw)
    assert sorted(tuning.timed) == ["reference", "triton"]
    (row,) = _autotune.report()
    assert row["op"] == "adjoined_conv2d" and row["backend"] == fastest and row["ms"] == tuning.ms
    before = len(launches)
    again = ak.adjoined_conv2d(xf, xs, w, **kw)
    assert len(tuning.timed) == 2, "timed once per geometry"
    assert len(launches) - before == (1 if fastest == "triton" else 0)
    ref = ak.adjoined_conv2d_ref(xf, xs, w, None, 1, 1, 1, 4)
    for got, want in zip((zf, zs, *again), (*ref, *ref)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


VARIANTS = {
    "dtype": dict(dtype=torch.bfloat16),
    "memory format": dict(cl=True),
    "alpha (c_out_s)": dict(c_out_s=2),
    "requires_grad": dict(grad=False),
}


@pytest.mark.parametrize("field", list(VARIANTS))
def test_conv_auto_key_holds_every_field(tuning, field):
    """A layer that differs in one field of the key is timed again (a key without that field would reuse the
    first layer's choice)."""
    (xf, xs, w), kw = _conv_args()
    ak.adjoined_conv2d(xf, xs, w, **kw)
    (xf2, xs2, w2), kw2 = _conv_args(**VARIANTS[field])
    ak.adjoined_conv2d(xf2, xs2, w2, **kw2)
    assert len(tuning.timed) == 4 and len(_autotune.report()) == 2


def test_conv_auto_key_holds_grad_mode_and_conv_arguments(tuning):
    (xf, xs, w), kw = _conv_args()
    ak.adjoined_conv2d(xf, xs, w, **kw)
    with torch.no_grad():
        ak.adjoined_conv2d(xf, xs, w, **kw)
    ak.adjoined_conv2d(xf, xs, w, **dict(kw, padding=0))
    assert len(tuning.timed) == 6 and len(_autotune.report()) == 3


def test_autotune_off_takes_the_fixed_order_without_timing(tuning, monkeypatch):
    monkeypatch.setenv("ADJOINED_AUTOTUNE", "0")
    (xf, xs, w), kw = _conv_args()
    ak.adjoined_conv2d(xf, xs, w, **kw)
    lf, ls = torch.randn(3, 7), torch.randn(3, 7)
    ak.adjoined_loss(lf, ls, torch.tensor([0, 1, 2]), 0.5)
    assert tuning.timed == [] and _autotune.report() == []


def test_cpu_tensors_take_the_reference_without_timing(monkeypatch):
    """Not pretending: on CPU tensors auto is the reference and nothing is timed."""
    monkeypatch.setattr(_autotune, "time_cuda", lambda fn: pytest.fail("timed on CPU tensors"))
    (xf, xs, w), kw = _conv_args()
    zf, zs = ak.adjoined_conv2d(xf, xs, w, **kw)
    ref = ak.adjoined_conv2d_ref(xf, xs, w, None, 1, 1, 1, 4)
    assert torch.equal(zf, ref[0]) and torch.equal(zs, ref[1])


def test_auto_is_not_traced_under_compile(tuning):
    """Under torch.compile auto takes the fixed order (a constant): no timing inside the traced region."""
    (xf, xs, w), kw = _conv_args(grad=False)
    f = torch.compile(lambda a, b, c: ak.adjoined_conv2d(a, b, c, **kw), backend="aot_eager", fullgraph=True)
    zf, zs = f(xf, xs, w)
    assert tuning.timed == []
    torch.testing.assert_close(zs, ak.adjoined_conv2d_ref(xf, xs, w, None, 1, 1, 1, 4)[1])


@pytest.mark.parametrize("fastest", ["triton", "reference"])
def test_loss_auto_takes_the_fastest_backend(tuning, fastest):
    tuning.ms = {"reference": 1.0 if fastest == "reference" else 3.0, "triton": 2.0}
    lf, ls = torch.randn(4, 9, requires_grad=True), torch.randn(4, 9, requires_grad=True)
    t = torch.tensor([0, 3, -100, 8])
    out = ak.adjoined_loss(lf, ls, t, 0.5, temperature=2.0)
    ak.adjoined_loss(lf, ls, t, 0.5, temperature=2.0)
    assert sorted(tuning.timed) == ["reference", "triton"]
    (row,) = _autotune.report()
    assert row["op"] == "adjoined_loss" and row["backend"] == fastest
    ak.adjoined_loss(lf, ls, t, 0.5, temperature=1.0)  # another temperature: another key
    assert len(tuning.timed) == 4
    torch.testing.assert_close(out, ak.adjoined_loss_ref(lf, ls, t, 0.5, temperature=2.0), rtol=1e-5, atol=1e-5)
