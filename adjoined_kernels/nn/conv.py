"""FusedAdjoinedConv2d: a drop-in nn.Conv2d that also computes the channel-prefix small branch."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .._checks import divide, pair
from ..ops.conv import adjoined_conv2d

DEFAULT_ALPHA = 4


class FusedAdjoinedConv2d(nn.Module):
    """Adjoined convolution module ("Adjoined Networks", Eq. 1-2; docs/maths.md, section 1):
    ``z_full, z_small = conv(x_full, x_small)``.

    ``weight`` ``[out_channels, in_channels, kh, kw]`` and ``bias`` ``[out_channels]`` are named and
    initialised as in ``nn.Conv2d``. The small branch uses ``weight[:small_out_channels, :small_in_channels]``.

    Widths: give ``alpha`` (both small widths are ``width // alpha``) or the small widths explicitly;
    with neither, ``alpha = 4`` (the paper's main setting). ``small_in_channels = in_channels`` is the
    first adjoined layer, fed the shared full-width tensor.

    Forward:
        x_full ``[N1, in_channels, H1, W1]``, x_small ``[N2, small_in_channels, H2, W2]``,
        optional small_scale ``[small_out_channels]`` (DAN gate) ->
        ``(z_full [N1, out_channels, P1, Q1], z_small [N2, small_out_channels, P2, Q2])``.

    Raises:
        ValueError: a width not divisible by alpha, small widths out of range, ``groups != 1``, or
            (in forward) inputs whose channels do not match.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 alpha=None, small_in_channels=None, small_out_channels=None, backend="auto",
                 device=None, dtype=None, groups=1):
        super().__init__()
        if groups != 1:
            raise ValueError(f"groups must be 1 for an adjoined conv, got groups={groups}")
        if alpha is None and small_in_channels is None and small_out_channels is None:
            alpha = DEFAULT_ALPHA
        if small_in_channels is None:
            small_in_channels = divide("in_channels", in_channels, alpha) if alpha else in_channels
        if small_out_channels is None:
            small_out_channels = divide("out_channels", out_channels, alpha) if alpha else out_channels
        if not (1 <= small_in_channels <= in_channels and 1 <= small_out_channels <= out_channels):
            raise ValueError(f"need 1 <= small_in_channels <= {in_channels} and 1 <= small_out_channels <= "
                             f"{out_channels}, got {small_in_channels}, {small_out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.small_in_channels, self.small_out_channels = small_in_channels, small_out_channels
        self.kernel_size = pair("kernel_size", kernel_size)
        self.stride, self.padding = pair("stride", stride), pair("padding", padding)
        self.dilation, self.backend = pair("dilation", dilation), backend
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """nn.Conv2d's default initialisation."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, alpha=DEFAULT_ALPHA, small_in_channels=None, backend="auto"):
        """Wrap a trained ``nn.Conv2d``, sharing (not copying) its weight and bias.

        Raises ValueError for ``groups != 1``, a non-zero padding mode, or widths not divisible by alpha.
        """
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("from_conv2d needs groups=1, padding_mode='zeros' and numeric padding; got "
                             f"groups={conv.groups}, padding_mode={conv.padding_mode!r}, padding={conv.padding}")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                bias=conv.bias is not None, alpha=alpha, small_in_channels=small_in_channels,
                small_out_channels=divide("out_channels", conv.out_channels, alpha), backend=backend,
                device=conv.weight.device, dtype=conv.weight.dtype)
        m.weight = conv.weight
        m.bias = conv.bias
        return m

    def forward(self, x_full, x_small, small_scale=None):
        if x_small.dim() == 4 and x_small.shape[1] != self.small_in_channels:
            raise ValueError(f"x_small must have small_in_channels={self.small_in_channels} channels, "
                             f"got shape {tuple(x_small.shape)}")
        return adjoined_conv2d(x_full, x_small, self.weight, self.bias, self.stride, self.padding, self.dilation,
                               self.small_out_channels, small_scale, self.backend)

    def extra_repr(self):
        return (f"{self.in_channels}->{self.out_channels} (small {self.small_in_channels}->"
                f"{self.small_out_channels}), kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"backend={self.backend!r}")
