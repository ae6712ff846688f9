"""Gated softmax attention (the "full_attention" layers of Qwen3-Next).

Design choices:
- q_proj emits, per head, [query | gate] (2 * head_dim); the attention output of each head is
  multiplied elementwise by sigmoid(gate) before o_proj (Qiu et al. 2025: a query-dependent,
  head-specific output gate that removes attention sinks and massive activations).
- QK-norm: zero-centred RMSNorm over each head's dims on q and k, before RoPE.
- Partial RoPE on the first 25% of each head's dims (see rope.py).
- GQA: kv head j serves query heads j*g .. j*g+g-1 (g = heads / kv_heads), as HF's repeat_kv.
- Causal. Packed documents (`cu_seqlens`, FlashAttention's varlen convention, batch size 1) are
  attended block-diagonally: one causal SDPA call per document, so no document sees another and
  memory stays O(sum of L_doc^2) instead of O(T^2).
- KV cache (`KVSlot`) for incremental decoding, plus a key padding mask for left-padded batches.
- Layout [B, T, H, D] at the module boundary; SDPA (math / flash / mem-efficient, picked by torch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minicoder.config import ModelConfig
from minicoder.model.cache import KVSlot
from minicoder.model.norm import RMSNorm
from minicoder.model.rope import apply_rope


def _causal_mask_with_padding(
    t: int, past: int, key_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Boolean mask [B or 1, 1, t, past + t], True = may attend.

    Query i (absolute position past + i) sees keys j <= past + i that are real tokens. A padding
    query would see no key at all (softmax of nothing is NaN), so every query also sees itself.
    """
    s = past + t
    q_pos = torch.arange(past, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    mask = k_pos <= q_pos  # [t, s]
    if key_mask is not None:
        mask = (mask[None] & key_mask[:, None, :].to(torch.bool)) | (k_pos == q_pos)[None]
        return mask[:, None]  # [B, 1, t, s]
    return mask[None, None]


class GatedAttention(nn.Module):
    """Gated softmax attention with GQA, QK-norm, partial RoPE, varlen and KV cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        h, d, bias = config.hidden_size, config.head_dim, config.attention_bias
        self.q_proj = nn.Linear(h, self.num_heads * d * 2, bias=bias)  # per head: [query | gate]
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=bias)
        self.q_norm = RMSNorm(d, eps=config.rms_norm_eps)
        self.k_norm = RMSNorm(d, eps=config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        cache: KVSlot | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T, hidden]; cos, sin: [B, T, rotary_dim]; cu_seqlens: [N + 1] (B = 1) or None;
        cache: this layer's KVSlot or None; key_mask: [B, past + T] bool (True = real token) or None.
        Returns [B, T, hidden]."""
        b, t, _ = x.shape
        qg = self.q_proj(x).view(b, t, self.num_heads, 2 * self.head_dim)
        q, gate = qg.chunk(2, dim=-1)  # [B, T, H, D] each
        gate = gate.reshape(b, t, self.num_heads * self.head_dim)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)), cos, sin)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # [B, H, T, D]

        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)

        if cu_seqlens is not None:
            if b != 1 or cache is not None:
                raise ValueError("cu_seqlens needs batch size 1 and no cache (packed training forward)")
            bounds = cu_seqlens.tolist()
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True)
                    for s, e in zip(bounds[:-1], bounds[1:])
                    if e > s
                ],
                dim=2,
            )
        elif key_mask is None and past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif key_mask is None and t == 1:
            out = F.scaled_dot_product_attention(q, k, v)  # one new token sees every past token
        else:
            mask = _causal_mask_with_padding(t, past, key_mask, x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        out = out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.o_proj(out * torch.sigmoid(gate))
