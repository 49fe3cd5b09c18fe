"""Fused adjoined conv vs two cuDNN calls, the authors' masked form and torch.compile, on a GPU.

Shapes: every distinct adjoined conv of ResNet-50 (layers 2-4, 224 px) and CIFAR ResNet-18 (layers 2-4, 32 px),
read off the model modules; N in {32, 256}; alpha in {2, 4, 8, 16}; bf16, channels_last. Modes: fwd (fprop),
bwd (dgrad + wgrad over a saved forward), full (all three). Providers:
  cudnn2          two F.conv2d calls (full, and sliced weight for the small branch), cudnn.benchmark on
  authors         one F.conv2d over the concatenated batch [x_full; x_small zero-padded], small half masked
  compile         torch.compile(adjoined_conv2d_ref), default mode, dynamic shapes (one compile serves all)
  compile_max     the same with mode="max-autotune-no-cudagraphs", static shapes (autotunes per shape)
  triton          adjoined_conv2d(backend="triton");  triton_noshare: weight-tile sharing off;
                  triton_nocache: every launch through Triton's own launch path (ops/conv/triton/launch.py's cache off)
  cuda            adjoined_conv2d(backend="cuda"), when the extension is built
Every provider is checked against an fp32 reference first (bf16 error <= 2x cuDNN's own + 1e-3); one failing to
run is recorded as a row with its error. The providers of one problem and mode share one timing method: CUDA-graph
replay when the fastest one's GPU time is under ~50 us (host launch overhead excluded for all), else do_bench;
bwd always do_bench (its gpu_ms: the profiler's kernel time, as no graph captures a backward over a saved
forward). Work runs in priority order (ResNet-50 full alpha 2/4 first, then fwd/bwd, alpha 8/16, CIFAR,
triton_noshare and triton_nocache, compile_max) until --budget-s is spent; rows are appended as measured.
TFLOP/s count the adjoined FLOPs (full + compact small branch) for every provider, the authors' form included.

    PYTHONPATH=$PWD python3 bench/bench_conv.py --out bench/results/DATE-GPU-conv.csv [--quick] [--budget-s 540]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import adjoined_kernels as ak
from adjoined_kernels.ops.conv import fused_conv2d
from adjoined_kernels.ops.conv.triton import dgrad as conv_dgrad, fprop as conv_fprop, launch as _launch
from adjoined_kernels.ops.conv.triton import wgrad as conv_wgrad
from common import (NAN, Budget, CsvWriter, Timing, error_text, now, peak_rates, raise_recompile_limits, ratio,
                    read_rows, rel_err, run_meta, run_plan, shared_timing, time_fn, within_tolerance)

SUITES = {"resnet50": (ak.models.adjoined_resnet50, {"num_classes": 1000, "stem": "imagenet"}, 224),
          "cifar18": (ak.models.adjoined_resnet18, {"num_classes": 10, "stem": "cifar"}, 32)}
PROVIDERS = ("cudnn2", "authors", "triton", "cuda", "compile", "triton_noshare", "triton_nocache", "compile_max")
MODES = ("full", "fwd", "bwd")
BATCHES = (32, 256)
ALPHAS = (2, 4, 8, 16)
BYTES = 2  # bf16
FIELDS = ["kernel", "provider", "mode", "suite", "shape", "cin", "cout", "cin_s", "cout_s", "k", "stride", "hw",
          "alpha", "dtype", "N", "ms_p20", "ms_p50", "ms_p80", "gpu_ms", "tflops", "pct_peak_tflops", "roofline_ms",
          "pct_roofline", "speedup_vs_cudnn", "speedup_vs_authors", "speedup_vs_compile", "timing", "max_rel_err",
          "correct", "error", "peak_mem_MB", "peak_tflops_measured", "peak_gbps_measured", "gpu_name", "torch",
          "triton", "git_sha", "timestamp", "triton_configs"]


@dataclass(frozen=True)
class ConvShape:
    """One adjoined conv: full C_in -> C_out, small c_in_s -> c_out_s, k x k, on an hw x hw input."""
    suite: str
    name: str
    cin: int
    cout: int
    cin_s: int
    cout_s: int
    k: int
    stride: int
    pad: int
    hw: int

    @property
    def out_hw(self) -> int:
        return (self.hw + 2 * self.pad - self.k) // self.stride + 1

    def key(self) -> tuple:
        return (self.cin, self.cout, self.cin_s, self.cout_s, self.k, self.stride, self.pad, self.hw)


def _conv_names(model) -> dict:
    """id(conv module) -> "l{stage}.b{block}.conv{i}" / ".ds", from the model's per-stage block counts."""
    labels = [f"l{stage}.b{b}" for stage, n in enumerate(model.layers[1:], start=2) for b in range(n)]
    names = {}
    for label, blk in zip(labels, model.adjoined):
        for i, conv in enumerate(blk.convs, start=1):
            names[id(conv)] = f"{label}.conv{i}"
        if blk.ds_conv is not None:
            names[id(blk.ds_conv)] = f"{label}.ds"
    return names


@functools.lru_cache(maxsize=None)
def model_shapes(suite: str, alpha: int) -> tuple[ConvShape, ...]:
    """The distinct adjoined convs of a suite's model, in forward order (first occurrence names each).

    Read off the FusedAdjoinedConv2d modules during one forward on the meta device, so the list follows the
    model code (which convs get a full-width x_small, where the strides are).
    """
    build, kwargs, hw = SUITES[suite]
    with torch.device("meta"):
        model = build(alpha=alpha, backend="reference", **kwargs)
    names, seen = _conv_names(model), {}

    def record(mod, inputs, _outputs):
        x_full, x_small = inputs[:2]
        square = all(v[0] == v[1] for v in (mod.kernel_size, mod.stride, mod.padding, x_full.shape[2:]))
        assert square and mod.dilation == (1, 1) and x_small.shape[2:] == x_full.shape[2:], mod
        s = ConvShape(suite, names[id(mod)], mod.in_channels, mod.out_channels, x_small.shape[1],
                      mod.small_out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0], x_full.shape[2])
        seen.setdefault(s.key(), s)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, ak.FusedAdjoinedConv2d)]
    with torch.no_grad():
        model(torch.empty(1, kwargs.get("in_channels", 3), hw, hw, device="meta"))
    for h in hooks:
        h.remove()
    return tuple(seen.values())


def conv_flops(s: ConvShape, n: int, mode: str) -> int:
    """Adjoined FLOPs (2 per MAC): fprop, dgrad and wgrad each cost the same implicit GEMM over both branches."""
    fprop = 2 * n * s.out_hw ** 2 * s.k * s.k * (s.cout * s.cin + s.cout_s * s.cin_s)
    return fprop * {"fwd": 1, "bwd": 2, "full": 3}[mode]


def conv_bytes(s: ConvShape, n: int, mode: str, elem: int = BYTES) -> int:
    """Minimal DRAM traffic of a fused kernel: every operand read once, every result written once per pass.

    fprop: x_full, x_small, W -> z_full, z_small; dgrad: dz_full, dz_small, W -> dx_full, dx_small;
    wgrad: x_full, x_small, dz_full, dz_small -> dW.
    """
    x = n * s.hw ** 2 * (s.cin + s.cin_s)
    z = n * s.out_hw ** 2 * (s.cout + s.cout_s)
    w = s.cout * s.cin * s.k * s.k
    passes = {"fprop": x + w + z, "dgrad": z + w + x, "wgrad": x + z + w}
    names = {"fwd": ["fprop"], "bwd": ["dgrad", "wgrad"], "full": ["fprop", "dgrad", "wgrad"]}[mode]
    return elem * sum(passes[p] for p in names)


@dataclass(frozen=True)
class Job:
    """One problem (shape, N, alpha) and the (mode, provider) pairs to measure on it, in order."""
    tier: int
    label: str
    shape: ConvShape
    n: int
    alpha: int
    items: tuple


def tier(suite: str, alpha: int, mode: str, provider: str) -> tuple[int, str]:
    """Priority (lower runs first) and a label for the budget summary; the project's targets come first."""
    if provider == "compile_max":
        return 5, "compile_max (autotunes per shape)"
    if provider in ("triton_noshare", "triton_nocache"):
        return 4, provider
    if suite != "resnet50":
        return 3, f"{suite} shapes"
    if alpha not in (2, 4):
        return 2, "resnet50 alpha 8/16"
    if mode != "full":
        return 1, "resnet50 fwd/bwd alpha 2/4"
    return 0, "resnet50 full alpha 2/4"


def build_plan(suites=tuple(SUITES), batches=BATCHES, alphas=ALPHAS, modes=MODES, providers=PROVIDERS,
               shape_filter: str = "", max_shapes: int | None = None, done=frozenset()) -> list[Job]:
    """Jobs in priority order. Items already in ``done`` ((suite, shape, N, alpha, mode, provider)) are left out.

    Within a tier: suite, alpha, N, then the model's shape order; in a job, modes in MODES order and providers
    in PROVIDERS order, so cudnn2 (every speedup's baseline) is measured first.
    """
    items = []
    for si, suite in enumerate(suites):
        for alpha in alphas:
            shapes = [s for s in model_shapes(suite, alpha) if shape_filter in s.name][:max_shapes]
            for n in batches:
                for shi, s in enumerate(shapes):
                    for mode in modes:
                        for prov in providers:
                            if (suite, s.name, n, alpha, mode, prov) in done:
                                continue
                            rank, label = tier(suite, alpha, mode, prov)
                            order = (rank, si, alpha, n, shi, MODES.index(mode), PROVIDERS.index(prov))
                            items.append((order, label, s, n, alpha, mode, prov))
    items.sort(key=lambda it: it[0])
    jobs = []
    for order, label, s, n, alpha, mode, prov in items:
        if jobs and jobs[-1].tier == order[0] and (jobs[-1].shape, jobs[-1].n, jobs[-1].alpha) == (s, n, alpha):
            last = jobs.pop()
            jobs.append(Job(last.tier, label, s, n, alpha, last.items + ((mode, prov),)))
        else:
            jobs.append(Job(order[0], label, s, n, alpha, ((mode, prov),)))
    return jobs


@dataclass
class Problem:
    shape: ConvShape
    n: int
    xf: torch.Tensor
    xs: torch.Tensor
    w: torch.Tensor
    dzf: torch.Tensor
    dzs: torch.Tensor


def make_problem(s: ConvShape, n: int, device="cuda", dtype=torch.bfloat16) -> Problem:
    """Random NHWC inputs, weight and upstream gradients of one adjoined conv."""
    def rand(*shape, scale=1.0):
        t = torch.randn(*shape, device=device, dtype=torch.float32).mul_(scale).to(dtype)
        return t.contiguous(memory_format=torch.channels_last)

    p = s.out_hw
    return Problem(s, n, rand(n, s.cin, s.hw, s.hw).requires_grad_(), rand(n, s.cin_s, s.hw, s.hw).requires_grad_(),
                   rand(s.cout, s.cin, s.k, s.k, scale=1 / math.sqrt(s.cin * s.k * s.k)).requires_grad_(),
                   rand(n, s.cout, p, p), rand(n, s.cout_s, p, p))


def conv_args(pb: Problem) -> tuple:
    """(bias, stride, padding, dilation, c_out_s) in adjoined_conv2d's positional order."""
    return None, pb.shape.stride, pb.shape.pad, 1, pb.shape.cout_s


def reference(pb: Problem) -> list[torch.Tensor]:
    """fp32 [z_full, z_small, dx_full, dx_small, dW] on upcast inputs (TF32 off: it is the yardstick)."""
    leaves = [t.detach().float().requires_grad_() for t in (pb.xf, pb.xs, pb.w)]
    outs = ak.adjoined_conv2d_ref(*leaves, *conv_args(pb))
    grads = torch.autograd.grad(outs, leaves, (pb.dzf.float(), pb.dzs.float()))
    return [*outs, *grads]


@dataclass
class Provider:
    fn: Callable[[], tuple]   # forward: the provider's outputs
    leaves: tuple             # tensors the backward differentiates
    grad_outs: tuple          # upstream gradients of fn's outputs
    compare: Callable         # (outputs, leaf grads) -> [z_full, z_small, dx_full, dx_small, dW]
    context: Callable = contextlib.nullcontext  # entered around every checked or timed call


def _same(outs, grads):
    return [*outs, *grads]


def _ref_compile(*args):
    return ak.adjoined_conv2d_ref(*args)


def _ref_compile_max(*args):  # its own code object, so its dynamo cache and guards are separate
    return ak.adjoined_conv2d_ref(*args)


@functools.lru_cache(maxsize=None)
def compiled(name: str):
    if name == "compile":
        return torch.compile(_ref_compile, dynamic=True)
    return torch.compile(_ref_compile_max, mode="max-autotune-no-cudagraphs", dynamic=False)


def _authors(pb: Problem) -> Provider:
    """The authors' form: one conv over [x_full; x_small zero-padded to C_in], the small half's extra output
    channels masked. Its activations stay concatenated between layers, so the concatenation is not timed."""
    s, n = pb.shape, pb.n
    cl = torch.channels_last
    xs_wide = F.pad(pb.xs.detach(), (0, 0, 0, 0, 0, s.cin - s.cin_s))
    xcat = torch.cat([pb.xf.detach(), xs_wide]).contiguous(memory_format=cl).requires_grad_()
    mask = torch.zeros(1, s.cout, 1, 1, device=xcat.device, dtype=xcat.dtype)
    mask[:, :s.cout_s] = 1
    dzs_wide = F.pad(pb.dzs, (0, 0, 0, 0, 0, s.cout - s.cout_s)).contiguous(memory_format=cl)

    def fn():
        z = F.conv2d(xcat, pb.w, None, s.stride, s.pad)
        return z[:n], z[n:] * mask

    def compare(outs, grads):
        dx, dw = grads
        return [outs[0], outs[1][:, :s.cout_s], dx[:n], dx[n:, :s.cin_s], dw]

    return Provider(fn, (xcat, pb.w), (pb.dzf, dzs_wide), compare)


def make_provider(name: str, pb: Problem) -> Provider:
    if name == "authors":
        return _authors(pb)
    xf, xs, w, s = pb.xf, pb.xs, pb.w, pb.shape
    args = conv_args(pb)
    fns = {
        "cudnn2": lambda: (F.conv2d(xf, w, None, s.stride, s.pad),
                           F.conv2d(xs, w[:s.cout_s, :s.cin_s], None, s.stride, s.pad)),
        "compile": lambda: compiled("compile")(xf, xs, w, *args),
        "compile_max": lambda: compiled("compile_max")(xf, xs, w, *args),
        "triton": lambda: ak.adjoined_conv2d(xf, xs, w, *args, backend="triton"),
        "triton_noshare": lambda: fused_conv2d("triton", xf, xs, w, None, (s.stride,) * 2, (s.pad,) * 2, (1, 1),
                                               s.cout_s, None, share_weights=False),
        "cuda": lambda: ak.adjoined_conv2d(xf, xs, w, *args, backend="cuda"),
    }
    if name == "triton_nocache":
        return Provider(fns["triton"], (xf, xs, w), (pb.dzf, pb.dzs), _same, _triton_launch_path)
    return Provider(fns[name], (xf, xs, w), (pb.dzf, pb.dzs), _same)


@contextlib.contextmanager
def _triton_launch_path():
    """Triton launches without the relaunch cache, to show what it saves."""
    old, _launch.FAST = _launch.FAST, False
    try:
        yield
    finally:
        _launch.FAST = old


def runner(p: Provider, mode: str):
    """The callable timed for ``mode`` (fprop only, the backward of one saved forward, or both), inside the
    provider's context."""
    with p.context():
        fn = _runner(p, mode)
    if p.context is contextlib.nullcontext:
        return fn

    def in_context():
        with p.context():
            return fn()
    return in_context


def _runner(p: Provider, mode: str):
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return p.fn()
        return fwd
    if mode == "bwd":
        outs = p.fn()
        return lambda: torch.autograd.grad(outs, p.leaves, p.grad_outs, retain_graph=True)
    return lambda: torch.autograd.grad(p.fn(), p.leaves, p.grad_outs)


def check(p: Provider, ref: list[torch.Tensor]) -> float:
    """Max relative error of the provider's outputs and gradients against the fp32 reference."""
    with p.context():
        outs = p.fn()
        got = p.compare(outs, torch.autograd.grad(outs, p.leaves, p.grad_outs))
    return max(rel_err(a, r) for a, r in zip(got, ref))


PASSES = {"fwd": ("fprop",), "bwd": ("dgrad", "wgrad"), "full": ("fprop", "dgrad", "wgrad")}


def triton_configs(mode: str) -> str:
    """The autotune configs of the Triton passes ``mode`` launches, from their latest launch, as
    "pass BMxBNxBK/warps/stages"; empty when none was autotuned (the interpreter, ADJOINED_TRITON_AUTOTUNE=0)."""
    launchers = {"fprop": conv_fprop._fprop_launcher, "dgrad": conv_dgrad._dgrad_launcher,
                 "wgrad": conv_wgrad._wgrad_launcher}
    out = []
    for name in PASSES[mode]:
        c = launchers[name].last_config
        if c is not None:
            out.append(f"{name} {c.kwargs['BM']}x{c.kwargs['BN']}x{c.kwargs['BK']}/{c.num_warps}/{c.num_stages}")
    return "; ".join(out)


def make_row(job: Job, mode: str, prov: str, t: Timing | None, err: float, ok: bool, error: str,
             base: dict, peaks: dict, meta: dict) -> dict:
    """One CSV row; ``base`` maps provider -> p50 ms of this problem and mode (the speedup baselines)."""
    s, n = job.shape, job.n
    flops, nbytes = conv_flops(s, n, mode), conv_bytes(s, n, mode)
    p50 = t.p50 if t else NAN
    # roofline: the time at the measured peak compute or copy bandwidth, whichever binds
    roof_ms = max(flops / peaks["peak_tflops"] / 1e9, nbytes / peaks["peak_gbps"] / 1e6)
    tflops = flops / p50 / 1e9 if t else NAN
    return dict(kernel="adjoined_conv2d", provider=prov, mode=mode, suite=s.suite, shape=s.name, cin=s.cin,
                cout=s.cout, cin_s=s.cin_s, cout_s=s.cout_s, k=s.k, stride=s.stride, hw=s.hw, alpha=job.alpha,
                dtype="bf16", N=n, ms_p20=t.p20 if t else NAN, ms_p50=p50, ms_p80=t.p80 if t else NAN,
                gpu_ms=t.gpu_ms if t else NAN,
                tflops=tflops, pct_peak_tflops=100 * tflops / peaks["peak_tflops"], roofline_ms=roof_ms,
                pct_roofline=100 * roof_ms / p50 if t else NAN, speedup_vs_cudnn=ratio(base.get("cudnn2"), p50),
                speedup_vs_authors=ratio(base.get("authors"), p50),
                speedup_vs_compile=ratio(base.get("compile"), p50), timing=t.method if t else "",
                max_rel_err=err, correct=ok, error=error, peak_mem_MB=t.peak_mem_MB if t else NAN,
                peak_tflops_measured=peaks["peak_tflops"], peak_gbps_measured=peaks["peak_gbps"], **meta,
                timestamp=now(), triton_configs=triton_configs(mode) if t and prov.startswith("triton") else "")


class ConvBench:
    """Runs jobs, remembering every p50 so later jobs (other tiers) can compute their speedups."""

    def __init__(self, out: str, peaks: dict, meta: dict, device="cuda"):
        prev = read_rows(out)
        self.csv, self.peaks, self.meta, self.device = CsvWriter(out, FIELDS), peaks, meta, device
        self.p50 = {(r["suite"], r["shape"], int(r["N"]), int(r["alpha"]), r["mode"], r["provider"]):
                    float(r["ms_p50"]) for r in prev}

    def done(self) -> set:
        return set(self.p50)

    def run(self, job: Job) -> None:
        s = job.shape
        pkey = (s.suite, s.name, job.n, job.alpha)
        items = list(job.items)
        # cudnn2 is every speedup's baseline: measure it first if no earlier job did
        items[:0] = [(m, "cudnn2") for m in dict.fromkeys(m for m, _ in job.items)
                     if pkey + (m, "cudnn2") not in self.p50 and (m, "cudnn2") not in job.items]
        pb = make_problem(s, job.n, self.device)
        ref = reference(pb)
        provs, errs, fails = {}, {}, {}
        for name in dict.fromkeys(["cudnn2"] + [p for _, p in items]):
            try:
                provs[name] = make_provider(name, pb)
                errs[name] = check(provs[name], ref)
            except Exception as e:
                fails[name], errs[name] = error_text(e), NAN
        del ref
        cudnn_err = errs.get("cudnn2", NAN)
        good = {p for p in provs if p not in fails and
                within_tolerance(errs[p], cudnn_err if math.isfinite(cudnn_err) else 0.0)}
        methods = {}  # one timing method per mode for all its providers (bwd: no graphs, see runner)
        for mode in dict.fromkeys(m for m, _ in items):
            fns = [runner(provs[p], mode) for m, p in items if m == mode and p in good] if mode != "bwd" else []
            methods[mode] = shared_timing(fns, graph_ok=mode != "bwd")
        line = {}
        for mode, prov in items:
            ok = prov in good
            t, error = None, fails.get(prov, "" if ok else "wrong result: not timed")
            if ok:
                try:
                    t = time_fn(runner(provs[prov], mode), graph_ok=mode != "bwd", method=methods[mode])
                except Exception as e:
                    error = error_text(e)
                    torch.cuda.empty_cache()
            self.p50[pkey + (mode, prov)] = t.p50 if t else NAN
            base = {b: self.p50.get(pkey + (mode, b)) for b in ("cudnn2", "authors", "compile")}
            self.csv.write(make_row(job, mode, prov, t, errs[prov], ok, error, base, self.peaks, self.meta))
            line.setdefault(mode, []).append(f"{prov}={t.p50:.3f}" if t else f"{prov}=({error[:40]})")
        for mode, parts in line.items():
            print(f"{s.suite:8s} {s.name:12s} N={job.n:3d} a={job.alpha:2d} {mode:4s} " + " ".join(parts), flush=True)
        del pb, provs
        torch.cuda.empty_cache()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="CSV path; an existing file with this header is resumed")
    ap.add_argument("--budget-s", type=float, default=540, help="stop starting jobs after this many seconds")
    ap.add_argument("--quick", action="store_true", help="smoke set: 2 shapes per suite, N=32, alpha=4, no "
                                                         "compile_max")
    ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    ap.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--alpha", type=int, nargs="+", default=list(ALPHAS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    ap.add_argument("--shapes", default="", help="substring filter on shape names, e.g. l3.")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    if not torch.cuda.is_available():
        print("bench_conv needs a CUDA GPU", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 reference exact
    raise_recompile_limits()  # compile_max recompiles per shape
    providers = [p for p in args.providers if p != "cuda" or "cuda" in ak.available_backends()]
    if "cuda" in args.providers and "cuda" not in providers:
        print("cuda backend unavailable, not measured:", ak._backend._cuda_status(), flush=True)
    if args.quick:
        args.batch, args.alpha = [32], [4]
        providers = [p for p in providers if p != "compile_max"]
    bench = ConvBench(args.out, peak_rates(), run_meta())
    jobs = build_plan(args.suites, args.batch, args.alpha, args.modes, providers, args.shapes,
                      2 if args.quick else None, frozenset(bench.done()))
    print(f"{len(jobs)} jobs, budget {budget.left():.0f} s; peaks {bench.peaks}", flush=True)
    done, skipped = run_plan(jobs, bench.run, budget, label=lambda j: j.label)
    print(f"done {len(done)} jobs, skipped {len(skipped)}, {budget.clock() - budget.start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
