"""Old import path of the Triton fprop pass, kept for tools/launch_report.py and tools/conv_sass_report.py:
the pass's launcher and kernel, and ``adjoined_conv2d_triton`` (the Triton path without backend checks: the
tools run it on CPU tensors with a fake GPU driver)."""
import functools

from . import conv
from .conv import triton
from .conv.triton.fprop import _fprop_kernel, _fprop_launch, _fprop_launcher, fprop  # noqa: F401 - re-exported

adjoined_conv2d_triton = functools.partial(conv.run, triton)
