"""Fused adjoined loss (forward with both gradients) vs eager PyTorch and torch.compile (GPU).

Every provider is checked against the fp32 reference before timing. Small problems are timed with CUDA
graphs (they are launch-bound). GB/s counts the minimal traffic: read both logits, write both gradients.
"""
from __future__ import annotations

import argparse

import torch

import adjoined_kernels as ak
from common import CsvWriter, bench_ms, peak_rates, rel_err, run_meta


def providers():
    compiled = torch.compile(ak.adjoined_loss_ref, dynamic=False)
    return {"eager": ak.adjoined_loss_ref, "compile": compiled,
            "triton": lambda *a: ak.adjoined_loss(*a, backend="triton")}


def step(loss_fn, lf, ls, target, lam):
    """Loss and both gradients, as a training step needs them."""
    loss = loss_fn(lf, ls, target, lam)
    return (loss, *torch.autograd.grad(loss, (lf, ls)))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000, 32000, 128000])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    meta, csv, peaks = run_meta(), CsvWriter(args.out), peak_rates()
    fns = providers()
    for b in args.batch:
        for c in args.classes:
            lf = torch.randn(b, c, device="cuda", dtype=dtype).mul_(3).requires_grad_()
            ls = torch.randn(b, c, device="cuda", dtype=dtype).mul_(3).requires_grad_()
            target = torch.randint(0, c, (b,), device="cuda")
            lam = torch.tensor(0.7, device="cuda")
            ref = step(ak.adjoined_loss_ref, lf.float().detach().requires_grad_(),
                       ls.float().detach().requires_grad_(), target, lam)
            errs = {n: max(rel_err(a, r) for a, r in zip(step(f, lf, ls, target, lam), ref)) for n, f in fns.items()}
            ok = {n: e <= 2 * errs["eager"] + 1e-3 for n, e in errs.items()}
            small = b * c < 2 ** 24
            times, mem = {}, {}
            for name, fn in fns.items():
                torch.cuda.reset_peak_memory_stats()
                run = lambda fn=fn: step(fn, lf, ls, target, lam)  # noqa: E731
                times[name] = bench_ms(run, cudagraph=small) if ok[name] else (float("nan"),) * 3
                mem[name] = torch.cuda.max_memory_allocated() / 2 ** 20
            nbytes = 4 * b * c * lf.element_size()
            for name, (p50, p20, p80) in times.items():
                gbps = nbytes / p50 / 1e6
                csv.write(dict(kernel="adjoined_loss", provider=name, mode="full", shape=f"{b}x{c}", alpha="",
                               dtype=args.dtype, N=b, C=c, ms_p20=p20, ms_p50=p50, ms_p80=p80, gbps=gbps,
                               pct_peak_bw=100 * gbps / peaks["peak_gbps"], timing="cudagraph" if small else "do_bench",
                               speedup_vs_eager=times["eager"][0] / p50, speedup_vs_compile=times["compile"][0] / p50,
                               max_rel_err=errs[name], correct=ok[name], peak_mem_MB=mem[name],
                               peak_gbps_measured=peaks["peak_gbps"], **meta))
            print(f"B={b:5d} C={c:6d} " + " ".join(f"{k}={v[0]:.4f}ms" for k, v in times.items()), flush=True)
            del lf, ls, ref
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
