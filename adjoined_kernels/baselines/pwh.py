"""PWH: Pruning with Hints ("Pruning with Hints: An Efficient Framework for Model Acceleration", Sec. 3,
Fig. 2 and Algorithm 1), iterated toward the AN small network's widths. See docs/baselines.md.

Each of ``--pwh-iters`` iterations (a) prunes channels of the current model by first-order Taylor importance
(Molchanov et al., the criterion of that paper's Sec. 3.1: a channel's score is ``|mean_hw(a * dC/da)|``
averaged over images, ``a`` its BN output for an inner conv, or its block outputs summed over a stage for the
residual stream), so that every width moves linearly from the teacher's to the small network's; (b)
re-estimates the pruned network's BN statistics on a sample of training images and reconstructs the hints
layer (the last conv) by least squares on it, ``W = (X^T X + l I)^-1 X^T Y`` (``l``: a ridge, see
:data:`RIDGE`; the paper's exact fit made training diverge), keeping the old weights if they fit a second sample better (Eq. 6); (c) trains with
cross-entropy plus ``--hints-weight`` times the L2 hints loss (mean squared difference of the last conv's
outputs) against the previous iteration's model. A last hints step trains against the original teacher.
The hint targets are the teacher's channels that the student kept, so no adaption layer is needed.

Only layers 2-4 are pruned (the stem and layer1 stay as in AN, whose small network shares them), so the
result has exactly the AN small network's widths, params and FLOPs.
"""
from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layout import to_training_layout
from ..models.plain import PlainBlock, PlainResNet
from ..train.data import normalize
from .kd import Distilled, capture
from .phases import Phases, read_json, split_epochs, write_json
from .teacher import freeze, load_teacher


def convs_bns(block: PlainBlock):
    """The body's convs and BNs of ``block``, in order."""
    return ([m for m in block.body if isinstance(m, nn.Conv2d)],
            [m for m in block.body if isinstance(m, nn.BatchNorm2d)])


def block_stages(net: PlainResNet) -> list[int]:
    """The stage (0 = layer2) of each block of ``net.stages[1]``: a block with a downsample starts a stage."""
    out, s = [], -1
    for blk in net.stages[1]:
        s += blk.downsample is not None or s < 0
        out.append(s)
    return out


def block_widths(net: PlainResNet) -> dict:
    """``{"stream": [width per stage], "inner": [[inner widths] per block]}`` of layers 2-4."""
    stages = block_stages(net)
    stream = [0] * (stages[-1] + 1)
    inner = []
    for s, blk in zip(stages, net.stages[1]):
        stream[s] = blk.out
        inner.append([c.out_channels for c in convs_bns(blk)[0][:-1]])
    return {"stream": stream, "inner": inner}


def small_widths(stage_widths) -> dict:
    """The :func:`block_widths` layout of an adjoined ResNet's ``small_widths`` (a list of StageWidths)."""
    return {"stream": [s.out for s in stage_widths], "inner": [list(b) for s in stage_widths for b in s.inner]}


def interpolate(full: dict, target: dict, i: int, iters: int) -> dict:
    """Widths of iteration ``i`` of ``iters``: each moves linearly from ``full`` to ``target`` (equal at i=iters)."""
    def mid(f, t):
        return f - round((f - t) * i / iters)
    return {"stream": [mid(f, t) for f, t in zip(full["stream"], target["stream"])],
            "inner": [[mid(f, t) for f, t in zip(fb, tb)] for fb, tb in zip(full["inner"], target["inner"])]}


def sample_images(ds, n: int, seed: int, device, skip: int = 0):
    """``n`` training images (normalised) and labels, a seeded random sample (after the first ``skip``)."""
    order = torch.randperm(ds.size("train"), generator=torch.Generator().manual_seed(seed))[skip:skip + n]
    x, y = ds.take(order)
    return normalize(x.to(device), ds.mean, ds.std), y.to(device)


def taylor_importance(net: PlainResNet, x, y, batch_size: int) -> dict:
    """First-order Taylor importance (Molchanov et al.) of every prunable channel of layers 2-4, on images
    ``x`` ``[N, C, H, W]`` with labels ``y`` ``[N]``: for activations ``a`` ``[N, c, h, w]`` and gradients
    ``g = dCE/da`` (CE summed over images), the score of channel k is ``sum_n |mean_hw(a * g)[n, k]|``.
    Inner convs are scored at their BN outputs; a stage's residual stream at its blocks' outputs, summed.
    Returns the :func:`block_widths` layout with float64 score tensors instead of widths. ``net`` is unchanged.
    """
    net = copy.deepcopy(net).eval().requires_grad_(True)
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    blocks, stages = list(net.stages[1]), block_stages(net)
    mods = [(b, None) for b in range(len(blocks))] + [(b, j) for b, blk in enumerate(blocks)
                                                      for j in range(len(convs_bns(blk)[1]) - 1)]
    score = {m: 0.0 for m in mods}
    for i in range(0, len(x), batch_size):
        acts = {}
        handles = [(blocks[b] if j is None else convs_bns(blocks[b])[1][j]).register_forward_hook(
            lambda mod, inp, out, key=(b, j): acts.__setitem__(key, out)) for b, j in mods]
        loss = F.cross_entropy(net(x[i:i + batch_size]), y[i:i + batch_size], reduction="sum")
        for h in handles:
            h.remove()
        grads = torch.autograd.grad(loss, [acts[m] for m in mods])
        for m, g in zip(mods, grads):
            score[m] = score[m] + (acts[m].detach() * g).mean((2, 3)).abs().double().sum(0)
    stream = [0.0] * (stages[-1] + 1)
    for b in range(len(blocks)):
        stream[stages[b]] = stream[stages[b]] + score[(b, None)]
    inner = [[score[(b, j)] for j in range(len(convs_bns(blk)[1]) - 1)] for b, blk in enumerate(blocks)]
    return {"stream": stream, "inner": inner}


def select_channels(scores: dict, widths: dict) -> dict:
    """The ``widths`` most important channels of each layer (ascending int64 indices), from
    :func:`taylor_importance` scores."""
    def top(s, k):
        return torch.topk(s.cpu(), k).indices.sort().values
    return {"stream": [top(s, k) for s, k in zip(scores["stream"], widths["stream"])],
            "inner": [[top(s, k) for s, k in zip(sb, kb)] for sb, kb in zip(scores["inner"], widths["inner"])]}


def _copy_conv(dst: nn.Conv2d, src: nn.Conv2d, out_idx, in_idx) -> None:
    dst.weight.copy_(src.weight[out_idx.to(src.weight.device)][:, in_idx.to(src.weight.device)])


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx) -> None:
    idx = idx.to(src.weight.device)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[idx])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


@torch.no_grad()
def prune_resnet(net: PlainResNet, kept: dict) -> PlainResNet:
    """A new PlainResNet keeping, in layers 2-4, the channels ``kept`` (the :func:`select_channels` layout,
    indices into ``net``'s channels): every conv, BN, downsample and the classifier's input columns sliced
    accordingly. The stem and layer1 are copied unchanged."""
    blocks, stages = list(net.stages[1]), block_stages(net)
    cin = torch.arange(blocks[0].body[0].in_channels)
    new = []
    for b, blk in enumerate(blocks):
        out = kept["stream"][stages[b]]
        convs, bns = convs_bns(blk)
        stride = max(c.stride[0] for c in convs)
        nb = PlainBlock(len(cin), [len(k) for k in kept["inner"][b]], len(out), stride, blk.downsample is not None)
        nb = nb.to(device=net.fc.weight.device, dtype=net.fc.weight.dtype)
        idx = [cin, *kept["inner"][b], out]
        for j, (nc, nbn) in enumerate(zip(*convs_bns(nb))):
            _copy_conv(nc, convs[j], idx[j + 1], idx[j])
            _copy_bn(nbn, bns[j], idx[j + 1])
        if blk.downsample is not None:
            _copy_conv(nb.downsample[0], blk.downsample[0], out, cin)
            _copy_bn(nb.downsample[1], blk.downsample[1], out)
        new.append(nb)
        cin = out
    fc = nn.Linear(len(cin), net.fc.out_features).to(net.fc.weight)
    fc.weight.copy_(net.fc.weight[:, cin.to(net.fc.weight.device)])
    fc.bias.copy_(net.fc.bias)
    pruned = PlainResNet(copy.deepcopy(net.stem), [copy.deepcopy(net.stages[0]), nn.Sequential(*new)], fc)
    return pruned.train(net.training)


def hint_conv(net: PlainResNet) -> nn.Conv2d:
    """The hints layer: the last conv of the last block."""
    return convs_bns(net.stages[1][-1])[0][-1]


RIDGE = 0.1  # of the mean diagonal of X^T X: keeps the hints phase stable (docs/baselines.md)


def ridge_lambda(X: torch.Tensor, ridge: float) -> float:
    """The absolute ridge ``ridge * mean(diag(X^T X))`` (0 when ``ridge`` is 0)."""
    return float(ridge * X.double().pow(2).sum(0).mean()) if ridge else 0.0


def least_squares(X: torch.Tensor, Y: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """``W = (X^T X + l I)^-1 X^T Y`` in float64 (``X`` ``[rows, k]``, ``Y`` ``[rows, m]`` -> ``[k, m]``), by
    the normal equations as the paper writes it (``l = 0``), with ``l`` = :func:`ridge_lambda` of ``ridge``.
    Without a ridge, a rank-deficient ``X`` falls back to the minimum-norm solution."""
    X, Y = X.double(), Y.double()
    lam = ridge_lambda(X, ridge)
    try:
        return torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype, device=X.device), X.T @ Y)
    except RuntimeError:  # singular X^T X: e.g. a channel that is zero on every sampled image
        return torch.linalg.pinv(X) @ Y


@torch.no_grad()
def hint_data(student: PlainResNet, teacher: PlainResNet, t_idx, x, batch_size: int):
    """``(X, Y)``: the student hints layer's input patches ``[rows, c_in*kh*kw]`` and the teacher's hints-layer
    outputs at channels ``t_idx`` ``[rows, c_out]``, rows = images x output positions (both nets in eval)."""
    s_conv, t_conv = hint_conv(student), hint_conv(teacher)
    xs, ys = [], []
    for i in range(0, len(x), batch_size):
        with capture(s_conv, "input") as inp:
            student(x[i:i + batch_size])
        with capture(t_conv) as out:
            teacher(x[i:i + batch_size])
        cols = F.unfold(inp[0].float(), s_conv.kernel_size, s_conv.dilation, s_conv.padding, s_conv.stride)
        xs.append(cols.transpose(1, 2).reshape(-1, cols.shape[1]))
        ys.append(out[0][:, t_idx].float().permute(0, 2, 3, 1).reshape(-1, len(t_idx)))
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def recalibrate_bn(net: nn.Module, x, batch_size: int) -> None:
    """Re-estimate every BN's running mean and variance of ``net`` on images ``x`` (their plain average over
    the batches), in place. Pruning changes the distributions that the teacher's statistics describe; without
    this the eval-mode features that the least squares fit differ from those that training sees."""
    was = net.training
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    for i in range(0, len(x), batch_size):
        net(x[i:i + batch_size])
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    net.train(was)


def reconstruct_hint(student, teacher, t_idx, fit, check, batch_size: int) -> dict:
    """Set ``student``'s hints layer to the least-squares fit of the teacher's hint features (channels
    ``t_idx``) on images ``fit``, unless the old weights fit images ``check`` better (the paper's Eq. 6).
    Returns the errors (mean squared) and which weights were kept."""
    student_mode, teacher_mode = student.training, teacher.training
    student.eval(), teacher.eval()
    conv = hint_conv(student)
    X, Y = hint_data(student, teacher, t_idx, fit, batch_size)
    W = least_squares(X, Y, RIDGE).T.reshape(conv.weight.shape)
    Xc, Yc = hint_data(student, teacher, t_idx, check, batch_size)
    old = conv.weight.detach().double().reshape(conv.out_channels, -1)
    err_old = float(((Xc.double() @ old.T - Yc.double()) ** 2).mean())
    err_new = float(((Xc.double() @ W.reshape(conv.out_channels, -1).T - Yc.double()) ** 2).mean())
    if err_new < err_old:
        with torch.no_grad():
            conv.weight.copy_(W.to(conv.weight))
    student.train(student_mode), teacher.train(teacher_mode)
    return {"hint_mse_pruned": err_old, "hint_mse_reconstructed": err_new, "reconstructed": err_new < err_old}


def _kept_lists(kept: dict) -> dict:
    return {"stream": [k.tolist() for k in kept["stream"]], "inner": [[k.tolist() for k in b] for b in kept["inner"]]}


def _kept_tensors(kept: dict) -> dict:
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return {"stream": [t(k) for k in kept["stream"]], "inner": [[t(k) for k in b] for b in kept["inner"]]}


def prune_step(current, widths, ds, args, device, i: int):
    """(a) and (b) of iteration ``i``: the pruned copy of ``current`` at ``widths`` (BN statistics re-estimated
    on the sample), its kept channels, and the reconstruction report."""
    x, y = sample_images(ds, args.pwh_samples, args.seed + i, device)
    if i > 1:  # the previous iteration's model, the teacher now: its running statistics lag its short training
        recalibrate_bn(current, x, args.batch_size)
    kept = select_channels(taylor_importance(current, x, y, args.batch_size), widths)
    student, _ = to_training_layout(prune_resnet(current, kept), device)  # sliced weights keep current's strides
    recalibrate_bn(student, x, args.batch_size)
    check, _ = sample_images(ds, args.pwh_samples, args.seed + i, device, skip=args.pwh_samples)
    t_idx = kept["stream"][-1].to(device)
    recon = reconstruct_hint(student, current, t_idx, x, check if len(check) else x, args.batch_size)
    return student, kept, recon


def run_pwh(args, ds, device, log=print):
    """Train ``--method pwh``; returns ``(Distilled net, history, finished)`` like the training loop."""
    from ..train.loop import build_adjoined
    iters = args.pwh_iters
    epochs = split_epochs(args.epochs, iters + 1, "pwh")
    original = load_teacher(args, ds, device)
    target = small_widths(build_adjoined(args, ds).small_widths)
    full = block_widths(original)
    phases = Phases(args, ds, device, log)
    info_path = os.path.join(args.out, "pwh_pruning.json")
    info = read_json(info_path) if args.resume and os.path.isfile(info_path) else {"iterations": []}
    info["iterations"] = info["iterations"][:sum(phases.resuming(i, f"iter{i}") for i in range(1, iters + 1))]
    current, to_orig = original, None
    for i in range(1, iters + 1):
        widths = interpolate(full, target, i, iters)
        if phases.stopped(i, f"iter{i}", epochs[i - 1]):
            phases.write_metrics()
            return current, phases.history, False
        if i <= len(info["iterations"]):
            kept = _kept_tensors(info["iterations"][i - 1]["kept"])
            student = prune_resnet(current, kept)
        else:
            torch.manual_seed(args.seed + i)
            student, kept, recon = prune_step(current, widths, ds, args, device, i)
            info["iterations"].append({"widths": widths, "kept": _kept_lists(kept), **recon})
            write_json(info_path, info)
            log(f"pwh iteration {i}: pruned to {widths['stream']} (stream widths); hints layer "
                f"{'reconstructed' if recon['reconstructed'] else 'kept'} (mse {recon['hint_mse_pruned']:.4g} -> "
                f"{recon['hint_mse_reconstructed']:.4g})")
        t_idx = kept["stream"][-1].to(device)
        teacher = freeze(current)
        net = Distilled(student, teacher, hints=(hint_conv(student), hint_conv(teacher), t_idx),
                        hints_weight=args.hints_weight)
        net, finished = phases.run(net, i, f"iter{i}", epochs[i - 1])
        if not finished:
            phases.write_metrics()
            return net, phases.history, False
        to_orig = t_idx if to_orig is None else to_orig[t_idx]
        current = net.student
    net = Distilled(current, original, hints=(hint_conv(current), hint_conv(original), to_orig),
                    hints_weight=args.hints_weight)
    net, finished = phases.run(net, iters + 1, None, epochs[-1])
    net.report = {"pwh_iters": iters, "pwh_widths": block_widths(net.student),
                  "pwh_reconstruction": [{k: it[k] for k in ("hint_mse_pruned", "hint_mse_reconstructed",
                                                             "reconstructed")} for it in info["iterations"]]}
    phases.write_metrics()
    return net, phases.history, finished
