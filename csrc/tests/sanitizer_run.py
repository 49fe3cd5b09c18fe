"""Run every adjoined CUDA kernel a few times on small, odd shapes, for compute-sanitizer (needs a GPU).

Each kernel: conv fprop and dgrad (rowgemm_kernel), wgrad (wgrad_kernel, chan_partial_kernel,
wgrad_reduce_kernel), loss (loss_rows_kernel, loss_count_kernel, loss_sum_kernel). Outputs are
NaN-poisoned first (ADJOINED_POISON_OUTPUTS=1). Results are checked loosely against float64 so that a
run under a sanitizer also says whether the numbers are right. Exit status 1 on a wrong result.

    compute-sanitizer --tool memcheck   .venv/bin/python csrc/tests/sanitizer_run.py
    compute-sanitizer --tool racecheck  --kernel-name regex:rowgemm_kernel .venv/bin/python csrc/tests/sanitizer_run.py
    compute-sanitizer --tool initcheck  .venv/bin/python csrc/tests/sanitizer_run.py
    compute-sanitizer --tool synccheck  .venv/bin/python csrc/tests/sanitizer_run.py
"""
import os
import sys

os.environ["ADJOINED_POISON_OUTPUTS"] = "1"

import torch  # noqa: E402

import adjoined_kernels as ak  # noqa: E402
from adjoined_kernels.ops import conv_cuda, loss_cuda  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}
bad = []


def close(name, out, ref, dtype):
    err = ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-9)).item()
    ok = err <= TOL[dtype]
    print(f"{'ok  ' if ok else 'BAD '} {name:28s} {str(dtype):15s} rel err {err:.2e}", flush=True)
    if not ok:
        bad.append(name)


def conv(dtype, n1, n2, cin, cins, cout, couts, k, s, p, d, h1, h2, share):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *sh: torch.randn(*sh, generator=g, device="cuda").to(dtype)  # noqa: E731
    xf, xs, w, b = r(n1, cin, h1, h1 + 1), r(n2, cins, h2, h2 + 2), r(cout, cin, k, k), r(cout)
    sc = (torch.rand(couts, generator=g, device="cuda") + 0.5).to(dtype)
    xf = xf.contiguous(memory_format=torch.channels_last)
    leaves = [t.requires_grad_(True) for t in (xf, xs, w, b, sc)]
    zf, zs = conv_cuda.adjoined_conv2d_cuda(xf, xs, w, b, (s, s), (p, p), (d, d), couts, sc, share_weights=share)
    ref = [t.detach().double().requires_grad_(True) for t in leaves]
    rf, rs = ak.adjoined_conv2d_ref(*ref[:4], (s, s), (p, p), (d, d), couts, ref[4])
    tag = f"conv{k}x{k}/s{s}/d{d}/{cin}->{cout}"
    close(tag + " z_full", zf, rf, dtype)
    close(tag + " z_small", zs, rs, dtype)
    dzf, dzs = torch.randn_like(rf), torch.randn_like(rs)
    torch.autograd.backward([zf, zs], [dzf.to(dtype), dzs.to(dtype)])
    torch.autograd.backward([rf, rs], [dzf, dzs])
    for name, a, c in zip(("dx_full", "dx_small", "dw", "db", "dscale"), leaves, ref):
        close(f"{tag} {name}", a.grad, c.grad, dtype)


def loss(dtype, B, C, eps, reduction, t32):
    g = torch.Generator(device="cuda").manual_seed(1)
    lf = (torch.randn(B, C, generator=g, device="cuda") * 3).to(dtype).requires_grad_(True)
    ls = (torch.randn(B, C, generator=g, device="cuda") * 3).to(dtype).requires_grad_(True)
    tg = torch.randint(0, C, (B,), generator=g, device="cuda")
    tg[::3] = -100
    out = loss_cuda.adjoined_loss_cuda(lf, ls, tg.int() if t32 else tg, 0.6, eps, 2.0, reduction)
    a, b = lf.detach().double().requires_grad_(True), ls.detach().double().requires_grad_(True)
    ref = ak.adjoined_loss_ref(a, b, tg, 0.6, eps, 2.0, reduction)
    tag = f"loss B={B} C={C} eps={eps} {reduction}"
    close(tag, out, ref, dtype)
    go = torch.rand(ref.shape, generator=g, device="cuda", dtype=torch.float64)
    out.backward(go.to(dtype))
    ref.backward(go)
    close(tag + " d_full", lf.grad, a.grad, dtype)
    close(tag + " d_small", ls.grad, b.grad, dtype)


def main():
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to run")
        return 0
    conv_cuda.load()
    loss_cuda.load()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        conv(dtype, 2, 3, 40, 10, 72, 18, 3, 1, 1, 1, 9, 7, True)     # pairing + small-only tiles
        conv(dtype, 1, 2, 5, 1, 7, 7, 3, 2, 1, 1, 11, 9, False)       # odd widths, stride 2, no sharing
        conv(dtype, 1, 1, 9, 3, 130, 2, 5, 1, 2, 2, 12, 10, True)     # dilation 2, 3 N tiles
        conv(dtype, 4, 4, 64, 16, 64, 16, 1, 1, 0, 1, 30, 30, True)   # 1x1, vector loads, split-K wgrad
        loss(dtype, 7, 10, 1e-6, "mean", False)
        loss(dtype, 5000, 13, 0.0, "mean", True)                      # n_valid count kernel
        loss(dtype, 3, 9000, 1e-6, "sum", False)                      # long rows
        loss(dtype, 4, 100, 0.0, "none", False)
    torch.cuda.synchronize()
    print("wrong results:", bad if bad else "none")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
