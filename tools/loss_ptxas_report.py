"""ptxas (sm_90) figures for the fused adjoined-loss kernels, without a GPU.

For each path and a few specialisations (dtype, C, eps, T) it compiles what the launcher would run
(``_plan``: kernel, lanes, warps; MAXNREG) for sm_90 through Triton's own pipeline, takes registers and
spill bytes from Triton's own ``ptxas -v`` log, and reads the cubin's SASS (``cuobjdump -sass``) to count
instructions, MUFU (exp2, lg2, rcp) and BAR (CTA barrier) instructions: in the whole kernel, and in each
loop body (between a backward branch and its target) for the chunked path. "/class" divides by the
classes one thread handles per row (register path) or per loop iteration (chunked path). These are
compiler figures, not GPU timings. With another Triton on sys.path first, it reports that one's.

    python tools/loss_ptxas_report.py                      # the figures in docs/kernels.md
    python tools/loss_ptxas_report.py --all                # also fp16, and other chunk sizes / warps
    python tools/loss_ptxas_report.py --one bf16 32768 1e-6 2 [--warps W] [--chunk N] [--maxnreg R]
    python tools/loss_ptxas_report.py --check              # the register path's unpacking invariant (PTX)

Run it without TRITON_INTERPRET (it is removed here, before triton is imported).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_ALWAYS_COMPILE"] = "1"   # a cached kernel would skip ptxas, and its log
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"   # Triton prints its own ptxas -v log: registers and spills
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from _check import verdict  # noqa: E402
from adjoined_kernels.ops.loss import triton as L  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
ESIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
LOGIT_PTRS = ("lf_ptr", "ls_ptr", "gf_ptr", "gs_ptr")
ALIGNED_INTS = ("C", "s_lf", "s_ls", "s_gf", "s_gs")  # C multiple of 16, as 32000 / 128000 are


def _signature(kernel, dtype, constexprs):
    """Argument types as the launcher passes them, with the usual 16-divisibility specialisation."""
    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in LOGIT_PTRS:
            sig[name] = "*" + dtype
        elif name.endswith("_ptr"):
            sig[name] = {"tgt_ptr": "*i64", "nvalid_ptr": "*i32"}.get(name, "*fp32")
        elif name in ("lam", "eps", "temp", "inv_t"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
        if sig[name].startswith("*") or name in ALIGNED_INTS:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _loops(lines):
    """[(start, end)] instruction index ranges of the loop bodies: backward branches (not self-jumps)."""
    addr = [int(m.group(1), 16) for m in (re.search(r"/\*([0-9a-f]{4,})\*/", ln) for ln in lines)]
    where = {a: i for i, a in enumerate(addr)}
    out = []
    for i, ln in enumerate(lines):
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", ln)
        if m and int(m.group(1), 16) < addr[i] and int(m.group(1), 16) in where:
            out.append((where[int(m.group(1), 16)], i))
    return out


def _counts(lines):
    def n(pattern):
        return sum(1 for ln in lines if re.search(pattern, ln))
    return dict(instr=len(lines), mufu=n(r"\bMUFU\."), bar=n(r"\bBAR\.(SYNC|RED|ARV)"), ldg=n(r"\bLDG\."),
                stg=n(r"\bSTG\."), spill=n(r"\b(LDL|STL)\b"))


def _compile(kernel, dtype, constexprs, num_warps, maxnreg):
    """(compiled kernel, Triton's ptxas -v log) of one specialisation for sm_90."""
    sig, attrs = _signature(kernel, dtype, constexprs)
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        comp = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "maxnreg": maxnreg})
    return comp, log.getvalue()


def compile_stats(kernel, dtype, constexprs, num_warps, maxnreg):
    """Registers, spill bytes (Triton's own ptxas -v log), shared memory, and SASS counts of one
    specialisation for sm_90."""
    comp, log = _compile(kernel, dtype, constexprs, num_warps, maxnreg)
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(comp.asm["cubin"])
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    lines = [ln for ln in sass.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]
    return dict(regs=int(re.search(r"Used (\d+) registers", log).group(1)),
                spill_st=int(re.search(r"(\d+) bytes spill stores", log).group(1)),
                spill_ld=int(re.search(r"(\d+) bytes spill loads", log).group(1)),
                smem=comp.metadata.shared, total=_counts(lines),
                loops=[_counts(lines[a:b + 1]) for a, b in _loops(lines)])


BASE = dict(BLOCK_B=1024, REDUCTION=2, LAM_PTR=True, COUNT_INLINE=False, DETACH=False, GRAD=True,
            MANUAL_RTNE=False, FAST=True)


def case(dtype, C, eps, T, warps=None, chunk=None, inplace=False, maxnreg=None, **constexprs):
    """Compile what the launcher runs for [*, C] logits (``_plan``): returns (path, stats, warps, classes
    per thread per row or per loop iteration). ``warps``/``chunk``/``maxnreg`` override the module's choice."""
    saved = L.CHUNK
    L.CHUNK = chunk or saved
    try:
        kernel, r, v, plan_warps = L._plan(C, ESIZE[dtype], L.MAX_BLOCK)
    finally:
        L.CHUNK = saved
    warps = warps or plan_warps
    const = dict(BASE, R=r, V=v, EPS_POS=L._eps_mode(eps), T_ONE=T == 1.0, **constexprs)
    path = "row"
    if kernel is L._loss_chunked_kernel:
        const["INPLACE"] = inplace
        path = "chunk"
    per = (4 if path == "row" else 1) * r * v / (32 * warps)
    return path, compile_stats(kernel, dtype, const, warps, maxnreg or L.MAXNREG), warps, per


_DEF = re.compile(r"^\s*(?:\{\s*)?([a-z][\w.]*)\s+(%r\d+),\s*([^;]*);")
_UNPACK = {"bf16": re.compile(r"shl\.b32 %r\d+, %r\d+, (%r\d+); and\.b32 %r\d+, %r\d+, (%r\d+);"),
           "fp16": re.compile(r"xor\.b32 t, %r\d+, (%r\d+);")}


def unpack_zero_faults(ptx: str, dtype: str) -> tuple[int, list[str]]:
    """Check the register path's 16-bit unpacking in PTX: each unpack's extra operands must come from
    ``sub.rn.f32 z, k, k`` (bf16: through ``add.s32 .., z, 16`` and ``add.s32 .., z, -65536``), i.e. an exact
    0 (``_opaque_zero``). A contracted ``key - key`` (an FMA) leaves a rounding error there, which garbles the
    unpacking. Returns (unpack sites seen, faults)."""
    defs = {}
    for line in ptx.splitlines():
        m = _DEF.match(line)
        if m:
            defs[m.group(2)] = (m.group(1), [o.strip() for o in m.group(3).split(",")])

    def exact_zero(reg):
        op, args = defs.get(reg, ("?", []))
        return op == "sub.rn.f32" and len(args) == 2 and args[0] == args[1]

    def from_zero(reg, offset):
        op, args = defs.get(reg, ("?", []))
        return op == "add.s32" and len(args) == 2 and args[1] == offset and exact_zero(args[0])

    sites, faults = 0, []
    for m in _UNPACK[dtype].finditer(ptx):
        sites += 1
        ok = (from_zero(m.group(1), "16") and from_zero(m.group(2), "-65536") if dtype == "bf16"
              else exact_zero(m.group(1)))
        if not ok:
            faults.append(m.group(0) + "  <- " + "; ".join(f"{r} = {defs.get(r)}" for r in m.groups()))
    return sites, faults


def check_unpacking() -> int:
    """``--check``: the unpacking invariant on register-path specialisations (both 16-bit dtypes, eps on and
    off, T == 1 and not, one short row and one of 32K classes). Prints a line per case; 0 when all pass."""
    failed = []
    for dtype in ("bf16", "fp16"):
        for C in (37, 32768):
            for eps, T in ((1e-6, 1.0), (1e-6, 2.0), (0.0, 1.0)):
                kernel, r, v, warps = L._plan(C, ESIZE[dtype], L.MAX_BLOCK)
                const = dict(BASE, R=r, V=v, EPS_POS=L._eps_mode(eps), T_ONE=T == 1.0)
                comp, _ = _compile(kernel, dtype, const, warps, L.MAXNREG)
                sites, faults = unpack_zero_faults(comp.asm["ptx"], dtype)
                ok = sites > 0 and not faults
                case = f"{dtype} C={C} eps={eps:g} T={T:g}"
                print(f"{'ok  ' if ok else 'FAIL'} {case}: {sites} unpack sites, {len(faults)} not keyed on an "
                      f"exact 0", flush=True)
                for f in faults[:3]:
                    print("  " + f)
                if not ok:
                    failed.append(f"{case}: {len(faults)} of {sites} unpack sites not keyed on an exact 0")
    return verdict(failed)


def report(dtype, C, eps, T, note="", **kw):
    path, s, warps, per = case(dtype, C, eps, T, **kw)
    head = (f"{path:5s} {dtype:4s} C={C:6d} eps={eps:<5g} T={T:<3g} warps={warps:2d} "
            f"classes/thread{'/iter' if path == 'chunk' else ''}={per:3.0f}{note} | regs {s['regs']:3d} "
            f"spill st/ld {s['spill_st']:4d}/{s['spill_ld']:<4d} smem {s['smem']:5d} | ")
    t = s["total"]
    if path == "row":
        body = (f"SASS {t['instr']:5d} instr ({t['instr'] / per:5.1f}/class) MUFU {t['mufu']:4d} "
                f"({t['mufu'] / per:5.2f}/class) BAR {t['bar']:2d}")
    else:
        body = f"BAR {t['bar']:2d}; loops (instr/class MUFU/class BAR LDL+STL): " + "  ".join(
            f"[{c['instr'] / per:5.1f} {c['mufu'] / per:4.2f} {c['bar']} {c['spill']}]" for c in s["loops"])
    print(head + body, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help="also fp16 and other chunk sizes / warp counts")
    ap.add_argument("--one", nargs=4, metavar=("DTYPE", "C", "EPS", "T"), help="one case, as the launcher runs it")
    ap.add_argument("--warps", type=int, help="with --one: override num_warps")
    ap.add_argument("--chunk", type=int, help="with --one: override CHUNK")
    ap.add_argument("--maxnreg", type=int, help="with --one: override MAXNREG")
    ap.add_argument("--check", action="store_true", help="check the 16-bit unpacking invariant; exit 1 on failure")
    a = ap.parse_args(argv)
    ptxas = subprocess.run([os.path.join(BIN, "ptxas"), "--version"], capture_output=True, text=True,
                           check=True).stdout
    print(f"triton {triton.__version__}, sm_90, {ptxas.strip().splitlines()[-1]}; MAX_BLOCK={L.MAX_BLOCK} "
          f"CHUNK={L.CHUNK} CHUNK_WARPS={L.CHUNK_WARPS} MAXNREG={L.MAXNREG}", flush=True)
    if a.check:
        return check_unpacking()
    if a.one:
        d, n, e, t = a.one
        report(d, int(n), float(e), float(t), warps=a.warps, chunk=a.chunk, maxnreg=a.maxnreg)
        return
    variants = ((1e-6, 1.0), (1e-6, 2.0), (0.0, 1.0), (0.0, 2.0))
    rows = [("bf16", (1000, 8192, 16384, 32768)), ("fp32", (1000, 8192, 16384))]
    if a.all:
        rows.insert(1, ("fp16", (4096, 32768)))
    for dtype, sizes in rows:
        for C in sizes:
            for eps, T in variants:
                report(dtype, C, eps, T)
    report("bf16", 32768, 1e-6, 2.0, note=" mean+inline count", COUNT_INLINE=True)
    report("bf16", 32768, 1e-6, 2.0, note=" reduction=none", REDUCTION=0)
    for dtype in ("bf16", "fp32") + (("fp16",) if a.all else ()):
        for eps, T in variants:
            report(dtype, 128000, eps, T)
    report("bf16", 128000, 1e-6, 1.0, note=" in place", inplace=True)
    if a.all:
        for chunk, warps in ((2048, 4), (4096, 4), (8192, 8), (8192, 16)):
            report("bf16", 128000, 1e-6, 2.0, note=f" CHUNK={chunk}", chunk=chunk, warps=warps)


if __name__ == "__main__":
    sys.exit(main())
