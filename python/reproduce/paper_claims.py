"""Reproduce the paper's claims on one dataset: standard, small from scratch, AN (alpha 2, 4, 8), KD, KDDP and
PWH, trained on the same data, seeds and epoch budget, then compared as the paper's tables and Figure 1.

    python python/reproduce/paper_claims.py --dataset fashion-mnist --seeds 3 --out runs/claims
    python python/reproduce/paper_claims.py --quick --data-dir DIR --out /tmp/claims    # smoke test

Every run is ``adjoined-train`` with its own output directory OUT/seed<K>/<method>[-a<alpha>]; a run whose
summary.json exists is skipped, and one with only a checkpoint continues with --resume, so a killed
reproduction continues where it stopped. KD, KDDP and PWH distil from the same seed's standard run.

Writes OUT/claims.md, OUT/claims.csv (one row per method and alpha: accuracy mean and std over seeds,
params, FLOPs, CPU latency of the exported network at batch 1) and OUT/claims.png (accuracy against params,
as the paper's Figure 1). The methods are in docs/baselines.md.
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import sys
import time

from adjoined_kernels import train

QUICK = ["--width", "8", "--batch-size", "32", "--eval-batch-size", "64", "--bench-runs", "1", "--no-onnx"]
NAMES = {"standard": "Standard", "small": "Small from scratch", "an_full": "AN-Full", "an_small": "AN-Small",
         "kd": "KD", "kddp": "KDDP", "pwh": "PWH"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--stem", default="cifar")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. N-1)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every run (kddp/pwh share them among phases)")
    p.add_argument("--subset", type=int, default=None, help="N train and N test images (default: all)")
    p.add_argument("--an-alphas", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--alphas", type=int, nargs="+", default=[4],
                   help="alphas of small-from-scratch, KD, KDDP and PWH")
    p.add_argument("--kd-temperature", type=float, default=4.0, help="T of KD and KDDP")
    p.add_argument("--pwh-iters", type=int, default=2)
    p.add_argument("--pwh-lr", type=float, default=0.015,
                   help="peak LR of PWH, which fine-tunes the trained teacher (the others train from scratch at "
                        "adjoined-train's --lr); at 0.15 its hints phases went NaN")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each run (1 on a shared machine)")
    p.add_argument("--train-args", default="", help="more adjoined-train options for every run, one string")
    p.add_argument("--out", default="runs/claims")
    p.add_argument("--quick", action="store_true", help="a few steps of every method on a tiny subset (tests)")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs")
    a = p.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    if a.quick:
        a.subset, a.epochs, a.seeds, a.width, a.pwh_iters = a.subset or 64, 2, min(a.seeds, 2), 8, 1
    a.pwh_iters = max(1, min(a.pwh_iters, a.epochs - 1))
    return a


def plan(a) -> list[tuple[int, str, int, list[str]]]:
    """``(seed, method, alpha, extra argv)`` of every run, each seed's standard run first (the teacher)."""
    runs = []
    for seed in range(a.seeds):
        teacher = ["--teacher", os.path.join(run_dir(a, seed, "standard", None), "checkpoint.pt")]
        runs.append((seed, "standard", None, []))
        runs += [(seed, "adjoined", al, []) for al in a.an_alphas]
        for al in a.alphas:
            runs.append((seed, "small", al, []))
            runs.append((seed, "kd", al, teacher + ["--temperature", str(a.kd_temperature)]))
            runs.append((seed, "kddp", al, teacher + ["--temperature", str(a.kd_temperature)]))
            runs.append((seed, "pwh", al, teacher + ["--pwh-iters", str(a.pwh_iters), "--lr", str(a.pwh_lr)]))
    return runs


def run_dir(a, seed, method, alpha) -> str:
    return os.path.join(a.out, f"seed{seed}", method if alpha is None else f"{method}-a{alpha}")


def argv_of(a, seed, method, alpha, extra) -> list[str]:
    out = run_dir(a, seed, method, alpha)
    argv = ["--method", method, "--dataset", a.dataset, "--arch", a.arch, "--width", str(a.width), "--stem", a.stem,
            "--epochs", str(a.epochs), "--seed", str(seed), "--threads", str(a.threads), "--no-progress",
            "--out", out, *extra]
    argv += ["--alpha", str(alpha if alpha is not None else 4)]
    argv += ["--data-dir", a.data_dir] if a.data_dir else []
    argv += ["--subset", str(a.subset)] if a.subset else []
    argv += QUICK if a.quick else ["--bench-runs", "5"]
    if os.path.isfile(os.path.join(out, "checkpoint.pt")):
        argv.append("--resume")
    return argv + shlex.split(a.train_args)


def run_all(a) -> None:
    runs = plan(a)
    for i, (seed, method, alpha, extra) in enumerate(runs):
        out = run_dir(a, seed, method, alpha)
        if os.path.isfile(os.path.join(out, "summary.json")):
            print(f"[{i + 1}/{len(runs)}] {out}: done, skipped", flush=True)
            continue
        argv = argv_of(a, seed, method, alpha, extra)
        print(f"\n[{i + 1}/{len(runs)}] $ adjoined-train {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        code = train.main(argv)
        if code != 0:
            sys.exit(f"paper_claims: the run above failed with exit code {code}")
        print(f"[{i + 1}/{len(runs)}] {out}: {time.perf_counter() - t0:.0f}s", flush=True)


def read_summary(path: str) -> dict | None:
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None


def collect(a) -> list[dict]:
    """One row per method and alpha with the per-seed values."""
    rows: dict = {}

    def add(key, alpha, s, branch, seed):
        acc = s[f"acc_{branch}"]
        if acc is None:
            return
        r = rows.setdefault((key, alpha), {"method": NAMES[key], "key": key, "alpha": alpha, "acc": [], "seeds": [],
                                           "latency": [], "train_time": []})
        r["acc"].append(acc)
        r["seeds"].append(seed)
        r.setdefault("all_params", []).append(s[f"params_{branch}"])
        r["flops"] = s[f"flops_{branch}"]
        lat = s.get(f"latency_cpu_b1_ms_{branch}")
        if lat is not None:
            r["latency"].append(lat)
        r["train_time"].append(s.get("train_time_s", 0.0))
        for k in ("kddp_fc1_kept", "params_before_pruning", "params_after_pruning"):
            if k in s:
                r.setdefault(k, []).append(s[k])

    for seed, method, alpha, _ in plan(a):
        s = read_summary(os.path.join(run_dir(a, seed, method, alpha), "summary.json"))
        if s is None:
            continue
        if method == "adjoined":
            add("an_full", alpha, s, "full", seed)
            add("an_small", alpha, s, "small", seed)
        elif method == "standard":
            add("standard", None, s, "full", seed)
        else:
            add(method, alpha, s, "small", seed)
    out = list(rows.values())
    for r in out:
        r["mean"] = statistics.fmean(r["acc"])
        r["std"] = statistics.stdev(r["acc"]) if len(r["acc"]) > 1 else 0.0
        r["lat"] = statistics.fmean(r["latency"]) if r["latency"] else None
        r["params"] = round(statistics.fmean(r["all_params"]))  # kddp's varies with the neurons kept per seed
    return out


def find(rows, key, alpha=None):
    return next((r for r in rows if r["key"] == key and r["alpha"] == alpha), None)


def compare(name: str, a: dict | None, b: dict | None, params: bool = False) -> str:
    """One claim line: ``a`` >= ``b`` in mean accuracy (and, with ``params``, at equal or fewer params)."""
    if a is None or b is None:
        return f"- {name}: not measured (a run is missing)"
    diff = a["mean"] - b["mean"]
    noise = max(a["std"], b["std"])
    nums = (f"{label(a)} {a['mean']:.4f} ± {a['std']:.4f} vs {label(b)} {b['mean']:.4f} ± {b['std']:.4f} "
            f"(difference {diff:+.4f}; n = {len(a['acc'])}/{len(b['acc'])} seeds")
    if params:
        nums += f"; params {a['params']:,} vs {b['params']:,}"
    nums += ")"
    if params and a["params"] > b["params"]:
        verdict = "NOT COMPARABLE (AN-Small has more params)" + (", accuracy higher" if diff >= 0 else
                                                                ", accuracy lower")
    else:
        verdict = "HOLDS" if diff >= 0 else "DOES NOT HOLD"
        if abs(diff) < noise:
            verdict += " (within one std of the seeds)"
    return f"- {name}: {nums}. Verdict: **{verdict}**"


def label(r) -> str:
    return r["method"] + (f" α={r['alpha']}" if r["alpha"] is not None else "")


def claims(a, rows) -> list[str]:
    std = find(rows, "standard")
    lines = [compare(f"AN-Full (α={al}) ≥ Standard (the paper's Table 4)", find(rows, "an_full", al), std)
             for al in a.an_alphas]
    for al in a.alphas:
        an = find(rows, "an_small", al)
        lines.append(compare(f"AN-Small ≥ KD at α={al} (Table 2)", an, find(rows, "kd", al)))
        lines.append(compare(f"AN-Small ≥ small from scratch at α={al}", an, find(rows, "small", al)))
        for m in ("kddp", "pwh"):
            lines.append(compare(f"AN-Small ≥ {NAMES[m]} at α={al}, at equal or fewer params", an,
                                 find(rows, m, al), params=True))
    return lines


def params_text(r) -> str:
    lo, hi = min(r["all_params"]), max(r["all_params"])
    return f"{r['params']:,}" if lo == hi else f"{r['params']:,} (mean; {lo:,}-{hi:,})"


def fmt(v, f):
    return "-" if v is None else format(v, f)


def write_csv(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "alpha", "seeds", "acc_mean", "acc_std", "params", "flops", "latency_cpu_b1_ms"])
        for r in rows:
            w.writerow([r["method"], r["alpha"] or "", len(r["acc"]), f"{r['mean']:.5f}", f"{r['std']:.5f}",
                        r["params"], r["flops"], fmt(r["lat"], ".3f")])


def plot(path, rows) -> None:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, key in enumerate(NAMES):
        pts = sorted((r for r in rows if r["key"] == key), key=lambda r: r["params"])
        if not pts:
            continue
        ax.errorbar([r["params"] for r in pts], [r["mean"] for r in pts], yerr=[r["std"] for r in pts],
                    marker="os^vDPX"[i % 7], capsize=3, linestyle="-" if key.startswith("an") else "none",
                    label=NAMES[key], color=f"C{i}")
        for r in pts:
            if r["alpha"] is not None:
                ax.annotate(f"α={r['alpha']}", (r["params"], r["mean"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.set(xscale="log", xlabel="parameters of the deployed network (log scale)", ylabel="test accuracy",
           title="accuracy against size (the paper's Figure 1)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def total_train_time(a) -> float:
    """Seconds of training (epochs and their evaluation) summed over the finished runs."""
    total = 0.0
    for seed, method, alpha, _ in plan(a):
        s = read_summary(os.path.join(run_dir(a, seed, method, alpha), "summary.json"))
        total += s.get("train_time_s", 0.0) if s else 0.0
    return total


def command(a) -> str:
    argv = [x for x in a.argv if x != "--report-only"]
    return "python python/reproduce/paper_claims.py " + " ".join(shlex.quote(x) for x in argv)


def report(a, rows, wall: float | None) -> str:
    lines = ["# The paper's claims, measured", "", f"Command: `{command(a)}`", "",
             f"Dataset {a.dataset}{f' (subset: {a.subset} train and {a.subset} test images)' if a.subset else ''}; "
             f"{a.arch}, width {a.width}, stem {a.stem}; {a.epochs} epochs per run (kddp and pwh share them "
             f"among their phases; pwh: {a.pwh_iters} iteration(s) + the final hints step); seeds "
             f"0..{a.seeds - 1}; {a.threads} CPU thread(s) per run; KD/KDDP temperature {a.kd_temperature}, "
             f"kd-alpha 0.5; PWH fine-tunes the teacher at peak LR {a.pwh_lr} (the others train from scratch at "
             "0.15); every other option is adjoined-train's default (docs/baselines.md)."
             + (f" Extra options: `{a.train_args}`." if a.train_args else ""),
             ""]
    lines += [f"Training time summed over the runs: {total_train_time(a) / 60:.1f} min"
              + (f"; wall time of the invocations that ran them: {wall / 60:.1f} min." if wall else ".")
              + " The 2 CPU cores were shared with other jobs, so times are longer than on an idle machine.", ""]
    lines += ["| method | α | seeds | accuracy (mean ± std) | params | FLOPs / image | CPU latency b1 (ms) |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['alpha'] or '-'} | {len(r['acc'])} | {r['mean']:.4f} ± {r['std']:.4f} | "
                     f"{params_text(r)} | {r['flops']:,} | {fmt(r['lat'], '.3f')} |")
    for r in rows:
        if "kddp_fc1_kept" in r:
            lines += ["", f"KDDP α={r['alpha']}: fc1 neurons kept per seed {r['kddp_fc1_kept']}; params before "
                          f"pruning {r['params_before_pruning']}, after {r['params_after_pruning']}."]
    lines += ["", "## Claims", "", *claims(a, rows), "",
              "Latency: median of timed batch-1 calls of the exported network in each run (torch, CPU, "
              f"{a.threads} thread(s)), measured on a machine whose cores other jobs shared, so it is noisy. "
              "A verdict compares means only; \"within one std\" marks differences smaller than the spread "
              "over seeds."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse(argv)
    t0 = time.perf_counter()
    os.makedirs(a.out, exist_ok=True)
    wall_path = os.path.join(a.out, "wall_time_s.txt")  # summed over invocations (a resumed reproduction adds)
    wall = float(open(wall_path).read()) if os.path.isfile(wall_path) else 0.0
    if not a.report_only:
        run_all(a)
        wall += time.perf_counter() - t0
        with open(wall_path, "w") as f:
            f.write(f"{wall:.1f}\n")
    rows = collect(a)
    write_csv(os.path.join(a.out, "claims.csv"), rows)
    if rows:
        plot(os.path.join(a.out, "claims.png"), rows)
    text = report(a, rows, wall)
    with open(os.path.join(a.out, "claims.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
