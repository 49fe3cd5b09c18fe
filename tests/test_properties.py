"""Property-based tests (hypothesis) of the public ops ``ak.adjoined_conv2d`` and ``ak.adjoined_loss``.

Hypothesis draws the problem (shapes, strides, paddings, dilations, branch widths, dtype, memory format,
loss options) and one integer seed; the tensor values come from a torch Generator seeded by it (randn, so
never all zeros). Each case runs the op through the public API, for backend="reference" and for
backend="triton" (on CPU under the Triton interpreter, which conftest enables before the import), and
compares the outputs and every gradient (autograd backward of random upstream gradients) against an
oracle written here in float64 from plain torch ops, so that a bug in the package's own *_ref functions
is caught too.

Inputs are rounded to the tested dtype first and the oracle runs on those rounded values, so the error
measured is the op's own. Tolerance (flash-attention's rule): ``|got - f64| <= 2 |torch - f64|
+ FLOOR[dtype] * max|f64|`` where ``torch`` is the same maths run by torch in the tested dtype: in fp16
and bf16 the op may be at most twice as wrong as torch itself, plus one output rounding at the top of
the range (two in bf16: the interpreter truncates to bf16 instead of rounding). Where torch's own fp16
loss maths overflows (its error is unbounded), the loss baseline is that maths in fp32 rounded once.

Plus properties of the loss that need no oracle: reductions none/sum/mean agree with one another, and
rows whose target is ignore_index contribute nothing to the cross-entropy (value or gradient).

Every test is derandomized with bounded example counts, so CI runs the same cases each time (about a
minute on two CPU cores, most of it in the Triton interpreter).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import adjoined_kernels as ak

hypothesis = pytest.importorskip("hypothesis", reason="property tests need `pip install hypothesis`")
from hypothesis import HealthCheck, Phase, assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # eps == 0 takes log-softmax differences of -inf lanes in the interpreter; results are masked
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_REASON = ("backend='triton' is unavailable here (triton not installed, or no CUDA GPU and "
                 "TRITON_INTERPRET=1 was not set before importing adjoined_kernels)")
BACKENDS = [
    pytest.param("reference", id="reference"),
    pytest.param("triton", id="triton",
                 marks=pytest.mark.skipif("triton" not in ak.available_backends(), reason=TRITON_REASON)),
]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# One output rounding at the top of the range (bf16: two, the interpreter truncates); fp32: accumulation
# order over at most a few hundred products.
FLOOR = {torch.float32: 1e-5, torch.float16: torch.finfo(torch.float16).eps,
         torch.bfloat16: 2 * torch.finfo(torch.bfloat16).eps}
LAYOUTS = ("contiguous", "channels_last", "strided")
CL = torch.channels_last


def _settings(n, shrink=True):
    """Derandomized (the same examples on every run) and bounded. ``shrink=False`` for the interpreter's
    tests: shrinking a failure there takes minutes; the failing example is printed as drawn."""
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=True,
                    phases=phases, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _require(cond, why):
    """Discard a drawn example that cannot test anything (hypothesis' assume), or fail a fixed one."""
    if hypothesis.currently_in_test_context():
        assume(cond)
    else:
        assert cond, why


@contextlib.contextmanager
def _no_tf32():
    """fp32 convolutions in full precision on CUDA (the kernels follow cuDNN's flag); a no-op on CPU."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def _close(what, got, ref64, base, dtype):
    """|got - ref64| <= 2 |base - ref64| + FLOOR[dtype] * max|ref64|; base is torch in ``dtype``."""
    assert got.shape == ref64.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype} != {dtype}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    mag = ref64.abs().max().item()
    err = (got.double() - ref64).abs().max().item()
    base_err = (base.double() - ref64).abs().max().item()
    tol = 2 * base_err + FLOOR[dtype] * mag
    assert err <= tol, (f"{what} ({dtype}): max error {err:.3g} > tol {tol:.3g} "
                        f"(torch in {dtype}: {base_err:.3g}, max|ref| {mag:.3g})")


# ======================================================================================================
# adjoined_conv2d


@st.composite
def conv_cases(draw, tiny=False):
    """A valid adjoined-conv problem; ``tiny`` keeps it cheap enough for the Triton interpreter."""
    c_in = draw(st.integers(1, 5 if tiny else 8))
    c_out = draw(st.integers(1, 5 if tiny else 8))
    c_in_s = draw(st.integers(1, c_in))
    c_out_s = draw(st.integers(1, c_out))
    kernel = (draw(st.integers(1, 3 if tiny else 4)), draw(st.integers(1, 3 if tiny else 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    eff = [dilation[d] * (kernel[d] - 1) + 1 for d in range(2)]
    padding = tuple(draw(st.integers(0, eff[d] // 2 + 1)) for d in range(2))

    def spatial(extra):
        # at least stride + 2 pixels (and the dilated kernel): some outputs read real pixels, so no
        # gradient of the float64 oracle is identically zero
        return tuple(max(stride[d] + 2, eff[d] - 2 * padding[d]) + draw(st.integers(0, extra))
                     for d in range(2))

    # tiny: the small branch may have more output rows than the full one (more than one 32-row tile of
    # the interpreter's GEMM while the full branch has one: small tiles that pair with no full tile)
    return dict(n1=draw(st.integers(1, 2 if tiny else 3)), n2=draw(st.integers(1, 3)),
                hw1=spatial(2 if tiny else 4), hw2=spatial(4), c_in=c_in, c_in_s=c_in_s, c_out=c_out, c_out_s=c_out_s,
                kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                bias=draw(st.booleans()), scale=draw(st.sampled_from((None, "grad", "fixed"))),
                x_layout=draw(st.sampled_from(LAYOUTS)), w_layout=draw(st.sampled_from(LAYOUTS)),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2 ** 31 - 1)))


def _rand(shape, layout, gen, dtype, scale=1.0, offset=0.0):
    """randn * scale + offset rounded to ``dtype``, laid out as asked ("strided": a non-contiguous view)."""
    if layout == "strided" and len(shape) == 4:
        n, c, h, w = shape
        big = torch.randn((n, c + 2, h, 2 * w), generator=gen, dtype=torch.float64)
        t = (big * scale + offset).to(dtype)[:, 1:c + 1, :, ::2]
    elif layout == "strided":
        t = (torch.randn((shape[0] * 2,), generator=gen, dtype=torch.float64) * scale + offset).to(dtype)[::2]
    else:
        t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset).to(dtype)
        if layout == "channels_last" and len(shape) == 4:
            t = t.contiguous(memory_format=CL)
    return t.to(DEVICE)


def _conv_inputs(case):
    """Inputs in the case's dtype and layouts, and the upstream gradients of both outputs."""
    gen = torch.Generator().manual_seed(case["seed"])
    dt, lay = case["dtype"], case["x_layout"]
    kh, kw = case["kernel"]
    inp = dict(x_full=_rand((case["n1"], case["c_in"], *case["hw1"]), lay, gen, dt),
               x_small=_rand((case["n2"], case["c_in_s"], *case["hw2"]), lay, gen, dt),
               weight=_rand((case["c_out"], case["c_in"], kh, kw), case["w_layout"], gen, dt,
                            scale=(case["c_in"] * kh * kw) ** -0.5),
               bias=_rand((case["c_out"],), case["w_layout"], gen, dt) if case["bias"] else None,
               small_scale=(_rand((case["c_out_s"],), case["w_layout"], gen, dt, scale=0.3, offset=1.0)
                            if case["scale"] else None))
    out_hw = [tuple((hw[d] + 2 * case["padding"][d] - case["dilation"][d] * (case["kernel"][d] - 1) - 1)
                    // case["stride"][d] + 1 for d in range(2)) for hw in (case["hw1"], case["hw2"])]
    grads = (_rand((case["n1"], case["c_out"], *out_hw[0]), lay, gen, dt),
             _rand((case["n2"], case["c_out_s"], *out_hw[1]), lay, gen, dt))
    return inp, grads


def _leaves(inp, dtype, case):
    """Leaf copies in ``dtype`` with the same strides; small_scale needs grad only when case says 'grad'."""
    out = {}
    for name, t in inp.items():
        if t is None:
            out[name] = None
            continue
        c = torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=t.device)
        c.copy_(t)
        out[name] = c.requires_grad_(name != "small_scale" or case["scale"] == "grad")
    return out


def _torch_conv(x_full, x_small, weight, bias, small_scale, case):
    """The oracle: the two convolutions of docs/maths.md in plain torch ops (any dtype)."""
    cos, cis = case["c_out_s"], case["c_in_s"]
    args = (case["stride"], case["padding"], case["dilation"])
    z_full = F.conv2d(x_full, weight, bias, *args)
    z_small = F.conv2d(x_small, weight[:cos, :cis], None if bias is None else bias[:cos], *args)
    if small_scale is not None:
        z_small = z_small * small_scale.view(1, -1, 1, 1)
    return z_full, z_small


def _run_conv(fn, leaves, grads):
    z = fn(leaves)
    names = [n for n, t in leaves.items() if t is not None and t.requires_grad]
    dz = torch.autograd.grad(z, [leaves[n] for n in names], [g.to(z[0].dtype) for g in grads])
    return z, dict(zip(names, dz))


def check_conv(case, backend):
    inp, grads = _conv_inputs(case)
    dt = case["dtype"]

    def oracle(lv):
        return _torch_conv(lv["x_full"], lv["x_small"], lv["weight"], lv["bias"], lv["small_scale"], case)

    def op(lv):
        return ak.adjoined_conv2d(lv["x_full"], lv["x_small"], lv["weight"], lv["bias"], case["stride"],
                                  case["padding"], case["dilation"], small_out_channels=case["c_out_s"],
                                  small_scale=lv["small_scale"], backend=backend)

    with _no_tf32():
        ref_z, ref_g = _run_conv(oracle, _leaves(inp, torch.float64, case), grads)
        base_z, base_g = _run_conv(oracle, _leaves(inp, dt, case), grads)
        z, g = _run_conv(op, _leaves(inp, dt, case), grads)
    for name, t in [*zip(("z_full", "z_small"), ref_z), *ref_g.items()]:
        _require(t.abs().max().item() > 0, f"the float64 {name} is all zeros")
    for name, got, ref, base in zip(("z_full", "z_small"), z, ref_z, base_z):
        _close(name, got, ref, base, dt)
    assert set(g) == set(ref_g)
    for name in ref_g:
        _close("d " + name, g[name], ref_g[name], base_g[name], dt)
    if case["x_layout"] != "strided" and case["w_layout"] == "contiguous":
        # outputs and input gradients come back in the inputs' memory format, as F.conv2d's do
        for name, t, ref in (("z_full", z[0], base_z[0]), ("z_small", z[1], base_z[1]),
                             ("d x_full", g["x_full"], base_g["x_full"]),
                             ("d x_small", g["x_small"], base_g["x_small"])):
            for fmt in (torch.contiguous_format, CL):
                assert t.is_contiguous(memory_format=fmt) == ref.is_contiguous(memory_format=fmt), \
                    f"{name} has strides {t.stride()}, F.conv2d gives {ref.stride()}"


# c_in_s > c_out_s with every option on, in each dtype: always run, whatever hypothesis draws
_WIDE_IN = dict(n1=2, n2=1, hw1=(5, 6), hw2=(4, 5), c_in=5, c_in_s=4, c_out=4, c_out_s=1, kernel=(3, 2),
                stride=(2, 1), padding=(1, 1), dilation=(1, 2), bias=True, scale="grad",
                x_layout="channels_last", w_layout="contiguous", seed=12345)


# the small branch has 75 output rows (three 32-row tiles), the full one 16 (one tile): two small tiles
# have no full tile to share weights with
_SMALL_MORE_TILES = dict(n1=1, n2=3, hw1=(4, 4), hw2=(5, 5), c_in=4, c_in_s=3, c_out=5, c_out_s=2,
                         kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), bias=True, scale="grad",
                         x_layout="contiguous", w_layout="contiguous", seed=99)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_matches_float64_fixed_examples(backend):
    """Fixed cases in every dtype, for both backends: c_in_s > c_out_s, strided views, and a small branch
    with more output tiles than the full one."""
    for dt in DTYPES:
        check_conv(dict(_WIDE_IN, dtype=dt), backend)
        check_conv(dict(_WIDE_IN, dtype=dt, x_layout="strided", w_layout="strided", scale="fixed",
                        c_in_s=5, c_out_s=2, seed=7), backend)
        check_conv(dict(_SMALL_MORE_TILES, dtype=dt, x_layout=LAYOUTS[DTYPES.index(dt)]), backend)


@_settings(200)
@given(case=conv_cases())
def test_conv_reference_matches_float64(case):
    check_conv(case, "reference")


@pytest.mark.skipif("triton" not in ak.available_backends(), reason=TRITON_REASON)
@_settings(12, shrink=False)
@given(case=conv_cases(tiny=True))
def test_conv_triton_matches_float64(case):
    check_conv(case, "triton")


# ======================================================================================================
# adjoined_loss

LOSS_LAYOUTS = ("contiguous", "class_strided", "transposed", "row_strided")


def _logits(B, C, layout, gen, dtype, scale):
    """randn * scale rounded to ``dtype`` as [B, C], contiguous or one of three non-contiguous views."""
    def r(*shape):
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)
    if layout == "class_strided":
        return r(B, 2 * C)[:, 1::2]
    if layout == "transposed":
        return r(C, B).t()
    if layout == "row_strided":
        return r(2 * B, C)[::2]
    return r(B, C)


@st.composite
def loss_cases(draw, tiny=False):
    B = draw(st.integers(1, 4 if tiny else 9))  # the interpreter takes ~60 ms per row
    C = draw(st.integers(2, 16 if tiny else 40))
    return dict(B=B, C=C, lam=draw(st.sampled_from((0.0, 0.3, 1.0, 2.5))),
                lam_tensor=draw(st.booleans()),
                eps=draw(st.sampled_from((0.0, 1e-6, 1e-3))),
                temperature=draw(st.sampled_from((1.0, 0.5, 2.0, 4.0))),
                reduction=draw(st.sampled_from(("mean", "sum", "none"))),
                ignore_index=draw(st.sampled_from((-100, -1, C + 3))),
                n_ignored=draw(st.integers(0, B)),
                detach_full=draw(st.booleans()),
                target_dtype=draw(st.sampled_from((torch.int64, torch.int32))),
                layout=draw(st.sampled_from(LOSS_LAYOUTS)),
                scale=draw(st.sampled_from((0.5, 2.0, 6.0))),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2 ** 31 - 1)))


def _loss_inputs(case):
    gen = torch.Generator().manual_seed(case["seed"])
    B, C, dt = case["B"], case["C"], case["dtype"]
    lf = _logits(B, C, case["layout"], gen, dt, case["scale"])
    ls = _logits(B, C, case["layout"], gen, dt, case["scale"])
    target = torch.randint(0, C, (B,), generator=gen)
    target[torch.randperm(B, generator=gen)[:case["n_ignored"]]] = case["ignore_index"]
    go = torch.rand(() if case["reduction"] != "none" else (B,), generator=gen, dtype=torch.float64) + 0.5
    return lf, ls, target.to(case["target_dtype"]).to(DEVICE), go.to(dt).to(DEVICE)


def _torch_loss(lf, ls, target, lam, eps, T, reduction, ii, detach_full):
    """The oracle: CE(lf) + lam T^2 KL(p || q) from plain torch ops, in the logits' dtype."""
    ce = F.cross_entropy(lf, target.long(), ignore_index=ii, reduction="none")
    p = ((lf.detach() if detach_full else lf) / T).softmax(-1)
    if eps > 0:
        kl = (p * ((p + eps).log() - ((ls / T).softmax(-1) + eps).log())).sum(-1)
    else:
        lp = ((lf.detach() if detach_full else lf) / T).log_softmax(-1)
        kl = (p * (lp - (ls / T).log_softmax(-1))).sum(-1)
    w = lam * T * T
    if reduction == "none":
        return ce + w * kl
    if reduction == "sum":
        return ce.sum() + w * kl.sum()
    return ce.sum() / max(int((target != ii).sum()), 1) + w * kl.mean()


def _run_loss(fn, lf, ls, target, go, dtype):
    a = torch.empty_strided(lf.shape, lf.stride(), dtype=dtype, device=lf.device).copy_(lf).requires_grad_()
    b = torch.empty_strided(ls.shape, ls.stride(), dtype=dtype, device=ls.device).copy_(ls).requires_grad_()
    out = fn(a, b, target)
    ga, gb = torch.autograd.grad(out, (a, b), go.to(dtype))
    return out.detach(), ga, gb


def check_loss(case, backend):
    if case["lam"] == 0 or case["detach_full"]:
        _require(case["n_ignored"] < case["B"], "the gradient w.r.t. logits_full is identically zero")
    lf, ls, target, go = _loss_inputs(case)
    dt = case["dtype"]
    kw = dict(eps=case["eps"], temperature=case["temperature"], reduction=case["reduction"],
              ignore_index=case["ignore_index"], detach_full=case["detach_full"])
    lam = torch.tensor(case["lam"], device=DEVICE) if case["lam_tensor"] else case["lam"]

    def oracle(a, b, t):
        return _torch_loss(a, b, t, case["lam"], kw["eps"], kw["temperature"], kw["reduction"],
                           kw["ignore_index"], kw["detach_full"])

    ref = _run_loss(oracle, lf, ls, target, go, torch.float64)
    base = _run_loss(oracle, lf, ls, target, go, dt)
    if not all(torch.isfinite(t).all() for t in base):
        # torch's own fp16 maths overflowed (d log(q + eps) = 1 / (q + eps) > 65504 for eps = 1e-6): its
        # error is unbounded, so the baseline is the same maths in fp32, rounded once to the dtype
        base = tuple(t.to(dt) for t in _run_loss(oracle, lf, ls, target, go, torch.float32))
    got = _run_loss(lambda a, b, t: ak.adjoined_loss(a, b, t, lam, backend=backend, **kw), lf, ls, target, go, dt)
    for name, g, r, bs in zip(("loss", "d logits_full", "d logits_small"), got, ref, base):
        if name == "d logits_small" and case["lam"] == 0:
            assert (g == 0).all(), "lam=0: logits_small must get no gradient"
            continue
        _close(name, g, r, bs, dt)


@pytest.mark.parametrize("backend", BACKENDS)
@example(case=dict(B=4, C=7, lam=1.0, lam_tensor=False, eps=1e-6, temperature=2.0, reduction="mean",
                   ignore_index=-100, n_ignored=4, detach_full=False, target_dtype=torch.int64,
                   layout="contiguous", scale=2.0, dtype=torch.float32, seed=1))  # every row ignored
@_settings(16, shrink=False)
@given(case=loss_cases(tiny=True))
def test_loss_matches_float64(case, backend):
    check_loss(case, backend)


@_settings(150)
@given(case=loss_cases())
def test_loss_reference_matches_float64_larger(case):
    check_loss(case, "reference")


def _fp32_case(case, **kw):
    return dict(case, dtype=torch.float32, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(8, shrink=False)
@given(case=loss_cases(tiny=True))
def test_loss_reductions_consistent(case, backend):
    """sum == none.sum(); mean == (CE part of none).sum() / #valid + lam T^2 (KL part of none).mean()."""
    case = _fp32_case(case, lam=case["lam"] or 1.0)
    lf, ls, target, _ = _loss_inputs(case)
    kw = dict(eps=case["eps"], temperature=case["temperature"], ignore_index=case["ignore_index"],
              backend=backend)
    lam, w = case["lam"], case["lam"] * case["temperature"] ** 2
    none = ak.adjoined_loss(lf, ls, target, lam, reduction="none", **kw).double()
    ce = ak.adjoined_loss(lf, ls, target, 0.0, reduction="none", **kw).double()
    total = ak.adjoined_loss(lf, ls, target, lam, reduction="sum", **kw).double()
    mean = ak.adjoined_loss(lf, ls, target, lam, reduction="mean", **kw).double()
    n_valid = max(int((target != case["ignore_index"]).sum()), 1)
    kl = (none - ce) / w
    scale = max(none.abs().sum().item(), 1.0)
    assert none.shape == (case["B"],) and total.shape == () and mean.shape == ()
    assert abs(total - none.sum()) <= 1e-5 * scale, (total, none.sum())
    assert abs(mean - (ce.sum() / n_valid + w * kl.mean())) <= 1e-5 * scale, (mean, ce, kl)
    assert (kl >= -1e-5).all(), f"KL must be >= 0: {kl}"


@pytest.mark.parametrize("backend", BACKENDS)
@_settings(6, shrink=False)
@given(case=loss_cases(tiny=True))
def test_loss_ignored_rows_contribute_nothing(case, backend):
    """Rows whose target is ignore_index carry no CE: zero loss and zero gradient with lam=0, and the
    sum/mean over the batch equals the sum/mean over the valid rows alone; with lam > 0 such a row's
    loss is its KL term only, whatever its logits_full say about a class."""
    case = _fp32_case(case, n_ignored=max(case["n_ignored"], 1))
    lf, ls, target, _ = _loss_inputs(case)
    ii = case["ignore_index"]
    ign = target == ii
    kw = dict(eps=case["eps"], temperature=case["temperature"], ignore_index=ii, backend=backend)

    a = lf.clone().requires_grad_()
    none0 = ak.adjoined_loss(a, ls, target, 0.0, reduction="none", **kw)
    (ga,) = torch.autograd.grad(none0, a, torch.rand(case["B"], generator=torch.Generator().manual_seed(3)).to(DEVICE))
    assert (none0.detach()[ign] == 0).all(), none0
    assert (ga[ign] == 0).all(), "an ignored row got a CE gradient"
    assert (none0.detach() >= 0).all(), none0

    valid = ~ign
    for red in ("sum", "mean"):
        full = ak.adjoined_loss(lf, ls, target, 0.0, reduction=red, **kw).item()
        if valid.any():
            sub = ak.adjoined_loss(lf[valid], ls[valid], target[valid], 0.0, reduction=red, **kw).item()
        else:
            sub = 0.0  # "mean" with no valid row: the CE part is 0
        assert abs(full - sub) <= 1e-5 * max(abs(sub), 1.0), (red, full, sub)

    # with lam > 0 an ignored row's loss is lam T^2 KL alone: the loss it has with a valid target, minus
    # that target's CE (computed here in float64)
    lam = 0.7
    none_l = ak.adjoined_loss(lf, ls, target, lam, reduction="none", **kw)
    t_valid = target.clone()
    t_valid[ign] = 0
    none_v = ak.adjoined_loss(lf, ls, t_valid, lam, reduction="none", **kw)
    ce_v = F.cross_entropy(lf.double(), t_valid.long(), reduction="none")
    torch.testing.assert_close(none_l[ign].double(), (none_v.double() - ce_v)[ign], rtol=1e-5, atol=1e-5)
