"""Images/s of the trainer's data loader alone (no model), as ``adjoined-train`` builds it.

Two datasets: Fashion-MNIST held in memory (uint8, batched crop + flip), and a generated ImageFolder of
``--jpegs`` JPEGs streamed from disk (decode, RandomResizedCrop(``--size``), flip: torchvision's reference
recipe). Each is read with every ``--workers`` count: one warm-up epoch (starts the persistent workers),
then ``--repeats`` timed epochs; the JSON keeps every epoch's seconds, the median and the 20th/80th
percentiles of images/s.

    python bench/bench_loader.py --out bench/results/$(date -u +%F)-cpu-loader.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from adjoined_kernels.train.data import FASHION_DIR, load_dataset  # noqa: E402
from adjoined_kernels.train.loader import EpochBatches, make_loader  # noqa: E402


def make_jpegs(root: str, n: int, classes: int = 10, seed: int = 0) -> str:
    """``n`` random 256x320 RGB JPEGs (quality 90) under ``root/train/<class>/`` and 10 per class under val/."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", 10 * classes)):
        for i in range(count):
            d = os.path.join(root, split, f"c{i % classes}")
            os.makedirs(d, exist_ok=True)
            base = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)  # smooth enough to compress like a photo
            img = Image.fromarray(base).resize((320, 256), Image.BILINEAR)
            img.save(os.path.join(d, f"{i}.jpg"), quality=90)
    return root


def epoch_seconds(ds, workers: int, batch: int, repeats: int) -> list[float]:
    sampler = EpochBatches(ds.size("train"), batch, seed=0)
    loader = make_loader(ds.split("train", True), sampler, workers, pin_memory=False)
    times = []
    for epoch in range(repeats + 1):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for _ in loader:
            pass
        times.append(time.perf_counter() - t0)
    return times[1:]  # the first epoch starts the workers


def row(name, ds, workers, batch, repeats):
    secs = epoch_seconds(ds, workers, batch, repeats)
    n = sampler_images(ds, batch)
    rates = sorted(n / s for s in secs)
    q = statistics.quantiles(rates, n=5) if len(rates) > 1 else [rates[0]] * 4
    r = {"dataset": name, "workers": workers, "batch": batch, "images_per_epoch": n, "epoch_s": secs,
         "images_per_s_median": statistics.median(rates), "images_per_s_p20": q[0], "images_per_s_p80": q[3]}
    print(f"{name:28s} workers {workers}: {r['images_per_s_median']:10.0f} images/s "
          f"(p20 {q[0]:.0f}, p80 {q[3]:.0f}; {len(secs)} epochs of {n})", flush=True)
    return r


def sampler_images(ds, batch: int) -> int:
    return EpochBatches(ds.size("train"), batch, seed=0).steps() * batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--fashion-dir", default=FASHION_DIR)
    p.add_argument("--jpegs", type=int, default=2000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the loader's own work; DataLoader workers run one thread each as well
    rows = []
    fashion = load_dataset("fashion-mnist", args.fashion_dir)
    for w in args.workers:
        rows.append(row("fashion-mnist (memory)", fashion, w, args.batch, args.repeats))
    with tempfile.TemporaryDirectory() as tmp:
        folder = load_dataset("imagefolder", make_jpegs(tmp, args.jpegs), image_size=args.size)
        for w in args.workers:
            rows.append(row(f"imagefolder {args.jpegs} JPEG {args.size}px", folder, w, args.batch, args.repeats))
    meta = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "torchvision": __import__("torchvision").__version__, "load_average": os.getloadavg()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
