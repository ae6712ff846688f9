"""Parameter, FLOP and memory accounting for any ModelConfig, computed on the meta device.

Design choices:
- Parameter counts come from instantiating `HybridLM` on the meta device (no memory, any size,
  including the 80B `full` preset in a second) and classifying parameters by name, so the count
  is the model's, not a formula that can drift from it. Tests check it equals transformers'
  `Qwen3NextForCausalLM` built on the meta device, exactly.
- Active parameters per token: everything except the routed experts counts fully; the routed experts
  count k/E of their total (a token passes through k of E experts). The router and the shared expert
  are always active.
- FLOPs: 2 per multiply-add of every active weight matrix (lm_head included, the embedding lookup
  excluded), plus the sequence-mixing terms that weights don't capture:
    attention (full_attention layers): QK^T and AV = 4 * heads * head_dim * context per token;
    Gated DeltaNet (linear_attention layers): the state term of the recurrent form per value head,
      decay (dk*dv) + S^T k (2 dk dv) + rank-1 update (2 dk dv) + read S^T q (2 dk dv) = 7 dk dv,
      plus the short conv (2 * kernel * channels). It does not grow with the context.
  `context` is the number of keys a token attends to; for a whole causal sequence of length L use
  the mean, (L + 1) / 2 (`flops_per_token(cfg, seq_len=L)` does that). Training = 3x forward
  (backward = 2x forward), the usual estimate.
- Memory plan: bytes of parameters, gradients, optimizer states (AdamW: two moments) and fp32 master
  weights for mixed precision, by dtype, optionally divided over `shards` (FSDP / ZeRO-3).

The "3B active" of Qwen3-Coder-Next vs 3.87B: the name counts the weights a token uses *inside the
transformer* (3.25B: 48 layers' attention / DeltaNet, router, shared expert and 10 of 512 experts,
plus norms), without the input embedding and the output lm_head (0.31B each at vocab 151,936 x
2,048, untied). Counting those two as well gives 3.87B. Neither figure includes the MTP head (one
extra decoder layer + fc, used for training and speculative decoding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from minicoder.config import ModelConfig


@dataclass
class ParamCount:
    """Parameter counts of a config (numbers of scalars)."""

    total: int  # every parameter, MTP included (tied embeddings counted once)
    total_without_mtp: int  # the main model: what transformers' Qwen3NextForCausalLM holds
    embedding: int  # input embedding
    lm_head: int  # output projection (0 when tied to the embedding)
    mtp: int  # the MTP head (its experts included)
    routed_experts: int  # routed-expert weights of the main stack
    routed_experts_mtp: int  # routed-expert weights of the MTP layers
    active: int  # used per token by the main model, embedding + lm_head included
    active_without_embeddings: int  # the same without embedding and lm_head ("3B" of A3B)
    active_with_mtp: int  # active + the MTP head's active part

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_parameters(config: ModelConfig) -> ParamCount:
    """Count parameters of HybridLM(config) on the meta device (see module docstring)."""
    from minicoder.model.model import HybridLM

    with torch.device("meta"):
        model = HybridLM(config)
    k_over_e = config.num_experts_per_tok / config.num_experts if config.num_experts else 0.0
    seen: set[int] = set()
    sums = dict(total=0, mtp=0, experts=0, experts_mtp=0)
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:  # tied lm_head
            continue
        seen.add(id(p))
        n = p.numel()
        sums["total"] += n
        is_expert = ".mlp.experts." in name
        if name.startswith("mtp."):
            sums["mtp"] += n
            if is_expert:
                sums["experts_mtp"] += n
        elif is_expert:
            sums["experts"] += n
    emb = model.model.embed_tokens.weight.numel()
    head = 0 if config.tie_word_embeddings else model.lm_head.weight.numel()
    main = sums["total"] - sums["mtp"]
    active = main - sums["experts"] + round(sums["experts"] * k_over_e)
    mtp_active = sums["mtp"] - sums["experts_mtp"] + round(sums["experts_mtp"] * k_over_e)
    return ParamCount(
        total=sums["total"],
        total_without_mtp=main,
        embedding=emb,
        lm_head=head,
        mtp=sums["mtp"],
        routed_experts=sums["experts"],
        routed_experts_mtp=sums["experts_mtp"],
        active=active,
        active_without_embeddings=active - emb - head,
        active_with_mtp=active + mtp_active,
    )


def flops_per_token(
    config: ModelConfig,
    seq_len: int | None = None,
    context: float | None = None,
    training: bool = False,
    include_mtp: bool = False,
) -> dict[str, float]:
    """FLOPs per token (see the module docstring for what is counted).

    Give either seq_len (a whole causal sequence: mean context (seq_len + 1) / 2, as in training or
    prefill) or context (keys seen by the token, e.g. the position of a decoded token).
    Returns {"matmul", "attention", "deltanet", "total"}; everything x3 when training.
    """
    if (seq_len is None) == (context is None):
        raise ValueError("give exactly one of seq_len (whole sequence) or context (one token's keys)")
    ctx = (seq_len + 1) / 2 if seq_len is not None else float(context)
    pc = count_parameters(config)
    weights = (pc.active_with_mtp if include_mtp else pc.active) - pc.embedding
    if config.tie_word_embeddings:
        weights += pc.embedding  # the tied matrix is still multiplied as the lm_head
    matmul = 2.0 * weights
    n_attn = sum(t == "full_attention" for t in config.layer_types) + (
        config.num_nextn_predict_layers if include_mtp else 0
    )
    n_lin = sum(t == "linear_attention" for t in config.layer_types)
    attention = n_attn * 4.0 * config.num_attention_heads * config.head_dim * ctx
    conv_channels = 2 * config.linear_key_dim + config.linear_value_dim
    deltanet = n_lin * (
        7.0 * config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim
        + 2.0 * config.linear_conv_kernel_dim * conv_channels
    )
    mult = 3.0 if training else 1.0
    out = {"matmul": matmul * mult, "attention": attention * mult, "deltanet": deltanet * mult}
    out["total"] = sum(out.values())
    return out


_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8, torch.float8_e4m3fn: 1}


def memory_plan(
    config: ModelConfig,
    param_dtype: torch.dtype = torch.bfloat16,
    grad_dtype: torch.dtype | None = None,
    optimizer_dtype: torch.dtype = torch.float32,
    master_weights: bool | None = None,
    optimizer: str = "adamw",
    shards: int = 1,
    include_mtp: bool = True,
) -> dict[str, float]:
    """Bytes for training state (activations excluded), per shard when shards > 1 (FSDP / ZeRO-3).

    param_dtype: dtype of the weights used in forward/backward; grad_dtype: of the gradients
    (default = param_dtype); master_weights: keep an fp32 copy for the update (default: when
    param_dtype is not float32); optimizer: "adamw" (2 states), "sgd_momentum" (1) or "sgd" (0).
    Returns bytes for params, grads, master, optimizer, total; plus the parameter count n_params,
    and bytes_by_dtype {dtype name: bytes}.
    """
    n_states = {"adamw": 2, "adam": 2, "sgd_momentum": 1, "sgd": 0}
    if optimizer not in n_states:
        raise ValueError(f"optimizer must be one of {sorted(n_states)}, got {optimizer!r}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    for name, dt in (("param_dtype", param_dtype), ("optimizer_dtype", optimizer_dtype)):
        if dt not in _BYTES:
            raise ValueError(f"{name}={dt} is not one of {sorted(str(d) for d in _BYTES)}")
    grad_dtype = grad_dtype or param_dtype
    if master_weights is None:
        master_weights = param_dtype != torch.float32
    pc = count_parameters(config)
    n = pc.total if include_mtp else pc.total_without_mtp
    parts = {
        "params": (n * _BYTES[param_dtype], param_dtype),
        "grads": (n * _BYTES[grad_dtype], grad_dtype),
        "master": (n * 4 if master_weights else 0, torch.float32),
        "optimizer": (n * n_states[optimizer] * _BYTES[optimizer_dtype], optimizer_dtype),
    }
    out: dict[str, float] = {k: v / shards for k, (v, _) in parts.items()}
    out["total"] = sum(out.values())
    out["n_params"] = n
    by_dtype: dict[str, float] = {}
    for v, dt in parts.values():
        if v:
            key = str(dt).removeprefix("torch.")
            by_dtype[key] = by_dtype.get(key, 0) + v / shards
    out["bytes_by_dtype"] = by_dtype  # type: ignore[assignment]
    return out


def summary(config: ModelConfig, seq_len: int = 4096) -> str:
    """A short human-readable table: parameters (total / active) and FLOPs per token."""
    pc = count_parameters(config)
    fl = flops_per_token(config, seq_len=seq_len)
    b = lambda n: f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
    rows = [
        ("total parameters (with MTP)", b(pc.total)),
        ("total parameters (no MTP)", b(pc.total_without_mtp)),
        ("active per token (incl. embeddings + lm_head)", b(pc.active)),
        ("active per token (no embeddings / lm_head)", b(pc.active_without_embeddings)),
        (f"forward FLOPs per token at seq_len {seq_len}", f"{fl['total']:.3e}"),
    ]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
