"""Adjoined loss (docs/maths.md, section 3; "Adjoined Networks", Def. 1, Eq. 3): the reference against
independent float64 maths, and every fused backend (triton; cuda on a GPU) against the float64 reference.

On CPU the kernels run in the Triton interpreter, so shapes stay tiny; tests at realistic sizes need a GPU.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import adjoined_kernels as ak
from adjoined_kernels.ops.loss import _fused_args, adjoined_loss, adjoined_loss_ref, lam_tensor

pytest.importorskip("triton", reason="triton is not installed")
from adjoined_kernels.ops.loss import triton as loss_mod  # noqa: E402

adjoined_loss_triton = loss_mod.adjoined_loss_triton
adjoined_loss_fwd_inplace = loss_mod.adjoined_loss_fwd_inplace

# eps == 0 computes log p - log q on padding lanes (-inf - -inf); the result is masked, numpy still warns.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: realistic sizes are too slow for the Triton interpreter")
IGNORE = -100
LOWP = (torch.float16, torch.bfloat16)


def _inputs(B, C, dtype, device, seed=0, ignored=(1,), ignore_index=IGNORE, scale=3.0):
    """Random logits (non-zero, varied softmax) and targets with some rows set to ignore_index."""
    g = torch.Generator().manual_seed(seed)
    lf = (torch.randn(B, C, generator=g) * scale).to(dtype).to(device)
    ls = (torch.randn(B, C, generator=g) * scale).to(dtype).to(device)
    t = torch.randint(0, C, (B,), generator=g)
    for i in ignored:
        t[i] = ignore_index
    return lf, ls, t.to(device)


def _grad_out(reduction, B, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(() if reduction != "none" else (B,), generator=g) + 0.5).to(dtype).to(device)


def _run(fn, lf, ls, t, lam, go, **kw):
    """Loss and the gradients of <loss, go> w.r.t. both logits."""
    a, b = lf.clone().requires_grad_(), ls.clone().requires_grad_()
    out = fn(a, b, t, lam, **kw)
    out.backward(go)
    return out.detach(), a.grad, b.grad


def _f64(lam):
    return lam.double() if isinstance(lam, torch.Tensor) else lam


def _err(x, ref):
    return (x.double() - ref).abs().max().item()


def _check(got, ref64, lowp_ref, dtype):
    """fp32: close to float64. fp16/bf16: error <= 2x the torch reference's own error, plus one ulp at the top."""
    for name, k, r, t in zip(("loss", "grad_full", "grad_small"), got, ref64, lowp_ref):
        assert torch.isfinite(k).all(), name
        top = max(r.abs().max().item(), 1e-30)
        if dtype == torch.float32:
            assert _err(k, r) <= 2e-5 * max(top, 1.0), (name, _err(k, r), top)
        else:
            bound = 2 * _err(t, r) + torch.finfo(dtype).eps * top
            assert _err(k, r) <= bound, (name, _err(k, r), _err(t, r), top)


def _fused(backend, fused=None):
    """The loss on ``backend`` (``fused``: the fixture of tests/ops/conftest.py), skipping the test where that
    backend cannot run."""
    if backend == "triton":
        return adjoined_loss_triton
    op = fused(backend)[1]
    if backend == "cuda":
        return lambda *a, **kw: adjoined_loss(*a, **kw, backend=backend)

    def emulated(lf, ls, t, lam, eps=1e-6, temperature=1.0, reduction="mean", ignore_index=IGNORE,
                 detach_full=False):
        return op(*_fused_args(lf, ls, t, lam, eps, temperature, reduction, ignore_index, detach_full))[0]
    return emulated


def _compare(lf, ls, t, lam, go, backend="triton", fused=None, **kw):
    """A fused backend vs the float64 reference (and, in low precision, the torch reference on the same inputs).
    The Triton knobs (max_block, count_inline_max, inplace) apply to triton only."""
    knobs = {k: kw.pop(k) for k in ("max_block", "count_inline_max", "inplace") if k in kw}
    ref64 = _run(adjoined_loss_ref, lf.double(), ls.double(), t, _f64(lam), go.double(), **kw)
    lowp = _run(adjoined_loss_ref, lf, ls, t, lam, go, **kw)
    got = _run(_fused(backend, fused), lf, ls, t, lam, go, **kw, **(knobs if backend == "triton" else {}))
    assert got[0].dtype == lf.dtype and got[1].dtype == lf.dtype and got[2].dtype == lf.dtype
    assert got[0].shape == ref64[0].shape
    _check(got, ref64, lowp, lf.dtype)


# ------------------------------------------------------------------- reference vs independent float64 maths
def _explicit_grads(lf, ls, t, lam, eps, T, reduction, ignore_index, detach_full, go):
    """The gradient formulas of docs/maths.md (section 3, "Gradient"), written out in float64."""
    B, C = lf.shape
    valid = (t != ignore_index).double()
    onehot = F.one_hot(t.clamp(0, C - 1), C).double() * valid[:, None]
    p1, p, q = lf.softmax(-1), (lf / T).softmax(-1), (ls / T).softmax(-1)
    if eps > 0:
        b = (p + eps).log() - (q + eps).log() + p / (p + eps)
        kl_full = lam * T * p * (b - (p * b).sum(-1, keepdim=True))
        r = p * q / (q + eps)
        kl_small = lam * T * (-r + q * r.sum(-1, keepdim=True))
    else:
        d = (lf / T).log_softmax(-1) - (ls / T).log_softmax(-1)
        kl_full = lam * T * p * (d - (p * d).sum(-1, keepdim=True))
        kl_small = lam * T * (q - p)
    ce_s, kl_s = (1 / max(valid.sum().item(), 1), 1 / B) if reduction == "mean" else (1.0, 1.0)
    g = go[:, None] if reduction == "none" else go
    gf = ce_s * (p1 - onehot) * valid[:, None] + (0.0 if detach_full else kl_s * kl_full)
    return gf * g, kl_s * kl_small * g


def _direct_loss(lf, ls, t, lam, eps, T, reduction, ignore_index):
    """The loss with plain Python floats, row by row."""
    ces, kls = [], []
    for x, y, ti in zip(lf.tolist(), ls.tolist(), t.tolist()):
        if ti != ignore_index:
            ces.append(math.log(sum(math.exp(v) for v in x)) - x[ti])
        zp, zq = sum(math.exp(v / T) for v in x), sum(math.exp(v / T) for v in y)
        p, q = [math.exp(v / T) / zp for v in x], [math.exp(v / T) / zq for v in y]
        if eps > 0:
            kls.append(sum(a * (math.log(a + eps) - math.log(c + eps)) for a, c in zip(p, q)))
        else:
            kls.append(sum(a * math.log(a / c) for a, c in zip(p, q)))
    w = lam * T * T
    if reduction == "none":
        ce_rows = iter(ces)
        return torch.tensor([(next(ce_rows) if ti != ignore_index else 0.0) + w * k
                             for ti, k in zip(t.tolist(), kls)], dtype=torch.float64)
    if reduction == "sum":
        return torch.tensor(sum(ces) + w * sum(kls), dtype=torch.float64)
    return torch.tensor(sum(ces) / max(len(ces), 1) + w * sum(kls) / len(kls), dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("T", [1.0, 3.0])
@pytest.mark.parametrize("detach_full", [False, True])
def test_reference_matches_explicit_float64(reduction, eps, T, detach_full):
    lf, ls, t = _inputs(5, 13, torch.float64, "cpu", seed=3, ignored=(0, 3))
    go = _grad_out(reduction, 5, torch.float64, "cpu")
    kw = dict(eps=eps, temperature=T, reduction=reduction, ignore_index=IGNORE)
    loss, gf, gs = _run(adjoined_loss_ref, lf, ls, t, 0.6, go, detach_full=detach_full, **kw)
    ef, es = _explicit_grads(lf, ls, t, 0.6, eps, T, reduction, IGNORE, detach_full, go)
    torch.testing.assert_close(gf, ef, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gs, es, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, _direct_loss(lf, ls, t, 0.6, eps, T, reduction, IGNORE), rtol=1e-10, atol=1e-12)


def test_reference_all_ignored_mean_has_no_ce():
    lf, ls, t = _inputs(4, 7, torch.float64, "cpu", ignored=range(4))
    kl_only = adjoined_loss_ref(lf, ls, t, 0.5, reduction="mean") - 0.5 * adjoined_loss_ref(
        lf, ls, t, 1.0, reduction="sum") / 4
    assert abs(kl_only.item()) < 1e-12


# ------------------------------------------------------------------------------- triton vs float64 reference
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["registers", "chunked"])
@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda_emu"])
def test_fused_matches_reference(device, backend, reduction, eps, T, path, dtype, fused):
    if backend != "triton" and path == "chunked":
        pytest.skip("the chunked path is the Triton kernel's; the CUDA kernel's paths are tested by row length")
    device = "cpu" if backend == "cuda_emu" else device
    lf, ls, t = _inputs(4, 37, dtype, device, seed=7, ignored=(1,))
    go = _grad_out(reduction, 4, dtype, device)
    max_block = 16 if path == "chunked" else 8192  # C=37: three chunks of 16, the last one partial
    _compare(lf, ls, t, 0.7, go, backend, fused, eps=eps, temperature=T, reduction=reduction, max_block=max_block)


@pytest.mark.parametrize("C", [3000, 5000])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_cuda_kernel_long_rows_emulated(C, eps, fused):
    """The CUDA loss kernel's block-per-row path (rows over 2048 classes), through its CPU emulation."""
    lf, ls, t = _inputs(2, C, torch.float32, "cpu", seed=C, ignored=(1,))
    _compare(lf, ls, t, 0.4, _grad_out("none", 2, torch.float32, "cpu"), "cuda_emu", fused, eps=eps, temperature=2.0,
             reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", ["registers", "chunked"])
@pytest.mark.parametrize("eps", [1e-30, 0.3])
def test_triton_eps_extremes(device, eps, path, dtype):
    """eps below 2^-60 (two reciprocals per class) and a large eps (one reciprocal of (p+eps)(q+eps))."""
    _eps_mode = loss_mod._eps_mode
    assert _eps_mode(eps) == (1 if eps < 2.0 ** -60 else 2)
    lf, ls, t = _inputs(4, 37, dtype, device, seed=3, ignored=(2,))
    go = _grad_out("mean", 4, dtype, device)
    _compare(lf, ls, t, 0.7, go, eps=eps, reduction="mean", max_block=16 if path == "chunked" else 8192)


@pytest.mark.parametrize("path", ["registers", "chunked"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_triton_all_rows_ignored(device, reduction, path):
    lf, ls, t = _inputs(4, 21, torch.float32, device, ignored=range(4))
    go = _grad_out(reduction, 4, torch.float32, device)
    _compare(lf, ls, t, 0.3, go, reduction=reduction, max_block=8 if path == "chunked" else 8192)


@pytest.mark.parametrize("path", ["registers", "chunked"])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_detach_full(device, dtype, eps, path):
    lf, ls, t = _inputs(4, 29, dtype, device, seed=11)
    go = _grad_out("mean", 4, dtype, device)
    _compare(lf, ls, t, 0.9, go, eps=eps, temperature=2.0, detach_full=True,
             max_block=16 if path == "chunked" else 8192)


def test_triton_detach_full_leaves_only_ce_gradient(device):
    lf, ls, t = _inputs(4, 17, torch.float32, device, seed=2)
    go = _grad_out("mean", 4, torch.float32, device)
    _, gf_detached, _ = _run(adjoined_loss_triton, lf, ls, t, 2.0, go, detach_full=True)
    _, gf_ce_only, _ = _run(adjoined_loss_triton, lf, ls, t, 0.0, go)
    torch.testing.assert_close(gf_detached, gf_ce_only, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lam_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_lam_as_tensor(device, reduction, lam_dtype):
    lf, ls, t = _inputs(4, 23, torch.float32, device, seed=5)
    go = _grad_out(reduction, 4, torch.float32, device)
    lam = torch.tensor(1.3, dtype=lam_dtype, device=device)
    _compare(lf, ls, t, lam, go, eps=1e-6, temperature=2.0, reduction=reduction)


@pytest.mark.parametrize("path", ["registers", "chunked"])
def test_triton_counts_valid_rows_with_a_device_reduction(device, path):
    lf, ls, t = _inputs(6, 19, torch.float32, device, seed=8, ignored=(0, 2, 5))
    go = _grad_out("mean", 6, torch.float32, device)
    _compare(lf, ls, t, 0.4, go, count_inline_max=0, max_block=8 if path == "chunked" else 8192)


@pytest.mark.parametrize("path", ["registers", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_inplace_overwrites_logits_with_gradients(device, dtype, path):
    lf, ls, t = _inputs(4, 33, dtype, device, seed=9)
    go = _grad_out("mean", 4, dtype, device)
    max_block = 16 if path == "chunked" else 8192
    _compare(lf, ls, t, 0.8, go, eps=1e-6, temperature=2.0, inplace=True, max_block=max_block)
    a, b = lf.clone().requires_grad_(), ls.clone().requires_grad_()
    adjoined_loss_triton(a, b, t, 0.8, inplace=True, max_block=max_block).backward()
    torch.testing.assert_close(a.detach(), a.grad, rtol=0, atol=0)  # go = 1: the storage holds the gradient
    torch.testing.assert_close(b.detach(), b.grad, rtol=0, atol=0)


def test_triton_inplace_rejects_overlapping_logits(device):
    lf, _, t = _inputs(4, 8, torch.float32, device)
    with pytest.raises(ValueError, match="non-overlapping"):
        adjoined_loss_triton(lf, lf, t, 0.5, inplace=True)


def _on_views(fn):
    """fn on a row-strided slice of the full logits and a class-strided copy of the small ones."""
    def wrapped(a, b, t, lam, **kw):
        return fn(a[:, :31], b[:, :31].t().contiguous().t(), t, lam, **kw)
    return wrapped


def test_triton_strided_inputs_int32_target_and_class_ignore_index(device):
    lf, ls, t = _inputs(4, 40, torch.float32, device, seed=4, ignored=(2,), ignore_index=3)
    t = torch.stack([t, t], 1).int().clamp_max(30)[:, 0]  # int32, stride 2
    go = _grad_out("mean", 4, torch.float32, device)
    ref = _run(_on_views(adjoined_loss_ref), lf.double(), ls.double(), t, 0.5, go.double(), ignore_index=3)
    got = _run(_on_views(adjoined_loss_triton), lf, ls, t, 0.5, go, ignore_index=3)
    _check(got, ref, ref, torch.float32)


def test_triton_out_of_range_target_gives_nan(device):
    lf, ls, t = _inputs(3, 9, torch.float32, device, ignored=())
    t[1] = 9
    loss = adjoined_loss_triton(lf, ls, t, 0.5, reduction="none")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()


@pytest.mark.parametrize("path", ["registers", "chunked"])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_triton_without_grad_skips_the_gradients(device, eps, path):
    lf, ls, t = _inputs(4, 37, torch.bfloat16, device, seed=6)
    max_block = 16 if path == "chunked" else 8192
    with torch.no_grad():
        loss = adjoined_loss_triton(lf, ls, t, 0.6, eps=eps, temperature=2.0, max_block=max_block)
    ref = adjoined_loss_ref(lf.double(), ls.double(), t, 0.6, eps=eps, temperature=2.0)
    assert _err(loss, ref) <= 2 * _err(adjoined_loss_ref(lf, ls, t, 0.6, eps=eps, temperature=2.0), ref) + 1e-2
    lam = lam_tensor(0.6, lf)
    with loss_mod.knobs(max_block):
        out = loss_mod.OP(lf, ls, t, lam, eps, 2.0, 2, IGNORE, False, False)
    assert out[0].item() == loss.item() and out[1].shape == (0,) and out[2].shape == (0,)
    a = lf.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        loss_mod.OP(a, ls, t, lam, eps, 2.0, 2, IGNORE, False, False)[0].backward()


def test_triton_single_class_and_single_row(device):
    lf, ls, t = _inputs(1, 1, torch.float32, device, ignored=())
    _compare(lf, ls, t, 0.5, _grad_out("sum", 1, torch.float32, device), reduction="sum")


# ---------------------------------------------------------------------- register-path limits, chunk shapes
def _path(C, dtype, max_block=loss_mod.MAX_BLOCK):
    kernel = loss_mod._plan(C, torch.empty((), dtype=dtype).element_size(), max_block)[0]
    return "registers" if kernel is loss_mod._loss_row_kernel else "chunked"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_plan_keeps_rows_up_to_the_limit_in_registers(dtype):
    """16-bit rows up to MAX_BLOCK = 32768 classes take the register path, fp32 rows up to half of it
    (and so for any max_block); each thread holds 32 classes of a 16-bit row (16 fp32), in at most 32 warps."""
    limit = 32768 if dtype != torch.float32 else 16384
    assert loss_mod.MAX_BLOCK == 32768
    assert [_path(c, dtype) for c in (1, 1000, limit - 1, limit, limit + 1, 128000)] == \
        ["registers"] * 4 + ["chunked"] * 2
    assert [_path(c, dtype, 64) for c in (limit // 512, limit // 512 + 1)] == ["registers", "chunked"]
    esize = torch.empty((), dtype=dtype).element_size()
    for C in (1, 37, 1000, 4096, limit):
        _, r, v, warps = loss_mod._plan(C, esize, loss_mod.MAX_BLOCK)
        assert 4 * r * v >= C and 1 <= warps <= 32 and 4 * r * v <= 32 * warps * (64 // esize)
    _, r, v, warps = loss_mod._plan(limit, esize, loss_mod.MAX_BLOCK)
    assert (warps, v * esize, 4 * r * v // (32 * warps)) == (32, 16, 64 // esize)
    _, r, v, _ = loss_mod._plan(limit + 1, esize, loss_mod.MAX_BLOCK)
    assert r * v * esize == 2 * loss_mod.CHUNK and v * esize == 16
    for max_block in (1, 3, 16, 100):  # any max_block: a power-of-2 chunk of at least one class
        _, r, v, _ = loss_mod._plan(1000, esize, max_block)
        chunk = r * v
        assert chunk >= 1 and chunk & (chunk - 1) == 0 and chunk <= max(1, max_block)


@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("side", ["at", "above"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_at_and_above_the_register_limit(device, dtype, side, eps, T):
    """The same limit rule at max_block=64 (cheap in the interpreter): 64 classes (fp32: 32) in registers,
    one more chunked, its last chunk one class and lanes of padding only."""
    limit = 64 if dtype == torch.bfloat16 else 32
    C = limit + (side == "above")
    assert _path(C, dtype, 64) == ("registers" if side == "at" else "chunked")
    lf, ls, t = _inputs(3, C, dtype, device, seed=C, ignored=(2,))
    go = _grad_out("mean", 3, dtype, device)
    _compare(lf, ls, t, 0.7, go, eps=eps, temperature=T, max_block=64)


@pytest.mark.parametrize("C", [32768, 32769])
def test_triton_at_and_above_the_default_register_limit(device, C):
    """The default limit itself, in bf16: 32768 classes in registers (4 parts of 1024 lanes of 8), one more
    chunked (9 chunks of 512 lanes of 8). fp32's half of it is the rule checked above."""
    assert _path(C, torch.bfloat16) == ("registers" if C == 32768 else "chunked")
    lf, ls, t = _inputs(2, C, torch.bfloat16, device, seed=3, ignored=(1,))
    _compare(lf, ls, t, 0.7, _grad_out("mean", 2, torch.bfloat16, device), eps=1e-6, temperature=2.0)


@pytest.mark.parametrize("path,T", [("registers", 1.0), ("chunked", 3.0)])
def test_triton_masked_classes(device, path, T):
    """-inf logits (masked classes), in whole lanes and chunks too: p or q is 0 there, nothing is NaN."""
    lf, ls, t = _inputs(3, 70, torch.float32, device, seed=12, ignored=(0,))
    lf[:, 8:40] = float("-inf")
    ls[:, 24:56] = float("-inf")
    ls[1, :16] = float("-inf")
    t[1:] = torch.tensor([60, 5])
    _compare(lf, ls, t, 0.6, _grad_out("mean", 3, torch.float32, device), eps=1e-6, temperature=T,
             max_block=16 if path == "chunked" else 8192)


# ------------------------------------------------------------------------------------- errors, ops, modules
def _bad_cases(device):
    lf, ls, t = _inputs(3, 5, torch.float32, device)
    return [
        (ValueError, "shape", (lf, ls[:, :4], t, 0.5), {}),
        (ValueError, "dtype", (lf, ls.half(), t, 0.5), {}),
        (TypeError, "target", (lf, ls, t.float(), 0.5), {}),
        (ValueError, "target", (lf, ls, t[:2], 0.5), {}),
        (ValueError, "lam", (lf, ls, t, torch.ones(2, device=device)), {}),
        (TypeError, "lam", (lf, ls, t, "0.5"), {}),
        (ValueError, "reduction", (lf, ls, t, 0.5), {"reduction": "max"}),
        (ValueError, "eps", (lf, ls, t, 0.5), {"eps": -1.0}),
        (ValueError, "temperature", (lf, ls, t, 0.5), {"temperature": 0.0}),
        (TypeError, "logits_full", (lf.long(), ls, t, 0.5), {}),
        (ValueError, "dims", (lf[0], ls[0], t, 0.5), {}),
        (ValueError, "at least one", (lf[:, :0], ls[:, :0], t, 0.5), {}),
    ]


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_inputs_raise(device, backend):
    for exc, match, args, kw in _bad_cases(device):
        with pytest.raises(exc, match=match):
            adjoined_loss(*args, backend=backend, **kw)


def test_opcheck_functional_op(device):
    lf, ls, t = _inputs(3, 11, torch.float32, device)
    lam = torch.tensor(0.5, device=device)
    cases = ((1e-6, 2, True, 8192), (0.0, 0, True, 4), (1e-6, 1, True, 4), (1e-6, 0, False, 8192))
    for eps, reduction, grad, max_block in cases:
        args = (lf.clone().requires_grad_(grad), ls.clone().requires_grad_(grad), t, lam, eps, 2.0, reduction,
                IGNORE, False, grad)
        with loss_mod.knobs(max_block):
            torch.library.opcheck(loss_mod.OP.default, args)


def test_opcheck_inplace_op(device):
    lf, ls, t = _inputs(3, 11, torch.float32, device)
    for reduction, max_block in ((2, 8192), (0, 4)):
        args = (lf.clone(), ls.clone(), t, torch.tensor(0.5, device=device), 1e-6, 1.0, reduction, IGNORE, True,
                True)
        with loss_mod.knobs(max_block):
            torch.library.opcheck(adjoined_loss_fwd_inplace, args)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_module_equals_function(device, backend):
    lf, ls, t = _inputs(4, 12, torch.float32, device)
    kw = dict(eps=0.0, temperature=2.0, reduction="none", ignore_index=IGNORE, detach_full=True)
    module = ak.AdjoinedLoss(**kw, backend=backend)
    torch.testing.assert_close(module(lf, ls, t, 0.4), adjoined_loss(lf, ls, t, 0.4, **kw, backend=backend),
                               rtol=0, atol=0)


def test_auto_backend_on_cpu_is_reference():
    lf, ls, t = _inputs(3, 6, torch.float32, "cpu")
    torch.testing.assert_close(adjoined_loss(lf, ls, t, 0.5), adjoined_loss_ref(lf, ls, t, 0.5), rtol=0, atol=0)


def test_torch_compile_fullgraph(device):
    lf, ls, t = _inputs(4, 10, torch.float32, device)
    lam = torch.tensor(0.7, device=device)
    backend = "inductor" if device == "cuda" else "aot_eager"

    def fn(a, b, t, lam):
        return adjoined_loss(a, b, t, lam, backend="triton")

    got = _run(torch.compile(fn, backend=backend, fullgraph=True), lf, ls, t, lam, torch.tensor(1.0, device=device))
    ref = _run(adjoined_loss_ref, lf.double(), ls.double(), t, lam.double(), torch.tensor(1.0, dtype=torch.float64))
    _check(got, ref, ref, torch.float32)


# --------------------------------------------------------------------------------------- CUDA, real sizes
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_cuda_imagenet_size(dtype, eps):
    lf, ls, t = _inputs(256, 1000, dtype, "cuda", ignored=(3, 100))
    go = _grad_out("mean", 256, dtype, "cuda")
    _compare(lf, ls, t, torch.tensor(0.8, device="cuda"), go, eps=eps, temperature=4.0)


@needs_cuda
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_long_rows_chunked(dtype, eps):
    lf, ls, t = _inputs(4, 131072, dtype, "cuda", ignored=(2,))
    go = _grad_out("none", 4, dtype, "cuda")
    _compare(lf, ls, t, 0.5, go, eps=eps, temperature=2.0, reduction="none")


@needs_cuda
@pytest.mark.parametrize("eps,T", [(1e-6, 1.0), (1e-6, 2.0), (0.0, 1.0), (0.0, 2.0)])
@pytest.mark.parametrize("C,dtype", [(32000, torch.bfloat16), (32768, torch.bfloat16), (32769, torch.bfloat16),
                                     (32768, torch.float16), (16384, torch.float32), (16385, torch.float32)])
def test_cuda_register_limit(C, dtype, eps, T):
    """The register path at its real limits (4 parts of 1024 lanes, 32 warps), and one class past them."""
    lf, ls, t = _inputs(8, C, dtype, "cuda", ignored=(2,))
    _compare(lf, ls, t, 0.5, _grad_out("mean", 8, dtype, "cuda"), eps=eps, temperature=T)


@needs_cuda
@pytest.mark.parametrize("C", [32768, 32769])
def test_cuda_inplace_at_the_register_limit(C):
    lf, ls, t = _inputs(8, C, torch.bfloat16, "cuda", ignored=(2,))
    _compare(lf, ls, t, 0.5, _grad_out("mean", 8, torch.bfloat16, "cuda"), temperature=2.0, inplace=True)


@needs_cuda
def test_cuda_batch_over_inline_count_limit():
    lf, ls, t = _inputs(3000, 100, torch.float32, "cuda", ignored=range(0, 3000, 7))
    _compare(lf, ls, t, 0.5, _grad_out("mean", 3000, torch.float32, "cuda"))


@needs_cuda
def test_cuda_graph_capture_and_replay():
    lf, ls, t = _inputs(64, 1000, torch.float32, "cuda")
    lam = torch.tensor(0.2, device="cuda")
    a, b = lf.clone().requires_grad_(), ls.clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm up (compiles) outside the capture
            adjoined_loss(a, b, t, lam, backend="triton").backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    a.grad = b.grad = None
    with torch.cuda.graph(graph):
        loss = adjoined_loss(a, b, t, lam, backend="triton")
        loss.backward()
    lam.fill_(0.9)
    graph.replay()
    torch.cuda.synchronize()
    ref = _run(adjoined_loss_ref, lf.double(), ls.double(), t, 0.9, torch.tensor(1.0, dtype=torch.float64,
                                                                                   device="cuda"))
    _check((loss.detach(), a.grad, b.grad), ref, ref, torch.float32)


def test_sm90_register_path_unpacks_on_an_exact_zero(sm90_tool):
    """The register path's 16-bit unpacking, compiled offline for sm_90 (both dtypes, eps on and off, T == 1
    and not, a short and a 32K row): every unpack must be keyed on ``sub.rn.f32 z, k, k``. A plain
    ``key - key`` was contracted into an FMA when key was a product, and the rounding error it left garbled
    the gradients on an H100 (bench/results/2026-11-23-H100-run2-tests-loss-partial.log). Runs
    tools/loss_ptxas_report.py --check, without TRITON_INTERPRET; no GPU needed."""
    proc = sm90_tool("loss_ptxas_report.py", "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "CHECK: ok" in proc.stdout


# ------------------------------------------------------------------------ contract, lambda, unavailable backends
@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda_emu"])
def test_every_backend_registers_the_contracts_schema(backend, registered):
    from adjoined_kernels.ops.loss.schema import SCHEMA
    ns, op, schema = registered("loss", backend, "adjoined_loss_fwd")
    assert schema == f"{ns}::{op}{SCHEMA}"


def test_opcheck_emulated_cuda_op(fused):
    op = fused("cuda_emu")[1]
    lf, ls, t = _inputs(3, 11, torch.float32, "cpu")
    for eps, reduction, grad in ((1e-6, 2, True), (0.0, 0, True), (1e-6, 1, False)):
        args = (lf.clone().requires_grad_(grad), ls.clone().requires_grad_(grad), t, torch.tensor(0.5), eps, 2.0,
                reduction, IGNORE, False, grad)
        torch.library.opcheck(op.default, args)


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda", "cuda_emu"])
def test_lambda_reaches_the_loss_at_every_step(backend, device, fused):
    """Over a training run's schedule lambda(t) (ak.lambda_schedule), the loss and both gradients that
    ak.AdjoinedLoss gives at each step are those of CE + lambda(t) T^2 KL for that step's lambda: the loss
    minus its lambda = 0 value is lambda(t) T^2 KL, and d/d logits_small is lambda(t) times its lambda = 1
    value. A loss that dropped lambda, or froze it at one step's value, fails at the other steps."""
    device = "cpu" if backend == "cuda_emu" else device
    lf, ls, t = _inputs(6, 9, torch.float32, device, seed=4, ignored=(2,))
    if backend == "reference":
        loss_fn = ak.AdjoinedLoss(temperature=2.0, backend="reference")
    elif backend == "triton":
        loss_fn = ak.AdjoinedLoss(temperature=2.0, backend="triton")
    else:
        fn = _fused(backend, fused)
        loss_fn = lambda a, b, y, lam: fn(a, b, y, lam, temperature=2.0)  # noqa: E731
    ce = adjoined_loss_ref(lf.double(), ls.double(), t, 0.0, temperature=2.0).item()
    kl = (adjoined_loss_ref(lf.double(), ls.double(), t, 1.0, temperature=2.0).item() - ce) / 4.0
    _, _, gs_unit = _run(adjoined_loss_ref, lf.double(), ls.double(), t, 1.0, torch.tensor(1.0, dtype=torch.float64),
                         temperature=2.0)
    steps = 6
    lams = [ak.lambda_schedule(step / (2 * (steps - 1)), "quadratic", 1.0) for step in range(steps)]  # to t = 0.5
    assert len(set(lams)) == steps and lams[0] == 0.0
    for step, lam in enumerate(lams):
        as_tensor = step % 2 == 1  # the trainer may pass lambda(t) as a float or a 0-dim tensor
        lam_arg = torch.tensor(lam, device=device) if as_tensor else lam
        loss, _, gs = _run(loss_fn, lf, ls, t, lam_arg, torch.tensor(1.0, device=device))
        assert abs(loss.item() - (ce + lam * 4.0 * kl)) <= 1e-4 * (1 + abs(ce)), (step, lam, loss.item())
        torch.testing.assert_close(gs.double().cpu(), lam * gs_unit.cpu(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_requested_backend_that_is_unavailable_raises(backend, monkeypatch):
    """No silent fallback to the reference: the function and the module raise RuntimeError saying why."""
    status = "_triton_status" if backend == "triton" else "_cuda_status"
    monkeypatch.setattr(ak._backend, status, lambda: "pretend it is not installed")
    lf, ls, t = _inputs(3, 5, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=f"backend='{backend}' is unavailable: pretend it is not installed"):
        adjoined_loss(lf, ls, t, 0.5, backend=backend)
    with pytest.raises(RuntimeError, match="unavailable"):
        ak.AdjoinedLoss(backend=backend)(lf, ls, t, 0.5)


def _write_idx(path, arr):
    """An IDX file (the Fashion-MNIST format the trainer reads), gzipped."""
    import gzip
    import struct
    head = struct.pack(">HBB", 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", n) for n in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype("uint8").tobytes())


def test_trainer_passes_lambda_of_the_schedule_to_the_loss_at_every_step(tmp_path, monkeypatch):
    """adjoined-train calls the adjoined loss once per training step with that step's lambda(t) =
    lambda_schedule(step / total): a step body that planted a constant (lam = 0.0) or reused one step's value
    fails here. The loss is spied at the name the trainer calls."""
    import numpy as np

    from adjoined_kernels.train import cli, loop
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 96), ("t10k", 32)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 12, 12)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    seen, real = [], loop.adjoined_loss

    def spy(lf, ls, y, lam, **kw):
        if torch.is_grad_enabled() and lf.requires_grad:  # training steps only
            seen.append(float(lam))
        return real(lf, ls, y, lam, **kw)

    monkeypatch.setattr(loop, "adjoined_loss", spy)
    argv = ["--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "2", "--width", "8",
            "--batch-size", "32", "--bench-runs", "1", "--no-progress", "--eval-batch-size", "64", "--threads", "1"]
    assert cli.main(argv) == 0
    total = len(seen)
    assert total == 6, seen  # 2 epochs of 96 / 32 steps
    assert seen == [ak.lambda_schedule(step / total, "quadratic", 1.0) for step in range(total)]
