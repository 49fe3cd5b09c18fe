"""Regenerate bench/RESULTS.md (and PNG plots beside the CSVs) from the raw files in bench/results/.

Reads every *-conv.csv, *-loss.csv, *-e2e.csv (GPU) and *-cpu.json (pytest-benchmark), newest first. Conv
speedups are recomputed from the ms_p50 columns, so older CSVs (without suite or speedup_vs_authors) still read.

    python bench/report.py [--results bench/results] [--out bench/RESULTS.md] [--no-plots]
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
NAN = float("nan")
CONV_BASELINES = ("cudnn2", "authors", "compile")


def fl(x) -> float:
    """A CSV cell as a float; NaN when empty or not a number."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return NAN


def geomean(xs) -> float:
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else NAN


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "-"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def conv_targets(provider: str, n: int, alpha: int) -> list[tuple[str, float]]:
    """The project's targets (issue 5), as (baseline, minimum geomean speedup), for mode full on ResNet-50."""
    if provider not in ("triton", "cuda"):
        return []
    out = [("cudnn2", 1.15 if provider == "cuda" and n == 32 else 1.0)]
    if alpha in (2, 4):
        out.append(("authors", {2: 1.3, 4: 1.5}[alpha]))
    return out


def conv_times(rows, col: str = "ms_p50") -> dict:
    """(suite, shape, N, alpha, mode) -> {provider: ms from column ``col``}; rows of old CSVs have no suite
    (ResNet-50 only) and no gpu_ms (NaN)."""
    out = defaultdict(dict)
    for r in rows:
        key = (r.get("suite") or "resnet50", r["shape"], int(r["N"]), int(r["alpha"]), r["mode"])
        out[key][r["provider"]] = fl(r.get(col))
    return out


def conv_speedups(rows, suite: str, mode: str, col: str = "ms_p50") -> dict:
    """(N, alpha, provider) -> {baseline: (geomean speedup over shapes, number of shapes)}.

    A speedup is baseline time / provider time on one shape (column ``col``: do_bench ``ms_p50`` or graph-replay
    ``gpu_ms``); shapes where either was not timed are left out.
    """
    acc = defaultdict(lambda: defaultdict(list))
    for (su, _shape, n, alpha, m), times in conv_times(rows, col).items():
        if (su, m) != (suite, mode):
            continue
        for prov, ms in times.items():
            for base in CONV_BASELINES:
                acc[(n, alpha, prov)][base].append(times.get(base, NAN) / ms if ms > 0 else NAN)
    return {k: {b: (geomean(v), sum(1 for x in v if math.isfinite(x) and x > 0)) for b, v in d.items()}
            for k, d in acc.items()}


def _target_cell(prov, n, alpha, sp) -> str:
    cells = [f"{base} >= {goal:.2f}: {'met' if sp[base][0] >= goal else 'missed'}"
             for base, goal in conv_targets(prov, n, alpha) if math.isfinite(sp[base][0])]
    return "; ".join(cells)


def conv_target_table(rows) -> list[str]:
    """Geomean speedups per (N, alpha, provider), mode full, ResNet-50 shapes, against the targets."""
    sp = conv_speedups(rows, "resnet50", "full")
    if not sp:
        return []
    correct = defaultdict(lambda: [0, 0])
    for r in rows:
        if (r.get("suite") or "resnet50") == "resnet50" and r["mode"] == "full":
            c = correct[(int(r["N"]), int(r["alpha"]), r["provider"])]
            c[0] += r["correct"] == "True"
            c[1] += 1
    out = ["#### ResNet-50 layers 2-4, fprop + dgrad + wgrad (the targets)",
           "Geometric mean over shapes of the speedup (baseline time / provider time; > 1 is faster). "
           "Failed or wrong providers are not timed and not averaged.", "",
           "| N | alpha | provider | shapes | vs cudnn2 | vs authors | vs compile | correct | targets |",
           "|---|---|---|---|---|---|---|---|---|"]
    for (n, alpha, prov), s in sorted(sp.items()):
        ok, total = correct[(n, alpha, prov)]
        out.append(f"| {n} | {alpha} | {prov} | {s['cudnn2'][1]} | {fmt(s['cudnn2'][0])} | {fmt(s['authors'][0])} | "
                   f"{fmt(s['compile'][0])} | {ok}/{total} | {_target_cell(prov, n, alpha, s)} |")
    return out + [""]


def conv_gpu_table(rows) -> list[str]:
    """The target table's speedups from GPU time alone (``gpu_ms``, one step replayed from a CUDA graph): what
    the kernels do without host overhead. Empty for CSVs without that column."""
    sp = {k: v for k, v in conv_speedups(rows, "resnet50", "full", "gpu_ms").items() if v["cudnn2"][1]}
    if not sp:
        return []
    out = ["#### The same by GPU time (graph replay, no host overhead)",
           "Geomean over shapes of baseline gpu_ms / provider gpu_ms. The targets are judged on do_bench above; "
           "this says how much of a result is the kernels and how much the host path.", "",
           "| N | alpha | provider | shapes | vs cudnn2 | vs authors | vs compile |", "|---|---|---|---|---|---|---|"]
    out += [f"| {n} | {alpha} | {prov} | {s['cudnn2'][1]} | {fmt(s['cudnn2'][0])} | {fmt(s['authors'][0])} | "
            f"{fmt(s['compile'][0])} |" for (n, alpha, prov), s in sorted(sp.items())]
    return out + [""]


def conv_mode_table(rows) -> list[str]:
    """Geomean speedup vs cudnn2 for every suite, mode, N and alpha (columns: providers)."""
    keys = sorted({(r.get("suite") or "resnet50", r["mode"]) for r in rows})
    provs = sorted({r["provider"] for r in rows} - {"cudnn2"})
    out = ["#### Every suite and mode: geomean speedup vs cudnn2", "",
           "| suite | mode | N | alpha | " + " | ".join(provs) + " |", "|---" * (4 + len(provs)) + "|"]
    for suite, mode in keys:
        sp = conv_speedups(rows, suite, mode)
        for n, alpha in sorted({(n, a) for n, a, _ in sp}):
            cells = [fmt(sp.get((n, alpha, p), {}).get("cudnn2", (NAN, 0))[0]) for p in provs]
            out.append(f"| {suite} | {mode} | {n} | {alpha} | " + " | ".join(cells) + " |")
    return out + [""]


def conv_host_table(rows) -> list[str]:
    """Where do_bench timed a step, its p50 over the step's GPU time (``gpu_ms``: graph replay; for bwd, which no
    graph captures, the profiler's kernel time, absent from older CSVs), geomean over shapes: near 1 the
    kernels bind, well above 1 the host (launches, Python) does. Empty for CSVs without that column."""
    acc = defaultdict(list)
    for r in rows:
        ratio = fl(r.get("ms_p50")) / fl(r.get("gpu_ms"))
        if r.get("timing") == "do_bench" and math.isfinite(ratio):
            acc[(r["mode"], int(r["N"]), r["provider"])].append(ratio)
    if not acc:
        return []
    out = ["#### Host overhead: do_bench p50 / GPU time (graph replay; bwd: profiler kernel time), geomean over "
           "shapes", "",
           "| mode | N | provider | shapes | p50 / gpu_ms |", "|---|---|---|---|---|"]
    out += [f"| {m} | {n} | {p} | {len(v)} | {fmt(geomean(v))} |" for (m, n, p), v in sorted(acc.items())]
    return out + [""]


def plot_conv(rows, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = {k: v for k, v in conv_times(rows).items() if k[4] == "full"}
    suites = sorted({k[0] for k in times})
    provs = sorted({p for v in times.values() for p in v} - {"cudnn2"})
    fig, axes = plt.subplots(len(suites), 1, figsize=(max(8, len(times) * 0.12), 4 * len(suites)), squeeze=False)
    for ax, suite in zip(axes[:, 0], suites):
        keys = sorted(k for k in times if k[0] == suite)
        width = 0.8 / max(len(provs), 1)
        for i, p in enumerate(provs):
            ax.bar([x + i * width for x in range(len(keys))],
                   [times[k].get("cudnn2", NAN) / times[k].get(p, NAN) for k in keys], width, label=p)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{s} N{n} a{a}" for _, s, n, a, _ in keys], rotation=90, fontsize=5)
        ax.set_ylabel(f"{suite}: speedup vs cudnn2")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def conv_section(path, md_dir, plots=True):
    rows = read_csv(path)
    if not rows:
        return []
    r0 = rows[0]
    out = [f"### Fused adjoined conv: `{os.path.basename(path)}`",
           f"{r0['gpu_name']}, torch {r0['torch']}, triton {r0['triton']}, git {r0['git_sha']}, bf16 channels_last; "
           f"{len(rows)} rows.", ""]
    out += conv_target_table(rows) + conv_gpu_table(rows) + conv_mode_table(rows) + conv_host_table(rows)
    if plots and any(r["mode"] == "full" for r in rows):
        png = path[:-len(".csv")] + ".png"
        plot_conv(rows, png)
        out += [f"![speedups vs cudnn2, mode full]({os.path.relpath(png, md_dir)})", ""]
    return out


def loss_section(path, md_dir, plots=True):
    rows = read_csv(path)
    if not rows:
        return []
    r0 = rows[0]
    out = [f"### Fused adjoined loss, forward + both gradients: `{os.path.basename(path)}`",
           f"{r0['gpu_name']}, torch {r0['torch']}, triton {r0['triton']}, {r0['dtype']}, measured copy peak "
           f"{fl(r0['peak_gbps_measured']):.0f} GB/s.", "",
           "Mode full: forward + autograd.grad, as a training step gets them; mode kernel: the fused forward "
           "alone, which already writes both gradients (the bandwidth target's figure). GPU ms: one call "
           "replayed from a CUDA graph (no host overhead; recorded beside do_bench timings from commit c54da56 "
           "on), and the GB/s at that time.", "",
           "| B | C | provider | mode | ms p50 [p20, p80] | GB/s | % peak BW | GPU ms | GB/s at GPU ms | vs eager | "
           "vs compile | timing | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gpu = fl(r.get("gpu_ms"))
        out.append(f"| {r['N']} | {r['C']} | {r['provider']} | {r.get('mode', 'full')} | "
                   f"{fmt(fl(r['ms_p50']), 4)} [{fmt(fl(r['ms_p20']), 4)}, "
                   f"{fmt(fl(r['ms_p80']), 4)}] | {fmt(fl(r['gbps']), 0)} | {fmt(fl(r['pct_peak_bw']), 0)} | "
                   f"{fmt(gpu, 4)} | {fmt(fl(r['gbps']) * fl(r['ms_p50']) / gpu, 0)} | "
                   f"{fmt(fl(r['speedup_vs_eager']))} | {fmt(fl(r['speedup_vs_compile']))} | {r['timing']} | "
                   f"{r.get('error', '')} |")
    by_prov = defaultdict(list)
    for r in rows:
        by_prov[(r["provider"], r.get("mode", "full"))].append(fl(r["speedup_vs_eager"]))
    out += ["", "| provider, mode | geomean speedup vs eager's full step over sizes | sizes |", "|---|---|---|"]
    for prov, xs in by_prov.items():
        out.append(f"| {prov[0]}, {prov[1]} | {fmt(geomean(xs))} | {sum(1 for x in xs if math.isfinite(x))} |")
    if plots:
        png = path[:-len(".csv")] + ".png"
        plot_loss(rows, png)
        out += ["", f"![loss speedups vs eager]({os.path.relpath(png, md_dir)})"]
    return out + [""]


def plot_loss(rows, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({int(r["N"]) for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.5), squeeze=False)
    for ax, b in zip(axes[0], batches):
        for prov in sorted({r["provider"] for r in rows} - {"eager"}):
            pts = sorted((int(r["C"]), fl(r["speedup_vs_eager"])) for r in rows
                         if int(r["N"]) == b and r["provider"] == prov and r.get("mode", "full") == "full")
            ax.plot([c for c, _ in pts], [s for _, s in pts], marker="o", label=prov)
        ax.set_xscale("log")
        ax.set_title(f"B = {b}")
        ax.set_xlabel("classes C")
        ax.set_ylabel("speedup vs eager")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def e2e_section(path):
    rows = read_csv(path)
    if not rows:
        return []
    r0 = rows[0]
    out = [f"### End-to-end ResNet-50 training (224 px, alpha {r0['alpha']}, {r0['dtype']}): "
           f"`{os.path.basename(path)}`",
           f"{r0['gpu_name']}, torch {r0['torch']}, triton {r0['triton']}, git {r0['git_sha']}; "
           f"{r0['steps']} timed SGD steps on synthetic data. vs standard = images/s over standard training's.", "",
           "| N | variant | images/s | ms/step p50 [p20, p80] | peak GiB | vs standard | loss finite | note |",
           "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -int(r["N"])):
        out.append(f"| {r['N']} | {r['provider']} | {fmt(fl(r['images_per_s']), 0)} | {fmt(fl(r['ms_p50']), 1)} "
                   f"[{fmt(fl(r['ms_p20']), 1)}, {fmt(fl(r['ms_p80']), 1)}] | {fmt(fl(r['peak_mem_MB']) / 1024, 1)} | "
                   f"{fmt(fl(r['speedup_vs_standard']))} | {r['finite']} | {r['error']} |")
    return out + [""] + e2e_headline(rows)


def e2e_headline(rows) -> list[str]:
    """Per N, the fastest adjoined variant's images/s over standard training's (the headline ratio): eager
    steps against standard, and CUDA-graphed steps (``-graph``) against standard-graph."""
    out = []
    for graph, label in ((False, "Headline, adjoined over standard images/s"),
                         (True, "In CUDA graphs (adjoined-*-graph over standard-graph)")):
        best = {}
        for r in rows:
            x = fl(r["speedup_vs_standard"])
            if (r["provider"].startswith("adjoined-") and r["provider"].endswith("-graph") == graph
                    and math.isfinite(x) and x > best.get(r["N"], ("", 0.0))[1]):
                best[r["N"]] = (r["provider"], x)
        parts = [f"N={n}: {fmt(x)}x ({v})" for n, (v, x) in sorted(best.items(), key=lambda kv: -int(kv[0]))]
        out += [f"{label}: {'; '.join(parts)}.", ""] if parts else []
    return out


def _cpu_quantiles(bench: dict) -> tuple[float, float, float]:
    """(p50, p20, p80) in ms of one pytest-benchmark entry, from its raw rounds (the JSON keeps them)."""
    data = bench["stats"].get("data") or [bench["stats"]["median"]]
    p20, p50, p80 = np.quantile(np.asarray(data) * 1e3, [0.2, 0.5, 0.8])
    return float(p50), float(p20), float(p80)


def _q(v) -> str:
    return f"{v[0]:.1f} [{v[1]:.1f}, {v[2]:.1f}]"


def cpu_section(path):
    with open(path) as f:
        data = json.load(f)
    info = data.get("machine_info", {})
    out = [f"### CPU: `{os.path.basename(path)}`",
           f"{info.get('cpu', {}).get('brand_raw', 'cpu')}, {info.get('cpu', {}).get('count', '?')} cores, "
           f"python {info.get('python_version', '?')}. Medians of pytest-benchmark rounds.", ""]
    lat = defaultdict(dict)
    steps = {}
    for b in data["benchmarks"]:
        e, q = b["extra_info"], _cpu_quantiles(b)
        if "kind" in e:
            steps[e["kind"]] = q
        else:
            lat[(e["model"], e["batch"], e["variant"])][e["net"]] = q
    out += ["| model | batch | variant | full ms p50 [p20, p80] | small ms p50 [p20, p80] | small speedup (p50) |",
            "|---|---|---|---|---|---|"]
    for (m, bsz, v), d in sorted(lat.items()):
        if "full" in d and "small" in d:
            out.append(f"| {m} | {bsz} | {v} | {_q(d['full'])} | {_q(d['small'])} | "
                       f"{d['full'][0] / d['small'][0]:.2f}x |")
    if steps:
        out += ["", "| training step (ResNet-18 CIFAR, alpha 4, batch 64) | ms p50 [p20, p80] | time / compact's |",
                "|---|---|---|"]
        base = steps.get("compact", (float("nan"),))[0]
        for k, v in steps.items():
            out.append(f"| {k} | {_q(v)} | {v[0] / base:.2f}x |")
    return out + [""]


def build_report(results: str = RESULTS, out: str = os.path.join(HERE, "RESULTS.md"), plots: bool = True) -> str:
    """Write the markdown report of every result file in ``results`` to ``out``; returns its text."""
    lines = ["# Benchmark results", "",
             "Generated by `python bench/report.py` from the raw files in `bench/results/`; do not edit by hand.", ""]
    md_dir = os.path.dirname(os.path.abspath(out))
    for path in sorted(glob.glob(os.path.join(results, "*")), reverse=True):
        if path.endswith("-conv.csv"):
            lines += conv_section(path, md_dir, plots)
        elif path.endswith("-loss.csv"):
            lines += loss_section(path, md_dir, plots)
        elif path.endswith("-e2e.csv"):
            lines += e2e_section(path)
        elif path.endswith("-cpu.json"):
            lines += cpu_section(path)
    text = "\n".join(lines) + "\n"
    with open(out, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=RESULTS, help="folder of result files")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    build_report(args.results, args.out, plots=not args.no_plots)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
