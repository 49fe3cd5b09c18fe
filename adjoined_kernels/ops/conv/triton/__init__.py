"""The Triton conv backend: fprop.py, dgrad.py and wgrad.py implement the contract of ops/conv/contract.py.

Importing this package registers ``adjoined::triton_conv2d_{fprop,dgrad,wgrad}`` (the traced path of
torch.compile, with the contract's fake kernels and autograd). ``IMPL`` is the same three passes without the
op dispatcher, for eager calls (docs/kernels.md, "Host overhead").
"""
from __future__ import annotations

import torch

from ..contract import SCHEMAS, Impl, register
from . import dgrad, fprop, wgrad

IMPL = Impl(fprop.fprop, dgrad.dgrad, wgrad.wgrad)

for _name, _fn in zip(SCHEMAS, IMPL):
    torch.library.custom_op(f"adjoined::triton_{_name}", _fn, mutates_args=(), schema=SCHEMAS[_name])

OPS = register("triton")
