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
  stays). A `torch.Generator` makes sampling reproducible; a list of them, one per row, makes each
  row's draws independent of which other rows share its batch (RL's per-sample seeds).
- Log-probabilities: `GenerationOutput.logprobs` holds log p(token) of every generated token under
  softmax(logits / T) (T = 1 when greedy), before top-k / top-p filtering: the behaviour
  log-probabilities the RL loss needs, from the same forward that chose the token.
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
    logprobs: list[list[float]] | None = None  # per generated token, log p under softmax(logits / T)


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
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits: [B, V] -> [B] (greedy when temperature == 0).

    generator: one for the batch, or a sequence of one per row (each row draws from its own).
    """
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    if generator is not None and not isinstance(generator, torch.Generator):
        gens = list(generator)
        if len(gens) != probs.shape[0]:
            raise ValueError(f"{len(gens)} generators for {probs.shape[0]} rows")
        return torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=g)[:, 0] for i, g in enumerate(gens)])
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
def decode(
    model: HybridLM,
    cache: HybridCache,
    logits: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop: torch.Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    return_logprobs: bool = False,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The decoding loop from a filled cache: `logits` [B, V] are the next-token logits of each row.

    Returns (tokens [B, steps], lengths [B] (stop token included), hit_stop [B] bool,
    logprobs [B, steps] or None). Rows that stopped are fed `pad_id` until every row is done.
    """
    b = logits.shape[0]
    device = logits.device
    stop = stop if stop is not None else torch.zeros(0, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    hit_stop = torch.zeros(b, dtype=torch.bool, device=device)
    columns, lp_columns = [], []
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        columns.append(nxt)
        if return_logprobs:
            lp = torch.log_softmax(logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)
            lp_columns.append(lp.gather(-1, nxt[:, None])[:, 0])
        lengths += (~done).long()
        is_stop = torch.isin(nxt, stop) & ~done
        hit_stop |= is_stop
        done |= is_stop
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = model(nxt[:, None], cache=cache, logits_to_keep=1).logits[:, -1]
    gen = torch.stack(columns, dim=1)
    return gen, lengths, hit_stop, (torch.stack(lp_columns, dim=1) if return_logprobs else None)


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
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    return_logprobs: bool = False,
) -> GenerationOutput:
    """Generate up to max_new_tokens for each prompt.

    prompts: list of token-id lists (left-padded here), or a [B, P] tensor (with an optional
    attention_mask [B, P], 1 = real token, padding on the left).
    stop_tokens: ids that end a row (default: the config's eos_token_id, if any).
    generator: a torch.Generator, or one per row (see `sample_next`).
    return_logprobs: also return the log-probability of every generated token (see the module docstring).
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

    gen, lengths, hit_stop, lps = decode(model, cache, logits, max_new_tokens, temperature, top_k, top_p, stop,
                                         generator, return_logprobs, pad_id)
    model.train(was_training)
    tokens = [gen[i, : lengths[i]].tolist() for i in range(b)]
    logprobs = [lps[i, : lengths[i]].tolist() for i in range(b)] if lps is not None else None
    return GenerationOutput(
        tokens=tokens,
        sequences=torch.cat([ids, gen], dim=1),
        prompt_lengths=mask.sum(1).tolist(),
        finish_reasons=["stop" if s else "length" for s in hit_stop.tolist()],
        cache_bytes=cache.memory_bytes(),
        logprobs=logprobs,
    )
