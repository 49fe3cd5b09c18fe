"""Backends as a test parameter: ``backend_conv(name)`` / ``backend_loss(name)`` give the fused path of a
backend, skipping (with the reason) where it cannot run. "cuda_emu" is the CUDA C++ kernels compiled for the
CPU by csrc/emu/build_emu.sh (without AddressSanitizer), built once per session into a temporary directory;
its ops live in the namespace ``adjoined_emu`` and get the same contract as the real ones."""
import importlib
import os
import shutil
import subprocess
import types

import pytest
import torch

import adjoined_kernels as ak

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUSED = ("triton", "cuda", "cuda_emu")


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    """The CPU emulation of the CUDA backend: ``.conv`` (a backend module for ops.conv.run) and ``.loss_op``."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if shutil.which("g++") is None or not os.path.exists(os.path.join(cuda_home, "include", "cuda_fp16.h")):
        pytest.skip("the CUDA emulation needs g++ and the CUDA headers (csrc/emu/build_emu.sh)")
    out = tmp_path_factory.mktemp("emu")
    env = {**os.environ, "SANITIZE": "0", "MAX_JOBS": str(os.cpu_count() or 2)}
    proc = subprocess.run(["bash", os.path.join(ROOT, "csrc", "emu", "build_emu.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail("csrc/emu/build_emu.sh failed:\n" + proc.stdout[-3000:] + proc.stderr[-3000:])
    torch.ops.load_library(str(out / "libadjoined_emu.so"))
    from adjoined_kernels.ops.conv.contract import register as register_conv
    from adjoined_kernels.ops.loss.schema import register as register_loss
    ops = register_conv("cuda", "adjoined_emu")
    return types.SimpleNamespace(conv=types.SimpleNamespace(IMPL=ops, OPS=ops),
                                 loss_op=register_loss("adjoined_emu::cuda_adjoined_loss_fwd"))


@pytest.fixture
def fused(request):
    """``fused(name)`` -> ``(conv module for ops.conv.run, loss op)`` of a fused backend, or a skip."""
    def get(name):
        from adjoined_kernels.ops import conv, loss
        if name == "cuda_emu":
            e = request.getfixturevalue("emu")
            return e.conv, e.loss_op
        if name not in ak.available_backends():
            reason = ak._backend._triton_status() if name == "triton" else ak._backend._cuda_status()
            pytest.skip(f"backend={name!r} is unavailable here: {reason}")
        if name == "cuda" and not torch.cuda.is_available():
            pytest.skip("backend='cuda' needs a CUDA GPU (its CPU emulation runs as cuda_emu)")
        return conv._load(name), loss._load(name).OP
    return get


@pytest.fixture
def registered(request):
    """``registered(package, backend, op)`` -> ``(namespace, "<backend>_<op>", schema string)`` of the op a
    backend of ``package`` ("conv" or "loss") registered; "cuda_emu" reads the emulated ops in ``adjoined_emu``.
    Skips where the backend is unavailable."""
    def get(package, backend, op):
        ns = "adjoined"
        if backend == "cuda_emu":
            request.getfixturevalue("emu")
            ns, backend = "adjoined_emu", "cuda"
        elif backend not in ak.available_backends():
            pytest.skip(f"backend={backend!r} is unavailable here")
        else:
            importlib.import_module(f"adjoined_kernels.ops.{package}.{backend}")
        return ns, f"{backend}_{op}", str(getattr(getattr(torch.ops, ns), f"{backend}_{op}").default._schema)
    return get
