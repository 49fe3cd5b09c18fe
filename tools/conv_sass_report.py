"""sm_90 compiler figures for the fused adjoined-convolution kernels (fprop, dgrad, wgrad), without a GPU.

For a ResNet-50 layer-3 shape it runs the real launcher (``_fprop_launch`` / ``_dgrad_launch`` /
``_wgrad_launch``) on CPU tensors of the benchmark's layout (bf16, channels_last) with the Triton kernel
swapped for a recorder, so the arguments, the autotune pruning and the launcher's specialisation (integers
equal to 1 become constants, pointers and integers divisible by 16 get ``tt.divisibility``) are exactly
those of a GPU launch. Each kept autotune config is then compiled for sm_90 by Triton's own pipeline, and
the script reads:

- the TTGIR: MMA layout version (2 = mma.sync, 3 = Hopper wgmma), whether each dot's A operand comes
  from shared memory or registers, async copies / TMA, the shared buffers (stages x tile);
- ptxas's own log (registers, spill bytes, wgmma serialisation warnings);
- the SASS (``cuobjdump -sass``): HGMMA / HMMA, global loads by width (LDGSTS = cp.async, UTMALDG = TMA,
  LDG), barriers, local-memory traffic, integer instructions and 32-bit divisions (MUFU.RCP), in the
  whole kernel and in every loop that issues MMAs (a backward branch).

Columns: progs = grid size; spill = ptxas spill store/load bytes; CTA/SM from registers, shared memory
and warps with H100 limits; waves = progs / (CTA/SM x 132 SMs); serialised = ptxas reported C7515 (every
wgmma waits for the previous one: one WARPGROUP.DEPBAR per HGMMA). Per K loop: wgwait = WARPGROUP.DEPBAR
count, int = integer ALU instructions (moves excluded), div = MUFU.RCP (each 32-bit division by a value
unknown at compile time costs one, plus ~20 integer instructions), instr/MMAclk = instructions one warp
issues per iteration over the tensor-core cycles its MMAs occupy at the dense bf16 peak: above 1 the loop
is issue-bound below that peak even with perfect overlap. These are compiler figures, not GPU timings.

The compiler is the Triton on ``sys.path``. To see what another version produces (the GPU runs use
3.6), put its unpacked wheel first: ``PYTHONPATH=/path/to/triton-3.6-site python tools/conv_sass_report.py``.

    python tools/conv_sass_report.py                                   # every pass, pruned configs, l3-3x3
    python tools/conv_sass_report.py --pass fprop --shape l3-1x1 --config 128,128,64,8,3
    python tools/conv_sass_report.py --pass dgrad --share off --dump /tmp/sass   # also write ttgir/ptx/sass
    python tools/conv_sass_report.py --list                            # the pruned configs, no compiling
    python tools/conv_sass_report.py --pass fprop --pass dgrad --share both --check   # exit 1 on a finding

``--check`` makes the exit status 1 when any compiled config has serialised wgmmas (C7515), spills
registers, or divides (MUFU.RCP) inside a K loop; each finding is printed as a ``CHECK:`` line.

Run it without TRITON_INTERPRET (it is removed here, before triton is imported).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass, field
from unittest import mock

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from _check import verdict  # noqa: E402
from adjoined_kernels.ops.conv.triton import dgrad as conv_dgrad  # noqa: E402
from adjoined_kernels.ops.conv.triton import fprop as conv_fprop  # noqa: E402
from adjoined_kernels.ops.conv.triton import launch as _launch  # noqa: E402
from adjoined_kernels.ops.conv.triton import wgrad as conv_wgrad  # noqa: E402

_launch.FAST = False  # every launch through launcher.kernel[grid](...), where _Recorder stands in

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
TARGET = GPUTarget("cuda", 90, 32)

# H100 SXM per-SM limits.
SMS = 132
REGS_PER_SM = 65536
SMEM_PER_SM = 228 * 1024
SMEM_PER_CTA_RESERVED = 1024
WARPS_PER_SM = 64
CTAS_PER_SM = 32

# ResNet-50 layer-3 convolutions, as in bench/bench_conv.py (C_in, C_out, k, stride, input H=W).
SHAPES = {
    "l3-1x1": (1024, 256, 1, 1, 14),    # l3.bx.conv1
    "l3-3x3": (256, 256, 3, 1, 14),     # l3.bx.conv2
    "l3-3x3s2": (256, 256, 3, 2, 28),   # l3.b0.conv2
    "l3-1x1up": (256, 1024, 1, 1, 14),  # l3.b0.conv3
    "l3-ds": (512, 1024, 1, 2, 28),     # l3.b0.ds
}

PASSES = ("fprop", "dgrad", "wgrad")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ----------------------------------------------------------------------------------------------------
# The launch as the real launcher makes it


class _Recorder:
    """Stands in for an autotuned kernel: ``kernel[grid](*args, **kwargs)`` records instead of launching."""

    def __init__(self, autotuner):
        self.autotuner = autotuner
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


@dataclass
class Launch:
    """One recorded launch: the autotuned kernel, its grid function, positional and keyword arguments."""
    autotuner: object
    grid: object
    args: tuple
    kwargs: dict

    @property
    def named_args(self):
        return dict(zip(self.autotuner.arg_names, self.args))

    def pruned_configs(self):
        """The configs the autotuner would benchmark for this launch (its own early_config_prune)."""
        return self.autotuner.early_config_prune(self.autotuner.configs, self.named_args, **self.kwargs)

    def programs(self, config):
        return self.grid({**self.named_args, **self.kwargs, **config.all_kwargs()})[0]


def _tensors(shape, batch, alpha, dtype):
    """x_full, x_small, weight, dz_full, dz_small as the benchmark passes them (channels_last, compact small)."""
    c_in, c_out, k, stride, hw = shape
    pad = k // 2
    out = (hw + 2 * pad - k) // stride + 1
    cl = dict(dtype=dtype, memory_format=torch.channels_last)
    x_full = torch.empty((batch, c_in, hw, hw), **cl)
    x_small = torch.empty((batch, c_in // alpha, hw, hw), **cl)
    weight = torch.empty((c_out, c_in, k, k), **cl)
    dz_full = torch.empty((batch, c_out, out, out), **cl)
    dz_small = torch.empty((batch, c_out // alpha, out, out), **cl)
    return x_full, x_small, weight, dz_full, dz_small, (stride, stride), (pad, pad)


def record_launch(pass_, shape, batch=256, alpha=2, share=True, dtype=torch.bfloat16, scale=False):
    """Run the pass's launcher on CPU tensors with its Triton kernel replaced by a recorder.

    ``scale``: pass a small_scale to every pass (fprop: also a bias and save_pre, wgrad: also db, as
    training with a learnable scale and a bias does); otherwise neither, the benchmark's default.
    """
    xf, xs, w, dzf, dzs, stride, pad = _tensors(shape, batch, alpha, dtype)
    dil = (1, 1)
    small_scale = torch.empty(dzs.shape[1], dtype=dtype) if scale else None
    bias = torch.empty(dzf.shape[1], dtype=dtype) if scale else None
    if pass_ == "fprop":
        rec = _Recorder(conv_fprop._fprop_kernel)
        with mock.patch.object(conv_fprop._fprop_launcher, "kernel", rec):
            conv_fprop._fprop_launch(xf, xs, w, bias, small_scale, stride, pad, dil, dzs.shape[1], scale, share)
    elif pass_ == "dgrad":
        rec = _Recorder(conv_dgrad._dgrad_kernel)
        hw = (xf.shape[2], xf.shape[3], xs.shape[2], xs.shape[3])
        with mock.patch.object(conv_dgrad._dgrad_launcher, "kernel", rec):
            conv_dgrad._dgrad_launch(dzf, dzs, w, small_scale, hw, xs.shape[1], stride, pad, dil, share)
    else:
        rec = _Recorder(conv_wgrad._wgrad_kernel)
        splits = conv_wgrad._splits
        gpu = types.SimpleNamespace(type="cuda", index=0)  # the split-K sizing of a GPU launch

        def gpu_splits(k1, k2, t1, t2, _device):
            return splits(k1, k2, t1, t2, gpu)
        with mock.patch.object(conv_wgrad._wgrad_launcher, "kernel", rec), \
                mock.patch.object(conv_wgrad._reduce_launcher, "kernel", _Recorder(None)), \
                mock.patch.object(conv_wgrad, "_splits", gpu_splits), \
                mock.patch.object(conv_wgrad, "_sm_count", lambda _index: SMS):
            conv_wgrad._wgrad_plan.cache_clear()  # plans hold the split sizing: none made for the CPU may serve
            conv_wgrad._wgrad_launch(xf, xs, dzf, dzs, small_scale, w.shape[2:], stride, pad, dil, scale)
        conv_wgrad._wgrad_plan.cache_clear()  # nor may this GPU-sized one serve a CPU launch later
    (grid, args, kwargs), = rec.calls
    return Launch(rec.autotuner, grid, args, kwargs)


def specialise(launch, config):
    """(signature, constexprs, attrs, options) exactly as JITFunction.run derives them for this launch."""
    fn = launch.autotuner.fn
    backend = make_backend(TARGET)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs, **config.all_kwargs())
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    if hasattr(knobs.compilation, "instrumentation_mode"):  # Triton >= 3.7
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def compile_sm90(launch, config):
    """Compile one config for sm_90: (CompiledKernel, ptxas log)."""
    signature, constexprs, attrs, options = specialise(launch, config)
    src = ASTSource(launch.autotuner.fn, signature, constexprs, attrs)
    out = io.StringIO()
    with mock.patch.object(knobs.nvidia, "dump_ptxas_log", True), contextlib.redirect_stdout(out):
        kernel = triton.compile(src, target=TARGET, options=options.__dict__)
    log = out.getvalue()
    if "Used" not in log:  # served from Triton's cache: ptxas did not run, so run it on the cached PTX
        log = ptxas_log(kernel.asm["ptx"])
    return kernel, log


def ptxas_log(ptx):
    """``ptxas -v`` output for PTX, with the flags Triton passes for sm_90a."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        return subprocess.run([os.path.join(BIN, "ptxas"), "-lineinfo", "-v", "--regAllocOptLevel=2",
                               "--gpu-name=sm_90a", src, "-o", os.path.join(d, "k.o")],
                              capture_output=True, text=True, check=True).stderr


# ----------------------------------------------------------------------------------------------------
# Reading the compiler's output


def sass_lines(cubin):
    """The SASS instruction lines of a cubin (cuobjdump -sass), address comments kept."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", path], capture_output=True, text=True,
                              check=True).stdout
    return [ln for ln in sass.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/\s+[^/\s]", ln)]


def loops(lines):
    """[(start, end)] line ranges of loop bodies: a backward branch to an address inside the kernel."""
    addr = [int(re.search(r"/\*([0-9a-f]{4,})\*/", ln).group(1), 16) for ln in lines]
    where = {a: i for i, a in enumerate(addr)}
    out = []
    for i, ln in enumerate(lines):
        m = re.search(r"\bBRA\b[^;]*?0x([0-9a-f]+)", ln)
        if m and int(m.group(1), 16) < addr[i] and int(m.group(1), 16) in where:
            out.append((where[int(m.group(1), 16)], i))
    return out


def _opcode(line):
    """Opcode with modifiers (``LDGSTS.E.BYPASS.LTC128B.128``), predicate guard stripped."""
    m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)", line)
    return m.group(1) if m else ""


def _width(op):
    """Access width in bits from the opcode's modifiers (no suffix = 32)."""
    for w in ("128", "64", "U16", "S16", "U8", "S8"):
        if re.search(rf"\.{w}(\.|$)", op):
            return {"U16": "16", "S16": "16", "U8": "8", "S8": "8"}.get(w, w)
    return "32"


def _mma_cycles(op):
    """Tensor-core cycles one warp's MMA instruction keeps its SM sub-partition busy (dense bf16/fp16 on H100:
    1024 FLOP/clk per sub-partition; a warpgroup's HGMMA m64nNk16 gives each of its 4 warps 16xNx16)."""
    m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", op)
    if m:
        return int(m.group(1)) // 4 * int(m.group(2)) * int(m.group(3)) * 2 / 1024
    m = re.match(r"HMMA\.168(\d+)", op)  # mma.sync m16n8kK on one sub-partition
    if m:
        return 16 * 8 * int(m.group(1)) * 2 / 1024
    return 0


INT_OPS = ("IMAD", "IADD3", "VIADD", "LEA", "ISETP", "SEL", "LOP3", "SHF", "IABS", "IMNMX", "VIMNMX", "PRMT", "IMUL")


def count(lines):
    """Instruction counts of a SASS region."""
    ops = [_opcode(ln) for ln in lines]
    base = [o.split(".")[0] for o in ops]
    c = dict(instr=len(ops), hgmma=base.count("HGMMA"), hmma=base.count("HMMA"), utmaldg=base.count("UTMALDG"),
             bar=sum(o.startswith("BAR.") for o in ops), sts=base.count("STS"), lds=base.count("LDS") +
             base.count("LDSM"), spill=base.count("LDL") + base.count("STL"),
             div=sum(o.startswith("MUFU.RCP") for o in ops), i2f=sum(o.startswith("I2F") for o in ops),
             wgwait=sum(o.startswith("WARPGROUP.DEPBAR") for o in ops),
             imad=sum(b == "IMAD" and not o.startswith("IMAD.MOV") for o, b in zip(ops, base)),
             int=sum(b in INT_OPS and not o.startswith("IMAD.MOV") for o, b in zip(ops, base)))
    c["mma_clk"] = sum(_mma_cycles(o) for o in ops)
    for kind in ("LDGSTS", "LDG", "STG"):
        widths = {}
        for o, b in zip(ops, base):
            if b == kind:
                widths[_width(o)] = widths.get(_width(o), 0) + 1
        c[kind.lower()] = widths
    return c


def mma_loops(lines):
    """Counts of every loop that issues MMAs (the K loops), innermost first by position."""
    out = []
    for a, b in loops(lines):
        c = count(lines[a:b + 1])
        if c["hgmma"] or c["hmma"]:
            out.append(c)
    return out


def ttgir_facts(ttgir):
    """What the TTGIR says about the dots and operand movement."""
    dots = re.findall(r"= (ttng\.warp_group_dot|tt\.dot) (%[\w#]+), (%[\w#]+)[^\n]*?:\s*([^\n]*)", ttgir)
    a_smem = sum("!ttg.memdesc" in sig.split(" * ")[0] for _, _, _, sig in dots)
    allocs = re.findall(r"ttg\.local_alloc[^\n]*?!ttg\.memdesc<([0-9x]+)x(bf16|f16|f32|i\d+)", ttgir)
    return dict(mma_versions=sorted(set(re.findall(r"#ttg\.nvidia_mma<\{versionMajor = (\d+)", ttgir))),
                wgmma_dots=sum(d[0] == "ttng.warp_group_dot" for d in dots),
                mma_dots=sum(d[0] == "tt.dot" for d in dots), a_from_smem=a_smem,
                async_copies=ttgir.count("ttg.async_copy_global_to_local"),
                async_waits=ttgir.count("ttg.async_wait"),
                tma=len(re.findall(r"ttng\.async_tma_copy|tt\.descriptor_load|ttng\.tma", ttgir)),
                smem_buffers=["x".join(shape.split("x")) + dt for shape, dt in allocs])


def ptxas_facts(log):
    """Registers, spill bytes and performance advisories from ptxas -v."""
    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else -1
    return dict(regs=num(r"Used (\d+) registers"), spill_st=num(r"(\d+) bytes spill stores"),
                spill_ld=num(r"(\d+) bytes spill loads"), stack=num(r"(\d+) bytes stack frame"),
                advisories=sorted(set(re.findall(r"\((C\d+)\) ([^\n]*)", log))))


def ctas_per_sm(regs, smem, warps):
    """Resident CTAs per H100 SM: registers (per-warp 256-register granules), shared memory, warps."""
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = REGS_PER_SM // (per_warp * warps)
    by_smem = SMEM_PER_SM // (smem + SMEM_PER_CTA_RESERVED)
    return min(by_regs, by_smem, WARPS_PER_SM // warps, CTAS_PER_SM)


# ----------------------------------------------------------------------------------------------------
# Report


@dataclass
class Result:
    pass_: str
    shape: str
    share: bool
    config: tuple
    programs: int
    ptxas: dict
    smem: int
    ttgir: dict
    total: dict
    loops: list = field(default_factory=list)
    asm: dict = field(default_factory=dict)


def config_tuple(config):
    k = config.kwargs
    return k["BM"], k["BN"], k["BK"], config.num_warps, config.num_stages


def analyse(launch, config, pass_, shape, share):
    """Compile one config and collect every figure of the table."""
    kernel, log = compile_sm90(launch, config)
    lines = sass_lines(kernel.asm["cubin"])
    return Result(pass_, shape, share, config_tuple(config), launch.programs(config), ptxas_facts(log),
                  kernel.metadata.shared, ttgir_facts(kernel.asm["ttgir"]), count(lines), mma_loops(lines),
                  dict(ttgir=kernel.asm["ttgir"], ptx=kernel.asm["ptx"], sass="\n".join(lines), ptxas=log))


def _widths(d):
    return "/".join(f"{d.get(w, 0)}" for w in ("128", "64", "32", "16")) if d else "-"


HEADER = (f"{'pass':5s} {'shape':9s} {'share':5s} {'BM,BN,BK,w,st':15s} {'progs':>6s} {'regs':>4s} "
          f"{'spill':>7s} {'smemKB':>6s} {'CTA/SM':>6s} {'waves':>5s} {'mma':>4s} {'HGMMA':>5s} {'HMMA':>5s} "
          f"{'LDGSTS128/64/32/16':>18s} {'LDG128/64/32/16':>15s} {'TMA':>3s} {'BAR':>3s} {'LDL+STL':>7s} "
          f"{'serialised':>10s}")
LOOP_HEADER = (f"{'':38s}K-loop: {'instr':>5s} {'MMA':>4s} {'LDGSTS128/64/32/16':>18s} {'LDG':>9s} "
               f"{'BAR':>3s} {'wgwait':>6s} {'int':>4s} {'IMAD':>4s} {'int/MMA':>7s} {'div':>3s} {'instr/MMAclk':>12s}")


def format_result(r):
    """The table row of one compiled config, then one line per K loop."""
    cta = ctas_per_sm(r.ptxas["regs"], r.smem, r.config[3])
    waves = r.programs / (cta * SMS) if cta else float("inf")
    mma = "v" + ",".join(r.ttgir["mma_versions"]) if r.ttgir["mma_versions"] else "-"
    t = r.total
    serial = "C7515" if any(code == "C7515" for code, _ in r.ptxas["advisories"]) else "no"
    share = "-" if r.pass_.startswith("wgrad") else str(r.share)
    row = (f"{r.pass_:5s} {r.shape:9s} {share:5s} {','.join(map(str, r.config)):15s} {r.programs:6d} "
           f"{r.ptxas['regs']:4d} {r.ptxas['spill_st']:3d}/{r.ptxas['spill_ld']:<3d} {r.smem / 1024:6.1f} {cta:6d} "
           f"{waves:5.2f} {mma:>4s} {t['hgmma']:5d} {t['hmma']:5d} {_widths(t['ldgsts']):>18s} "
           f"{_widths(t['ldg']):>15s} {t['utmaldg']:3d} {t['bar']:3d} {t['spill']:7d} {serial:>10s}")
    out = [row]
    for c in r.loops:
        n_mma = c["hgmma"] + c["hmma"]
        out.append(f"{'':38s}        {c['instr']:5d} {n_mma:4d} {_widths(c['ldgsts']):>18s} "
                   f"{_widths(c['ldg']):>9s} {c['bar']:3d} {c['wgwait']:6d} {c['int']:4d} {c['imad']:4d} "
                   f"{c['int'] / n_mma:7.1f} {c['div']:3d} {c['instr'] / c['mma_clk']:12.2f}")
    g = r.ttgir
    out.append(f"{'':38s}TTGIR: warp_group_dot {g['wgmma_dots']} (A from smem {g['a_from_smem']}), tt.dot "
               f"{g['mma_dots']}, async copies {g['async_copies']}, async waits {g['async_waits']}, TMA {g['tma']}, "
               f"smem buffers {' '.join(g['smem_buffers']) or '-'}")
    for code, text in r.ptxas["advisories"]:
        out.append(f"{'':38s}ptxas ({code}) {text[:160]}")
    return "\n".join(out)


def findings(r):
    """What ``--check`` rejects in one compiled config: serialised wgmmas, spills, divisions in a K loop."""
    name = f"{r.pass_} {r.shape} share={r.share} {','.join(map(str, r.config))}"
    out = []
    if any(code == "C7515" for code, _ in r.ptxas["advisories"]):
        out.append(f"{name}: wgmma serialised (ptxas C7515)")
    if r.ptxas["spill_st"] > 0 or r.ptxas["spill_ld"] > 0:
        out.append(f"{name}: spills {r.ptxas['spill_st']}/{r.ptxas['spill_ld']} bytes store/load")
    if any(c["div"] for c in r.loops):
        out.append(f"{name}: {sum(c['div'] for c in r.loops)} divisions (MUFU.RCP) in K loops")
    return out


def dump(r, folder):
    """Write the TTGIR, PTX, SASS and ptxas log of one result under ``folder``."""
    os.makedirs(folder, exist_ok=True)
    stem = f"{r.pass_}-{r.shape}-{'share' if r.share else 'noshare'}-{'_'.join(map(str, r.config))}"
    for ext, text in r.asm.items():
        with open(os.path.join(folder, f"{stem}.{ext}"), "w") as f:
            f.write(text)


def _parse_config(text):
    bm, bn, bk, w, st = (int(v) for v in text.split(","))
    return triton.Config(dict(BM=bm, BN=bn, BK=bk, GROUP_M=8), num_warps=w, num_stages=st)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pass", dest="passes", choices=PASSES, action="append",
                    help="pass to compile (repeatable; default: all three)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="l3-3x3")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--alpha", type=int, default=2)
    ap.add_argument("--share", choices=("on", "off", "both"), default="on",
                    help="weight-tile sharing in fprop/dgrad (wgrad has none)")
    ap.add_argument("--config", action="append", metavar="BM,BN,BK,WARPS,STAGES",
                    help="compile these configs instead of the autotuner's pruned space (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the pruned configs and grids, compile nothing")
    ap.add_argument("--dump", metavar="DIR", help="also write ttgir/ptx/sass/ptxas log per config to DIR")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                    help="operand dtype (fp32 runs TF32 wgmmas, as cuDNN does by default)")
    ap.add_argument("--scale", action="store_true",
                    help="with a small_scale (fprop: also bias and save_pre; wgrad: also db), as in training")
    ap.add_argument("--check", action="store_true",
                    help="exit status 1 if a config has serialised wgmmas (C7515), spills or K-loop divisions")
    a = ap.parse_args(argv)
    failed = []
    ptxas = subprocess.run([os.path.join(BIN, "ptxas"), "--version"], capture_output=True, text=True)
    print(f"triton {triton.__version__}, target sm_90, {ptxas.stdout.strip().splitlines()[-1]}; shape {a.shape} "
          f"{SHAPES[a.shape]} N={a.batch} alpha={a.alpha} {a.dtype} channels_last")
    print(HEADER)
    print(LOOP_HEADER)
    for pass_ in a.passes or PASSES:
        shares = {"on": [True], "off": [False], "both": [True, False]}[a.share] if pass_ != "wgrad" else [False]
        for share in shares:
            launch = record_launch(pass_, SHAPES[a.shape], a.batch, a.alpha, share, DTYPES[a.dtype], a.scale)
            cfgs = [_parse_config(c) for c in a.config] if a.config else launch.pruned_configs()
            for cfg in cfgs:
                if a.list:
                    print(f"{pass_:5s} {a.shape:9s} {str(share):5s} {','.join(map(str, config_tuple(cfg))):15s} "
                          f"{launch.programs(cfg):6d}")
                    continue
                r = analyse(launch, cfg, pass_, a.shape, share)
                print(format_result(r), flush=True)
                failed += findings(r)
                if a.dump:
                    dump(r, a.dump)
    return verdict(failed) if a.check else 0


if __name__ == "__main__":
    sys.exit(main())
