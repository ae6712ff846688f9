"""The sparse MoE block of Qwen3-Next: router, routed SwiGLU experts, gated shared expert, balancing.

Design choices:
- Router: logits = W x; probs = softmax(logits) in float32; top-k experts; when `norm_topk_prob`,
  the k weights are renormalised to sum to 1; weights are cast back to the activation dtype.
- Experts: SwiGLU, stacked in two tensors `experts.gate_up_proj: [E, 2I, H]` (gate rows, then up rows)
  and `experts.down_proj: [E, H, I]` (transformers 5's in-memory layout); the computation is
  `minicoder.ops.moe.moe_experts` (naive loop today, sorted/Triton kernels behind the same call).
- Shared expert: a SwiGLU of width `shared_expert_intermediate_size` that every token uses, scaled
  per token by sigmoid(Linear(H -> 1)).
- Load balancing (Switch-style, as Qwen): aux = E * sum_e f_e * P_e per MoE layer, f_e = fraction of
  the k * N routing slots that went to expert e (so sum_e f_e = k, as HF counts it), P_e = mean
  router probability of e; averaged over layers. The block returns `RouterStats` (probability sums,
  slot counts, token count) so the loss can be formed locally or over the global batch:
  `ExpertLoadTracker` accumulates the counts over micro-batches and all-reduces them across ranks
  when torch.distributed is initialised (global-batch balancing, Qiu et al. 2025): f_e then comes from
  the whole global batch while the gradient still flows through the local P_e.
  Difference from HF: HF pools f and P over all layers before the product; we take the product per
  layer (each router is balanced on its own) and average. With one MoE layer the two agree.
- Padding tokens (left-padded generation) can be excluded from the statistics with `token_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minicoder.config import ModelConfig
from minicoder.ops.moe import moe_experts


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the dense MLP and the shared expert. x: [..., H]."""

    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Experts(nn.Module):
    """E SwiGLU experts in two stacked tensors (names and shapes as transformers' Qwen3NextExperts)."""

    def __init__(self, num_experts: int, hidden: int, inner: int, kernel: str = "auto") -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * inner, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, inner))
        self.kernel = kernel

    def forward(self, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        return moe_experts(x, topk_ids, topk_weights, self.gate_up_proj, self.down_proj, kernel=self.kernel)


@dataclass
class RouterStats:
    """What one MoE layer's router did on this batch (for the balancing loss and for logging).

    prob_sum: [E] sum over tokens of router probabilities (carries the gradient);
    counts: [E] number of routing slots each expert received (no gradient);
    tokens: number of tokens counted; logits: [N, E] router logits (for analysis).
    """

    prob_sum: torch.Tensor
    counts: torch.Tensor
    tokens: torch.Tensor
    logits: torch.Tensor


class SparseMoE(nn.Module):
    """Router + routed experts + sigmoid-gated shared expert. Parameter names as HF's checkpoints."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        h = config.hidden_size
        self.gate = nn.Linear(h, config.num_experts, bias=False)  # the router
        self.experts = Experts(config.num_experts, h, config.moe_intermediate_size, config.kernel)
        self.shared_expert = SwiGLU(h, config.shared_expert_intermediate_size)
        self.shared_expert_gate = nn.Linear(h, 1, bias=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [N, H] -> (logits [N, E], probs [N, E] float32, topk_ids [N, k], topk_weights [N, k])."""
        logits = self.gate(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, ids, weights.to(x.dtype)

    def forward(
        self, x: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, RouterStats]:
        """x: [B, T, H]; token_mask: [B, T] (1 = count in the statistics) or None. Returns ([B, T, H], stats)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits, probs, ids, weights = self.route(flat)
        routed = self.experts(flat, ids, weights)
        shared = torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        out = (routed + shared).reshape(shape)

        m = None if token_mask is None else token_mask.reshape(-1, 1).to(torch.float32)
        slot_w = torch.ones_like(ids, dtype=torch.float32) if m is None else m.expand_as(ids).contiguous()
        # scatter_add rather than bincount: no host sync on GPU, no [N, k, E] one-hot in memory
        counts = probs.new_zeros(self.num_experts).scatter_add_(0, ids.reshape(-1), slot_w.reshape(-1))
        stats = RouterStats(
            prob_sum=(probs if m is None else probs * m).sum(0),
            counts=counts.detach(),
            tokens=torch.tensor(float(flat.shape[0]), device=x.device) if m is None else m.sum(),
            logits=logits,
        )
        return out, stats


def load_balancing_loss(
    stats: list[RouterStats], num_experts: int, global_counts: list[torch.Tensor] | None = None
) -> torch.Tensor:
    """Mean over MoE layers of E * sum_e f_e * P_e.

    stats: one RouterStats per MoE layer (this micro-batch, this rank).
    global_counts: optional per-layer (counts [E], tokens) fractions f_e [E] to use instead of the local
    ones (see ExpertLoadTracker). P_e always comes from the local probabilities (the gradient path).
    """
    if not stats:
        return torch.zeros(())
    losses = []
    for i, s in enumerate(stats):
        tokens = s.tokens.clamp_min(1.0)
        f = s.counts / tokens if global_counts is None else global_counts[i]
        p = s.prob_sum / tokens
        losses.append(num_experts * (f.to(p.dtype) * p).sum())
    return torch.stack(losses).mean()


class ExpertLoadTracker:
    """Expert loads over the global batch, for global-batch load balancing and for logging.

    Usage in a training loop with gradient accumulation:
        tracker = ExpertLoadTracker()
        for micro_batch in step:
            out = model(..., load_tracker=tracker)   # the aux loss uses the accumulated f_e
            (out.loss / n_micro).backward()
        log(tracker.load())                          # [layers, E] fraction of slots per expert
        tracker.reset()                              # before the next optimizer step

    `update` adds this micro-batch's slot counts (all-reduced over ranks when torch.distributed is
    initialised, so every rank sees the same f_e) to running totals and returns f_e per layer from
    everything seen so far in this step: the last micro-batch's loss uses the whole global batch.
    """

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # [L, E]
        self.tokens: torch.Tensor | None = None  # [L]

    def update(self, stats: list[RouterStats]) -> list[torch.Tensor]:
        counts = torch.stack([s.counts for s in stats]).detach().float()
        tokens = torch.stack([s.tokens for s in stats]).detach().float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(tokens)
        self.counts = counts if self.counts is None else self.counts + counts
        self.tokens = tokens if self.tokens is None else self.tokens + tokens
        f = self.counts / self.tokens.clamp_min(1.0)[:, None]
        return list(f.unbind(0))

    def load(self) -> torch.Tensor | None:
        """[L, E] share of routing slots per expert so far (sums to top_k per layer), or None."""
        return None if self.counts is None else self.counts / self.tokens.clamp_min(1.0)[:, None]

    def reset(self) -> None:
        self.counts = self.tokens = None
