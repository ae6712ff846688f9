"""The hybrid decoder (Qwen3-Next / Qwen3-Coder-Next): layer stack, LM head, MTP head, losses.

    x = embed(ids)
    for each layer i:      x = x + Mixer_i(RMSNorm(x))          Mixer = GatedDeltaNet or GatedAttention
                           x = x + FFN_i(RMSNorm(x))            FFN = SparseMoE (or dense SwiGLU)
    h = RMSNorm(x);  logits = lm_head(h)
    MTP: h' = Layer(fc([RMSNorm(embed(ids[t+1])) | RMSNorm(h_t)]));  mtp_logits = lm_head(RMSNorm(h'))

Design choices:
- Module tree and parameter names are HF's (`model.embed_tokens`, `model.layers.{i}.linear_attn.*` /
  `.self_attn.*`, `.mlp.*`, `model.norm`, `lm_head`, `mtp.*` as in the released checkpoints), so a
  checkpoint is a state dict away (experts aside, see hf.py) and parity tests compare like with like.
- `layer_types` decides each layer's mixer; `ModelConfig.is_moe_layer` its FFN (as HF).
- Packed batches: input_ids [1, T] + `cu_seqlens` [N + 1] (+ per-document `position_ids`, derived
  from cu_seqlens when absent). Attention is block-diagonal, DeltaNet's conv and state reset at each
  boundary, and the next-token targets that would cross a boundary are ignored, so a packed forward
  equals separate per-document forwards.
- Labels: either `labels` in HF's convention (aligned with `input_ids`, -100 = ignore; shifted here,
  logits at t predict labels at t + 1) or `targets`, already shifted (the data stage's
  `PackedBatch.labels`). Packed [B, L] rows with cu_seqlens over the flattened B * L tokens (the data
  stage's layout) are run as one row of B * L tokens.
- Loss = mean CE + router_aux_loss_coef * balancing loss + mtp_loss_weight * MTP CE (each also
  returned on its own). MTP at position t sees h_t and the embedding of token t + 1 and predicts
  token t + 2 (DeepSeek-V3 style, one extra depth); positions are those of t, as vLLM does.
  MTP takes the main stack's final-normed hidden state, as vLLM's spec-decode does.
- Generation (generate.py) passes a `HybridCache`; the MTP head is not used for decoding here.
- Init as HF: normal(0, initializer_range) for linear / embedding / expert / router weights, zeros for
  zero-centred norms, ones for the gated norm and dt_bias, A = uniform(0.01, 16) per DeltaNet head;
  the short conv keeps PyTorch's default init.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from minicoder.config import ModelConfig
from minicoder.model.attention import GatedAttention
from minicoder.model.cache import HybridCache
from minicoder.model.deltanet import GatedDeltaNet, positions_in_documents
from minicoder.model.moe import (
    ExpertLoadTracker,
    Experts,
    RouterStats,
    SparseMoE,
    SwiGLU,
    load_balancing_loss,
)
from minicoder.model.norm import GatedRMSNorm, RMSNorm
from minicoder.model.rope import rope_cos_sin


class DecoderLayer(nn.Module):
    """Pre-norm residual block: token mixer (DeltaNet or gated attention), then MoE / dense FFN."""

    def __init__(self, config: ModelConfig, layer_type: str, moe: bool) -> None:
        super().__init__()
        self.layer_type = layer_type
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if layer_type == "linear_attention":
            self.linear_attn = GatedDeltaNet(config)
        else:
            self.self_attn = GatedAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SparseMoE(config) if moe else SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
        cache_slot,
        pad_mask: torch.Tensor | None,
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, RouterStats | None]:
        h = self.input_layernorm(x)
        if self.layer_type == "linear_attention":
            h = self.linear_attn(h, cu_seqlens=cu_seqlens, cache=cache_slot, pad_mask=pad_mask)
        else:
            h = self.self_attn(h, cos, sin, cu_seqlens=cu_seqlens, cache=cache_slot, key_mask=key_mask)
        x = x + h
        h = self.post_attention_layernorm(x)
        stats = None
        if isinstance(self.mlp, SparseMoE):
            h, stats = self.mlp(h, token_mask=pad_mask)
        else:
            h = self.mlp(h)
        return x + h, stats


class HybridDecoder(nn.Module):
    """Embeddings + the layer stack + final norm (HF's `Qwen3NextModel`, the `model.` prefix)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, t, config.is_moe_layer(i)) for i, t in enumerate(config.layer_types)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPHead(nn.Module):
    """Multi-token prediction head (`mtp.*`): predicts token t + 2 from h_t and the embedding of t + 1."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.pre_fc_norm_embedding = RMSNorm(h, config.rms_norm_eps)
        self.pre_fc_norm_hidden = RMSNorm(h, config.rms_norm_eps)
        self.fc = nn.Linear(2 * h, h, bias=False)  # input is [embedding | hidden]
        self.layers = nn.ModuleList(
            DecoderLayer(config, "full_attention", moe=config.num_experts > 0)
            for _ in range(config.num_nextn_predict_layers)
        )
        self.norm = RMSNorm(h, config.rms_norm_eps)

    def forward(
        self,
        next_embeds: torch.Tensor,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[RouterStats]]:
        """next_embeds, hidden: [B, T, H] -> ([B, T, H] normed hidden for the lm_head, router stats)."""
        x = self.fc(torch.cat([self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(hidden)], -1))
        stats = []
        for layer in self.layers:
            x, s = layer(x, cos, sin, cu_seqlens, None, None, None)
            if s is not None:
                stats.append(s)
        return self.norm(x), stats


@dataclass
class ModelOutput:
    """Forward results. logits: [B, T, V] (or the last `logits_to_keep` positions)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None  # ce + coef * aux + mtp_weight * mtp (when labels are given)
    ce_loss: torch.Tensor | None = None  # mean next-token cross-entropy over non-ignored targets
    aux_loss: torch.Tensor | None = None  # load-balancing loss (before the coefficient)
    mtp_loss: torch.Tensor | None = None  # MTP cross-entropy (token t + 2)
    mtp_logits: torch.Tensor | None = None  # [B, T, V]
    router_stats: list[RouterStats] = field(default_factory=list)  # one per MoE layer of the main stack
    hidden_states: torch.Tensor | None = None  # [B, T, H] final normed hidden
    cache: HybridCache | None = None

    @property
    def expert_counts(self) -> torch.Tensor | None:
        """[MoE layers, E] routing slots per expert in this forward (for logging expert load)."""
        return torch.stack([s.counts for s in self.router_stats]) if self.router_stats else None


def shift_targets(labels: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """targets[:, t] = labels[:, t + 1]; -100 at the end and where t + 1 starts a new document of
    cu_seqlens (B = 1). labels: [B, T] -> [B, T]. Applied twice it gives the MTP targets (t + 2)."""
    out = torch.full_like(labels, -100)
    out[:, :-1] = labels[:, 1:]
    if cu_seqlens is not None:
        starts = positions_in_documents(cu_seqlens, labels.shape[1]) == 0  # a new document begins here
        out[:, :-1][:, starts[1:]] = -100
    return out


class HybridLM(nn.Module):
    """The causal LM: HybridDecoder + lm_head (+ MTP head). See the module docstring."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = HybridDecoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.mtp = MTPHead(config) if config.num_nextn_predict_layers > 0 else None
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """HF's initialisation (see the module docstring)."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, std)
            elif isinstance(m, RMSNorm):
                m.weight.zero_()
            elif isinstance(m, GatedRMSNorm):
                m.weight.fill_(1.0)
            elif isinstance(m, Experts):
                m.gate_up_proj.normal_(0.0, std)
                m.down_proj.normal_(0.0, std)
            elif isinstance(m, GatedDeltaNet):
                m.dt_bias.fill_(1.0)
                m.A_log.copy_(torch.empty_like(m.A_log).uniform_(0.01, 16).log())

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        if exclude_embeddings:
            n -= self.model.embed_tokens.weight.numel()
            if not self.config.tie_word_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    # ------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache: HybridCache | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        load_tracker: ExpertLoadTracker | None = None,
        logits_to_keep: int = 0,
        compute_mtp: bool | None = None,
        targets: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Run the model.

        input_ids: [B, T]. position_ids: [B, T] (default: per-document positions from cu_seqlens, else
        the cache offset + arange, else positions counted over real tokens of attention_mask).
        cu_seqlens: [N + 1] int document boundaries over the flattened B * T tokens (the data stage's
        PackedBatch; rows are concatenated into one packed row internally).
        cache: a HybridCache to read and extend (incremental decoding).
        labels: [B, T] HF convention (aligned with input_ids, -100 = ignore), shifted inside.
        targets: [B, T] pre-shifted labels (targets[t] = the token t must predict, -100 = ignore), as
        `minicoder.data.packing.PackedBatch.labels`; give labels or targets, not both.
        attention_mask: [B, T] 1 = real token, 0 = (left) padding, for batched generation.
        load_tracker: ExpertLoadTracker for global-batch balancing (f_e over micro-batches / ranks).
        logits_to_keep: > 0 computes logits only for the last that many positions (decoding).
        compute_mtp: run the MTP head (default: when labels are given and the model has one).
        """
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        if labels is not None and targets is not None:
            raise ValueError("give labels (HF convention, shifted here) or targets (pre-shifted), not both")
        for name, x in (("labels", labels), ("targets", targets), ("position_ids", position_ids)):
            if x is not None and x.shape != input_ids.shape:
                raise ValueError(f"{name} must match input_ids {tuple(input_ids.shape)}, got {tuple(x.shape)}")
        if cu_seqlens is not None and input_ids.shape[0] > 1:  # [B, L] packed rows -> one row of B * L
            b0, t0 = input_ids.shape
            flat = lambda x: None if x is None else x.reshape(1, b0 * t0)
            out = self.forward(
                flat(input_ids), flat(position_ids), cu_seqlens, None, flat(labels), None, load_tracker,
                0, compute_mtp, flat(targets),
            )
            out.logits = out.logits.reshape(b0, t0, -1)
            out.hidden_states = out.hidden_states.reshape(b0, t0, -1)
            if out.mtp_logits is not None:
                out.mtp_logits = out.mtp_logits.reshape(b0, t0, -1)
            return out
        b, t = input_ids.shape
        if cu_seqlens is not None:
            cu_seqlens = cu_seqlens.to(device=input_ids.device, dtype=torch.int64)
            if cu_seqlens[0].item() != 0 or cu_seqlens[-1].item() != t or (cu_seqlens.diff() < 0).any():
                raise ValueError(f"cu_seqlens must rise from 0 to T = {t}, got {cu_seqlens.tolist()}")
            if cache is not None:
                raise ValueError("cu_seqlens (packed training) and cache (decoding) can't be combined")
        if attention_mask is not None and attention_mask.shape != (b, t):
            raise ValueError(f"attention_mask must be [B, T] = [{b}, {t}], got {tuple(attention_mask.shape)}")

        past = cache.seen if cache is not None else 0
        key_mask = None
        if cache is not None:
            key_mask = cache.advance(attention_mask, t, input_ids.device)
        elif attention_mask is not None:
            key_mask = attention_mask.to(torch.bool)
        pad_mask = attention_mask if (attention_mask is not None and not bool(attention_mask.all())) else None
        if pad_mask is None and key_mask is not None and bool(key_mask.all()):
            key_mask = None  # no padding anywhere: plain causal attention

        if position_ids is None:
            if cu_seqlens is not None:
                position_ids = positions_in_documents(cu_seqlens, t)[None]
            elif key_mask is not None:  # left padding: count real tokens only
                position_ids = (key_mask.long().cumsum(-1) - 1).clamp_min(0)[:, past:]
            else:
                position_ids = torch.arange(past, past + t, device=input_ids.device)[None].expand(b, t)
        dtype = self.model.embed_tokens.weight.dtype
        cos, sin = rope_cos_sin(position_ids, cfg.rotary_dim, cfg.rope_theta, dtype)

        x = self.model.embed_tokens(input_ids)
        stats: list[RouterStats] = []
        for i, layer in enumerate(self.model.layers):
            x, s = layer(x, cos, sin, cu_seqlens, cache[i] if cache is not None else None, pad_mask, key_mask)
            if s is not None:
                stats.append(s)
        hidden = self.model.norm(x)
        h_out = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        logits = self.lm_head(h_out)
        out = ModelOutput(logits=logits, router_stats=stats, hidden_states=hidden, cache=cache)

        if stats:
            f_global = load_tracker.update(stats) if load_tracker is not None else None
            out.aux_loss = load_balancing_loss(stats, cfg.num_experts, f_global)

        if labels is not None:
            targets = shift_targets(labels, cu_seqlens)
        if compute_mtp is None:
            compute_mtp = targets is not None and self.mtp is not None
        if compute_mtp:
            if self.mtp is None:
                raise ValueError("compute_mtp=True but the model has no MTP head (num_nextn_predict_layers = 0)")
            next_ids = torch.cat([input_ids[:, 1:], torch.zeros_like(input_ids[:, :1])], dim=1)
            mtp_hidden, mtp_stats = self.mtp(self.model.embed_tokens(next_ids), hidden, cos, sin, cu_seqlens)
            out.mtp_logits = self.lm_head(mtp_hidden)

        if targets is not None:
            if logits_to_keep > 0:
                raise ValueError("a loss needs the logits of every position (logits_to_keep = 0)")
            out.ce_loss = F.cross_entropy(
                logits.float().reshape(-1, cfg.vocab_size), targets.reshape(-1), ignore_index=-100
            )
            loss = out.ce_loss
            if out.aux_loss is not None:
                loss = loss + cfg.router_aux_loss_coef * out.aux_loss.to(loss.device)
            if out.mtp_logits is not None:
                out.mtp_loss = F.cross_entropy(
                    out.mtp_logits.float().reshape(-1, cfg.vocab_size),
                    shift_targets(targets, cu_seqlens).reshape(-1),  # token t + 2
                    ignore_index=-100,
                )
                loss = loss + cfg.mtp_loss_weight * out.mtp_loss
                if mtp_stats:
                    loss = loss + cfg.router_aux_loss_coef * load_balancing_loss(mtp_stats, cfg.num_experts)
            out.loss = loss
        return out
