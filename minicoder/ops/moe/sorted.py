"""Routed experts by sorted dispatch in PyTorch: the fast CPU path (and the GPU fallback without Triton).

The (token, slot) pairs are argsorted by expert, so every expert's rows become one contiguous
segment of a single gathered matrix; then one grouped GEMM per projection runs over the segments,
and a single weighted ``index_add`` scatters the results back to the tokens:

    order = argsort(topk_ids.flatten())            pairs grouped by expert
    xs    = x[order // k]                          [N*k, H]  one gather
    h     = grouped_mm(xs, gate_up_proj^T, offs)   [N*k, 2I] segment s uses expert s's weights
    a     = silu(h[:, :I]) * h[:, I:]
    y     = grouped_mm(a, down_proj^T, offs)       [N*k, H]
    out   = index_add(0, order // k, y * w[order]) [N, H]

Design choices: the grouped GEMM is ``torch._grouped_mm`` with group end offsets where it runs (CPU
in recent PyTorch; CUDA for bf16 on Hopper and newer), else a Python loop of ``x_seg @ W_e^T`` over
the non-empty segments; both are plain autograd ops, so the backward is PyTorch's. Experts with no
tokens have empty segments, get exact zero gradients, and stay in the graph. ``sort_by_expert`` also
builds the tile-padded layout that the Triton grouped GEMM (``minicoder/ops/moe/triton.py``) uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_moe_inputs(
    x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor
) -> None:
    """Shapes and expert ids; one ``ValueError`` naming the argument (one host sync to read id range)."""
    if x.dim() != 2 or topk_ids.dim() != 2 or topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(
            f"expected x [N, H], topk_ids / topk_weights [N, k]; got x {tuple(x.shape)}, "
            f"topk_ids {tuple(topk_ids.shape)}, topk_weights {tuple(topk_weights.shape)}"
        )
    if topk_ids.is_floating_point():
        raise ValueError(f"topk_ids must be an integer tensor, got dtype {topk_ids.dtype}")
    if gate_up_proj.dim() != 3 or down_proj.dim() != 3:
        raise ValueError(
            f"gate_up_proj must be [E, 2I, H] and down_proj [E, H, I], got {tuple(gate_up_proj.shape)} and {tuple(down_proj.shape)}"
        )
    E, two_i, H = gate_up_proj.shape
    if x.shape[1] != H or two_i % 2 or down_proj.shape != (E, H, two_i // 2):
        raise ValueError(
            f"gate_up_proj {tuple(gate_up_proj.shape)} / down_proj {tuple(down_proj.shape)} do not fit "
            f"x [N, {x.shape[1]}] (expected [E, 2I, H] and [E, H, I])"
        )
    if topk_ids.numel():
        lo, hi = int(topk_ids.min()), int(topk_ids.max())
        if lo < 0 or hi >= E:
            raise ValueError(f"topk_ids must lie in [0, E={E}), got values in [{lo}, {hi}]")


def sort_by_expert(topk_ids: torch.Tensor, n_experts: int, block: int = 1) -> dict[str, torch.Tensor | int]:
    """Group the ``N * k`` (token, slot) pairs by expert.

    Returns a dict with
      ``order [N*k]``: pair ids (``n * k + slot``) sorted by expert (stable);
      ``counts [E]``: pairs per expert; ``offsets [E]``: end of each expert's segment in ``order`` (int32);
    and, when ``block > 1``, with every expert's segment padded to a multiple of ``block`` rows (the GEMM tile):
      ``padded_ids [P]``: the pair in each padded row, -1 for padding;
      ``block_expert [P / block]``: the expert of each tile of rows; ``padded_offsets [E + 1]``: segment starts;
      ``P``: the padded row count (one host sync).
    """
    flat = topk_ids.reshape(-1)
    dev = flat.device
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts)
    out: dict[str, torch.Tensor | int] = {"order": order, "counts": counts, "offsets": counts.cumsum(0).to(torch.int32)}
    if block > 1:
        padded = (counts + block - 1) // block * block
        padded_offsets = torch.zeros(n_experts + 1, dtype=torch.long, device=dev)
        padded_offsets[1:] = padded.cumsum(0)
        P = int(padded_offsets[-1])
        seg_start = counts.cumsum(0) - counts  # start of each expert in `order`
        e_sorted = flat[order]
        pos = padded_offsets[e_sorted] + torch.arange(flat.numel(), device=dev) - seg_start[e_sorted]
        padded_ids = torch.full((P,), -1, dtype=torch.int32, device=dev)
        padded_ids[pos] = order.to(torch.int32)
        block_expert = torch.repeat_interleave(torch.arange(n_experts, device=dev), padded // block).to(torch.int32)
        out.update(padded_ids=padded_ids, block_expert=block_expert, padded_offsets=padded_offsets.to(torch.int32), P=P)
    return out


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` runs for this device / dtype here (CPU: any float; CUDA: bf16 on sm90+)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16)
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9
    return False


def grouped_linear(
    xs: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, counts: list[int], use_grouped_mm: bool
) -> torch.Tensor:
    """Segment s of ``xs [M, in]`` (rows ``offsets[s-1]:offsets[s]``) times ``w[s]^T`` (``w: [E, out, in]``) -> ``[M, out]``."""
    if use_grouped_mm:
        return torch._grouped_mm(xs, w.transpose(-2, -1), offs=offsets)
    parts, start = [], 0
    for e, c in enumerate(counts):
        if c:
            parts.append(F.linear(xs[start : start + c], w[e]))
            start += c
    if not parts:
        return xs.new_zeros(0, w.shape[1])
    return torch.cat(parts, 0)


def moe_experts_sorted(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    use_grouped_mm: bool | None = None,
) -> torch.Tensor:
    """sum_k topk_weights[n, k] * Expert_{topk_ids[n, k]}(x[n]) by sorted dispatch.

    x: [N, H]; topk_ids, topk_weights: [N, k]; gate_up_proj: [E, 2I, H]; down_proj: [E, H, I].
    use_grouped_mm: None = ``torch._grouped_mm`` where supported, else the per-segment loop.
    Returns [N, H] in x's dtype.
    """
    check_moe_inputs(x, topk_ids, topk_weights, gate_up_proj, down_proj)
    N, k = topk_ids.shape
    E, two_i, _ = gate_up_proj.shape
    if N == 0:
        return torch.zeros_like(x)
    lay = sort_by_expert(topk_ids, E)
    order, offsets = lay["order"], lay["offsets"]
    token = order // k
    dt = torch.promote_types(x.dtype, gate_up_proj.dtype)
    xs = x[token].to(dt)
    if use_grouped_mm is None:
        use_grouped_mm = grouped_mm_supported(xs)
    counts = [] if use_grouped_mm else lay["counts"].tolist()
    gate, up = grouped_linear(xs, gate_up_proj.to(dt), offsets, counts, use_grouped_mm).chunk(2, dim=-1)
    y = grouped_linear(F.silu(gate) * up, down_proj.to(dt), offsets, counts, use_grouped_mm)
    y = y * topk_weights.reshape(-1)[order, None].to(y.dtype)
    out = torch.zeros(N, x.shape[1], dtype=y.dtype, device=x.device).index_add(0, token, y)
    return out.to(x.dtype)
