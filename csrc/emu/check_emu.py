"""Check the adjoined CUDA kernels' logic on the CPU emulation (csrc/emu/build_emu.sh), op by op, against
float64 references. Outputs are NaN-poisoned, so an element a kernel skips fails. Slow (every block runs
as 256 threads); run under AddressSanitizer to catch out-of-bounds accesses:

    csrc/emu/build_emu.sh
    LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \\
        .venv/bin/python csrc/emu/check_emu.py build/emu/libadjoined_emu.so [--quick] [--cases=0,2] [--no-loss]
"""
import os
import sys

os.environ["ADJOINED_POISON_OUTPUTS"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.grad import conv2d_input, conv2d_weight  # noqa: E402

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}
FAILS = []


def rel_err(out, ref):
    out = out.double()
    if torch.isnan(out).any():
        return float("inf")
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def check(name, out, ref, dtype):
    assert out.shape == ref.shape, (name, out.shape, ref.shape)
    e = rel_err(out, ref)
    ok = e <= TOL[dtype]
    print(f"  {'ok  ' if ok else 'FAIL'} {name:10s} rel_err={e:.2e}")
    if not ok:
        FAILS.append(name)


def conv_case(ops, case, dtype, share, fmt):
    n1, n2, cin, cins, cout, couts, kh, kw, s, p, d, h1, w1, h2, w2, bias, scale = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    r = lambda *sh: torch.randn(*sh, generator=g).to(dtype)  # noqa: E731
    xf, xs, w = r(n1, cin, h1, w1), r(n2, cins, h2, w2), r(cout, cin, kh, kw)
    if fmt == "cl":
        xf, xs, w = (t.contiguous(memory_format=torch.channels_last) for t in (xf, xs, w))
    b = r(cout) if bias else None
    sc = r(couts) if scale else None
    st, pd, dl = ([*v] if isinstance(v, tuple) else [v, v] for v in (s, p, d))
    s, p, d = tuple(st), tuple(pd), tuple(dl)
    zf, zs, us = ops.cuda_conv2d_fprop(xf, xs, w, b, sc, st, pd, dl, couts, True, share)
    D = torch.float64
    bd = b.to(D) if bias else None
    rf = F.conv2d(xf.to(D), w.to(D), bd, s, p, d)
    ru = F.conv2d(xs.to(D), w[:couts, :cins].to(D), bd[:couts] if bias else None, s, p, d)
    rs = ru * sc.to(D).view(1, -1, 1, 1) if scale else ru
    check("z_full", zf, rf, dtype)
    check("z_small", zs, rs, dtype)
    check("u_small", us, ru, dtype)
    dzf, dzs = r(*rf.shape), r(*rs.shape)
    dxf, dxs = ops.cuda_conv2d_dgrad(dzf, dzs, w, sc, [h1, w1], [h2, w2], cins, st, pd, dl, share)
    dzs_eff = dzs.to(D) * (sc.to(D).view(1, -1, 1, 1) if scale else 1.0)
    check("dx_full", dxf, conv2d_input(xf.shape, w.to(D), dzf.to(D), s, p, d), dtype)
    check("dx_small", dxs, conv2d_input(xs.shape, w[:couts, :cins].to(D), dzs_eff, s, p, d), dtype)
    dw, db, ds = ops.cuda_conv2d_wgrad(xf, xs, dzf, dzs, sc, us if scale else None, [kh, kw], st, pd, dl, True, bias)
    rdw = conv2d_weight(xf.to(D), w.shape, dzf.to(D), s, p, d)
    rdw[:couts, :cins] += conv2d_weight(xs.to(D), (couts, cins, kh, kw), dzs_eff, s, p, d)
    check("dw", dw, rdw, dtype)
    if bias:
        rdb = dzf.to(D).sum((0, 2, 3))
        rdb[:couts] += dzs_eff.sum((0, 2, 3))
        check("db", db, rdb, dtype)
    if scale:
        check("dscale", ds, (dzs.to(D) * us.to(D)).sum((0, 2, 3)), dtype)


def loss_case(ops, case, dtype):
    B, C, eps, T, red, detach, ignore_rows, t32 = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    lf = (torch.randn(B, C, generator=g) * 3).to(dtype)
    ls = (torch.randn(B, C, generator=g) * 3).to(dtype)
    tg = torch.randint(0, C, (B,), generator=g)
    tg[:ignore_rows] = -100
    if t32:
        tg = tg.int()
    lam = torch.tensor(0.7)
    code = {"none": 0, "sum": 1, "mean": 2}[red]
    loss, gf, gs = ops.cuda_adjoined_loss_fwd(lf, ls, tg, lam, eps, T, code, -100, detach, True)
    # float64 reference with autograd
    a, b = lf.double().requires_grad_(), ls.double().requires_grad_()
    valid = tg.long() != -100
    ce = F.cross_entropy(a, tg.long(), ignore_index=-100, reduction="none")
    at = (a.detach() if detach else a) / T
    if eps > 0:
        p, q = (at).softmax(-1), (b / T).softmax(-1)
        kl = (p * ((p + eps).log() - (q + eps).log())).sum(-1)
    else:
        lp, lq = at.log_softmax(-1), (b / T).log_softmax(-1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
    w = 0.7 * T * T
    ref = {"none": ce + w * kl, "sum": ce.sum() + w * kl.sum(),
           "mean": ce.sum() / valid.sum().clamp_min(1) + w * kl.mean()}[red]
    ref.backward(torch.ones_like(ref))
    check("loss", loss, ref.detach(), dtype)
    check("g_full", gf, a.grad, dtype)
    check("g_small", gs, b.grad, dtype)


# (N1, N2, C_in, c_in_s, C_out, c_out_s, kh, kw, stride, pad, dil, H1, W1, H2, W2, bias, scale)
CONV_CASES = [
    (2, 3, 40, 10, 72, 18, 3, 3, 1, 1, 1, 9, 8, 7, 9, True, True),       # pairing + small-only tiles, vec x
    (1, 2, 5, 1, 7, 7, 3, 3, 2, 1, 1, 11, 10, 9, 12, True, False),       # odd channels, scalar path, stride 2
    (2, 1, 16, 16, 130, 3, 1, 1, 1, 0, 1, 6, 7, 5, 5, False, True),      # 1x1, c_in_s = C_in, several N tiles
    (1, 1, 9, 3, 5, 2, 5, 5, 1, 2, 2, 12, 12, 10, 13, True, True),       # dilation 2, 5x5
    (1, 2, 8, 4, 16, 8, 3, 3, 3, 0, 1, 16, 17, 13, 12, False, False),    # stride 3 dgrad holes
    (3, 3, 64, 32, 64, 32, 1, 1, 1, 0, 1, 20, 20, 20, 20, True, True),   # wgrad split-K (M = 1200)
    # strided dgrad phase classes: classes without taps, one tap per class, stride > input, asymmetric
    (1, 2, 6, 3, 10, 5, 1, 1, 2, 0, 1, 9, 10, 8, 7, True, True),         # 1x1 s2: odd classes get zeros
    (2, 1, 8, 8, 12, 6, 3, 3, 2, 1, 2, 11, 12, 9, 9, False, True),       # s2 d2: one class has every tap
    (1, 2, 5, 2, 7, 3, 3, 3, 3, 1, 2, 13, 14, 10, 11, True, False),      # s3 d2: one tap per class
    (1, 1, 4, 4, 6, 6, 3, 3, 4, 0, 1, 9, 10, 5, 6, True, True),          # s4 k3: a class with no tap
    (2, 2, 3, 1, 5, 2, 2, 2, 5, 2, 1, 3, 4, 4, 3, False, False),         # stride > input size
    (1, 2, 9, 4, 40, 20, 3, 5, (2, 3), (1, 2), (1, 2), 15, 17, 12, 13, True, True),  # asymmetric
]
QUICK_CONV = CONV_CASES[:2] + CONV_CASES[6:]
LOSS_CASES = [  # (B, C, eps, T, reduction, detach, ignored rows, int32 target)
    (4, 10, 1e-6, 1.0, "mean", False, 1, False),
    (3, 1000, 0.0, 2.5, "sum", True, 0, True),
    (5, 333, 1e-6, 0.5, "none", False, 2, False),
    (2, 5000, 0.0, 1.0, "mean", False, 0, False),
]


def main():
    torch.ops.load_library(sys.argv[1])
    ops = torch.ops.adjoined_emu
    quick = "--quick" in sys.argv
    cases = QUICK_CONV if quick else CONV_CASES
    picked = next((a.split("=")[1] for a in sys.argv if a.startswith("--cases=")), None)
    if picked is not None:  # --cases=0,3,7 (indices into CONV_CASES; empty: no conv)
        cases = [CONV_CASES[int(i)] for i in picked.split(",") if i]
    for case in cases:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for share in ((True,) if quick else (True, False)):
                fmt = "cl" if share else "nchw"
                print(f"conv {case} {dtype} share={share} {fmt}")
                conv_case(ops, case, dtype, share, fmt)
    for case in ([] if "--no-loss" in sys.argv else LOSS_CASES):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            print(f"loss {case} {dtype}")
            loss_case(ops, case, dtype)
    print("FAILED:", FAILS if FAILS else "none")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
