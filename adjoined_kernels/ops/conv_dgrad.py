"""Old import path of the Triton dgrad pass, kept for tools/conv_sass_report.py: this name is the module
:mod:`adjoined_kernels.ops.conv.triton.dgrad` itself."""
import sys

from .conv.triton import dgrad

sys.modules[__name__] = dgrad
