"""Old import path of the CUDA loss backend, kept for csrc/tests/sanitizer_run.py: ``load()`` and
``adjoined_loss_cuda`` (the public loss on ``backend="cuda"``)."""
import functools
import importlib

from .loss import adjoined_loss

adjoined_loss_cuda = functools.partial(adjoined_loss, backend="cuda")


def load() -> None:
    importlib.import_module("adjoined_kernels.ops.loss.cuda")
