"""Partial rotary position embedding (RoPE on the first `rotary_dim` dims of each head).

Design choices:
- Qwen3-Next rotates only the first 25% of each attention head's dims (64 of 256); the rest pass
  through unchanged and carry position-free content.
- "rotate_half" convention (as HF/Llama, not GPT-J's interleaved pairs): the rotary part is split
  into two halves [x1 | x2] and rotated as [x1 cos - x2 sin | x2 cos + x1 sin]; the frequency of
  dim i and dim i + rotary_dim/2 is the same, theta^(-2i / rotary_dim).
- No buffers: the inverse frequencies are recomputed per call (rotary_dim/2 numbers), so a model
  built on the meta device and loaded with `assign=True` needs no buffer fix-up.
- Positions are explicit `position_ids: [B, T]`, so packed documents restart at 0 and left-padded
  rows in generation start their real tokens at 0.
"""

from __future__ import annotations

import torch


def rope_cos_sin(
    position_ids: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [B, T, rotary_dim] for position_ids: [B, T] (computed in float32, cast to dtype)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=position_ids.device) / rotary_dim)
    )
    freqs = position_ids[..., None].float() * inv_freq  # [B, T, rotary_dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1 | x2] -> [-x2 | x1] over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of every head. x: [B, T, H, D]; cos, sin: [B, T, R]."""
    r = cos.shape[-1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    x_rot, x_pass = x[..., :r], x[..., r:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
