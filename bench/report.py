"""Regenerate bench/RESULTS.md (and speedup plots) from the committed files in bench/results/.

Reads every *-conv.csv, *-loss.csv (GPU) and *-cpu.json (pytest-benchmark). Run: python bench/report.py
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def geomean(xs):
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def conv_section(path):
    rows = [r for r in read_csv(path) if r["mode"] == "full"]
    if not rows:
        return []
    r0 = rows[0]
    out = [f"### Fused adjoined conv, fprop+dgrad+wgrad: `{os.path.basename(path)}`",
           f"{r0['gpu_name']}, torch {r0['torch']}, triton {r0['triton']}, git {r0['git_sha']}, bf16 channels_last, "
           "ResNet-50 layers 2-4 at 224 px. Geometric mean over shapes of the speedup (provider time / cuDNN2 "
           "or authors' time; > 1 is faster). Failed correctness checks are not timed and not averaged.", "",
           "| N | alpha | provider | vs cudnn2 | vs authors | vs compile | correct |", "|---|---|---|---|---|---|---|"]
    groups = defaultdict(list)
    for r in rows:
        groups[(int(r["N"]), int(r["alpha"]), r["provider"])].append(r)
    authors = {(r["shape"], r["N"], r["alpha"]): float(r["ms_p50"]) for r in rows if r["provider"] == "authors"}
    for (n, a, prov), rs in sorted(groups.items()):
        vs_a = geomean([authors[(r["shape"], r["N"], r["alpha"])] / float(r["ms_p50"]) for r in rs])
        ok = sum(r["correct"] == "True" for r in rs)
        out.append(f"| {n} | {a} | {prov} | {geomean([float(r['speedup_vs_cudnn']) for r in rs]):.2f} | "
                   f"{vs_a:.2f} | {geomean([float(r['speedup_vs_compile']) for r in rs]):.2f} | {ok}/{len(rs)} |")
    png = path.replace(".csv", ".png")
    plot_conv(rows, png)
    return out + ["", f"![speedups]({os.path.relpath(png, HERE)})", ""]


def plot_conv(rows, png):
    provs = sorted({r["provider"] for r in rows} - {"cudnn2"})
    keys = sorted({(r["shape"], int(r["N"]), int(r["alpha"])) for r in rows})
    fig, ax = plt.subplots(figsize=(max(8, len(keys) * 0.3), 4))
    width = 0.8 / max(len(provs), 1)
    for i, p in enumerate(provs):
        sp = {(r["shape"], int(r["N"]), int(r["alpha"])): float(r["speedup_vs_cudnn"]) for r in rows
              if r["provider"] == p}
        ax.bar([k + i * width for k in range(len(keys))], [sp.get(k, float("nan")) for k in keys], width, label=p)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{s} N{n} a{a}" for s, n, a in keys], rotation=90, fontsize=6)
    ax.set_ylabel("speedup vs two cuDNN calls")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def loss_section(path):
    rows = read_csv(path)
    if not rows:
        return []
    r0 = rows[0]
    out = [f"### Fused adjoined loss, forward + both gradients: `{os.path.basename(path)}`",
           f"{r0['gpu_name']}, torch {r0['torch']}, triton {r0['triton']}, {r0['dtype']}, measured copy peak "
           f"{float(r0['peak_gbps_measured']):.0f} GB/s.", "",
           "| B | C | provider | ms p50 [p20, p80] | GB/s | % peak BW | vs eager | vs compile | timing |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['N']} | {r['C']} | {r['provider']} | {float(r['ms_p50']):.4f} [{float(r['ms_p20']):.4f}, "
                   f"{float(r['ms_p80']):.4f}] | {float(r['gbps']):.0f} | {float(r['pct_peak_bw']):.0f} | "
                   f"{float(r['speedup_vs_eager']):.2f} | {float(r['speedup_vs_compile']):.2f} | {r['timing']} |")
    return out + [""]


def cpu_section(path):
    data = json.load(open(path))
    info = data.get("machine_info", {})
    out = [f"### CPU: `{os.path.basename(path)}`",
           f"{info.get('cpu', {}).get('brand_raw', 'cpu')}, {info.get('cpu', {}).get('count', '?')} cores, "
           f"python {info.get('python_version', '?')}. Medians of pytest-benchmark rounds.", ""]
    lat = defaultdict(dict)
    steps = {}
    for b in data["benchmarks"]:
        e, med = b["extra_info"], b["stats"]["median"] * 1e3
        if "kind" in e:
            steps[e["kind"]] = med
        else:
            lat[(e["model"], e["batch"], e["variant"])][e["net"]] = med
    out += ["| model | batch | variant | full ms | small ms | small speedup |", "|---|---|---|---|---|---|"]
    for (m, bsz, v), d in sorted(lat.items()):
        if "full" in d and "small" in d:
            out.append(f"| {m} | {bsz} | {v} | {d['full']:.1f} | {d['small']:.1f} | {d['full'] / d['small']:.2f}x |")
    if steps:
        out += ["", "| training step (ResNet-18 CIFAR, alpha 4, batch 64) | ms | vs compact |", "|---|---|---|"]
        for k, v in steps.items():
            out.append(f"| {k} | {v:.0f} | {v / steps.get('compact', v):.2f}x |")
    return out + [""]


def main():
    lines = ["# Benchmark results", "",
             "Generated by `python bench/report.py` from the raw files in `bench/results/`; do not edit by hand.", ""]
    for path in sorted(glob.glob(os.path.join(RESULTS, "*")), reverse=True):
        if path.endswith("-conv.csv"):
            lines += conv_section(path)
        elif path.endswith("-loss.csv"):
            lines += loss_section(path)
        elif path.endswith("-cpu.json"):
            lines += cpu_section(path)
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
