"""Test setup: without a GPU, Triton kernels run in the interpreter (DESIGN §4), which must be set
before triton.jit runs, so before adjoined_kernels is imported."""
import os
import shutil

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
