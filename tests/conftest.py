"""Test setup: without a GPU, Triton kernels run in the interpreter (docs/kernels.md), which must be set
before triton.jit runs, so before adjoined_kernels is imported."""
import os
import shutil
import subprocess
import sys

if shutil.which("nvidia-smi") is None and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("ADJOINED_POISON_OUTPUTS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    """The device the suite runs on: CUDA when present, else CPU (Triton under the interpreter)."""
    return DEVICE


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny problems: as fast, and it does not stall when the CI machine's
    cores are busy (two OpenMP threads on a loaded 2-core machine ran 30x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def sm90_tool():
    """Runs a script of tools/ that compiles offline for sm_90 (Triton's bundled ptxas and cuobjdump, no GPU):
    ``sm90_tool(name, *args)`` returns the CompletedProcess. Skips, with the reason, where that toolchain
    is missing or does not run."""
    import triton
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for tool in ("ptxas", "cuobjdump"):
        path = os.path.join(bin_dir, tool)
        if not os.access(path, os.X_OK):
            pytest.skip(f"triton ships no {tool} ({path}): cannot compile for sm_90 offline")
        if subprocess.run([path, "--version"], capture_output=True).returncode != 0:
            pytest.skip(f"{path} does not run here")
    tools = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

    def run(name, *args, timeout=300):
        return subprocess.run([sys.executable, os.path.join(tools, name), *args], env=env, capture_output=True,
                              text=True, timeout=timeout)
    return run
