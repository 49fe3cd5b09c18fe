"""Old import path of the CUDA conv backend, kept for csrc/tests/sanitizer_run.py: ``load()`` loads the
extension and registers the ops' Python parts (:mod:`adjoined_kernels.ops.conv.cuda`)."""
import importlib


def load() -> None:
    importlib.import_module("adjoined_kernels.ops.conv.cuda")
