"""Multi-turn batched generation with the hybrid model's mixed cache, without re-reading the context.

An agent rollout grows turn by turn: prompt, reply, observation, reply, ... Re-running the whole
context through the model at every turn (what a single `generate` call per turn would do) costs
O(turns x context) prefill. Here each rollout keeps its own batch-1 `HybridCache` of everything the
model has read so far, and a turn is:

  1. per rollout, prefill only the ids added since its cache was last extended (its last reply and
     the new observation; the first time, the prompt, starting from a shared copy of the longest
     common prefix of the batch's prompts: the system turn with the tool list, read once);
  2. stack the rollouts' caches into one batch and decode all of them together (`generate.decode`).
     Attention KV are left-aligned with a key mask, as in a left-padded batch; DeltaNet conv and
     recurrent states are per row, so nothing mixes between rows;
  3. the stacked copy is dropped: each rollout's own cache stays as it was before decoding, and its
     reply is read into it at the next turn with the new observation (step 1). Decoding never
     writes into a cache that will be reused, so rows that stop early and keep being fed padding
     cannot pollute anything.

Exactness: a rollout's cache holds exactly its own tokens in order (batch-1 prefills, no padding
inside), so its next-token logits equal a fresh forward over its whole context up to float rounding
(tested). The shared prefix is keyed by its ids and by `version`, which the owner bumps whenever the
weights change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from minicoder.model.cache import HybridCache, KVSlot, StateSlot
from minicoder.model.generate import decode


def clone_cache(c: HybridCache) -> HybridCache:
    """A deep copy of a batch-1 cache (tensors cloned)."""
    out = HybridCache(c.config, c.batch_size, layer_types=c.layer_types)
    for i, s in enumerate(c.slots):
        if isinstance(s, KVSlot):
            n = s.length
            out.slots[i] = KVSlot(None if s.k is None else s.k[:, :, :max(n, 1)].clone(),
                                  None if s.v is None else s.v[:, :, :max(n, 1)].clone(), n)
        else:
            out.slots[i] = StateSlot(None if s.conv is None else s.conv.clone(),
                                     None if s.recurrent is None else s.recurrent.clone())
    out.seen = c.seen
    out.key_mask = None if c.key_mask is None else c.key_mask.clone()
    return out


def stack_caches(caches: Sequence[HybridCache], extra: int) -> HybridCache:
    """One batched cache from batch-1 caches of different lengths: KV left-aligned (key mask marks
    the real ones), room for `extra` more tokens, states stacked. The inputs are not modified."""
    first = caches[0]
    b = len(caches)
    lens = [c.seen for c in caches]
    width = max(lens)
    out = HybridCache(first.config, b, layer_types=first.layer_types)
    for li, t in enumerate(first.layer_types):
        if t == "full_attention":
            ref = next(c.slots[li] for c in caches if c.slots[li].k is not None)
            shape = (b, ref.k.shape[1], width + extra, ref.k.shape[3])
            k = ref.k.new_zeros(shape)
            v = ref.v.new_zeros(shape)
            for r, c in enumerate(caches):
                s = c.slots[li]
                n = s.length
                if n:
                    k[r, :, width - n:width] = s.k[0, :, :n]
                    v[r, :, width - n:width] = s.v[0, :, :n]
            out.slots[li] = KVSlot(k, v, width)
        else:
            out.slots[li] = StateSlot(torch.cat([c.slots[li].conv for c in caches]),
                                      torch.cat([c.slots[li].recurrent for c in caches]))
    pos = torch.arange(width, device=first.slots[0].conv.device if isinstance(first.slots[0], StateSlot)
                       and first.slots[0].conv is not None else None)
    out.key_mask = torch.stack([pos >= width - n for n in lens]).to(torch.bool)
    out.seen = width
    return out


class RowState:
    """What the engine keeps for one rollout: its cache, how many of its ids it holds, last logits."""

    def __init__(self) -> None:
        self.cache: HybridCache | None = None
        self.read = 0  # ids of the rollout already in the cache
        self.logits: torch.Tensor | None = None  # [V] next-token logits after the last read id


class Engine:
    """Batched multi-turn sampling for a `HybridLM` (see the module docstring)."""

    def __init__(self, model, stop_id: int, pad_id: int = 0) -> None:
        self.model, self.stop_id, self.pad_id = model, stop_id, pad_id
        self.version = 0
        self._prefix: tuple[int, tuple[int, ...], HybridCache, torch.Tensor] | None = None

    def invalidate(self) -> None:
        """The weights changed: forget the shared prefix."""
        self.version += 1
        self._prefix = None

    def _device(self):
        return next(self.model.parameters()).device

    def _read(self, row: RowState, ids: Sequence[int]) -> None:
        """Prefill `ids` into the row's cache (batch 1) and keep the logits after the last one."""
        if not ids:
            return
        dev = self._device()
        if row.cache is None:
            dtype = next(self.model.parameters()).dtype
            row.cache = HybridCache(self.model.config, 1, device=dev, dtype=dtype)
        out = self.model(torch.tensor([list(ids)], dtype=torch.long, device=dev), cache=row.cache, logits_to_keep=1)
        row.logits = out.logits[0, -1]
        row.read += len(ids)

    def _shared_prefix(self, prompts: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], HybridCache, torch.Tensor] | None:
        n = min(len(p) for p in prompts)
        k = 0
        while k < n - 1 and all(p[k] == prompts[0][k] for p in prompts):  # keep >= 1 id per row to read
            k += 1
        if self._prefix is not None and self._prefix[0] == self.version:
            _, toks, cache, logits = self._prefix
            if len(toks) <= k and tuple(prompts[0][:len(toks)]) == toks:
                return toks, cache, logits
        if k < 16 or len(prompts) < 2:
            return None
        row = RowState()
        self._read(row, prompts[0][:k])
        self._prefix = (self.version, tuple(prompts[0][:k]), row.cache, row.logits)
        return self._prefix[1], row.cache, row.logits

    @torch.no_grad()
    def step(self, rows: Sequence[RowState], contexts: Sequence[Sequence[int]], budgets: Sequence[int],
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             generators: Sequence[torch.Generator] | None = None) -> list[tuple[list[int], list[float], bool]]:
        """One reply per row. contexts[i]: every id of rollout i so far (its cache is brought up to
        date from it). Returns (sampled ids, their log-probs, stopped at the stop id) per row."""
        was_training = self.model.training
        self.model.eval()
        try:
            fresh = [i for i, r in enumerate(rows) if r.cache is None]
            if fresh:
                shared = self._shared_prefix([contexts[i] for i in fresh])
                if shared is not None:
                    toks, cache, logits = shared
                    for i in fresh:
                        if tuple(contexts[i][:len(toks)]) == toks:
                            rows[i].cache, rows[i].read, rows[i].logits = clone_cache(cache), len(toks), logits
            for r, ctx in zip(rows, contexts):
                if r.read > len(ctx):
                    raise ValueError("a rollout's context is shorter than what its cache has read")
                self._read(r, ctx[r.read:])
            width = max(budgets)
            batch = stack_caches([r.cache for r in rows], width)
            logits = torch.stack([r.logits for r in rows])
            stop = torch.tensor([self.stop_id], device=logits.device)
            gen, lengths, hit, lps = decode(self.model, batch, logits, width, temperature, top_k, top_p, stop,
                                            generators if temperature > 0 else None, True, self.pad_id)
        finally:
            self.model.train(was_training)
        out = []
        for i, n in enumerate(budgets):
            k = min(int(lengths[i]), n)
            toks = gen[i, :k].tolist()
            out.append((toks, lps[i, :k].tolist(), bool(toks) and toks[-1] == self.stop_id))
        return out
