"""Old import path of the adjoined conv (adjoined_kernels.ops.adjoined_conv2d): the public names, re-exported
from :mod:`adjoined_kernels.ops.conv`."""
from .conv import SUPPORTED, adjoined_conv2d, adjoined_conv2d_ref  # noqa: F401
