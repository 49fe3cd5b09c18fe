"""Run the adjoined CUDA kernels a few times on small, odd shapes, for compute-sanitizer (needs a GPU).

``--only PASS`` runs one op, so that one sanitizer run covers one kernel family:
  fprop -> rowgemm_kernel<T, false>;  dgrad -> rowgemm_kernel<T, true>;
  wgrad -> wgrad_kernel, chan_partial_kernel, wgrad_reduce_kernel;
  loss  -> loss_rows_kernel, loss_count_kernel, loss_sum_kernel;  all (default) -> everything.
Outputs are NaN-poisoned first (ADJOINED_POISON_OUTPUTS=1) and every result is checked against float64,
so a sanitizer run also says whether the numbers are right. Exit status 1 on a wrong result.

    compute-sanitizer --tool memcheck  .venv/bin/python csrc/tests/sanitizer_run.py --only fprop
    compute-sanitizer --tool racecheck .venv/bin/python csrc/tests/sanitizer_run.py --only dgrad
    compute-sanitizer --tool initcheck .venv/bin/python csrc/tests/sanitizer_run.py --only wgrad
    compute-sanitizer --tool synccheck .venv/bin/python csrc/tests/sanitizer_run.py --only loss
"""
import argparse
import importlib
import os
import sys

os.environ["ADJOINED_POISON_OUTPUTS"] = "1"
# Importable from the repository root too when the package is built in place (setup.py build_ext --inplace).
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.grad import conv2d_input, conv2d_weight  # noqa: E402

import adjoined_kernels as ak  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
D = torch.float64
bad = []


def close(name, out, ref, dtype):
    out, ref = out.double(), ref.double()
    err = float("inf") if torch.isnan(out).any() else ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-9)).item()
    ok = err <= TOL[dtype]
    print(f"{'ok  ' if ok else 'BAD '} {name:36s} {str(dtype):15s} rel err {err:.2e}", flush=True)
    if not ok:
        bad.append(f"{name} {dtype}")


# (N1, N2, C_in, c_in_s, C_out, c_out_s, k, stride, pad, dil, H1, H2, share)
CONV = [
    (2, 3, 40, 10, 72, 18, 3, 1, 1, 1, 9, 7, True),     # paired + small-only tiles, 16-byte loads
    (1, 2, 5, 1, 7, 7, 3, 2, 1, 1, 11, 9, False),       # odd widths, stride 2, no sharing
    (1, 1, 9, 3, 130, 2, 5, 1, 2, 2, 12, 10, True),     # dilation 2, 3 N tiles
    (4, 4, 64, 16, 64, 16, 1, 1, 0, 1, 30, 30, True),   # 1x1, split-K wgrad over 3600 rows
    (2, 2, 64, 32, 48, 24, 3, 2, 1, 1, 15, 13, True),   # 16-bit: the pipelined kernel, paired, 2 channel blocks
]


def conv(only, dtype, case):
    n1, n2, cin, cins, cout, couts, k, s, p, d, h1, h2, share = case
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *sh: torch.randn(*sh, generator=g, device="cuda").to(dtype)  # noqa: E731
    xf, xs, w, b = r(n1, cin, h1, h1 + 1), r(n2, cins, h2, h2 + 2), r(cout, cin, k, k), r(cout)
    sc = (torch.rand(couts, generator=g, device="cuda") + 0.5).to(dtype)
    st, pd, dl = [s, s], [p, p], [d, d]
    ops = torch.ops.adjoined
    tag = f"{k}x{k}/s{s}/d{d}/{cin}->{cout}"
    rf = F.conv2d(xf.to(D), w.to(D), b.to(D), s, p, d)
    ru = F.conv2d(xs.to(D), w[:couts, :cins].to(D), b[:couts].to(D), s, p, d)
    if only in ("fprop", "all"):
        zf, zs, us = ops.cuda_conv2d_fprop(xf, xs, w, b, sc, st, pd, dl, couts, True, share)
        close(f"fprop {tag} z_full", zf, rf, dtype)
        close(f"fprop {tag} z_small", zs, ru * sc.to(D).view(1, -1, 1, 1), dtype)
        close(f"fprop {tag} u_small", us, ru, dtype)
    dzf, dzs = r(*rf.shape), r(*ru.shape)
    dzs_eff = dzs.to(D) * sc.to(D).view(1, -1, 1, 1)
    if only in ("dgrad", "all"):
        dxf, dxs = ops.cuda_conv2d_dgrad(dzf, dzs, w, sc, list(xf.shape[2:]), list(xs.shape[2:]), cins, st, pd, dl,
                                         share)
        close(f"dgrad {tag} dx_full", dxf, conv2d_input(xf.shape, w.to(D), dzf.to(D), s, p, d), dtype)
        close(f"dgrad {tag} dx_small", dxs, conv2d_input(xs.shape, w[:couts, :cins].to(D), dzs_eff, s, p, d), dtype)
    if only in ("wgrad", "all"):
        us = ru.to(dtype)
        dw, db, ds = ops.cuda_conv2d_wgrad(xf, xs, dzf, dzs, sc, us, [k, k], st, pd, dl, True, True)
        rdw = conv2d_weight(xf.to(D), w.shape, dzf.to(D), s, p, d)
        rdw[:couts, :cins] += conv2d_weight(xs.to(D), (couts, cins, k, k), dzs_eff, s, p, d)
        rdb = dzf.to(D).sum((0, 2, 3))
        rdb[:couts] += dzs_eff.sum((0, 2, 3))
        close(f"wgrad {tag} dw", dw, rdw, dtype)
        close(f"wgrad {tag} db", db, rdb, dtype)
        close(f"wgrad {tag} dscale", ds, (dzs.to(D) * us.to(D)).sum((0, 2, 3)), dtype)


LOSS = [(7, 10, 1e-6, "mean", False), (5000, 13, 0.0, "mean", True), (3, 9000, 1e-6, "sum", False),
        (4, 100, 0.0, "none", False)]   # 5000 rows: n_valid count kernel; 9000 classes: long rows


def loss(dtype, case):
    B, C, eps, reduction, t32 = case
    g = torch.Generator(device="cuda").manual_seed(1)
    lf = (torch.randn(B, C, generator=g, device="cuda") * 3).to(dtype).requires_grad_(True)
    ls = (torch.randn(B, C, generator=g, device="cuda") * 3).to(dtype).requires_grad_(True)
    tg = torch.randint(0, C, (B,), generator=g, device="cuda")
    tg[::3] = -100
    out = ak.adjoined_loss(lf, ls, tg.int() if t32 else tg, 0.6, eps, 2.0, reduction, backend="cuda")
    a, b = lf.detach().double().requires_grad_(True), ls.detach().double().requires_grad_(True)
    ref = ak.adjoined_loss_ref(a, b, tg, 0.6, eps, 2.0, reduction)
    tag = f"loss B={B} C={C} eps={eps} {reduction}"
    close(tag, out, ref, dtype)
    go = torch.rand(ref.shape, generator=g, device="cuda", dtype=D)
    out.backward(go.to(dtype))
    ref.backward(go)
    close(tag + " d_full", lf.grad, a.grad, dtype)
    close(tag + " d_small", ls.grad, b.grad, dtype)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("all", "fprop", "dgrad", "wgrad", "loss"), default="all")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to run")
        return 0
    importlib.import_module("adjoined_kernels.ops.conv.cuda")  # loads _C and registers the ops' Python parts
    importlib.import_module("adjoined_kernels.ops.loss.cuda")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        if args.only != "loss":
            for case in CONV:
                conv(args.only, dtype, case)
        if args.only in ("loss", "all"):
            for case in LOSS:
                loss(dtype, case)
    torch.cuda.synchronize()
    print("wrong results:", bad if bad else "none")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
