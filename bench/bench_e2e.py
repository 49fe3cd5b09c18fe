"""End-to-end training throughput of adjoined ResNet-50 vs standard training, on a GPU.

ResNet-50 at 224 px (stem imagenet, 1000 classes), alpha 4, bf16 autocast, channels_last, synthetic data, SGD
with momentum; N in {64, 256}. Variants:
  standard            export_full(model): the full network alone, cross-entropy only (the baseline)
  adjoined-<backend>  the adjoined model and loss on each available backend (reference, triton, cuda), and on
                      auto: each layer's fastest backend, timed at the first step (the warm-up); the backend
                      each layer got is printed and written to OUT.auto.json
  authors             the authors' masked form (bench/authors.py) with the eager adjoined loss
  <variant>-graph     standard and adjoined-<backend> with the whole step (forward, loss, backward, SGD)
                      captured once in a CUDA graph and replayed (PyTorch's whole-network capture): the step
                      without host launch overhead, compared with standard-graph
Each variant warms up (compile, autotune), then a fixed number of steps is timed with CUDA events; the loss must
stay finite. images/s counts input images (each trains both branches in the adjoined variants); the headline
is adjoined over standard images/s. Rows are appended as measured; work stops when --budget-s is spent.

    PYTHONPATH=$PWD python3 bench/bench_e2e.py --out bench/results/DATE-GPU-e2e.csv [--quick] [--budget-s 240]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import adjoined_kernels as ak
from adjoined_kernels import _autotune
from adjoined_kernels.export import export_full
from adjoined_kernels.layout import as_layout, to_training_layout
from authors import AuthorsResNet
from common import NAN, Budget, CsvWriter, error_text, now, ratio, run_meta, run_plan

MODEL = (ak.models.adjoined_resnet50, {"num_classes": 1000, "stem": "imagenet"}, 224)
BATCHES = (256, 64)
BACKENDS = ("auto", "cuda", "triton", "reference")
ALPHA, LAM = 4, 0.5
FIELDS = ["kernel", "provider", "mode", "shape", "alpha", "dtype", "N", "steps", "ms_p20", "ms_p50", "ms_p80",
          "images_per_s", "speedup_vs_standard", "peak_mem_MB", "loss_first", "loss_last", "finite", "error",
          "gpu_name", "torch", "triton", "git_sha", "timestamp"]


GRAPH = "-graph"


def variants(backends) -> list[str]:
    """Measuring order: the baseline first, then the fused backends (the headline), the same in CUDA graphs,
    then the slower forms."""
    eager = ["standard"] + [f"adjoined-{b}" for b in BACKENDS if b == "auto" or b in backends]
    return eager + [v + GRAPH for v in eager] + ["authors"]


def parse_variant(variant: str) -> tuple[str, str, bool]:
    """(variant without the graph suffix, backend of the adjoined ops, whether the step is CUDA-graphed)."""
    graph = variant.endswith(GRAPH)
    base = variant[:-len(GRAPH)] if graph else variant
    return base, base.split("-", 1)[1] if base.startswith("adjoined-") else "reference", graph


def graphed(step, warmup: int = 3):
    """``step`` captured once in a CUDA graph; the returned closure replays it and returns a copy of the loss.
    Warm-up runs on a side stream first (autotuning, cudnn.benchmark, the optimizer's momentum buffers), as
    torch.cuda.graph requires; inputs, parameters and optimizer state stay at fixed addresses."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()

    def replay():
        graph.replay()
        return loss.clone()
    # replays allocate nothing: the step's memory is what the capture put in the graph's pool
    replay.capture_peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20
    return replay


def make_step(variant: str, n: int, device="cuda", model=MODEL, alpha=ALPHA, lr=0.01):
    """A closure running one SGD training step of ``variant`` on a fixed synthetic batch; returns the loss.

    Raises ValueError for a ``-graph`` variant on a device other than CUDA."""
    build, kwargs, hw = model
    variant, backend, graph = parse_variant(variant)
    if graph and torch.device(device).type != "cuda":
        raise ValueError(f"the {GRAPH} variants capture CUDA graphs: device must be cuda, got {device}")
    torch.manual_seed(0)
    adjoined = build(alpha=alpha, backend=backend, **kwargs)
    if variant == "standard":
        net = export_full(adjoined)
    elif variant == "authors":
        net = AuthorsResNet(adjoined)
    else:
        net = adjoined
    net, fmt = to_training_layout(net, device)
    net = net.train()
    x = as_layout(torch.randn(n, 3, hw, hw, device=device), fmt)
    y = torch.randint(0, kwargs["num_classes"], (n,), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss_backend = "reference" if variant == "authors" else backend

    def step():
        opt.zero_grad(set_to_none=True)
        # autocast's weight-cast cache must be off when graphing (PyTorch's CUDA-graph notes on AMP)
        with torch.autocast(device, dtype=torch.bfloat16, cache_enabled=not graph):
            out = net(x)
            loss = F.cross_entropy(out, y) if variant == "standard" else \
                ak.adjoined_loss(*out, y, LAM, backend=loss_backend)
        loss.backward()
        opt.step()
        return loss.detach()
    return graphed(step) if graph else step


def time_steps(step, warmup: int, steps: int) -> dict:
    """Warm up, then time ``steps`` steps with CUDA events: per-step ms quantiles, total ms, first/last loss."""
    first = step()
    for _ in range(warmup - 1):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    events[0].record()
    for e in events[1:]:
        last = step()
        e.record()
    torch.cuda.synchronize()
    per = sorted(a.elapsed_time(b) for a, b in zip(events, events[1:]))
    q = statistics.quantiles(per, n=10, method="inclusive")
    return {"ms_p20": q[1], "ms_p50": statistics.median(per), "ms_p80": q[7],
            "total_ms": events[0].elapsed_time(events[-1]), "loss_first": first.item(), "loss_last": last.item(),
            "peak_mem_MB": max(torch.cuda.max_memory_allocated() / 2 ** 20, getattr(step, "capture_peak_mb", 0.0))}


class E2EBench:
    def __init__(self, out: str, warmup: int, steps: int, meta: dict):
        self.csv, self.warmup, self.steps, self.meta = CsvWriter(out, FIELDS), warmup, steps, meta
        self.auto_path, self.auto_rows = Path(out).with_suffix(".auto.json"), []
        self.standard: dict[tuple[int, bool], float] = {}  # (N, graphed) -> standard's images/s

    def run(self, job) -> None:
        variant, n = job
        res, error = {}, ""
        try:
            res = time_steps(make_step(variant, n), self.warmup, self.steps)
        except Exception as e:
            error = error_text(e)
        torch.cuda.empty_cache()
        ips = n * self.steps / res["total_ms"] * 1e3 if res else NAN
        finite = bool(res) and math.isfinite(res["loss_first"]) and math.isfinite(res["loss_last"])
        if res and not finite:
            error = "loss not finite"
        base, _, graph = parse_variant(variant)
        if base == "standard":
            self.standard[(n, graph)] = ips
        self.csv.write(dict(kernel="resnet50_train_step", provider=variant, mode="train", shape="224px",
                            alpha=ALPHA, dtype="bf16-autocast", N=n, steps=self.steps,
                            ms_p20=res.get("ms_p20", NAN), ms_p50=res.get("ms_p50", NAN),
                            ms_p80=res.get("ms_p80", NAN), images_per_s=ips,
                            speedup_vs_standard=ratio(ips, self.standard.get((n, graph))),  # like for like
                            peak_mem_MB=res.get("peak_mem_MB", NAN), loss_first=res.get("loss_first", NAN),
                            loss_last=res.get("loss_last", NAN), finite=finite, error=error, **self.meta,
                            timestamp=now()))
        summary = (f"{ips:8.0f} img/s  p50 {res['ms_p50']:.1f} ms/step  peak {res['peak_mem_MB'] / 1024:.1f} GiB"
                   if res else error)
        print(f"N={n:3d} {variant:22s} {summary}", flush=True)
        if res and base == "adjoined-auto":
            self.report_auto(variant, n)

    def report_auto(self, variant: str, n: int) -> None:
        """Print and save which backend ``auto`` gave each layer geometry (and the timings it chose by)."""
        rows = [dict(r, variant=variant, N=n, key=repr(r["key"])) for r in _autotune.report()]
        counts: dict[tuple[str, str], int] = {}
        for r in rows:
            counts[(r["op"], r["backend"])] = counts.get((r["op"], r["backend"]), 0) + 1
            ms = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["ms"].items()))
            print(f"  auto {r['op']} {r['key']}: {r['backend']}  ({ms or 'from the cache file'})", flush=True)
        print("  auto, geometries per backend: " + ", ".join(f"{op} {b}: {c}" for (op, b), c in sorted(counts.items())),
              flush=True)
        self.auto_rows.extend(rows)
        self.auto_path.write_text(json.dumps(self.auto_rows, indent=1))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="CSV path (appended to)")
    ap.add_argument("--budget-s", type=float, default=240, help="stop starting variants after this many seconds")
    ap.add_argument("--quick", action="store_true", help="smoke set: N=64, 2 warm-up and 3 timed steps")
    ap.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--variants", nargs="+", help="default: every available one")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps (the first compiles and autotunes)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s, min_job_s=10)
    if not torch.cuda.is_available():
        print("bench_e2e needs a CUDA GPU", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    if args.quick:
        args.batch, args.warmup, args.steps = [64], 2, 3
    names = args.variants or variants(ak.available_backends())
    bench = E2EBench(args.out, args.warmup, args.steps, run_meta())
    jobs = [(v, n) for n in args.batch for v in names]
    print(f"{len(jobs)} runs, budget {budget.left():.0f} s", flush=True)
    done, skipped = run_plan(jobs, bench.run, budget, label=lambda j: f"{j[0]} N={j[1]}")
    print(f"done {len(done)} runs, skipped {len(skipped)}, {budget.clock() - budget.start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
