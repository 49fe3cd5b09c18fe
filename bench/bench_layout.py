"""What the CPU memory-format policy costs (adjoined_kernels/layout.py, docs/kernels.md "Memory format on
CPU"): the median CPU training step (forward, loss, backward, SGD step) of a network in NCHW and in
channels_last, side by side in one run, with the layout the policy picks and the one the old rule picked
(every conv input width 1 or >= 8).

    python bench/bench_layout.py --out bench/results/DATE-cpu-layout.json

Networks: the demo's adjoined ResNet-18 (width 16, alpha 4, 1x28x28, batch 128), and PWH's phase-1 student
of ``adjoined-train --method pwh --width 8 --alpha 4`` (a plain ResNet-18 at stream widths 10/20/40, the
widths the old rule sent to channels_last and the policy keeps NCHW). Each step is timed with
``torch.utils.benchmark``; the JSON holds every timed step (ms), medians and p20/p80, and the machine.
channels_last is timed only where the instruction set runs it safely: on an AVX2 CPU, not for the PWH net.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

import adjoined_kernels as ak
from adjoined_kernels.baselines import pwh
from adjoined_kernels.layout import as_layout, conv_inputs, memory_format

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def demo_net():
    return ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=16)


def pwh_student():
    """PWH iteration 1's student at width 8, alpha 4: the original's stream widths 8/16/32/64 pruned a third of
    the way to the small network's, as ``adjoined-train --method pwh`` does."""
    model = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8)
    full = pwh.block_widths(ak.export_full(model))
    widths = pwh.interpolate(full, pwh.small_widths(model.small_widths), 1, 2)
    keep = {"stream": [torch.arange(w) for w in widths["stream"]],
            "inner": [[torch.arange(w) for w in b] for b in widths["inner"]]}
    return pwh.prune_resnet(ak.export_full(model), keep)


def old_rule(model) -> bool:
    """The rule before the policy: channels_last when no conv input width is 2-7."""
    return all(c == 1 or c >= 8 for _, c, _, _ in conv_inputs(model))


def step_fn(net, fmt, batch: int):
    net = net.to(memory_format=fmt).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = as_layout(torch.randn(batch, 1, 28, 28), fmt)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        out = net(x)
        loss = ak.adjoined_loss(out[0], out[1], y, 0.5) if isinstance(out, tuple) else F.cross_entropy(out, y)
        loss.backward()
        opt.step()
    return step


def time_step(fn, min_run_time: float) -> dict:
    fn()  # warm-up: oneDNN primitive creation
    m = tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    ms = sorted(t * 1e3 / m.number_per_run for t in m.raw_times)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else ms * 9
    return {"median_ms": statistics.median(ms), "p20_ms": q[1], "p80_ms": q[7], "steps_ms": ms}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--min-run-time", type=float, default=10.0, help="seconds of timed steps per case")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    avx2 = torch.backends.cpu.get_cpu_capability() == "AVX2"
    rows = []
    for name, ctor in (("demo adjoined resnet18 w16 a4", demo_net), ("pwh phase-1 student w8", pwh_student)):
        torch.manual_seed(0)
        net = ctor()
        row = {"net": name, "policy": "channels_last" if memory_format(net, "cpu") == torch.channels_last
               else "nchw", "old_rule": "channels_last" if old_rule(net) else "nchw"}
        for fmt_name, fmt in FORMATS.items():
            if fmt_name == "channels_last" and avx2 and row["policy"] == "nchw":
                continue  # the heap corruption the policy avoids
            row[fmt_name] = time_step(step_fn(net, fmt, a.batch), a.min_run_time)
            print(f"{name:32s} {fmt_name:14s} median {row[fmt_name]['median_ms']:7.1f} ms "
                  f"(p20 {row[fmt_name]['p20_ms']:.1f}, p80 {row[fmt_name]['p80_ms']:.1f})")
        rows.append(row)
    meta = {"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": a.threads, "batch": a.batch, "cpu": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(), "python": platform.python_version()}
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
