"""Shared GPU benchmark plumbing (docs/benchmarks.md, "Rules every benchmark follows"): timing, time budget,
run metadata, CSV rows.

The pure parts (choose_timing, Budget, run_plan, CsvWriter, read_rows) run anywhere and are tested on CPU in
tests/test_bench_harness.py; time_fn, shared_timing and peak_rates need a CUDA GPU.
"""
from __future__ import annotations

import csv
import datetime
import math
import os
import subprocess
import time
import traceback
from collections import Counter
from dataclasses import dataclass

import torch
import triton
import triton.testing

QUANTILES = [0.5, 0.2, 0.8]
# Below this eager time, host launch overhead shows in the measurement: replay a CUDA graph instead.
GRAPH_BELOW_MS = 0.05
NAN = float("nan")


def choose_timing(est_ms: float, graph_ok: bool = True) -> str:
    """"cudagraph" for kernels under GRAPH_BELOW_MS (when graphs are allowed), else "do_bench"."""
    return "cudagraph" if graph_ok and est_ms < GRAPH_BELOW_MS else "do_bench"


@dataclass
class Timing:
    p20: float
    p50: float
    p80: float
    method: str
    peak_mem_MB: float
    gpu_ms: float = NAN  # one call's GPU time without host overhead: CUDA-graph replay, or kernel_ms


def graph_gpu_ms(fn, graph_ok: bool) -> float:
    """:func:`graph_ms` of ``fn``, or NaN when graphs are not allowed or the capture fails. Beside a do_bench
    p50 it tells host-bound calls (p50 >> gpu_ms) from slow kernels."""
    if not graph_ok:
        return NAN
    try:
        return graph_ms(fn)
    except Exception:
        torch.cuda.synchronize()
        return NAN


def kernel_ms(fn, iters: int = 5) -> float:
    """Mean ms per call of ``fn`` that the GPU spent in kernels and copies (torch.profiler's device events,
    summed; gaps between them left out), for callables no graph can capture (a backward over a saved
    forward). NaN when the profiler records no device event or fails."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn()
            torch.cuda.synchronize()
        us = sum(e.device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA)
    except Exception:
        return NAN
    return us / 1e3 / iters if us > 0 else NAN


def estimate_ms(fn, iters: int = 5) -> float:
    """Mean ms of ``fn`` over a few back-to-back calls (no L2 flush): the quick eager measurement."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def graph_ms(fn, replays: int = 5) -> float:
    """Mean GPU ms of ``fn`` replayed from a CUDA graph: no host launch overhead in it. Raises when ``fn``
    cannot be captured (a host sync, an allocation the capture refuses)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # lazy initialisation and autotuning happen outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def shared_timing(fns, graph_ok: bool = True) -> str:
    """One timing method for providers compared side by side, so that their figures compare: "cudagraph"
    when graphs are allowed and the fastest provider's GPU time is under GRAPH_BELOW_MS, else "do_bench".

    The GPU time comes from a graph replay: eager back-to-back calls would count host launch overhead and
    push a launch-bound kernel over the threshold. A provider that cannot be captured is estimated eagerly.
    """
    if not graph_ok or not fns:
        return "do_bench"
    est = [graph_gpu_ms(fn, graph_ok) for fn in fns]
    return choose_timing(min(e if math.isfinite(e) else estimate_ms(fn) for e, fn in zip(est, fns)), graph_ok)


def peak_mem_mb(fn) -> float:
    """Peak allocated MiB during one call of ``fn``, inputs and saved tensors included."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 20


def time_fn(fn, graph_ok: bool = True, method: str | None = None) -> Timing:
    """Warm ``fn`` up (compile, autotune, cudnn.benchmark), then time it: (p20, p50, p80) ms and the method.

    ``method``: "cudagraph" or "do_bench", as :func:`shared_timing` picked it for every provider of the
    comparison; None picks it from this callable alone. ``graph_ok=False`` for callables whose work depends
    on state recorded outside the call (a backward over a saved forward): a graph captured on another
    stream could not replay it.
    """
    fn()
    torch.cuda.synchronize()
    mem = peak_mem_mb(fn)
    if method is None or not graph_ok:
        method = shared_timing([fn], graph_ok)
    if method == "cudagraph":
        try:
            p50, p20, p80 = triton.testing.do_bench_cudagraph(fn, rep=100, quantiles=QUANTILES)
            return Timing(p20, p50, p80, method, mem, p50)
        except Exception as e:  # capture refuses host syncs and some allocator paths: time it eagerly
            print(f"  graph capture failed ({type(e).__name__}: {str(e)[:120]}), timing eagerly", flush=True)
            torch.cuda.synchronize()
            method = "do_bench (capture failed)"
    p50, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=QUANTILES)
    gpu = graph_gpu_ms(fn, method == "do_bench") if graph_ok else kernel_ms(fn)
    return Timing(p20, p50, p80, method, mem, gpu)


def peak_rates() -> dict:
    """Measured ceilings of this GPU in this run: bf16 matmul TFLOP/s and device copy GB/s (read + write)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ a, warmup=10, rep=50)
    src = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms_copy = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=50)
    return {"peak_tflops": 2 * 8192 ** 3 / ms / 1e9, "peak_gbps": 2 * src.numel() / ms_copy / 1e6}


def raise_recompile_limits(limit: int = 4096) -> None:
    """Let torch.compile specialise on every benchmarked shape instead of falling back to eager."""
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, limit)


def git_sha() -> str:
    """$GIT_SHA (the GPU machine's copy of the tree has no .git), else `git rev-parse`, else "unknown"."""
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def run_meta() -> dict:
    """GPU name, versions and git sha carried on every CSV row (the timestamp is added per row)."""
    return {"gpu_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "git_sha": git_sha()}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def error_text(e: BaseException) -> str:
    """One CSV-friendly line naming the exception."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| in fp32 (bf16 errors are judged relative to the norm)."""
    return ((a.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30)).item()


def within_tolerance(err: float, baseline_err: float, floor: float = 1e-3) -> bool:
    """The bf16 rule: at most 2x the baseline's own error against the fp32 reference, plus a floor."""
    return math.isfinite(err) and err <= 2 * baseline_err + floor


def ratio(base: float | None, t: float) -> float:
    """base / t, a speedup (> 1: t is faster); NaN when either is missing."""
    if base is None or not (t > 0) or not math.isfinite(base):
        return NAN
    return base / t


class Budget:
    """Wall-clock budget of one script run. The next job is predicted to cost as much as the longest of the
    last three (at least ``min_job_s``). ``clock`` is injectable so the cut-off can be tested."""

    def __init__(self, seconds: float, clock=time.monotonic, min_job_s: float = 5.0):
        self.seconds, self.clock, self.min_job_s = seconds, clock, min_job_s
        self.start = clock()
        self.durations: list[float] = []

    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    def fits_next(self) -> bool:
        return self.left() >= max(self.durations[-3:] + [self.min_job_s])


def run_plan(jobs: list, run_job, budget: Budget, label=str, log=print, max_failures: int = 3):
    """Run ``jobs`` in order until the budget would be overrun; returns (done, skipped).

    A job that raises is logged and counted as done; ``max_failures`` failures in a row (a dead CUDA context)
    skip the rest. The skipped jobs are summarised by ``label``.
    """
    done, failures = [], 0
    for i, job in enumerate(jobs):
        if not budget.fits_next() or failures >= max_failures:
            why = "time budget spent" if failures < max_failures else f"{failures} failed jobs in a row"
            skipped = jobs[i:]
            log(f"stopping ({why}, {budget.left():.0f} s left); skipped {len(skipped)} of {len(jobs)} jobs:")
            for name, count in Counter(label(j) for j in skipped).items():
                log(f"  skipped {count:4d} x {name}")
            return done, skipped
        t0 = budget.clock()
        try:
            run_job(job)
            failures = 0
        except Exception:
            failures += 1
            log(f"job {label(job)} failed:\n{traceback.format_exc()}")
        budget.durations.append(budget.clock() - t0)
        done.append(job)
    return done, []


def read_rows(path: str) -> list[dict]:
    """The rows of a CSV file; [] when it does not exist."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class CsvWriter:
    """Append rows with a fixed header to ``path``; each row is flushed at once, so a killed run keeps its rows.

    An existing file is appended to (a resumed run) and must have the same header.
    """

    def __init__(self, path: str, fields: list[str]):
        self.path, self.fields = path, list(fields)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline="") as f:
                header = next(csv.reader(f))
            if header != self.fields:
                raise ValueError(f"{path} has another header; write to a new file instead of resuming it")
        else:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(self.fields)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, restval="").writerow(row)
