"""Gated DeltaNet layer (the "linear_attention" layers of Qwen3-Next).

Data flow for x: [B, T, hidden] (shapes per token):
  in_proj_qkvz -> per key head g: [q_g (dk) | k_g (dk) | v_g (r*dv) | z_g (r*dv)]   r = Hv / Hk
  in_proj_ba   -> per key head g: [b_g (r) | a_g (r)]
  short conv   -> depthwise causal conv1d (kernel 4, no bias) + SiLU over cat(q, k, v) channels
  gates        -> beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias)  (log decay, <= 0)
  delta rule   -> minicoder.ops.gated_delta with q, k L2-normalised in the kernel, q scaled by dk^-0.5
  output       -> GatedRMSNorm(o, z) per value head (normalise, * weight, * silu(z)), then out_proj

Design choices:
- The projection layouts are the released checkpoints' (grouped per key head), un-grouped exactly
  as HF's `fix_query_key_value_ordering`, so checkpoints load without any re-ordering; value head
  h = g * r + j uses q/k head g (the delta-rule ops share q/k heads across consecutive v heads).
- The conv is written as a sum of K shifted copies of the input (out_t = sum_s w[K-1-s] x_{t-s}),
  which makes the three cases one code path: zero history (training), a cached history of the last
  K-1 inputs (decoding), and packed documents, where a shift that would cross a document boundary
  is masked to zero (the conv must not see the previous document), as the state reset of the delta
  rule at each `cu_seqlens` boundary.
- Left padding in batched generation: padded positions are zeroed on input (like HF's
  `apply_mask_to_padding_states`). With zero input q = k = 0, so the state stays exactly zero
  through the padding and the first real token sees the same (empty) history as an unpadded row.
- Decoding (cache given, T == 1) uses the recurrent entry point; prefill / training the chunked one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minicoder.config import ModelConfig
from minicoder.model.cache import StateSlot
from minicoder.model.norm import GatedRMSNorm
from minicoder.ops.gated_delta import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule


def positions_in_documents(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """[total] index of each token inside its document (0 at every boundary in cu_seqlens [N + 1])."""
    idx = torch.arange(total, device=cu_seqlens.device)
    starts = cu_seqlens[:-1].repeat_interleave(cu_seqlens.diff())
    return idx - starts


def causal_short_conv(
    x: torch.Tensor, weight: torch.Tensor, history: torch.Tensor | None = None, doc_pos: torch.Tensor | None = None
) -> torch.Tensor:
    """Depthwise causal conv without bias. x: [B, T, C]; weight: [C, K]; history: [B, K-1, C] or None
    (zeros); doc_pos: [T] position inside the document (shifts reaching before 0 are dropped).
    Returns [B, T, C]."""
    b, t, c = x.shape
    k = weight.shape[-1]
    if history is None:
        history = x.new_zeros(b, k - 1, c)
    full = torch.cat([history.to(x.dtype), x], dim=1)  # [B, K-1+T, C]
    out = x * weight[:, k - 1]
    for s in range(1, k):  # contribution of the input s steps back
        shifted = full[:, k - 1 - s : k - 1 - s + t]
        if doc_pos is not None:
            shifted = shifted * (doc_pos >= s)[None, :, None].to(x.dtype)
        out = out + shifted * weight[:, k - 1 - s]
    return out


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet token mixer with short conv, gates, gated RMSNorm and a state cache."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.hk, self.hv = config.linear_num_key_heads, config.linear_num_value_heads
        self.dk, self.dv = config.linear_key_head_dim, config.linear_value_head_dim
        self.r = self.hv // self.hk
        self.key_dim, self.value_dim = self.hk * self.dk, self.hv * self.dv
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.kernel = config.kernel
        h = config.hidden_size
        self.in_proj_qkvz = nn.Linear(h, 2 * self.key_dim + 2 * self.value_dim, bias=False)
        self.in_proj_ba = nn.Linear(h, 2 * self.hv, bias=False)
        # nn.Conv1d only to hold the weight under HF's name and shape [C, 1, K]; we apply it ourselves
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, config.linear_conv_kernel_dim, groups=self.conv_dim, bias=False
        )
        self.dt_bias = nn.Parameter(torch.ones(self.hv))
        # A in [0.01, 16] (log-uniform init as HF): per-head decay rates from slow to fast
        self.A_log = nn.Parameter(torch.empty(self.hv).uniform_(0.01, 16).log())
        self.norm = GatedRMSNorm(self.dv, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(self.value_dim, h, bias=False)

    def split_projections(
        self, qkvz: torch.Tensor, ba: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Un-group the per-key-head layout. qkvz: [B, T, 2*key_dim + 2*value_dim]; ba: [B, T, 2*Hv].
        Returns q, k: [B, T, Hk, dk]; v, z: [B, T, Hv, dv]; b, a: [B, T, Hv]."""
        b_, t = qkvz.shape[:2]
        qkvz = qkvz.view(b_, t, self.hk, 2 * self.dk + 2 * self.r * self.dv)
        q, k, v, z = qkvz.split([self.dk, self.dk, self.r * self.dv, self.r * self.dv], dim=-1)
        bb, a = ba.view(b_, t, self.hk, 2 * self.r).split([self.r, self.r], dim=-1)
        v, z = v.reshape(b_, t, self.hv, self.dv), z.reshape(b_, t, self.hv, self.dv)
        return q, k, v, z, bb.reshape(b_, t, self.hv), a.reshape(b_, t, self.hv)

    def forward(
        self,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        cache: StateSlot | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T, hidden]; cu_seqlens: [N + 1] (B = 1) or None; cache: this layer's StateSlot or None;
        pad_mask: [B, T] (1 = real token) for left-padded batches, or None. Returns [B, T, hidden]."""
        if cu_seqlens is not None and (x.shape[0] != 1 or cache is not None):
            raise ValueError("cu_seqlens needs batch size 1 and no cache (packed training forward)")
        if pad_mask is not None:
            x = x * pad_mask[..., None].to(x.dtype)
        bsz, t, _ = x.shape
        q, k, v, z, b, a = self.split_projections(self.in_proj_qkvz(x), self.in_proj_ba(x))

        mixed = torch.cat([q.reshape(bsz, t, -1), k.reshape(bsz, t, -1), v.reshape(bsz, t, -1)], dim=-1)
        history = cache.conv if cache is not None else None
        doc_pos = positions_in_documents(cu_seqlens, t) if cu_seqlens is not None else None
        weight = self.conv1d.weight.squeeze(1)  # [C, K]
        if cache is not None:  # keep the last K-1 inputs for the next call
            prev = history if history is not None else mixed.new_zeros(bsz, weight.shape[1] - 1, self.conv_dim)
            cache.conv = torch.cat([prev, mixed], dim=1)[:, -(weight.shape[1] - 1) :].detach()
        mixed = F.silu(causal_short_conv(mixed, weight, history, doc_pos))
        q, k, v = mixed.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k = q.reshape(bsz, t, self.hk, self.dk), k.reshape(bsz, t, self.hk, self.dk)
        v = v.reshape(bsz, t, self.hv, self.dv)

        beta = b.sigmoid()
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)  # [B, T, Hv], log decay

        rule = fused_recurrent_gated_delta_rule if (cache is not None and t == 1) else chunk_gated_delta_rule
        o, state = rule(
            q, k, v, g, beta,
            initial_state=cache.recurrent if cache is not None else None,
            output_final_state=cache is not None,
            cu_seqlens=cu_seqlens,
            use_qk_l2norm_in_kernel=True,
            kernel=self.kernel,
        )
        if cache is not None:
            cache.recurrent = state.float().detach()
        o = self.norm(o, z)  # [B, T, Hv, dv]
        return self.out_proj(o.reshape(bsz, t, self.value_dim))
