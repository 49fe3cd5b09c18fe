"""End-of-run reporting: parameters, FLOPs and latency of the exported nets, ONNX export, summary.json,
curves.png and the text table."""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
import warnings

import torch

from ..layout import as_layout, to_training_layout


def count_params(net) -> int | None:
    return None if net is None else sum(p.numel() for p in net.parameters())


def count_flops(net, shape) -> int | None:
    """FLOPs per image (torch's FlopCounterMode: 2 per multiply-add) of ``net`` in eval on a batch of one."""
    if net is None:
        return None
    from torch.utils.flop_counter import FlopCounterMode
    net = copy.deepcopy(net).cpu().float().eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, *shape))
    return int(fc.get_total_flops())


def latency_ms(net, shape, batch: int, device: torch.device, runs: int = 10, warmup: int = 3) -> float | None:
    """Median wall time (ms) of ``runs`` timed calls of ``net`` on a ``[batch, *shape]`` input, in eval and
    inference_mode, after ``min(warmup, runs)`` untimed ones. None when ``net`` is None or ``runs`` is 0."""
    if net is None or runs < 1:
        return None
    warmup = max(1, min(warmup, runs))
    net, fmt = to_training_layout(copy.deepcopy(net).float().eval(), device)
    x = as_layout(torch.randn(batch, *shape, device=device), fmt)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def export_onnx(net, shape, path: str) -> float | None:
    """Export ``net`` (eval, CPU, fp32) to ONNX opset 17 with a dynamic batch; return onnxruntime's max
    relative error against PyTorch on a random batch of 4 (None when onnxruntime is missing)."""
    net = copy.deepcopy(net).cpu().float().eval()
    x = torch.randn(1, *shape)
    kw = dict(input_names=["input"], output_names=["logits"], opset_version=17,
              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (x,), path, dynamo=False, **kw)
        except Exception:  # noqa: BLE001 - the legacy exporter may be gone in a later torch
            torch.onnx.export(net, (x,), path, dynamo=True, **kw)
    return onnx_rel_err(net, path, shape)


def onnx_rel_err(net, path: str, shape, batch: int = 4) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.inference_mode():
        ref = net(x)
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def versions() -> dict:
    from importlib import metadata

    def ver(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    from .. import __version__
    return {"torch": torch.__version__, "triton": ver("triton"), "python": platform.python_version(),
            "adjoined_kernels": __version__, "onnxruntime": ver("onnxruntime"), "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "cpu_threads": torch.get_num_threads()}


def measure(full, small, shape, bench_runs: int) -> dict:
    """Params, FLOPs and latency (CPU, and GPU if present; batch 1 and 64) of the exported nets."""
    out = {"params_full": count_params(full), "params_small": count_params(small),
           "flops_full": count_flops(full, shape), "flops_small": count_flops(small, shape)}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        for b in (1, 64):
            for name, net in (("full", full), ("small", small)):
                out[f"latency_{dev.type}_b{b}_ms_{name}"] = latency_ms(net, shape, b, dev, bench_runs)
    return out


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def table(summary: dict) -> str:
    """An aligned text table: metric | full | small | ratio (full / small)."""
    rows = [("test accuracy", "acc", "{:.4f}"), ("params", "params", "{:,}"), ("FLOPs / image", "flops", "{:,}")]
    for dev in ("cpu", "cuda"):
        for b in (1, 64):
            rows.append((f"latency {dev} b{b} (ms)", f"latency_{dev}_b{b}_ms", "{:.3f}"))
    lines = [("metric", "full", "small", "full/small")]
    for label, key, fmt in rows:
        f, s = summary.get(f"{key}_full"), summary.get(f"{key}_small")
        if key.startswith("latency") and f is None and s is None:
            continue
        ratio = f"{f / s:.2f}x" if f is not None and s else "-"
        lines.append((label, "-" if f is None else fmt.format(f), "-" if s is None else fmt.format(s), ratio))
    w = [max(len(r[i]) for r in lines) for i in range(4)]
    text = [" | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in lines]
    text.insert(1, "-+-".join("-" * x for x in w))
    return "\n".join(text)


def plot_curves(history: list, path: str, lam_fn=None) -> None:
    """curves.png: train loss/CE/KL, test accuracy of both nets, and lambda / LR, per epoch.

    ``lam_fn(t)``, if given, draws the per-step schedule lambda(t) over the epochs as a line."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]

    def series(k):
        return [r.get(k) if r.get(k) is not None else float("nan") for r in history]

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for k in ("loss", "ce", "kl"):
        ax[0].plot(ep, series(k), marker="o", label=k)
    ax[0].set(title="train loss", xlabel="epoch")
    for k, style in (("test_acc_full", "-"), ("test_acc_small", "-"), ("train_acc_full", ":"),
                     ("train_acc_small", ":")):
        ax[1].plot(ep, series(k), style, marker="o", label=k)
    ax[1].set(title="accuracy", xlabel="epoch")
    if lam_fn is not None and ep:
        ts = [i / 200 for i in range(201)]
        ax[2].plot([t * ep[-1] for t in ts], [lam_fn(t) for t in ts], color="C0", alpha=0.5, label="lambda(t)")
    ax[2].plot(ep, series("lambda"), "o", color="C0", label="lambda (end of epoch)")
    ax2 = ax[2].twinx()
    ax2.plot(ep, series("lr"), "--", color="gray", label="lr")
    ax2.set_ylabel("lr")
    ax2.legend(loc="lower right", fontsize=8)
    ax[2].set(title="lambda(t) and learning rate", xlabel="epoch")
    for a in ax:
        a.grid(alpha=0.3)
        a.xaxis.get_major_locator().set_params(integer=True)
        a.legend(loc="best", fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def deployable_nets(args, net):
    """``(full, small)`` plain networks (eval, fp32) of the trained ``net``; None for a missing branch."""
    from ..export import export_full, export_small
    if args.method == "adjoined":
        full, small = export_full(net), export_small(net)
    elif args.method == "standard":
        full, small = copy.deepcopy(net), None
    elif args.method in ("kd", "kddp", "pwh"):  # the student alone, without its teacher
        full, small = None, copy.deepcopy(net.student)
    else:
        full, small = None, copy.deepcopy(net)
    return [None if m is None else m.float().eval().to(memory_format=torch.contiguous_format)
            for m in (full, small)]


def backends_chosen(args, device, out: str, log=print) -> dict:
    """What ``--backend auto`` ran, per op pass: ``{"conv2d_fprop": {"cuda": 12, "reference": 8}, ...}`` over
    the layer geometries it timed (docs/kernels.md, "auto"); each geometry's timings go to OUT/auto.json.
    An explicit backend, or CPU tensors (where auto is the reference), gives ``{"all": name}``."""
    if args.backend != "auto" or device.type != "cuda":
        return {"all": args.backend if args.backend != "auto" else "reference"}
    from .. import _autotune
    rows = _autotune.report()
    counts: dict = {}
    for r in rows:
        per_op = counts.setdefault(r["op"], {})
        per_op[r["backend"]] = per_op.get(r["backend"], 0) + 1
    with open(os.path.join(out, "auto.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    log("backend auto chose, per pass: " + ("; ".join(f"{op} {c}" for op, c in counts.items()) or
                                          "nothing timed (ADJOINED_AUTOTUNE=0, or torch.compile: fixed order)"))
    return counts


def finish(args, ds, device, net, history, log=print) -> dict:
    """Export, measure and report a finished run: summary.json, curves.png, ONNX + .pt, and the table."""
    out = args.out
    full, small = deployable_nets(args, net)
    shape = ds.sample_shape
    last = history[-1]
    summary = {"method": args.method, "dataset": ds.name, "arch": args.arch, "epochs": last["epoch"],
               "acc_full": last["test_acc_full"], "acc_small": last["test_acc_small"],
               "params_adjoined": count_params(net) if args.method == "adjoined" else None}
    summary.update(measure(full, small, shape, args.bench_runs))
    summary.update(getattr(net, "report", {}))  # kddp/pwh: neurons kept, params before/after pruning, widths
    summary["flops_note"] = "per image, torch.utils.flop_counter (2 FLOPs per multiply-add)"
    summary["train_time_s"] = sum(r["time"] for r in history)
    deploy_name, deploy = ("full", full) if args.method == "standard" else ("small", small)
    torch.save(deploy.cpu(), os.path.join(out, f"{deploy_name}.pt"))
    if not args.no_onnx:
        path = os.path.join(out, f"{deploy_name}.onnx")
        try:
            summary["onnx"] = os.path.basename(path)
            summary["onnx_max_rel_err"] = export_onnx(deploy, shape, path)
        except Exception as e:  # noqa: BLE001 - ONNX is a by-product; report, do not lose the run
            summary["onnx"] = None
            summary["onnx_error"] = f"{type(e).__name__}: {e}"
            log(f"warning: ONNX export failed: {summary['onnx_error']}")
    summary.update({"device": str(device), "backend": args.backend, "amp": bool(args.amp and device.type == "cuda"),
                    "backends_chosen": backends_chosen(args, device, out, log), "versions": versions(),
                    "args": vars(args)})
    write_json(os.path.join(out, "summary.json"), summary)
    from ..schedules import lambda_schedule
    lam_fn = (lambda t: lambda_schedule(t, args.lam_schedule, args.lam_scale)) if args.method == "adjoined" else None
    plot_curves(history, os.path.join(out, "curves.png"), lam_fn)
    log("")
    log(table(summary))
    log(f"\ntrained {summary['epochs']} epochs in {summary['train_time_s']:.0f}s; outputs in {out}")
    return summary
