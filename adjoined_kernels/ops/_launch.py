"""Old import path of the Triton relaunch cache, kept for tools/launch_report.py and tools/conv_sass_report.py:
this name is the module :mod:`adjoined_kernels.ops.conv.triton.launch` itself, so setting ``FAST`` here sets it
there."""
import sys

from .conv.triton import launch

sys.modules[__name__] = launch
