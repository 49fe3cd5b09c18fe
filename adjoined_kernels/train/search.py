"""DAN in the trainer: the search's per-step and per-epoch hooks, its report (arch.json, search.png) and
``--arch-json``.

``adjoined-search`` trains the search network of the paper's Sec. 5 (``docs/dan.md``): the weights with the
trainer's optimiser, the gate logits eta with a separate Adam (``--arch-lr``), both on every batch, on the
loss of :func:`adjoined_kernels.dan.dan_loss` (with ``--flops-target``: the band term keyed on the argmax
architecture's FLOPs). tau follows :func:`adjoined_kernels.dan.tau_at_step` every step (or the paper's
:func:`adjoined_kernels.dan.tau_at` per epoch). Every epoch's eval runs the architecture that would be
exported, projected to the budget, through the super-network with one-hot gates.
"""
from __future__ import annotations

import json
import os

import torch

from ..dan import tau_at, tau_at_step
from ..models.flops import adjoined_flops, shared_flops
from ..models.widths import StageWidths

ARCH_FORMAT = 1
OPTIONS = ("search_alphas", "flops_weight", "flops_target", "flops_tolerance", "tau_schedule", "tau0", "tau_end",
           "tau_decay", "arch_lr", "seed", "epochs", "batch_size", "lr", "subset", "lam_schedule", "lam_scale")


def make_arch_optimizer(args, net) -> torch.optim.Optimizer:
    """Adam on the gate logits (no weight decay: it would pull every candidate toward equal odds)."""
    return torch.optim.Adam(net.arch_parameters(), lr=args.arch_lr)


def start_epoch(args, net, epoch: int) -> None:
    """Set tau for ``epoch`` under the per-epoch schedule (so a resumed run gets the same tau as an unbroken
    one); the per-step schedule sets it in :func:`set_step_tau`."""
    if args.tau_schedule == "epoch":
        net.tau = tau_at(epoch, args.tau0, args.tau_decay)


def set_step_tau(args, net, step: int, total: int) -> None:
    """Set tau for global step ``step`` of ``total`` under the per-step schedule (a function of the step, so
    ``--resume`` continues it exactly)."""
    if args.tau_schedule == "step":
        net.tau = tau_at_step(step, total, args.tau0, args.tau_end)


def budget(args, net, hw) -> float | None:
    """The FLOPs budget per image at ``(H, W)``: ``--flops-target`` times the full network's; None without."""
    return None if args.flops_target is None else args.flops_target * net.full_flops(hw)


def check_budget(args, ds, net) -> None:
    """ValueError (naming the reachable FLOPs) when no architecture of the search meets the budget's band."""
    hw = tuple(ds.sample_shape[1:])
    if args.flops_target is not None:
        net.project(budget(args, net, hw), args.flops_tolerance, hw)


def projection(args, net, hw=None):
    """The architecture to export at ``hw`` (default: the last forward's size): the projection onto the
    budget's band, or the argmax without ``--flops-target`` (as a :class:`~adjoined_kernels.models.project.
    Projection` either way)."""
    from ..models.project import Projection
    b = budget(args, net, net._hw(hw))
    if b is not None:
        return net.project(b, args.flops_tolerance, hw)
    with torch.no_grad():
        logp = [torch.log_softmax(g.eta.double(), 0) for g in net.search.gates]
    choice = [int(lp.argmax()) for lp in logp]
    top = sum(float(lp.max()) for lp in logp)
    widths = net.search.argmax_widths()
    return Projection(choice, widths, int(adjoined_flops(net, widths, net._hw(hw))), top, top)


def eval_projected(args, net) -> dict:
    """Before an epoch's eval: make eval forwards run the architecture to export (one-hot gates, the
    super-network's weights), and return its record: FLOPs, widths and log-probabilities."""
    p = projection(args, net)
    net.search.eval_choice = p.choice
    return {"projected_flops": p.flops, "projected_widths": widths_to_json(p.widths),
            "log_prob_given_up": p.argmax_log_prob - p.log_prob}


def epoch_record(net, monitor: dict) -> dict:
    """The search's state at the end of an epoch, for metrics.jsonl (at the last forward's image size).
    ``test_acc_small`` of such a record is that of the projected network (:func:`eval_projected`)."""
    with torch.no_grad():
        expected = float(net.expected_small_flops())
        argmax = int(round(float(net.argmax_small_flops())))
    full = net.full_flops()
    return {"tau": net.tau, "expected_flops": expected, "flops_ratio": expected / full, "full_flops": full,
            "argmax_flops": argmax, **monitor, "probs": net.search.probabilities(), "eta": net.search.etas(),
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
    """The content of arch.json: the argmax and the projected (exported) widths per layer with eta and
    softmax(eta); FLOPs of both small networks and the full one (counted by ``torch.utils.flop_counter`` on
    the exported networks; total and the searched part, i.e. without the shared stem and layer1); the
    budget's band and the log-probability the projection gave up; params; every search option."""
    from .. import models as ak_models
    from ..export import export_full, export_small
    from .report import count_flops, count_params
    shape = ds.sample_shape
    hw = tuple(shape[1:])
    p = projection(args, net, hw)
    argmax = net.search.argmax_widths()
    ctor = getattr(ak_models, f"adjoined_{args.arch}")

    def build(widths):
        return ctor(num_classes=ds.num_classes, in_channels=ds.in_channels, stem=args.stem, width=args.width,
                    small_widths=widths)
    found, top = build(p.widths), build(argmax)
    small, full = export_small(found), export_full(found)
    counts = {"small": count_flops(small, shape), "argmax": count_flops(export_small(top), shape),
              "full": count_flops(full, shape)}
    shared = int(shared_flops(net, hw)[0])
    b = budget(args, net, hw)
    probs, etas = net.search.probabilities(), net.search.etas()
    layers = [{"name": g.name, "full": g.full, "candidates": list(g.widths), "probs": probs[g.name],
               "eta": etas[g.name], "argmax": g.argmax_width(), "width": g.widths[k]}
              for g, k in zip(net.search.gates, p.choice)]
    last = history[-1] if history else {}
    return {"format": ARCH_FORMAT, "arch": args.arch, "width": args.width, "stem": args.stem,
            "in_channels": ds.in_channels, "num_classes": ds.num_classes, "dataset": ds.name,
            "input_size": list(hw), "search_alphas": list(net.search.alphas), "tau": net.tau,
            "epochs": len(history), "small_widths": widths_to_json(p.widths), "argmax_widths": widths_to_json(argmax),
            "layers": layers,
            "flops": {"expected_small": float(net.expected_small_flops(hw).detach()), **counts,
                      "shared": shared, **{f"{k}_searched": v - shared for k, v in counts.items()},
                      "budget": b, "tolerance": args.flops_tolerance if b is not None else None,
                      "band": [(1 - args.flops_tolerance) * b, b] if b is not None else None,
                      "target_ratio": args.flops_target},
            "log_prob": {"projected": p.log_prob, "argmax": p.argmax_log_prob,
                         "given_up": p.argmax_log_prob - p.log_prob},
            "params": {"small": count_params(small), "argmax": count_params(export_small(top)),
                       "full": count_params(full)},
            "search_options": {k: getattr(args, k, None) for k in OPTIONS},
            "supernet_test_acc_full": last.get("test_acc_full"),
            "projected_test_acc_small": last.get("test_acc_small")}


def plot_search(history: list, path: str, candidates: dict, band=None) -> None:
    """search.png: per searchable width, each candidate's softmax(eta) over epochs (epoch 0: the uniform
    start); and the FLOPs of the argmax and the projected networks (and E[FLOPs]) over the full network's,
    against the band ``(low, high)`` (fractions of the full network's FLOPs, or None).
    ``candidates``: ``{gate name: candidate widths}``."""
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
        ax.set(title=f"{name}: softmax(eta)", ylim=(0, 1), xlabel="epoch")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6, loc="upper left")
    ax = axes[len(names)]
    full = [r["full_flops"] for r in history]
    for key, label, style in (("argmax_flops", "argmax net", "o-"), ("projected_flops", "projected net", "s-"),
                              ("expected_flops", "E[FLOPs]", ".:")):
        ax.plot(ep[1:], [r[key] / f for r, f in zip(history, full)], style, label=label)
    if band is not None:
        ax.axhspan(band[0], band[1], color="g", alpha=0.2, label="band")
    ax.set(title="small net FLOPs / full", xlabel="epoch")
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
    """One line per searchable width: full width, candidate probabilities, argmax and exported widths; then
    the FLOPs of both small networks against the budget."""
    lines = [f"{'layer':<16} {'full':>5}  {'candidates: softmax(eta)':<44} argmax exported"]
    for lay in arch["layers"]:
        cands = "  ".join(f"{c}:{p:.2f}" for c, p in zip(lay["candidates"], lay["probs"]))
        lines.append(f"{lay['name']:<16} {lay['full']:>5}  {cands:<44} {lay['argmax']:>6} {lay['width']:>8}")
    fl, pa = arch["flops"], arch["params"]
    for key, what in (("argmax", "argmax small net  "), ("small", "exported small net")):
        lines.append(f"{what}: {pa[key]:,} params, {fl[key]:,} FLOPs ({fl[key] / fl['full']:.4f} of the full "
                     f"net's {fl['full']:,}; searched part {fl[key + '_searched']:,})")
    if fl["budget"] is not None:
        lines.append(f"budget {fl['budget']:,.0f} FLOPs, band [{fl['band'][0]:,.0f}, {fl['band'][1]:,.0f}]: "
                     f"exported at {fl['small'] / fl['budget']:.4f} of the budget, argmax at "
                     f"{fl['argmax'] / fl['budget']:.4f}; log-probability given up "
                     f"{arch['log_prob']['given_up']:.3f}")
    lines.append(f"E[FLOPs] {fl['expected_small']:,.0f}")
    return "\n".join(lines)


def finish_search(args, ds, net, history, log=print) -> dict:
    """Write OUT/arch.json and OUT/search.png and print the searched architecture."""
    from .report import write_json
    arch = arch_summary(args, ds, net, history)
    write_json(os.path.join(args.out, "arch.json"), arch)
    band = None if args.flops_target is None else ((1 - args.flops_tolerance) * args.flops_target, args.flops_target)
    plot_search(history, os.path.join(args.out, "search.png"), {g.name: g.widths for g in net.search.gates}, band)
    log("")
    log(arch_table(arch))
    path = os.path.join(args.out, "arch.json")
    log(f"\nsearched for {len(history)} epochs; outputs in {args.out} (retrain with: adjoined-train "
        f"--arch {args.arch} --width {args.width} --stem {args.stem} --arch-json {path})")
    return arch
