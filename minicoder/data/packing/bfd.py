"""Best-fit decreasing: the paper's reference packer and the exact, vectorised fast path.

See the package docstring (`minicoder.data.packing`) for why the fast path gives exactly the
assignment of item-by-item BFD.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minicoder.data.packing.layout import (
    Packing,
    PackStats,
    _check_input,
    _layout_from_assignment,
    _make_stats,
    split_documents,
)


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



def _pack_pieces_bfd(doc: np.ndarray, start: np.ndarray, stop: np.ndarray, seq_len: int):
    order, bin_of, n_bins = _bfd_assign(stop - start, seq_len)
    return _layout_from_assignment(doc, start, stop, order, bin_of, n_bins)



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
