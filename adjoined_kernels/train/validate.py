"""Checks of ``adjoined-train`` / ``adjoined-search`` arguments before any work: the first problem found, as
the message of an argparse-style error (exit code 2), or None.

Every number must be finite; counts are integers >= 1 (or >= 0 where 0 means "off"); rates and factors are
positive where a zero or negative value has no meaning; alpha divides the base width of the built-in
ResNets (every stage width is the base width times a power of two, so that is sufficient).
"""
from __future__ import annotations

import math

# --arch prefixes of the CNNs that ak.adjoin converts (torchvision's and timm's), as opposed to the built-in
# adjoined ResNets; the name follows the prefix.
ADJOIN_PREFIXES = ("tv:", "timm:")

# (option, lowest allowed value, whether the bound itself is allowed); every one must also be finite
FLOATS = (("lr", 0, False), ("momentum", 0, True), ("weight_decay", 0, True), ("pct_start", 0, False),
          ("div_factor", 0, False), ("final_div_factor", 0, False), ("gamma", 0, False), ("lam_scale", 0, True),
          ("temperature", 0, False), ("check_tol", 0, False))
COUNTS = ("epochs", "batch_size", "width", "alpha", "eval_batch_size", "check_batch")
OFF_OR_COUNT = ("bench_runs", "workers", "threads", "save_every")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_numbers(args) -> str | None:
    """Finite floats within their ranges, counts >= 1, off-or-count options >= 0."""
    for name, low, closed in FLOATS:
        v = getattr(args, name, None)
        if v is None:
            continue
        if not math.isfinite(v):
            return f"{_flag(name)} must be a finite number, got {v}"
        if v < low or (v == low and not closed):
            return f"{_flag(name)} must be {'>=' if closed else '>'} {low}, got {v}"
    if not args.momentum < 1:
        return f"--momentum must be < 1, got {args.momentum}"
    if not args.pct_start < 1:
        return f"--pct-start must be a fraction in (0, 1), got {args.pct_start}"
    for name in COUNTS:
        if getattr(args, name) < 1:
            return f"{_flag(name)} must be >= 1, got {getattr(args, name)}"
    for name in OFF_OR_COUNT:
        if getattr(args, name, 0) < 0:
            return f"{_flag(name)} must be >= 0, got {getattr(args, name)}"
    if args.subset is not None and args.subset < 2:
        return f"--subset must be >= 2, got {args.subset}"
    if args.image_size is not None and args.image_size < 8:
        return f"--image-size must be >= 8 pixels, got {args.image_size}"
    if min(args.milestones) < 1:
        return f"--milestones must be epochs >= 1, got {args.milestones}"
    return None


def check_args(args, world_size: int = 1) -> str | None:
    """Every check of ``adjoined-train`` / ``adjoined-search`` arguments; ``world_size`` under torchrun."""
    msg = check_numbers(args)
    if msg:
        return msg
    tv = args.arch.startswith(ADJOIN_PREFIXES)
    if tv and getattr(args, "arch_json", None):
        return "--arch-json holds searched widths of an adjoined ResNet; it does not apply to tv:/timm: models"
    if not tv and (getattr(args, "adjoin_start", None) or getattr(args, "pretrained", None)):
        return "--adjoin-start and --pretrained apply to tv:/timm: models only"
    if not tv and not getattr(args, "arch_json", None) and args.width % args.alpha:
        return (f"--alpha {args.alpha} must divide --width {args.width}: the small network has width/alpha "
                "channels in every stage")
    msg = check_distributed(args, world_size)
    if msg:
        return msg
    if args.method in ("kd", "kddp", "pwh"):
        return check_baseline(args, tv)
    return check_search(args) if args.method == "search" else None


def check_distributed(args, world_size: int) -> str | None:
    if world_size == 1:
        return None
    if args.method not in ("adjoined", "standard", "small"):
        return f"--method {args.method} runs in one process; under torchrun use adjoined, standard or small"
    if args.cuda_graphs or args.check:
        return "--cuda-graphs and --check run in one process, not under torchrun"
    if args.batch_size % world_size:
        return (f"--batch-size {args.batch_size} is the global batch: it must be a multiple of the "
                f"{world_size} processes")
    return None


def check_baseline(args, tv: bool) -> str | None:
    if tv or args.arch_json:
        return (f"--method {args.method} distils the built-in ResNets at a uniform --alpha (no tv: models, no "
                "--arch-json)")
    if not 0 <= args.kd_alpha <= 1:
        return f"--kd-alpha must be in [0, 1], got {args.kd_alpha}"
    if args.kddp_fc1 < 1 or args.pwh_iters < 1 or args.pwh_samples < 1:
        return "--kddp-fc1, --pwh-iters and --pwh-samples must be >= 1"
    if not (0 <= args.kddp_l1 < math.inf and 0 <= args.hints_weight < math.inf):
        return "--kddp-l1 and --hints-weight must be finite and >= 0"
    phases = {"kddp": 2, "pwh": args.pwh_iters + 1}.get(args.method, 1)
    if args.epochs < phases:
        return f"--method {args.method} trains in {phases} phases: --epochs must be >= {phases}, got {args.epochs}"
    return None


def check_search(args) -> str | None:
    a = args.search_alphas
    if min(a) < 1 or len(set(a)) != len(a):
        return f"--search-alphas must be distinct integers >= 1, got {a}"
    if not args.flops_weight >= 0 or not math.isfinite(args.flops_weight):
        return f"--flops-weight must be a finite number >= 0, got {args.flops_weight}"
    if args.flops_target is not None and not 0 < args.flops_target <= 1:
        return f"--flops-target must be a fraction of the full network's FLOPs in (0, 1], got {args.flops_target}"
    if not 0 <= args.flops_tolerance < 1:
        return f"--flops-tolerance must be a fraction in [0, 1), got {args.flops_tolerance}"
    if not (0 < args.tau0 < math.inf and 0 < args.tau_end < math.inf and 0 <= args.tau_decay < math.inf
            and 0 < args.arch_lr < math.inf):
        return "--tau0, --tau-end and --arch-lr must be finite and > 0, --tau-decay finite and >= 0"
    if args.cuda_graphs or args.check:
        return "--cuda-graphs and --check are not supported by adjoined-search"
    return None
