"""Old import path of the Triton wgrad pass, kept for tools/conv_sass_report.py: this name is the module
:mod:`adjoined_kernels.ops.conv.triton.wgrad` itself, so patching an attribute here patches it there."""
import sys

from .conv.triton import wgrad

sys.modules[__name__] = wgrad
