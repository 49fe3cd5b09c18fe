"""DAN in the trainer: the search's per-epoch hooks, its report (arch.json, search.png) and ``--arch-json``.

``adjoined-search`` trains the search network of the paper's Sec. 5 (``docs/dan.md``): the weights with the
trainer's optimiser, the gate logits eta with a separate Adam (``--arch-lr``), both on every batch, on the
loss of :func:`adjoined_kernels.dan.dan_loss`. tau follows :func:`adjoined_kernels.dan.tau_at` per epoch.
"""
from __future__ import annotations

import json
import os

import torch

from ..dan import tau_at
from ..models.widths import StageWidths

ARCH_FORMAT = 1


def make_arch_optimizer(args, net) -> torch.optim.Optimizer:
    """Adam on the gate logits (no weight decay: it would pull every candidate toward equal odds)."""
    return torch.optim.Adam(net.arch_parameters(), lr=args.arch_lr)


def start_epoch(args, net, epoch: int) -> None:
    """Set tau for ``epoch`` from the schedule (so a resumed run gets the same tau as an unbroken one)."""
    net.tau = tau_at(epoch, args.tau0, args.tau_decay)


def epoch_record(net) -> dict:
    """The search's state at the end of an epoch, for metrics.jsonl (at the last forward's image size)."""
    with torch.no_grad():
        expected = float(net.expected_small_flops())
    full = net.full_flops()
    return {"tau": net.tau, "expected_flops": expected, "flops_ratio": expected / full,
            "probs": net.search.probabilities(),
            "widths": [g.argmax_width() for g in net.search.gates]}


def widths_to_json(widths: list[StageWidths]) -> list[dict]:
    return [{"out": int(s.out), "inner": [[int(w) for w in blk] for blk in s.inner]} for s in widths]


def widths_from_json(items) -> list[StageWidths]:
    return [StageWidths(int(s["out"]), [[int(w) for w in blk] for blk in s["inner"]]) for s in items]


def load_arch_json(path: str, args, ds) -> list[StageWidths]:
    """The searched small widths of ``path`` (an ``arch.json`` of ``adjoined-search``) for this run.

    Raises:
        ValueError: a missing or unreadable file, or one searched for another architecture (``--arch``,
            ``--width``, ``--stem``) or another number of input channels or classes; the message names both.
    """
    try:
        with open(path) as f:
            arch = json.load(f)
        widths = widths_from_json(arch["small_widths"])
    except FileNotFoundError:
        raise ValueError(f"--arch-json {path}: no such file; run adjoined-search first (it writes OUT/arch.json)")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--arch-json {path}: not an arch.json of adjoined-search ({type(e).__name__}: {e})")
    want = {"arch": args.arch, "width": args.width, "stem": args.stem, "in_channels": ds.in_channels,
            "num_classes": ds.num_classes}
    diff = [f"{k} {arch.get(k)!r} (searched) vs {v!r} (now)" for k, v in want.items() if arch.get(k) != v]
    if diff:
        raise ValueError(f"--arch-json {path} was searched for another network: " + "; ".join(diff))
    return widths


def arch_summary(args, ds, net, history) -> dict:
    """The content of arch.json: per-layer widths and probabilities, FLOPs and params of the searched and
    full networks (counted by ``torch.utils.flop_counter`` on the exported networks)."""
    from .. import models as ak_models
    from ..export import export_full, export_small
    from .report import count_flops, count_params
    widths = net.searched_widths()
    ctor = getattr(ak_models, f"adjoined_{args.arch}")
    found = ctor(num_classes=ds.num_classes, in_channels=ds.in_channels, stem=args.stem, width=args.width,
                 small_widths=widths)
    shape = ds.sample_shape
    small, full = export_small(found), export_full(found)
    probs = net.search.probabilities()
    layers = [{"name": g.name, "full": g.full, "candidates": list(g.widths),
               "probs": probs[g.name], "width": g.argmax_width()} for g in net.search.gates]
    last = history[-1] if history else {}
    return {"format": ARCH_FORMAT, "arch": args.arch, "width": args.width, "stem": args.stem,
            "in_channels": ds.in_channels, "num_classes": ds.num_classes, "dataset": ds.name,
            "input_size": list(shape[1:]), "search_alphas": list(net.search.alphas), "tau": net.tau,
            "epochs": len(history), "small_widths": widths_to_json(widths), "layers": layers,
            "flops": {"expected_small": float(net.expected_small_flops(shape[1:]).detach()),
                      "small": count_flops(small, shape), "full": count_flops(full, shape),
                      "target_ratio": args.flops_target},
            "params": {"small": count_params(small), "full": count_params(full)},
            "supernet_test_acc_full": last.get("test_acc_full"), "supernet_test_acc_small": last.get("test_acc_small")}


def plot_search(history: list, path: str, candidates: dict, target: float | None = None) -> None:
    """search.png: per searchable width, each candidate's probability over epochs (epoch 0: the uniform
    start); and E[FLOPs] / full against the target. ``candidates``: ``{gate name: candidate widths}``."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = list(candidates)
    ncols = min(6, len(names) + 1)
    nrows = -(-(len(names) + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    axes = axes.ravel()
    ep = [0] + [r["epoch"] for r in history]
    for ax, name in zip(axes, names):
        widths = candidates[name]
        for i, w in enumerate(widths):
            ax.plot(ep, [1 / len(widths)] + [r["probs"][name][i] for r in history], marker=".", label=f"c={w}")
        ax.set(title=name, ylim=(0, 1), xlabel="epoch")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6, loc="upper left")
    ax = axes[len(names)]
    ax.plot(ep[1:], [r["flops_ratio"] for r in history], marker="o", color="k", label="E[FLOPs] / full")
    if target is not None:
        ax.axhline(target, ls="--", color="r", label="target")
    ax.set(title="expected FLOPs of the small net", xlabel="epoch")
    ax.legend(fontsize=7)
    for a in axes[:len(names) + 1]:
        a.xaxis.get_major_locator().set_params(integer=True)
    for a in axes[len(names) + 1:]:
        a.axis("off")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def arch_table(arch: dict) -> str:
    """One line per searchable width: full width, candidate probabilities, chosen width."""
    lines = [f"{'layer':<16} {'full':>5}  {'candidates: probability':<44} chosen"]
    for lay in arch["layers"]:
        cands = "  ".join(f"{c}:{p:.2f}" for c, p in zip(lay["candidates"], lay["probs"]))
        lines.append(f"{lay['name']:<16} {lay['full']:>5}  {cands:<44} {lay['width']}")
    fl, pa = arch["flops"], arch["params"]
    lines.append(f"searched small net: {pa['small']:,} params, {fl['small']:,} FLOPs ({fl['small'] / fl['full']:.3f} "
                 f"of the full net's {fl['full']:,}); E[FLOPs] {fl['expected_small']:,.0f}")
    return "\n".join(lines)


def finish_search(args, ds, net, history, log=print) -> dict:
    """Write OUT/arch.json and OUT/search.png and print the searched architecture."""
    from .report import write_json
    arch = arch_summary(args, ds, net, history)
    write_json(os.path.join(args.out, "arch.json"), arch)
    plot_search(history, os.path.join(args.out, "search.png"), {g.name: g.widths for g in net.search.gates},
                args.flops_target)
    log("")
    log(arch_table(arch))
    path = os.path.join(args.out, "arch.json")
    log(f"\nsearched for {len(history)} epochs; outputs in {args.out} (retrain with: adjoined-train "
        f"--arch {args.arch} --width {args.width} --stem {args.stem} --arch-json {path})")
    return arch
