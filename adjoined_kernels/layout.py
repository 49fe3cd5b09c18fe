"""The memory format a model trains in: one decision for the trainer, every baseline phase (teachers
included), DAN and the benchmarks (docs/kernels.md, "Memory format on CPU").

On CUDA it is channels_last (NHWC), the layout the fused kernels and cuDNN's implicit GEMM prefer. On CPU,
ATen hands channels_last convs to oneDNN, whose kernels depend on the instruction set. On an AVX2 CPU (or with
``ONEDNN_MAX_CPU_ISA=AVX2``), oneDNN 3.12 in torch 2.14 corrupts the heap in the weight gradient (wgrad,
``jit_1x1:avx2`` backward_weights) of a 1x1 stride-2 conv whose channels_last input has 2 to 7 channels: glibc
then aborts the process ("corrupted double-linked list", "double free or corruption") or it segfaults.
``bench/onednn_conv_scan.py`` maps which geometries go wrong; its results are in ``bench/results/``.

The policy, from those measurements: channels_last on CPU unless a conv, in the full or the small branch,
reads a partial first AVX2 block (2 to 7 channels); a conv with a kernel larger than 1x1 reading at most 4
(image stems: gray, RGB, RGBA) is exempt, measured safe. Wider inputs, whole blocks or not (9, 10, 20, 40),
were safe in every scanned geometry and stay channels_last. A model whose layout is NCHW is converted to it
explicitly: a pruned or reused network (PWH's next teacher) can hold channels_last weights, and one
channels_last operand makes the conv run channels_last; that mix is how PWH reached the defect.
"""
from __future__ import annotations

import torch

# oneDNN blocks channels by 8 on AVX2 (16 on AVX-512); every measured bad case reads 2 to 7 channels.
CPU_BLOCK = 8
# The widest input kept channels_last through a kernel larger than 1x1 (3x3, 5x5 and 7x7 measured safe).
CPU_NARROW_WIDTH = 4


def conv_inputs(model: torch.nn.Module) -> list[tuple[str, int, tuple[int, int], tuple[int, int]]]:
    """``(module path, input channels, kernel size, stride)`` of every conv of ``model``, once per branch
    that runs it (an adjoined conv also reads ``small_in_channels``)."""
    out = []
    for name, m in model.named_modules():
        if not hasattr(m, "in_channels") or not hasattr(m, "kernel_size"):
            continue
        k = tuple(m.kernel_size) if isinstance(m.kernel_size, (tuple, list)) else (m.kernel_size,) * 2
        s = tuple(m.stride) if isinstance(m.stride, (tuple, list)) else (m.stride,) * 2
        for c in {m.in_channels, getattr(m, "small_in_channels", m.in_channels)}:
            out.append((name, int(c), k, s))
    return out


def cpu_channels_last_blockers(model: torch.nn.Module) -> list[str]:
    """The convs that keep ``model`` NCHW on CPU, as ``"path (C in, KxK, stride S)"``; empty when channels_last
    is safe there."""
    bad = []
    for name, c, k, s in conv_inputs(model):
        narrow = c <= CPU_NARROW_WIDTH and k != (1, 1)
        if 1 < c < CPU_BLOCK and not narrow:
            bad.append(f"{name or 'model'} ({c} in, {k[0]}x{k[1]}, stride {s[0]})")
    return bad


def memory_format(model: torch.nn.Module, device) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format`` for training ``model`` on ``device``."""
    if torch.device(device).type == "cuda":
        return torch.channels_last
    return torch.contiguous_format if cpu_channels_last_blockers(model) else torch.channels_last


def to_training_layout(model: torch.nn.Module, device) -> tuple[torch.nn.Module, torch.memory_format]:
    """``model`` on ``device`` with every parameter and buffer in the format of :func:`memory_format`, and that
    format (pass it to :func:`as_layout` for the inputs). Converts in place, like ``Module.to``."""
    model = model.to(device)
    fmt = memory_format(model, device)
    return model.to(memory_format=fmt), fmt


def as_layout(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """A 4-D batch ``x`` in ``fmt``. For NCHW, standard strides even where ``.contiguous()`` would keep
    channels_last ones (a tensor with one channel or 1x1 pixels counts as both)."""
    if x.dim() != 4:
        return x
    return x.contiguous(memory_format=torch.channels_last) if fmt == torch.channels_last else nchw(x)


def nchw(x: torch.Tensor) -> torch.Tensor:
    """``x`` with standard (row-major) strides. ``.contiguous()`` is not enough: with one channel, channels_last
    strides also count as contiguous, and a CPU conv then runs (and propagates) channels_last."""
    if x.stride() == torch.empty(x.shape, device="meta").stride():
        return x
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)
