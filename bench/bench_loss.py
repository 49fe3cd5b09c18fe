"""Fused adjoined loss (forward with both gradients) vs eager PyTorch, torch.compile and Liger-Kernel, on a GPU.

Sizes: B in {256, 4096} x C in {10, 100, 1000, 32000, 128000}, bf16 logits, lam a device tensor. Providers:
  eager    adjoined_loss_ref (PyTorch ops)        compile  torch.compile(adjoined_loss_ref), static shapes
  liger    Liger-Kernel's CE + KL (eps = 0 form), recorded as skipped when liger_kernel does not import
  triton   adjoined_loss(backend="triton")        cuda     adjoined_loss(backend="cuda"), when built
Every provider is checked against the fp32 reference first (bf16 error <= 2x eager's own + 1e-3). The providers of
one size and mode share one timing method: CUDA-graph replay when the fastest one's GPU time is under ~50 us,
else do_bench. GB/s counts the minimal traffic: read both logits, write
both gradients. Modes: "full" is the loss and both gradients as a training step gets them (forward +
autograd.grad); "kernel" (fused providers only) is their forward alone, which already computes both gradients
in one kernel, so it is the figure for the bandwidth target (its speedups compare with the baselines' full
step, which produces the same outputs). Rows are appended as measured; work stops when --budget-s is spent.

    PYTHONPATH=$PWD python3 bench/bench_loss.py --out bench/results/DATE-GPU-loss.csv [--quick] [--budget-s 200]
"""
from __future__ import annotations

import argparse
import functools
import math
import sys

import torch

import adjoined_kernels as ak
from common import (NAN, Budget, CsvWriter, error_text, now, peak_rates, raise_recompile_limits, ratio, rel_err,
                    run_meta, run_plan, shared_timing, time_fn, within_tolerance)

PROVIDERS = ("eager", "compile", "liger", "triton", "cuda")
FUSED = ("triton", "cuda")  # one kernel computes the loss and both gradients in the forward
BATCHES = (256, 4096)
CLASSES = (10, 100, 1000, 32000, 128000)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FIELDS = ["kernel", "provider", "mode", "shape", "alpha", "dtype", "N", "C", "ms_p20", "ms_p50", "ms_p80", "gpu_ms",
          "gbps", "pct_peak_bw", "speedup_vs_eager", "speedup_vs_compile", "timing", "max_rel_err", "correct", "error",
          "peak_mem_MB", "peak_gbps_measured", "gpu_name", "torch", "triton", "git_sha", "timestamp"]


def loss_bytes(b: int, c: int, elem: int) -> int:
    """Minimal traffic of the fused loss: read both logits, write both gradients."""
    return 4 * b * c * elem


def _loss_ref_compile(*args):
    return ak.adjoined_loss_ref(*args)


def liger_loss():
    """CE(logits_full) + lam * KL(softmax(full) || softmax(small)) from Liger-Kernel's fused CE and KL.

    Raises ImportError when liger_kernel is not installed. Liger's KL has no eps, so it is checked against the
    eps = 0 reference.
    """
    from liger_kernel.transformers import LigerCrossEntropyLoss, LigerKLDIVLoss
    ce, kl = LigerCrossEntropyLoss(), LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def fn(lf, ls, target, lam):
        log_q, log_p = torch.log_softmax(ls.float(), -1), torch.log_softmax(lf.float(), -1)
        return ce(lf, target) + lam * kl(log_q, log_p)
    return fn


@functools.lru_cache(maxsize=None)
def provider_fn(name: str):
    """(loss_fn(lf, ls, target, lam), eps of the reference it is checked against)."""
    if name == "eager":
        return ak.adjoined_loss_ref, 1e-6
    if name == "compile":
        return torch.compile(_loss_ref_compile, dynamic=False), 1e-6
    if name == "liger":
        return liger_loss(), 0.0
    return functools.partial(ak.adjoined_loss, backend=name), 1e-6


def step(loss_fn, lf, ls, target, lam, eps=None):
    """Loss and both gradients, as a training step needs them."""
    loss = loss_fn(lf, ls, target, lam) if eps is None else loss_fn(lf, ls, target, lam, eps)
    return (loss, *torch.autograd.grad(loss, (lf, ls)))


def build_plan(batches=BATCHES, classes=CLASSES, providers=PROVIDERS) -> list[tuple]:
    """(B, C, providers) jobs; eager (every speedup's baseline) is measured first in each."""
    provs = ("eager",) + tuple(p for p in providers if p != "eager")
    return [(b, c, provs) for b in batches for c in classes]


class LossBench:
    def __init__(self, out: str, dtype: str, peaks: dict, meta: dict, device="cuda"):
        self.csv, self.dtype, self.peaks, self.meta, self.device = CsvWriter(out, FIELDS), dtype, peaks, meta, device

    def row(self, b, c, prov, t, err, ok, error, base, mode="full") -> dict:
        elem = torch.empty((), dtype=DTYPES[self.dtype]).element_size()
        p50 = t.p50 if t else NAN
        gbps = loss_bytes(b, c, elem) / p50 / 1e6 if t else NAN
        return dict(kernel="adjoined_loss", provider=prov, mode=mode, shape=f"{b}x{c}", alpha="", dtype=self.dtype,
                    N=b, C=c, ms_p20=t.p20 if t else NAN, ms_p50=p50, ms_p80=t.p80 if t else NAN,
                    gpu_ms=t.gpu_ms if t else NAN, gbps=gbps,
                    pct_peak_bw=100 * gbps / self.peaks["peak_gbps"], speedup_vs_eager=ratio(base.get("eager"), p50),
                    speedup_vs_compile=ratio(base.get("compile"), p50), timing=t.method if t else "",
                    max_rel_err=err, correct=ok, error=error, peak_mem_MB=t.peak_mem_MB if t else NAN,
                    peak_gbps_measured=self.peaks["peak_gbps"], **self.meta, timestamp=now())

    def run(self, job) -> None:
        b, c, provs = job
        torch.cuda.empty_cache()  # the previous size's blocks
        g = dict(device=self.device, dtype=DTYPES[self.dtype])
        lf = torch.randn(b, c, **g).mul_(3).requires_grad_()
        ls = torch.randn(b, c, **g).mul_(3).requires_grad_()
        target = torch.randint(0, c, (b,), device=self.device)
        lam = torch.tensor(0.7, device=self.device)
        fns, errs, errors = self.check(provs, lf, ls, target, lam)
        good = [p for p in provs if not errors[p]]

        def full(p):
            return lambda: step(fns[p], lf, ls, target, lam)

        def kernel(p):
            return lambda: fns[p](lf, ls, target, lam)
        # one timing method per mode for every provider compared in it
        method = shared_timing([full(p) for p in good])
        method_k = shared_timing([kernel(p) for p in good if p in FUSED])
        base, line = {}, []
        for prov in provs:
            t, error = None, errors[prov]
            if not error:
                try:
                    t = time_fn(full(prov), method=method)
                except Exception as e:
                    error = error_text(e)
                    torch.cuda.empty_cache()
            base[prov] = t.p50 if t else NAN
            self.csv.write(self.row(b, c, prov, t, errs[prov], not error, error, base))
            line.append(f"{prov}={t.p50:.4f}ms" if t else f"{prov}=({error[:40]})")
            if t and prov in FUSED:
                tk = time_fn(kernel(prov), method=method_k)
                self.csv.write(self.row(b, c, prov, tk, errs[prov], True, "", base, mode="kernel"))
                line.append(f"{prov}_kernel={tk.p50:.4f}ms")
        print(f"B={b:5d} C={c:6d} " + " ".join(line), flush=True)

    def check(self, provs, lf, ls, target, lam):
        """Each provider's loss function, max relative error against the fp32 reference, and why it is not
        timed ("" when it is: bf16 error <= 2x eager's own + 1e-3; eager comes first)."""
        fns, errs, errors, refs = {}, {}, {}, {}
        for prov in provs:
            errs[prov], errors[prov] = NAN, ""
            try:
                fns[prov], eps = provider_fn(prov)
                if eps not in refs:
                    a, s = (x.detach().float().requires_grad_() for x in (lf, ls))
                    refs[eps] = step(ak.adjoined_loss_ref, a, s, target, lam, eps)
                errs[prov] = max(rel_err(x, r) for x, r in zip(step(fns[prov], lf, ls, target, lam), refs[eps]))
                base_err = errs[prov] if prov == "eager" else errs.get("eager", NAN)
                if not within_tolerance(errs[prov], base_err if math.isfinite(base_err) else 0.0):
                    errors[prov] = "wrong result: not timed"
            except ImportError as e:
                errors[prov] = f"skipped: {error_text(e)}"
            except Exception as e:
                errors[prov] = error_text(e)
                torch.cuda.empty_cache()
        return fns, errs, errors


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="CSV path (appended to)")
    ap.add_argument("--budget-s", type=float, default=200, help="stop starting jobs after this many seconds")
    ap.add_argument("--quick", action="store_true", help="smoke set: B=256, C in {100, 32000}")
    ap.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--classes", type=int, nargs="+", default=list(CLASSES))
    ap.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    if not torch.cuda.is_available():
        print("bench_loss needs a CUDA GPU", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    raise_recompile_limits()  # one static compile per size
    providers = [p for p in args.providers if p != "cuda" or "cuda" in ak.available_backends()]
    if args.quick:
        args.batch, args.classes = [256], [100, 32000]
    bench = LossBench(args.out, args.dtype, peak_rates(), run_meta())
    jobs = build_plan(args.batch, args.classes, providers)
    print(f"{len(jobs)} jobs, budget {budget.left():.0f} s; peaks {bench.peaks}", flush=True)
    done, skipped = run_plan(jobs, bench.run, budget, label=lambda j: f"B={j[0]} C={j[1]}")
    print(f"done {len(done)} jobs, skipped {len(skipped)}, {budget.clock() - budget.start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
