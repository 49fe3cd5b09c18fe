"""``adjoined-train --check``: the chosen backend against the reference ops on one real batch.

Every FusedAdjoinedConv2d of the model gets its real inputs (captured with forward hooks on a reference
forward pass). For each, the backend's forward values and all gradients (x_full, x_small, weight, bias,
small_scale) under the same random upstream gradients are compared with ``adjoined_conv2d_ref`` run in
float64 on the same captured tensors (same memory layout); then
the loss value and both logits' gradients against ``adjoined_loss_ref``. The error of a tensor is
``max |backend - reference| / max |reference|``. A layer fails beyond the tolerance of the check dtype.
"""
from __future__ import annotations

import importlib

import torch

from ..nn import FusedAdjoinedConv2d
from ..ops.conv import adjoined_conv2d_ref
from ..ops.loss import adjoined_loss_ref
from ..schedules import lambda_schedule

# fp32 allows TF32 tensor-core rounding on GPUs; low precision is compared with an fp32 reference.
TOLERANCE = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _backend_conv():
    """The public op, looked up at call time (so a test can inject a broken backend)."""
    return importlib.import_module("adjoined_kernels.ops.conv").adjoined_conv2d


def _backend_loss():
    return importlib.import_module("adjoined_kernels.ops.loss").adjoined_loss


def rel_err(got, ref) -> float:
    if got is None and ref is None:
        return 0.0
    if got is None or ref is None:
        return float("inf")
    got, ref = got.detach().float(), ref.detach().float()
    if got.shape != ref.shape:
        return float("inf")
    err = (got - ref).abs().max()
    return float(err / ref.abs().max().clamp_min(1e-30)) if torch.isfinite(err) else float("inf")


def capture_conv_inputs(model, x):
    """Run ``model(x)`` with the reference backend and return ``[(name, module, x_full, x_small, small_scale)]``."""
    records, hooks, saved = [], [], {}

    def hook(name):
        def fn(mod, args, kwargs, out):
            scale = kwargs.get("small_scale", args[2] if len(args) > 2 else None)
            records.append((name, mod, args[0].detach().clone(), args[1].detach().clone(),
                            None if scale is None else scale.detach().clone()))
        return fn

    for name, m in model.named_modules():
        if isinstance(m, FusedAdjoinedConv2d):
            saved[m] = m.backend
            m.backend = "reference"
            hooks.append(m.register_forward_hook(hook(name), with_kwargs=True))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, b in saved.items():
            m.backend = b
    return records, out


def _conv_case(mod, xf, xs, scale, dtype, backend, gen):
    """Errors of the backend (in ``dtype``) vs the float64 reference for one layer: dict name -> rel err."""
    w, b = mod.weight.detach(), None if mod.bias is None else mod.bias.detach()
    kw = dict(stride=mod.stride, padding=mod.padding, dilation=mod.dilation, small_out_channels=mod.small_out_channels)
    ref_in = [t.double().clone().requires_grad_(True) if t is not None else None for t in (xf, xs, w, b, scale)]
    run_in = [t.to(dtype).clone().requires_grad_(True) if t is not None else None for t in (xf, xs, w, b, scale)]
    zf_r, zs_r = adjoined_conv2d_ref(ref_in[0], ref_in[1], ref_in[2], ref_in[3], small_scale=ref_in[4], **kw)
    dzf = torch.randn(zf_r.shape, generator=gen).to(zf_r.device)
    dzs = torch.randn(zs_r.shape, generator=gen).to(zs_r.device)
    zf, zs = _backend_conv()(run_in[0], run_in[1], run_in[2], run_in[3], small_scale=run_in[4], backend=backend, **kw)
    names = ("x_full", "x_small", "weight", "bias", "small_scale")
    leaves_r = [(n, t) for n, t in zip(names, ref_in) if t is not None]
    leaves = [t for t in run_in if t is not None]
    g_ref = torch.autograd.grad((zf_r, zs_r), [t for _, t in leaves_r], (dzf.double(), dzs.double()),
                                allow_unused=True)
    g = torch.autograd.grad((zf, zs), leaves, (dzf.to(zf.dtype), dzs.to(zs.dtype)), allow_unused=True)
    errs = {"z_full": rel_err(zf, zf_r), "z_small": rel_err(zs, zs_r)}
    for (n, _), a, r in zip(leaves_r, g, g_ref):
        errs[f"d{n}"] = rel_err(a, r)
    return errs


def run_check(model, x, y, backend: str, dtype=torch.float32, lam: float = 1.0, temperature: float = 1.0,
              tol: float | None = None, log=print) -> bool:
    """Compare ``backend`` with the reference ops on the batch ``(x, y)``; print a table; True when all pass."""
    tol = TOLERANCE[dtype] if tol is None else tol
    model.train()
    records, (lf, ls) = capture_conv_inputs(model, x)
    if not records:
        log("check: the model has no FusedAdjoinedConv2d layer")
    gen = torch.Generator().manual_seed(0)
    log(f"check: backend={backend} dtype={str(dtype).replace('torch.', '')} batch={x.shape[0]} "
        f"tolerance={tol:g} (error = max|backend - reference| / max|reference|)")
    cols = ["z_full", "z_small", "dx_full", "dx_small", "dweight", "dbias"]
    width = max([len(r[0]) for r in records] + [len("loss")])
    log(f"{'layer'.ljust(width)}  {'shape (full | small)'.ljust(38)}  " + "  ".join(c.rjust(9) for c in cols)
        + "  status")
    failures = []
    for name, mod, xf, xs, scale in records:
        try:
            errs = _conv_case(mod, xf, xs, scale, dtype, backend, gen)
        except Exception as e:  # noqa: BLE001 - a crashing backend is a failed check, reported per layer
            errs = {"error": float("inf")}
            log(f"{name}: backend raised {type(e).__name__}: {e}")
        worst = max(errs.values())
        ok = worst <= tol
        if not ok:
            failures.append(name)
        shapes = f"{tuple(xf.shape)} | {tuple(xs.shape)}"
        log(f"{name.ljust(width)}  {shapes.ljust(38)}  "
            + "  ".join(f"{errs[c]:9.2e}" if c in errs else " " * 8 + "-" for c in cols)
            + f"  {'ok' if ok else 'FAIL'} (max {worst:.2e})")
    # loss: value and the gradients of both logits
    lf, ls = lf.detach(), ls.detach()
    rf, rs = lf.float().clone().requires_grad_(True), ls.float().clone().requires_grad_(True)
    bf, bs = lf.to(dtype).clone().requires_grad_(True), ls.to(dtype).clone().requires_grad_(True)
    try:
        ref = adjoined_loss_ref(rf, rs, y, lam, temperature=temperature)
        got = _backend_loss()(bf, bs, y, lam, temperature=temperature, backend=backend)
        gr = torch.autograd.grad(ref, (rf, rs))
        gg = torch.autograd.grad(got, (bf, bs))
        lerr = {"loss": rel_err(got, ref), "dlogits_full": rel_err(gg[0], gr[0]),
                "dlogits_small": rel_err(gg[1], gr[1])}
    except Exception as e:  # noqa: BLE001
        log(f"loss: backend raised {type(e).__name__}: {e}")
        lerr = {"loss": float("inf")}
    worst = max(lerr.values())
    if worst > tol:
        failures.append("loss")
    log(f"{'loss'.ljust(width)}  lam={lam:g} T={temperature:g} logits {tuple(lf.shape)}: "
        + ", ".join(f"{k} {v:.2e}" for k, v in lerr.items()) + f"  {'ok' if worst <= tol else 'FAIL'}")
    if failures:
        log(f"check FAILED: {len(failures)} of {len(records) + 1} beyond tolerance {tol:g}: {', '.join(failures)}")
    else:
        log(f"check passed: {len(records)} adjoined convs and the loss within {tol:g}")
    return not failures


def check_lambda(args) -> float:
    """The lambda used by the loss check: the schedule's final value (non-zero, so the KL part is tested)."""
    return lambda_schedule(1.0, args.lam_schedule, args.lam_scale) or 1.0
