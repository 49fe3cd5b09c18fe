"""Which CPU conv geometries ATen/oneDNN get wrong, per instruction set: the measurement behind
``adjoined_kernels.layout.cpu_channels_last_safe`` (docs/training.md, "Memory format on CPU").

Every case runs in its own process (a heap corruption ends only that case) with ``MALLOC_CHECK_=3``, so glibc
aborts at the first corrupted free instead of somewhere later. A case is one pass (fprop, dgrad or wgrad) of
``F.conv2d`` in fp32 on one thread, repeated ``--iters`` times on fresh random inputs, compared with the float64
result of the same pass. It records ``ok`` with the worst relative error (max |got - ref| / max |ref|), or
``crash`` with the signal and glibc's last line.

    python bench/onednn_conv_scan.py --isa avx2 avx512 --out bench/results/DATE-cpu-onednn-scan.csv

``--isa avx2`` sets ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` in the child; ``avx512`` leaves both
at the machine's default (on an AVX-512 CPU). The CSV has one row per case; the JSON beside it the versions.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import subprocess
import sys

ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, "avx512": {}}
FIELDS = ["isa", "capability", "pass", "fmt", "n", "c_in", "c_out", "hw", "kernel", "stride", "status", "rel_err",
          "detail"]


def run_case(p: str, n: int, c: int, k: int, hw: int, r: int, s: int, fmt: str, iters: int) -> None:
    """The child: one conv pass against float64; prints ``capability rel_err``."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mf = torch.channels_last if fmt == "cl" else torch.contiguous_format
    pad, err = r // 2, 0.0
    for _ in range(iters):
        x = torch.randn(n, c, hw, hw).contiguous(memory_format=mf).requires_grad_(p == "dgrad")
        w = torch.randn(k, c, r, r).requires_grad_(p == "wgrad")
        y = F.conv2d(x, w, stride=s, padding=pad)
        xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        yd = F.conv2d(xd, wd, stride=s, padding=pad)
        if p == "fprop":
            got, ref = y, yd
        else:
            g = torch.randn_like(y)
            y.backward(g)
            yd.backward(g.double())
            got, ref = (x.grad, xd.grad) if p == "dgrad" else (w.grad, wd.grad)
        err = max(err, float((got.double() - ref).abs().max() / ref.abs().max()))
    print(torch.backends.cpu.get_cpu_capability(), f"{err:.3e}")


def spawn(isa: str, case: tuple, iters: int) -> dict:
    p, fmt, n, c, k, hw, r, s = case
    env = {**os.environ, "MALLOC_CHECK_": "3", "OMP_NUM_THREADS": "1", **ISA_ENV[isa]}
    cmd = [sys.executable, __file__, "--case", p, str(n), str(c), str(k), str(hw), str(r), str(s), fmt, str(iters)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    row = {"isa": isa, "pass": p, "fmt": fmt, "n": n, "c_in": c, "c_out": k, "hw": hw, "kernel": r, "stride": s}
    out = proc.stdout.split()
    if proc.returncode == 0 and len(out) == 2:
        return {**row, "capability": out[0], "status": "ok", "rel_err": out[1], "detail": ""}
    last = (proc.stderr.strip().splitlines() or [""])[-1][:120]
    return {**row, "capability": "", "status": "crash", "rel_err": "", "detail": f"rc {proc.returncode}: {last}"}


def versions() -> dict:
    import datetime
    import torch
    model = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "onednn": torch.__config__.show().split("MKL-DNN ")[-1].split(" ")[0], "cpu": model or platform.machine(),
            "machine_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs=9, help=argparse.SUPPRESS)
    ap.add_argument("--isa", nargs="+", default=["avx2", "avx512"], choices=sorted(ISA_ENV))
    ap.add_argument("--passes", nargs="+", default=["fprop", "dgrad", "wgrad"])
    ap.add_argument("--formats", nargs="+", default=["cl", "nchw"], choices=["cl", "nchw"])
    ap.add_argument("--c-in", nargs="+", type=int, default=list(range(1, 18)) + [20, 24, 40])
    ap.add_argument("--c-out", nargs="+", type=int, default=[8])
    ap.add_argument("--kernel", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--stride", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hw", type=int, default=8, help="input height and width (pixels)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", required=False, help="CSV path (a .json with the versions is written beside it)")
    a = ap.parse_args(argv)
    if a.case:
        p, *nums, fmt, it = a.case
        run_case(p, *map(int, nums), fmt, int(it))
        return 0
    from tqdm import tqdm
    cases = list(itertools.product(a.passes, a.formats, [a.batch], a.c_in, a.c_out, [a.hw], a.kernel, a.stride))
    rows = [spawn(isa, c, a.iters) for isa in a.isa for c in tqdm(cases, desc=isa)]
    bad = [r for r in rows if r["status"] == "crash" or float(r["rel_err"]) > 1e-4]
    for r in bad:
        print(" ".join(f"{k}={r[k]}" for k in FIELDS if r[k] != ""))
    print(f"{len(bad)} of {len(rows)} cases crashed or had a relative error over 1e-4")
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(rows)
        with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
            json.dump({**versions(), "argv": sys.argv[1:], "iters": a.iters, "threads": 1}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
