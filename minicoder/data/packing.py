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
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = -100
METHODS = ("bfd", "concat", "pad")

# --------------------------------------------------------------------------------------------------
# statistics and the flat packing layout
# --------------------------------------------------------------------------------------------------


@dataclass
class PackStats:
    """What a packing did. ``fill`` = tokens packed / (bins * L); ``lower_bound`` = ceil(total tokens / L),
    the fewest rows that could hold every input token (a truncating packer can go below it)."""

    method: str
    seq_len: int
    n_docs: int  # documents given, including empty ones
    empty_dropped: int  # zero-length documents dropped
    n_pieces: int  # pieces placed (a document split in k pieces counts k times)
    n_bins: int
    total_tokens: int  # tokens in the input documents
    tokens_packed: int
    tokens_dropped: int  # truncated away (only pad_pack with overflow="truncate")
    docs_split: int  # documents whose tokens ended up in more than one piece

    @property
    def lower_bound(self) -> int:
        return math.ceil(self.total_tokens / self.seq_len) if self.total_tokens else 0

    @property
    def fill(self) -> float:
        return self.tokens_packed / (self.n_bins * self.seq_len) if self.n_bins else 0.0

    @property
    def bins_over_lower_bound(self) -> float:
        return self.n_bins / self.lower_bound if self.lower_bound else 1.0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(lower_bound=self.lower_bound, fill=self.fill, bins_over_lower_bound=self.bins_over_lower_bound)
        return d

    def summary(self) -> str:
        return (
            f"{self.method}: {self.n_bins} bins of {self.seq_len} (lower bound {self.lower_bound}, "
            f"x{self.bins_over_lower_bound:.4f}), fill {self.fill:.2%}, {self.tokens_dropped} tokens dropped, "
            f"{self.docs_split} docs split, {self.empty_dropped} empty docs dropped"
        )


@dataclass
class Packing:
    """A packing as flat arrays. Pieces are ordered by bin; bin b holds pieces
    ``bin_offsets[b]:bin_offsets[b+1]``. Piece p is tokens ``piece_start[p]:piece_stop[p]`` of document
    ``piece_doc[p]``.

    bin_offsets: [n_bins + 1] int64; piece_doc, piece_start, piece_stop: [n_pieces] int64.
    """

    seq_len: int
    bin_offsets: np.ndarray
    piece_doc: np.ndarray
    piece_start: np.ndarray
    piece_stop: np.ndarray
    stats: PackStats

    def __len__(self) -> int:
        return len(self.bin_offsets) - 1

    def bin_lengths(self) -> np.ndarray:
        """Tokens used in each bin: [n_bins] int64."""
        used = np.add.reduceat(self.piece_stop - self.piece_start, self.bin_offsets[:-1]) if len(self) else np.zeros(0)
        return used.astype(np.int64)

    def bins(self) -> list[list[tuple[int, int, int]]]:
        """The packing as a list of bins, each a list of ``(doc_index, start, stop)`` pieces."""
        # Building ~10^6 small containers triggers the cyclic GC over and over for nothing (none of
        # them can form a cycle): pausing it halves the time.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            pieces = list(zip(self.piece_doc.tolist(), self.piece_start.tolist(), self.piece_stop.tolist()))
            o = self.bin_offsets.tolist()
            return list(map(pieces.__getitem__, map(slice, o[:-1], o[1:])))
        finally:
            if was_enabled:
                gc.enable()

    def select(self, bins: np.ndarray | Sequence[int] | slice) -> Packing:
        """A packing of a subset of the bins (e.g. one batch), same stats object."""
        idx = np.arange(len(self))[bins] if isinstance(bins, slice) else np.asarray(bins, dtype=np.int64)
        counts = np.diff(self.bin_offsets)[idx]
        take = _ranges(self.bin_offsets[idx], counts)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Packing(
            self.seq_len, offsets, self.piece_doc[take], self.piece_start[take], self.piece_stop[take], self.stats
        )


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), vectorised: [sum(counts)] int64."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    # Position within its range = global position - first global position of that range.
    within = np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)
    return np.repeat(np.asarray(starts, dtype=np.int64), counts) + within


def _check_input(lengths: Iterable[int] | np.ndarray, seq_len: int) -> np.ndarray:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
        raise ValueError(f"seq_len must be an integer, got {seq_len!r}")
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    arr = np.asarray(lengths if isinstance(lengths, np.ndarray) else list(lengths))
    if arr.ndim != 1:
        raise ValueError(f"lengths must be a 1-D sequence of integers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("cannot pack an empty list of documents")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        bad = int(np.argmax(arr < 0))
        raise ValueError(f"document lengths must be >= 0, got {int(arr[bad])} at index {bad}")
    return arr


def split_documents(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each document into consecutive pieces of at most ``seq_len`` tokens (empty ones vanish).

    lengths: [N] int64 -> (piece_doc, piece_start, piece_stop), each [P] int64, in document order.
    """
    n_pieces = -(-lengths // seq_len)  # ceil; 0 for empty documents
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), n_pieces)
    k = _ranges(np.zeros(len(lengths), dtype=np.int64), n_pieces)  # piece number within its document
    start = k * seq_len
    stop = np.minimum(start + seq_len, lengths[doc])
    return doc, start, stop


# --------------------------------------------------------------------------------------------------
# best-fit decreasing
# --------------------------------------------------------------------------------------------------


class _CapacityTree:
    """Max segment tree over capacities 1..L: leaf c holds c when some open bin has exactly c tokens
    of room, else 0. ``smallest_at_least(s)`` walks down to the leftmost leaf whose value is >= s,
    i.e. the tightest capacity that fits s, in O(log L). A plain list: scalar Python indexing is
    several times faster than indexing a numpy array element by element."""

    def __init__(self, max_capacity: int):
        self.size = 1 << max(0, (max_capacity - 1).bit_length())
        self.tree = [0] * (2 * self.size)

    def _set(self, c: int, value: int) -> None:
        t = self.tree
        i = self.size + c - 1
        t[i] = value
        i >>= 1
        while i:
            a, b = t[2 * i], t[2 * i + 1]
            m = a if a >= b else b
            if t[i] == m:
                break  # ancestors already right
            t[i] = m
            i >>= 1

    def add(self, c: int) -> None:
        self._set(c, c)

    def remove(self, c: int) -> None:
        self._set(c, 0)

    def smallest_at_least(self, s: int) -> int:
        """Smallest capacity c >= s present in the tree, or 0 if none."""
        t = self.tree
        if t[1] < s:
            return 0
        i = 1
        while i < self.size:
            i = 2 * i if t[2 * i] >= s else 2 * i + 1
        return t[i]


def best_fit_pack_reference(lengths: Sequence[int] | np.ndarray, seq_len: int) -> list[list[tuple[int, int, int]]]:
    """The paper's algorithm, one piece at a time (readable; the oracle for the fast version).

    Pieces in decreasing length (ties by document order); each goes into the bin with the least room
    that still fits it (segment tree + per-capacity stacks), or a new bin. O(N log L).
    Returns a list of bins, each a list of ``(doc_index, start, stop)``.
    """
    arr = _check_input(lengths, seq_len)
    doc, start, stop = split_documents(arr, seq_len)
    order = sorted(range(len(doc)), key=lambda p: -(stop[p] - start[p]))
    tree = _CapacityTree(seq_len)
    stacks: dict[int, list[int]] = {}  # remaining capacity -> stack of bin ids
    bins: list[list[tuple[int, int, int]]] = []
    for p in order:
        s = int(stop[p] - start[p])
        c = tree.smallest_at_least(s)
        if c:
            b = stacks[c].pop()
            if not stacks[c]:
                tree.remove(c)
        else:
            b, c = len(bins), seq_len
            bins.append([])
        bins[b].append((int(doc[p]), int(start[p]), int(stop[p])))
        r = c - s
        if r:
            if not stacks.get(r):
                stacks[r] = []
                tree.add(r)
            stacks[r].append(b)
    return bins


class _CapacityBits:
    """The fast path's capacity index: the same tree as ``_CapacityTree`` but with fanout 64 and
    bitmask nodes. Level 0 holds one bit per capacity 0..L (set = some open bin has exactly that
    room); a bit of level k+1 says "word i of level k is non-zero". Finding the smallest capacity
    >= s looks at s's word, climbs while the rest of the word is empty, then descends taking the
    lowest set bit: O(log_64 L) word operations (3 levels up to L = 262,144) instead of O(log_2 L)
    Python steps."""

    def __init__(self, max_capacity: int):
        self.levels: list[list[int]] = []
        n = max_capacity + 1
        while True:
            words = (n + 63) >> 6
            self.levels.append([0] * words)
            if words == 1:
                break
            n = words

    def add(self, c: int) -> None:
        for lv in self.levels:
            w = c >> 6
            old = lv[w]
            lv[w] = old | (1 << (c & 63))
            if old:
                return  # the word was already non-empty: its parents' bits are already set
            c = w

    def remove(self, c: int) -> None:
        for lv in self.levels:
            w = c >> 6
            new = lv[w] & ~(1 << (c & 63))
            lv[w] = new
            if new:
                return
            c = w

    def smallest_at_least(self, s: int) -> int:
        """Smallest capacity c >= s in the set, or 0 if none."""
        levels = self.levels
        c = s
        for depth, lv in enumerate(levels):
            w = c >> 6
            if w >= len(lv):
                return 0
            m = lv[w] >> (c & 63)
            if m:
                c += (m & -m).bit_length() - 1
                for d in range(depth - 1, -1, -1):  # descend along the lowest set bits
                    m = levels[d][c]
                    c = (c << 6) + (m & -m).bit_length() - 1
                return c
            c = w + 1  # nothing left in this word: look from the next word, one level up
        return 0


class _BinStacks:
    """Per-capacity stacks of bin ids (Python lists: cheap single pushes/pops, bulk slices)."""

    def __init__(self, seq_len: int):
        self.stack: list[list[int] | None] = [None] * (seq_len + 1)
        self.index = _CapacityBits(seq_len)

    def push(self, c: int, bins: list[int]) -> None:
        if c == 0:
            return  # a full bin leaves the game
        st = self.stack[c]
        if st:
            st.extend(bins)
        else:
            self.stack[c] = list(bins)
            self.index.add(c)

    def pop(self, c: int, n: int) -> list[int]:
        """Pop n bins from the top of stack c (n <= its size)."""
        st = self.stack[c]
        if n == len(st):
            self.stack[c] = None
            self.index.remove(c)
            return st
        out = st[-n:]
        del st[-n:]
        return out


def _bfd_assign(piece_len: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Best-fit decreasing on pieces of length 1..seq_len, a length group at a time.

    piece_len: [P] int64. Returns (order, bin_of_sorted, n_bins): ``order`` [P] sorts the pieces
    by decreasing length (stable), ``bin_of_sorted[i]`` is the bin of piece ``order[i]``.
    """
    P = len(piece_len)
    # Counting sort by decreasing length: a stable argsort on <= 16-bit keys is a radix sort in numpy.
    key = seq_len - piece_len
    key = key.astype(np.uint16) if seq_len < 1 << 16 else key.astype(np.int64)
    order = np.argsort(key, kind="stable")
    counts = np.bincount(piece_len, minlength=seq_len + 1)
    sizes = np.nonzero(counts)[0][::-1].tolist()  # distinct lengths, longest first
    counts_l = counts.tolist()

    bin_of = np.empty(P, dtype=np.int64)
    stacks = _BinStacks(seq_len)
    count_of = stacks.stack
    find = stacks.index.smallest_at_least
    n_bins = 0
    pos = 0
    for s in sizes:
        k = counts_l[s]
        # 1) serve from existing bins, tightest capacity class first
        while k:
            c = find(s)
            if not c:
                break
            q = c // s  # pieces one bin of this class takes before its room drops below s
            avail = len(count_of[c])
            full = k // q
            if full >= avail:  # the whole class is used up, each bin takes q pieces
                full = avail
            if full:
                bins = stacks.pop(c, full)
                m = full * q
                bin_of[pos : pos + m] = bins if q == 1 else np.repeat(bins, q)
                stacks.push(c - q * s, bins)
                pos += m
                k -= m
                if full == avail:
                    continue
            if k:  # fewer than q left: one more bin takes them all and stays in reach (room >= s)
                b = stacks.pop(c, 1)
                bin_of[pos : pos + k] = b[0]
                stacks.push(c - k * s, b)
                pos += k
                k = 0
        if not k:
            continue
        # 2) open new bins; each takes L // s pieces in a row (it stays the tightest fit meanwhile)
        q = seq_len // s
        full, rest = divmod(k, q)
        if q == 1:
            bin_of[pos : pos + k] = np.arange(n_bins, n_bins + k, dtype=np.int64)
        else:
            bin_of[pos : pos + k] = n_bins + np.arange(k, dtype=np.int64) // q
        if full:
            stacks.push(seq_len - q * s, range(n_bins, n_bins + full))
        if rest:
            stacks.push(seq_len - rest * s, [n_bins + full])
        n_bins += full + (1 if rest else 0)
        pos += k
    return order, bin_of, n_bins


def _layout_from_assignment(
    doc: np.ndarray, start: np.ndarray, stop: np.ndarray, order: np.ndarray, bin_of_sorted: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order pieces by bin (stable: inside a bin, in insertion order = decreasing length)."""
    by_bin = np.argsort(bin_of_sorted, kind="stable")
    perm = order[by_bin]
    offsets = np.zeros(n_bins + 1, dtype=np.int64)
    np.cumsum(np.bincount(bin_of_sorted, minlength=n_bins), out=offsets[1:])
    return offsets, doc[perm], start[perm], stop[perm]


def _pack_pieces_bfd(doc: np.ndarray, start: np.ndarray, stop: np.ndarray, seq_len: int):
    order, bin_of, n_bins = _bfd_assign(stop - start, seq_len)
    return _layout_from_assignment(doc, start, stop, order, bin_of, n_bins)


def _make_stats(method: str, arr: np.ndarray, seq_len: int, offsets, doc, start, stop) -> PackStats:
    n_pieces = len(doc)
    packed = int((stop - start).sum())
    total = int(arr.sum())
    per_doc = np.bincount(doc, minlength=len(arr))
    return PackStats(
        method=method,
        seq_len=int(seq_len),
        n_docs=len(arr),
        empty_dropped=int((arr == 0).sum()),
        n_pieces=n_pieces,
        n_bins=len(offsets) - 1,
        total_tokens=total,
        tokens_packed=packed,
        tokens_dropped=total - packed,
        docs_split=int((per_doc > 1).sum()),
    )


def pack_bfd(lengths: Sequence[int] | np.ndarray, seq_len: int) -> Packing:
    """Best-Fit Packing as flat arrays (see the module docstring). lengths: [N] token counts."""
    arr = _check_input(lengths, seq_len)
    doc, start, stop = split_documents(arr, seq_len)
    if len(doc) == 0:
        offsets = np.zeros(1, dtype=np.int64)
    else:
        offsets, doc, start, stop = _pack_pieces_bfd(doc, start, stop, seq_len)
    return Packing(seq_len, offsets, doc, start, stop, _make_stats("bfd", arr, seq_len, offsets, doc, start, stop))


def best_fit_pack(
    lengths: Sequence[int] | np.ndarray, seq_len: int, *, return_stats: bool = False
) -> list[list[tuple[int, int, int]]] | tuple[list[list[tuple[int, int, int]]], PackStats]:
    """Best-Fit Packing. lengths: [N] document token counts; seq_len: L.

    Returns a list of bins, each a list of ``(doc_index, start, stop)`` pieces (``start:stop`` are
    token offsets inside the document); with ``return_stats=True`` also the ``PackStats``
    (zero-length documents are dropped and counted in ``stats.empty_dropped``).
    Raises ValueError on empty input, non-positive ``seq_len`` or negative lengths.
    """
    p = pack_bfd(lengths, seq_len)
    return (p.bins(), p.stats) if return_stats else p.bins()


# --------------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------------


def concat_pack(lengths: Sequence[int] | np.ndarray, seq_len: int) -> Packing:
    """Concatenate all documents and cut every ``seq_len`` tokens; the last row may be short.

    A document crossing a cut becomes two (or more) pieces in consecutive rows.
    """
    arr = _check_input(lengths, seq_len)
    keep = np.nonzero(arr)[0]
    lens = arr[keep]
    total = int(lens.sum())
    end = np.cumsum(lens)
    begin = end - lens
    # Document i spans global positions [begin, end): it touches rows begin//L .. (end-1)//L, one
    # piece per row. O(N), no sort.
    first_row = begin // seq_len
    n_pieces = (end - 1) // seq_len - first_row + 1
    which = np.repeat(np.arange(len(lens), dtype=np.int64), n_pieces)  # index into keep
    row = _ranges(first_row, n_pieces)
    g_start = np.maximum(begin[which], row * seq_len)
    g_stop = np.minimum(end[which], (row + 1) * seq_len)
    doc = keep[which]
    start = g_start - begin[which]
    stop = g_stop - begin[which]
    n_bins = -(-total // seq_len)
    offsets = np.zeros(n_bins + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n_bins), out=offsets[1:])
    return Packing(seq_len, offsets, doc, start, stop, _make_stats("concat", arr, seq_len, offsets, doc, start, stop))


def pad_pack(lengths: Sequence[int] | np.ndarray, seq_len: int, overflow: str = "truncate") -> Packing:
    """One document per row, padded to ``seq_len``.

    overflow="truncate": a document longer than L keeps its first L tokens, the rest is dropped
    (counted in ``stats.tokens_dropped``). overflow="split": it is cut into pieces of at most L, one
    row each (nothing dropped).
    """
    if overflow not in ("truncate", "split"):
        raise ValueError(f"overflow must be 'truncate' or 'split', got {overflow!r}")
    arr = _check_input(lengths, seq_len)
    if overflow == "split":
        doc, start, stop = split_documents(arr, seq_len)
    else:
        doc = np.nonzero(arr)[0].astype(np.int64)
        start = np.zeros(len(doc), dtype=np.int64)
        stop = np.minimum(arr[doc], seq_len)
    offsets = np.arange(len(doc) + 1, dtype=np.int64)
    return Packing(seq_len, offsets, doc, start, stop, _make_stats("pad", arr, seq_len, offsets, doc, start, stop))


def pack(lengths: Sequence[int] | np.ndarray, seq_len: int, method: str = "bfd", **kw) -> Packing:
    """Dispatch by name: ``method`` in ("bfd", "concat", "pad")."""
    if method == "bfd":
        return pack_bfd(lengths, seq_len)
    if method == "concat":
        return concat_pack(lengths, seq_len)
    if method == "pad":
        return pad_pack(lengths, seq_len, **kw)
    raise ValueError(f"unknown packing method {method!r}; choose one of {METHODS}")


# --------------------------------------------------------------------------------------------------
# packed batches
# --------------------------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """Rows of packed token ids with everything attention and the loss need to respect boundaries.

    input_ids:    [B, L] int64, padding = ``pad_id``
    labels:       [B, L] int64, PRE-SHIFTED: the token position t must predict, -100 where no loss
                  (the last token of every piece, and padding)
    position_ids: [B, L] int64, 0, 1, 2, ... restarting at every piece (padding counts 0.. too)
    doc_ids:      [B, L] int64, document index per token, -1 on padding
    loss_mask:    [B, L] bool, labels != -100
    cu_seqlens:   [S + 1] int32, FlashAttention varlen boundaries over the flattened B*L tokens; each
                  piece is a segment and each row's padding tail is one more segment
    max_seqlen:   longest segment
    """

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    doc_ids: np.ndarray
    loss_mask: np.ndarray
    cu_seqlens: np.ndarray
    max_seqlen: int
    pad_id: int = 0
    meta: dict = field(default_factory=dict)

    def hf_labels(self) -> np.ndarray:
        """Labels in the Hugging Face convention (the model shifts them): input ids, with -100 on
        padding and on the first token of every piece (so no piece predicts its neighbour's start)."""
        out = np.where(self.doc_ids >= 0, self.input_ids, IGNORE_INDEX)
        out[self.position_ids == 0] = IGNORE_INDEX
        return out

    def to_torch(self, device=None) -> dict:
        """The arrays as torch tensors (int64 ids, bool mask, int32 cu_seqlens) plus max_seqlen."""
        import torch

        t = {
            k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))).to(device)
            for k in ("input_ids", "labels", "position_ids", "doc_ids", "loss_mask", "cu_seqlens")
        }
        t["max_seqlen"] = self.max_seqlen
        return t


@dataclass
class Ragged:
    """Token ids of many documents as one flat array: doc i is ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray  # [T] int
    offsets: np.ndarray  # [N + 1] int64

    @classmethod
    def from_list(cls, docs: Sequence[Sequence[int] | np.ndarray]) -> Ragged:
        lens = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if int(offsets[-1]) else np.zeros(0, np.int64)
        return cls(flat.astype(np.int64, copy=False), offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def packed_batch(
    packing: Packing, docs: Ragged | Sequence[Sequence[int] | np.ndarray], bins=None, pad_id: int = 0
) -> PackedBatch:
    """Gather the tokens of ``bins`` (default: all) of ``packing`` into a PackedBatch. Vectorised.

    docs: the token ids of every document the packing indexes (a ``Ragged`` or a list of arrays).
    """
    if not isinstance(docs, Ragged):
        docs = Ragged.from_list(docs)
    sub = packing if bins is None else packing.select(bins)
    L = sub.seq_len
    B = len(sub)
    piece_len = sub.piece_stop - sub.piece_start
    if len(piece_len) and int(sub.piece_doc.max()) >= len(docs):
        raise ValueError(f"packing refers to document {int(sub.piece_doc.max())} but only {len(docs)} were given")
    if len(piece_len) and np.any(sub.piece_stop > docs.lengths[sub.piece_doc]):
        raise ValueError("packing refers to tokens beyond the end of a document (lengths don't match the docs)")
    used = np.add.reduceat(piece_len, sub.bin_offsets[:-1]) if B else np.zeros(0, np.int64)
    if np.any(used > L):
        raise ValueError(f"a bin holds more than seq_len={L} tokens")
    piece_bin = np.repeat(np.arange(B, dtype=np.int64), np.diff(sub.bin_offsets))
    # Where each piece begins inside its row: running sum of the lengths before it in the same bin.
    csum = np.cumsum(piece_len) - piece_len
    col0 = csum - np.repeat(csum[sub.bin_offsets[:-1]] if B else csum[:0], np.diff(sub.bin_offsets))
    # One flat index per packed token.
    tok_piece = np.repeat(np.arange(len(piece_len), dtype=np.int64), piece_len)
    pos = _ranges(np.zeros(len(piece_len), np.int64), piece_len)
    flat_dst = piece_bin[tok_piece] * L + col0[tok_piece] + pos
    flat_src = docs.offsets[sub.piece_doc[tok_piece]] + sub.piece_start[tok_piece] + pos

    input_ids = np.full(B * L, pad_id, dtype=np.int64)
    input_ids[flat_dst] = docs.tokens[flat_src]
    doc_ids = np.full(B * L, -1, dtype=np.int64)
    doc_ids[flat_dst] = sub.piece_doc[tok_piece]
    seg = np.full(B * L, -1, dtype=np.int64)  # piece id per token, to find boundaries
    seg[flat_dst] = tok_piece
    # Padding: positions 0.. inside each row's tail.
    pad_len = L - used
    pad_start = np.arange(B, dtype=np.int64) * L + used
    position_ids = np.zeros(B * L, dtype=np.int64)
    position_ids[flat_dst] = pos
    position_ids[_ranges(pad_start, pad_len)] = _ranges(np.zeros(B, np.int64), pad_len)

    labels = np.full(B * L, IGNORE_INDEX, dtype=np.int64)
    nxt = np.arange(B * L - 1)
    same = (seg[:-1] == seg[1:]) & (seg[:-1] >= 0)
    labels[nxt[same]] = input_ids[1:][same]

    # cu_seqlens: piece segments and padding tails, in flat order.
    seg_starts = np.concatenate([piece_bin * L + col0, pad_start[pad_len > 0]])
    seg_lens = np.concatenate([piece_len, pad_len[pad_len > 0]])
    o = np.argsort(seg_starts, kind="stable")
    cu = np.zeros(len(o) + 1, dtype=np.int32)
    np.cumsum(seg_lens[o], out=cu[1:])
    shape = (B, L)
    return PackedBatch(
        input_ids=input_ids.reshape(shape),
        labels=labels.reshape(shape),
        position_ids=position_ids.reshape(shape),
        doc_ids=doc_ids.reshape(shape),
        loss_mask=(labels != IGNORE_INDEX).reshape(shape),
        cu_seqlens=cu,
        max_seqlen=int(seg_lens.max()) if len(seg_lens) else 0,
        pad_id=pad_id,
    )


def iter_batches(packing: Packing, docs: Ragged, batch_size: int, pad_id: int = 0) -> Iterator[PackedBatch]:
    """PackedBatches of ``batch_size`` consecutive bins (the last may be smaller)."""
    for b0 in range(0, len(packing), batch_size):
        yield packed_batch(packing, docs, slice(b0, b0 + batch_size), pad_id=pad_id)


# --------------------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------------------


@dataclass
class StreamStats:
    docs_seen: int = 0
    empty_dropped: int = 0
    tokens_seen: int = 0
    bins_emitted: int = 0
    tokens_emitted: int = 0
    rounds: int = 0
    max_buffered_pieces: int = 0
    seq_len: int = 0

    @property
    def fill(self) -> float:
        return self.tokens_emitted / (self.bins_emitted * self.seq_len) if self.bins_emitted else 0.0


def stream_pack(
    lengths: Iterable[int],
    seq_len: int,
    buffer_size: int = 100_000,
    min_fill: float = 0.99,
    stats: StreamStats | None = None,
) -> Iterator[list[tuple[int, int, int]]]:
    """Best-Fit Packing of an unbounded stream of document lengths within a bounded buffer.

    Reads up to ``buffer_size`` pieces (carried pieces + new documents, split at L), packs them
    best-fit-decreasing, yields every bin filled to at least ``min_fill * L`` and carries the pieces
    of the other bins into the next round (at most ``buffer_size // 2`` carried pieces: beyond that
    the fullest of the rest are yielded too, so the buffer never grows). At the end everything left
    is packed and yielded. Document indices are positions in the stream. Memory: O(buffer_size).
    Pass a ``StreamStats`` to collect counts (filled in as the stream is consumed).
    """
    if seq_len is None or int(seq_len) <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if buffer_size < 2:
        raise ValueError(f"buffer_size must be >= 2, got {buffer_size}")
    if not 0.0 <= min_fill <= 1.0:
        raise ValueError(f"min_fill must be in [0, 1], got {min_fill}")
    st = stats if stats is not None else StreamStats()
    st.seq_len = int(seq_len)
    threshold = math.ceil(min_fill * seq_len)
    carry = (np.zeros(0, np.int64),) * 3
    it = iter(lengths)
    next_doc = 0
    exhausted = False
    any_doc = False
    while True:
        # Fill the buffer with new documents until it holds buffer_size pieces.
        new_lens: list[int] = []
        room = buffer_size - len(carry[0])
        new_pieces = 0
        while new_pieces < room and not exhausted:
            try:
                n = next(it)
            except StopIteration:
                exhausted = True
                break
            n = int(n)
            if n < 0:
                raise ValueError(f"document lengths must be >= 0, got {n} at stream position {next_doc + len(new_lens)}")
            new_lens.append(n)
            new_pieces += -(-n // seq_len)
        any_doc = any_doc or bool(new_lens)
        base = next_doc
        next_doc += len(new_lens)
        st.docs_seen += len(new_lens)
        st.empty_dropped += sum(1 for n in new_lens if n == 0)
        st.tokens_seen += sum(new_lens)
        if new_lens:
            d, s, e = split_documents(np.asarray(new_lens, dtype=np.int64), seq_len)
            d = d + base
            doc, start, stop = (np.concatenate([carry[0], d]), np.concatenate([carry[1], s]), np.concatenate([carry[2], e]))
        else:
            doc, start, stop = carry
        if len(doc) == 0:
            if exhausted:
                if not any_doc:
                    raise ValueError("cannot pack an empty stream of documents")
                return
            continue
        st.rounds += 1
        st.max_buffered_pieces = max(st.max_buffered_pieces, len(doc))
        offsets, doc, start, stop = _pack_pieces_bfd(doc, start, stop, seq_len)
        used = np.add.reduceat(stop - start, offsets[:-1])
        if exhausted:
            emit = np.ones(len(used), dtype=bool)
        else:
            emit = used >= threshold
            n_pieces = np.diff(offsets)
            kept = ~emit
            if n_pieces[kept].sum() > buffer_size // 2:
                # Too much would be carried: emit the fullest of the rest until the carry fits.
                cand = np.nonzero(kept)[0]
                cand = cand[np.argsort(-used[cand], kind="stable")]
                carried_from_end = np.cumsum(n_pieces[cand][::-1])[::-1]  # pieces kept if we stop here
                first_keep = int(np.argmax(carried_from_end <= buffer_size // 2)) if np.any(
                    carried_from_end <= buffer_size // 2
                ) else len(cand)
                emit[cand[:first_keep]] = True
        piece_bin = np.repeat(np.arange(len(used)), np.diff(offsets))
        for b in np.nonzero(emit)[0].tolist():
            a, z = int(offsets[b]), int(offsets[b + 1])
            st.bins_emitted += 1
            st.tokens_emitted += int(used[b])
            yield list(zip(doc[a:z].tolist(), start[a:z].tolist(), stop[a:z].tolist()))
        keep_piece = ~emit[piece_bin]
        carry = (doc[keep_piece], start[keep_piece], stop[keep_piece])
        if exhausted:
            return


def stream_packed_batches(
    docs: Iterable[Sequence[int] | np.ndarray],
    seq_len: int,
    batch_size: int,
    buffer_size: int = 10_000,
    min_fill: float = 0.99,
    pad_id: int = 0,
) -> Iterator[PackedBatch]:
    """PackedBatches from a stream of tokenized documents, Best-Fit packed within a bounded buffer.

    Keeps the tokens of a document only until all its pieces are emitted. ``doc_ids`` in the
    batches are positions in the stream.
    """
    pending: dict[int, np.ndarray] = {}
    left: dict[int, int] = {}  # tokens of a document not yet emitted

    def lengths() -> Iterator[int]:
        for i, d in enumerate(docs):
            arr = np.asarray(d, dtype=np.int64)
            if len(arr):
                pending[i] = arr
                left[i] = len(arr)
            yield len(arr)

    rows: list[list[tuple[int, int, int]]] = []

    def flush() -> PackedBatch:
        ids = sorted({p[0] for r in rows for p in r})
        local = {d: j for j, d in enumerate(ids)}
        rag = Ragged.from_list([pending[d] for d in ids])
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        flat = [p for r in rows for p in r]
        pk = Packing(
            seq_len,
            offsets,
            np.array([local[p[0]] for p in flat], dtype=np.int64),
            np.array([p[1] for p in flat], dtype=np.int64),
            np.array([p[2] for p in flat], dtype=np.int64),
            stats=None,  # type: ignore[arg-type]
        )
        batch = packed_batch(pk, rag, pad_id=pad_id)
        # Back to stream document indices.
        id_map = np.array(ids, dtype=np.int64)
        batch.doc_ids = np.where(batch.doc_ids >= 0, id_map[np.maximum(batch.doc_ids, 0)], -1)
        batch.meta["bins"] = [list(r) for r in rows]  # (stream doc index, start, stop) per row
        for d, s, e in flat:
            left[d] -= e - s
            if left[d] == 0:
                del left[d], pending[d]
        return batch

    for b in stream_pack(lengths(), seq_len, buffer_size=buffer_size, min_fill=min_fill):
        rows.append(b)
        if len(rows) == batch_size:
            yield flush()
            rows = []
    if rows:
        yield flush()
