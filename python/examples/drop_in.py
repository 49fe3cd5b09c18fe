"""Drop-in example: turn a plain conv stack into adjoined convs and check them against the reference.

Run: python python/examples/drop_in.py [--backend auto|reference|triton|cuda]
Uses only the public API of adjoined_kernels. Exits non-zero if the backend disagrees with the reference.
"""
import argparse
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import adjoined_kernels as ak


def plain_stack(width: int = 16) -> nn.Sequential:
    """A small conv stack, as one would find inside any CNN."""
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(2 * width, 2 * width, 1))


def to_adjoined(stack: nn.Sequential, alpha: int, backend: str) -> list:
    """Wrap every Conv2d; the first one reads the shared full-width input (small_in_channels = C_in)."""
    convs = [m for m in stack if isinstance(m, nn.Conv2d)]
    first = ak.FusedAdjoinedConv2d.from_conv2d(convs[0], alpha, small_in_channels=convs[0].in_channels,
                                               backend=backend)
    return [first] + [ak.FusedAdjoinedConv2d.from_conv2d(c, alpha, backend=backend) for c in convs[1:]]


def run(convs, x):
    """Both branches through the stack; returns (z_full, z_small)."""
    hf, hs = x, x
    for i, conv in enumerate(convs):
        hf, hs = conv(hf, hs)
        if i < len(convs) - 1:
            hf, hs = F.relu(hf), F.relu(hs)
    return hf, hs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--alpha", type=int, default=4)
    args = ap.parse_args(argv)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # fp32 to 1e-4 on a GPU too: cuDNN and the kernels follow this flag
    try:
        return check(args)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def check(args) -> int:
    """The fused stack against the reference and the original stack; 0 when they agree."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    stack = plain_stack().to(device)
    x = torch.randn(2, 16, 9, 9, device=device)
    fused = to_adjoined(stack, args.alpha, args.backend)
    reference = to_adjoined(stack, args.alpha, "reference")
    zf, zs = run(fused, x)
    rf, rs = run(reference, x)
    (zf.square().mean() + zs.square().mean()).backward()
    got = [zf, zs] + [c.weight.grad.clone() for c in fused]
    for c in fused:
        c.weight.grad = None
    (rf.square().mean() + rs.square().mean()).backward()
    want = [rf, rs] + [c.weight.grad for c in reference]
    err = max(((a - b).norm() / b.norm()).item() for a, b in zip(got, want))
    torch.testing.assert_close(zf, stack(x))  # the full branch is the original stack
    print(f"backend={args.backend} alpha={args.alpha}: full {tuple(zf.shape)}, small {tuple(zs.shape)}, "
          f"max rel. error vs reference {err:.2e}")
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
