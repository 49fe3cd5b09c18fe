"""The compiled CUDA backend (adjoined_kernels._C, csrc/): registration, fake kernels, and on a GPU the
fused conv (forward and every gradient) and the fused loss against float64 references.

On machines without a GPU only the registration / fake-tensor tests run (they need the extension built:
``pip install --no-build-isolation -e .`` with nvcc). Tolerances follow the flash-attention rule:
in fp16/bf16 the kernel's max error against float64 may be at most twice the error of torch's own
low-precision computation, with a floor relative to the reference's magnitude.
"""
import importlib
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import adjoined_kernels as ak

try:
    importlib.import_module("adjoined_kernels._C")
    _BUILD_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the install
    _BUILD_ERROR = str(e)

needs_ext = pytest.mark.skipif(_BUILD_ERROR is not None,
                               reason=f"CUDA extension adjoined_kernels._C not built ({_BUILD_ERROR}); "
                                      "build with `pip install --no-build-isolation -e .` where nvcc exists")
needs_gpu = pytest.mark.skipif(_BUILD_ERROR is not None or not torch.cuda.is_available(),
                               reason="needs a CUDA GPU and the built extension adjoined_kernels._C")

DEV = "cuda"  # the GPU tests' device (csrc/emu/check_emu_tests.py points it at the CPU emulation)
OPS = ("cuda_conv2d_fprop", "cuda_conv2d_dgrad", "cuda_conv2d_wgrad", "cuda_adjoined_loss_fwd")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Floor of the allowed max error, relative to max |reference| (fp32 runs an exact fp32 FMA path).
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


class _Conv:
    """The CUDA conv backend without the device checks of the public op (the emulation runs it on CPU)."""

    def __init__(self, module):
        self.module = module

    def adjoined_conv2d_cuda(self, *args, **kw):
        from adjoined_kernels.ops.conv import run
        return run(self.module, *args, **kw)

    @staticmethod
    def _is_channels_last(x):
        from adjoined_kernels.ops.conv._layout import is_channels_last
        return is_channels_last(x)


class _Loss:
    """The CUDA loss backend's op behind the public op's argument handling, without its device checks."""

    def __init__(self, module):
        self.module = module

    def adjoined_loss_cuda(self, lf, ls, tg, lam, eps=1e-6, temperature=1.0, reduction="mean", ignore_index=-100,
                           detach_full=False):
        from adjoined_kernels.ops.loss import _fused_args
        return self.module.OP(*_fused_args(lf, ls, tg, lam, eps, temperature, reduction, ignore_index,
                                           detach_full))[0]


def _load():
    """The two CUDA backend modules (importing them loads the extension and registers the ops' Python parts)."""
    from adjoined_kernels.ops.conv import cuda as conv_cuda
    from adjoined_kernels.ops.loss import cuda as loss_cuda
    return _Conv(conv_cuda), _Loss(loss_cuda)


# ------------------------------------------------------------------------------------------ CPU-only tests
@needs_ext
def test_every_op_has_a_cuda_kernel():
    _load()
    for name in OPS:
        assert hasattr(torch.ops.adjoined, name), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"adjoined::{name}", "CUDA"), name


@needs_ext
def test_backend_reported_available():
    assert "cuda" in ak.available_backends()


def _meta_conv_args(device="meta", requires_grad=False):
    g = dict(device=device)
    xf = torch.randn(2, 8, 9, 10, **g).contiguous(memory_format=torch.channels_last)
    xs = torch.randn(3, 4, 7, 6, **g)
    w = torch.randn(12, 8, 3, 3, **g)
    b = torch.randn(12, **g)
    sc = torch.randn(6, **g)
    if requires_grad:
        for t in (xf, xs, w, b, sc):
            t.requires_grad_(True)
    return xf, xs, w, b, sc


def _op_samples(device="meta"):
    """(op name, args) covering each op, with inputs on ``device``."""
    xf, xs, w, b, sc = _meta_conv_args(device)
    conv = ([2, 1], [1, 0], [1, 2])
    zf = F.conv2d(xf, w, b, (2, 1), (1, 0), (1, 2))
    zs = torch.randn(3, 6, 4, 2, device=device)
    us = torch.randn(3, 6, 4, 2, device=device).contiguous(memory_format=torch.channels_last)
    lf, ls = torch.randn(5, 11, device=device), torch.randn(5, 11, device=device)
    tg = torch.tensor([1, 0, -100, 10, 3], device=device)
    lam = torch.tensor(0.5, device=device)
    return [
        ("cuda_conv2d_fprop", (xf, xs, w, b, sc, *conv, 6, True, True)),
        ("cuda_conv2d_fprop", (xf, xs, w, None, None, *conv, 6, False, False)),
        ("cuda_conv2d_dgrad", (zf, zs, w, sc, [9, 10], [7, 6], 4, *conv, True)),
        ("cuda_conv2d_wgrad", (xf, xs, zf, zs, sc, us, [3, 3], *conv, True, True)),
        ("cuda_conv2d_wgrad", (xf, xs, zf, zs, None, None, [3, 3], *conv, True, False)),
        ("cuda_adjoined_loss_fwd", (lf, ls, tg, lam, 1e-6, 2.0, 2, -100, False, True)),
        ("cuda_adjoined_loss_fwd", (lf, ls, tg, lam, 0.0, 1.0, 0, -100, True, False)),
    ]


@needs_ext
@pytest.mark.parametrize("idx", range(7))
def test_opcheck_meta(idx):
    """Schema and fake kernels agree with the meta run (no GPU needed)."""
    _load()
    name, args = _op_samples("meta")[idx]
    torch.library.opcheck(getattr(torch.ops.adjoined, name).default, args,
                          test_utils=("test_schema", "test_faketensor"))


@needs_ext
def test_fake_cuda_tensors_shapes_and_formats():
    """Under FakeTensorMode (no GPU needed) the ops give the shapes, dtypes and layouts of the real kernels."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    _load()
    with FakeTensorMode():
        xf = torch.empty(2, 8, 9, 10, device="cuda", dtype=torch.float16)
        xs = torch.empty(3, 4, 7, 6, device="cuda", dtype=torch.float16)
        w = torch.empty(12, 8, 3, 3, device="cuda", dtype=torch.float16)
        zf, zs, us = torch.ops.adjoined.cuda_conv2d_fprop(xf, xs, w, None, None, [2, 1], [1, 0], [1, 2], 6, True, True)
        assert zf.shape == (2, 12, 5, 6) and zs.shape == (3, 6, 4, 2) and us.shape == zs.shape
        assert zf.is_contiguous(memory_format=torch.channels_last) and zf.device.type == "cuda"
        dxf, dxs = torch.ops.adjoined.cuda_conv2d_dgrad(zf, zs, w, None, [9, 10], [7, 6], 4, [2, 1], [1, 0], [1, 2],
                                                         True)
        assert dxf.shape == xf.shape and dxs.shape == xs.shape
        dw, db, ds = torch.ops.adjoined.cuda_conv2d_wgrad(xf, xs, zf, zs, None, None, [3, 3], [2, 1], [1, 0], [1, 2],
                                                          True, True)
        assert dw.shape == w.shape and db.shape == (12,) and ds.shape == (0,)
        lf = torch.empty(4, 7, device="cuda", dtype=torch.bfloat16)
        loss, gf, gs = torch.ops.adjoined.cuda_adjoined_loss_fwd(lf, lf, torch.zeros(4, dtype=torch.long, device="cuda"),
                                                                 torch.zeros((), device="cuda"), 1e-6, 1.0, 0, -100,
                                                                 False, True)
        assert loss.shape == (4,) and loss.dtype == torch.bfloat16 and gf.shape == (4, 7)


def test_sm90_sass_tensor_core_conv_kernels():
    """The pipelined tensor-core conv kernels (fprop/dgrad/wgrad), compiled offline for sm_90 by nvcc: no
    register spills, and a K loop that copies with cp.async, reads fragments with ldmatrix and multiplies with
    mma.sync. Runs tools/cuda_sass_report.py --check; needs nvcc, c++filt and a cuobjdump, not a GPU."""
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    if not os.access(nvcc, os.X_OK):
        pytest.skip(f"no nvcc at {nvcc}: cannot compile csrc/ offline")
    if shutil.which("c++filt") is None:
        pytest.skip("no c++filt to name the kernels")
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "cuda_sass_report.py")
    proc = subprocess.run([sys.executable, tool, "--check"], capture_output=True, text=True, timeout=600)
    if proc.returncode == 2 and "MISSING:" in proc.stdout:
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "CHECK: ok" in proc.stdout and "rowgemm_tc_kernel" in proc.stdout and "wgrad_tc_kernel" in proc.stdout


def test_package_imports_without_extension():
    """With _C unimportable the package still imports, reports no "cuda" backend, and the CUDA backends say why."""
    code = (
        "import sys; sys.modules['adjoined_kernels._C'] = None\n"
        "import adjoined_kernels as ak\n"
        "assert 'cuda' not in ak.available_backends(), ak.available_backends()\n"
        "import importlib\n"
        "for mod in ('adjoined_kernels.ops.conv.cuda', 'adjoined_kernels.ops.loss.cuda'):\n"
        "    try:\n"
        "        importlib.import_module(mod)\n"
        "    except RuntimeError as e:\n"
        "        assert 'not built' in str(e), e\n"
        "    else:\n"
        "        raise AssertionError('importing the CUDA backend should fail without _C')\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "0")})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- GPU tests
# (N1, N2, C_in, c_in_s, C_out, c_out_s, (kh, kw), stride, padding, dilation, (H1, W1), (H2, W2))
CONV_CASES = [
    (2, 3, 40, 10, 72, 18, (3, 3), 1, 1, 1, (9, 8), (7, 9)),           # pairing + small-only tiles
    (1, 2, 5, 1, 7, 7, (3, 3), 2, 1, 1, (11, 10), (9, 12)),            # odd widths, c_in_s = 1, stride 2
    (2, 1, 16, 16, 130, 3, (1, 1), 1, 0, 1, (6, 7), (5, 5)),           # 1x1, c_in_s = C_in, 3 N tiles
    (1, 1, 9, 3, 5, 2, (5, 5), 1, 2, 2, (12, 12), (10, 13)),           # dilation 2
    (1, 2, 8, 4, 16, 8, (3, 3), 3, 0, 1, (16, 17), (13, 12)),          # stride 3 (dgrad holes)
    (4, 4, 32, 8, 64, 16, (7, 7), 2, 3, 1, (32, 32), (32, 32)),        # 7x7 stem-like
    (8, 8, 256, 64, 128, 32, (1, 1), 2, 0, 1, (14, 14), (14, 14)),     # 1x1 stride-2 downsample
    (2, 2, 33, 11, 65, 17, (2, 4), (2, 1), (0, 2), (1, 3), (13, 15), (9, 11)),  # asymmetric everything
    (16, 16, 64, 16, 64, 16, (3, 3), 1, 1, 1, (28, 28), (28, 28)),     # wgrad split-K over 12544 rows
    (1, 4, 6, 6, 7, 7, (6, 6), 1, 5, 1, (3, 4), (2, 2)),               # tiny input, large padding
    (1, 2, 6, 3, 10, 5, (1, 1), 2, 0, 1, (9, 10), (8, 7)),             # 1x1 s2: dgrad classes with no tap
    (2, 1, 8, 8, 12, 6, (3, 3), 2, 1, 2, (11, 12), (9, 9)),            # s2 d2: one class takes every tap
    (2, 2, 3, 1, 5, 2, (2, 2), 5, 2, 1, (3, 4), (4, 3)),               # stride larger than the input
    (2, 2, 16, 8, 24, 8, (3, 3), 2, 1, 1, (9, 9), (7, 8)),             # 16-byte rows: the pipelined kernel
    (2, 1, 64, 16, 72, 24, (3, 3), 1, 1, 1, (6, 7), (5, 6)),           # same, several channel blocks and N tiles
]


def _make(shape, dtype, fmt, gen):
    if fmt == "strided":  # non-contiguous in both formats: every other column of a wider tensor
        t = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen, device=DEV)[..., ::2]
    else:
        t = torch.randn(*shape, generator=gen, device=DEV)
        if fmt == "cl":
            t = t.contiguous(memory_format=torch.channels_last)
    return t.to(dtype)


def _max_err(a, ref):
    return (a.double() - ref).abs().max().item()


def _assert_close_2x(name, out, lowp, ref, dtype):
    """max|out - ref| <= max(2 * max|lowp - ref|, FLOOR * max|ref|); ref is float64."""
    assert out.shape == ref.shape, (name, out.shape, ref.shape)
    assert not torch.isnan(out).any(), f"{name}: NaN (a skipped element keeps its NaN poison)"
    err = _max_err(out, ref)
    bound = max(2 * _max_err(lowp, ref), FLOOR[dtype] * ref.abs().max().item())
    assert err <= bound, f"{name}: max error {err:.3e} > bound {bound:.3e} ({dtype})"


@needs_gpu
@pytest.mark.parametrize("case_idx", range(len(CONV_CASES)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", ["nchw", "cl", "strided"])
def test_conv_forward_and_grads_vs_float64(case_idx, dtype, fmt):
    conv_cuda, _ = _load()
    n1, n2, cin, cins, cout, couts, k, s, p, d, hw1, hw2 = CONV_CASES[case_idx]
    bias = case_idx % 3 != 1
    scale = case_idx % 2 == 0
    share = (case_idx + DTYPES.index(dtype)) % 3 != 2
    gen = torch.Generator(device=DEV).manual_seed(1000 + case_idx)
    xf = _make((n1, cin, *hw1), dtype, fmt, gen)
    xs = _make((n2, cins, *hw2), dtype, fmt, gen)
    w = _make((cout, cin, *k), dtype, "nchw" if fmt == "strided" else fmt, gen)
    b = _make((cout,), dtype, "nchw", gen) if bias else None
    sc = (torch.rand(couts, generator=gen, device=DEV) + 0.5).to(dtype) if scale else None
    stride, padding, dilation = (v if isinstance(v, tuple) else (v, v) for v in (s, p, d))

    def run(fn, ts):  # detach() keeps the strides, so "strided" inputs stay non-contiguous
        ts = [t.detach().requires_grad_(True) if t is not None else None for t in ts]
        zf, zs = fn(*ts)
        return zf, zs, ts

    inputs = [xf, xs, w, b, sc]
    ours = run(lambda a, bb, c, dd, e: conv_cuda.adjoined_conv2d_cuda(a, bb, c, dd, stride, padding, dilation, couts,
                                                                        e, share_weights=share), inputs)
    lowp = run(lambda a, bb, c, dd, e: ak.adjoined_conv2d_ref(a, bb, c, dd, stride, padding, dilation, couts, e),
               inputs)
    ref = run(lambda a, bb, c, dd, e: ak.adjoined_conv2d_ref(a, bb, c, dd, stride, padding, dilation, couts, e),
              [t.double() if t is not None else None for t in inputs])
    for i, name in enumerate(("z_full", "z_small")):
        _assert_close_2x(name, ours[i], lowp[i], ref[i].detach(), dtype)
        assert ours[i].dtype == dtype
        assert (ours[i].is_contiguous(memory_format=torch.channels_last)
                == conv_cuda._is_channels_last(inputs[i])), f"{name}: memory format not kept"
    gen_g = torch.Generator(device=DEV).manual_seed(7)
    dzf = torch.randn(ref[0].shape, generator=gen_g, device=DEV, dtype=torch.float64)
    dzs = torch.randn(ref[1].shape, generator=gen_g, device=DEV, dtype=torch.float64)
    for res in (ours, lowp, ref):
        dt = res[0].dtype
        torch.autograd.backward([res[0], res[1]], [dzf.to(dt), dzs.to(dt)])
    for name, o, lp, r in zip(("dx_full", "dx_small", "dweight", "dbias", "dscale"), ours[2], lowp[2], ref[2]):
        if r is None:
            continue
        assert o.grad is not None, f"{name}: no gradient"
        _assert_close_2x(name, o.grad, lp.grad, r.grad, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv_share_weights_gives_same_result(dtype):
    conv_cuda, _ = _load()
    gen = torch.Generator(device=DEV).manual_seed(3)
    xf = _make((3, 48, 10, 10), dtype, "cl", gen)
    xs = _make((5, 12, 9, 9), dtype, "cl", gen)
    w = _make((80, 48, 3, 3), dtype, "cl", gen)
    a = conv_cuda.adjoined_conv2d_cuda(xf, xs, w, None, (1, 1), (1, 1), (1, 1), 20, None, share_weights=True)
    b = conv_cuda.adjoined_conv2d_cuda(xf, xs, w, None, (1, 1), (1, 1), (1, 1), 20, None, share_weights=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@needs_gpu
def test_conv_wgrad_deterministic():
    _load()
    gen = torch.Generator(device=DEV).manual_seed(4)
    xf = _make((32, 64, 16, 16), torch.float16, "cl", gen)
    xs = _make((32, 16, 16, 16), torch.float16, "cl", gen)
    dzf = _make((32, 64, 16, 16), torch.float16, "cl", gen)
    dzs = _make((32, 16, 16, 16), torch.float16, "cl", gen)
    args = (xf, xs, dzf, dzs, None, None, [3, 3], [1, 1], [1, 1], [1, 1], True, True)
    first = torch.ops.adjoined.cuda_conv2d_wgrad(*args)
    for _ in range(3):
        again = torch.ops.adjoined.cuda_conv2d_wgrad(*args)
        assert all(torch.equal(x, y) for x, y in zip(first, again))


@needs_gpu
def test_opcheck_cuda():
    """Schema, fake kernels, autograd registration and AOT dispatch on real CUDA tensors."""
    _load()
    for name, args in _op_samples(DEV):
        args = list(args)
        if name == "cuda_conv2d_fprop":
            args[:5] = [a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args[:5]]
        if name == "cuda_adjoined_loss_fwd" and args[-1]:
            args[:2] = [a.detach().requires_grad_(True) for a in args[:2]]
        torch.library.opcheck(getattr(torch.ops.adjoined, name).default, tuple(args))


@needs_gpu
def test_no_host_sync():
    """Forward and backward of both ops never synchronise the host (CUDA-graph friendly)."""
    conv_cuda, loss_cuda = _load()
    gen = torch.Generator(device=DEV).manual_seed(5)
    xf = _make((2, 16, 8, 8), torch.float16, "cl", gen).requires_grad_(True)
    xs = _make((2, 4, 8, 8), torch.float16, "cl", gen).requires_grad_(True)
    w = _make((32, 16, 3, 3), torch.float16, "cl", gen).requires_grad_(True)
    sc = torch.ones(8, device=DEV, dtype=torch.float16, requires_grad=True)
    lf = torch.randn(8, 100, device=DEV, requires_grad=True)
    ls = torch.randn(8, 100, device=DEV, requires_grad=True)
    tg = torch.randint(0, 100, (8,), device=DEV)
    lam = torch.tensor(0.3, device=DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        zf, zs = conv_cuda.adjoined_conv2d_cuda(xf, xs, w, None, (1, 1), (1, 1), (1, 1), 8, sc)
        (zf.float().sum() + zs.float().sum()).backward()
        loss = loss_cuda.adjoined_loss_cuda(lf, ls, tg, 0.3)
        loss.backward()
        loss_cuda.adjoined_loss_cuda(lf, ls, tg, lam * 2, reduction="sum").backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


# (B, C): tiny, classifier-sized, long rows (chunked online softmax), B above the inline n_valid count
LOSS_SHAPES = [(4, 10), (64, 1000), (3, 40000), (5000, 7)]


@needs_gpu
@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_vs_float64(shape, dtype, reduction):
    _, loss_cuda = _load()
    B, C = shape
    i = LOSS_SHAPES.index(shape) + DTYPES.index(dtype)
    eps = 1e-6 if i % 2 == 0 else 0.0
    temperature = (1.0, 2.5, 0.7)[i % 3]
    detach = i % 4 == 3
    lam = torch.tensor(0.8, device=DEV) if i % 2 else 0.8
    gen = torch.Generator(device=DEV).manual_seed(i)
    base_f = torch.randn(B, C + 3, generator=gen, device=DEV) * 3
    lf = base_f[:, :C].to(dtype)                                     # row stride C + 3
    ls = (torch.randn(C, B, generator=gen, device=DEV) * 3).to(dtype).t()  # class stride != 1
    tg = torch.randint(0, C, (B,), generator=gen, device=DEV)
    tg[::5] = -100
    if i % 2:
        tg = tg.int()

    def run(fn, a, b):  # detach() keeps the strides of the non-contiguous logits
        a = a.detach().requires_grad_(True)
        b = b.detach().requires_grad_(True)
        out = fn(a, b)
        return out, a, b

    kw = dict(eps=eps, temperature=temperature, reduction=reduction, ignore_index=-100, detach_full=detach)
    ours = run(lambda a, b: loss_cuda.adjoined_loss_cuda(a, b, tg, lam, **kw), lf, ls)
    lowp = run(lambda a, b: ak.adjoined_loss_ref(a, b, tg.long(), lam, **kw), lf, ls)
    ref = run(lambda a, b: ak.adjoined_loss_ref(a, b, tg.long(), lam, **kw), lf.double(), ls.double())
    assert ours[0].dtype == dtype and ours[0].shape == ref[0].shape
    _assert_close_2x("loss", ours[0], lowp[0], ref[0].detach(), dtype)
    g = torch.randn(ref[0].shape, generator=gen, device=DEV, dtype=torch.float64)
    for res in (ours, lowp, ref):
        res[0].backward(g.to(res[0].dtype))
    _assert_close_2x("d logits_full", ours[1].grad, lowp[1].grad, ref[1].grad, dtype)
    _assert_close_2x("d logits_small", ours[2].grad, lowp[2].grad, ref[2].grad, dtype)


@needs_gpu
@pytest.mark.parametrize("eps", [1e-30, 0.3])
def test_loss_eps_extremes(eps):
    """eps below 2^-60 (two reciprocals per class) and a large eps (one of (p+eps)(q+eps)), T != 1."""
    _, loss_cuda = _load()
    gen = torch.Generator(device=DEV).manual_seed(9)
    lf = (torch.randn(3, 300, generator=gen, device=DEV) * 4).requires_grad_(True)
    ls = (torch.randn(3, 300, generator=gen, device=DEV) * 4).requires_grad_(True)
    tg = torch.tensor([5, -100, 299], device=DEV)
    kw = dict(eps=eps, temperature=1.5)
    out = loss_cuda.adjoined_loss_cuda(lf, ls, tg, 0.6, **kw)
    lfd, lsd = lf.detach().double().requires_grad_(True), ls.detach().double().requires_grad_(True)
    ref = ak.adjoined_loss_ref(lfd, lsd, tg, 0.6, **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    out.backward()
    ref.backward()
    torch.testing.assert_close(lf.grad.double(), lfd.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ls.grad.double(), lsd.grad, rtol=1e-4, atol=1e-6)


@needs_gpu
def test_loss_no_grad_skips_gradients():
    _, loss_cuda = _load()
    lf = torch.randn(6, 50, device=DEV)
    tg = torch.randint(0, 50, (6,), device=DEV)
    with torch.no_grad():
        out = loss_cuda.adjoined_loss_cuda(lf, lf.flip(1), tg, 0.5)
    ref = ak.adjoined_loss_ref(lf.double(), lf.flip(1).double(), tg, 0.5)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


@needs_gpu
def test_loss_all_rows_ignored_mean():
    _, loss_cuda = _load()
    lf = torch.randn(4, 9, device=DEV, requires_grad=True)
    ls = torch.randn(4, 9, device=DEV, requires_grad=True)
    tg = torch.full((4,), -100, device=DEV)
    out = loss_cuda.adjoined_loss_cuda(lf, ls, tg, 1.0)
    ref = ak.adjoined_loss_ref(lf.double(), ls.double(), tg, 1.0)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    out.backward()
    assert torch.isfinite(lf.grad).all() and torch.isfinite(ls.grad).all()


@needs_gpu
def test_compile_fullgraph():
    """torch.compile traces the CUDA ops (fake kernels + autograd) without graph breaks."""
    conv_cuda, loss_cuda = _load()
    xf = torch.randn(2, 8, 9, 9, device=DEV, requires_grad=True)
    xs = torch.randn(2, 4, 9, 9, device=DEV, requires_grad=True)
    w = torch.randn(16, 8, 3, 3, device=DEV, requires_grad=True)
    tg = torch.randint(0, 16, (2,), device=DEV)

    def f(xf, xs, w):
        zf, zs = conv_cuda.adjoined_conv2d_cuda(xf, xs, w, None, (1, 1), (1, 1), (1, 1), 16, None)
        return loss_cuda.adjoined_loss_cuda(zf.mean((2, 3)), zs.mean((2, 3)), tg, 0.5)

    eager = f(xf, xs, w)
    compiled = torch.compile(f, fullgraph=True)(xf, xs, w)
    torch.testing.assert_close(compiled, eager)
    compiled.backward()
    assert xf.grad is not None and w.grad is not None
