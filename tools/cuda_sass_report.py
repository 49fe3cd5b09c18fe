"""sm_90 compiler figures for the CUDA C++ conv kernels (csrc/conv_*.cu), without a GPU.

Each file is compiled for one architecture by nvcc (``ptxas -v``: registers, spill bytes, static shared
memory per kernel), the cubin is disassembled (``cuobjdump -sass``; Triton's bundled copy when the CUDA
toolkit has none) and every kernel's K loop, a backward branch whose body issues MMAs, is counted:
instructions, HMMA, LDSM (ldmatrix), LDGSTS (cp.async), BAR, and LD + MOVM (generic loads, and the moves
WMMA adds for transposed fragments). The counts are static: a loop body with two paths (a paired tile's
and an unpaired one's, or a branch start's re-derivation) counts both. Compiler figures, not GPU timings.

    python tools/cuda_sass_report.py                 # fprop, dgrad, wgrad for sm_90
    python tools/cuda_sass_report.py --file conv_wgrad.cu --arch 80
    python tools/cuda_sass_report.py --check         # exit 1 if a tensor-core kernel spills or lacks its
                                                     # HMMA / LDSM / LDGSTS loop
Exit status 2 (and a MISSING: line) when nvcc, cuobjdump or torch's headers are not there.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

from _check import verdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("conv_fprop.cu", "conv_dgrad.cu", "conv_wgrad.cu")
TC_KERNELS = ("rowgemm_tc_kernel", "wgrad_tc_kernel")


def toolchain():
    """(nvcc, cuobjdump, include flags); raises RuntimeError naming what is missing."""
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = os.path.join(cuda, "bin", "nvcc")
    if not os.access(nvcc, os.X_OK):
        raise RuntimeError(f"no nvcc at {nvcc} (set CUDA_HOME)")
    cuobjdump = shutil.which("cuobjdump") or os.path.join(cuda, "bin", "cuobjdump")
    if not os.access(cuobjdump, os.X_OK):
        import triton
        cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.access(cuobjdump, os.X_OK):
        raise RuntimeError("no cuobjdump in the CUDA toolkit or in triton's bundled toolchain")
    import torch
    inc = os.path.join(os.path.dirname(torch.__file__), "include")
    flags = [f"-I{inc}", f"-I{os.path.join(inc, 'torch', 'csrc', 'api', 'include')}",
             f"-I{os.path.join(os.path.dirname(torch.__file__), '..', 'nvidia', 'cu13', 'include')}",
             f"-I{os.path.join(ROOT, 'csrc')}"]
    return nvcc, cuobjdump, flags


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    return {n: re.sub(r"^void adjoined::dev::|\(.*$", "", d) for n, d in zip(names, out)}


def ptxas_figures(log: str) -> dict:
    """mangled kernel -> (registers, spill store bytes, spill load bytes, static smem bytes)."""
    figs, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            figs[cur] = [0, 0, 0, 0]
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur:
            figs[cur][1:3] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?$", line)
        if m and cur:
            figs[cur][0] = int(m.group(1))
            figs[cur][3] = int(m.group(2) or 0)
    return figs


def loop_counts(sass: str) -> dict:
    """mangled kernel -> Counter of opcodes over its K loops (backward branches with an MMA inside)."""
    counts = {}
    for chunk in re.split(r"\n\s*Function : ", sass)[1:]:
        name = chunk.split("\n", 1)[0].strip()
        ins = [(int(m.group(1), 16), m.group(2).strip()) for m in
               re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", chunk)]
        c = collections.Counter()
        for addr, op in ins:
            m = re.search(r"BRA 0x([0-9a-f]+)", op)
            if not m or int(m.group(1), 16) >= addr:
                continue
            body = [o for a, o in ins if int(m.group(1), 16) <= a <= addr]
            ops = [(o.split()[1] if o.startswith("@") else o.split()[0]).split(".")[0] for o in body]
            if "HMMA" in ops:
                c.update(ops)
                c["instr"] += len(ops)
        counts[name] = c
    return counts


def analyse(path: str, arch: str, tools) -> list[dict]:
    nvcc, cuobjdump, flags = tools
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        proc = subprocess.run([nvcc, "-std=c++17", f"-arch=sm_{arch}", "-cubin", "-O3", "-Xptxas", "-v", *flags,
                               "-o", cubin, path], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed on {path}:\n{proc.stderr[-3000:]}")
        sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True).stdout
    figs, loops = ptxas_figures(proc.stderr), loop_counts(sass)
    names = demangle(sorted(figs))
    rows = []
    for mangled in sorted(figs):
        regs, st, ld, smem = figs[mangled]
        c = loops.get(mangled, collections.Counter())
        rows.append(dict(kernel=names[mangled], regs=regs, spill=f"{st}/{ld}", smem=smem, instr=c["instr"],
                         hmma=c["HMMA"], ldsm=c["LDSM"], ldgsts=c["LDGSTS"], bar=c["BAR"], ld_movm=c["LD"] + c["MOVM"],
                         tc=any(k in mangled for k in TC_KERNELS), spills=st + ld))
    return rows


def findings(rows) -> list[str]:
    out = []
    for r in rows:
        if not r["tc"]:
            continue
        if r["spills"]:
            out.append(f"{r['kernel']}: spills {r['spill']} bytes")
        if not (r["hmma"] and r["ldsm"] and r["ldgsts"]):
            out.append(f"{r['kernel']}: K loop without HMMA, LDSM or LDGSTS")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", action="append", choices=FILES, help="csrc file (repeatable; default: all three)")
    ap.add_argument("--arch", default="90", help="sm_XX to compile for (default 90)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a tensor-core kernel spills or lacks its loop")
    a = ap.parse_args(argv)
    try:
        tools = toolchain()
    except (RuntimeError, ImportError) as e:
        print(f"MISSING: {e}")
        return 2
    print(f"{'kernel':52s} {'regs':>4s} {'spill':>7s} {'smem':>6s} | K loop: {'instr':>5s} {'HMMA':>4s} {'LDSM':>4s} "
          f"{'LDGSTS':>6s} {'BAR':>3s} {'LD+MOVM':>7s}")
    failed = []
    for f in a.file or FILES:
        rows = analyse(os.path.join(ROOT, "csrc", f), a.arch, tools)
        for r in rows:
            if not r["instr"]:
                continue  # reductions and other kernels without MMAs
            print(f"{r['kernel'][:52]:52s} {r['regs']:4d} {r['spill']:>7s} {r['smem']:6d} | K loop: {r['instr']:5d} "
                  f"{r['hmma']:4d} {r['ldsm']:4d} {r['ldgsts']:6d} {r['bar']:3d} {r['ld_movm']:7d}", flush=True)
        failed += findings(rows)
    return verdict(failed) if a.check else 0


if __name__ == "__main__":
    sys.exit(main())
