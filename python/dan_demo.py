"""DAN on Fashion-MNIST: search per-layer widths at the FLOPs of the uniform alpha=4 small network, export the
most likely architecture within [0.95, 1.00] of that budget (docs/dan.md, "Projection at export"), retrain it
adjoinedly, train uniform alpha=4 with the same budget, and compare the networks side by side.

    python python/dan_demo.py                                   # make dan-demo: one seed, budget alpha=4
    python python/dan_demo.py --budgets 2 4 8 --seeds 0 1 2     # the paper's Table 3 in our setting

The search runs on a subset of the training images (``--search-subset``) with a raised gate learning rate,
since a demo-length search is far shorter than the paper's (docs/dan.md says why). Uses only the public API.
Writes OUT/alpha<A>/seed<K>/{search,dan,uniform}/ (each run's own outputs), OUT/table.md and OUT/results.json
(with several budgets also OUT/dan_vs_an.png).
"""
import argparse
import json
import os
import statistics
import sys

import time

import torch

import adjoined_kernels as ak
from adjoined_kernels import train

MODEL = ["--arch", "resnet18", "--width", "16", "--stem", "cifar"]
ROWS = [("DAN small (searched widths)", "dan", "small"), ("AN small (uniform alpha={a})", "uniform", "small"),
        ("DAN full", "dan", "full"), ("AN full (alpha={a} run)", "uniform", "full")]
TOLERANCE = 0.05


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/dan-demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[4],
                   help="search at the FLOPs of the uniform small network of each of these alphas")
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


def uniform_target(alpha: int, hw) -> float:
    """FLOPs of the uniform alpha small network over the full network's, at ``hw`` (passed to the search with
    repr's 17 digits, so the budget is that count to within 1e-16: an integer count below it is below the
    uniform network's)."""
    net = ak.models.adjoined_resnet18(num_classes=10, alpha=alpha, in_channels=1, stem="cifar", width=16)
    return net.small_flops(hw) / net.full_flops(hw)


def in_band(flops: int, budget: int) -> bool:
    """``(1 - TOLERANCE) * budget <= flops <= budget`` in integer arithmetic (TOLERANCE = 1/20)."""
    return 19 * budget <= 20 * flops and flops <= budget


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


def one_seed(a, seed: int, alpha: int, hw) -> dict:
    target = uniform_target(alpha, hw)
    base = os.path.join(a.out, f"alpha{alpha}", f"seed{seed}")
    common = MODEL + ["--seed", str(seed), "--no-onnx", "--threads", str(a.threads)]
    if a.data_dir:
        common += ["--data-dir", a.data_dir]
    sub = ["--subset", str(a.subset)] if a.subset else []
    search_out = os.path.join(base, "search")
    arch = os.path.join(search_out, "arch.json")
    run(train.search_main, common + ["--out", search_out, "--epochs", str(a.search_epochs),
                                     "--subset", str(a.search_subset if not a.subset else a.subset),
                                     "--search-alphas", *map(str, a.search_alphas),
                                     "--flops-target", repr(target), "--flops-tolerance", str(TOLERANCE),
                                     "--flops-weight", str(a.flops_weight),
                                     "--arch-lr", str(a.arch_lr), "--bench-runs", "0"], arch)
    for name, extra in (("dan", ["--arch-json", arch]), ("uniform", ["--alpha", str(alpha)])):
        out = os.path.join(base, name)
        run(train.main, common + sub + ["--out", out, "--epochs", str(a.epochs), *extra],
            os.path.join(out, "summary.json"))
    runs = {k: json.load(open(os.path.join(base, k, "summary.json"))) for k in ("dan", "uniform")}
    runs["arch"] = json.load(open(arch))
    runs["alpha"], runs["seed"] = alpha, seed
    runs["in_band"] = in_band(runs["dan"]["flops_small"], runs["uniform"]["flops_small"])
    return runs


def cell(values, fmt):
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def table(results: list[dict], alpha: int) -> str:
    """The side-by-side table of one budget (every seed of it)."""
    lines = [f"| network (budget: uniform alpha={alpha}) | test accuracy | params | FLOPs / image | "
             "FLOPs vs uniform small |", "|---|---|---|---|---|"]
    ref = [r["uniform"]["flops_small"] for r in results]
    for label, run_name, branch in ROWS:
        acc = [r[run_name][f"acc_{branch}"] for r in results]
        params = [r[run_name][f"params_{branch}"] for r in results]
        flops = [r[run_name][f"flops_{branch}"] for r in results]
        rel = [f / u for f, u in zip(flops, ref)]
        lines.append(f"| {label.format(a=alpha)} | {cell(acc, '.4f')} | {cell(params, ',.0f')} | "
                     f"{cell(flops, ',.0f')} | {cell(rel, '.4f')}x |")
    seeds = len(results)
    band = all(r["in_band"] for r in results)
    lines.append(f"\n{seeds} seed(s){'; mean ± std' if seeds > 1 else ''}. Budget: the uniform alpha={alpha} small "
                 f"network's FLOPs; the exported DAN network's counted FLOPs are "
                 f"{'within' if band else 'NOT all within'} [0.95, 1.00] of it.")
    for r in results:
        ar = r["arch"]
        flat = " ".join(str(w) for st in ar["small_widths"] for w in [st["out"]] + [x for b in st["inner"] for x in b])
        top = " ".join(str(w) for st in ar["argmax_widths"] for w in [st["out"]] + [x for b in st["inner"] for x in b])
        lines.append(f"- seed {r['seed']}: exported widths {flat} (per stage: out, then the inner convs); argmax "
                     f"{top} at {ar['flops']['argmax'] / ref[0]:.4f}x; log-probability given up "
                     f"{ar['log_prob']['given_up']:.3f}")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """Accuracy of the small networks against their FLOPs, DAN and uniform AN, every budget (mean ± std)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for run_name, label, style in (("dan", "DAN small", "o-"), ("uniform", "AN small (uniform alpha)", "s--")):
        pts = []
        for alpha in sorted({r["alpha"] for r in results}):
            rs = [r[run_name] for r in results if r["alpha"] == alpha]
            acc = [x["acc_small"] for x in rs]
            pts.append((statistics.mean(x["flops_small"] for x in rs), statistics.mean(acc),
                        statistics.stdev(acc) if len(acc) > 1 else 0.0))
        ax.errorbar([p[0] / 1e6 for p in pts], [p[1] for p in pts], [p[2] for p in pts], fmt=style, label=label,
                    capsize=3)
    ax.set(xlabel="MFLOPs per image", ylabel="test accuracy", xscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    a = parse(argv)
    t0 = time.perf_counter()
    hw = tuple(train.load_dataset("fashion-mnist", a.data_dir, subset=8).sample_shape[1:])  # the FLOPs' size
    results = [one_seed(a, s, alpha, hw) for alpha in a.budgets for s in a.seeds]
    text = "\n\n".join(table([r for r in results if r["alpha"] == alpha], alpha) for alpha in a.budgets)
    timing = {"seconds": time.perf_counter() - t0, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch": torch.__version__, "threads": a.threads or torch.get_num_threads()}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"timing": timing, "runs": results}, f, indent=1)
    if len(a.budgets) > 1:
        plot(results, os.path.join(a.out, "dan_vs_an.png"))
    print("\n" + text)
    print(f"\n{timing['seconds']:.0f} s end to end (runs found done are skipped); CPU capability "
          f"{timing['cpu_capability']}, torch {timing['torch']}, {timing['threads']} threads")
    return 0 if all(r["in_band"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
