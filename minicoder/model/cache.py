"""HybridCache: the mixed inference cache of the hybrid stack.

Design choices:
- One object for the whole model, one slot per layer, of the kind that layer needs:
  full attention -> `KVSlot` (keys and values of every past token, grows with the context);
  Gated DeltaNet -> `StateSlot` (the last kernel-1 inputs of the short convolution and the K x V
  recurrent state per value head, constant size whatever the context). This asymmetry is why the
  3:1 hybrid is cheap at 262k tokens: only 1 layer in 4 keeps per-token memory.
- KV slots are pre-allocated when the caller knows the final length (`max_len`, as `generate` does)
  and otherwise grow by doubling, so decoding is not quadratic in copies.
- The cache also keeps the key padding mask (`key_mask: [B, S]`, True = real token) for batched
  generation with left padding, and the number of tokens seen (`seen`).
- Recurrent states are kept in float32 whatever the model dtype (the delta rule accumulates).
- `memory_bytes()` reports bytes per layer kind; the long-context benchmark reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minicoder.config import ModelConfig


@dataclass
class KVSlot:
    """Keys / values of one attention layer: k, v: [B, Hkv, capacity, D]; the first `length` are valid."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    length: int = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add k, v: [B, Hkv, T, D]; return all valid keys and values so far."""
        t = k.shape[2]
        if self.k is None:
            self.k, self.v = k.new_zeros(k.shape[:2] + (max(t, 16),) + k.shape[3:]), v.new_zeros(
                v.shape[:2] + (max(t, 16),) + v.shape[3:]
            )
        if self.length + t > self.k.shape[2]:  # grow by doubling
            cap = max(self.length + t, 2 * self.k.shape[2])
            grow = lambda x: torch.cat([x, x.new_zeros(x.shape[:2] + (cap - x.shape[2],) + x.shape[3:])], dim=2)
            self.k, self.v = grow(self.k), grow(self.v)
        self.k[:, :, self.length : self.length + t] = k
        self.v[:, :, self.length : self.length + t] = v
        self.length += t
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


@dataclass
class StateSlot:
    """State of one Gated DeltaNet layer.

    conv: [B, kernel - 1, C] the last inputs of the short convolution (C = 2 * key_dim + value_dim);
    recurrent: [B, Hv, dk, dv] float32 delta-rule state.
    """

    conv: torch.Tensor | None = None
    recurrent: torch.Tensor | None = None


class HybridCache:
    """Per-layer caches for the hybrid stack (see module docstring)."""

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        layer_types: list[str] | None = None,
    ) -> None:
        self.config = config
        self.batch_size = batch_size
        self.layer_types = list(config.layer_types if layer_types is None else layer_types)
        self.slots: list[KVSlot | StateSlot] = []
        for t in self.layer_types:
            if t == "full_attention":
                slot = KVSlot()
                if max_len is not None:  # pre-allocate the whole context
                    shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
                    slot.k = torch.zeros(shape, device=device, dtype=dtype)
                    slot.v = torch.zeros(shape, device=device, dtype=dtype)
                self.slots.append(slot)
            else:
                self.slots.append(StateSlot())
        self.seen = 0  # tokens processed so far (same for every row; padding counts)
        self.key_mask: torch.Tensor | None = None  # [B, seen] bool, None = no padding anywhere

    def __getitem__(self, i: int) -> KVSlot | StateSlot:
        return self.slots[i]

    def advance(self, new_mask: torch.Tensor | None, t: int, device: torch.device) -> torch.Tensor | None:
        """Record t new tokens (new_mask: [B, t] 1 = real, or None); return the key mask [B, seen + t]."""
        if new_mask is not None or self.key_mask is not None:
            old = (
                self.key_mask
                if self.key_mask is not None
                else torch.ones(self.batch_size, self.seen, dtype=torch.bool, device=device)
            )
            new = (
                new_mask.to(torch.bool)
                if new_mask is not None
                else torch.ones(self.batch_size, t, dtype=torch.bool, device=device)
            )
            self.key_mask = torch.cat([old, new], dim=1)
        self.seen += t
        return self.key_mask

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held, by layer kind: {"full_attention": ..., "linear_attention": ..., "total": ...}.

        KV slots count their allocated capacity (what the device actually holds).
        """
        out = {"full_attention": 0, "linear_attention": 0}
        for t, s in zip(self.layer_types, self.slots):
            for x in (s.k, s.v) if isinstance(s, KVSlot) else (s.conv, s.recurrent):
                if x is not None:
                    out[t] += x.numel() * x.element_size()
        out["total"] = out["full_attention"] + out["linear_attention"]
        return out


def cache_bytes_per_token(config: ModelConfig, dtype_bytes: int = 2) -> dict[str, float]:
    """Analytic cache size: KV bytes per token of context, and the constant DeltaNet state bytes.

    Returns {"kv_bytes_per_token": ..., "deltanet_state_bytes": ...} for batch 1 (states in float32,
    conv state in the model dtype).
    """
    n_attn = sum(t == "full_attention" for t in config.layer_types)
    n_lin = len(config.layer_types) - n_attn
    kv = n_attn * 2 * config.num_key_value_heads * config.head_dim * dtype_bytes
    conv_c = 2 * config.linear_key_dim + config.linear_value_dim
    state = n_lin * (
        (config.linear_conv_kernel_dim - 1) * conv_c * dtype_bytes
        + config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim * 4
    )
    return {"kv_bytes_per_token": float(kv), "deltanet_state_bytes": float(state)}
