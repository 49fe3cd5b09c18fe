"""The CPU memory-format policy (adjoined_kernels/layout.py, docs/kernels.md "Memory format on CPU"): the
oneDNN AVX2 heap corruption it avoids, as a standalone repro in a subprocess; the policy's decisions; every
network the trainer runs (PWH's reused teachers included) in that one layout; and PWH training all its
phases with ATen and oneDNN held to AVX2, in a subprocess so a native crash fails this test alone."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import adjoined_kernels as ak
from adjoined_kernels.layout import as_layout, cpu_channels_last_blockers, memory_format, to_training_layout

from test_train import FAST, make_idx_dir

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

# The upstream repro: the weight gradient of a 1x1 stride-2 conv over a channels_last fp32 input with C
# channels, one thread. With C = 2..7 on AVX2, oneDNN 3.12 (torch 2.14) corrupts the heap: glibc aborts
# ("corrupted double-linked list", "free(): invalid next size") or the process segfaults. MALLOC_CHECK_=3
# makes glibc check at the first free after the corruption.
REPRO = """
import sys, torch, torch.nn.functional as F
torch.set_num_threads(1)
C = int(sys.argv[1])
x = torch.randn(32, C, 14, 14).contiguous(memory_format=torch.channels_last)
w = torch.randn(8, C, 1, 1, requires_grad=True)
for _ in range(5):
    w.grad = None
    g = torch.randn(32, 8, 7, 7).contiguous(memory_format=torch.channels_last)
    F.conv2d(x, w, stride=2).backward(g)
ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, g.double(), stride=2)
print(torch.backends.cpu.get_cpu_capability(), float((w.grad.double() - ref).abs().max() / ref.abs().max()))
"""


def run_repro(channels: int) -> subprocess.CompletedProcess:
    env = {**os.environ, **AVX2, "MALLOC_CHECK_": "3", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", REPRO, str(channels)], env=env, capture_output=True, text=True,
                          timeout=120)


def one_conv(c_in: int, k: int = 1, stride: int = 2) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, 8, k, stride=stride, padding=k // 2), nn.BatchNorm2d(8))


@pytest.mark.parametrize("channels", [4, 8])
def test_repro_of_the_onednn_avx2_wgrad_corruption_and_the_policy_avoids_it(channels):
    """A whole AVX2 block (8 channels) gives the right weight gradient; 4 channels either corrupt the heap (the
    upstream bug, seen 6 of 6 times with torch 2.14.1 / oneDNN 3.12) or, once fixed upstream, give the right
    gradient. Either way the policy keeps such a conv out of channels_last on CPU."""
    proc = run_repro(channels)
    if proc.returncode == 0:
        capability, err = proc.stdout.split()
        assert capability == "AVX2", "ATEN_CPU_CAPABILITY=avx2 did not take effect"
        # 32 x 7 x 7 = 1568 products per weight, fp32 (tests/bounds.py: gamma_L relative to sum |terms|)
        assert float(err) < 1568 * torch.finfo(torch.float32).eps, proc.stdout
    else:
        assert channels < 8, f"a whole-block conv crashed:\n{proc.stderr[-2000:]}"
    blocked = cpu_channels_last_blockers(one_conv(channels))
    assert bool(blocked) == (channels < 8), blocked


def test_policy_on_cuda_is_channels_last_and_on_cpu_follows_every_conv_width():
    assert memory_format(one_conv(4), "cuda") == torch.channels_last
    for c_in, k in [(16, 1), (10, 1), (9, 3), (1, 1), (4, 3), (3, 7)]:
        assert memory_format(one_conv(c_in, k), "cpu") == torch.channels_last, (c_in, k)
    for c_in, k in [(2, 1), (4, 1), (7, 1), (7, 3), (5, 3)]:
        assert memory_format(one_conv(c_in, k), "cpu") == torch.contiguous_format, (c_in, k)
    stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 16, 1, stride=2), nn.Conv2d(16, 3, 3))
    assert memory_format(stem, "cpu") == torch.channels_last  # gray input, then whole blocks
    rgb_1x1 = nn.Sequential(nn.Conv2d(3, 8, 1, stride=2))
    assert cpu_channels_last_blockers(rgb_1x1) == ["0 (3 in, 1x1, stride 2)"]


def test_adjoined_small_branch_widths_count():
    """The demo network (width 16, alpha 4: small widths 8/16/32) stays channels_last; at width 8 the small
    branch's layer2 has 4 channels, which layer3's 1x1 stride-2 downsample reads: the repro's geometry (its
    3x3 convs over 4 channels are measured safe)."""
    demo = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=16)
    assert memory_format(demo, "cpu") == torch.channels_last
    narrow = ak.models.adjoined_resnet18(num_classes=10, alpha=4, in_channels=1, stem="cifar", width=8)
    blocked = cpu_channels_last_blockers(narrow)
    assert blocked == ["adjoined.2.ds_conv (4 in, 1x1, stride 2)"]


def test_to_training_layout_converts_channels_last_weights_back():
    """A network trained channels_last and reused (PWH's teacher) next to a narrow student: the whole model
    goes NCHW, so no conv runs channels_last through a channels_last weight."""
    teacher = one_conv(16, 3).to(memory_format=torch.channels_last)
    student = one_conv(6, 3)
    net, fmt = to_training_layout(nn.ModuleDict({"teacher": teacher, "student": student}), "cpu")
    assert fmt == torch.contiguous_format
    for name, p in net.named_parameters():
        assert p.stride() == torch.empty(p.shape, device="meta").stride(), name
    x = as_layout(torch.randn(3, 16, 6, 6).contiguous(memory_format=torch.channels_last), fmt)
    out = net["teacher"](x)
    assert not out.is_contiguous(memory_format=torch.channels_last)


def test_as_layout_gives_standard_strides_to_ambiguous_tensors():
    x = torch.randn(4, 1, 5, 5).contiguous(memory_format=torch.channels_last)
    assert as_layout(x, torch.contiguous_format).stride() == (25, 25, 5, 1)
    assert as_layout(x, torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(as_layout(x, torch.contiguous_format), x)


def test_pwh_trains_every_phase_with_avx2_kernels(tmp_path):
    """The run that aborted: PWH at width 8, alpha 4, with ATen and oneDNN held to AVX2. Phase 1 trains
    channels_last (widths 8/10/20/40); phase 2's student is pruned from it and keeps its channels_last
    weights at 4 channels, and its teacher is the phase-1 network. Without the explicit conversion to NCHW,
    glibc aborted the process in phase 2's backward. In a subprocess, so a crash fails this test alone."""
    data = make_idx_dir(tmp_path / "data")
    env = {**os.environ, **AVX2}
    common = ["--data-dir", str(data), "--subset", "64", *FAST, "--no-onnx", "--bench-runs", "0"]
    run = lambda *a: subprocess.run([sys.executable, "-m", "adjoined_kernels.train", *common, *a],  # noqa: E731
                                    env=env, capture_output=True, text=True, timeout=600)
    t = run("--epochs", "1", "--method", "standard", "--out", str(tmp_path / "t"))
    assert t.returncode == 0, t.stderr[-3000:]
    p = run("--epochs", "3", "--method", "pwh", "--alpha", "4", "--teacher", str(tmp_path / "t" / "checkpoint.pt"),
            "--pwh-samples", "32", "--out", str(tmp_path / "pwh"))
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stderr[-3000:]}"
    for phase in ("phase1-iter1", "phase2-iter2"):
        assert (tmp_path / "pwh" / phase / "checkpoint.pt").is_file()
    assert (tmp_path / "pwh" / "summary.json").is_file()


def test_the_avx2_switches_take_effect():
    """What CI's second pass relies on (.ci/run, make test-avx2): with the two switches, ATen reports AVX2 and
    oneDNN runs AVX2 conv kernels, whatever this CPU has."""
    code = ("import torch, torch.nn.functional as F; print('capability', torch.backends.cpu.get_cpu_capability()); "
            "F.conv2d(torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last), torch.randn(8, 8, 3, 3))")
    env = {**os.environ, **AVX2, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "capability AVX2" in out
    convs = [ln.split(",")[6] for ln in out.splitlines() if ln.startswith("onednn_verbose") and ",exec,cpu,conv" in ln]
    assert convs and all(c.endswith(":avx2") for c in convs), convs
