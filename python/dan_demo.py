"""DAN on Fashion-MNIST: search per-layer widths at the FLOPs of the uniform alpha=4 small network, retrain the
found architecture adjoinedly, train uniform alpha=4 with the same budget, and compare the networks.

    python python/dan_demo.py                      # make dan-demo: one seed, about 15 minutes on 2 CPU cores
    python python/dan_demo.py --seeds 0 1 2        # mean +- std over seeds (outside make dan-demo's budget)

The search runs on a subset of the training images (``--search-subset``) with a raised gate learning rate,
since a demo-length search is far shorter than the paper's (docs/dan.md says why). Uses only the public API.
Writes OUT/seed<K>/{search,dan,uniform}/ (each run's own outputs) and OUT/table.md.
"""
import argparse
import json
import os
import statistics
import sys

import adjoined_kernels as ak
from adjoined_kernels import train

MODEL = ["--arch", "resnet18", "--width", "16", "--stem", "cifar"]
ROWS = [("DAN small (searched widths)", "dan", "small"), ("AN small (uniform alpha=4)", "uniform", "small"),
        ("DAN full", "dan", "full"), ("AN full (alpha=4 run)", "uniform", "full")]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/dan-demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=1, help="epochs of the retrain and of the uniform run")
    p.add_argument("--search-epochs", type=int, default=2)
    p.add_argument("--search-subset", type=int, default=15000, help="training images of the search")
    p.add_argument("--search-alphas", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--arch-lr", type=float, default=0.05)
    p.add_argument("--flops-weight", type=float, default=4.0)
    p.add_argument("--subset", type=int, default=None, help="train/test images of the two trainings (smoke runs)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory (default: the trainer's)")
    return p.parse_args(argv)


def uniform_target(alpha: int = 4, hw=(28, 28)) -> float:
    """FLOPs of the uniform alpha small network over the full network's, at ``hw``."""
    net = ak.models.adjoined_resnet18(num_classes=10, alpha=alpha, in_channels=1, stem="cifar", width=16)
    return net.small_flops(hw) / net.full_flops(hw)


def run(fn, argv, done: str):
    """Run one command unless its output ``done`` exists (a killed demo resumes with the runs it finished)."""
    name = "adjoined-search" if fn is train.search_main else "adjoined-train"
    if os.path.exists(done):
        print(f"\n{name}: {done} exists, skipping that run", flush=True)
        return
    print("\n$", name, " ".join(argv), flush=True)
    code = fn(argv)
    if code != 0:
        sys.exit(f"dan_demo: the run above failed with exit code {code}")


def one_seed(a, seed: int, target: float) -> dict:
    base = os.path.join(a.out, f"seed{seed}")
    common = MODEL + ["--seed", str(seed), "--no-onnx", "--threads", str(a.threads)]
    if a.data_dir:
        common += ["--data-dir", a.data_dir]
    sub = ["--subset", str(a.subset)] if a.subset else []
    search_out = os.path.join(base, "search")
    arch = os.path.join(search_out, "arch.json")
    run(train.search_main, common + ["--out", search_out, "--epochs", str(a.search_epochs),
                                     "--subset", str(a.search_subset if not a.subset else a.subset),
                                     "--search-alphas", *map(str, a.search_alphas),
                                     "--flops-target", f"{target:.6f}", "--flops-weight", str(a.flops_weight),
                                     "--arch-lr", str(a.arch_lr), "--bench-runs", "0"], arch)
    for name, extra in (("dan", ["--arch-json", arch]), ("uniform", ["--alpha", "4"])):
        out = os.path.join(base, name)
        run(train.main, common + sub + ["--out", out, "--epochs", str(a.epochs), *extra],
            os.path.join(out, "summary.json"))
    runs = {k: json.load(open(os.path.join(base, k, "summary.json"))) for k in ("dan", "uniform")}
    runs["arch"] = json.load(open(arch))
    return runs


def cell(values, fmt):
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def table(results: list[dict], target: float) -> str:
    lines = ["| network | test accuracy | params | FLOPs / image | FLOPs vs uniform small |",
             "|---|---|---|---|---|"]
    ref = [r["uniform"]["flops_small"] for r in results]
    for label, run_name, branch in ROWS:
        acc = [r[run_name][f"acc_{branch}"] for r in results]
        params = [r[run_name][f"params_{branch}"] for r in results]
        flops = [r[run_name][f"flops_{branch}"] for r in results]
        rel = [f / u for f, u in zip(flops, ref)]
        lines.append(f"| {label} | {cell(acc, '.4f')} | {cell(params, ',.0f')} | {cell(flops, ',.0f')} | "
                     f"{cell(rel, '.3f')}x |")
    seeds = len(results)
    lines.append(f"\n{seeds} seed(s){'; mean ± std' if seeds > 1 else ''}. FLOPs target of the search: "
                 f"{target:.4f} of the full network (the uniform alpha=4 small network's share).")
    widths = [" ".join(str(w) for st in r["arch"]["small_widths"] for w in [st["out"]] +
                       [x for blk in st["inner"] for x in blk]) for r in results]
    lines.append("Searched widths per seed (per stage: out, then the inner convs): " + " | ".join(widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    a = parse(argv)
    target = uniform_target()
    results = [one_seed(a, s, target) for s in a.seeds]
    text = table(results, target)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
