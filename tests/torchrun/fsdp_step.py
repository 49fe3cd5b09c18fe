"""One SGD step of an adjoined ResNet under FSDP2 (fully_shard, 2 gloo processes) against the same step in
one process; run by tests/test_distributed.py through torchrun. Writes the largest relative error to argv[1]."""
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

import adjoined_kernels as ak


def build():
    """Eval mode: BatchNorm then uses its running statistics, so the two half-batches' mean gradients
    average to the whole batch's (training-mode statistics of a half batch would differ)."""
    torch.manual_seed(0)
    return ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8).eval()


def step(net, x, y):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    lf, ls = net(x)
    ak.adjoined_loss(lf, ls, y, 0.5).backward()
    opt.step()


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 12, 12, generator=g), torch.randint(0, 10, (8,), generator=g)
    ref = build()
    step(ref, x, y)  # the whole batch in one process
    net = build()
    for block in net.adjoined:
        fully_shard(block)
    fully_shard(net)
    shard = slice(rank * 8 // world, (rank + 1) * 8 // world)
    step(net, x[shard], y[shard])  # FSDP averages the gradients of the two halves
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in net.state_dict().items()}
    err = max(float((full[k] - v).abs().max() / v.abs().max().clamp_min(1e-12))
              for k, v in ref.state_dict().items() if v.is_floating_point() and "running" not in k)
    changed = max(float((v - build().state_dict()[k]).abs().max()) for k, v in ref.state_dict().items()
                  if v.is_floating_point())
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"max_rel_err": err, "max_change": changed, "sharded": type(next(net.parameters())).__name__},
                      f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
