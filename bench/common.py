"""Shared benchmark plumbing: quantile timing, run metadata and CSV rows (KERNEL-NOTES "Benchmark protocol")."""
from __future__ import annotations

import csv
import datetime
import os
import subprocess

import torch
import triton
import triton.testing

QUANTILES = [0.5, 0.2, 0.8]


def bench_ms(fn, cudagraph: bool = False) -> tuple[float, float, float]:
    """(p50, p20, p80) milliseconds of ``fn`` via triton.testing (L2 flushed between runs)."""
    if cudagraph:
        with torch.cuda.stream(torch.cuda.Stream()):
            return tuple(triton.testing.do_bench_cudagraph(fn, rep=100, quantiles=QUANTILES))
    return tuple(triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=QUANTILES))


def run_meta() -> dict:
    """GPU name, versions, git sha and timestamp carried on every CSV row."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    return {"gpu_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "git_sha": sha or "unknown",
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def peak_rates() -> dict:
    """Measured ceilings of this GPU in this run: bf16 matmul TFLOP/s and device copy GB/s (read + write)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ a, warmup=10, rep=50)
    src = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms_copy = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=50)
    return {"peak_tflops": 2 * 8192 ** 3 / ms / 1e9, "peak_gbps": 2 * src.numel() / ms_copy / 1e6}


class CsvWriter:
    """Append dict rows to ``path``, writing the header from the first row's keys."""

    def __init__(self, path: str):
        self.path, self.fields = path, None
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def write(self, row: dict) -> None:
        new = self.fields is None
        self.fields = self.fields or list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                w.writeheader()
            w.writerow(row)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in fp32 (bf16 conv errors are judged relative to the norm)."""
    return ((a.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()
