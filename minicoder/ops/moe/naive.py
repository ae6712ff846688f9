"""Routed experts, the readable way: a loop over experts (the reference and the CPU path).

For each expert that received tokens: gather its rows, run its SwiGLU FFN, scale by the routing
weight, and index_add the result back into the output rows. Experts that got no tokens are skipped.
All experts live in two stacked parameters, so whenever any expert gets a token the whole tensor
gets a gradient (zeros in the rows of idle experts): distributed training (DDP/FSDP) never waits on
a parameter that was not used.

Weight layout (transformers 5's in-memory `Qwen3NextExperts`):
  gate_up_proj: [E, 2I, H], rows 0..I-1 = gate_proj, rows I..2I-1 = up_proj
  down_proj:    [E, H, I]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moe_experts_naive(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
) -> torch.Tensor:
    """sum_k topk_weights[n, k] * Expert_{topk_ids[n, k]}(x[n]).

    x: [N, H]; topk_ids: [N, k] int; topk_weights: [N, k]; gate_up_proj: [E, 2I, H];
    down_proj: [E, H, I]. Returns [N, H] in x's dtype.
    """
    n_experts = gate_up_proj.shape[0]
    out = torch.zeros_like(x)
    flat_ids = topk_ids.reshape(-1)
    counts = torch.bincount(flat_ids, minlength=n_experts).tolist()
    order = torch.argsort(flat_ids, stable=True)  # (token, slot) pairs grouped by expert
    token_of = order // topk_ids.shape[1]
    weight_of = topk_weights.reshape(-1)[order]
    start = 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        rows = token_of[start : start + c]
        gate, up = F.linear(x[rows], gate_up_proj[e]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, down_proj[e])
        out.index_add_(0, rows, (y * weight_of[start : start + c, None]).to(out.dtype))
        start += c
    return out
