"""Coverage table of ak.adjoin on popular timm CNNs: whether each adjoins exactly, and the parameters, FLOPs
and CPU latency of its exported full and small networks (random weights, 10 classes).

    python python/timm_coverage.py [--models resnet50d,mixnet_m] [--alphas 2,4] [--size 224] [--runs 3]

Per model and alpha, adjoined from the stage after timm's 1/4-resolution feature (``timm_start``): exact
means that on a random 64x64 batch (eval) ``export_full`` / ``export_small`` equal the adjoined branches and
``alpha=1`` equals the original model (relative error < 1e-5). A refusal prints the ValueError, which names
the fx node, the module, its type and the pattern. FLOPs: torch.utils.flop_counter per ``--size`` image
(2 per multiply-add). Latency: median of ``--runs`` alternating full/small calls at batch ``--batch`` (eval,
fp32, inference_mode), as python/adjoin_coverage.py measures it.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import adjoined_kernels as ak
from adjoined_kernels.train.report import count_flops, count_params
from adjoin_coverage import latencies, markdown

MODELS = ["resnet18", "resnet50", "resnet50d", "seresnet50", "ecaresnet50d", "resnext50_32x4d", "regnetx_016",
          "regnety_016", "efficientnet_b0", "efficientnet_lite0", "tf_efficientnet_b0", "mobilenetv2_100",
          "mobilenetv3_large_100", "mnasnet_100", "fbnetc_100", "mixnet_m", "densenet121", "convnext_tiny",
          "dla34", "hrnet_w18_small", "repvgg_a0", "vgg16_bn", "res2net50_26w_4s", "cspresnet50", "rexnet_100",
          "dpn68", "ghostnet_100"]
COLUMNS = ["model", "start", "alpha", "params full", "params small", "GFLOPs full", "GFLOPs small",
           "CPU ms full", "CPU ms small", "speed-up"]
TOL = 1e-5


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def exact(model, alpha: int) -> tuple:
    """(adjoined model, worst relative error of the exports and of alpha=1 against the original)."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    m = ak.adjoin(model, alpha=alpha, input_shape=(3, 64, 64)).eval()
    one = ak.adjoin(model, alpha=1, input_shape=(3, 64, 64)).eval()
    with torch.inference_mode():
        lf, ls = m(x)
        ref = model(x)
        errs = [_rel(ak.export_full(m)(x), lf), _rel(ak.export_small(m)(x), ls), _rel(lf, ref),
                _rel(one(x)[1], ref)]
    return m, max(errs)


def measure(name: str, alphas: list[int], size: int, batch: int, runs: int) -> tuple[list, list]:
    import timm
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    shape, x = (3, size, size), torch.randn(batch, 3, size, size)
    rows, notes = [], []
    for alpha in alphas:
        try:
            m, err = exact(model, alpha)
        except ValueError as e:
            notes.append(f"{name} alpha {alpha}: refused: {e}")
            continue
        if err > TOL:
            notes.append(f"{name} alpha {alpha}: NOT exact, relative error {err:.2e}")
            continue
        full, small = ak.export_full(m), ak.export_small(m)
        full_ms, small_ms, speedup = latencies(full, small, x, runs)
        rows.append([name, m.start, str(alpha), f"{count_params(full) / 1e6:.2f}M",
                     f"{count_params(small) / 1e6:.2f}M", f"{count_flops(full, shape) / 1e9:.2f}",
                     f"{count_flops(small, shape) / 1e9:.2f}", f"{full_ms:.0f}", f"{small_ms:.0f}",
                     f"{speedup:.2f}x"])
    return rows, notes


def main(argv=None) -> None:
    import timm
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--alphas", default="2,4")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    alphas = [int(a) for a in args.alphas.split(",")]
    names = args.models.split(",")
    t0, rows, notes = time.time(), [], []
    for name in names:
        r, n = measure(name, alphas, args.size, args.batch, args.runs)
        rows, notes = rows + r, notes + n
        print(f"# {name}: {len(r)} of {len(alphas)} exact ({time.time() - t0:.0f}s)", flush=True)
    print(markdown(rows))
    for a in alphas:
        ok = sum(r[2] == str(a) for r in rows)
        print(f"\nalpha {a}: {ok} of {len(names)} adjoin exactly")
    for n in notes:
        print(f"- {n}")
    print(f"\nFLOPs per {args.size}x{args.size} image (flop_counter, 2 per multiply-add); CPU latency: median of "
          f"{args.runs} alternating runs at batch {args.batch}, {args.threads} thread(s); "
          f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, timm {timm.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs; {time.time() - t0:.0f}s in all")


if __name__ == "__main__":
    main()
