"""Training steps replayed from a CUDA graph (``adjoined-train --cuda-graphs``).

At small batches an adjoined training step is host-bound: Python, autograd and the launches of two branches
cost more than the GPU work. Replaying a captured graph removes that host work. On an H100 (ResNet-50,
224 px, batch 64, bf16; the ``-graph`` rows of bench/results/2026-11-23-H100-run4-e2e.csv) a whole captured
step ran 3.0x faster than eager with ``backend="triton"`` and 2.4x with ``"reference"``.

The graph holds forward, loss, backward and the step's metrics (``loop.step_body``). The optimizer step and
the LR scheduler stay eager, outside it: SGD takes its learning rate as a Python number, which a graph would
freeze at its capture value. The captured backward writes every parameter's ``.grad`` into graph memory at
fixed addresses, where the eager optimizer reads it after each replay; nothing may set them to None.
"""
from __future__ import annotations

import contextlib

import torch


class GraphedStep:
    """``body(x, y, lam)`` (forward, loss, backward; returns the step's metrics tensor), replayed from a CUDA
    graph.

    The first call copies its batch into static buffers, warms up on a side stream (Triton autotuning and
    ``cudnn.benchmark`` run there: capture forbids them), puts back the buffers (BatchNorm running
    statistics) the warm-up moved, and captures one step. Every call, the first included, then copies its
    batch in and replays, so a run sees the same sequence of steps as an eager one.

    ``capture=False`` runs the same calls (warm-up included) eagerly through the same static buffers: what
    the CPU tests check.

    Args:
        net: the module trained; its buffers are restored after the warm-up.
        body: ``body(x, y, lam)`` with ``lam`` a 0-dim float32 tensor on the device; returns a tensor.
        capture: capture a CUDA graph (needs CUDA tensors).
        warmup: eager steps before capture (>= 1; their gradients and buffer updates are discarded).

    Raises:
        ValueError: a batch whose shape or dtype differs from the first one's (a graph replays fixed shapes).
    """

    def __init__(self, net: torch.nn.Module, body, capture: bool, warmup: int = 3):
        self.net, self.body, self.capture, self.warmup = net, body, capture, warmup
        self.static = None  # x, y, lam
        self.graph = self.out = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
        if self.static is None:
            self.static = (x.clone(), y.clone(), torch.zeros((), dtype=torch.float32, device=x.device))
            self._set_up()
        sx, sy, slam = self.static
        for name, new, old in (("x", x, sx), ("y", y, sy)):
            if new.shape != old.shape or new.dtype != old.dtype:
                raise ValueError(f"--cuda-graphs replays fixed shapes: batch {name} has shape {tuple(new.shape)} "
                                 f"{new.dtype}, the captured step {tuple(old.shape)} {old.dtype}")
        sx.copy_(x)
        sy.copy_(y)
        slam.fill_(lam)
        if self.graph is None:
            self.net.zero_grad(set_to_none=True)  # fresh gradients, as every replay writes them
            return self.body(sx, sy, slam)
        self.graph.replay()
        return self.out

    def _set_up(self):
        self._warm_up()
        if not self.capture:
            return
        # None before capture: the captured backward then allocates the gradients in the graph's memory and
        # writes them (no accumulation into last step's values) at every replay.
        self.net.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.body(*self.static)

    def _warm_up(self):
        """``warmup`` steps on the static batch (on a side stream when capturing, as capture requires), then
        the module's buffers as they were: the run must not see these steps. Runs without capture too, so
        that the CPU tests check the restore."""
        buffers = [(b, b.clone()) for b in self.net.buffers()]
        side = torch.cuda.Stream() if self.capture else None
        if side is not None:
            side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            for _ in range(self.warmup):
                self.net.zero_grad(set_to_none=True)
                self.body(*self.static)
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
