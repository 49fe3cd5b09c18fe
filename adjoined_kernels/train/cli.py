"""``adjoined-train``: train an adjoined ResNet (or a baseline) and report both networks; ``adjoined-search``:
the DAN width search, which writes ``arch.json`` for ``adjoined-train --arch-json`` (docs/dan.md).

``adjoined-train --out runs/demo`` with no other argument is the demo: Fashion-MNIST, adjoined ResNet-18
(cifar stem, base width 16, alpha 4), 2 epochs, SGD+Nesterov with one-cycle LR, quadratic lambda(t).
Every default lives in :data:`DEFAULTS` below.

Outputs in ``--out``: metrics.jsonl (one line per epoch), checkpoint.pt (every epoch, atomic), summary.json,
curves.png, small.onnx + small.pt (full.onnx + full.pt for ``--method standard``). ``adjoined-search``
writes metrics.jsonl, checkpoint.pt, arch.json and search.png.

Under ``torchrun --nproc-per-node K`` the run is data-parallel (:mod:`.distributed`): ``--batch-size`` is the
global batch, rank 0 writes every file.

Exit codes: 0 done, 1 ``--check`` found a mismatch, 2 bad arguments or a missing/malformed dataset, 3 the
loss or a gradient became non-finite (nothing non-finite was saved).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from .validate import ADJOIN_PREFIXES

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet100", "resnet101"]

# The demo defaults, in one place.
DEFAULTS = dict(
    method="adjoined", dataset="fashion-mnist", data_dir=None, image_size=None,
    arch="resnet18", width=16, alpha=4, stem="cifar",
    epochs=2, augment="auto", batch_size=128, eval_batch_size=500,
    optimizer="sgd", lr=0.15, momentum=0.9, weight_decay=5e-4,
    schedule="onecycle", pct_start=0.25, div_factor=10.0, final_div_factor=100.0, milestones=[150, 180, 210],
    gamma=0.1,
    lam_schedule="quadratic", lam_scale=1.0, temperature=1.0,
    backend="auto", seed=0, device="auto", amp=False, deterministic=False, cuda_graphs=False, workers=0,
    out="runs/adjoined", bench_runs=10, check_batch=32,
)


def build_parser(search: bool = False) -> argparse.ArgumentParser:
    """The parser of ``adjoined-train``, or with ``search`` of ``adjoined-search`` (no --method/--alpha/
    --arch-json; the search options instead)."""
    from ..schedules import SCHEDULES
    from .data import AUTO_AUGMENT_EPOCHS, DATASETS
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="adjoined-search" if search else "adjoined-train",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=SEARCH_DESCRIPTION if search else
        "Train an adjoined network (full + channel-prefix small, loss CE + lambda(t) KL) or a baseline, then "
        "export and measure both networks.")
    g = p.add_argument_group("method and data")
    if search:
        p.set_defaults(method="search", alpha=1, arch_json=None)
    else:
        g.add_argument("--method", choices=["adjoined", "standard", "small", "kd", "kddp", "pwh"],
                       default=d["method"],
                       help="adjoined: both nets with the adjoined loss; standard: the plain full net, CE only; "
                            "small: the plain small net alone from scratch (export_small of a fresh model), CE "
                            "only; kd, kddp, pwh: the comparison baselines, from a --teacher "
                            "(docs/baselines.md)")
    g.add_argument("--dataset", choices=DATASETS, default=d["dataset"])
    g.add_argument("--data-dir", default=d["data_dir"],
                   help="dataset directory (default for fashion-mnist: /usr/share/datasets/fashion-mnist)")
    g.add_argument("--image-size", type=int, default=d["image_size"],
                   help="imagefolder only: the square crop the network sees (RandomResizedCrop for training, "
                        "resize to size/0.875 and centre crop for evaluation; default 64, ImageNet uses 224)")
    g.add_argument("--subset", type=int, default=None, metavar="N",
                   help="use only N train and N test images (smoke tests)")
    g.add_argument("--augment", choices=["auto", "on", "off"], default=d["augment"],
                   help="random crop with padding, and flip where it suits the data. auto: on for runs of at "
                        f"least {AUTO_AUGMENT_EPOCHS} epochs; shorter runs underfit, and augmentation then costs "
                        "accuracy (the 2-epoch demo: 0.904 with it, 0.920 without)")
    g.add_argument("--no-augment", dest="augment", action="store_const", const="off",
                   default=argparse.SUPPRESS, help="same as --augment off")
    g.add_argument("--workers", type=int, default=d["workers"],
                   help="DataLoader worker processes that read, decode and augment batches (0: in this process). "
                        "Use 4-8 per GPU for imagefolder; the in-memory datasets need none")
    g = p.add_argument_group("model")
    if search:
        g.add_argument("--arch", choices=ARCHS, default=d["arch"])
    else:
        g.add_argument("--arch", type=arch_name, default=d["arch"], metavar="ARCH",
                       help=f"one of {', '.join(ARCHS)}, or tv:NAME / timm:NAME for a CNN of torchvision.models "
                            "or timm adjoined by ak.adjoin (e.g. tv:mobilenet_v2, timm:mobilenetv3_large_100; "
                            "docs/adjoin.md)")
        g.add_argument("--adjoin-start", default=None, metavar="PATH",
                       help="tv:/timm: models: the module path where the two branches split (default: the documented "
                            "value per model, docs/adjoin.md)")
        g.add_argument("--pretrained", default=None, metavar="PATH",
                       help="tv:/timm: models: a local state dict (timm: a checkpoint file) loaded before adjoining "
                            "(never downloaded)")
    g.add_argument("--width", type=int, default=d["width"],
                   help="base width (64 in torchvision); adjoined ResNets only")
    if search:
        _search_options(p)
    else:
        g.add_argument("--alpha", type=int, default=d["alpha"], help="the small net has width/alpha channels")
        g.add_argument("--arch-json", default=None, metavar="PATH",
                       help="the small net's per-layer widths from an arch.json of adjoined-search (DAN), instead "
                            "of --alpha; --arch, --width and --stem must be the searched ones")
    g.add_argument("--stem", choices=["cifar", "imagenet"], default=d["stem"],
                   help="cifar: a stride-1 stem without max-pool, for small images (tv: models too, as "
                        "docs/adjoin.md says per model); imagenet: the standard stem")
    g.add_argument("--backend", choices=["auto", "reference", "triton", "cuda"], default=d["backend"])
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d["epochs"])
    g.add_argument("--batch-size", type=int, default=d["batch_size"])
    g.add_argument("--eval-batch-size", type=int, default=d["eval_batch_size"])
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default=d["optimizer"],
                   help="sgd: momentum with Nesterov; adamw")
    g.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate")
    g.add_argument("--momentum", type=float, default=d["momentum"])
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--schedule", choices=["onecycle", "cosine", "multistep"], default=d["schedule"],
                   help="LR schedule, stepped per batch")
    g.add_argument("--pct-start", type=float, default=d["pct_start"], help="onecycle: warm-up fraction")
    g.add_argument("--div-factor", type=float, default=d["div_factor"], help="onecycle: initial lr = lr/div")
    g.add_argument("--final-div-factor", type=float, default=d["final_div_factor"],
                   help="onecycle: final lr = initial lr / this")
    g.add_argument("--milestones", type=int, nargs="+", default=d["milestones"],
                   help="multistep: epochs at which the LR is multiplied by --gamma")
    g.add_argument("--gamma", type=float, default=d["gamma"], help="multistep: LR decay factor")
    g.add_argument("--lam-schedule", choices=sorted(SCHEDULES), default=d["lam_schedule"],
                   help="lambda(t), t = step / total_steps")
    g.add_argument("--lam-scale", type=float, default=d["lam_scale"], help="c in lambda(t) = c f(t)")
    g.add_argument("--temperature", type=float, default=d["temperature"], help="KL temperature T")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--device", default=d["device"], help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (ignored on CPU)")
    g.add_argument("--deterministic", action="store_true",
                   help="bitwise-repeatable GPU runs (and resumes): deterministic cuDNN and PyTorch algorithms, "
                        "no cudnn.benchmark; slower. CPU runs are repeatable either way")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="capture forward, loss and backward in a CUDA graph at the first step and replay it: "
                        "removes the host overhead that dominates small-batch steps (CUDA only; the optimizer "
                        "and LR schedule stay eager)")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default). 1 is much faster when other processes "
                        "load the cores: OpenMP threads spin-wait when oversubscribed")
    g.add_argument("--out", default=d["out"], help="output directory")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue from OUT/checkpoint.pt (or CKPT) with the same arguments")
    g.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also checkpoint every N training steps inside an epoch (0: at epoch ends only); "
                        "--resume continues from the next step with the same final weights")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: batch-norm statistics over the global batch (SyncBatchNorm, both branches)")
    g.add_argument("--detect-anomaly", action="store_true",
                   help="debug a NaN: check every layer's output and run autograd's anomaly mode (slow); the "
                        "error names the first layer that produced a non-finite value")
    g.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="stop after K epochs of this run (the schedule still spans --epochs); --resume continues")
    g.add_argument("--no-onnx", action="store_true", help="do not export ONNX")
    g.add_argument("--bench-runs", type=int, default=d["bench_runs"], help="timed runs per latency measurement (0: no latency)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bars")
    if not search:
        _baseline_options(p)
    from .config import add_config_options
    add_config_options(p)
    g = p.add_argument_group("check")
    g.add_argument("--check", action="store_true",
                   help="compare --backend with the reference ops (every adjoined conv: forward and all "
                        "gradients; the loss) on one real batch, print the errors, and exit (1 on a mismatch)")
    g.add_argument("--check-batch", type=int, default=d["check_batch"], help="batch size of --check")
    g.add_argument("--check-tol", type=float, default=None, help="override the per-dtype tolerance of --check")
    return p


def arch_name(value: str) -> str:
    """argparse type of --arch: a built-in adjoined ResNet, ``tv:NAME`` or ``timm:NAME``."""
    prefix = value.partition(":")[0] + ":"
    if value in ARCHS or (prefix in ADJOIN_PREFIXES and len(value) > len(prefix)):
        return value
    raise argparse.ArgumentTypeError(f"invalid choice {value!r}: use one of {', '.join(ARCHS)}, tv:NAME or "
                                     f"timm:NAME")


def _baseline_options(p) -> None:
    g = p.add_argument_group("baselines kd, kddp, pwh (docs/baselines.md)")
    g.add_argument("--teacher", default=None, metavar="CKPT",
                   help="the frozen teacher: OUT/checkpoint.pt of an `adjoined-train --method standard` run with the "
                        "same --arch, --width, --stem and dataset")
    g.add_argument("--kd-alpha", type=float, default=0.5,
                   help="kd, kddp: weight a of the distillation term, (1-a) CE + a T^2 KL(teacher || student) "
                        "(T: --temperature)")
    g.add_argument("--kddp-student", choices=["resnet", "paper"], default="resnet",
                   help="kddp: resnet, the AN small network with an fc1 head; paper, the KDDP paper's Table 1 net")
    g.add_argument("--kddp-fc1", type=int, default=100, metavar="N", help="kddp: neurons of the student's fc1")
    g.add_argument("--kddp-l1", type=float, default=1e-4, help="kddp: weight of the L1 penalty on fc1's activations")
    g.add_argument("--pwh-iters", type=int, default=2, help="pwh: prune/reconstruct/hints iterations")
    g.add_argument("--hints-weight", type=float, default=1.0, help="pwh: weight of the L2 hints loss")
    g.add_argument("--pwh-samples", type=int, default=512,
                   help="pwh: training images that score channels and fit the hints layer by least squares")


def _search_options(p) -> None:
    from ..dan import TAU0, TAU_DECAY, TAU_END
    g = p.add_argument_group("DAN search (the paper's Sec. 5; docs/dan.md)")
    g.add_argument("--search-alphas", type=int, nargs="+", default=[1, 2, 4, 8, 16], metavar="A",
                   help="candidate width divisors of every searchable width")
    g.add_argument("--flops-weight", type=float, default=1.0,
                   help="weight of E[FLOPs] / FLOPs_full in the loss (the paper's gamma, on normalised FLOPs)")
    g.add_argument("--flops-target", type=float, default=None, metavar="F",
                   help="FLOPs budget F * FLOPs_full (a fraction in (0, 1]): the loss keeps the argmax network in "
                        "the band [(1 - tol) F, F] of FLOPs_full, and arch.json exports the most likely widths in it")
    g.add_argument("--flops-tolerance", type=float, default=0.05, metavar="TOL",
                   help="width of the FLOPs band below --flops-target, a fraction in [0, 1)")
    g.add_argument("--tau0", type=float, default=TAU0, help="initial Gumbel-softmax temperature")
    g.add_argument("--tau-schedule", choices=["step", "epoch"], default="step",
                   help="step: from --tau0 to --tau-end geometrically every step; epoch: the paper's, x exp(-"
                        "--tau-decay) per epoch")
    g.add_argument("--tau-end", type=float, default=TAU_END, help="tau of the last step (--tau-schedule step)")
    g.add_argument("--tau-decay", type=float, default=TAU_DECAY,
                   help="tau is multiplied by exp(-this) every epoch (--tau-schedule epoch)")
    g.add_argument("--arch-lr", type=float, default=1e-2, help="Adam learning rate of the gate logits")


SEARCH_DESCRIPTION = (
    "DAN: search the small network's width per layer (Gumbel-softmax gates over --search-alphas, loss "
    "CE + lambda(t) (KL + flops_weight E[FLOPs]/FLOPs_full)) while training the adjoined network; writes "
    "arch.json for adjoined-train --arch-json.")


def fail(msg: str, prog: str = "adjoined-train") -> int:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None, search: bool = False) -> int:
    from .config import ConfigError, dump_config, parse_args
    parser = build_parser(search)
    try:
        args = parse_args(parser, argv)
    except ConfigError as e:
        return fail(str(e), parser.prog)
    if args.print_config:
        print(dump_config(parser, args), end="")
        return 0
    from . import distributed
    from .validate import check_args
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    msg = check_args(args, world_size) or _missing_extras()
    if msg:
        return fail(msg, parser.prog)

    import torch
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Real images drive CPU activations and gradients into denormals, which made training steps ~10x
    # slower on x86 (5 s vs 0.45 s for the demo model); flushing them to zero costs no accuracy.
    denormal = torch.set_flush_denormal(True)
    try:
        if not distributed.launched():
            return _run(args)
        world, device = distributed.init(args.device)
        try:  # rank 0 alone prints; every rank reports its errors on stderr
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(sys.stdout if world.is_main else null):
                return _run(args, world, device)
        finally:
            distributed.shutdown()
    finally:
        torch.set_num_threads(threads)
        if denormal:
            torch.set_flush_denormal(False)


def _run(args, world=None, device=None) -> int:
    import torch

    from .. import available_backends
    from .data import DataError, augmenting, load_dataset
    from .distributed import World
    from .guard import NonFiniteError
    from .checkpoint import ResumeError
    from .loop import build_adjoined, pick_device

    world = world or World()
    try:
        device = device or pick_device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            return fail(f"--device {args.device}: CUDA is not available on this machine; use --device cpu",
                        prog(args))
    except RuntimeError as e:
        return fail(f"--device {args.device}: {e}", prog(args))
    if args.backend != "auto" and args.backend not in available_backends():
        from .._backend import _cuda_status, _triton_status
        why = _triton_status() if args.backend == "triton" else _cuda_status()
        return fail(f"--backend {args.backend} is unavailable: {why}", prog(args))
    if args.cuda_graphs and device.type != "cuda":
        return fail(f"--cuda-graphs captures CUDA graphs: it needs --device cuda (device is {device})",
                    prog(args))
    if args.backend in ("triton", "cuda") and device.type != "cuda":
        from .._backend import triton_interpreting
        if not (args.backend == "triton" and triton_interpreting()):
            return fail(f"--backend {args.backend} needs --device cuda (device is {device})", prog(args))

    t_load = time.perf_counter()
    try:
        ds = load_dataset(args.dataset, args.data_dir, args.image_size, args.subset, args.seed)
    except DataError as e:
        return fail(str(e), prog(args))
    print(f"{ds.name}: {ds.size('train')} train / {ds.size('test')} test images {ds.sample_shape}, "
          f"{ds.num_classes} classes, from {ds.root} ({time.perf_counter() - t_load:.1f}s); augmentation "
          f"{'on' if augmenting(args) else 'off'} (--augment {args.augment})")
    try:
        torch.manual_seed(args.seed)
        probe = build_adjoined(args, ds)  # validates arch/width/alpha before anything is written
        if args.method == "search":
            from .search import check_budget
            check_budget(args, ds, probe)  # a budget no architecture meets fails now, not after the search
    except (ValueError, TypeError) as e:
        what = f"alpha {args.alpha}" if args.method != "search" else f"search alphas {args.search_alphas}"
        name = args.arch if args.arch.startswith(ADJOIN_PREFIXES) else f"adjoined_{args.arch} (width {args.width})"
        return fail(f"cannot build {name} with {what}: {e}", prog(args))
    if args.method in ("kd", "kddp", "pwh"):
        from ..baselines import TeacherError, load_teacher
        try:
            load_teacher(args, ds)
        except TeacherError as e:
            return fail(str(e), prog(args))

    if args.check:
        from ..layout import as_layout, to_training_layout
        from .check import check_lambda, run_check
        probe, fmt = to_training_layout(probe, device)  # the layout training uses
        x = as_layout(_check_batch(ds, args.check_batch, device), fmt)
        y = ds.take(torch.arange(x.shape[0]))[1].to(device)
        dtype = torch.bfloat16 if args.amp and device.type == "cuda" else torch.float32
        ok = run_check(probe, x, y, args.backend, dtype, check_lambda(args), args.temperature, args.check_tol)
        return 0 if ok else 1
    del probe

    os.makedirs(args.out, exist_ok=True)
    from .loop import gpu_algorithms, train
    from .report import finish
    with gpu_algorithms(args.deterministic):
        try:
            net, history, finished = train(args, ds, device, world=world)
        except (ResumeError, DataError) as e:
            return fail(_worker_message(str(e)), prog(args))
        except NonFiniteError as e:
            fail(str(e), prog(args))
            return 3
        if not world.is_main:
            return 0
        if finished and args.method == "search":
            from .search import finish_search
            finish_search(args, ds, net, history)
        elif finished:
            finish(args, ds, device, net, history)
    return 0


def _check_batch(ds, n, device):
    import torch

    from .data import normalize
    return normalize(ds.take(torch.arange(min(n, ds.size("train"))))[0], ds.mean, ds.std).to(device)


def _worker_message(msg: str) -> str:
    """The error itself from an exception a DataLoader worker re-raised (which carries the worker's traceback)."""
    if "Original Traceback" not in msg:
        return msg
    last = msg.strip().splitlines()[-1]
    return last.split("Error: ", 1)[-1]


def _missing_extras() -> str | None:
    """The trainer's own dependencies (the ``train`` extra) that are not installed, as an error message."""
    import importlib.util
    missing = [m for m in ("tqdm", "torchvision", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"the trainer needs {', '.join(missing)}: install the training extras with "
                "`pip install 'adjoined-kernels[train]'`")
    return None


def search_main(argv=None) -> int:
    """``adjoined-search``: the DAN width search (exit codes as ``adjoined-train``)."""
    return main(argv, search=True)


def prog(args) -> str:
    return "adjoined-search" if args.method == "search" else "adjoined-train"


if __name__ == "__main__":
    sys.exit(main())
