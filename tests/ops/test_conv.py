"""The adjoined convolution, by op: every fused backend (triton; cuda on a GPU; the CUDA kernels' CPU
emulation, cuda_emu) against a float64 reference with one case generator and one tolerance rule, weight
sharing on/off, the passes' contract (schemas, opcheck), dispatch, the frame budget and torch.compile.

Without a GPU the Triton kernels run in the interpreter on tiny shapes (tests/conftest.py sets
TRITON_INTERPRET=1 and NaN-poisons every output buffer); with one, the same tests run on CUDA, plus
larger shapes.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import random

import pytest
import torch

import adjoined_kernels as ak
from adjoined_kernels.ops.conv import adjoined_conv2d_ref, fused_conv2d, run
from adjoined_kernels.ops.conv import reference as R
from adjoined_kernels.ops.conv.contract import AdjoinedConv

pytest.importorskip("triton", reason="triton is not installed")
from adjoined_kernels.ops.conv.triton import IMPL as T, OPS, dgrad as cd, fprop as cf, wgrad as cw  # noqa: E402

pytestmark = pytest.mark.skipif("triton" not in ak.available_backends(),
                                reason="backend='triton' needs a CUDA GPU or TRITON_INTERPRET=1")

CL = torch.channels_last
# Error floor relative to the reference's largest magnitude: one rounding of the output (the
# interpreter truncates to bf16 instead of rounding, so bf16 gets two ulps) plus accumulation-order noise.
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GRAD_NAMES = ("x_full", "x_small", "weight", "bias", "small_scale")


# ----------------------------------------------------------------------------------------------------
# Case generation


def make_case(seed: int) -> dict:
    """A random configuration; the seed cycles deterministically through the coverage list.

    Kernel sizes 1/3/5/7, strides 1-3, dilation 1-2, padding, c_in_s in {1, C_in/alpha, C_in}, branch batch
    and spatial sizes that differ, bias and small_scale on/off, NCHW / channels_last / non-contiguous.
    Every 6th case is wide (C > 32: several channel tiles, pairing boundaries), mostly with a 1x1 kernel.
    """
    rng = random.Random(seed)
    wide = seed % 6 == 5
    k = (3 if (seed // 6) % 3 == 0 else 1) if wide else (1, 3, 5, 7)[seed % 4]
    kernel = (k, k) if seed % 5 else (k, rng.choice((1, 3)))
    stride = (1 + seed % 3, 1 + (seed // 3) % 3) if seed % 4 else (1 + seed % 3,) * 2
    dilation = (1 + (seed // 2) % 2, 1 + (seed // 4) % 2) if k < 7 else (1, 1 + (seed // 4) % 2)
    padding = tuple(rng.randint(0, dilation[d] * (kernel[d] - 1) // 2 + 1) for d in range(2))
    c_in = rng.choice((40, 48)) if wide else rng.choice((4, 6, 8, 12))
    c_out = rng.choice((36, 40)) if wide else rng.choice((4, 8, 12))
    alpha = rng.choice((2, 4))
    c_in_s = (1, c_in // alpha, c_in)[seed % 3]
    c_out_s = (c_out // alpha, 1, c_out)[(seed // 3) % 3]

    def spatial():
        # at least stride + 2 pixels, so every branch has pixels that receive a gradient
        need = [max(stride[d] + 2, dilation[d] * (kernel[d] - 1) + 1 - 2 * padding[d]) for d in range(2)]
        extra = 1 if wide or k >= 5 else 4
        return tuple(n + rng.randint(0, extra) for n in need)

    return dict(n1=rng.randint(1, 2), n2=rng.randint(1, 3), hw1=spatial(), hw2=spatial(), c_in=c_in,
                c_in_s=c_in_s, c_out=c_out, c_out_s=c_out_s, kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, bias=seed % 4 != 1, scale=(None, "grad", "fixed")[seed % 3],
                layout=("nchw", "channels_last", "noncontig")[(seed // 2) % 3])


def _tensor(shape, layout, device, gen, scale=1.0):
    """Random float64 tensor in the requested memory layout (values never all zero)."""
    if layout == "noncontig":
        n, c, h, w = shape
        big = torch.randn((n, c + 3, h, 2 * w), generator=gen, dtype=torch.float64) * scale
        t = big.to(device)[:, 1:c + 1, :, ::2]
    else:
        t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device)
        if layout == "channels_last":
            t = t.contiguous(memory_format=CL)
    return t


def make_inputs(case: dict, device, seed: int) -> dict:
    """float64 inputs and upstream gradients for ``case`` (layouts as requested)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    lay = case["layout"]
    kh, kw = case["kernel"]
    x_full = _tensor((case["n1"], case["c_in"], *case["hw1"]), lay, device, gen)
    x_small = _tensor((case["n2"], case["c_in_s"], *case["hw2"]), lay, device, gen)
    w_layout = "noncontig" if lay == "noncontig" else "nchw"
    weight = _tensor((case["c_out"], case["c_in"], kh, kw), w_layout, device, gen,
                     scale=(case["c_in"] * kh * kw) ** -0.5)
    step = 2 if lay == "noncontig" else 1  # strided bias / small_scale views in the non-contiguous case
    bias = None
    if case["bias"]:
        bias = torch.randn(step * case["c_out"], generator=gen, dtype=torch.float64).to(device)[::step]
    scale = None
    if case["scale"]:
        scale = (0.5 + torch.rand(step * case["c_out_s"], generator=gen, dtype=torch.float64)).to(device)[::step]
    out = adjoined_conv2d_ref(x_full, x_small, weight, bias, case["stride"], case["padding"], case["dilation"],
                              case["c_out_s"], scale)
    grads = tuple(_tensor(z.shape, lay, device, gen) for z in out)
    return dict(x_full=x_full, x_small=x_small, weight=weight, bias=bias, small_scale=scale, grads=grads)


def _leaves(inputs: dict, dtype, case: dict) -> dict:
    """Leaf copies in ``dtype`` that keep the layout; small_scale needs grad only when case says 'grad'."""
    out = {}
    for name in GRAD_NAMES:
        t = inputs[name]
        if t is None:
            out[name] = None
            continue
        c = torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=t.device)
        c.copy_(t)
        out[name] = c.requires_grad_(name != "small_scale" or case["scale"] == "grad")
    return out


def run_conv(case: dict, leaves: dict, grads, fn):
    """Forward ``fn`` and the gradients of sum(z * g) for every leaf that requires grad."""
    z = fn(leaves["x_full"], leaves["x_small"], leaves["weight"], leaves["bias"], case["stride"],
           case["padding"], case["dilation"], case["c_out_s"], leaves["small_scale"])
    names = [n for n in GRAD_NAMES if leaves[n] is not None and leaves[n].requires_grad]
    g = [gr.to(z[0].dtype) for gr in grads]
    dx = torch.autograd.grad(z, [leaves[n] for n in names], g)
    return z, dict(zip(names, dx))


def _fused_fn(module, share=True):
    def fn(*args):
        return run(module, *args, share_weights=share)
    return fn


def _ref_fn(*args):
    return adjoined_conv2d_ref(*args)


@contextlib.contextmanager
def no_tf32():
    """fp32 convolutions in full precision, for torch and for the kernels (they follow cuDNN's flag)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def assert_close_to_ref(what, got, ref64, base, dtype):
    """|got - ref| <= 2 |base - ref| + FLOOR * max|ref| (flash-attention's rule, docs/benchmarks.md)."""
    mag = ref64.abs().max().item()
    assert mag > 0, f"{what}: the reference is all zeros, the test would prove nothing"
    assert got.shape == ref64.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    err = (got.double() - ref64).abs().max().item()
    base_err = (base.double() - ref64).abs().max().item()
    tol = 2 * base_err + FLOOR[dtype] * mag
    assert err <= tol, f"{what}: max error {err:.3g} > tol {tol:.3g} (torch baseline {base_err:.3g}, |ref| {mag:.3g})"


def check_case(case: dict, dtype, device, seed: int, module, share=True):
    """``module``'s fused path (a backend module of ops/conv, or the emulation's) against float64: the
    flash-attention rule for every output and gradient, and F.conv2d's memory formats."""
    inputs = make_inputs(case, device, seed)
    ref_z, ref_g = run_conv(case, _leaves(inputs, torch.float64, case), inputs["grads"], _ref_fn)
    # Baseline: torch in the same low precision where the device supports it, else fp32.
    base_dtype = dtype if device == "cuda" else torch.float32
    with no_tf32():
        base_z, base_g = run_conv(case, _leaves(inputs, base_dtype, case), inputs["grads"], _ref_fn)
        z, g = run_conv(case, _leaves(inputs, dtype, case), inputs["grads"], _fused_fn(module, share))
    for name, got, ref, base in zip(("z_full", "z_small"), z, ref_z, base_z):
        assert got.dtype == dtype
        assert_close_to_ref(name, got, ref, base, dtype)
    assert set(g) == set(ref_g)
    for name in g:
        assert_close_to_ref("d " + name, g[name], ref_g[name], base_g[name], dtype)
    # Memory formats follow F.conv2d and its autograd in the baseline's dtype: on CUDA float64 takes a
    # non-cuDNN path whose output format differs (a 1-channel tensor is both formats: ties go to NCHW).
    for name, t, ref in (("z_full", z[0], base_z[0]), ("z_small", z[1], base_z[1]),
                         ("d x_full", g["x_full"], base_g["x_full"]), ("d x_small", g["x_small"], base_g["x_small"])):
        for fmt in (torch.contiguous_format, CL):
            assert t.is_contiguous(memory_format=fmt) == ref.is_contiguous(memory_format=fmt), \
                f"{name} has strides {t.stride()}, F.conv2d gives {ref.stride()}"


# ----------------------------------------------------------------------------------------------------
# Forward and gradients against float64


@pytest.mark.parametrize("seed", range(18))
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_random_fp32(backend, seed, device, fused):
    check_case(make_case(seed), torch.float32, device, seed, fused(backend)[0])


@pytest.mark.parametrize("seed", range(100, 106))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_random_low_precision(backend, seed, dtype, device, fused):
    check_case(make_case(seed), dtype, device, seed, fused(backend)[0])


@pytest.mark.parametrize("seed", [0, 5, 7, 100, 101])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_kernels_emulated(seed, dtype, fused):
    """The CUDA C++ kernels, compiled for the CPU (csrc/emu/), on a few cases of the same generator: their
    index logic and numerics checked without a GPU (the pipelined tensor-core path needs 16-byte rows, which
    seed 5 has)."""
    check_case(make_case(seed), dtype, "cpu", seed, fused("cuda_emu")[0])


EDGE_CASES = {
    # first adjoined layer: the small branch reads the full-width tensor
    "c_in_s_eq_C_in": dict(n1=2, n2=2, hw1=(5, 5), hw2=(5, 5), c_in=6, c_in_s=6, c_out=8, c_out_s=2,
                           kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), bias=True,
                           scale="grad", layout="channels_last"),
    # one small channel in and out; stride larger than the kernel leaves input pixels without gradient
    "single_channel_stride_gt_kernel": dict(n1=1, n2=2, hw1=(7, 8), hw2=(5, 4), c_in=3, c_in_s=1, c_out=5,
                                            c_out_s=1, kernel=(1, 2), stride=(3, 3), padding=(0, 1),
                                            dilation=(1, 1), bias=False, scale=None, layout="nchw"),
    # more small rows than full rows: small-only tiles beyond the paired ones
    "small_batch_larger": dict(n1=1, n2=3, hw1=(4, 4), hw2=(6, 6), c_in=8, c_in_s=4, c_out=8, c_out_s=4,
                               kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), bias=True,
                               scale="fixed", layout="nchw"),
    # tap-major weight-gradient tiles on both branches (C >= 32), several tiles per tap
    "wide_3x3_strided": dict(n1=1, n2=1, hw1=(5, 5), hw2=(4, 6), c_in=32, c_in_s=32, c_out=34, c_out_s=17,
                             kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1), bias=True,
                             scale="grad", layout="channels_last"),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda_emu"])
def test_edge_cases(backend, name, device, fused):
    check_case(EDGE_CASES[name], torch.float32, "cpu" if backend == "cuda_emu" else device, 7, fused(backend)[0])


@pytest.mark.parametrize("seed", [1, 9, 11])
@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda_emu"])
def test_share_weights_on_off_agree(backend, seed, device, fused):
    """Sharing changes who loads a weight tile, not the maths: results agree to fp32 rounding."""
    module = fused(backend)[0]
    device = "cpu" if backend == "cuda_emu" else device
    case = make_case(seed)
    inputs = make_inputs(case, device, seed)
    on = run_conv(case, _leaves(inputs, torch.float32, case), inputs["grads"], _fused_fn(module, True))
    off = run_conv(case, _leaves(inputs, torch.float32, case), inputs["grads"], _fused_fn(module, False))
    for a, b in zip(on[0], off[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for name in on[1]:
        torch.testing.assert_close(on[1][name], off[1][name], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# The ops themselves: references, opcheck, errors


def _op_args(device, dtype=torch.float32, requires_grad=False, bias=True, scale=True, k=3):
    """Small op inputs: x_full [2, 6, 5, 5], x_small [1, 3, 4, 6], weight [8, 6, k, k]; c_out_s = 4."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_(requires_grad)

    xf, xs, w = r(2, 6, 5, 5), r(1, 3, 4, 6), r(8, 6, k, k)
    b = r(8) if bias else None
    sc = r(4) if scale else None
    return xf, xs, w, b, sc


@no_tf32()  # fp32 at 1e-4: TF32 (cuDNN's default, which the kernels follow) is ~1e-3
def test_fprop_op_matches_ref(device):
    xf, xs, w, b, sc = _op_args(device)
    args = (xf, xs, w, b, sc, [2, 1], [1, 0], [1, 2], 4, True, True)
    for got, ref in zip(OPS.fprop(*args), R.fprop(*args)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        assert got.is_contiguous(memory_format=CL)


@no_tf32()  # fp32 at 1e-4: TF32 (cuDNN's default, which the kernels follow) is ~1e-3
def test_dgrad_wgrad_ops_match_ref(device):
    xf, xs, w, b, sc = _op_args(device)
    zf, zs, us = R.fprop(xf, xs, w, b, sc, [2, 1], [1, 0], [1, 2], 4, True)
    dzf, dzs = torch.randn_like(zf), torch.randn_like(zs)
    d_args = (dzf, dzs, w, sc, [5, 5], [4, 6], 3, [2, 1], [1, 0], [1, 2], True)
    for got, ref in zip(OPS.dgrad(*d_args), R.dgrad(*d_args)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        assert got.is_contiguous(memory_format=CL)
    w_args = (xf, xs, dzf, dzs, sc, us, [3, 3], [2, 1], [1, 0], [1, 2], True, True)
    for got, ref in zip(OPS.wgrad(*w_args), R.wgrad(*w_args)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        assert got.dim() == 1 or got.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("offsets", ["i32", "i64"])
@pytest.mark.parametrize("n,c,c_s,hw", [(3, 5, 2, (9, 9)), (2, 40, 8, (7, 11))], ids=["flat", "tap_major"])
def test_wgrad_split_k_row_carries(n, c, c_s, hw, offsets, device, monkeypatch):
    """wgrad over K-chunks of several BK steps each, with output planes larger and smaller than BK rows
    (the (n, p, q) carries wrap across images), FLAT and tap-major tiles (the second with C_in >= 32 >
    c_in_s), small_scale and db, against torch.nn.grad in fp32; with the K loop's 32-bit row offsets and,
    forced, the 64-bit ones that large tensors take."""
    if offsets == "i64":
        monkeypatch.setattr(cw, "I64_FROM", 0)
    cw._wgrad_plan.cache_clear()  # plans hold the choice
    g = torch.Generator().manual_seed(5)

    def r(*shape):
        return torch.randn(shape, generator=g).to(device)

    xf, xs = r(n, c, *hw), r(n + 1, c_s, hw[0] - 2, hw[1] + 1)
    dzf, dzs = r(n, 6, *hw), r(n + 1, 3, hw[0] - 2, hw[1] + 1)
    sc = r(3) + 2.0
    args = (xf, xs, dzf, dzs, sc, None, [3, 3], [1, 1], [1, 1], [1, 1], True, True)
    with no_tf32():
        for got, ref in zip(OPS.wgrad(*args), R.wgrad(*args)):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)
    cw._wgrad_plan.cache_clear()


def test_wgrad_offsets_widen_for_large_tensors():
    """The K loop's row offsets are 64-bit exactly when a tensor spans I64_FROM elements or more (x by its
    strides: a strided view spans more than it holds)."""
    def plan(x_size, x_stride, n=2):
        dz = (n, 8, x_size[2], x_size[3])
        return cw._wgrad_plan(x_size, x_stride, (n, 4, 8, 8), (256, 1, 32, 4), dz, (n, 4, 8, 8), (1, 1),
                              (1, 1), (0, 0), (1, 1), torch.device("cpu"))
    hw = 2 ** 12
    small = plan((2, 8, 8, 8), (512, 1, 64, 8))
    big = plan((2, 8, hw, hw), (8 * hw * hw, 1, 8 * hw, 8))          # 2 * 2**27 elements: 2**28
    strided = plan((2, 8, 8, 8), (2 ** 30, 1, 64, 8))                # 128 KB of values, 2**30 apart
    assert (small.i64, big.i64, strided.i64) == (False, False, True)
    assert plan((16, 8, hw, hw), (8 * hw * hw, 1, 8 * hw, 8), n=16).i64  # 2**31 elements


@pytest.mark.parametrize("bias,scale", [(True, True), (False, False)])
def test_opcheck_fprop(bias, scale, device):
    xf, xs, w, b, sc = _op_args(device, requires_grad=True, bias=bias, scale=scale, k=1)
    args = (xf, xs, w, b, sc, [1, 2], [1, 0], [1, 1], 4, scale, True)
    torch.library.opcheck(torch.ops.adjoined.triton_conv2d_fprop.default, args)


def test_opcheck_dgrad_wgrad(device):
    xf, xs, w, b, sc = _op_args(device, k=1)
    zf, zs, us = R.fprop(xf, xs, w, b, sc, [1, 2], [1, 0], [1, 1], 4, True)
    dzf, dzs = torch.randn_like(zf), torch.randn_like(zs)
    torch.library.opcheck(torch.ops.adjoined.triton_conv2d_dgrad.default,
                          (dzf, dzs, w, sc, [5, 5], [4, 6], 3, [1, 2], [1, 0], [1, 1], False))
    torch.library.opcheck(torch.ops.adjoined.triton_conv2d_wgrad.default,
                          (xf, xs, dzf, dzs, None, None, [1, 1], [1, 2], [1, 0], [1, 1], True, True))
    torch.library.opcheck(torch.ops.adjoined.triton_conv2d_wgrad.default,
                          (xf, xs, dzf, dzs, sc, us, [1, 1], [1, 2], [1, 0], [1, 1], False, False))


def test_wgrad_rejects_mismatched_geometry(device):
    xf, xs, w, b, sc = _op_args(device)
    zf, zs, _ = R.fprop(xf, xs, w, b, sc, [1, 1], [1, 1], [1, 1], 4)
    with pytest.raises(ValueError, match="dz_full has spatial size"):
        T.wgrad(xf, xs, zf, zs, None, None, [3, 3], [2, 2], [1, 1], [1, 1], True, False)
    with pytest.raises(ValueError, match="dz_small has spatial size"):
        T.wgrad(xf, xs, zf, zs[:, :, 1:], None, None, [3, 3], [1, 1], [1, 1], [1, 1], True, False)


def test_scale_grad_needs_saved_pre_scale_output(device):
    xf, xs, w, b, sc = _op_args(device, requires_grad=True)
    zf, zs, _ = OPS.fprop(xf, xs, w, b, sc, [1, 1], [1, 1], [1, 1], 4, False, True)
    with pytest.raises(RuntimeError, match="save_pre=True"):
        torch.autograd.grad(zs.sum(), sc)


def test_autotune_prune_keeps_configs_that_fit():
    """GPU config pruning (the interpreter has one config): shared memory, narrow and tiny problems."""
    import triton

    from adjoined_kernels.ops.conv.triton.gemm import (GEMM_SPACE, SHARED_SPILLS, SMEM_BUDGET, gemm_prune,
                                                        shared_a_tiles)

    space = [triton.Config(dict(BM=m, BN=n, BK=k, GROUP_M=8), num_warps=w, num_stages=s)
             for m, n, k, w, s in GEMM_SPACE]
    prune = gemm_prune(lambda a: a["dims"], shared_a_tiles)["early_config_prune"]

    def tiles(configs):
        return [(c.kwargs["BM"], c.kwargs["BN"], c.kwargs["BK"]) for c in configs]

    big = (1 << 16, 256, 2304)
    for dtype in (torch.float32, torch.bfloat16):
        for share in (True, False):
            args = dict(x=torch.empty(1, dtype=dtype), dims=big)
            kept = prune(space, args, SHARE=share)
            assert kept
            for c in kept:
                m, n, k = c.kwargs["BM"], c.kwargs["BN"], c.kwargs["BK"]
                assert ((1 + share) * m + n) * k * dtype.itemsize * c.num_stages <= SMEM_BUDGET
            assert tiles(prune(space, dict(args, dims=(64, 64, 64)), SHARE=share)) == [(64, 64, 32)]
    bf16 = dict(x=torch.empty(1, dtype=torch.bfloat16))
    assert len(prune(space, dict(bf16, dims=big), SHARE=False)) == len(space)
    # Weight sharing holds two accumulators: the configs that spill then are dropped.
    shared = [(c.kwargs["BM"], c.kwargs["BN"], c.kwargs["BK"], c.num_warps, c.num_stages)
              for c in prune(space, dict(bf16, dims=big), SHARE=True)]
    assert shared and not set(shared) & set(SHARED_SPILLS)
    # fp32 128x128x64 x 3 stages is 192 KB: fits one buffer ring, not two A tiles.
    f32 = dict(x=torch.empty(1, dtype=torch.float32), dims=big)
    assert (128, 128, 64) in tiles(prune(space, f32, SHARE=False))
    assert (128, 128, 64) not in tiles(prune(space, f32, SHARE=True))
    assert all(bn == 64 for _, bn, _ in tiles(prune(space, dict(bf16, dims=(1 << 16, 64, 2304)), SHARE=False)))


def test_sm90_sass_wgmma_not_serialised(sm90_tool):
    """fprop, dgrad (weight sharing on and off) and wgrad, compiled offline for sm_90 (bf16, 64x64x32 tiles, a
    ResNet-50 layer-3 3x3 shape): ptxas must not serialise the wgmmas (C7515: an accumulator reaching an MMA
    through a control-flow merge), spill, or divide inside a K loop. Runs tools/conv_sass_report.py --check
    in a subprocess, without TRITON_INTERPRET; no GPU needed."""
    proc = sm90_tool("conv_sass_report.py", "--pass", "fprop", "--pass", "dgrad", "--pass", "wgrad", "--share", "both",
                     "--shape", "l3-3x3", "--config", "64,64,32,4,3", "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "CHECK: ok" in proc.stdout


# ----------------------------------------------------------------------------------------------------
# Dispatch and compile


@no_tf32()  # fp32 at 1e-4: TF32 (cuDNN's default, which the kernels follow) is ~1e-3
def test_public_api_runs_the_triton_kernels(device, monkeypatch):
    calls = []
    for launcher, name in ((cf._fprop_launcher, "fprop"), (cd._dgrad_launcher, "dgrad"), (cw._wgrad_launcher, "wgrad")):
        monkeypatch.setattr(launcher, "bind", lambda *a, _f=launcher.bind, _n=name: calls.append(_n) or _f(*a))
    xf, xs, w, b, sc = _op_args(device, requires_grad=True)
    zf, zs = ak.adjoined_conv2d(xf, xs, w, b, padding=1, small_out_channels=4, small_scale=sc, backend="triton")
    (zf.sum() + zs.sum()).backward()
    assert calls == ["fprop", "dgrad", "wgrad"]
    ref = ak.adjoined_conv2d(xf, xs, w, b, padding=1, small_out_channels=4, small_scale=sc, backend="reference")
    torch.testing.assert_close(zf, ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zs, ref[1], rtol=1e-4, atol=1e-4)


def test_eager_path_equals_the_registered_ops(device):
    """Eager calls skip the custom-op dispatch (AdjoinedConv); results and every gradient must be identical
    to the ops' own autograd, which torch.compile traces."""
    args = _op_args(device, requires_grad=True)
    rest = ([1, 1], [1, 1], [1, 1], 4, True, True)
    runs = []
    for fprop in (OPS.fprop, lambda *a: AdjoinedConv.apply(T, *a)):
        zf, zs, _ = fprop(*args, *rest)
        g = torch.Generator().manual_seed(1)
        dz = [torch.randn(z.shape, generator=g).to(device) for z in (zf, zs)]
        grads = torch.autograd.grad((zf, zs), args, dz)
        runs.append((zf, zs, *grads))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@no_tf32()  # fp32 at 1e-4: TF32 (cuDNN's default, which the kernels follow) is ~1e-3
def test_public_api_traces_the_ops_under_compile(device):
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    xf, xs, w, b, sc = _op_args(device)
    f = torch.compile(lambda *a: ak.adjoined_conv2d(*a, padding=1, small_out_channels=4, small_scale=sc,
                                                    backend="triton"), backend=backend, fullgraph=True)
    zf, zs = f(xf, xs, w, b)
    assert any("conv2d_fprop" in t for t in seen), seen
    ref = adjoined_conv2d_ref(xf, xs, w, b, 1, 1, 1, 4, sc)
    torch.testing.assert_close(zs, ref[1], rtol=1e-4, atol=1e-4)


def test_torch_compile_fullgraph(device):
    xf, xs, w, b, sc = _op_args(device, requires_grad=True)

    def f(xf, xs, w, b, sc):
        zf, zs = fused_conv2d("triton", xf, xs, w, b, (1, 1), (1, 1), (1, 1), 4, sc)
        return (zf * zf).sum() + (zs * zs).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    loss = compiled(xf, xs, w, b, sc)
    grads = torch.autograd.grad(loss, (xf, xs, w, b, sc))
    ref_loss = f(xf, xs, w, b, sc)
    ref_grads = torch.autograd.grad(ref_loss, (xf, xs, w, b, sc))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# GPU only: realistic shapes


LARGE = [
    # ResNet stage-3-like 3x3, alpha=4, small branch on compact channels
    dict(n1=16, n2=16, hw1=(28, 28), hw2=(28, 28), c_in=128, c_in_s=32, c_out=128, c_out_s=32, kernel=(3, 3),
         stride=(1, 1), padding=(1, 1), dilation=(1, 1), bias=False, scale=None, layout="channels_last"),
    # strided downsample 1x1, first adjoined layer (c_in_s = C_in), DAN gate
    dict(n1=16, n2=16, hw1=(56, 56), hw2=(56, 56), c_in=64, c_in_s=64, c_out=128, c_out_s=32, kernel=(1, 1),
         stride=(2, 2), padding=(0, 0), dilation=(1, 1), bias=True, scale="grad", layout="channels_last"),
    # 7x7 stride-2 stem-like conv with 3 input channels, NCHW input
    dict(n1=8, n2=8, hw1=(64, 64), hw2=(64, 64), c_in=3, c_in_s=3, c_out=64, c_out_s=16, kernel=(7, 7),
         stride=(2, 2), padding=(3, 3), dilation=(1, 1), bias=False, scale=None, layout="nchw"),
]


# One dtype per shape keeps autotuning (one compile per config and specialisation) to a few minutes.
@pytest.mark.parametrize("idx,dtype", [(0, torch.bfloat16), (1, torch.float16), (2, torch.float32)],
                         ids=["3x3-bf16", "1x1-stride2-fp16", "7x7-stem-fp32"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_large_shapes_cuda(backend, idx, dtype, device, fused):
    if device != "cuda":
        pytest.skip("realistic shapes are too slow for the Triton interpreter; runs on CUDA only")
    check_case(LARGE[idx], dtype, device, idx, fused(backend)[0])


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_autocast_casts_inputs_like_conv2d(device, backend):
    """Under autocast the fp32 inputs and weight run in the autocast dtype (as F.conv2d does), and the
    gradients reach the fp32 leaves in fp32."""
    xf, xs, w, b, sc = _op_args(device, requires_grad=True)
    with torch.autocast(device, dtype=torch.bfloat16):
        zf, zs = ak.adjoined_conv2d(xf, xs, w, b, padding=1, small_out_channels=4, small_scale=sc,
                                    backend=backend)
    assert zf.dtype == zs.dtype == torch.bfloat16
    (zf.float().sum() + zs.float().sum()).backward()
    assert w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()
    bf = [t.detach().to(torch.bfloat16) for t in (xf, xs, w, b, sc)]
    ref = adjoined_conv2d_ref(*[t.double() for t in bf[:4]], 1, 1, 1, 4, bf[4].double())
    for got, want in zip((zf, zs), ref):
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err < 2e-2, err


# ----------------------------------------------------------------------------------------------------
# The contract, the frame budget, the prefix, unavailable backends


@pytest.mark.parametrize("name", ["conv2d_fprop", "conv2d_dgrad", "conv2d_wgrad"])
@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda_emu"])
def test_every_backend_registers_the_contracts_schema(backend, name, registered):
    """One schema per pass: each backend's op has exactly the contract's arguments and returns."""
    from adjoined_kernels.ops.conv.contract import SCHEMAS
    ns, op, schema = registered("conv", backend, name)
    assert schema == f"{ns}::{op}{SCHEMAS[name]}"


def test_opcheck_emulated_cuda_ops(fused):
    """torch.library.opcheck of the CUDA ops' contract (schema, fake kernels, autograd registration, AOT
    dispatch) through their CPU emulation."""
    ops = fused("cuda_emu")[0].OPS
    xf, xs, w, b, sc = _op_args("cpu", requires_grad=True, k=3)
    args = (xf, xs, w, b, sc, [2, 1], [1, 0], [1, 2], 4, True, True)
    torch.library.opcheck(ops.fprop.default, args)
    zf, zs, us = R.fprop(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    dzf, dzs = torch.randn_like(zf), torch.randn_like(zs)
    w0, sc0 = w.detach(), sc.detach()
    torch.library.opcheck(ops.dgrad.default, (dzf, dzs, w0, sc0, [5, 5], [4, 6], 3, [2, 1], [1, 0], [1, 2], True))
    torch.library.opcheck(ops.wgrad.default, (xf.detach(), xs.detach(), dzf, dzs, sc0, us, [3, 3], [2, 1], [1, 0],
                                              [1, 2], True, True))


def _package_frames():
    """The adjoined_kernels functions on the current call stack, innermost first, as "file:function"."""
    pkg = os.path.dirname(os.path.abspath(ak.__file__))
    return [f"{os.path.relpath(f.filename, pkg)}:{f.function}" for f in inspect.stack()
            if os.path.abspath(f.filename).startswith(pkg + os.sep)]


def test_module_reaches_the_triton_kernel_through_four_frames(monkeypatch, device):
    """FusedAdjoinedConv2d.forward -> adjoined_conv2d -> AdjoinedConv.forward -> fprop, which launches the
    kernel itself: at most four of the package's frames between a module and its kernel."""
    from adjoined_kernels.ops.conv.triton import launch
    seen = []

    class Kernel:  # stands in for the Triton kernel: records who launched it
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append(_package_frames())

    monkeypatch.setattr(launch, "FAST", False)  # a fake kernel cannot be compiled: Triton's own path
    monkeypatch.setattr(cf._fprop_launcher, "kernel", Kernel())
    m = ak.FusedAdjoinedConv2d(8, 8, 3, padding=1, alpha=2, backend="triton", device=device)
    m(torch.randn(2, 8, 5, 5, device=device), torch.randn(2, 4, 5, 5, device=device))
    assert seen == [["ops/conv/triton/fprop.py:fprop", "ops/conv/contract.py:forward",
                     "ops/conv/__init__.py:adjoined_conv2d", "nn/conv.py:forward"]]


def test_module_reaches_the_cuda_kernel_through_four_frames(monkeypatch, device):
    """The same budget on the CUDA backend: forward -> adjoined_conv2d -> AdjoinedConv.forward -> cuda.fprop,
    which calls the C++ op (here a recorder; the device check is bypassed for CPU tensors)."""
    if "cuda" not in ak.available_backends():
        pytest.skip("the CUDA extension is not built")
    from adjoined_kernels.ops import conv
    from adjoined_kernels.ops.conv import cuda
    seen = []

    def op(*inputs):
        seen.append(_package_frames())
        return R.fprop(*inputs)

    monkeypatch.setattr(cuda, "OPS", cuda.OPS._replace(fprop=op))
    conv._load("cuda")
    monkeypatch.setattr(conv, "_resolve", lambda backend, device: "cuda")
    m = ak.FusedAdjoinedConv2d(8, 8, 3, padding=1, alpha=2, backend="cuda", device=device)
    m(torch.randn(2, 8, 5, 5, device=device), torch.randn(2, 4, 5, 5, device=device))
    assert seen == [["ops/conv/cuda.py:fprop", "ops/conv/contract.py:forward", "ops/conv/__init__.py:adjoined_conv2d",
                     "nn/conv.py:forward"]]


@pytest.mark.parametrize("backend", ["reference", "triton", "cuda", "cuda_emu"])
def test_small_input_wider_than_output_uses_the_prefix_block(backend, device, fused):
    """A block whose small input is wider than its output (c_in_s = 6 > c_out_s = 2 of C = 8): z_small and dW
    come from W[:2, :6]. A suffix or mixed slice of the weight (W[-2:, -6:], W[:2, -6:]) gives other values."""
    device = "cpu" if backend == "cuda_emu" else device
    g = torch.Generator().manual_seed(3)
    w64 = torch.randn(8, 8, 3, 3, generator=g, dtype=torch.float64)
    x64 = torch.randn(2, 6, 5, 5, generator=g, dtype=torch.float64)
    dz64 = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x64, w64[:2, :6], padding=1)
    want_dw = torch.zeros_like(w64)
    want_dw[:2, :6] = torch.nn.grad.conv2d_weight(x64, (2, 6, 3, 3), dz64, padding=1)
    for wrong in (w64[-2:, -6:], w64[:2, -6:], w64[-2:, :6]):
        assert (torch.nn.functional.conv2d(x64, wrong, padding=1) - want).abs().max() > 0.1
    w = w64.float().to(device).requires_grad_()
    xf = torch.zeros(2, 8, 5, 5, device=device)
    with no_tf32():
        if backend == "reference":
            zf, zs = ak.adjoined_conv2d(xf, x64.float().to(device), w, padding=1, small_out_channels=2,
                                        backend="reference")
        else:
            zf, zs = run(fused(backend)[0], xf, x64.float().to(device), w, None, (1, 1), (1, 1), (1, 1), 2)
        zs.backward(dz64.float().to(device))
    torch.testing.assert_close(zs.double().cpu(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w.grad.double().cpu(), want_dw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_requested_backend_that_is_unavailable_raises(backend, monkeypatch):
    """No silent fallback: a backend asked for by name that cannot run raises RuntimeError saying why, for the
    function and the module alike."""
    status = "_triton_status" if backend == "triton" else "_cuda_status"
    monkeypatch.setattr(ak._backend, status, lambda: "pretend it is not installed")
    xf, xs, w, b, sc = _op_args("cpu")
    with pytest.raises(RuntimeError, match=f"backend='{backend}' is unavailable: pretend it is not installed"):
        ak.adjoined_conv2d(xf, xs, w, b, padding=1, small_out_channels=4, backend=backend)
    m = ak.FusedAdjoinedConv2d(6, 8, 3, padding=1, small_in_channels=3, small_out_channels=4, backend=backend)
    with pytest.raises(RuntimeError, match="unavailable"):
        m(xf, xs)
    assert "cuda" not in ak.available_backends() or backend == "triton"


def test_validation_cache_key_holds_every_field():
    """A call that passed validation is remembered by sizes, dtypes, devices and conv arguments; a call that
    differs in any one of them must be checked again (and fail when it is wrong)."""
    from adjoined_kernels.ops import conv
    xf, xs, w, b, sc = _op_args("cpu")
    conv._VALID.clear()
    ak.adjoined_conv2d(xf, xs, w, b, padding=1, small_out_channels=4, small_scale=sc, backend="reference")
    bad = {
        "shape": dict(args=(xf, torch.randn(1, 7, 4, 6), w, b), kw={}),
        "dtype": dict(args=(xf, xs.double(), w, b), kw={}),
        "bias": dict(args=(xf, xs, w, b[:5]), kw={}),
        "small_scale": dict(args=(xf, xs, w, b), kw=dict(small_scale=sc[:3])),
        "padding": dict(args=(xf, xs, w, b), kw=dict(padding=-1)),
        "small_out_channels": dict(args=(xf, xs, w, b), kw=dict(small_out_channels=9)),
    }
    for field, case in bad.items():
        kw = dict(padding=1, small_out_channels=4, small_scale=sc, backend="reference") | case["kw"]
        with pytest.raises((ValueError, TypeError)):
            ak.adjoined_conv2d(*case["args"], **kw)


def test_package_works_without_triton():
    """Only the modules that run Triton kernels import triton: without it the package imports, reports no
    "triton" backend, runs the reference ops, and names the reason when triton is asked for."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, adjoined_kernels as ak\n"
        "from adjoined_kernels.ops.conv import contract, reference, _layout\n"
        "from adjoined_kernels.ops.loss import schema\n"
        "assert 'triton' not in ak.available_backends(), ak.available_backends()\n"
        "x, xs, w = torch.randn(1, 4, 5, 5), torch.randn(1, 2, 5, 5), torch.randn(4, 4, 3, 3)\n"
        "zf, zs = ak.FusedAdjoinedConv2d(4, 4, 3, alpha=2)(x, xs)\n"
        "ak.adjoined_loss(zf.mean((2, 3)), zf.mean((2, 3)), torch.tensor([1]), 0.5)\n"
        "try:\n"
        "    ak.adjoined_conv2d(x, xs, w, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'triton is not installed' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('backend=triton ran without triton')\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@no_tf32()  # fp32 at 1e-4: TF32 (cuDNN's default, which the kernels follow) is ~1e-3
def test_launch_plans_are_keyed_on_every_argument(device):
    """The Triton launchers memoise a plan per geometry (docs/kernels.md, "Host overhead"): the same tensors
    with another stride, padding, dilation, width, weight sharing or memory format must get their own plan,
    so each pass still matches the reference after the first one was planned."""
    xf, xs, w, b, sc = _op_args(device)
    variants = [([1, 1], [1, 1], [1, 1], 4, True, xs), ([2, 1], [1, 1], [1, 1], 4, True, xs),
                ([1, 1], [0, 1], [1, 1], 4, True, xs), ([1, 1], [1, 1], [1, 2], 4, True, xs),
                ([1, 1], [1, 1], [1, 1], 2, True, xs), ([1, 1], [1, 1], [1, 1], 4, False, xs),
                ([1, 1], [1, 1], [1, 1], 4, True, xs.contiguous(memory_format=CL)),
                ([1, 1], [1, 1], [1, 1], 4, True, xs[:, :2])]
    for stride, padding, dilation, c_out_s, share, x_small in variants:
        scale = sc[:c_out_s]
        args = (xf, x_small, w, b, scale, stride, padding, dilation, c_out_s, True, share)
        zf, zs, us = T.fprop(*args)
        for got, ref in zip((zf, zs, us), R.fprop(*args)):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        dzf, dzs = torch.randn_like(zf), torch.randn_like(zs)
        d_args = (dzf, dzs, w, scale, list(xf.shape[2:]), list(x_small.shape[2:]), x_small.shape[1], stride, padding,
                  dilation, share)
        for got, ref in zip(T.dgrad(*d_args), R.dgrad(*d_args)):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        w_args = (xf, x_small, dzf, dzs, scale, us, list(w.shape[2:]), stride, padding, dilation, True, True)
        for got, ref in zip(T.wgrad(*w_args), R.wgrad(*w_args)):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
