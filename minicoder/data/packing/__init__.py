"""Best-Fit Packing (Ding et al., ICML 2024, "Fewer Truncations Improve Language Modeling"), its
baselines, and packed training batches.

The problem: documents of token lengths ``n_i`` must be laid into rows of exactly ``L`` tokens.
- ``concat_pack``: concatenate everything and cut every L tokens. No padding, but most documents are
  cut somewhere in the middle, so the model sees fragments without their beginning.
- ``pad_pack``: one document per row, padded to L. No fragments, lots of padding; documents longer
  than L are truncated (tokens dropped) or split into rows of their own (``overflow=``).
- ``best_fit_pack``: split only documents longer than L (into pieces of at most L tokens), then pack
  the pieces best-fit-decreasing: longest first, each into the open bin whose remaining capacity is
  the smallest that still holds it, a new bin if none does. Never splits a piece further. Nearly as
  few rows as concatenation, with no truncation of documents that fit.

Design choices, in order of importance:
1. The reference algorithm (``best_fit_pack_reference``) is the paper's: a max segment tree over
   remaining capacities 1..L finds the tightest bin in O(log L), bins of equal remaining capacity
   sit in per-capacity stacks; O(N log L) but one Python step per piece (~1 µs each at best).
2. The fast path processes every piece of the same length *at once*. Pieces are counting-sorted by
   length (a radix sort). For a group of k pieces of length s, best-fit always picks the smallest
   capacity class c >= s; a bin there takes q = c // s pieces in a row (after each one it is still
   the tightest fit while its room is >= s) and drops to c % s < s, out of this group's reach. So a
   whole class is served with one ``np.repeat``; only the last class visited is served partially,
   and leftover pieces open new bins that each take L // s of them. The result is *exactly* the
   assignment multiset of item-by-item BFD (bins with equal room are interchangeable), but the
   Python loop runs once per (length, capacity class) visited instead of once per piece: a few
   thousand iterations for a million documents. Everything per-piece is numpy. The capacity index
   is the same segment tree with fanout 64 (``_CapacityBits``: each node a 64-bit mask of its
   non-empty children), so a lookup is ~3 word operations instead of log2(L) Python steps.
3. A packing is returned as flat arrays (``Packing``): pieces (doc, start, stop) ordered by bin,
   plus bin offsets, so that gathering tokens into [B, L] rows is one vectorised index.
   ``best_fit_pack`` turns that into the plain list-of-bins API.
4. Labels are *pre-shifted*: ``labels[b, t]`` is the token that position t is trained to predict
   (``input_ids[b, t + 1]`` when both are in the same document piece, else -100). The last token of a
   piece therefore has no label, so nothing is ever trained to predict across a boundary, and
   padding has no loss. ``PackedBatch.hf_labels()`` gives the unshifted HF convention instead.

The package, in reading order: ``layout.py`` (the flat layout, statistics, checks), ``bfd.py`` (the
reference BFD and the fast path), ``baselines.py`` (concat, pad, and ``pack`` by method name),
``batch.py`` (``PackedBatch``, ``Ragged``, ``packed_batch``), ``stream.py`` (bounded-memory packing).
Everything listed in ``__all__`` is importable from ``minicoder.data.packing``.
"""

from minicoder.data.packing.baselines import concat_pack, pack, pad_pack
from minicoder.data.packing.batch import PackedBatch, Ragged, iter_batches, packed_batch
from minicoder.data.packing.bfd import best_fit_pack, best_fit_pack_reference, pack_bfd
from minicoder.data.packing.layout import IGNORE_INDEX, METHODS, Packing, PackStats, split_documents
from minicoder.data.packing.stream import StreamStats, stream_pack, stream_packed_batches

__all__ = ["IGNORE_INDEX", "METHODS", "PackStats", "PackedBatch", "Packing", "Ragged", "StreamStats", "best_fit_pack",
           "best_fit_pack_reference", "concat_pack", "iter_batches", "pack", "pack_bfd", "packed_batch", "pad_pack",
           "split_documents", "stream_pack", "stream_packed_batches"]
