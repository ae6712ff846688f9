"""What minicoder's Triton kernels share: whether they run in Triton's interpreter, the device check
with its advice, and the in-kernel matrix product with a chosen precision.

Imported only by the ops' `triton.py` files (importing triton decorates kernels, and whether they
are interpreted is fixed at that moment: set TRITON_INTERPRET=1 before the first import).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

#: Whether the kernels were decorated for Triton's interpreter (decided when triton.jit ran).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(*xs: torch.Tensor | None) -> None:
    """Raise a clear error when the kernels cannot run on these tensors' device."""
    for x in xs:
        if x is None:
            continue
        if x.is_cuda:
            continue
        if x.device.type == "cpu" and INTERPRETED:
            continue
        raise RuntimeError(
            f"minicoder's Triton kernels need CUDA tensors, got a tensor on {x.device}. On a CPU, use "
            "kernel='torch', or set TRITON_INTERPRET=1 in the environment before triton is first imported "
            "to run them (slowly) in Triton's interpreter."
        )


@triton.jit
def dot(a, b, LOWP: tl.constexpr):
    """a @ b with float32 accumulation: bf16 operands when LOWP, else exact float32 products."""
    if LOWP:
        r = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    else:
        r = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return r
