"""Coverage table of ak.adjoin on torchvision models: parameters, FLOPs and CPU latency of the exported full
and small networks (random weights; the numbers depend only on the architecture).

    python python/adjoin_coverage.py [--models resnet18,resnet50] [--alphas 2,4] [--runs 5] [--threads 2]

FLOPs: torch.utils.flop_counter per 224x224 image (2 per multiply-add). Latency: median of ``--runs`` timed
calls of the exported nets (eval, fp32, NCHW, inference_mode) at batch 8, 224x224, after one untimed call;
full and small calls alternate, so that both see the same machine load, and the speed-up is the median of
the per-pair ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import adjoined_kernels as ak
from adjoined_kernels.adjoin import DEFAULT_START
from adjoined_kernels.train.report import count_flops, count_params

COVERAGE = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "mobilenet_v2",
            "mobilenet_v3_small", "efficientnet_b0", "densenet121"]
COLUMNS = ["model", "start", "alpha", "params full", "params small", "GFLOPs full", "GFLOPs small",
           "CPU ms full", "CPU ms small", "speed-up"]


def _ms(net, x) -> float:
    t0 = time.perf_counter()
    net(x)
    return (time.perf_counter() - t0) * 1e3


def latencies(full, small, x, runs: int) -> tuple[float, float, float]:
    """(median ms of full, of small, median of the per-pair full/small ratios), calls alternating."""
    with torch.inference_mode():
        full(x), small(x)
        pairs = [(_ms(full, x), _ms(small, x)) for _ in range(runs)]
    return (statistics.median(f for f, _ in pairs), statistics.median(s for _, s in pairs),
            statistics.median(f / s for f, s in pairs))


def measure(name: str, alphas: list[int], size: int, batch: int, runs: int) -> list[list[str]]:
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=1000).eval()
    shape = (3, size, size)
    x = torch.randn(batch, *shape)
    rows = []
    for alpha in alphas:
        m = ak.adjoin(model, alpha=alpha, start=DEFAULT_START[name]).eval()
        full, small = ak.export_full(m), ak.export_small(m)
        full_ms, small_ms, speedup = latencies(full, small, x, runs)
        rows.append([name, m.start, str(alpha), f"{count_params(full) / 1e6:.2f}M", f"{count_params(small) / 1e6:.2f}M",
                     f"{count_flops(full, shape) / 1e9:.2f}", f"{count_flops(small, shape) / 1e9:.2f}",
                     f"{full_ms:.0f}", f"{small_ms:.0f}", f"{speedup:.2f}x"])
    return rows


def markdown(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS] + rows) for i in range(len(COLUMNS))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(COVERAGE))
    p.add_argument("--alphas", default="2,4")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    alphas = [int(a) for a in args.alphas.split(",")]
    t0, rows = time.time(), []
    for name in args.models.split(","):
        rows += measure(name, alphas, args.size, args.batch, args.runs)
    print(markdown(rows))
    print(f"\nFLOPs per {args.size}x{args.size} image (flop_counter, 2 per multiply-add); CPU latency: median of "
          f"{args.runs} alternating runs at batch {args.batch}, {args.threads} threads, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs; {time.time() - t0:.0f}s in all")


if __name__ == "__main__":
    main()
