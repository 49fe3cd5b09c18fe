"""Fused adjoined conv vs two cuDNN calls, the authors' masked form and torch.compile (GPU).

Shapes: the distinct adjoined convs of ResNet-50 layers 2-4 at 224 px. Every provider is checked
against an fp32 reference before it is timed; one CSV row per (shape, alpha, N, mode, provider).
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

import adjoined_kernels as ak
from adjoined_kernels.ops.conv_fprop import adjoined_conv2d_triton
from common import CsvWriter, bench_ms, peak_rates, rel_err, run_meta


def resnet50_shapes():
    """(name, C_in, C_out, k, stride, H, first): first=True means c_in_s = C_in (the shared input)."""
    out = []
    for stage, (cin, mid, hw) in enumerate([(256, 128, 56), (512, 256, 28), (1024, 512, 14)], start=2):
        exp = mid * 4
        out += [(f"l{stage}.b0.conv1", cin, mid, 1, 1, hw, True), (f"l{stage}.b0.conv2", mid, mid, 3, 2, hw, False),
                (f"l{stage}.b0.conv3", mid, exp, 1, 1, hw // 2, False), (f"l{stage}.b0.ds", cin, exp, 1, 2, hw, True),
                (f"l{stage}.bx.conv1", exp, mid, 1, 1, hw // 2, False),
                (f"l{stage}.bx.conv2", mid, mid, 3, 1, hw // 2, False)]
    return out


def make_problem(shape, n, alpha, dtype):
    name, cin, cout, k, stride, hw, first = shape
    cin_s, cout_s = (cin if first else cin // alpha), cout // alpha
    g = dict(device="cuda", dtype=dtype)
    cl = torch.channels_last
    xf = torch.randn(n, cin, hw, hw, **g).contiguous(memory_format=cl).requires_grad_()
    xs = torch.randn(n, cin_s, hw, hw, **g).contiguous(memory_format=cl).requires_grad_()
    w = (torch.randn(cout, cin, k, k, **g) / math.sqrt(cin * k * k)).contiguous(memory_format=cl).requires_grad_()
    pad = k // 2
    p = (hw + 2 * pad - k) // stride + 1
    dzf = torch.randn(n, cout, p, p, **g).contiguous(memory_format=cl)
    dzs = torch.randn(n, cout_s, p, p, **g).contiguous(memory_format=cl)
    flops = 2 * n * p * p * k * k * (cout * cin + cout_s * cin_s)
    nbytes = 2 * (xf.numel() + xs.numel() + w.numel() + dzf.numel() + dzs.numel())  # fprop: read x, W; write z
    return dict(xf=xf, xs=xs, w=w, stride=stride, pad=pad, cout_s=cout_s, dzf=dzf, dzs=dzs, flops=flops,
                nbytes=nbytes)


def providers(pb, compiled):
    xf, xs, w, s, pad, cs = pb["xf"], pb["xs"], pb["w"], pb["stride"], pb["pad"], pb["cout_s"]
    cin_s = xs.shape[1]
    xs_wide = F.pad(xs.detach(), (0, 0, 0, 0, 0, w.shape[1] - cin_s)).contiguous(memory_format=torch.channels_last)
    xs_wide.requires_grad_()
    mask = torch.zeros(1, w.shape[0], 1, 1, device="cuda", dtype=w.dtype)
    mask[:, :cs] = 1

    def authors():
        z = F.conv2d(torch.cat([xf, xs_wide]), w, None, s, pad)
        n = xf.shape[0]
        return z[:n], (z[n:] * mask)[:, :cs]

    return {
        "cudnn2": lambda: (F.conv2d(xf, w, None, s, pad), F.conv2d(xs, w[:cs, :cin_s], None, s, pad)),
        "authors": authors,
        "compile": lambda: compiled(xf, xs, w, None, s, pad, 1, cs),
        "triton": lambda: adjoined_conv2d_triton(xf, xs, w, None, (s, s), (pad, pad), (1, 1), cs, None),
        "triton_noshare": lambda: adjoined_conv2d_triton(xf, xs, w, None, (s, s), (pad, pad), (1, 1), cs, None,
                                                         share_weights=False),
    }


def full_pass(fn, pb):
    """fprop + dgrad + wgrad of one provider."""
    def run():
        zf, zs = fn()
        torch.autograd.backward([zf, zs], [pb["dzf"], pb["dzs"]])
    return run


def check(fn, pb, ref_out, ref_grads):
    """Max relative error of a provider's outputs and gradients against the fp32 reference."""
    for t in (pb["xf"], pb["xs"], pb["w"]):
        t.grad = None
    outs = fn()
    torch.autograd.backward(list(outs), [pb["dzf"], pb["dzs"]])
    got = list(outs) + [pb["xf"].grad, pb["xs"].grad, pb["w"].grad]
    # the authors' form reads a zero-padded copy of x_small, so it has no x_small gradient to compare
    return max(rel_err(a, r) for a, r in zip(got, ref_out + ref_grads) if a is not None)


def reference(pb):
    leaves = [t.detach().float().requires_grad_() for t in (pb["xf"], pb["xs"], pb["w"])]
    outs = ak.adjoined_conv2d_ref(leaves[0], leaves[1], leaves[2], None, pb["stride"], pb["pad"], 1, pb["cout_s"])
    torch.autograd.backward(list(outs), [pb["dzf"].float(), pb["dzs"].float()])
    return list(outs), [t.grad for t in leaves]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="CSV path")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--alpha", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--modes", nargs="+", default=["fwd", "full"])
    ap.add_argument("--shapes", default="", help="substring filter on shape names")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    meta, csv, peaks = run_meta(), CsvWriter(args.out), peak_rates()
    torch._dynamo.config.cache_size_limit = 64
    compiled = torch.compile(ak.adjoined_conv2d_ref, dynamic=True)  # one compile serves every shape
    for shape in [s for s in resnet50_shapes() if args.shapes in s[0]]:
        for n in args.batch:
            for alpha in args.alpha:
                pb = make_problem(shape, n, alpha, torch.bfloat16)
                ref_out, ref_grads = reference(pb)
                fns = providers(pb, compiled)
                errs = {name: check(fn, pb, ref_out, ref_grads) for name, fn in fns.items()}
                # bf16: a provider may err at most 2x cuDNN's own bf16 error (floor 1e-3)
                ok = {name: err <= 2 * errs["cudnn2"] + 1e-3 for name, err in errs.items()}
                for mode in args.modes:
                    times, mem = {}, {}
                    for name, fn in fns.items():
                        torch.cuda.reset_peak_memory_stats()
                        run = fn if mode == "fwd" else full_pass(fn, pb)
                        times[name] = bench_ms(run) if ok[name] else (float("nan"),) * 3
                        mem[name] = torch.cuda.max_memory_allocated() / 2 ** 20
                    flops = pb["flops"] * (1 if mode == "fwd" else 3)
                    # roofline: the time at the measured peak compute or bandwidth, whichever binds
                    roof_ms = max(flops / peaks["peak_tflops"] / 1e9,
                                  pb["nbytes"] * (1 if mode == "fwd" else 3) / peaks["peak_gbps"] / 1e6)
                    for name, (p50, p20, p80) in times.items():
                        csv.write(dict(kernel="adjoined_conv2d", provider=name, mode=mode, shape=shape[0],
                                       cin=shape[1], cout=shape[2], k=shape[3], stride=shape[4], hw=shape[5],
                                       alpha=alpha, dtype="bf16", N=n, ms_p20=p20, ms_p50=p50, ms_p80=p80,
                                       tflops=flops / p50 / 1e9, speedup_vs_cudnn=times["cudnn2"][0] / p50,
                                       speedup_vs_compile=times["compile"][0] / p50, max_rel_err=errs[name],
                                       correct=ok[name], peak_mem_MB=mem[name], roofline_ms=roof_ms,
                                       pct_roofline=100 * roof_ms / p50, pct_peak_tflops=
                                       100 * flops / p50 / 1e9 / peaks["peak_tflops"],
                                       peak_tflops_measured=peaks["peak_tflops"],
                                       peak_gbps_measured=peaks["peak_gbps"], **meta))
                    print(f"{shape[0]:12s} N={n:3d} a={alpha} {mode:4s} " + " ".join(
                        f"{k}={v[0]:.3f}" for k, v in times.items()), flush=True)
                del pb, fns, ref_out, ref_grads
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
