"""The stand-alone CMake build of csrc/ (CMakeLists.txt): configure, build the shared library and the C++
smoke test, run it. CI runs this on a machine without a GPU, so the smoke test only checks that every
adjoined CUDA op is registered by the library (with a GPU it also runs the loss kernel against ATen).

Skipped, with the reason, where cmake, ninja, nvcc or a CUDA build of torch is missing.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NVCC = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
OPS = ("cuda_conv2d_fprop", "cuda_conv2d_dgrad", "cuda_conv2d_wgrad", "cuda_adjoined_loss_fwd")


def _missing() -> str | None:
    if torch.version.cuda is None:
        return "torch is a CPU-only build"
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    if not os.path.exists(NVCC):
        return f"nvcc not found at {NVCC} (set CUDA_HOME)"
    return None


@pytest.mark.skipif(_missing() is not None, reason=f"CMake build needs its tools: {_missing()}")
def test_cmake_configures_builds_and_registers_every_op(tmp_path):
    build = tmp_path / "cmake"
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("MAX_JOBS", str(os.cpu_count() or 2)))
    configure = ["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DCMAKE_CUDA_COMPILER={NVCC}",
                 f"-DCUDAToolkit_ROOT={Path(NVCC).parents[1]}", "-DADJOINED_CUDA_ARCHS=9.0"]
    for cmd in (configure, ["cmake", "--build", str(build)]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd[:2])} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert (build / "libadjoined_ops.so").exists()

    r = subprocess.run([str(build / "adjoined_loss_smoke")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in OPS:
        assert f"adjoined::{name}: CUDA kernel registered" in r.stdout, r.stdout
    assert f"adjoined ops with a CUDA kernel: {len(OPS)} of {len(OPS)}" in r.stdout, r.stdout
