"""The training loop: model/optimizer/scheduler construction, one epoch, evaluation, checkpoints and resume.

Methods:
- ``adjoined``: the adjoined ResNet, loss ``adjoined_loss(logits_full, logits_small, y, lambda(t))``.
- ``standard``: the plain full network (``export_full`` of a freshly initialised adjoined model, so its
  initialisation equals the full branch of an ``adjoined`` run with the same seed), CE only.
- ``small``: the plain small network alone from scratch (``export_small`` of a freshly initialised adjoined
  model: the same initial weights as the small branch of an ``adjoined`` run), CE only.
- ``search`` (``adjoined-search``): the DAN search network, loss :func:`adjoined_kernels.dan.dan_loss`; the
  gate logits train with their own Adam, tau follows its schedule and the eval runs the network to export
  (:mod:`.search`).
- ``kd``, ``kddp``, ``pwh``: the comparison baselines, students of a frozen ``--teacher``
  (:mod:`adjoined_kernels.baselines`, docs/baselines.md); ``kddp`` and ``pwh`` train in phases, each one run
  of :func:`train` with its own checkpoint.

Determinism: the model is built right after ``torch.manual_seed(seed)``; the order and augmentation of epoch
``e`` come from a generator seeded ``seed*1000 + e`` (:mod:`.loader`). A checkpoint is written after every
epoch and every ``--save-every`` steps, so ``--resume`` continues to the same final weights as an
uninterrupted run: bitwise on the CPU, and on a GPU with ``--deterministic`` (see :func:`gpu_algorithms`).
A non-finite loss or gradient stops the run before anything non-finite is saved (:mod:`.guard`).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import lambda_schedule
from .. import models as ak_models
from ..dan import dan_loss
from ..export import export_full, export_small
from ..layout import as_layout, memory_format, to_training_layout
from ..ops.loss import adjoined_loss
from . import checkpoint as ckpt
from .data import Dataset, augmenting, normalize
from .distributed import World, all_reduce_sum, prepare
from .graphed import GraphedStep
from .guard import Guard, detect_anomaly
from .loader import EpochBatches, ShardBatches, make_loader
from .search import epoch_record, eval_projected, make_arch_optimizer, set_step_tau
from .search import start_epoch as start_search_epoch
from .validate import ADJOIN_PREFIXES

SEARCH = "search"  # the method of adjoined-search (DAN)
SMALL_ONLY = ("small", "kd", "kddp", "pwh")  # methods that train one (small) network: docs/baselines.md


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_adjoined(args, ds: Dataset, device=None):
    """The adjoined ResNet for ``args`` and ``ds``, on ``device``: the DAN search network for
    ``adjoined-search``, the searched widths of ``--arch-json``, or uniform ``--alpha``; for ``tv:NAME`` the
    torchvision model (``timm:NAME``: the timm model) adjoined by :func:`adjoined_kernels.adjoin` (``--stem cifar``
    adapts it to small images)."""
    if args.arch.startswith(ADJOIN_PREFIXES):
        from .. import adjoin
        prefix, name = args.arch.split(":", 1)
        build = adjoin.build_torchvision if prefix == "tv" else adjoin.build_timm
        model = build(name, ds.num_classes, ds.in_channels, args.alpha, args.adjoin_start, args.pretrained,
                      args.stem == "cifar", args.backend)
        return model.to(device) if device is not None else model
    ctor = getattr(ak_models, f"adjoined_{args.arch}")
    kw = {}
    if args.method == SEARCH:
        kw = {"search_alphas": tuple(args.search_alphas), "tau": args.tau0}
    elif getattr(args, "arch_json", None):
        from .search import load_arch_json
        kw = {"small_widths": load_arch_json(args.arch_json, args, ds)}
    model = ctor(num_classes=ds.num_classes, alpha=args.alpha, in_channels=ds.in_channels, stem=args.stem,
                 width=args.width, backend=args.backend, **kw)
    return model.to(device) if device is not None else model


def build_net(args, ds: Dataset, device):
    """The network trained by ``args.method`` (seeded). Returns the module, on ``device``."""
    torch.manual_seed(args.seed)
    model = build_adjoined(args, ds)
    if args.method == "standard":
        model = export_full(model)
    elif args.method == "small":
        model = export_small(model)
    elif args.method == "kd":
        from ..baselines import build_kd
        model = build_kd(args, ds, model, device)
    return model.to(device)


def make_optimizer(args, params):
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0,
                               weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def make_scheduler(args, opt, total_steps: int, spe: int):
    """A per-step LR scheduler (milestones of ``multistep`` are in epochs)."""
    if args.schedule == "onecycle":
        if total_steps < 4:  # too short for the two phases of OneCycleLR: constant LR
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        # each phase needs >= 1 step (OneCycleLR divides by the phase length)
        pct = min(max(args.pct_start, 2.0 / total_steps), (total_steps - 2.0) / total_steps)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total_steps,
                                                   pct_start=pct, div_factor=args.div_factor,
                                                   final_div_factor=args.final_div_factor)
    if args.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[m * spe for m in args.milestones],
                                                gamma=args.gamma)


def forward_loss(net, method, x, y, lam, args, model=None):
    """(loss, logits_full or None, logits_small or None). ``net`` runs the forward (a DDP replica under
    torchrun); ``model`` (default ``net``) is the module itself, whose FLOPs DAN's loss reads."""
    model = net if model is None else model
    if method == "adjoined":
        lf, ls = net(x)
        return adjoined_loss(lf, ls, y, lam, temperature=args.temperature, backend=args.backend), lf, ls
    if method == SEARCH:
        lf, ls = net(x)
        arg = model.argmax_small_flops() if args.flops_target is not None else None  # the band's key
        loss = dan_loss(lf, ls, y, lam, model.expected_small_flops(), model.full_flops(), args.flops_weight,
                        args.flops_target, arg, args.flops_tolerance, temperature=args.temperature,
                        backend=args.backend)
        return loss, lf, ls
    if method in SMALL_ONLY[1:]:
        from ..baselines import distill_loss
        return distill_loss(net, x, y, args)
    out = net(x)
    loss = F.cross_entropy(out.float(), y)
    return (loss, out, None) if method == "standard" else (loss, None, out)


def step_body(net, method, args, device, amp: bool, graphs: bool = False, model=None):
    """``body(x, y, lam)``: forward, loss, backward, and the step's metric terms as a float64 tensor
    ``[loss * batch, CE sum, KL sum, correct full, correct small]`` (0 for a branch the method lacks).
    Nothing in it syncs with the host or makes a tensor from a host value, so a CUDA graph can capture it
    (``graphs``: autocast's cache off). Gradients accumulate into ``.grad``: the caller zeroes them."""
    def body(x, y, lam):
        with _autocast(device, amp, cache=not graphs):
            loss, lf, ls = forward_loss(net, method, x, y, lam, args, model)
        loss.backward()
        with torch.no_grad():
            zero = loss.new_zeros((), dtype=torch.float64)
            main = lf if lf is not None else ls
            terms = [loss.detach().double() * y.shape[0], F.cross_entropy(main.float(), y, reduction="sum"),
                     _kl(lf, ls, args.temperature) if ls is not None and lf is not None else zero,
                     (lf.argmax(-1) == y).sum() if lf is not None else zero,
                     (ls.argmax(-1) == y).sum() if ls is not None else zero]
            return torch.stack([t.double() for t in terms])
    return body


def _kl(lf, ls, temperature):
    lp = (lf.float() / temperature).log_softmax(-1)
    lq = (ls.float() / temperature).log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1).sum()


@torch.inference_mode()
def evaluate(net, method, ds: Dataset, device, loader, amp: bool = False, world: World | None = None):
    """Test accuracy ``(acc_full, acc_small)`` over ``loader`` (this rank's shard; the counts are summed over
    the ranks); None for a branch the method does not have."""
    was_training = net.training
    net.eval()
    counts = torch.zeros(3, dtype=torch.int64, device=device)  # correct full, correct small, images
    fmt = memory_format(net, device)
    for xb, yb in loader:
        x, y = _prep(xb, ds, device, fmt), yb.to(device, non_blocking=True)
        with _autocast(device, amp):
            out = net(x)
        full, small = (out[0], out[1]) if method in ("adjoined", SEARCH) else \
            ((out, None) if method == "standard" else (None, out))
        for k, logits in ((0, full), (1, small)):
            if logits is not None:
                counts[k] += (logits.argmax(-1) == y).sum()
        counts[2] += y.shape[0]
    net.train(was_training)
    cf, cs, n = all_reduce_sum(counts, world or World()).tolist()
    n = max(n, 1)
    return (cf / n if method not in SMALL_ONLY else None, cs / n if method != "standard" else None)


@contextlib.contextmanager
def gpu_algorithms(deterministic: bool):
    """How cuDNN and PyTorch pick GPU algorithms during a run; the previous settings come back on exit.

    By default ``cudnn.benchmark``: training shapes are fixed, so timing the candidate algorithms once per
    shape pays off. With ``deterministic``: ``cudnn.deterministic`` without benchmarking, and
    ``torch.use_deterministic_algorithms`` (warning, not failing, on an op without a deterministic form), so
    a run and its ``--resume`` give the same bits. The adjoined kernels (triton, cuda) are deterministic
    either way: their wgrad reduces in a fixed order without atomics.
    """
    if deterministic:  # cuBLAS reads it when it creates its workspace, at the first matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn = torch.backends.cudnn
    old = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn.benchmark, cudnn.deterministic = not deterministic, deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = old[0], old[1]
        torch.use_deterministic_algorithms(old[2], warn_only=old[3])


def _prep(x_u8, ds: Dataset, device, fmt: torch.memory_format):
    return as_layout(normalize(x_u8.to(device, non_blocking=True), ds.mean, ds.std), fmt)


def _autocast(device, amp: bool, cache: bool = True):
    # cache=False while capturing CUDA graphs: autocast's weight-cast cache must stay off then (PyTorch's
    # CUDA-graph notes on AMP)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda",
                          cache_enabled=cache)


def _state(model, opt, sched, arch_opt, epoch: int, epoch_step: int, step: int, history, elapsed, partial, args):
    return {"format": 2, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "arch_optimizer": arch_opt.state_dict() if arch_opt is not None else None, "epoch": epoch,
            "epoch_step": epoch_step, "global_step": step, "partial": partial, "rng": ckpt.rng_state(),
            "history": history, "elapsed": elapsed, "args": vars(args)}


def _loaders(args, ds, device, world):
    """(train sampler, train loader, test loader) for this rank."""
    train_sampler = EpochBatches(ds.size("train"), args.batch_size, args.seed, world.rank, world.size)
    pin = device.type == "cuda"
    train_loader = make_loader(ds.split("train", augmenting(args)), train_sampler, args.workers, pin)
    test_sampler = ShardBatches(ds.size("test"), args.eval_batch_size, world.rank, world.size)
    return train_sampler, train_loader, make_loader(ds.split("test"), test_sampler, args.workers, pin)


def train(args, ds, device, log=print, net=None, world: World | None = None):
    """Train ``args.method`` on ``ds``; returns ``(net, history, finished)``.

    Writes OUT/metrics.jsonl (one JSON line per epoch) and OUT/checkpoint.pt (every epoch, and every
    ``args.save_every`` steps; the one before is kept as checkpoint.prev.pt). ``finished`` is False when
    ``args.stop_after`` ended the run before ``args.epochs``. ``net``: train this network instead of building
    it (one phase of ``kddp``/``pwh``, which run their phases through
    :func:`adjoined_kernels.baselines.run_phased` when ``net`` is None). ``world``: this process's place under
    torchrun (rank 0 alone writes files and logs).

    Raises:
        NonFiniteError: a loss term or gradient was NaN or infinite; nothing was saved after the last good
            step.
        ResumeError: ``args.resume`` names no usable checkpoint, or one trained with other arguments.
    """
    if net is None and args.method in ("kddp", "pwh"):
        from ..baselines import run_phased
        return run_phased(args, ds, device, log)
    world = world or World()
    model = build_net(args, ds, device) if net is None else net
    model, fmt = to_training_layout(model, device)  # teachers and pruned networks included
    model, replica = prepare(model, world, device, getattr(args, "sync_bn", False))
    search = args.method == SEARCH
    opt = make_optimizer(args, model.weight_parameters() if search else model.parameters())
    arch_opt = make_arch_optimizer(args, model) if search else None
    train_sampler, train_loader, test_loader = _loaders(args, ds, device, world)
    spe = train_sampler.steps()
    total = spe * args.epochs
    sched = make_scheduler(args, opt, total, spe)
    ckpt_path = os.path.join(args.out, "checkpoint.pt")
    epoch0, skip, step, history, elapsed, partial = 0, 0, 0, [], 0.0, None
    guard = Guard(device, "none (the run had not saved one yet)")
    if args.resume:
        path = ckpt_path if args.resume == "auto" else args.resume
        ck = ckpt.load(path, args)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if arch_opt is not None:
            arch_opt.load_state_dict(ck["arch_optimizer"])
        epoch0, step, history, elapsed = ck["epoch"], ck["global_step"], ck["history"], ck["elapsed"]
        skip, partial = ck.get("epoch_step", 0), ck.get("partial")
        ckpt.set_rng_state(ck["rng"])
        guard.saved(path, epoch0, step)
        if world.is_main:
            log(f"resumed from {path} at epoch {epoch0 + 1}, step {skip} of {spe}")
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    if world.is_main:
        with open(metrics_path, "w") as f:  # rewritten from the checkpoint's history: no duplicate epochs
            for rec in history:
                f.write(json.dumps(rec) + "\n")

    method, amp = args.method, args.amp and device.type == "cuda"
    graphs = getattr(args, "cuda_graphs", False)
    body = step_body(replica, method, args, device, amp, graphs, model)
    if graphs:  # captured at the first step, after any resume (the graph holds the parameters' addresses)
        body = GraphedStep(replica, body, capture=device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    anomaly = detect_anomaly(model) if getattr(args, "detect_anomaly", False) else contextlib.nullcontext()
    run_epochs = 0
    for epoch in range(epoch0, args.epochs):
        t0 = time.perf_counter()
        if search:
            start_search_epoch(args, model, epoch)
        model.train()
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, ce, kl, correct_f, correct_s
        n, t_before = 0, 0.0
        if partial is not None:  # a mid-epoch checkpoint: its sums so far count once, on rank 0
            if world.is_main:
                sums += partial["sums"].to(device)
                n = partial["n"]
            t_before = partial["time"]
        train_sampler.set_epoch(epoch, skip)
        bar = tqdm(total=spe, initial=skip, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=not (args.progress and world.is_main), dynamic_ncols=True, leave=False, file=sys.stderr)
        lam = lr = 0.0
        with anomaly:
            for i, (xb, yb) in enumerate(train_loader, start=skip):
                lam = lambda_schedule(min(step / total, 1.0), args.lam_schedule, args.lam_scale)
                x, y = _prep(xb, ds, device, fmt), yb.to(device, non_blocking=True)
                if not graphs:
                    opt.zero_grad(set_to_none=True)
                if arch_opt is not None:
                    arch_opt.zero_grad(set_to_none=True)
                    set_step_tau(args, model, step, total)
                terms = body(x, y, lam)
                sums += terms
                guard.update(step, terms, params)
                if guard.due(step):
                    guard.check(epoch, spe)
                opt.step()
                if arch_opt is not None:
                    arch_opt.step()
                lr = sched.get_last_lr()[0]  # the LR this step used
                sched.step()
                step += 1
                n += y.shape[0]
                bar.update(1)
                if args.progress and world.is_main and (i % 20 == 0 or i == spe - 1):
                    bar.set_postfix(loss=f"{sums[0].item() / max(n, 1):.3f}", lam=f"{lam:.3f}", lr=f"{lr:.3g}")
                if args.save_every and (i + 1) % args.save_every == 0 and i + 1 < spe:
                    guard.check(epoch, spe)
                    part = {"sums": all_reduce_sum(sums.clone(), world).cpu(),
                            "n": int(all_reduce_sum(torch.tensor([n], device=device), world)),
                            "time": t_before + time.perf_counter() - t0}
                    if world.is_main:
                        ckpt.save(ckpt_path, _state(model, opt, sched, arch_opt, epoch, i + 1, step, history,
                                                    elapsed, part, args))
                    guard.saved(ckpt_path, epoch, step)
        bar.close()
        guard.check(epoch, spe)
        skip, partial = 0, None
        all_reduce_sum(sums, world)
        n = int(all_reduce_sum(torch.tensor([n], device=device), world))
        s, n = sums.tolist(), max(n, 1)
        t_train = t_before + time.perf_counter() - t0
        monitor = eval_projected(args, model) if search else None  # the small accuracy: the net to export
        acc_f, acc_s = evaluate(model, method, ds, device, test_loader, amp, world)
        dt = t_before + time.perf_counter() - t0
        elapsed += dt
        two = method in ("adjoined", SEARCH)
        rec = {"epoch": epoch + 1, "lambda": lam if two else None, "loss": s[0] / n,
               "ce": s[1] / n, "kl": s[2] / n if two else None,
               "train_acc_full": s[3] / n if method not in SMALL_ONLY else None,
               "train_acc_small": s[4] / n if method != "standard" else None,
               "test_acc_full": acc_f, "test_acc_small": acc_s, "lr": lr,
               "time": dt, "train_time": t_train, "elapsed": elapsed, "step": step}
        if search:
            rec.update(epoch_record(model, monitor))
        history.append(rec)
        if world.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            ckpt.save(ckpt_path, _state(model, opt, sched, arch_opt, epoch + 1, 0, step, history, elapsed, None,
                                        args))
            log(format_epoch(rec))
        guard.saved(ckpt_path, epoch + 1, step)
        run_epochs += 1
        if args.stop_after and run_epochs >= args.stop_after and epoch + 1 < args.epochs:
            if world.is_main:
                log(f"stopping after {run_epochs} epoch(s) as asked (--stop-after); continue with --resume")
            return model, history, False
    return model, history, True


def format_epoch(r: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    return (f"epoch {r['epoch']:3d}  loss {r['loss']:.4f}  ce {r['ce']:.4f}  kl {f(r['kl'], '.4f')}  "
            f"lam {f(r['lambda'], '.3f')}  train {f(r['train_acc_full'], '.4f')}/{f(r['train_acc_small'], '.4f')}  "
            f"test {f(r['test_acc_full'], '.4f')}/{f(r['test_acc_small'], '.4f')}  lr {r['lr']:.3g}  "
            f"{r['time']:.1f}s" + (f"  tau {r['tau']:.2f}  E[FLOPs]/full {r['flops_ratio']:.3f}" if "tau" in r else ""))
