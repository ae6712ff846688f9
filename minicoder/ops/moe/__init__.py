"""Routed-expert computation (the MoE FFN after routing) behind one dispatcher.

    y = moe_experts(x, topk_ids, topk_weights, gate_up_proj, down_proj, kernel="auto")

x: [N, H]; topk_ids, topk_weights: [N, k]; gate_up_proj: [E, 2I, H] (gate rows first, then up);
down_proj: [E, H, I]; y: [N, H]. The router (softmax, top-k, renormalisation) and the shared expert
live in `minicoder.model.moe`; this package is only the expert FFNs.

Backends (`kernel=`): "naive" = `naive.py` (loop over experts; the reference); "torch" =
`sorted.py` (sorted dispatch + `torch._grouped_mm` or a segment loop; the CPU path); "triton" =
`triton.py` (our grouped GEMM; CUDA, or CPU under TRITON_INTERPRET=1; imported lazily). "auto":
Triton on CUDA when it imports, else "torch". The model passes its config-wide `kernel` knob here
too: "fla" (which has no MoE kernel) means "auto" for the experts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minicoder.config import KERNELS, register_kernel_name
from minicoder.ops.moe.naive import moe_experts_naive
from minicoder.ops.moe.sorted import moe_experts_sorted

__all__ = ["moe_experts", "moe_experts_naive", "moe_experts_sorted", "register_backend", "available_kernels"]


def _triton_experts(*args: torch.Tensor) -> torch.Tensor:
    # Lazy: importing triton (and decorating kernels) must wait until TRITON_INTERPRET is final.
    from minicoder.ops.moe.triton import moe_experts_triton

    return moe_experts_triton(*args)


def _triton_importable() -> bool:
    try:
        import minicoder.ops.moe.triton  # noqa: F401
    except Exception:
        return False
    return True


_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "torch": moe_experts_sorted, "naive": moe_experts_naive, "triton": _triton_experts,
}
#: what "auto" tries, in order, for CUDA tensors and for CPU tensors
_AUTO_ORDER: dict[str, list[str]] = {"cuda": ["triton", "torch"], "cpu": ["torch"]}


def register_backend(name: str, fn: Callable[..., torch.Tensor], auto_on: tuple[str, ...] = ()) -> None:
    """Add a backend `fn(x, topk_ids, topk_weights, gate_up_proj, down_proj) -> y`; put it first in
    the "auto" order for the device types listed in `auto_on` (e.g. ("cuda",))."""
    _BACKENDS[name] = fn
    register_kernel_name(name)
    for dev in auto_on:
        order = _AUTO_ORDER.setdefault(dev, ["torch"])
        if name in order:
            order.remove(name)
        order.insert(0, name)


def available_kernels(device: torch.device | str = "cpu") -> list[str]:
    """The backends that load and can run on ``device`` (as in the gated-delta op: "auto" and names
    only the other op implements are not listed)."""
    del device  # every MoE backend runs on CPU tensors too (Triton's through its interpreter)
    return [n for n in _BACKENDS if n != "triton" or _triton_importable()]


def moe_experts(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    kernel: str = "auto",
) -> torch.Tensor:
    """Weighted sum of each token's top-k expert SwiGLU FFNs (see the module docstring for shapes)."""
    if x.dim() != 2 or topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(
            f"moe_experts: expected x [N, H], topk_ids / topk_weights [N, k]; got x {tuple(x.shape)}, "
            f"topk_ids {tuple(topk_ids.shape)}, topk_weights {tuple(topk_weights.shape)}"
        )
    e, two_i, h = gate_up_proj.shape
    if h != x.shape[1] or two_i % 2 or down_proj.shape != (e, h, two_i // 2):
        raise ValueError(
            f"moe_experts: gate_up_proj {tuple(gate_up_proj.shape)} / down_proj {tuple(down_proj.shape)} "
            f"do not fit x [N, {x.shape[1]}] (expected [E, 2I, H] and [E, H, I])"
        )
    if kernel not in KERNELS:
        raise ValueError(f"moe_experts: kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel not in _BACKENDS:  # "auto", or a name only the gated-delta op has (fla): the best of ours
        order = _AUTO_ORDER.get(x.device.type, ["torch"])
        kernel = next(n for n in (*order, "torch") if n != "triton" or _triton_importable())
    return _BACKENDS[kernel](x, topk_ids, topk_weights, gate_up_proj, down_proj)
