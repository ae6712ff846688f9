"""Batched sampling with the hybrid model's mixed cache.

Design choices:
- Batches of prompts of different lengths are LEFT-padded: every row's next token is then at the
  same column, so one decode step is one [B, 1] forward. Padding is made invisible to the model:
  attention masks padded keys (HybridCache keeps the key mask), DeltaNet zeroes padded inputs so its
  conv and recurrent state stay exactly zero until the first real token, RoPE positions count real
  tokens only, and padded tokens are left out of the router statistics. A row of a padded batch
  therefore produces the tokens it would produce alone (tested).
- One `HybridCache` pre-allocated for prompt + max_new_tokens: KV for attention layers, conv +
  recurrent state for DeltaNet layers. `GenerationOutput.cache_bytes` reports its size by layer kind.
- Sampling: temperature 0 = greedy; else softmax(logits / T) restricted by top-k, then top-p
  (nucleus: the smallest set of tokens whose probability reaches p; the most likely token always
  stays). A `torch.Generator` makes sampling reproducible.
- Stop tokens end a row (the stop token is kept in its output); the loop ends when every row has
  stopped or after max_new_tokens.
- The MTP head is not used for decoding here (no speculative decoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from minicoder.model.cache import HybridCache
from minicoder.model.model import HybridLM


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # generated tokens per row (stop token included when hit)
    sequences: torch.Tensor  # [B, P + steps] left-padded prompts followed by the generated columns
    prompt_lengths: list[int]  # real (unpadded) prompt length per row
    finish_reasons: list[str]  # "stop" or "length" per row
    cache_bytes: dict[str, int]  # HybridCache.memory_bytes() at the end


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus. logits: [B, V]."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass of strictly more likely tokens
        drop_sorted = before >= top_p  # the first token always has before = 0 < top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits: [B, V] -> [B] (greedy when temperature == 0)."""
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists -> (ids [B, P], mask [B, P] with 1 = real token)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    model: HybridLM,
    prompts: Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: Sequence[int] | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """Generate up to max_new_tokens for each prompt.

    prompts: list of token-id lists (left-padded here), or a [B, P] tensor (with an optional
    attention_mask [B, P], 1 = real token, padding on the left).
    stop_tokens: ids that end a row (default: the config's eos_token_id, if any).
    """
    cfg = model.config
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    if isinstance(prompts, torch.Tensor):
        ids = prompts.to(torch.long)
        mask = attention_mask if attention_mask is not None else torch.ones_like(ids)
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"prompts must be [B, P] with a matching mask, got {tuple(ids.shape)} / {tuple(mask.shape)}")
        if bool((mask[:, 1:] < mask[:, :-1]).any()):
            raise ValueError("attention_mask must be left padding (zeros, then ones) in every row")
    else:
        ids, mask = left_pad(prompts, pad_id)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if stop_tokens is None:
        eos = cfg.eos_token_id
        stop_tokens = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)

    ids, mask = ids.to(device), mask.to(device)
    b, p = ids.shape
    was_training = model.training
    model.eval()
    cache = HybridCache(cfg, b, max_len=p + max_new_tokens, device=device, dtype=dtype)
    logits = model(ids, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1]

    done = torch.zeros(b, dtype=torch.bool, device=device)
    hit_stop = torch.zeros(b, dtype=torch.bool, device=device)
    columns = []
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        columns.append(nxt)
        lengths += (~done).long()
        is_stop = torch.isin(nxt, stop) & ~done
        hit_stop |= is_stop
        done |= is_stop
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = model(nxt[:, None], cache=cache, logits_to_keep=1).logits[:, -1]
    model.train(was_training)

    gen = torch.stack(columns, dim=1)
    tokens = [gen[i, : lengths[i]].tolist() for i in range(b)]
    return GenerationOutput(
        tokens=tokens,
        sequences=torch.cat([ids, gen], dim=1),
        prompt_lengths=mask.sum(1).tolist(),
        finish_reasons=["stop" if s else "length" for s in hit_stop.tolist()],
        cache_bytes=cache.memory_bytes(),
    )
